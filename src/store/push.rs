//! The push's records (docs/design.md#one-delivery): each event a partner is owed, its attempt log,
//! and the partner's breaker and disable switch; every key under the partner's hash tag.
//!
//! Per partner, `<prefix>:push:{P}:`…
//! - `n:<webhook-id>`: a hash: `event_id`, `type`, `time`, `pay_id`, `body` (the event as
//!   published, for resends and recovery), `score` (event time, ms), `status`;
//! - `a:<webhook-id>`: a list of attempts (JSON), oldest first;
//! - `pay:<payId>`: the set of webhook-ids of a payId's events;
//! - `pending`, `failed`: sorted sets of the undelivered webhook-ids by event time, which
//!   `recoverNotifications` and `push status` read;
//! - `state`: the breaker (`failures`, `failing_since`, `open_until`, `cooldown`) and the
//!   switch (`disabled`, `disabled_reason`, `disabled_at`); kept until `push enable`;
//! - `probe`: the lock of the one probe after a breaker's cool-down.
//!
//! Everything but `state` expires after `push.log_retention_days`, refreshed by each write;
//! entries of the sorted sets older than that are trimmed as they are written.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::clock::now_millis;
use crate::domain::push::{AttemptRecord, DeliveryStatus, Notification};

/// KEYS: record, pay set, pending, failed. ARGV: webhook-id, event id, type, time, payId,
/// body, score (ms), ttl (s), cutoff (ms). Creates the record when it is not there; returns its
/// status.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'event_id', ARGV[2], 'type', ARGV[3], 'time', ARGV[4],
    'pay_id', ARGV[5], 'body', ARGV[6], 'score', ARGV[7], 'status', 'pending')
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[8])
if ARGV[5] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
for i = 3, 4 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[9])
  redis.call('EXPIRE', KEYS[i], ARGV[8])
end
return redis.call('HGET', KEYS[1], 'status')
"#,
    )
});

/// KEYS: record, attempts, pending, failed, state. ARGV: webhook-id, attempt (JSON), new status
/// (or '' to keep it), ttl (s), now (ms). A delivered event stays delivered. A 2xx (new status
/// `delivered`) also closes the partner's breaker, in the same round trip. Returns the status.
static ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[3] == 'delivered' then
  redis.call('HDEL', KEYS[5], 'failures', 'failing_since', 'open_until', 'cooldown')
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return ''
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if status ~= 'delivered' and ARGV[3] ~= '' and ARGV[3] ~= status then
  local score = redis.call('HGET', KEYS[1], 'score')
  redis.call('HSET', KEYS[1], 'status', ARGV[3])
  if ARGV[3] == 'delivered' then
    redis.call('HSET', KEYS[1], 'delivered_at', ARGV[5])
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
  elseif ARGV[3] == 'failed' then
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('ZADD', KEYS[4], score, ARGV[1])
  else
    redis.call('ZREM', KEYS[4], ARGV[1])
    redis.call('ZADD', KEYS[3], score, ARGV[1])
  end
  status = ARGV[3]
end
return status
"#,
    )
});

/// KEYS: state. ARGV: now (ms), failures that open, first cool-down (ms), longest cool-down
/// (ms), failing time that disables (ms). Returns {opened, disabled}.
static FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local now = tonumber(ARGV[1])
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSETNX', KEYS[1], 'failing_since', ARGV[1])
local opened = 0
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if failures >= tonumber(ARGV[2]) and open_until <= now then
  local cooldown = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or ARGV[3])
  redis.call('HSET', KEYS[1], 'open_until', string.format('%.0f', now + cooldown),
    'cooldown', string.format('%.0f', math.min(cooldown * 2, tonumber(ARGV[4]))))
  opened = 1
end
local disabled = 0
local since = tonumber(redis.call('HGET', KEYS[1], 'failing_since'))
if now - since >= tonumber(ARGV[5]) and redis.call('HGET', KEYS[1], 'disabled') ~= '1' then
  redis.call('HSET', KEYS[1], 'disabled', '1', 'disabled_at', ARGV[1],
    'disabled_reason', 'no 2xx for push.disable_after_hours')
  disabled = 1
end
return {opened, disabled}
"#,
    )
});

/// An event to record before its attempt.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub webhook_id: &'a str,
    pub event_id: &'a str,
    pub kind: &'a str,
    pub time: &'a str,
    pub pay_id: &'a str,
    pub body: &'a [u8],
    /// The event's time, unix ms: the sorted sets' score.
    pub time_ms: i64,
}

/// What a failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStep {
    /// This failure opened the breaker.
    pub opened: bool,
    /// This failure disabled the push (no 2xx for `disable_after_hours`).
    pub disabled: bool,
}

