//! Amounts and currencies: a partner's decimal `payAmount` in a `payCurrency`, turned exactly into
//! the minor units Stripe charges in.

use std::fmt;

/// Currencies Stripe charges in with no minor unit: `payAmount` is a whole number.
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies with three decimals.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// ISO 4217 codes that Stripe accepts for charges (Stripe's "supported currencies" list).
const STRIPE_CURRENCIES: &[&str] = &[
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bgn", "bhd", "bif", "bmd", "bnd", "bob", "brl", "bsd", "bwp", "byn", "bzd", "cad", "cdf",
    "chf", "clp", "cny", "cop", "crc", "cve", "czk", "djf", "dkk", "dop", "dzd", "egp", "etb",
    "eur", "fjd", "fkp", "gbp", "gel", "gip", "gmd", "gnf", "gtq", "gyd", "hkd", "hnl", "htg",
    "huf", "idr", "ils", "inr", "isk", "jmd", "jod", "jpy", "kes", "kgs", "khr", "kmf", "krw",
    "kwd", "kyd", "kzt", "lak", "lbp", "lkr", "lrd", "lsl", "mad", "mdl", "mga", "mkd", "mmk",
    "mnt", "mop", "mur", "mvr", "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok", "npr",
    "nzd", "omr", "pab", "pen", "pgk", "php", "pkr", "pln", "pyg", "qar", "ron", "rsd", "rub",
    "rwf", "sar", "sbd", "scr", "sek", "sgd", "shp", "sle", "sos", "srd", "std", "szl", "thb",
    "tjs", "tnd", "top", "try", "ttd", "twd", "tzs", "uah", "ugx", "usd", "uyu", "uzs", "vnd",
    "vuv", "wst", "xaf", "xcd", "xof", "xpf", "yer", "zar", "zmw",
];

/// The largest amount Stripe takes in one charge, in minor units (eight digits).
pub const STRIPE_MAX_MINOR: i64 = 99_999_999;

/// A currency Stripe accepts, held in Stripe's lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(&'static str);

impl Currency {
    /// Parses an ISO 4217 code in either case.
    pub fn parse(code: &str) -> Option<Self> {
        if code.len() != 3 || !code.is_ascii() {
            return None;
        }
        let lower = code.to_ascii_lowercase();
        STRIPE_CURRENCIES
            .iter()
            .find(|known| **known == lower)
            .map(|known| Currency(known))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// How many decimals an amount in this currency may have.
    pub fn decimals(&self) -> u32 {
        if ZERO_DECIMAL.contains(&self.0) {
            0
        } else if THREE_DECIMAL.contains(&self.0) {
            3
        } else {
            2
        }
    }
}

/// An amount in minor units as a decimal string in its currency, as partners write `payAmount`
/// (`1999` usd → `19.99`, `500` jpy → `500`).
pub fn decimal_string(minor: i64, currency: Currency) -> String {
    let decimals = currency.decimals();
    if decimals == 0 {
        return minor.to_string();
    }
    let scale = 10_i64.pow(decimals);
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    let scale = scale.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = decimals as usize
    )
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Why a `payAmount` is not a chargeable amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a positive decimal number such as 19.99")]
    NotDecimal,
    #[error("must be above zero")]
    NotPositive,
    #[error("has {given} decimals; {currency} allows {allowed}")]
    TooManyDecimals {
        given: usize,
        allowed: u32,
        currency: Currency,
    },
    #[error("is above Stripe's largest charge ({STRIPE_MAX_MINOR} minor units)")]
    TooLarge,
}

/// An amount in minor units of a currency: what Stripe's `unit_amount` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amount {
    minor: i64,
    currency: Currency,
}

