//! Subscriptions: create (charging the first invoice), retrieve, update (`cancel_at_period_end`,
//! metadata, payment method), list, search, cancel; and invoices by id.
//!
//! Creating one charges its first invoice with the subscription's `default_payment_method`,
//! else the customer's `invoice_settings.default_payment_method`. A declining card then
//! follows `payment_behavior` as Stripe does: `error_if_incomplete` answers 402 `card_error`
//! and creates nothing; `allow_incomplete` (the default) creates an `incomplete` subscription
//! with an open invoice; `default_incomplete` never charges and is `incomplete` until paid.
//!
//! Each change is announced as Stripe announces it: `customer.subscription.created`, the first
//! invoice's `invoice.created` / `invoice.finalized` / `invoice.paid` (billing reason
//! `subscription_create`), `customer.subscription.updated` with `previous_attributes`, and
//! `customer.subscription.deleted` (`cancellation_details.reason` = `cancellation_requested`).

use serde_json::{Value, json};

use super::customers::merge_metadata;
use super::search::{Field, Query, visible};
use super::{Ctx, check_known, check_list, expansions, page};
use crate::billing::{emit_invoice_for, emit_subscription_for};
use crate::errors::ApiError;
use crate::form::{Params, Value as Param};
use crate::store::{
    Expand, Invoice, Item, Payment, Store, Subscription, new_id, period_end, render_invoice,
    render_subscription,
};

const CREATE_PARAMS: &[&str] = &[
    "customer",
    "items",
    "default_payment_method",
    "off_session",
    "payment_behavior",
    "metadata",
    "expand",
    "collection_method",
    "days_until_due",
    "trial_period_days",
    "trial_end",
    "description",
    "discounts",
    "automatic_tax",
    "billing_cycle_anchor",
    "billing_cycle_anchor_config",
    "billing_mode",
    "billing_schedules",
    "billing_thresholds",
    "cancel_at",
    "cancel_at_period_end",
    "currency",
    "default_source",
    "default_tax_rates",
    "add_invoice_items",
    "application_fee_percent",
    "backdate_start_date",
    "invoice_settings",
    "on_behalf_of",
    "payment_settings",
    "pending_invoice_item_interval",
    "proration_behavior",
    "transfer_data",
    "trial_from_plan",
    "trial_settings",
    "customer_account",
];
const ITEM_PARAMS: &[&str] = &[
    "price",
    "plan",
    "quantity",
    "metadata",
    "tax_rates",
    "discounts",
    "billing_thresholds",
];
const EXPANDABLE: &[&str] = &["latest_invoice", "customer", "default_payment_method"];

fn expand_of(paths: &[String]) -> Expand {
    let has = |p: &str| paths.iter().any(|e| e == p);
    Expand {
        customer: has("customer"),
        latest_invoice: has("latest_invoice"),
        default_payment_method: has("default_payment_method"),
    }
}

