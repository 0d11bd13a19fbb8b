//! The job's keys of the store, in memory, with the Redis scripts' rules (src/store/job.rs):
//! a result is stored once and the first one wins; the lock is `SET NX PX` with a token,
//! extended and released only by its holder, and gone when its TTL has passed; `finish` stores
//! the result and releases the lock in one step.
//!
//! While "away" every call fails after a timeout and changes nothing; a "lost answer" applies
//! the call and fails anyway, as a Redis timeout after the script ran would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::Trace;
use crate::domain::renewal::{Applied, RenewalChange, RenewalUpdate};
use crate::domain::{FinalResult, PayKey};
use crate::store::StoreError;
use crate::worker::ports::{CreateSent, JobStart, JobStore};

/// How long a call waits for a Redis that does not answer.
const TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Default, Clone)]
struct Keys {
    result: Option<FinalResult>,
    lock: Option<(String, Instant)>,
    created: Option<CreateSent>,
    /// The intake's record of the payId (its creation was accepted).
    record: bool,
    /// The renewal hash: each part (subscription, renewal, error) with the version of the
    /// change that last wrote it, and the invoices counted (src/store/renewal.rs).
    renewal: BTreeMap<&'static str, (u64, RenewalChange)>,
    paid: std::collections::BTreeSet<String>,
    /// Every subscription state written, in order (for the check that it never goes back).
    history: Vec<RenewalChange>,
}

/// The part of the renewal hash a change writes, as the `APPLY` script names it.
fn part_of(change: &RenewalChange) -> &'static str {
    match change {
        RenewalChange::Subscription { .. } => "sub",
        RenewalChange::Renewed { .. } => "renewal",
        RenewalChange::RenewalFailed { .. } => "error",
    }
}

/// `APPLY` (src/store/renewal.rs): a part is written only by a newer version; an invoice is
/// counted once.
fn apply(keys: &mut Keys, update: &RenewalUpdate) -> Applied {
    let part = part_of(&update.change);
    let newer = keys
        .renewal
        .get(part)
        .is_none_or(|(version, _)| update.version > *version);
    if newer {
        keys.renewal
            .insert(part, (update.version, update.change.clone()));
        if part == "sub" {
            keys.history.push(update.change.clone());
        }
    }
    let counted = match &update.change {
        RenewalChange::Renewed { invoice_id, .. } if !invoice_id.is_empty() => {
            keys.paid.insert(invoice_id.clone())
        }
        _ => false,
    };
    Applied { newer, counted }
}

impl Keys {
    /// The lock's token, if it is held and its TTL has not passed.
    fn holder(&self, now: Instant) -> Option<&str> {
        self.lock
            .as_ref()
            .filter(|(_, expires)| *expires > now)
            .map(|(token, _)| token.as_str())
    }
}

#[derive(Debug, Default)]
struct State {
    keys: BTreeMap<String, Keys>,
    /// (partner, email) → the Stripe customer remembered for them.
    customers: BTreeMap<(String, String), String>,
    /// (partner, payId) → (email, customer) of its authorization (`/stripeSubAuthorization`).
    authorizations: BTreeMap<(String, String), (String, String)>,
    /// lookup key → the price lock's token and expiry.
    price_locks: BTreeMap<String, (String, Instant)>,
    away: bool,
    /// Calls left whose answer is lost after they ran.
    lose_answers: u32,
    rng: Option<fastrand::Rng>,
    round_trip_max_ms: u64,
    /// The share of calls that stall 100 ms to 1 s (a latency spike of Redis or the network).
    stall_rate: f64,
}

/// Redis: one per simulated world, one named handle per worker.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    who: Arc<str>,
    trace: Trace,
}

