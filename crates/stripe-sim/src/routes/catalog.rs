//! Products and prices: create, retrieve, list (prices by `lookup_keys[]`).

use serde_json::Value;

use super::{Ctx, check_known, check_list, expansions, page};
use crate::errors::ApiError;
use crate::form::Params;
use crate::store::{Price, Product, Recurring, Store, new_id, render_price, render_product};

const PRODUCT_PARAMS: &[&str] = &[
    "id",
    "name",
    "active",
    "default_price_data",
    "description",
    "expand",
    "images",
    "marketing_features",
    "metadata",
    "package_dimensions",
    "shippable",
    "statement_descriptor",
    "tax_code",
    "tax_details",
    "type",
    "unit_label",
    "url",
];
const PRICE_PARAMS: &[&str] = &[
    "currency",
    "unit_amount",
    "unit_amount_decimal",
    "product",
    "product_data",
    "recurring",
    "lookup_key",
    "transfer_lookup_key",
    "nickname",
    "metadata",
    "active",
    "tax_behavior",
    "billing_scheme",
    "currency_options",
    "custom_unit_amount",
    "tiers",
    "tiers_mode",
    "transform_quantity",
    "expand",
];

pub fn create_product(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, PRODUCT_PARAMS)?;
    expansions(params, &[])?;
    let product = new_product(ctx, params, "name")?;
    let id = product.id.clone();
    ctx.store.insert_product(product);
    Ok(render_product(&ctx.store.products[&id]))
}

/// A product from `params`: the create call's, or a price's `product_data[…]`, whose name
/// parameter is then called `name_param`.
fn new_product(ctx: &Ctx, params: &Params, name_param: &str) -> Result<Product, ApiError> {
    let name = params
        .required("name")
        .map_err(|_| ApiError::missing_param(name_param))?;
    let id = match params.optional("id")? {
        Some(id) if ctx.store.products.contains_key(id) => {
            return Err(ApiError::invalid_request(
                &format!("Product already exists: {id}"),
                Some("id"),
            ));
        }
        Some(id) => id.to_owned(),
        None => new_id("prod"),
    };
    Ok(Product {
        id,
        created: ctx.store.now(),
        name: name.to_owned(),
        active: params.boolean("active")?.unwrap_or(true),
        description: params.optional("description")?.map(str::to_owned),
        metadata: params.metadata("metadata")?.unwrap_or_default(),
    })
}

pub fn retrieve_product(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    expansions(params, &[])?;
    ctx.store
        .products
        .get(id)
        .map(render_product)
        .ok_or_else(|| ApiError::no_such("product", id, "id"))
}

pub fn list_products(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(params, &["active", "ids", "shippable", "url"])?;
    expansions(params, &[])?;
    let active = params.boolean("active")?;
    let only = params.strings("ids")?;
    let store = &*ctx.store;
    let ids: Vec<&str> = store
        .product_order
        .iter()
        .rev()
        .filter_map(|id| store.products.get(id))
        .filter(|p| active.is_none_or(|a| p.active == a))
        .filter(|p| only.is_empty() || only.contains(&p.id))
        .map(|p| p.id.as_str())
        .collect();
    page(ids, params, "/v1/products", |id| {
        store.products.get(id).map(render_product)
    })
}

pub fn create_price(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_known(params, PRICE_PARAMS)?;
    let expand = expansions(params, &["product"])?;
    let currency = currency(params.required("currency")?)?;
    let unit_amount = unit_amount(params)?;
    let recurring = recurring(params)?;
    let lookup_key = params.optional("lookup_key")?.map(str::to_owned);
    let transfer = params.boolean("transfer_lookup_key")?.unwrap_or(false);
    if let Some(key) = &lookup_key
        && let Some(holder) = ctx.store.prices_by_lookup_key.get(key)
        && !transfer
    {
        return Err(ApiError::invalid_request(
            &format!("A price (`{holder}`) already uses that lookup key."),
            Some("lookup_key"),
        ));
    }
    let product = match (params.optional("product")?, params.nested("product_data")?) {
        (Some(id), None) if ctx.store.products.contains_key(id) => id.to_owned(),
        (Some(id), None) => return Err(ApiError::no_such_param("product", id, "product")),
        (None, Some(data)) => {
            check_known(
                &data,
                &[
                    "name",
                    "active",
                    "metadata",
                    "statement_descriptor",
                    "tax_code",
                    "unit_label",
                    "id",
                    "tax_details",
                ],
            )?;
            let product = new_product(ctx, &data, "product_data[name]")?;
            let id = product.id.clone();
            ctx.store.insert_product(product);
            id
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "You may only specify one of these parameters: product, product_data.",
                Some("product"),
            ));
        }
        (None, None) => return Err(ApiError::missing_param("product")),
    };
    if let Some(key) = &lookup_key
        && let Some(old) = ctx.store.prices_by_lookup_key.get(key).cloned()
        && let Some(old) = ctx.store.prices.get_mut(&old)
    {
        old.lookup_key = None;
    }
    let id = new_id("price");
    ctx.store.insert_price(Price {
        id: id.clone(),
        created: ctx.store.now(),
        product,
        currency,
        unit_amount,
        recurring,
        lookup_key,
        nickname: params.optional("nickname")?.map(str::to_owned),
        active: params.boolean("active")?.unwrap_or(true),
        metadata: params.metadata("metadata")?.unwrap_or_default(),
    });
    render(ctx.store, &id, &expand)
}

