//! SetupIntents (docs/partners.md#before-the-request-stripesubauthorization): created under the secret key, confirmed under the publishable
//! key with the client secret as Stripe.js sends it; every answer parses with async-stripe's
//! own types.

use std::collections::HashMap;

use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_core::customer::CreateCustomer;
use stripe_core::setup_intent::{CreateSetupIntent, CreateSetupIntentUsage, RetrieveSetupIntent};
use stripe_shared::{SetupIntent, SetupIntentStatus};
use stripe_types::Expandable;

use crate::helpers::TestStack;
use crate::helpers::sim::{Answer, TestSim, read};

const PUBLISHABLE: &str = "pk_test_simulator";

/// A customer and a SetupIntent for it, made with async-stripe.
async fn setup_intent(sim: &TestSim) -> SetupIntent {
    let client = sim.stripe();
    let customer = CreateCustomer::new()
        .email("setup@example.com")
        .send(&client)
        .await
        .expect("customer parses");
    let metadata = HashMap::from([
        ("payId".to_owned(), "P1".to_owned()),
        ("partnerCode".to_owned(), "P000818".to_owned()),
    ]);
    CreateSetupIntent::new()
        .customer(customer.id.as_str())
        .usage(CreateSetupIntentUsage::OffSession)
        .metadata(metadata)
        .customize()
        .request_strategy(RequestStrategy::Idempotent(
            IdempotencyKey::new(format!("seti-{}", uuid::Uuid::new_v4())).expect("a key"),
        ))
        .send(&client)
        .await
        .expect("the SetupIntent parses")
}

/// `POST /v1/setup_intents/{id}/confirm` as Stripe.js sends it: the publishable key and the
/// client secret.
async fn confirm(sim: &TestSim, intent: &SetupIntent, payment_method: &str) -> Answer {
    let form = format!(
        "payment_method={payment_method}&client_secret={}",
        intent.client_secret.as_deref().unwrap_or_default()
    );
    let response = sim
        .http
        .post(format!(
            "{}/v1/setup_intents/{}/confirm",
            sim.base, intent.id
        ))
        .bearer_auth(PUBLISHABLE)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("the simulator answers");
    read(response).await
}

fn parsed(answer: &Answer) -> SetupIntent {
    miniserde::json::from_str(&answer.body.to_string())
        .expect("parses as async-stripe's SetupIntent")
}

#[tokio::test]
async fn a_setup_intent_confirmed_with_the_publishable_key_attaches_the_card() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let intent = setup_intent(sim).await;

    let answer = confirm(sim, &intent, "pm_card_visa").await;
    let retrieved = RetrieveSetupIntent::new(intent.id.clone())
        .send(&sim.stripe())
        .await
        .expect("retrieve parses");

    assert_eq!(intent.status, SetupIntentStatus::RequiresPaymentMethod);
    assert_eq!(intent.usage, "off_session");
    assert_eq!(
        intent.metadata.as_ref().map(|m| m["payId"].as_str()),
        Some("P1")
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let confirmed = parsed(&answer);
    assert_eq!(confirmed.status, SetupIntentStatus::Succeeded);
    let Some(Expandable::Id(method)) = &confirmed.payment_method else {
        panic!("a payment method id: {}", answer.body);
    };
    assert!(method.as_str().starts_with("pm_") && method.as_str() != "pm_card_visa");
    assert_eq!(retrieved.status, SetupIntentStatus::Succeeded);
    let on_customer = sim
        .get(&format!("/v1/payment_methods/{}", method.as_str()))
        .await;
    assert_eq!(on_customer.body["customer"], answer.body["customer"]);
}

#[tokio::test]
async fn a_declining_card_fails_the_confirm_as_stripe_does() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let intent = setup_intent(sim).await;

    let declined = confirm(sim, &intent, "pm_card_chargeDeclined").await;
    let after = RetrieveSetupIntent::new(intent.id.clone())
        .send(&sim.stripe())
        .await
        .expect("retrieve parses");

    assert_eq!(declined.status, 402, "{}", declined.body);
    assert_eq!(declined.error_field("type"), Some("card_error"));
    assert_eq!(
        declined.error_field("decline_code"),
        Some("generic_decline")
    );
    assert_eq!(
        declined.body["error"]["setup_intent"]["status"],
        "requires_payment_method"
    );
    assert_eq!(after.status, SetupIntentStatus::RequiresPaymentMethod);
    let error = after.last_setup_error.expect("the decline is kept");
    assert_eq!(error.decline_code.as_deref(), Some("generic_decline"));
    assert_eq!(confirm(sim, &intent, "pm_card_visa").await.status, 200);
}

#[tokio::test]
async fn the_publishable_key_reaches_only_a_setup_intent_with_its_client_secret() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let intent = setup_intent(sim).await;
    let as_app = |path: String| {
        sim.http
            .get(format!("{}{path}", sim.base))
            .bearer_auth(PUBLISHABLE)
            .send()
    };

    let customers = read(as_app("/v1/customers".into()).await.expect("answer")).await;
    let no_secret = read(
        as_app(format!("/v1/setup_intents/{}", intent.id))
            .await
            .expect("answer"),
    )
    .await;
    let wrong_secret = read(
        as_app(format!(
            "/v1/setup_intents/{}?client_secret={}_secret_wrong",
            intent.id, intent.id
        ))
        .await
        .expect("answer"),
    )
    .await;
    let with_secret = read(
        as_app(format!(
            "/v1/setup_intents/{}?client_secret={}",
            intent.id,
            intent.client_secret.as_deref().unwrap_or_default()
        ))
        .await
        .expect("answer"),
    )
    .await;

    assert_eq!(customers.status, 401, "{}", customers.body);
    assert_eq!(no_secret.status, 400, "{}", no_secret.body);
    assert_eq!(wrong_secret.status, 400, "{}", wrong_secret.body);
    assert_eq!(with_secret.status, 200, "{}", with_secret.body);
    assert_eq!(parsed(&with_secret).id, intent.id);
}
