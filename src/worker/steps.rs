//! The Stripe steps of one job, and the rules that keep one payId to one subscription:
//!
//! - a create is recorded in the store ([`CreateSent`]) before it is sent;
//! - no create goes out without a lookup first, unless this payId has never had one sent;
//! - the idempotency key moves to a new generation only when a lookup has shown the
//!   subscription absent *and* the last create is older than `key_switch_after`, so no earlier
//!   request can still be in flight at Stripe (it would create a second subscription);
//! - an outcome that is still unknown when the attempts run out is never reported `failed`: the
//!   job is parked for reconciliation, where it is only ever looked up.
//!
//! A payId authorized before (`/stripeSubAuthorization`, docs/partners.md#before-the-request-stripesubauthorization) skips the customer
//! steps on its first create: the authorization made the customer and the partner's app put
//! the method on it. If Stripe refuses that create because the method is not on the
//! customer, nothing was made under its key, and the job attaches the method and creates
//! under the next generation's key at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use time::format_description::well_known::Rfc3339;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::creation::{Decision, JobContext};
use super::ports::{CreateSent, Incoming};
use crate::config::PlanSettings;
use crate::domain::authorization::{customer_key, short_hash};
use crate::domain::{FailureCode, FailureDetail, Job};
use crate::stripe::{
    Attached, CreatedCustomer, NewCustomer, NewSubscription, PriceSpec, StripeFailure, Subscribed,
};

/// Quick retries of one Stripe step, inside one attempt.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub step_retries: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Random jitter on the delays; off in the deterministic simulation.
    pub jitter: bool,
    /// Cancelled when the worker stops: a pause between retries ends at once, and the job goes
    /// to its delayed-retry queue instead of holding up the drain.
    pub stop: CancellationToken,
}

impl RetryPolicy {
    /// Waits `delay`, or less if the worker stops; false when it stopped.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.step_retries as usize);
        if self.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }
}

/// What a job needs besides its ports: configuration and the process's price cache.
pub struct JobSettings {
    pub plans: BTreeMap<String, PlanSettings>,
    pub payment_behavior: String,
    pub retry: RetryPolicy,
    pub lock_ttl: Duration,
    /// How old the last create must be before a new key generation may be used: longer than a
    /// request can stay in flight at Stripe (checked against `stripe.request_timeout_ms`).
    pub key_switch_after: Duration,
    /// How long after its acceptance a job may still end `STRIPE_UNAVAILABLE`-free: until then
    /// an outage parks it and it is tried again; after it, nothing new is sent for it.
    pub give_up_after: Duration,
    /// The broker's delivery limit: a job handed out this often ends here, before the broker
    /// would dead-letter it without a result.
    pub delivery_limit: u32,
    /// Prices never change once made: resolved once per lookup key and process, by one job
    /// while the others wait (single flight).
    pub prices: Mutex<HashMap<String, Arc<OnceCell<PriceIds>>>>,
}

/// A price and its product: (price id, product id).
pub type PriceIds = (String, String);

/// Why the steps stopped short of a subscription or a refusal.
enum Stop {
    Stripe(StripeFailure),
    /// Stripe refused the subscription create itself.
    Refused(FailureDetail),
    /// The store could not record a create: nothing was sent.
    Store(String),
}

impl From<StripeFailure> for Stop {
    fn from(failure: StripeFailure) -> Self {
        Stop::Stripe(failure)
    }
}

/// A subscription made (or found) for the job.
pub(super) struct Made {
    pub customer: String,
    pub pay_method: String,
    pub subscription: Subscribed,
}

