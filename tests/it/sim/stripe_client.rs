//! The calls the worker makes, made with async-stripe itself: every answer must parse with its
//! own types (they fail on a missing required field), errors included.

use std::collections::HashMap;

use serde_json::json;
use stripe::{ApiErrorsCode, ApiErrorsType};
use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::SubscriptionStatus;
use stripe_billing::subscription::{
    CreateSubscription, CreateSubscriptionItems, CreateSubscriptionPaymentBehavior,
    ListSubscription, RetrieveSubscription, SearchSubscription,
};
use stripe_client_core::StripeClient;

use autorenew::stripe::CallError;
use stripe_core::customer::{
    CreateCustomer, ListCustomer, RetrieveCustomer, RetrieveCustomerReturned, SearchCustomer,
    UpdateCustomer, UpdateCustomerInvoiceSettings,
};
use stripe_payment::payment_method::{
    AttachPaymentMethod, ListPaymentMethod, RetrievePaymentMethod,
};
use stripe_product::price::{
    CreatePrice, CreatePriceProductData, CreatePriceRecurring, ListPrice, RetrievePrice,
};
use stripe_product::product::CreateProduct;
use stripe_types::Expandable;

use crate::helpers::TestStack;

fn key(k: &str) -> RequestStrategy {
    RequestStrategy::Idempotent(IdempotencyKey::new(k).expect("a valid key"))
}

fn metadata(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn customers_are_created_found_by_email_and_searched_with_async_stripe() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let client = sim.stripe();

    let created = CreateCustomer::new()
        .email("421516116@qq.com")
        .metadata(metadata(&[("partnerCode", "P000818")]))
        .customize()
        .request_strategy(key("customer-P000818-421516116@qq.com"))
        .send(&client)
        .await
        .expect("create parses");
    let listed = ListCustomer::new()
        .email("421516116@qq.com")
        .send(&client)
        .await
        .expect("list parses");
    let searched =
        SearchCustomer::new("email:'421516116@qq.com' AND metadata['partnerCode']:'P000818'")
            .send(&client)
            .await
            .expect("search parses");
    let retrieved = RetrieveCustomer::new(created.id.clone())
        .send(&client)
        .await
        .expect("retrieve parses");

    assert_eq!(created.email.as_deref(), Some("421516116@qq.com"));
    assert_eq!(
        created.metadata.as_ref().map(|m| m["partnerCode"].as_str()),
        Some("P000818")
    );
    assert_eq!(listed.data.len(), 1);
    assert_eq!(listed.data[0].id, created.id);
    assert_eq!(searched.data.len(), 1);
    let RetrieveCustomerReturned::Customer(retrieved) = retrieved else {
        panic!("a live customer parses as Customer, not DeletedCustomer");
    };
    assert_eq!(retrieved.id, created.id);
}

#[tokio::test]
async fn a_test_card_attaches_as_a_fresh_payment_method_and_becomes_the_default() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let client = sim.stripe();
    let customer = CreateCustomer::new()
        .email("a@example.com")
        .send(&client)
        .await
        .expect("customer");

    let retrieved = RetrievePaymentMethod::new("pm_card_visa")
        .send(&client)
        .await
        .expect("retrieve parses");
    let attached = AttachPaymentMethod::new("pm_card_visa")
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .expect("attach parses");
    let updated = UpdateCustomer::new(customer.id.clone())
        .invoice_settings(UpdateCustomerInvoiceSettings {
            default_payment_method: Some(attached.id.to_string()),
            ..UpdateCustomerInvoiceSettings::new()
        })
        .send(&client)
        .await
        .expect("update parses");
    let listed = ListPaymentMethod::new()
        .customer(customer.id.as_str())
        .send(&client)
        .await
        .expect("list parses");

    assert_eq!(
        retrieved.card.as_ref().map(|c| c.brand.as_str()),
        Some("visa")
    );
    assert_ne!(
        attached.id.as_str(),
        "pm_card_visa",
        "Stripe mints a new PaymentMethod per use"
    );
    assert!(matches!(&attached.customer, Some(Expandable::Id(id)) if *id == customer.id));
    assert_eq!(
        updated
            .invoice_settings
            .and_then(|s| s.default_payment_method)
            .map(|pm| pm.id().to_string()),
        Some(attached.id.to_string())
    );
    assert_eq!(listed.data.len(), 1);
    assert_eq!(listed.data[0].id, attached.id);
}

