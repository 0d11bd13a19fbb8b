//! The intake's record of a payId: what was asked (its fingerprint), by whom, and whether the
//! job is safely on the broker yet.
//!
//! A record is `pending` from the moment a request claims the payId until RabbitMQ confirms the
//! job, then `enqueued`. A process that dies in between leaves a pending record behind; its
//! claim has a lease, and the partner's retry of the same request, once the lease is over, takes
//! the claim over and publishes the stored job. So no payId is ever stranded, and no partner is
//! ever told `S` for a job that is not on the broker.

use std::time::Duration;

use redis::Script;
use std::sync::LazyLock;

use super::{Store, StoreError, with_timeout};
use crate::domain::FinalResult;
use crate::domain::request::PayKey;

/// Claims a payId, or tells where its record stands.
/// KEYS: intake record, result. ARGV: fingerprint, partner, token, now (ms), lease (ms),
/// record TTL (s), accepted_at, job.
/// Returns {outcome, accepted_at, job-or-result}.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rec = redis.call('HMGET', KEYS[1], 'fp', 'state', 'claimed_at', 'accepted_at', 'job')
if not rec[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'partner', ARGV[2], 'state', 'pending',
             'claim', ARGV[3], 'claimed_at', ARGV[4], 'accepted_at', ARGV[7], 'job', ARGV[8])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  -- The caller publishes its own job: no need to send it back.
  return {'claimed', ARGV[7], ''}
end
if rec[1] ~= ARGV[1] then
  return {'conflict', '', ''}
end
if rec[2] == 'enqueued' then
  return {'enqueued', rec[4], redis.call('GET', KEYS[2]) or ''}
end
if tonumber(ARGV[4]) - tonumber(rec[3]) > tonumber(ARGV[5]) then
  -- The claim's holder died between Redis and the broker: take its claim over.
  redis.call('HSET', KEYS[1], 'claim', ARGV[3], 'claimed_at', ARGV[4])
  return {'claimed', rec[4], rec[5]}
end
return {'pending', rec[4], ''}
"#,
    )
});

/// Deletes a pending record if this token still holds its claim: the job is known not to be on
/// the broker, so the payId is free again for the partner's retry.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rec = redis.call('HMGET', KEYS[1], 'state', 'claim')
if rec[1] == 'pending' and rec[2] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// Marks a record enqueued. The stored job serves only a takeover of a pending claim: once the
/// job is on the broker it is dead weight, kept for the subscription's whole life, so it goes.
/// Only a stub (a record lost before its mark: no fingerprint) gets an expiry here; a record
/// keeps the one it has, which is none once a worker finished it with a live subscription (a
/// mark can arrive after that, being batched). KEYS: intake record. ARGV: TTL (s).
const MARK_ENQUEUED: &str = r#"
redis.call('HSET', KEYS[1], 'state', 'enqueued')
redis.call('HDEL', KEYS[1], 'job')
if redis.call('HEXISTS', KEYS[1], 'fp') == 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"#;

/// A request's bid for a payId.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub pay_key: &'a PayKey,
    pub fingerprint: &'a str,
    /// Unique to this request: only its holder may release the claim.
    pub token: &'a str,
    pub now_ms: u64,
    /// After this long, a pending claim is taken to be abandoned.
    pub lease: Duration,
    pub accepted_at: &'a str,
    pub job: &'a [u8],
}

/// Where a payId stands after a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// This request holds the payId and must publish its job; `stored` is the job to publish
    /// instead when it took over an abandoned claim (the first request's own).
    Claimed {
        accepted_at: String,
        stored: Option<Vec<u8>>,
    },
    /// The job is on the broker; `result` is its final result, if there is one yet.
    Enqueued {
        accepted_at: String,
        result: Option<Box<FinalResult>>,
    },
    /// Another request for the same content is being enqueued right now.
    Pending { accepted_at: String },
    /// The payId is known with other content.
    Conflict,
}

/// What `/resultQuery` may show of a payId.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordView {
    /// When the intake accepted it; empty for a payId rebuilt from Stripe.
    pub accepted_at: String,
    pub result: Option<FinalResult>,
}

