//! A partner's cancel (docs/partners.md#post-cancelautorenewalrecord), as the worker carries it out: after the payId's creation
//! has ended, under the payId's lock, with an idempotency key of its own per try; the
//! new state is stored (never taking it back) and announced as `subscription.updated` or
//! `subscription.canceled`.

use std::time::Duration;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::creation::JobContext;
use super::message::dead_letter;
use super::ports::{Incoming, Outcome, Wait};
use crate::domain::cancel::{CancelJob, CancelWhen};
use crate::domain::clock::parse_rfc3339_ms;
use crate::domain::event::{LifecycleEvent, LifecycleKind, change_id};
use crate::domain::renewal::{RenewalChange, RenewalUpdate, STATUS_CANCELED};
use crate::rebuild::{self, RebuildError};
use crate::stripe::{StripeFailure, SubscriptionState};

/// Quick tries of the Stripe call before the cancel waits in a delayed-retry queue.
const TRIES: u32 = 3;
/// How long after its creation has ended a subscription may still be missing from search: a
/// create sent just before `worker.give_up_after` may still be executing at Stripe for a few
/// minutes, and search lags a new subscription by up to a minute.
const SEARCH_LAG: Duration = Duration::from_secs(10 * 60);
const PAUSE: Duration = Duration::from_millis(500);

pub(super) async fn handle(
    ctx: &JobContext,
    cancel: &CancelJob,
    incoming: &Incoming,
    token: &str,
) -> Outcome {
    let pay_id = &cancel.pay_id;
    let pay_key = cancel.pay_key();
    let store = ctx.ports.store.as_ref();
    let result = match store.result(&pay_key).await {
        Ok(result) => result,
        Err(_) => return Outcome::hand_back(),
    };
    let mut locked = false;
    let result = match result {
        Some(result) => result,
        // The creation has not ended, or its ending was lost with a partial loss of Redis.
        None => match store.has_record(&pay_key).await {
            Ok(true) => match store.lock(&pay_key, token, ctx.settings.lock_ttl).await {
                // A job of the payId is running: the cancel waits for it.
                Ok(false) => {
                    return wait(
                        ctx,
                        incoming,
                        Wait::Lock,
                        incoming.attempt,
                        "cancel_waiting",
                    )
                    .await;
                }
                Ok(true) => match ended_at_stripe(ctx, cancel, incoming, &pay_key, token).await {
                    Ok(result) => {
                        locked = true;
                        result
                    }
                    Err(outcome) => return outcome,
                },
                Err(_) => return Outcome::hand_back(),
            },
            // Nothing on record, though the intake took the cancel for a payId it knew: Redis
            // lost it. Stripe is the system of record: the subscription is found there.
            Ok(false) => {
                match rebuild::from_stripe(ctx.ports.stripe.as_ref(), store, &pay_key).await {
                    Ok(Some(result)) => result,
                    Ok(None) | Err(RebuildError::Stripe(_)) => {
                        // Not found yet, or not asked: search lags a new subscription by up to
                        // a minute, and the creation the intake took before this cancel may
                        // still be running. Try again later; once the delayed retries are spent,
                        // park and look again until both have surely passed, then leave it to
                        // an operator: never acked as done.
                        let stage = incoming.attempt.saturating_sub(1) as usize;
                        if stage >= ctx.ports.queue.retry_stages()
                            && !searched_long_enough(ctx, cancel)
                        {
                            return wait(
                                ctx,
                                incoming,
                                Wait::Reconcile,
                                incoming.attempt,
                                "cancel_parked",
                            )
                            .await;
                        }
                        return retry_or_dead_letter(
                            ctx,
                            incoming,
                            "no subscription found at Stripe for the cancel",
                        )
                        .await;
                    }
                    Err(RebuildError::Store(_)) => return Outcome::hand_back(),
                }
            }
            Err(_) => return Outcome::hand_back(),
        },
    };
    if result.is_failed() || result.sub_id.is_empty() || !result.subscription_lives() {
        if locked {
            unlock(ctx, &pay_key, token).await;
        }
        if result.is_failed() || result.sub_id.is_empty() {
            tracing::info!(%pay_id, "cancel of a payId whose creation failed: nothing to cancel");
        } else {
            tracing::info!(%pay_id, status = %result.status, "cancel of a subscription that has ended: nothing to cancel");
        }
        return Outcome::ack("cancel_nothing");
    }
    if !locked {
        match store.lock(&pay_key, token, ctx.settings.lock_ttl).await {
            Ok(true) => {}
            Ok(false) => return wait(ctx, incoming, Wait::Lock, incoming.attempt, "locked").await,
            Err(_) => return Outcome::hand_back(),
        }
    }
    let outcome = cancel_locked(ctx, incoming, cancel, &result.sub_id, token).await;
    if let Err(error) = store.unlock(&pay_key, token).await {
        tracing::warn!(%pay_id, %error, "lock not released; it expires by itself");
    }
    outcome
}

