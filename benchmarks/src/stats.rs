//! Percentile summaries of latency samples.

use std::fmt;

/// p50, p99, p99.9, max and mean of a sample set, in the unit of the samples (ms, decisions/s, MiB...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples summarised.
    pub n: usize,
    /// 50th percentile (nearest rank), in the samples' unit; NaN when there are none.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// 99.9th percentile (nearest rank).
    pub p999: f64,
    /// Largest sample; NaN when there are none.
    pub max: f64,
    /// Smallest sample; NaN when there are none.
    pub min: f64,
    /// Arithmetic mean of the samples; 0 when there are none.
    pub mean: f64,
}

impl Summary {
    /// Summarise `samples` (NaN-free).
    pub fn of(samples: &[f64]) -> Self {
        let mut s: Vec<f64> = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if s.is_empty() {
                return f64::NAN;
            }
            let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
            s[i]
        };
        Self {
            n: s.len(),
            p50: rank(0.5),
            p99: rank(0.99),
            p999: rank(0.999),
            max: s.last().copied().unwrap_or(f64::NAN),
            min: s.first().copied().unwrap_or(f64::NAN),
            mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
        }
    }
}

impl Summary {
    /// Largest minus smallest: how far runs of a benchmark differ.
    pub fn spread(&self) -> f64 {
        self.max - self.min
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  mean {:>6.1} ms  (n={})",
            self.p50, self.p99, self.max, self.mean, self.n
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let s = super::Summary::of(&(1..=100).map(f64::from).collect::<Vec<_>>());
        assert_eq!((s.p50, s.p99, s.max, s.mean), (50.0, 99.0, 100.0, 50.5));
    }
}