pub fn create(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, CREATE_PARAMS)?;
    let expand = expand_of(&expansions(params, EXPANDABLE)?);
    let customer = params.required("customer")?;
    let Some(customer_obj) = ctx.store.customers.get(customer) else {
        return Err(ApiError::no_such_param("customer", customer, "customer"));
    };
    let behaviour = params
        .optional("payment_behavior")?
        .unwrap_or("allow_incomplete");
    if !matches!(
        behaviour,
        "allow_incomplete" | "error_if_incomplete" | "default_incomplete"
    ) {
        return Err(ApiError::invalid_request(
            &format!(
                "Invalid payment_behavior: must be one of allow_incomplete, \
                 error_if_incomplete, or default_incomplete (got {behaviour})."
            ),
            Some("payment_behavior"),
        ));
    }
    let collection = params
        .optional("collection_method")?
        .unwrap_or("charge_automatically");
    if !matches!(collection, "charge_automatically" | "send_invoice") {
        return Err(ApiError::invalid_param(
            "collection_method",
            "one of charge_automatically or send_invoice",
        ));
    }
    if collection == "send_invoice" && params.integer("days_until_due")?.is_none() {
        return Err(ApiError::missing_param("days_until_due"));
    }
    params.boolean("off_session")?;
    let items = items(ctx.store, params)?;
    let first = &ctx.store.prices[&items[0].price];
    let currency = first.currency.clone();
    // `items` admits recurring prices only.
    let recurring = first
        .recurring
        .clone()
        .ok_or_else(|| ApiError::missing_param("items[0][price]"))?;
    for (n, item) in items.iter().enumerate() {
        let price = &ctx.store.prices[&item.price];
        if price.currency != currency {
            return Err(ApiError::invalid_request(
                "All prices on a subscription must have the same currency.",
                Some(&format!("items[{n}][price]")),
            ));
        }
    }
    let payment_method = match params.optional("default_payment_method")? {
        Some(pm) => {
            let param = "default_payment_method";
            match ctx.store.payment_methods.get(pm) {
                Some(found) if found.customer.as_deref() == Some(customer) => Some(pm.to_owned()),
                Some(_) => return Err(ApiError::not_attached(pm, param)),
                None => return Err(ApiError::no_such_param("PaymentMethod", pm, param)),
            }
        }
        None => None,
    };
    let charge_with = payment_method
        .clone()
        .or_else(|| customer_obj.default_payment_method.clone());
    let trial_days = params.integer("trial_period_days")?.unwrap_or(0);
    if !(0..=730).contains(&trial_days) {
        return Err(ApiError::invalid_param(
            "trial_period_days",
            "between 0 and 730",
        ));
    }
    let total: i64 = items
        .iter()
        .map(|i| {
            ctx.store.prices[&i.price]
                .unit_amount
                .saturating_mul(i.quantity as i64)
        })
        .sum();
    let created = ctx.store.now();
    let charges_now = collection == "charge_automatically"
        && behaviour != "default_incomplete"
        && trial_days == 0
        && total > 0;
    let (status, paid, attempted) = if trial_days > 0 {
        ("trialing", true, false)
    } else if collection == "send_invoice" {
        ("active", false, false)
    } else if behaviour == "default_incomplete" && total > 0 {
        ("incomplete", false, false)
    } else if !charges_now {
        ("active", true, false)
    } else {
        let decline = match &charge_with {
            None if behaviour == "error_if_incomplete" => {
                return Err(ApiError::invalid_request(
                    "This customer has no attached payment source or default payment method. \
                     Please consider adding a default payment method.",
                    None,
                ));
            }
            None => None,
            Some(pm) => ctx
                .store
                .payment_methods
                .get(pm)
                .and_then(|pm| pm.card.behaviour.error()),
        };
        match decline {
            Some(error) if behaviour == "error_if_incomplete" => return Err(error),
            Some(_) => ("incomplete", false, true),
            None if charge_with.is_none() => ("incomplete", false, false),
            None => ("active", true, true),
        }
    };
    let metadata = params.metadata("metadata")?.unwrap_or_default();
    let trial_end = (trial_days > 0).then(|| created + trial_days * 86_400);
    let period_end = trial_end.unwrap_or_else(|| period_end(created, &recurring));
    let id = new_id("sub");
    let invoice = Invoice {
        id: new_id("in"),
        created,
        customer: customer.to_owned(),
        subscription: id.clone(),
        currency: currency.clone(),
        lines: items
            .iter()
            .map(|i| {
                let amount = if trial_days > 0 {
                    0
                } else {
                    ctx.store.prices[&i.price].unit_amount * i.quantity as i64
                };
                (i.price.clone(), i.quantity, amount)
            })
            .collect(),
        lines_period: (created, period_end),
        total: if trial_days > 0 { 0 } else { total },
        paid,
        paid_at: paid.then_some(created),
        attempt_count: u64::from(attempted),
        next_payment_attempt: None,
        // A charge made a PaymentIntent, which holds its error if it failed.
        payment: attempted.then(|| Payment {
            created,
            payment_method: charge_with.clone(),
            last_error: if paid {
                None
            } else {
                decline_of(ctx.store, charge_with.as_deref())
            },
        }),
        billing_reason: "subscription_create",
        subscription_metadata: metadata.clone(),
        shape: ctx.config.invoice_shape,
        status: if paid { "paid" } else { "open" }.to_owned(),
        period_start: created,
        period_end: created,
    };
    let subscription = Subscription {
        id: id.clone(),
        created,
        born: ctx.now,
        customer: customer.to_owned(),
        items,
        currency,
        status: status.to_owned(),
        collection_method: collection.to_owned(),
        default_payment_method: payment_method,
        latest_invoice: invoice.id.clone(),
        metadata,
        period_start: created,
        period_end,
        trial_end,
        canceled_at: None,
        ended_at: None,
        cancel_at_period_end: false,
        cancel_at: None,
        cancellation_reason: None,
    };
    let invoice_id = invoice.id.clone();
    ctx.store.insert_subscription(subscription, invoice);
    let request = &ctx.request;
    emit_subscription_for(
        ctx.store,
        &id,
        "customer.subscription.created",
        None,
        request,
    );
    let kinds: &[&str] = if paid {
        &[
            "invoice.created",
            "invoice.finalized",
            "invoice.paid",
            "invoice.payment_succeeded",
        ]
    } else if attempted {
        &[
            "invoice.created",
            "invoice.finalized",
            "invoice.payment_failed",
        ]
    } else {
        &["invoice.created", "invoice.finalized"]
    };
    emit_invoice_for(ctx.store, &invoice_id, kinds, request);
    Ok(render_subscription(
        ctx.store,
        &ctx.store.subscriptions[&id],
        expand,
    ))
}

