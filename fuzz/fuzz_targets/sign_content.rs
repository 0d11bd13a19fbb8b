//! `signContent` (docs/partners.md#the-sign) for arbitrary key/value pairs: never panics, and is compact JSON
//! that reads back as exactly the pairs without `sign` and empty values, keys in byte order,
//! non-ASCII raw; a sign made over it verifies, in either hex case, and only for its secret.

#![no_main]

use std::collections::BTreeMap;
use std::fmt;

use autorenew_fuzz::sign;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, MapAccess, Visitor};

fuzz_target!(|input: (Vec<(String, String)>, String)| {
    let (pairs, secret) = input;
    let content = sign::sign_content(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));

    // What it must hold: the last non-empty value of each key but `sign`.
    let mut expected = BTreeMap::new();
    for (key, value) in &pairs {
        if key != sign::SIGN_FIELD && !value.is_empty() {
            expected.insert(key.clone(), value.clone());
        }
    }

    let read = in_order(&content);
    let keys: Vec<&String> = read.iter().map(|(k, _)| k).collect();
    assert!(
        keys.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()),
        "keys not in strict byte order: {content}"
    );
    let read: BTreeMap<String, String> = read.into_iter().collect();
    assert_eq!(read, expected, "content does not hold the pairs: {content}");

    // Compact: exactly serde_json's compact form of the same map, no whitespace between tokens.
    assert_eq!(
        content,
        serde_json::to_string(&expected).expect("a map of strings")
    );
    // Non-ASCII stays raw UTF-8 (never \u escapes) and `/` is never escaped: JSON's own tokens
    // hold neither, so each one in the pairs appears as itself, and only there.
    let in_pairs = |keep: fn(char) -> bool| -> usize {
        let count = |s: &String| s.chars().filter(|c| keep(*c)).count();
        expected.iter().map(|(k, v)| count(k) + count(v)).sum()
    };
    let in_content = |keep: fn(char) -> bool| content.chars().filter(|c| keep(*c)).count();
    assert_eq!(in_content(|c| !c.is_ascii()), in_pairs(|c| !c.is_ascii()));
    assert_eq!(in_content(|c| c == '/'), in_pairs(|c| c == '/'));

    let signed = sign::sign(&content, &secret);
    assert_eq!(signed.len(), 32);
    assert!(sign::verify(&content, &secret, &signed));
    assert!(sign::verify(&content, &secret, &signed.to_uppercase()));
    assert!(!sign::verify(&content, &format!("{secret}x"), &signed));
    assert!(!sign::verify(&content, &secret, &signed[..31]));
});

/// The object's pairs in the order the text has them (a map would sort them itself).
fn in_order(content: &str) -> Vec<(String, String)> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry::<String, String>()? {
                out.push(pair);
            }
            Ok(out)
        }
    }
    let mut reader = serde_json::Deserializer::from_str(content);
    let pairs = reader
        .deserialize_map(Pairs)
        .unwrap_or_else(|e| panic!("signContent is not a JSON object of strings ({e}): {content}"));
    reader.end().expect("nothing after the object");
    pairs
}
