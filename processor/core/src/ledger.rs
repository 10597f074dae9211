//! The credit ledger: how much quality credit a schedule has earned or spent.
//!
//! Update rule (reference section 2): with target error `e`, sensitivity `s` and delivered
//! (or commanded) precision `p`, `delta = (e - max(0, 1 - p)) * s`; the balance moves by
//! `delta` and is clamped to `[min, max]` on every update; velocity is the mean of the
//! *unclamped* deltas in the window. Deliberate difference: the window is measured in
//! event-time seconds (the reference counts updates, whatever their spacing).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Parameters of the ledger, taken from the schedule config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerParams {
    /// Allowed mean error (1 − precision).
    pub target_error: f64,
    /// Scale of one delta.
    pub sensitivity: f64,
    /// Lower bound of the balance.
    pub min: f64,
    /// Upper bound of the balance.
    pub max: f64,
    /// Velocity window, event-time seconds.
    pub window_seconds: i64,
}

/// Balance and history of one schedule's ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreditLedger {
    balance: f64,
    /// `(event time ms, unclamped delta)` of the updates inside the window, oldest first.
    history: VecDeque<(i64, f64)>,
}

impl CreditLedger {
    /// A ledger with a given balance and no history (dry runs, tests).
    pub fn with_balance(balance: f64) -> Self {
        Self {
            balance,
            history: VecDeque::new(),
        }
    }

    /// A ledger with a balance and a history of `(event time ms, delta)`.
    pub fn with_history(balance: f64, history: impl IntoIterator<Item = (i64, f64)>) -> Self {
        Self {
            balance,
            history: history.into_iter().collect(),
        }
    }

    /// Current balance.
    pub fn balance(&self) -> f64 {
        self.balance
    }

    /// Mean of the deltas in the window (0 when empty).
    pub fn velocity(&self) -> f64 {
        if self.history.is_empty() {
            0.0
        } else {
            self.history.iter().map(|(_, d)| d).sum::<f64>() / self.history.len() as f64
        }
    }

    /// The delta an update with precision `p` would apply.
    pub fn delta(params: &LedgerParams, precision: f64) -> f64 {
        let realised_error = (1.0 - precision).max(0.0);
        (params.target_error - realised_error) * params.sensitivity
    }

    /// Account one precision observation at event time `at_ms`.
    pub fn update(&mut self, params: &LedgerParams, precision: f64, at_ms: i64) {
        let delta = Self::delta(params, precision);
        self.history.push_back((at_ms, delta));
        let horizon = at_ms.saturating_sub(params.window_seconds.saturating_mul(1000));
        while self.history.len() > 1 && self.history.front().is_some_and(|(t, _)| *t <= horizon) {
            self.history.pop_front();
        }
        self.balance = (self.balance + delta).clamp(params.min, params.max);
    }

    /// Re-clamp after a config change narrowed the bounds.
    pub fn clamp_to(&mut self, params: &LedgerParams) {
        self.balance = self.balance.clamp(params.min, params.max);
    }
}

/// The exact account of delivered quality against the promise in force: over every
/// closed telemetry window, answered requests × (delivered precision − promised
/// precision), in precision·requests. The balance above is the reference's bounded,
/// forgetting account; this one is never clamped, so what the carbon-optimal policy banked
/// or borrowed is still owed in full, and its plan can close the account exactly. It
/// starts again at zero whenever the promise changes (policy or target error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityAccount {
    /// Answered requests accounted.
    pub requests: i64,
    /// Σ requests × (precision − (1 − target error)): > 0 banked, < 0 owed.
    pub surplus: f64,
    /// Event time the promise in force began, epoch ms: windows that started earlier
    /// were served under another promise and are not accounted.
    #[serde(default)]
    pub since_ms: i64,
}

impl QualityAccount {
    /// An empty account for a promise that begins at `since_ms`.
    pub fn since(since_ms: i64) -> Self {
        Self {
            since_ms,
            ..Self::default()
        }
    }

    /// Account `served` answered requests of the window starting at `window_start_ms`,
    /// delivered at mean precision `precision`.
    pub fn record(&mut self, window_start_ms: i64, served: i64, precision: f64, target_error: f64) {
        if window_start_ms < self.since_ms || served <= 0 || !precision.is_finite() {
            return;
        }
        self.requests = self.requests.saturating_add(served);
        self.surplus += served as f64 * (precision - (1.0 - target_error));
    }

    /// Mean precision delivered over the account, `None` before any request.
    pub fn mean_precision(&self, target_error: f64) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - target_error + self.surplus / self.requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> LedgerParams {
        LedgerParams {
            target_error: 0.15,
            sensitivity: 0.33,
            min: -1.0,
            max: 1.0,
            window_seconds: 300,
        }
    }

    #[test]
    fn reference_deltas_per_flavour() {
        // Reference section 2: p100 earns +0.0495, p50 spends 0.1155, p30 spends 0.1815.
        let p = defaults();
        assert!((CreditLedger::delta(&p, 1.0) - 0.0495).abs() < 1e-12);
        assert!((CreditLedger::delta(&p, 0.5) + 0.1155).abs() < 1e-12);
        assert!((CreditLedger::delta(&p, 0.3) + 0.1815).abs() < 1e-12);
    }

    #[test]
    fn clamps_balance_but_averages_unclamped_deltas() {
        let p = defaults();
        let mut l = CreditLedger::default();
        for i in 0..30 {
            l.update(&p, 0.3, i * 1000);
        }
        assert_eq!(l.balance(), -1.0);
        assert!((l.velocity() + 0.1815).abs() < 1e-12);
    }

    #[test]
    fn the_quality_account_is_exact_and_unclamped() {
        let mut a = QualityAccount::since(5_000);
        a.record(5_000, 1000, 0.3, 0.15); // owes 1000 × 0.55
        a.record(10_000, 500, 1.0, 0.15); // banks 500 × 0.15
        a.record(15_000, 0, 0.3, 0.15); // nothing served, nothing changes
        a.record(0, 700, 0.3, 0.15); // served under the previous promise
        assert_eq!(a.requests, 1500);
        assert!((a.surplus - (-550.0 + 75.0)).abs() < 1e-9);
        let mean = a.mean_precision(0.15).expect("requests");
        assert!((mean - (300.0 + 500.0) / 1500.0).abs() < 1e-12);
    }

    #[test]
    fn window_is_event_time_seconds() {
        let p = LedgerParams {
            window_seconds: 10,
            ..defaults()
        };
        let mut l = CreditLedger::default();
        l.update(&p, 0.3, 0);
        l.update(&p, 1.0, 5_000);
        assert!((l.velocity() - (-0.1815 + 0.0495) / 2.0).abs() < 1e-12);
        l.update(&p, 1.0, 11_000); // the update at t=0 is now outside the 10 s window
        assert!((l.velocity() - 0.0495).abs() < 1e-12);
    }
}
