//! The objects the simulator holds, their indices, and their rendering as Stripe JSON.
//!
//! Rendering emits every field async-stripe's types require (they fail to parse otherwise) with
//! Stripe's own shapes at the API version the client sends (2025 "basil" and later: billing
//! periods live on subscription items, invoices no longer carry `payment_intent`: their
//! payments are InvoicePayments, each naming its PaymentIntent).

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::cards::Card;
use super::errors::ApiError;
use super::events::{Events, Request};
use super::faults::InvoiceShape;
use super::webhooks::Endpoint;

pub type Metadata = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: String,
    pub created: i64,
    pub born: Instant,
    pub email: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub phone: Option<String>,
    pub metadata: Metadata,
    pub default_payment_method: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PaymentMethod {
    pub id: String,
    pub created: i64,
    pub customer: Option<String>,
    pub card: Card,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Product {
    pub id: String,
    pub created: i64,
    pub name: String,
    pub active: bool,
    pub description: Option<String>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Recurring {
    pub interval: String,
    pub interval_count: u64,
}

#[derive(Debug, Clone)]
pub struct Price {
    pub id: String,
    pub created: i64,
    pub product: String,
    pub currency: String,
    pub unit_amount: i64,
    pub recurring: Option<Recurring>,
    pub lookup_key: Option<String>,
    pub nickname: Option<String>,
    pub active: bool,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub price: String,
    pub quantity: u64,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub created: i64,
    pub born: Instant,
    pub customer: String,
    pub items: Vec<Item>,
    pub currency: String,
    pub status: String,
    pub collection_method: String,
    pub default_payment_method: Option<String>,
    pub latest_invoice: String,
    pub metadata: Metadata,
    pub period_start: i64,
    pub period_end: i64,
    pub trial_end: Option<i64>,
    pub canceled_at: Option<i64>,
    /// When it stopped (a period-end cancel sets `canceled_at` at the request, this at the end).
    pub ended_at: Option<i64>,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<i64>,
    /// `cancellation_details.reason`: `cancellation_requested` or `payment_failed`.
    pub cancellation_reason: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: String,
    pub created: i64,
    pub customer: String,
    pub subscription: String,
    pub currency: String,
    /// (price id, quantity, amount) per line.
    pub lines: Vec<(String, u64, i64)>,
    /// The service period the lines pay for (a cycle invoice bills the period that starts).
    pub lines_period: (i64, i64),
    pub total: i64,
    pub paid: bool,
    pub paid_at: Option<i64>,
    pub attempt_count: u64,
    pub next_payment_attempt: Option<i64>,
    /// Its default payment, made when it is first charged (none for an invoice never charged).
    pub payment: Option<Payment>,
    /// `subscription_create` or `subscription_cycle`.
    pub billing_reason: &'static str,
    /// The subscription's metadata when the invoice was made, as Stripe copies it.
    pub subscription_metadata: Metadata,
    pub shape: InvoiceShape,
    pub status: String,
    pub period_start: i64,
    pub period_end: i64,
}

/// A SetupIntent (docs/partners.md#before-the-request-stripesubauthorization): made for a customer, confirmed by the partner's app with a
/// card, which it then attaches to the customer.
#[derive(Debug, Clone)]
pub struct SetupIntent {
    pub id: String,
    pub client_secret: String,
    pub created: i64,
    pub customer: Option<String>,
    pub description: Option<String>,
    pub usage: String,
    pub metadata: Metadata,
    /// `requires_payment_method`, then `succeeded` (or back to `requires_payment_method`
    /// with `last_error` after a decline).
    pub status: &'static str,
    pub payment_method: Option<String>,
    pub last_error: Option<ApiError>,
}

/// An invoice's default payment: one PaymentIntent, charged by every try. Stripe makes it when
/// the invoice is finalized; here it is made at the first charge (an invoice never charged has
/// no payment to show). Its ids are the invoice's under other prefixes ([`intent_id`],
/// [`invoice_payment_id`]), so either leads back to the invoice without an index.
#[derive(Debug, Clone)]
pub struct Payment {
    pub created: i64,
    pub payment_method: Option<String>,
    /// Why the last try failed: the PaymentIntent's `last_payment_error`. Cleared when a try
    /// succeeds, as Stripe clears it.
    pub last_error: Option<ApiError>,
}

/// The PaymentIntent id of an invoice's payment (`in_X` → `pi_X`).
pub fn intent_id(invoice_id: &str) -> String {
    format!("pi_{}", invoice_id.trim_start_matches("in_"))
}

/// The InvoicePayment id of an invoice's payment (`in_X` → `inpay_X`).
pub fn invoice_payment_id(invoice_id: &str) -> String {
    format!("inpay_{}", invoice_id.trim_start_matches("in_"))
}

/// Everything the simulator holds. Each map has a creation-order id list beside it, because
/// Stripe lists newest first and pagination needs a stable order.
#[derive(Debug, Default)]
pub struct Store {
    pub customers: HashMap<String, Customer>,
    pub customer_order: Vec<String>,
    pub customers_by_email: HashMap<String, Vec<String>>,
    pub payment_methods: HashMap<String, PaymentMethod>,
    pub payment_method_order: Vec<String>,
    pub products: HashMap<String, Product>,
    pub product_order: Vec<String>,
    pub prices: HashMap<String, Price>,
    pub price_order: Vec<String>,
    pub prices_by_lookup_key: HashMap<String, String>,
    pub subscriptions: HashMap<String, Subscription>,
    pub subscription_order: Vec<String>,
    pub subscriptions_by_customer: HashMap<String, Vec<String>>,
    /// `metadata[payId]` → subscription count, kept for `/_sim/stats` ("never two").
    pub subscriptions_by_pay_id: BTreeMap<String, u64>,
    pub invoices: HashMap<String, Invoice>,
    pub setup_intents: HashMap<String, SetupIntent>,
    pub events: Events,
    pub webhook_endpoints: Vec<Endpoint>,
    /// Seconds `POST /_sim/advance` added to the wall clock.
    pub clock_offset: i64,
    /// While an advance works through what fell due, the moment it is at: everything it
    /// does is stamped with that moment exactly.
    pub pinned_now: Option<i64>,
}

impl Store {
    /// The simulator's clock: every `created` and period is stamped with it.
    pub fn now(&self) -> i64 {
        self.pinned_now
            .unwrap_or_else(|| wall_clock().saturating_add(self.clock_offset))
    }

    /// Records an event, queueing its deliveries to the endpoints that want it.
    pub fn emit(&mut self, kind: &str, object: Value, previous: Option<Value>, request: &Request) {
        let created = self.now();
        self.events.emit(
            &self.webhook_endpoints,
            created,
            kind,
            object,
            previous,
            request,
        );
    }

    pub fn insert_customer(&mut self, customer: Customer) {
        if let Some(email) = &customer.email {
            self.customers_by_email
                .entry(email.clone())
                .or_default()
                .push(customer.id.clone());
        }
        self.customer_order.push(customer.id.clone());
        self.customers.insert(customer.id.clone(), customer);
    }

    /// Changes a customer's email, keeping the email index right.
    pub fn set_customer_email(&mut self, id: &str, email: Option<String>) {
        let Some(customer) = self.customers.get_mut(id) else {
            return;
        };
        if let Some(old) = customer.email.take()
            && let Some(ids) = self.customers_by_email.get_mut(&old)
        {
            ids.retain(|c| c != id);
        }
        if let Some(new) = &email {
            self.customers_by_email
                .entry(new.clone())
                .or_default()
                .push(id.to_owned());
        }
        customer.email = email;
    }

    pub fn insert_payment_method(&mut self, pm: PaymentMethod) {
        self.payment_method_order.push(pm.id.clone());
        self.payment_methods.insert(pm.id.clone(), pm);
    }

    pub fn insert_product(&mut self, product: Product) {
        self.product_order.push(product.id.clone());
        self.products.insert(product.id.clone(), product);
    }

    pub fn insert_price(&mut self, price: Price) {
        if let Some(key) = &price.lookup_key {
            self.prices_by_lookup_key
                .insert(key.clone(), price.id.clone());
        }
        self.price_order.push(price.id.clone());
        self.prices.insert(price.id.clone(), price);
    }

    pub fn insert_subscription(&mut self, subscription: Subscription, invoice: Invoice) {
        if let Some(pay_id) = subscription.metadata.get("payId") {
            *self
                .subscriptions_by_pay_id
                .entry(pay_id.clone())
                .or_default() += 1;
        }
        self.subscriptions_by_customer
            .entry(subscription.customer.clone())
            .or_default()
            .push(subscription.id.clone());
        self.subscription_order.push(subscription.id.clone());
        self.invoices.insert(invoice.id.clone(), invoice);
        self.subscriptions
            .insert(subscription.id.clone(), subscription);
    }

    pub fn counts(&self) -> Value {
        json!({
            "customers": self.customers.len(),
            "payment_methods": self.payment_methods.len(),
            "products": self.products.len(),
            "prices": self.prices.len(),
            "subscriptions": self.subscriptions.len(),
            "invoices": self.invoices.len(),
            "events": self.events.len(),
            "webhook_endpoints": self.webhook_endpoints.len(),
        })
    }
}

/// Seconds since the Unix epoch by the machine's clock (the simulator's runs ahead of it by
/// what was advanced: see [`Store::now`]).
pub fn wall_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A Stripe-looking id: prefix, `_`, then 24 alphanumerics (the shape of live ids).
pub fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 25);
    id.push_str(prefix);
    id.push_str("_1");
    for _ in 0..23 {
        id.push(fastrand::alphanumeric());
    }
    id
}

