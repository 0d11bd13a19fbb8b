//! The worker's lock on a payId: `SET NX PX` with a token, extended while the job runs,
//! released by compare-and-delete so a worker never frees a lock another one took over.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::FinalResult;
use crate::domain::request::PayId;

/// A job's start in one round trip: its result if one is stored, else the payId's lock.
/// KEYS: result, lock. ARGV: token, TTL (ms). Returns {'settled', result} | {'locked'} | {'busy'}.
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local result = redis.call('GET', KEYS[1])
if result then
  return {'settled', result}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'locked'}
end
return {'busy'}
"#,
    )
});

/// How a job may start.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStart {
    /// A worker finished this payId already: here is its result.
    Settled(Box<FinalResult>),
    /// This worker holds the payId's lock now.
    Locked,
    /// Another worker holds it.
    Busy,
}

static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

impl Store {
    /// The settled result of a payId, or its lock for `ttl`, in one round trip: checking the
    /// result under the same atomic step as the lock means no worker can finish the job between
    /// the check and the lock.
    pub async fn begin_job(
        &self,
        pay_id: &PayId,
        token: &str,
        ttl: Duration,
    ) -> Result<JobStart, StoreError> {
        let mut connection = self.connection().await?;
        let result_key = self.keys.result(pay_id);
        let lock_key = self.keys.lock(pay_id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let answer: Vec<String> = with_timeout(async {
            BEGIN
                .key(result_key)
                .key(lock_key)
                .arg(token)
                .arg(ttl_ms)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        match answer.first().map(String::as_str) {
            Some("settled") => {
                let json = answer.get(1).map(String::as_str).unwrap_or_default();
                let result = serde_json::from_str(json)
                    .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
                Ok(JobStart::Settled(Box::new(result)))
            }
            Some("locked") => Ok(JobStart::Locked),
            Some("busy") => Ok(JobStart::Busy),
            other => Err(StoreError::Corrupt(format!("job start `{other:?}`"))),
        }
    }

    /// Extends a lock this token still holds; false when it was lost.
    pub async fn extend_lock(
        &self,
        pay_id: &PayId,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.lock(pay_id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let extended: i64 = with_timeout(async {
            EXTEND
                .key(key)
                .arg(token)
                .arg(ttl_ms)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok(extended == 1)
    }

    pub async fn unlock(&self, pay_id: &PayId, token: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.lock(pay_id);
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
}
