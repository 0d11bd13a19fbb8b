//! One creation job, start to end, against the ports: take the payId's lock, run the Stripe
//! steps, and route by their decision, in an order that survives a crash at any await:
//!
//! - a final result is stored *and* the lock released in one atomic step, before the event is
//!   announced and the message acked: a copy that takes the lock next finds the result;
//! - every copy put on another queue is confirmed before the message is acked;
//! - a result the partner was promised is announced at least once, with a stable event id.
//!
//! The consumer loop (RabbitMQ) and the deterministic simulation both reach [`handle`] through
//! [`super::message::handle`].

use std::convert::Infallible;
use std::sync::Arc;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::Instrument;

use super::ports::{Clock, Incoming, JobQueue, JobStart, JobStore, Outcome, StripeApi, Wait};
use super::steps::{self, JobSettings, Made, Records};
use crate::domain::outcome::STATUS_FAILED;
use crate::domain::{FailureCode, FailureDetail, FinalResult, Job, PayKey, ResultEvent};
use crate::stripe::StripeFailure;

/// The adapters a job runs against.
#[derive(Clone)]
pub struct JobPorts {
    pub queue: Arc<dyn JobQueue>,
    pub store: Arc<dyn JobStore>,
    pub stripe: Arc<dyn StripeApi>,
    pub clock: Arc<dyn Clock>,
}

/// Everything a job needs, shared by all jobs of a worker.
pub struct JobContext {
    pub ports: JobPorts,
    pub settings: JobSettings,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext").finish_non_exhaustive()
    }
}

/// What the steps decided, before any of it is stored or routed.
pub(super) enum Decision {
    /// A subscription exists for the payId.
    Made(Made),
    /// The job ends `failed`: no subscription exists, and none can appear.
    Failed(FailureDetail),
    /// A copy of the job ended `failed` before and recorded it at Stripe: the same answer
    /// again, stored and announced as it stands (it is recorded already).
    Answered(FailureDetail),
    /// Stripe kept failing for now; `create_sent` says whether a subscription may exist.
    Retry { reason: String, create_sent: bool },
    /// The outcome is unknown: park the job for reconciliation by lookup.
    Park(String),
    /// This worker cannot work now (Redis away, or stopping): give the message back.
    HandBack(String),
}

/// Handles one creation job; `token` is this attempt's lock token, unique across workers.
pub(super) async fn handle(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
) -> Outcome {
    let store = &ctx.ports.store;
    let pay_key = job.pay_key();
    let created = match store.begin(&pay_key, token, ctx.settings.lock_ttl).await {
        Err(error) => {
            tracing::warn!(pay_id = %job.pay_id, %error, "job handed back");
            return Outcome::hand_back();
        }
        Ok(JobStart::Settled(result)) => {
            // A copy of a finished job (redelivered, republished, replayed): announce again, so
            // a crash between the store and the announcement loses no event.
            return match announce(ctx, job, &result).await {
                Ok(()) => Outcome::ack("settled"),
                Err(()) => Outcome::hand_back(),
            };
        }
        Ok(JobStart::Busy) => {
            return match ctx
                .ports
                .queue
                .delay(Wait::Lock, incoming, incoming.attempt)
                .await
            {
                Ok(()) => Outcome::ack("locked"),
                Err(_) => Outcome::hand_back(),
            };
        }
        Ok(JobStart::Locked { created }) => created,
    };
    let locked = async {
        // No create on record: nothing was sent, unless Redis lost the records. Then Stripe is
        // asked before anything is created again or a failure is stored.
        let records = if created.is_none() {
            match steps::found_at_stripe(ctx, job).await {
                Ok(Records::Found(result)) => return finish(ctx, job, token, &result).await,
                // A copy ended `F` and recorded it at Stripe before Redis lost it: the same
                // answer again, never a subscription for a payId answered `F`.
                Ok(Records::Failed(detail)) => {
                    let result = failed(ctx, job, incoming.attempt, detail);
                    return finish(ctx, job, token, &result).await;
                }
                Ok(records) => records,
                Err(decision) => return conclude(ctx, job, incoming, token, decision).await,
            }
        } else {
            Records::Kept
        };
        // Handed out this often, the job ends here rather than be dead-lettered by the broker
        // with no result; it runs no step, since the steps are what kept failing.
        let decision = if incoming.delivery_count + 1 >= ctx.settings.delivery_limit {
            if created.is_some() || records == Records::Lost {
                Decision::Park("the delivery limit was reached".into())
            } else {
                made_or_internal(ctx, job, "the job reached the broker's delivery limit").await
            }
        } else {
            steps::run(ctx, job, incoming, token, created, records).await
        };
        conclude(ctx, job, incoming, token, decision).await
    };
    keep_lock(ctx, &pay_key, token, locked).await
}

