//! Stripe's events, as the worker makes them into the auto-renewal's state and result events
//! (docs/partners.md#the-rest-of-an-auto-renewals-life):
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
//! A failed renewal's reason (`code`, `decline_code`) is its PaymentIntent's
//! `last_payment_error`, which the event does not carry: the invoice's payments are listed
//! with it expanded (one call, on failures only).
//! The state never goes back (versions from the event's `created`); each event is announced,
//! with a CloudEvent id derived from Stripe's event id, so a redelivery announces the same id.

use std::collections::HashMap;

use miniserde::json::Value as JsonValue;
use serde_json::{Map, Value};
use stripe_shared::{ApiErrors, Event, Invoice, Subscription};
use stripe_types::Expandable;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::cancel::rfc3339;
use super::creation::JobContext;
use super::message::dead_letter;
use super::ports::{Incoming, Outcome};
use crate::domain::PartnerCode;
use crate::domain::event::{LifecycleEvent, LifecycleKind, change_id};
use crate::domain::money::{Currency, decimal_string};
use crate::domain::renewal::{RenewalChange, RenewalError, RenewalUpdate};
use crate::domain::request::{PayId, PayKey};
use crate::stripe::{PaymentError, StripeFailure, charged_intent};
use crate::telemetry::names::worker::STRIPE_EVENTS_TOTAL;

/// What one event means for one payId.
struct Meaning {
    kind: LifecycleKind,
    /// Ranks changes of the same second: a deletion wins over an update.
    rank: u64,
    /// The announcement's id, derived from the change ([`change_id`]).
    id: String,
    change: RenewalChange,
    data: Map<String, Value>,
}