impl MemoryStore {
    /// A store whose round trips take 1 ms to `round_trip_max`, drawn from `seed`.
    pub fn new(seed: u64, round_trip_max: Duration, trace: Trace) -> Self {
        let state = State {
            rng: Some(fastrand::Rng::with_seed(seed)),
            round_trip_max_ms: u64::try_from(round_trip_max.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            ..State::default()
        };
        MemoryStore {
            state: Arc::new(Mutex::new(state)),
            who: "redis".into(),
            trace,
        }
    }

    /// The same store, with calls traced under `who`.
    pub fn named(&self, who: &str) -> Self {
        MemoryStore {
            who: who.into(),
            ..self.clone()
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Redis goes away (every call times out) or comes back.
    pub fn set_away(&self, away: bool) {
        self.state().away = away;
        self.trace.note(&self.who, || {
            format!("redis {}", if away { "away" } else { "back" })
        });
    }

    /// From now on this share of calls stalls for 100 ms to 1 s before it reaches Redis.
    pub fn set_stall_rate(&self, rate: f64) {
        self.state().stall_rate = rate;
    }

    /// Whether Redis answers a ping.
    pub fn is_away(&self) -> bool {
        self.state().away
    }

    /// The next `calls` calls run but their answers are lost.
    pub fn lose_answers(&self, calls: u32) {
        self.state().lose_answers = calls;
    }

    /// Redis loses everything now (a FLUSHALL, or a failover to an empty replica without
    /// persistence): results, records, locks, create records, renewal states, customers.
    pub fn lose_everything(&self) {
        let mut state = self.state();
        state.keys.clear();
        state.customers.clear();
        state.authorizations.clear();
        state.price_locks.clear();
        drop(state);
        self.trace.note(&self.who, || "all data lost".into());
    }

    /// Every lock is dropped now, as a failover to a replica that had not seen them would.
    pub fn drop_locks(&self) {
        for keys in self.state().keys.values_mut() {
            keys.lock = None;
        }
        self.trace.note(&self.who, || "locks dropped".into());
    }

    /// The stored result (as `autorenew dlq replay` reads it).
    pub fn stored_result(&self, pay_key: &PayKey) -> Option<FinalResult> {
        self.state()
            .keys
            .get(&pay_key.to_string())
            .and_then(|k| k.result.clone())
    }

    /// Keeps the intake's record of an accepted payId, as its claim does.
    pub fn keep_record(&self, pay_key: &PayKey) {
        self.state()
            .keys
            .entry(pay_key.to_string())
            .or_default()
            .record = true;
    }

    /// The subscription part of the payId's renewal state, with its version.
    pub fn renewal(&self, pay_key: &PayKey) -> Option<(u64, RenewalChange)> {
        self.state()
            .keys
            .get(&pay_key.to_string())
            .and_then(|keys| keys.renewal.get("sub").cloned())
    }

    /// Every subscription state the payId's renewal hash held, in the order written.
    pub fn renewal_history(&self, pay_key: &PayKey) -> Vec<RenewalChange> {
        self.state()
            .keys
            .get(&pay_key.to_string())
            .map(|keys| keys.history.clone())
            .unwrap_or_default()
    }

    /// Keeps an authorization of (`partner`, `pay_id`) for `email`, as the intake does when it
    /// answers `/stripeSubAuthorization` with `customer`'s SetupIntent.
    pub fn authorize(&self, pay_key: &PayKey, email: &str, customer: &str) {
        self.state().authorizations.insert(
            (pay_key.partner().to_string(), pay_key.pay_id().to_string()),
            (email.to_owned(), customer.to_owned()),
        );
    }

    /// Every payId with its result, for the invariant checks.
    pub fn results(&self) -> BTreeMap<String, Option<FinalResult>> {
        self.state()
            .keys
            .iter()
            .map(|(pay_id, keys)| (pay_id.clone(), keys.result.clone()))
            .collect()
    }

    /// The payIds whose lock is held now, with the holder's token.
    pub fn held_locks(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        self.state()
            .keys
            .iter()
            .filter_map(|(pay_id, keys)| {
                keys.holder(now)
                    .map(|token| (pay_id.clone(), token.to_owned()))
            })
            .collect()
    }

    /// One call: a round trip, then `op` on the payId's keys in one step (Redis runs a script
    /// atomically), unless Redis is away.
    async fn call<T>(
        &self,
        pay_key: &PayKey,
        name: &str,
        op: impl FnOnce(&mut Keys, Instant) -> T,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, StoreError> {
        let key = pay_key.to_string();
        self.call_on(
            &key.clone(),
            name,
            move |state, now| op(state.keys.entry(key).or_default(), now),
            show,
        )
        .await
    }

    /// One call on the whole state (keys other than a payId's), with the same round trip and
    /// failure rules.
    async fn call_on<T>(
        &self,
        label: &str,
        name: &str,
        op: impl FnOnce(&mut State, Instant) -> T,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, StoreError> {
        let pay_id = label;
        let round_trip = {
            let mut state = self.state();
            let (max, stall_rate) = (state.round_trip_max_ms, state.stall_rate);
            state.rng.as_mut().map_or(1, |rng| {
                if stall_rate > 0.0 && rng.f64() < stall_rate {
                    rng.u64(100..=1_000)
                } else {
                    rng.u64(1..=max)
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(round_trip)).await;
        let ran = {
            let mut state = self.state();
            if state.away {
                None
            } else {
                let lost = state.lose_answers > 0;
                state.lose_answers = state.lose_answers.saturating_sub(1);
                Some((op(&mut state, Instant::now()), lost))
            }
        };
        let Some((answer, lost)) = ran else {
            self.trace
                .note(&self.who, || format!("{name} {pay_id}: redis away"));
            tokio::time::sleep(TIMEOUT).await;
            return Err(StoreError::Timeout(TIMEOUT));
        };
        self.trace.note(&self.who, || {
            format!(
                "{name} {pay_id}: {}{}",
                show(&answer),
                if lost { " (answer lost)" } else { "" }
            )
        });
        if lost {
            tokio::time::sleep(TIMEOUT).await;
            return Err(StoreError::Timeout(TIMEOUT));
        }
        Ok(answer)
    }
}

impl JobStore for MemoryStore {
    fn authorized_customer<'a>(
        &'a self,
        pay_key: &'a PayKey,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let key = (pay_key.partner().to_string(), pay_key.pay_id().to_string());
        self.call_on(
            pay_key.pay_id().as_str(),
            "authorized_customer",
            move |state, _| {
                state
                    .authorizations
                    .get(&key)
                    .filter(|(authorized, _)| authorized == email)
                    .map(|(_, customer)| customer.clone())
            },
            |found| format!("{found:?}"),
        )
        .boxed()
    }

    fn customer_of<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let key = (partner.to_owned(), email.to_owned());
        self.call_on(
            email,
            "customer_of",
            move |state, _| state.customers.get(&key).cloned(),
            |found| format!("{found:?}"),
        )
        .boxed()
    }

    fn remember_customer<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
        customer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let key = (partner.to_owned(), email.to_owned());
        self.call_on(
            email,
            "remember_customer",
            move |state, _| {
                state.customers.insert(key, customer.to_owned());
            },
            move |()| customer.to_owned(),
        )
        .boxed()
    }

    fn lock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.call_on(
            lookup_key,
            "lock_price",
            move |state, now| {
                let held = state
                    .price_locks
                    .get(lookup_key)
                    .is_some_and(|(_, expires)| *expires > now);
                if !held {
                    state
                        .price_locks
                        .insert(lookup_key.to_owned(), (token.to_owned(), now + ttl));
                }
                !held
            },
            move |locked| format!("{token} {locked}"),
        )
        .boxed()
    }

    fn unlock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.call_on(
            lookup_key,
            "unlock_price",
            move |state, _| {
                if state
                    .price_locks
                    .get(lookup_key)
                    .is_some_and(|(holder, _)| holder == token)
                {
                    state.price_locks.remove(lookup_key);
                }
            },
            move |()| token.to_owned(),
        )
        .boxed()
    }

    fn begin<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<JobStart, StoreError>> {
        self.call(
            pay_key,
            "begin",
            move |keys, now| {
                if let Some(result) = &keys.result {
                    return JobStart::Settled(Box::new(result.clone()));
                }
                if keys.holder(now).is_some() {
                    return JobStart::Busy;
                }
                keys.lock = Some((token.to_owned(), now + ttl));
                JobStart::Locked {
                    created: keys.created.clone(),
                }
            },
            move |start| match start {
                JobStart::Settled(result) => format!("settled {}", result.status),
                JobStart::Busy => "busy".into(),
                JobStart::Locked { created } => format!(
                    "locked by {token}, created {:?}",
                    created.as_ref().map(|c| c.generation)
                ),
            },
        )
        .boxed()
    }

    fn extend_lock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.call(
            pay_key,
            "extend",
            move |keys, now| {
                if keys.holder(now) == Some(token) {
                    keys.lock = Some((token.to_owned(), now + ttl));
                    true
                } else {
                    false
                }
            },
            move |extended| format!("{token} {extended}"),
        )
        .boxed()
    }

    fn unlock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.call(
            pay_key,
            "unlock",
            move |keys, now| {
                if keys.holder(now) == Some(token) {
                    keys.lock = None;
                }
            },
            move |()| token.to_owned(),
        )
        .boxed()
    }

    fn record_create<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        sent: &'a CreateSent,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.call(
            pay_key,
            "record_create",
            move |keys, now| {
                let holds = keys.holder(now) == Some(token);
                if holds {
                    keys.created = Some(sent.clone());
                }
                holds
            },
            move |recorded| {
                format!(
                    "g{} for {} by {token}: {}",
                    sent.generation,
                    sent.customer,
                    if *recorded { "recorded" } else { "lock lost" }
                )
            },
        )
        .boxed()
    }

    fn created<'a>(
        &'a self,
        pay_key: &'a PayKey,
    ) -> BoxFuture<'a, Result<Option<CreateSent>, StoreError>> {
        self.call(
            pay_key,
            "created",
            |keys, _| keys.created.clone(),
            |created| format!("{:?}", created.as_ref().map(|c| c.generation)),
        )
        .boxed()
    }

    fn finish<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        result: &'a FinalResult,
    ) -> BoxFuture<'a, Result<Option<FinalResult>, StoreError>> {
        self.call(
            pay_key,
            "finish",
            move |keys, now| {
                let holds = keys.holder(now) == Some(token);
                if keys.result.is_none() && result.is_failed() && !holds {
                    return None;
                }
                let stored = keys.result.get_or_insert_with(|| result.clone()).clone();
                if holds {
                    keys.lock = None;
                }
                Some(stored)
            },
            move |stored| match stored {
                Some(stored) => format!("{token} stored {} {}", stored.status, stored.sub_id),
                None => format!("{token} lost the lock: failure not stored"),
            },
        )
        .boxed()
    }

    fn result<'a>(
        &'a self,
        pay_key: &'a PayKey,
    ) -> BoxFuture<'a, Result<Option<FinalResult>, StoreError>> {
        self.call(
            pay_key,
            "result",
            |keys, _| keys.result.clone(),
            |result| format!("{:?}", result.as_ref().map(|r| &r.status)),
        )
        .boxed()
    }

    fn has_record<'a>(&'a self, pay_key: &'a PayKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.call(
            pay_key,
            "record",
            |keys, _| keys.record,
            |kept| format!("{kept}"),
        )
        .boxed()
    }

    fn lock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.call(
            pay_key,
            "lock",
            move |keys, now| {
                let free = keys.holder(now).is_none();
                if free {
                    keys.lock = Some((token.to_owned(), now + ttl));
                }
                free
            },
            move |locked| format!("{token} {locked}"),
        )
        .boxed()
    }

    fn apply_renewal<'a>(
        &'a self,
        pay_key: &'a PayKey,
        update: &'a RenewalUpdate,
    ) -> BoxFuture<'a, Result<Applied, StoreError>> {
        self.call(
            pay_key,
            "apply_renewal",
            move |keys, _| apply(keys, update),
            move |applied| format!("v{} {:?}: {applied:?}", update.version, update.change),
        )
        .boxed()
    }

    fn restore<'a>(
        &'a self,
        pay_key: &'a PayKey,
        result: &'a FinalResult,
        state: RenewalChange,
        version: u64,
    ) -> BoxFuture<'a, Result<FinalResult, StoreError>> {
        let update = RenewalUpdate {
            partner_code: pay_key.partner().clone(),
            version,
            change: state,
        };
        self.call(
            pay_key,
            "restore",
            move |keys, _| {
                let stands = keys.result.get_or_insert_with(|| result.clone()).clone();
                apply(keys, &update);
                stands
            },
            |stands| format!("{} {}", stands.status, stands.sub_id),
        )
        .boxed()
    }
}
