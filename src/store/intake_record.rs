//! The intake's records: what it took, so a repeat makes no second message. There are three
//! kinds, one family: a payId's creation (`<prefix>:intake:{payId}`: what was asked, its
//! fingerprint, by whom), the cancels asked for a payId (`<prefix>:cancel:{payId}`, one set of
//! fields per `when`, prefixed `<when>:`), and a Stripe event taken (`<prefix>:stripe-event:{id}`).
//!
//! Each is a hash. A record is `pending` from the moment a request claims it until RabbitMQ
//! confirms its message, then `enqueued`. A process that dies in between leaves a pending
//! record behind; its claim has a lease, and a retry of the same request, once the lease is
//! over, takes the claim over and publishes (a creation: the job stored with the first claim).
//! So nothing is ever stranded, and no caller is ever told `S` (or Stripe `2xx`) for a message
//! that is not on the broker. A failure that proves the message is not on the broker releases
//! the claim, so the caller's retry starts afresh.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::FinalResult;
use crate::domain::cancel::CancelWhen;
use crate::domain::request::PayKey;

/// Claims a record, or tells where it stands.
/// KEYS: the record, then (for a creation) its result. ARGV: field prefix, the field whose
/// presence says the record exists, fingerprint ('' when the record has none), token, now (ms),
/// lease (ms), TTL (s), the field holding the message to publish on a takeover (or ''), then
/// the field/value pairs a fresh claim writes (names without the prefix).
/// Returns {outcome, the stored message on a takeover, or the result of an enqueued record}.
pub(crate) const CLAIM_LUA: &str = r#"
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  -- A Stripe event taken before records were hashes ('taken', or a pending claim that expires
  -- by itself). None is left once a record's TTL has passed since.
  if redis.call('GET', KEYS[1]) == 'taken' then
    return {'enqueued', ''}
  end
  return {'pending', ''}
end
local p = ARGV[1]
local rec = redis.call('HMGET', KEYS[1], p .. ARGV[2], p .. 'fp', p .. 'state', p .. 'claimed_at',
                       p .. ARGV[8])
if not rec[1] then
  local fields = {p .. 'state', 'pending', p .. 'claim', ARGV[4], p .. 'claimed_at', ARGV[5]}
  for i = 9, #ARGV, 2 do
    fields[#fields + 1] = p .. ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  -- The caller publishes its own message: no need to send it back.
  return {'claimed', ''}
end
if ARGV[3] ~= '' and rec[2] ~= ARGV[3] then
  return {'conflict', ''}
end
if rec[3] == 'enqueued' then
  if KEYS[2] then
    return {'enqueued', redis.call('GET', KEYS[2]) or ''}
  end
  return {'enqueued', ''}
end
if tonumber(ARGV[5]) - tonumber(rec[4] or '0') > tonumber(ARGV[6]) then
  -- The claim's holder died between Redis and the broker: take its claim over.
  redis.call('HSET', KEYS[1], p .. 'claim', ARGV[4], p .. 'claimed_at', ARGV[5])
  return {'claimed', rec[5] or ''}
end
return {'pending', ''}
"#;
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));

/// Forgets a pending claim if this token still holds it: its message is known not to be on the
/// broker, so the record is free again for the caller's retry. KEYS: the record. ARGV: field
/// prefix, token, then the names of the fields the claim wrote (without the prefix).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = ARGV[1]
local rec = redis.call('HMGET', KEYS[1], p .. 'state', p .. 'claim')
if rec[1] == 'pending' and rec[2] == ARGV[2] then
  local fields = {p .. 'state', p .. 'claim', p .. 'claimed_at'}
  for i = 3, #ARGV do
    fields[#fields + 1] = p .. ARGV[i]
  end
  return redis.call('HDEL', KEYS[1], unpack(fields))
end
return 0
"#,
    )
});

