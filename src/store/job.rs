//! The worker's side of a payId: its lock (`SET NX PX` with a token, extended while the job
//! runs, released by compare-and-delete so a worker never frees a lock another one took over),
//! the write-ahead record of subscription creates, and the final result, stored once.
//!
//! Every script touches keys of one payId only (one hash tag), so it runs on Redis Cluster too.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::FinalResult;
use crate::domain::job::CreateSent;
use crate::domain::request::PayKey;

/// A job's start in one round trip: its result if one is stored, else the payId's lock and
/// what was sent for it. KEYS: result, lock, created. ARGV: token, TTL (ms).
/// Returns {'settled', result} | {'locked', created or ''} | {'busy'}.
pub(crate) const BEGIN_LUA: &str = r#"
local result = redis.call('GET', KEYS[1])
if result then
  return {'settled', result}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'locked', redis.call('GET', KEYS[3]) or ''}
end
return {'busy'}
"#;
static BEGIN: LazyLock<Script> = LazyLock::new(|| Script::new(BEGIN_LUA));

/// How a job may start.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStart {
    /// A worker finished this payId already: here is its result.
    Settled(Box<FinalResult>),
    /// This worker holds the payId's lock now; `created` is what was sent for it before.
    Locked { created: Option<CreateSent> },
    /// Another worker holds it.
    Busy,
}

pub(crate) const EXTEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(EXTEND_LUA));

pub(crate) const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Stores the result if none is, and releases the lock if the token holds it, atomically: no
/// other copy of the job can take the lock and find no result. A failure (ARGV[4] = '1') is
/// stored only while the token holds the lock: "no subscription was made" is true only under
/// the lock, since a copy holding it may be creating one.
///
/// A subscription that lives (ARGV[5] = '1') may charge for years: its result, intake record and
/// create record lose their expiry. Anything else keeps them for the retention (ARGV[2]) only.
/// KEYS: result, lock, intake record, create record.
/// ARGV: result JSON, retention (s), token, failed, lives. Returns the result stored (the
/// earlier one, if any), or '' when a failure was not stored because the lock was lost.
pub(crate) const FINISH_LUA: &str = r#"
local stored = redis.call('GET', KEYS[1])
local holds = redis.call('GET', KEYS[2]) == ARGV[3]
if not stored then
  if ARGV[4] == '1' and not holds then
    return ''
  end
  if ARGV[5] == '1' then
    redis.call('SET', KEYS[1], ARGV[1])
    redis.call('PERSIST', KEYS[3])
    redis.call('PERSIST', KEYS[4])
  else
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    redis.call('EXPIRE', KEYS[3], ARGV[2])
    redis.call('EXPIRE', KEYS[4], ARGV[2])
  end
  stored = ARGV[1]
end
if holds then
  redis.call('DEL', KEYS[2])
end
return stored
"#;
static FINISH: LazyLock<Script> = LazyLock::new(|| Script::new(FINISH_LUA));

/// Records a create about to be sent, only while `token` holds the lock: a job that lost its
/// lock must not create, since the copy holding it may have found no record and be ending the
/// job `failed`. KEYS: lock, created. ARGV: token, record JSON, TTL (s). Returns 1 if recorded.
pub(crate) const RECORD_CREATE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"#;
static RECORD_CREATE: LazyLock<Script> = LazyLock::new(|| Script::new(RECORD_CREATE_LUA));

