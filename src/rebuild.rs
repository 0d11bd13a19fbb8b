//! Stripe is the system of record; Redis is a cache of it. When the store has nothing for a
//! payId that a call needs (a cancel, a query), the subscription that carries the payId and its
//! partner in its metadata is looked up at Stripe and its records are put back, rather than the
//! payId being taken for one that was never sent.

use crate::domain::clock::rfc3339;
use crate::domain::renewal::RenewalChange;
use crate::domain::{FinalResult, PayKey};
use crate::ports::{JobStore, StripeApi};
use crate::store::StoreError;
use crate::stripe::StripeFailure;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("Stripe could not be asked: {0}")]
    Stripe(#[from] StripeFailure),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The payId's result, rebuilt from its subscription at Stripe and, while the subscription lives,
/// stored; None when Stripe has no subscription for it (or, within a minute of its creation, does
/// not show it yet: search is eventually consistent). An ended subscription's records are not
/// put back: past the retention its payId is forgotten, as documented.
///
/// On the worker's ports, so the intake (with the gateway and Redis) and the worker (with
/// whatever adapters it runs on, the simulation's included) rebuild with the same code.
pub async fn from_stripe(
    stripe: &dyn StripeApi,
    store: &dyn JobStore,
    pay_key: &PayKey,
) -> Result<Option<FinalResult>, RebuildError> {
    let Some(found) = stripe
        .search_subscription(pay_key.partner().as_str(), pay_key.pay_id().as_str())
        .await?
    else {
        return Ok(None);
    };
    let created = rfc3339(found.created);
    let result = FinalResult {
        status: found.state.status.clone(),
        customer_id: found.customer.clone(),
        sub_id: found.subscribed.id.clone(),
        product_id: found.subscribed.product_id.clone(),
        pay_method: found.subscribed.pay_method.clone(),
        error: None,
        attempts: 1,
        accepted_at: created.clone(),
        completed_at: created,
    };
    let state = RenewalChange::Subscription {
        sub_id: found.state.id.clone(),
        status: found.state.status.clone(),
        current_period_end: found.state.current_period_end,
        cancel_at_period_end: found.state.cancel_at_period_end,
        canceled_at: found.state.canceled_at,
    };
    if !result.subscription_lives() {
        return Ok(Some(result));
    }
    // As old as the subscription itself: any event about it is newer and wins.
    let version = u64::try_from(found.created).unwrap_or(0) << 16;
    tracing::info!(%pay_key, sub_id = %result.sub_id, "records rebuilt from Stripe");
    Ok(Some(store.restore(pay_key, &result, state, version).await?))
}
