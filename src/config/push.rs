//! The push's settings (docs/operations.md#the-partner-push): global `[push]` and each partner's `[partners.push]`,
//! checked at start-up with errors that name the key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{ConfigError, PartnerSettings, invalid};
use crate::domain::push::{self, PushSecret};

/// Global `[push]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// The notifier's probes and metrics.
    pub listen: String,
    /// A whole attempt (connect, send, the answer's status) must end within this.
    pub timeout_secs: f64,
    /// The connection must be made within this.
    pub connect_timeout_secs: f64,
    /// The delays between attempts after the first, each taken within ±20 %.
    pub retry_schedule_secs: Vec<f64>,
    /// Consecutive failures that open a partner's breaker.
    pub breaker_failures: u32,
    /// The first pause of an open breaker, doubled at each reopening up to the maximum.
    pub breaker_cooldown_secs: f64,
    pub breaker_cooldown_max_secs: f64,
    /// Failing without a single 2xx for this long disables a partner's push.
    pub disable_after_hours: f64,
    /// How long the attempt log and what recovery needs are kept.
    pub log_retention_days: u32,
    /// Allow `http://` URLs (a laptop); otherwise only `https://`.
    pub allow_http: bool,
    /// Allow URLs that resolve to loopback, private or link-local addresses (a laptop).
    pub allow_private_networks: bool,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9091".into(),
            timeout_secs: 15.0,
            connect_timeout_secs: 5.0,
            retry_schedule_secs: vec![
                5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0, 86400.0, 86400.0,
            ],
            breaker_failures: 10,
            breaker_cooldown_secs: 30.0,
            breaker_cooldown_max_secs: 600.0,
            disable_after_hours: 120.0,
            log_retention_days: 14,
            allow_http: false,
            allow_private_networks: false,
        }
    }
}

/// A partner's `[partners.push]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerPush {
    pub url: String,
    /// `whsec_…`; each signs every push, so a partner adds the new one, then removes the old.
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// Environment variables that hold further secrets (e.g. from a Kubernetes Secret).
    #[serde(default)]
    pub secrets_env: Vec<String>,
    /// Routing-key patterns of the events pushed (`subscription.*`: all).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Attempts in flight to this partner, per notifier.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u16,
}

fn all_events() -> Vec<String> {
    vec![push::ALL_EVENTS.to_owned()]
}

fn default_max_in_flight() -> u16 {
    16
}

impl PartnerPush {
    /// The keys that sign, in the configured order. `check` has parsed each already.
    pub fn keys(&self) -> Vec<PushSecret> {
        self.secrets
            .iter()
            .filter_map(|secret| PushSecret::parse(secret.expose_secret()).ok())
            .collect()
    }
}

impl PushSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_secs)
    }

    pub fn retry_schedule(&self) -> Vec<Duration> {
        self.retry_schedule_secs
            .iter()
            .map(|secs| Duration::from_secs_f64(*secs))
            .collect()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9091)))
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "push.listen",
                format!("`{}` is not an address like 127.0.0.1:9091", self.listen),
            ));
        }
        let positive = |key: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(invalid(key, "must be above 0"))
            }
        };
        positive("push.timeout_secs", self.timeout_secs)?;
        positive("push.connect_timeout_secs", self.connect_timeout_secs)?;
        positive("push.breaker_cooldown_secs", self.breaker_cooldown_secs)?;
        positive("push.disable_after_hours", self.disable_after_hours)?;
        if self.breaker_cooldown_max_secs < self.breaker_cooldown_secs {
            return Err(invalid(
                "push.breaker_cooldown_max_secs",
                "must not be below push.breaker_cooldown_secs",
            ));
        }
        if self.retry_schedule_secs.is_empty()
            || self
                .retry_schedule_secs
                .iter()
                .any(|secs| !(secs.is_finite() && *secs > 0.0))
        {
            return Err(invalid(
                "push.retry_schedule_secs",
                "must list at least one delay, each above 0",
            ));
        }
        if self.breaker_failures == 0 {
            return Err(invalid("push.breaker_failures", "must be above 0"));
        }
        if self.log_retention_days == 0 {
            return Err(invalid("push.log_retention_days", "must be above 0"));
        }
        Ok(())
    }

    /// Checks a partner's push: its code fits queue names and routing keys, the URL, the
    /// secrets, the patterns.
    pub(super) fn check_partner(
        &self,
        key: &str,
        partner: &PartnerSettings,
        push: &PartnerPush,
    ) -> Result<(), ConfigError> {
        let code_ok = partner
            .code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !code_ok {
            return Err(invalid(
                format!("{key}.code"),
                "a partner with a push needs a code of A-Z a-z 0-9 _ - (it names its queue)",
            ));
        }
        self.check_url(&format!("{key}.push.url"), &push.url)?;
        if push.secrets.is_empty() {
            return Err(invalid(
                format!("{key}.push.secrets"),
                "a push needs at least one secret (whsec_…), here or in secrets_env",
            ));
        }
        for (index, secret) in push.secrets.iter().enumerate() {
            PushSecret::parse(secret.expose_secret())
                .map_err(|reason| invalid(format!("{key}.push.secrets[{index}]"), reason))?;
        }
        if push.events.is_empty() {
            return Err(invalid(
                format!("{key}.push.events"),
                "must list at least one pattern (subscription.* for all)",
            ));
        }
        for pattern in &push.events {
            push::check_pattern(pattern)
                .map_err(|reason| invalid(format!("{key}.push.events"), reason))?;
        }
        if push.max_in_flight == 0 {
            return Err(invalid(
                format!("{key}.push.max_in_flight"),
                "must be above 0",
            ));
        }
        Ok(())
    }

    fn check_url(&self, key: &str, text: &str) -> Result<(), ConfigError> {
        let url = url::Url::parse(text)
            .map_err(|e| invalid(key, format!("`{text}` is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(invalid(
                    key,
                    "must be https:// (set push.allow_http = true for a laptop)",
                ));
            }
            other => return Err(invalid(key, format!("scheme `{other}` is not http(s)"))),
        }
        let Some(host) = url.host() else {
            return Err(invalid(key, "names no host"));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(key, "must not carry credentials"));
        }
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        if let Some(ip) = literal
            && !self.allow_private_networks
            && !is_public(ip)
        {
            return Err(invalid(
                key,
                format!(
                    "{ip} is a loopback, private or link-local address (set \
                     push.allow_private_networks = true for a laptop)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether a push may connect to `ip`.
    pub fn may_connect(&self, ip: IpAddr) -> bool {
        self.allow_private_networks || is_public(ip)
    }
}

/// Not loopback, private, link-local, unspecified, shared (CGNAT), multicast or broadcast; for
/// IPv6 also unique-local and IPv4-mapped addresses of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10, carrier-grade NAT; 0.0.0.0/8.
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Reads each pushing partner's `secrets_env` variables into its secrets.
pub(super) fn resolve_env(
    partners: &mut [PartnerSettings],
    read: impl Fn(String, &str) -> Result<SecretString, ConfigError>,
) -> Result<(), ConfigError> {
    for (index, partner) in partners.iter_mut().enumerate() {
        let Some(push) = partner.push.as_mut() else {
            continue;
        };
        for variable in &push.secrets_env {
            let secret = read(format!("partners[{index}].push.secrets_env"), variable)?;
            push.secrets.push(secret);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }
}
