//! `forecast-aware`: credit-greedy, nudged by the short-term trend of the forecast.
//!
//! Reference section 3.2: a rise of the next slot over the current one (by ≥ 15 g) moves
//! up to 0.15 of traffic towards the baseline now; a fall moves it away. Deliberate
//! difference: the baseline is the highest-precision *enabled* flavour (the reference
//! also considers disabled ones).

use super::*;

/// The forecast-aware policy.
#[derive(Debug, Clone, Copy)]
pub struct ForecastAware;

impl Policy for ForecastAware {
    fn name(&self) -> &'static str {
        "forecast-aware"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let mut result = CreditGreedy.evaluate(input, memory)?;
        let (Some(now), Some(next)) = (input.forecast.intensity_now, input.forecast.intensity_next)
        else {
            return Ok(result);
        };
        let trend = next - now;
        if trend.abs() < 15.0 {
            return Ok(result);
        }
        let step = (0.25 * trend.abs() / now.max(1e-6)).min(0.15);
        let adjustment = if trend > 0.0 { -step } else { step };
        let baseline = enabled_by_precision(input)?[0].name.clone();
        let weights = &mut result.weights;
        if weights.len() > 1 {
            let w_base = weights
                .iter()
                .find(|(n, _)| *n == baseline)
                .map_or(0.0, |(_, w)| *w);
            let nb = 1.0 - w_base;
            if adjustment > 0.0 && nb > 0.0 {
                let shift = adjustment.min(w_base);
                let scale = (nb + shift) / nb;
                for (n, w) in weights.iter_mut() {
                    *w = if *n == baseline {
                        (w_base - shift).max(0.05)
                    } else {
                        (*w * scale).min(0.95)
                    };
                }
            } else if adjustment < 0.0 && nb > 0.0 {
                let shift = adjustment.abs().min(nb);
                for (n, w) in weights.iter_mut() {
                    *w = if *n == baseline {
                        (w_base + shift).min(0.98)
                    } else {
                        (*w - shift * *w / nb).max(0.02)
                    };
                }
            }
        }
        result.renormalise(input.flavours);
        let baseline_weight = result
            .weights
            .iter()
            .find(|(n, _)| *n == baseline)
            .map(|(_, w)| *w);
        result.diagnostics.extend([
            ("trend".into(), Some(trend)),
            ("adjustment".into(), Some(adjustment)),
            ("baseline_weight".into(), baseline_weight),
        ]);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{evaluate, percentages, weight};
    use super::*;

    fn run(policy: &dyn Policy, now: f64, next: f64) -> PolicyResult {
        let forecast = ForecastSnapshot::from_values(Some(now), Some(next), vec![now, next]);
        evaluate(policy, forecast, 0.0, 1, &mut PolicyMemory::default())
    }

    #[test]
    fn reference_worked_example_rising_180_to_200() {
        let r = run(&ForecastAware, 180.0, 200.0);
        assert!((r.diagnostic("adjustment").expect("set") + 0.25 * 20.0 / 180.0).abs() < 1e-12);
        assert!((weight(&r, "precision-100") - 0.4528).abs() < 1e-4);
        assert!((weight(&r, "precision-50") - 0.2432).abs() < 1e-4);
        assert!((weight(&r, "precision-30") - 0.3040).abs() < 1e-4);
        assert_eq!(percentages(&r), vec![46, 24, 30]);
    }

    #[test]
    fn small_trend_leaves_credit_greedy_unchanged() {
        assert_eq!(
            run(&ForecastAware, 180.0, 190.0),
            run(&CreditGreedy, 180.0, 190.0)
        );
    }
}