/// The creation's ending when the store has none though it has the intake's record, and no job
/// of the payId holds the lock (this cancel does now): the creation is between two attempts, or
/// it ended and a partial loss of Redis (a failover to a replica that missed the last writes)
/// took its result back while the intake's record stayed. Waiting on the lock would wait
/// forever in the second case, since nothing runs the creation again; so Stripe is asked (one
/// search) and what it has is put back. Nothing there yet: the cancel waits through its delayed
/// retries, then parked like a job, asking again each time (docs/design.md, "Partial loss of
/// Redis"). The lock is released unless the result is returned.
async fn ended_at_stripe(
    ctx: &JobContext,
    cancel: &CancelJob,
    incoming: &Incoming,
    pay_key: &crate::domain::PayKey,
    token: &str,
) -> Result<crate::domain::FinalResult, Outcome> {
    let store = ctx.ports.store.as_ref();
    let found = rebuild::from_stripe(ctx.ports.stripe.as_ref(), store, pay_key).await;
    if let Ok(Some(result)) = found {
        return Ok(result);
    }
    unlock(ctx, pay_key, token).await;
    Err(match found {
        Err(RebuildError::Store(_)) => Outcome::hand_back(),
        // Nothing at Stripe once the creation has surely ended and search caught up: it made
        // no subscription (its `F` was lost with the store), and there is nothing to cancel.
        Ok(None) if searched_long_enough(ctx, cancel) => {
            tracing::info!(%pay_key, "cancel of a payId whose creation made nothing: nothing to cancel");
            Outcome::ack("cancel_nothing")
        }
        _ => {
            let stage = incoming.attempt.saturating_sub(1) as usize;
            if stage < ctx.ports.queue.retry_stages() {
                wait(
                    ctx,
                    incoming,
                    Wait::Retry(stage),
                    incoming.attempt + 1,
                    "cancel_waiting",
                )
                .await
            } else {
                wait(
                    ctx,
                    incoming,
                    Wait::Reconcile,
                    incoming.attempt,
                    "cancel_waiting",
                )
                .await
            }
        }
    })
}

async fn unlock(ctx: &JobContext, pay_key: &crate::domain::PayKey, token: &str) {
    if let Err(error) = ctx.ports.store.unlock(pay_key, token).await {
        tracing::warn!(%pay_key, %error, "lock not released; it expires by itself");
    }
}

/// Whether a search that finds nothing for the cancel's payId now means no subscription: the
/// creation, accepted before the cancel was, has ended (`worker.give_up_after` after it at the
/// latest), and search has had its lag ([`SEARCH_LAG`]) to show what it made. A request time
/// that does not read cannot date the cancel: it has waited long enough.
fn searched_long_enough(ctx: &JobContext, cancel: &CancelJob) -> bool {
    let Some(requested_ms) = parse_rfc3339_ms(&cancel.requested_at) else {
        return true;
    };
    let waited = ctx.settings.give_up_after + SEARCH_LAG;
    let due = requested_ms.saturating_add(i64::try_from(waited.as_millis()).unwrap_or(i64::MAX));
    i64::try_from(ctx.ports.clock.now_ms()).unwrap_or(i64::MAX) >= due
}

