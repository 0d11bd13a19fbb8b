//! The partner's calls about its pushes (docs/partners.md#your-calls-about-your-pushes), over HTTP against an intake, with a
//! notifier pushing to the test receiver.

use std::time::Duration;

use autorenew::domain::push::{self, DeliveryStatus};
use autorenew::push::receiver::Behaviour;
use serde_json::{Value, json};

use crate::helpers::{OTHER_PARTNER, OTHER_SECRET, PARTNER, SECRET, TestStack, poll_until};

const LIMIT: Duration = Duration::from_secs(20);

fn call(pairs: Value) -> Value {
    let mut params =
        json!({"partnerCode": PARTNER, "tradeType": "queryNotifications", "version": "3.0"});
    for (key, value) in pairs.as_object().expect("object") {
        params[key] = value.clone();
    }
    params
}

fn rfc3339(offset: time::Duration) -> String {
    (time::OffsetDateTime::now_utc() + offset)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time")
}

#[tokio::test]
async fn the_partner_queries_recovers_and_resends_its_pushes() {
    // Arrange: every attempt answered 503 until the schedule is spent.
    let mut stack = TestStack::builder().push_receiver().intake().start().await;
    stack.behave(
        PARTNER,
        Behaviour {
            status: Some(503),
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;
    let intake = stack.intake();
    let (event_id, _) = stack.publish(PARTNER).await;
    let pay_id = event_id.split(':').next().expect("payId").to_owned();
    let webhook_id = push::webhook_id(&event_id);
    let failed = poll_until(LIMIT, || async {
        stack
            .store()
            .push_notifications(PARTNER, &pay_id)
            .await
            .unwrap_or_default()
            .first()
            .is_some_and(|n| n.status == DeliveryStatus::Failed)
    })
    .await;
    assert!(failed, "the event did not end failed");

    // The attempt log of the payId.
    let answer = intake
        .post_signed(
            "/queryNotifications",
            call(json!({"payId": pay_id})),
            SECRET,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["operateCode"], "S");
    assert_eq!(answer.body["payId"], pay_id.as_str());
    let notifications = answer.body["notifications"]
        .as_array()
        .expect("notifications");
    assert_eq!(notifications.len(), 1);
    let notification = &notifications[0];
    assert_eq!(notification["webhook_id"], webhook_id.as_str());
    assert_eq!(notification["event_id"], event_id.as_str());
    assert_eq!(notification["type"], "autorenew.subscription.succeeded");
    assert_eq!(notification["status"], "failed");
    let attempts = notification["attempts"].as_array().expect("attempts");
    assert_eq!(
        attempts.len(),
        1 + stack.settings.push.retry_schedule_secs.len()
    );
    for attempt in attempts {
        assert_eq!(attempt["http_status"], 503);
        assert_eq!(attempt["error"], Value::Null);
        assert_eq!(attempt["trigger"], "scheduled");
        assert!(attempt["at"].as_str().is_some_and(|at| at.ends_with('Z')));
        assert!(attempt["duration_ms"].is_u64());
    }

    // Recovery of the window attempts the failed event again, with its webhook-id.
    let before = stack.receiver().counts(PARTNER).verified;
    stack.behave(PARTNER, Behaviour::default());
    let answer = intake
        .post_signed(
            "/recoverNotifications",
            call(json!({"since": rfc3339(-time::Duration::hours(1)), "tradeType": "recoverNotifications"})),
            SECRET,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["count"], 1);
    let recovered = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).verified > before
    })
    .await;
    assert!(recovered, "the recovery was not attempted");
    let delivered = poll_until(LIMIT, || async {
        stack
            .store()
            .push_notifications(PARTNER, &pay_id)
            .await
            .unwrap_or_default()
            .first()
            .is_some_and(|n| n.status == DeliveryStatus::Delivered)
    })
    .await;
    assert!(delivered, "recovered but not delivered");
    // Nothing left to recover.
    let again = intake
        .post_signed(
            "/recoverNotifications",
            call(json!({"since": rfc3339(-time::Duration::hours(1)), "tradeType": "recoverNotifications"})),
            SECRET,
        )
        .await;
    assert_eq!(again.body["count"], 0);

    // A resend: one more attempt, same webhook-id, logged as such.
    let answer = intake
        .post_signed(
            "/resendNotification",
            call(json!({"webhook_id": webhook_id, "tradeType": "resendNotification"})),
            SECRET,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["webhook_id"], webhook_id.as_str());
    let resent = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).verified == before + 2
    })
    .await;
    assert!(resent, "the resend did not arrive");
    assert!(
        stack
            .receiver()
            .arrivals(PARTNER)
            .iter()
            .all(|a| a.webhook_id == webhook_id)
    );
    let logged = poll_until(LIMIT, || async {
        let log = stack
            .store()
            .push_notifications(PARTNER, &pay_id)
            .await
            .unwrap_or_default();
        let triggers: Vec<&str> = log
            .first()
            .map(|n| n.attempts.iter().map(|a| a.trigger.as_str()).collect())
            .unwrap_or_default();
        triggers.ends_with(&["recover", "resend"])
    })
    .await;
    assert!(logged, "the recover and resend attempts are not logged");
    stack.teardown().await;
}

