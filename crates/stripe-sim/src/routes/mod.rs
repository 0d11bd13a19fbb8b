//! The Stripe API surface: which (method, path) is which endpoint, and the helpers the
//! endpoints share (parameter checks, list pages).
//!
//! Endpoints are plain synchronous functions over the store: the dispatcher runs them under
//! the state lock, so each is atomic and no lock is ever held across an await.

mod catalog;
mod customers;
mod events;
mod payment_methods;
mod payments;
pub mod search;
mod setup_intents;
mod subscriptions;
mod webhook_endpoints;

use std::time::Instant;

use axum::http::Method;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::events::Request;
use super::faults::FaultConfig;
use super::form::Params;
use super::store::Store;

/// Everything an endpoint may read or change.
pub struct Ctx<'a> {
    pub store: &'a mut Store,
    pub config: &'a FaultConfig,
    pub now: Instant,
    /// What events this request causes record as their `request`.
    pub request: Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    CreateCustomer,
    ListCustomers,
    SearchCustomers,
    RetrieveCustomer,
    UpdateCustomer,
    ListCustomerPaymentMethods,
    ListPaymentMethods,
    RetrievePaymentMethod,
    AttachPaymentMethod,
    DetachPaymentMethod,
    CreateProduct,
    ListProducts,
    RetrieveProduct,
    CreatePrice,
    ListPrices,
    RetrievePrice,
    CreateSubscription,
    ListSubscriptions,
    SearchSubscriptions,
    RetrieveSubscription,
    UpdateSubscription,
    CancelSubscription,
    RetrieveInvoice,
    ListInvoicePayments,
    RetrieveInvoicePayment,
    RetrievePaymentIntent,
    CreateSetupIntent,
    RetrieveSetupIntent,
    ConfirmSetupIntent,
    CreateWebhookEndpoint,
    ListWebhookEndpoints,
    RetrieveWebhookEndpoint,
    DeleteWebhookEndpoint,
    ListEvents,
    RetrieveEvent,
}