/// The next delayed retry, or the dead letters (for `autorenew dlq`) once they are spent.
async fn retry_or_dead_letter(ctx: &JobContext, incoming: &Incoming, reason: &str) -> Outcome {
    let stage = incoming.attempt.saturating_sub(1) as usize;
    if stage < ctx.ports.queue.retry_stages() {
        return wait(
            ctx,
            incoming,
            Wait::Retry(stage),
            incoming.attempt + 1,
            "retry",
        )
        .await;
    }
    dead_letter(ctx, incoming, reason, "cancel_failed").await
}

async fn cancel_locked(
    ctx: &JobContext,
    incoming: &Incoming,
    cancel: &CancelJob,
    sub_id: &str,
    token: &str,
) -> Outcome {
    let pay_id = &cancel.pay_id;
    let key = format!(
        "ar-{}-cancel-{}-{token}",
        cancel.pay_key(),
        cancel.when.as_str()
    );
    let state = match call_stripe(ctx, cancel.when, sub_id, &key).await {
        Ok(state) => state,
        Err(StripeFailure::Permanent(detail)) => {
            tracing::error!(%pay_id, error = %detail.message, "Stripe refused the cancel");
            return dead_letter(ctx, incoming, &detail.message, "cancel_refused").await;
        }
        Err(StripeFailure::BudgetUnavailable(_)) => return Outcome::hand_back(),
        Err(failure) => {
            tracing::warn!(%pay_id, reason = %failure, "cancel not done yet");
            return retry_or_dead_letter(ctx, incoming, &failure.to_string()).await;
        }
    };
    let canceled = state.status == STATUS_CANCELED;
    let now_ms = ctx.ports.clock.now_ms();
    let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let update = RenewalUpdate {
        partner_code: cancel.partner_code.clone(),
        version: version_of(&state),
        change: RenewalChange::Subscription {
            sub_id: state.id.clone(),
            status: state.status.clone(),
            current_period_end: state.current_period_end,
            cancel_at_period_end: state.cancel_at_period_end,
            canceled_at: state.canceled_at,
        },
    };
    if ctx
        .ports
        .store
        .apply_renewal(&cancel.pay_key(), &update)
        .await
        .is_err()
    {
        return Outcome::hand_back();
    }
    let event = event_of(ctx, cancel, &state, now);
    match ctx.ports.queue.announce_change(&event).await {
        Ok(()) => {
            tracing::info!(%pay_id, when = cancel.when.as_str(), status = %state.status, "cancel done");
            Outcome::ack(if canceled { "canceled" } else { "updated" })
        }
        Err(error) => {
            tracing::warn!(%pay_id, %error, "cancel event not announced; handing it back");
            Outcome::hand_back()
        }
    }
}

/// The version the state a cancel left is stored under: a time on Stripe's clock, never the
/// worker's (whose clock may run ahead of Stripe's and outrank Stripe's later events), ranked as
/// Stripe's events are (`created << 16 | rank`, src/worker/stripe_event.rs).
///
/// - Canceled: `canceled_at`, when Stripe ended it; ranked 2, below the `deleted` event of the
///   same second (3), above any update of that second (1).
/// - Live (`cancel_at_period_end` set): Stripe gives no time of the update, so the start of
///   the paid period, a time Stripe had passed before it: ranked 1. It may be too early, never
///   too late: too early, an older event delivered later can overwrite it until Stripe's own
///   `customer.subscription.updated` about this cancel (created when it ran) puts it back;
///   too late, it would hide every event Stripe sends after it, for good.
fn version_of(state: &SubscriptionState) -> u64 {
    let (seconds, rank) = if state.status == STATUS_CANCELED {
        (state.canceled_at.or(state.current_period_start), 2)
    } else {
        (state.current_period_start, 1)
    };
    let seconds = seconds.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    (seconds << 16) | rank
}

