//! Small statistics over samples.

/// The `q` quantile of sorted values, by the nearest rank below
/// (`sorted[floor(q * n)]`); the Python scripts use the same rule.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// The median of unsorted values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median and p99 of latencies in µs, from `n` timed calls of `call`.
pub fn latencies(n: usize, mut call: impl FnMut(u64)) -> (f64, f64) {
    let mut lat: Vec<f64> = (0..n as u64)
        .map(|i| {
            let t = std::time::Instant::now();
            call(i);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (quantile(&lat, 0.5), quantile(&lat, 0.99))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 99.0);
    }
}
