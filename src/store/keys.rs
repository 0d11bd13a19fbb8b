//! Redis key names, in one place.

use md5::{Digest, Md5};

use crate::domain::request::PayId;

fn digest(text: &str) -> String {
    hex::encode(&Md5::digest(text.as_bytes())[..12])
}

/// Builds every key under one prefix. The payId sits in braces: Redis Cluster hashes only the
/// braced part, so all keys of one payId land in one slot.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The intake's record of a payId (a hash).
    pub fn intake(&self, pay_id: &PayId) -> String {
        format!("{}:intake:{{{}}}", self.prefix, pay_id)
    }

    /// The final result of a payId (a JSON string).
    pub fn result(&self, pay_id: &PayId) -> String {
        format!("{}:result:{{{}}}", self.prefix, pay_id)
    }

    /// What was sent for a payId's subscription create (JSON), written before it is sent.
    pub fn created(&self, pay_id: &PayId) -> String {
        format!("{}:created:{{{}}}", self.prefix, pay_id)
    }

    /// The Stripe customer of (partner, email). Hashed: an email may hold braces, and the hash
    /// is the key's hash tag.
    pub fn customer(&self, partner: &str, email: &str) -> String {
        format!(
            "{}:customer:{{{}}}",
            self.prefix,
            digest(&format!("{partner}\n{email}"))
        )
    }

    /// The SetupIntent answered to a partner's authorization of a payId (JSON).
    pub fn authorization(&self, partner: &str, pay_id: &PayId) -> String {
        format!("{}:authorization:{{{}}}:{}", self.prefix, pay_id, partner)
    }

    /// The short lock on creating one price.
    pub fn price_lock(&self, lookup_key: &str) -> String {
        format!("{}:price-lock:{{{}}}", self.prefix, digest(lookup_key))
    }

    /// The worker's lock on a payId.
    pub fn lock(&self, pay_id: &PayId) -> String {
        format!("{}:lock:{{{}}}", self.prefix, pay_id)
    }

    /// The state of a payId's auto-renewal, kept current by the webhooks (a hash).
    pub fn renewal(&self, pay_id: &PayId) -> String {
        format!("{}:renewal:{{{}}}", self.prefix, pay_id)
    }

    /// The cancels asked for a payId, one claim per `when` (a hash).
    pub fn cancel(&self, pay_id: &PayId) -> String {
        format!("{}:cancel:{{{}}}", self.prefix, pay_id)
    }

    /// A Stripe event the intake took (or is taking), by its id: de-duplicates deliveries.
    pub fn stripe_event(&self, event_id: &str) -> String {
        format!("{}:stripe-event:{{{}}}", self.prefix, event_id)
    }

    /// A partner's intake rate.
    pub fn partner_rate(&self, partner: &str) -> String {
        format!("{}:rate:{{{}}}", self.prefix, partner)
    }

    /// The shared Stripe request budget.
    pub fn stripe_budget(&self) -> String {
        format!("{}:stripe-budget", self.prefix)
    }
}
