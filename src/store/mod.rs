//! Redis: the intake's record of every payId (idempotency), its authorization (`/stripeSubAuthorization`), final results, the workers' payId
//! locks, the shared rate budgets (Stripe's, and each partner's intake rate), the Stripe events
//! and cancels taken, and each auto-renewal's state, on one Redis or a Redis Cluster. Knows the domain, never HTTP or Stripe.
//!
//! Every key of one payId carries it as a hash tag (`autorenew:intake:{P123}`), so the scripts,
//! which touch several keys of one payId, also run unchanged on Redis Cluster.

mod authorization;
mod budget;
mod connection;
mod intake_record;
mod job;
mod keys;
mod migrate;
mod push;
mod rebuild;
mod renewal;

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::RedisSettings;
use crate::domain::FinalResult;
use crate::domain::request::PayKey;

pub use budget::{BudgetWaiter, Turn};
/// The job path's scripts as the production store sends them, with what it builds their
/// arguments and reads their replies with: the store twin (`worker::memory`) runs the same text.
#[cfg(feature = "testing")]
pub(crate) mod scripts {
    pub(crate) use super::budget::{TAKE_TURN_LUA, read_turn, take_turn_args};
    /// The intake's claim of a creation, for the partner's retry in the simulation.
    pub(crate) use super::intake_record::{CLAIM_LUA, MARK_ENQUEUED};
    pub(crate) use super::job::{
        BEGIN_LUA, EXTEND_LUA, FINISH_LUA, RECORD_CREATE_LUA, RELEASE_LUA, millis, parse_created,
        parse_result,
    };
    pub(crate) use super::renewal::{APPLY_LUA, apply_args, apply_keys};
}
pub use intake_record::{Claim, ClaimOutcome, IntakeRecord, RecordView};
pub use job::JobStart;
pub use keys::Keys;
pub use migrate::Migrated;
pub use push::{BreakerStep, NewNotification, PushCounts, PushState};

/// How long one Redis command may take before the caller gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1_000);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis is unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis holds a value this version cannot read: {0}")]
    Corrupt(String),
}

/// A handle on Redis, cheap to clone. Connects lazily and reconnects by itself.
#[derive(Clone)]
pub struct Store {
    redis: connection::Redis,
    keys: Keys,
    record_ttl: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

impl Store {
    /// A store for `settings`; nothing is sent until the first command, so start-up does not
    /// depend on Redis being up.
    pub fn new(settings: &RedisSettings) -> Result<Self, StoreError> {
        Ok(Store {
            redis: connection::Redis::open(settings.url.expose_secret(), COMMAND_TIMEOUT)?,
            keys: Keys::new(&settings.key_prefix),
            record_ttl: Duration::from_secs(settings.record_ttl_secs),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether Redis answers now. On a cluster, a keyed read of the shared Stripe budget (which
    /// every job needs) instead of a PING: the client sends PING to every master it knows, and
    /// a lost master stays in that list until a keyed command makes it read the slots again, so
    /// a paused worker that only pinged never saw the cluster fail over.
    pub async fn ping(&self) -> bool {
        let Ok(mut connection) = self.connection().await else {
            return false;
        };
        let probe = if connection.is_cluster() {
            redis::cmd("EXISTS").arg(self.keys.stripe_budget()).clone()
        } else {
            redis::cmd("PING")
        };
        let ping =
            with_timeout(async move { probe.query_async::<redis::Value>(&mut connection).await });
        let answered = ping.await.is_ok();
        if !answered {
            // Paused consumers ping until Redis answers: on a cluster, each failure starts the
            // next try on a fresh connection with the slots read again.
            self.redis.renew().await;
        }
        answered
    }

    /// The final result of a payId, if a worker has stored one.
    pub async fn result(&self, pay_key: &PayKey) -> Result<Option<FinalResult>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.result(pay_key);
        let raw: Option<String> = with_timeout(async move {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        raw.map(|json| {
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("result: {e}")))
        })
        .transpose()
    }

    pub(crate) async fn connection(&self) -> Result<connection::Handle, StoreError> {
        self.redis.handle(COMMAND_TIMEOUT).await
    }
}

/// Runs a Redis future with the command timeout, so a Redis that accepts connections but does
/// not answer cannot hold a request.
async fn with_timeout<T>(
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(COMMAND_TIMEOUT)),
    }
}
