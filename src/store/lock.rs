//! The worker's lock on a payId: `SET NX PX` with a token, extended while the job runs,
//! released by compare-and-delete so a worker never frees a lock another one took over.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};
use crate::domain::request::PayId;

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
    /// Takes the lock of a payId for `ttl`; false when another worker holds it.
    pub async fn lock(
        &self,
        pay_id: &PayId,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let key = self.keys.lock(pay_id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let set: Option<String> = with_timeout(async {
            redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut connection)
                .await
        })
        .await?;
        Ok(set.is_some())
    }

    /// Extends a lock this token still holds; false when it was lost.
    pub async fn extend_lock(
        &self,
        pay_id: &PayId,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection();
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
        let mut connection = self.connection();
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