/// The end of a billing period that starts at `start`. Calendar months are approximated by
/// 30 days: nothing the worker reads depends on the exact renewal date.
pub fn period_end(start: i64, recurring: &Recurring) -> i64 {
    let days = match recurring.interval.as_str() {
        "day" => 1,
        "week" => 7,
        "year" => 365,
        _ => 30,
    };
    start + days * 86_400 * i64::try_from(recurring.interval_count).unwrap_or(1)
}

fn address() -> Value {
    json!({"city": null, "country": null, "line1": null, "line2": null, "postal_code": null, "state": null})
}

pub fn render_customer(c: &Customer) -> Value {
    json!({
        "id": c.id, "object": "customer", "address": null, "balance": 0, "created": c.created,
        "currency": null, "default_source": null, "delinquent": false, "description": c.description,
        "discount": null, "email": c.email, "invoice_prefix": invoice_prefix(&c.id),
        "invoice_settings": {
            "custom_fields": null, "default_payment_method": c.default_payment_method,
            "footer": null, "rendering_options": null,
        },
        "livemode": false, "metadata": c.metadata, "name": c.name, "next_invoice_sequence": 1,
        "phone": c.phone, "preferred_locales": [], "shipping": null, "tax_exempt": "none",
        "test_clock": null,
    })
}

