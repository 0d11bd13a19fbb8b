//! Stripe's events, as the worker makes them into the auto-renewal's state and result events
//! (CONTRACT §9.2):
//!
//! | Stripe event | announced as |
//! |---|---|
//! | `invoice.paid`, `billing_reason` `subscription_cycle` | `subscription.renewed` |
//! | `invoice.payment_failed` | `subscription.renewal_failed` |
//! | `customer.subscription.updated` changing `status` or `cancel_at_period_end` | `subscription.updated` |
//! | `customer.subscription.deleted` | `subscription.canceled` |
//!
//! Every object is read with async-stripe's own types (`Event`, `Invoice`, `Subscription`).
//! The subscription's metadata (`payId`, `partnerCode`) ties an event to its payId; an invoice
//! carries it in `parent.subscription_details` (current API versions), else the subscription is
//! retrieved (one call). Events of subscriptions autorenew did not make are counted and acked.
//! The state never goes back (versions from the event's `created`); each event is announced,
//! with a CloudEvent id derived from Stripe's event id, so a redelivery announces the same id.

use std::collections::HashMap;

use serde_json::{Map, Value};
use stripe_shared::{Event, Invoice, Subscription};
use stripe_types::Expandable;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::cancel::{LifecycleContext, announce, dead_letter, rfc3339};
use super::job::Handled;
use super::ports::{Incoming, JobQueue};
use crate::domain::PartnerCode;
use crate::domain::event::{LifecycleEvent, LifecycleKind};
use crate::domain::money::{Currency, decimal_string};
use crate::domain::renewal::{RenewalChange, RenewalError, RenewalUpdate};
use crate::domain::request::PayId;
use crate::stripe::StripeFailure;

/// Stripe events seen by the worker, by type and what became of them.
pub const STRIPE_EVENTS_TOTAL: &str = "autorenew_worker_stripe_events_total";

/// What one event means for one payId.
struct Meaning {
    kind: LifecycleKind,
    /// Ranks changes of the same second: a deletion wins over an update.
    rank: u64,
    change: RenewalChange,
    data: Map<String, Value>,
}

