//! The simulator's clock moving on (`POST /_sim/advance`): each subscription whose period
//! ends is renewed and its invoice charged, failed charges are retried as Stripe's smart
//! retries would, and period-end cancellations take effect — in the order they fall due, each
//! stamped with its own moment.
//!
//! A charge pays with the subscription's `default_payment_method`, else the customer's
//! `invoice_settings.default_payment_method`. Decline cards (`pm_card_chargeCustomerFail`,
//! which attaches fine) fail it: the invoice's PaymentIntent takes the card's error as its
//! `last_payment_error`, `invoice.payment_failed`, the subscription goes `past_due`,
//! and the invoice is retried [`RETRY_DAYS`] later; when the last retry fails the
//! subscription is canceled (`cancellation_details.reason` = `payment_failed`), as Stripe does
//! when the account's "if all retries fail" setting is "cancel the subscription".

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde_json::{Value, json};

use super::errors::ApiError;
use super::events::Request;
use super::faults::InvoiceShape;
use super::store::{
    Expand, Invoice, Payment, Store, new_id, period_end, render_invoice, render_items,
};
use super::store::{Subscription, render_subscription};

/// Days between a failed charge and its next retry; one entry per retry. Stripe's smart
/// retries spread up to eight tries over two weeks; three retries over 15 days keep its shape
/// and end before a monthly period does.
pub const RETRY_DAYS: [i64; 3] = [3, 5, 7];

const DAY: i64 = 86_400;

/// What one advance did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Advanced {
    pub now: i64,
    pub renewals: u64,
    pub payments_succeeded: u64,
    pub payments_failed: u64,
    pub canceled: u64,
    pub events: usize,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// A subscription's period ends (its id).
    PeriodEnd(String),
    /// A failed invoice's retry (its id).
    Retry(String),
}

/// Whether a subscription is billed again when its period ends.
fn renews(s: &Subscription) -> bool {
    matches!(s.status.as_str(), "active" | "trialing" | "past_due")
}

/// Moves the clock `seconds` on and does everything that fell due meanwhile.
pub fn advance(store: &mut Store, seconds: i64, shape: InvoiceShape) -> Advanced {
    let events_before = store.events.len();
    let start = store.now();
    let target = start.saturating_add(seconds.max(0));
    let mut report = Advanced::default();
    let mut due: BinaryHeap<Reverse<(i64, Due)>> = BinaryHeap::new();
    for s in store.subscriptions.values().filter(|s| renews(s)) {
        due.push(Reverse((s.period_end, Due::PeriodEnd(s.id.clone()))));
    }
    for i in store.invoices.values().filter(|i| !i.paid) {
        if let Some(at) = i.next_payment_attempt {
            due.push(Reverse((at, Due::Retry(i.id.clone()))));
        }
    }
    while let Some(Reverse((at, what))) = due.pop() {
        if at > target {
            break;
        }
        // Never backwards: something overdue happens now.
        store.pinned_now = Some(at.max(start));
        let next = match what {
            Due::PeriodEnd(id) => period_ends(store, &id, at, shape, &mut report),
            Due::Retry(id) => retry(store, &id, at, &mut report),
        };
        due.extend(next.into_iter().map(Reverse));
    }
    store.pinned_now = None;
    store.clock_offset = store.clock_offset.saturating_add(target - start);
    report.now = target;
    report.events = store.events.len() - events_before;
    report
}

/// The end of `id`'s period at `at`: a period-end cancel takes effect, or the next period
/// starts and is charged. Returns what falls due next for it.
fn period_ends(
    store: &mut Store,
    id: &str,
    at: i64,
    shape: InvoiceShape,
    report: &mut Advanced,
) -> Vec<(i64, Due)> {
    let Some(s) = store.subscriptions.get(id) else {
        return Vec::new();
    };
    // The subscription may have changed since this was queued (canceled by a failed retry).
    if !renews(s) || s.period_end != at {
        return Vec::new();
    }
    if s.cancel_at_period_end {
        end(store, id, at, "cancellation_requested");
        report.canceled += 1;
        return Vec::new();
    }
    let Some(recurring) = s
        .items
        .first()
        .and_then(|item| store.prices.get(&item.price))
        .and_then(|price| price.recurring.clone())
    else {
        return Vec::new();
    };
    let next_end = period_end(at, &recurring);
    let lines: Vec<(String, u64, i64)> = s
        .items
        .iter()
        .map(|item| {
            let unit = store.prices.get(&item.price).map_or(0, |p| p.unit_amount);
            let amount = unit.saturating_mul(i64::try_from(item.quantity).unwrap_or(i64::MAX));
            (item.price.clone(), item.quantity, amount)
        })
        .collect();
    let invoice = Invoice {
        id: new_id("in"),
        created: at,
        customer: s.customer.clone(),
        subscription: s.id.clone(),
        currency: s.currency.clone(),
        total: lines.iter().map(|l| l.2).sum(),
        lines,
        lines_period: (at, next_end),
        paid: false,
        paid_at: None,
        attempt_count: 0,
        next_payment_attempt: None,
        payment: None,
        billing_reason: "subscription_cycle",
        subscription_metadata: s.metadata.clone(),
        shape,
        status: "open".into(),
        period_start: s.period_start,
        period_end: at,
    };
    let mut previous = json!({
        "items": render_items(store, s),
        "latest_invoice": s.latest_invoice,
    });
    let invoice_id = invoice.id.clone();
    if let Some(s) = store.subscriptions.get_mut(id) {
        if s.status == "trialing" {
            previous["status"] = json!("trialing");
            s.status = "active".into();
        }
        s.period_start = at;
        s.period_end = next_end;
        s.latest_invoice = invoice_id.clone();
    }
    store.invoices.insert(invoice_id.clone(), invoice);
    report.renewals += 1;
    emit_subscription(store, id, "customer.subscription.updated", Some(previous));
    emit_invoice(
        store,
        &invoice_id,
        &["invoice.created", "invoice.finalized"],
    );
    let mut next = vec![(next_end, Due::PeriodEnd(id.to_owned()))];
    next.extend(charge(store, &invoice_id, at, report).map(|t| (t, Due::Retry(invoice_id))));
    next
}

