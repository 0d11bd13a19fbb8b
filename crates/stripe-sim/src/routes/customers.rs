//! Customers: create, retrieve, update, list (by `email`), search.

use serde_json::Value;

use super::search::{Field, Query, visible};
use super::{Ctx, check_known, check_list, expansions, page, payment_methods};
use crate::errors::ApiError;
use crate::form::Params;
use crate::store::{Customer, Store, new_id, render_customer, render_payment_method};

const WRITABLE: &[&str] = &[
    "address",
    "balance",
    "business_name",
    "cash_balance",
    "description",
    "email",
    "expand",
    "individual_name",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "phone",
    "preferred_locales",
    "shipping",
    "tax",
    "tax_exempt",
];
const CREATE_ONLY: &[&str] = &[
    "payment_method",
    "source",
    "tax_id_data",
    "test_clock",
    "validate",
];
const EXPANDABLE: &[&str] = &["invoice_settings.default_payment_method"];

pub fn create(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    let allowed: Vec<&str> = WRITABLE.iter().chain(CREATE_ONLY).copied().collect();
    check_known(params, &allowed)?;
    let expand = expansions(params, EXPANDABLE)?;
    let email = email(params)?;
    let default_pm = default_payment_method(params)?;
    let id = new_id("cus");
    let customer = Customer {
        id: id.clone(),
        created: ctx.store.now(),
        born: ctx.now,
        email: None,
        name: params.optional("name")?.map(str::to_owned),
        description: params.optional("description")?.map(str::to_owned),
        phone: params.optional("phone")?.map(str::to_owned),
        metadata: params.metadata("metadata")?.unwrap_or_default(),
        default_payment_method: None,
    };
    // Attaching can decline; check it before the customer exists so a failed create leaves
    // nothing behind, as Stripe's create is all-or-nothing.
    let given_pm = params.optional("payment_method")?;
    if let Some(pm) = given_pm {
        payment_methods::check_attachable(ctx, pm, "payment_method")?;
    }
    // A default other than the method given here cannot be attached to a customer that does
    // not exist yet: this refuses it before anything is written.
    if let Some(other) = default_pm.as_deref().filter(|d| Some(*d) != given_pm) {
        require_attached(ctx.store, &id, other)?;
    }
    ctx.store.insert_customer(customer);
    ctx.store.set_customer_email(&id, email);
    if let Some(pm) = given_pm {
        let attached = payment_methods::attach_to(ctx, pm, &id, "payment_method")?;
        // `payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa`
        // means the card just attached, whatever id it got.
        if default_pm.as_deref() == Some(pm) {
            set_default(ctx.store, &id, Some(attached));
        }
    }
    let object = render(ctx.store, &id, &[])?;
    ctx.store
        .emit("customer.created", object, None, &ctx.request);
    render(ctx.store, &id, &expand)
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    let expand = expansions(params, EXPANDABLE)?;
    if !ctx.store.customers.contains_key(id) {
        return Err(ApiError::no_such("customer", id, "id"));
    }
    render(ctx.store, id, &expand)
}

pub fn update(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(
        params,
        &[WRITABLE, &["default_source", "source", "validate"]].concat(),
    )?;
    let expand = expansions(params, EXPANDABLE)?;
    if !ctx.store.customers.contains_key(id) {
        return Err(ApiError::no_such("customer", id, "id"));
    }
    let email = params
        .0
        .contains_key("email")
        .then(|| email(params))
        .transpose()?;
    let default_pm = default_payment_method(params)?;
    if let Some(pm) = &default_pm {
        require_attached(ctx.store, id, pm)?;
    }
    let metadata = params.metadata("metadata")?;
    let name = params.optional("name")?.map(str::to_owned);
    let description = params.optional("description")?.map(str::to_owned);
    let phone = params.optional("phone")?.map(str::to_owned);
    if let Some(email) = email {
        ctx.store.set_customer_email(id, email);
    }
    if let Some(customer) = ctx.store.customers.get_mut(id) {
        if let Some(metadata) = metadata {
            merge_metadata(&mut customer.metadata, metadata, params);
        }
        if params.0.contains_key("name") {
            customer.name = name;
        }
        if params.0.contains_key("description") {
            customer.description = description;
        }
        if params.0.contains_key("phone") {
            customer.phone = phone;
        }
    }
    if default_pm.is_some() {
        set_default(ctx.store, id, default_pm);
    }
    render(ctx.store, id, &expand)
}

