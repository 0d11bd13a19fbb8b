//! The simulator's clock (`POST /_sim/advance`, docs/design.md#the-simulators-clock-events-and-webhooks): renewals charged to the
//! default payment method, failed charges retried and at last canceled, cancellations at
//! period end and at once, the two invoice shapes, and the events that tell of each — every
//! Stripe object parsed with async-stripe's own types.

use serde_json::{Value, json};
use stripe_billing::SubscriptionStatus;
use stripe_billing::invoice_payment::{ListInvoicePayment, RetrieveInvoicePayment};
use stripe_billing::subscription::{CancelSubscription, RetrieveSubscription, UpdateSubscription};
use stripe_shared::{
    ApiErrorsCode, ApiErrorsType, Event, EventType, Invoice, InvoiceBillingReason,
    PaymentIntentStatus,
};
use stripe_types::Expandable;

use crate::helpers::TestStack;
use crate::helpers::sim::TestSim;

const DAY: i64 = 86_400;

/// A monthly subscription of 1999 paid with `card`; returns (subscription id, its JSON).
async fn subscribed(sim: &TestSim, card: &str) -> (String, Value) {
    let (customer, pm) = sim.customer_with_card("renew@example.com", card).await;
    let price = sim.price(1999, None).await;
    let created = sim
        .post(
            "/v1/subscriptions",
            &format!(
                "customer={customer}&items[0][price]={price}&default_payment_method={pm}\
                 &metadata[payId]=P1&metadata[partnerCode]=P000818"
            ),
            None,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.body["id"].as_str().expect("an id").to_owned();
    (id, created.body)
}

fn period(subscription: &Value) -> (i64, i64) {
    let item = &subscription["items"]["data"][0];
    (
        item["current_period_start"].as_i64().expect("a start"),
        item["current_period_end"].as_i64().expect("an end"),
    )
}

fn parse_event(event: &Value) -> Event {
    miniserde::json::from_str(&event.to_string()).expect("async-stripe reads the Event")
}

fn parse_invoice(invoice: &Value) -> Invoice {
    miniserde::json::from_str(&invoice.to_string()).expect("async-stripe reads the Invoice")
}

#[tokio::test]
async fn an_advance_past_the_period_end_renews_the_subscription_and_charges_its_card() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (id, created) = subscribed(sim, "pm_card_visa").await;
    let (start, end) = period(&created);

    let report = sim.advance(31 * DAY).await;

    assert_eq!(report["renewals"], 1, "{report}");
    assert_eq!(report["payments_succeeded"], 1);
    let paid = sim.events_of("invoice.paid").await;
    assert_eq!(paid.len(), 2, "the first invoice's and the renewal's");
    let event = parse_event(&paid[0]);
    assert_eq!(event.type_, EventType::InvoicePaid);
    assert_eq!(event.created, end, "stamped when the period ended");
    let invoice = parse_invoice(&paid[0]["data"]["object"]);
    assert_eq!(
        invoice.billing_reason,
        Some(InvoiceBillingReason::SubscriptionCycle)
    );
    assert_eq!(invoice.amount_paid, 1999);
    let link = invoice
        .parent
        .and_then(|p| p.subscription_details)
        .expect("parent.subscription_details");
    assert_eq!(link.subscription.id().as_str(), id);
    assert_eq!(
        link.metadata.as_ref().map(|m| m["payId"].as_str()),
        Some("P1")
    );
    let first = parse_invoice(&paid[1]["data"]["object"]);
    assert_eq!(
        first.billing_reason,
        Some(InvoiceBillingReason::SubscriptionCreate)
    );
    let renewed = RetrieveSubscription::new(id.as_str())
        .send(&sim.stripe())
        .await
        .expect("async-stripe reads the Subscription");
    assert_eq!(renewed.status, SubscriptionStatus::Active);
    assert_eq!(renewed.items.data[0].current_period_start, end);
    assert_eq!(
        renewed.items.data[0].current_period_end,
        end + (end - start)
    );
    let updated = sim.events_of("customer.subscription.updated").await;
    let previous = &updated[0]["data"]["previous_attributes"];
    assert_eq!(period(previous), (start, end), "{previous}");
    assert_eq!(previous["latest_invoice"], created["latest_invoice"]);
}

#[tokio::test]
async fn the_clock_stamps_what_is_made_after_an_advance() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let before = sim.post("/v1/customers", "email=a@example.com", None).await;

    sim.advance(10 * DAY).await;
    let after = sim.post("/v1/customers", "email=b@example.com", None).await;
    let clock = sim
        .admin(reqwest::Method::GET, "/_sim/clock", json!(null))
        .await;

    let made = |a: &crate::helpers::sim::Answer| a.body["created"].as_i64().expect("created");
    assert!(made(&after) - made(&before) >= 10 * DAY);
    assert!(clock.body["now"].as_i64().expect("now") >= made(&after));
    assert_eq!(clock.body["offset_seconds"], 10 * DAY);
}

