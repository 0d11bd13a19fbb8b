//! The Stripe calls of one job. Every write carries a fixed idempotency key chosen by the
//! caller; every answer is read with async-stripe's own types.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_billing::invoice_payment::ListInvoicePayment;
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems,
    CreateSubscriptionPaymentBehavior, ListSubscription, ListSubscriptionStatus,
    RetrieveSubscription, SearchSubscription, UpdateSubscription,
};
use stripe_core::customer::{
    CreateCustomer, CreateCustomerInvoiceSettings, ListCustomer, UpdateCustomer,
};
use stripe_core::setup_intent::{CreateSetupIntent, CreateSetupIntentUsage};
use stripe_payment::payment_method::{AttachPaymentMethod, RetrievePaymentMethod};
use stripe_product::price::{
    CreatePrice, CreatePriceProductData, CreatePriceRecurring, CreatePriceRecurringInterval,
    ListPrice, RetrievePrice,
};
use stripe_types::Expandable;

use super::client::{CallError, ClientOptions, StripeHttp};
use super::{Budget, StripeFailure, WriteFailure};
use crate::telemetry::names::stripe::{BUDGET_WAIT_SECONDS, CALLS_TOTAL, ERRORS_TOTAL};

/// A payment method attached to the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub id: String,
    /// Its type as Stripe reports it (`card`, …).
    pub kind: String,
}

/// A price to find by lookup key or create.
#[derive(Debug, Clone)]
pub struct PriceSpec<'a> {
    pub lookup_key: &'a str,
    pub product_name: &'a str,
    pub unit_amount: i64,
    pub currency: &'a str,
    pub interval: &'a str,
}

/// A subscription to create.
#[derive(Debug, Clone)]
pub struct NewSubscription<'a> {
    pub customer: &'a str,
    pub price: &'a str,
    pub payment_method: &'a str,
    pub payment_behavior: &'a str,
    pub metadata: HashMap<String, String>,
}

/// A subscription as the job reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    pub id: String,
    pub status: String,
    pub product_id: String,
    /// The type of its default payment method (`card`, …), read from the expanded object.
    pub pay_method: String,
}

/// A customer to create, with the payment method attached and made its default in the same
/// call (one call instead of three).
#[derive(Debug, Clone)]
pub struct NewCustomer<'a> {
    pub partner_code: &'a str,
    pub email: &'a str,
    pub payment_method: &'a str,
}

/// A note on the customer of (`partner_code`, `email`): metadata `name` = `value` (a final
/// failure recorded at Stripe, `domain::failure_mark`).
#[derive(Debug, Clone)]
pub struct CustomerMark<'a> {
    pub partner_code: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub value: &'a str,
}

/// A customer just created: its id, and the id of the payment method attached to it (Stripe
/// makes a new one for a test method such as `pm_card_visa`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCustomer {
    pub id: String,
    pub payment_method: String,
}

/// The Stripe client with the shared budget in front of it.
#[derive(Clone)]
pub struct Gateway {
    client: StripeHttp,
    budget: Arc<dyn Budget>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// A client as `options` say, behind `budget`.
    pub fn new(
        options: &ClientOptions<'_>,
        budget: Arc<dyn Budget>,
    ) -> Result<Self, StripeFailure> {
        let client = StripeHttp::new(options)
            .map_err(|e| StripeFailure::Transient(format!("Stripe client: {e}")))?;
        Ok(Gateway { client, budget })
    }

