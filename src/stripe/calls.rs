//! Counts the Stripe calls one job makes, for its log line: Stripe's rate limit, not our CPU,
//! is the ceiling, so the calls a job costs are worth seeing per job.

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static CALLS: Cell<u32>;
}

/// Runs `work` with a fresh count of the calls made inside it (in this task).
pub async fn counted<F: Future>(work: F) -> F::Output {
    CALLS.scope(Cell::new(0), work).await
}

/// The calls made so far inside the surrounding [`counted`] (0 outside one).
pub fn so_far() -> u32 {
    CALLS.try_with(Cell::get).unwrap_or(0)
}

/// Counts one call (nothing outside a [`counted`]).
pub(super) fn count() {
    let _ = CALLS.try_with(|calls| calls.set(calls.get() + 1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_job_counts_its_own_calls() {
        let first = counted(async {
            count();
            count();
            so_far()
        });
        let second = counted(async {
            count();
            so_far()
        });

        let (first, second) = tokio::join!(first, second);

        assert_eq!((first, second), (2, 1));
        assert_eq!(so_far(), 0, "outside a job nothing is counted");
    }
}
