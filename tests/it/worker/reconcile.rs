//! `autorenew reconcile`: with the simulator's webhooks off, the intake misses every event;
//! reconcile lists them, feeds the missed ones through the intake's webhook, and the worker
//! announces them. A second run feeds nothing, and nothing is announced twice.

use std::time::Duration;

use autorenew::reconcile::reconcile;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::TestStack;

const MONTH: u64 = 31 * 24 * 3600;
const RENEWED: &str = "autorenew.subscription.renewed";

#[tokio::test]
async fn reconcile_feeds_the_missed_events_once_and_the_worker_announces_them() {
    // The intake takes signed events, but the simulator delivers none: all are missed.
    let stack = TestStack::deployment()
        .settings(|settings| {
            settings.stripe.webhook_secrets = vec![SecretString::from("whsec_reconcile_test")];
        })
        .workers(1)
        .start()
        .await;
    let (pay_id, _) = stack
        .subscribed(|r| r["pm_id"] = json!("pm_card_visa"))
        .await;
    let advanced = stack
        .sim()
        .http
        .post(format!("{}/_sim/advance", stack.sim().base))
        .json(&json!({"seconds": MONTH}))
        .send()
        .await
        .expect("the simulator answers");
    assert!(advanced.status().is_success());
    assert!(
        stack
            .wait_for_event(&pay_id, RENEWED, Duration::from_secs(1))
            .await
            .is_none(),
        "no webhook, no renewal announced"
    );

    let intake: url::Url = stack.intake().address.parse().expect("url");
    let first = reconcile(&stack.settings, Duration::from_secs(3600), &intake)
        .await
        .expect("the first run");
    assert!(first.fed >= 1, "{first}");
    assert_eq!(first.listed, first.already_taken + first.fed, "{first}");
    stack
        .wait_for_event(&pay_id, RENEWED, Duration::from_secs(20))
        .await
        .expect("the missed renewal announced");

    let second = reconcile(&stack.settings, Duration::from_secs(3600), &intake)
        .await
        .expect("the second run");
    assert_eq!(second.fed, 0, "{second}");
    assert_eq!(second.listed, first.listed, "{second}");
    assert_eq!(second.already_taken, second.listed, "{second}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let renewals = stack.events_by_pay_id()[&pay_id]
        .iter()
        .filter(|event| event["type"] == RENEWED)
        .count();
    assert_eq!(renewals, 1, "the renewal is announced once");
    stack.teardown().await;
}
