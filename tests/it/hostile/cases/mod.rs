//! The hostile cases, generated: each is a request as bytes on the wire and the answer
//! docs/partners.md#refusals says it deserves. Built programmatically (every field × bad values, every truncation
//! point, nesting depths, sizes around the limit, each control character, look-alike keys, …)
//! so that a new field or rule is covered by adding it to one list.

mod encoding;
mod fields;
mod queries;
mod signing;
mod syntax;
mod transport;

use std::collections::BTreeMap;

use autorenew::domain::request::{RESULT_QUERY_FIELDS, SUBSCRIPTION_FIELDS};
use autorenew::domain::sign;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::helpers::{OTHER_PARTNER, OTHER_SECRET, PARTNER, SECRET, now_millis, valid_request};

pub const SUBSCRIBE: &str = "/stripeSubDirectly";
pub const QUERY: &str = "/resultQuery";

/// The answer a case deserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// 200 with `operateCode` `S`.
    Accepted,
    /// This status, `errorCode` and `field` ("" where the answer names no field).
    Refused(u16, &'static str, &'static str),
}

/// How the body goes on the wire.
#[derive(Debug, Clone)]
pub enum Body {
    /// With a Content-Length.
    Sized(Vec<u8>),
    /// Chunked, in pieces of this many bytes: the server cannot know the size up front.
    Chunked(Vec<u8>, usize),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub category: &'static str,
    pub name: String,
    pub method: Method,
    pub path: String,
    /// Raw header bytes (None: no Content-Type header at all).
    pub content_type: Option<Vec<u8>>,
    /// Other headers, raw.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    pub body: Body,
    pub expect: Expect,
}

impl Case {
    fn new(category: &'static str, name: impl Into<String>, body: Vec<u8>, expect: Expect) -> Self {
        Case {
            category,
            name: name.into(),
            method: Method::POST,
            path: SUBSCRIBE.into(),
            content_type: Some(b"application/json".to_vec()),
            headers: Vec::new(),
            body: Body::Sized(body),
            expect,
        }
    }

    fn to(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }

    fn content_type(mut self, content_type: Option<&[u8]>) -> Self {
        self.content_type = content_type.map(<[u8]>::to_vec);
        self
    }

    fn header(mut self, name: &'static str, value: &[u8]) -> Self {
        self.headers.push((name, value.to_vec()));
        self
    }

    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    fn chunked(mut self, piece: usize) -> Self {
        if let Body::Sized(bytes) = self.body {
            self.body = Body::Chunked(bytes, piece);
        }
        self
    }
}

// The answers, by name.
const OK: Expect = Expect::Accepted;
const BODY_INVALID: Expect = Expect::Refused(400, "BODY_INVALID", "");
const SIGN_INVALID: Expect = Expect::Refused(401, "SIGN_INVALID", "sign");
const EXPIRED: Expect = Expect::Refused(401, "TRADE_TIME_EXPIRED", "tradeTime");
const TOO_LARGE: Expect = Expect::Refused(413, "BODY_TOO_LARGE", "");
const UNSUPPORTED: Expect = Expect::Refused(415, "CONTENT_TYPE_UNSUPPORTED", "");
const PAY_ID_UNKNOWN: Expect = Expect::Refused(404, "PAY_ID_UNKNOWN", "payId");

fn missing(field: &'static str) -> Expect {
    Expect::Refused(400, "PARAM_MISSING", field)
}

fn invalid(field: &'static str) -> Expect {
    Expect::Refused(400, "PARAM_INVALID", field)
}

// ---- Building bodies ----------------------------------------------------------------------

/// A valid subscription for a fresh payId, with a fresh tradeTime, unsigned.
fn fresh() -> Map<String, Value> {
    let mut request = valid_request();
    request["tradeTime"] = json!(now_millis().to_string());
    match request {
        Value::Object(map) => map,
        _ => unreachable!("valid_request is an object"),
    }
}

/// A valid resultQuery for `pay_id` of `partner`, unsigned.
fn query(partner: &str, pay_id: &str) -> Map<String, Value> {
    match json!({
        "partnerCode": partner,
        "payId": pay_id,
        "tradeTime": now_millis().to_string(),
        "tradeType": "resultQuery",
        "version": "3.0",
    }) {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

/// Signs exactly these fields (unlike `helpers::signed`, adds no tradeTime): the sign over
/// every string value but `sign`, as the partner documentation says.
fn sign_map(mut map: Map<String, Value>, secret: &str) -> Map<String, Value> {
    map.remove("sign");
    let strings: BTreeMap<&str, &str> = map
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s)))
        .collect();
    let content = sign::sign_content(strings);
    map.insert("sign".into(), json!(sign::sign(&content, secret)));
    map
}

fn bytes(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).expect("a map serializes")
}

fn signed_bytes(map: Map<String, Value>) -> Vec<u8> {
    bytes(&sign_map(map, SECRET))
}

/// A body of raw `key: value` tokens, exactly as given (they need not be valid JSON).
fn raw_object(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"{".to_vec();
    for (index, (key, value)) in entries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    out
}

/// The JSON tokens of a signed valid request, key by key.
fn tokens(map: &Map<String, Value>) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.iter()
        .map(|(k, v)| {
            (
                serde_json::to_vec(k).expect("key"),
                serde_json::to_vec(v).expect("value"),
            )
        })
        .collect()
}

