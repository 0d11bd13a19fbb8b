//! The notifier against real RabbitMQ, Redis and a receiver over HTTP (docs/partners.md#what-arrives).

use std::collections::HashSet;
use std::time::Duration;

use autorenew::domain::push::{self, DeliveryStatus};
use autorenew::push::ops::{PushArgs, PushCommand};
use autorenew::push::receiver::Behaviour;
use reqwest::header::{HeaderMap, HeaderValue};

use crate::helpers::{OTHER_PARTNER, PARTNER, TestStack, poll_until};

const LIMIT: Duration = Duration::from_secs(20);

pub fn headers_of(arrival: &autorenew::push::receiver::Arrival) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = |text: &str| HeaderValue::from_str(text).expect("header");
    headers.insert(push::ID_HEADER, value(&arrival.webhook_id));
    headers.insert(push::TIMESTAMP_HEADER, value(&arrival.timestamp));
    headers.insert(push::SIGNATURE_HEADER, value(&arrival.signature));
    headers
}

#[tokio::test]
async fn a_result_event_arrives_signed_as_published_and_the_reference_library_verifies_it() {
    let mut stack = TestStack::builder().push_receiver().start().await;
    stack.spawn_notifier().await;

    let (event_id, body) = stack.publish(PARTNER).await;

    let arrived = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).verified == 1
    })
    .await;
    assert!(
        arrived,
        "the push did not arrive: {:?}",
        stack.receiver().counts(PARTNER)
    );
    let arrival = stack.receiver().arrivals(PARTNER).remove(0);
    assert_eq!(
        arrival.body.as_ref(),
        body.as_slice(),
        "the body is the event byte for byte"
    );
    assert_eq!(arrival.webhook_id, push::webhook_id(&event_id));
    assert_eq!(arrival.content_type, "application/json");
    assert_eq!(
        arrival.user_agent,
        format!("autorenew/{}", env!("CARGO_PKG_VERSION"))
    );
    let reference = standardwebhooks::Webhook::new(stack.push_secret()).expect("secret");
    reference
        .verify(&arrival.body, &headers_of(&arrival))
        .expect("the Standard Webhooks library verifies the push");

    let delivered = poll_until(LIMIT, || async {
        let found = stack
            .store()
            .push_notifications(PARTNER, event_id.split(':').next().unwrap_or(""))
            .await
            .unwrap_or_default();
        found.len() == 1 && found[0].status == DeliveryStatus::Delivered
    })
    .await;
    assert!(delivered, "the attempt log does not say delivered");
    assert_eq!(
        stack.receiver().counts(OTHER_PARTNER).received,
        0,
        "pushed to another partner"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn retries_after_500s_carry_the_same_webhook_id_and_the_same_body() {
    let mut stack = TestStack::builder().push_receiver().start().await;
    stack.behave(
        PARTNER,
        Behaviour {
            status: Some(500),
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;

    let (event_id, body) = stack.publish(PARTNER).await;
    let retried = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).received >= 3
    })
    .await;
    assert!(
        retried,
        "not retried: {:?}",
        stack.receiver().counts(PARTNER)
    );
    stack.behave(PARTNER, Behaviour::default());
    let pay_id = event_id.split(':').next().unwrap_or("").to_owned();
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
    assert!(delivered, "not delivered once the endpoint recovered");

    let arrivals = stack.receiver().arrivals(PARTNER);
    let ids: HashSet<&str> = arrivals.iter().map(|a| a.webhook_id.as_str()).collect();
    assert_eq!(ids, HashSet::from([push::webhook_id(&event_id).as_str()]));
    assert!(arrivals.iter().all(|a| a.body.as_ref() == body.as_slice()));
    let log = stack
        .store()
        .push_notifications(PARTNER, &pay_id)
        .await
        .expect("log");
    let statuses: Vec<Option<u16>> = log[0].attempts.iter().map(|a| a.http_status).collect();
    assert!(statuses.len() >= 4, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&Some(200)));
    assert!(
        statuses[..statuses.len() - 1]
            .iter()
            .all(|s| *s == Some(500))
    );
    stack.teardown().await;
}

