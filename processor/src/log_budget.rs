//! Log lines about individual input records, rate-limited: a flood of bad records (a
//! misconfigured router, a replayed topic, a hostile client) must not become a flood of
//! logs that costs more than the records themselves and buries everything else.
//!
//! Nothing is lost by it: every refused record is still counted in the metrics and
//! written to the dead-letter or rejection topic. The log shows the first few of each
//! kind per interval, and the next line it shows says how many it left out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines logged per kind and interval before the rest are left out.
const LINES_PER_INTERVAL: u32 = 10;
/// How long an interval lasts.
const INTERVAL: Duration = Duration::from_secs(10);

/// What a kind of record has spent of its budget in the current interval.
struct Spent {
    since: Instant,
    logged: u32,
    left_out: u64,
}

/// Budgets per (topic, kind). Both are static names from closed sets (topic base names,
/// error and refusal kinds), so the map stays small whatever the input.
#[derive(Default)]
pub(crate) struct LogBudget {
    kinds: HashMap<(&'static str, &'static str), Spent>,
}

impl LogBudget {
    /// Whether one more line about a record of `topic` refused for `kind` may be logged
    /// at `now`. `Some(n)`: log it, and say that `n` similar lines were left out since
    /// the previous one; `None`: leave it out.
    pub(crate) fn allow(
        &mut self,
        topic: &'static str,
        kind: &'static str,
        now: Instant,
    ) -> Option<u64> {
        let spent = self.kinds.entry((topic, kind)).or_insert(Spent {
            since: now,
            logged: 0,
            left_out: 0,
        });
        if now.duration_since(spent.since) >= INTERVAL {
            spent.since = now;
            spent.logged = 0;
        }
        if spent.logged < LINES_PER_INTERVAL {
            spent.logged += 1;
            Some(std::mem::take(&mut spent.left_out))
        } else {
            spent.left_out += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_kind_is_logged_a_few_times_per_interval_then_reports_what_it_left_out() {
        let mut budget = LogBudget::default();
        let t0 = Instant::now();
        let logged: Vec<Option<u64>> = (0..1000)
            .map(|_| budget.allow("request.telemetry", "future_dated", t0))
            .collect();
        let shown = logged.iter().filter(|l| l.is_some()).count();
        assert_eq!(shown, LINES_PER_INTERVAL as usize);
        assert!(logged[..10].iter().all(|l| *l == Some(0)));

        // The first line of the next interval says how many were left out.
        let later = t0 + INTERVAL;
        assert_eq!(
            budget.allow("request.telemetry", "future_dated", later),
            Some(1000 - u64::from(LINES_PER_INTERVAL))
        );
        assert_eq!(
            budget.allow("request.telemetry", "future_dated", later),
            Some(0)
        );
    }

    #[test]
    fn kinds_and_topics_have_budgets_of_their_own() {
        let mut budget = LogBudget::default();
        let t0 = Instant::now();
        for _ in 0..100 {
            budget.allow("request.telemetry", "future_dated", t0);
        }
        assert_eq!(budget.allow("request.telemetry", "too_old", t0), Some(0));
        assert_eq!(
            budget.allow("carbon.forecasts", "future_dated", t0),
            Some(0)
        );
        assert_eq!(budget.allow("request.telemetry", "future_dated", t0), None);
    }
}