/// Runs the job's Stripe steps under the payId's lock; `created` is what the store remembers.
pub(super) async fn run(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
    created: Option<CreateSent>,
) -> Decision {
    let pay_id = job.pay_id.as_str();
    // Past `give_up_after`, nothing new is sent: a stale copy (a dead letter replayed weeks
    // later) only looks up, and ends `failed` once that shows nothing was made.
    let given_up = given_up(ctx, job);
    // A create was sent before (by this job or a copy of it): settle by lookup first.
    let mut generation = 0;
    // Whether a create sent earlier may still land at Stripe: then no refusal is final yet.
    let mut in_flight = false;
    if let Some(sent) = &created {
        let lookup = with_retries(&ctx.settings.retry, || {
            ctx.ports.stripe.find_subscription(&sent.customer, pay_id)
        })
        .await;
        match lookup {
            Ok(Some(subscription)) => {
                // The lookup reads the method's type off the subscription; a create sent for
                // an authorized payId recorded none (no call had told it).
                let pay_method = if subscription.pay_method.is_empty() {
                    sent.pay_method.clone()
                } else {
                    subscription.pay_method.clone()
                };
                return Decision::Made(Made {
                    customer: sent.customer.clone(),
                    pay_method,
                    subscription,
                });
            }
            Ok(None) => {
                in_flight = ctx.ports.clock.now_ms().saturating_sub(sent.sent_at_ms)
                    < millis(ctx.settings.key_switch_after);
                if in_flight && (incoming.parked || given_up) {
                    return Decision::Park("the last create may still be in flight".into());
                }
                if given_up {
                    // Absent, with no earlier request still in flight: no subscription was
                    // made, and none will be.
                    return Decision::Failed(unavailable("no subscription was made"));
                }
                // A parked job whose create is proved absent runs again, under a new key.
                generation = if in_flight {
                    sent.generation
                } else {
                    sent.generation + 1
                };
            }
            Err(failure) => return stopped(Stop::Stripe(failure), true, true),
        }
    } else if given_up {
        // Nothing was ever sent for this payId, and now nothing will be.
        return Decision::Failed(unavailable("no subscription was made"));
    }
    let mut recorded = created.is_some();
    match create(
        ctx,
        job,
        incoming,
        token,
        created.as_ref(),
        generation,
        &mut recorded,
    )
    .await
    {
        Ok(made) => Decision::Made(made),
        Err(stop) => stopped(stop, recorded, in_flight),
    }
}

/// What a stop means for the job. `create_sent`: a create was recorded, so a subscription may
/// exist; `in_flight`: an earlier create may still land at Stripe.
fn stopped(stop: Stop, create_sent: bool, in_flight: bool) -> Decision {
    match stop {
        // Stripe's answer to the create itself: under this key nothing was made, and no other
        // key can still be in flight (a new generation waits until none can).
        Stop::Refused(detail) => Decision::Failed(detail),
        // A refusal of an earlier step is final unless an earlier create may still land.
        Stop::Stripe(StripeFailure::Permanent(detail)) if in_flight => {
            Decision::Park(detail.message)
        }
        Stop::Stripe(StripeFailure::Permanent(detail)) => Decision::Failed(detail),
        // Not Stripe's fault: no attempt is spent, and the consumer pauses until Redis is back.
        Stop::Stripe(StripeFailure::BudgetUnavailable(reason)) | Stop::Store(reason) => {
            Decision::HandBack(reason)
        }
        Stop::Stripe(failure) => Decision::Retry {
            reason: failure.to_string(),
            create_sent,
        },
    }
}

/// Whether the job is older than `give_up_after` (by its acceptance, on the worker's clock).
pub(super) fn given_up(ctx: &JobContext, job: &Job) -> bool {
    let Ok(accepted) = time::OffsetDateTime::parse(&job.accepted_at, &Rfc3339) else {
        // An acceptance time that does not read cannot date the job: it is not given up.
        return false;
    };
    let accepted_ms = u64::try_from(accepted.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    ctx.ports.clock.now_ms().saturating_sub(accepted_ms) >= millis(ctx.settings.give_up_after)
}

fn unavailable(message: &str) -> FailureDetail {
    FailureDetail {
        code: FailureCode::StripeUnavailable,
        message: format!("Stripe could not be reached in time: {message}"),
        stripe_code: None,
        decline_code: None,
    }
}

async fn create(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
    created: Option<&CreateSent>,
    generation: u32,
    recorded: &mut bool,
) -> Result<Made, Stop> {
    // Customer and price keys move on with the attempts (Stripe replays a stored 500 for a
    // key): a second customer or price is harmless, and both are found by lookup first.
    let suffix = format!("g{}", incoming.attempt.saturating_sub(2));
    // A payId authorized before (docs/partners.md#before-the-request-stripesubauthorization) has its customer, and the method the app
    // confirmed is on it: the subscription is the only call. Only for a payId that never had
    // a create sent, so a copy of a job that fell back below never takes this way again.
    let authorized = match created {
        None => authorized_payer(ctx, job).await,
        Some(_) => None,
    };
    let mut shortcut = authorized.is_some();
    let mut payer = match authorized {
        Some(payer) => payer,
        None => payer_step(ctx, job, created, &suffix).await?,
    };
    let (price, _product) = price_step(ctx, job, &suffix).await?;
    // A payId whose creates began before payIds were scoped by partner keeps its old keys.
    let scoped = created.is_none_or(|sent| sent.scoped);
    let mut generation = generation;
    loop {
        let choice = KeyChoice { generation, scoped };
        match subscribe(ctx, job, token, &payer, &price, choice, recorded).await {
            // The method is not on the authorized customer after all (the app confirmed
            // another SetupIntent, or none): Stripe's answer made nothing, and no other key
            // is in flight, so the next generation is free. Attach as for any job, then
            // create under that generation's key.
            Err(Stop::Refused(detail))
                if shortcut && detail.code == FailureCode::PaymentMethodUnavailable =>
            {
                tracing::info!(pay_id = %job.pay_id, "the authorized customer lacks the method; attaching it");
                shortcut = false;
                generation += 1;
                payer = payer_step(ctx, job, None, &suffix).await?;
            }
            Err(stop) => return Err(stop),
            Ok(subscription) => {
                let pay_method = if subscription.pay_method.is_empty() {
                    payer.kind
                } else {
                    subscription.pay_method.clone()
                };
                return Ok(Made {
                    customer: payer.customer,
                    pay_method,
                    subscription,
                });
            }
        }
    }
}

/// The payer of an authorized payId: the authorization's customer, if it was made for this
/// job's email, with the job's method taken as attached (the create checks it). A store that
/// cannot tell costs the job the customer steps, nothing else.
async fn authorized_payer(ctx: &JobContext, job: &Job) -> Option<Payer> {
    let customer = ctx
        .ports
        .store
        .authorized_customer(&job.pay_key(), job.email.as_str())
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "authorization not read; taking the customer steps");
            None
        })?;
    Some(Payer {
        customer,
        method: job.pm_id.to_string(),
        kind: String::new(),
    })
}

