//! Limits and faults: the request-rate limiter, latency, random faults at configured shares,
//! and scripted answers for tests ("fail twice with 500, then succeed").
//!
//! Three kinds of 500, by what Stripe keeps of the request (its idempotency docs: a result is
//! saved once the endpoint started executing, "including 500 errors"):
//! - `error_rate` / `error`: refused before anything runs; nothing is saved under the key, so
//!   a retry with the same key executes;
//! - `saved_error_rate` / `saved_error`: the endpoint started and failed; nothing is written,
//!   but the 500 is saved under the key, so every retry with that key and those parameters
//!   gets the same 500 back (`Idempotent-Replayed: true`), and only a new key executes;
//! - `lost_response_rate` / `lost_response`: the write happened and the success is saved; the
//!   client gets a 500 (or a dropped connection), a retry with the key the saved success.
//!
//! They apply to the Stripe API routes only; `/_sim/*` is never limited or faulted, so a
//! test can always read the stats and change the configuration.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Stripe's documented default limits, in requests per second.
pub const STRIPE_TEST_RATE: f64 = 25.0;
pub const STRIPE_LIVE_RATE: f64 = 100.0;

/// The faults and limits in force; `GET /_sim/config` shows it, `PATCH` changes any field.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Token-bucket rate limit in requests per second; 0 turns it off.
    pub rate_limit_per_second: f64,
    /// Bucket size in requests; `None`: a tenth of a second's worth (at least 1), so a burst
    /// cannot carry a measured rate far above the configured one.
    pub rate_limit_burst: Option<f64>,
    /// Latency before each answer: its median and 99th percentile (log-normal between them).
    /// Equal values give a fixed latency.
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    /// Share of requests answered 500 `api_error` before anything runs; nothing is saved.
    pub error_rate: f64,
    /// Share of requests whose endpoint starts and fails with a 500 `api_error`: nothing is
    /// written, and the 500 is saved under the idempotency key (replayed to every retry with
    /// that key and parameters). A request without a key just gets the 500.
    pub saved_error_rate: f64,
    /// Share of requests answered 429 `rate_limit` regardless of the limiter.
    pub rate_limit_error_rate: f64,
    /// Share of requests that hang for `hang_ms` (longer than a client's timeout), then 500.
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// Share of requests whose write happens but whose answer is lost (`lost_response_mode`).
    pub lost_response_rate: f64,
    pub lost_response_mode: LostMode,
    /// Search endpoints miss objects younger than this, as Stripe's eventually consistent
    /// search does (up to a minute there).
    pub search_delay_ms: u64,
    /// When decline test cards decline: at `attach` (Stripe checks a card when it is
    /// attached to a customer) or only at `charge` (to drill the subscription decline path).
    pub declines_at: DeclinesAt,
    /// What a well-formed `pm_…` id that the simulator never saw is: a good card
    /// (`good_card`, so real partner payloads run in the demo) or `missing` (404).
    pub unknown_payment_methods: UnknownPaymentMethods,
    /// How invoices name their subscription (docs/partners.md#the-rest-of-an-auto-renewals-life: the worker reads both).
    pub invoice_shape: InvoiceShape,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            rate_limit_per_second: 0.0,
            rate_limit_burst: None,
            latency_p50_ms: 0,
            latency_p99_ms: 0,
            error_rate: 0.0,
            saved_error_rate: 0.0,
            rate_limit_error_rate: 0.0,
            hang_rate: 0.0,
            hang_ms: 60_000,
            lost_response_rate: 0.0,
            lost_response_mode: LostMode::Error,
            search_delay_ms: 0,
            declines_at: DeclinesAt::Attach,
            unknown_payment_methods: UnknownPaymentMethods::GoodCard,
            invoice_shape: InvoiceShape::Current,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LostMode {
    /// The client gets a 500 `api_error`.
    Error,
    /// The connection drops mid-answer.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DeclinesAt {
    Attach,
    Charge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPaymentMethods {
    GoodCard,
    Missing,
}

/// Where an invoice names its subscription. Stripe moved it in API version 2025-03-31
/// ("basil"); an account's webhook endpoints pinned to an older version still get the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceShape {
    /// `parent.subscription_details.{subscription, metadata}` (basil and later).
    Current,
    /// Top-level `subscription`, `subscription_details.metadata` and `payment_intent` (before
    /// basil).
    Legacy,
    /// Both at once.
    Both,
}

