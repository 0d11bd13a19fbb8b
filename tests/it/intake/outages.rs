//! RabbitMQ or Redis going away: fast 503s with the right code, readiness says so, and the
//! intake heals by itself when they return. Uses private instances, never the shared ones.

use std::time::{Duration, Instant};

use crate::helpers::private::{PrivateRabbit, PrivateRedis};
use crate::helpers::{SHARED_AMQP, TestStack, poll_until, valid_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_requests_get_a_fast_503_and_are_accepted_once_it_is_back() {
    let mut rabbit = tokio::task::spawn_blocking(PrivateRabbit::start)
        .await
        .expect("rabbit");
    let stack = TestStack::builder()
        .amqp_url(&rabbit.url())
        .intake()
        .start()
        .await;
    let app = stack.intake();
    assert_eq!(app.subscribe(valid_request()).await.status, 200);

    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.stop();
        rabbit
    })
    .await
    .expect("stop");
    let started = Instant::now();
    let answer = app.subscribe(valid_request()).await;
    let took = started.elapsed();

    assert_eq!(
        (answer.status, answer.code()),
        (503, "BROKER_UNAVAILABLE"),
        "{:?}",
        answer.body
    );
    assert!(
        took < Duration::from_secs(2),
        "a 503 must come within 2 s, took {took:?}"
    );
    assert!(answer.retry_after.is_some(), "a 503 says when to retry");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(ready["broker"], "down");

    // The refused payId is free again: its retry is accepted once the broker is back.
    let refused = valid_request();
    let answer = app.subscribe(refused.clone()).await;
    assert_eq!(answer.status, 503);
    let rabbit = tokio::task::spawn_blocking(move || {
        rabbit.boot();
        rabbit
    })
    .await
    .expect("boot");
    let back = poll_until(Duration::from_secs(30), || async {
        app.get("/readyz").await.status() == 200
    })
    .await;
    assert!(back, "the intake reconnects by itself");
    let answer = app.subscribe(refused).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["operateCode"], "S");

    stack.teardown().await;
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_requests_get_a_fast_503_and_are_accepted_once_it_is_back() {
    let mut redis = PrivateRedis::start();
    let stack = TestStack::builder()
        .redis_url(&redis.url())
        .intake()
        .start()
        .await;
    let app = stack.intake();
    assert_eq!(app.subscribe(valid_request()).await.status, 200);

    redis.stop();
    let started = Instant::now();
    let answer = app.subscribe(valid_request()).await;
    let took = started.elapsed();

    assert_eq!(
        (answer.status, answer.code()),
        (503, "STORE_UNAVAILABLE"),
        "{:?}",
        answer.body
    );
    assert!(
        took < Duration::from_secs(2),
        "a 503 must come within 2 s, took {took:?}"
    );
    let ready: serde_json::Value = app.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["redis"], "down");

    redis.boot();
    let back = poll_until(Duration::from_secs(20), || async {
        app.subscribe(valid_request()).await.status == 200
    })
    .await;
    assert!(back, "the intake reconnects to Redis by itself");
    stack.teardown().await;
}

#[tokio::test]
async fn an_amqp_url_naming_several_nodes_connects_to_one_that_answers() {
    // The first node has nothing listening; the second is the shared broker.
    let dead = crate::helpers::private::free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{dead}/%2f, {SHARED_AMQP}");
    let stack = TestStack::builder().amqp_url(&url).intake().start().await;
    let app = stack.intake();

    let answer = app.subscribe(valid_request()).await;

    assert_eq!(answer.status, 200, "{:?}", answer.body);
    stack.teardown().await;
}
