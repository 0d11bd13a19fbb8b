//! The in-memory adapters against their real twins, for the rules they claim (STYLE.md "Ports
//! and adapters"): the same calls give the same answers from `MemoryStore` and the Redis
//! `Store`, and from `MemoryStripe` and `autorenew stripe-sim` through the real gateway.

use std::sync::Arc;
use std::time::Duration;

use autorenew::budget::TurnSource;
use autorenew::config::RedisSettings;
use autorenew::domain::renewal::{RenewalChange, RenewalUpdate};
use autorenew::domain::{
    FailureCode, FailureDetail, FinalResult, PartnerCode, PayId, PayKey, failure_mark,
};
use autorenew::store::{BudgetWaiter, Store, Turn};
use autorenew::stripe::{
    ClientOptions, CustomerMark, Gateway, NewCustomer, StripeFailure, Unlimited,
};
use autorenew::worker::memory::{MemoryStore, MemoryStripe, StripeFault, Trace};
use autorenew::worker::ports::{CreateSent, JobStore, StripeApi};
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::sim::KEY;
use crate::helpers::{SHARED_REDIS, TestStack, delete_keys};

fn result(sub: &str) -> FinalResult {
    FinalResult {
        status: "active".into(),
        customer_id: "cus_1".into(),
        sub_id: sub.into(),
        product_id: "prod_1".into(),
        pay_method: "card".into(),
        error: None,
        attempts: 1,
        accepted_at: "2027-01-15T08:00:00Z".into(),
        completed_at: "2027-01-15T08:00:01Z".into(),
    }
}

/// A store on the shared Redis under a prefix of its own (delete its keys when done).
fn redis_store() -> (Store, String) {
    let prefix = format!("twin-{}", uuid::Uuid::new_v4().simple());
    let store = Store::new(&RedisSettings {
        url: SecretString::from(SHARED_REDIS),
        key_prefix: prefix.clone(),
        ..RedisSettings::default()
    })
    .expect("a store");
    (store, prefix)
}

/// What a store answers to the job path's calls, in order, in words.
async fn store_rules(store: &dyn JobStore) -> Vec<String> {
    let ttl = Duration::from_secs(30);
    let partner = PartnerCode::parse("P1").expect("a partner code");
    let pay_id = PayKey::new(partner.clone(), PayId::parse("twin-1").expect("a payId"));
    let short = PayKey::new(partner.clone(), PayId::parse("twin-2").expect("a payId"));
    let life = PayKey::new(partner.clone(), PayId::parse("twin-3").expect("a payId"));
    let sent = CreateSent {
        generation: 1,
        sent_at_ms: 1_800_000_000_000,
        customer: "cus_1".into(),
        pay_method: "card".into(),
        scoped: true,
        payment_method: "pm_1".into(),
    };
    let mut said = Vec::new();
    let mut say = |what: String| said.push(what);
    say(format!("{:?}", store.begin(&pay_id, "a", ttl).await));
    say(format!("{:?}", store.begin(&pay_id, "b", ttl).await));
    say(format!("{:?}", store.extend_lock(&pay_id, "b", ttl).await));
    say(format!("{:?}", store.extend_lock(&pay_id, "a", ttl).await));
    say(format!(
        "{:?}",
        store.record_create(&pay_id, "a", &sent).await
    ));
    say(format!(
        "{:?}",
        store.record_create(&pay_id, "b", &sent).await
    ));
    say(format!("{:?}", store.created(&pay_id).await));
    say(format!("{:?}", store.unlock(&pay_id, "b").await));
    say(format!("{:?}", store.begin(&pay_id, "c", ttl).await));
    say(format!("{:?}", store.unlock(&pay_id, "a").await));
    say(format!("{:?}", store.begin(&pay_id, "c", ttl).await));
    say(format!(
        "{:?}",
        store.finish(&pay_id, "c", &result("sub_1")).await
    ));
    say(format!("{:?}", store.begin(&pay_id, "d", ttl).await));
    say(format!(
        "{:?}",
        store.finish(&pay_id, "d", &result("sub_2")).await
    ));
    // A lock whose holder stops extending it is gone after its TTL.
    let brief = Duration::from_millis(200);
    say(format!("{:?}", store.begin(&short, "e", brief).await));
    say(format!("{:?}", store.begin(&short, "f", brief).await));
    tokio::time::sleep(Duration::from_millis(400)).await;
    say(format!("{:?}", store.extend_lock(&short, "e", brief).await));
    say(format!("{:?}", store.begin(&short, "f", brief).await));
    // A failure is stored only by the lock's holder.
    let mut failed = result("");
    failed.status = "failed".into();
    say(format!("{:?}", store.finish(&short, "e", &failed).await));
    say(format!("{:?}", store.begin(&short, "g", brief).await));
    // A cancel's lock is taken whatever is stored, once.
    say(format!("{:?}", store.lock(&pay_id, "h", ttl).await));
    say(format!("{:?}", store.lock(&pay_id, "i", ttl).await));
    say(format!("{:?}", store.result(&pay_id).await));
    // The renewal state never goes back; an invoice is counted once.
    let state = |status: &str, version: u64| RenewalUpdate {
        partner_code: partner.clone(),
        version,
        change: RenewalChange::Subscription {
            sub_id: "sub_9".into(),
            status: status.into(),
            current_period_end: Some(1_800_000_000),
            cancel_at_period_end: false,
            canceled_at: None,
        },
    };
    let renewed = RenewalUpdate {
        partner_code: partner.clone(),
        version: 5,
        change: RenewalChange::Renewed {
            invoice_id: "in_1".into(),
            paid_at: 1_800_000_000,
        },
    };
    say(format!(
        "{:?}",
        store.apply_renewal(&life, &state("canceled", 2)).await
    ));
    say(format!(
        "{:?}",
        store.apply_renewal(&life, &state("active", 1)).await
    ));
    say(format!("{:?}", store.apply_renewal(&life, &renewed).await));
    say(format!("{:?}", store.apply_renewal(&life, &renewed).await));
    said
}