impl FaultConfig {
    /// Rejects what would make the simulator misbehave rather than fault on purpose.
    pub fn check(&self) -> Result<(), String> {
        let shares = [
            ("error_rate", self.error_rate),
            ("saved_error_rate", self.saved_error_rate),
            ("rate_limit_error_rate", self.rate_limit_error_rate),
            ("hang_rate", self.hang_rate),
            ("lost_response_rate", self.lost_response_rate),
        ];
        for (name, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be between 0 and 1, got {share}"));
            }
        }
        if !(self.rate_limit_per_second.is_finite() && self.rate_limit_per_second >= 0.0) {
            return Err("rate_limit_per_second must be 0 (off) or positive".into());
        }
        if let Some(burst) = self.rate_limit_burst
            && !(burst.is_finite() && burst >= 1.0)
        {
            return Err("rate_limit_burst must be at least 1".into());
        }
        if self.latency_p99_ms < self.latency_p50_ms {
            return Err("latency_p99_ms must not be below latency_p50_ms".into());
        }
        Ok(())
    }

    fn burst(&self) -> f64 {
        self.rate_limit_burst
            .unwrap_or((self.rate_limit_per_second / 10.0).max(1.0))
    }

    /// One latency sample. Log-normal: the median is p50, and p99 sits 2.326 standard
    /// deviations above it in log space, which gives the long tail real APIs show.
    pub fn latency(&self) -> Duration {
        let (p50, p99) = (self.latency_p50_ms as f64, self.latency_p99_ms as f64);
        if p99 <= p50 || p50 <= 0.0 {
            return Duration::from_millis(self.latency_p50_ms);
        }
        let sigma = (p99 / p50).ln() / 2.326;
        // Box–Muller: two uniforms in (0, 1] give one standard normal.
        let (u1, u2) = (1.0 - fastrand::f64(), fastrand::f64());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let ms = (p50 * (sigma * normal).exp()).min(p99 * 10.0);
        Duration::from_micros((ms * 1000.0) as u64)
    }
}

/// A token bucket. Refilled lazily on each take, so it costs nothing while idle.
#[derive(Debug)]
pub struct Limiter {
    tokens: f64,
    last: Instant,
}

impl Default for Limiter {
    /// A full bucket.
    fn default() -> Self {
        Limiter {
            tokens: f64::MAX,
            last: Instant::now(),
        }
    }
}

impl Limiter {
    /// Takes one token if the configured rate allows it.
    pub fn take(&mut self, config: &FaultConfig, now: Instant) -> bool {
        let rate = config.rate_limit_per_second;
        if rate <= 0.0 {
            return true;
        }
        let burst = config.burst();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        // The epsilon absorbs float drift: ten refills of 0.1 must make a whole token.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }
}

/// One scripted answer, taken in order by requests to its route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// Answer normally (and skip the random faults for this request).
    Pass,
    /// Answer normally after `ms` milliseconds (holding an idempotency key as in flight).
    Delay { ms: u64 },
    /// An error without executing: `status` (default 500), Stripe `type`, `code`,
    /// `decline_code`, `message`.
    Error {
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        decline_code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// A 429 `rate_limit`, as the limiter gives.
    RateLimit,
    /// Start executing, then fail with a 500 `api_error` saved under the idempotency key:
    /// nothing is written, and retries with the same key get the same 500.
    SavedError,
    /// Hang `ms` milliseconds (default: the configured `hang_ms`), then 500 without executing.
    Hang {
        #[serde(default)]
        ms: Option<u64>,
    },
    /// Execute (the write happens), then lose the answer: 500, or a dropped connection.
    LostResponse {
        #[serde(default)]
        mode: Option<LostMode>,
    },
}

fn default_status() -> u16 {
    500
}

/// Scripted answers by route: `"POST /v1/subscriptions"` (a template, `{id}` for ids), a
/// concrete `"GET /v1/customers/cus_123"`, or `"*"` for every API route.
#[derive(Debug, Default)]
pub struct Scripts {
    queues: HashMap<String, VecDeque<Answer>>,
}

impl Scripts {
    pub fn push(&mut self, route: String, answers: Vec<Answer>) {
        self.queues.entry(route).or_default().extend(answers);
    }

    /// The next scripted answer for a request: the concrete path first, then its template,
    /// then `*`.
    pub fn next(&mut self, concrete: &str, template: &str) -> Option<Answer> {
        for key in [concrete, template, "*"] {
            if let Some(queue) = self.queues.get_mut(key)
                && let Some(answer) = queue.pop_front()
            {
                if queue.is_empty() {
                    self.queues.remove(key);
                }
                return Some(answer);
            }
        }
        None
    }

    pub fn pending(&self) -> &HashMap<String, VecDeque<Answer>> {
        &self.queues
    }

