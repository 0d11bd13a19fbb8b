//! A partner's request becomes a subscription, an event and an answer.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestStack;
use crate::helpers::sim::subscriptions_by_pay_id;

#[tokio::test]
async fn a_request_becomes_an_active_subscription_an_event_and_an_answer() {
    let stack = TestStack::deployment().workers(1).start().await;

    let pay_id = stack.send(|r| r["pm_id"] = json!("pm_card_visa")).await;

    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(20))
            .await
    );
    let events = stack.events_by_pay_id();
    let event = &events[&pay_id][0];
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "autorenew.subscription.succeeded");
    assert_eq!(event["subject"], pay_id.as_str());
    assert_eq!(event["id"], format!("P000818:{pay_id}:succeeded"));
    assert!(event["source"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(event["time"].as_str().is_some_and(|t| t.contains('T')));
    assert_eq!(event["_routing_key"], "subscription.succeeded.P000818");
    assert_eq!(event["_content_type"], "application/cloudevents+json");
    let data = &event["data"];
    assert_eq!(data["payId"], pay_id.as_str());
    assert_eq!(data["partnerCode"], "P000818");
    assert_eq!(data["email"], "421516116@qq.com");
    assert_eq!(data["plan_id"], "PLAN_MONTHLY_1GB");
    assert_eq!(data["payAmount"], "19.99");
    assert_eq!(data["payCurrency"], "usd");
    assert_eq!(data["status"], "active");
    assert_eq!(data["pay_method"], "card");
    assert_eq!(data["attempts"], 1);
    assert!(data["error"].is_null());
    for field in [
        "customer_id",
        "sub_id",
        "product_id",
        "accepted_at",
        "completed_at",
    ] {
        assert!(
            data[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}"
        );
    }

    let answer = stack.result_query(&pay_id).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["operateCode"], "S");
    assert_eq!(answer.body["status"], "active");
    assert_eq!(answer.body["sub_id"], data["sub_id"]);
    assert_eq!(answer.body["customer_id"], data["customer_id"]);
    assert_eq!(answer.body["pay_method"], "card");
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim().stats().await)[&pay_id],
        1
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_declined_card_ends_failed_with_the_decline_code_and_a_failed_event() {
    let stack = TestStack::deployment().workers(1).start().await;

    let pay_id = stack
        .send(|r| r["pm_id"] = json!("pm_card_chargeDeclinedInsufficientFunds"))
        .await;

    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(20))
            .await
    );
    let event = stack.events_by_pay_id()[&pay_id][0].clone();
    assert_eq!(event["type"], "autorenew.subscription.failed");
    assert_eq!(event["_routing_key"], "subscription.failed.P000818");
    assert_eq!(event["data"]["status"], "failed");
    assert_eq!(event["data"]["error"]["code"], "CARD_DECLINED");
    assert_eq!(event["data"]["error"]["decline_code"], "insufficient_funds");
    let answer = stack.result_query(&pay_id).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["operateCode"], "F");
    assert_eq!(answer.body["status"], "failed");
    assert_eq!(answer.code(), "CARD_DECLINED");
    assert_eq!(answer.body["error"]["decline_code"], "insufficient_funds");
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim().stats().await).get(&pay_id),
        None
    );
    stack.teardown().await;
}

#[tokio::test]
async fn prefer_wait_answers_with_the_final_result() {
    let stack = TestStack::deployment().workers(1).start().await;
    let request = crate::helpers::signed(crate::helpers::valid_request(), crate::helpers::SECRET);

    let response = stack
        .intake()
        .client
        .post(format!("{}/stripeSubDirectly", stack.intake().address))
        .header("prefer", "wait=10")
        .json(&request)
        .send()
        .await
        .expect("POST");
    let applied = response.headers().get("preference-applied").cloned();
    let answer = crate::helpers::Answer::from(response).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["status"], "active", "{:?}", answer.body);
    assert!(
        answer.body["sub_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("sub_"))
    );
    assert_eq!(
        applied.as_ref().and_then(|v| v.to_str().ok()),
        Some("wait=10")
    );
    stack.teardown().await;
}

