//! `p100`: all traffic to the highest-precision enabled flavour (the no-saving baseline).

use super::*;

/// The p100 policy.
#[derive(Debug, Clone, Copy)]
pub struct P100;

impl Policy for P100 {
    fn name(&self) -> &'static str {
        "p100"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        _memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let best = enabled_by_precision(input)?[0];
        Ok(PolicyResult {
            weights: vec![(best.name.clone(), 1.0)],
            avg_precision: best.precision,
            diagnostics: vec![("selected_flavour".into(), Some(best.precision))],
        })
    }
}
