//! `forecast-aware-global`: credit-greedy adjusted by trend, look-ahead, credit pressure,
//! demand, an emissions budget and the carbon zone.
//!
//! Reference section 3.3, reproduced factor by factor. Positive totals move traffic away
//! from the baseline (greener), negative totals towards it; |total| < 0.01 is a dead band.
//! Deliberate difference: the demand factor reads the forecast's demand (the reference's
//! is always 100/100, so always 0).

use super::*;

const GREEN: f64 = 80.0;
const RED: f64 = 220.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Zone {
    Unknown,
    Green,
    Red,
    Normal,
}

/// The forecast-aware-global policy.
#[derive(Debug, Clone, Copy)]
pub struct ForecastAwareGlobal;

fn trend_factor(f: &ForecastSnapshot) -> f64 {
    match (f.intensity_now, f.intensity_next) {
        (Some(now), Some(next)) if now > 0.0 => (-2.0 * (next - now) / now).clamp(-1.0, 1.0),
        _ => 0.0,
    }
}

fn demand_factor(f: &ForecastSnapshot) -> f64 {
    let (Some(now), Some(next)) = (f.demand_now, f.demand_next) else {
        return 0.0;
    };
    if now <= 0.0 {
        return 0.0;
    }
    match next / now {
        r if r > 1.5 => -0.6,
        r if r > 1.25 => -0.3,
        r if r < 0.6 => 0.4,
        r if r < 0.8 => 0.2,
        _ => 0.0,
    }
}

fn emissions_factor(now: Option<f64>, memory: &PolicyMemory) -> f64 {
    let Some(now) = now else { return 0.0 };
    if memory.evaluation_count < 10 || now <= 0.0 || now <= GREEN {
        return 0.0;
    }
    let avg = memory.cumulative_carbon / memory.evaluation_count as f64;
    if avg > 1.2 * now {
        0.5
    } else if avg > 1.05 * now {
        0.2
    } else if avg < 0.8 * now {
        -0.3
    } else {
        0.0
    }
}