    /// Waits for one request's worth of the shared budget; every call goes through here, so
    /// this also counts the calls.
    async fn take_budget(&self, operation: &'static str) -> Result<(), StripeFailure> {
        let started = std::time::Instant::now();
        let partner = super::current_partner();
        self.budget
            .take(&partner)
            .await
            .map_err(StripeFailure::BudgetUnavailable)?;
        metrics::histogram!(BUDGET_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(CALLS_TOTAL, "operation" => operation, "partner" => partner.to_string())
            .increment(1);
        super::calls::count();
        Ok(())
    }

    /// The customer of `email` that carries `partnerCode` in its metadata. Lists by email,
    /// which (unlike search) sees a customer created a moment ago.
    pub async fn find_customer(
        &self,
        partner_code: &str,
        email: &str,
    ) -> Result<Option<String>, StripeFailure> {
        Ok(self
            .partner_customers(partner_code, email)
            .await?
            .into_iter()
            .next()
            .map(|customer| customer.id.to_string()))
    }

    /// The customers of `email` that carry `partnerCode` in their metadata, newest first.
    async fn partner_customers(
        &self,
        partner_code: &str,
        email: &str,
    ) -> Result<Vec<stripe_shared::Customer>, StripeFailure> {
        self.take_budget("customers.list").await?;
        let list = ListCustomer::new()
            .email(email)
            .limit(100)
            .send(&self.client)
            .await
            .map_err(|e| failed("customers.list", e, false))?;
        Ok(list
            .data
            .into_iter()
            .filter(|customer| {
                customer
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get("partnerCode"))
                    .is_some_and(|code| code == partner_code)
            })
            .collect())
    }

    /// The value of metadata `name` on a customer of (`partnerCode`, `email`), if one has it.
    /// A list, not a search: it sees a mark written a moment ago.
    pub async fn customer_mark(
        &self,
        partner_code: &str,
        email: &str,
        name: &str,
    ) -> Result<Option<String>, StripeFailure> {
        Ok(self
            .partner_customers(partner_code, email)
            .await?
            .into_iter()
            .find_map(|customer| customer.metadata.and_then(|mut m| m.remove(name))))
    }

    /// Sets the mark on the newest customer of (`partnerCode`, `email`), or, when there is
    /// none, creates the customer (without a payment method) carrying it: the customer a later
    /// job of this person finds and uses.
    pub async fn mark_customer(
        &self,
        mark: &CustomerMark<'_>,
        key: &str,
    ) -> Result<(), StripeFailure> {
        let newest = self
            .partner_customers(mark.partner_code, mark.email)
            .await?
            .into_iter()
            .next();
        let mut metadata = HashMap::from([(mark.name.to_owned(), mark.value.to_owned())]);
        match newest {
            Some(customer) => {
                self.take_budget("customers.update").await?;
                UpdateCustomer::new(customer.id)
                    .metadata(metadata)
                    .customize()
                    .request_strategy(idempotent(key)?)
                    .send(&self.client)
                    .await
                    .map_err(|e| failed("customers.update", e, true))?;
            }
            None => {
                self.take_budget("customers.create").await?;
                metadata.insert("partnerCode".to_owned(), mark.partner_code.to_owned());
                CreateCustomer::new()
                    .email(mark.email)
                    .metadata(metadata)
                    .customize()
                    .request_strategy(idempotent(&format!("{key}-cus"))?)
                    .send(&self.client)
                    .await
                    .map_err(|e| failed("customers.create", e, true))?;
            }
        }
        Ok(())
    }

