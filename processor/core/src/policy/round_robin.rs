//! `round-robin`: an even static split over the enabled flavours (as in the reference:
//! not a per-request rotation).

use super::*;

/// The round-robin policy.
#[derive(Debug, Clone, Copy)]
pub struct RoundRobin;

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        _memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let enabled = enabled_by_precision(input)?;
        let n = enabled.len() as f64;
        let weights: Vec<(String, f64)> =
            enabled.iter().map(|f| (f.name.clone(), 1.0 / n)).collect();
        Ok(PolicyResult {
            avg_precision: avg_precision(&weights, input.flavours),
            weights,
            diagnostics: vec![("num_flavours".into(), Some(n))],
        })
    }
}
