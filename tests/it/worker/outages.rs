//! Redis or RabbitMQ lost under a worker: it stops taking jobs, says it is not ready, and
//! resumes by itself when they are back. Private instances, never the shared ones.

use std::time::Duration;

use crate::helpers::private::{PrivateRabbit, PrivateRedis};
use crate::helpers::{TestStack, poll_until};

async fn ready(client: &reqwest::Client, probe: &str) -> bool {
    client
        .get(format!("{probe}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pauses_while_redis_is_away_and_resumes_by_itself() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let mut stack = TestStack::deployment()
        .settings(|s| {
            s.redis.url = url.into();
        })
        .start()
        .await;
    let (_, probe) = stack.spawn_worker_at().await;
    let client = reqwest::Client::new();
    assert!(poll_until(Duration::from_secs(10), || ready(&client, &probe)).await);
    let before = stack.send(|_| {}).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&before), Duration::from_secs(20))
            .await
    );

    redis.stop();
    let not_ready = poll_until(Duration::from_secs(10), || async {
        !ready(&client, &probe).await
    })
    .await;
    redis.boot();
    let back = poll_until(Duration::from_secs(20), || ready(&client, &probe)).await;
    let intake_back = poll_until(Duration::from_secs(20), || async {
        stack.intake().get("/readyz").await.status() == 200
    })
    .await;
    let after = stack.send(|_| {}).await;
    let resumed = stack
        .wait_for_events(std::slice::from_ref(&after), Duration::from_secs(20))
        .await;

    assert!(not_ready, "readiness turns false while Redis is away");
    assert!(back && intake_back, "readiness comes back with Redis");
    assert!(resumed, "jobs flow again");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pauses_while_rabbitmq_is_away_and_resumes_by_itself() {
    let mut rabbit = tokio::task::spawn_blocking(PrivateRabbit::start)
        .await
        .expect("rabbit");
    let url = rabbit.url();
    let mut stack = TestStack::deployment()
        .settings(|s| {
            s.amqp.url = url.into();
        })
        .start()
        .await;
    let (_, probe) = stack.spawn_worker_at().await;
    let client = reqwest::Client::new();
    assert!(poll_until(Duration::from_secs(10), || ready(&client, &probe)).await);

    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.stop();
        rabbit
    })
    .await
    .expect("stop");
    let not_ready = poll_until(Duration::from_secs(10), || async {
        !ready(&client, &probe).await
    })
    .await;
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.boot();
        rabbit
    })
    .await
    .expect("boot");
    let back = poll_until(Duration::from_secs(30), || ready(&client, &probe)).await;
    let intake_back = poll_until(Duration::from_secs(30), || async {
        stack.intake().get("/readyz").await.status() == 200
    })
    .await;
    let after = stack.send(|_| {}).await;
    // Events go to the private broker, which the test's tap does not read: ask the intake.
    let resumed = poll_until(Duration::from_secs(30), || async {
        stack.result_query(&after).await.body["status"] == "active"
    })
    .await;

    assert!(not_ready, "readiness turns false while RabbitMQ is away");
    assert!(back && intake_back, "both reconnect by themselves");
    assert!(resumed, "jobs flow again");
    stack.teardown().await;
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .expect("stop");
}
