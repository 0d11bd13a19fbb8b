//! When a failed attempt is tried again (docs/design.md#one-delivery): the schedule, ±20 % of jitter, and
//! a `Retry-After` that asks for longer, capped at the longest delay of the schedule.

use std::time::Duration;

/// What follows a failed scheduled attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Retry(Duration),
    /// The schedule is spent: the event is `failed`, kept for recovery.
    Spent,
}

/// `failed`: the scheduled attempts that failed so far, this one included (1 after the first).
/// `jitter`: a draw in [-1, 1], scaled to ±20 % of the delay.
pub fn next(
    schedule: &[Duration],
    failed: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Next {
    let index = usize::try_from(failed)
        .unwrap_or(usize::MAX)
        .saturating_sub(1);
    let Some(base) = schedule.get(index) else {
        return Next::Spent;
    };
    let mut delay = base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
    if let Some(asked) = retry_after {
        let longest = schedule.iter().max().copied().unwrap_or(*base);
        delay = delay.max(asked.min(longest));
    }
    Next::Retry(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn each_retry_follows_the_schedule_within_twenty_percent() {
        let schedule = secs(&[5, 300, 1800]);
        assert_eq!(
            next(&schedule, 1, None, 0.0),
            Next::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            next(&schedule, 2, None, 1.0),
            Next::Retry(Duration::from_secs(360))
        );
        assert_eq!(
            next(&schedule, 3, None, -1.0),
            Next::Retry(Duration::from_secs(1440))
        );
        assert_eq!(next(&schedule, 4, None, 0.0), Next::Spent);
    }

    #[test]
    fn retry_after_delays_the_next_attempt_up_to_the_longest_delay() {
        let schedule = secs(&[5, 300, 1800]);
        let asked = |s| Some(Duration::from_secs(s));
        assert_eq!(
            next(&schedule, 1, asked(60), 0.0),
            Next::Retry(Duration::from_secs(60))
        );
        assert_eq!(
            next(&schedule, 1, asked(1), 0.0),
            Next::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            next(&schedule, 1, asked(999_999), 0.0),
            Next::Retry(Duration::from_secs(1800))
        );
    }
}
