//! Test cards and declines: at attach (Stripe checks the card), at the first invoice (by
//! `payment_behavior`), and payment methods that are missing or belong to someone else.

use serde_json::json;

use crate::helpers::TestStack;

#[tokio::test]
async fn each_decline_test_card_fails_its_attach_with_stripe_s_codes() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let customer = sim.post("/v1/customers", "email=a@b.c", None).await.body["id"].clone();
    let customer = customer.as_str().expect("id");
    let cases = [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "card_declined",
            "insufficient_funds",
        ),
        (
            "pm_card_visa_chargeDeclinedLostCard",
            "card_declined",
            "lost_card",
        ),
        (
            "pm_card_chargeDeclinedExpiredCard",
            "expired_card",
            "expired_card",
        ),
        (
            "pm_card_chargeDeclinedIncorrectCvc",
            "incorrect_cvc",
            "incorrect_cvc",
        ),
        (
            "pm_card_chargeDeclinedProcessingError",
            "processing_error",
            "processing_error",
        ),
    ];

    for (card, code, decline_code) in cases {
        let answer = sim
            .post(
                &format!("/v1/payment_methods/{card}/attach"),
                &format!("customer={customer}"),
                None,
            )
            .await;

        assert_eq!(answer.status, 402, "{card}");
        assert_eq!(answer.error_field("type"), Some("card_error"), "{card}");
        assert_eq!(answer.error_field("code"), Some(code), "{card}");
        assert_eq!(
            answer.error_field("decline_code"),
            Some(decline_code),
            "{card}"
        );
    }
    let attached = sim
        .get(&format!("/v1/customers/{customer}/payment_methods"))
        .await;
    assert_eq!(attached.body["data"], json!([]));
}

#[tokio::test]
async fn a_card_that_fails_only_on_charge_follows_the_payment_behavior() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (customer, _) = sim
        .customer_with_card("a@b.c", "pm_card_chargeCustomerFail")
        .await;
    let price = sim.price(1000, None).await;
    let form = |behaviour: &str, pay_id: &str| {
        format!(
            "customer={customer}&items[0][price]={price}&payment_behavior={behaviour}&metadata[payId]={pay_id}&expand[]=latest_invoice"
        )
    };

    let refused = sim
        .post(
            "/v1/subscriptions",
            &form("error_if_incomplete", "P1"),
            None,
        )
        .await;
    let incomplete = sim
        .post("/v1/subscriptions", &form("allow_incomplete", "P2"), None)
        .await;
    let uncharged = sim
        .post("/v1/subscriptions", &form("default_incomplete", "P3"), None)
        .await;

    assert_eq!(refused.status, 402);
    assert_eq!(refused.error_field("decline_code"), Some("generic_decline"));
    assert_eq!(incomplete.status, 200);
    assert_eq!(incomplete.body["status"], "incomplete");
    assert_eq!(incomplete.body["latest_invoice"]["status"], "open");
    assert_eq!(incomplete.body["latest_invoice"]["attempted"], true);
    assert_eq!(uncharged.body["status"], "incomplete");
    assert_eq!(uncharged.body["latest_invoice"]["attempted"], false);
    assert_eq!(
        sim.stats().await["subscriptions_by_pay_id"],
        json!({"P2": 1, "P3": 1})
    );
}

#[tokio::test]
async fn a_good_card_makes_an_active_subscription_with_a_paid_invoice() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (customer, pm) = sim.customer_with_card("a@b.c", "pm_card_visa").await;
    let price = sim.price(1999, None).await;

    let answer = sim
        .post(
            "/v1/subscriptions",
            &format!("customer={customer}&items[0][price]={price}&default_payment_method={pm}&off_session=true&expand[0]=latest_invoice"),
            None,
        )
        .await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["status"], "active");
    assert_eq!(answer.body["default_payment_method"], pm.as_str());
    assert_eq!(answer.body["latest_invoice"]["status"], "paid");
    assert_eq!(answer.body["latest_invoice"]["amount_paid"], 1999);
}

