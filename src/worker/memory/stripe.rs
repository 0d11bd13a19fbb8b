//! Stripe in memory, with the rules the job path leans on:
//!
//! - an idempotency key remembers its request's parameters (compared as parameters) and its
//!   answer for 24 h; the same key with other parameters is a 400; a key whose first request
//!   is still being processed answers 409; a finished key replays its answer, a stored 500
//!   included (Stripe stores the result once the endpoint started executing), and says so, as
//!   Stripe's `Idempotent-Replayed: true` does; the 400, the 409 and a 429 are saved nowhere;
//! - a request is a server-side task: its effect happens when it arrives, whatever became of
//!   the client (it gave up on a timeout, or its worker crashed);
//! - failures reach the job as the gateway classifies them (src/stripe/error.rs): a read that
//!   fails is transient, a write whose outcome is unknown is `Unknown`.
//!
//! Faults are drawn per call from the seeded random source: a 500 before the write (stored for
//! the key), a 500 after it (the write happened; the answer is lost), a dropped connection
//! before or after arrival, a 429, a 409 for a key in use, and answers slower than the client's
//! timeout, by any amount up to minutes (no multiple of the timeout bounds them). A payment method whose id contains `chargeDeclined` is declined when attached.
//!
//! Attaches also decline now and then (`Faults::decline_rate`): the issuer declines the card
//! check of an attach that executes (a replayed key answers what it stored). That includes an
//! attach of a method attached to this customer already, which real Stripe may not check
//! again: the harsher answer, so the job path must survive a refusal that comes after a create
//! was sent (a job's second attempt attaches to the customer its first one created). Customer
//! creates are left alone: a decline there ends a job before any create, as `chargeDeclined`
//! cards already do.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Pauses, Trace};
use crate::domain::renewal::STATUS_CANCELED;
use crate::domain::{FailureCode, FailureDetail};
use crate::stripe::{
    Attached, Budget, CreatedCustomer, CustomerMark, FoundSubscription, NewCustomer,
    NewSubscription, PaymentError, PriceSpec, StripeFailure, Subscribed, SubscriptionState,
    WriteFailure,
};
use crate::worker::ports::StripeApi;
use stripe::StripeError;

/// How long Stripe remembers an idempotency key.
pub const KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest a slow request runs at the server (long after the client gave up on it).
const SLOWEST: Duration = Duration::from_secs(5 * 60);
/// One way across the network.
const HOP: Duration = Duration::from_millis(5);
/// Stripe's clock when the world starts (unix seconds), as the simulation's `VirtualClock`.
const EPOCH_SECONDS: i64 = 1_800_000_000;
/// A subscription's period (a month).
const PERIOD_SECONDS: i64 = 30 * 24 * 3600;

/// What goes wrong, and how often. Set by the simulation as the schedule unfolds.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// The share of calls that meet one fault (drawn uniformly among the kinds).
    pub rate: f64,
    /// Stripe is down: every call fails (connections dropped or rate limited).
    pub outage: bool,
    /// The share of calls that panic in the client (a bug in the worker).
    pub panic_rate: f64,
    /// The share of attaches whose card check the issuer declines (`card_declined`,
    /// `do_not_honor`), drawn when the request executes.
    pub decline_rate: f64,
    /// The client's timeout (`stripe.request_timeout_ms`).
    pub client_timeout: Duration,
}

impl Faults {
    /// No faults: Stripe answers every call.
    pub fn none(client_timeout: Duration) -> Self {
        Faults {
            rate: 0.0,
            outage: false,
            panic_rate: 0.0,
            decline_rate: 0.0,
            client_timeout,
        }
    }
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    ServerErrorBefore,
    ServerErrorAfter,
    DropBefore,
    DropAfter,
    RateLimited,
    KeyInUse,
    Slow,
    /// Runs at the server for the longest a slow request may ([`SLOWEST`]): only scripted, for
    /// a test that needs a request still executing long after the client gave up.
    Stalled,
}

const FAULTS: [Fault; 7] = [
    Fault::ServerErrorBefore,
    Fault::ServerErrorAfter,
    Fault::DropBefore,
    Fault::DropAfter,
    Fault::RateLimited,
    Fault::KeyInUse,
    Fault::Slow,
];

/// A write's answer, as Stripe stores it for the key.
#[derive(Debug, Clone)]
enum Reply {
    Customer(CreatedCustomer),
    Attached(Attached),
    Price(String, String),
    Sub(Subscribed),
    State(SubscriptionState),
    /// A customer's metadata set (or the customer made to carry it).
    Marked,
    Refused(FailureDetail),
    ServerError,
    Conflict,
    /// The key was used before with other parameters: Stripe's 400 `idempotency_error`, which
    /// the gateway reads as an unknown outcome to look up.
    OtherParameters,
}

#[derive(Debug, Clone)]
enum KeyState {
    InFlight,
    Done(Reply),
}

#[derive(Debug, Clone)]
struct KeyRecord {
    params: Params,
    state: KeyState,
    at: Instant,
}

type Params = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    customer: String,
    pay_id: String,
    partner: String,
    product: String,
    created: Instant,
    /// Unix seconds, on Stripe's clock.
    created_at: i64,
    status: String,
    cancel_at_period_end: bool,
    current_period_end: i64,
    canceled_at: Option<i64>,
}

impl Subscription {
    fn state(&self) -> SubscriptionState {
        SubscriptionState {
            id: self.id.clone(),
            status: self.status.clone(),
            cancel_at_period_end: self.cancel_at_period_end,
            current_period_start: Some(self.current_period_end - PERIOD_SECONDS),
            current_period_end: Some(self.current_period_end),
            canceled_at: self.canceled_at,
            cancellation_reason: self
                .canceled_at
                .map(|_| "cancellation_requested".to_owned()),
        }
    }