pub(super) async fn handle(ctx: &JobContext, event: &Event, incoming: &Incoming) -> Outcome {
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
            let reason = invoice.billing_reason.as_ref().map(|r| r.as_str());
            if kind == "invoice.paid" && reason != Some("subscription_cycle") {
                // The first invoice is the creation's, announced as `succeeded` already.
                return counted(&kind, "ignored");
            }
            if kind == "invoice.payment_failed" && reason == Some("subscription_create") {
                // The first invoice's failure is the creation's, which its job answers: it is
                // no renewal (with `payment_behavior` `allow_incomplete` Stripe still sends it).
                return counted(&kind, "ignored");
            }
            invoice_meaning(ctx, &kind, &invoice, &event.data.object).await
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
        Err(StripeFailure::BudgetUnavailable(_)) => return Outcome::hand_back(),
        // Stripe says the subscription is not in this account (a 404, an id it refuses): it
        // cannot be one autorenew made, and asking again would loop for ever.
        Err(StripeFailure::Permanent(detail)) => {
            tracing::warn!(
                event = %event.id, kind = %kind, stripe_code = ?detail.stripe_code,
                "the event's subscription cannot be retrieved; counted as not ours"
            );
            return counted(&kind, "not_ours");
        }
        // The subscription could not be retrieved now: the event waits and comes back.
        Err(_) => {
            return match ctx
                .ports
                .queue
                .delay(super::ports::Wait::Lock, incoming, incoming.attempt)
                .await
            {
                Ok(()) => Outcome::ack("retry"),
                Err(_) => Outcome::hand_back(),
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
        .ports
        .store
        .apply_renewal(
            &PayKey::new(owner.partner.clone(), owner.pay_id.clone()),
            &update,
        )
        .await
        .is_err()
    {
        return Outcome::hand_back();
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
        meaning.id,
        &ctx.ports.queue.event_source(),
        owner.pay_id.as_str(),
        owner.partner.as_str(),
        time,
        meaning.data,
    );
    match ctx.ports.queue.announce_change(&announced).await {
        Ok(()) => counted(&kind, meaning.kind.as_str()),
        Err(error) => {
            tracing::warn!(event = %event.id, %error, "event not announced; handing it back");
            Outcome::hand_back()
        }
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
    ctx: &JobContext,
    kind: &str,
    invoice: &Invoice,
    object: &JsonValue,
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
                .ports
                .stripe
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
            id: change_id::renewed(subscription.id().as_str(), &invoice_id),
            change: RenewalChange::Renewed {
                invoice_id,
                paid_at,
            },
            data,
        }
    } else {
        let error = match carried_payment_error(invoice, object) {
            Carried::Error(error) => error,
            Carried::LookUp(_) if invoice_id.is_empty() => None,
            Carried::LookUp(intent) => match ctx
                .ports
                .stripe
                .invoice_payment_error(&invoice_id, intent.as_deref())
                .await
            {
                Ok(error) => error,
                // Stripe refused the lookup for good (the invoice is gone, say): the failed
                // renewal is still announced, its reason unknown, rather than never.
                Err(StripeFailure::Permanent(detail)) => {
                    tracing::warn!(
                        invoice = %invoice_id,
                        error = %detail.message,
                        "the failed payment's error could not be read"
                    );
                    None
                }
                Err(other) => return Err(other),
            },
        };
        failed_meaning(subscription.id().as_str(), invoice, invoice_id, error)
    };
    Ok(Some((owner, meaning)))
}

/// What an `invoice.payment_failed` event tells of why the payment failed.
#[derive(Debug, PartialEq, Eq)]
enum Carried {
    /// The event carries the PaymentIntent itself: its `last_payment_error`, no call.
    Error(Option<PaymentError>),
    /// It does not: the invoice's payments are looked up (one call), preferring this
    /// PaymentIntent when the event names one.
    LookUp(Option<String>),
}

/// A charge's decline is on its PaymentIntent (`last_payment_error`), never on the invoice:
/// the invoice's `last_finalization_error` is about finalizing it (tax, say), not paying it.
/// The older invoice shape names the PaymentIntent in `payment_intent` (an id, or expanded);
/// the current one has `payments`, which events do not include unless asked for.
fn carried_payment_error(invoice: &Invoice, object: &JsonValue) -> Carried {
    if let JsonValue::Object(fields) = object {
        match fields.get("payment_intent") {
            Some(JsonValue::String(id)) => return Carried::LookUp(Some(id.clone())),
            Some(JsonValue::Object(intent)) => {
                let id = match intent.get("id") {
                    Some(JsonValue::String(id)) => Some(id.clone()),
                    _ => None,
                };
                return match intent.get("last_payment_error") {
                    None | Some(JsonValue::Null) => Carried::Error(None),
                    Some(error) => {
                        match miniserde::json::from_str::<ApiErrors>(&miniserde::json::to_string(
                            error,
                        )) {
                            Ok(error) => Carried::Error(Some(PaymentError::from(&error))),
                            // Not readable here: the lookup reads it with Stripe's own shape.
                            Err(_) => Carried::LookUp(id),
                        }
                    }
                };
            }
            _ => {}
        }
    }
    match invoice
        .payments
        .as_ref()
        .and_then(|payments| charged_intent(&payments.data, None))
    {
        Some(Expandable::Object(intent)) => {
            Carried::Error(intent.last_payment_error.as_deref().map(PaymentError::from))
        }
        Some(Expandable::Id(id)) => Carried::LookUp(Some(id.to_string())),
        None => Carried::LookUp(None),
    }
}

/// A failed renewal, with its payment's error (`None`: Stripe gave no reason).
fn failed_meaning(
    sub_id: &str,
    invoice: &Invoice,
    invoice_id: String,
    error: Option<PaymentError>,
) -> Meaning {
    let (code, decline_code, message) = match error {
        Some(error) => (error.code, error.decline_code, error.message),
        None => (None, None, None),
    };
    let message = message.unwrap_or_else(|| "the renewal charge failed".into());
    let mut data = Map::new();
    data.insert("sub_id".into(), sub_id.into());
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
        id: change_id::renewal_failed(sub_id, &invoice_id, invoice.attempt_count),
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
    let sub_id = subscription.id.to_string();
    let (kind, rank, id) = if deleted {
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
        (LifecycleKind::Canceled, 3, change_id::canceled(&sub_id))
    } else {
        data.insert(
            "cancel_at_period_end".into(),
            subscription.cancel_at_period_end.into(),
        );
        data.insert(
            "current_period_end".into(),
            rfc3339(current_period_end).into(),
        );
        let id = change_id::updated(
            &sub_id,
            &status,
            subscription.cancel_at_period_end,
            current_period_end,
        );
        (LifecycleKind::Updated, 1, id)
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
            id,
            change,
            data,
        },
    ))
}