fn invoice_prefix(id: &str) -> String {
    id.trim_start_matches("cus_")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_uppercase()
}

pub fn render_payment_method(pm: &PaymentMethod) -> Value {
    let card = &pm.card;
    json!({
        "id": pm.id, "object": "payment_method", "allow_redisplay": "unspecified",
        "billing_details": {"address": address(), "email": null, "name": null, "phone": null, "tax_id": null},
        "card": {
            "brand": card.brand, "checks": {"address_line1_check": null, "address_postal_code_check": null, "cvc_check": "pass"},
            "country": "US", "display_brand": card.brand, "exp_month": 12, "exp_year": card.exp_year,
            "fingerprint": card.fingerprint, "funding": card.funding, "generated_from": null,
            "last4": card.last4, "networks": {"available": [card.brand], "preferred": null},
            "regulated_status": "unregulated", "three_d_secure_usage": {"supported": true}, "wallet": null,
        },
        "created": pm.created, "customer": pm.customer, "livemode": false, "metadata": pm.metadata,
        "type": "card",
    })
}

pub fn render_product(p: &Product) -> Value {
    json!({
        "id": p.id, "object": "product", "active": p.active, "created": p.created,
        "default_price": null, "description": p.description, "images": [], "livemode": false,
        "marketing_features": [], "metadata": p.metadata, "name": p.name,
        "package_dimensions": null, "shippable": null, "statement_descriptor": null,
        "tax_code": null, "type": "service", "unit_label": null, "updated": p.created, "url": null,
    })
}

