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
    Script::new(&format!(
        "{GCRA_HEAD}{}",
        r#"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - burst > now then
  return tat - burst - now
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
"#
    ))
});

/// The first lines of both GCRA scripts: now on Redis's clock (µs), and the rate's interval and
/// burst tolerance from ARGV[1] and ARGV[2].
const GCRA_HEAD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])"#;

/// The GCRA of [`TAKE`], with the partners served in turn: start-time fair queueing, asked
/// by one process for every partner with calls waiting in it.
///
/// Every partner has a finish tag `f:<partner>`; the budget keeps the virtual time `v`, the
/// start tag of the last call let through. A call of partner p would start at `max(v, f:p)`.
/// A partner counts as waiting while some process asked for it within the last `window` µs
/// (`w:<partner>`). When the rate allows a call, it goes to the partner, among those the asking
/// process lists, that would start first, unless a partner waiting elsewhere would start
/// earlier still: then the asking process comes back half an interval later, and if the call
/// is still untaken by then, takes it (the partner whose turn it was has stopped asking).
/// Going moves `v` to its start and `f:p` on by 1/weight. So partners that all wait share the
/// calls by weight, a partner that comes back after a pause starts at `v` (no credit saved up
/// while idle, no debt either), and no call the rate allows is left unused while anyone waits:
/// TAT moves on from where it was, not from when the call was taken.
///
/// KEYS: budget (TAT), shares (hash). ARGV: interval (µs), burst (µs), window (µs), then for
/// each partner waiting in the asking process: its name, weight and calls waiting. Returns
/// {index of the partner granted (1-based), 0} or {0, µs to wait before asking again}.
pub(crate) static TAKE_TURN_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{GCRA_HEAD}{}",
        r#"
local window = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
local tat = math.max(stored, now)

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
local function start_of(partner)
  return math.max(v, finish[partner] or 0)
end

-- The partners waiting here: each is waiting as of now.
local here = {}
for i = 4, #ARGV, 3 do
  local partner = ARGV[i]
  here[#here + 1] = { partner = partner, weight = tonumber(ARGV[i + 1]), count = tonumber(ARGV[i + 2]) }
  waiting[partner] = now
  redis.call('HSET', KEYS[2], 'w:' .. partner, string.format('%d', now))
end
redis.call('PEXPIRE', KEYS[2], 60000)
if #here == 0 then
  return {0, interval}
end

-- Whose turn it is: the earliest start among the partners waiting anywhere.
local turn = nil
for partner, since in pairs(waiting) do
  if now - since > window then
    redis.call('HDEL', KEYS[2], 'w:' .. partner)
  else
    local start = start_of(partner)
    if turn == nil or start < turn then turn = start end
  end
end

local opens = tat - burst
if opens > now then
  return {0, opens - now}
end
local best, best_start = 1, start_of(here[1].partner)
for i = 2, #here do
  local start = start_of(here[i].partner)
  if start < best_start then best, best_start = i, start end
end
-- The turn is elsewhere: leave this call to it, unless it has stood open half an interval.
local opened = stored - burst
if best_start > turn and now - opened < interval / 2 then
  return {0, math.max(1000, math.floor(opened + interval / 2 - now))}
end

local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
local chosen = here[best]
redis.call('HSET', KEYS[2], 'v', string.format('%.17g', best_start), 'f:' .. chosen.partner, string.format('%.17g', best_start + 1 / chosen.weight))
if chosen.count <= 1 then
  redis.call('HDEL', KEYS[2], 'w:' .. chosen.partner)
end
return {best, 0}
"#
    )
});
static TAKE_TURN: LazyLock<Script> = LazyLock::new(|| Script::new(&TAKE_TURN_LUA));

/// [`TAKE_TURN_LUA`]'s ARGV for a budget of `per_second` and the partners `waiting`.
pub(crate) fn take_turn_args(per_second: u32, waiting: &[BudgetWaiter<'_>]) -> Vec<String> {
    let interval_us = 1_000_000 / u64::from(per_second.max(1));
    // A small tolerance lets two processes that asked at almost the same instant both go,
    // without ever exceeding the rate over any second.
    let burst_us = interval_us;
    // A partner counts as waiting while its process asks again within this: a process with
    // calls waiting asks at least once an interval, plus a timer's and a round trip's slack.
    let window_us = 2 * interval_us + 20_000;
    let mut args = vec![
        interval_us.to_string(),
        burst_us.to_string(),
        window_us.to_string(),
    ];
    for waiter in waiting {
        args.push(waiter.partner.to_owned());
        args.push(waiter.weight.max(1).to_string());
        args.push(waiter.calls.to_string());
    }
    args
}

/// [`TAKE_TURN_LUA`]'s reply {granted (1-based, 0 for none), µs to wait} as a [`Turn`] for
/// `waiting` partners.
pub(crate) fn read_turn(granted: i64, wait_us: i64, waiting: usize) -> Turn {
    let index = usize::try_from(granted).ok().and_then(|g| g.checked_sub(1));
    match index {
        Some(index) if index < waiting => Turn::Granted(index),
        _ => Turn::Wait(Duration::from_micros(
            u64::try_from(wait_us).unwrap_or(0).max(1_000),
        )),
    }
}

/// A partner with calls waiting in this process for the budget.
#[derive(Debug, Clone, Copy)]
pub struct BudgetWaiter<'a> {
    /// Empty for calls of no partner (Stripe's events, reconciliation): they share as one.
    pub partner: &'a str,
    pub weight: u32,
    /// How many of its calls wait here.
    pub calls: usize,
}

/// The budget's answer to a process asking for its waiting partners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// One call may go now: for the waiter at this index.
    Granted(usize),
    /// Nobody here may go yet; ask again after this.
    Wait(Duration),
}

impl Store {
    /// Asks the shared budget of `per_second` for one call, on behalf of every partner with
    /// calls waiting in this process: which of them may go now, or how long to wait. One round
    /// trip, whatever the number of partners or calls waiting.
    pub async fn take_stripe_turn(
        &self,
        per_second: u32,
        waiting: &[BudgetWaiter<'_>],
    ) -> Result<Turn, StoreError> {
        let mut script = TAKE_TURN.prepare_invoke();
        script
            .key(self.keys.stripe_budget())
            .key(self.keys.stripe_budget_shares());
        for arg in take_turn_args(per_second, waiting) {
            script.arg(arg);
        }
        let mut connection = self.connection().await?;
        let (granted, wait_us): (i64, i64) =
            with_timeout(script.invoke_async(&mut connection)).await?;
        Ok(read_turn(granted, wait_us, waiting.len()))
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
