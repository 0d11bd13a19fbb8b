//! `POST /stripeSubAuthorization` (docs/partners.md#before-the-request-stripesubauthorization): the one route the intake answers from Stripe
//! itself. It finds or creates the customer of (`partnerCode`, `email`) as a job does, creates a
//! SetupIntent for off-session charges, and answers its client secret, so the partner's app can
//! collect a card with Stripe's SDK and send the `pm_id` it gets to `/stripeSubDirectly`.
//!
//! The calls go through the worker's gateway ([`crate::stripe`]), with its error classification
//! and within the shared Stripe budget, under fixed idempotency keys. Everything is bounded by
//! `intake.max_wait_secs`: a slow or absent Stripe answers `503 STRIPE_UNAVAILABLE`, never a
//! held connection; the other routes and `/readyz` do not depend on Stripe.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::error::{IntakeError, Refusal};
use super::response::ApiResponse;
use super::signed::SignedRequest;
use super::state::AppState;
use crate::budget::SharedBudget;
use crate::config::Settings;
use crate::domain::authorization::{
    Authorization, AuthorizationRequest, customer_key, setup_intent_key,
};
use crate::store::Store;
use crate::stripe::{ClientOptions, Gateway, StripeFailure, on_behalf_of};

/// Quick retries of one call that failed for now (a 429, a lock, a dropped connection): a
/// partner's app is waiting, so a Stripe that stays away is answered 503 at once rather
/// than waited for.
const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];

/// Stripe as the intake sees it: absent until configured (`autorenew run` configures it once
/// its simulator listens).
#[derive(Debug, Default)]
pub struct Authorizer {
    stripe: OnceLock<Connected>,
}

#[derive(Debug)]
struct Connected {
    gateway: Gateway,
    publishable_key: String,
}

impl Authorizer {
    /// Connects to the Stripe of `settings` (a no-op without a secret key, or when connected
    /// already), behind the budget all workers share.
    pub fn connect(&self, all: &Settings, store: &Store) -> anyhow::Result<()> {
        let settings = &all.stripe;
        if secrecy::ExposeSecret::expose_secret(&settings.secret_key).is_empty() {
            return Ok(());
        }
        // The intake's calls are never cut short by a drain: its own deadline bounds them.
        let budget = Arc::new(SharedBudget::new(
            all,
            store.clone(),
            tokio_util::sync::CancellationToken::new(),
        ));
        let options = ClientOptions {
            secret_key: &settings.secret_key,
            api_base: &settings.api_base,
            timeout: Duration::from_millis(settings.request_timeout_ms),
            http2_prior_knowledge: settings.http2_prior_knowledge,
        };
        let gateway = Gateway::new(&options, budget).map_err(|e| anyhow::anyhow!("{e}"))?;
        if settings.publishable_key.is_empty() {
            tracing::warn!(
                "stripe.publishable_key is empty: /stripeSubAuthorization answers without one, \
                 and the partner's app cannot confirm its SetupIntent"
            );
        }
        let _ = self.stripe.set(Connected {
            gateway,
            publishable_key: settings.publishable_key.clone(),
        });
        Ok(())
    }
}

impl Authorizer {
    /// The gateway, once connected: also how the intake rebuilds from Stripe what Redis lost.
    pub fn gateway(&self) -> Option<&Gateway> {
        self.stripe.get().map(|connected| &connected.gateway)
    }
}

/// The answer: the flat fields every answer has, and what Stripe's SDK needs to confirm the SetupIntent.
#[derive(Debug, Serialize)]
pub struct AuthorizationResponse {
    #[serde(flatten)]
    pub base: ApiResponse,
    pub client_secret: String,
    pub setup_intent_id: String,
    pub publishable_key: String,
}

pub async fn stripe_sub_authorization(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<AuthorizationRequest>,
) -> Result<Json<AuthorizationResponse>, Refusal> {
    let refuse = Refusal::about(body.pay_id.to_string());
    let Some(stripe) = state.authorizer.stripe.get() else {
        return Err(refuse(IntakeError::StripeUnavailable(
            "no Stripe key is configured".into(),
        )));
    };
    let authorization = authorize(&state, stripe, &body).await.map_err(refuse)?;
    let mut base = ApiResponse::for_job(body.pay_id.as_str(), None);
    base.message = "authorization created".into();
    base.status = String::new();
    base.customer_id = authorization.customer_id;
    Ok(Json(AuthorizationResponse {
        base,
        client_secret: authorization.client_secret,
        setup_intent_id: authorization.setup_intent_id,
        publishable_key: stripe.publishable_key.clone(),
    }))
}

