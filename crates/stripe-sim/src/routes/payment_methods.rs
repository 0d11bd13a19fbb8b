//! Payment methods: retrieve, attach, detach, list for a customer.
//!
//! See [`crate::cards`] for what a test id (`pm_card_visa`) and a partner's own `pm_…`
//! id stand for.

use serde_json::Value;

use super::{Ctx, check_known, check_list, expansions, page};
use crate::cards::{self, Behaviour};
use crate::errors::ApiError;
use crate::faults::{DeclinesAt, UnknownPaymentMethods};
use crate::form::Params;
use crate::store::{PaymentMethod, new_id, render_payment_method};

const ATTACHED_ELSEWHERE: &str =
    "The payment method you provided has already been attached to a customer.";

/// What a payment method id names right now.
enum Found {
    /// An object the simulator holds (minted from a test id, or a partner id seen before).
    Stored,
    /// A Stripe test id: a recipe for a fresh object.
    TestCard(cards::Card),
    /// A partner's id never seen before, taken as an existing good card.
    Partner,
}

fn find(ctx: &Ctx, id: &str, param: &str, in_path: bool) -> Result<Found, ApiError> {
    if ctx.store.payment_methods.contains_key(id) {
        return Ok(Found::Stored);
    }
    if let Some(card) = cards::test_card(id) {
        return Ok(Found::TestCard(card));
    }
    if cards::is_well_formed(id)
        && ctx.config.unknown_payment_methods == UnknownPaymentMethods::GoodCard
    {
        return Ok(Found::Partner);
    }
    Err(if in_path {
        ApiError::no_such("PaymentMethod", id, param)
    } else {
        ApiError::no_such_param("PaymentMethod", id, param)
    })
}

/// The stored id for `id`: an existing object, a fresh one minted from a test id, or a
/// partner id materialised under its own name.
fn materialise(ctx: &mut Ctx, id: &str, param: &str, in_path: bool) -> Result<String, ApiError> {
    let (stored_id, card) = match find(ctx, id, param, in_path)? {
        Found::Stored => return Ok(id.to_owned()),
        Found::TestCard(card) => (new_id("pm"), card),
        Found::Partner => (id.to_owned(), cards::partner_card(id)),
    };
    ctx.store.insert_payment_method(PaymentMethod {
        id: stored_id.clone(),
        created: ctx.store.now(),
        customer: None,
        card,
        metadata: Default::default(),
    });
    Ok(stored_id)
}

/// Whether `id` could be attached to a customer now: it exists, is not attached elsewhere,
/// and passes the card check. Changes nothing.
pub fn check_attachable(ctx: &Ctx, id: &str, param: &str) -> Result<(), ApiError> {
    let behaviour = match find(ctx, id, param, false)? {
        Found::Stored => {
            let pm = &ctx.store.payment_methods[id];
            if pm.customer.is_some() {
                return Err(ApiError::invalid_request(ATTACHED_ELSEWHERE, None));
            }
            pm.card.behaviour.clone()
        }
        Found::TestCard(card) => card.behaviour,
        Found::Partner => Behaviour::Good,
    };
    attach_check(ctx, &behaviour)
}

/// Whether `id` could be set up for a customer now, by a SetupIntent's confirm: as
/// [`check_attachable`], except that a card Stripe declines at setup always fails here,
/// whatever `declines_at` says (checking the card is what a SetupIntent is for).
pub fn check_setup(ctx: &Ctx, id: &str, param: &str) -> Result<(), ApiError> {
    let behaviour = match find(ctx, id, param, false)? {
        Found::Stored => ctx.store.payment_methods[id].card.behaviour.clone(),
        Found::TestCard(card) => card.behaviour,
        Found::Partner => Behaviour::Good,
    };
    match &behaviour {
        Behaviour::Decline {
            on_attach: true, ..
        } => behaviour.error().map_or(Ok(()), Err),
        _ => Ok(()),
    }
}

/// Stripe verifies a card when it is attached; decline cards fail there unless the
/// simulator is told to decline only at charge time.
fn attach_check(ctx: &Ctx, behaviour: &Behaviour) -> Result<(), ApiError> {
    match behaviour {
        Behaviour::Decline {
            on_attach: true, ..
        } if ctx.config.declines_at == DeclinesAt::Attach => behaviour.error().map_or(Ok(()), Err),
        _ => Ok(()),
    }
}

