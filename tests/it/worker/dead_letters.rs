//! Messages that cannot be jobs, and jobs whose retries are spent: dead letters, listed and
//! replayed by `autorenew dlq`.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;
use stripe_sim::faults::FaultConfig;
use tokio_util::sync::CancellationToken;

use autorenew::dlq::Select;

use crate::helpers::sim::subscriptions_by_pay_id;
use crate::helpers::{PARTNER, TestStack, poll_until, read_queue};

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letters_and_the_worker_carries_on() {
    let stack = TestStack::deployment().workers(1).start().await;
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
    let stack = TestStack::deployment()
        .simulator(FaultConfig {
            error_rate: 1.0,
            ..FaultConfig::default()
        })
        .settings(|s| {
            s.worker.step_retries = 1;
            s.amqp.reconcile_delay_ms = 500;
            s.worker.give_up_after = autorenew::config::HumanDuration(Duration::from_secs(3));
        })
        .workers(1)
        .start()
        .await;

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
    stack.sim().configure(json!({"error_rate": 0.0})).await;
    let replayed = autorenew::dlq::replay(
        &stack.settings,
        &Select::pay_id(&pay_id),
        10,
        CancellationToken::new(),
    )
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
        subscriptions_by_pay_id(&stack.sim().stats().await).get(&pay_id),
        None,
        "no subscription was made"
    );
    stack.teardown().await;
}

/// Runs `autorenew dlq ARGS` with the stack's configuration; its stdout.
fn dlq(stack: &TestStack, args: &[&str]) -> String {
    let output = stack
        .autorenew(&["dlq"])
        .args(args)
        .output()
        .expect("autorenew dlq runs");
    assert!(output.status.success(), "dlq {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn dlq_replay_and_drop_take_the_pay_id_and_message_id_that_dlq_list_shows() {
    let stack = TestStack::deployment().start().await;
    let prefix = stack.settings.amqp.prefix.clone();
    let pay_id = format!("DLQ-{}", uuid::Uuid::new_v4().simple());
    // A cancel whose message id is not its payId, and a poison message with only a message id.
    let cancel = json!({"payId": pay_id, "partnerCode": PARTNER, "when": "now",
        "requestedAt": "2026-12-06T10:00:00Z", "requestId": "req-1"});
    let cancel_id = format!("cancel:{pay_id}:now");
    let connection = crate::helpers::shared_amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    for (body, message_id, kind) in [
        (
            cancel.to_string().into_bytes(),
            cancel_id.as_str(),
            "autorenew.cancel.v1",
        ),
        (b"{not a job".to_vec(), "poison-2", "autorenew.job.v1"),
    ] {
        channel
            .basic_publish(
                format!("{prefix}.dead").into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_message_id(message_id.into())
                    .with_type(kind.into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    let listed = dlq(&stack, &["list"]);
    let dropped = dlq(&stack, &["drop", "--message-id", "poison-2"]);
    let replayed = dlq(
        &stack,
        &["replay", "--pay-id", &pay_id, "--partner", PARTNER],
    );
    let left = dlq(&stack, &["list"]);
    let jobs = read_queue(&format!("{prefix}.jobs"), 1, Duration::from_secs(5)).await;

    assert!(
        listed.lines().any(|l| l.starts_with(&cancel_id)
            && l.contains(&format!("\tcancel\t{pay_id}\t{PARTNER}\t"))),
        "the cancel is listed with its payId: {listed}"
    );
    assert!(dropped.contains("dropped poison-2\t"), "{dropped}");
    assert!(dropped.contains("dropped 1 dead letter(s)"), "{dropped}");
    assert!(
        replayed.starts_with("replayed 1 dead letter(s)"),
        "{replayed}"
    );
    assert!(left.contains("0 dead letter(s)"), "{left}");
    assert_eq!(jobs.len(), 1, "the cancel is back on the jobs queue");
    assert_eq!(jobs[0].body["payId"], pay_id.as_str());
    let _ = connection.close(200, "done".into()).await;
    stack.teardown().await;
}