    /// Creates the customer with the payment method attached and made its default for invoices.
    /// A decline happens here as it would at attach.
    pub async fn create_customer(
        &self,
        new: &NewCustomer<'_>,
        key: &str,
    ) -> Result<CreatedCustomer, StripeFailure> {
        self.take_budget("customers.create").await?;
        let metadata = HashMap::from([("partnerCode".to_owned(), new.partner_code.to_owned())]);
        let customer = CreateCustomer::new()
            .email(new.email)
            .metadata(metadata)
            .payment_method(new.payment_method)
            .invoice_settings(CreateCustomerInvoiceSettings {
                default_payment_method: Some(new.payment_method.to_owned()),
                ..CreateCustomerInvoiceSettings::new()
            })
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed("customers.create", e, true))?;
        let payment_method = customer
            .invoice_settings
            .as_ref()
            .and_then(|settings| settings.default_payment_method.as_ref())
            .map(|method| method.id().to_string())
            .unwrap_or_else(|| new.payment_method.to_owned());
        Ok(CreatedCustomer {
            id: customer.id.to_string(),
            payment_method,
        })
    }

    /// Attaches a payment method to the customer. Already on this customer is fine; on another
    /// customer, or unknown to Stripe, it is a permanent failure.
    pub async fn attach_payment_method(
        &self,
        payment_method: &str,
        customer: &str,
        key: &str,
    ) -> Result<Attached, StripeFailure> {
        self.take_budget("payment_methods.attach").await?;
        let attached = AttachPaymentMethod::new(payment_method)
            .customer(customer)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            // Only the two strings outlive this line: a whole PaymentMethod held across the
            // owner check below would size every job's future (7 KB, at each call in flight).
            .map(|method| Attached {
                id: method.id.to_string(),
                kind: method.type_.to_string(),
            });
        match attached {
            Ok(attached) => Ok(attached),
            Err(error) => match failed("payment_methods.attach", error, true) {
                StripeFailure::Permanent(detail)
                    if detail.code == crate::domain::FailureCode::StripeRejected =>
                {
                    // Stripe refuses to attach a method that is attached already; whose it is
                    // decides whether that is fine.
                    self.owner_check(payment_method, customer, detail).await
                }
                other => Err(other),
            },
        }
    }

    async fn owner_check(
        &self,
        payment_method: &str,
        customer: &str,
        refusal: crate::domain::FailureDetail,
    ) -> Result<Attached, StripeFailure> {
        self.take_budget("payment_methods.retrieve").await?;
        let method = RetrievePaymentMethod::new(payment_method)
            .send(&self.client)
            .await
            .map_err(|e| failed("payment_methods.retrieve", e, false))?;
        match &method.customer {
            Some(owner) if owner.id().as_str() == customer => Ok(Attached {
                id: method.id.to_string(),
                kind: method.type_.to_string(),
            }),
            Some(_) => Err(StripeFailure::payment_method(
                "the payment method is attached to another customer",
                refusal.stripe_code,
            )),
            None => Err(StripeFailure::Permanent(refusal)),
        }
    }

    /// A configured price: its product, for the result.
    pub async fn price_product(&self, price: &str) -> Result<String, StripeFailure> {
        self.take_budget("prices.retrieve").await?;
        let price = RetrievePrice::new(price)
            .send(&self.client)
            .await
            .map_err(|e| failed("prices.retrieve", e, false))?;
        Ok(price.product.id().to_string())
    }

    /// The price with this lookup key: (price id, product id).
    pub async fn find_price(
        &self,
        lookup_key: &str,
    ) -> Result<Option<(String, String)>, StripeFailure> {
        self.take_budget("prices.list").await?;
        let list = ListPrice::new()
            .lookup_keys(vec![lookup_key.to_owned()])
            .send(&self.client)
            .await
            .map_err(|e| failed("prices.list", e, false))?;
        Ok(list
            .data
            .into_iter()
            .next()
            .map(|price| (price.id.to_string(), price.product.id().to_string())))
    }

    pub async fn create_price(
        &self,
        spec: &PriceSpec<'_>,
        key: &str,
    ) -> Result<(String, String), StripeFailure> {
        self.take_budget("prices.create").await?;
        let currency = stripe_types::Currency::from_str(spec.currency)
            .map_err(|_| StripeFailure::Transient("currency".into()))?;
        let interval = CreatePriceRecurringInterval::from_str(spec.interval)
            .map_err(|_| StripeFailure::Transient("interval".into()))?;
        let price = CreatePrice::new(currency)
            .unit_amount(spec.unit_amount)
            .product_data(CreatePriceProductData::new(spec.product_name))
            .recurring(CreatePriceRecurring::new(interval))
            .lookup_key(spec.lookup_key)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed("prices.create", e, true))?;
        Ok((price.id.to_string(), price.product.id().to_string()))
    }

    /// The customer's subscription whose metadata carries this payId. Lists (consistent) rather
    /// than searches (up to a minute behind).
    pub async fn find_subscription(
        &self,
        customer: &str,
        pay_id: &str,
    ) -> Result<Option<Subscribed>, StripeFailure> {
        let mut starting_after: Option<String> = None;
        // Every page: a payId's subscription may be the oldest of a customer with thousands,
        // and "not found" must mean not there.
        loop {
            self.take_budget("subscriptions.list").await?;
            let mut request = ListSubscription::new()
                .customer(customer)
                .status(ListSubscriptionStatus::All)
                .limit(100)
                .expand(vec!["data.default_payment_method".to_owned()]);
            if let Some(after) = &starting_after {
                request = request.starting_after(after.as_str());
            }
            let page = request
                .send(&self.client)
                .await
                .map_err(|e| failed("subscriptions.list", e, false))?;
            if let Some(found) = page
                .data
                .iter()
                .find(|sub| sub.metadata.get("payId").is_some_and(|p| p == pay_id))
            {
                return Ok(Some(subscribed(found)));
            }
            match page.data.last() {
                Some(last) if page.has_more => starting_after = Some(last.id.to_string()),
                _ => return Ok(None),
            }
        }
    }

    /// Creates the subscription under `key`. A failure says whether Stripe replayed it from the
    /// key's record: the job path moves to a new key only on such a definitive answer.
    pub async fn create_subscription(
        &self,
        new: &NewSubscription<'_>,
        key: &str,
    ) -> Result<Subscribed, WriteFailure> {
        self.take_budget("subscriptions.create").await?;
        let behavior = match new.payment_behavior {
            "allow_incomplete" => CreateSubscriptionPaymentBehavior::AllowIncomplete,
            "default_incomplete" => CreateSubscriptionPaymentBehavior::DefaultIncomplete,
            "pending_if_incomplete" => CreateSubscriptionPaymentBehavior::PendingIfIncomplete,
            _ => CreateSubscriptionPaymentBehavior::ErrorIfIncomplete,
        };
        let subscription = CreateSubscription::new()
            .customer(new.customer)
            .items(vec![CreateSubscriptionItems {
                price: Some(new.price.to_owned()),
                ..CreateSubscriptionItems::new()
            }])
            .default_payment_method(new.payment_method)
            .off_session(true)
            .payment_behavior(behavior)
            .metadata(new.metadata.clone())
            // Its payment method's type comes back with it: no call to read it.
            .expand(vec!["default_payment_method".to_owned()])
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed_write("subscriptions.create", e))?;
        Ok(subscribed(&subscription))
    }
}

