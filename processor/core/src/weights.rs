//! The integer-percentage view of weights (reference section 1.6 step 2).
//!
//! `p_k = round(100 · w_k / Σw)` with Python's round-half-to-even; the difference to 100
//! goes to the largest `p_k` (the first one on ties, in the policy's order).

/// Integer percentages of `weights`, in the same order, summing to 100.
pub fn integer_percentages(weights: &[(String, f64)]) -> Vec<(String, i32)> {
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    let total = if total == 0.0 { 1.0 } else { total };
    let mut pct: Vec<(String, i32)> = weights
        .iter()
        .map(|(n, w)| (n.clone(), (100.0 * w / total).round_ties_even() as i32))
        .collect();
    let diff = 100 - pct.iter().map(|(_, p)| p).sum::<i32>();
    if diff != 0 {
        let mut largest: Option<usize> = None;
        for (i, (_, p)) in pct.iter().enumerate() {
            if largest.is_none_or(|l| *p > pct[l].1) {
                largest = Some(i);
            }
        }
        if let Some(i) = largest {
            pct[i].1 += diff;
        }
    }
    pct
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example_rounds_then_corrects_the_largest() {
        // 0.42500000000000004 rounds up to 43; 43/26/32 = 101 → 42.
        let w = vec![
            ("precision-100".to_string(), 0.42500000000000004),
            ("precision-50".to_string(), 0.25555555555555554),
            ("precision-30".to_string(), 0.3194444444444444),
        ];
        let p: Vec<i32> = integer_percentages(&w)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(p, vec![42, 26, 32]);
    }

    #[test]
    fn halves_round_to_even() {
        let w = vec![("a".to_string(), 0.425), ("b".to_string(), 0.575)];
        // 42.5 → 42, 57.5 → 58: already 100.
        let p: Vec<i32> = integer_percentages(&w)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(p, vec![42, 58]);
    }
}
