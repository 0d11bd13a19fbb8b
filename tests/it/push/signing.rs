//! Our push signature, checked by the Standard Webhooks reference library (docs/partners.md#what-arrives): a
//! receiver that is not ours verifies it unchanged, with each of a partner's secrets.

use autorenew::domain::push::{self, PushSecret};
use reqwest::header::{HeaderMap, HeaderValue};

/// The headers of one push, as the notifier sends them.
pub fn push_headers(secrets: &[PushSecret], id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = |text: String| HeaderValue::from_str(&text).expect("a header value");
    headers.insert(push::ID_HEADER, value(id.to_owned()));
    headers.insert(push::TIMESTAMP_HEADER, value(timestamp.to_string()));
    headers.insert(
        push::SIGNATURE_HEADER,
        value(push::signature(secrets, id, timestamp, body)),
    );
    headers
}

#[test]
fn the_reference_library_verifies_our_signature_with_each_secret() {
    let old = PushSecret::encode(&[1; 24]);
    let new = PushSecret::encode(&[2; 64]);
    let keys: Vec<PushSecret> = [&new, &old]
        .iter()
        .map(|s| PushSecret::parse(s).expect("a secret"))
        .collect();
    let body = br#"{"specversion":"1.0","id":"P1:succeeded","data":{"payId":"P1"}}"#;
    let id = push::webhook_id("P1:succeeded");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let headers = push_headers(&keys, &id, now, body);

    for secret in [&old, &new] {
        let receiver =
            standardwebhooks::Webhook::new(secret).expect("the library reads our secret");
        receiver
            .verify(body, &headers)
            .expect("the reference library verifies the push");
    }
    let stranger = standardwebhooks::Webhook::new(&PushSecret::encode(&[3; 32])).expect("secret");
    assert!(stranger.verify(body, &headers).is_err());
    let tampered = br#"{"specversion":"1.0","id":"P1:succeeded","data":{"payId":"P2"}}"#;
    let receiver = standardwebhooks::Webhook::new(&old).expect("secret");
    assert!(receiver.verify(tampered, &headers).is_err());
}