/// The idempotency key a create goes under: its generation, and whether the key is scoped by
/// partner (false only for a payId whose creates began before payIds were).
#[derive(Debug, Clone, Copy)]
struct KeyChoice {
    generation: u32,
    scoped: bool,
}

/// Creates the subscription under `choice`'s key, each send recorded before it goes.
async fn subscribe(
    ctx: &JobContext,
    job: &Job,
    token: &str,
    payer: &Payer,
    price: &str,
    choice: KeyChoice,
    recorded: &mut bool,
) -> Result<Subscribed, Stop> {
    let KeyChoice { generation, scoped } = choice;
    let pay_id = job.pay_id.as_str();
    let pay_key = job.pay_key();
    let stripe = &ctx.ports.stripe;
    // Every send of the create is recorded before it goes, the quick retries below included:
    // a copy measures `key_switch_after` from the last send, and a retry sent seconds after
    // the first can land a whole timeout later (found by the simulation, seed 20262893).
    let record = || async {
        let sent = CreateSent {
            generation,
            sent_at_ms: ctx.ports.clock.now_ms(),
            customer: payer.customer.clone(),
            pay_method: payer.kind.clone(),
            scoped,
        };
        let held = ctx
            .ports
            .store
            .record_create(&pay_key, token, &sent)
            .await
            .map_err(|e| Stop::Store(e.to_string()))?;
        if held {
            Ok(())
        } else {
            // The lock was lost: the copy holding it may have found no record and be ending
            // the job `failed`; creating now would make that a lie. Nothing was sent.
            Err(Stop::Store(
                "the payId's lock was lost before the create".into(),
            ))
        }
    };
    record().await?;
    *recorded = true;

    let metadata = HashMap::from([
        ("payId".to_owned(), pay_id.to_owned()),
        ("partnerCode".to_owned(), job.partner_code.to_string()),
        ("plan_id".to_owned(), job.plan_id.to_string()),
    ]);
    // The subscription's own default payment method: it charges with this one, whatever the
    // customer's default is.
    let new = NewSubscription {
        customer: &payer.customer,
        price,
        payment_method: &payer.method,
        payment_behavior: &ctx.settings.payment_behavior,
        metadata,
    };
    let key = crate::domain::job::subscription_key(&pay_key, generation, scoped);
    create_or_settle_recorded(
        &ctx.settings.retry,
        record,
        || stripe.create_subscription(&new, &key),
        || stripe.find_subscription(&payer.customer, pay_id),
    )
    .await
    .map_err(|stop| match stop {
        Stop::Stripe(StripeFailure::Permanent(detail)) => Stop::Refused(detail),
        other => other,
    })
}

/// Who pays: the customer, and the id of the payment method attached to it.
struct Payer {
    customer: String,
    method: String,
    /// The method's type, when a call has told it (the subscription's answer tells it too).
    kind: String,
}

/// A customer made by this job, or one that a lookup found.
enum Customer {
    Created(CreatedCustomer),
    Existing(String),
}

