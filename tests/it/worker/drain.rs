//! A worker told to stop: unready at once, then it finishes its jobs in hand itself.

use std::time::Duration;

use stripe_sim::faults::FaultConfig;

use crate::helpers::{TestStack, poll_until};

/// A Stripe that takes 300 ms over every call.
fn slow_stripe() -> FaultConfig {
    FaultConfig {
        latency_p50_ms: 300,
        latency_p99_ms: 300,
        ..FaultConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_is_unready_at_once_and_still_finishes_its_jobs_in_hand() {
    // 300 ms a call: each job is in hand for over a second.
    let mut stack = TestStack::deployment()
        .simulator(slow_stripe())
        .start()
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

/// Every request the simulator answered, whatever the route and status.
fn answered(stats: &serde_json::Value) -> u64 {
    stats["requests"].as_object().map_or(0, |routes| {
        routes
            .values()
            .filter_map(serde_json::Value::as_object)
            .flat_map(|by_status| by_status.values())
            .filter_map(serde_json::Value::as_u64)
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_exits_as_soon_as_its_jobs_in_hand_are_done() {
    // 300 ms a call and no budget to wait for: each job in hand needs under a second more when
    // the stop comes, and nothing else (hand-back, channel and connection close) may add to it.
    let stack = TestStack::deployment()
        .simulator(slow_stripe())
        .start()
        .await;
    let app = autorenew::worker::Application::build(&stack.settings)
        .await
        .expect("the worker builds");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    let first = stack.send(|_| {}).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&first), Duration::from_secs(15))
            .await
    );
    let before = answered(&stack.sim().stats().await);
    let mut pay_ids = Vec::new();
    for _ in 0..8 {
        pay_ids.push(stack.send(|_| {}).await);
    }
    // Each job has had its first call answered: all eight are in hand, with calls to go.
    let in_hand = poll_until(Duration::from_secs(10), || async {
        answered(&stack.sim().stats().await) >= before + 8
    })
    .await;
    assert!(in_hand);

    let stopping = std::time::Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the worker stops")
        .expect("joined")
        .expect("stopped cleanly");
    let took = stopping.elapsed();
    eprintln!("the worker stopped {took:?} after the signal");
    let all = stack
        .wait_for_events(&pay_ids, Duration::from_secs(5))
        .await;

    assert!(all, "the stopping worker finished every job in hand");
    // What is checked is that it did not wait out its drain timeout (10 s here) once its jobs
    // were done; how fast the jobs finish is a figure (scripts/drain-time.sh), not a test.
    let drain = Duration::from_secs(stack.settings.worker.drain_timeout_secs);
    assert!(
        took < drain * 3 / 4,
        "stopped {took:?} after the signal, near its drain timeout of {drain:?}: it waited for \
         more than its jobs in hand"
    );
    stack.teardown().await;
}
