//! Scheduling policies: one trait, one file per policy.
//!
//! A policy turns the enabled flavours, the forecast and the ledger into weights that sum
//! to 1, the commanded average precision, and diagnostics. Policies are pure: no clock, no
//! I/O; the only state (forecast-aware-global's emissions memory) is passed in and out as
//! [`PolicyMemory`] so it is journaled like everything else.

mod carbon_optimal;
mod credit_greedy;
mod forecast_aware;
mod forecast_aware_global;
mod p100;
mod precision_tier;
mod random;
mod round_robin;

use std::borrow::Cow;

use carbonflow_schemas::records::Flavour;
use serde::{Deserialize, Serialize};

use crate::forecast::ForecastSnapshot;
use crate::ledger::QualityAccount;

pub use carbon_optimal::{
    CarbonOptimal, MixCurve, Plan, PlanSlot, PlannedSlot, emissions, highest_reachable_precision,
    planned_slots, solve,
};
pub use credit_greedy::CreditGreedy;
pub use forecast_aware::ForecastAware;
pub use forecast_aware_global::ForecastAwareGlobal;
pub use p100::P100;
pub use precision_tier::PrecisionTier;
pub use random::Random;
pub use round_robin::RoundRobin;

/// Every policy, once: names, lookup and validation all derive from this list.
pub const POLICIES: [&dyn Policy; 8] = [
    &CarbonOptimal,
    &CreditGreedy,
    &ForecastAware,
    &ForecastAwareGlobal,
    &PrecisionTier,
    &P100,
    &Random,
    &RoundRobin,
];

/// The policy registered under `name`.
pub fn policy_named(name: &str) -> Option<&'static dyn Policy> {
    POLICIES.into_iter().find(|p| p.name() == name)
}

/// Names of every policy, as accepted in configs.
pub fn policy_names() -> Vec<&'static str> {
    POLICIES.iter().map(|p| p.name()).collect()
}

/// Ledger figures a policy reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CreditView {
    /// Balance before this decision's update.
    pub balance: f64,
    /// Lower bound.
    pub min: f64,
    /// Upper bound.
    pub max: f64,
    /// Target error of the schedule.
    pub target_error: f64,
}

impl CreditView {
    /// `(balance − min) / span`, with span 0 read as 1 (reference 3.1 step 2).
    pub fn normalised(&self) -> f64 {
        let span = self.max - self.min;
        let span = if span == 0.0 { 1.0 } else { span };
        (self.balance - self.min) / span
    }
}

/// What a policy evaluates.
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    /// Schedule id (seeds `random`).
    pub schedule: &'a str,
    /// Version the decision will carry (seeds `random`).
    pub version: i64,
    /// Every configured flavour, in registry order (policies drop disabled ones).
    pub flavours: &'a [Flavour],
    /// Forecast view at the decision's event time.
    pub forecast: &'a ForecastSnapshot,
    /// Ledger balance and bounds, read before this decision's update.
    pub credit: CreditView,
    /// What was delivered and the plan's limits (read by carbon-optimal only).
    pub plan: PlanContext,
}

/// What carbon-optimal plans from besides the forecast: the exact account of delivered
/// quality, the request rate observed, and the config's plan limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlanContext {
    /// Delivered quality against the promise in force.
    pub quality: QualityAccount,
    /// Request rate of the last closed telemetry window, requests/s.
    pub observed_rate: Option<f64>,
    /// Length of one telemetry window, seconds (converts the account into ledger credit).
    pub window_seconds: f64,
    /// Scale of one ledger delta (converts the account into ledger credit).
    pub credit_sensitivity: f64,
    /// Lowest mean precision planned for a slot.
    pub min_slot_precision: Option<f64>,
}

/// Policy state that survives between decisions (forecast-aware-global's memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyMemory {
    /// Σ over decisions of Σ_f w_f · energy_f · intensity_now.
    pub cumulative_carbon: f64,
    /// Number of decisions counted.
    pub evaluation_count: i64,
}

/// Weights (in the policy's own order, which decides rounding ties), average precision and
/// diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyResult {
    /// `(flavour name, weight)`, summing to 1.
    pub weights: Vec<(String, f64)>,
    /// Σ w · precision of `weights`: the precision commanded.
    pub avg_precision: f64,
    /// Named diagnostics (None = unknown), with the reference's meanings: its
    /// `avg_precision` is the base policy's, before any forecast adjustment.
    pub diagnostics: Vec<(Cow<'static, str>, Option<f64>)>,
}

impl PolicyResult {
    /// Re-normalise after an adjustment and recompute the average precision.
    ///
    /// The `avg_precision` diagnostic is left as the base policy set it: the reference's
    /// forecast-aware policies report there the base (credit-greedy) precision before
    /// their adjustment, and consumers written for it read that meaning. The precision
    /// actually commanded is [`PolicyResult::avg_precision`] (`avgPrecision` in the
    /// reference contract).
    pub(crate) fn renormalise(&mut self, flavours: &[Flavour]) {
        normalise(&mut self.weights);
        self.avg_precision = avg_precision(&self.weights, flavours);
    }

    /// Value of a diagnostic.
    pub fn diagnostic(&self, name: &str) -> Option<f64> {
        self.diagnostics
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| *v)
    }
}

