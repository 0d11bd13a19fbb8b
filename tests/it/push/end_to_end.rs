//! The whole path: a signed request in, the worker's result event out, pushed by a notifier to
//! a receiver, where the Standard Webhooks reference library verifies it.

use std::time::Duration;

use autorenew::domain::push;

use super::delivery::headers_of;
use crate::helpers::{PARTNER, TestStack, poll_until};

#[tokio::test]
async fn a_subscription_created_by_a_worker_is_pushed_to_the_partner_and_verifies() {
    // Arrange: a deployment whose partners push to a receiver, and a notifier.
    let mut stack = TestStack::deployment()
        .push_receiver()
        .workers(1)
        .start()
        .await;
    stack.spawn_notifier().await;
    let inbox = stack.receiver();

    // Act
    let pay_id = stack.send(|_| {}).await;

    // Assert
    let arrived = poll_until(Duration::from_secs(30), || async {
        inbox.counts(PARTNER).verified == 1
    })
    .await;
    assert!(arrived, "no push arrived: {:?}", inbox.counts(PARTNER));
    let arrival = inbox.arrivals(PARTNER).remove(0);
    standardwebhooks::Webhook::new(stack.push_secret())
        .expect("secret")
        .verify(&arrival.body, &headers_of(&arrival))
        .expect("the reference library verifies the push");
    let event: serde_json::Value = serde_json::from_slice(&arrival.body).expect("a CloudEvent");
    assert_eq!(event["type"], "autorenew.subscription.succeeded");
    assert_eq!(event["data"]["payId"], pay_id.as_str());
    assert_eq!(event["data"]["status"], "active");
    let event_id = event["id"].as_str().expect("id");
    assert_eq!(arrival.webhook_id, push::webhook_id(event_id));
    // The event the worker published on the results exchange (the tap adds its own `_` fields).
    let mut tapped = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.succeeded",
            Duration::from_secs(5),
        )
        .await
        .expect("the worker published the event");
    if let Some(object) = tapped.as_object_mut() {
        object.retain(|key, _| !key.starts_with('_'));
    }
    assert_eq!(tapped, event);
    stack.teardown().await;
}