fn counted(kind: &str, outcome: &'static str) -> Outcome {
    metrics::counter!(STRIPE_EVENTS_TOTAL, "type" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
    Outcome::ack(if matches!(outcome, "not_ours" | "ignored" | "stored") {
        "stripe_event_ignored"
    } else {
        "stripe_event"
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An `invoice.payment_failed` invoice as Stripe sends it (current shape), with `extra`
    /// fields on top; and the event object the worker reads it from.
    fn failed_invoice(extra: Value) -> (Invoice, JsonValue) {
        let mut invoice = json!({
            "id": "in_1", "object": "invoice", "amount_due": 1999, "amount_overpaid": 0,
            "amount_paid": 0, "amount_remaining": 1999, "amount_shipping": 0,
            "attempt_count": 1, "attempted": true,
            "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
            "billing_reason": "subscription_cycle", "collection_method": "charge_automatically",
            "created": 1_767_225_600, "currency": "usd", "customer": "cus_1",
            "default_tax_rates": [], "discounts": [], "issuer": {"type": "self"},
            "last_finalization_error": null,
            "lines": {"object": "list", "data": [], "has_more": false, "url": "/v1/invoices/in_1/lines"},
            "livemode": false, "next_payment_attempt": 1_767_484_800,
            "parent": {"quote_details": null, "type": "subscription_details",
                       "subscription_details": {"metadata": {"payId": "P1", "partnerCode": "P000818"},
                                                "subscription": "sub_1"}},
            "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
            "period_end": 1_767_225_600, "period_start": 1_764_633_600,
            "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
            "starting_balance": 0, "status": "open",
            "status_transitions": {"finalized_at": 1_767_225_600, "marked_uncollectible_at": null, "paid_at": null, "voided_at": null},
            "subtotal": 1999, "total": 1999,
        });
        if let (Value::Object(invoice), Value::Object(extra)) = (&mut invoice, extra) {
            invoice.extend(extra);
        }
        let text = invoice.to_string();
        let parsed = miniserde::json::from_str::<Invoice>(&text).expect("async-stripe reads it");
        let object = miniserde::json::from_str::<JsonValue>(&text).expect("json");
        (parsed, object)
    }

    fn declined(decline_code: &str) -> Value {
        json!({"type": "card_error", "code": "card_declined", "decline_code": decline_code,
               "message": "Your card has insufficient funds."})
    }

    /// A PaymentIntent whose last charge failed with `error`.
    fn intent(id: &str, error: Value) -> Value {
        json!({"id": id, "object": "payment_intent", "amount": 1999, "amount_capturable": 0,
               "amount_received": 0, "capture_method": "automatic",
               "confirmation_method": "automatic", "created": 1_767_225_600, "currency": "usd",
               "last_payment_error": error, "livemode": false, "metadata": {},
               "payment_method_types": ["card"], "status": "requires_payment_method"})
    }

    fn payment(id: &str, is_default: bool, intent: Value) -> Value {
        json!({"id": id, "object": "invoice_payment", "amount_paid": null,
               "amount_requested": 1999, "created": 1_767_225_600, "currency": "usd",
               "invoice": "in_1", "is_default": is_default, "livemode": false,
               "payment": {"type": "payment_intent", "payment_intent": intent},
               "status": "open", "status_transitions": {"canceled_at": null, "paid_at": null}})
    }

    #[test]
    fn a_finalization_error_is_not_reported_as_the_payment_s_decline() {
        // Stripe puts a decline on the PaymentIntent; `last_finalization_error` is about
        // finalizing the invoice. Reading it as the decline is what a simulator that put the
        // charge's error there would have let through.
        let (invoice, object) =
            failed_invoice(json!({"last_finalization_error": declined("generic_decline")}));

        let carried = carried_payment_error(&invoice, &object);
        let meaning = failed_meaning("sub_1", &invoice, "in_1".into(), None);

        assert_eq!(carried, Carried::LookUp(None), "the payment is looked up");
        assert_eq!(
            meaning.data["error"],
            json!({"code": null, "decline_code": null, "message": "the renewal charge failed"})
        );
        assert!(matches!(
            meaning.change,
            RenewalChange::RenewalFailed { error } if error.decline_code.is_none() && error.code.is_none()
        ));
    }

    #[test]
    fn the_payment_s_error_is_what_is_announced() {
        let (invoice, _) = failed_invoice(json!({}));
        let error = PaymentError {
            code: Some("card_declined".into()),
            decline_code: Some("insufficient_funds".into()),
            message: Some("Your card has insufficient funds.".into()),
        };

        let meaning = failed_meaning("sub_1", &invoice, "in_1".into(), Some(error));

        assert_eq!(
            meaning.data["error"],
            json!({"code": "card_declined", "decline_code": "insufficient_funds",
                   "message": "Your card has insufficient funds."})
        );
        assert_eq!(meaning.data["invoice_id"], "in_1");
        assert_eq!(meaning.data["attempt_count"], 1);
    }

    #[test]
    fn the_older_shape_s_payment_intent_id_names_the_payment_to_look_up() {
        let (invoice, object) = failed_invoice(json!({"payment_intent": "pi_1"}));

        assert_eq!(
            carried_payment_error(&invoice, &object),
            Carried::LookUp(Some("pi_1".into()))
        );
    }

    #[test]
    fn an_expanded_payment_intent_gives_its_error_without_a_call() {
        let (invoice, object) = failed_invoice(
            json!({"payment_intent": intent("pi_1", declined("insufficient_funds"))}),
        );
        let (no_error, no_error_object) =
            failed_invoice(json!({"payment_intent": intent("pi_1", Value::Null)}));

        let carried = carried_payment_error(&invoice, &object);

        assert!(
            matches!(&carried, Carried::Error(Some(e)) if e.decline_code.as_deref() == Some("insufficient_funds")),
            "{carried:?}"
        );
        assert_eq!(
            carried_payment_error(&no_error, &no_error_object),
            Carried::Error(None)
        );
    }

    #[test]
    fn included_payments_give_the_default_payment_s_error() {
        let payments = json!({"object": "list", "has_more": false,
        "url": "/v1/invoice_payments?invoice=in_1",
        "data": [
            payment("inpay_2", false, intent("pi_2", declined("lost_card"))),
            payment("inpay_1", true, intent("pi_1", declined("insufficient_funds"))),
        ]});
        let (invoice, object) = failed_invoice(json!({"payments": payments}));
        let (ids_only, ids_object) = failed_invoice(json!({"payments": {
            "object": "list", "has_more": false, "url": "/v1/invoice_payments?invoice=in_1",
            "data": [payment("inpay_1", true, json!("pi_1"))]}}));

        let carried = carried_payment_error(&invoice, &object);

        assert!(
            matches!(&carried, Carried::Error(Some(e)) if e.decline_code.as_deref() == Some("insufficient_funds")),
            "{carried:?}"
        );
        assert_eq!(
            carried_payment_error(&ids_only, &ids_object),
            Carried::LookUp(Some("pi_1".into()))
        );
    }
}
