//! The record of a payId's authorization (docs/partners.md#before-the-request-stripesubauthorization): the SetupIntent it was answered, so a
//! repeat gets the same one and the worker of the creation that follows knows the customer.

use super::{Store, StoreError, with_timeout};
use crate::domain::authorization::Authorization;
use crate::domain::request::PayKey;

impl Store {
    /// The authorization of this partner's payId, if one was answered.
    pub async fn authorization(
        &self,
        pay_key: &PayKey,
    ) -> Result<Option<Authorization>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.authorization(pay_key);
        let stored: Option<String> = with_timeout(async {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        stored
            .map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Keeps `authorization` unless one is kept already (as long as a payId's record), and
    /// returns the one that stands: of two requests racing, the first to store wins.
    pub async fn keep_authorization(
        &self,
        pay_key: &PayKey,
        authorization: &Authorization,
    ) -> Result<Authorization, StoreError> {
        let json =
            serde_json::to_string(authorization).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut connection = self.connection().await?;
        let key = self.keys.authorization(pay_key);
        let ttl = self.record_ttl.as_secs().max(1);
        let stored: Option<String> = with_timeout(async {
            redis::cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(ttl)
                .query_async(&mut connection)
                .await
        })
        .await?;
        match stored {
            None => Ok(authorization.clone()),
            Some(earlier) => {
                serde_json::from_str(&earlier).map_err(|e| StoreError::Corrupt(e.to_string()))
            }
        }
    }
}
