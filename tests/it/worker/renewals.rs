//! An auto-renewal's whole life (docs/partners.md#the-rest-of-an-auto-renewals-life): created, renewed by the simulator's clock, a
//! failed charge, canceled; Stripe's events come in signed through the intake's webhook, and
//! the worker announces each and keeps the state the query answers.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestStack;

const MONTH: u64 = 31 * 24 * 3600;

fn query(pay_id: &str) -> serde_json::Value {
    json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
           "tradeType": "queryAutoRenewalRecord", "version": "3.0"})
}

async fn advance(stack: &TestStack, seconds: u64) {
    let answer = reqwest::Client::new()
        .post(format!("{}/_sim/advance", stack.sim().base))
        .json(&json!({"seconds": seconds}))
        .send()
        .await
        .expect("the simulator answers");
    assert!(answer.status().is_success(), "advance: {}", answer.status());
}

#[tokio::test]
async fn create_advance_renewed_cancel_advance_canceled_and_the_query_shows_each_step() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let (pay_id, created) = stack
        .subscribed(|r| r["pm_id"] = json!("pm_card_visa"))
        .await;

    let calls_before = stack.sim().stats().await["requests_total"].clone();
    advance(&stack, MONTH).await;
    let renewed = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.renewed",
            Duration::from_secs(20),
        )
        .await
        .expect("a renewal announced");
    assert_eq!(
        stack.sim().stats().await["requests_total"],
        calls_before,
        "a paid renewal costs no Stripe call: its invoice carries all it needs"
    );
    assert_eq!(renewed["_routing_key"], "subscription.renewed.P000818");
    // The change's own id: the subscription and the invoice paid.
    assert_eq!(
        renewed["id"],
        format!(
            "{}:renewed:{}",
            renewed["data"]["sub_id"].as_str().unwrap_or_default(),
            renewed["data"]["invoice_id"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(renewed["data"]["amount_paid"], "19.99");
    assert_eq!(renewed["data"]["currency"], "usd");
    assert_eq!(renewed["data"]["sub_id"], created["data"]["sub_id"]);
    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    assert_eq!(state.body["renewals"], 1, "{:?}", state.body);
    assert_eq!(state.body["last_invoice_id"], renewed["data"]["invoice_id"]);

    let cancel = json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
                        "tradeType": "cancelAutoRenewalRecord", "version": "3.0"});
    let answer = stack.post_signed("/cancelAutoRenewalRecord", cancel).await;
    assert_eq!(answer.body["operateCode"], "S", "{:?}", answer.body);
    stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.updated",
            Duration::from_secs(20),
        )
        .await
        .expect("the cancel at period end announced");

    advance(&stack, MONTH).await;
    let canceled = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.canceled",
            Duration::from_secs(20),
        )
        .await
        .expect("canceled at the period's end");
    assert_eq!(canceled["_routing_key"], "subscription.canceled.P000818");
    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    assert_eq!(state.body["status"], "canceled", "{:?}", state.body);
    assert_eq!(state.body["renewals"], 1, "no renewal after the cancel");
    stack.teardown().await;
}

/// Calls the simulator as Stripe, with the stack's key.
async fn stripe_get(stack: &TestStack, path: &str) -> serde_json::Value {
    use secrecy::ExposeSecret;
    reqwest::Client::new()
        .get(format!("{}{path}", stack.sim().base))
        .basic_auth(stack.settings.stripe.secret_key.expose_secret(), Some(""))
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("json")
}

/// A payId made into a subscription by the stack (it needs a worker), and the subscription's
/// first invoice as Stripe renders it.
async fn subscribed_with_first_invoice(stack: &TestStack) -> (String, serde_json::Value) {
    let (pay_id, created) = stack.subscribed(|_| {}).await;
    let sub_id = created["data"]["sub_id"].as_str().unwrap_or_default();
    let subscription = stripe_get(stack, &format!("/v1/subscriptions/{sub_id}")).await;
    let invoice_id = subscription["latest_invoice"].as_str().expect("an invoice");
    let invoice = stripe_get(stack, &format!("/v1/invoices/{invoice_id}")).await;
    (pay_id, invoice)
}

