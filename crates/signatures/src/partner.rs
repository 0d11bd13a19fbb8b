//! The partner sign (docs/partners.md#the-sign): `signContent`, its MD5 with the partner's secret, and a
//! constant-time check.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// The name of the field that carries the sign; it never counts in `signContent`.
pub const SIGN_FIELD: &str = "sign";

/// `signContent`: the parameters without `sign` and without empty values, as compact JSON with
/// keys in byte order, non-ASCII as raw UTF-8 and `/` unescaped.
///
/// `BTreeMap<String, _>` orders keys by their bytes, which is exactly the order the partner
/// documentation asks for (`"Extra"` before `"email"`). serde_json writes compact JSON, keeps
/// non-ASCII raw and leaves `/` alone, so it produces the documented text byte for byte.
pub fn sign_content<'a, I>(params: I) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let signed: BTreeMap<&str, &str> = params
        .into_iter()
        .filter(|(key, value)| *key != SIGN_FIELD && !value.is_empty())
        .collect();
    // Serializing a map of strings cannot fail.
    serde_json::to_string(&signed).unwrap_or_default()
}

/// The sign of `content` for `secret`: lower-case hex MD5 of the content followed by the secret.
pub fn sign(content: &str, secret: &str) -> String {
    hex::encode(digest(content, secret))
}

/// Whether `given` is the sign of `content` for `secret`. Ignores the case of the hex and
/// compares in constant time, so the answer's timing says nothing about how close a guess was.
pub fn verify(content: &str, secret: &str, given: &str) -> bool {
    let mut given_bytes = [0u8; 16];
    if given.len() != 32 || hex::decode_to_slice(given, &mut given_bytes).is_err() {
        return false;
    }
    digest(content, secret).ct_eq(&given_bytes).into()
}

fn digest(content: &str, secret: &str) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(content.as_bytes());
    hasher.update(secret.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The partner documentation's published /singleVerify example (empty secret).
    const CONTENT: &str = r#"{"deviceCode":"89852420180910340793","languageCode":"1","mark":"0","partnerCode":"P000270","terminal":"1","tradeTime":"1645683857572","tradeType":"singleVerify","url":"https://dist.linksfield.net/login","version":"3.0"}"#;
    const SIGN: &str = "ea7a3bba7e345e0b8ca7f7e3b43d6e72";

    #[test]
    fn the_published_example_signs_as_documented() {
        assert_eq!(sign(CONTENT, ""), SIGN);
    }

    #[test]
    fn verify_ignores_hex_case() {
        assert!(verify(CONTENT, "", &SIGN.to_uppercase()));
    }

    #[test]
    fn verify_rejects_another_secret_a_truncated_sign_and_non_hex() {
        assert!(!verify(CONTENT, "x", SIGN));
        assert!(!verify(CONTENT, "", &SIGN[..31]));
        assert!(!verify(CONTENT, "", &format!("{}zz", &SIGN[..30])));
        assert!(!verify(CONTENT, "", ""));
    }

    #[test]
    fn sign_and_empty_values_stay_out_of_the_content() {
        let content = sign_content([("b", "2"), ("sign", "abc"), ("a", "1"), ("memo", "")]);
        assert_eq!(content, r#"{"a":"1","b":"2"}"#);
    }
}
