//! The Stripe steps of one job, and the rules that keep one payId to one subscription:
//!
//! - a create is recorded in the store ([`CreateSent`]) before it is sent;
//! - no create goes out without a lookup first, unless this payId has never had one sent;
//! - after a lookup that finds nothing, the create is sent again under the *same* idempotency
//!   key. Stripe then executes it (the first never arrived), answers 409 (the first is still
//!   executing: try again later), or replays the first one's stored answer;
//! - the key moves to a new generation only on Stripe's definitive word that nothing under the
//!   old one made a subscription: a replayed answer (`Idempotent-Replayed`) that is not one,
//!   confirmed by a lookup, or Stripe's 24 h key retention passed since the last send with a
//!   lookup showing nothing. Never because some time has passed: Stripe may still be executing
//!   a request long after any client timeout, and a new key beside it makes a second
//!   subscription;
//! - an outcome that is still unknown when the attempts run out is never reported `failed`: the
//!   job is parked for reconciliation, where it is looked up and sent again under the same key.
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
use super::ports::{CreateSent, Incoming, StripeApi};
use crate::config::PlanSettings;
use crate::domain::authorization::{customer_key, short_hash};
use crate::domain::{FailureCode, FailureDetail, FinalResult, Job, failure_mark};
use crate::rebuild::{self, RebuildError};
use crate::stripe::{
    Attached, CreatedCustomer, CustomerMark, NewCustomer, NewSubscription, PriceSpec,
    StripeFailure, Subscribed, WriteFailure,
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
    /// A payId whose records looked fresh had a subscription at Stripe after all: the records
    /// of its creation were lost.
    Found(Made),
    /// A payId whose records looked fresh ended `F` before, recorded at Stripe: that answer.
    Answered(FailureDetail),
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

/// How long Stripe keeps an idempotency key: past it, a key's requests have all ended, and a
/// lookup that finds nothing is final (docs/design.md#how-a-request-becomes-a-subscription).
pub const KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Runs the job's Stripe steps under the payId's lock; `created` is what the store remembers.
pub(super) async fn run(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
    created: Option<CreateSent>,
    records: Records,
) -> Decision {
    let pay_id = job.pay_id.as_str();
    // Past `give_up_after`, nothing new is sent: a stale copy (a dead letter replayed weeks
    // later) only looks up, and ends `failed` once that shows nothing was made.
    let given_up = given_up(ctx, job);
    // A create was sent before (by this job or a copy of it): settle by lookup first.
    let mut generation = 0;
    // Whether a create sent earlier may still be executing at Stripe: then no refusal of an
    // earlier step is final yet. With the records lost, the store cannot say none was sent.
    let mut unsettled = records == Records::Lost;
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
                let since_sent = ctx.ports.clock.now_ms().saturating_sub(sent.sent_at_ms);
                if since_sent >= millis(KEY_RETENTION) {
                    // Stripe has forgotten the key, and every request sent under it has ended:
                    // the lookup's "absent" is final.
                    if given_up {
                        return Decision::Failed(unavailable("no subscription was made"));
                    }
                    generation = sent.generation + 1;
                } else if given_up {
                    // Only the key's own answer could settle it now, and a given-up job sends
                    // nothing: it waits, `processing`, for the key's retention to pass.
                    return Decision::Park(
                        "the last create may still be executing at Stripe".into(),
                    );
                } else if !sent.payment_method.is_empty() {
                    // The same create again, under the same key: Stripe executes it, answers
                    // 409 while the first is still executing, or replays how the first ended.
                    // It cannot make a second. The customer steps were done before the first
                    // was sent, and are not run again: a refusal there would say nothing of
                    // the create still in question.
                    return match resend(ctx, job, token, sent).await {
                        Ok(made) => Decision::Made(made),
                        Err(stop) => stopped(stop, true, true),
                    };
                } else {
                    // A record without the method's id: the customer steps give it again.
                    generation = sent.generation;
                    unsettled = true;
                }
            }
            Err(failure) => return stopped(Stop::Stripe(failure), true, true),
        }
    } else if given_up {
        // Nothing was ever sent for this payId, and now nothing will be.
        return Decision::Failed(unavailable("no subscription was made"));
    }
    let mut recorded = created.is_some();
    // No create on record, yet the intake's record is there: a first run, or a run after a
    // partial loss of Redis (a failover to a replica that missed the last writes, the
    // partner's retry taken afresh) that kept or remade the intake's record and lost the rest.
    // Which one, only Stripe can say, and only a person with a customer already can have a
    // payId there: the customer steps ask it then (docs/design.md, "Partial loss of Redis").
    let fresh = created.is_none() && records == Records::Kept;
    let resume = Resume {
        created: created.as_ref(),
        generation,
        fresh,
    };
    match create(ctx, job, incoming, token, resume, &mut recorded).await {
        Ok(made) => Decision::Made(made),
        Err(stop) => stopped(stop, recorded, unsettled),
    }
}