/// A Stripe event of `kind` about `object`, made now.
fn stripe_event(id: &str, kind: &str, object: &serde_json::Value) -> serde_json::Value {
    json!({"id": id, "object": "event", "api_version": "2025-03-31.basil",
        "created": time::OffsetDateTime::now_utc().unix_timestamp(), "livemode": false,
        "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": kind, "data": {"object": object}})
}

/// Calls the simulator as Stripe, with the stack's key.
async fn stripe_post(stack: &TestStack, path: &str, form: &[(&str, &str)]) -> serde_json::Value {
    use secrecy::ExposeSecret;
    reqwest::Client::new()
        .post(format!("{}{path}", stack.sim().base))
        .basic_auth(stack.settings.stripe.secret_key.expose_secret(), Some(""))
        .form(form)
        .send()
        .await
        .expect("the simulator answers")
        .json()
        .await
        .expect("json")
}

/// A subscription paid with a good card whose card is then switched to `card`, which
/// attaches but fails when charged; the month is advanced. Returns the stack, the payId, the
/// `renewal_failed` event and the query's answer.
async fn a_renewal_charged_to(
    card: &str,
    config: serde_json::Value,
) -> (TestStack, String, serde_json::Value, serde_json::Value) {
    let mut stack = TestStack::deployment().webhooks().start().await;
    stack.sim().configure(config).await;
    stack.spawn_worker().await;
    let (pay_id, created) = stack
        .subscribed(|r| r["pm_id"] = json!("pm_card_visa"))
        .await;
    // Later the customer's card starts to fail: the subscription is moved to one that attaches
    // but fails when charged, as a card that ran out of funds would.
    let customer = created["data"]["customer_id"].as_str().unwrap_or_default();
    let sub_id = created["data"]["sub_id"].as_str().unwrap_or_default();
    let failing = stripe_post(
        &stack,
        &format!("/v1/payment_methods/{card}/attach"),
        &[("customer", customer)],
    )
    .await;
    let failing = failing["id"].as_str().expect("the failing card attaches");
    stripe_post(
        &stack,
        &format!("/v1/subscriptions/{sub_id}"),
        &[("default_payment_method", failing)],
    )
    .await;

    advance(&stack, MONTH).await;
    let failed = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.renewal_failed",
            Duration::from_secs(20),
        )
        .await
        .expect("a failed renewal announced");
    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    (stack, pay_id, failed, state.body)
}