fn lookahead_factor(f: &ForecastSnapshot) -> f64 {
    let Some(now) = f.intensity_now.filter(|n| *n > 0.0) else {
        return 0.0;
    };
    let points: Vec<f64> = f
        .slots
        .iter()
        .take(6)
        .copied()
        .filter(|p| *p > 0.0)
        .collect();
    if points.len() < 2 {
        return 0.0;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (i, p) in points.iter().enumerate() {
        let w = 1.0 / (1.0 + 0.3 * i as f64);
        num += w * p;
        den += w;
    }
    let mut l = -1.2 * (num / den / now).ln();
    let min = points.iter().copied().fold(f64::INFINITY, f64::min);
    let max = points.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if min / now < 0.6 {
        l += 0.2;
    }
    if max / now > 1.4 {
        l -= 0.2;
    }
    if now <= GREEN && points.iter().any(|p| *p <= GREEN) {
        l -= 0.4;
    }
    if now >= RED && points.iter().any(|p| *p >= RED) {
        l += 0.5;
    }
    l.clamp(-1.0, 1.0)
}

fn zone_of(now: Option<f64>) -> Zone {
    match now {
        None => Zone::Unknown,
        Some(n) if n <= 0.0 => Zone::Unknown,
        Some(n) if n <= GREEN => Zone::Green,
        Some(n) if n >= RED => Zone::Red,
        Some(_) => Zone::Normal,
    }
}

fn zone_bias(zone: Zone, f: &ForecastSnapshot) -> f64 {
    match zone {
        Zone::Green => -0.6,
        Zone::Red => 0.6,
        Zone::Unknown => 0.0,
        Zone::Normal => {
            let near: Vec<f64> = f
                .slots
                .iter()
                .copied()
                .filter(|p| *p != 0.0)
                .take(3)
                .collect();
            if near.iter().any(|p| *p <= GREEN) {
                -0.2
            } else if near.iter().any(|p| *p >= RED) {
                0.2
            } else {
                0.0
            }
        }
    }
}

impl Policy for ForecastAwareGlobal {
    fn name(&self) -> &'static str {
        "forecast-aware-global"
    }

    fn evaluate(
        &self,
        input: &PolicyInput<'_>,
        memory: &mut PolicyMemory,
    ) -> Result<PolicyResult, PolicyError> {
        let mut result = CreditGreedy.evaluate(input, memory)?;
        let f = input.forecast;
        let now = f.intensity_now;
        let c = trend_factor(f);
        let d = demand_factor(f);
        let e = emissions_factor(now, memory);
        let l = lookahead_factor(f);
        let cr = (0.6 * (input.credit.normalised() - 0.5)).clamp(-1.0, 1.0);
        let zone = zone_of(now);
        let z = zone_bias(zone, f);
        let total = (0.30 * c + 0.30 * l + 0.20 * cr + 0.10 * d + 0.10 * e + z).clamp(-1.0, 1.0);

        let enabled = enabled_by_precision(input)?;
        let baseline = enabled[0];
        let weights = &mut result.weights;
        if total.abs() >= 0.01 {
            let floor = match zone {
                Zone::Green => 0.08,
                Zone::Red => 0.01,
                _ => 0.02,
            };
            let w_base = weights
                .iter()
                .find(|(n, _)| *n == baseline.name)
                .map_or(0.0, |(_, w)| *w);
            let nb = 1.0 - w_base;
            if total > 0.0 {
                let zm = if zone == Zone::Red { 1.5 } else { 1.0 };
                let reduction = (w_base * (0.4 + total) * zm).min((w_base - floor).max(0.0));
                if reduction > 0.0 {
                    let others: Vec<(usize, f64)> = weights
                        .iter()
                        .enumerate()
                        .filter(|(_, (n, _))| *n != baseline.name)
                        .map(|(i, (n, _))| {
                            let fl = enabled
                                .iter()
                                .find(|f| f.name == *n)
                                .copied()
                                .unwrap_or(baseline);
                            (i, carbon_score(baseline, fl))
                        })
                        .collect();
                    let total_score: f64 = others.iter().map(|(_, s)| s).sum();
                    for (n, w) in weights.iter_mut() {
                        if *n == baseline.name {
                            *w = (w_base - reduction).max(floor);
                        }
                    }
                    if total_score > 0.0 {
                        for (i, s) in others {
                            weights[i].1 += reduction * s / total_score;
                        }
                    }
                }
            } else if nb > 0.0 {
                let zm = if zone == Zone::Green { 1.5 } else { 1.0 };
                let factor = (1.0 + total * zm).max(0.1);
                let mut removed = 0.0;
                for (n, w) in weights.iter_mut() {
                    if *n != baseline.name {
                        let new = (*w * factor).max(0.01);
                        removed += *w - new;
                        *w = new;
                    }
                }
                for (n, w) in weights.iter_mut() {
                    if *n == baseline.name {
                        *w = (w_base + removed).min(0.98);
                    }
                }
            }
            normalise(weights);
        }
        result.avg_precision = avg_precision(&result.weights, input.flavours);
        result.diagnostics.extend([
            ("carbon_adjustment".into(), Some(c)),
            ("lookahead_adjustment".into(), Some(l)),
            ("credit_pressure".into(), Some(cr)),
            ("demand_adjustment".into(), Some(d)),
            ("emissions_adjustment".into(), Some(e)),
            ("zone_adjustment".into(), Some(z)),
            ("total_adjustment".into(), Some(total)),
            (
                "cumulative_carbon_gco2".into(),
                Some(memory.cumulative_carbon),
            ),
            (
                "evaluation_count".into(),
                Some(memory.evaluation_count as f64),
            ),
        ]);
        // Bookkeeping after deciding, on commanded weights (reference step 11).
        let now_value = now.unwrap_or(0.0);
        memory.cumulative_carbon += result
            .weights
            .iter()
            .map(|(n, w)| {
                w * input
                    .flavours
                    .iter()
                    .find(|f| &f.name == n)
                    .map_or(0.0, |f| f.relative_energy)
                    * now_value
            })
            .sum::<f64>();
        memory.evaluation_count += 1;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{evaluate, percentages as pct};
    use super::*;

    fn run(now: f64, next: f64, slots: Vec<f64>) -> (PolicyResult, PolicyMemory) {
        let mut memory = PolicyMemory::default();
        let forecast = ForecastSnapshot::from_values(Some(now), Some(next), slots);
        let r = evaluate(&ForecastAwareGlobal, forecast, 0.0, 1, &mut memory);
        (r, memory)
    }

    #[test]
    fn reference_example_dead_band_at_180() {
        let (r, memory) = run(180.0, 200.0, vec![180.0, 200.0, 220.0, 240.0, 260.0, 280.0]);
        assert!((r.diagnostic("carbon_adjustment").expect("c") + 0.2222).abs() < 1e-4);
        assert!((r.diagnostic("lookahead_adjustment").expect("l") + 0.437).abs() < 1e-3);
        assert_eq!(r.diagnostic("zone_adjustment"), Some(0.2));
        assert!((r.diagnostic("total_adjustment").expect("t") - 0.0023).abs() < 1e-3);
        assert_eq!(pct(&r), vec![42, 26, 32]);
        assert_eq!(memory.evaluation_count, 1);
        assert!(memory.cumulative_carbon > 0.0);
    }

    #[test]
    fn reference_example_red_300() {
        let (r, _) = run(300.0, 300.0, vec![300.0, 300.0, 290.0, 280.0, 270.0, 260.0]);
        assert!((r.diagnostic("lookahead_adjustment").expect("l") - 0.55).abs() < 0.01);
        assert!((r.diagnostic("total_adjustment").expect("t") - 0.765).abs() < 0.01);
        assert_eq!(pct(&r), vec![1, 44, 55]);
    }

    #[test]
    fn reference_example_green_60() {
        let (r, _) = run(60.0, 60.0, vec![60.0, 55.0, 50.0, 55.0, 60.0, 70.0]);
        assert!((r.diagnostic("lookahead_adjustment").expect("l") + 0.353).abs() < 0.01);
        assert!((r.diagnostic("total_adjustment").expect("t") + 0.706).abs() < 0.01);
        assert_eq!(pct(&r), vec![98, 1, 1]);
    }
}
