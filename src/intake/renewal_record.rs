//! What the intake knows of one of a partner's auto-renewals: the creation's result and the
//! state the webhooks keep, for `/queryAutoRenewalRecord` and `/cancelAutoRenewalRecord`.

use serde::Serialize;

use super::error::IntakeError;
use super::response::ApiResponse;
use super::state::AppState;
use crate::domain::FinalResult;
use crate::domain::clock::rfc3339;
use crate::domain::renewal::STATUS_CANCELED;
use crate::domain::renewal::{RenewalError, RenewalState};
use crate::domain::request::{PayId, PayKey};
use crate::rebuild::{self, RebuildError};
use crate::stripe::StripeFailure;

/// One payId of this partner, as the store has it.
#[derive(Debug, Clone)]
pub struct RenewalRecord {
    pub pay_id: PayId,
    /// The creation's final result; None while it is processing.
    pub result: Option<FinalResult>,
    /// The state the webhooks keep; None before the first event about it.
    pub renewal: Option<RenewalState>,
}

impl RenewalRecord {
    /// The payId's record in its partner's namespace: another partner's payId of the same name
    /// is another key, so it is answered as unknown and no partner learns what another sent.
    pub async fn find(state: &AppState, pay_key: &PayKey) -> Result<Self, IntakeError> {
        let mut record = state.store.record(pay_key).await?;
        let mut renewal = state.store.renewal(pay_key).await?;
        if record.is_none() && renewal.is_none() {
            if !rebuilt_from_stripe(state, pay_key).await? {
                return Err(IntakeError::PayIdUnknown);
            }
            record = state.store.record(pay_key).await?;
            renewal = state.store.renewal(pay_key).await?;
        }
        Ok(RenewalRecord {
            pay_id: pay_key.pay_id().clone(),
            result: record.and_then(|record| record.result),
            renewal,
        })
    }
}

/// Whether Stripe has a live subscription for a payId the store has nothing of, now put back
/// (Redis is a cache of Stripe: a payId is never taken for one never sent while Stripe says
/// otherwise). Bounded by `intake.max_wait_secs`; a Stripe that cannot answer is a 503, not a
/// 404. Without Stripe configured (an intake alone), nothing to ask.
async fn rebuilt_from_stripe(state: &AppState, pay_key: &PayKey) -> Result<bool, IntakeError> {
    let Some(gateway) = state.authorizer.gateway() else {
        return Ok(false);
    };
    let asked = tokio::time::timeout(
        state.limits.max_wait,
        rebuild::from_stripe(gateway, &state.store, pay_key),
    )
    .await;
    match asked {
        Ok(Ok(found)) => Ok(found.is_some_and(|result| result.subscription_lives())),
        Ok(Err(RebuildError::Store(error))) => Err(error.into()),
        // Stripe refuses the search itself (not offered to this account, say): it cannot tell,
        // and will not; the store's answer stands.
        Ok(Err(RebuildError::Stripe(StripeFailure::Permanent(detail)))) => {
            tracing::warn!(%pay_key, error = %detail.message, "Stripe refused the search that rebuilds a payId");
            Ok(false)
        }
        Ok(Err(RebuildError::Stripe(failure))) => {
            Err(IntakeError::StripeUnavailable(failure.to_string()))
        }
        Err(_) => Err(IntakeError::StripeUnavailable(
            "Stripe did not answer within intake.max_wait_secs".into(),
        )),
    }
}

impl RenewalRecord {
    /// The creation failed: there is no subscription to cancel.
    pub fn creation_failed(&self) -> bool {
        self.result.as_ref().is_some_and(FinalResult::is_failed)
    }

    /// The subscription is over.
    pub fn canceled(&self) -> bool {
        let status = self
            .status_override()
            .or(self.result.as_ref().map(|result| result.status.as_str()));
        status == Some(STATUS_CANCELED)
    }

    /// The subscription's status as the webhooks last said it, if they did. Never over a failed
    /// creation: an answer `F` stays `F`.
    fn status_override(&self) -> Option<&str> {
        if self.creation_failed() {
            return None;
        }
        self.renewal
            .as_ref()
            .map(|renewal| renewal.status.as_str())
            .filter(|status| !status.is_empty())
    }

    /// The flat fields every answer has, with the payId's current status: the creation's result, with the
    /// status (and subscription id) the webhooks reported since.
    pub fn current(&self) -> ApiResponse {
        let mut answer = ApiResponse::for_job(self.pay_id.as_str(), self.result.as_ref());
        if let Some(status) = self.status_override() {
            answer.status = status.to_owned();
        }
        if let Some(renewal) = &self.renewal
            && answer.sub_id.is_empty()
        {
            answer.sub_id = renewal.sub_id.clone();
        }
        answer
    }
}

/// The answer of `/queryAutoRenewalRecord`: the flat fields every answer has and the auto-renewal's own. Every
/// field is always present (empty, `false`, `0` or `null` when not known yet).
#[derive(Debug, Clone, Serialize)]
pub struct RenewalResponse {
    #[serde(flatten)]
    pub base: ApiResponse,
    /// RFC 3339 UTC.
    pub current_period_end: String,
    pub cancel_at_period_end: bool,
    /// Paid renewals so far.
    pub renewals: u64,
    /// RFC 3339 UTC.
    pub last_renewal_at: String,
    pub last_invoice_id: String,
    pub last_error: Option<RenewalError>,
}

impl RenewalResponse {
    pub fn of(record: &RenewalRecord) -> Self {
        let base = record.current();
        let renewal = record.renewal.clone().unwrap_or_default();
        RenewalResponse {
            base,
            current_period_end: renewal.current_period_end.map(rfc3339).unwrap_or_default(),
            cancel_at_period_end: renewal.cancel_at_period_end,
            renewals: renewal.renewals,
            last_renewal_at: renewal.last_renewal_at.map(rfc3339).unwrap_or_default(),
            last_invoice_id: renewal.last_invoice_id,
            last_error: renewal.last_error,
        }
    }
}
