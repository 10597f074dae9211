//! Reading Prometheus text exposition (what `/metrics` serves) without a server.

/// Value of the first sample whose name and labels start with `prefix`
/// (e.g. `carbonflow_router_requests_total{schedule="a/b"`).
pub fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample whose name and labels start with `prefix`.
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_values_and_sums() {
        let text = "# HELP x\na_count 4\na_sum 2\nb{k=\"1\"} 3\nb{k=\"2\"} 5\n";
        assert_eq!(super::value(text, "a_count"), Some(4.0));
        assert_eq!(super::sum(text, "b{"), 8.0);
    }
}