/// A SetupIntent the partner's app confirms with Stripe's SDK (docs/partners.md#before-the-request-stripesubauthorization).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupIntent {
    pub id: String,
    pub client_secret: String,
}

impl Gateway {
    /// Creates the customer of (`partnerCode`, `email`) with no payment method yet: the
    /// authorization's SetupIntent attaches one later. Same metadata and key as
    /// [`Gateway::create_customer`], so whichever comes first makes the one customer.
    pub async fn create_bare_customer(
        &self,
        partner_code: &str,
        email: &str,
        key: &str,
    ) -> Result<String, StripeFailure> {
        self.take_budget("customers.create").await?;
        let metadata = HashMap::from([("partnerCode".to_owned(), partner_code.to_owned())]);
        let customer = CreateCustomer::new()
            .email(email)
            .metadata(metadata)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed("customers.create", e, true))?;
        Ok(customer.id.to_string())
    }

    /// A SetupIntent for off-session charges on `customer`, with the payId and partner in its
    /// metadata. Under a fixed key, a repeat gets Stripe's stored answer: the same SetupIntent.
    pub async fn create_setup_intent(
        &self,
        customer: &str,
        metadata: HashMap<String, String>,
        key: &str,
    ) -> Result<SetupIntent, StripeFailure> {
        self.take_budget("setup_intents.create").await?;
        let intent = CreateSetupIntent::new()
            .customer(customer)
            .usage(CreateSetupIntentUsage::OffSession)
            .metadata(metadata)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed("setup_intents.create", e, true))?;
        let client_secret = intent.client_secret.clone().ok_or_else(|| {
            StripeFailure::Unknown("the SetupIntent came without a client_secret".into())
        })?;
        Ok(SetupIntent {
            id: intent.id.to_string(),
            client_secret,
        })
    }
}

/// A subscription's renewal state, as a cancel leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub id: String,
    pub status: String,
    pub cancel_at_period_end: bool,
    /// The start of the paid period (unix seconds, Stripe's clock), from its first item: a
    /// time Stripe had reached before any change the state shows.
    pub current_period_start: Option<i64>,
    /// The end of the paid period (unix seconds), from its first item.
    pub current_period_end: Option<i64>,
    pub canceled_at: Option<i64>,
    /// Why it was canceled (`cancellation_requested`, `payment_failed`, …).
    pub cancellation_reason: Option<String>,
}

