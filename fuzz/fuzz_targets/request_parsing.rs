//! Arbitrary bytes as a `/stripeSubDirectly` or `/resultQuery` body: parsing never panics, and
//! whatever parses round-trips: written back out as JSON with a fresh sign, it parses to the
//! same request with the same fields, signContent and fingerprint, and its sign verifies.

#![no_main]

use std::collections::BTreeMap;

use autorenew_fuzz::fields::SignedFields;
use autorenew_fuzz::request::{ResultQuery, SubscriptionRequest};
use autorenew_fuzz::sign;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret";

fuzz_target!(|body: &[u8]| {
    if let Ok((request, fields)) = SubscriptionRequest::parse(body) {
        let (again, again_fields) = SubscriptionRequest::parse(&resigned(&fields))
            .expect("a parsed request, re-signed, parses again");
        assert_eq!(again, request);
        check_fields(&fields, &again_fields);
    }
    if let Ok((query, fields)) = ResultQuery::parse(body) {
        let (again, again_fields) = ResultQuery::parse(&resigned(&fields))
            .expect("a parsed query, re-signed, parses again");
        assert_eq!(again, query);
        check_fields(&fields, &again_fields);
    }
});

/// The fields as a JSON body, signed afresh with `SECRET`.
fn resigned(fields: &SignedFields) -> Vec<u8> {
    let sign = sign::sign(&fields.sign_content(), SECRET);
    let mut body: BTreeMap<&str, &str> = fields.iter().collect();
    body.insert(sign::SIGN_FIELD, &sign);
    serde_json::to_vec(&body).expect("a map of strings")
}

fn check_fields(first: &SignedFields, again: &SignedFields) {
    // As the intake checks a sign: signContent, then the sign of the secret.
    assert!(sign::verify(
        &again.sign_content(),
        SECRET,
        again.get(sign::SIGN_FIELD)
    ));
    assert_eq!(again.sign_content(), first.sign_content());
    assert_eq!(again.fingerprint(), first.fingerprint());
    let without_sign = |f: &SignedFields| -> Vec<(String, String)> {
        f.iter()
            .filter(|(k, _)| *k != sign::SIGN_FIELD)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    assert_eq!(without_sign(again), without_sign(first));
}
