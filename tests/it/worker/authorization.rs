//! `POST /stripeSubAuthorization` (docs/partners.md#before-the-request-stripesubauthorization) end to end: the intake calls the simulator
//! through the real gateway, the app's confirm goes to the simulator under the publishable
//! key, and the creation that follows costs one Stripe call. Calls are counted by the
//! simulator itself.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::sim::subscriptions_by_pay_id;
use crate::helpers::{Answer, PARTNER, TestStack};

const PUBLISHABLE: &str = "pk_test_worker_tests";

fn authorization(pay_id: &str, email: &str) -> Value {
    json!({"partnerCode": PARTNER, "payId": pay_id, "email": email,
           "tradeType": "stripeSubAuthorization", "version": "3.0"})
}

fn fresh_email() -> String {
    format!("auth-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn fresh_pay_id() -> String {
    format!("A{}", uuid::Uuid::new_v4().simple())
}

async fn start() -> TestStack {
    TestStack::deployment()
        .settings(|settings| {
            settings.stripe.publishable_key = PUBLISHABLE.into();
        })
        .start()
        .await
}

impl TestStack {
    async fn authorize(&self, pay_id: &str, email: &str) -> Answer {
        self.post_signed("/stripeSubAuthorization", authorization(pay_id, email))
            .await
    }

    /// The app's confirm, as Stripe.js sends it; returns the confirmed payment method.
    async fn confirm(&self, answer: &Answer, card: &str) -> String {
        let intent = answer.body["setup_intent_id"].as_str().expect("an id");
        let secret = answer.body["client_secret"].as_str().expect("a secret");
        let key = answer.body["publishable_key"].as_str().expect("a key");
        let confirmed: Value = self
            .sim()
            .http
            .post(format!(
                "{}/v1/setup_intents/{intent}/confirm",
                self.sim().base
            ))
            .bearer_auth(key)
            .form(&[("payment_method", card), ("client_secret", secret)])
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("json");
        assert_eq!(confirmed["status"], "succeeded", "{confirmed}");
        confirmed["payment_method"]
            .as_str()
            .expect("a method")
            .to_owned()
    }

    /// Stripe calls made so far by us, not by the app: its confirms are left out.
    async fn our_calls(&self) -> u64 {
        let stats = self.sim().stats().await;
        let total = stats["requests_total"].as_u64().unwrap_or(0);
        let confirms = stats["requests_by_route"]["POST /v1/setup_intents/{id}/confirm"]
            .as_u64()
            .unwrap_or(0);
        total - confirms
    }
}

#[tokio::test]
async fn authorize_confirm_create_costs_four_calls_for_a_new_customer_and_two_for_a_returning_one()
{
    let mut stack = start().await;
    stack.spawn_worker().await;
    // A first job makes the plan's price: count from the next one on.
    stack.subscribed(|_| {}).await;
    let email = fresh_email();

    let before = stack.our_calls().await;
    let first = fresh_pay_id();
    let authorized = stack.authorize(&first, &email).await;
    assert_eq!(authorized.status, 200, "{:?}", authorized.body);
    let pm_id = stack.confirm(&authorized, "pm_card_visa").await;
    let (_, created) = stack
        .subscribed(|r| {
            r["payId"] = json!(first);
            r["email"] = json!(email);
            r["pm_id"] = json!(pm_id);
        })
        .await;
    let after_new = stack.our_calls().await;

    let second = fresh_pay_id();
    let again = stack.authorize(&second, &email).await;
    let pm_again = stack.confirm(&again, "pm_card_mastercard").await;
    stack
        .subscribed(|r| {
            r["payId"] = json!(second);
            r["email"] = json!(email);
            r["pm_id"] = json!(pm_again);
        })
        .await;
    let after_returning = stack.our_calls().await;

    let body = &authorized.body;
    assert_eq!(body["operateCode"], "S");
    assert_eq!(body["payId"], first.as_str());
    assert!(
        body["setup_intent_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("seti_"))
    );
    assert!(
        body["client_secret"]
            .as_str()
            .is_some_and(|s| s.contains("_secret_"))
    );
    assert_eq!(body["publishable_key"], PUBLISHABLE);
    assert_eq!(
        after_new - before,
        4,
        "list customers, create the customer, the SetupIntent, the subscription"
    );
    assert_eq!(
        after_returning - after_new,
        2,
        "the SetupIntent, the subscription"
    );
    assert_eq!(created["data"]["customer_id"], body["customer_id"]);
    assert_eq!(created["data"]["status"], "active");
    assert_eq!(created["data"]["pay_method"], "card");
    assert_eq!(
        again.body["customer_id"], body["customer_id"],
        "one person, one customer"
    );
    let result = stack.result_query(&first).await;
    assert_eq!(result.body["status"], "active");
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim().stats().await)[&first],
        1
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_repeat_answers_the_same_setup_intent_and_another_email_is_a_conflict() {
    let stack = start().await;
    let pay_id = fresh_pay_id();
    let email = fresh_email();

    let first = stack.authorize(&pay_id, &email).await;
    let calls = stack.our_calls().await;
    let repeat = stack.authorize(&pay_id, &email).await;
    let calls_after_repeat = stack.our_calls().await;
    let other = stack.authorize(&pay_id, &fresh_email()).await;

    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(repeat.status, 200, "{:?}", repeat.body);
    assert_eq!(
        repeat.body["setup_intent_id"],
        first.body["setup_intent_id"]
    );
    assert_eq!(repeat.body["client_secret"], first.body["client_secret"]);
    assert_eq!(calls_after_repeat, calls, "a repeat asks Stripe nothing");
    assert_eq!(other.status, 409, "{:?}", other.body);
    assert_eq!(other.code(), "PAY_ID_CONFLICT");
    assert_eq!(other.field(), "payId");
    stack.teardown().await;
}

#[tokio::test]
async fn a_method_not_on_the_authorized_customer_is_attached_and_makes_one_subscription() {
    let mut stack = start().await;
    stack.spawn_worker().await;
    let pay_id = fresh_pay_id();
    let email = fresh_email();
    let authorized = stack.authorize(&pay_id, &email).await;
    assert_eq!(authorized.status, 200, "{:?}", authorized.body);

    // The app never confirmed: the request carries a card that is on no customer.
    let (_, created) = stack
        .subscribed(|r| {
            r["payId"] = json!(pay_id);
            r["email"] = json!(email);
            r["pm_id"] = json!("pm_card_visa");
        })
        .await;

    assert_eq!(created["data"]["status"], "active");
    assert_eq!(
        created["data"]["customer_id"],
        authorized.body["customer_id"]
    );
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim().stats().await)[&pay_id],
        1
    );
    stack.teardown().await;
}