/// Sends the cancel; a cancel of a subscription canceled already is done, not refused.
///
/// Every try has a key of its own (`key` and the try's number): a cancel is idempotent by
/// nature (cancelling twice changes nothing, and a refusal is checked against the
/// subscription's state), while a fixed key would replay a 500 that Stripe stored for it for
/// 24 h, and the cancel could not reach Stripe for a day (the simulation found it).
async fn call_stripe(
    ctx: &JobContext,
    when: CancelWhen,
    sub_id: &str,
    key: &str,
) -> Result<SubscriptionState, StripeFailure> {
    let mut last = StripeFailure::Transient("not tried".into());
    for try_number in 0..TRIES {
        let key = format!("{key}-{try_number}");
        let answer = match when {
            CancelWhen::PeriodEnd => ctx.ports.stripe.cancel_at_period_end(sub_id, &key).await,
            CancelWhen::Now => ctx.ports.stripe.cancel_now(sub_id, &key).await,
        };
        match answer {
            Ok(state) => return Ok(state),
            Err(StripeFailure::Permanent(detail)) => {
                // Refused: perhaps because it is canceled already (by us before, or by Stripe).
                return match ctx.ports.stripe.subscription_state(sub_id).await {
                    Ok(state) if state.status == STATUS_CANCELED => Ok(state),
                    _ => Err(StripeFailure::Permanent(detail)),
                };
            }
            Err(failure @ StripeFailure::BudgetUnavailable(_)) => return Err(failure),
            // Transient, or unknown: a cancel is safe to send again (cancelling twice changes
            // nothing).
            Err(failure) => last = failure,
        }
        tokio::time::sleep(PAUSE).await;
    }
    Err(last)
}

fn event_of(
    ctx: &JobContext,
    cancel: &CancelJob,
    state: &SubscriptionState,
    now: OffsetDateTime,
) -> LifecycleEvent {
    let canceled = state.status == STATUS_CANCELED;
    let mut data = Map::new();
    data.insert("sub_id".into(), state.id.clone().into());
    data.insert("status".into(), state.status.clone().into());
    let kind = if canceled {
        data.insert("canceled_at".into(), rfc3339(state.canceled_at).into());
        data.insert(
            "cancellation_reason".into(),
            state
                .cancellation_reason
                .clone()
                .map_or(Value::Null, Value::from),
        );
        LifecycleKind::Canceled
    } else {
        data.insert(
            "cancel_at_period_end".into(),
            state.cancel_at_period_end.into(),
        );
        data.insert(
            "current_period_end".into(),
            rfc3339(state.current_period_end).into(),
        );
        LifecycleKind::Updated
    };
    LifecycleEvent::new(
        kind,
        // The change's own id: Stripe's event about this same change is announced under it too.
        if canceled {
            change_id::canceled(&state.id)
        } else {
            change_id::updated(
                &state.id,
                &state.status,
                state.cancel_at_period_end,
                state.current_period_end,
            )
        },
        &ctx.ports.queue.event_source(),
        cancel.pay_id.as_str(),
        cancel.partner_code.as_str(),
        now.format(&Rfc3339).unwrap_or_default(),
        data,
    )
}

async fn wait(
    ctx: &JobContext,
    incoming: &Incoming,
    wait: Wait,
    attempt: u32,
    label: &'static str,
) -> Outcome {
    match ctx.ports.queue.delay(wait, incoming, attempt).await {
        Ok(()) => Outcome::ack(label),
        Err(_) => Outcome::hand_back(),
    }
}

pub(super) fn rfc3339(seconds: Option<i64>) -> String {
    seconds
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}