/// What the store knows of a payId that has no create on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Records {
    /// The intake's record is there: no create was ever sent.
    Kept,
    /// Redis lost the records, and Stripe has no subscription for the payId (yet): a create
    /// sent under a lost record may still be executing, so no refusal before a create is final
    /// until `give_up_after`.
    Lost,
    /// Redis lost the records, and Stripe has the subscription: its result, put back.
    Found(Box<FinalResult>),
    /// Redis lost the records, and Stripe has the job's final failure recorded on the
    /// customer (`domain::failure_mark`): the job ended `F`, and that answer stands.
    Failed(FailureDetail),
}

/// What the store knows, and when it has lost the payId's records, what Stripe has: no create
/// on record and no intake record means Redis lost them (a failover to an empty replica, a
/// flush) or the message is older than their retention, so "nothing was sent" cannot be read
/// off the store. Stripe, the system of record, is searched by the payId's metadata, and what
/// it has is put back (docs/design.md#redis-data-loss-in-the-simulation-what-it-shows). With
/// no subscription there, the person's customers are listed for the mark of a final failure
/// (docs/design.md#a-final-failure-outlives-redis): an `F` stays `F`.
///
/// Stripe's search lags a new subscription by up to a minute; a create sent under a lost record
/// within that minute is still held to one subscription by its idempotency key when it is the
/// same generation, which it is unless a replayed answer had moved it on.
pub(super) async fn found_at_stripe(ctx: &JobContext, job: &Job) -> Result<Records, Decision> {
    let pay_key = job.pay_key();
    let store = ctx.ports.store.as_ref();
    match store.has_record(&pay_key).await {
        Ok(true) => return Ok(Records::Kept),
        Ok(false) => {}
        Err(error) => return Err(Decision::HandBack(error.to_string())),
    }
    let mut delays = ctx.settings.retry.delays();
    loop {
        let failure = match rebuild::from_stripe(ctx.ports.stripe.as_ref(), store, &pay_key).await {
            Ok(Some(found)) => return Ok(Records::Found(Box::new(found))),
            Ok(None) => match failure_recorded(ctx, job).await {
                Ok(Some(detail)) => return Ok(Records::Failed(detail)),
                Ok(None) => return Ok(Records::Lost),
                Err(failure @ (StripeFailure::Transient(_) | StripeFailure::Unknown(_))) => failure,
                Err(other) => return Err(stopped(Stop::Stripe(other), true, true)),
            },
            Err(RebuildError::Store(error)) => return Err(Decision::HandBack(error.to_string())),
            Err(RebuildError::Stripe(
                failure @ (StripeFailure::Transient(_) | StripeFailure::Unknown(_)),
            )) => failure,
            Err(RebuildError::Stripe(other)) => {
                return Err(stopped(Stop::Stripe(other), true, true));
            }
        };
        match delays.next() {
            Some(delay) if ctx.settings.retry.pause(delay).await => {}
            // Not known yet whether a subscription exists: as after a create sent.
            _ => return Err(stopped(Stop::Stripe(failure), true, true)),
        }
    }
}

/// The final failure recorded at Stripe for this job's payId, if a copy of it ended `F`.
async fn failure_recorded(
    ctx: &JobContext,
    job: &Job,
) -> Result<Option<FailureDetail>, StripeFailure> {
    let pay_key = job.pay_key();
    let name = failure_mark::key(&pay_key);
    let value = ctx
        .ports
        .stripe
        .customer_mark(job.partner_code.as_str(), job.email.as_str(), &name)
        .await?;
    Ok(value.and_then(|value| failure_mark::read(&pay_key, &value)))
}

