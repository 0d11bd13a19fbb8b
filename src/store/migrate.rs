//! `autorenew migrate-keys`: moves the keys of payIds written before payIds were scoped by
//! partner (`<prefix>:result:{P123}`) to their scoped names (`<prefix>:result:{P000818:P123}`).
//!
//! The partner of a legacy payId is read from its intake record (`partner`), or from its renewal
//! state when the record is gone. Each key is copied with `DUMP`/`RESTORE` (keeping its expiry),
//! then deleted: on a Redis Cluster the new name hashes to another slot, where `RENAME` cannot
//! go. A key whose scoped name exists already is left to the scoped one (a newer process wrote
//! it) and the legacy copy is deleted. Locks are not moved: they live seconds, and the upgrade
//! runs with no worker holding one. Running it twice moves nothing the second time.

use redis::Value;

use super::connection::Handle;
use super::{Store, StoreError};

/// The families of a payId's keys, by the middle word of their names.
const FAMILIES: &[&str] = &["intake", "result", "created", "renewal", "cancel"];

/// What a migration did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Legacy payIds whose keys were moved.
    pub pay_ids: u64,
    /// Keys moved (or dropped for a scoped copy that existed).
    pub keys: u64,
    /// Legacy keys whose partner could not be told (no record, no renewal state): left as they
    /// are, to expire.
    pub orphans: u64,
}

impl Store {
    /// Moves every legacy payId's keys to their scoped names. `scan_urls` are the Redis nodes
    /// to list keys on: the one Redis, or every master of a cluster.
    pub async fn migrate_keys(&self, scan_urls: &[String]) -> Result<Migrated, StoreError> {
        let prefix = self.keys.prefix();
        let mut migrated = Migrated::default();
        let mut seen = std::collections::BTreeSet::new();
        for url in scan_urls {
            for family in ["intake", "renewal"] {
                let pattern = format!("{prefix}:{family}:{{*}}");
                for key in scan(url, &pattern).await? {
                    let Some(pay_id) = legacy_tag(&key, prefix, family) else {
                        continue;
                    };
                    if !seen.insert(pay_id.to_owned()) {
                        continue;
                    }
                    match self.legacy_partner(prefix, pay_id).await? {
                        Some(partner) => {
                            migrated.keys += self.move_pay_id(prefix, pay_id, &partner).await?;
                            migrated.pay_ids += 1;
                        }
                        None => migrated.orphans += 1,
                    }
                }
            }
        }
        Ok(migrated)
    }

    /// The partner a legacy payId's record or renewal state names.
    async fn legacy_partner(
        &self,
        prefix: &str,
        pay_id: &str,
    ) -> Result<Option<String>, StoreError> {
        for family in ["intake", "renewal"] {
            let key = format!("{prefix}:{family}:{{{pay_id}}}");
            let partner: Option<String> =
                query(self, redis::cmd("HGET").arg(key).arg("partner")).await?;
            if let Some(partner) = partner.filter(|p| !p.is_empty()) {
                return Ok(Some(partner));
            }
        }
        Ok(None)
    }

    async fn move_pay_id(
        &self,
        prefix: &str,
        pay_id: &str,
        partner: &str,
    ) -> Result<u64, StoreError> {
        let mut moved = 0;
        for family in FAMILIES {
            let old = format!("{prefix}:{family}:{{{pay_id}}}");
            let new = format!("{prefix}:{family}:{{{partner}:{pay_id}}}");
            let dump: Option<Vec<u8>> = query(self, redis::cmd("DUMP").arg(&old)).await?;
            let Some(dump) = dump else { continue };
            let pttl: i64 = query(self, redis::cmd("PTTL").arg(&old)).await?;
            // RESTORE takes 0 for "no expiry"; -2 (gone since the DUMP) is treated the same.
            let ttl = pttl.max(0);
            let restored: Result<Value, StoreError> =
                query(self, redis::cmd("RESTORE").arg(&new).arg(ttl).arg(dump)).await;
            match restored {
                Ok(_) => {}
                // BUSYKEY: a scoped copy exists already, written by the new version: it wins.
                Err(StoreError::Unavailable(error)) if error.code() == Some("BUSYKEY") => {}
                Err(error) => return Err(error),
            }
            let _: i64 = query(self, redis::cmd("DEL").arg(&old)).await?;
            moved += 1;
        }
        Ok(moved)
    }
}

/// The payId in a legacy key's braces (no `:` in them), or None for a scoped key.
fn legacy_tag<'k>(key: &'k str, prefix: &str, family: &str) -> Option<&'k str> {
    let tag = key
        .strip_prefix(&format!("{prefix}:{family}:{{"))?
        .strip_suffix('}')?;
    (!tag.contains(':') && !tag.is_empty()).then_some(tag)
}

async fn query<T: redis::FromRedisValue>(
    store: &Store,
    cmd: &mut redis::Cmd,
) -> Result<T, StoreError> {
    let mut connection: Handle = store.connection().await?;
    let cmd = cmd.clone();
    super::with_timeout(async move { cmd.query_async(&mut connection).await }).await
}

/// Every key matching `pattern` on the Redis at `url`, by `SCAN` (never `KEYS`, which blocks).
async fn scan(url: &str, pattern: &str) -> Result<Vec<String>, StoreError> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = super::with_timeout(
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection),
        )
        .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::legacy_tag;

    #[test]
    fn only_a_tag_without_a_partner_is_legacy() {
        assert_eq!(legacy_tag("ar:intake:{P123}", "ar", "intake"), Some("P123"));
        assert_eq!(legacy_tag("ar:intake:{P000818:P123}", "ar", "intake"), None);
        assert_eq!(legacy_tag("ar:intake:{}", "ar", "intake"), None);
        assert_eq!(legacy_tag("other:intake:{P123}", "ar", "intake"), None);
    }
}