/// Attaches `id` to `customer` and returns the attached object's id (a fresh one for test
/// ids). Attaching to the customer it is already on is a no-op, as in Stripe.
pub fn attach_to(ctx: &mut Ctx, id: &str, customer: &str, param: &str) -> Result<String, ApiError> {
    if let Some(pm) = ctx.store.payment_methods.get(id) {
        match pm.customer.as_deref() {
            Some(owner) if owner == customer => return Ok(id.to_owned()),
            Some(_) => return Err(ApiError::invalid_request(ATTACHED_ELSEWHERE, None)),
            None => {}
        }
    }
    check_attachable(ctx, id, param)?;
    let stored = materialise(ctx, id, param, false)?;
    if let Some(pm) = ctx.store.payment_methods.get_mut(&stored) {
        pm.customer = Some(customer.to_owned());
        let object = render_payment_method(pm);
        ctx.store
            .emit("payment_method.attached", object, None, &ctx.request);
    }
    Ok(stored)
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    expansions(params, &[])?;
    let stored = materialise(ctx, id, "payment_method", true)?;
    Ok(render_payment_method(&ctx.store.payment_methods[&stored]))
}

pub fn attach(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["customer", "customer_account", "expand"])?;
    expansions(params, &[])?;
    let customer = params.required("customer")?;
    if !ctx.store.customers.contains_key(customer) {
        return Err(ApiError::no_such_param("customer", customer, "customer"));
    }
    // The id in the path names the payment method; a missing one is a 404 like any path id.
    find(ctx, id, "payment_method", true)?;
    let stored = attach_to(ctx, id, customer, "payment_method")?;
    Ok(render_payment_method(&ctx.store.payment_methods[&stored]))
}

pub fn detach(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    let Some(pm) = ctx.store.payment_methods.get_mut(id) else {
        return Err(ApiError::no_such("PaymentMethod", id, "payment_method"));
    };
    let Some(owner) = pm.customer.take() else {
        return Err(ApiError::invalid_request(
            "The payment method you provided is not attached to a customer so detachment is \
             impossible.",
            None,
        ));
    };
    if let Some(customer) = ctx.store.customers.get_mut(&owner)
        && customer.default_payment_method.as_deref() == Some(id)
    {
        customer.default_payment_method = None;
    }
    Ok(render_payment_method(&ctx.store.payment_methods[id]))
}

/// `GET /v1/payment_methods?customer=…&type=card`.
pub fn list(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(
        params,
        &["customer", "customer_account", "type", "allow_redisplay"],
    )?;
    match params.optional("customer")? {
        Some(customer) => listing(ctx, customer, params, "/v1/payment_methods"),
        // Without a customer Stripe lists the account's unattached Treasury methods; the
        // simulator has none.
        None => page(Vec::new(), params, "/v1/payment_methods", |_| None),
    }
}

/// `GET /v1/customers/{id}/payment_methods`.
pub fn list_for(ctx: &mut Ctx, customer: &str, params: &Params) -> Result<Value, ApiError> {
    check_list(params, &["type", "allow_redisplay"])?;
    let url = format!("/v1/customers/{customer}/payment_methods");
    listing(ctx, customer, params, &url)
}

fn listing(ctx: &Ctx, customer: &str, params: &Params, url: &str) -> Result<Value, ApiError> {
    expansions(params, &[])?;
    if !ctx.store.customers.contains_key(customer) {
        return Err(ApiError::no_such_param("customer", customer, "customer"));
    }
    if let Some(kind) = params.optional("type")?
        && kind != "card"
    {
        // Every simulated payment method is a card.
        return page(Vec::new(), params, url, |_| None);
    }
    let store = &*ctx.store;
    let ids: Vec<&str> = store
        .payment_method_order
        .iter()
        .rev()
        .filter(|id| {
            store
                .payment_methods
                .get(*id)
                .is_some_and(|pm| pm.customer.as_deref() == Some(customer))
        })
        .map(String::as_str)
        .collect();
    page(ids, params, url, |id| {
        store.payment_methods.get(id).map(render_payment_method)
    })
}
