//! One job, start to end: `process(job, delivery, ctx) -> Outcome`. A plain async function:
//! the consumer loop decides what to do with the outcome, and tests can call it directly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use md5::{Digest, Md5};
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::config::PlanSettings;
use crate::domain::outcome::STATUS_FAILED;
use crate::domain::{FailureDetail, FinalResult, Job};
use crate::store::{JobStart, Store, StoreError};
use crate::stripe::{Attached, Gateway, NewSubscription, PriceSpec, StripeFailure, Subscribed};

/// What the consumer does with a job after `process`.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The job is done: store this result, publish its event, ack.
    Final(FinalResult),
    /// A worker had finished this payId already: republish its event, ack.
    Settled(FinalResult),
    /// Stripe kept failing for now: try again through a delayed-retry queue.
    RetryLater(String),
    /// Another worker holds this payId: wait in the lock-retry queue, no attempt spent.
    Locked,
    /// This worker cannot work now (Redis is away, or it is stopping): give the job back.
    HandBack(String),
}

/// How the message reached us.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryInfo {
    /// 1 for the first delivery, +1 for each pass through a delayed-retry queue.
    pub attempt: u32,
    /// RabbitMQ delivered it before (a worker died or the channel broke holding it).
    pub redelivered: bool,
}

/// Quick retries of one Stripe step.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub step_retries: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .with_max_times(self.step_retries as usize)
            .build()
    }
}

/// Everything a job needs, shared by all jobs of a worker.
pub struct JobContext {
    pub gateway: Gateway,
    pub store: Store,
    pub plans: BTreeMap<String, PlanSettings>,
    pub payment_behavior: String,
    pub retry: RetryPolicy,
    pub lock_ttl: Duration,
    /// Prices never change once made: found once per lookup key and process.
    pub prices: Mutex<HashMap<String, (String, String)>>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").finish_non_exhaustive()
    }
}

/// Why the steps stopped short of a result.
enum StepError {
    Stripe(StripeFailure),
    Store(StoreError),
}

impl From<StripeFailure> for StepError {
    fn from(failure: StripeFailure) -> Self {
        StepError::Stripe(failure)
    }
}

impl From<StoreError> for StepError {
    fn from(error: StoreError) -> Self {
        StepError::Store(error)
    }
}

pub async fn process(job: &Job, delivery: DeliveryInfo, ctx: &JobContext) -> Outcome {
    let token = uuid::Uuid::new_v4().to_string();
    match ctx.store.begin_job(&job.pay_id, &token, ctx.lock_ttl).await {
        Ok(JobStart::Locked) => {}
        Ok(JobStart::Settled(result)) => return Outcome::Settled(*result),
        Ok(JobStart::Busy) => return Outcome::Locked,
        Err(error) => return Outcome::HandBack(error.to_string()),
    }

    let keep_alive = CancellationToken::new();
    let extender = tokio::spawn(extend_lock(
        ctx.store.clone(),
        job.pay_id.clone(),
        token.clone(),
        ctx.lock_ttl,
        keep_alive.clone(),
    ));
    let steps = run_steps(job, delivery, ctx).await;
    keep_alive.cancel();
    let _ = extender.await;
    if let Err(error) = ctx.store.unlock(&job.pay_id, &token).await {
        // The lock expires by itself; the next holder finds the result stored.
        tracing::warn!(pay_id = %job.pay_id, %error, "lock not released");
    }

    match steps {
        Ok(done) => Outcome::Final(result_of(job, delivery, Ok(done))),
        Err(StepError::Stripe(StripeFailure::Permanent(detail))) => {
            Outcome::Final(result_of(job, delivery, Err(detail)))
        }
        // Not Stripe's fault: no attempt is spent, and the consumer pauses until Redis is back.
        Err(StepError::Stripe(StripeFailure::BudgetUnavailable(reason))) => {
            Outcome::HandBack(reason)
        }
        Err(StepError::Stripe(failure)) => Outcome::RetryLater(failure.to_string()),
        Err(StepError::Store(error)) => Outcome::HandBack(error.to_string()),
    }
}

