//! An auto-renewal lives for years, far past the retention of anything in Redis: the simulator's
//! clock is moved a year and more on, with a retention of 2 s standing in for 30 days, and the
//! partner's calls still find the subscription and act on it.

use std::time::Duration;

use autorenew::config::PlanSettings;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::helpers::TestStack;

const DAY: u64 = 24 * 3600;
/// The retention that stands in for `redis.record_ttl_secs` (30 days).
const RETENTION_SECS: u64 = 2;
const YEARLY: &str = "PLAN_YEARLY";

fn query(pay_id: &str) -> Value {
    json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
           "tradeType": "queryAutoRenewalRecord", "version": "3.0"})
}

async fn advance(stack: &TestStack, seconds: u64) {
    let answer = stack
        .sim()
        .http
        .post(format!("{}/_sim/advance", stack.sim().base))
        .json(&json!({"seconds": seconds}))
        .send()
        .await
        .expect("the simulator answers");
    assert!(answer.status().is_success(), "advance: {}", answer.status());
}

/// A stack with webhooks, a short retention and a yearly plan.
async fn stack() -> TestStack {
    TestStack::deployment()
        .webhooks()
        .settings(|settings| {
            settings.redis.record_ttl_secs = RETENTION_SECS;
            settings.plans.insert(
                YEARLY.to_owned(),
                PlanSettings {
                    price: None,
                    interval: "year".into(),
                },
            );
        })
        .workers(1)
        .start()
        .await
}

/// Waits until the record of `pay_id` counts `renewals` renewals; the record's answer then.
async fn renewals_reach(stack: &TestStack, pay_id: &str, renewals: u64) -> Value {
    let record = || async {
        stack
            .post_signed("/queryAutoRenewalRecord", query(pay_id))
            .await
            .body
    };
    let reached = crate::helpers::poll_until(Duration::from_secs(30), || async {
        record().await["renewals"].as_u64() == Some(renewals)
    })
    .await;
    let last = record().await;
    assert!(reached, "{renewals} renewals on record: {last:?}");
    last
}

#[tokio::test]
async fn a_monthly_subscription_is_canceled_400_days_after_its_creation() {
    let stack = stack().await;
    let (pay_id, created) = stack
        .subscribed(|r| r["pm_id"] = json!("pm_card_visa"))
        .await;
    let sub_id = created["data"]["sub_id"].as_str().unwrap_or_default();

    advance(&stack, 400 * DAY).await;
    // 400 days hold 13 monthly renewals, each announced by Stripe's webhook.
    renewals_reach(&stack, &pay_id, 13).await;
    tokio::time::sleep(Duration::from_secs(RETENTION_SECS + 1)).await;

    let answer = stack
        .post_signed(
            "/cancelAutoRenewalRecord",
            json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
                   "tradeType": "cancelAutoRenewalRecord", "version": "3.0", "when": "now"}),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["operateCode"], "S", "{:?}", answer.body);
    let canceled = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.canceled",
            Duration::from_secs(20),
        )
        .await
        .expect("the cancel announced");
    assert_eq!(canceled["data"]["sub_id"], sub_id);
    let at_stripe: Value = stack
        .sim()
        .http
        .get(format!("{}/v1/subscriptions/{sub_id}", stack.sim().base))
        .basic_auth(stack.settings.stripe.secret_key.expose_secret(), Some(""))
        .send()
        .await
        .expect("retrieve")
        .json()
        .await
        .expect("json");
    assert_eq!(at_stripe["status"], "canceled", "Stripe stopped charging");
    let result = stack.result_query(&pay_id).await;
    assert_eq!(result.body["status"], "canceled", "{:?}", result.body);
    stack.teardown().await;
}

#[tokio::test]
async fn a_yearly_subscription_answers_its_query_between_two_renewals() {
    let stack = stack().await;
    let (pay_id, created) = stack
        .subscribed(|r| {
            r["pm_id"] = json!("pm_card_visa");
            r["plan_id"] = json!(YEARLY);
        })
        .await;

    // The first renewal, a year on; then half a year, and the retention, without an event.
    advance(&stack, 366 * DAY).await;
    let renewed = renewals_reach(&stack, &pay_id, 1).await;
    advance(&stack, 180 * DAY).await;
    tokio::time::sleep(Duration::from_secs(RETENTION_SECS + 1)).await;

    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    assert_eq!(state.status, 200, "{:?}", state.body);
    assert_eq!(state.body["status"], "active", "{:?}", state.body);
    assert_eq!(state.body["renewals"], 1, "no step back: {:?}", state.body);
    assert_eq!(state.body["last_invoice_id"], renewed["last_invoice_id"]);
    assert_eq!(state.body["sub_id"], created["data"]["sub_id"]);
    let result = stack.result_query(&pay_id).await;
    assert_eq!(result.status, 200, "{:?}", result.body);
    assert_eq!(result.body["status"], "active", "{:?}", result.body);
    stack.teardown().await;
}
