//! The state of a payId's auto-renewal (docs/partners.md#the-rest-of-an-auto-renewals-life): one hash,
//! `<prefix>:renewal:{payId}`, written by the workers from Stripe's events, read by
//! `/queryAutoRenewalRecord`.
//!
//! Stripe does not order its deliveries, so a write never takes the state back: the hash keeps,
//! for each part of the state, the version of the change that last wrote it (`sub_version`,
//! `renewal_version`, `error_version`), and one Lua script compares and writes in one step, so
//! two workers applying two events at once cannot interleave. Paid renewals are counted once
//! per invoice (`paid:<invoice id>` fields), whatever order or how often their events come.
//!
//! Fields: `partner`, `sub_id`, `status`, `current_period_end`, `cancel_at_period_end`
//! (`true`/`false`), `canceled_at`, `renewals`, `last_renewal_at`, `last_invoice_id`,
//! `last_error` (JSON), the three versions, `updated` (ms). Times are unix seconds; an empty
//! value is "not known".

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::clock::now_millis;
use crate::domain::renewal::{Applied, RenewalChange, RenewalError, RenewalState, RenewalUpdate};
use crate::domain::request::PayKey;

/// Applies one change if it is newer than the part it writes.
/// KEYS: the renewal hash, then the payId's result, intake record, create record and cancels,
/// whose expiry follows the subscription's life. ARGV: part, version (20 digits, so strings
/// compare as numbers, beyond Lua's 2^53), retention after the end (s), partner, now (ms),
/// invoice to count (or ''), then field/value pairs.
/// Returns {newer, counted}.
pub(crate) const APPLY_LUA: &str = r#"
local version_field = ARGV[1] .. '_version'
local stored = redis.call('HGET', KEYS[1], version_field) or ''
local newer = 0
if ARGV[2] > stored then
  newer = 1
  local pairs = {version_field, ARGV[2]}
  for i = 7, #ARGV do
    pairs[#pairs + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[1], unpack(pairs))
end
local counted = 0
if ARGV[6] ~= '' and redis.call('HSETNX', KEYS[1], 'paid:' .. ARGV[6], '1') == 1 then
  redis.call('HINCRBY', KEYS[1], 'renewals', 1)
  counted = 1
end
redis.call('HSET', KEYS[1], 'partner', ARGV[4], 'updated', ARGV[5])
-- Kept while the subscription lives, however long between two events (a yearly plan); once it
-- has ended, everything of the payId is kept for the retention only.
local status = redis.call('HGET', KEYS[1], 'status') or ''
if status == 'canceled' or status == 'incomplete_expired' then
  for i = 1, #KEYS do
    redis.call('EXPIRE', KEYS[i], ARGV[3])
  end
else
  for i = 1, #KEYS do
    redis.call('PERSIST', KEYS[i])
  end
end
return {newer, counted}
"#;
static APPLY: LazyLock<Script> = LazyLock::new(|| Script::new(APPLY_LUA));

fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// The part a change writes, the invoice it counts, and its fields.
fn fields_of(change: &RenewalChange) -> (&'static str, &str, Vec<(&'static str, String)>) {
    match change {
        RenewalChange::Subscription {
            sub_id,
            status,
            current_period_end,
            cancel_at_period_end,
            canceled_at,
        } => (
            "sub",
            "",
            vec![
                ("sub_id", sub_id.clone()),
                ("status", status.clone()),
                ("current_period_end", optional(*current_period_end)),
                ("cancel_at_period_end", cancel_at_period_end.to_string()),
                ("canceled_at", optional(*canceled_at)),
            ],
        ),
        RenewalChange::Renewed {
            invoice_id,
            paid_at,
        } => (
            "renewal",
            invoice_id.as_str(),
            vec![
                ("last_renewal_at", paid_at.to_string()),
                ("last_invoice_id", invoice_id.clone()),
            ],
        ),
        RenewalChange::RenewalFailed { error } => (
            "error",
            "",
            // A struct of strings always serializes.
            vec![(
                "last_error",
                serde_json::to_string(error).unwrap_or_default(),
            )],
        ),
    }
}

/// APPLY's KEYS for a payId: its renewal hash, then the keys whose expiry follows the
/// subscription's life. The store twin runs the script with the same keys.
pub(crate) fn apply_keys(keys: &super::Keys, pay_key: &PayKey) -> [String; 5] {
    [
        keys.renewal(pay_key),
        keys.result(pay_key),
        keys.intake(pay_key),
        keys.created(pay_key),
        keys.cancel(pay_key),
    ]
}

/// APPLY's ARGV for one change, `retention_secs` after the end, written at `now_ms`.
pub(crate) fn apply_args(update: &RenewalUpdate, retention_secs: u64, now_ms: u64) -> Vec<String> {
    let (part, invoice, fields) = fields_of(&update.change);
    let mut args = vec![
        part.to_owned(),
        format!("{:020}", update.version),
        retention_secs.to_string(),
        update.partner_code.as_str().to_owned(),
        now_ms.to_string(),
        invoice.to_owned(),
    ];
    for (name, value) in fields {
        args.push(name.to_owned());
        args.push(value);
    }
    args
}

impl Store {
    /// Applies a worker's change to a payId's state, unless the state is newer already.
    pub async fn apply_renewal(
        &self,
        pay_key: &PayKey,
        update: &RenewalUpdate,
    ) -> Result<Applied, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = APPLY.prepare_invoke();
        for key in apply_keys(&self.keys, pay_key) {
            invocation.key(key);
        }
        for arg in apply_args(update, self.record_ttl.as_secs().max(1), now_millis()) {
            invocation.arg(arg);
        }
        let (newer, counted): (i64, i64) =
            with_timeout(async { invocation.invoke_async(&mut connection).await }).await?;
        Ok(Applied {
            newer: newer == 1,
            counted: counted == 1,
        })
    }

    /// The state of a payId's auto-renewal; None before any event about it was applied.
    pub async fn renewal(&self, pay_key: &PayKey) -> Result<Option<RenewalState>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.keys.renewal(pay_key);
        let hash: HashMap<String, String> = with_timeout(async {
            redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await?;
        if hash.is_empty() {
            return Ok(None);
        }
        let text = |name: &str| hash.get(name).cloned().unwrap_or_default();
        let time = |name: &str| -> Result<Option<i64>, StoreError> {
            match hash.get(name).map(String::as_str) {
                None | Some("") => Ok(None),
                Some(value) => value
                    .parse()
                    .map(Some)
                    .map_err(|_| StoreError::Corrupt(format!("renewal {name}: `{value}`"))),
            }
        };
        let last_error = match hash.get("last_error").map(String::as_str) {
            None | Some("") => None,
            Some(json) => Some(
                serde_json::from_str::<RenewalError>(json)
                    .map_err(|e| StoreError::Corrupt(format!("renewal last_error: {e}")))?,
            ),
        };
        Ok(Some(RenewalState {
            partner_code: text("partner"),
            sub_id: text("sub_id"),
            status: text("status"),
            current_period_end: time("current_period_end")?,
            cancel_at_period_end: text("cancel_at_period_end") == "true",
            canceled_at: time("canceled_at")?,
            renewals: time("renewals")?.map_or(0, |n| u64::try_from(n).unwrap_or(0)),
            last_renewal_at: time("last_renewal_at")?,
            last_invoice_id: text("last_invoice_id"),
            last_error,
        }))
    }
}
