//! The job's keys of the store, in memory, with the Redis scripts' rules (src/store/job.rs):
//! a result is stored once and the first one wins; the lock is `SET NX PX` with a token,
//! extended and released only by its holder, and gone when its TTL has passed; `finish` stores
//! the result and releases the lock in one step.
//!
//! While "away" every call fails after a timeout and changes nothing; a "lost answer" applies
//! the call and fails anyway, as a Redis timeout after the script ran would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::keyspace::{Keyspace, Reply};
use super::{Pauses, Trace};
use crate::budget::TurnSource;
use crate::domain::renewal::{Applied, RenewalChange, RenewalUpdate};
use crate::domain::{FinalResult, PayKey};
use crate::store::scripts::{
    APPLY_LUA, BEGIN_LUA, CLAIM_LUA, EXTEND_LUA, FINISH_LUA, MARK_ENQUEUED, RECORD_CREATE_LUA,
    RELEASE_LUA, TAKE_TURN_LUA, apply_args, apply_keys, millis, parse_created, parse_result,
    read_turn, take_turn_args,
};
use crate::store::{BudgetWaiter, ClaimOutcome, StoreError, Turn};
use crate::worker::ports::{CreateSent, JobStart, JobStore};

/// How long a call waits for a Redis that does not answer.
const TIMEOUT: Duration = Duration::from_millis(500);
/// `redis.record_ttl_secs`'s default: how long a payId's records stay once it has ended.
const RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The key prefix, as the production store's (`redis.key_prefix`) would be.
const PREFIX: &str = "sim";

/// A key's hash tag (`sim:result:{partner1:pay-1}` → `partner1:pay-1`), if it has one.
fn hash_tag(key: &str) -> Option<String> {
    let (_, rest) = key.split_once('{')?;
    let (tag, _) = rest.split_once('}')?;
    Some(tag.to_owned())
}

/// A request the intake claims a creation's record for (`Store::claim`'s arguments).
#[derive(Debug, Clone)]
pub struct CreationClaim<'a> {
    pub pay_key: PayKey,
    /// Unique to the request.
    pub token: &'a str,
    pub fingerprint: &'a str,
    pub accepted_at: &'a str,
    /// The job, as the record keeps it for a takeover.
    pub job: &'a str,
    /// A pending claim older than this is taken over.
    pub lease: Duration,
}

/// The production store's key names: the scripts run on the same keys as in Redis.
fn names() -> crate::store::Keys {
    crate::store::Keys::new(PREFIX)
}

/// What the twin keeps beside Redis's keys, for the checks: none of it is read by a call.
#[derive(Debug, Default, Clone)]
struct Tracked {
    /// Every subscription state written, in order (for the check that it never goes back).
    history: Vec<RenewalChange>,
}

/// A script's or command's reply as the production store reads it: an error reply is an error.
fn checked(reply: Reply) -> Result<Reply, StoreError> {
    match reply {
        Reply::Error(message) => Err(StoreError::Corrupt(format!("redis: {message}"))),
        reply => Ok(reply),
    }
}

fn integer_reply(reply: Reply) -> Result<i64, StoreError> {
    match checked(reply)? {
        Reply::Integer(n) => Ok(n),
        other => Err(StoreError::Corrupt(format!(
            "expected an integer: {other:?}"
        ))),
    }
}

fn optional_text(reply: Reply) -> Result<Option<String>, StoreError> {
    match checked(reply)? {
        Reply::Nil => Ok(None),
        Reply::Bulk(text) => Ok(Some(text)),
        other => Err(StoreError::Corrupt(format!("expected a string: {other:?}"))),
    }
}