    fn subscribed(&self) -> Subscribed {
        Subscribed {
            id: self.id.clone(),
            status: self.status.clone(),
            product_id: self.product.clone(),
            pay_method: "card".into(),
        }
    }
}

/// What the fake counted, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StripeCounts {
    pub calls: u64,
    pub faults: u64,
    pub panics: u64,
}

struct World {
    rng: fastrand::Rng,
    faults: Faults,
    /// When each call that waited for a budget left for Stripe, in order.
    sent: Vec<Instant>,
    /// How long a new subscription stays out of search's results (Stripe's search index lags
    /// its writes by up to a minute; a list sees them at once).
    search_lag: Duration,
    keys: BTreeMap<String, KeyRecord>,
    /// id → (partnerCode, email)
    customers: BTreeMap<String, (String, String)>,
    /// id → the customer's metadata besides `partnerCode` (the failure marks)
    customer_metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// payment method → customer it is attached to
    methods: BTreeMap<String, String>,
    /// price id → (lookup key, product)
    prices: BTreeMap<String, (Option<String>, String)>,
    subscriptions: Vec<Subscription>,
    next_id: u64,
    in_flight: u32,
    counts: StripeCounts,
    /// Faults for the next calls, before any drawn at random.
    script: std::collections::VecDeque<Fault>,
    /// When the world started, for Stripe's clock.
    epoch: Instant,
    /// Events not yet handed to the webhook courier: (id, the Event's JSON).
    events: Vec<(String, Vec<u8>)>,
    /// Every event recorded, in order: what `GET /v1/events` lists (Stripe keeps 30 days).
    listed: Vec<(String, Vec<u8>)>,
}

impl World {
    /// Stripe's clock (unix seconds).
    fn now_seconds(&self) -> i64 {
        EPOCH_SECONDS
            + i64::try_from(Instant::now().duration_since(self.epoch).as_secs()).unwrap_or(0)
    }

    /// The ids of the customers of (`partner`, `email`), newest first, as Stripe lists.
    fn partner_customers<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        self.customers
            .iter()
            .rev()
            .filter(move |(_, (p, mail))| p == partner && mail == email)
            .map(|(id, _)| id.clone())
    }

    fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|sub| sub.id == id)
    }

    fn subscription_mut(&mut self, id: &str) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|sub| sub.id == id)
    }

    /// Records an event about `sub` as Stripe would send it to a webhook endpoint.
    fn emit(&mut self, kind: &str, sub: &Subscription, previous: Option<serde_json::Value>) {
        let id = self.id("evt");
        let created = self.now_seconds();
        let mut data = serde_json::json!({ "object": subscription_json(sub) });
        if let Some(previous) = previous {
            data["previous_attributes"] = previous;
        }
        let event = serde_json::json!({
            "id": id, "object": "event", "api_version": "2026-09-30.endive",
            "created": created, "data": data, "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null}, "type": kind,
        });
        let body = serde_json::to_vec(&event).unwrap_or_default();
        self.listed.push((id.clone(), body.clone()));
        self.events.push((id, body));
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        // Zero-padded so that id order is creation order.
        format!("{prefix}_{:06}", self.next_id)
    }

    fn draw(&mut self) -> Option<Fault> {
        self.counts.calls += 1;
        let fault = if let Some(scripted) = self.script.pop_front() {
            Some(scripted)
        } else if self.faults.outage {
            Some(if self.rng.bool() {
                Fault::DropBefore
            } else {
                Fault::RateLimited
            })
        } else if self.faults.rate > 0.0 && self.rng.f64() < self.faults.rate {
            Some(FAULTS[self.rng.usize(..FAULTS.len())])
        } else {
            None
        };
        if fault.is_some() {
            self.counts.faults += 1;
        }
        fault
    }

    /// Whether the issuer declines this card check.
    fn check_declines(&mut self) -> bool {
        self.faults.decline_rate > 0.0 && self.rng.f64() < self.faults.decline_rate
    }

    fn panics(&mut self) -> bool {
        let panics = self.faults.panic_rate > 0.0 && self.rng.f64() < self.faults.panic_rate;
        if panics {
            self.counts.panics += 1;
        }
        panics
    }

    /// How long the server works on a request: usually quick; when the fault says so, longer
    /// than the client waits, by any amount up to minutes. Log-uniform from the client's
    /// timeout to [`SLOWEST`]: as many slow requests end within 2x the timeout as between 10x
    /// and 20x, so no multiple of the timeout is a safe bet on a request having ended. Real
    /// Stripe gives no bound at all; a request ends when it ends.
    fn processing(&mut self, fault: Option<Fault>) -> Duration {
        let timeout = self.faults.client_timeout;
        if fault == Some(Fault::Stalled) {
            SLOWEST
        } else if fault == Some(Fault::Slow) {
            let widest = (SLOWEST.as_secs_f64() / timeout.as_secs_f64().max(0.001)).max(1.0);
            timeout.mul_f64(widest.powf(self.rng.f64()))
        } else {
            Duration::from_millis(self.rng.u64(5..200))
        }
    }
}

/// The fake Stripe: one per simulated world, one named handle per worker.
#[derive(Clone)]
pub struct MemoryStripe {
    world: Arc<Mutex<World>>,
    /// Woken when a write ran (it may have recorded events).
    wrote: Arc<tokio::sync::Notify>,
    who: Arc<str>,
    trace: Trace,
    pauses: Pauses,
    /// The budget this handle's calls wait for before they go, as the gateway's do.
    budget: Option<Arc<dyn Budget>>,
}