/// What a job whose task panicked ends as: the lock released, and the job `failed` with its own
/// code, unless a create was sent (then it is parked, and a lookup settles it).
pub(super) async fn after_panic(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
) -> Outcome {
    let pay_key = job.pay_key();
    let decision = match ctx.ports.store.created(&pay_key).await {
        Ok(Some(_)) => Decision::Park("the job panicked after a create was sent".into()),
        // No create on record and no intake record either: Redis lost them, and a create may
        // have been sent before. A copy asks Stripe first; this task, which just panicked,
        // stores no failure.
        Ok(None) => match ctx.ports.store.has_record(&pay_key).await {
            Ok(true) => made_or_internal(ctx, job, "the job panicked").await,
            Ok(false) => Decision::Retry {
                reason: "the job panicked, and the store has lost its records".into(),
                create_sent: true,
            },
            Err(error) => Decision::HandBack(error.to_string()),
        },
        Err(error) => Decision::HandBack(error.to_string()),
    };
    conclude(ctx, job, incoming, token, decision).await
}

/// The ending of a job with no create on record that cannot go on (`why`): the subscription,
/// if one of the payId is on the person's customer after all (a failover took the create record
/// back), else `INTERNAL_ERROR`; unknown (parked) while Stripe cannot be asked. The lookup runs
/// in a task of its own: the job may be ending after a panic in the Stripe client.
async fn made_or_internal(ctx: &JobContext, job: &Job, why: &str) -> Decision {
    let (stripe, store) = (ctx.ports.stripe.clone(), ctx.ports.store.clone());
    let (retry, copy) = (ctx.settings.retry.clone(), job.clone());
    let partner = crate::stripe::current_partner();
    let lookup = async move {
        crate::stripe::on_behalf_of(Some(&partner), async {
            steps::made_before(stripe.as_ref(), store.as_ref(), &retry, &copy).await
        })
        .await
    };
    match tokio::spawn(lookup.in_current_span()).await {
        Ok(Ok(Some(made))) => Decision::Made(made),
        Ok(Ok(None)) => Decision::Failed(internal(why)),
        // Not known yet: looked up again later, unless the job is past `give_up_after`.
        Ok(Err(failure)) if !steps::given_up(ctx, job) => {
            Decision::Park(format!("{why}; Stripe could not be asked: {failure}"))
        }
        Ok(Err(_)) => Decision::Failed(internal(why)),
        // The lookup panicked too (the bug is in the Stripe client): it cannot tell, and the
        // job must not wait for ever on a broken client. Ended as before there was a lookup.
        Err(_) => Decision::Failed(internal(why)),
    }
}

/// Runs `work` while keeping the payId's lock alive (every third of its TTL). In the same task,
/// not a task of its own: a job that panics or is dropped stops extending its lock with it.
async fn keep_lock(
    ctx: &JobContext,
    pay_key: &PayKey,
    token: &str,
    work: impl Future<Output = Outcome>,
) -> Outcome {
    let extend = extend_forever(ctx, pay_key, token);
    tokio::pin!(work);
    tokio::pin!(extend);
    tokio::select! {
        biased;
        outcome = &mut work => outcome,
        never = &mut extend => match never {},
    }
}

async fn extend_forever(ctx: &JobContext, pay_key: &PayKey, token: &str) -> Infallible {
    let ttl = ctx.settings.lock_ttl;
    loop {
        tokio::time::sleep(ttl / 3).await;
        match ctx.ports.store.extend_lock(pay_key, token, ttl).await {
            Ok(true) => {}
            // Lost or unreachable: the write-ahead record and the idempotency keys still keep
            // Stripe to one subscription; the lock only saves doing the work twice.
            Ok(false) => tracing::warn!(%pay_key, "lost the payId lock while working"),
            Err(error) => tracing::warn!(%pay_key, %error, "could not extend the payId lock"),
        }
    }
}

