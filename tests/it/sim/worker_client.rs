//! The worker's own Stripe client (`StripeHttp`) against the simulator, over HTTP/1.1 and over
//! HTTP/2 without negotiation: the headers Stripe needs go out, and answers and errors come
//! back as async-stripe's own types.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secrecy::SecretString;
use stripe::StripeRequest;
use stripe::{IdempotencyKey, RequestStrategy, StripeError};
use stripe_core::customer::CreateCustomer;

use autorenew::stripe::{CallError, ClientOptions, StripeHttp};
use stripe_sim::faults::FaultConfig;

use super::stripe_client::an_invalid_request_names_its_param;
use crate::helpers::TestStack;
use crate::helpers::sim::{KEY, TestSim};

fn client(sim: &TestSim, http2_prior_knowledge: bool) -> StripeHttp {
    let key = SecretString::from(KEY);
    StripeHttp::new(&ClientOptions {
        secret_key: &key,
        // With the trailing slash a partner's config may have.
        api_base: &format!("{}/", sim.base),
        timeout: Duration::from_secs(5),
        http2_prior_knowledge,
    })
    .expect("a client")
}

/// Creates a customer twice under one idempotency key, and attaches to a missing customer.
async fn calls_parse(client: &StripeHttp) {
    let strategy =
        || RequestStrategy::Idempotent(IdempotencyKey::new("ar-cus-worker-client").expect("a key"));
    let create = || {
        CreateCustomer::new()
            .email("worker@example.com")
            .customize()
            .request_strategy(strategy())
    };
    let first = create().send(client).await.expect("create parses");
    let replayed = create().send(client).await.expect("the replay parses");
    assert_eq!(first.email.as_deref(), Some("worker@example.com"));
    assert_eq!(
        replayed.id, first.id,
        "the idempotency key went out: one customer"
    );

    an_invalid_request_names_its_param(client).await;
}

#[tokio::test]
async fn the_worker_client_reads_answers_and_errors_over_http1() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    calls_parse(&client(sim, false)).await;
}

#[tokio::test]
async fn the_worker_client_reads_answers_and_errors_over_http2() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    calls_parse(&client(sim, true)).await;
}

#[tokio::test]
async fn stripe_s_retry_advice_reaches_the_caller_with_the_error() {
    let stack = TestStack::builder()
        .simulator(FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        })
        .start()
        .await;
    let sim = stack.sim();
    let client = client(sim, true);

    let result = CreateCustomer::new()
        .email("advice@example.com")
        .send(&client)
        .await;

    let Err(CallError {
        error: StripeError::Stripe(_, status),
        should_retry,
        replayed,
    }) = result
    else {
        panic!("expected a Stripe error, got {result:?}");
    };
    assert!((500..600).contains(&status), "status {status}");
    assert_eq!(should_retry, Some(true), "Stripe-Should-Retry: true");
    assert!(!replayed, "a fresh 500 is not a replay");
}

/// The key switch rests on this: a 500 Stripe saved for a key comes back to the next request
/// under that key marked `Idempotent-Replayed: true`, and the caller sees the mark; the first
/// answer, executed, carries none.
#[tokio::test]
async fn a_saved_500_replayed_for_its_key_reaches_the_caller_marked_replayed() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let scripted = sim
        .http
        .post(format!("{}/_sim/script", sim.base))
        .json(&serde_json::json!({
            "route": "POST /v1/customers",
            "answers": [{"kind": "saved_error"}],
        }))
        .send()
        .await
        .expect("script");
    assert!(scripted.status().is_success());
    let client = client(sim, true);
    let create = || {
        CreateCustomer::new()
            .email("replayed@example.com")
            .customize()
            .request_strategy(RequestStrategy::Idempotent(
                IdempotencyKey::new("ar-cus-replayed").expect("a key"),
            ))
    };

    let first = create().send(&client).await;
    let again = create().send(&client).await;

    let replayed = |result: &Result<_, CallError>| match result {
        Err(CallError {
            error: StripeError::Stripe(_, 500),
            replayed,
            ..
        }) => Some(*replayed),
        _ => None,
    };
    assert_eq!(replayed(&first), Some(false), "{first:?}");
    assert_eq!(replayed(&again), Some(true), "{again:?}");
}

#[tokio::test]
async fn the_simulator_speaks_http2_to_a_client_that_starts_with_it() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let uri = format!("{}/_sim/stats", sim.base).parse().expect("a URI");

    let response = h2.get(uri).await.expect("an HTTP/2 answer");

    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
}