impl Route {
    /// The endpoint for a request and the object id in its path, if any.
    pub fn find<'p>(method: &Method, path: &'p str) -> Option<(Route, Option<&'p str>)> {
        use Route::*;
        let rest = path.strip_prefix("/v1/")?;
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let get = method == Method::GET;
        let post = method == Method::POST;
        let found = match (segments.as_slice(), get, post) {
            (["customers"], false, true) => (CreateCustomer, None),
            (["customers"], true, _) => (ListCustomers, None),
            (["customers", "search"], true, _) => (SearchCustomers, None),
            (["customers", id], true, _) => (RetrieveCustomer, Some(*id)),
            (["customers", id], false, true) => (UpdateCustomer, Some(*id)),
            (["customers", id, "payment_methods"], true, _) => {
                (ListCustomerPaymentMethods, Some(*id))
            }
            (["payment_methods"], true, _) => (ListPaymentMethods, None),
            (["payment_methods", id], true, _) => (RetrievePaymentMethod, Some(*id)),
            (["payment_methods", id, "attach"], false, true) => (AttachPaymentMethod, Some(*id)),
            (["payment_methods", id, "detach"], false, true) => (DetachPaymentMethod, Some(*id)),
            (["products"], false, true) => (CreateProduct, None),
            (["products"], true, _) => (ListProducts, None),
            (["products", id], true, _) => (RetrieveProduct, Some(*id)),
            (["prices"], false, true) => (CreatePrice, None),
            (["prices"], true, _) => (ListPrices, None),
            (["prices", id], true, _) => (RetrievePrice, Some(*id)),
            (["subscriptions"], false, true) => (CreateSubscription, None),
            (["subscriptions"], true, _) => (ListSubscriptions, None),
            (["subscriptions", "search"], true, _) => (SearchSubscriptions, None),
            (["subscriptions", id], true, _) => (RetrieveSubscription, Some(*id)),
            (["subscriptions", id], false, true) => (UpdateSubscription, Some(*id)),
            (["subscriptions", id], false, false) if method == Method::DELETE => {
                (CancelSubscription, Some(*id))
            }
            (["invoices", id], true, _) => (RetrieveInvoice, Some(*id)),
            (["invoice_payments"], true, _) => (ListInvoicePayments, None),
            (["invoice_payments", id], true, _) => (RetrieveInvoicePayment, Some(*id)),
            (["payment_intents", id], true, _) => (RetrievePaymentIntent, Some(*id)),
            (["setup_intents"], false, true) => (CreateSetupIntent, None),
            (["setup_intents", id], true, _) => (RetrieveSetupIntent, Some(*id)),
            (["setup_intents", id, "confirm"], false, true) => (ConfirmSetupIntent, Some(*id)),
            (["webhook_endpoints"], false, true) => (CreateWebhookEndpoint, None),
            (["webhook_endpoints"], true, _) => (ListWebhookEndpoints, None),
            (["webhook_endpoints", id], true, _) => (RetrieveWebhookEndpoint, Some(*id)),
            (["webhook_endpoints", id], false, false) if method == Method::DELETE => {
                (DeleteWebhookEndpoint, Some(*id))
            }
            (["events"], true, _) => (ListEvents, None),
            (["events", id], true, _) => (RetrieveEvent, Some(*id)),
            _ => return None,
        };
        Some(found)
    }

    /// The route's name in stats and scripts.
    pub fn template(self) -> &'static str {
        use Route::*;
        match self {
            CreateCustomer => "POST /v1/customers",
            ListCustomers => "GET /v1/customers",
            SearchCustomers => "GET /v1/customers/search",
            RetrieveCustomer => "GET /v1/customers/{id}",
            UpdateCustomer => "POST /v1/customers/{id}",
            ListCustomerPaymentMethods => "GET /v1/customers/{id}/payment_methods",
            ListPaymentMethods => "GET /v1/payment_methods",
            RetrievePaymentMethod => "GET /v1/payment_methods/{id}",
            AttachPaymentMethod => "POST /v1/payment_methods/{id}/attach",
            DetachPaymentMethod => "POST /v1/payment_methods/{id}/detach",
            CreateProduct => "POST /v1/products",
            ListProducts => "GET /v1/products",
            RetrieveProduct => "GET /v1/products/{id}",
            CreatePrice => "POST /v1/prices",
            ListPrices => "GET /v1/prices",
            RetrievePrice => "GET /v1/prices/{id}",
            CreateSubscription => "POST /v1/subscriptions",
            ListSubscriptions => "GET /v1/subscriptions",
            SearchSubscriptions => "GET /v1/subscriptions/search",
            RetrieveSubscription => "GET /v1/subscriptions/{id}",
            UpdateSubscription => "POST /v1/subscriptions/{id}",
            CancelSubscription => "DELETE /v1/subscriptions/{id}",
            RetrieveInvoice => "GET /v1/invoices/{id}",
            ListInvoicePayments => "GET /v1/invoice_payments",
            RetrieveInvoicePayment => "GET /v1/invoice_payments/{id}",
            RetrievePaymentIntent => "GET /v1/payment_intents/{id}",
            CreateSetupIntent => "POST /v1/setup_intents",
            RetrieveSetupIntent => "GET /v1/setup_intents/{id}",
            ConfirmSetupIntent => "POST /v1/setup_intents/{id}/confirm",
            CreateWebhookEndpoint => "POST /v1/webhook_endpoints",
            ListWebhookEndpoints => "GET /v1/webhook_endpoints",
            RetrieveWebhookEndpoint => "GET /v1/webhook_endpoints/{id}",
            DeleteWebhookEndpoint => "DELETE /v1/webhook_endpoints/{id}",
            ListEvents => "GET /v1/events",
            RetrieveEvent => "GET /v1/events/{id}",
        }
    }

    /// Runs the endpoint. `id` is present exactly for the routes whose path carries one.
    pub fn execute(
        self,
        ctx: &mut Ctx,
        id: Option<&str>,
        params: &Params,
    ) -> Result<Value, ApiError> {
        use Route::*;
        let id = id.unwrap_or_default();
        match self {
            CreateCustomer => customers::create(ctx, params),
            ListCustomers => customers::list(ctx, params),
            SearchCustomers => customers::search(ctx, params),
            RetrieveCustomer => customers::retrieve(ctx, id, params),
            UpdateCustomer => customers::update(ctx, id, params),
            ListCustomerPaymentMethods => payment_methods::list_for(ctx, id, params),
            ListPaymentMethods => payment_methods::list(ctx, params),
            RetrievePaymentMethod => payment_methods::retrieve(ctx, id, params),
            AttachPaymentMethod => payment_methods::attach(ctx, id, params),
            DetachPaymentMethod => payment_methods::detach(ctx, id, params),
            CreateProduct => catalog::create_product(ctx, params),
            ListProducts => catalog::list_products(ctx, params),
            RetrieveProduct => catalog::retrieve_product(ctx, id, params),
            CreatePrice => catalog::create_price(ctx, params),
            ListPrices => catalog::list_prices(ctx, params),
            RetrievePrice => catalog::retrieve_price(ctx, id, params),
            CreateSubscription => subscriptions::create(ctx, params),
            ListSubscriptions => subscriptions::list(ctx, params),
            SearchSubscriptions => subscriptions::search(ctx, params),
            RetrieveSubscription => subscriptions::retrieve(ctx, id, params),
            UpdateSubscription => subscriptions::update(ctx, id, params),
            CancelSubscription => subscriptions::cancel(ctx, id, params),
            RetrieveInvoice => subscriptions::retrieve_invoice(ctx, id, params),
            ListInvoicePayments => payments::list(ctx, params),
            RetrieveInvoicePayment => payments::retrieve(ctx, id, params),
            RetrievePaymentIntent => payments::retrieve_intent(ctx, id, params),
            CreateSetupIntent => setup_intents::create(ctx, params),
            RetrieveSetupIntent => setup_intents::retrieve(ctx, id, params),
            ConfirmSetupIntent => setup_intents::confirm(ctx, id, params),
            CreateWebhookEndpoint => webhook_endpoints::create(ctx, params),
            ListWebhookEndpoints => webhook_endpoints::list(ctx, params),
            RetrieveWebhookEndpoint => webhook_endpoints::retrieve(ctx, id, params),
            DeleteWebhookEndpoint => webhook_endpoints::delete(ctx, id, params),
            ListEvents => events::list(ctx, params),
            RetrieveEvent => events::retrieve(ctx, id, params),
        }
    }
}