#[tokio::test]
async fn the_schedule_spent_leaves_the_event_failed() {
    let mut stack = TestStack::builder().push_receiver().start().await;
    stack.behave(
        PARTNER,
        Behaviour {
            status: Some(503),
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;

    let (event_id, _) = stack.publish(PARTNER).await;
    let pay_id = event_id.split(':').next().unwrap_or("").to_owned();
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
    // The first attempt and one per delay of the schedule.
    let log = stack
        .store()
        .push_notifications(PARTNER, &pay_id)
        .await
        .expect("log");
    assert_eq!(
        log[0].attempts.len(),
        1 + stack.settings.push.retry_schedule_secs.len()
    );
    let counts = stack.store().push_counts(PARTNER).await.expect("counts");
    assert_eq!((counts.pending, counts.failed), (0, 1));
    stack.teardown().await;
}

#[tokio::test]
async fn a_410_disables_the_push_and_push_enable_resumes_it() {
    let mut stack = TestStack::builder().push_receiver().start().await;
    stack.behave(
        PARTNER,
        Behaviour {
            status: Some(410),
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;

    let (first, _) = stack.publish(PARTNER).await;
    let disabled = poll_until(LIMIT, || async {
        stack
            .store()
            .push_state(PARTNER)
            .await
            .is_ok_and(|s| s.disabled)
    })
    .await;
    assert!(disabled, "a 410 did not disable the push");
    let (second, _) = stack.publish(PARTNER).await;
    // Both wait in the partner's queue, the one answered 410 included; nothing is attempted.
    let kept = poll_until(LIMIT, || async { stack.queued(PARTNER).await == 2 }).await;
    assert!(
        kept,
        "the events are not kept: {} queued",
        stack.queued(PARTNER).await
    );
    assert_eq!(stack.receiver().counts(PARTNER).received, 1);

    stack.behave(PARTNER, Behaviour::default());
    autorenew::push::ops::run(
        stack.settings.clone(),
        PushArgs {
            command: PushCommand::Enable {
                partner: PARTNER.to_owned(),
            },
        },
    )
    .await
    .expect("push enable");
    let resumed = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).distinct == 2
    })
    .await;
    assert!(
        resumed,
        "not resumed: {:?}",
        stack.receiver().counts(PARTNER)
    );
    let ids: HashSet<String> = stack
        .receiver()
        .arrivals(PARTNER)
        .iter()
        .map(|a| a.webhook_id.clone())
        .collect();
    assert_eq!(
        ids,
        HashSet::from([push::webhook_id(&first), push::webhook_id(&second)])
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_partner_whose_endpoint_never_answers_does_not_delay_another() {
    let mut stack = TestStack::builder()
        .push_receiver()
        .settings(|settings| {
            // Long enough that the dead endpoint's attempts hang for the whole test.
            settings.push.timeout_secs = 60.0;
        })
        .start()
        .await;
    stack.behave(
        OTHER_PARTNER,
        Behaviour {
            never: true,
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;

    stack.publish_many(OTHER_PARTNER, 10).await;
    let hanging = poll_until(LIMIT, || async {
        stack.receiver().counts(OTHER_PARTNER).received == 4
    })
    .await;
    assert!(
        hanging,
        "the dead endpoint did not take its in-flight attempts"
    );
    stack.publish_many(PARTNER, 30).await;

    let delivered = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).distinct == 30
    })
    .await;
    assert!(
        delivered,
        "the healthy partner waits: {:?}",
        stack.receiver().counts(PARTNER)
    );
    // Every delivery verifies with the Standard Webhooks reference library.
    let reference = standardwebhooks::Webhook::new(stack.push_secret()).expect("secret");
    for arrival in stack.receiver().arrivals(PARTNER) {
        reference
            .verify(&arrival.body, &headers_of(&arrival))
            .expect("the reference library verifies every push");
    }
    // Meanwhile the dead endpoint still holds its four, capped by max_in_flight.
    assert_eq!(stack.receiver().counts(OTHER_PARTNER).received, 4);
    stack.teardown().await;
}

#[tokio::test]
async fn the_breaker_opens_after_consecutive_failures_and_a_probe_closes_it() {
    let mut stack = TestStack::builder()
        .push_receiver()
        .settings(|settings| {
            settings.push.breaker_failures = 3;
            settings.push.breaker_cooldown_secs = 1.0;
            settings.push.retry_schedule_secs = vec![0.2; 8];
        })
        .start()
        .await;
    stack.behave(
        PARTNER,
        Behaviour {
            status: Some(503),
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;

    stack.publish_many(PARTNER, 5).await;
    let opened = poll_until(LIMIT, || async {
        stack
            .store()
            .push_state(PARTNER)
            .await
            .is_ok_and(|s| s.open_until_ms > 0)
    })
    .await;
    assert!(opened, "the breaker did not open");
    stack.behave(PARTNER, Behaviour::default());
    let delivered = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).distinct == 5
    })
    .await;
    assert!(
        delivered,
        "not all delivered after the probe: {:?}",
        stack.receiver().counts(PARTNER)
    );
    // The receiver counts a push before its answer reaches the notifier: wait for the 2xx's
    // effect on the breaker.
    let closed = poll_until(LIMIT, || async {
        stack
            .store()
            .push_state(PARTNER)
            .await
            .is_ok_and(|s| s.open_until_ms == 0 && s.failures == 0)
    })
    .await;
    assert!(
        closed,
        "the breaker is not closed: {:?}",
        stack.store().push_state(PARTNER).await
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_notifier_killed_mid_delivery_loses_nothing() {
    let mut stack = TestStack::builder()
        .push_receiver()
        .settings(|settings| settings.push.timeout_secs = 60.0)
        .start()
        .await;
    stack.behave(
        PARTNER,
        Behaviour {
            never: true,
            ..Behaviour::default()
        },
    );
    let mut child = stack.notifier_process().await;

    let published = stack.publish_many(PARTNER, 3).await;
    let in_flight = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).received == 3
    })
    .await;
    assert!(in_flight, "the child did not take the deliveries");
    child.0.kill().expect("kill -9");
    let _ = child.0.wait();

    stack.behave(PARTNER, Behaviour::default());
    stack.spawn_notifier().await;
    let delivered = poll_until(LIMIT, || async {
        let pays = published
            .iter()
            .map(|(id, _)| id.split(':').next().unwrap_or("").to_owned());
        for pay_id in pays {
            let found = stack
                .store()
                .push_notifications(PARTNER, &pay_id)
                .await
                .unwrap_or_default();
            if !found
                .first()
                .is_some_and(|n| n.status == DeliveryStatus::Delivered)
            {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        delivered,
        "an event was lost: {:?}",
        stack.receiver().counts(PARTNER)
    );
    // Every repeat carried its event's webhook-id.
    let expected: HashSet<String> = published
        .iter()
        .map(|(id, _)| push::webhook_id(id))
        .collect();
    let seen: HashSet<String> = stack
        .receiver()
        .arrivals(PARTNER)
        .iter()
        .map(|a| a.webhook_id.clone())
        .collect();
    assert_eq!(seen, expected);
    stack.teardown().await;
}

#[tokio::test]
async fn a_429_with_retry_after_delays_the_next_attempt_to_at_least_that() {
    let mut stack = TestStack::builder()
        .push_receiver()
        .settings(|settings| settings.push.retry_schedule_secs = vec![0.2, 2.0])
        .start()
        .await;
    stack.behave(
        PARTNER,
        Behaviour {
            status: Some(429),
            retry_after: Some("1".into()),
            ..Behaviour::default()
        },
    );
    stack.spawn_notifier().await;

    let (event_id, _) = stack.publish(PARTNER).await;
    let first = poll_until(LIMIT, || async {
        stack.receiver().counts(PARTNER).received >= 1
    })
    .await;
    assert!(first, "no first attempt");
    stack.behave(PARTNER, Behaviour::default());
    let pay_id = event_id.split(':').next().unwrap_or("").to_owned();
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
    assert!(delivered, "not delivered after the Retry-After");
    let log = stack
        .store()
        .push_notifications(PARTNER, &pay_id)
        .await
        .expect("log");
    let at = |i: usize| {
        time::OffsetDateTime::parse(
            &log[0].attempts[i].at,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339")
    };
    assert_eq!(log[0].attempts[0].http_status, Some(429));
    // The schedule says 0.2 s (±20 %); Retry-After asks for 1 s, within the longest delay.
    let gap = at(1) - at(0);
    assert!(
        gap >= time::Duration::milliseconds(990),
        "retried after {gap}"
    );
    stack.teardown().await;
}