/// `items[n][price]` (or the legacy `items[n][plan]`) and `items[n][quantity]`, checked.
fn items(store: &Store, params: &Params) -> Result<Vec<Item>, ApiError> {
    let given = params.list("items")?;
    if given.is_empty() {
        return Err(ApiError::missing_param("items"));
    }
    if given.len() > 20 {
        return Err(ApiError::invalid_request(
            "A subscription can have at most 20 items.",
            Some("items"),
        ));
    }
    given
        .into_iter()
        .enumerate()
        .map(|(n, item)| {
            let Param::Map(map) = item else {
                return Err(ApiError::invalid_param(&format!("items[{n}]"), "an object"));
            };
            let item = Params(map.clone());
            check_known(&item, ITEM_PARAMS)
                .map_err(|e| ApiError { param: e.param.map(|p| format!("items[{n}][{p}]")), ..e })?;
            let param = format!("items[{n}][price]");
            let price_id = match (item.optional("price")?, item.optional("plan")?) {
                (Some(price), _) | (None, Some(price)) => price,
                (None, None) => return Err(ApiError::missing_param(&param)),
            };
            let Some(price) = store.prices.get(price_id) else {
                return Err(ApiError::no_such_param("price", price_id, &param));
            };
            if price.recurring.is_none() {
                return Err(ApiError::invalid_request(
                    &format!(
                        "The price specified ({price_id}) is set to `type=one_time` but this \
                         field only accepts prices with `type=recurring`."
                    ),
                    Some(&param),
                ));
            }
            if !price.active {
                return Err(ApiError::invalid_request(
                    &format!("The price specified ({price_id}) is inactive. This field only accepts active prices."),
                    Some(&param),
                ));
            }
            let quantity = item
                .integer("quantity")
                .map_err(|_| ApiError::invalid_param(&format!("items[{n}][quantity]"), "an integer"))?
                .unwrap_or(1);
            let quantity = u64::try_from(quantity)
                .map_err(|_| ApiError::invalid_param(&format!("items[{n}][quantity]"), "a non-negative integer"))?;
            Ok(Item { id: new_id("si"), price: price_id.to_owned(), quantity })
        })
        .collect()
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    let expand = expand_of(&expansions(params, EXPANDABLE)?);
    let subscription = ctx
        .store
        .subscriptions
        .get(id)
        .ok_or_else(|| ApiError::no_such("subscription", id, "id"))?;
    Ok(render_subscription(ctx.store, subscription, expand))
}