/// The payId's authorization: the one kept (a repeat), or a new one. Another email than the
/// kept one's is a conflict.
async fn authorize(
    state: &AppState,
    stripe: &Connected,
    request: &AuthorizationRequest,
) -> Result<Authorization, IntakeError> {
    let store = &state.store;
    let kept = match store.authorization(&request.pay_key()).await? {
        Some(kept) => kept,
        None => {
            let wait = state.limits.max_wait;
            // Its calls share Stripe's rate as the partner's jobs do.
            let calls = make(store, &stripe.gateway, request);
            let partner = Some(request.partner_code.as_str());
            let made = tokio::time::timeout(wait, on_behalf_of(partner, calls))
                .await
                .map_err(|_| {
                    IntakeError::StripeUnavailable(format!(
                        "Stripe did not answer within {} s",
                        wait.as_secs()
                    ))
                })??;
            // Of two requests racing, the first stored stands; the other's SetupIntent is the
            // same one (the same key), unless it came with another email.
            store.keep_authorization(&request.pay_key(), &made).await?
        }
    };
    if kept.email == request.email.as_str() {
        Ok(kept)
    } else {
        Err(IntakeError::PayIdConflict)
    }
}

/// The Stripe calls: the customer (from the cache the workers keep, else found by email, else
/// created), then the SetupIntent. At most three calls; one when the customer is known.
async fn make(
    store: &Store,
    gateway: &Gateway,
    request: &AuthorizationRequest,
) -> Result<Authorization, IntakeError> {
    let partner = request.partner_code.as_str();
    let email = request.email.as_str();
    let customer = match store.customer_of(partner, email).await? {
        Some(known) => known,
        None => {
            let find = || gateway.find_customer(partner, email);
            let customer = match retried(find).await.map_err(refused)? {
                Some(found) => found,
                None => {
                    // The worker's key: one person, one customer, whoever makes it first.
                    let key = customer_key(partner, email, "g0");
                    match retried(|| gateway.create_bare_customer(partner, email, &key)).await {
                        Ok(made) => made,
                        // Made under this key by a job (with a payment method), or lost on
                        // the way back: the list by email settles it.
                        Err(StripeFailure::Unknown(reason)) => retried(find)
                            .await
                            .map_err(refused)?
                            .ok_or(IntakeError::StripeUnavailable(reason))?,
                        Err(other) => return Err(refused(other)),
                    }
                }
            };
            if let Err(error) = store.remember_customer(partner, email, &customer).await {
                tracing::warn!(%error, "customer not remembered");
            }
            customer
        }
    };
    let metadata = HashMap::from([
        ("payId".to_owned(), request.pay_id.to_string()),
        ("partnerCode".to_owned(), partner.to_owned()),
    ]);
    let key = setup_intent_key(partner, &request.pay_id);
    let intent = retried(|| gateway.create_setup_intent(&customer, metadata.clone(), &key))
        .await
        .map_err(refused)?;
    Ok(Authorization {
        email: email.to_owned(),
        customer_id: customer,
        setup_intent_id: intent.id,
        client_secret: intent.client_secret,
    })
}

/// One call, with a couple of quick retries while its failure may pass. A write whose outcome
/// is unknown is resent too: under its fixed key, Stripe answers what it stored.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, StripeFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StripeFailure>>,
{
    let mut delays = RETRY_DELAYS.iter();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(failure @ (StripeFailure::Transient(_) | StripeFailure::Unknown(_))) => {
                match delays.next() {
                    Some(delay) => tokio::time::sleep(*delay).await,
                    None => return Err(failure),
                }
            }
            Err(other) => return Err(other),
        }
    }
}

/// What a Stripe failure that outlived the retries answers.
fn refused(failure: StripeFailure) -> IntakeError {
    match failure {
        StripeFailure::Permanent(detail) => IntakeError::StripeRejected(detail.message),
        StripeFailure::Transient(reason)
        | StripeFailure::Unknown(reason)
        | StripeFailure::BudgetUnavailable(reason) => IntakeError::StripeUnavailable(reason),
    }
}