impl Store {
    /// The settled result of a payId, or its lock for `ttl` with what was sent for it, in one
    /// round trip: checking the result under the same atomic step as the lock means no worker
    /// can finish the job between the check and the lock.
    pub async fn begin_job(
        &self,
        pay_key: &PayKey,
        token: &str,
        ttl: Duration,
    ) -> Result<JobStart, StoreError> {
        let mut connection = self.connection().await?;
        let answer: Vec<String> = with_timeout(async {
            BEGIN
                .key(self.keys.result(pay_key))
                .key(self.keys.lock(pay_key))
                .key(self.keys.created(pay_key))
                .arg(token)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        let second = answer.get(1).map(String::as_str).unwrap_or_default();
        match answer.first().map(String::as_str) {
            Some("settled") => Ok(JobStart::Settled(Box::new(parse_result(second)?))),
            Some("locked") => Ok(JobStart::Locked {
                created: parse_created(second)?,
            }),
            Some("busy") => Ok(JobStart::Busy),
            other => Err(StoreError::Corrupt(format!("job start `{other:?}`"))),
        }
    }

    /// Extends a lock this token still holds; false when it was lost.
    pub async fn extend_lock(
        &self,
        pay_key: &PayKey,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let extended: i64 = with_timeout(async {
            EXTEND
                .key(self.keys.lock(pay_key))
                .arg(token)
                .arg(millis(ttl))
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok(extended == 1)
    }

    pub async fn unlock(&self, pay_key: &PayKey, token: &str) -> Result<(), StoreError> {
        self.release_lock(self.keys.lock(pay_key), token).await
    }

    /// Records what is about to be sent for the payId's subscription create. It lives as long
    /// as the payId's record: a job replayed weeks later still knows to look up first.
    /// Only while `token` holds the lock: false when it was lost (nothing recorded).
    pub async fn record_create(
        &self,
        pay_key: &PayKey,
        token: &str,
        sent: &CreateSent,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(sent)
            .map_err(|e| StoreError::Corrupt(format!("create record: {e}")))?;
        let mut connection = self.connection().await?;
        let recorded: i64 = with_timeout(async {
            RECORD_CREATE
                .key(self.keys.lock(pay_key))
                .key(self.keys.created(pay_key))
                .arg(token)
                .arg(json)
                .arg(self.record_ttl.as_secs())
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok(recorded == 1)
    }

    /// What was sent for the payId's subscription create, if anything.
    pub async fn created(&self, pay_key: &PayKey) -> Result<Option<CreateSent>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.created(pay_key);
        let raw: Option<String> = with_timeout(async {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        parse_created(raw.as_deref().unwrap_or_default())
    }

    /// Stores a payId's final result once and releases the lock `token` holds, atomically. A
    /// result stored earlier wins and is returned, so racing copies agree on one ending. A
    /// failure is not stored once the lock is lost: None.
    pub async fn finish_job(
        &self,
        pay_key: &PayKey,
        token: &str,
        result: &FinalResult,
    ) -> Result<Option<FinalResult>, StoreError> {
        let json = serde_json::to_string(result)
            .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
        let mut connection = self.connection().await?;
        let stored: String = with_timeout(async {
            FINISH
                .key(self.keys.result(pay_key))
                .key(self.keys.lock(pay_key))
                .key(self.keys.intake(pay_key))
                .key(self.keys.created(pay_key))
                .arg(json)
                .arg(self.record_ttl.as_secs())
                .arg(token)
                .arg(if result.is_failed() { "1" } else { "0" })
                .arg(if result.subscription_lives() {
                    "1"
                } else {
                    "0"
                })
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        if stored.is_empty() {
            return Ok(None);
        }
        parse_result(&stored).map(Some)
    }
}

pub(crate) fn parse_result(json: &str) -> Result<FinalResult, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("result: {e}")))
}

pub(crate) fn parse_created(json: &str) -> Result<Option<CreateSent>, StoreError> {
    if json.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("create record: {e}")))
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Store {
    /// The Stripe customer of (`partner`, `email`), if remembered.
    pub async fn customer_of(
        &self,
        partner: &str,
        email: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.customer(partner, email);
        with_timeout(async {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await
    }

    /// Remembers the Stripe customer of (`partner`, `email`), as long as a payId's record.
    pub async fn remember_customer(
        &self,
        partner: &str,
        email: &str,
        customer: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.customer(partner, email);
        let ttl = self.record_ttl.as_secs();
        with_timeout(async {
            redis::cmd("SET")
                .arg(key)
                .arg(customer)
                .arg("EX")
                .arg(ttl)
                .query_async(&mut connection)
                .await
        })
        .await
    }

    /// Takes the short lock on creating one price; false when another worker holds it.
    pub async fn lock_price(
        &self,
        lookup_key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.try_lock(self.keys.price_lock(lookup_key), token, ttl)
            .await
    }

    pub async fn unlock_price(&self, lookup_key: &str, token: &str) -> Result<(), StoreError> {
        self.release_lock(self.keys.price_lock(lookup_key), token)
            .await
    }

    /// `SET NX PX` with a token: true when this token now holds the lock.
    async fn try_lock(&self, key: String, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let set: Option<String> = with_timeout(async {
            redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(set.is_some())
    }

    /// Deletes a lock if this token still holds it (never one another worker took over).
    async fn release_lock(&self, key: String, token: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
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

impl Store {
    /// Takes the payId's lock whatever is stored (a cancel works on a finished payId); false
    /// when another worker holds it.
    pub async fn lock_pay_id(
        &self,
        pay_key: &PayKey,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.try_lock(self.keys.lock(pay_key), token, ttl).await
    }
}
