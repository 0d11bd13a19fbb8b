//! An invoice's payments and their PaymentIntents, read only: `GET /v1/invoice_payments`
//! (of one `invoice`), `GET /v1/invoice_payments/{id}` and `GET /v1/payment_intents/{id}`.
//! A failed charge's reason is read here, on the PaymentIntent's `last_payment_error`, as at
//! Stripe (since API version basil the invoice names no PaymentIntent of its own).

use serde_json::Value;

use super::{Ctx, check_known, check_list, expansions, page};
use crate::errors::ApiError;
use crate::form::Params;
use crate::store::{
    Invoice, Payment, Store, intent_id, invoice_payment_id, render_invoice_payment,
    render_payment_intent,
};

const EXPANDABLE: &[&str] = &["payment.payment_intent"];

pub fn list(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(params, &["invoice", "payment", "status"])?;
    let expand_intent = !expansions(params, EXPANDABLE)?.is_empty();
    // Stripe also lists every invoice's payments; the simulator keeps no order across
    // invoices, so it lists one invoice's.
    let Some(invoice_id) = params.optional("invoice")? else {
        return Err(ApiError::missing_param("invoice"));
    };
    let store = &*ctx.store;
    let invoice = store
        .invoices
        .get(invoice_id)
        .ok_or_else(|| ApiError::no_such_param("invoice", invoice_id, "invoice"))?;
    let payment = params.nested("payment")?.unwrap_or_default();
    check_known(&payment, &["type", "payment_intent", "payment_record"])?;
    let status = params.optional("status")?;
    let intent = intent_id(&invoice.id);
    let listed = invoice.payment.as_ref().filter(|_| {
        payment
            .optional("type")
            .ok()
            .flatten()
            .is_none_or(|t| t == "payment_intent")
            && payment
                .optional("payment_intent")
                .ok()
                .flatten()
                .is_none_or(|pi| pi == intent)
            && status.is_none_or(|s| s == if invoice.paid { "paid" } else { "open" })
    });
    let id = invoice_payment_id(&invoice.id);
    let ids: Vec<&str> = listed.map(|_| id.as_str()).into_iter().collect();
    page(ids, params, "/v1/invoice_payments", |_| {
        listed.map(|p| render_invoice_payment(store, invoice, p, expand_intent))
    })
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    let expand_intent = !expansions(params, EXPANDABLE)?.is_empty();
    let (invoice, payment) = paid_by(ctx.store, id.strip_prefix("inpay_"))
        .ok_or_else(|| ApiError::no_such("invoice_payment", id, "id"))?;
    Ok(render_invoice_payment(
        ctx.store,
        invoice,
        payment,
        expand_intent,
    ))
}

pub fn retrieve_intent(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand", "client_secret"])?;
    expansions(params, &[])?;
    let (invoice, payment) = paid_by(ctx.store, id.strip_prefix("pi_"))
        .ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))?;
    Ok(render_payment_intent(ctx.store, invoice, payment))
}

/// The invoice whose payment's id ends in `suffix`, and that payment.
fn paid_by<'s>(store: &'s Store, suffix: Option<&str>) -> Option<(&'s Invoice, &'s Payment)> {
    let invoice = store.invoices.get(&format!("in_{}", suffix?))?;
    Some((invoice, invoice.payment.as_ref()?))
}