/// Marks a record enqueued, whoever holds its claim now: its message is on the broker. The
/// message kept for a takeover is dead weight from then on, so it goes. The expiry is set again,
/// unless the record has the field named last: a creation's record keeps the expiry it has,
/// which is none once a worker finished it with a live subscription (a mark can arrive after
/// that, being batched); only a stub (a record lost before its mark: no fingerprint) gets one.
/// KEYS: the record. ARGV: field prefix, TTL (s), the message's field (or ''), the field that
/// keeps the expiry (or '').
pub(crate) const MARK_ENQUEUED: &str = r#"
local p = ARGV[1]
redis.call('HSET', KEYS[1], p .. 'state', 'enqueued')
if ARGV[3] ~= '' then
  redis.call('HDEL', KEYS[1], p .. ARGV[3])
end
if ARGV[4] == '' or redis.call('HEXISTS', KEYS[1], p .. ARGV[4]) == 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"#;

/// Whether a record is enqueued. KEYS: the record. ARGV: field prefix.
static ENQUEUED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  return redis.call('GET', KEYS[1]) == 'taken' and 1 or 0
end
return redis.call('HGET', KEYS[1], ARGV[1] .. 'state') == 'enqueued' and 1 or 0
"#,
    )
});

/// Which of the three kinds a record is; each names its fields its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Creation,
    Cancel,
    StripeEvent,
}

impl Kind {
    /// The field whose presence says the record exists. A creation's is its fingerprint, so a
    /// bare `enqueued` stub (left by a mark after the record was lost) is simply overwritten.
    fn presence(self) -> &'static str {
        match self {
            Kind::Creation => "fp",
            Kind::Cancel | Kind::StripeEvent => "state",
        }
    }

    /// The field that keeps the message a takeover publishes.
    fn message_field(self) -> &'static str {
        match self {
            Kind::Creation => "job",
            Kind::Cancel | Kind::StripeEvent => "",
        }
    }

    /// A record with this field keeps its expiry when marked (see [`MARK_ENQUEUED`]).
    fn keeps_expiry_with(self) -> &'static str {
        match self {
            Kind::Creation => "fp",
            Kind::Cancel | Kind::StripeEvent => "",
        }
    }
}

/// One record of the intake, as its claim, mark and release see it. Made by the [`Store`],
/// which owns the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeRecord {
    kind: Kind,
    key: String,
    /// A creation's result: a repeat of an enqueued creation answers with it.
    result_key: Option<String>,
    /// The cancels of one payId share a hash: each `when` prefixes its fields.
    prefix: String,
}

/// A request's bid for a record.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// Unique to this request: only its holder may release the claim.
    pub token: &'a str,
    pub now_ms: u64,
    /// After this long, a pending claim is taken to be abandoned.
    pub lease: Duration,
    /// What was asked, when a record with other content is a conflict (a creation).
    pub fingerprint: Option<&'a str>,
    /// The fields a fresh claim writes besides its own (names without a prefix); a release
    /// takes them away again.
    pub fields: &'a [(&'static str, &'a [u8])],
}