impl Gateway {
    /// No more renewals: the paid period runs out, then Stripe cancels the subscription.
    pub async fn cancel_at_period_end(
        &self,
        subscription: &str,
        key: &str,
    ) -> Result<SubscriptionState, StripeFailure> {
        self.take_budget("subscriptions.update").await?;
        let updated = UpdateSubscription::new(subscription)
            .cancel_at_period_end(true)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed("subscriptions.update", e, true))?;
        Ok(state_of(&updated))
    }

    /// Cancels the subscription now.
    pub async fn cancel_now(
        &self,
        subscription: &str,
        key: &str,
    ) -> Result<SubscriptionState, StripeFailure> {
        self.take_budget("subscriptions.cancel").await?;
        let canceled = CancelSubscription::new(subscription)
            .customize()
            .request_strategy(idempotent(key)?)
            .send(&self.client)
            .await
            .map_err(|e| failed("subscriptions.cancel", e, true))?;
        Ok(state_of(&canceled))
    }

    /// A subscription's metadata (`payId`, `partnerCode`), for an event that does not carry it.
    pub async fn subscription_metadata(
        &self,
        subscription: &str,
    ) -> Result<HashMap<String, String>, StripeFailure> {
        self.take_budget("subscriptions.retrieve").await?;
        let found = RetrieveSubscription::new(subscription)
            .send(&self.client)
            .await
            .map_err(|e| failed("subscriptions.retrieve", e, false))?;
        Ok(found.metadata)
    }

    /// The subscription that carries this partner's payId in its metadata, found without any
    /// local record: Stripe is the system of record, and this is how what Redis lost is
    /// rebuilt. Search is eventually consistent (a subscription made in the last minute may not
    /// show yet), so a caller reads "not found" as "not yet known", never as "never made".
    pub async fn search_subscription(
        &self,
        partner_code: &str,
        pay_id: &str,
    ) -> Result<Option<FoundSubscription>, StripeFailure> {
        // Both values are validated ids ([A-Za-z0-9_-]): nothing to escape in the quotes.
        let query =
            format!("metadata['payId']:'{pay_id}' AND metadata['partnerCode']:'{partner_code}'");
        self.take_budget("subscriptions.search").await?;
        let page = SearchSubscription::new(query)
            .limit(10)
            .expand(vec!["data.default_payment_method".to_owned()])
            .send(&self.client)
            .await
            .map_err(|e| failed("subscriptions.search", e, false))?;
        // The oldest, should there ever be two: it is the one the creation's result named.
        let found = page
            .data
            .iter()
            .filter(|sub| {
                sub.metadata.get("payId").is_some_and(|p| p == pay_id)
                    && sub
                        .metadata
                        .get("partnerCode")
                        .is_some_and(|p| p == partner_code)
            })
            .min_by_key(|sub| sub.created);
        Ok(found.map(|sub| FoundSubscription {
            customer: match &sub.customer {
                Expandable::Id(id) => id.to_string(),
                Expandable::Object(customer) => customer.id.to_string(),
            },
            created: sub.created,
            subscribed: subscribed(sub),
            state: state_of(sub),
        }))
    }

    /// The subscription as it stands.
    pub async fn subscription_state(
        &self,
        subscription: &str,
    ) -> Result<SubscriptionState, StripeFailure> {
        self.take_budget("subscriptions.retrieve").await?;
        let found = RetrieveSubscription::new(subscription)
            .send(&self.client)
            .await
            .map_err(|e| failed("subscriptions.retrieve", e, false))?;
        Ok(state_of(&found))
    }
}

/// A subscription found by its payId's metadata, with what rebuilding its records needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSubscription {
    pub customer: String,
    /// When Stripe made it (unix seconds).
    pub created: i64,
    pub subscribed: Subscribed,
    pub state: SubscriptionState,
}

/// Why a payment failed, as Stripe puts it on the PaymentIntent (`last_payment_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentError {
    /// Stripe's `code` (`card_declined`, `expired_card`, …).
    pub code: Option<String>,
    /// The issuer's reason (`insufficient_funds`, `generic_decline`, …), for card declines.
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

impl From<&stripe_shared::ApiErrors> for PaymentError {
    fn from(error: &stripe_shared::ApiErrors) -> Self {
        PaymentError {
            code: error.code.as_ref().map(|c| c.as_str().to_owned()),
            decline_code: error.decline_code.clone(),
            message: error.message.clone(),
        }
    }
}