/// The customer of (`partnerCode`, `email`) with the job's payment method attached. A customer
/// we know (remembered in Redis, or found by listing by email): attach the method, one call. A
/// new one: create it with the method attached and made its default, one call.
async fn payer_step(
    ctx: &JobContext,
    job: &Job,
    created: Option<&CreateSent>,
    suffix: &str,
) -> Result<Payer, Stop> {
    let partner = job.partner_code.as_str();
    let email = job.email.as_str();
    let stripe = &ctx.ports.stripe;
    let store = &ctx.ports.store;
    let retry = &ctx.settings.retry;

    // The customer a create was sent for stays the customer: the lookup lists its subscriptions.
    let known = match created {
        Some(sent) => Some(sent.customer.clone()),
        None => store
            .customer_of(partner, email)
            .await
            .map_err(|e| Stop::Store(e.to_string()))?,
    };
    let find = || stripe.find_customer(partner, email);
    let customer = match known {
        Some(customer) => Customer::Existing(customer),
        None => match with_retries(retry, find).await? {
            Some(found) => Customer::Existing(found),
            None => {
                // One person, one customer: the key comes from (partnerCode, email), not from
                // the payId. A second job of the same person with another method gets Stripe's
                // idempotency error, an unknown outcome: the lookup then finds the customer.
                let key = customer_key(partner, email, suffix);
                let new = NewCustomer {
                    partner_code: partner,
                    email,
                    payment_method: job.pm_id.as_str(),
                };
                create_or_settle(
                    retry,
                    || async {
                        stripe
                            .create_customer(&new, &key)
                            .await
                            .map(Customer::Created)
                    },
                    || async { find().await.map(|found| found.map(Customer::Existing)) },
                )
                .await?
            }
        },
    };
    let payer = match customer {
        Customer::Created(made) => Payer {
            customer: made.id,
            method: made.payment_method,
            kind: String::new(),
        },
        Customer::Existing(customer) => {
            let key = format!("ar-{}-attach-{suffix}", job.pay_key());
            let attached: Attached = with_retries(retry, || {
                stripe.attach_payment_method(job.pm_id.as_str(), &customer, &key)
            })
            .await?;
            Payer {
                customer,
                method: attached.id,
                kind: attached.kind,
            }
        }
    };
    if created.is_none() {
        // Remembered so the next job of this person skips the list by email. A Redis hiccup
        // here costs that job one call, nothing more.
        if let Err(error) = store
            .remember_customer(partner, email, &payer.customer)
            .await
        {
            tracing::warn!(%error, "customer not remembered");
        }
    }
    Ok(payer)
}

/// How long one worker may hold the lock on creating a price.
const PRICE_LOCK_TTL: Duration = Duration::from_secs(10);
/// How often a worker waiting for another's price creation looks again.
const PRICE_WAIT: Duration = Duration::from_millis(200);

async fn price_step(ctx: &JobContext, job: &Job, suffix: &str) -> Result<(String, String), Stop> {
    let plan = ctx.settings.plans.get(job.plan_id.as_str());
    let interval = plan.map(|p| p.interval.as_str()).unwrap_or("month");
    let configured = plan.and_then(|p| p.price.as_deref());
    let lookup_key = match configured {
        Some(price) => format!("configured:{price}"),
        None => format!(
            "{}:{}:{}:{}",
            job.plan_id, job.amount_minor, job.pay_currency, interval
        ),
    };
    // Prices never change once made: resolved once per lookup key and process, and the jobs
    // that want it meanwhile wait for that one resolution (single flight).
    let cell = match ctx.settings.prices.lock() {
        Ok(mut prices) => prices.entry(lookup_key.clone()).or_default().clone(),
        Err(_) => Arc::default(),
    };
    let price = cell
        .get_or_try_init(|| async {
            match configured {
                Some(price) => {
                    let stripe = &ctx.ports.stripe;
                    let product =
                        with_retries(&ctx.settings.retry, || stripe.price_product(price)).await?;
                    Ok((price.to_owned(), product))
                }
                None => find_or_create_price(ctx, job, &lookup_key, interval, suffix).await,
            }
        })
        .await?;
    Ok(price.clone())
}

