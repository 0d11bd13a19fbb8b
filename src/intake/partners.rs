//! The configured partners: their secrets (several during a rotation) and intake rates.

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};

use crate::config::PartnerSettings;

/// One partner as the intake sees it.
#[derive(Debug, Clone)]
pub struct Partner {
    /// Every secret that verifies its sign; `SecretString`s, so no log line can print one.
    pub secrets: Vec<SecretString>,
    /// Requests per second it may send; 0 for no limit.
    pub rate_limit_per_second: u32,
}

impl Partner {
    /// Whether the sign of `fields` verifies with any of the partner's secrets.
    pub fn verifies(&self, fields: &crate::domain::SignedFields) -> bool {
        let content = fields.sign_content();
        let given = fields.get(crate::domain::sign::SIGN_FIELD);
        // Every secret is tried, so the time taken does not tell which one matched.
        self.secrets.iter().fold(false, |matched, secret| {
            crate::domain::sign::verify(&content, secret.expose_secret(), given) | matched
        })
    }
}

/// Partner code → partner.
#[derive(Debug, Clone, Default)]
pub struct Partners {
    partners: HashMap<String, Partner>,
}

impl Partners {
    /// Builds the registry, warning once for every partner whose sign proves integrity only.
    pub fn new(settings: &[PartnerSettings], default_rate: u32) -> Self {
        let mut partners = HashMap::new();
        for partner in settings {
            if partner.secret.expose_secret().is_empty() {
                tracing::warn!(
                    partner = %partner.code,
                    "partner has an empty secret: its sign proves integrity only, not who sent it"
                );
            }
            partners.insert(
                partner.code.clone(),
                Partner {
                    secrets: partner.valid_secrets().cloned().collect(),
                    rate_limit_per_second: partner.rate_limit_per_second.unwrap_or(default_rate),
                },
            );
        }
        Partners { partners }
    }

    pub fn get(&self, code: &str) -> Option<&Partner> {
        self.partners.get(code)
    }
}
