//! The sample flavour service, after the reference's *carbonstat*: one statistics
//! computation (mean and standard deviation of a deterministic series) done on 100 %,
//! 50 % or 30 % of its input. Less input is less work — and less precise. Each flavour is
//! served under its own path prefix (`/precision-100`, `/precision-50`, `/precision-30`),
//! so one process offers the three upstreams a schedule names.

use serde::Serialize;

/// The answer of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Flavour that computed it.
    pub flavour: String,
    /// Fraction of the input used.
    pub precision: f64,
    /// Points used.
    pub used: usize,
    /// Mean of the points used.
    pub mean: f64,
    /// Standard deviation of the points used.
    pub std_dev: f64,
}

/// Precision of a flavour named `precision-NN` (NN percent), if it is one.
pub fn precision_of(flavour: &str) -> Option<f64> {
    let pct: f64 = flavour.strip_prefix("precision-")?.parse().ok()?;
    (pct > 0.0 && pct <= 100.0).then_some(pct / 100.0)
}

/// The `i`-th point of the series (a cheap deterministic pseudo-random walk).
fn point(i: usize) -> f64 {
    let x = (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17);
    (x % 10_000) as f64 / 100.0
}

/// Compute over the first `precision` of `n` points, evenly sampled.
pub fn compute(flavour: &str, precision: f64, n: usize) -> Stats {
    let used = ((n as f64 * precision).round() as usize).clamp(1, n.max(1));
    let stride = n.max(1) as f64 / used as f64;
    let values = (0..used).map(|k| point((k as f64 * stride) as usize));
    let (mut sum, mut sq) = (0.0, 0.0);
    for v in values {
        sum += v;
        sq += v * v;
    }
    let mean = sum / used as f64;
    Stats {
        flavour: flavour.to_string(),
        precision,
        used,
        mean,
        std_dev: (sq / used as f64 - mean * mean).max(0.0).sqrt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lighter_flavours_use_less_input_and_stay_close() {
        assert_eq!(precision_of("precision-30"), Some(0.3));
        assert_eq!(precision_of("full"), None);
        let full = compute("precision-100", 1.0, 10_000);
        let light = compute("precision-30", 0.3, 10_000);
        assert_eq!((full.used, light.used), (10_000, 3_000));
        assert!((full.mean - light.mean).abs() < 2.0, "{full:?} {light:?}");
    }
}
