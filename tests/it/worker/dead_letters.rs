//! Messages that cannot be jobs, and jobs whose retries are spent: dead letters, listed and
//! replayed by `autorenew dlq`.

use std::time::Duration;

use autorenew::sim::faults::FaultConfig;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::stack::Stack;
use crate::helpers::poll_until;

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letters_and_the_worker_carries_on() {
    let mut stack = Stack::start(FaultConfig::default()).await;
    stack.spawn_worker().await;
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_publish(
            format!("{}.jobs", stack.settings.amqp.prefix).into(),
            "job".into(),
            BasicPublishOptions::default(),
            b"{not a job",
            BasicProperties::default().with_message_id("poison-1".into()),
        )
        .await
        .expect("publish");

    let listed = poll_until(Duration::from_secs(10), || async {
        let letters = autorenew::dlq::list(&stack.settings, 10, CancellationToken::new())
            .await
            .expect("list");
        letters
            .iter()
            .any(|l| l.message_id == "poison-1" && l.reason.starts_with("unparseable"))
    })
    .await;
    let pay_id = stack.send(|_| {}).await;
    let carried_on = stack
        .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(20))
        .await;

    assert!(
        listed,
        "the poison message is a dead letter with its reason"
    );
    assert!(carried_on, "the worker still works");
    let _ = connection.close(200, "done".into()).await;
    stack.teardown().await;
}

#[tokio::test]
async fn a_job_whose_retries_are_spent_fails_and_is_replayed_after_the_fix() {
    let mut stack = Stack::start_with(
        FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        },
        |s| s.worker.step_retries = 1,
    )
    .await;
    stack.spawn_worker().await;

    let pay_id = stack.send(|_| {}).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(30))
            .await
    );
    let failed = stack.result_query(&pay_id).await;
    let letters = autorenew::dlq::list(&stack.settings, 10, CancellationToken::new())
        .await
        .expect("list");

    assert_eq!(failed.body["status"], "failed");
    assert_eq!(failed.code(), "STRIPE_UNAVAILABLE");
    assert_eq!(failed.body["error"]["code"], "STRIPE_UNAVAILABLE");
    assert!(
        letters
            .iter()
            .any(|l| l.pay_id.as_deref() == Some(pay_id.as_str())),
        "{letters:?}"
    );

    // The fix: Stripe answers again. Replay, and the job succeeds.
    stack.sim_config(json!({"error_rate": 0.0})).await;
    let replayed =
        autorenew::dlq::replay(&stack.settings, Some(&pay_id), 10, CancellationToken::new())
            .await
            .expect("replay");
    assert_eq!(replayed, 1);
    let active = poll_until(Duration::from_secs(20), || async {
        stack.result_query(&pay_id).await.body["status"] == "active"
    })
    .await;
    assert!(active, "the replayed job succeeded");
    let letters = autorenew::dlq::list(&stack.settings, 10, CancellationToken::new())
        .await
        .expect("list");
    assert!(
        letters
            .iter()
            .all(|l| l.pay_id.as_deref() != Some(pay_id.as_str()))
    );
    stack.teardown().await;
}