/// Keeps the lock alive while the job runs (every third of its TTL).
async fn extend_lock(
    store: Store,
    pay_id: crate::domain::PayId,
    token: String,
    ttl: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => match store.extend_lock(&pay_id, &token, ttl).await {
                Ok(true) => {}
                // Lost or unreachable: the idempotency keys still keep Stripe to one
                // subscription; the lock only keeps workers from doing the same work twice.
                Ok(false) => tracing::warn!(%pay_id, "lost the payId lock while working"),
                Err(error) => tracing::warn!(%pay_id, %error, "could not extend the payId lock"),
            },
        }
    }
}

/// What a successful job produced.
struct Done {
    customer: String,
    method: Attached,
    subscription: Subscribed,
}

fn result_of(job: &Job, delivery: DeliveryInfo, done: Result<Done, FailureDetail>) -> FinalResult {
    let completed_at = time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    match done {
        Ok(done) => FinalResult {
            status: done.subscription.status,
            customer_id: done.customer,
            sub_id: done.subscription.id,
            product_id: done.subscription.product_id,
            pay_method: done.method.kind,
            error: None,
            attempts: delivery.attempt,
            accepted_at: job.accepted_at.clone(),
            completed_at,
        },
        Err(detail) => failed_result(job, delivery.attempt, detail),
    }
}

/// The final result of a job that failed with `detail`.
pub fn failed_result(job: &Job, attempts: u32, detail: FailureDetail) -> FinalResult {
    FinalResult {
        status: STATUS_FAILED.into(),
        customer_id: String::new(),
        sub_id: String::new(),
        product_id: String::new(),
        pay_method: String::new(),
        error: Some(detail),
        attempts,
        accepted_at: job.accepted_at.clone(),
        completed_at: time::OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
    }
}

async fn run_steps(job: &Job, delivery: DeliveryInfo, ctx: &JobContext) -> Result<Done, StepError> {
    // Idempotency keys are fixed per payId and step. Only once a job has come back through the
    // delayed-retry queues twice (over a minute later, when no earlier request can still be in
    // flight) and a lookup has shown the object absent does the key move on: Stripe replays a
    // stored 500 for the same key, which would otherwise hold a job back for 24 hours.
    let generation = delivery.attempt.saturating_sub(2);
    let suffix = format!("g{generation}");
    let pay_id = job.pay_id.as_str();

    let customer = customer_step(job, &suffix, ctx).await?;
    let attach_key = format!("ar-{pay_id}-attach-{suffix}");
    let method = with_retries(&ctx.retry, || {
        ctx.gateway
            .attach_payment_method(job.pm_id.as_str(), &customer, &attach_key)
    })
    .await?;
    let default_key = format!("ar-{pay_id}-default-{suffix}");
    with_retries(&ctx.retry, || {
        ctx.gateway
            .set_default_payment_method(&customer, &method.id, &default_key)
    })
    .await?;
    let (price, _product) = price_step(job, &suffix, ctx).await?;

    let find = || ctx.gateway.find_subscription(&customer, pay_id);
    // A job seen before (redelivered, or retried) may have made its subscription already.
    if (delivery.redelivered || delivery.attempt > 1)
        && let Some(found) = with_retries(&ctx.retry, find).await?
    {
        return Ok(Done {
            customer,
            method,
            subscription: found,
        });
    }
    let metadata = HashMap::from([
        ("payId".to_owned(), pay_id.to_owned()),
        ("partnerCode".to_owned(), job.partner_code.to_string()),
        ("plan_id".to_owned(), job.plan_id.to_string()),
    ]);
    let key = format!("ar-{pay_id}-sub-{suffix}");
    let subscription = create_or_settle(
        &ctx.retry,
        || {
            ctx.gateway.create_subscription(
                NewSubscription {
                    customer: &customer,
                    price: &price,
                    payment_method: &method.id,
                    payment_behavior: &ctx.payment_behavior,
                    metadata: metadata.clone(),
                },
                &key,
            )
        },
        find,
    )
    .await?;
    Ok(Done {
        customer,
        method,
        subscription,
    })
}