    pub fn clear(&mut self) {
        self.queues.clear();
    }
}

/// What the fault stage decided for one request, before it reaches the handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Run normally after `latency`; `lost` loses the answer after the write.
    Run {
        latency: Duration,
        lost: Option<LostMode>,
    },
    /// Claim the idempotency key after `latency`, then fail with a 500 saved under it.
    SavedError {
        latency: Duration,
    },
    RateLimited {
        spurious: bool,
    },
    Error(Answer),
    Hang(Duration),
}

/// Picks this request's fate from the random shares (no script applies).
pub fn roll(config: &FaultConfig) -> Plan {
    let hit = |share: f64| share > 0.0 && fastrand::f64() < share;
    if hit(config.rate_limit_error_rate) {
        return Plan::RateLimited { spurious: true };
    }
    if hit(config.hang_rate) {
        return Plan::Hang(Duration::from_millis(config.hang_ms));
    }
    if hit(config.error_rate) {
        return Plan::Error(Answer::Error {
            status: 500,
            kind: None,
            code: None,
            decline_code: None,
            message: None,
        });
    }
    if hit(config.saved_error_rate) {
        return Plan::SavedError {
            latency: config.latency(),
        };
    }
    let lost = hit(config.lost_response_rate).then_some(config.lost_response_mode);
    Plan::Run {
        latency: config.latency(),
        lost,
    }
}

/// Turns a scripted answer into this request's fate.
pub fn from_script(answer: Answer, config: &FaultConfig) -> Plan {
    match answer {
        Answer::Pass => Plan::Run {
            latency: Duration::ZERO,
            lost: None,
        },
        Answer::Delay { ms } => Plan::Run {
            latency: Duration::from_millis(ms),
            lost: None,
        },
        Answer::RateLimit => Plan::RateLimited { spurious: true },
        Answer::SavedError => Plan::SavedError {
            latency: Duration::ZERO,
        },
        Answer::Hang { ms } => Plan::Hang(Duration::from_millis(ms.unwrap_or(config.hang_ms))),
        Answer::LostResponse { mode } => Plan::Run {
            latency: Duration::ZERO,
            lost: Some(mode.unwrap_or(config.lost_response_mode)),
        },
        error @ Answer::Error { .. } => Plan::Error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_allows_its_burst_then_its_rate() {
        let config = FaultConfig {
            rate_limit_per_second: 10.0,
            ..FaultConfig::default()
        };
        let mut limiter = Limiter::default();
        let start = Instant::now();
        let allowed = (0..100).filter(|_| limiter.take(&config, start)).count();
        assert_eq!(
            allowed, 1,
            "a burst of a tenth of a second at 10/s is one request"
        );
        let later = start + Duration::from_millis(1000);
        let allowed = (0..100).filter(|_| limiter.take(&config, later)).count();
        assert_eq!(allowed, 1, "the bucket never holds more than its burst");
        let mut limiter = Limiter::default();
        let allowed = (0..=100)
            .filter(|n| limiter.take(&config, start + Duration::from_millis(n * 10)))
            .count();
        assert_eq!(allowed, 11, "one second at 10/s plus the first token");
    }

    #[test]
    fn latency_samples_have_the_configured_median() {
        let config = FaultConfig {
            latency_p50_ms: 20,
            latency_p99_ms: 200,
            ..FaultConfig::default()
        };
        let mut samples: Vec<Duration> = (0..4001).map(|_| config.latency()).collect();
        samples.sort();
        let median = samples[2000].as_secs_f64() * 1000.0;
        let p99 = samples[3960].as_secs_f64() * 1000.0;
        assert!((15.0..25.0).contains(&median), "median {median} ms");
        assert!((120.0..320.0).contains(&p99), "p99 {p99} ms");
    }

    #[test]
    fn scripts_are_taken_in_order_concrete_path_first() {
        let mut scripts = Scripts::default();
        scripts.push(
            "POST /v1/customers".into(),
            vec![Answer::RateLimit, Answer::Pass],
        );
        scripts.push("*".into(), vec![Answer::Delay { ms: 1 }]);
        assert_eq!(
            scripts.next("POST /v1/customers", "POST /v1/customers"),
            Some(Answer::RateLimit)
        );
        assert_eq!(
            scripts.next("POST /v1/customers", "POST /v1/customers"),
            Some(Answer::Pass)
        );
        assert_eq!(
            scripts.next("POST /v1/customers", "POST /v1/customers"),
            Some(Answer::Delay { ms: 1 })
        );
        assert_eq!(
            scripts.next("POST /v1/customers", "POST /v1/customers"),
            None
        );
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        let config = FaultConfig {
            error_rate: 1.5,
            ..FaultConfig::default()
        };
        assert!(config.check().is_err());
    }
}
