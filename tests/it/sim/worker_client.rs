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

use super::helpers::{KEY, TestSim, spawn, spawn_with};
use super::stripe_client::an_invalid_request_names_its_param;

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
    let sim = spawn().await;
    calls_parse(&client(&sim, false)).await;
}

#[tokio::test]
async fn the_worker_client_reads_answers_and_errors_over_http2() {
    let sim = spawn().await;
    calls_parse(&client(&sim, true)).await;
}

#[tokio::test]
async fn stripe_s_retry_advice_reaches_the_caller_with_the_error() {
    let sim = spawn_with(FaultConfig {
        error_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let client = client(&sim, true);

    let result = CreateCustomer::new()
        .email("advice@example.com")
        .send(&client)
        .await;

    let Err(CallError {
        error: StripeError::Stripe(_, status),
        should_retry,
    }) = result
    else {
        panic!("expected a Stripe error, got {result:?}");
    };
    assert!((500..600).contains(&status), "status {status}");
    assert_eq!(should_retry, Some(true), "Stripe-Should-Retry: true");
}

#[tokio::test]
async fn the_simulator_speaks_http2_to_a_client_that_starts_with_it() {
    let sim = spawn().await;
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let uri = format!("{}/_sim/stats", sim.base).parse().expect("a URI");

    let response = h2.get(uri).await.expect("an HTTP/2 answer");

    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
}