/// Stores, routes and announces what the steps decided, holding the lock until the end.
async fn conclude(
    ctx: &JobContext,
    job: &Job,
    incoming: &Incoming,
    token: &str,
    decision: Decision,
) -> Outcome {
    let queue = &ctx.ports.queue;
    let pay_id = job.pay_id.as_str();
    match decision {
        Decision::Made(made) => {
            let result = succeeded(ctx, job, incoming, made);
            finish(ctx, job, token, &result).await
        }
        Decision::Answered(detail) => {
            let result = failed(ctx, job, incoming.attempt, detail);
            finish(ctx, job, token, &result).await
        }
        Decision::Failed(detail) => {
            // Only the lock's holder may end the job `failed` (a copy holding it may be
            // creating the subscription), so only it marks the failure at Stripe.
            match ctx
                .ports
                .store
                .extend_lock(&job.pay_key(), token, ctx.settings.lock_ttl)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        pay_id,
                        "lock lost before a failure was recorded; handing the job back"
                    );
                    return Outcome::requeue("lock_lost");
                }
                Err(error) => {
                    return Box::pin(conclude(
                        ctx,
                        job,
                        incoming,
                        token,
                        Decision::HandBack(error.to_string()),
                    ))
                    .await;
                }
            }
            // Recorded at Stripe before it is stored: Redis may lose the stored failure, and a
            // copy that then finds nothing there must find this rather than create.
            if let Err(failure) = record_at_stripe(ctx, job, &detail).await {
                let next = match failure {
                    // Stripe refuses the mark itself: the failure rests on Redis alone.
                    StripeFailure::Permanent(refusal) => {
                        tracing::error!(pay_id, error = %refusal.message, "Stripe refused the failure's mark; it is stored in Redis only");
                        None
                    }
                    // Stripe has not answered for `give_up_after`: a later copy is past it too
                    // (its acceptance time travels with it), sends nothing, and fails alike.
                    _ if detail.code == FailureCode::StripeUnavailable => {
                        tracing::warn!(pay_id, %failure, "failure not marked at Stripe (unavailable)");
                        None
                    }
                    StripeFailure::BudgetUnavailable(reason) => Some(Decision::HandBack(reason)),
                    // Not final until it is recorded: the job runs again, and ends as it then
                    // does (nothing was announced).
                    other => Some(Decision::Retry {
                        reason: format!("the failure could not be recorded at Stripe: {other}"),
                        create_sent: false,
                    }),
                };
                if let Some(next) = next {
                    return Box::pin(conclude(ctx, job, incoming, token, next)).await;
                }
            }
            // Copy to the dead letters first, for `autorenew dlq replay` once the cause is
            // fixed; a crash after it leaves the job on the queue to be finished again.
            if matches!(
                detail.code,
                FailureCode::StripeUnavailable | FailureCode::InternalError
            ) && queue.dead_letter(incoming, &detail.message).await.is_err()
            {
                release(ctx, job, token).await;
                return Outcome::hand_back();
            }
            let result = failed(ctx, job, incoming.attempt, detail);
            finish(ctx, job, token, &result).await
        }
        Decision::Retry {
            reason,
            create_sent,
        } => {
            let stage = incoming.attempt.saturating_sub(1) as usize;
            if stage < queue.retry_stages() {
                tracing::warn!(
                    pay_id,
                    attempt = incoming.attempt,
                    reason,
                    "job will be retried"
                );
                route(
                    ctx,
                    job,
                    token,
                    Wait::Retry(stage),
                    incoming,
                    incoming.attempt + 1,
                    "retry",
                )
                .await
            } else if create_sent || !steps::given_up(ctx, job) {
                // Parked: it comes back every `amqp.reconcile_delay_ms` to look up (a create
                // was sent) or to try again (none was), `processing` all the while, until a
                // lookup settles it or `worker.give_up_after` has passed.
                tracing::warn!(pay_id, reason, create_sent, "retries spent: parked");
                route(
                    ctx,
                    job,
                    token,
                    Wait::Reconcile,
                    incoming,
                    incoming.attempt,
                    "parked",
                )
                .await
            } else {
                tracing::warn!(pay_id, reason, "retries spent: the job fails");
                let detail = unavailable_after(incoming.attempt, &reason);
                Box::pin(conclude(
                    ctx,
                    job,
                    incoming,
                    token,
                    Decision::Failed(detail),
                ))
                .await
            }
        }
        Decision::Park(reason) => {
            tracing::warn!(pay_id, reason, "outcome unknown: parked for reconciliation");
            route(
                ctx,
                job,
                token,
                Wait::Reconcile,
                incoming,
                incoming.attempt,
                "parked",
            )
            .await
        }
        Decision::HandBack(reason) => {
            tracing::warn!(pay_id, reason, "job handed back");
            release(ctx, job, token).await;
            Outcome::hand_back()
        }
    }
}