#[tokio::test]
async fn two_periods_in_one_advance_renew_twice_each_at_its_own_period_end() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (_, created) = subscribed(sim, "pm_card_visa").await;
    let (start, end) = period(&created);

    sim.advance(65 * DAY).await;

    let paid = sim.events_of("invoice.paid").await;
    let stamps: Vec<i64> = paid
        .iter()
        .map(|e| e["created"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(stamps[..2], [end + (end - start), end], "newest first");
    assert_eq!(stamps.len(), 3, "two renewals after the first invoice");
}

#[tokio::test]
async fn a_card_that_fails_when_charged_is_retried_then_the_subscription_is_canceled() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (id, created) = subscribed(sim, "pm_card_visa").await;
    let (_, end) = period(&created);
    let customer = created["customer"].as_str().expect("a customer");
    // Stripe's test card that attaches but fails every charge: the renewal is the first.
    let failing = sim
        .post(
            "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
            &format!("customer={customer}"),
            None,
        )
        .await;
    assert_eq!(failing.status, 200, "{}", failing.body);
    let failing = failing.body["id"].as_str().expect("a pm id");
    let switched = sim
        .post(
            &format!("/v1/subscriptions/{id}"),
            &format!("default_payment_method={failing}"),
            None,
        )
        .await;
    assert_eq!(switched.status, 200, "{}", switched.body);

    let report = sim.advance(60 * DAY - 1).await;

    assert_eq!(report["payments_failed"], 4, "{report}");
    assert_eq!(report["canceled"], 1);
    let mut failed = sim.events_of("invoice.payment_failed").await;
    failed.reverse();
    let attempts: Vec<(i64, Value)> = failed
        .iter()
        .map(|e| {
            let invoice = &e["data"]["object"];
            (
                invoice["attempt_count"].as_i64().unwrap_or(0),
                invoice["next_payment_attempt"].clone(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, json!(end + 3 * DAY)),
            (2, json!(end + 8 * DAY)),
            (3, json!(end + 15 * DAY)),
            (4, Value::Null),
        ]
    );
    let last = parse_invoice(&failed[3]["data"]["object"]);
    assert!(
        last.last_finalization_error.is_none(),
        "finalizing the invoice did not fail, its payment did"
    );
    let invoice = last.id.expect("an invoice id");
    let payments = ListInvoicePayment::new()
        .invoice(invoice.as_str())
        .expand(vec!["data.payment.payment_intent".to_owned()])
        .send(&sim.stripe())
        .await
        .expect("async-stripe reads the invoice's payments");
    assert_eq!(
        payments.data.len(),
        1,
        "one PaymentIntent, charged by every try"
    );
    let payment = &payments.data[0];
    assert!(payment.id.as_str().starts_with("inpay_"));
    assert!(payment.is_default);
    assert_eq!(payment.status, "open");
    let Some(Expandable::Object(intent)) = &payment.payment.payment_intent else {
        panic!("the PaymentIntent, expanded: {:?}", payment.payment);
    };
    assert!(intent.id.as_str().starts_with("pi_"));
    assert_eq!(intent.status, PaymentIntentStatus::RequiresPaymentMethod);
    let error = intent
        .last_payment_error
        .as_ref()
        .expect("the charge's error");
    assert_eq!(error.type_, ApiErrorsType::CardError);
    assert_eq!(error.code, Some(ApiErrorsCode::CardDeclined));
    assert_eq!(error.decline_code.as_deref(), Some("generic_decline"));
    let statuses: Vec<Value> = sim
        .events_of("customer.subscription.updated")
        .await
        .iter()
        .map(|e| e["data"]["object"]["status"].clone())
        .collect();
    assert!(statuses.contains(&json!("past_due")), "{statuses:?}");
    let deleted = sim.events_of("customer.subscription.deleted").await;
    assert_eq!(deleted.len(), 1);
    let object = &deleted[0]["data"]["object"];
    assert_eq!(object["status"], "canceled");
    assert_eq!(object["cancellation_details"]["reason"], "payment_failed");
    assert_eq!(deleted[0]["created"], end + 15 * DAY);
}

#[tokio::test]
async fn a_period_end_cancel_takes_effect_at_the_first_advance_past_the_end() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (id, created) = subscribed(sim, "pm_card_visa").await;
    let (_, end) = period(&created);

    let updated = UpdateSubscription::new(id.as_str())
        .cancel_at_period_end(true)
        .send(&sim.stripe())
        .await
        .expect("async-stripe reads the update");
    let before_end = sim.advance(10 * DAY).await;
    let still = RetrieveSubscription::new(id.as_str())
        .send(&sim.stripe())
        .await
        .expect("retrieve");
    let past_end = sim.advance(25 * DAY).await;

    assert!(updated.cancel_at_period_end);
    assert_eq!(updated.cancel_at, Some(end));
    let announced = sim.events_of("customer.subscription.updated").await;
    assert_eq!(
        announced[0]["data"]["previous_attributes"]["cancel_at_period_end"],
        false
    );
    assert_eq!(before_end["canceled"], 0);
    assert_eq!(still.status, SubscriptionStatus::Active);
    assert_eq!(past_end["canceled"], 1);
    assert_eq!(past_end["renewals"], 0, "no new period is billed");
    let deleted = sim.events_of("customer.subscription.deleted").await;
    let object = &deleted[0]["data"]["object"];
    assert_eq!(
        object["cancellation_details"]["reason"],
        "cancellation_requested"
    );
    assert_eq!(object["ended_at"], end);
}

