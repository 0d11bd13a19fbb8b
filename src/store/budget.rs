//! The Stripe request budget all workers share: a GCRA rate limiter in one Lua script, on
//! Redis's clock, so N workers on N machines together stay under Stripe's limit.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Store, StoreError, with_timeout};

/// GCRA: the key holds the theoretical arrival time (TAT, µs) of the next request. A request may
/// go when TAT - burst <= now; it then moves TAT one interval on. Returns 0 when the request may
/// go, else the µs to wait before asking again.
/// KEYS: budget. ARGV: interval (µs), burst tolerance (µs).
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - burst > now then
  return tat - burst - now
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
"#,
    )
});

impl Store {
    /// Takes one request from the shared budget of `per_second`, waiting as long as needed.
    pub async fn take_stripe_budget(&self, per_second: u32) -> Result<(), StoreError> {
        let interval_us = 1_000_000 / u64::from(per_second.max(1));
        // A small tolerance lets workers that asked at almost the same instant both go, without
        // ever exceeding the rate over any second.
        let key = self.keys.stripe_budget();
        loop {
            let wait = self.gcra(&key, interval_us, interval_us).await?;
            match wait {
                None => return Ok(()),
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// One request of a partner against its intake rate; false when it is over. A second's
    /// worth may come in one burst.
    pub async fn try_take_rate(&self, partner: &str, per_second: u32) -> Result<bool, StoreError> {
        let interval_us = 1_000_000 / u64::from(per_second.max(1));
        let burst_us = 1_000_000u64.saturating_sub(interval_us);
        let wait = self
            .gcra(&self.keys.partner_rate(partner), interval_us, burst_us)
            .await?;
        Ok(wait.is_none())
    }

    /// None when a request may go now, else how long until one may.
    async fn gcra(
        &self,
        key: &str,
        interval_us: u64,
        burst_us: u64,
    ) -> Result<Option<Duration>, StoreError> {
        let mut connection = self.connection().await?;
        let wait_us: i64 = with_timeout(async {
            TAKE.key(key)
                .arg(interval_us)
                .arg(burst_us)
                .invoke_async(&mut connection)
                .await
        })
        .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(u64::try_from(wait_us).unwrap_or(0))))
    }
}