/// A subscription of the payId on the person's customer, looked up before a job with no create
/// on record ends `INTERNAL_ERROR` (the delivery limit, a panic): a failover that lost the
/// store's last writes can have taken back the create record of a create that went out, so "no
/// create on record" does not prove that nothing was made. Lists only (the customer remembered
/// or listed by email, then its subscriptions), which see a write at once, unlike search; two
/// calls at most, on those rare paths only.
pub(super) async fn made_before(
    stripe: &dyn StripeApi,
    store: &dyn super::ports::JobStore,
    retry: &RetryPolicy,
    job: &Job,
) -> Result<Option<Made>, StripeFailure> {
    let (partner, email) = (job.partner_code.as_str(), job.email.as_str());
    let customer = match store.customer_of(partner, email).await {
        Ok(Some(customer)) => Some(customer),
        // Not remembered, or the store cannot say: Stripe lists the person's customer.
        _ => with_retries(retry, || stripe.find_customer(partner, email)).await?,
    };
    let Some(customer) = customer else {
        return Ok(None);
    };
    let found = with_retries(retry, || {
        stripe.find_subscription(&customer, job.pay_id.as_str())
    })
    .await?;
    Ok(found.map(|subscription| Made {
        customer,
        pay_method: subscription.pay_method.clone(),
        subscription,
    }))
}

/// Records the job's final failure at Stripe, before it is stored and announced: on the
/// customer of (`partnerCode`, `email`), made for it when there is none. Its own quick retries;
/// a failure that remains says why the mark could not be written.
pub(super) async fn record_failure(
    stripe: &dyn StripeApi,
    retry: &RetryPolicy,
    job: &Job,
    detail: &FailureDetail,
) -> Result<(), StripeFailure> {
    let pay_key = job.pay_key();
    let name = failure_mark::key(&pay_key);
    let value = failure_mark::value(&pay_key, detail);
    let key = failure_mark::write_key(&pay_key, &value);
    let mark = CustomerMark {
        partner_code: job.partner_code.as_str(),
        email: job.email.as_str(),
        name: &name,
        value: &value,
    };
    with_retries(retry, || stripe.mark_customer(&mark, &key)).await
}