/// A partner's breaker and switch as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushState {
    pub disabled: bool,
    pub disabled_reason: String,
    pub disabled_at_ms: i64,
    pub failures: u64,
    /// 0: closed; in the future: open; in the past: a probe may go.
    pub open_until_ms: i64,
}

/// How many of a partner's events wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushCounts {
    pub pending: u64,
    pub failed: u64,
    /// The event time (ms) of the oldest pending event.
    pub oldest_pending_ms: Option<i64>,
}

/// Now in unix ms, as the push's records keep times (signed, like the event times they compare to).
fn now_ms() -> i64 {
    i64::try_from(now_millis()).unwrap_or(i64::MAX)
}

impl Store {
    fn push_key(&self, partner: &str, rest: &str) -> String {
        self.keys.push(partner, rest)
    }

    /// Records an event before its attempt (once; later calls only refresh its expiry) and
    /// answers its status.
    pub async fn push_record(
        &self,
        partner: &str,
        event: &NewNotification<'_>,
        retention: Duration,
    ) -> Result<DeliveryStatus, StoreError> {
        let mut connection = self.connection().await?;
        let key = |rest: &[&str]| self.keys.push_of(partner, rest);
        let cutoff = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        let mut invocation = RECORD.key(key(&["n:", event.webhook_id]));
        invocation
            .key(key(&["pay:", event.pay_id]))
            .key(key(&["pending"]))
            .key(key(&["failed"]))
            .arg(event.webhook_id)
            .arg(event.event_id)
            .arg(event.kind)
            .arg(event.time)
            .arg(event.pay_id)
            .arg(event.body)
            .arg(event.time_ms)
            .arg(retention.as_secs().max(1))
            .arg(cutoff);
        let status: String =
            with_timeout(async { invocation.invoke_async(&mut connection).await }).await?;
        DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("push status `{status}`")))
    }

    /// Logs an attempt and moves the event to `status` (None: keeps it; a delivered event stays
    /// delivered); `Some(Delivered)`, a 2xx, also closes the partner's breaker and starts its
    /// cool-down again from the first. Answers the status after it, None if the record has
    /// expired.
    pub async fn push_attempt(
        &self,
        partner: &str,
        webhook_id: &str,
        attempt: &AttemptRecord,
        status: Option<DeliveryStatus>,
        retention: Duration,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let mut connection = self.connection().await?;
        let key = |rest: &[&str]| self.keys.push_of(partner, rest);
        let json = serde_json::to_string(attempt).unwrap_or_default();
        let mut invocation = ATTEMPT.key(key(&["n:", webhook_id]));
        invocation
            .key(key(&["a:", webhook_id]))
            .key(key(&["pending"]))
            .key(key(&["failed"]))
            .key(key(&["state"]))
            .arg(webhook_id)
            .arg(json)
            .arg(status.map_or("", |s| s.as_str()))
            .arg(retention.as_secs().max(1))
            .arg(now_ms());
        let status: String =
            with_timeout(async { invocation.invoke_async(&mut connection).await }).await?;
        Ok(DeliveryStatus::parse(&status))
    }

    /// Counts a failed attempt against the partner's breaker.
    pub async fn push_failure(
        &self,
        partner: &str,
        threshold: u32,
        cooldown: Duration,
        longest_cooldown: Duration,
        disable_after: Duration,
    ) -> Result<BreakerStep, StoreError> {
        let mut connection = self.connection().await?;
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        let mut invocation = FAILURE.key(self.push_key(partner, "state"));
        invocation
            .arg(now_ms())
            .arg(threshold)
            .arg(millis(cooldown).max(1))
            .arg(millis(longest_cooldown).max(1))
            .arg(millis(disable_after));
        let (opened, disabled): (i64, i64) =
            with_timeout(async { invocation.invoke_async(&mut connection).await }).await?;
        Ok(BreakerStep {
            opened: opened == 1,
            disabled: disabled == 1,
        })
    }

    /// Disables the partner's push (a 410, or an operator).
    pub async fn push_disable(&self, partner: &str, reason: &str) -> Result<(), StoreError> {
        self.push_state_command(
            redis::cmd("HSET")
                .arg(self.push_key(partner, "state"))
                .arg("disabled")
                .arg("1")
                .arg("disabled_reason")
                .arg(reason)
                .arg("disabled_at")
                .arg(now_ms())
                .clone(),
        )
        .await
    }

    /// `autorenew push enable`: the push resumes, its breaker closed.
    pub async fn push_enable(&self, partner: &str) -> Result<(), StoreError> {
        self.push_state_command(
            redis::cmd("DEL")
                .arg(self.push_key(partner, "state"))
                .arg(self.push_key(partner, "probe"))
                .clone(),
        )
        .await
    }

    async fn push_state_command(&self, command: redis::Cmd) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let _: redis::Value =
            with_timeout(async move { command.query_async(&mut connection).await }).await?;
        Ok(())
    }

    pub async fn push_state(&self, partner: &str) -> Result<PushState, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.push_key(partner, "state");
        let hash: HashMap<String, String> = with_timeout(async {
            redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        let number = |name: &str| {
            hash.get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        Ok(PushState {
            disabled: hash.get("disabled").is_some_and(|v| v == "1"),
            disabled_reason: hash.get("disabled_reason").cloned().unwrap_or_default(),
            disabled_at_ms: number("disabled_at"),
            failures: u64::try_from(number("failures")).unwrap_or(0),
            open_until_ms: number("open_until"),
        })
    }

    /// Takes the lock of the one probe after a cool-down, for `ttl`; false when another holds it.
    pub async fn push_try_probe(&self, partner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.push_key(partner, "probe");
        let taken: Option<String> = with_timeout(async {
            redis::cmd("SET")
                .arg(key)
                .arg("1")
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(taken.is_some())
    }

    pub async fn push_counts(&self, partner: &str) -> Result<PushCounts, StoreError> {
        let mut connection = self.connection().await?;
        let pending_key = self.push_key(partner, "pending");
        let failed_key = self.push_key(partner, "failed");
        let (pending, failed, oldest): (u64, u64, Vec<(String, f64)>) = with_timeout(async {
            redis::pipe()
                .cmd("ZCARD")
                .arg(&pending_key)
                .cmd("ZCARD")
                .arg(&failed_key)
                .cmd("ZRANGE")
                .arg(&pending_key)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(PushCounts {
            pending,
            failed,
            oldest_pending_ms: oldest.first().map(|(_, score)| *score as i64),
        })
    }

    /// Every event of a payId with its attempts, oldest event first.
    pub async fn push_notifications(
        &self,
        partner: &str,
        pay_id: &str,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut connection = self.connection().await?;
        let pay_key = self.push_key(partner, &format!("pay:{pay_id}"));
        let ids: Vec<String> = with_timeout(async {
            redis::cmd("SMEMBERS")
                .arg(pay_key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        let mut found = Vec::new();
        for webhook_id in ids {
            let record_key = self.push_key(partner, &format!("n:{webhook_id}"));
            let attempts_key = self.push_key(partner, &format!("a:{webhook_id}"));
            let (fields, attempts): (Vec<Option<String>>, Vec<String>) = with_timeout(async {
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&record_key)
                    .arg(&["event_id", "type", "time", "status", "score"])
                    .cmd("LRANGE")
                    .arg(&attempts_key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
            let field = |i: usize| fields.get(i).cloned().flatten();
            // Expired since the set was read.
            let Some(status) = field(3).and_then(|s| DeliveryStatus::parse(&s)) else {
                continue;
            };
            let attempts = attempts
                .iter()
                .filter_map(|json| serde_json::from_str::<AttemptRecord>(json).ok())
                .collect();
            let score: i64 = field(4).and_then(|s| s.parse().ok()).unwrap_or(0);
            found.push((
                score,
                Notification {
                    webhook_id,
                    event_id: field(0).unwrap_or_default(),
                    kind: field(1).unwrap_or_default(),
                    time: field(2).unwrap_or_default(),
                    status,
                    attempts,
                },
            ));
        }
        found.sort_by(|a, b| (a.0, &a.1.webhook_id).cmp(&(b.0, &b.1.webhook_id)));
        Ok(found.into_iter().map(|(_, n)| n).collect())
    }

    /// The event id and body of one of the partner's notifications, if it is known.
    pub async fn push_body(
        &self,
        partner: &str,
        webhook_id: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.push_key(partner, &format!("n:{webhook_id}"));
        let (event_id, body): (Option<String>, Option<Vec<u8>>) = with_timeout(async {
            redis::cmd("HMGET")
                .arg(key)
                .arg("event_id")
                .arg("body")
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(event_id.zip(body))
    }

    /// The webhook-ids of the undelivered events (pending or failed) whose time is in
    /// `[since, until]` (unix ms), oldest first.
    pub async fn push_undelivered(
        &self,
        partner: &str,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection().await?;
        let mut ids = Vec::new();
        for set in ["pending", "failed"] {
            let key = self.push_key(partner, set);
            let mut scored: Vec<(String, f64)> = with_timeout(async {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg(since_ms)
                    .arg(until_ms)
                    .arg("WITHSCORES")
                    .query_async(&mut connection)
                    .await
            })
            .await?;
            ids.append(&mut scored);
        }
        ids.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        ids.dedup_by(|a, b| a.0 == b.0);
        Ok(ids.into_iter().map(|(id, _)| id).collect())
    }
}