/// The error a charge with `pm` fails with, if it does.
fn decline_of(store: &Store, pm: Option<&str>) -> Option<ApiError> {
    store
        .payment_methods
        .get(pm?)
        .and_then(|pm| pm.card.behaviour.error())
}

const UPDATE_PARAMS: &[&str] = &[
    "cancel_at_period_end",
    "cancellation_details",
    "metadata",
    "default_payment_method",
    "description",
    "expand",
    "off_session",
    "payment_behavior",
    "proration_behavior",
];

/// `POST /v1/subscriptions/{id}`: `cancel_at_period_end=true` stops the renewals (the paid
/// period runs out, then the subscription is canceled at the next advance past its end),
/// `false` takes that back. A change is announced with the fields it changed as
/// `previous_attributes`; an update that changes nothing announces nothing.
pub fn update(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, UPDATE_PARAMS)?;
    let expand = expand_of(&expansions(params, EXPANDABLE)?);
    let cancel_at_period_end = params.boolean("cancel_at_period_end")?;
    let metadata = params.metadata("metadata")?;
    let default_pm = params.optional("default_payment_method")?;
    params.boolean("off_session")?;
    let now = ctx.store.now();
    let Some(s) = ctx.store.subscriptions.get(id) else {
        return Err(ApiError::no_such("subscription", id, "id"));
    };
    let only_allowed_once_canceled = params
        .0
        .keys()
        .all(|k| matches!(k.as_str(), "metadata" | "cancellation_details" | "expand"));
    if s.status == "canceled" && !only_allowed_once_canceled {
        return Err(ApiError::invalid_request(
            &format!(
                "A canceled subscription can only update its cancellation_details and metadata. ({id})"
            ),
            None,
        ));
    }
    if let Some(pm) = default_pm {
        match ctx.store.payment_methods.get(pm) {
            Some(found) if found.customer.as_deref() == Some(s.customer.as_str()) => {}
            Some(_) => return Err(ApiError::not_attached(pm, "default_payment_method")),
            None => {
                return Err(ApiError::no_such_param(
                    "PaymentMethod",
                    pm,
                    "default_payment_method",
                ));
            }
        }
    }
    let Some(s) = ctx.store.subscriptions.get_mut(id) else {
        return Err(ApiError::no_such("subscription", id, "id"));
    };
    let mut previous = serde_json::Map::new();
    if let Some(cancel) = cancel_at_period_end.filter(|c| *c != s.cancel_at_period_end) {
        previous.insert("cancel_at_period_end".into(), json!(s.cancel_at_period_end));
        previous.insert("cancel_at".into(), json!(s.cancel_at));
        previous.insert("canceled_at".into(), json!(s.canceled_at));
        previous.insert(
            "cancellation_details".into(),
            json!({"comment": null, "feedback": null, "reason": s.cancellation_reason}),
        );
        s.cancel_at_period_end = cancel;
        // Stripe stamps `canceled_at` with the request, and sets `cancel_at` to the end.
        (s.cancel_at, s.canceled_at, s.cancellation_reason) = if cancel {
            (
                Some(s.period_end),
                Some(now),
                Some("cancellation_requested"),
            )
        } else {
            (None, None, None)
        };
    }
    if let Some(metadata) = metadata {
        let before = s.metadata.clone();
        merge_metadata(&mut s.metadata, metadata, params);
        if s.metadata != before {
            previous.insert("metadata".into(), json!(before));
        }
    }
    if let Some(pm) = default_pm.filter(|pm| s.default_payment_method.as_deref() != Some(*pm)) {
        previous.insert(
            "default_payment_method".into(),
            json!(s.default_payment_method),
        );
        s.default_payment_method = Some(pm.to_owned());
    }
    if !previous.is_empty() {
        let request = &ctx.request;
        let previous = Some(Value::Object(previous));
        emit_subscription_for(
            ctx.store,
            id,
            "customer.subscription.updated",
            previous,
            request,
        );
    }
    Ok(render_subscription(
        ctx.store,
        &ctx.store.subscriptions[id],
        expand,
    ))
}