/// A signed valid request with `field`'s value replaced by raw bytes (e.g. invalid UTF-8).
fn with_raw_value(field: &str, raw: &[u8]) -> Vec<u8> {
    let map = sign_map(fresh(), SECRET);
    let entries: Vec<_> = tokens(&map)
        .into_iter()
        .map(|(k, v)| {
            if k == serde_json::to_vec(field).expect("key") {
                (k, raw.to_vec())
            } else {
                (k, v)
            }
        })
        .collect();
    raw_object(&entries)
}

/// A JSON string token with `inner` (raw bytes) between the quotes.
fn quoted(inner: &[u8]) -> Vec<u8> {
    let mut out = b"\"".to_vec();
    out.extend_from_slice(inner);
    out.push(b'"');
    out
}

/// A valid, signed request with `field` set to `value` (signed over the new value).
fn with_value(field: &str, value: Value) -> Vec<u8> {
    let mut map = fresh();
    map.insert(field.into(), value);
    signed_bytes(map)
}

/// The text in fullwidth forms (U+FF01…): looks the same, is not the same bytes.
fn fullwidth(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xff01).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Every case of the first round. `ours` / `theirs` are payIds the two partners already sent.
pub fn all(limit: usize, skew_ms: u64, ours: &str, theirs: &str) -> Vec<Case> {
    let mut out = Vec::new();
    syntax::truncations(&mut out);
    syntax::malformed(&mut out);
    syntax::nesting(&mut out);
    syntax::sizes(&mut out, limit);
    fields::wrong_types(&mut out);
    fields::bad_formats(&mut out);
    fields::duplicates(&mut out);
    encoding::encodings(&mut out);
    encoding::control_chars(&mut out);
    encoding::look_alike_keys(&mut out);
    transport::content_types(&mut out);
    signing::sign_variants(&mut out);
    signing::trade_times(&mut out, skew_ms);
    queries::result_queries(&mut out, ours, theirs);
    transport::routes(&mut out);
    transport::other_headers(&mut out);
    out
}

/// The second round, over requests the first accepted (`accepted` = their exact bodies):
/// replays, retries and conflicts (docs/partners.md#what-to-do-with-each-answer's idempotency).
pub fn replays(accepted: &[Vec<u8>]) -> Vec<Case> {
    let mut out = Vec::new();
    for (index, body) in accepted.iter().enumerate() {
        let map: Map<String, Value> = serde_json::from_slice(body).expect("accepted body");
        let mut push = |name: &str, body: Vec<u8>, expect: Expect| {
            out.push(Case::new(
                "replay",
                format!("#{index}: {name}"),
                body,
                expect,
            ));
        };
        // The same bytes again, same tradeTime and sign, within the skew: an idempotent
        // duplicate, answered like the first time. The contract makes the payId, not the
        // tradeTime, the unit of replay protection: a replay can only ever repeat the
        // partner's own request, never create a second job.
        push("the exact same body again", body.clone(), OK);
        let mut retry = map.clone();
        retry.insert("tradeTime".into(), json!((now_millis() + 1).to_string()));
        push(
            "a retry: fresh tradeTime and sign",
            bytes(&sign_map(retry, SECRET)),
            OK,
        );
        let mut conflict = map.clone();
        conflict.insert("payAmount".into(), json!("1.00"));
        conflict.insert("tradeTime".into(), json!(now_millis().to_string()));
        push(
            "same payId, another amount",
            bytes(&sign_map(conflict, SECRET)),
            Expect::Refused(409, "PAY_ID_CONFLICT", "payId"),
        );
        let mut other = map.clone();
        other.insert("partnerCode".into(), json!(OTHER_PARTNER));
        // A payId belongs to its partner: the other partner's is another order, accepted,
        // and never told that this partner used the id.
        push(
            "same payId, sent by the other partner",
            bytes(&sign_map(other, OTHER_SECRET)),
            Expect::Accepted,
        );
        // A replay of the same request re-signed with a tradeTime past the skew is refused
        // before idempotency is even looked at.
        let mut stale = map.clone();
        stale.insert(
            "tradeTime".into(),
            json!((now_millis() - 3_600_000).to_string()),
        );
        push(
            "re-signed an hour old",
            bytes(&sign_map(stale, SECRET)),
            EXPIRED,
        );
        let ours = map["payId"].as_str().unwrap_or("").to_owned();
        out.push(
            Case::new(
                "replay",
                format!("#{index}: resultQuery for it"),
                bytes(&sign_map(query(PARTNER, &ours), SECRET)),
                OK,
            )
            .to(QUERY),
        );
    }
    out
}

/// A fresh valid request: interleaved with the hostile ones, it must always be accepted.
pub fn valid() -> Case {
    Case::new(
        "valid",
        "interleaved valid request",
        signed_bytes(fresh()),
        OK,
    )
}

/// A seed request for `partner`, returned with its payId.
pub fn seed(partner: &str, secret: &str) -> (String, Vec<u8>) {
    let mut map = fresh();
    map.insert("partnerCode".into(), json!(partner));
    let pay_id = map["payId"].as_str().unwrap_or("").to_owned();
    (pay_id, bytes(&sign_map(map, secret)))
}
