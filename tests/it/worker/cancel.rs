//! A partner's cancel (docs/partners.md#post-cancelautorenewalrecord), carried out by the worker: Stripe told, the state
//! stored, the change announced.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;

use crate::helpers::TestStack;

fn cancel(pay_id: &str, when: &str) -> serde_json::Value {
    json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
           "tradeType": "cancelAutoRenewalRecord", "version": "3.0", "when": when})
}

fn query(pay_id: &str) -> serde_json::Value {
    json!({"partnerCode": crate::helpers::PARTNER, "payId": pay_id,
           "tradeType": "queryAutoRenewalRecord", "version": "3.0"})
}

const UPDATED: &str = "autorenew.subscription.updated";
const CANCELED: &str = "autorenew.subscription.canceled";

#[tokio::test]
async fn a_cancel_at_period_end_then_now_is_carried_out_stored_and_announced() {
    let stack = TestStack::deployment().workers(1).start().await;
    let pay_id = stack.send(|_| {}).await;
    assert!(
        stack
            .wait_for_events(std::slice::from_ref(&pay_id), Duration::from_secs(20))
            .await
    );

    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "period_end"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["operateCode"], "S");
    let updated = stack
        .wait_for_event(&pay_id, UPDATED, Duration::from_secs(20))
        .await
        .expect("a subscription.updated event");
    let period_end = time::OffsetDateTime::parse(
        updated["data"]["current_period_end"]
            .as_str()
            .unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("an RFC 3339 period end")
    .unix_timestamp();
    assert_eq!(
        updated["id"],
        format!(
            "{}:updated:active:true:{period_end}",
            updated["data"]["sub_id"].as_str().unwrap_or_default()
        ),
        "the change's own id: the subscription, its status and flag, in this period"
    );
    assert_eq!(updated["_routing_key"], "subscription.updated.P000818");
    assert_eq!(updated["data"]["cancel_at_period_end"], true);
    assert_eq!(updated["data"]["status"], "active");
    assert!(
        updated["data"]["current_period_end"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    assert_eq!(state.body["cancel_at_period_end"], true, "{:?}", state.body);

    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "now"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let canceled = stack
        .wait_for_event(&pay_id, CANCELED, Duration::from_secs(20))
        .await
        .expect("a subscription.canceled event");
    assert_eq!(canceled["_routing_key"], "subscription.canceled.P000818");
    assert_eq!(canceled["data"]["status"], "canceled");
    assert_eq!(
        canceled["data"]["cancellation_reason"],
        "cancellation_requested"
    );
    let state = stack
        .post_signed("/queryAutoRenewalRecord", query(&pay_id))
        .await;
    assert_eq!(state.body["status"], "canceled", "{:?}", state.body);
    let result = stack.result_query(&pay_id).await;
    assert_eq!(
        (
            result.body["operateCode"].as_str(),
            result.body["status"].as_str()
        ),
        (Some("S"), Some("canceled")),
        "/resultQuery answers the current status too: {:?}",
        result.body
    );
    assert_eq!(result.body["sub_id"], state.body["sub_id"]);
    let again = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "now"))
        .await;
    assert_eq!(
        again.body["operateCode"], "S",
        "a repeat answers like the first time"
    );
    stack.teardown().await;
}

#[tokio::test]
async fn a_cancel_sent_while_the_creation_is_processing_runs_after_it() {
    let mut stack = TestStack::deployment().start().await;
    // No worker yet: the creation is still processing when the cancel comes.
    let pay_id = stack.send(|_| {}).await;
    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "period_end"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "processing");

    stack.spawn_worker().await;

    let updated = stack
        .wait_for_event(&pay_id, UPDATED, Duration::from_secs(30))
        .await
        .expect("the cancel ran once the creation ended");
    let events = stack.events_by_pay_id();
    assert!(
        events[&pay_id]
            .iter()
            .any(|e| e["type"] == "autorenew.subscription.succeeded"),
        "the creation ended first"
    );
    assert_eq!(updated["data"]["cancel_at_period_end"], true);
    stack.teardown().await;
}

/// The expiry (ms; -1 none, -2 gone) of each of a payId's keys, by family.
async fn expiries(stack: &TestStack, pay_id: &str) -> Vec<(&'static str, i64)> {
    let client = redis::Client::open(crate::helpers::SHARED_REDIS).expect("redis");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let prefix = &stack.settings.redis.key_prefix;
    let mut found = Vec::new();
    for family in ["intake", "result", "created", "renewal"] {
        let key = format!("{prefix}:{family}:{{{}:{pay_id}}}", crate::helpers::PARTNER);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .expect("PTTL");
        found.push((family, pttl));
    }
    found
}

#[tokio::test]
async fn a_live_subscription_is_kept_past_the_retention_and_only_its_end_starts_the_clock() {
    // A retention of 2 s stands in for 30 days.
    let stack = TestStack::deployment()
        .settings(|s| s.redis.record_ttl_secs = 2)
        .workers(1)
        .start()
        .await;
    let (pay_id, _) = stack.subscribed(|_| {}).await;

    // Live: nothing of it expires, however long it runs between two events.
    let live = expiries(&stack, &pay_id).await;
    for (family, pttl) in &live[..3] {
        assert_eq!(
            *pttl, -1,
            "{family} expires while the subscription lives: {live:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let answer = stack.result_query(&pay_id).await;
    assert_eq!(
        answer.body["status"], "active",
        "past the retention: {:?}",
        answer.body
    );
    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "now"))
        .await;
    assert_eq!(answer.status, 200, "still cancelable: {:?}", answer.body);
    stack
        .wait_for_event(&pay_id, CANCELED, Duration::from_secs(20))
        .await
        .expect("a subscription.canceled event");

    // Ended: kept for the retention, then forgotten.
    let ended = expiries(&stack, &pay_id).await;
    for (family, pttl) in &ended {
        assert!(
            (1..=2_000).contains(pttl),
            "{family} should expire within the retention once canceled: {ended:?}"
        );
    }
    assert!(
        crate::helpers::poll_until(Duration::from_secs(10), || async {
            stack.result_query(&pay_id).await.status == 404
        })
        .await,
        "forgotten after the retention"
    );
    stack.teardown().await;
}