/// Where a record stands after a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// This request holds the record and must publish its message; `stored` is the message to
    /// publish instead when it took over an abandoned claim (the first request's own).
    Claimed { stored: Option<Vec<u8>> },
    /// The message is on the broker; `result` is a creation's final result, if there is one yet.
    Enqueued { result: Option<Box<FinalResult>> },
    /// Another request for the same record is being enqueued right now.
    Pending,
    /// The record is known with other content.
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
    /// The record of a payId's creation.
    pub fn creation_record(&self, pay_key: &PayKey) -> IntakeRecord {
        IntakeRecord {
            kind: Kind::Creation,
            key: self.keys.intake(pay_key),
            result_key: Some(self.keys.result(pay_key)),
            prefix: String::new(),
        }
    }

    /// The record of a payId's cancel of one `when`.
    pub fn cancel_record(&self, pay_key: &PayKey, when: CancelWhen) -> IntakeRecord {
        IntakeRecord {
            kind: Kind::Cancel,
            key: self.keys.cancel(pay_key),
            result_key: None,
            prefix: format!("{}:", when.as_str()),
        }
    }

    /// The record of a Stripe event, by its id. It lives as long as a payId's record: Stripe
    /// retries a delivery for up to three days, and `reconcile` may look further back.
    pub fn stripe_event_record(&self, event_id: &str) -> IntakeRecord {
        IntakeRecord {
            kind: Kind::StripeEvent,
            key: self.keys.stripe_event(event_id),
            result_key: None,
            prefix: String::new(),
        }
    }

    pub async fn claim(
        &self,
        record: &IntakeRecord,
        claim: &Claim<'_>,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut connection = self.connection().await?;
        let lease_ms = u64::try_from(claim.lease.as_millis()).unwrap_or(u64::MAX);
        let ttl = self.record_ttl.as_secs().max(1);
        let mut invocation = CLAIM.key(&record.key);
        if let Some(result_key) = &record.result_key {
            invocation.key(result_key);
        }
        invocation
            .arg(&record.prefix)
            .arg(record.kind.presence())
            .arg(claim.fingerprint.unwrap_or(""))
            .arg(claim.token)
            .arg(claim.now_ms)
            .arg(lease_ms)
            .arg(ttl)
            .arg(record.kind.message_field());
        for (name, value) in claim.fields {
            invocation.arg(*name).arg(*value);
        }
        let (outcome, payload): (String, Vec<u8>) =
            with_timeout(async { invocation.invoke_async(&mut connection).await }).await?;
        match outcome.as_str() {
            "claimed" => Ok(ClaimOutcome::Claimed {
                stored: (!payload.is_empty()).then_some(payload),
            }),
            "enqueued" => Ok(ClaimOutcome::Enqueued {
                result: parse_result(&payload)?.map(Box::new),
            }),
            "pending" => Ok(ClaimOutcome::Pending),
            "conflict" => Ok(ClaimOutcome::Conflict),
            other => Err(StoreError::Corrupt(format!("claim outcome `{other}`"))),
        }
    }

    /// Releases `claim` if it still holds `record`.
    pub async fn release(
        &self,
        record: &IntakeRecord,
        claim: &Claim<'_>,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = RELEASE.key(&record.key);
        invocation.arg(&record.prefix).arg(claim.token);
        for (name, _) in claim.fields {
            invocation.arg(*name);
        }
        let _: i64 = with_timeout(async { invocation.invoke_async(&mut connection).await }).await?;
        Ok(())
    }

    /// Marks records enqueued, whoever holds their claims now (their messages are on the broker
    /// either way), in one round trip ([`MARK_ENQUEUED`]). A creation's record that is gone
    /// (lost with an unpersisted Redis) comes back as a bare `enqueued` stub that expires like a
    /// record, which a later claim simply overwrites.
    ///
    /// On a Redis Cluster a pipeline must stay within one slot, and each record has its own:
    /// there each record gets its own small pipeline, all sent at once.
    pub async fn mark_enqueued(&self, records: &[IntakeRecord]) -> Result<(), StoreError> {
        let ttl = self.record_ttl.as_secs().max(1);
        let mark = |pipe: &mut redis::Pipeline, record: &IntakeRecord| {
            // EVAL with the script's text, not EVALSHA: a pipeline cannot load a missing script.
            pipe.cmd("EVAL")
                .arg(MARK_ENQUEUED)
                .arg(1)
                .arg(&record.key)
                .arg(&record.prefix)
                .arg(ttl)
                .arg(record.kind.message_field())
                .arg(record.kind.keeps_expiry_with())
                .ignore();
        };
        let connection = self.connection().await?;
        if !connection.is_cluster() {
            let mut pipe = redis::pipe();
            for record in records {
                mark(&mut pipe, record);
            }
            let mut connection = connection;
            with_timeout(async { pipe.query_async::<()>(&mut connection).await }).await?;
            return Ok(());
        }
        let marks =
            records.iter().map(|record| {
                let mut pipe = redis::pipe();
                mark(&mut pipe, record);
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

    /// Whether a record's message is on the broker (a repeat answers like the first; `reconcile`
    /// feeds only the Stripe events that are missing).
    pub async fn is_enqueued(&self, record: &IntakeRecord) -> Result<bool, StoreError> {
        let mut connection = self.connection().await?;
        let enqueued: i64 = with_timeout(async {
            ENQUEUED
                .key(&record.key)
                .arg(&record.prefix)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok(enqueued == 1)
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