/// Parameters every list endpoint takes.
const LIST_PARAMS: &[&str] = &[
    "limit",
    "starting_after",
    "ending_before",
    "expand",
    "created",
];

/// Stripe refuses parameters it does not know (`parameter_unknown`); so does the simulator,
/// so that a misspelt parameter fails here as it would against Stripe. `allowed` lists the
/// endpoint's documented parameters, including those the simulator accepts and ignores.
pub fn check_known(params: &Params, allowed: &[&str]) -> Result<(), ApiError> {
    match params.0.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::unknown_param(unknown)),
        None => Ok(()),
    }
}

pub fn check_list(params: &Params, extra: &[&str]) -> Result<(), ApiError> {
    let allowed: Vec<&str> = LIST_PARAMS.iter().chain(extra).copied().collect();
    check_known(params, &allowed)
}

/// `expand[]` must name fields the endpoint can expand; Stripe answers 400 otherwise.
pub fn expansions(params: &Params, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let expand = params.strings("expand")?;
    for path in &expand {
        let field = path.strip_prefix("data.").unwrap_or(path);
        if !allowed.contains(&field) {
            return Err(ApiError::invalid_request(
                &format!("This property cannot be expanded ({path})."),
                Some("expand"),
            ));
        }
    }
    Ok(expand
        .into_iter()
        .map(|p| p.strip_prefix("data.").map_or(p.clone(), str::to_owned))
        .collect())
}

fn limit(params: &Params) -> Result<usize, ApiError> {
    match params.integer("limit")? {
        None => Ok(10),
        Some(n @ 1..=100) => Ok(n as usize),
        Some(_) => Err(ApiError::invalid_request(
            "Invalid integer: limit must be between 1 and 100.",
            Some("limit"),
        )),
    }
}

/// One page of a list, `ids` newest first, with Stripe's cursor parameters.
pub fn page(
    ids: Vec<&str>,
    params: &Params,
    url: &str,
    mut render: impl FnMut(&str) -> Option<Value>,
) -> Result<Value, ApiError> {
    let limit = limit(params)?;
    let position = |param: &str| -> Result<Option<usize>, ApiError> {
        match params.optional(param)? {
            None => Ok(None),
            Some(cursor) => ids
                .iter()
                .position(|id| *id == cursor)
                .map(Some)
                .ok_or_else(|| ApiError::no_such_param("object", cursor, param)),
        }
    };
    let (window, has_more) = if let Some(after) = position("starting_after")? {
        let rest = &ids[after + 1..];
        (&rest[..rest.len().min(limit)], rest.len() > limit)
    } else if let Some(before) = position("ending_before")? {
        let start = before.saturating_sub(limit);
        (&ids[start..before], start > 0)
    } else {
        (&ids[..ids.len().min(limit)], ids.len() > limit)
    };
    let data: Vec<Value> = window.iter().filter_map(|id| render(id)).collect();
    Ok(json!({"object": "list", "data": data, "has_more": has_more, "url": url}))
}
