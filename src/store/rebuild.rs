//! Putting back what Redis lost, from Stripe: Redis is a cache of Stripe and a coordinator, and a
//! payId whose records are gone (a failover to a replica that had not seen them, a flush, an
//! operator's mistake) is rebuilt from the subscription that carries it in its metadata.
//!
//! A rebuilt result is written only where none is (a worker's own result always wins), and the
//! subscription's state goes through the same versioned write as a Stripe event, so a rebuild
//! never takes anything back.

use super::{Store, StoreError, with_timeout};
use crate::domain::renewal::{RenewalChange, RenewalUpdate};
use crate::domain::{FinalResult, PayKey};

impl Store {
    /// Stores `result` for a payId that has none, and the subscription's `state` as of
    /// `version` (a Stripe object's `created << 16`: older than any event about it). Returns the
    /// result that stands: an earlier one, if a worker stored it meanwhile.
    pub async fn restore(
        &self,
        pay_key: &PayKey,
        result: &FinalResult,
        state: RenewalChange,
        version: u64,
    ) -> Result<FinalResult, StoreError> {
        let json = serde_json::to_string(result)
            .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
        let key = self.keys.result(pay_key);
        let mut connection = self.connection().await?;
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(&json).arg("NX");
        if !result.subscription_lives() {
            set.arg("EX").arg(self.record_ttl.as_secs().max(1));
        }
        let _: Option<String> =
            with_timeout(async { set.query_async(&mut connection).await }).await?;
        let update = RenewalUpdate {
            partner_code: pay_key.partner().clone(),
            version,
            change: state,
        };
        self.apply_renewal(pay_key, &update).await?;
        Ok(self
            .result(pay_key)
            .await?
            .unwrap_or_else(|| result.clone()))
    }
}
