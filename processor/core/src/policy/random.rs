//! `random`: an independent uniform draw per enabled flavour, normalised.
//!
//! Deliberate difference: the draw is seeded from the schedule id and the decision
//! version (the reference uses an unseeded process RNG), so re-deriving a decision from
//! the log reproduces it exactly (DESIGN invariants 2 and 5).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// The random policy.
#[derive(Debug, Clone, Copy)]
pub struct Random;

/// Seed from the schedule id and version: FNV-1a 64 of the id, mixed with the version.
/// ChaCha8 and `seed_from_u64` are value-stable across rand releases, so a decision
/// replayed by a later build draws the same weights.
fn seed(schedule: &str, version: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (version as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        _memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let enabled = enabled_by_precision(input)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed(input.schedule, input.version));
        let mut weights: Vec<(String, f64)> = input
            .flavours
            .iter()
            .filter(|f| f.enabled)
            .map(|f| (f.name.clone(), rng.random::<f64>()))
            .collect();
        if weights.iter().all(|(_, w)| *w == 0.0) {
            weights = vec![(enabled[0].name.clone(), 1.0)];
        }
        normalise(&mut weights);
        Ok(PolicyResult {
            avg_precision: avg_precision(&weights, input.flavours),
            weights,
            diagnostics: vec![],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::evaluate;
    use super::*;

    #[test]
    fn same_schedule_and_version_draw_the_same_weights() {
        let draw = |version| {
            evaluate(
                &Random,
                ForecastSnapshot::default(),
                0.0,
                version,
                &mut PolicyMemory::default(),
            )
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7).weights, draw(8).weights);
    }
}
