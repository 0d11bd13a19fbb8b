//! Redis key names, in one place.

use md5::{Digest, Md5};

use crate::domain::request::PayKey;

fn digest(text: &str) -> String {
    hex::encode(&Md5::digest(text.as_bytes())[..12])
}

/// Builds every key under one prefix. A payId's keys carry its partner and payId in braces
/// (`autorenew:result:{P000818:ENV1}`): Redis Cluster hashes only the braced part, so all keys
/// of one payId land in one slot, and two partners' payIds never share a key.
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

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The intake's record of a payId (a hash).
    pub fn intake(&self, pay_key: &PayKey) -> String {
        format!("{}:intake:{{{}}}", self.prefix, pay_key)
    }

    /// The final result of a payId (a JSON string).
    pub fn result(&self, pay_key: &PayKey) -> String {
        format!("{}:result:{{{}}}", self.prefix, pay_key)
    }

    /// What was sent for a payId's subscription create (JSON), written before it is sent.
    pub fn created(&self, pay_key: &PayKey) -> String {
        format!("{}:created:{{{}}}", self.prefix, pay_key)
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
    pub fn authorization(&self, pay_key: &PayKey) -> String {
        format!("{}:authorization:{{{}}}", self.prefix, pay_key)
    }

    /// The short lock on creating one price.
    pub fn price_lock(&self, lookup_key: &str) -> String {
        format!("{}:price-lock:{{{}}}", self.prefix, digest(lookup_key))
    }

    /// The worker's lock on a payId.
    pub fn lock(&self, pay_key: &PayKey) -> String {
        format!("{}:lock:{{{}}}", self.prefix, pay_key)
    }

    /// The state of a payId's auto-renewal, kept current by the webhooks (a hash).
    pub fn renewal(&self, pay_key: &PayKey) -> String {
        format!("{}:renewal:{{{}}}", self.prefix, pay_key)
    }

    /// The cancels asked for a payId, one claim per `when` (a hash).
    pub fn cancel(&self, pay_key: &PayKey) -> String {
        format!("{}:cancel:{{{}}}", self.prefix, pay_key)
    }

    /// A Stripe event the intake took (or is taking), by its id: de-duplicates deliveries.
    pub fn stripe_event(&self, event_id: &str) -> String {
        format!("{}:stripe-event:{{{}}}", self.prefix, event_id)
    }

    /// A partner's intake rate.
    pub fn partner_rate(&self, partner: &str) -> String {
        format!("{}:rate:{{{}}}", self.prefix, partner)
    }

    /// A key of a partner's push (docs/partners.md#the-push-signed-notifications-to-your-url): its notifications, their attempts and indexes,
    /// its breaker. The partner is the hash tag, so a script sees all of them on a cluster.
    pub fn push(&self, partner: &str, rest: &str) -> String {
        self.push_of(partner, &[rest])
    }

    /// [`Keys::push`] with `rest` in parts (`["n:", webhook_id]`), joined without `format!`:
    /// the notifier names nine keys for each delivery.
    pub fn push_of(&self, partner: &str, rest: &[&str]) -> String {
        const TAG: (&str, &str) = (":push:{", "}:");
        let len = self.prefix.len()
            + TAG.0.len()
            + partner.len()
            + TAG.1.len()
            + rest.iter().map(|part| part.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(&self.prefix);
        key.push_str(TAG.0);
        key.push_str(partner);
        key.push_str(TAG.1);
        for part in rest {
            key.push_str(part);
        }
        key
    }

    /// The shared Stripe request budget.
    pub fn stripe_budget(&self) -> String {
        format!("{}:stripe-budget", self.prefix)
    }

    /// The partners' shares of the Stripe budget (a hash). Its hash tag is the budget key's
    /// whole name, so on Redis Cluster both sit in one slot and one script reads both.
    pub fn stripe_budget_shares(&self) -> String {
        format!("{{{}}}:shares", self.stripe_budget())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_key_in_parts_is_the_same_key() {
        let keys = Keys::new("autorenew");
        assert_eq!(keys.push("P1", "state"), "autorenew:push:{P1}:state");
        assert_eq!(
            keys.push_of("P1", &["n:", "msg_0a"]),
            keys.push("P1", "n:msg_0a")
        );
    }
}