/// Why a policy could not decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The config names a policy that does not exist (validation should have caught it).
    #[error("schedule {schedule} names unknown policy {policy:?}: expected one of {known}")]
    UnknownPolicy {
        /// Schedule id.
        schedule: String,
        /// Name given.
        policy: String,
        /// Known names, comma-separated.
        known: String,
    },
    /// Every flavour is disabled.
    #[error("schedule {schedule} has no enabled flavour: at least one flavour must be enabled")]
    NoEnabledFlavour {
        /// Schedule id.
        schedule: String,
    },
    /// The weights computed are not all finite numbers ≥ 0, or their mean precision is not.
    #[error(
        "schedule {schedule}: the computed weights are unusable ({detail}); expected finite weights ≥ 0 summing to 1"
    )]
    NonFinite {
        /// Schedule id.
        schedule: String,
        /// Which value was wrong.
        detail: String,
    },
    /// A weight is on a flavour the config does not enable.
    #[error(
        "schedule {schedule}: weight on flavour {flavour:?}, which the config does not enable; expected weights on enabled flavours only"
    )]
    NotEnabled {
        /// Schedule id.
        schedule: String,
        /// The flavour named.
        flavour: String,
    },
    /// Every computed weight is 0 while enabled flavours exist.
    #[error("schedule {schedule}: every computed weight is 0; expected weights summing to 1")]
    NoWeight {
        /// Schedule id.
        schedule: String,
    },
    /// The decision does not encode as a `ScheduleDecision` record (not seen: the
    /// fields a decision is made of always fit its schema).
    #[error(
        "schedule {schedule}: the decision does not encode as a ScheduleDecision record ({detail}); expected every field to fit the schema"
    )]
    Unencodable {
        /// Schedule id.
        schedule: String,
        /// The codec's error.
        detail: String,
    },
}

impl PolicyError {
    /// A bounded label for metrics: why no decision was emitted.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownPolicy { .. } => "unknown_policy",
            Self::NoEnabledFlavour { .. } => "no_enabled_flavour",
            Self::NonFinite { .. } => "non_finite",
            Self::NotEnabled { .. } => "not_enabled",
            Self::NoWeight { .. } => "no_weight",
            Self::Unencodable { .. } => "unencodable",
        }
    }

    /// Every [`kind`](Self::kind), for metrics that start at zero.
    pub const KINDS: [&'static str; 6] = [
        "unknown_policy",
        "no_enabled_flavour",
        "non_finite",
        "not_enabled",
        "no_weight",
        "unencodable",
    ];
}

/// A scheduling policy.
pub trait Policy: Sync {
    /// Registered name.
    fn name(&self) -> &'static str;

    /// Decide weights; `memory` is read and updated (most policies leave it alone).
    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError>;
}

/// Enabled flavours sorted by precision, highest first (stable for equal precisions).
pub(crate) fn enabled_by_precision<'a>(
    input: &PolicyInput<'a>,
) -> Result<Vec<&'a Flavour>, PolicyError> {
    let mut enabled: Vec<&Flavour> = input.flavours.iter().filter(|f| f.enabled).collect();
    if enabled.is_empty() {
        return Err(PolicyError::NoEnabledFlavour {
            schedule: input.schedule.to_string(),
        });
    }
    enabled.sort_by(|a, b| b.precision.total_cmp(&a.precision));
    Ok(enabled)
}

/// Scale weights to sum 1 (a zero sum is left as is).
pub(crate) fn normalise(weights: &mut [(String, f64)]) {
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    if total > 0.0 {
        for (_, w) in weights.iter_mut() {
            *w /= total;
        }
    }
}

/// Σ w · precision over `weights`.
pub(crate) fn avg_precision(weights: &[(String, f64)], flavours: &[Flavour]) -> f64 {
    weights
        .iter()
        .map(|(name, w)| {
            w * flavours
                .iter()
                .find(|f| &f.name == name)
                .map_or(1.0, |f| f.precision)
        })
        .sum()
}

/// Carbon score of a greener flavour relative to the baseline (reference 3.1 step 6).
pub(crate) fn carbon_score(baseline: &Flavour, f: &Flavour) -> f64 {
    let gain = baseline.relative_energy - f.relative_energy;
    let gain = if gain > 0.0 { gain } else { 1e-6 };
    (gain.max(1e-6) / (1.0 - f.precision).max(1e-6)).max(1e-6)
}

#[cfg(test)]
pub(crate) mod tests {
    use carbonflow_schemas::records::Flavour;

    /// The reference's default triple (precision-100/50/30, energy 1.0/0.6/0.3): the
    /// flavours of the default schedule spec.
    pub(crate) fn default_flavours() -> Vec<Flavour> {
        crate::spec::ScheduleSpec::default()
            .to_config("test/test", 1, 0)
            .flavours
    }

    /// Evaluate `policy` on the default flavours with credit bounds ±1 and target 0.15.
    pub(crate) fn evaluate(
        policy: &dyn super::Policy,
        forecast: super::ForecastSnapshot,
        balance: f64,
        version: i64,
        memory: &mut super::PolicyMemory,
    ) -> super::PolicyResult {
        let flavours = default_flavours();
        let input = super::PolicyInput {
            schedule: "ns/s",
            version,
            flavours: &flavours,
            forecast: &forecast,
            credit: super::CreditView {
                balance,
                min: -1.0,
                max: 1.0,
                target_error: 0.15,
            },
            plan: super::PlanContext::default(),
        };
        policy.evaluate(&input, memory).expect("policy decides")
    }

    /// Integer percentages of a result, in policy order.
    pub(crate) fn percentages(r: &super::PolicyResult) -> Vec<i32> {
        crate::weights::integer_percentages(&r.weights)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    pub(crate) fn weight(r: &super::PolicyResult, name: &str) -> f64 {
        r.weights
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, w)| *w)
    }
}