impl Gateway {
    /// The error of an invoice's failed payment: one call, listing the invoice's payments with
    /// their PaymentIntents expanded (`GET /v1/invoice_payments?invoice=…`; since API version
    /// basil the invoice has no `payment_intent` of its own). `payment_intent`, when the event
    /// named one (the older invoice shape), picks that payment. `None`: no payment carries an
    /// error.
    pub async fn invoice_payment_error(
        &self,
        invoice: &str,
        payment_intent: Option<&str>,
    ) -> Result<Option<PaymentError>, StripeFailure> {
        self.take_budget("invoice_payments.list").await?;
        let payments = ListInvoicePayment::new()
            .invoice(invoice)
            .expand(vec!["data.payment.payment_intent".to_owned()])
            .send(&self.client)
            .await
            .map_err(|e| failed("invoice_payments.list", e, false))?;
        Ok(match charged_intent(&payments.data, payment_intent) {
            Some(Expandable::Object(intent)) => {
                intent.last_payment_error.as_deref().map(PaymentError::from)
            }
            _ => None,
        })
    }
}

/// The PaymentIntent of an invoice's payments that was charged: the one named, else the
/// default payment's (the one Stripe's automatic collection and its retries charge), else
/// the first listed (newest first).
pub fn charged_intent<'a>(
    payments: &'a [stripe_shared::InvoicePayment],
    named: Option<&str>,
) -> Option<&'a Expandable<stripe_shared::PaymentIntent>> {
    let intents = || {
        payments
            .iter()
            .filter_map(|p| p.payment.payment_intent.as_ref().map(|i| (p, i)))
    };
    intents()
        .find(|(_, intent)| named.is_some_and(|named| intent.id().as_str() == named))
        .or_else(|| intents().find(|(payment, _)| payment.is_default))
        .or_else(|| intents().next())
        .map(|(_, intent)| intent)
}

fn state_of(subscription: &stripe_billing::Subscription) -> SubscriptionState {
    SubscriptionState {
        id: subscription.id.to_string(),
        status: subscription.status.to_string(),
        cancel_at_period_end: subscription.cancel_at_period_end,
        current_period_start: subscription
            .items
            .data
            .first()
            .map(|item| item.current_period_start),
        current_period_end: subscription
            .items
            .data
            .first()
            .map(|item| item.current_period_end),
        canceled_at: subscription.canceled_at,
        cancellation_reason: subscription
            .cancellation_details
            .as_ref()
            .and_then(|details| details.reason.as_ref())
            .map(|reason| reason.to_string()),
    }
}

fn subscribed(subscription: &stripe_billing::Subscription) -> Subscribed {
    let product_id = subscription
        .items
        .data
        .first()
        .map(|item| match &item.price.product {
            Expandable::Id(id) => id.to_string(),
            Expandable::Object(product) => product.id.to_string(),
        })
        .unwrap_or_default();
    let pay_method = match &subscription.default_payment_method {
        Some(Expandable::Object(method)) => method.type_.to_string(),
        _ => String::new(),
    };
    Subscribed {
        id: subscription.id.to_string(),
        status: subscription.status.to_string(),
        product_id,
        pay_method,
    }
}

/// Counts a failed call and classifies it.
fn failed(operation: &'static str, error: CallError, write: bool) -> StripeFailure {
    let kind = match &error.error {
        stripe::StripeError::Stripe(_, status) => status.to_string(),
        stripe::StripeError::Timeout => "timeout".into(),
        stripe::StripeError::ClientError(_) => "network".into(),
        stripe::StripeError::JSONDeserialize(_) => "unreadable".into(),
        stripe::StripeError::ConfigError(_) => "config".into(),
    };
    metrics::counter!(ERRORS_TOTAL, "operation" => operation, "error" => kind).increment(1);
    StripeFailure::classify(error.error, error.should_retry, write)
}

/// [`failed`] for a write, keeping whether Stripe replayed the answer from the key's record.
fn failed_write(operation: &'static str, error: CallError) -> WriteFailure {
    let replayed = error.replayed;
    WriteFailure {
        failure: failed(operation, error, true),
        replayed,
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, StripeFailure> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| StripeFailure::Transient(format!("idempotency key `{key}`: {e:?}")))
}