pub fn render_price(p: &Price) -> Value {
    json!({
        "id": p.id, "object": "price", "active": p.active, "billing_scheme": "per_unit",
        "created": p.created, "currency": p.currency, "custom_unit_amount": null,
        "livemode": false, "lookup_key": p.lookup_key, "metadata": p.metadata,
        "nickname": p.nickname, "product": p.product,
        "recurring": p.recurring.as_ref().map(|r| json!({
            "interval": r.interval, "interval_count": r.interval_count, "meter": null,
            "usage_type": "licensed",
        })),
        "tax_behavior": "unspecified", "tiers_mode": null, "transform_quantity": null,
        "type": if p.recurring.is_some() { "recurring" } else { "one_time" },
        "unit_amount": p.unit_amount, "unit_amount_decimal": p.unit_amount.to_string(),
    })
}

/// The legacy `plan` object Stripe still puts beside `price` on subscription items.
fn render_plan(p: &Price) -> Value {
    let (interval, interval_count) = p
        .recurring
        .as_ref()
        .map_or(("month", 1), |r| (r.interval.as_str(), r.interval_count));
    json!({
        "id": p.id, "object": "plan", "active": p.active, "amount": p.unit_amount,
        "amount_decimal": p.unit_amount.to_string(), "billing_scheme": "per_unit",
        "created": p.created, "currency": p.currency, "interval": interval,
        "interval_count": interval_count, "livemode": false, "metadata": p.metadata,
        "meter": null, "nickname": p.nickname, "product": p.product, "tiers_mode": null,
        "transform_usage": null, "trial_period_days": null, "usage_type": "licensed",
    })
}

/// Which references to render as objects instead of ids (`expand[]`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Expand {
    pub customer: bool,
    pub latest_invoice: bool,
    pub default_payment_method: bool,
}

/// The subscription's `items` list (its billing periods live there since API version basil).
pub fn render_items(store: &Store, s: &Subscription) -> Value {
    let items: Vec<Value> = s
        .items
        .iter()
        .filter_map(|item| {
            let price = store.prices.get(&item.price)?;
            Some(json!({
                "id": item.id, "object": "subscription_item", "billing_thresholds": null,
                "created": s.created, "current_period_end": s.period_end,
                "current_period_start": s.period_start, "discounts": [], "metadata": {},
                "plan": render_plan(price), "price": render_price(price),
                "quantity": item.quantity, "subscription": s.id, "tax_rates": [],
            }))
        })
        .collect();
    let url = format!("/v1/subscription_items?subscription={}", s.id);
    json!({"object": "list", "data": items, "has_more": false, "total_count": s.items.len(), "url": url})
}

