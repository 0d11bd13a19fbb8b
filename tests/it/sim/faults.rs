//! Limits and faults, set at run time through `/_sim/config` and `/_sim/script`, and the
//! admin endpoints they never touch.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestStack;
use crate::helpers::sim::KEY;

#[tokio::test]
async fn a_missing_or_malformed_api_key_is_a_401() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let url = format!("{}/v1/customers", sim.base);

    let none = sim.http.get(&url).send().await.expect("answers");
    let publishable = sim
        .http
        .get(&url)
        .bearer_auth("pk_test_123")
        .send()
        .await
        .expect("answers");
    let live = sim
        .http
        .get(&url)
        .bearer_auth("sk_live_123")
        .send()
        .await
        .expect("answers");

    assert_eq!(none.status(), 401);
    assert_eq!(publishable.status(), 401);
    let body: serde_json::Value = publishable.json().await.expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn the_rate_limit_answers_stripe_s_429_beyond_its_burst_but_never_on_admin_routes() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"rate_limit_per_second": 1, "rate_limit_burst": 2}))
        .await;

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(sim.get("/v1/customers").await);
    }
    let stats = sim.stats().await;

    assert_eq!(
        statuses.iter().map(|a| a.status).collect::<Vec<_>>()[..2],
        [200, 200]
    );
    let limited: Vec<_> = statuses.iter().filter(|a| a.status == 429).collect();
    assert!(
        limited.len() >= 2,
        "at 1/s, five quick requests cannot all pass"
    );
    assert_eq!(limited[0].error_field("code"), Some("rate_limit"));
    assert_eq!(limited[0].headers["stripe-should-retry"], "true");
    assert_eq!(stats["faults"]["rate_limited"], limited.len());
}

#[tokio::test]
async fn the_test_preset_sets_stripe_s_25_per_second() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    sim.configure(json!({"rate_limit": "test"})).await;
    let config = sim.admin(Method::GET, "/_sim/config", json!(null)).await;

    assert_eq!(config.body["rate_limit_per_second"], 25.0);
}

#[tokio::test]
async fn fixed_latency_delays_every_api_answer() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"latency_p50_ms": 150, "latency_p99_ms": 150}))
        .await;

    let started = Instant::now();
    let answer = sim.get("/v1/customers").await;

    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn an_injected_500_writes_nothing_and_invites_a_retry() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"error_rate": 1.0})).await;

    let answer = sim.post("/v1/customers", "email=a@b.c", Some("k")).await;
    let stats = sim.stats().await;

    assert_eq!(answer.status, 500);
    assert_eq!(answer.error_field("type"), Some("api_error"));
    assert_eq!(answer.headers["stripe-should-retry"], "true");
    assert_eq!(stats["objects"]["customers"], 0);
    assert_eq!(
        stats["idempotency"]["keys"], 0,
        "nothing ran, so nothing is saved"
    );
}

#[tokio::test]
async fn a_spurious_429_comes_whatever_the_limiter_says() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"rate_limit_error_rate": 1.0})).await;

    let answer = sim.get("/v1/customers").await;

    assert_eq!(answer.status, 429);
    assert_eq!(sim.stats().await["faults"]["spurious_429"], 1);
}

#[tokio::test]
async fn a_hang_outlasts_the_client_s_timeout_and_writes_nothing() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"hang_rate": 1.0, "hang_ms": 5000}))
        .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");

    let result = client
        .post(format!("{}/v1/customers", sim.base))
        .bearer_auth(KEY)
        .form(&[("email", "a@b.c")])
        .send()
        .await;

    assert!(result.is_err_and(|e| e.is_timeout()));
    assert_eq!(sim.stats().await["objects"]["customers"], 0);
}

#[tokio::test]
async fn a_lost_response_writes_then_answers_500_and_the_key_replays_the_write() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"lost_response_rate": 1.0, "lost_response_mode": "error"}))
        .await;

    let lost = sim.post("/v1/customers", "email=lost@b.c", Some("k")).await;
    sim.configure(json!({"lost_response_rate": 0.0})).await;
    let listed = sim.get("/v1/customers?email=lost@b.c").await;
    let retried = sim.post("/v1/customers", "email=lost@b.c", Some("k")).await;

    assert_eq!(lost.status, 500);
    assert_eq!(
        listed.body["data"].as_array().map(Vec::len),
        Some(1),
        "the write happened"
    );
    assert!(retried.replayed());
    assert_eq!(retried.body["id"], listed.body["data"][0]["id"]);
}

/// Stripe saves a result once the endpoint started executing, "including 500 errors": every
/// retry with that key gets the 500 back, and only a new key runs the request.
#[tokio::test]
async fn a_saved_500_is_replayed_for_its_key_and_a_new_key_executes() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"saved_error_rate": 1.0})).await;

    let first = sim.post("/v1/customers", "email=s@b.c", Some("k1")).await;
    sim.configure(json!({"saved_error_rate": 0.0})).await;
    let retried = sim.post("/v1/customers", "email=s@b.c", Some("k1")).await;
    let listed = sim.get("/v1/customers?email=s@b.c").await;
    let new_key = sim.post("/v1/customers", "email=s@b.c", Some("k2")).await;
    let stats = sim.stats().await;

    assert_eq!(first.status, 500);
    assert_eq!(first.error_field("type"), Some("api_error"));
    assert!(!first.replayed());
    assert_eq!(retried.status, 500, "the saved 500 comes back");
    assert!(retried.replayed());
    assert_eq!(retried.body, first.body);
    assert_eq!(
        listed.body["data"].as_array().map(Vec::len),
        Some(0),
        "nothing was written"
    );
    assert_eq!(new_key.status, 200, "another key executes normally");
    assert!(!new_key.replayed());
    assert_eq!(stats["objects"]["customers"], 1);
    assert_eq!(stats["faults"]["saved_errors"], 1);
}

