//! The invariants of docs/design.md#how-a-request-becomes-a-subscription, checked once a schedule has settled.

use std::collections::BTreeMap;

use autorenew::domain::cancel::CancelWhen;
use autorenew::domain::renewal::{RenewalChange, STATUS_CANCELED};
use autorenew::domain::{PartnerCode, PayId, PayKey, ResultEvent};

use crate::schedule::{Books, World};

/// Every broken invariant, in words a reader of the trace can follow.
pub fn invariants(world: &World, books: &Books) -> Vec<String> {
    let mut violations = Vec::new();
    let subscriptions = world.stripe.subscriptions();
    // The store keys a payId by its partner (`partner1:ID`); the schedules run one partner, and
    // Stripe's subscriptions and the books name the payId alone.
    let results: Results = world
        .store
        .results()
        .into_iter()
        .map(|(key, result)| match key.split_once(':') {
            Some((_, pay_id)) => (pay_id.to_owned(), result),
            None => (key, result),
        })
        .collect();
    let events = world.queue.events();

    // One payId never charges twice.
    for (pay_id, subs) in &subscriptions {
        if subs.len() > 1 {
            let ids: Vec<&str> = subs.iter().map(|(id, _)| id.as_str()).collect();
            violations.push(format!("{pay_id}: {} subscriptions {ids:?}", subs.len()));
        }
    }

    for pay_id in &books.accepted {
        let subs = subscriptions.get(pay_id).cloned().unwrap_or_default();
        // An acknowledged request is never lost: it ends, and the end agrees with Stripe.
        let Some(Some(result)) = results.get(pay_id) else {
            // After Redis lost everything, an ending stored before the loss is gone with it:
            // the query rebuilds it from Stripe (life_checks holds that to Stripe).
            if !books.data_lost {
                violations.push(format!(
                    "{pay_id}: accepted but has no ending (still processing)"
                ));
            }
            continue;
        };
        if result.is_failed() {
            if !subs.is_empty() {
                violations.push(format!(
                    "{pay_id}: stored `failed` ({:?}) but subscription {} exists",
                    result.error.as_ref().map(|e| e.code),
                    subs[0].0
                ));
            }
        } else if !subs.iter().any(|(id, _)| *id == result.sub_id) {
            violations.push(format!(
                "{pay_id}: stored `{}` with subscription `{}`, which Stripe does not have",
                result.status, result.sub_id
            ));
        }
        // The stored result was announced.
        let outcome = if result.is_failed() {
            "failed"
        } else {
            "succeeded"
        };
        let announced = events.iter().any(|(_, event)| {
            event.subject == *pay_id
                && event.id == format!("{}:{pay_id}:{outcome}", event.data.partner_code)
                && event.data.sub_id == result.sub_id
                && event.data.status == result.status
        });
        if !announced {
            violations.push(format!(
                "{pay_id}: stored `{}` never announced",
                result.status
            ));
        }
    }

    violations.extend(event_checks(
        &events,
        &subscriptions,
        &results,
        books.data_lost,
    ));
    violations.extend(life_checks(world, books, &results));

    // No lock is left held, but by a job that died with its worker (it expires by TTL).
    for (pay_id, token) in world.store.held_locks() {
        if !books.crashed_tokens.contains(&token) {
            violations.push(format!(
                "{pay_id}: lock still held by {token}, a job that is not running"
            ));
        }
    }
    violations
}

type Subscriptions = BTreeMap<String, Vec<(String, tokio::time::Instant)>>;
type Results = BTreeMap<String, Option<autorenew::domain::FinalResult>>;

/// What the partner was told: one id per payId and outcome; never `succeeded` with another
/// subscription than the one that stands, never `failed` while a subscription existed.
fn event_checks(
    events: &[(tokio::time::Instant, ResultEvent)],
    subscriptions: &Subscriptions,
    results: &Results,
    data_lost: bool,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut ids: BTreeMap<(String, String), String> = BTreeMap::new();
    for (at, event) in events {
        let pay_id = &event.subject;
        let failed = event.data.error.is_some();
        let outcome = if failed { "failed" } else { "succeeded" };
        let first = ids
            .entry((pay_id.clone(), outcome.to_owned()))
            .or_insert_with(|| event.id.clone());
        if *first != event.id {
            violations.push(format!(
                "{pay_id}: `{outcome}` announced with ids {first} and {}",
                event.id
            ));
        }
        let subs = subscriptions.get(pay_id).cloned().unwrap_or_default();
        if failed {
            if let Some((sub, _)) = subs.iter().find(|(_, created)| created <= at) {
                violations.push(format!(
                    "{pay_id}: announced `failed` while subscription {sub} existed"
                ));
            }
        } else {
            let stored = results.get(pay_id).cloned().flatten();
            // After Redis lost everything, no stored result is what the query rebuilds.
            let lost = data_lost && stored.is_none();
            if !lost
                && stored
                    .as_ref()
                    .is_none_or(|r| r.sub_id != event.data.sub_id)
            {
                violations.push(format!(
                    "{pay_id}: announced `succeeded` with {} but the stored result is {:?}",
                    event.data.sub_id,
                    stored.map(|r| (r.status, r.sub_id))
                ));
            }
        }
    }
    violations
}