#[tokio::test]
async fn the_same_request_twice_makes_one_subscription() {
    let stack = TestStack::deployment().workers(1).start().await;
    let request = crate::helpers::valid_request();
    let pay_id = request["payId"].as_str().expect("payId").to_owned();

    let first = stack.intake().subscribe(request.clone()).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(20))
            .await
    );
    let second = stack.intake().subscribe(request).await;

    assert_eq!(first.body["status"], "processing");
    assert_eq!(
        second.body["status"], "active",
        "the retry sees the final result"
    );
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim().stats().await)[&pay_id],
        1
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_new_customer_costs_three_stripe_calls_and_a_returning_one_three() {
    let stack = TestStack::deployment().workers(1).start().await;
    let email = json!(format!(
        "returning-{}@example.com",
        uuid::Uuid::new_v4().simple()
    ));

    // A first job makes the plan's price too: count from the second new customer on.
    let warm = stack.send(|r| r["pm_id"] = json!("pm_card_visa")).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&warm), Duration::from_secs(20))
            .await
    );
    let calls = |stats: &serde_json::Value| stats["requests_total"].as_u64().unwrap_or(0);
    let before_new = calls(&stack.sim().stats().await);
    let first = stack.send(|r| r["email"] = email.clone()).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&first), Duration::from_secs(20))
            .await
    );
    let before_returning = calls(&stack.sim().stats().await);
    let second = stack.send(|r| r["email"] = email.clone()).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&second), Duration::from_secs(20))
            .await
    );
    let after = calls(&stack.sim().stats().await);

    assert_eq!(
        before_returning - before_new,
        3,
        "list, create with the method, subscribe"
    );
    // The customer is remembered, so the job lists the person's customers once for a failure's
    // mark of its payId (a failover may have taken an `F` back; docs/design.md, "Partial loss of
    // Redis") before it attaches.
    assert_eq!(
        after - before_returning,
        3,
        "the marks read, attach, subscribe"
    );
    let events = stack.events_by_pay_id();
    let customer = |pay_id: &str| events[pay_id][0]["data"]["customer_id"].clone();
    assert_eq!(
        customer(&first),
        customer(&second),
        "one person, one customer"
    );
    assert_eq!(events[&second][0]["data"]["pay_method"], "card");
    stack.teardown().await;
}

#[tokio::test]
async fn two_partners_with_one_payid_get_two_subscriptions_and_never_see_each_other() {
    use crate::helpers::{OTHER_PARTNER, OTHER_SECRET, PARTNER};
    let stack = TestStack::deployment().workers(1).start().await;

    // Both partners number their orders: the same payId, other people.
    let (pay_id, ours) = stack.subscribed(|_| {}).await;
    let mut theirs = crate::helpers::valid_request();
    theirs["partnerCode"] = json!(OTHER_PARTNER);
    theirs["payId"] = json!(pay_id);
    theirs["email"] = json!("someone.else@example.com");
    theirs["pm_id"] = json!("pm_card_visa");
    let accepted = stack
        .intake()
        .post_signed("/stripeSubDirectly", theirs, OTHER_SECRET)
        .await;
    assert_eq!(accepted.status, 200, "not a conflict: {:?}", accepted.body);
    assert_eq!(accepted.body["status"], "processing", "{:?}", accepted.body);

    let their_event = || {
        stack
            .events_by_pay_id()
            .remove(&pay_id)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e["data"]["partnerCode"] == OTHER_PARTNER)
    };
    assert!(
        crate::helpers::poll_until(Duration::from_secs(20), || async {
            their_event().is_some()
        })
        .await,
        "the other partner's subscription is announced"
    );
    let their_event = their_event().expect("announced");
    assert_eq!(their_event["data"]["status"], "active");
    assert_ne!(their_event["data"]["sub_id"], ours["data"]["sub_id"]);
    assert_ne!(their_event["id"], ours["id"], "two events, two ids");
    assert_eq!(
        their_event["_routing_key"],
        format!("subscription.succeeded.{OTHER_PARTNER}")
    );

    // Each partner's query answers its own subscription, never the other's.
    let query = |partner: &str| json!({"partnerCode": partner, "payId": pay_id, "tradeType": "resultQuery", "version": "3.0"});
    let mine = stack
        .intake()
        .post_signed("/resultQuery", query(PARTNER), crate::helpers::SECRET)
        .await;
    let other = stack
        .intake()
        .post_signed("/resultQuery", query(OTHER_PARTNER), OTHER_SECRET)
        .await;
    assert_eq!(mine.body["sub_id"], ours["data"]["sub_id"]);
    assert_eq!(other.body["sub_id"], their_event["data"]["sub_id"]);
    assert_eq!(
        subscriptions_by_pay_id(&stack.sim().stats().await)[&pay_id],
        2,
        "one subscription for each partner"
    );
    stack.teardown().await;
}