/// The price of `lookup_key`, created if missing by one worker of all those that want it: the
/// others wait for the short Redis lock to go and find the price made.
///
/// Stripe calls: one lookup when the price exists; when it does not, a lookup and the create
/// for the worker that makes it, and at most two lookups for each worker that waits (the
/// waiting itself is on Redis, so a slow create costs them nothing at Stripe).
async fn find_or_create_price(
    ctx: &JobContext,
    job: &Job,
    lookup_key: &str,
    interval: &str,
    suffix: &str,
) -> Result<(String, String), Stop> {
    let stripe = &ctx.ports.stripe;
    let store = &ctx.ports.store;
    let retry = &ctx.settings.retry;
    let find = || stripe.find_price(lookup_key);
    let token = format!("{}-{}", job.pay_key(), ctx.ports.clock.now_ms());
    if let Some(found) = with_retries(retry, find).await? {
        return Ok(found);
    }
    let waits = PRICE_LOCK_TTL.as_millis() / PRICE_WAIT.as_millis();
    let mut waited = false;
    for _ in 0..=waits {
        let locked = store
            .lock_price(lookup_key, &token, PRICE_LOCK_TTL)
            .await
            .map_err(|e| Stop::Store(e.to_string()))?;
        if !locked {
            // Another worker is creating it: wait on Redis, not on Stripe's rate limit.
            waited = true;
            if !retry.pause(PRICE_WAIT).await {
                break;
            }
            continue;
        }
        // Under the lock no one else creates this price. After a wait, the holder has most
        // likely made it: look before creating.
        let made = async {
            if waited && let Some(found) = with_retries(retry, find).await? {
                return Ok(found);
            }
            // One plan, one price: the key comes from the lookup key.
            let key = format!("ar-price-{}-{suffix}", short_hash(lookup_key));
            let spec = PriceSpec {
                lookup_key,
                product_name: job.plan_id.as_str(),
                unit_amount: job.amount_minor,
                currency: &job.pay_currency,
                interval,
            };
            create_or_settle(retry, || stripe.create_price(&spec, &key), find).await
        }
        .await;
        if let Err(error) = store.unlock_price(lookup_key, &token).await {
            tracing::warn!(%error, "price lock not released; it expires by itself");
        }
        return Ok(made?);
    }
    Err(Stop::Stripe(StripeFailure::Transient(
        "another worker is still creating the price".into(),
    )))
}

/// Runs a read, or an idempotent write, with quick retries while its failure is transient.
async fn with_retries<T, F, Fut>(policy: &RetryPolicy, mut call: F) -> Result<T, StripeFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StripeFailure>>,
{
    let mut delays = policy.delays();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            // An idempotent write with an unknown outcome is safe to send again: the same key
            // gets Stripe's stored answer.
            Err(failure @ (StripeFailure::Transient(_) | StripeFailure::Unknown(_))) => {
                match delays.next() {
                    Some(delay) if policy.pause(delay).await => {}
                    _ => return Err(failure),
                }
            }
            Err(permanent) => return Err(permanent),
        }
    }
}

/// Creates an object; when the outcome of a try is unknown, looks it up before trying again
/// (with the same key, which Stripe answers from its record), so nothing is ever created twice
/// on the strength of a lost answer.
async fn create_or_settle<T, C, CF, L, LF>(
    policy: &RetryPolicy,
    create: C,
    lookup: L,
) -> Result<T, StripeFailure>
where
    C: FnMut() -> CF,
    CF: Future<Output = Result<T, StripeFailure>>,
    L: FnMut() -> LF,
    LF: Future<Output = Result<Option<T>, StripeFailure>>,
{
    create_or_settle_recorded(policy, || async { Ok(()) }, create, lookup).await
}

/// [`create_or_settle`], with `before_retry` run before every try but the first: a try that
/// must be recorded before it goes (the subscription's create) records itself there, and an
/// error from it ends the tries with nothing sent.
async fn create_or_settle_recorded<T, E, B, BF, C, CF, L, LF>(
    policy: &RetryPolicy,
    mut before_retry: B,
    mut create: C,
    mut lookup: L,
) -> Result<T, E>
where
    E: From<StripeFailure>,
    B: FnMut() -> BF,
    BF: Future<Output = Result<(), E>>,
    C: FnMut() -> CF,
    CF: Future<Output = Result<T, StripeFailure>>,
    L: FnMut() -> LF,
    LF: Future<Output = Result<Option<T>, StripeFailure>>,
{
    let mut delays = policy.delays();
    let mut first = true;
    loop {
        if !first {
            before_retry().await?;
        }
        first = false;
        let failure = match create().await {
            Ok(created) => return Ok(created),
            Err(StripeFailure::Unknown(reason)) => match lookup().await {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => StripeFailure::Unknown(reason),
                Err(budget @ StripeFailure::BudgetUnavailable(_)) => return Err(budget.into()),
                // A lookup that fails, even for good, says nothing of the create: still unknown.
                Err(_) => StripeFailure::Unknown(reason),
            },
            Err(StripeFailure::Transient(reason)) => StripeFailure::Transient(reason),
            Err(permanent) => return Err(permanent.into()),
        };
        match delays.next() {
            Some(delay) if policy.pause(delay).await => {}
            _ => return Err(failure.into()),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