pub async fn handle(ctx: &LifecycleContext, incoming: &Incoming) -> Handled {
    let Some(event) = std::str::from_utf8(&incoming.body)
        .ok()
        .and_then(|text| miniserde::json::from_str::<Event>(text).ok())
    else {
        return dead_letter(ctx, incoming, "not a Stripe event", "poison").await;
    };
    let kind = event.type_.to_string();
    let object = miniserde::json::to_string(&event.data.object);
    let changed_fields: Vec<String> = match &event.data.previous_attributes {
        Some(miniserde::json::Value::Object(previous)) => previous.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut announce_it = true;
    let tie = match kind.as_str() {
        "invoice.paid" | "invoice.payment_failed" => {
            let Ok(invoice) = miniserde::json::from_str::<Invoice>(&object) else {
                return dead_letter(ctx, incoming, "an invoice that does not parse", "poison")
                    .await;
            };
            if kind == "invoice.paid"
                && invoice.billing_reason.as_ref().map(|r| r.as_str()) != Some("subscription_cycle")
            {
                // The first invoice is the creation's, announced as `succeeded` already.
                return counted(&kind, "ignored");
            }
            invoice_meaning(ctx, &kind, &invoice).await
        }
        "customer.subscription.updated" | "customer.subscription.deleted" => {
            let Ok(subscription) = miniserde::json::from_str::<Subscription>(&object) else {
                return dead_letter(
                    ctx,
                    incoming,
                    "a subscription that does not parse",
                    "poison",
                )
                .await;
            };
            let deleted = kind == "customer.subscription.deleted";
            // Only a change of status or of cancel_at_period_end is announced; a new period is
            // still stored, so the query knows the period's end.
            announce_it = deleted
                || changed_fields
                    .iter()
                    .any(|field| field == "status" || field == "cancel_at_period_end");
            Ok(subscription_meaning(&subscription, deleted))
        }
        _ => return counted(&kind, "ignored"),
    };
    let (owner, meaning) = match tie {
        Ok(Some(tied)) => tied,
        Ok(None) => return counted(&kind, "not_ours"),
        Err(StripeFailure::BudgetUnavailable(_)) => return Handled::requeue("handed_back"),
        // The subscription could not be retrieved now: the event waits and comes back.
        Err(_) => {
            return match ctx
                .queue
                .delay(super::ports::Wait::Lock, incoming, incoming.attempt)
                .await
            {
                Ok(()) => Handled::ack("retry"),
                Err(_) => Handled::requeue("handed_back"),
            };
        }
    };
    let created = u64::try_from(event.created).unwrap_or(0);
    let update = RenewalUpdate {
        partner_code: owner.partner.clone(),
        version: (created << 16) | meaning.rank,
        change: meaning.change,
    };
    if ctx
        .store
        .apply_renewal(&owner.pay_id, &update)
        .await
        .is_err()
    {
        return Handled::requeue("handed_back");
    }
    if !announce_it {
        return counted(&kind, "stored");
    }
    let time = OffsetDateTime::from_unix_timestamp(event.created)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let announced = LifecycleEvent::new(
        meaning.kind,
        format!("stripe:{}", event.id),
        &ctx.queue.event_source(),
        owner.pay_id.as_str(),
        owner.partner.as_str(),
        time,
        meaning.data,
    );
    match announce(ctx, &announced).await {
        Ok(()) => counted(&kind, meaning.kind.as_str()),
        Err(()) => Handled::requeue("handed_back"),
    }
}

/// The payId and partner an object belongs to.
struct Owner {
    pay_id: PayId,
    partner: PartnerCode,
}

fn owner_of(metadata: &HashMap<String, String>) -> Option<Owner> {
    let pay_id = PayId::parse(metadata.get("payId")?).ok()?;
    let partner = PartnerCode::parse(metadata.get("partnerCode")?).ok()?;
    Some(Owner { pay_id, partner })
}

async fn invoice_meaning(
    ctx: &LifecycleContext,
    kind: &str,
    invoice: &Invoice,
) -> Result<Option<(Owner, Meaning)>, StripeFailure> {
    // The current shape names the subscription and its metadata in `parent`; the older one
    // names the subscription at the top.
    let details = invoice
        .parent
        .as_ref()
        .and_then(|parent| parent.subscription_details.as_ref());
    let subscription = details
        .map(|d| &d.subscription)
        .or(invoice.subscription.as_ref());
    let Some(subscription) = subscription else {
        return Ok(None);
    };
    let carried = details
        .and_then(|d| d.metadata.as_ref())
        .and_then(owner_of)
        .or_else(|| match subscription {
            Expandable::Object(sub) => owner_of(&sub.metadata),
            Expandable::Id(_) => None,
        });
    let owner = match carried {
        Some(owner) => owner,
        None => {
            let metadata = ctx
                .gateway
                .subscription_metadata(subscription.id().as_str())
                .await?;
            match owner_of(&metadata) {
                Some(owner) => owner,
                None => return Ok(None),
            }
        }
    };
    let invoice_id = invoice
        .id
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let meaning = if kind == "invoice.paid" {
        let code = invoice.currency.to_string();
        let currency = Currency::parse(&code);
        let amount = currency.map_or_else(
            || invoice.amount_paid.to_string(),
            |currency| decimal_string(invoice.amount_paid, currency),
        );
        // A cycle invoice's own period is the one just ended; its line's is the one paid for.
        let (start, end) = invoice
            .lines
            .data
            .first()
            .map_or((invoice.period_start, invoice.period_end), |line| {
                (line.period.start, line.period.end)
            });
        let paid_at = invoice
            .status_transitions
            .paid_at
            .unwrap_or(invoice.created);
        let mut data = Map::new();
        data.insert("sub_id".into(), subscription.id().to_string().into());
        data.insert("invoice_id".into(), invoice_id.clone().into());
        data.insert("amount_paid".into(), amount.into());
        data.insert("currency".into(), code.clone().into());
        data.insert("period_start".into(), rfc3339(Some(start)).into());
        data.insert("period_end".into(), rfc3339(Some(end)).into());
        Meaning {
            kind: LifecycleKind::Renewed,
            rank: 1,
            change: RenewalChange::Renewed {
                invoice_id,
                paid_at,
            },
            data,
        }
    } else {
        let error = invoice.last_finalization_error.as_deref();
        let code = error
            .and_then(|e| e.code.as_ref())
            .map(|c| c.as_str().to_owned());
        let decline_code = error.and_then(|e| e.decline_code.clone());
        let message = error
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| "the renewal charge failed".into());
        let mut data = Map::new();
        data.insert("sub_id".into(), subscription.id().to_string().into());
        data.insert("invoice_id".into(), invoice_id.clone().into());
        data.insert("attempt_count".into(), invoice.attempt_count.into());
        data.insert(
            "next_payment_attempt".into(),
            invoice
                .next_payment_attempt
                .map_or(Value::Null, |t| rfc3339(Some(t)).into()),
        );
        data.insert(
            "error".into(),
            serde_json::json!({"code": code, "decline_code": decline_code, "message": message}),
        );
        Meaning {
            kind: LifecycleKind::RenewalFailed,
            rank: 1,
            change: RenewalChange::RenewalFailed {
                error: RenewalError {
                    invoice_id,
                    code,
                    decline_code,
                    message,
                },
            },
            data,
        }
    };
    Ok(Some((owner, meaning)))
}

fn subscription_meaning(subscription: &Subscription, deleted: bool) -> Option<(Owner, Meaning)> {
    let owner = owner_of(&subscription.metadata)?;
    let current_period_end = subscription
        .items
        .data
        .first()
        .map(|item| item.current_period_end);
    let status = subscription.status.to_string();
    let mut data = Map::new();
    data.insert("sub_id".into(), subscription.id.to_string().into());
    data.insert("status".into(), status.clone().into());
    let (kind, rank) = if deleted {
        data.insert(
            "canceled_at".into(),
            rfc3339(subscription.canceled_at).into(),
        );
        data.insert(
            "cancellation_reason".into(),
            subscription
                .cancellation_details
                .as_ref()
                .and_then(|d| d.reason.as_ref())
                .map_or(Value::Null, |r| r.to_string().into()),
        );
        (LifecycleKind::Canceled, 3)
    } else {
        data.insert(
            "cancel_at_period_end".into(),
            subscription.cancel_at_period_end.into(),
        );
        data.insert(
            "current_period_end".into(),
            rfc3339(current_period_end).into(),
        );
        (LifecycleKind::Updated, 1)
    };
    let change = RenewalChange::Subscription {
        sub_id: subscription.id.to_string(),
        status,
        current_period_end,
        cancel_at_period_end: subscription.cancel_at_period_end,
        canceled_at: subscription.canceled_at,
    };
    Some((
        owner,
        Meaning {
            kind,
            rank,
            change,
            data,
        },
    ))
}

fn counted(kind: &str, outcome: &'static str) -> Handled {
    metrics::counter!(STRIPE_EVENTS_TOTAL, "type" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
    Handled::ack(if matches!(outcome, "not_ours" | "ignored" | "stored") {
        "stripe_event_ignored"
    } else {
        "stripe_event"
    })
}