pub fn retrieve_invoice(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    expansions(params, &[])?;
    let invoice = ctx
        .store
        .invoices
        .get(id)
        .ok_or_else(|| ApiError::no_such("invoice", id, "id"))?;
    Ok(render_invoice(ctx.store, invoice))
}

pub fn cancel(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(
        params,
        &["expand", "cancellation_details", "invoice_now", "prorate"],
    )?;
    let expand = expand_of(&expansions(params, EXPANDABLE)?);
    let subscription = ctx
        .store
        .subscriptions
        .get_mut(id)
        .ok_or_else(|| ApiError::no_such("subscription", id, "id"))?;
    // Stripe answers a second cancel as if the subscription were gone (it still retrieves).
    if subscription.status == "canceled" {
        return Err(ApiError::no_such("subscription", id, "id"));
    }
    let now = ctx.store.now();
    let Some(subscription) = ctx.store.subscriptions.get_mut(id) else {
        return Err(ApiError::no_such("subscription", id, "id"));
    };
    subscription.status = "canceled".into();
    subscription.canceled_at = Some(now);
    subscription.ended_at = Some(now);
    subscription.cancellation_reason = Some("cancellation_requested");
    let request = &ctx.request;
    emit_subscription_for(
        ctx.store,
        id,
        "customer.subscription.deleted",
        None,
        request,
    );
    Ok(render_subscription(
        ctx.store,
        &ctx.store.subscriptions[id],
        expand,
    ))
}

pub fn list(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(
        params,
        &[
            "customer",
            "customer_account",
            "plan",
            "price",
            "status",
            "collection_method",
            "current_period_end",
            "current_period_start",
            "test_clock",
            "automatic_tax",
        ],
    )?;
    let expand = expand_of(&expansions(params, EXPANDABLE)?);
    let status = params.optional("status")?;
    let price = params.optional("price")?;
    let store = &*ctx.store;
    let ids: Vec<&str> = match params.optional("customer")? {
        Some(customer) => store
            .subscriptions_by_customer
            .get(customer)
            .map(|ids| ids.iter().rev().map(String::as_str).collect())
            .unwrap_or_default(),
        None => store
            .subscription_order
            .iter()
            .rev()
            .map(String::as_str)
            .collect(),
    };
    let ids: Vec<&str> = ids
        .into_iter()
        .filter(|id| {
            store.subscriptions.get(*id).is_some_and(|s| {
                let by_status = match status {
                    // Stripe's default leaves out canceled subscriptions only.
                    None => s.status != "canceled",
                    Some("all") => true,
                    Some("ended") => matches!(s.status.as_str(), "canceled" | "incomplete_expired"),
                    Some(wanted) => s.status == wanted,
                };
                by_status && price.is_none_or(|p| s.items.iter().any(|i| i.price == p))
            })
        })
        .collect();
    page(ids, params, "/v1/subscriptions", |id| {
        store
            .subscriptions
            .get(id)
            .map(|s| render_subscription(store, s, expand))
    })
}

pub fn search(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["query", "limit", "page", "expand"])?;
    let expand = expand_of(&expansions(params, EXPANDABLE)?);
    let query = Query::parse(params.required("query")?, &["status"])?;
    let store = &*ctx.store;
    let ids: Vec<&str> = store
        .subscription_order
        .iter()
        .rev()
        .filter_map(|id| store.subscriptions.get(id))
        .filter(|s| visible(s.born, ctx.now, ctx.config.search_delay_ms))
        .filter(|s| {
            query.matches(|field| match field {
                Field::Plain(f) if f == "status" => Some(s.status.clone()),
                Field::Metadata(k) => s.metadata.get(k).cloned(),
                Field::Plain(_) => None,
            })
        })
        .map(|s| s.id.as_str())
        .collect();
    super::search::page(ids, params, "/v1/subscriptions/search", |id| {
        store
            .subscriptions
            .get(id)
            .map(|s| render_subscription(store, s, expand))
    })
}