#[tokio::test]
async fn the_memory_store_answers_the_job_path_like_redis() {
    let (redis, prefix) = redis_store();

    let real = store_rules(&redis).await;
    let memory = store_rules(&MemoryStore::new(
        1,
        Duration::from_millis(1),
        Trace::default(),
    ))
    .await;
    delete_keys(SHARED_REDIS, &prefix).await;

    assert_eq!(memory, real);
    assert!(real[1].contains("Busy"), "{real:?}");
    assert_eq!(real[4], "Ok(true)", "the holder records a create");
    assert_eq!(real[5], "Ok(false)", "another token does not");
    assert!(real[12].contains("Settled"), "{real:?}");
    assert!(
        real[13].contains("sub_1"),
        "the first result wins: {real:?}"
    );
    assert!(real[17].contains("Locked"), "the lock expired: {real:?}");
    assert_eq!(
        real[18], "Ok(None)",
        "a failure without the lock is not stored"
    );
    assert!(real[19].contains("Busy"), "{real:?}");
    assert_eq!(real[20], "Ok(true)", "a cancel locks a finished payId");
    assert_eq!(real[21], "Ok(false)", "once");
    assert!(real[22].contains("sub_1"), "{real:?}");
    assert!(
        real[24].contains("newer: false"),
        "older state after newer: {real:?}"
    );
    assert!(
        real[26].contains("counted: false"),
        "an invoice twice: {real:?}"
    );
}

