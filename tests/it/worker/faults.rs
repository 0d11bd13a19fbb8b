//! Stripe misbehaving: transient errors, lost answers, its rate limit.

use std::time::Duration;

use serde_json::json;
use stripe_sim::faults::FaultConfig;

use crate::helpers::TestStack;
use crate::helpers::sim::subscriptions_by_pay_id;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_transient_faults_and_lost_answers_every_job_ends_once_and_no_pay_id_is_charged_twice()
 {
    let faults = FaultConfig {
        error_rate: 0.2,
        rate_limit_error_rate: 0.1,
        lost_response_rate: 0.1,
        ..FaultConfig::default()
    };
    let mut stack = TestStack::deployment()
        .simulator(faults)
        .settings(|s| {
            s.worker.step_retries = 6;
            s.worker.concurrency = 32;
        })
        .workers(1)
        .start()
        .await;
    stack.spawn_worker().await;

    let sends = (0..300).map(|i| {
        let stack = &stack;
        async move {
            stack
                .send(|r| r["email"] = json!(format!("user{}@example.com", i % 40)))
                .await
        }
    });
    let pay_ids: Vec<String> = futures_util::future::join_all(sends).await;

    assert!(
        stack
            .wait_for_events(&pay_ids, Duration::from_secs(180))
            .await,
        "every job reaches a final result"
    );
    let events = stack.events_by_pay_id();
    let stats = stack.sim().stats().await;
    let subscriptions = subscriptions_by_pay_id(&stats);
    let mut succeeded = 0;
    let mut failures = Vec::new();
    for pay_id in &pay_ids {
        let ids: std::collections::HashSet<_> =
            events[pay_id].iter().map(|e| e["id"].clone()).collect();
        assert_eq!(
            ids.len(),
            1,
            "{pay_id} has one outcome: {:?}",
            events[pay_id]
        );
        let count = subscriptions.get(pay_id).copied().unwrap_or(0);
        assert!(count <= 1, "{pay_id} has {count} subscriptions");
        if events[pay_id][0]["type"] == "autorenew.subscription.succeeded" {
            assert_eq!(count, 1, "{pay_id} succeeded with its subscription");
            succeeded += 1;
        } else if failures.len() < 5 {
            failures.push(events[pay_id][0]["data"]["error"].clone());
        }
    }
    assert!(
        stats["faults"]["lost_responses"].as_u64().unwrap_or(0) > 0,
        "faults were injected: {stats}"
    );
    assert!(
        succeeded >= 290,
        "only {succeeded} of 300 succeeded; failures like {failures:?}"
    );
    stack.teardown().await;
}

/// Stripe saves a 500 of an endpoint that started under its idempotency key, and replays it to
/// every retry with that key, marked `Idempotent-Replayed: true`. That replayed answer is the
/// worker's way out: it is Stripe's word that the key's request ended without a subscription,
/// so once a lookup agrees, the create goes under the next key generation (no waiting window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_500_stripe_saved_for_its_key_ends_with_one_subscription_under_a_new_key() {
    let mut stack = TestStack::deployment()
        .settings(|s| {
            s.stripe.request_timeout_ms = 500;
        })
        .start()
        .await;
    stack
        .sim()
        .script("POST /v1/subscriptions", json!([{"kind": "saved_error"}]))
        .await;
    stack.spawn_worker().await;

    let pay_id = stack.send(|_| {}).await;

    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(60))
            .await,
        "the job reaches a final result"
    );
    // A late duplicate event would show here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = stack.events_by_pay_id();
    let stats = stack.sim().stats().await;
    let result = stack.result_query(&pay_id).await;
    assert_eq!(events[&pay_id].len(), 1, "one result event: {events:?}");
    assert_eq!(
        events[&pay_id][0]["type"], "autorenew.subscription.succeeded",
        "{events:?}"
    );
    assert_eq!(
        subscriptions_by_pay_id(&stats).get(&pay_id).copied(),
        Some(1),
        "one subscription for the payId: {stats}"
    );
    assert_eq!(result.body["status"], "active", "{:?}", result.body);
    assert_eq!(stats["faults"]["saved_errors"], 1, "{stats}");
    let creates = &stats["requests"]["POST /v1/subscriptions"];
    assert!(
        creates["500"].as_u64().unwrap_or(0) >= 2,
        "the saved 500 was answered again to a retry under its key: {creates}"
    );
    assert_eq!(creates["200"], 1, "{creates}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_the_budget_stay_under_stripe_s_rate_limit() {
    let faults = FaultConfig {
        rate_limit_per_second: 20.0,
        // Stripe's limiter admits short bursts; ours stands in for it with one second's worth.
        rate_limit_burst: Some(20.0),
        ..FaultConfig::default()
    };
    let mut stack = TestStack::deployment()
        .simulator(faults)
        .settings(|s| {
            s.stripe.max_requests_per_second = 20;
        })
        .workers(1)
        .start()
        .await;
    stack.spawn_worker().await;

    // Distinct emails: each job is a new customer, three calls (list by email, create the
    // customer with the method attached, subscribe), and the plan's price once a worker.
    let jobs: u64 = 100;
    let mut pay_ids = Vec::new();
    for i in 0..jobs {
        pay_ids.push(
            stack
                .send(|r| r["email"] = json!(format!("budget{i}@example.com")))
                .await,
        );
    }

    assert!(
        stack
            .wait_for_events(&pay_ids, Duration::from_secs(90))
            .await
    );
    let stats = stack.sim().stats().await;
    let total = stats["requests_total"].as_u64().unwrap_or(0);
    assert!(total >= 300, "at least 300 Stripe calls were made: {total}");
    assert!(
        // The plan's price: one worker looks it up and creates it; the other looks it up, and
        // when that was before the create, waits for the first one's lock and looks again.
        total <= 3 * jobs + 4,
        "three calls a new customer's job, and the price at most twice a worker: {total} for \
         {jobs} jobs: {stats}"
    );
    assert_eq!(
        stats["faults"]["rate_limited"], 0,
        "no 429 from the limiter: {stats}"
    );
    let any_429 = stats["requests"].as_object().is_some_and(|routes| {
        routes
            .values()
            .any(|by_status| by_status.get("429").is_some())
    });
    assert!(!any_429, "no route answered 429: {stats}");
    stack.teardown().await;
}