pub fn retrieve_price(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    let expand = expansions(params, &["product"])?;
    render(ctx.store, id, &expand).map_err(|_| ApiError::no_such("price", id, "price"))
}

pub fn list_prices(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(
        params,
        &[
            "active",
            "currency",
            "lookup_keys",
            "product",
            "recurring",
            "type",
        ],
    )?;
    let expand = expansions(params, &["product"])?;
    let active = params.boolean("active")?;
    let currency = params.optional("currency")?.map(str::to_ascii_lowercase);
    let product = params.optional("product")?;
    let kind = params.optional("type")?;
    let interval = match params.nested("recurring")? {
        Some(r) => r.optional("interval")?.map(str::to_owned),
        None => None,
    };
    let lookup_keys = params.strings("lookup_keys")?;
    if lookup_keys.len() > 10 {
        return Err(ApiError::invalid_request(
            "You may only specify up to 10 lookup keys.",
            Some("lookup_keys"),
        ));
    }
    let store = &*ctx.store;
    let ids: Vec<&str> = store
        .price_order
        .iter()
        .rev()
        .filter_map(|id| store.prices.get(id))
        .filter(|p| active.is_none_or(|a| p.active == a))
        .filter(|p| currency.as_ref().is_none_or(|c| &p.currency == c))
        .filter(|p| product.is_none_or(|id| p.product == id))
        .filter(|p| kind.is_none_or(|k| (k == "recurring") == p.recurring.is_some()))
        .filter(|p| {
            interval
                .as_ref()
                .is_none_or(|i| p.recurring.as_ref().is_some_and(|r| &r.interval == i))
        })
        .filter(|p| {
            lookup_keys.is_empty()
                || p.lookup_key
                    .as_ref()
                    .is_some_and(|k| lookup_keys.contains(k))
        })
        .map(|p| p.id.as_str())
        .collect();
    page(ids, params, "/v1/prices", |id| {
        render(store, id, &expand).ok()
    })
}

fn render(store: &Store, id: &str, expand: &[String]) -> Result<Value, ApiError> {
    let price = store
        .prices
        .get(id)
        .ok_or_else(|| ApiError::no_such("price", id, "price"))?;
    let mut value = render_price(price);
    if expand.iter().any(|e| e == "product")
        && let Some(product) = store.products.get(&price.product)
    {
        value["product"] = render_product(product);
    }
    Ok(value)
}

/// A three-letter ISO code, sent back in lower case as Stripe does.
fn currency(code: &str) -> Result<String, ApiError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid_request(
            &format!("Invalid currency: {code}."),
            Some("currency"),
        ))
    }
}

fn unit_amount(params: &Params) -> Result<i64, ApiError> {
    let amount = match (
        params.integer("unit_amount")?,
        params.optional("unit_amount_decimal")?,
    ) {
        (Some(amount), _) => amount,
        (None, Some(decimal)) => decimal
            .parse::<f64>()
            .ok()
            .filter(|d| d.fract() == 0.0)
            .map(|d| d as i64)
            .ok_or_else(|| {
                ApiError::invalid_param("unit_amount_decimal", "a whole number of minor units")
            })?,
        (None, None) => return Err(ApiError::missing_param("unit_amount")),
    };
    if amount < 0 {
        return Err(ApiError::invalid_request(
            "Invalid non-negative integer: unit_amount.",
            Some("unit_amount"),
        ));
    }
    Ok(amount)
}

fn recurring(params: &Params) -> Result<Option<Recurring>, ApiError> {
    let Some(recurring) = params.nested("recurring")? else {
        return Ok(None);
    };
    check_known(
        &recurring,
        &[
            "interval",
            "interval_count",
            "usage_type",
            "meter",
            "trial_period_days",
        ],
    )
    .map_err(|e| ApiError {
        param: e.param.map(|p| format!("recurring[{p}]")),
        ..e
    })?;
    let interval = recurring
        .required("interval")
        .map_err(|_| ApiError::missing_param("recurring[interval]"))?;
    if !matches!(interval, "day" | "week" | "month" | "year") {
        return Err(ApiError::invalid_request(
            &format!(
                "Invalid recurring[interval]: must be one of day, week, month, or year (got {interval})."
            ),
            Some("recurring[interval]"),
        ));
    }
    let count = recurring
        .integer("interval_count")
        .map_err(|_| ApiError::invalid_param("recurring[interval_count]", "an integer"))?
        .unwrap_or(1);
    let count = u64::try_from(count)
        .ok()
        .filter(|c| (1..=365).contains(c))
        .ok_or_else(|| ApiError::invalid_param("recurring[interval_count]", "between 1 and 365"))?;
    Ok(Some(Recurring {
        interval: interval.to_owned(),
        interval_count: count,
    }))
}