#[tokio::test]
async fn a_failed_renewal_is_announced_with_the_decline_code_of_the_card_that_declined() {
    let (stack, _, failed, state) = a_renewal_charged_to(
        "pm_card_chargeDeclinedInsufficientFunds",
        json!({"declines_at": "charge"}),
    )
    .await;

    assert_eq!(
        failed["_routing_key"],
        "subscription.renewal_failed.P000818"
    );
    assert_eq!(
        failed["data"]["error"],
        json!({"code": "card_declined", "decline_code": "insufficient_funds",
               "message": "Your card has insufficient funds."})
    );
    assert!(
        failed["data"]["attempt_count"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    );
    assert_eq!(
        state["last_error"]["decline_code"], "insufficient_funds",
        "{state:?}"
    );
    assert_eq!(state["last_error"]["code"], "card_declined");
    assert_eq!(state["renewals"], 0);
    let stats = stack.sim().stats().await;
    assert_eq!(
        stats["requests_by_route"]["GET /v1/invoice_payments"], 1,
        "one lookup of the failed payment: {stats}"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_failed_renewal_in_the_older_invoice_shape_carries_its_decline_code_too() {
    let (stack, _, failed, state) = a_renewal_charged_to(
        "pm_card_chargeCustomerFail",
        json!({"invoice_shape": "legacy"}),
    )
    .await;

    assert_eq!(failed["data"]["error"]["code"], "card_declined");
    assert_eq!(failed["data"]["error"]["decline_code"], "generic_decline");
    assert_eq!(
        state["last_error"]["decline_code"], "generic_decline",
        "{state:?}"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_payment_failed_event_with_only_a_finalization_error_reports_no_decline() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let (pay_id, mut invoice) = subscribed_with_first_invoice(&stack).await;
    // Its payment went through (no `last_payment_error`); only finalizing is said to have
    // failed, with an error that looks like a decline. That is no decline of the card.
    invoice["last_finalization_error"] = json!({"type": "card_error", "code": "card_declined",
        "decline_code": "generic_decline", "message": "Your card was declined."});
    // As a renewal's invoice: a first invoice's failure is the creation's, not announced.
    invoice["billing_reason"] = json!("subscription_cycle");
    let id = format!("evt_final{}", uuid::Uuid::new_v4().simple());
    let event = stripe_event(&id, "invoice.payment_failed", &invoice);

    deliver(&stack, &event).await;

    let failed = stack
        .wait_for_event(
            &pay_id,
            "autorenew.subscription.renewal_failed",
            Duration::from_secs(20),
        )
        .await
        .expect("the failed payment announced");
    assert_eq!(
        failed["id"],
        format!(
            "{}:renewal_failed:{}:{}",
            failed["data"]["sub_id"].as_str().unwrap_or_default(),
            failed["data"]["invoice_id"].as_str().unwrap_or_default(),
            failed["data"]["attempt_count"]
        ),
        "the change's own id, whichever delivery of {id} told it"
    );
    assert_eq!(
        failed["data"]["error"],
        json!({"code": null, "decline_code": null, "message": "the renewal charge failed"})
    );
    let stats = stack.sim().stats().await;
    assert_eq!(
        stats["requests_by_route"]["GET /v1/invoice_payments"], 1,
        "the payment was looked up: {stats}"
    );
    stack.teardown().await;
}

/// Delivers a hand-made Stripe event to the stack's intake, signed as Stripe signs it.
async fn deliver(stack: &TestStack, event: &serde_json::Value) {
    let body = serde_json::to_vec(event).expect("json");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = autorenew::domain::webhook::sign(&body, "whsec_stack_test", now);
    let answer = reqwest::Client::new()
        .post(format!("{}/stripe/webhook", stack.intake().address))
        .header("stripe-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the intake answers");
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn an_older_update_delivered_after_a_newer_one_is_announced_but_changes_nothing() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let (pay_id, created) = stack.subscribed(|_| {}).await;
    let sub_id = created["data"]["sub_id"].as_str().unwrap_or_default();
    let subscription = stripe_get(&stack, &format!("/v1/subscriptions/{sub_id}")).await;
    let update = |id: &str, created: i64, cancel_at_period_end: bool| {
        let mut object = subscription.clone();
        object["cancel_at_period_end"] = json!(cancel_at_period_end);
        json!({"id": id, "object": "event", "api_version": "2025-03-31.basil",
               "created": created, "livemode": false, "pending_webhooks": 1,
               "request": {"id": null, "idempotency_key": null},
               "type": "customer.subscription.updated",
               "data": {"object": object,
                        "previous_attributes": {"cancel_at_period_end": !cancel_at_period_end}}})
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let newer = format!("evt_newer{}", uuid::Uuid::new_v4().simple());
    let older = format!("evt_older{}", uuid::Uuid::new_v4().simple());

    // Stripe does not order its deliveries: the newer event arrives first.
    deliver(&stack, &update(&newer, now + 100, true)).await;
    deliver(&stack, &update(&older, now + 50, false)).await;

    // Each change is announced under its own id: the flag set, and the flag cleared.
    let announced = |flag: bool| {
        stack.events_by_pay_id()[&pay_id].iter().any(|e| {
            e["type"] == "autorenew.subscription.updated"
                && e["data"]["cancel_at_period_end"] == flag
        })
    };
    let both = crate::helpers::poll_until(Duration::from_secs(20), || async {
        announced(true) && announced(false)
    })
    .await;
    assert!(both, "each event is announced");
    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    assert_eq!(
        state.body["cancel_at_period_end"], true,
        "the older event did not take the state back: {:?}",
        state.body
    );
    stack.teardown().await;
}

/// An event of a subscription that is not in the account (Stripe answers its retrieval with
/// 404) cannot be one autorenew made: it is taken once and dropped, never retried for ever.
#[tokio::test]
async fn an_event_of_a_subscription_stripe_does_not_know_is_taken_once_and_dropped() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let (pay_id, mut invoice) = subscribed_with_first_invoice(&stack).await;
    // A real invoice, made to name a subscription the account does not have and to carry no
    // metadata, so the worker must retrieve the subscription to tie the event to a payId.
    let missing = format!("sub_missing{}", uuid::Uuid::new_v4().simple());
    invoice["parent"]["subscription_details"] = json!({"metadata": {}, "subscription": missing});
    invoice["billing_reason"] = json!("subscription_cycle");
    let id = format!("evt_missing{}", uuid::Uuid::new_v4().simple());
    let event = stripe_event(&id, "invoice.payment_failed", &invoice);
    let retrievals = || async {
        stack.sim().stats().await["requests_by_route"]["GET /v1/subscriptions/{id}"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = retrievals().await;

    deliver(&stack, &event).await;

    let asked = crate::helpers::poll_until(Duration::from_secs(20), || async {
        retrievals().await > before
    })
    .await;
    assert!(asked, "the worker retrieved the event's subscription");
    // The lock-retry delay is 200 ms here: an event that went back would be asked about again
    // several times within two seconds.
    let asked_again = crate::helpers::poll_until(Duration::from_secs(2), || async {
        retrievals().await > before + 1
    })
    .await;
    assert!(!asked_again, "an unknown subscription is asked about once");
    assert!(
        !stack.events_by_pay_id()[&pay_id]
            .iter()
            .any(|e| e["type"] == "autorenew.subscription.renewal_failed"),
        "nothing is announced for {id}"
    );
    stack.teardown().await;
}

/// The first invoice's failed payment is the creation's (its job answers it): it is not
/// announced as a failed renewal, while a cycle invoice's is.
#[tokio::test]
async fn a_first_invoice_s_failed_payment_is_no_failed_renewal() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let (pay_id, first) = subscribed_with_first_invoice(&stack).await;
    assert_eq!(first["billing_reason"], "subscription_create");
    let mut cycle = first.clone();
    cycle["billing_reason"] = json!("subscription_cycle");
    let event =
        |id: &str, invoice: &serde_json::Value| stripe_event(id, "invoice.payment_failed", invoice);
    let first_id = format!("evt_first{}", uuid::Uuid::new_v4().simple());
    let cycle_id = format!("evt_cycle{}", uuid::Uuid::new_v4().simple());

    deliver(&stack, &event(&first_id, &first)).await;
    deliver(&stack, &event(&cycle_id, &cycle)).await;

    // Both events are about one invoice, so a failed renewal announced for the first would
    // carry the cycle's id: what tells them apart is how many were announced.
    let announced = || -> Vec<serde_json::Value> {
        stack.events_by_pay_id()[&pay_id]
            .iter()
            .filter(|e| e["type"] == "autorenew.subscription.renewal_failed")
            .cloned()
            .collect()
    };
    let cycle_announced = crate::helpers::poll_until(Duration::from_secs(20), || async {
        !announced().is_empty()
    })
    .await;
    assert!(
        cycle_announced,
        "the cycle invoice's failure ({cycle_id}) is announced"
    );
    let announced = announced();
    assert_eq!(
        announced.len(),
        1,
        "the first invoice's failure ({first_id}) is not a renewal's: {announced:?}"
    );
    let stats = stack.sim().stats().await;
    assert_eq!(
        stats["requests_by_route"]["GET /v1/invoice_payments"], 1,
        "only the cycle invoice's payment was looked up: {stats}"
    );
    stack.teardown().await;
}