#[tokio::test]
async fn a_scripted_saved_error_keeps_its_key_but_other_parameters_are_still_refused() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script("POST /v1/customers", json!([{"kind": "saved_error"}]))
        .await;

    let first = sim.post("/v1/customers", "email=s@b.c", Some("k")).await;
    let retried = sim.post("/v1/customers", "email=s@b.c", Some("k")).await;
    let other = sim.post("/v1/customers", "email=t@b.c", Some("k")).await;

    assert_eq!(first.status, 500);
    assert_eq!(retried.status, 500);
    assert!(retried.replayed());
    assert_eq!(other.status, 400);
    assert_eq!(other.error_field("type"), Some("idempotency_error"));
    assert_eq!(sim.stats().await["objects"]["customers"], 0);
}

#[tokio::test]
async fn a_dropped_response_breaks_the_connection_after_the_write() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script(
        "POST /v1/customers",
        json!([{"kind": "lost_response", "mode": "drop"}]),
    )
    .await;

    let result = async {
        let response = sim
            .http
            .post(format!("{}/v1/customers", sim.base))
            .bearer_auth(KEY)
            .form(&[("email", "a@b.c")])
            .send()
            .await?;
        response.bytes().await
    }
    .await;

    assert!(result.is_err(), "the client cannot read an answer");
    assert_eq!(sim.stats().await["objects"]["customers"], 1);
    assert_eq!(sim.count("POST /v1/customers", "dropped").await, 1);
}

#[tokio::test]
async fn a_script_fails_twice_with_500_then_succeeds_and_the_stats_count_each_call() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script(
        "POST /v1/customers",
        json!([{"kind": "error", "status": 500}, {"kind": "error"}]),
    )
    .await;

    let answers = [
        sim.post("/v1/customers", "email=a@b.c", None).await.status,
        sim.post("/v1/customers", "email=a@b.c", None).await.status,
        sim.post("/v1/customers", "email=a@b.c", None).await.status,
    ];

    assert_eq!(answers, [500, 500, 200]);
    assert_eq!(sim.count("POST /v1/customers", "500").await, 2);
    assert_eq!(sim.count("POST /v1/customers", "200").await, 1);
    assert_eq!(sim.stats().await["requests_total"], 3);
}

#[tokio::test]
async fn a_scripted_error_can_carry_any_stripe_type_and_code() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script(
        "GET /v1/customers/{id}",
        json!([{"kind": "error", "status": 402, "type": "card_error", "code": "card_declined", "decline_code": "do_not_honor"}]),
    )
    .await;

    let answer = sim.get("/v1/customers/cus_any").await;

    assert_eq!(answer.status, 402);
    assert_eq!(answer.error_field("type"), Some("card_error"));
    assert_eq!(answer.error_field("decline_code"), Some("do_not_honor"));
}

#[tokio::test]
async fn a_script_for_an_unknown_route_or_a_bad_config_is_refused() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let script = sim
        .admin(
            Method::POST,
            "/_sim/script",
            json!({"route": "POST /v1/subscription", "answers": [{"kind": "pass"}]}),
        )
        .await;
    let config = sim
        .admin(Method::PATCH, "/_sim/config", json!({"error_rate": 3}))
        .await;
    let typo = sim
        .admin(Method::PATCH, "/_sim/config", json!({"eror_rate": 0.1}))
        .await;

    assert_eq!(script.status, 400);
    assert_eq!(config.status, 400);
    assert_eq!(typo.status, 400);
}

#[tokio::test]
async fn faults_never_touch_the_admin_routes() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"error_rate": 1.0, "rate_limit_per_second": 1, "rate_limit_burst": 1}))
        .await;

    for _ in 0..5 {
        let stats = sim.admin(Method::GET, "/_sim/stats", json!(null)).await;
        assert_eq!(stats.status, 200);
    }
    assert_eq!(sim.stats().await["requests_total"], 0);
}

#[tokio::test]
async fn reset_forgets_objects_keys_counts_and_scripts_but_keeps_the_config() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"latency_p50_ms": 1, "latency_p99_ms": 1}))
        .await;
    sim.post("/v1/customers", "email=a@b.c", Some("k")).await;
    sim.script("*", json!([{"kind": "error"}])).await;

    let reset = sim.admin(Method::POST, "/_sim/reset", json!(null)).await;
    let stats = sim.stats().await;
    let after = sim.post("/v1/customers", "email=a@b.c", Some("k")).await;
    let config = sim.admin(Method::GET, "/_sim/config", json!(null)).await;

    assert_eq!(reset.status, 200);
    assert_eq!(stats["objects"]["customers"], 0);
    assert_eq!(stats["requests_total"], 0);
    assert_eq!(stats["idempotency"]["keys"], 0);
    assert_eq!(after.status, 200, "the script was cleared");
    assert!(!after.replayed(), "the key was forgotten");
    assert_eq!(config.body["latency_p50_ms"], 1);
}
