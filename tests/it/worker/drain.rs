//! A worker told to stop (issue 12): unready at once, then it finishes its jobs in hand itself.

use std::time::Duration;

use autorenew::sim::faults::FaultConfig;

use super::stack::Stack;
use crate::helpers::poll_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_is_unready_at_once_and_still_finishes_its_jobs_in_hand() {
    // 300 ms a call: each job is in hand for over a second.
    let mut stack = Stack::start(FaultConfig {
        latency_p50_ms: 300,
        latency_p99_ms: 300,
        ..FaultConfig::default()
    })
    .await;
    let (stop, probe) = stack.spawn_worker_at().await;
    let client = reqwest::Client::new();
    let readyz = || async {
        client
            .get(format!("{probe}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert!(poll_until(Duration::from_secs(10), || async { readyz().await == 200 }).await);
    // One job first, so the plan's price exists: jobs racing to create it would go to the
    // retry queue, which a stopped worker rightly leaves to the next one.
    let first = stack.send(|_| {}).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&first), Duration::from_secs(15))
            .await
    );
    let mut pay_ids = Vec::new();
    for _ in 0..8 {
        pay_ids.push(stack.send(|_| {}).await);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    stop.cancel();
    let unready = poll_until(Duration::from_millis(300), || async {
        readyz().await == 503
    })
    .await;
    let finished_when_unready = pay_ids
        .iter()
        .filter(|p| stack.events_by_pay_id().contains_key(*p))
        .count();
    // No other worker runs: only the stopping one can finish them.
    let all = stack
        .wait_for_events(&pay_ids, Duration::from_secs(15))
        .await;

    assert!(unready, "/readyz still 200 after the stop");
    assert!(
        finished_when_unready < pay_ids.len(),
        "the jobs were done before the stop; the test proves nothing"
    );
    assert!(all, "the stopping worker finished every job in hand");
    stack.teardown().await;
}