pub fn render_subscription(store: &Store, s: &Subscription, expand: Expand) -> Value {
    let customer = match store.customers.get(&s.customer) {
        Some(c) if expand.customer => render_customer(c),
        _ => json!(s.customer),
    };
    let latest_invoice = match store.invoices.get(&s.latest_invoice) {
        Some(invoice) if expand.latest_invoice => render_invoice(store, invoice),
        _ => json!(s.latest_invoice),
    };
    let default_payment_method = match &s.default_payment_method {
        Some(id) if expand.default_payment_method => store
            .payment_methods
            .get(id)
            .map_or_else(|| json!(id), render_payment_method),
        other => json!(other),
    };
    // Two halves: one `json!` this size exceeds the macro recursion limit.
    let mut value = json!({
        "id": s.id, "object": "subscription", "application": null,
        "application_fee_percent": null,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
        "billing_cycle_anchor": s.period_start, "billing_cycle_anchor_config": null,
        "billing_mode": {"type": "classic", "updated_at": null}, "billing_schedules": [],
        "billing_thresholds": null, "cancel_at": s.cancel_at,
        "cancel_at_period_end": s.cancel_at_period_end, "canceled_at": s.canceled_at,
        "cancellation_details": {"comment": null, "feedback": null, "reason": s.cancellation_reason},
        "collection_method": s.collection_method, "created": s.created, "currency": s.currency,
        "customer": customer, "days_until_due": null,
        "default_payment_method": default_payment_method, "default_source": null,
        "default_tax_rates": [], "description": null, "discounts": [],
        "ended_at": s.ended_at,
    });
    extend(
        &mut value,
        json!({
            "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
            "items": render_items(store, s),
            "latest_invoice": latest_invoice, "livemode": false, "metadata": s.metadata,
            "next_pending_invoice_item_invoice": null, "on_behalf_of": null,
            "pause_collection": null,
            "payment_settings": {"payment_method_options": null, "payment_method_types": null, "save_default_payment_method": "off"},
            "pending_invoice_item_interval": null, "pending_setup_intent": null,
            "pending_update": null, "schedule": null, "start_date": s.created, "status": s.status,
            "test_clock": null, "transfer_data": null, "trial_end": s.trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": s.trial_end.map(|_| s.created),
        }),
    );
    value
}

fn extend(target: &mut Value, more: Value) {
    if let (Value::Object(target), Value::Object(more)) = (target, more) {
        target.extend(more);
    }
}

pub fn render_invoice(store: &Store, i: &Invoice) -> Value {
    let lines: Vec<Value> = i
        .lines
        .iter()
        .enumerate()
        .map(|(n, (price, quantity, amount))| {
            json!({
                "id": format!("il_{}_{n}", i.id.trim_start_matches("in_")), "object": "line_item",
                "amount": amount, "currency": i.currency, "description": null,
                "discount_amounts": [], "discountable": true, "discounts": [],
                "invoice": i.id, "livemode": false, "metadata": {},
                "period": {"end": i.lines_period.1, "start": i.lines_period.0},
                "pricing": {"price_details": {"price": price, "product": store.prices.get(price).map(|p| p.product.clone()).unwrap_or_default()}, "type": "price_details", "unit_amount_decimal": null},
                "quantity": quantity, "subtotal": amount, "taxes": [],
            })
        })
        .collect();
    let (paid, due) = if i.paid { (i.total, 0) } else { (0, i.total) };
    let current = matches!(i.shape, InvoiceShape::Current | InvoiceShape::Both);
    let legacy = matches!(i.shape, InvoiceShape::Legacy | InvoiceShape::Both);
    let parent = current.then(|| json!({
        "quote_details": null, "type": "subscription_details",
        "subscription_details": {"metadata": i.subscription_metadata, "subscription": i.subscription},
    }));
    let mut value = json!({
    "id": i.id, "object": "invoice", "account_country": "US", "account_name": "autorenew simulator",
    "amount_due": i.total, "amount_overpaid": 0, "amount_paid": paid, "amount_remaining": due,
    "amount_shipping": 0, "attempt_count": i.attempt_count, "attempted": i.attempt_count > 0,
    "auto_advance": !i.paid, "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
    "billing_reason": i.billing_reason, "collection_method": "charge_automatically",
    "created": i.created, "currency": i.currency, "customer": i.customer,
    "default_payment_method": null, "default_tax_rates": [], "description": null,
    "discounts": [], "issuer": {"type": "self"},
    "lines": {"object": "list", "data": lines, "has_more": false, "total_count": i.lines.len(), "url": format!("/v1/invoices/{}/lines", i.id)},
    });
    extend(
        &mut value,
        json!({
            // About finalizing the invoice (tax, say), never its payment: a charge's error is
            // on the PaymentIntent, as at Stripe.
            "last_finalization_error": null,
            "livemode": false, "metadata": {}, "next_payment_attempt": i.next_payment_attempt,
            "parent": parent,
            "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
            "period_end": i.period_end, "period_start": i.period_start,
            "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
            "starting_balance": 0, "status": i.status,
            "status_transitions": {"finalized_at": i.created, "marked_uncollectible_at": null, "paid_at": i.paid_at, "voided_at": null},
            "subtotal": i.total, "total": i.total,
        }),
    );
    if legacy {
        extend(
            &mut value,
            json!({
                "subscription": i.subscription,
                "subscription_details": {"metadata": i.subscription_metadata},
                "payment_intent": i.payment.as_ref().map(|_| intent_id(&i.id)),
            }),
        );
    }
    value
}