/// Records the job's final failure at Stripe (`steps::record_failure`), in a task of its own:
/// the job may be ending after a panic in the Stripe client, and a second one here must not
/// take the ending down with it.
async fn record_at_stripe(
    ctx: &JobContext,
    job: &Job,
    detail: &FailureDetail,
) -> Result<(), StripeFailure> {
    let stripe = ctx.ports.stripe.clone();
    let retry = ctx.settings.retry.clone();
    let (job, detail) = (job.clone(), detail.clone());
    let partner = crate::stripe::current_partner();
    let work = async move {
        crate::stripe::on_behalf_of(Some(&partner), async {
            steps::record_failure(stripe.as_ref(), &retry, &job, &detail).await
        })
        .await
    };
    match tokio::spawn(work.in_current_span()).await {
        Ok(recorded) => recorded,
        Err(error) => Err(StripeFailure::Transient(format!(
            "recording the failure at Stripe failed: {error}"
        ))),
    }
}

/// Stores the result and releases the lock in one step, then announces it.
async fn finish(ctx: &JobContext, job: &Job, token: &str, result: &FinalResult) -> Outcome {
    let stored = match ctx.ports.store.finish(&job.pay_key(), token, result).await {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            // The lock was lost: a copy holding it may be creating the subscription, so this
            // failure is not the job's ending. The copy redelivered decides under the lock.
            tracing::warn!(pay_id = %job.pay_id, "lock lost before a failure was stored; handing the job back");
            return Outcome::requeue("lock_lost");
        }
        Err(error) => {
            tracing::warn!(pay_id = %job.pay_id, %error, "result not stored; handing the job back");
            return Outcome::hand_back();
        }
    };
    let label = if stored.is_failed() {
        "failed"
    } else {
        "succeeded"
    };
    tracing::info!(
        pay_id = %job.pay_id,
        status = %stored.status,
        attempts = stored.attempts,
        stripe_calls = crate::stripe::calls::so_far(),
        "job finished"
    );
    // Not announced: the result is stored, so the redelivered copy finds it and announces it.
    match announce(ctx, job, &stored).await {
        Ok(()) => Outcome::ack(label),
        Err(()) => Outcome::hand_back(),
    }
}

/// Puts a copy on another queue, then releases the lock and acks.
async fn route(
    ctx: &JobContext,
    job: &Job,
    token: &str,
    wait: Wait,
    incoming: &Incoming,
    attempt: u32,
    label: &'static str,
) -> Outcome {
    let routed = ctx.ports.queue.delay(wait, incoming, attempt).await;
    release(ctx, job, token).await;
    match routed {
        Ok(()) => Outcome::ack(label),
        Err(error) => {
            tracing::warn!(pay_id = %job.pay_id, %error, "could not route the job; handing it back");
            Outcome::hand_back()
        }
    }
}

/// Releases the lock; it expires by itself if Redis is away.
async fn release(ctx: &JobContext, job: &Job, token: &str) {
    if let Err(error) = ctx.ports.store.unlock(&job.pay_key(), token).await {
        tracing::warn!(pay_id = %job.pay_id, %error, "lock not released; it expires by itself");
    }
}

async fn announce(ctx: &JobContext, job: &Job, result: &FinalResult) -> Result<(), ()> {
    let event = ResultEvent::new(job, result, &ctx.ports.queue.event_source());
    ctx.ports.queue.announce(&event).await.map_err(|error| {
        tracing::warn!(pay_id = %job.pay_id, %error, "event not announced; handing the job back");
    })
}

fn succeeded(ctx: &JobContext, job: &Job, incoming: &Incoming, made: Made) -> FinalResult {
    FinalResult {
        status: made.subscription.status,
        customer_id: made.customer,
        sub_id: made.subscription.id,
        product_id: made.subscription.product_id,
        pay_method: made.pay_method,
        error: None,
        attempts: incoming.attempt,
        accepted_at: job.accepted_at.clone(),
        completed_at: rfc3339(ctx.ports.clock.now_ms()),
    }
}

fn failed(ctx: &JobContext, job: &Job, attempts: u32, detail: FailureDetail) -> FinalResult {
    FinalResult {
        status: STATUS_FAILED.into(),
        customer_id: String::new(),
        sub_id: String::new(),
        product_id: String::new(),
        pay_method: String::new(),
        error: Some(detail),
        attempts,
        accepted_at: job.accepted_at.clone(),
        completed_at: rfc3339(ctx.ports.clock.now_ms()),
    }
}

fn internal(message: &str) -> FailureDetail {
    FailureDetail {
        code: FailureCode::InternalError,
        message: format!("{message}; no subscription was made"),
        stripe_code: None,
        decline_code: None,
    }
}

fn unavailable_after(attempts: u32, reason: &str) -> FailureDetail {
    FailureDetail {
        code: FailureCode::StripeUnavailable,
        message: format!("Stripe kept failing after {attempts} attempts: {reason}"),
        stripe_code: None,
        decline_code: None,
    }
}

fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
