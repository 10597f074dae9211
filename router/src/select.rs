//! Flavour selection: weights are used proportionally, never normalised (10/10 and
//! 100/300 split like 50/50 and 25/75); a weight sum of 0 means there is no provider.
//!
//! Two modes. *Random* draws each request independently with probability weight / sum.
//! *Smooth* is smooth weighted round-robin (nginx's): every pick adds each weight to its
//! flavour's credit, takes the flavour with the most credit and charges it the sum, so
//! delivered counts never drift from the commanded shares by a request or more.

use std::sync::Mutex;

/// How requests are spread over flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Independent weighted draws.
    Random,
    /// Smooth weighted round-robin.
    Smooth,
}

/// Picks flavour indices for one decision's weights.
#[derive(Debug)]
pub(crate) struct Picker {
    weights: Vec<f64>,
    total: f64,
    credit: Mutex<Vec<f64>>,
}

impl Picker {
    /// A picker over `weights` (one per flavour, in order). Negative or non-finite
    /// weights count as 0.
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let weights: Vec<f64> = weights
            .into_iter()
            .map(|w| if w.is_finite() && w > 0.0 { w } else { 0.0 })
            .collect();
        let total = weights.iter().sum();
        Self {
            credit: Mutex::new(vec![0.0; weights.len()]),
            weights,
            total,
        }
    }

    /// Sum of the weights as given (not normalised).
    #[cfg(test)]
    pub(crate) fn total(&self) -> f64 {
        self.total
    }

    /// Pick with a uniform draw `u` in [0, 1) (random mode); `None` when the sum is 0.
    fn pick_random(&self, u: f64) -> Option<usize> {
        if self.total <= 0.0 {
            return None;
        }
        let mut point = u * self.total;
        let mut last = None;
        for (i, w) in self.weights.iter().enumerate() {
            if *w <= 0.0 {
                continue;
            }
            if point < *w {
                return Some(i);
            }
            point -= w;
            last = Some(i);
        }
        last // rounding at the very top of the range
    }

    /// Pick the next flavour in smooth weighted round-robin; `None` when the sum is 0.
    pub(crate) fn pick_smooth(&self) -> Option<usize> {
        if self.total <= 0.0 {
            return None;
        }
        let mut credit = self.credit.lock().unwrap_or_else(|e| e.into_inner());
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate() {
            if *w <= 0.0 {
                continue;
            }
            credit[i] += w;
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            credit[b] -= self.total;
        }
        best
    }

    /// Pick in `mode`, drawing from `u` when random.
    pub(crate) fn pick(&self, mode: Mode, u: impl FnOnce() -> f64) -> Option<usize> {
        match mode {
            Mode::Random => self.pick_random(u()),
            Mode::Smooth => self.pick_smooth(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn shares(p: &Picker, mode: Mode, n: usize) -> Vec<usize> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
        let mut counts = vec![0; 3];
        for _ in 0..n {
            let i = p.pick(mode, || rng.random::<f64>()).expect("a flavour");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn random_mode_is_within_the_binomial_interval() {
        // 30/20/50 over 10,000 requests: each count within 3.29 σ (99.9 %) of n·p.
        let p = Picker::new([30.0, 20.0, 50.0]);
        let n = 10_000;
        let counts = shares(&p, Mode::Random, n);
        for (c, share) in counts.iter().zip([0.3, 0.2, 0.5]) {
            let mean = n as f64 * share;
            let sigma = (n as f64 * share * (1.0 - share)).sqrt();
            assert!(
                (*c as f64 - mean).abs() <= 3.29 * sigma,
                "{counts:?} outside the 99.9 % interval"
            );
        }
    }

    #[test]
    fn smooth_mode_stays_within_one_request_of_the_shares_at_every_step() {
        let p = Picker::new([30.0, 20.0, 50.0]);
        let mut counts = [0_f64; 3];
        for step in 1..=10_000 {
            counts[p.pick_smooth().expect("a flavour")] += 1.0;
            for (c, share) in counts.iter().zip([0.3, 0.2, 0.5]) {
                assert!(
                    (c - step as f64 * share).abs() < 1.0,
                    "step {step}: {counts:?}"
                );
            }
        }
        // Exact per cycle of 100.
        assert_eq!(counts, [3000.0, 2000.0, 5000.0]);
    }

    #[test]
    fn sums_below_and_above_100_are_used_proportionally() {
        // 10/10 (sum 20) and 100/300 (sum 400) are not normalised first.
        for weights in [[10.0, 10.0, 0.0], [100.0, 300.0, 0.0]] {
            let p = Picker::new(weights);
            let counts = shares(&p, Mode::Smooth, 400);
            let total: f64 = weights.iter().sum();
            assert_eq!(counts[0] as f64, 400.0 * weights[0] / total);
            assert_eq!(counts[2], 0, "a zero weight gets nothing");
        }
    }

    #[test]
    fn a_zero_sum_has_no_provider() {
        let p = Picker::new([0.0, 0.0, -1.0]);
        assert_eq!(p.total(), 0.0);
        assert_eq!(p.pick_random(0.5), None);
        assert_eq!(p.pick_smooth(), None);
    }
}