/// The PaymentIntent of an invoice's payment.
pub fn render_payment_intent(store: &Store, i: &Invoice, p: &Payment) -> Value {
    let last_payment_error = p.last_error.as_ref().map(|e| {
        let mut error = e.body()["error"].take();
        // Stripe names the method the failed try used.
        if let Some(pm) = p
            .payment_method
            .as_ref()
            .and_then(|id| store.payment_methods.get(id))
        {
            error["payment_method"] = render_payment_method(pm);
        }
        error
    });
    let status = if i.paid {
        "succeeded"
    } else {
        "requires_payment_method"
    };
    let id = intent_id(&i.id);
    let description = if i.billing_reason == "subscription_create" {
        "Subscription creation"
    } else {
        "Subscription update"
    };
    json!({
        "id": id, "object": "payment_intent", "amount": i.total, "amount_capturable": 0,
        "amount_received": if i.paid { i.total } else { 0 },
        "application": null, "application_fee_amount": null,
        "automatic_payment_methods": null, "canceled_at": null, "cancellation_reason": null,
        "capture_method": "automatic", "client_secret": format!("{id}_secret_sim"),
        "confirmation_method": "automatic", "created": p.created, "currency": i.currency,
        "customer": i.customer, "description": description,
        "last_payment_error": last_payment_error, "latest_charge": null, "livemode": false,
        "metadata": {}, "next_action": null, "on_behalf_of": null,
        "payment_method": p.payment_method, "payment_method_configuration_details": null,
        "payment_method_options": null, "payment_method_types": ["card"], "processing": null,
        "receipt_email": null, "review": null, "setup_future_usage": null,
        "shipping": null, "source": null, "statement_descriptor": null,
        "statement_descriptor_suffix": null, "status": status, "transfer_data": null,
        "transfer_group": null,
    })
}

/// An invoice's payment as an InvoicePayment; `expand_intent` renders its PaymentIntent in
/// place of the id (`expand[]=payment.payment_intent`).
pub fn render_invoice_payment(
    store: &Store,
    i: &Invoice,
    p: &Payment,
    expand_intent: bool,
) -> Value {
    let intent = if expand_intent {
        render_payment_intent(store, i, p)
    } else {
        json!(intent_id(&i.id))
    };
    json!({
        "id": invoice_payment_id(&i.id), "object": "invoice_payment",
        "amount_paid": i.paid.then_some(i.total), "amount_requested": i.total,
        "created": p.created, "currency": i.currency, "invoice": i.id, "is_default": true,
        "livemode": false,
        "payment": {"type": "payment_intent", "payment_intent": intent},
        "status": if i.paid { "paid" } else { "open" },
        "status_transitions": {"canceled_at": null, "paid_at": i.paid_at},
    })
}
