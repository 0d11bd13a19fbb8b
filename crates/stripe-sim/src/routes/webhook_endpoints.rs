//! Webhook endpoints: create (the answer carries the `whsec_…` secret, as only Stripe's create
//! answer does), list, retrieve, delete. Deliveries: see [`crate::webhooks`].

use serde_json::{Value, json};

use super::{Ctx, check_known, check_list, expansions, page};
use crate::errors::ApiError;
use crate::form::Params;
use crate::store::new_id;
use crate::webhooks::{Endpoint, new_secret, parse_url, render_endpoint};

const CREATE_PARAMS: &[&str] = &[
    "url",
    "enabled_events",
    "description",
    "metadata",
    "api_version",
    "connect",
    "expand",
];

pub fn create(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, CREATE_PARAMS)?;
    expansions(params, &[])?;
    let url = params.required("url")?;
    let url = parse_url(url).map_err(|message| ApiError::invalid_request(&message, Some("url")))?;
    let enabled_events = params.strings("enabled_events")?;
    if enabled_events.is_empty() {
        return Err(ApiError::missing_param("enabled_events"));
    }
    params.boolean("connect")?;
    let endpoint = Endpoint {
        id: new_id("we"),
        created: ctx.store.now(),
        url,
        enabled_events,
        secret: new_secret(),
        description: params.optional("description")?.map(str::to_owned),
        metadata: params.metadata("metadata")?.unwrap_or_default(),
    };
    let rendered = render_endpoint(&endpoint, true);
    ctx.store.webhook_endpoints.push(endpoint);
    Ok(rendered)
}

pub fn list(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(params, &[])?;
    expansions(params, &[])?;
    let endpoints = &ctx.store.webhook_endpoints;
    let ids: Vec<&str> = endpoints.iter().rev().map(|e| e.id.as_str()).collect();
    page(ids, params, "/v1/webhook_endpoints", |id| {
        endpoints
            .iter()
            .find(|e| e.id == id)
            .map(|e| render_endpoint(e, false))
    })
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    expansions(params, &[])?;
    ctx.store
        .webhook_endpoints
        .iter()
        .find(|e| e.id == id)
        .map(|e| render_endpoint(e, false))
        .ok_or_else(|| ApiError::no_such("webhook_endpoint", id, "id"))
}

pub fn delete(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &[])?;
    let endpoints = &mut ctx.store.webhook_endpoints;
    let before = endpoints.len();
    endpoints.retain(|e| e.id != id);
    if endpoints.len() == before {
        return Err(ApiError::no_such("webhook_endpoint", id, "id"));
    }
    Ok(json!({"id": id, "object": "webhook_endpoint", "deleted": true}))
}
