//! `Idempotency-Key` as Stripe does it: parameters compared (not bytes), replays marked,
//! conflicts refused, in-flight keys 409, and nothing saved for requests that never ran.

use serde_json::json;

use crate::helpers::TestStack;

#[tokio::test]
async fn the_same_key_and_parameters_in_another_order_replay_the_first_answer() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let first = sim
        .post(
            "/v1/customers",
            "email=a%40b.c&metadata[partnerCode]=P1&metadata[x]=1",
            Some("k1"),
        )
        .await;
    let second = sim
        .post(
            "/v1/customers",
            "metadata%5Bx%5D=1&metadata[partnerCode]=P1&email=a@b.c",
            Some("k1"),
        )
        .await;

    assert_eq!(first.status, 200);
    assert!(!first.replayed());
    assert_eq!(second.status, 200);
    assert!(second.replayed(), "a replay says Idempotent-Replayed: true");
    assert_eq!(second.body, first.body);
    let stats = sim.stats().await;
    assert_eq!(stats["objects"]["customers"], 1);
    assert_eq!(stats["idempotency"]["replays"], 1);
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_an_idempotency_error() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.post("/v1/customers", "email=a@b.c", Some("k1")).await;

    let other = sim
        .post("/v1/customers", "email=other@b.c", Some("k1"))
        .await;
    let other_endpoint = sim.post("/v1/products", "name=x", Some("k1")).await;

    assert_eq!(other.status, 400);
    assert_eq!(other.error_field("type"), Some("idempotency_error"));
    assert_eq!(other_endpoint.status, 400);
    assert_eq!(
        other_endpoint.error_field("type"),
        Some("idempotency_error")
    );
    assert_eq!(sim.stats().await["objects"]["customers"], 1);
}

#[tokio::test]
async fn the_same_key_while_the_first_request_runs_is_a_409() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script("POST /v1/customers", json!([{"kind": "delay", "ms": 1500}]))
        .await;
    let first = {
        let http = sim.http.clone();
        let url = format!("{}/v1/customers", sim.base);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(crate::helpers::sim::KEY)
                .header("idempotency-key", "slow")
                .form(&[("email", "a@b.c")])
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    sim.wait_for_stats(|s| s["idempotency"]["in_flight"] == 1)
        .await;

    let concurrent = sim.post("/v1/customers", "email=a@b.c", Some("slow")).await;

    assert_eq!(concurrent.status, 409);
    assert_eq!(
        concurrent.error_field("code"),
        Some("idempotency_key_in_use")
    );
    assert_eq!(concurrent.headers["stripe-should-retry"], "true");
    assert_eq!(first.await.expect("joins").expect("answers"), 200);
    assert!(
        sim.post("/v1/customers", "email=a@b.c", Some("slow"))
            .await
            .replayed()
    );
}

#[tokio::test]
async fn a_429_is_not_saved_so_the_same_key_runs_on_retry() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script("POST /v1/customers", json!([{"kind": "rate_limit"}]))
        .await;

    let limited = sim.post("/v1/customers", "email=a@b.c", Some("k")).await;
    let retried = sim.post("/v1/customers", "email=a@b.c", Some("k")).await;

    assert_eq!(limited.status, 429);
    assert_eq!(limited.error_field("code"), Some("rate_limit"));
    assert_eq!(retried.status, 200);
    assert!(!retried.replayed());
}

#[tokio::test]
async fn a_validation_error_is_not_saved_so_the_key_can_carry_the_fixed_request() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let invalid = sim
        .post("/v1/customers", "email=not-an-email", Some("k"))
        .await;
    let fixed = sim.post("/v1/customers", "email=a@b.c", Some("k")).await;

    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.error_field("param"), Some("email"));
    assert_eq!(fixed.status, 200);
}

#[tokio::test]
async fn a_decline_is_saved_and_replayed_like_any_answer_the_endpoint_gave() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"declines_at": "charge"})).await;
    let (customer, _) = sim
        .customer_with_card("d@b.c", "pm_card_chargeDeclined")
        .await;
    let price = sim.price(100, None).await;
    let form =
        format!("customer={customer}&items[0][price]={price}&payment_behavior=error_if_incomplete");

    let first = sim.post("/v1/subscriptions", &form, Some("sub-k")).await;
    let again = sim.post("/v1/subscriptions", &form, Some("sub-k")).await;

    assert_eq!(first.status, 402);
    assert_eq!(again.status, 402);
    assert!(again.replayed());
    assert_eq!(sim.stats().await["objects"]["subscriptions"], 0);
}

#[tokio::test]
async fn get_requests_ignore_the_idempotency_key() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let created = sim.post("/v1/customers", "email=a@b.c", None).await;
    let id = created.body["id"].as_str().expect("id");

    let url = format!("{}/v1/customers/{id}", sim.base);
    let get = || {
        sim.http
            .get(&url)
            .bearer_auth(crate::helpers::sim::KEY)
            .header("idempotency-key", "g")
            .send()
    };
    let first = get().await.expect("answers");
    let second = get().await.expect("answers");

    assert_eq!(first.status(), 200);
    assert!(second.headers().get("idempotent-replayed").is_none());
    assert_eq!(sim.stats().await["idempotency"]["keys"], 0);
}

#[tokio::test]
async fn a_request_whose_client_timed_out_still_completes_and_replays_under_its_key() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.script("POST /v1/customers", json!([{"kind": "delay", "ms": 400}]))
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .build()
        .expect("client");

    let gave_up = impatient
        .post(format!("{}/v1/customers", sim.base))
        .bearer_auth(crate::helpers::sim::KEY)
        .header("idempotency-key", "impatient")
        .form(&[("email", "a@b.c")])
        .send()
        .await;
    let stats = sim
        .wait_for_stats(|s| s["idempotency"]["in_flight"] == 0 && s["objects"]["customers"] == 1)
        .await;
    let retried = sim
        .post("/v1/customers", "email=a@b.c", Some("impatient"))
        .await;

    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    assert_eq!(stats["idempotency"]["keys"], 1);
    assert_eq!(retried.status, 200);
    assert!(
        retried.replayed(),
        "the retry gets the write the client never saw"
    );
}
