//! Stripe's documented test payment methods (`pm_card_visa`, `pm_card_chargeDeclined…`) and
//! how each behaves when attached and when charged.
//!
//! Like Stripe, a test id is a recipe, not an object: every retrieve or attach of
//! `pm_card_visa` mints a new PaymentMethod with a fresh `pm_…` id, and callers must carry on
//! with the id they got back. Any other well-formed `pm_…` id is taken as a card the partner's
//! front end already created in Stripe: it materialises on first use under its own id, is a
//! good card, and can be attached to one customer only.

use super::errors::ApiError;

/// How a card answers a charge (and, for cards Stripe declines at setup, an attach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    Good,
    Decline {
        code: &'static str,
        decline_code: &'static str,
        message: &'static str,
        /// Stripe checks a card when it is attached to a customer; most decline test cards
        /// fail that check, `pm_card_chargeCustomerFail` passes it and fails only on charge.
        on_attach: bool,
    },
}

impl Behaviour {
    pub fn error(&self) -> Option<ApiError> {
        match self {
            Behaviour::Good => None,
            Behaviour::Decline {
                code,
                decline_code,
                message,
                ..
            } => Some(ApiError::card_declined(code, decline_code, message)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub brand: &'static str,
    pub last4: &'static str,
    pub funding: &'static str,
    pub exp_year: i64,
    pub fingerprint: String,
    pub behaviour: Behaviour,
}

const DECLINED: &str = "Your card was declined.";

/// The card behind a Stripe test id, or `None` when `id` is not one.
pub fn test_card(id: &str) -> Option<Card> {
    // `pm_card_visa_chargeDeclined…` and `pm_card_chargeDeclined…` name the same cards.
    let name = id.strip_prefix("pm_card_")?;
    let name = name
        .strip_prefix("visa_")
        .filter(|n| n.starts_with("charge"))
        .unwrap_or(name);
    let good = |brand, last4, funding| Some((brand, last4, funding, Behaviour::Good));
    let decline = |last4, code, decline_code, message, on_attach| {
        Some((
            "visa",
            last4,
            "credit",
            Behaviour::Decline {
                code,
                decline_code,
                message,
                on_attach,
            },
        ))
    };
    let (brand, last4, funding, behaviour) = match name {
        "visa" | "us" => good("visa", "4242", "credit"),
        "visa_debit" => good("visa", "5556", "debit"),
        "mastercard" => good("mastercard", "4444", "credit"),
        "mastercard_debit" => good("mastercard", "8210", "debit"),
        "mastercard_prepaid" => good("mastercard", "5100", "prepaid"),
        "amex" => good("amex", "8431", "credit"),
        "discover" => good("discover", "1117", "credit"),
        "diners" => good("diners", "0004", "credit"),
        "jcb" => good("jcb", "0505", "credit"),
        "unionpay" => good("unionpay", "0005", "credit"),
        "chargeDeclined" => decline("0002", "card_declined", "generic_decline", DECLINED, true),
        "chargeDeclinedInsufficientFunds" => decline(
            "9995",
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
            true,
        ),
        "chargeDeclinedLostCard" => decline("9987", "card_declined", "lost_card", DECLINED, true),
        "chargeDeclinedStolenCard" => {
            decline("9979", "card_declined", "stolen_card", DECLINED, true)
        }
        "chargeDeclinedFraudulent" => {
            decline("0019", "card_declined", "fraudulent", DECLINED, true)
        }
        "chargeDeclinedExpiredCard" => decline(
            "0069",
            "expired_card",
            "expired_card",
            "Your card has expired.",
            true,
        ),
        "chargeDeclinedIncorrectCvc" => decline(
            "0127",
            "incorrect_cvc",
            "incorrect_cvc",
            "Your card's security code is incorrect.",
            true,
        ),
        "chargeDeclinedProcessingError" => decline(
            "0119",
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
            true,
        ),
        "chargeCustomerFail" => {
            decline("0341", "card_declined", "generic_decline", DECLINED, false)
        }
        _ => None,
    }?;
    Some(Card {
        brand,
        last4,
        funding,
        exp_year: 2034,
        fingerprint: format!("sim{last4}{brand}"),
        behaviour,
    })
}

/// A partner's own `pm_…` id: `pm_` then letters, digits and `_`, as Stripe's ids are.
pub fn is_well_formed(id: &str) -> bool {
    id.strip_prefix("pm_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 250
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// The good card a partner's own `pm_…` id stands for.
pub fn partner_card(id: &str) -> Card {
    Card {
        brand: "visa",
        last4: "4242",
        funding: "credit",
        exp_year: 2034,
        fingerprint: format!("sim{}", id.len()),
        behaviour: Behaviour::Good,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_a_decline_card_decline_the_same_way() {
        let a = test_card("pm_card_chargeDeclinedInsufficientFunds").expect("known");
        let b = test_card("pm_card_visa_chargeDeclinedInsufficientFunds").expect("known");
        assert_eq!(a.behaviour, b.behaviour);
        let error = a.behaviour.error().expect("declines");
        assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
    }

    #[test]
    fn unknown_test_names_are_not_test_cards() {
        assert!(test_card("pm_card_nonsense").is_none());
        assert!(test_card("pm_1GnMUDLnVNBddzslXw7xuoe6").is_none());
    }

    #[test]
    fn only_stripe_shaped_ids_are_well_formed() {
        assert!(is_well_formed("pm_1GnMUDLnVNBddzslXw7xuoe6"));
        assert!(!is_well_formed("pm_"));
        assert!(!is_well_formed("card_123"));
        assert!(!is_well_formed("pm_a/b"));
    }
}
