//! The Stripe behaviours the worker's calls per job rest on: a customer created with its payment method (attached there,
//! declined there), HTTP Basic auth, and the per-route counts the benchmarks read.

use serde_json::json;
use stripe::{ApiErrorsCode, ApiErrorsType, StripeError};
use stripe_core::customer::{CreateCustomer, CreateCustomerInvoiceSettings};
use stripe_payment::payment_method::ListPaymentMethod;

use crate::helpers::TestStack;
use crate::helpers::sim::KEY;

#[tokio::test]
async fn a_customer_created_with_a_payment_method_has_it_attached_and_as_its_default() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let client = sim.stripe();

    let created = CreateCustomer::new()
        .email("new@example.com")
        .payment_method("pm_card_visa")
        .invoice_settings(CreateCustomerInvoiceSettings {
            default_payment_method: Some("pm_card_visa".to_owned()),
            ..CreateCustomerInvoiceSettings::new()
        })
        .send(&client)
        .await
        .expect("create parses");
    let listed = ListPaymentMethod::new()
        .customer(created.id.as_str())
        .send(&client)
        .await
        .expect("list parses");

    assert_eq!(listed.data.len(), 1, "the method is attached");
    let default = created
        .invoice_settings
        .and_then(|s| s.default_payment_method)
        .map(|pm| pm.id().to_string());
    assert_eq!(default, Some(listed.data[0].id.to_string()));
    assert_ne!(default.as_deref(), Some("pm_card_visa"), "a fresh pm_… id");
}

#[tokio::test]
async fn a_decline_card_fails_the_customer_create_as_its_attach_would_and_creates_nothing() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let card = "pm_card_chargeDeclinedInsufficientFunds";
    let other = sim
        .post("/v1/customers", "email=other@example.com", None)
        .await;
    let other = other.body["id"].as_str().expect("an id").to_owned();
    let at_attach = sim
        .post(
            &format!("/v1/payment_methods/{card}/attach"),
            &format!("customer={other}"),
            None,
        )
        .await;

    let at_create = sim
        .post(
            "/v1/customers",
            &format!("email=declined@example.com&payment_method={card}"),
            None,
        )
        .await;
    let with_async_stripe = CreateCustomer::new()
        .email("declined@example.com")
        .payment_method(card)
        .send(&sim.stripe())
        .await;

    assert_eq!(at_create.status, 402);
    assert_eq!(
        at_create.body, at_attach.body,
        "the same error as at attach"
    );
    assert_eq!(at_create.error_field("type"), Some("card_error"));
    assert_eq!(at_create.error_field("code"), Some("card_declined"));
    assert_eq!(
        at_create.error_field("decline_code"),
        Some("insufficient_funds")
    );
    let Err(StripeError::Stripe(error, 402)) = with_async_stripe else {
        panic!("expected a 402 card error, got {with_async_stripe:?}");
    };
    assert_eq!(error.type_, ApiErrorsType::CardError);
    assert_eq!(error.code, Some(ApiErrorsCode::CardDeclined));
    let found = sim.get("/v1/customers?email=declined@example.com").await;
    assert_eq!(found.body["data"], json!([]), "no customer was created");
    assert_eq!(sim.stats().await["objects"]["customers"], 1);
}

#[tokio::test]
async fn a_card_that_fails_only_when_charged_attaches_on_customer_create() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let created = sim
        .post(
            "/v1/customers",
            "email=later@example.com&payment_method=pm_card_chargeCustomerFail\
             &invoice_settings[default_payment_method]=pm_card_chargeCustomerFail",
            None,
        )
        .await;

    assert_eq!(created.status, 200, "{}", created.body);
    assert!(
        created.body["invoice_settings"]["default_payment_method"]
            .as_str()
            .is_some_and(|pm| pm.starts_with("pm_")),
        "{}",
        created.body
    );
}

#[tokio::test]
async fn a_default_that_is_not_the_method_given_is_refused_and_creates_nothing() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (_, elsewhere) = sim
        .customer_with_card("a@example.com", "pm_card_visa")
        .await;

    let created = sim
        .post(
            "/v1/customers",
            &format!("email=b@example.com&invoice_settings[default_payment_method]={elsewhere}"),
            None,
        )
        .await;

    assert_eq!(created.status, 400);
    assert_eq!(created.error_field("code"), Some("resource_missing"));
    assert_eq!(
        created.error_field("param"),
        Some("invoice_settings[default_payment_method]")
    );
    assert_eq!(sim.stats().await["objects"]["customers"], 1);
}

#[tokio::test]
async fn http_basic_auth_with_the_key_as_user_name_is_accepted_as_stripe_accepts_it() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let url = format!("{}/v1/customers", sim.base);

    // What `curl -u sk_test_…:` sends.
    let basic = sim
        .http
        .get(&url)
        .basic_auth(KEY, Some(""))
        .send()
        .await
        .expect("an answer");
    let bearer = sim
        .http
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("an answer");
    let wrong = sim
        .http
        .get(&url)
        .basic_auth("not_a_key", Some(""))
        .send()
        .await
        .expect("an answer");

    assert_eq!(basic.status(), 200);
    assert_eq!(bearer.status(), 200);
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn the_stats_count_each_route_s_calls_whatever_their_status() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (customer, pm) = sim
        .customer_with_card("a@example.com", "pm_card_visa")
        .await;
    let price = sim.price(100, None).await;
    let form = format!("customer={customer}&items[0][price]={price}&default_payment_method={pm}");
    sim.post("/v1/subscriptions", &form, None).await;
    sim.post("/v1/subscriptions", "customer=cus_missing", None)
        .await;

    let stats = sim.stats().await;

    assert_eq!(stats["requests_by_route"]["POST /v1/subscriptions"], 2);
    assert_eq!(stats["requests"]["POST /v1/subscriptions"]["200"], 1);
    assert_eq!(stats["requests_by_route"]["POST /v1/customers"], 1);
    assert_eq!(stats["requests_by_route"]["POST /v1/prices"], 1);
}
