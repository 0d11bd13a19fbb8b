//! Exact percentiles over every measured duration: a run keeps one `Duration` per request, so
//! there is no histogram error to explain next to a p99.

use std::time::Duration;

use serde::Serialize;

/// Exact percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles (the smallest value with at least q of the set at or below
    /// it); `None` for an empty set.
    pub fn of(mut values: Vec<Duration>) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let n = values.len();
        let rank = |q: f64| {
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            millis(values[index])
        };
        let total: Duration = values.iter().sum();
        Some(Percentiles {
            count: n,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: millis(values[n - 1]),
            mean: round3(millis(total) / n as f64),
        })
    }
}

pub(super) fn millis(duration: Duration) -> f64 {
    // Microsecond precision is all a latency report needs, and it keeps the JSON short.
    round3(duration.as_secs_f64() * 1_000.0)
}

pub(super) fn round3(value: f64) -> f64 {
    (value * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = Percentiles::of(ms(&(1..=100).rev().collect::<Vec<_>>())).expect("some");
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(p.count, 100);
        assert_eq!(p.mean, 50.5);
    }

    #[test]
    fn percentiles_of_one_value_and_of_none() {
        let p = Percentiles::of(ms(&[7])).expect("some");
        assert_eq!((p.p50, p.p99, p.max), (7.0, 7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()), None);
        let small = Percentiles::of(ms(&[1, 2, 3])).expect("some");
        assert_eq!((small.p50, small.p90), (2.0, 3.0));
    }
}
