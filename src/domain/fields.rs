//! A request body as the partner sent it: a JSON object of string values, read strictly (no key
//! twice, nothing but strings), which is what the sign is computed over.

use std::collections::BTreeMap;
use std::fmt;

use md5::{Digest, Md5};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::sign::{self, SIGN_FIELD};

/// Why a body is not a request we can read. Each names its field where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Not JSON, not an object, or a key given twice.
    #[error("{0}")]
    Body(String),
    /// A required field is absent, null or empty.
    #[error("`{field}` is required")]
    Missing { field: String },
    /// A field is present but wrong.
    #[error("`{field}` {reason}")]
    Invalid { field: String, reason: String },
}

impl FieldError {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        FieldError::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            FieldError::Body(_) => None,
            FieldError::Missing { field } | FieldError::Invalid { field, .. } => Some(field),
        }
    }
}

/// The string fields of a request, keys in byte order. Null values are dropped (they never count
/// in the sign); every other value is a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFields(BTreeMap<String, String>);

impl SignedFields {
    /// Reads a body, checks that `required` fields are present and non-empty (in that order),
    /// and that every value is a string.
    pub fn parse(body: &[u8], required: &[&str]) -> Result<Self, FieldError> {
        let object = parse_object(body)?;
        for field in required {
            match object.get(*field) {
                None | Some(Value::Null) => return Err(missing(field)),
                Some(Value::String(s)) if s.is_empty() => return Err(missing(field)),
                Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(FieldError::invalid(
                        field,
                        format!("must be a string, not {}", json_type(other)),
                    ));
                }
            }
        }
        let mut fields = BTreeMap::new();
        for (key, value) in object {
            match value {
                Value::String(s) => {
                    fields.insert(key, s);
                }
                Value::Null => {}
                other => {
                    return Err(FieldError::invalid(
                        &key,
                        format!("must be a string, not {}", json_type(&other)),
                    ));
                }
            }
        }
        Ok(SignedFields(fields))
    }

    /// A field that `parse` was told is required; empty when it is not there.
    pub fn get(&self, field: &str) -> &str {
        self.0.get(field).map(String::as_str).unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `signContent` of these fields (docs/partners.md#the-sign).
    pub fn sign_content(&self) -> String {
        sign::sign_content(self.iter())
    }

    /// What makes two requests "the same request" (docs/partners.md#what-to-do-with-each-answer): every non-empty field but `sign`
    /// and `tradeTime`, which a partner's retry renews. MD5 is enough here: the request is already
    /// signed by the partner, so this only tells a retry from a different request.
    pub fn fingerprint(&self) -> String {
        let content = sign::sign_content(self.iter().filter(|(key, _)| *key != "tradeTime"));
        hex::encode(Md5::digest(content.as_bytes()))
    }

    /// The fields that no rule knows, kept so that the job carries what was signed.
    pub fn extras<'a>(&'a self, known: &'a [&str]) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.iter()
            .filter(move |(key, _)| *key != SIGN_FIELD && !known.contains(key))
    }
}

fn missing(field: &str) -> FieldError {
    FieldError::Missing {
        field: field.to_owned(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a JSON object, refusing a key given twice: with duplicates, the partner's sign and our
/// reading of the body could disagree about which value counts.
fn parse_object(body: &[u8]) -> Result<BTreeMap<String, Value>, FieldError> {
    let value: StrictObject = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        if message.contains("must be a JSON object") {
            FieldError::Body("body must be a JSON object".into())
        } else if message.contains("given twice") {
            FieldError::Body(strip_position(&message))
        } else {
            FieldError::Body(format!("body is not valid JSON: {message}"))
        }
    })?;
    Ok(value.0)
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

struct StrictObject(BTreeMap<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("body must be a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictObject, A::Error> {
                let mut object = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if object.contains_key(&key) {
                        return Err(de::Error::custom(format!("key `{key}` is given twice")));
                    }
                    let value: Value = map.next_value()?;
                    object.insert(key, value);
                }
                Ok(StrictObject(object))
            }
        }

        deserializer.deserialize_any(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_a_body_error() {
        let err = SignedFields::parse(br#"{"a":"1","a":"2"}"#, &[]).unwrap_err();
        assert_eq!(err, FieldError::Body("key `a` is given twice".into()));
    }

    #[test]
    fn non_objects_and_non_json_are_body_errors() {
        for body in [
            &b"[1]"[..],
            b"\"x\"",
            b"12",
            b"{",
            b"",
            b"\xef\xbb\xbf{}",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                matches!(SignedFields::parse(body, &[]), Err(FieldError::Body(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn required_fields_are_checked_in_order_and_typed() {
        let err = SignedFields::parse(br#"{"b":"","a":1}"#, &["a", "b"]).unwrap_err();
        assert_eq!(err.field(), Some("a"));
        assert!(matches!(err, FieldError::Invalid { .. }));
        let err = SignedFields::parse(br#"{"a":"x","b":null}"#, &["a", "b"]).unwrap_err();
        assert_eq!(err, FieldError::Missing { field: "b".into() });
    }

    #[test]
    fn an_extra_non_string_value_names_its_key() {
        let err = SignedFields::parse(br#"{"a":"x","extra":{"k":1}}"#, &["a"]).unwrap_err();
        assert_eq!(err.field(), Some("extra"));
    }

    #[test]
    fn the_fingerprint_ignores_sign_and_trade_time_only() {
        let a = SignedFields::parse(br#"{"p":"1","sign":"aa","tradeTime":"1"}"#, &[]).unwrap();
        let b = SignedFields::parse(br#"{"p":"1","sign":"bb","tradeTime":"2"}"#, &[]).unwrap();
        let c = SignedFields::parse(br#"{"p":"2","sign":"aa","tradeTime":"1"}"#, &[]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