type Effect = Box<dyn FnOnce(&mut World) -> Reply + Send>;

impl MemoryStripe {
    pub fn new(seed: u64, client_timeout: Duration, trace: Trace) -> Self {
        MemoryStripe {
            world: Arc::new(Mutex::new(World {
                rng: fastrand::Rng::with_seed(seed),
                faults: Faults::none(client_timeout),
                sent: Vec::new(),
                search_lag: Duration::ZERO,
                keys: BTreeMap::new(),
                customers: BTreeMap::new(),
                customer_metadata: BTreeMap::new(),
                methods: BTreeMap::new(),
                prices: BTreeMap::new(),
                subscriptions: Vec::new(),
                next_id: 0,
                in_flight: 0,
                counts: StripeCounts::default(),
                script: std::collections::VecDeque::new(),
                epoch: Instant::now(),
                events: Vec::new(),
                listed: Vec::new(),
            })),
            wrote: Arc::new(tokio::sync::Notify::new()),
            who: "stripe".into(),
            trace,
            pauses: Pauses::default(),
            budget: None,
        }
    }

    /// The same Stripe, whose callers stop while `pauses` says they are paused.
    pub fn pausing(self, pauses: &Pauses) -> Self {
        MemoryStripe {
            pauses: pauses.clone(),
            ..self
        }
    }

    /// The same handle, whose calls each wait for `budget` first, as the gateway's do: a
    /// budget that cannot be asked fails the call before it is sent.
    pub fn with_budget(&self, budget: Arc<dyn Budget>) -> Self {
        MemoryStripe {
            budget: Some(budget),
            ..self.clone()
        }
    }

    /// The same Stripe, with calls traced under `who`.
    pub fn named(&self, who: &str) -> Self {
        MemoryStripe {
            who: who.into(),
            ..self.clone()
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.trace
            .note(&self.who, || format!("stripe faults {faults:?}"));
        self.world().faults = faults;
    }

    /// From now on a subscription shows in search only `lag` after it was made.
    pub fn set_search_lag(&self, lag: Duration) {
        self.world().search_lag = lag;
    }

    /// The next calls meet these faults, in order (then faults are drawn again).
    pub fn script(&self, faults: &[Fault]) {
        self.world().script.extend(faults.iter().copied());
    }

    /// A price configured in the plans (`plans.<id>.price`).
    pub fn add_price(&self, price: &str, product: &str) {
        self.world()
            .prices
            .insert(price.to_owned(), (None, product.to_owned()));
    }

    /// The subscriptions made (id, when), by the payId in their metadata.
    pub fn subscriptions(&self) -> BTreeMap<String, Vec<(String, Instant)>> {
        let mut by_pay_id: BTreeMap<String, Vec<(String, Instant)>> = BTreeMap::new();
        for sub in &self.world().subscriptions {
            by_pay_id
                .entry(sub.pay_id.clone())
                .or_default()
                .push((sub.id.clone(), sub.created));
        }
        by_pay_id
    }

    /// Every subscription's state as it stands, by id, with its payId.
    pub fn states(&self) -> BTreeMap<String, (String, SubscriptionState)> {
        self.world()
            .subscriptions
            .iter()
            .map(|sub| (sub.id.clone(), (sub.pay_id.clone(), sub.state())))
            .collect()
    }

    /// The events recorded since the last call, waiting until there is one.
    pub async fn next_events(&self) -> Vec<(String, Vec<u8>)> {
        loop {
            let events = self.take_events();
            if !events.is_empty() {
                return events;
            }
            self.wrote.notified().await;
        }
    }

    /// Every event recorded so far, in order, as `autorenew reconcile` lists them.
    pub fn listed_events(&self) -> Vec<(String, Vec<u8>)> {
        self.world().listed.clone()
    }

    /// Whether events wait for the courier.
    pub fn has_events(&self) -> bool {
        !self.world().events.is_empty()
    }

    /// The events recorded since the last call, for the simulation's webhook courier.
    pub fn take_events(&self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut self.world().events)
    }

    /// Requests still being processed server-side.
    pub fn in_flight(&self) -> u32 {
        self.world().in_flight
    }

    pub fn counts(&self) -> StripeCounts {
        self.world().counts
    }

    /// When each call that waited for a budget left for Stripe, in order (for the check that
    /// the shared budget held).
    pub fn budgeted_sends(&self) -> Vec<Instant> {
        self.world().sent.clone()
    }

    fn note(&self, what: impl FnOnce() -> String) {
        self.trace.note(&self.who, what);
    }

    /// A read: answered from the state when it arrives, or failed (transient) by a fault.
    async fn read<T: std::fmt::Debug>(
        &self,
        what: String,
        answer: impl FnOnce(&World) -> Result<T, StripeFailure>,
    ) -> Result<T, StripeFailure> {
        self.leave(&what).await?;
        let (fault, panics) = {
            let mut world = self.world();
            (world.draw(), world.panics())
        };
        if panics {
            self.note(|| format!("{what}: injected panic"));
            panic!("injected panic in {what}");
        }
        tokio::time::sleep(HOP).await;
        let answer = match fault {
            None | Some(Fault::KeyInUse) => answer(&self.world()),
            Some(fault) => Err(failed_read(fault)),
        };
        tokio::time::sleep(HOP).await;
        self.pauses.wait(&self.who).await;
        self.note(|| format!("{what}: {answer:?}"));
        answer
    }