#[tokio::test]
async fn products_and_prices_are_created_and_found_by_lookup_key_with_async_stripe() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let client = sim.stripe();

    let product = CreateProduct::new("Gold plan")
        .send(&client)
        .await
        .expect("product parses");
    let price = CreatePrice::new(stripe_types::Currency::USD)
        .unit_amount(1999)
        .product(product.id.as_str())
        .recurring(CreatePriceRecurring::new(
            stripe_product::price::CreatePriceRecurringInterval::Month,
        ))
        .lookup_key("gold_1999_usd_month")
        .customize()
        .request_strategy(key("price-gold_1999_usd_month"))
        .send(&client)
        .await
        .expect("price parses");
    let inline = CreatePrice::new(stripe_types::Currency::JPY)
        .unit_amount(500)
        .product_data(CreatePriceProductData::new("Inline plan"))
        .recurring(CreatePriceRecurring::new(
            stripe_product::price::CreatePriceRecurringInterval::Year,
        ))
        .send(&client)
        .await
        .expect("price with product_data parses");
    let found = ListPrice::new()
        .lookup_keys(vec!["gold_1999_usd_month".to_owned()])
        .send(&client)
        .await
        .expect("list parses");
    let retrieved = RetrievePrice::new(price.id.clone())
        .send(&client)
        .await
        .expect("retrieve parses");

    assert_eq!(found.data.len(), 1);
    assert_eq!(found.data[0].id, price.id);
    assert_eq!(retrieved.unit_amount, Some(1999));
    assert_eq!(retrieved.product.id().as_str(), product.id.as_str());
    assert_ne!(inline.product.id().as_str(), product.id.as_str());
    assert_eq!(
        inline.recurring.map(|r| r.interval.to_string()),
        Some("year".to_owned())
    );
}

#[tokio::test]
async fn a_subscription_is_created_listed_and_searched_with_async_stripe() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let client = sim.stripe();
    let (customer, pm) = sim
        .customer_with_card("b@example.com", "pm_card_mastercard")
        .await;
    let price = sim.price(1999, Some("gold")).await;

    let created = CreateSubscription::new()
        .customer(customer.as_str())
        .items(vec![CreateSubscriptionItems {
            price: Some(price.clone()),
            ..CreateSubscriptionItems::new()
        }])
        .default_payment_method(pm.as_str())
        .off_session(true)
        .payment_behavior(CreateSubscriptionPaymentBehavior::ErrorIfIncomplete)
        .metadata(metadata(&[
            ("payId", "P0002702020110214193780630"),
            ("partnerCode", "P000818"),
            ("plan_id", "gold"),
        ]))
        .expand(vec!["latest_invoice".to_owned()])
        .customize()
        .request_strategy(key("sub-P0002702020110214193780630"))
        .send(&client)
        .await
        .expect("create parses");
    let listed = ListSubscription::new()
        .customer(customer.as_str())
        .send(&client)
        .await
        .expect("list parses");
    let searched = SearchSubscription::new("metadata['payId']:'P0002702020110214193780630'")
        .send(&client)
        .await
        .expect("search parses");
    let retrieved = RetrieveSubscription::new(created.id.clone())
        .send(&client)
        .await
        .expect("retrieve parses");

    assert_eq!(created.status, SubscriptionStatus::Active);
    let Some(Expandable::Object(invoice)) = &created.latest_invoice else {
        panic!("latest_invoice was asked expanded");
    };
    assert_eq!(invoice.amount_paid, 1999);
    assert_eq!(created.items.data[0].price.id.as_str(), price);
    assert_eq!(listed.data.len(), 1);
    assert_eq!(searched.data.len(), 1);
    assert_eq!(retrieved.id, created.id);
    assert!(matches!(retrieved.latest_invoice, Some(Expandable::Id(_))));
    assert_eq!(
        sim.stats().await["subscriptions_by_pay_id"],
        json!({"P0002702020110214193780630": 1})
    );
}

#[tokio::test]
async fn a_declined_first_invoice_comes_back_as_async_stripe_s_card_error() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"declines_at": "charge"})).await;
    let client = sim.stripe();
    let (customer, pm) = sim
        .customer_with_card("c@example.com", "pm_card_chargeDeclinedInsufficientFunds")
        .await;
    let price = sim.price(500, None).await;

    let result = CreateSubscription::new()
        .customer(customer.as_str())
        .items(vec![CreateSubscriptionItems {
            price: Some(price),
            ..CreateSubscriptionItems::new()
        }])
        .default_payment_method(pm.as_str())
        .payment_behavior(CreateSubscriptionPaymentBehavior::ErrorIfIncomplete)
        .send(&client)
        .await;

    let Err(StripeError::Stripe(error, status)) = result else {
        panic!("expected a Stripe error, got {result:?}");
    };
    assert_eq!(status, 402);
    assert_eq!(error.type_, ApiErrorsType::CardError);
    assert_eq!(error.code, Some(ApiErrorsCode::CardDeclined));
    assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
}

#[tokio::test]
async fn an_invalid_request_comes_back_as_async_stripe_s_error_naming_the_param() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    an_invalid_request_names_its_param(&sim.stripe()).await;
}

/// Attaching to a missing customer: a 400 that any client must hand back as async-stripe's
/// error type, naming the parameter.
pub(super) async fn an_invalid_request_names_its_param<C>(client: &C)
where
    C: StripeClient,
    C::Err: Into<CallError> + std::fmt::Debug,
{
    let result = AttachPaymentMethod::new("pm_card_visa")
        .customer("cus_missing")
        .send(client)
        .await
        .map_err(Into::into);

    let Err(CallError {
        error: StripeError::Stripe(error, status),
        ..
    }) = result
    else {
        panic!("expected a Stripe error, got {result:?}");
    };
    assert_eq!(status, 400);
    assert_eq!(error.type_, ApiErrorsType::InvalidRequestError);
    assert_eq!(error.code, Some(ApiErrorsCode::ResourceMissing));
    assert_eq!(error.param.as_deref(), Some("customer"));
}
