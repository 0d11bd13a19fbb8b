//! The configured partners and their secrets.

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};

use crate::config::PartnerSettings;

/// Partner code → secret. Secrets stay `SecretString`s, so no log line can print one.
#[derive(Debug, Clone, Default)]
pub struct Partners {
    secrets: HashMap<String, SecretString>,
}

impl Partners {
    /// Builds the registry, warning once for every partner whose sign proves integrity only.
    pub fn new(settings: &[PartnerSettings]) -> Self {
        let mut secrets = HashMap::new();
        for partner in settings {
            if partner.secret.expose_secret().is_empty() {
                tracing::warn!(
                    partner = %partner.code,
                    "partner has an empty secret: its sign proves integrity only, not who sent it"
                );
            }
            secrets.insert(partner.code.clone(), partner.secret.clone());
        }
        Partners { secrets }
    }

    /// The secret of a configured partner.
    pub fn secret(&self, code: &str) -> Option<&SecretString> {
        self.secrets.get(code)
    }
}