#[tokio::test]
async fn a_subscription_without_any_payment_method_is_refused_or_incomplete() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let customer = sim.post("/v1/customers", "email=a@b.c", None).await.body["id"].clone();
    let customer = customer.as_str().expect("id");
    let price = sim.price(100, None).await;

    let refused = sim
        .post(
            "/v1/subscriptions",
            &format!(
                "customer={customer}&items[0][price]={price}&payment_behavior=error_if_incomplete"
            ),
            None,
        )
        .await;
    let incomplete = sim
        .post(
            "/v1/subscriptions",
            &format!("customer={customer}&items[0][price]={price}"),
            None,
        )
        .await;

    assert_eq!(refused.status, 400);
    assert_eq!(incomplete.body["status"], "incomplete");
}

#[tokio::test]
async fn a_partner_payment_method_attached_to_one_customer_cannot_go_to_another() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let first = sim.post("/v1/customers", "email=a@b.c", None).await.body["id"].clone();
    let second = sim.post("/v1/customers", "email=b@b.c", None).await.body["id"].clone();
    let path = "/v1/payment_methods/pm_1GnMUDLnVNBddzslXw7xuoe6/attach";

    let attached = sim
        .post(
            path,
            &format!("customer={}", first.as_str().expect("id")),
            None,
        )
        .await;
    let again = sim
        .post(
            path,
            &format!("customer={}", first.as_str().expect("id")),
            None,
        )
        .await;
    let stolen = sim
        .post(
            path,
            &format!("customer={}", second.as_str().expect("id")),
            None,
        )
        .await;

    assert_eq!(attached.status, 200);
    assert_eq!(
        attached.body["id"], "pm_1GnMUDLnVNBddzslXw7xuoe6",
        "a partner's id is kept"
    );
    assert_eq!(
        again.status, 200,
        "attaching to the same customer again is a no-op"
    );
    assert_eq!(stolen.status, 400);
    assert_eq!(stolen.error_field("type"), Some("invalid_request_error"));
    assert!(
        stolen
            .error_field("message")
            .is_some_and(|m| m.contains("already been attached"))
    );
}

#[tokio::test]
async fn a_payment_method_attached_elsewhere_cannot_pay_a_subscription_it_is_400_resource_missing()
{
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (_, pm) = sim.customer_with_card("a@b.c", "pm_card_visa").await;
    let other = sim.post("/v1/customers", "email=b@b.c", None).await.body["id"].clone();
    let price = sim.price(100, None).await;

    let answer = sim
        .post(
            "/v1/subscriptions",
            &format!(
                "customer={}&items[0][price]={price}&default_payment_method={pm}",
                other.as_str().expect("id")
            ),
            None,
        )
        .await;

    assert_eq!(answer.status, 400);
    assert_eq!(answer.error_field("type"), Some("invalid_request_error"));
    assert_eq!(answer.error_field("code"), Some("resource_missing"));
    assert_eq!(answer.error_field("param"), Some("default_payment_method"));
    assert_eq!(sim.stats().await["objects"]["subscriptions"], 0);
}

#[tokio::test]
async fn each_use_of_a_test_id_mints_a_separate_payment_method() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let (_, first) = sim.customer_with_card("a@b.c", "pm_card_visa").await;
    let (_, second) = sim.customer_with_card("b@b.c", "pm_card_visa").await;

    assert_ne!(first, second);
    assert!(first.starts_with("pm_") && first != "pm_card_visa");
}

#[tokio::test]
async fn malformed_or_unknown_payment_methods_are_404_resource_missing() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let malformed = sim.get("/v1/payment_methods/card_123").await;
    let good_by_default = sim.get("/v1/payment_methods/pm_1Unseen").await;
    sim.configure(json!({"unknown_payment_methods": "missing"}))
        .await;
    let missing = sim.get("/v1/payment_methods/pm_1AlsoUnseen").await;

    assert_eq!(malformed.status, 404);
    assert_eq!(malformed.error_field("code"), Some("resource_missing"));
    assert_eq!(good_by_default.status, 200);
    assert_eq!(good_by_default.body["card"]["brand"], "visa");
    assert_eq!(missing.status, 404);
}