pub fn list(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(params, &["email", "test_clock"])?;
    let expand = expansions(params, EXPANDABLE)?;
    let store = &*ctx.store;
    // Stripe's email filter is exact and case-sensitive.
    let ids: Vec<&str> = match params.optional("email")? {
        Some(email) => store
            .customers_by_email
            .get(email)
            .map(|ids| ids.iter().rev().map(String::as_str).collect())
            .unwrap_or_default(),
        None => store
            .customer_order
            .iter()
            .rev()
            .map(String::as_str)
            .collect(),
    };
    page(ids, params, "/v1/customers", |id| {
        render(store, id, &expand).ok()
    })
}

pub fn search(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["query", "limit", "page", "expand"])?;
    let expand = expansions(params, EXPANDABLE)?;
    let query = Query::parse(params.required("query")?, &["email", "name", "phone"])?;
    let store = &*ctx.store;
    let ids: Vec<&str> = store
        .customer_order
        .iter()
        .rev()
        .filter_map(|id| store.customers.get(id))
        .filter(|c| visible(c.born, ctx.now, ctx.config.search_delay_ms))
        .filter(|c| {
            query.matches(|field| match field {
                Field::Plain(f) if f == "email" => c.email.clone(),
                Field::Plain(f) if f == "name" => c.name.clone(),
                Field::Plain(f) if f == "phone" => c.phone.clone(),
                Field::Metadata(k) => c.metadata.get(k).cloned(),
                Field::Plain(_) => None,
            })
        })
        .map(|c| c.id.as_str())
        .collect();
    super::search::page(ids, params, "/v1/customers/search", |id| {
        render(store, id, &expand).ok()
    })
}

fn render(store: &Store, id: &str, expand: &[String]) -> Result<Value, ApiError> {
    let customer = store
        .customers
        .get(id)
        .ok_or_else(|| ApiError::no_such("customer", id, "id"))?;
    let mut value = render_customer(customer);
    if expand
        .iter()
        .any(|e| e == "invoice_settings.default_payment_method")
        && let Some(pm) = customer
            .default_payment_method
            .as_ref()
            .and_then(|pm| store.payment_methods.get(pm))
    {
        value["invoice_settings"]["default_payment_method"] = render_payment_method(pm);
    }
    Ok(value)
}

fn email(params: &Params) -> Result<Option<String>, ApiError> {
    match params.optional("email")? {
        None => Ok(None),
        Some(email) => {
            let plausible = email.len() <= 512
                && !email.contains(char::is_whitespace)
                && email
                    .split_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
            if plausible {
                Ok(Some(email.to_owned()))
            } else {
                Err(ApiError::invalid_request(
                    &format!("Invalid email address: {email}"),
                    Some("email"),
                ))
            }
        }
    }
}

fn default_payment_method(params: &Params) -> Result<Option<String>, ApiError> {
    Ok(params
        .nested("invoice_settings")?
        .map(|settings| {
            settings
                .optional("default_payment_method")
                .map(|pm| pm.map(str::to_owned))
        })
        .transpose()?
        .flatten())
}

/// Stripe only makes a payment method the default once it is attached to this customer.
fn require_attached(store: &Store, customer: &str, pm: &str) -> Result<(), ApiError> {
    let param = "invoice_settings[default_payment_method]";
    match store.payment_methods.get(pm) {
        Some(found) if found.customer.as_deref() == Some(customer) => Ok(()),
        Some(_) => Err(ApiError::not_attached(pm, param)),
        None => Err(ApiError::no_such_param("PaymentMethod", pm, param)),
    }
}

fn set_default(store: &mut Store, customer: &str, pm: Option<String>) {
    if let Some(c) = store.customers.get_mut(customer) {
        c.default_payment_method = pm;
    }
}

/// Stripe merges metadata on update: given keys are set, keys given an empty value are
/// removed, and `metadata=` (empty) clears all of them.
pub fn merge_metadata(
    target: &mut std::collections::BTreeMap<String, String>,
    given: std::collections::BTreeMap<String, String>,
    params: &Params,
) {
    if given.is_empty() && params.str("metadata") == Some("") {
        target.clear();
    }
    for (k, v) in given {
        if v.is_empty() {
            target.remove(&k);
        } else {
            target.insert(k, v);
        }
    }
}
