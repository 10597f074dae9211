//! `credit-greedy`: spend credit on greener flavours, more when the grid is dirty.
//!
//! Reference section 3.1: the allowance (share of traffic moved off the baseline) grows
//! with the normalised credit balance, is damped while in debt, and is multiplied by a
//! carbon factor (0.3 at ≤ 80 g, 2.0 at ≥ 280 g), capped at 0.95. Greener flavours share
//! the allowance in proportion to energy saved per unit of error.

use super::*;

/// The credit-greedy policy.
#[derive(Debug, Clone, Copy)]
pub struct CreditGreedy;

impl Policy for CreditGreedy {
    fn name(&self) -> &'static str {
        "credit-greedy"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        _memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let enabled = enabled_by_precision(input)?;
        let baseline = enabled[0];
        let credit = input.credit;
        let normalised_credit = credit.normalised();
        let mut base_allowance = normalised_credit.clamp(0.0, 1.0);
        if credit.balance < 0.0 && credit.min < 0.0 {
            let debt_ratio = (credit.balance.abs() / credit.min.abs()).min(1.0);
            base_allowance *= (1.0 - 0.5 * debt_ratio).max(0.2);
        }
        let now = input.forecast.intensity_now;
        let carbon_ratio = now.map(|n| ((n - 80.0) / (280.0 - 80.0)).clamp(0.0, 1.0));
        let carbon_multiplier = carbon_ratio.map_or(1.0, |r| 0.3 + 1.7 * r);
        let allowance = (base_allowance * carbon_multiplier).clamp(0.0, 0.95);

        let greener = &enabled[1..];
        let scores: Vec<f64> = greener.iter().map(|f| carbon_score(baseline, f)).collect();
        let total: f64 = scores.iter().sum();
        let total = if total == 0.0 {
            scores.len() as f64
        } else {
            total
        };
        let mut weights = vec![(baseline.name.clone(), 1.0 - allowance)];
        weights.extend(
            greener
                .iter()
                .zip(&scores)
                .map(|(f, s)| (f.name.clone(), allowance * s / total)),
        );
        normalise(&mut weights);
        let avg = avg_precision(&weights, input.flavours);
        Ok(PolicyResult {
            diagnostics: vec![
                ("credit_balance".into(), Some(credit.balance)),
                ("base_allowance".into(), Some(base_allowance)),
                ("carbon_multiplier".into(), Some(carbon_multiplier)),
                ("allowance".into(), Some(allowance)),
                ("avg_precision".into(), Some(avg)),
                ("carbon_now".into(), now),
                ("normalised_credit".into(), Some(normalised_credit)),
                ("carbon_ratio".into(), carbon_ratio),
            ],
            weights,
            avg_precision: avg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{evaluate, percentages, weight};
    use super::*;

    fn run(now: f64, balance: f64) -> PolicyResult {
        let forecast = ForecastSnapshot::from_values(Some(now), Some(now), vec![now]);
        evaluate(
            &CreditGreedy,
            forecast,
            balance,
            1,
            &mut PolicyMemory::default(),
        )
    }

    #[test]
    fn reference_worked_example_at_180g() {
        let r = run(180.0, 0.0);
        assert!((weight(&r, "precision-100") - 0.425).abs() < 1e-12);
        assert!((weight(&r, "precision-50") - 0.575 * 0.8 / 1.8).abs() < 1e-12);
        assert!((weight(&r, "precision-30") - 0.575 / 1.8).abs() < 1e-12);
        assert_eq!(r.avg_precision, 0.6486111111111111);
        assert_eq!(r.diagnostic("allowance"), Some(0.575));
        assert_eq!(r.diagnostic("carbon_multiplier"), Some(1.15));
        assert_eq!(r.diagnostic("carbon_ratio"), Some(0.5));
        assert_eq!(r.diagnostic("normalised_credit"), Some(0.5));
        assert_eq!(r.diagnostic("base_allowance"), Some(0.5));
    }

    #[test]
    fn reference_examples_at_60_and_300g() {
        // Reference section 3.1: now=60 → 85/7/8; now=300 → 5/42/53.
        assert_eq!(percentages(&run(60.0, 0.0)), vec![85, 7, 8]);
        assert_eq!(percentages(&run(300.0, 0.0)), vec![5, 42, 53]);
    }

    #[test]
    fn debt_damps_the_allowance() {
        let r = run(180.0, -0.5);
        // normalised 0.25, debt ratio 0.5 → ×0.75 → 0.1875, ×1.15
        assert!((r.diagnostic("allowance").expect("set") - 0.1875 * 1.15).abs() < 1e-12);
    }
}