/// One change, one id: the worker announces the cancel it made, Stripe's webhook announces the
/// same change again, and a subscriber that de-duplicates on `id` keeps one.
#[tokio::test]
async fn a_cancel_and_stripe_s_event_about_it_are_announced_under_one_id() {
    let stack = TestStack::deployment().webhooks().workers(1).start().await;
    let (pay_id, _) = stack.subscribed(|_| {}).await;

    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "period_end"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    let updates = || -> Vec<serde_json::Value> {
        stack
            .events_by_pay_id()
            .remove(&pay_id)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["type"] == UPDATED)
            .collect()
    };
    let both =
        crate::helpers::poll_until(Duration::from_secs(20), || async { updates().len() >= 2 })
            .await;
    let updates = updates();
    assert!(
        both,
        "the worker's and the webhook's announcements: {updates:?}"
    );
    let ids: std::collections::BTreeSet<_> = updates.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "one change, one id: {ids:?}");
    stack.teardown().await;
}

/// Redis is a cache of Stripe: a cancel taken for a payId whose records Redis then lost still
/// reaches Stripe, found by the payId and partner in the subscription's metadata.
#[tokio::test]
async fn a_cancel_whose_pay_id_redis_lost_still_reaches_stripe() {
    let mut stack = TestStack::deployment().workers(1).start().await;
    let (pay_id, created) = stack.subscribed(|_| {}).await;
    stack.stop_workers().await;
    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(&pay_id, "now"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);

    // Everything of this deployment in Redis is lost (as FLUSHALL would on its own Redis).
    crate::helpers::delete_keys(
        crate::helpers::SHARED_REDIS,
        &stack.settings.redis.key_prefix,
    )
    .await;
    stack.spawn_worker().await;

    let canceled = stack
        .wait_for_event(&pay_id, CANCELED, Duration::from_secs(20))
        .await
        .expect("the cancel reached Stripe");
    assert_eq!(canceled["data"]["sub_id"], created["data"]["sub_id"]);
    let sub_id = created["data"]["sub_id"].as_str().unwrap_or_default();
    let at_stripe: serde_json::Value = stack
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
    assert_eq!(at_stripe["status"], "canceled");
    let result = stack.result_query(&pay_id).await;
    assert_eq!(
        result.body["status"], "canceled",
        "the records are rebuilt: {:?}",
        result.body
    );
    stack.teardown().await;
}

/// Redis is a cache of Stripe: after every key of the deployment is lost, with live
/// subscriptions, each query still answers right, each cancel reaches Stripe, and the job sent
/// again makes no second subscription.
#[tokio::test]
async fn after_redis_lost_everything_queries_cancels_and_repeats_still_answer_from_stripe() {
    let stack = TestStack::deployment().workers(1).start().await;
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(stack.subscribed(|_| {}).await);
    }

    // Everything of this deployment in Redis is lost (as FLUSHALL would on its own Redis).
    crate::helpers::delete_keys(
        crate::helpers::SHARED_REDIS,
        &stack.settings.redis.key_prefix,
    )
    .await;

    for (pay_id, created) in &live {
        let answer = stack.result_query(pay_id).await;
        assert_eq!(answer.status, 200, "{pay_id}: {:?}", answer.body);
        assert_eq!(answer.body["status"], "active");
        assert_eq!(answer.body["sub_id"], created["data"]["sub_id"]);
    }
    let (first, _) = &live[0];
    let answer = stack
        .post_signed("/cancelAutoRenewalRecord", cancel(first, "now"))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    stack
        .wait_for_event(first, CANCELED, Duration::from_secs(20))
        .await
        .expect("the cancel reached Stripe");
    // The partner sends the second one again: the intake took its record for lost and makes a
    // job, and the job makes no second subscription.
    let (second, created) = &live[1];
    let again = stack.send(|r| r["payId"] = serde_json::json!(second)).await;
    assert_eq!(&again, second);
    let settled = crate::helpers::poll_until(Duration::from_secs(20), || async {
        stack.events_by_pay_id()[second].len() >= 2
    })
    .await;
    assert!(settled, "the repeat's job ended and announced");
    assert_eq!(
        stack.result_query(second).await.body["sub_id"],
        created["data"]["sub_id"]
    );
    assert_eq!(
        crate::helpers::sim::subscriptions_by_pay_id(&stack.sim().stats().await)[second],
        1,
        "the repeat made no second subscription"
    );
    // A never-sent payId is still unknown: Stripe has nothing for it either.
    let never = stack.result_query("NEVER-SENT-AFTER-LOSS").await;
    assert_eq!(never.status, 404, "{:?}", never.body);
    assert_eq!(
        crate::helpers::sim::subscriptions_by_pay_id(&stack.sim().stats().await)[first],
        1,
        "still one subscription"
    );
    stack.teardown().await;
}
