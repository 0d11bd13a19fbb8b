//! The intake's record of the cancels asked for a payId (`/cancelAutoRenewalRecord`), one per
//! `when`, so a repeat of a cancel answers like the first and makes no second job.
//!
//! Like the intake's record of a payId (`intake_record`), a cancel is `pending` from its claim
//! until RabbitMQ confirms the cancel job, then `enqueued`; a claim whose holder died is taken
//! over once its lease is over.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::cancel::CancelWhen;
use crate::domain::request::PayKey;

/// Claims the cancel of one `when`. KEYS: the payId's cancel hash. ARGV: when, token, now (ms),
/// lease (ms), TTL (s), requested_at. Returns `claimed`, `enqueued` or `pending`.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local state = ARGV[1] .. ':state'
local claim = ARGV[1] .. ':claim'
local claimed_at = ARGV[1] .. ':claimed_at'
local rec = redis.call('HMGET', KEYS[1], state, claimed_at)
if not rec[1] then
  redis.call('HSET', KEYS[1], state, 'pending', claim, ARGV[2], claimed_at, ARGV[3],
             ARGV[1] .. ':requested_at', ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 'claimed'
end
if rec[1] == 'enqueued' then
  return 'enqueued'
end
if tonumber(ARGV[3]) - tonumber(rec[2]) > tonumber(ARGV[4]) then
  -- The claim's holder died between Redis and the broker: take its claim over.
  redis.call('HSET', KEYS[1], claim, ARGV[2], claimed_at, ARGV[3])
  return 'claimed'
end
return 'pending'
"#,
    )
});

/// Forgets a pending cancel if this token still holds its claim: its job is known not to be on
/// the broker.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rec = redis.call('HMGET', KEYS[1], ARGV[1] .. ':state', ARGV[1] .. ':claim')
if rec[1] == 'pending' and rec[2] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1] .. ':state', ARGV[1] .. ':claim',
                    ARGV[1] .. ':claimed_at', ARGV[1] .. ':requested_at')
end
return 0
"#,
    )
});

/// Where a cancel stands after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelClaim {
    /// This request holds the cancel and must publish its job.
    Claimed,
    /// The cancel's job is on the broker already.
    Enqueued,
    /// Another request for this cancel is being enqueued right now.
    Pending,
}

impl Store {
    pub async fn claim_cancel(
        &self,
        pay_key: &PayKey,
        when: CancelWhen,
        token: &str,
        now_ms: u64,
        lease: Duration,
        requested_at: &str,
    ) -> Result<CancelClaim, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.cancel(pay_key);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let ttl = self.record_ttl.as_secs().max(1);
        let outcome: String = with_timeout(async {
            CLAIM
                .key(key)
                .arg(when.as_str())
                .arg(token)
                .arg(now_ms)
                .arg(lease_ms)
                .arg(ttl)
                .arg(requested_at)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        match outcome.as_str() {
            "claimed" => Ok(CancelClaim::Claimed),
            "enqueued" => Ok(CancelClaim::Enqueued),
            "pending" => Ok(CancelClaim::Pending),
            other => Err(StoreError::Corrupt(format!(
                "cancel claim outcome `{other}`"
            ))),
        }
    }

    /// Whether the cancel of this `when` is on the broker (a repeat answers like the first).
    pub async fn cancel_enqueued(
        &self,
        pay_key: &PayKey,
        when: CancelWhen,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.cancel(pay_key);
        let state: Option<String> = with_timeout(async {
            redis::cmd("HGET")
                .arg(key)
                .arg(format!("{when}:state"))
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(state.as_deref() == Some("enqueued"))
    }

    /// Marks the cancel enqueued, whoever holds its claim now: its job is on the broker.
    pub async fn mark_cancel_enqueued(
        &self,
        pay_key: &PayKey,
        when: CancelWhen,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.cancel(pay_key);
        let ttl = self.record_ttl.as_secs().max(1);
        with_timeout(async {
            redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg(format!("{when}:state"))
                .arg("enqueued")
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore()
                .query_async::<()>(&mut connection)
                .await
        })
        .await
    }

    pub async fn release_cancel(
        &self,
        pay_key: &PayKey,
        when: CancelWhen,
        token: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.cancel(pay_key);
        let _: i64 = with_timeout(async {
            RELEASE
                .key(key)
                .arg(when.as_str())
                .arg(token)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok(())
    }
}