/// A retry of a failed invoice, if it is still open and its subscription still billed.
fn retry(store: &mut Store, id: &str, at: i64, report: &mut Advanced) -> Vec<(i64, Due)> {
    let still_due = store.invoices.get(id).is_some_and(|i| {
        !i.paid
            && i.next_payment_attempt == Some(at)
            && store
                .subscriptions
                .get(&i.subscription)
                .is_some_and(|s| s.status != "canceled")
    });
    if !still_due {
        return Vec::new();
    }
    charge(store, id, at, report)
        .map(|t| (t, Due::Retry(id.to_owned())))
        .into_iter()
        .collect()
}

/// Charges an open invoice. Returns when it will be retried, if it failed and a retry is left.
fn charge(store: &mut Store, invoice_id: &str, at: i64, report: &mut Advanced) -> Option<i64> {
    let invoice = store.invoices.get(invoice_id)?;
    let subscription = store.subscriptions.get(&invoice.subscription)?;
    let sub_id = subscription.id.clone();
    let payment_method = subscription.default_payment_method.clone().or_else(|| {
        store
            .customers
            .get(&subscription.customer)
            .and_then(|c| c.default_payment_method.clone())
    });
    let outcome = match payment_method
        .as_ref()
        .and_then(|pm| store.payment_methods.get(pm))
    {
        None => Err(ApiError::invalid_request(
            "This customer has no attached payment source or default payment method.",
            None,
        )),
        Some(pm) => pm.card.behaviour.error().map_or(Ok(()), Err),
    };
    let invoice = store.invoices.get_mut(invoice_id)?;
    invoice.attempt_count += 1;
    // Every try charges the invoice's one PaymentIntent; its error is the last try's.
    let payment = invoice.payment.get_or_insert(Payment {
        created: at,
        payment_method: None,
        last_error: None,
    });
    payment.payment_method = payment_method;
    payment.last_error = outcome.as_ref().err().cloned();
    match outcome {
        Ok(()) => {
            invoice.paid = true;
            invoice.paid_at = Some(at);
            invoice.status = "paid".into();
            invoice.next_payment_attempt = None;
            report.payments_succeeded += 1;
            emit_invoice(
                store,
                invoice_id,
                &["invoice.paid", "invoice.payment_succeeded"],
            );
            // Only a past-due subscription can change here; the scan of its invoices is
            // skipped for the many that are not.
            let past_due = store
                .subscriptions
                .get(&sub_id)
                .is_some_and(|s| s.status == "past_due");
            if past_due
                && !store.invoices.values().any(|i| {
                    i.subscription == sub_id && !i.paid && i.next_payment_attempt.is_some()
                })
            {
                set_status(store, &sub_id, "active");
            }
            None
        }
        Err(_) => {
            let retry_at = RETRY_DAYS
                .get(usize::try_from(invoice.attempt_count.saturating_sub(1)).unwrap_or(usize::MAX))
                .map(|days| at + days * DAY);
            invoice.next_payment_attempt = retry_at;
            report.payments_failed += 1;
            emit_invoice(store, invoice_id, &["invoice.payment_failed"]);
            set_status(store, &sub_id, "past_due");
            if retry_at.is_none() {
                end(store, &sub_id, at, "payment_failed");
                report.canceled += 1;
            }
            retry_at
        }
    }
}

/// Changes a live subscription's status, announcing it.
fn set_status(store: &mut Store, id: &str, status: &str) {
    let Some(s) = store.subscriptions.get_mut(id) else {
        return;
    };
    if s.status == status || s.status == "canceled" {
        return;
    }
    let previous = json!({"status": s.status});
    s.status = status.to_owned();
    emit_subscription(store, id, "customer.subscription.updated", Some(previous));
}

/// Cancels a subscription at `at` for `reason`, announcing `customer.subscription.deleted`.
pub fn end(store: &mut Store, id: &str, at: i64, reason: &'static str) {
    let Some(s) = store.subscriptions.get_mut(id) else {
        return;
    };
    s.status = "canceled".into();
    s.canceled_at = s.canceled_at.or(Some(at));
    s.ended_at = Some(at);
    s.cancellation_reason = Some(reason);
    emit_subscription(store, id, "customer.subscription.deleted", None);
}

pub fn emit_subscription(store: &mut Store, id: &str, kind: &str, previous: Option<Value>) {
    emit_subscription_for(store, id, kind, previous, &Request::default());
}

pub fn emit_subscription_for(
    store: &mut Store,
    id: &str,
    kind: &str,
    previous: Option<Value>,
    request: &Request,
) {
    if let Some(s) = store.subscriptions.get(id) {
        let object = render_subscription(store, s, Expand::default());
        store.emit(kind, object, previous, request);
    }
}

pub fn emit_invoice(store: &mut Store, id: &str, kinds: &[&str]) {
    emit_invoice_for(store, id, kinds, &Request::default());
}

/// Announces the invoice as it is now, once for each of `kinds` (rendered once for all).
pub fn emit_invoice_for(store: &mut Store, id: &str, kinds: &[&str], request: &Request) {
    if let Some(invoice) = store.invoices.get(id) {
        let object = render_invoice(store, invoice);
        for kind in kinds {
            store.emit(kind, object.clone(), None, request);
        }
    }
}