impl Amount {
    /// Parses a decimal string without rounding: `"19.99"` in usd is 1999; `"19.999"` is an error.
    pub fn parse(decimal: &str, currency: Currency) -> Result<Self, AmountError> {
        let (whole, fraction) = match decimal.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (decimal, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            return Err(AmountError::NotDecimal);
        }
        let fraction = fraction.unwrap_or("");
        let allowed = currency.decimals();
        if fraction.len() > allowed as usize {
            return Err(AmountError::TooManyDecimals {
                given: fraction.len(),
                allowed,
                currency,
            });
        }
        // Leading zeros are harmless ("019.99"), but a long run of digits must not overflow.
        let whole = whole.trim_start_matches('0');
        if whole.len() > 12 {
            return Err(AmountError::TooLarge);
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| AmountError::NotDecimal)?
        };
        let mut minor = whole * 10_i64.pow(allowed);
        let mut scale = 10_i64.pow(allowed);
        for digit in fraction.bytes() {
            scale /= 10;
            minor += i64::from(digit - b'0') * scale;
        }
        if minor == 0 {
            return Err(AmountError::NotPositive);
        }
        if minor > STRIPE_MAX_MINOR {
            return Err(AmountError::TooLarge);
        }
        Ok(Amount { minor, currency })
    }

    pub fn minor_units(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_read_back_as_the_partner_writes_them() {
        let currency = |code| Currency::parse(code).expect("a currency");

        assert_eq!(decimal_string(1999, currency("usd")), "19.99");
        assert_eq!(decimal_string(5, currency("usd")), "0.05");
        assert_eq!(decimal_string(500, currency("jpy")), "500");
        assert_eq!(decimal_string(1500, currency("bhd")), "1.500");
    }

    fn usd() -> Currency {
        Currency::parse("USD").expect("usd is a Stripe currency")
    }

    #[test]
    fn currencies_parse_in_either_case_and_unknown_ones_do_not() {
        assert_eq!(usd().as_str(), "usd");
        assert_eq!(Currency::parse("jpy").map(|c| c.decimals()), Some(0));
        assert_eq!(Currency::parse("KWD").map(|c| c.decimals()), Some(3));
        assert_eq!(Currency::parse("xyz"), None);
        assert_eq!(Currency::parse("us"), None);
        assert_eq!(Currency::parse("ｕｓｄ"), None);
    }

    #[test]
    fn decimals_convert_exactly_to_minor_units() {
        assert_eq!(
            Amount::parse("19.99", usd()).map(|a| a.minor_units()),
            Ok(1999)
        );
        assert_eq!(
            Amount::parse("19.9", usd()).map(|a| a.minor_units()),
            Ok(1990)
        );
        assert_eq!(
            Amount::parse("20", usd()).map(|a| a.minor_units()),
            Ok(2000)
        );
        assert_eq!(Amount::parse("0.01", usd()).map(|a| a.minor_units()), Ok(1));
        let kwd = Currency::parse("kwd").expect("kwd");
        assert_eq!(
            Amount::parse("1.234", kwd).map(|a| a.minor_units()),
            Ok(1234)
        );
        let jpy = Currency::parse("jpy").expect("jpy");
        assert_eq!(Amount::parse("500", jpy).map(|a| a.minor_units()), Ok(500));
    }

    #[test]
    fn bad_amounts_say_why() {
        let jpy = Currency::parse("jpy").expect("jpy");
        assert!(matches!(
            Amount::parse("5.5", jpy),
            Err(AmountError::TooManyDecimals { allowed: 0, .. })
        ));
        assert!(matches!(
            Amount::parse("19.999", usd()),
            Err(AmountError::TooManyDecimals { allowed: 2, .. })
        ));
        for bad in [
            "", "-1", "+1", "1e3", ".5", "5.", "1,00", " 1", "0x10", "١٢",
        ] {
            assert_eq!(
                Amount::parse(bad, usd()),
                Err(AmountError::NotDecimal),
                "{bad:?}"
            );
        }
        assert_eq!(Amount::parse("0.00", usd()), Err(AmountError::NotPositive));
        assert_eq!(Amount::parse("1000000", usd()), Err(AmountError::TooLarge));
        assert_eq!(
            Amount::parse("99999999999999999999999", usd()),
            Err(AmountError::TooLarge)
        );
    }
}
