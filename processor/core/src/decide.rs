//! From inputs to a decision: the one pure function both the pipeline and
//! `processor decide` call.
//!
//! Order of work (reference section 8.1's evaluation, minus the clock): policy (or manual
//! override) → ledger update with the commanded precision when the schedule uses the
//! commanded feed → throttle and ceilings from the post-update balance → integer
//! percentages → validity → the decision record with its provenance.

use carbonflow_schemas::records::{
    Credits, DecisionFlavour, Diagnostic, ForecastUsed, InputPosition, LedgerState, ManualOverride,
    PrecisionFeed, Provenance, ScheduleConfig, ScheduleDecision, TelemetryWindow,
};

use carbonflow_schemas::vocabulary::DecisionCause;

use crate::forecast::ForecastSnapshot;
use crate::ledger::{CreditLedger, LedgerParams, QualityAccount};
use crate::policy::{
    CreditView, PlanContext, PolicyError, PolicyInput, PolicyMemory, PolicyResult, avg_precision,
    normalise, policy_named, policy_names,
};
use crate::throttle::scaling_directive;
use crate::weights::integer_percentages;

/// Ledger parameters of a config.
pub fn ledger_params(config: &ScheduleConfig) -> LedgerParams {
    LedgerParams {
        target_error: config.target_error,
        sensitivity: config.credit_sensitivity,
        min: config.credit_min,
        max: config.credit_max,
        window_seconds: config.credit_window_seconds,
    }
}

/// Everything a decision depends on besides the mutable state.
#[derive(Debug, Clone)]
pub struct DecisionContext<'a> {
    /// Validated config in force.
    pub config: &'a ScheduleConfig,
    /// Forecast view at `at_ms`.
    pub forecast: &'a ForecastSnapshot,
    /// Forecast provenance (issuer, issue time), if a forecast exists.
    pub forecast_used: Option<ForecastUsed>,
    /// Active manual override, if any.
    pub manual: Option<&'a ManualOverride>,
    /// Event time of the causing input, epoch ms.
    pub at_ms: i64,
    /// Version this decision gets.
    pub version: i64,
    /// Ownership epoch of the partition's owner (0 before any claim; dry runs).
    pub epoch: i64,
    /// What caused it.
    pub cause: DecisionCause,
    /// Position of the causing input.
    pub input: InputPosition,
    /// Telemetry window accounted just before, if any.
    pub telemetry_window: Option<TelemetryWindow>,
    /// Delivered quality against the promise, and the observed request rate.
    pub delivered: Delivered,
}

/// What the schedule delivered so far, as the carbon-optimal policy plans from it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delivered {
    /// Exact account of delivered quality against the promise in force.
    pub quality: QualityAccount,
    /// Request rate of the last closed telemetry window, requests/s.
    pub observed_rate: Option<f64>,
    /// Length of a telemetry window, seconds (one ledger update each).
    pub window_seconds: f64,
}