#[tokio::test]
async fn a_period_end_cancel_taken_back_renews_as_before() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (id, _) = subscribed(sim, "pm_card_visa").await;
    let path = format!("/v1/subscriptions/{id}");
    sim.post(&path, "cancel_at_period_end=true", None).await;

    let undone = sim.post(&path, "cancel_at_period_end=false", None).await;
    let again = sim.post(&path, "cancel_at_period_end=false", None).await;
    let report = sim.advance(31 * DAY).await;

    assert_eq!(undone.body["cancel_at_period_end"], false);
    assert_eq!(undone.body["cancel_at"], Value::Null);
    assert_eq!(again.status, 200);
    assert_eq!(
        sim.events_of("customer.subscription.updated")
            .await
            .iter()
            .filter(|e| e["data"]["previous_attributes"]
                .get("cancel_at_period_end")
                .is_some())
            .count(),
        2,
        "a change that changes nothing announces nothing"
    );
    assert_eq!(report["renewals"], 1);
}

#[tokio::test]
async fn a_delete_cancels_at_once_a_second_delete_is_404_and_nothing_renews_after() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (id, _) = subscribed(sim, "pm_card_visa").await;

    let canceled = CancelSubscription::new(id.as_str())
        .send(&sim.stripe())
        .await
        .expect("async-stripe reads the cancel");
    let again = sim
        .http
        .delete(format!("{}/v1/subscriptions/{id}", sim.base))
        .bearer_auth(crate::helpers::sim::KEY)
        .send()
        .await
        .expect("an answer");
    let still_there = sim.get(&format!("/v1/subscriptions/{id}")).await;
    let report = sim.advance(31 * DAY).await;

    assert_eq!(canceled.status, SubscriptionStatus::Canceled);
    assert_eq!(
        again.status(),
        404,
        "Stripe: a canceled subscription is no longer cancelable"
    );
    assert_eq!(still_there.body["status"], "canceled");
    let deleted = sim.events_of("customer.subscription.deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        deleted[0]["data"]["object"]["cancellation_details"]["reason"],
        "cancellation_requested"
    );
    assert_eq!(report["renewals"], 0);
}

#[tokio::test]
async fn creating_a_subscription_announces_it_and_its_first_paid_invoice() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (id, _) = subscribed(sim, "pm_card_visa").await;

    let created = sim.events_of("customer.subscription.created").await;
    let paid = sim.events_of("invoice.paid").await;

    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["object"]["id"], id.as_str());
    assert_eq!(paid.len(), 1);
    assert_eq!(
        paid[0]["data"]["object"]["billing_reason"],
        "subscription_create"
    );
    assert!(
        paid[0]["request"]["id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
    );
}

#[tokio::test]
async fn the_legacy_invoice_shape_names_the_subscription_at_the_top_level() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"invoice_shape": "legacy"})).await;
    let (id, _) = subscribed(sim, "pm_card_visa").await;

    let paid = sim.events_of("invoice.paid").await;
    let object = &paid[0]["data"]["object"];
    let invoice = parse_invoice(object);

    assert_eq!(object["parent"], Value::Null);
    assert_eq!(object["subscription_details"]["metadata"]["payId"], "P1");
    assert!(matches!(invoice.subscription, Some(Expandable::Id(s)) if s.as_str() == id));
}

#[tokio::test]
async fn both_invoice_shapes_at_once_parse_and_agree() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"invoice_shape": "both"})).await;
    let (id, _) = subscribed(sim, "pm_card_visa").await;

    let paid = sim.events_of("invoice.paid").await;
    let object = &paid[0]["data"]["object"];
    parse_invoice(object);

    assert_eq!(object["subscription"], id.as_str());
    assert_eq!(
        object["parent"]["subscription_details"]["subscription"],
        id.as_str()
    );
}