async fn customer_step(job: &Job, suffix: &str, ctx: &JobContext) -> Result<String, StepError> {
    let partner = job.partner_code.as_str();
    let email = job.email.as_str();
    let find = || ctx.gateway.find_customer(partner, email);
    if let Some(found) = with_retries(&ctx.retry, find).await? {
        return Ok(found);
    }
    // One person, one customer: the key comes from (partnerCode, email), not from the payId.
    let key = format!(
        "ar-cus-{}-{suffix}",
        short_hash(&format!("{partner}\n{email}"))
    );
    Ok(create_or_settle(
        &ctx.retry,
        || ctx.gateway.create_customer(partner, email, &key),
        find,
    )
    .await?)
}

async fn price_step(
    job: &Job,
    suffix: &str,
    ctx: &JobContext,
) -> Result<(String, String), StepError> {
    let plan = ctx.plans.get(job.plan_id.as_str());
    let interval = plan.map(|p| p.interval.as_str()).unwrap_or("month");
    let lookup_key = match plan.and_then(|p| p.price.as_deref()) {
        Some(price) => format!("configured:{price}"),
        None => format!(
            "{}:{}:{}:{}",
            job.plan_id, job.amount_minor, job.pay_currency, interval
        ),
    };
    if let Some(known) = ctx
        .prices
        .lock()
        .ok()
        .and_then(|p| p.get(&lookup_key).cloned())
    {
        return Ok(known);
    }
    let found = if let Some(price) = plan.and_then(|p| p.price.as_deref()) {
        let product = with_retries(&ctx.retry, || ctx.gateway.price_product(price)).await?;
        (price.to_owned(), product)
    } else {
        let find = || ctx.gateway.find_price(&lookup_key);
        match with_retries(&ctx.retry, find).await? {
            Some(found) => found,
            None => {
                // One plan, one price: the key comes from the lookup key.
                let key = format!("ar-price-{}-{suffix}", short_hash(&lookup_key));
                let spec = PriceSpec {
                    lookup_key: &lookup_key,
                    product_name: job.plan_id.as_str(),
                    unit_amount: job.amount_minor,
                    currency: &job.pay_currency,
                    interval,
                };
                create_or_settle(&ctx.retry, || ctx.gateway.create_price(&spec, &key), find).await?
            }
        }
    };
    if let Ok(mut prices) = ctx.prices.lock() {
        prices.insert(lookup_key, found.clone());
    }
    Ok(found)
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
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(failure),
                }
            }
            Err(permanent) => return Err(permanent),
        }
    }
}

/// Creates an object; when the outcome of a try is unknown, looks it up before trying again,
/// so nothing is ever created twice on the strength of a lost answer.
async fn create_or_settle<T, C, CF, L, LF>(
    policy: &RetryPolicy,
    mut create: C,
    mut lookup: L,
) -> Result<T, StripeFailure>
where
    C: FnMut() -> CF,
    CF: Future<Output = Result<T, StripeFailure>>,
    L: FnMut() -> LF,
    LF: Future<Output = Result<Option<T>, StripeFailure>>,
{
    let mut delays = policy.delays();
    loop {
        let failure = match create().await {
            Ok(created) => return Ok(created),
            Err(StripeFailure::Unknown(reason)) => match lookup().await {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => StripeFailure::Unknown(reason),
                Err(
                    lookup_failure @ (StripeFailure::Permanent(_)
                    | StripeFailure::BudgetUnavailable(_)),
                ) => return Err(lookup_failure),
                Err(_) => StripeFailure::Unknown(reason),
            },
            Err(StripeFailure::Transient(reason)) => StripeFailure::Transient(reason),
            Err(permanent) => return Err(permanent),
        };
        match delays.next() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(failure),
        }
    }
}

fn short_hash(text: &str) -> String {
    hex::encode(&Md5::digest(text.as_bytes())[..12])
}