impl Store {
    pub async fn claim(&self, claim: Claim<'_>) -> Result<ClaimOutcome, StoreError> {
        let mut connection = self.connection().await?;
        let intake_key = self.keys.intake(claim.pay_key);
        let result_key = self.keys.result(claim.pay_key);
        let lease_ms = u64::try_from(claim.lease.as_millis()).unwrap_or(u64::MAX);
        let ttl = self.record_ttl.as_secs().max(1);
        let (outcome, accepted_at, payload): (String, String, Vec<u8>) = with_timeout(async {
            CLAIM
                .key(intake_key)
                .key(result_key)
                .arg(claim.fingerprint)
                .arg(claim.pay_key.partner().as_str())
                .arg(claim.token)
                .arg(claim.now_ms)
                .arg(lease_ms)
                .arg(ttl)
                .arg(claim.accepted_at)
                .arg(claim.job)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        match outcome.as_str() {
            "claimed" => Ok(ClaimOutcome::Claimed {
                accepted_at,
                stored: (!payload.is_empty()).then_some(payload),
            }),
            "enqueued" => Ok(ClaimOutcome::Enqueued {
                accepted_at,
                result: parse_result(&payload)?.map(Box::new),
            }),
            "pending" => Ok(ClaimOutcome::Pending { accepted_at }),
            "conflict" => Ok(ClaimOutcome::Conflict),
            other => Err(StoreError::Corrupt(format!("claim outcome `{other}`"))),
        }
    }

    /// Marks records enqueued, whoever holds their claims now (the jobs are on the broker either
    /// way), in one round trip ([`MARK_ENQUEUED`]). A record that is gone (lost with an
    /// unpersisted Redis) comes back as a bare `enqueued` stub that expires like a record, which
    /// a later claim simply overwrites.
    ///
    /// On a Redis Cluster a pipeline must stay within one slot, and each payId has its own:
    /// there each record gets its own small pipeline, all sent at once.
    pub async fn mark_enqueued(&self, pay_keys: &[PayKey]) -> Result<(), StoreError> {
        let ttl = self.record_ttl.as_secs().max(1);
        let mark = |pipe: &mut redis::Pipeline, pay_key: &PayKey| {
            // EVAL with the script's text, not EVALSHA: a pipeline cannot load a missing script.
            pipe.cmd("EVAL")
                .arg(MARK_ENQUEUED)
                .arg(1)
                .arg(self.keys.intake(pay_key))
                .arg(ttl)
                .ignore();
        };
        let connection = self.connection().await?;
        if !connection.is_cluster() {
            let mut pipe = redis::pipe();
            for pay_key in pay_keys {
                mark(&mut pipe, pay_key);
            }
            let mut connection = connection;
            with_timeout(async { pipe.query_async::<()>(&mut connection).await }).await?;
            return Ok(());
        }
        let marks =
            pay_keys.iter().map(|pay_key| {
                let mut pipe = redis::pipe();
                mark(&mut pipe, pay_key);
                let mut connection = connection.clone();
                async move {
                    with_timeout(async { pipe.query_async::<()>(&mut connection).await }).await
                }
            });
        futures_util::future::join_all(marks)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, StoreError>>()?;
        Ok(())
    }

    pub async fn release(&self, pay_key: &PayKey, token: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.intake(pay_key);
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

    /// The record of a payId and its result, if the payId is known.
    pub async fn record(&self, pay_key: &PayKey) -> Result<Option<RecordView>, StoreError> {
        let mut connection = self.connection().await?;
        let intake_key = self.keys.intake(pay_key);
        let result_key = self.keys.result(pay_key);
        type Fields = (Option<String>, Option<String>);
        let (fields, result): (Fields, Option<Vec<u8>>) = with_timeout(async {
            redis::pipe()
                .cmd("HMGET")
                .arg(&intake_key)
                .arg("partner")
                .arg("accepted_at")
                .cmd("GET")
                .arg(&result_key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        // Known by its intake record, or by a result alone (rebuilt from Stripe after the record
        // was lost).
        let (partner, accepted_at) = fields;
        if partner.is_none() && result.is_none() {
            return Ok(None);
        }
        Ok(Some(RecordView {
            accepted_at: accepted_at.unwrap_or_default(),
            result: parse_result(result.as_deref().unwrap_or_default())?,
        }))
    }
}

fn parse_result(payload: &[u8]) -> Result<Option<FinalResult>, StoreError> {
    if payload.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("result: {e}")))
}