#[tokio::test]
async fn the_partner_calls_refuse_what_is_not_the_partners_own_or_not_valid() {
    let stack = TestStack::builder().push_receiver().intake().start().await;
    let intake = stack.intake();

    let unknown = intake
        .post_signed(
            "/queryNotifications",
            call(json!({"payId": "NEVER_SENT"})),
            SECRET,
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (404, "PAY_ID_UNKNOWN"));
    assert_eq!(unknown.field(), "payId");

    let someone_elses = intake
        .post_signed(
            "/resendNotification",
            call(json!({
                "partnerCode": OTHER_PARTNER,
                "webhook_id": push::webhook_id("whatever:succeeded"),
                "tradeType": "resendNotification",
            })),
            OTHER_SECRET,
        )
        .await;
    assert_eq!(
        (someone_elses.status, someone_elses.code()),
        (404, "NOTIFICATION_UNKNOWN")
    );
    assert_eq!(someone_elses.field(), "webhook_id");

    let malformed = intake
        .post_signed(
            "/resendNotification",
            call(json!({"webhook_id": "evt_1", "tradeType": "resendNotification"})),
            SECRET,
        )
        .await;
    assert_eq!((malformed.status, malformed.code()), (400, "PARAM_INVALID"));
    assert_eq!(malformed.field(), "webhook_id");

    let too_old = intake
        .post_signed(
            "/recoverNotifications",
            call(json!({"since": rfc3339(-time::Duration::days(30)), "tradeType": "recoverNotifications"})),
            SECRET,
        )
        .await;
    assert_eq!((too_old.status, too_old.code()), (400, "PARAM_INVALID"));
    assert_eq!(too_old.field(), "since");

    let unsigned = intake
        .post_raw(
            "/recoverNotifications",
            json!({"partnerCode": PARTNER, "since": rfc3339(time::Duration::ZERO), "sign": "00000000000000000000000000000000",
                   "tradeTime": crate::helpers::now_millis().to_string(), "tradeType": "recoverNotifications", "version": "3.0"})
            .to_string(),
            Some("application/json"),
        )
        .await;
    assert_eq!(unsigned.status(), 401);
    stack.teardown().await;
}

#[tokio::test]
async fn failing_without_a_2xx_for_disable_after_hours_disables_the_push() {
    let stack = TestStack::builder().push_receiver().start().await;
    let store = stack.store();
    let (cooldown, longest) = (Duration::from_secs(30), Duration::from_secs(600));

    // Long failing: the first failure starts the clock; with a zero allowance it disables.
    let step = store
        .push_failure(
            PARTNER,
            1_000,
            cooldown,
            longest,
            Duration::from_secs(3_600),
        )
        .await
        .expect("failure");
    assert!(!step.disabled && !step.opened);
    let step = store
        .push_failure(PARTNER, 1_000, cooldown, longest, Duration::ZERO)
        .await
        .expect("failure");
    assert!(step.disabled);
    let state = store.push_state(PARTNER).await.expect("state");
    assert!(state.disabled, "{state:?}");
    assert!(state.disabled_reason.contains("disable_after_hours"));

    // `push enable` clears it; a 2xx clears the failing clock.
    store.push_enable(PARTNER).await.expect("enable");
    assert!(!store.push_state(PARTNER).await.expect("state").disabled);
    stack.teardown().await;
}

// Multi-threaded: the receiver serves while the test waits on the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_test_sends_a_signed_ping_and_push_status_reports_the_partner() {
    let stack = TestStack::builder().push_receiver().start().await;
    let binary = |args: &[&str]| stack.autorenew(args).output().expect("autorenew runs");

    let tested = binary(&["push", "test", PARTNER]);
    let printed = String::from_utf8_lossy(&tested.stdout).into_owned();
    assert!(
        tested.status.success(),
        "{printed} {}",
        String::from_utf8_lossy(&tested.stderr)
    );
    assert!(printed.contains("HTTP 200"), "{printed}");
    let arrival = stack.receiver().arrivals(PARTNER).remove(0);
    assert!(arrival.verified);
    let ping: Value = serde_json::from_slice(&arrival.body).expect("a CloudEvent");
    assert_eq!(ping["type"], push::PING_TYPE);

    stack
        .store()
        .push_disable(PARTNER, "410 Gone")
        .await
        .expect("disable");
    let status = binary(&["push", "status", PARTNER]);
    let printed = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{printed}");
    assert!(
        printed.starts_with(&format!("{PARTNER}: disabled (410 Gone), breaker closed")),
        "{printed}"
    );
    assert!(printed.contains("pending 0, failed 0"), "{printed}");
    assert!(!binary(&["push", "status", "NOBODY"]).status.success());
    stack.teardown().await;
}