    /// What a call goes through before it leaves the worker: the caller's pause, then the
    /// budget (`Gateway::take_budget`).
    async fn leave(&self, what: &str) -> Result<(), StripeFailure> {
        self.pauses.hold(&self.who, what).await;
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let partner = crate::stripe::current_partner();
        if let Err(reason) = budget.take(&partner).await {
            self.note(|| format!("{what}: no budget ({reason})"));
            return Err(StripeFailure::BudgetUnavailable(reason));
        }
        self.world().sent.push(Instant::now());
        Ok(())
    }

    /// A write under an idempotency key, for a caller that does not ask whether the answer was
    /// replayed.
    async fn write(
        &self,
        what: String,
        key: &str,
        params: Params,
        effect: Effect,
    ) -> Result<Reply, StripeFailure> {
        self.keyed_write(what, key, params, effect)
            .await
            .map_err(|failure| failure.failure)
    }

    /// A write under an idempotency key: a server-side task applies it when it arrives; the
    /// client waits for its answer up to its timeout. A failure says whether the server
    /// replayed it from the key's record, as Stripe's `Idempotent-Replayed` header does.
    async fn keyed_write(
        &self,
        what: String,
        key: &str,
        params: Params,
        effect: Effect,
    ) -> Result<Reply, WriteFailure> {
        self.leave(&what).await.map_err(|failure| WriteFailure {
            failure,
            replayed: false,
        })?;
        let (fault, panics, timeout) = {
            let mut world = self.world();
            (world.draw(), world.panics(), world.faults.client_timeout)
        };
        if panics {
            self.note(|| format!("{what} [{key}]: injected panic"));
            panic!("injected panic in {what}");
        }
        if let Some(fault @ (Fault::RateLimited | Fault::KeyInUse)) = fault {
            // Refused at the door: nothing is stored for the key.
            tokio::time::sleep(HOP * 2).await;
            self.pauses.wait(&self.who).await;
            self.note(|| format!("{what} [{key}]: {fault:?}"));
            let status = if fault == Fault::RateLimited {
                429
            } else {
                409
            };
            return Err(classified(status, "invalid_request_error", true).into());
        }
        let (answer, answered) = oneshot::channel();
        self.world().in_flight += 1;
        let server = self.clone();
        let key_owned = key.to_owned();
        let what_server = what.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOP).await;
            let reply = server
                .serve(&what_server, &key_owned, params, effect, fault)
                .await;
            server.world().in_flight -= 1;
            if let Some(reply) = reply {
                let _ = answer.send(reply);
            }
        });
        let failed =
            |failure: StripeFailure, replayed: bool| Err(WriteFailure { failure, replayed });
        let reply = match tokio::time::timeout(timeout, answered).await {
            Err(_) => failed(
                StripeFailure::classify(StripeError::Timeout, None, true),
                false,
            ),
            Ok(Err(_)) => failed(
                StripeFailure::classify(
                    StripeError::ClientError("connection dropped".into()),
                    None,
                    true,
                ),
                false,
            ),
            Ok(Ok((Reply::ServerError, replayed))) => {
                failed(classified(500, "api_error", true), replayed)
            }
            // Stripe's 409 for a key whose first request is still running: nothing saved.
            Ok(Ok((Reply::Conflict, _))) => {
                failed(classified(409, "invalid_request_error", true), false)
            }
            Ok(Ok((Reply::Refused(detail), replayed))) => {
                failed(StripeFailure::Permanent(detail), replayed)
            }
            Ok(Ok((Reply::OtherParameters, _))) => {
                failed(classified(400, "idempotency_error", true), false)
            }
            Ok(Ok((reply, _))) => Ok(reply),
        };
        self.pauses.wait(&self.who).await;
        self.note(|| format!("{what} [{key}] client: {reply:?}"));
        reply
    }

    /// The server's side of a write: its answer, and whether it was replayed from the key's
    /// record; None when the connection drops (no answer).
    async fn serve(
        &self,
        what: &str,
        key: &str,
        params: Params,
        effect: Effect,
        fault: Option<Fault>,
    ) -> Option<(Reply, bool)> {
        if fault == Some(Fault::DropBefore) {
            self.note(|| format!("{what} [{key}] server: dropped before arrival"));
            return None;
        }
        let processing = {
            let mut world = self.world();
            let now = Instant::now();
            let remembered = world
                .keys
                .get(key)
                .filter(|record| now.duration_since(record.at) < KEY_LIFETIME)
                .cloned();
            if let Some(record) = remembered {
                // Only a stored answer is a replay; the 400 and the 409 are refusals at the
                // door, saved nowhere.
                let reply = if record.params != params {
                    (Reply::OtherParameters, false)
                } else {
                    match record.state {
                        KeyState::InFlight => (Reply::Conflict, false),
                        KeyState::Done(stored) => (stored, true),
                    }
                };
                drop(world);
                self.note(|| format!("{what} [{key}] server: key known, {:?}", reply.0));
                return Some(reply);
            }
            world.keys.insert(
                key.to_owned(),
                KeyRecord {
                    params,
                    state: KeyState::InFlight,
                    at: now,
                },
            );
            world.processing(fault)
        };
        tokio::time::sleep(processing).await;
        let reply = {
            let mut world = self.world();
            let reply = if fault == Some(Fault::ServerErrorBefore) {
                Reply::ServerError
            } else {
                effect(&mut world)
            };
            if let Some(record) = world.keys.get_mut(key) {
                record.state = KeyState::Done(reply.clone());
            }
            reply
        };
        // A permit is kept if the courier is not waiting yet: no event is missed.
        self.wrote.notify_one();
        self.note(|| format!("{what} [{key}] server: {reply:?} ({fault:?})"));
        match fault {
            Some(Fault::ServerErrorAfter) => Some((Reply::ServerError, false)),
            Some(Fault::DropAfter) => None,
            _ => Some((reply, false)),
        }
    }
}