/// Decide, updating `ledger` (commanded feed) and `memory` (policy state).
pub fn decide(
    ctx: &DecisionContext<'_>,
    ledger: &mut CreditLedger,
    memory: &mut PolicyMemory,
) -> Result<ScheduleDecision, PolicyError> {
    let config = ctx.config;
    let before = LedgerState {
        balance: ledger.balance(),
        velocity: ledger.velocity(),
    };
    // The policy works on a copy of its memory, kept only when the result is usable: a
    // refused decision leaves the schedule exactly as it was.
    let mut next_memory = *memory;
    let result = match ctx.manual {
        Some(m) => manual_result(m, config),
        None => {
            let policy =
                policy_named(&config.policy).ok_or_else(|| PolicyError::UnknownPolicy {
                    schedule: config.schedule.clone(),
                    policy: config.policy.clone(),
                    known: policy_names().join(", "),
                })?;
            let input = PolicyInput {
                schedule: &config.schedule,
                version: ctx.version,
                flavours: &config.flavours,
                forecast: ctx.forecast,
                credit: CreditView {
                    balance: ledger.balance(),
                    min: config.credit_min,
                    max: config.credit_max,
                    target_error: config.target_error,
                },
                plan: PlanContext {
                    quality: ctx.delivered.quality,
                    observed_rate: ctx.delivered.observed_rate,
                    window_seconds: ctx.delivered.window_seconds,
                    credit_sensitivity: config.credit_sensitivity,
                    min_slot_precision: config.min_slot_precision,
                },
            };
            policy.evaluate(&input, &mut next_memory)?
        }
    };
    check_usable(&result, config)?;
    *memory = next_memory;
    if config.precision_feed == PrecisionFeed::Commanded {
        ledger.update(&ledger_params(config), result.avg_precision, ctx.at_ms);
    }
    let processing = scaling_directive(ledger.balance(), config, ctx.forecast);
    let percentages = integer_percentages(&result.weights);
    let flavours = config
        .flavours
        .iter()
        .map(|f| DecisionFlavour {
            name: f.name.clone(),
            precision_percent: (f.precision.clamp(0.0, 1.0) * 100.0).round_ties_even() as i32,
            weight_percent: percentages
                .iter()
                .find(|(n, _)| *n == f.name)
                .map_or(0, |(_, p)| *p),
            weight: result
                .weights
                .iter()
                .find(|(n, _)| *n == f.name)
                .map_or(0.0, |(_, w)| *w),
            relative_energy: f.relative_energy,
            enabled: f.enabled,
            upstream_url: f.upstream_url.clone(),
            upstream_header: f.upstream_header.clone(),
        })
        .collect();
    let after = LedgerState {
        balance: ledger.balance(),
        velocity: ledger.velocity(),
    };
    Ok(ScheduleDecision {
        schedule: config.schedule.clone(),
        version: ctx.version,
        decided_at_ms: ctx.at_ms,
        valid_until_ms: valid_until(ctx, config),
        policy: if ctx.manual.is_some() {
            "manual".into()
        } else {
            config.policy.clone()
        },
        manual: ctx.manual.is_some(),
        avg_precision: result.avg_precision,
        flavours,
        credits: Credits {
            balance: after.balance,
            velocity: after.velocity,
            target: config.target_error,
            min: config.credit_min,
            max: config.credit_max,
            allowance: result.diagnostic("allowance"),
        },
        diagnostics: result
            .diagnostics
            .iter()
            .map(|(n, v)| Diagnostic {
                name: n.clone(),
                value: *v,
            })
            .collect(),
        processing,
        fallbacks: config.fallbacks.clone(),
        on_expiry: config.on_expiry,
        provenance: Provenance {
            cause: ctx.cause.as_str().to_string(),
            input: ctx.input.clone(),
            config_version: config.config_version,
            forecast: ctx.forecast_used.clone(),
            ledger_before: before,
            ledger_after: after,
            telemetry_window: ctx.telemetry_window.clone(),
        },
        forward_credentials: config.forward_credentials,
        epoch: ctx.epoch,
    })
}

/// `min(at + valid_for, end of the current forecast slot)`, in whole seconds like the
/// reference's `validUntil` (sub-seconds truncated). An override ends when it expires.
fn valid_until(ctx: &DecisionContext<'_>, config: &ScheduleConfig) -> i64 {
    let mut until = ctx.at_ms + config.valid_for_seconds * 1000;
    if let Some(end) = ctx.forecast.current_slot_end_ms.filter(|e| *e > ctx.at_ms) {
        until = until.min(end);
    }
    if let Some(m) = ctx.manual {
        until = until.min(m.expires_at_ms());
    }
    until.div_euclid(1000) * 1000
}

/// Refuse a result that would route nowhere or on numbers that are not numbers.
fn check_usable(result: &PolicyResult, config: &ScheduleConfig) -> Result<(), PolicyError> {
    let schedule = config.schedule.as_str();
    let non_finite = |detail: String| PolicyError::NonFinite {
        schedule: schedule.to_string(),
        detail,
    };
    for (flavour, w) in &result.weights {
        if !w.is_finite() || *w < 0.0 {
            return Err(non_finite(format!("weight of {flavour} is {w}")));
        }
    }
    if !result.avg_precision.is_finite() {
        return Err(non_finite(format!(
            "mean precision is {}",
            result.avg_precision
        )));
    }
    // An override set before a config change may name a flavour the config has since
    // disabled or removed; routers must never be sent there.
    for (flavour, w) in &result.weights {
        let enabled = config
            .flavours
            .iter()
            .any(|f| f.enabled && &f.name == flavour);
        if *w > 0.0 && !enabled {
            return Err(PolicyError::NotEnabled {
                schedule: schedule.to_string(),
                flavour: flavour.clone(),
            });
        }
    }
    if result.weights.iter().all(|(_, w)| *w == 0.0) {
        return Err(PolicyError::NoWeight {
            schedule: schedule.to_string(),
        });
    }
    Ok(())
}

fn manual_result(m: &ManualOverride, config: &ScheduleConfig) -> PolicyResult {
    let mut weights: Vec<(String, f64)> = m
        .weights
        .iter()
        .map(|w| (w.flavour.clone(), w.weight.max(0.0)))
        .collect();
    normalise(&mut weights);
    PolicyResult {
        avg_precision: avg_precision(&weights, &config.flavours),
        weights,
        diagnostics: vec![],
    }
}