/// What a stop means for the job. `create_sent`: a create was recorded, so a subscription may
/// exist; `unsettled`: an earlier create may still be executing at Stripe.
fn stopped(stop: Stop, create_sent: bool, unsettled: bool) -> Decision {
    match stop {
        // Stripe's answer to the create itself (executed now, or replayed): under this key
        // nothing was made, and no older key can still be executing (a new generation is used
        // only once the older one's requests have ended).
        Stop::Refused(detail) => Decision::Failed(detail),
        Stop::Found(made) => Decision::Made(made),
        Stop::Answered(detail) => Decision::Answered(detail),
        // A refusal of an earlier step is final unless an earlier create may still land.
        Stop::Stripe(StripeFailure::Permanent(detail)) if unsettled => {
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

/// Where a run takes the payId's creation up.
#[derive(Debug, Clone, Copy)]
struct Resume<'a> {
    /// What the store remembers of the creates sent.
    created: Option<&'a CreateSent>,
    /// The key generation to create under.
    generation: u32,
    /// No create on record, the intake's record there (see [`payer_step`]).
    fresh: bool,
}

async fn create(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
    resume: Resume<'_>,
    recorded: &mut bool,
) -> Result<Made, Stop> {
    let Resume {
        created,
        generation,
        fresh,
    } = resume;
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
    // Its failure's mark is not read first (that would double its one call): an authorized
    // payId that ended `F` before any create, whose ending a partial loss took back, is not
    // covered (docs/design.md, "Partial loss of Redis").
    let mut payer = match authorized {
        Some(payer) => payer,
        None => payer_step(ctx, job, created, &suffix, fresh).await?,
    };
    let (price, _product) = price_step(ctx, job, &suffix).await?;
    // A payId whose creates began before payIds were scoped by partner keeps its old keys.
    let scoped = created.is_none_or(|sent| sent.scoped);
    let mut choice = KeyChoice { generation, scoped };
    loop {
        match subscribe(ctx, job, token, &payer, &price, &mut choice, recorded).await {
            // The method is not on the authorized customer after all (the app confirmed
            // another SetupIntent, or none): Stripe's answer made nothing, and no other key
            // is in flight, so the next generation is free. Attach as for any job, then
            // create under that generation's key.
            Err(Stop::Refused(detail))
                if shortcut && detail.code == FailureCode::PaymentMethodUnavailable =>
            {
                tracing::info!(pay_id = %job.pay_id, "the authorized customer lacks the method; attaching it");
                shortcut = false;
                choice.generation += 1;
                payer = payer_step(ctx, job, None, &suffix, false).await?;
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

/// Sends the recorded create again, with the same parameters under the same key.
async fn resend(ctx: &JobContext, job: &Job, token: &str, sent: &CreateSent) -> Result<Made, Stop> {
    let suffix = format!("g{}", sent.generation);
    let (price, _product) = price_step(ctx, job, &suffix).await?;
    let payer = Payer {
        customer: sent.customer.clone(),
        method: sent.payment_method.clone(),
        kind: sent.pay_method.clone(),
    };
    let mut choice = KeyChoice {
        generation: sent.generation,
        scoped: sent.scoped,
    };
    let mut recorded = true;
    let subscription =
        subscribe(ctx, job, token, &payer, &price, &mut choice, &mut recorded).await?;
    let pay_method = if subscription.pay_method.is_empty() {
        payer.kind
    } else {
        subscription.pay_method.clone()
    };
    Ok(Made {
        customer: payer.customer,
        pay_method,
        subscription,
    })
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

/// Creates the subscription under `choice`'s key, each send recorded before it goes. The key
/// moves on (and `choice` with it) only when Stripe replayed an answer for it that made no
/// subscription and a lookup agrees.
async fn subscribe(
    ctx: &JobContext,
    job: &Job,
    token: &str,
    payer: &Payer,
    price: &str,
    choice: &mut KeyChoice,
    recorded: &mut bool,
) -> Result<Subscribed, Stop> {
    let pay_id = job.pay_id.as_str();
    let pay_key = job.pay_key();
    let stripe = &ctx.ports.stripe;
    let retry = &ctx.settings.retry;
    // Every send of the create is recorded before it goes, the quick retries below included: a
    // copy reads the key's generation from it, and dates the last send by it (Stripe's key
    // retention runs from there).
    let scoped = choice.scoped;
    let record = |generation: u32| {
        let sent = CreateSent {
            generation,
            sent_at_ms: ctx.ports.clock.now_ms(),
            customer: payer.customer.clone(),
            pay_method: payer.kind.clone(),
            scoped,
            payment_method: payer.method.clone(),
        };
        let pay_key = &pay_key;
        async move {
            let held = ctx
                .ports
                .store
                .record_create(pay_key, token, &sent)
                .await
                .map_err(|e| Stop::Store(e.to_string()))?;
            if held {
                Ok(())
            } else {
                // The lock was lost: the copy holding it may have found no record and be
                // ending the job `failed`; creating now would make that a lie. Nothing was sent.
                Err(Stop::Store(
                    "the payId's lock was lost before the create".into(),
                ))
            }
        }
    };

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
    let lookup = || stripe.find_subscription(&payer.customer, pay_id);
    let mut delays = retry.delays();
    loop {
        record(choice.generation).await?;
        *recorded = true;
        let key = crate::domain::job::subscription_key(&pay_key, choice.generation, scoped);
        let failure = match stripe.create_subscription(&new, &key).await {
            Ok(made) => return Ok(made),
            Err(WriteFailure {
                failure: budget @ StripeFailure::BudgetUnavailable(_),
                ..
            }) => return Err(budget.into()),
            // Stripe's answer to the create itself, executed now or replayed: nothing was made
            // under this key, and nothing under it is still executing.
            Err(WriteFailure {
                failure: StripeFailure::Permanent(detail),
                ..
            }) => return Err(Stop::Refused(detail)),
            // The key's stored answer (a saved 500): its first request ran to its end. Once a
            // (consistent) lookup shows no subscription, nothing under this key made one or
            // ever will, and the next generation is free.
            Err(WriteFailure {
                failure,
                replayed: true,
            }) => match lookup().await {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {
                    // A new key executes afresh; it goes out at once, but counts as a try, so
                    // a run of stored 500s still ends in a delayed retry.
                    if delays.next().is_none() {
                        return Err(Stop::Stripe(failure));
                    }
                    tracing::info!(
                        pay_id,
                        generation = choice.generation + 1,
                        "Stripe replayed a stored failure for the create's key; using the next key"
                    );
                    choice.generation += 1;
                    continue;
                }
                Err(budget @ StripeFailure::BudgetUnavailable(_)) => return Err(budget.into()),
                // The lookup says nothing: the same key again replays the same answer, and the
                // next lookup decides.
                Err(_) => failure,
            },
            // Timed out, a 5xx executed now, a lost answer: look it up before sending again.
            Err(WriteFailure {
                failure: StripeFailure::Unknown(reason),
                replayed: false,
            }) => match lookup().await {
                Ok(Some(found)) => return Ok(found),
                Err(budget @ StripeFailure::BudgetUnavailable(_)) => return Err(budget.into()),
                // A lookup that fails, even for good, says nothing of the create: still unknown.
                Ok(None) | Err(_) => StripeFailure::Unknown(reason),
            },
            // A 429, or Stripe's 409 while the key's first request is still executing: nothing
            // was saved, and the same key is sent again after a pause. Never a new key.
            Err(WriteFailure {
                failure: transient @ StripeFailure::Transient(_),
                replayed: false,
            }) => transient,
        };
        match delays.next() {
            Some(delay) if retry.pause(delay).await => {}
            _ => return Err(Stop::Stripe(failure)),
        }
    }
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

/// Stops the job with the final failure a copy of it recorded at Stripe, if one did: for a
/// payId whose records look fresh, before anything is sent for it (one list of the person's
/// customers). An `F` answered stays `F`, whatever Redis lost.
async fn answered_before(ctx: &JobContext, job: &Job) -> Result<(), Stop> {
    match with_retries(&ctx.settings.retry, || failure_recorded(ctx, job)).await? {
        Some(detail) => {
            tracing::warn!(pay_id = %job.pay_id, "a payId with fresh records had ended `F` before: the same answer again");
            Err(Stop::Answered(detail))
        }
        None => Ok(()),
    }
}

/// A refusal before any create, for a payId whose records look fresh: final only if Stripe has
/// no subscription for it on this customer (a consistent list). A create sent under records
/// Redis lost may have made one: then that is the job's result.
async fn refused_before_create(
    ctx: &JobContext,
    job: &Job,
    customer: &str,
    refusal: StripeFailure,
) -> Stop {
    let pay_id = job.pay_id.as_str();
    let lookup = with_retries(&ctx.settings.retry, || {
        ctx.ports.stripe.find_subscription(customer, pay_id)
    })
    .await;
    match lookup {
        Ok(Some(subscription)) => {
            tracing::warn!(
                pay_id,
                "a payId with fresh records had a subscription already"
            );
            Stop::Found(Made {
                customer: customer.to_owned(),
                pay_method: subscription.pay_method.clone(),
                subscription,
            })
        }
        Ok(None) => Stop::Stripe(refusal),
        // Not known yet whether one exists: the refusal is not final; the job runs again.
        Err(failure) => Stop::Stripe(match failure {
            StripeFailure::Permanent(detail) => StripeFailure::Transient(detail.message),
            other => other,
        }),
    }
}

/// The customer of (`partnerCode`, `email`) with the job's payment method attached. A customer
/// we know (remembered in Redis, or found by listing by email): attach the method, one call. A
/// new one: create it with the method attached and made its default, one call.
///
/// `fresh`: the payId has no create on record but its intake record is there, which a partial
/// loss of Redis can also leave. A customer known already may then carry the payId's final
/// failure (read first, one call) or its subscription (looked up only if the attach is
/// refused, one call). A new customer carries neither.
async fn payer_step(
    ctx: &JobContext,
    job: &Job,
    created: Option<&CreateSent>,
    suffix: &str,
    fresh: bool,
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
            if fresh {
                answered_before(ctx, job).await?;
            }
            let key = format!("ar-{}-attach-{suffix}", job.pay_key());
            let attached = with_retries(retry, || {
                stripe.attach_payment_method(job.pm_id.as_str(), &customer, &key)
            })
            .await;
            let attached: Attached = match attached {
                Ok(attached) => attached,
                Err(refusal @ StripeFailure::Permanent(_)) if fresh => {
                    return Err(refused_before_create(ctx, job, &customer, refusal).await);
                }
                Err(failure) => return Err(failure.into()),
            };
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
                Err(budget @ StripeFailure::BudgetUnavailable(_)) => return Err(budget),
                // A lookup that fails, even for good, says nothing of the create: still unknown.
                Err(_) => StripeFailure::Unknown(reason),
            },
            Err(StripeFailure::Transient(reason)) => StripeFailure::Transient(reason),
            Err(permanent) => return Err(permanent),
        };
        match delays.next() {
            Some(delay) if policy.pause(delay).await => {}
            _ => return Err(failure),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
