//! The Stripe events the intake took, by event id, so a second delivery makes no second job.
//!
//! A delivery claims its event id with a lease (`pending:<token>`, expiring by itself) before it
//! publishes, and marks it `taken` only once RabbitMQ confirmed the message. So a delivery whose
//! publish failed leaves nothing behind that would refuse Stripe's retry, and two deliveries of
//! one event at the same moment make one message: the second waits for the first.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};

const TAKEN: &str = "taken";

/// Claims an event id. KEYS: the event's key. ARGV: token, lease (ms).
/// Returns `claimed`, `taken` or `pending`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'claimed'
end
if redis.call('GET', KEYS[1]) == 'taken' then
  return 'taken'
end
return 'pending'
"#,
    )
});

/// Drops a claim if this token still holds it: the event is known not to be on the broker.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == 'pending:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Where an event id stands after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClaim {
    /// This delivery holds the event and must publish it.
    Claimed,
    /// The event is on the broker already: a repeat delivery.
    Taken,
    /// Another delivery of this event is being published right now.
    Pending,
}

impl Store {
    pub async fn claim_stripe_event(
        &self,
        event_id: &str,
        token: &str,
        lease: Duration,
    ) -> Result<EventClaim, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.stripe_event(event_id);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        let outcome: String = with_timeout(async {
            CLAIM
                .key(key)
                .arg(token)
                .arg(lease_ms)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        match outcome.as_str() {
            "claimed" => Ok(EventClaim::Claimed),
            "taken" => Ok(EventClaim::Taken),
            "pending" => Ok(EventClaim::Pending),
            other => Err(StoreError::Corrupt(format!(
                "event claim outcome `{other}`"
            ))),
        }
    }

    /// Records that the event is on the broker, for as long as a payId's record lives: Stripe
    /// retries a delivery for up to three days, and `reconcile` may look further back.
    pub async fn mark_stripe_event_taken(&self, event_id: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.stripe_event(event_id);
        let ttl = self.record_ttl.as_secs().max(1);
        with_timeout(async {
            redis::cmd("SET")
                .arg(key)
                .arg(TAKEN)
                .arg("EX")
                .arg(ttl)
                .query_async::<()>(&mut connection)
                .await
        })
        .await
    }

    pub async fn release_stripe_event(
        &self,
        event_id: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.stripe_event(event_id);
        let _: i64 = with_timeout(async {
            RELEASE
                .key(key)
                .arg(token)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok(())
    }

    /// Whether an event is on the broker already (for `reconcile`: feed only what is missing).
    pub async fn stripe_event_taken(&self, event_id: &str) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.stripe_event(event_id);
        let value: Option<String> = with_timeout(async {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(value.as_deref() == Some(TAKEN))
    }
}