#[tokio::test]
async fn events_are_listed_newest_first_and_paged_by_created_and_cursor() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    subscribed(sim, "pm_card_visa").await;
    let now = sim
        .admin(reqwest::Method::GET, "/_sim/clock", json!(null))
        .await
        .body["now"]
        .as_i64()
        .expect("now");
    sim.advance(31 * DAY).await;

    let renewals = sim
        .get(&format!("/v1/events?created[gt]={now}&limit=100"))
        .await;
    let first = sim
        .get(&format!("/v1/events?created[gt]={now}&limit=2"))
        .await;
    let cursor = first.body["data"][1]["id"].as_str().expect("an id");
    let next = sim
        .get(&format!(
            "/v1/events?created[gt]={now}&limit=2&starting_after={cursor}"
        ))
        .await;
    let one = sim
        .get(&format!(
            "/v1/events/{}",
            first.body["data"][0]["id"].as_str().expect("id")
        ))
        .await;

    let all = renewals.body["data"].as_array().expect("a list");
    let kinds: Vec<&str> = all.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        kinds.contains(&"invoice.paid") && !kinds.contains(&"customer.created"),
        "{kinds:?}"
    );
    let stamps: Vec<i64> = all.iter().filter_map(|e| e["created"].as_i64()).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {stamps:?}"
    );
    assert_eq!(first.body["has_more"], true);
    assert_eq!(next.body["data"][0]["id"], all[2]["id"]);
    assert_eq!(one.body["id"], first.body["data"][0]["id"]);
    for event in all {
        parse_event(event);
    }
}

#[tokio::test]
async fn a_paid_renewal_s_payment_has_a_succeeded_intent_and_no_error() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    subscribed(sim, "pm_card_visa").await;
    sim.advance(31 * DAY).await;
    let paid = sim.events_of("invoice.paid").await;
    let invoice = paid[0]["data"]["object"]["id"].as_str().expect("an id");

    let listed = sim
        .get(&format!("/v1/invoice_payments?invoice={invoice}"))
        .await;
    let id = listed.body["data"][0]["id"].as_str().expect("a payment");
    let payment = RetrieveInvoicePayment::new(id)
        .expand(vec!["payment.payment_intent".to_owned()])
        .send(&sim.stripe())
        .await
        .expect("async-stripe reads the payment");
    let intent_id = listed.body["data"][0]["payment"]["payment_intent"]
        .as_str()
        .expect("the intent's id, unexpanded");
    let intent = sim.get(&format!("/v1/payment_intents/{intent_id}")).await;

    assert_eq!(payment.status, "paid");
    assert_eq!(payment.amount_paid, Some(1999));
    let Some(Expandable::Object(expanded)) = &payment.payment.payment_intent else {
        panic!("expanded: {:?}", payment.payment);
    };
    assert_eq!(expanded.status, PaymentIntentStatus::Succeeded);
    assert!(expanded.last_payment_error.is_none());
    assert_eq!(intent.status, 200, "{}", intent.body);
    assert_eq!(intent.body["id"], intent_id);
    assert_eq!(intent.body["amount_received"], 1999);
}

#[tokio::test]
async fn a_decline_at_charge_puts_the_card_s_own_decline_code_on_the_intent() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"declines_at": "charge", "invoice_shape": "legacy"}))
        .await;
    let (id, created) = subscribed(sim, "pm_card_visa").await;
    let customer = created["customer"].as_str().expect("a customer");
    let failing = sim
        .post(
            "/v1/payment_methods/pm_card_chargeDeclinedInsufficientFunds/attach",
            &format!("customer={customer}"),
            None,
        )
        .await;
    let failing = failing.body["id"].as_str().expect("it attaches");
    sim.post(
        &format!("/v1/subscriptions/{id}"),
        &format!("default_payment_method={failing}"),
        None,
    )
    .await;

    sim.advance(31 * DAY).await;

    let failed = sim.events_of("invoice.payment_failed").await;
    let object = &failed[0]["data"]["object"];
    assert_eq!(object["last_finalization_error"], Value::Null);
    // The older shape names the PaymentIntent on the invoice.
    let intent_id = object["payment_intent"].as_str().expect("payment_intent");
    let intent = sim.get(&format!("/v1/payment_intents/{intent_id}")).await;
    assert_eq!(intent.status, 200, "{}", intent.body);
    let error = &intent.body["last_payment_error"];
    assert_eq!(error["code"], "card_declined");
    assert_eq!(error["decline_code"], "insufficient_funds");
    assert_eq!(error["payment_method"]["id"], failing);
    let unknown = sim.get("/v1/invoice_payments?invoice=in_missing").await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
}
