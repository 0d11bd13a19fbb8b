//! SetupIntents (docs/partners.md#before-the-request-stripesubauthorization): create and retrieve under the secret key; retrieve and
//! confirm also under the publishable key with the client secret, as Stripe.js and the
//! mobile SDKs call them (`api.rs` lets a publishable key reach these two only, and only with
//! a `client_secret`).
//!
//! A confirm makes the payment method from `payment_method` (a test id such as `pm_card_visa`,
//! or a partner's `pm_…`), checks the card as Stripe does when it sets one up, attaches it to
//! the customer and answers `succeeded`. A card Stripe declines at setup fails the confirm
//! with a 402 `card_error`; the SetupIntent goes back to `requires_payment_method` and keeps
//! the error as `last_setup_error`.

use serde_json::{Value, json};

use super::payment_methods::{attach_to, check_setup};
use super::{Ctx, check_known, expansions};
use crate::errors::ApiError;
use crate::form::Params;
use crate::store::{SetupIntent, new_id, render_customer, render_payment_method};

const CREATE_PARAMS: &[&str] = &[
    "customer",
    "description",
    "metadata",
    "usage",
    "payment_method_types",
    "automatic_payment_methods",
    "payment_method",
    "payment_method_options",
    "confirm",
    "return_url",
    "on_behalf_of",
    "single_use",
    "attach_to_self",
    "flow_directions",
    "expand",
];

const CONFIRM_PARAMS: &[&str] = &[
    "payment_method",
    "client_secret",
    "expand",
    "return_url",
    "mandate_data",
    "payment_method_data",
    "payment_method_options",
    "use_stripe_sdk",
    "confirmation_token",
];

const EXPANDABLE: &[&str] = &["customer", "payment_method"];

pub fn create(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, CREATE_PARAMS)?;
    let expand = expansions(params, EXPANDABLE)?;
    let customer = params.optional("customer")?;
    if let Some(customer) = customer
        && !ctx.store.customers.contains_key(customer)
    {
        return Err(ApiError::no_such_param("customer", customer, "customer"));
    }
    let usage = params.optional("usage")?.unwrap_or("off_session");
    if !matches!(usage, "off_session" | "on_session") {
        return Err(ApiError::invalid_param(
            "usage",
            "one of off_session or on_session",
        ));
    }
    if params.boolean("confirm")? == Some(true) {
        // The partner's app confirms; a server-side confirm is not something we simulate.
        return Err(ApiError::invalid_request(
            "The simulator does not confirm at creation: confirm with POST \
             /v1/setup_intents/{id}/confirm.",
            Some("confirm"),
        ));
    }
    let id = new_id("seti");
    let intent = SetupIntent {
        client_secret: format!("{id}_secret_{}", &new_id("s")[3..]),
        id: id.clone(),
        created: ctx.store.now(),
        customer: customer.map(str::to_owned),
        description: params.optional("description")?.map(str::to_owned),
        usage: usage.to_owned(),
        metadata: params.metadata("metadata")?.unwrap_or_default(),
        status: "requires_payment_method",
        payment_method: None,
        last_error: None,
    };
    let object = render(ctx, &intent, &[]);
    ctx.store.setup_intents.insert(id, intent.clone());
    ctx.store
        .emit("setup_intent.created", object, None, &ctx.request);
    Ok(render(ctx, &intent, &expand))
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["client_secret", "expand"])?;
    let expand = expansions(params, EXPANDABLE)?;
    let intent = find(ctx, id, params)?;
    Ok(render(ctx, &intent, &expand))
}

pub fn confirm(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, CONFIRM_PARAMS)?;
    let expand = expansions(params, EXPANDABLE)?;
    let mut intent = find(ctx, id, params)?;
    if intent.status == "succeeded" {
        return Err(ApiError::invalid_request(
            "You cannot confirm this SetupIntent because it has already succeeded after being \
             previously confirmed.",
            None,
        )
        .with_code("setup_intent_unexpected_state"));
    }
    let given = params.required("payment_method")?;
    let checked = check_setup(ctx, given, "payment_method");
    let attached = checked.and_then(|()| match intent.customer.clone() {
        Some(customer) => attach_to(ctx, given, &customer, "payment_method"),
        None => Err(ApiError::invalid_request(
            "The simulator sets up cards for a customer only: create the SetupIntent with \
             `customer`.",
            Some("customer"),
        )),
    });
    match attached {
        Ok(payment_method) => {
            intent.status = "succeeded";
            intent.payment_method = Some(payment_method);
            intent.last_error = None;
            ctx.store
                .setup_intents
                .insert(id.to_owned(), intent.clone());
            let object = render(ctx, &intent, &[]);
            ctx.store
                .emit("setup_intent.succeeded", object, None, &ctx.request);
            Ok(render(ctx, &intent, &expand))
        }
        Err(mut error) => {
            if error.kind == "card_error" {
                intent.status = "requires_payment_method";
                intent.last_error = Some(error.clone());
                ctx.store
                    .setup_intents
                    .insert(id.to_owned(), intent.clone());
                let object = render(ctx, &intent, &[]);
                ctx.store.emit(
                    "setup_intent.setup_failed",
                    object.clone(),
                    None,
                    &ctx.request,
                );
                error.setup_intent = Some(Box::new(object));
            }
            Err(error)
        }
    }
}

/// The SetupIntent of the path; a `client_secret`, when given (always, under a publishable
/// key), must be its own.
fn find(ctx: &Ctx, id: &str, params: &Params) -> Result<SetupIntent, ApiError> {
    let Some(intent) = ctx.store.setup_intents.get(id) else {
        return Err(ApiError::no_such("setup_intent", id, "intent"));
    };
    if let Some(secret) = params.optional("client_secret")?
        && secret != intent.client_secret
    {
        return Err(ApiError::invalid_request(
            "The client_secret provided does not match the client_secret associated with the \
             SetupIntent.",
            Some("client_secret"),
        ));
    }
    Ok(intent.clone())
}

fn render(ctx: &Ctx, intent: &SetupIntent, expand: &[String]) -> Value {
    let expanded = |field: &str| expand.iter().any(|e| e == field);
    let customer = match &intent.customer {
        Some(id) if expanded("customer") => ctx
            .store
            .customers
            .get(id)
            .map_or(json!(id), render_customer),
        other => json!(other),
    };
    let payment_method = match &intent.payment_method {
        Some(id) if expanded("payment_method") => ctx
            .store
            .payment_methods
            .get(id)
            .map_or(json!(id), render_payment_method),
        other => json!(other),
    };
    let last_setup_error = intent
        .last_error
        .as_ref()
        .map_or(Value::Null, |error| error.body()["error"].clone());
    json!({
        "id": intent.id, "object": "setup_intent", "application": null,
        "automatic_payment_methods": null, "cancellation_reason": null,
        "client_secret": intent.client_secret, "created": intent.created,
        "customer": customer, "description": intent.description, "flow_directions": null,
        "last_setup_error": last_setup_error, "latest_attempt": null, "livemode": false,
        "mandate": null, "metadata": intent.metadata, "next_action": null, "on_behalf_of": null,
        "payment_method": payment_method, "payment_method_configuration_details": null,
        "payment_method_options": {
            "card": {"mandate_options": null, "network": null, "request_three_d_secure": "automatic"},
        },
        "payment_method_types": ["card"], "single_use_mandate": null, "status": intent.status,
        "usage": intent.usage,
    })
}