/// What the budget's turn script answers to a run of asks at one moment, in words: which
/// waiter is granted, or that the caller must wait (its length depends on the clock, so only
/// whether it is within the interval is said).
async fn turn_rules(turns: &dyn TurnSource) -> Vec<String> {
    let waiter = |partner, calls| BudgetWaiter {
        partner,
        weight: 1,
        calls,
    };
    // One call a second: asks a few milliseconds apart all fall within one interval.
    let asks: [&[BudgetWaiter<'_>]; 5] = [
        &[waiter("A", 2), waiter("B", 1)],
        &[waiter("A", 1), waiter("B", 1)],
        &[waiter("B", 1)],
        &[],
        &[waiter("A", 1)],
    ];
    let mut said = Vec::new();
    for waiting in asks {
        said.push(match turns.take_turn(1, waiting).await {
            Ok(Turn::Granted(index)) => format!("granted {}", waiting[index].partner),
            Ok(Turn::Wait(wait)) if wait <= Duration::from_secs(1) => "wait".to_owned(),
            other => format!("{other:?}"),
        });
    }
    said
}

#[tokio::test]
async fn the_memory_store_takes_budget_turns_like_redis() {
    let (redis, prefix) = redis_store();

    let real = turn_rules(&redis).await;
    let memory = turn_rules(&MemoryStore::new(
        1,
        Duration::from_millis(1),
        Trace::default(),
    ))
    .await;
    delete_keys(SHARED_REDIS, &prefix).await;

    assert_eq!(memory, real);
    assert_eq!(
        real,
        ["granted A", "granted B", "wait", "wait", "wait"],
        "two calls within the tolerance (A first, by name; then B, whose turn it is), then \
         nobody until the interval has passed"
    );
}

/// What Stripe answers to the same calls, in words that do not depend on its ids; between
/// the two halves the caller scripts a 429 for the next customer create.
async fn stripe_rules_before_429(stripe: &dyn StripeApi) -> Vec<String> {
    let mut said = Vec::new();
    let twin = new_customer("twin@example.com", "pm_twin_first");
    let first = stripe.create_customer(&twin, "twin-cus").await;
    let replayed = stripe.create_customer(&twin, "twin-cus").await;
    let same = first.is_ok() && first.as_ref().ok() == replayed.as_ref().ok();
    said.push(format!("same key replays: {same}"));
    let other = stripe
        .create_customer(
            &new_customer("other@example.com", "pm_twin_other"),
            "twin-cus",
        )
        .await;
    said.push(format!("same key, other parameters: {}", kind(&other)));
    let customer = first.map(|made| made.id).unwrap_or_default();
    let declined = stripe
        .attach_payment_method("pm_card_chargeDeclined", &customer, "twin-declined")
        .await;
    said.push(format!("decline at attach: {}", kind(&declined)));
    let again = stripe
        .attach_payment_method("pm_card_chargeDeclined", &customer, "twin-declined")
        .await;
    said.push(format!("the decline replayed: {}", kind(&again)));
    said
}

async fn stripe_rules_after_429(stripe: &dyn StripeApi) -> Vec<String> {
    let mut said = Vec::new();
    let limited_customer = new_customer("limited@example.com", "pm_twin_limited");
    let limited = stripe
        .create_customer(&limited_customer, "twin-limited")
        .await;
    said.push(format!("429: {}", kind(&limited)));
    let retried = stripe
        .create_customer(&limited_customer, "twin-limited")
        .await;
    said.push(format!("the key runs after a 429: {}", kind(&retried)));
    let found = stripe.find_customer("P1", "limited@example.com").await;
    let made = found.as_ref().is_ok_and(|f| f.is_some());
    said.push(format!("and made the customer: {made}"));
    said
}

/// After the caller scripted a 500 that Stripe saves for the next customer create.
async fn stripe_rules_after_saved_500(stripe: &dyn StripeApi) -> Vec<String> {
    let mut said = Vec::new();
    let saved = new_customer("saved@example.com", "pm_twin_saved");
    let first = stripe.create_customer(&saved, "twin-saved").await;
    said.push(format!("saved 500: {}", kind(&first)));
    let retried = stripe.create_customer(&saved, "twin-saved").await;
    said.push(format!("the same key gets it again: {}", kind(&retried)));
    let found = stripe.find_customer("P1", "saved@example.com").await;
    let made = found.as_ref().is_ok_and(|f| f.is_some());
    said.push(format!("and made nothing: {}", !made));
    let new_key = stripe.create_customer(&saved, "twin-saved-2").await;
    said.push(format!("a new key runs: {}", kind(&new_key)));
    said
}

fn new_customer<'a>(email: &'a str, payment_method: &'a str) -> NewCustomer<'a> {
    NewCustomer {
        partner_code: "P1",
        email,
        payment_method,
    }
}

fn kind<T>(answer: &Result<T, StripeFailure>) -> String {
    match answer {
        Ok(_) => "ok".into(),
        Err(StripeFailure::Permanent(detail)) => format!("permanent {:?}", detail.code),
        Err(StripeFailure::Transient(_)) => "transient".into(),
        Err(StripeFailure::Unknown(_)) => "unknown".into(),
        Err(StripeFailure::BudgetUnavailable(_)) => "budget".into(),
    }
}

#[tokio::test]
async fn the_memory_stripe_keeps_the_idempotency_rules_of_the_simulator() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let key = SecretString::from(KEY);
    let gateway = Gateway::new(
        &ClientOptions {
            secret_key: &key,
            api_base: &sim.base,
            timeout: Duration::from_secs(5),
            http2_prior_knowledge: false,
        },
        Arc::new(Unlimited),
    )
    .expect("a gateway");
    let memory = MemoryStripe::new(1, Duration::from_secs(5), Trace::default());

    let mut real = stripe_rules_before_429(&gateway).await;
    sim.script("POST /v1/customers", json!([{"kind": "rate_limit"}]))
        .await;
    real.extend(stripe_rules_after_429(&gateway).await);
    let mut fake = stripe_rules_before_429(&memory).await;
    memory.script(&[StripeFault::RateLimited]);
    fake.extend(stripe_rules_after_429(&memory).await);
    sim.script("POST /v1/customers", json!([{"kind": "saved_error"}]))
        .await;
    real.extend(stripe_rules_after_saved_500(&gateway).await);
    memory.script(&[StripeFault::ServerErrorBefore]);
    fake.extend(stripe_rules_after_saved_500(&memory).await);

    assert_eq!(fake, real);
    assert_eq!(
        real,
        [
            "same key replays: true".to_owned(),
            // Stripe's idempotency_error: something was made under the key, look it up.
            "same key, other parameters: unknown".to_owned(),
            format!(
                "decline at attach: permanent {:?}",
                FailureCode::CardDeclined
            ),
            format!(
                "the decline replayed: permanent {:?}",
                FailureCode::CardDeclined
            ),
            "429: transient".to_owned(),
            "the key runs after a 429: ok".to_owned(),
            "and made the customer: true".to_owned(),
            // A 500 may follow a write: unknown, to be looked up; under its key it stays so.
            "saved 500: unknown".to_owned(),
            "the same key gets it again: unknown".to_owned(),
            "and made nothing: true".to_owned(),
            "a new key runs: ok".to_owned(),
        ]
    );
}