/// `SET … NX`'s reply: true when it set the key.
fn set_nx(reply: Reply) -> Result<bool, StoreError> {
    match checked(reply)? {
        Reply::Status(_) => Ok(true),
        Reply::Nil => Ok(false),
        other => Err(StoreError::Corrupt(format!("set: {other:?}"))),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Redis's keys: results, locks, create records, intake records, renewal hashes, price locks.
    redis: Keyspace,
    /// Every payId a call named, with what the checks track of it.
    tracked: BTreeMap<String, Tracked>,
    /// (partner, payId) → (email, customer) of its authorization (`/stripeSubAuthorization`).
    authorizations: BTreeMap<(String, String), (String, String)>,
    away: bool,
    /// Calls left whose answer is lost after they ran.
    lose_answers: u32,
    rng: Option<fastrand::Rng>,
    round_trip_max_ms: u64,
    /// The share of calls that stall 100 ms to 1 s (a latency spike of Redis or the network).
    stall_rate: f64,
}

impl State {
    /// Runs one of the store's scripts on Redis's keys, atomically.
    fn eval(&mut self, now: Instant, source: &str, keys: &[String], args: &[String]) -> Reply {
        self.redis.eval(now, source, keys, args)
    }

    fn get(&mut self, now: Instant, key: &str) -> Result<Option<String>, StoreError> {
        optional_text(self.redis.command(now, &["GET", key]))
    }

    /// `APPLY` (src/store/renewal.rs), as the production store calls it, then the history.
    fn apply(
        &mut self,
        pay_key: &PayKey,
        update: &RenewalUpdate,
        now: Instant,
    ) -> Result<Applied, StoreError> {
        let keys = apply_keys(&names(), pay_key);
        let args = apply_args(update, RECORD_TTL.as_secs(), self.redis.now_ms(now));
        let reply = checked(self.eval(now, APPLY_LUA, &keys, &args))?;
        let (newer, counted) = match &reply {
            Reply::Array(items) if items.len() == 2 => {
                (items[0].integer() == 1, items[1].integer() == 1)
            }
            other => return Err(StoreError::Corrupt(format!("apply: {other:?}"))),
        };
        if newer && matches!(update.change, RenewalChange::Subscription { .. }) {
            self.tracked
                .entry(pay_key.to_string())
                .or_default()
                .history
                .push(update.change.clone());
        }
        Ok(Applied { newer, counted })
    }
}

/// Redis: one per simulated world, one named handle per worker.
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    who: Arc<str>,
    trace: Trace,
    pauses: Pauses,
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
            pauses: Pauses::default(),
        }
    }

    /// The same store, whose callers stop while `pauses` says they are paused.
    pub fn pausing(self, pauses: &Pauses) -> Self {
        MemoryStore {
            pauses: pauses.clone(),
            ..self
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
        state.redis.clear();
        state.tracked.clear();
        state.authorizations.clear();
        drop(state);
        self.trace.note(&self.who, || "all data lost".into());
    }

    /// From now on keeps an undo log of the last `keep` of writes, for [`MemoryStore::lose_recent`].
    pub fn keep_undo_log(&self, keep: Duration) {
        self.state().redis.keep_undo_log(keep);
    }

    /// Redis fails over to a replica that missed the last `window` of writes (asynchronous
    /// replication): every write of that window is undone, each key back to what it was before
    /// it (results, locks, create records, intake records, renewal states, customers alike).
    /// Returns the payIds whose keys went back (by their hash tag, `partner:payId`).
    pub fn lose_recent(&self, window: Duration) -> BTreeSet<String> {
        let since = Instant::now()
            .checked_sub(window)
            .unwrap_or_else(Instant::now);
        let mut state = self.state();
        let restored = state.redis.undo_since(since);
        let pay_ids: BTreeSet<String> = restored.iter().filter_map(|key| hash_tag(key)).collect();
        // The renewal hashes went back too: the history the checks read starts again, as after
        // a loss of everything.
        for pay_id in &pay_ids {
            if let Some(tracked) = state.tracked.get_mut(pay_id) {
                tracked.history.clear();
            }
        }
        drop(state);
        self.trace.note(&self.who, || {
            format!(
                "failover: the last {} ms of writes lost ({} keys: {})",
                window.as_millis(),
                restored.len(),
                restored.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        });
        pay_ids
    }

    /// One key with an expiry goes early (an eviction under `volatile-*`, or an expiry come
    /// early), the `pick`-th of them. Returns the payId whose key it was, if it was one's.
    pub fn evict_one(&self, pick: u64) -> Option<String> {
        let key = self.state().redis.evict_one(Instant::now(), pick);
        self.trace.note(&self.who, || {
            format!("evicted {}", key.as_deref().unwrap_or("nothing"))
        });
        hash_tag(&key?)
    }

    /// The intake's claim of a creation, with its own script (`Store::claim` on the creation
    /// record, src/store/intake_record.rs), at once: the intake's Redis calls are not what the
    /// simulation draws faults for.
    pub fn claim_creation(&self, claim: &CreationClaim<'_>) -> Result<ClaimOutcome, StoreError> {
        let names = names();
        let keys = [names.intake(&claim.pay_key), names.result(&claim.pay_key)];
        let mut state = self.state();
        let now = Instant::now();
        state.tracked.entry(claim.pay_key.to_string()).or_default();
        let now_ms = state.redis.now_ms(now).to_string();
        let lease = millis(claim.lease).to_string();
        let ttl = RECORD_TTL.as_secs().to_string();
        let args: Vec<String> = [
            "",
            "fp",
            claim.fingerprint,
            claim.token,
            &now_ms,
            &lease,
            &ttl,
            "job",
            "fp",
            claim.fingerprint,
            "partner",
            claim.pay_key.partner().as_str(),
            "accepted_at",
            claim.accepted_at,
            "job",
            claim.job,
        ]
        .iter()
        .map(|&arg| arg.to_owned())
        .collect();
        // As `Store::claim` reads the reply.
        let reply = match checked(state.eval(now, CLAIM_LUA, &keys, &args))? {
            Reply::Array(items) => items,
            other => return Err(StoreError::Corrupt(format!("claim {other:?}"))),
        };
        let payload = reply.get(1).map(Reply::text).unwrap_or_default();
        match reply.first().map(Reply::text) {
            Some("claimed") => Ok(ClaimOutcome::Claimed {
                stored: (!payload.is_empty()).then(|| payload.as_bytes().to_vec()),
            }),
            Some("enqueued") if payload.is_empty() => Ok(ClaimOutcome::Enqueued { result: None }),
            Some("enqueued") => Ok(ClaimOutcome::Enqueued {
                result: Some(Box::new(parse_result(payload)?)),
            }),
            Some("pending") => Ok(ClaimOutcome::Pending),
            Some("conflict") => Ok(ClaimOutcome::Conflict),
            other => Err(StoreError::Corrupt(format!("claim outcome `{other:?}`"))),
        }
    }

    /// Marks a creation's record enqueued, as the intake does once the broker confirmed its
    /// message (`Store::mark_enqueued`, its own script).
    pub fn mark_creation_enqueued(&self, pay_key: &PayKey) -> Result<(), StoreError> {
        let keys = [names().intake(pay_key)];
        let args: Vec<String> = ["", &RECORD_TTL.as_secs().to_string(), "job", "fp"]
            .iter()
            .map(|&arg| arg.to_owned())
            .collect();
        let mut state = self.state();
        checked(state.eval(Instant::now(), MARK_ENQUEUED, &keys, &args)).map(drop)
    }

    /// Every payId's lock is dropped now, as a failover to a replica that had not seen them would.
    pub fn drop_locks(&self) {
        let locks = format!("{PREFIX}:lock:");
        self.state()
            .redis
            .delete_where(|key| key.starts_with(&locks));
        self.trace.note(&self.who, || "locks dropped".into());
    }

    /// The stored result (as `autorenew dlq replay` reads it).
    pub fn stored_result(&self, pay_key: &PayKey) -> Option<FinalResult> {
        let mut state = self.state();
        let json = state.get(Instant::now(), &names().result(pay_key)).ok()??;
        parse_result(&json).ok()
    }

    /// Keeps the intake's record of an accepted payId, as its claim does.
    pub fn keep_record(&self, pay_key: &PayKey) {
        let mut state = self.state();
        state.tracked.entry(pay_key.to_string()).or_default();
        let key = names().intake(pay_key);
        state
            .redis
            .command(Instant::now(), &["HSET", &key, "state", "enqueued"]);
    }

    /// The subscription part of the payId's renewal state, with its version, as the renewal
    /// hash holds it.
    pub fn renewal(&self, pay_key: &PayKey) -> Option<(u64, RenewalChange)> {
        let key = names().renewal(pay_key);
        let reply = self
            .state()
            .redis
            .command(Instant::now(), &["HGETALL", &key]);
        let Reply::Array(items) = reply else {
            return None;
        };
        let hash: BTreeMap<&str, &str> = items
            .chunks(2)
            .filter_map(|pair| match pair {
                [field, value] => Some((field.text(), value.text())),
                _ => None,
            })
            .collect();
        let version = hash.get("sub_version")?.parse().ok()?;
        let text = |name: &str| hash.get(name).copied().unwrap_or_default().to_owned();
        let time = |name: &str| hash.get(name).and_then(|value| value.parse().ok());
        Some((
            version,
            RenewalChange::Subscription {
                sub_id: text("sub_id"),
                status: text("status"),
                current_period_end: time("current_period_end"),
                cancel_at_period_end: text("cancel_at_period_end") == "true",
                canceled_at: time("canceled_at"),
            },
        ))
    }

    /// Every subscription state the payId's renewal hash held, in the order written.
    pub fn renewal_history(&self, pay_key: &PayKey) -> Vec<RenewalChange> {
        self.state()
            .tracked
            .get(&pay_key.to_string())
            .map(|tracked| tracked.history.clone())
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

    /// Every payId a call named, with its result, for the invariant checks.
    pub fn results(&self) -> BTreeMap<String, Option<FinalResult>> {
        let mut state = self.state();
        let now = Instant::now();
        let pay_ids: Vec<String> = state.tracked.keys().cloned().collect();
        pay_ids
            .into_iter()
            .map(|pay_id| {
                let key = format!("{PREFIX}:result:{{{pay_id}}}");
                let result = state
                    .get(now, &key)
                    .ok()
                    .flatten()
                    .and_then(|json| parse_result(&json).ok());
                (pay_id, result)
            })
            .collect()
    }

    /// The payIds whose lock is held now, with the holder's token.
    pub fn held_locks(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let locks = format!("{PREFIX}:lock:{{");
        let mut state = self.state();
        let keys: Vec<String> = state
            .redis
            .live_keys(now)
            .filter(|key| key.starts_with(&locks))
            .map(str::to_owned)
            .collect();
        keys.into_iter()
            .filter_map(|key| {
                let token = state.get(now, &key).ok()??;
                let pay_id = key.strip_prefix(&locks)?.strip_suffix('}')?.to_owned();
                Some((pay_id, token))
            })
            .collect()
    }

    /// One call: a round trip, then `op` in one step (Redis runs a script atomically), unless
    /// Redis is away. An error reply is the call's error, as the production store's.
    async fn call<T>(
        &self,
        pay_key: &PayKey,
        name: &str,
        op: impl FnOnce(&mut State, Instant) -> Result<T, StoreError>,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, StoreError> {
        let key = pay_key.to_string();
        self.call_on(
            &key.clone(),
            name,
            move |state, now| {
                state.tracked.entry(key).or_default();
                op(state, now)
            },
            |answer| match answer {
                Ok(answer) => show(answer),
                Err(error) => format!("error: {error}"),
            },
        )
        .await?
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
        self.pauses.hold(&self.who, name).await;
        let answer = self.round_trip(pay_id, name, op, show).await;
        self.pauses.wait(&self.who).await;
        answer
    }

    /// The call itself, between the caller's pauses.
    async fn round_trip<T>(
        &self,
        pay_id: &str,
        name: &str,
        op: impl FnOnce(&mut State, Instant) -> T,
        show: impl FnOnce(&T) -> String,
    ) -> Result<T, StoreError> {
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

/// The budget's turns, from the production turn script on the twin's keyspace (on tokio's
/// clock, so the rate is in virtual time): the real gate (`budget::SharedBudget`) asks it in
/// the simulation as it asks Redis in production.
impl TurnSource for MemoryStore {
    fn take_turn<'a>(
        &'a self,
        per_second: u32,
        waiting: &'a [BudgetWaiter<'a>],
    ) -> BoxFuture<'a, Result<Turn, StoreError>> {
        async move {
            let keys = [names().stripe_budget(), names().stripe_budget_shares()];
            let args = take_turn_args(per_second, waiting);
            let reply = self
                .call_on(
                    "budget",
                    "take_turn",
                    move |state, now| checked(state.eval(now, &TAKE_TURN_LUA, &keys, &args)),
                    |reply| match reply {
                        Ok(Reply::Array(items)) if items.len() == 2 => match items[0].integer() {
                            0 => format!("wait {} µs", items[1].integer()),
                            granted => format!("granted to waiter {granted}"),
                        },
                        other => format!("{other:?}"),
                    },
                )
                .await??;
            match reply {
                Reply::Array(items) if items.len() == 2 => Ok(read_turn(
                    items[0].integer(),
                    items[1].integer(),
                    waiting.len(),
                )),
                other => Err(StoreError::Corrupt(format!("take_turn: {other:?}"))),
            }
        }
        .boxed()
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
        async move {
            self.call_on(
                email,
                "customer_of",
                move |state, now| state.get(now, &names().customer(partner, email)),
                |found| match found {
                    Ok(found) => format!("{found:?}"),
                    Err(error) => format!("error: {error}"),
                },
            )
            .await?
        }
        .boxed()
    }

    fn remember_customer<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
        customer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.call_on(
                email,
                "remember_customer",
                move |state, now| {
                    // As `Store::remember_customer`: as long as a payId's record.
                    let key = names().customer(partner, email);
                    let ttl = RECORD_TTL.as_secs().to_string();
                    checked(
                        state
                            .redis
                            .command(now, &["SET", &key, customer, "EX", &ttl]),
                    )
                    .map(drop)
                },
                move |_| customer.to_owned(),
            )
            .await?
        }
        .boxed()
    }

    fn lock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            self.call_on(
                lookup_key,
                "lock_price",
                move |state, now| {
                    let key = names().price_lock(lookup_key);
                    let ttl = millis(ttl).to_string();
                    let set = state
                        .redis
                        .command(now, &["SET", &key, token, "NX", "PX", &ttl]);
                    set_nx(set)
                },
                move |locked| format!("{token} {locked:?}"),
            )
            .await?
        }
        .boxed()
    }

    fn unlock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.call_on(
                lookup_key,
                "unlock_price",
                move |state, now| {
                    let keys = [names().price_lock(lookup_key)];
                    integer_reply(state.eval(now, RELEASE_LUA, &keys, &[token.to_owned()]))
                        .map(drop)
                },
                move |_| token.to_owned(),
            )
            .await?
        }
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
            move |state, now| {
                let names = names();
                let keys = [
                    names.result(pay_key),
                    names.lock(pay_key),
                    names.created(pay_key),
                ];
                let args = [token.to_owned(), millis(ttl).to_string()];
                // As `Store::begin_job` reads the reply.
                let answer = match checked(state.eval(now, BEGIN_LUA, &keys, &args))? {
                    Reply::Array(items) => items,
                    other => return Err(StoreError::Corrupt(format!("job start {other:?}"))),
                };
                let second = answer.get(1).map(Reply::text).unwrap_or_default();
                match answer.first().map(Reply::text) {
                    Some("settled") => Ok(JobStart::Settled(Box::new(parse_result(second)?))),
                    Some("locked") => Ok(JobStart::Locked {
                        created: parse_created(second)?,
                    }),
                    Some("busy") => Ok(JobStart::Busy),
                    other => Err(StoreError::Corrupt(format!("job start `{other:?}`"))),
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
            move |state, now| {
                let keys = [names().lock(pay_key)];
                let args = [token.to_owned(), millis(ttl).to_string()];
                integer_reply(state.eval(now, EXTEND_LUA, &keys, &args)).map(|n| n == 1)
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
            move |state, now| {
                let keys = [names().lock(pay_key)];
                integer_reply(state.eval(now, RELEASE_LUA, &keys, &[token.to_owned()])).map(drop)
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
            move |state, now| {
                let json = serde_json::to_string(sent)
                    .map_err(|e| StoreError::Corrupt(format!("create record: {e}")))?;
                let names = names();
                let keys = [names.lock(pay_key), names.created(pay_key)];
                let args = [token.to_owned(), json, RECORD_TTL.as_secs().to_string()];
                integer_reply(state.eval(now, RECORD_CREATE_LUA, &keys, &args)).map(|n| n == 1)
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
            |state, now| {
                let json = state.get(now, &names().created(pay_key))?;
                parse_created(json.as_deref().unwrap_or_default())
            },
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
            move |state, now| {
                let json = serde_json::to_string(result)
                    .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
                let names = names();
                let keys = [
                    names.result(pay_key),
                    names.lock(pay_key),
                    names.intake(pay_key),
                    names.created(pay_key),
                ];
                let flag = |on: bool| if on { "1" } else { "0" }.to_owned();
                let args = [
                    json,
                    RECORD_TTL.as_secs().to_string(),
                    token.to_owned(),
                    flag(result.is_failed()),
                    flag(result.subscription_lives()),
                ];
                // As `Store::finish_job` reads the reply.
                let stored = match checked(state.eval(now, FINISH_LUA, &keys, &args))? {
                    Reply::Bulk(stored) => stored,
                    other => return Err(StoreError::Corrupt(format!("finish {other:?}"))),
                };
                if stored.is_empty() {
                    return Ok(None);
                }
                parse_result(&stored).map(Some)
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
            |state, now| {
                state
                    .get(now, &names().result(pay_key))?
                    .map(|json| parse_result(&json))
                    .transpose()
            },
            |result| format!("{:?}", result.as_ref().map(|r| &r.status)),
        )
        .boxed()
    }

    fn has_record<'a>(&'a self, pay_key: &'a PayKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.call(
            pay_key,
            "record",
            |state, now| {
                let key = names().intake(pay_key);
                integer_reply(state.redis.command(now, &["EXISTS", &key])).map(|n| n == 1)
            },
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
            move |state, now| {
                let key = names().lock(pay_key);
                let ttl = millis(ttl).to_string();
                let set = state
                    .redis
                    .command(now, &["SET", &key, token, "NX", "PX", &ttl]);
                set_nx(set)
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
            move |state, now| state.apply(pay_key, update, now),
            move |applied| format!("v{} {:?}: {applied:?}", update.version, update.change),
        )
        .boxed()
    }

    fn restore<'a>(
        &'a self,
        pay_key: &'a PayKey,
        result: &'a FinalResult,
        change: RenewalChange,
        version: u64,
    ) -> BoxFuture<'a, Result<FinalResult, StoreError>> {
        let update = RenewalUpdate {
            partner_code: pay_key.partner().clone(),
            version,
            change,
        };
        self.call(
            pay_key,
            "restore",
            move |state, now| {
                // As `Store::restore`: the result only where none is, then the versioned write.
                let json = serde_json::to_string(result)
                    .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
                let key = names().result(pay_key);
                let ttl = RECORD_TTL.as_secs().to_string();
                let mut set = vec!["SET", &key, &json, "NX"];
                if !result.subscription_lives() {
                    set.extend(["EX", &ttl]);
                }
                checked(state.redis.command(now, &set))?;
                state.apply(pay_key, &update, now)?;
                Ok(state
                    .get(now, &key)?
                    .map(|json| parse_result(&json))
                    .transpose()?
                    .unwrap_or_else(|| result.clone()))
            },
            |stands| format!("{} {}", stands.status, stands.sub_id),
        )
        .boxed()
    }
}
