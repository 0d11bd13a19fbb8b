//! Messages that cannot be jobs, and jobs whose retries are spent: dead letters, listed and
//! replayed by `autorenew dlq`.

use std::time::Duration;

use autorenew::sim::faults::FaultConfig;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::stack::{Stack, subscriptions_by_pay_id};
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
async fn a_job_answered_failed_after_give_up_stays_failed_through_a_dlq_replay() {
    let mut stack = Stack::start_with(
        FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        },
        |s| {
            s.worker.step_retries = 1;
            s.amqp.reconcile_delay_ms = 500;
            s.worker.give_up_after = autorenew::config::HumanDuration(Duration::from_secs(3));
        },
    )
    .await;
    stack.spawn_worker().await;

    let pay_id = stack.send(|_| {}).await;
    // The retries are spent within a second; the job stays `processing` until give_up_after.
    let failed_event = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.failed",
            Duration::from_secs(30),
        )
        .await
        .expect("a failed event once give_up_after has passed");
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

    // Stripe answers again, and an operator replays the dead letter: the partner was told `F`
    // (and may have sent the order again under a new payId), so `F` it stays.
    stack.sim_config(json!({"error_rate": 0.0})).await;
    let replayed =
        autorenew::dlq::replay(&stack.settings, Some(&pay_id), 10, CancellationToken::new())
            .await
            .expect("replay");
    assert_eq!(replayed, 1);
    let announced_again = poll_until(Duration::from_secs(20), || async {
        stack.events_by_pay_id()[&pay_id]
            .iter()
            .filter(|e| e["id"] == failed_event["id"])
            .count()
            >= 2
    })
    .await;
    assert!(
        announced_again,
        "the replayed copy announced the same ending again"
    );
    let after = stack.result_query(&pay_id).await;
    assert_eq!(after.body["status"], "failed", "{:?}", after.body);
    assert_eq!(after.code(), "STRIPE_UNAVAILABLE");
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim_stats().await).get(&pay_id),
        None,
        "no subscription was made"
    );
    stack.teardown().await;
}