/// The mark of a final failure (docs/design.md#a-final-failure-outlives-redis): on a customer
/// made for it when the person has none, on the person's customer when there is one, read back
/// at once by the list, and only for its own payId.
async fn mark_rules(stripe: &dyn StripeApi) -> Vec<String> {
    let mut said = Vec::new();
    let detail = FailureDetail {
        code: FailureCode::CardDeclined,
        message: "Your card was declined.".into(),
        stripe_code: Some("card_declined".into()),
        decline_code: Some("do_not_honor".into()),
    };
    let pay_key = |pay_id: &str| {
        PayKey::new(
            PartnerCode::parse("P1").expect("a partner"),
            PayId::parse(pay_id).expect("a payId"),
        )
    };
    for (email, pay_id) in [
        ("marked@example.com", "MARK1"),
        ("payer@example.com", "MARK2"),
    ] {
        let (pay_key, other) = (pay_key(pay_id), pay_key("MARK9"));
        let name = failure_mark::key(&pay_key);
        let value = failure_mark::value(&pay_key, &detail);
        let key = failure_mark::write_key(&pay_key, &value);
        let before = stripe.customer_mark("P1", email, &name).await;
        said.push(format!("{email} before: {:?}", before.map(|v| v.is_some())));
        let mark = CustomerMark {
            partner_code: "P1",
            email,
            name: &name,
            value: &value,
        };
        said.push(format!(
            "marked: {}",
            kind(&stripe.mark_customer(&mark, &key).await)
        ));
        said.push(format!(
            "again: {}",
            kind(&stripe.mark_customer(&mark, &key).await)
        ));
        let read = stripe.customer_mark("P1", email, &name).await;
        let code = read
            .ok()
            .flatten()
            .and_then(|value| failure_mark::read(&pay_key, &value))
            .map(|detail| detail.code);
        said.push(format!("read back: {code:?}"));
        let others = stripe
            .customer_mark("P1", email, &failure_mark::key(&other))
            .await;
        said.push(format!(
            "another payId's: {:?}",
            others.map(|v| v.is_some())
        ));
        let customer = stripe.find_customer("P1", email).await;
        said.push(format!(
            "a customer: {}",
            customer.is_ok_and(|c| c.is_some())
        ));
        if pay_id == "MARK1" {
            // The next person has a customer already: the mark goes on it.
            let payer = new_customer("payer@example.com", "pm_twin_payer");
            let made = stripe.create_customer(&payer, "twin-payer").await;
            said.push(format!("payer's customer: {}", kind(&made)));
        }
    }
    said
}

#[tokio::test]
async fn the_memory_stripe_keeps_a_failure_s_mark_on_the_customer_as_the_simulator_does() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let key = SecretString::from(KEY);
    let gateway = Gateway::new(
        &ClientOptions {
            secret_key: &key,
            api_base: &sim.base,
            timeout: Duration::from_secs(5),
            http2_prior_knowledge: false,
        },
        Arc::new(Unlimited),
    )
    .expect("a gateway");
    let memory = MemoryStripe::new(1, Duration::from_secs(5), Trace::default());

    let real = mark_rules(&gateway).await;
    let fake = mark_rules(&memory).await;

    assert_eq!(fake, real);
    let expected: Vec<String> = [
        "marked@example.com before: Ok(false)",
        "marked: ok",
        "again: ok",
        "read back: Some(CardDeclined)",
        "another payId's: Ok(false)",
        "a customer: true",
        "payer's customer: ok",
        "payer@example.com before: Ok(false)",
        "marked: ok",
        "again: ok",
        "read back: Some(CardDeclined)",
        "another payId's: Ok(false)",
        "a customer: true",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(real, expected);
}
