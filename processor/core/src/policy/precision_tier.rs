//! `precision-tier`: keep the mean precision at the target by mixing precision tiers.
//!
//! Designed from seed 002 (the reference lists it but does not implement it):
//!
//! 1. Tiers: enabled flavours sorted by precision; the highest precision forms the *high*
//!    tier, the lowest the *low* tier, everything between the *mid* tier (with two
//!    distinct precisions there is no mid tier; with one, a single tier). A tier's
//!    precision is the mean of its flavours'.
//! 2. Target: `T = 1 − target_error − slack`, where the credit balance buys slack:
//!    `slack = (normalised_credit − 0.5) · target_error` — a full ledger lets the mean
//!    dip by half the target error, an empty one demands half of it back. `T` is clamped
//!    to the tiers' precision range.
//! 3. Split: mix the two *adjacent* tiers that bracket `T` so the mean equals `T` exactly
//!    (high+mid when `T` is above the mid tier, mid+low below). Mixing neighbours keeps
//!    delivered precision close to the target on every request, which is why this policy
//!    swings least (seed 000: an 8.6 pp swing against 25–46 pp for the others).
//! 4. Within a tier, traffic is split evenly among its flavours.

use super::*;

/// The precision-tier policy.
#[derive(Debug, Clone, Copy)]
pub struct PrecisionTier;

impl Policy for PrecisionTier {
    fn name(&self) -> &'static str {
        "precision-tier"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        _memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let enabled = enabled_by_precision(input)?;
        let top = enabled[0].precision;
        let bottom = enabled[enabled.len() - 1].precision;
        let tiers: Vec<Vec<&Flavour>> = if top == bottom {
            vec![enabled.clone()]
        } else {
            let high: Vec<_> = enabled
                .iter()
                .copied()
                .filter(|f| f.precision == top)
                .collect();
            let low: Vec<_> = enabled
                .iter()
                .copied()
                .filter(|f| f.precision == bottom)
                .collect();
            let mid: Vec<_> = enabled
                .iter()
                .copied()
                .filter(|f| f.precision != top && f.precision != bottom)
                .collect();
            [high, mid, low]
                .into_iter()
                .filter(|t| !t.is_empty())
                .collect()
        };
        let tier_precision: Vec<f64> = tiers
            .iter()
            .map(|t| t.iter().map(|f| f.precision).sum::<f64>() / t.len() as f64)
            .collect();
        let credit = input.credit;
        let slack = (credit.normalised().clamp(0.0, 1.0) - 0.5) * credit.target_error;
        let target = (1.0 - credit.target_error - slack).clamp(bottom, top);

        // Tier shares: the adjacent pair (i, i+1) with p_i ≥ T ≥ p_{i+1}.
        let mut shares = vec![0.0; tiers.len()];
        if tiers.len() == 1 {
            shares[0] = 1.0;
        } else {
            let i = (0..tiers.len() - 1)
                .find(|&i| target >= tier_precision[i + 1])
                .unwrap_or(tiers.len() - 2);
            let (hi, lo) = (tier_precision[i], tier_precision[i + 1]);
            let w_hi = if hi > lo {
                ((target - lo) / (hi - lo)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            shares[i] = w_hi;
            shares[i + 1] = 1.0 - w_hi;
        }
        let mut weights = Vec::new();
        for (tier, share) in tiers.iter().zip(&shares) {
            for f in tier {
                weights.push((f.name.clone(), share / tier.len() as f64));
            }
        }
        normalise(&mut weights);
        let avg = avg_precision(&weights, input.flavours);
        let tier_share = |i: usize| shares.get(i).copied();
        Ok(PolicyResult {
            weights,
            avg_precision: avg,
            diagnostics: vec![
                ("credit_balance".into(), Some(credit.balance)),
                ("target_precision".into(), Some(target)),
                ("credit_slack".into(), Some(slack)),
                ("tier_high_share".into(), tier_share(0)),
                (
                    "tier_mid_share".into(),
                    if tiers.len() == 3 {
                        tier_share(1)
                    } else {
                        None
                    },
                ),
                (
                    "tier_low_share".into(),
                    if tiers.len() > 1 {
                        tier_share(tiers.len() - 1)
                    } else {
                        None
                    },
                ),
                ("avg_precision".into(), Some(avg)),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{evaluate, weight};
    use super::*;

    fn run(balance: f64) -> PolicyResult {
        evaluate(
            &PrecisionTier,
            ForecastSnapshot::default(),
            balance,
            1,
            &mut PolicyMemory::default(),
        )
    }

    #[test]
    fn neutral_credit_meets_the_target_exactly_with_neighbouring_tiers() {
        let r = run(0.0);
        assert!((r.avg_precision - 0.85).abs() < 1e-12);
        // 0.85 lies between p100 and p50: 70 % / 30 %, nothing on p30.
        assert!((weight(&r, "precision-100") - 0.7).abs() < 1e-12);
        assert!((weight(&r, "precision-50") - 0.3).abs() < 1e-12);
        assert_eq!(weight(&r, "precision-30"), 0.0);
    }

    #[test]
    fn credit_buys_slack_and_debt_takes_it_back() {
        assert!((run(1.0).avg_precision - 0.775).abs() < 1e-12);
        assert!((run(-1.0).avg_precision - 0.925).abs() < 1e-12);
    }
}
