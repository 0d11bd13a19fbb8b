//! The Stripe request budget all workers share: a GCRA rate limiter in one Lua script, on
//! Redis's clock, so N workers on N machines together stay under Stripe's limit; and, inside
//! it, the partners' shares, so one partner's backlog never makes another's calls wait behind
//! it (docs/design.md, "Partners served in turn").

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

/// The GCRA of [`TAKE`], with the partners served in turn: start-time fair queueing.
///
/// Every partner has a finish tag `f:<partner>`; the budget keeps the virtual time `v`, the
/// start tag of the last call let through. A call of partner p would start at
/// `max(v, f:p)`; it goes when the rate allows and no other partner that is waiting (refused
/// within the last `window` µs, `w:<partner>`) would start earlier. Going moves `v` to its
/// start and `f:p` on by 1/weight. So partners that all wait share the calls by weight, a
/// partner that comes back after a pause starts at `v` (no credit saved up while idle, no debt
/// either), and a partner alone takes every call the rate allows: the share only decides whose
/// turn it is, never leaves a call unused while nobody else waits.
///
/// KEYS: budget (TAT), shares (hash). ARGV: interval (µs), burst (µs), partner, weight,
/// window (µs). Returns 0 when the call may go, else the µs to wait before asking again.
static TAKE_SHARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local partner = ARGV[3]
local weight = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end

local fields = redis.call('HGETALL', KEYS[2])
local v = 0
local finish = {}
local waiting = {}
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if name == 'v' then
    v = tonumber(value)
  elseif string.sub(name, 1, 2) == 'f:' then
    finish[string.sub(name, 3)] = tonumber(value)
  elseif string.sub(name, 1, 2) == 'w:' then
    waiting[string.sub(name, 3)] = tonumber(value)
  end
end
local start = math.max(v, finish[partner] or 0)
local my_turn = true
for other, since in pairs(waiting) do
  if other ~= partner then
    if now - since > window then
      redis.call('HDEL', KEYS[2], 'w:' .. other)
    elseif math.max(v, finish[other] or 0) < start then
      my_turn = false
    end
  end
end

local wait = 0
if tat - burst > now then
  wait = tat - burst - now
elseif not my_turn then
  -- The next call is another partner's, which is waiting: ask again after it.
  wait = interval
end
if wait > 0 then
  redis.call('HSET', KEYS[2], 'w:' .. partner, string.format('%d', now))
  redis.call('PEXPIRE', KEYS[2], 60000)
  return wait
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
redis.call('HSET', KEYS[2], 'v', string.format('%.17g', start), 'f:' .. partner, string.format('%.17g', start + 1 / weight))
redis.call('HDEL', KEYS[2], 'w:' .. partner)
redis.call('PEXPIRE', KEYS[2], 60000)
return 0
"#,
    )
});

/// Whose call it is: the partner it is made for, and that partner's weight.
#[derive(Debug, Clone, Copy)]
pub struct BudgetShare<'a> {
    /// Empty for calls of no partner (Stripe's events, reconciliation): they share as one.
    pub partner: &'a str,
    pub weight: u32,
}

impl Store {
    /// Takes one request from the shared budget of `per_second` for `share`, waiting as long
    /// as needed: until the rate allows it and it is this partner's turn.
    pub async fn take_stripe_budget(
        &self,
        per_second: u32,
        share: BudgetShare<'_>,
    ) -> Result<(), StoreError> {
        let interval_us = 1_000_000 / u64::from(per_second.max(1));
        // A small tolerance lets workers that asked at almost the same instant both go, without
        // ever exceeding the rate over any second.
        let burst_us = interval_us;
        // A partner counts as waiting while it asks again within this: a refused call asks
        // again within about one interval, plus a timer's and a round trip's slack.
        let window_us = 3 * interval_us + 20_000;
        let (budget, shares) = (self.keys.stripe_budget(), self.keys.stripe_budget_shares());
        loop {
            let mut connection = self.connection().await?;
            let wait_us: i64 = with_timeout(async {
                TAKE_SHARE
                    .key(&budget)
                    .key(&shares)
                    .arg(interval_us)
                    .arg(burst_us)
                    .arg(share.partner)
                    .arg(share.weight.max(1))
                    .arg(window_us)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
            match u64::try_from(wait_us) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(wait) => tokio::time::sleep(Duration::from_micros(wait)).await,
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