/// The payId's key in the schedules' one partner.
fn pay_key(pay_id: &str) -> Option<PayKey> {
    Some(PayKey::new(
        PartnerCode::parse("partner1").ok()?,
        PayId::parse(pay_id).ok()?,
    ))
}

/// The subscription's life after its creation: every accepted cancel reached Stripe; the stored
/// state never went back; what the query would answer agrees with Stripe.
fn life_checks(world: &World, books: &Books, results: &Results) -> Vec<String> {
    let mut violations = Vec::new();
    let states = world.stripe.states();
    let subscriptions = world.stripe.subscriptions();
    for pay_id in &books.accepted {
        let Some(key) = pay_key(pay_id) else {
            continue;
        };
        // The result, or what the query rebuilds from Stripe when Redis lost it.
        let result = results.get(pay_id).cloned().flatten();
        let sub_id = match &result {
            Some(result) if result.is_failed() => continue,
            Some(result) => result.sub_id.clone(),
            None => match subscriptions.get(pay_id).and_then(|subs| subs.first()) {
                Some((id, _)) => id.clone(),
                None => continue,
            },
        };
        let Some((_, stripe)) = states.get(&sub_id) else {
            continue;
        };
        // An accepted cancel reaches Stripe.
        for (_, when) in books.cancels.iter().filter(|(id, _)| id == pay_id) {
            let reached = match when {
                CancelWhen::Now => stripe.status == STATUS_CANCELED,
                CancelWhen::PeriodEnd => {
                    stripe.cancel_at_period_end || stripe.status == STATUS_CANCELED
                }
            };
            if !reached {
                violations.push(format!(
                    "{pay_id}: cancel {when} accepted, but Stripe has {} with \
                     cancel_at_period_end {}",
                    stripe.status, stripe.cancel_at_period_end
                ));
            }
        }
        // The stored state never goes back: no live state after `canceled`, no
        // `cancel_at_period_end` taken back (nothing in the schedules resumes a subscription).
        let mut canceled = false;
        let mut ending = false;
        for change in world.store.renewal_history(&key) {
            if let RenewalChange::Subscription {
                status,
                cancel_at_period_end,
                ..
            } = change
            {
                let now_canceled = status == STATUS_CANCELED;
                if (canceled && !now_canceled) || (ending && !cancel_at_period_end && !now_canceled)
                {
                    violations.push(format!(
                        "{pay_id}: the stored state went back to {status} with \
                         cancel_at_period_end {cancel_at_period_end}"
                    ));
                }
                canceled |= now_canceled;
                ending |= cancel_at_period_end;
            }
        }
        // What `/queryAutoRenewalRecord` answers (the renewal state, else the creation's
        // result) agrees with Stripe.
        let (status, cancel_at_period_end) = match world.store.renewal(&key) {
            Some((
                _,
                RenewalChange::Subscription {
                    status,
                    cancel_at_period_end,
                    ..
                },
            )) => (status, cancel_at_period_end),
            _ => match &result {
                Some(result) => (result.status.clone(), false),
                // Nothing stored: the query rebuilds it from Stripe.
                None => (stripe.status.clone(), stripe.cancel_at_period_end),
            },
        };
        if status != stripe.status || cancel_at_period_end != stripe.cancel_at_period_end {
            violations.push(format!(
                "{pay_id}: the query answers {status} with cancel_at_period_end \
                 {cancel_at_period_end}, Stripe has {} with {}",
                stripe.status, stripe.cancel_at_period_end
            ));
        }
    }
    // Each change is announced under one id, and one id means one change.
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (_, event) in world.queue.changes() {
        let content = (event.kind.clone(), event.subject.clone());
        if let Some(first) = seen.insert(event.id.clone(), content.clone())
            && first != content
        {
            violations.push(format!(
                "{}: id {} announced for {first:?} and {content:?}",
                event.subject, event.id
            ));
        }
    }
    violations
}
