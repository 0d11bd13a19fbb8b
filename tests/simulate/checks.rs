//! The invariants of CONTRACT §6, checked once a schedule has settled.

use std::collections::BTreeMap;

use autorenew::domain::ResultEvent;

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
            violations.push(format!(
                "{pay_id}: accepted but has no ending (still processing)"
            ));
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

    violations.extend(event_checks(&events, &subscriptions, &results));

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
            if stored
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