#[tokio::test]
async fn an_unreachable_stripe_answers_503_quickly_and_readiness_stays_green() {
    let closed = crate::helpers::private::free_port();
    let stack = TestStack::deployment()
        .settings(|settings| {
            settings.stripe.api_base = format!("http://127.0.0.1:{closed}");
        })
        .start()
        .await;

    let started = Instant::now();
    let answer = stack.authorize(&fresh_pay_id(), &fresh_email()).await;
    let took = started.elapsed();
    let ready = stack.intake().get("/readyz").await;

    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.code(), "STRIPE_UNAVAILABLE");
    assert_eq!(answer.body["operateCode"], "F");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(ready.status(), 200);
    stack.teardown().await;
}

#[tokio::test]
async fn a_stripe_slower_than_max_wait_answers_503_at_max_wait() {
    let stack = TestStack::deployment()
        .settings(|settings| {
            settings.intake.max_wait_secs = 1;
        })
        .start()
        .await;
    stack
        .sim()
        .configure(json!({"latency_p50_ms": 5_000, "latency_p99_ms": 5_000}))
        .await;

    let started = Instant::now();
    let answer = stack.authorize(&fresh_pay_id(), &fresh_email()).await;
    let took = started.elapsed();
    let ready = stack.intake().get("/readyz").await;

    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.code(), "STRIPE_UNAVAILABLE");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2_500),
        "took {took:?}"
    );
    assert_eq!(ready.status(), 200);
    stack.teardown().await;
}

#[tokio::test]
async fn bad_fields_get_the_codes_every_route_gives() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let valid = || authorization(&fresh_pay_id(), &fresh_email());
    let changed = |field: &str, value: Value| {
        let mut body = valid();
        body[field] = value;
        body
    };
    let cases = [
        (changed("email", Value::Null), 400, "PARAM_MISSING", "email"),
        (
            changed("email", json!("not-an-email")),
            400,
            "PARAM_INVALID",
            "email",
        ),
        (
            changed("payId", json!("a b")),
            400,
            "PARAM_INVALID",
            "payId",
        ),
        (
            changed("tradeType", json!("stripeSubDirectly")),
            400,
            "PARAM_INVALID",
            "tradeType",
        ),
        (
            changed("version", json!("2.0")),
            400,
            "PARAM_INVALID",
            "version",
        ),
        (
            changed("partnerCode", json!("NOBODY")),
            401,
            "PARTNER_UNKNOWN",
            "partnerCode",
        ),
    ];

    for (body, status, code, field) in cases {
        let answer = app
            .post_signed("/stripeSubAuthorization", body, crate::helpers::SECRET)
            .await;
        assert_eq!(
            (answer.status, answer.code(), answer.field()),
            (status, code, field),
            "{:?}",
            answer.body
        );
    }
    let unsigned = app
        .post_signed("/stripeSubAuthorization", valid(), "another secret")
        .await;
    assert_eq!((unsigned.status, unsigned.code()), (401, "SIGN_INVALID"));
    stack.teardown().await;
}