fn refused(code: FailureCode, message: &str, stripe_code: Option<&str>) -> Reply {
    Reply::Refused(FailureDetail {
        code,
        message: message.to_owned(),
        stripe_code: stripe_code.map(str::to_owned),
        decline_code: None,
    })
}

/// The issuer's refusal of a card check, as Stripe answers it (402 `card_error`).
fn declined(decline_code: &str) -> Reply {
    Reply::Refused(FailureDetail {
        code: FailureCode::CardDeclined,
        message: "Your card was declined.".into(),
        stripe_code: Some("card_declined".into()),
        decline_code: Some(decline_code.to_owned()),
    })
}

/// An error answer of Stripe's, classified by the real gateway's rules
/// ([`StripeFailure::classify`]), so that the classification runs in the simulation too.
fn classified(status: u16, kind: &str, write: bool) -> StripeFailure {
    let json = format!(r#"{{"type":"{kind}","message":"{status} from the twin"}}"#);
    match miniserde::json::from_str::<stripe::ApiErrors>(&json) {
        Ok(api) => StripeFailure::classify(StripeError::Stripe(Box::new(api), status), None, write),
        Err(_) => StripeFailure::Unknown(format!("{status} {kind}: not an ApiErrors")),
    }
}

/// A read that met a fault, as the gateway classifies what reached it.
fn failed_read(fault: Fault) -> StripeFailure {
    match fault {
        Fault::ServerErrorBefore | Fault::ServerErrorAfter => classified(500, "api_error", false),
        Fault::RateLimited => classified(429, "invalid_request_error", false),
        Fault::KeyInUse => classified(409, "idempotency_error", false),
        Fault::DropBefore | Fault::DropAfter => StripeFailure::classify(
            StripeError::ClientError("connection dropped".into()),
            None,
            false,
        ),
        Fault::Slow | Fault::Stalled => StripeFailure::classify(StripeError::Timeout, None, false),
    }
}

fn unexpected(reply: Reply) -> StripeFailure {
    StripeFailure::Unknown(format!("unexpected answer {reply:?}"))
}

fn params(pairs: &[(&str, &str)]) -> Params {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

impl StripeApi for MemoryStripe {
    fn find_customer<'a>(
        &'a self,
        partner_code: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StripeFailure>> {
        self.read(format!("find_customer {email}"), move |world| {
            // Newest first, as Stripe lists.
            Ok(world
                .customers
                .iter()
                .rev()
                .find(|(_, (partner, mail))| partner == partner_code && mail == email)
                .map(|(id, _)| id.clone()))
        })
        .boxed()
    }

    fn create_customer<'a>(
        &'a self,
        new: &'a NewCustomer<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<CreatedCustomer, StripeFailure>> {
        let partner = new.partner_code.to_owned();
        let mail = new.email.to_owned();
        let method = new.payment_method.to_owned();
        async move {
            // Created with the method attached and made its default, in one call: a decline or
            // a method of another customer refuses the whole create, and nothing is made.
            let effect: Effect = Box::new(move |world| {
                if method.contains("chargeDeclined") {
                    return declined("generic_decline");
                }
                if world.methods.contains_key(&method) {
                    return refused(
                        FailureCode::PaymentMethodUnavailable,
                        "the payment method is attached to another customer",
                        None,
                    );
                }
                let id = world.id("cus");
                world.customers.insert(id.clone(), (partner, mail));
                world.methods.insert(method.clone(), id.clone());
                Reply::Customer(CreatedCustomer {
                    id,
                    payment_method: method,
                })
            });
            let params = params(&[
                ("email", new.email),
                ("metadata[partnerCode]", new.partner_code),
                ("payment_method", new.payment_method),
                (
                    "invoice_settings[default_payment_method]",
                    new.payment_method,
                ),
            ]);
            match self
                .write(
                    format!("create_customer {}", new.email),
                    key,
                    params,
                    effect,
                )
                .await?
            {
                Reply::Customer(created) => Ok(created),
                other => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn attach_payment_method<'a>(
        &'a self,
        payment_method: &'a str,
        customer: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Attached, StripeFailure>> {
        let method = payment_method.to_owned();
        let owner = customer.to_owned();
        async move {
            let effect: Effect = Box::new(move |world| {
                if method.contains("chargeDeclined") {
                    return declined("generic_decline");
                }
                if world.check_declines() {
                    return declined("do_not_honor");
                }
                if !world.customers.contains_key(&owner) {
                    return refused(
                        FailureCode::StripeRejected,
                        "No such customer",
                        Some("resource_missing"),
                    );
                }
                // Attached to this customer already: the gateway's owner check makes that a
                // success; to another one, a permanent failure.
                match world.methods.get(&method) {
                    Some(holder) if *holder != owner => refused(
                        FailureCode::PaymentMethodUnavailable,
                        "the payment method is attached to another customer",
                        None,
                    ),
                    _ => {
                        world.methods.insert(method.clone(), owner);
                        Reply::Attached(Attached {
                            id: method,
                            kind: "card".into(),
                        })
                    }
                }
            });
            let params = params(&[("customer", customer)]);
            match self
                .write(
                    format!("attach {payment_method} to {customer}"),
                    key,
                    params,
                    effect,
                )
                .await?
            {
                Reply::Attached(attached) => Ok(attached),
                other => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn price_product<'a>(&'a self, price: &'a str) -> BoxFuture<'a, Result<String, StripeFailure>> {
        self.read(format!("price_product {price}"), move |world| {
            world
                .prices
                .get(price)
                .map(|(_, product)| product.clone())
                .ok_or_else(|| {
                    StripeFailure::Permanent(FailureDetail {
                        code: FailureCode::StripeRejected,
                        message: format!("No such price: '{price}'"),
                        stripe_code: Some("resource_missing".into()),
                        decline_code: None,
                    })
                })
        })
        .boxed()
    }

    fn find_price<'a>(
        &'a self,
        lookup_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StripeFailure>> {
        self.read(format!("find_price {lookup_key}"), move |world| {
            Ok(world
                .prices
                .iter()
                .find(|(_, (key, _))| key.as_deref() == Some(lookup_key))
                .map(|(id, (_, product))| (id.clone(), product.clone())))
        })
        .boxed()
    }

    fn create_price<'a>(
        &'a self,
        spec: &'a PriceSpec<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(String, String), StripeFailure>> {
        let lookup_key = spec.lookup_key.to_owned();
        async move {
            let effect: Effect = Box::new(move |world| {
                if world
                    .prices
                    .values()
                    .any(|(key, _)| key.as_deref() == Some(lookup_key.as_str()))
                {
                    return refused(
                        FailureCode::StripeRejected,
                        "A price with this lookup_key already exists",
                        None,
                    );
                }
                let id = world.id("price");
                let product = world.id("prod");
                world
                    .prices
                    .insert(id.clone(), (Some(lookup_key), product.clone()));
                Reply::Price(id, product)
            });
            let amount = spec.unit_amount.to_string();
            let params = params(&[
                ("currency", spec.currency),
                ("unit_amount", &amount),
                ("lookup_key", spec.lookup_key),
                ("product_data[name]", spec.product_name),
                ("recurring[interval]", spec.interval),
            ]);
            match self
                .write(
                    format!("create_price {}", spec.lookup_key),
                    key,
                    params,
                    effect,
                )
                .await?
            {
                Reply::Price(price, product) => Ok((price, product)),
                other => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn find_subscription<'a>(
        &'a self,
        customer: &'a str,
        pay_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Subscribed>, StripeFailure>> {
        self.read(
            format!("find_subscription {pay_id} of {customer}"),
            move |world| {
                Ok(world
                    .subscriptions
                    .iter()
                    .rev()
                    .find(|sub| sub.customer == customer && sub.pay_id == pay_id)
                    .map(Subscription::subscribed))
            },
        )
        .boxed()
    }

    fn create_subscription<'a>(
        &'a self,
        new: &'a NewSubscription<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Subscribed, WriteFailure>> {
        let customer = new.customer.to_owned();
        let price = new.price.to_owned();
        let method = new.payment_method.to_owned();
        let pay_id = new.metadata.get("payId").cloned().unwrap_or_default();
        let partner = new.metadata.get("partnerCode").cloned().unwrap_or_default();
        async move {
            let effect: Effect = Box::new(move |world| {
                if !world.customers.contains_key(&customer) {
                    return refused(
                        FailureCode::StripeRejected,
                        "No such customer",
                        Some("resource_missing"),
                    );
                }
                if world.methods.get(&method) != Some(&customer) {
                    return refused(
                        FailureCode::PaymentMethodUnavailable,
                        "The payment method is not attached to this customer",
                        Some("resource_missing"),
                    );
                }
                let Some((_, product)) = world.prices.get(&price).cloned() else {
                    return refused(
                        FailureCode::StripeRejected,
                        "No such price",
                        Some("resource_missing"),
                    );
                };
                let id = world.id("sub");
                let now = world.now_seconds();
                let sub = Subscription {
                    id,
                    customer,
                    pay_id,
                    partner,
                    product,
                    created: Instant::now(),
                    created_at: now,
                    status: "active".into(),
                    cancel_at_period_end: false,
                    current_period_end: now + PERIOD_SECONDS,
                    canceled_at: None,
                };
                let reply = Reply::Sub(sub.subscribed());
                world.subscriptions.push(sub);
                reply
            });
            let mut params = params(&[
                ("customer", new.customer),
                ("items[0][price]", new.price),
                ("default_payment_method", new.payment_method),
                ("payment_behavior", new.payment_behavior),
            ]);
            // A HashMap's order is not the request's: compared as parameters, by name.
            for (name, value) in &new.metadata {
                params.insert(format!("metadata[{name}]"), value.clone());
            }
            let pay_id = new.metadata.get("payId").cloned().unwrap_or_default();
            match self
                .keyed_write(format!("create_subscription {pay_id}"), key, params, effect)
                .await?
            {
                Reply::Sub(subscribed) => Ok(subscribed),
                other => Err(unexpected(other).into()),
            }
        }
        .boxed()
    }

    fn cancel_at_period_end<'a>(
        &'a self,
        subscription: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SubscriptionState, StripeFailure>> {
        self.cancel(subscription, key, false).boxed()
    }

    fn cancel_now<'a>(
        &'a self,
        subscription: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SubscriptionState, StripeFailure>> {
        self.cancel(subscription, key, true).boxed()
    }

    fn subscription_state<'a>(
        &'a self,
        subscription: &'a str,
    ) -> BoxFuture<'a, Result<SubscriptionState, StripeFailure>> {
        self.read(format!("retrieve {subscription}"), move |world| {
            world
                .subscription(subscription)
                .map(Subscription::state)
                .ok_or_else(|| no_such_subscription(subscription))
        })
        .boxed()
    }

    fn subscription_metadata<'a>(
        &'a self,
        subscription: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, String>, StripeFailure>> {
        self.read(format!("metadata of {subscription}"), move |world| {
            world
                .subscription(subscription)
                .map(|sub| {
                    HashMap::from([
                        ("payId".to_owned(), sub.pay_id.clone()),
                        ("partnerCode".to_owned(), sub.partner.clone()),
                    ])
                })
                .ok_or_else(|| no_such_subscription(subscription))
        })
        .boxed()
    }

    fn search_subscription<'a>(
        &'a self,
        partner_code: &'a str,
        pay_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FoundSubscription>, StripeFailure>> {
        self.read(format!("search {partner_code}/{pay_id}"), move |world| {
            let indexed = Instant::now().checked_sub(world.search_lag);
            // The oldest, as the gateway picks, among those the index has caught up with.
            Ok(world
                .subscriptions
                .iter()
                .filter(|sub| sub.pay_id == pay_id && sub.partner == partner_code)
                .filter(|sub| indexed.is_none_or(|indexed| sub.created <= indexed))
                .min_by_key(|sub| sub.created_at)
                .map(|sub| FoundSubscription {
                    customer: sub.customer.clone(),
                    created: sub.created_at,
                    subscribed: sub.subscribed(),
                    state: sub.state(),
                }))
        })
        .boxed()
    }

    fn customer_mark<'a>(
        &'a self,
        partner_code: &'a str,
        email: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StripeFailure>> {
        self.read(format!("customer_mark {email} {name}"), move |world| {
            Ok(world.partner_customers(partner_code, email).find_map(|id| {
                world
                    .customer_metadata
                    .get(&id)
                    .and_then(|metadata| metadata.get(name).cloned())
            }))
        })
        .boxed()
    }

    fn mark_customer<'a>(
        &'a self,
        mark: &'a CustomerMark<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StripeFailure>> {
        async move {
            // As the gateway: list the person's customers, then update the newest or create one.
            let newest = self
                .read(format!("find_customer {}", mark.email), |world| {
                    Ok(world
                        .partner_customers(mark.partner_code, mark.email)
                        .next())
                })
                .await?;
            let (name, value) = (mark.name.to_owned(), mark.value.to_owned());
            let (what, key, params, effect): (String, String, Params, Effect) = match newest {
                Some(id) => {
                    let params = params(&[
                        ("customer", id.as_str()),
                        (format!("metadata[{name}]").as_str(), mark.value),
                    ]);
                    let effect: Effect = Box::new(move |world| {
                        if !world.customers.contains_key(&id) {
                            return refused(
                                FailureCode::StripeRejected,
                                "No such customer",
                                Some("resource_missing"),
                            );
                        }
                        world
                            .customer_metadata
                            .entry(id)
                            .or_default()
                            .insert(name, value);
                        Reply::Marked
                    });
                    (
                        format!("mark {}", mark.email),
                        key.to_owned(),
                        params,
                        effect,
                    )
                }
                None => {
                    let params = params(&[
                        ("email", mark.email),
                        ("metadata[partnerCode]", mark.partner_code),
                        (format!("metadata[{name}]").as_str(), mark.value),
                    ]);
                    let (partner, mail) = (mark.partner_code.to_owned(), mark.email.to_owned());
                    let effect: Effect = Box::new(move |world| {
                        let id = world.id("cus");
                        world.customers.insert(id.clone(), (partner, mail));
                        world
                            .customer_metadata
                            .entry(id)
                            .or_default()
                            .insert(name, value);
                        Reply::Marked
                    });
                    let what = format!("create_customer {} with a mark", mark.email);
                    (what, format!("{key}-cus"), params, effect)
                }
            };
            match self.write(what, &key, params, effect).await? {
                Reply::Marked => Ok(()),
                other => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn invoice_payment_error<'a>(
        &'a self,
        invoice: &'a str,
        _payment_intent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<PaymentError>, StripeFailure>> {
        // The twin makes no renewal invoices yet: no payment carries an error.
        self.read(format!("invoice payments of {invoice}"), |_| Ok(None))
            .boxed()
    }
}

impl MemoryStripe {
    /// A cancel under its idempotency key: now (`DELETE /v1/subscriptions/:id`) or at the
    /// period's end (`cancel_at_period_end=true`). Either on a canceled subscription is refused,
    /// as Stripe refuses it.
    async fn cancel(
        &self,
        subscription: &str,
        key: &str,
        now: bool,
    ) -> Result<SubscriptionState, StripeFailure> {
        let id = subscription.to_owned();
        let effect: Effect = Box::new(move |world| {
            let at = world.now_seconds();
            let Some(sub) = world.subscription_mut(&id) else {
                return refused(
                    FailureCode::StripeRejected,
                    "No such subscription",
                    Some("resource_missing"),
                );
            };
            if sub.status == STATUS_CANCELED {
                return refused(
                    FailureCode::StripeRejected,
                    "This subscription is canceled",
                    None,
                );
            }
            let was_ending = sub.cancel_at_period_end;
            if now {
                sub.status = STATUS_CANCELED.into();
                sub.canceled_at = Some(at);
            } else {
                sub.cancel_at_period_end = true;
            }
            let reply = Reply::State(sub.state());
            let sub = sub.clone();
            if now {
                world.emit("customer.subscription.deleted", &sub, None);
            } else if !was_ending {
                world.emit(
                    "customer.subscription.updated",
                    &sub,
                    Some(serde_json::json!({ "cancel_at_period_end": false })),
                );
            }
            reply
        });
        let (what, params) = if now {
            (format!("cancel_now {subscription}"), Params::new())
        } else {
            (
                format!("cancel_at_period_end {subscription}"),
                params(&[("cancel_at_period_end", "true")]),
            )
        };
        match self.write(what, key, params, effect).await? {
            Reply::State(state) => Ok(state),
            other => Err(unexpected(other)),
        }
    }
}

/// A subscription as Stripe renders it (API version basil and later: the period on its item),
/// with every field async-stripe's `Subscription` reads.
fn subscription_json(sub: &Subscription) -> serde_json::Value {
    let start = sub.current_period_end - PERIOD_SECONDS;
    let price = serde_json::json!({
        "id": "price_basic", "object": "price", "active": true, "billing_scheme": "per_unit",
        "created": sub.created_at, "currency": "usd", "custom_unit_amount": null,
        "livemode": false, "lookup_key": null, "metadata": {}, "nickname": null,
        "product": sub.product,
        "recurring": {"interval": "month", "interval_count": 1, "meter": null,
                      "usage_type": "licensed"},
        "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
        "type": "recurring", "unit_amount": 999, "unit_amount_decimal": "999",
    });
    let plan = serde_json::json!({
        "id": "price_basic", "object": "plan", "active": true, "amount": 999,
        "amount_decimal": "999", "billing_scheme": "per_unit", "created": sub.created_at,
        "currency": "usd", "interval": "month", "interval_count": 1, "livemode": false,
        "metadata": {}, "meter": null, "nickname": null, "product": sub.product,
        "tiers_mode": null, "transform_usage": null, "trial_period_days": null,
        "usage_type": "licensed",
    });
    let item = serde_json::json!({
        "id": format!("si_{}", sub.id), "object": "subscription_item", "billing_thresholds": null,
        "created": sub.created_at, "current_period_end": sub.current_period_end,
        "current_period_start": start, "discounts": [], "metadata": {}, "plan": plan,
        "price": price, "quantity": 1, "subscription": sub.id, "tax_rates": [],
    });
    let mut value = serde_json::json!({
        "id": sub.id, "object": "subscription", "application": null,
        "application_fee_percent": null,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
        "billing_cycle_anchor": start, "billing_cycle_anchor_config": null,
        "billing_mode": {"type": "classic", "updated_at": null}, "billing_schedules": [],
        "billing_thresholds": null, "cancel_at": null,
        "cancel_at_period_end": sub.cancel_at_period_end, "canceled_at": sub.canceled_at,
        "cancellation_details": {"comment": null, "feedback": null,
            "reason": sub.canceled_at.map(|_| "cancellation_requested")},
        "collection_method": "charge_automatically", "created": sub.created_at,
        "currency": "usd", "customer": sub.customer, "days_until_due": null,
        "default_payment_method": null, "default_source": null, "default_tax_rates": [],
        "description": null, "discounts": [],
        "ended_at": sub.canceled_at,
    });
    let more = serde_json::json!({
        "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
        "items": {"object": "list", "data": [item], "has_more": false, "total_count": 1,
                  "url": format!("/v1/subscription_items?subscription={}", sub.id)},
        "latest_invoice": null, "livemode": false,
        "metadata": {"payId": sub.pay_id, "partnerCode": sub.partner},
        "next_pending_invoice_item_invoice": null, "on_behalf_of": null,
        "pause_collection": null,
        "payment_settings": {"payment_method_options": null, "payment_method_types": null,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": null, "pending_setup_intent": null,
        "pending_update": null, "schedule": null, "start_date": sub.created_at,
        "status": sub.status, "test_clock": null, "transfer_data": null, "trial_end": null,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": null,
    });
    if let (serde_json::Value::Object(value), serde_json::Value::Object(more)) = (&mut value, more)
    {
        value.extend(more);
    }
    value
}

fn no_such_subscription(id: &str) -> StripeFailure {
    StripeFailure::Permanent(FailureDetail {
        code: FailureCode::StripeRejected,
        message: format!("No such subscription: '{id}'"),
        stripe_code: Some("resource_missing".into()),
        decline_code: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription() -> Subscription {
        Subscription {
            id: "sub_000001".into(),
            customer: "cus_000001".into(),
            pay_id: "pay-1".into(),
            partner: "partner1".into(),
            product: "prod_basic".into(),
            created: Instant::now(),
            created_at: EPOCH_SECONDS,
            status: STATUS_CANCELED.into(),
            cancel_at_period_end: true,
            current_period_end: EPOCH_SECONDS + PERIOD_SECONDS,
            canceled_at: Some(EPOCH_SECONDS + 5),
        }
    }

    #[test]
    fn the_twin_s_subscription_reads_as_stripe_s_own_type() {
        let text = subscription_json(&subscription()).to_string();
        let parsed = miniserde::json::from_str::<stripe_shared::Subscription>(&text);
        let parsed = parsed.expect("a Subscription async-stripe reads");
        assert_eq!(
            parsed.metadata.get("payId").map(String::as_str),
            Some("pay-1")
        );
        assert!(parsed.cancel_at_period_end);
    }

    #[test]
    fn the_twin_s_events_read_as_stripe_s_own_type() {
        let mut world = MemoryStripe::new(1, Duration::from_secs(2), Trace::default());
        let sub = subscription();
        {
            let mut state = world.world();
            state.emit("customer.subscription.deleted", &sub, None);
        }
        let events = world.take_events();
        assert_eq!(events.len(), 1);
        let text = String::from_utf8(events[0].1.clone()).expect("UTF-8");
        let event = miniserde::json::from_str::<stripe_shared::Event>(&text);
        assert!(event.is_ok(), "{text}");
        world = world.named("again");
        assert!(world.take_events().is_empty());
    }
}
