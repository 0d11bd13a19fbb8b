//! Settings: `config.toml` layered under `AUTORENEW__SECTION__KEY` environment variables (docs/operations.md#configuration).
//!
//! Loading checks every value once, at start-up, and names the offending key, so a bad
//! deployment stops before it takes a request instead of failing on the first one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod push;
pub use push::{PartnerPush, PushSettings, is_public};

/// The default configuration file, at the repository root.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";
/// Prefix of the environment variables that override the file: `AUTORENEW__AMQP__URL`.
pub const ENV_PREFIX: &str = "AUTORENEW";

/// A configuration that cannot run, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `#[source]`: the message already holds the cause, and a chain printed with `{:#}`
    /// would say it twice.
    #[error("configuration: {0}")]
    Load(config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl From<config::ConfigError> for ConfigError {
    fn from(error: config::ConfigError) -> Self {
        ConfigError::Load(error)
    }
}

/// The keys whose value is a list. From the environment each is comma-separated
/// (`AUTORENEW__AMQP__RETRY_DELAYS_MS=1000,2000`); every other value stays one string, commas
/// and all (`amqp.url` names a cluster's nodes with commas, and is one string). A list key added
/// to [`Settings`] belongs here. `[[partners]]` entries are a list of tables, which variables
/// cannot address: their secrets come from the environment through `secret_env` / `secrets_env`.
pub const LIST_KEYS: &[&str] = &["amqp.retry_delays_ms", "stripe.webhook_secrets"];

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub intake: IntakeSettings,
    #[serde(default)]
    pub amqp: AmqpSettings,
    #[serde(default)]
    pub redis: RedisSettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub stripe: StripeSettings,
    #[serde(default)]
    pub partners: Vec<PartnerSettings>,
    #[serde(default)]
    pub plans: BTreeMap<String, PlanSettings>,
    #[serde(default)]
    pub log: LogSettings,
    /// The partner push (docs/operations.md#the-partner-push).
    #[serde(default)]
    pub push: PushSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntakeSettings {
    pub listen: String,
    /// Largest accepted request body; larger ones get 413 `BODY_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// Allowed distance between `tradeTime` and the server's clock; 0 turns the check off.
    pub max_clock_skew_ms: u64,
    /// Cap on `Prefer: wait=N`.
    pub max_wait_secs: u64,
    /// How long a request may wait for the broker's confirm (or for Redis) before it gets a 503.
    pub publish_timeout_ms: u64,
    /// How long a client may take to send its whole request before it is cut off (slow clients).
    pub request_timeout_ms: u64,
    /// Requests per second one partner may send, shared by every intake through Redis, so one
    /// partner's flood cannot starve the others; 0 turns the limit off. A partner's own
    /// `rate_limit_per_second` overrides it.
    pub partner_rate_limit_per_second: u32,
    /// Most client connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 16 * 1024,
            max_clock_skew_ms: 300_000,
            max_wait_secs: 30,
            publish_timeout_ms: 1_500,
            request_timeout_ms: 10_000,
            partner_rate_limit_per_second: 1_000,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: SecretString,
    /// Names every exchange and queue: `<prefix>.jobs`, `<prefix>.dead`, …
    pub prefix: String,
    /// Delays of the delayed-retry queues, shortest first.
    pub retry_delays_ms: Vec<u64>,
    /// How long a job parked for reconciliation (its outcome unknown when its retries were
    /// spent) waits before it is looked up again.
    pub reconcile_delay_ms: u64,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefix: "autorenew".into(),
            retry_delays_ms: vec![10_000, 60_000, 600_000, 3_600_000],
            reconcile_delay_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretString,
    /// Starts every Redis key, so deployments and test runs can share one Redis.
    pub key_prefix: String,
    /// The retention: how long a payId is kept once its subscription has ended or its creation
    /// failed. A live subscription's payId never expires.
    pub record_ttl_secs: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            key_prefix: "autorenew".into(),
            record_ttl_secs: 30 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Jobs one worker process works on at once. One partner's lane may hold three quarters of
    /// them, so the rest stay free for the other partners' jobs.
    pub concurrency: u16,
    /// The worker's probes and metrics.
    pub listen: String,
    /// Quick retries of one Stripe step (exponential backoff with jitter) before the job goes to
    /// a delayed-retry queue.
    pub step_retries: u32,
    pub retry_min_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// How long a worker's lock on a payId lives without being extended.
    pub lock_ttl_ms: u64,
    /// A job whose payId is locked by another worker waits this long in the lock-retry queue.
    pub lock_retry_delay_ms: u64,
    /// On SIGTERM, how long jobs in hand may take to finish before they are handed back.
    pub drain_timeout_secs: u64,
    /// Deprecated, accepted and ignored (start-up logs a warning). It once set how old a
    /// payId's last create had to be before a new idempotency key was used; no such window is
    /// safe, since Stripe may still be executing a request long after any client timeout. A
    /// new key now needs Stripe's own definitive answer under the old one, or its 24 h key
    /// retention to have passed (docs/operations.md).
    pub key_switch_after_ms: Option<u64>,
    /// How long a job may go on while Stripe cannot answer before it ends `STRIPE_UNAVAILABLE`
    /// (once a lookup has shown nothing was made). Until then it stays `processing`: parked and
    /// tried again, never answered `F` for an outage that may still pass. Seconds, or a number
    /// with a unit: `86400`, `24h`, `1d`.
    pub give_up_after: HumanDuration,
}

/// A span of time as people write it in a configuration: a number of seconds (`86400`) or a
/// number with a unit (`90s`, `15m`, `24h`, `1d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Seconds(seconds) => Ok(HumanDuration(Duration::from_secs(seconds))),
            Written::Text(text) => parse_duration(&text)
                .map(HumanDuration)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `86400`, `90s`, `15m`, `72h`, `3d`: a plain number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let malformed =
        || format!("`{text}`: give seconds, or a number and a unit, s, m, h or d (e.g. 24h)");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| malformed())?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(malformed()),
    };
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(malformed)
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 32,
            listen: "127.0.0.1:9090".into(),
            step_retries: 4,
            retry_min_delay_ms: 200,
            retry_max_delay_ms: 5_000,
            lock_ttl_ms: 30_000,
            lock_retry_delay_ms: 2_000,
            drain_timeout_secs: 20,
            key_switch_after_ms: None,
            give_up_after: HumanDuration(Duration::from_secs(86_400)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeSettings {
    /// Empty: `autorenew run` starts the built-in simulator.
    pub secret_key: SecretString,
    /// Empty: Stripe's own API.
    pub api_base: String,
    /// The publishable key (`pk_…`) that `/stripeSubAuthorization` hands the partner's app,
    /// for Stripe's SDK to confirm the SetupIntent with (docs/partners.md#before-the-request-stripesubauthorization). Not a secret.
    pub publishable_key: String,
    pub max_requests_per_second: u32,
    /// Speak HTTP/2 to a plain `http://` `api_base` straight away (h2c with prior knowledge),
    /// so all calls in flight share one connection; the built-in simulator speaks it. Over
    /// `https://` (Stripe's own API) HTTP/2 is negotiated whatever this says.
    pub http2_prior_knowledge: bool,
    /// How long one Stripe call may take before its outcome counts as unknown.
    pub request_timeout_ms: u64,
    /// `payment_behavior` of new subscriptions: `error_if_incomplete` (a declined first charge
    /// fails the job) or `allow_incomplete` (it makes an `incomplete` subscription).
    pub payment_behavior: String,
    /// The signing secrets (`whsec_…`) of the webhook endpoint(s) that deliver to
    /// `POST /stripe/webhook`; any of them may match (a secret roll). Empty: that route answers
    /// 404. From the environment: `AUTORENEW__STRIPE__WEBHOOK_SECRETS=whsec_a,whsec_b`.
    pub webhook_secrets: Vec<SecretString>,
    /// A delivery signed longer ago (or further ahead) than this is refused, against replays.
    pub webhook_tolerance_secs: u64,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            secret_key: SecretString::from(""),
            api_base: String::new(),
            publishable_key: String::new(),
            max_requests_per_second: 25,
            http2_prior_knowledge: false,
            request_timeout_ms: 10_000,
            payment_behavior: "error_if_incomplete".into(),
            webhook_secrets: Vec::new(),
            webhook_tolerance_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerSettings {
    pub code: String,
    #[serde(default = "empty_secret")]
    pub secret: SecretString,
    /// Further secrets that verify too: during a rotation the old and the new one are both
    /// valid, so the partner can switch whenever it likes.
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// The name of an environment variable that holds the secret (e.g. from a Kubernetes
    /// Secret); when set, it replaces `secret`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Environment variables that hold further valid secrets (a rotation's old secret, kept in
    /// the same secret store as the current one).
    #[serde(default)]
    pub secrets_env: Vec<String>,
    #[serde(default)]
    pub allow_empty_secret: bool,
    /// This partner's intake rate (requests/s); unset: `intake.partner_rate_limit_per_second`.
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
    /// Where and how this partner's results are pushed (docs/partners.md#the-push-signed-notifications-to-your-url); none: no push.
    #[serde(default)]
    pub push: Option<PartnerPush>,
    /// This partner's share of Stripe's rate while other partners' jobs wait too (1 to
    /// 1000, default 1): partners with jobs waiting share the calls in proportion to their
    /// weights; a partner alone takes them all (docs/design.md, "Partners served in turn").
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl PartnerSettings {
    pub fn new(code: &str, secret: &str) -> Self {
        PartnerSettings {
            code: code.to_owned(),
            secret: SecretString::from(secret),
            secrets: Vec::new(),
            secret_env: None,
            secrets_env: Vec::new(),
            allow_empty_secret: false,
            rate_limit_per_second: None,
            push: None,
            weight: default_weight(),
        }
    }

    /// Every secret that verifies this partner's sign, the current one first.
    pub fn valid_secrets(&self) -> impl Iterator<Item = &SecretString> {
        std::iter::once(&self.secret).chain(self.secrets.iter())
    }
}

fn empty_secret() -> SecretString {
    SecretString::from("")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSettings {
    #[serde(default)]
    pub price: Option<String>,
    #[serde(default = "default_interval")]
    pub interval: String,
}

fn default_interval() -> String {
    "month".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter, e.g. `info,autorenew=debug`; `RUST_LOG` wins when set.
    pub filter: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            json: false,
        }
    }
}

impl Settings {
    /// Loads `path` (or `config.toml` when it exists), then the process environment on top.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Settings::load`], with the environment given as a map (tests) instead of the process's.
    pub fn load_with_env(
        path: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match path {
            Some(path) => builder = builder.add_source(config::File::from(path).required(true)),
            None => {
                builder = builder.add_source(
                    config::File::with_name(DEFAULT_CONFIG_FILE)
                        .format(config::FileFormat::Toml)
                        .required(false),
                )
            }
        }
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let environment = environment.source(env.clone());
        let mut settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.resolve_secret_env(env.as_ref())?;
        settings.check()?;
        Ok(settings)
    }

    /// Reads each partner's `secret_env` variable into its secret.
    fn resolve_secret_env(
        &mut self,
        env: Option<&std::collections::HashMap<String, String>>,
    ) -> Result<(), ConfigError> {
        let read = |key: String, variable: &str| -> Result<SecretString, ConfigError> {
            let value = match env {
                Some(map) => map.get(variable).cloned(),
                None => std::env::var(variable).ok(),
            };
            value.map(SecretString::from).ok_or_else(|| {
                invalid(key, format!("environment variable `{variable}` is not set"))
            })
        };
        for (index, partner) in self.partners.iter_mut().enumerate() {
            if let Some(variable) = &partner.secret_env {
                partner.secret = read(format!("partners[{index}].secret_env"), variable)?;
            }
            for variable in &partner.secrets_env {
                let secret = read(format!("partners[{index}].secrets_env"), variable)?;
                partner.secrets.push(secret);
            }
        }
        push::resolve_env(&mut self.partners, read)
    }

    /// Settings that are accepted but no longer do anything, each with what to do instead: for
    /// start-up to log once logging runs.
    pub fn deprecations(&self) -> Vec<String> {
        let mut deprecated = Vec::new();
        if let Some(ms) = self.worker.key_switch_after_ms {
            deprecated.push(format!(
                "worker.key_switch_after_ms ({ms}) is deprecated and ignored: a new idempotency \
                 key is used only after Stripe's definitive answer under the old one, or once \
                 its 24 h key retention has passed (docs/operations.md); remove the setting"
            ));
        }
        deprecated
    }

    /// Checks what serde cannot: addresses, ranges, partner secrets, plan intervals.
    pub fn check(&self) -> Result<(), ConfigError> {
        parse_addr("intake.listen", &self.intake.listen)?;
        parse_addr("worker.listen", &self.worker.listen)?;
        if self.intake.max_body_bytes < 256 {
            return Err(invalid("intake.max_body_bytes", "must be at least 256"));
        }
        if self.intake.publish_timeout_ms == 0 {
            return Err(invalid("intake.publish_timeout_ms", "must be above 0"));
        }
        if self.intake.max_connections == 0 {
            return Err(invalid("intake.max_connections", "must be above 0"));
        }
        if self.intake.request_timeout_ms == 0 {
            return Err(invalid("intake.request_timeout_ms", "must be above 0"));
        }
        check_name("amqp.prefix", &self.amqp.prefix)?;
        check_name("redis.key_prefix", &self.redis.key_prefix)?;
        let nodes: Vec<&str> = self
            .amqp
            .url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .collect();
        if nodes
            .iter()
            .any(|node| !(node.starts_with("amqp://") || node.starts_with("amqps://")))
        {
            return Err(invalid(
                "amqp.url",
                "must be amqp:// or amqps:// URLs (several, comma-separated, for a cluster's nodes)",
            ));
        }
        if self.amqp.retry_delays_ms.is_empty() || self.amqp.retry_delays_ms.contains(&0) {
            return Err(invalid(
                "amqp.retry_delays_ms",
                "must list at least one delay, each above 0",
            ));
        }
        // Several URLs, comma-separated, name a Redis Cluster's nodes.
        let redis_ok = self
            .redis
            .url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .all(|url| {
                url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://")
            });
        if !redis_ok {
            return Err(invalid(
                "redis.url",
                "must be redis://, rediss:// or unix:// URLs (several, comma-separated, for a cluster's nodes)",
            ));
        }
        if self.worker.concurrency == 0 {
            return Err(invalid("worker.concurrency", "must be above 0"));
        }
        if self.worker.lock_ttl_ms < 1_000 {
            return Err(invalid("worker.lock_ttl_ms", "must be at least 1000"));
        }
        if self.worker.lock_retry_delay_ms == 0 {
            return Err(invalid("worker.lock_retry_delay_ms", "must be above 0"));
        }
        if self.worker.retry_min_delay_ms > self.worker.retry_max_delay_ms {
            return Err(invalid(
                "worker.retry_min_delay_ms",
                "must not be above worker.retry_max_delay_ms",
            ));
        }
        if self.stripe.request_timeout_ms == 0 {
            return Err(invalid("stripe.request_timeout_ms", "must be above 0"));
        }
        if self.worker.give_up_after.0.is_zero() {
            return Err(invalid("worker.give_up_after", "must be above 0"));
        }
        if self.amqp.reconcile_delay_ms == 0 {
            return Err(invalid("amqp.reconcile_delay_ms", "must be above 0"));
        }
        if !matches!(
            self.stripe.payment_behavior.as_str(),
            "error_if_incomplete"
                | "allow_incomplete"
                | "default_incomplete"
                | "pending_if_incomplete"
        ) {
            return Err(invalid(
                "stripe.payment_behavior",
                "must be error_if_incomplete, allow_incomplete, default_incomplete or pending_if_incomplete",
            ));
        }
        if self.stripe.max_requests_per_second == 0 {
            return Err(invalid("stripe.max_requests_per_second", "must be above 0"));
        }
        let api_base = self.stripe.api_base.trim();
        if !(api_base.is_empty()
            || api_base.starts_with("http://")
            || api_base.starts_with("https://"))
        {
            return Err(invalid(
                "stripe.api_base",
                "must be empty (Stripe's own API) or an http(s):// URL",
            ));
        }
        let key = self.stripe.secret_key.expose_secret();
        if !(key.is_empty() || key.starts_with("sk_") || key.starts_with("rk_")) {
            return Err(invalid(
                "stripe.secret_key",
                "must be a Stripe secret key (sk_…) or restricted key (rk_…)",
            ));
        }
        if self
            .stripe
            .webhook_secrets
            .iter()
            .any(|secret| !secret.expose_secret().starts_with("whsec_"))
        {
            return Err(invalid(
                "stripe.webhook_secrets",
                "must be webhook endpoint signing secrets (whsec_…)",
            ));
        }
        if self.stripe.webhook_tolerance_secs == 0 {
            return Err(invalid("stripe.webhook_tolerance_secs", "must be above 0"));
        }
        self.push.check()?;
        self.check_partners()?;
        for (plan_id, plan) in &self.plans {
            if !matches!(plan.interval.as_str(), "day" | "week" | "month" | "year") {
                return Err(invalid(
                    format!("plans.{plan_id}.interval"),
                    "must be day, week, month or year",
                ));
            }
            if let Some(price) = &plan.price
                && !price.starts_with("price_")
                && !price.starts_with("plan_")
            {
                return Err(invalid(
                    format!("plans.{plan_id}.price"),
                    "must be a Stripe price id (price_…)",
                ));
            }
        }
        Ok(())
    }

    fn check_partners(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (index, partner) in self.partners.iter().enumerate() {
            let key = format!("partners[{index}]");
            if partner.code.trim().is_empty() {
                return Err(invalid(format!("{key}.code"), "must not be empty"));
            }
            // The code names the partner's queue, and a request can only carry such a code.
            if crate::domain::request::PartnerCode::parse(&partner.code).is_err() {
                return Err(invalid(
                    format!("{key}.code"),
                    "must be at most 64 of A-Z a-z 0-9 _ -",
                ));
            }
            if !(1..=1000).contains(&partner.weight) {
                return Err(invalid(
                    format!("{key}.weight"),
                    "must be between 1 and 1000",
                ));
            }
            if !seen.insert(partner.code.as_str()) {
                return Err(invalid(
                    format!("{key}.code"),
                    format!("partner `{}` is configured twice", partner.code),
                ));
            }
            if partner.secrets.iter().any(|s| s.expose_secret().is_empty()) {
                return Err(invalid(
                    format!("{key}.secrets"),
                    "must not hold an empty secret",
                ));
            }
            if partner.secret.expose_secret().is_empty() && !partner.allow_empty_secret {
                return Err(invalid(
                    format!("{key}.secret"),
                    format!(
                        "partner `{}` has an empty secret; set allow_empty_secret = true to accept that",
                        partner.code
                    ),
                ));
            }
            if let Some(push) = &partner.push {
                self.push.check_partner(&key, partner, push)?;
            }
        }
        Ok(())
    }

    pub fn intake_listen(&self) -> SocketAddr {
        // `check` has parsed it already; the fallback is never taken for a loaded Settings.
        self.intake
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn worker_listen(&self) -> SocketAddr {
        self.worker
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9090)))
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.intake.publish_timeout_ms)
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address like 127.0.0.1:8080"),
        )
    })
}

/// Prefixes become parts of queue names and Redis keys: keep them to a safe alphabet.
fn check_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, "must be 1-64 characters of A-Z a-z 0-9 - _ ."))
    }
}
