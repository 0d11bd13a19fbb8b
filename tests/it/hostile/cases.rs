//! The hostile cases, generated: each is a request as bytes on the wire and the answer CONTRACT
//! §4 says it deserves. Built programmatically (every field × bad values, every truncation
//! point, nesting depths, sizes around the limit, each control character, look-alike keys, …)
//! so that a new field or rule is covered by adding it to one list.

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

// ---- The categories -----------------------------------------------------------------------

/// Every prefix of a valid body is not JSON: each truncation point is BODY_INVALID.
fn truncations(out: &mut Vec<Case>) {
    let body = signed_bytes(fresh());
    for cut in 0..body.len() {
        out.push(Case::new(
            "truncated",
            format!("first {cut} of {} bytes", body.len()),
            body[..cut].to_vec(),
            BODY_INVALID,
        ));
    }
}

/// Not JSON, not an object, or an object with something after it.
fn malformed(out: &mut Vec<Case>) {
    let valid = signed_bytes(fresh());
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("null", b"null".to_vec()),
        ("true", b"true".to_vec()),
        ("a number", b"-12.5e3".to_vec()),
        ("a string", br#""{\"payId\":\"x\"}""#.to_vec()),
        ("an empty array", b"[]".to_vec()),
        ("a valid request inside an array", {
            let mut b = b"[".to_vec();
            b.extend_from_slice(&valid);
            b.push(b']');
            b
        }),
        ("a form body", b"payId=1&sign=abc".to_vec()),
        ("XML", b"<request><payId>1</payId></request>".to_vec()),
        ("single quotes", b"{'payId':'P1'}".to_vec()),
        ("an unquoted key", b"{payId:\"P1\"}".to_vec()),
        ("a trailing comma", b"{\"payId\":\"P1\",}".to_vec()),
        ("a key without value", b"{\"payId\"}".to_vec()),
        ("a key with colon but no value", b"{\"payId\":}".to_vec()),
        ("a missing colon", b"{\"payId\" \"P1\"}".to_vec()),
        ("a missing comma", b"{\"a\":\"1\" \"b\":\"2\"}".to_vec()),
        ("a comment", b"/* hi */{}".to_vec()),
        ("NaN", b"{\"payAmount\":NaN}".to_vec()),
        ("Infinity", b"{\"payAmount\":Infinity}".to_vec()),
        ("a NUL byte", b"\0".to_vec()),
        ("only whitespace", b" \t\r\n ".to_vec()),
        ("a lone brace", b"}".to_vec()),
        ("unbalanced braces", b"{{}}".to_vec()),
        ("gzip magic", vec![0x1f, 0x8b, 0x08, 0x00, 0x00]),
        ("UTF-16LE", {
            let text = String::from_utf8(valid.clone()).expect("utf8");
            text.encode_utf16().flat_map(u16::to_le_bytes).collect()
        }),
        ("two objects", {
            let mut b = valid.clone();
            b.extend_from_slice(&valid);
            b
        }),
        ("garbage after the object", {
            let mut b = valid.clone();
            b.extend_from_slice(b"x");
            b
        }),
        ("a comma after the object", {
            let mut b = valid.clone();
            b.push(b',');
            b
        }),
        ("a NUL after the object", {
            let mut b = valid.clone();
            b.push(0);
            b
        }),
        ("a no-break space after the object", {
            let mut b = valid.clone();
            b.extend_from_slice("\u{a0}".as_bytes());
            b
        }),
        ("a vertical tab between tokens", {
            let mut b = b"{\x0b".to_vec();
            b.extend_from_slice(&valid[1..]);
            b
        }),
        ("a form feed between tokens", {
            let mut b = b"{\x0c".to_vec();
            b.extend_from_slice(&valid[1..]);
            b
        }),
        ("a raw NUL between tokens", {
            let mut b = b"{\0".to_vec();
            b.extend_from_slice(&valid[1..]);
            b
        }),
    ];
    for (name, body) in bodies {
        out.push(Case::new("malformed", name, body, BODY_INVALID));
    }
    // Valid JSON objects that simply lack fields: the first one checked is missing.
    out.push(Case::new(
        "malformed",
        "an empty object",
        b"{}".to_vec(),
        missing("email"),
    ));
    out.push(Case::new(
        "malformed",
        "an empty key",
        br#"{"":""}"#.to_vec(),
        missing("email"),
    ));
    // JSON whitespace around and inside the object is fine.
    for (name, pad) in [
        ("a trailing newline", &b"\n"[..]),
        ("trailing spaces, tabs, CRLF", b" \t\r\n"),
    ] {
        let mut b = signed_bytes(fresh());
        b.extend_from_slice(pad);
        out.push(Case::new("malformed", name, b, OK));
    }
    let pretty = serde_json::to_vec_pretty(&sign_map(fresh(), SECRET)).expect("pretty");
    out.push(Case::new("malformed", "pretty-printed", pretty, OK));
    let mut leading = b" \r\n\t ".to_vec();
    leading.extend_from_slice(&signed_bytes(fresh()));
    out.push(Case::new("malformed", "leading whitespace", leading, OK));
}

/// Nesting in an extra field: an array or object is not a string (PARAM_INVALID naming it)
/// until the parser's depth limit (128 levels counting the body itself), where the body as a
/// whole is refused.
fn nesting(out: &mut Vec<Case>) {
    for depth in [1usize, 2, 16, 64, 100, 125, 126, 127, 128, 200, 1000, 2500] {
        let expect = if depth <= 126 {
            invalid("memo")
        } else {
            BODY_INVALID
        };
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let mut entries = tokens(&sign_map(fresh(), SECRET));
        entries.push((b"\"memo\"".to_vec(), arrays.into_bytes()));
        out.push(Case::new(
            "nesting",
            format!("arrays {depth} deep in memo"),
            raw_object(&entries),
            expect,
        ));
        let objects = format!("{}\"x\"{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let mut entries = tokens(&sign_map(fresh(), SECRET));
        entries.push((b"\"memo\"".to_vec(), objects.into_bytes()));
        out.push(Case::new(
            "nesting",
            format!("objects {depth} deep in memo"),
            raw_object(&entries),
            expect,
        ));
    }
    for depth in [3usize, 1000] {
        let expect = if depth <= 126 {
            invalid("payId")
        } else {
            BODY_INVALID
        };
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        out.push(Case::new(
            "nesting",
            format!("payId nested {depth} deep"),
            with_raw_value("payId", nested.as_bytes()),
            expect,
        ));
    }
    out.push(Case::new(
        "nesting",
        "10000 unclosed brackets",
        "[".repeat(10_000).into_bytes(),
        BODY_INVALID,
    ));
    out.push(Case::new(
        "nesting",
        "2000 unclosed objects",
        "{\"a\":".repeat(2_000).into_bytes(),
        BODY_INVALID,
    ));
}

/// Sizes around `intake.max_body_bytes`, declared and chunked; huge values; huge numbers.
fn sizes(out: &mut Vec<Case>, limit: usize) {
    // A memo of n bytes adds exactly n bytes to the body (the sign's length does not change).
    let body_with_memo = |n: usize| {
        let mut map = fresh();
        map.insert("memo".into(), json!("x".repeat(n)));
        signed_bytes(map)
    };
    let base = body_with_memo(0).len();
    for (name, size, expect) in [
        ("one byte under the limit", limit - 1, OK),
        ("exactly the limit", limit, OK),
        ("one byte over the limit", limit + 1, TOO_LARGE),
        ("twice the limit", 2 * limit, TOO_LARGE),
        ("64 KiB", 64 * 1024, TOO_LARGE),
    ] {
        let body = body_with_memo(size - base);
        assert_eq!(body.len(), size, "{name}");
        out.push(Case::new(
            "size",
            format!("{name} ({size} B)"),
            body,
            expect,
        ));
    }
    for (name, size, expect) in [
        ("chunked, exactly the limit", limit, OK),
        ("chunked, one byte over", limit + 1, TOO_LARGE),
        ("chunked, 4 times the limit", 4 * limit, TOO_LARGE),
    ] {
        let body = body_with_memo(size - base);
        out.push(Case::new("size", name, body, expect).chunked(1000));
    }
    // A Content-Length over the limit is refused before the content type is even looked at.
    out.push(
        Case::new(
            "size",
            "over the limit and text/plain",
            body_with_memo(limit),
            TOO_LARGE,
        )
        .content_type(Some(b"text/plain")),
    );

    // Long values, each within the body limit.
    let long = 10_000;
    for (field, expect) in [
        ("email", invalid("email")),
        ("partnerCode", invalid("partnerCode")),
        ("payAmount", invalid("payAmount")),
        ("payCurrency", invalid("payCurrency")),
        ("payId", invalid("payId")),
        ("plan_id", invalid("plan_id")),
        ("pm_id", invalid("pm_id")),
        ("sign", SIGN_INVALID),
        ("tradeTime", invalid("tradeTime")),
        ("version", invalid("version")),
        ("tradeType", OK),
        ("memo", OK),
    ] {
        let value = match field {
            "payAmount" | "tradeTime" => "1".repeat(long),
            "email" => format!("{}@x.com", "a".repeat(long)),
            "pm_id" => format!("pm_{}", "a".repeat(long)),
            _ => "A".repeat(long),
        };
        let body = if field == "sign" {
            let mut map = sign_map(fresh(), SECRET);
            map.insert("sign".into(), json!(value));
            bytes(&map)
        } else {
            with_value(field, json!(value))
        };
        out.push(Case::new(
            "size",
            format!("{field} of 10000 chars"),
            body,
            expect,
        ));
    }
    // Each rule's own length boundary.
    for (name, field, value, expect) in [
        ("payId of 64", "payId", "a".repeat(64), OK),
        ("payId of 65", "payId", "a".repeat(65), invalid("payId")),
        ("plan_id of 100", "plan_id", "p".repeat(100), OK),
        (
            "plan_id of 101",
            "plan_id",
            "p".repeat(101),
            invalid("plan_id"),
        ),
        ("plan_id of 100 CJK chars", "plan_id", "界".repeat(100), OK),
        (
            "plan_id of 101 CJK chars",
            "plan_id",
            "界".repeat(101),
            invalid("plan_id"),
        ),
        (
            "pm_id of 255",
            "pm_id",
            format!("pm_{}", "a".repeat(252)),
            OK,
        ),
        (
            "pm_id of 256",
            "pm_id",
            format!("pm_{}", "a".repeat(253)),
            invalid("pm_id"),
        ),
        (
            "email with a 65-char local part",
            "email",
            format!("{}@x.com", "a".repeat(65)),
            invalid("email"),
        ),
        (
            "partnerCode of 65",
            "partnerCode",
            "P".repeat(65),
            invalid("partnerCode"),
        ),
    ] {
        out.push(Case::new(
            "size",
            name,
            with_value(field, json!(value)),
            expect,
        ));
    }
    // Many extra fields, and one very long key.
    let mut map = fresh();
    for index in 0..500 {
        map.insert(format!("k{index}"), json!("v"));
    }
    out.push(Case::new("size", "500 extra fields", signed_bytes(map), OK));
    let mut map = fresh();
    map.insert("k".repeat(10_000), json!("v"));
    out.push(Case::new("size", "a 10000-char key", signed_bytes(map), OK));

    // Huge numbers. Within f64's range they are simply not strings. Beyond it (1e400, a
    // 400-digit integer) serde_json refuses the body itself ("number out of range"): it keeps
    // every number as an f64, so it cannot read one it cannot represent; BODY_INVALID, with
    // that message, is the answer.
    for (name, raw, expect) in [
        (
            "30 digits",
            &b"123456789012345678901234567890"[..],
            invalid("payAmount"),
        ),
        (
            "u64::MAX + 1",
            b"18446744073709551616",
            invalid("payAmount"),
        ),
        ("1e-400", b"1e-400", invalid("payAmount")),
        ("-0", b"-0", invalid("payAmount")),
        ("1e308", b"1e308", invalid("payAmount")),
        ("1e400", b"1e400", BODY_INVALID),
        ("-1e400", b"-1e400", BODY_INVALID),
    ] {
        out.push(Case::new(
            "size",
            format!("payAmount the number {name}"),
            with_raw_value("payAmount", raw),
            expect,
        ));
    }
    let digits = "9".repeat(400);
    out.push(Case::new(
        "size",
        "payAmount a 400-digit number",
        with_raw_value("payAmount", digits.as_bytes()),
        BODY_INVALID,
    ));
}

/// Every field given a value of the wrong JSON type, null or empty.
fn wrong_types(out: &mut Vec<Case>) {
    let wrong = [
        ("the number 1", json!(1)),
        ("the number -1.5", json!(-1.5)),
        ("true", json!(true)),
        ("false", json!(false)),
        ("an empty array", json!([])),
        ("an array of a string", json!(["x"])),
        ("an empty object", json!({})),
        ("an object", json!({"a": "b"})),
    ];
    for field in SUBSCRIPTION_FIELDS {
        for (name, value) in &wrong {
            let mut map = sign_map(fresh(), SECRET);
            map.insert((*field).into(), value.clone());
            out.push(Case::new(
                "wrong type",
                format!("{field} is {name}"),
                bytes(&map),
                invalid(field),
            ));
        }
        for (name, value) in [("null", Value::Null), ("empty", json!(""))] {
            let mut map = sign_map(fresh(), SECRET);
            map.insert((*field).into(), value);
            out.push(Case::new(
                "wrong type",
                format!("{field} is {name}"),
                bytes(&map),
                missing(field),
            ));
        }
    }
    // An extra field must be a string too; null or empty extras are simply left out of the sign.
    for (name, value) in &wrong {
        let mut map = sign_map(fresh(), SECRET);
        map.insert("memo".into(), value.clone());
        out.push(Case::new(
            "wrong type",
            format!("extra memo is {name}"),
            bytes(&map),
            invalid("memo"),
        ));
    }
    for (name, value) in [("null", Value::Null), ("empty", json!(""))] {
        let mut map = sign_map(fresh(), SECRET);
        map.insert("memo".into(), value);
        out.push(Case::new(
            "wrong type",
            format!("extra memo is {name} (not signed)"),
            bytes(&map),
            OK,
        ));
    }
}

/// Strings of the right type but the wrong form, field by field.
fn bad_formats(out: &mut Vec<Case>) {
    let cases: &[(&str, &[&str], Expect)] = &[
        (
            "email",
            &[
                "a b@x.com",
                "a@b",
                "@x.com",
                "a@",
                "a@b@x.com",
                "a@.com",
                "a@x.com.",
                "a@x..com",
                "<a@x.com>",
                "a@x.com,b@y.com",
                "a@x.com;",
                "a@x.com\u{a0}",
                "a\u{2028}@x.com",
                "a\t@x.com",
            ],
            invalid("email"),
        ),
        (
            "partnerCode",
            &[
                "P000818 ",
                " P000818",
                "P 000818",
                "P000818/../x",
                "P000818*",
                "{P000818}",
                "Р000818",  // Cyrillic Р
                "Ｐ000818", // fullwidth P
                "P000818\u{200d}",
            ],
            invalid("partnerCode"),
        ),
        (
            "payAmount",
            &[
                "19.99 ",
                " 19.99",
                "+19.99",
                "19,99",
                "1,000.00",
                "0x10",
                "NaN",
                "Infinity",
                "19.",
                ".99",
                "1e2",
                "-0",
                "0",
                "00.00",
                "0.001",
                "١٩.٩٩",
                "１９.９９",
                "19.9.9",
                "19.99\u{200b}",
                "99999999999999999999",
                "1000000",
            ],
            invalid("payAmount"),
        ),
        (
            "payCurrency",
            &[
                "us",
                "usdd",
                "xxx",
                "ＵＳＤ",
                "usd ",
                " usd",
                "u d",
                "usð",
                "eur,usd",
                "ÜSD",
                "us\u{200b}",
            ],
            invalid("payCurrency"),
        ),
        (
            "payId",
            &[
                "a b",
                "a/b",
                "../../etc/passwd",
                "a.b",
                "{payId}",
                "P1}{x",
                "*",
                "a:b",
                "ａｂｃ",
                "é",
                "P\u{200d}1",
                "P1\u{feff}",
                "%41",
                "a+b",
            ],
            invalid("payId"),
        ),
        (
            "pm_id",
            &[
                "pm_",
                "PM_abc",
                "pm-abc",
                "pm_ab-c",
                "pm_ab c",
                "pm_ａｂｃ",
                "pm_abc\u{200b}",
                "card_123",
                "pm",
            ],
            invalid("pm_id"),
        ),
        (
            "tradeTime",
            &[
                "-1",
                "1.7e12",
                "0x1",
                " 1764108000000",
                "1764108000000 ",
                "１７６４１０８０００００００",
                "+1764108000000",
                "99999999999999999",
                "18446744073709551616",
                "2025-11-25T00:00:00Z",
            ],
            invalid("tradeTime"),
        ),
        (
            "version",
            &[
                "3", "3.00", "3.0 ", " 3.0", "３.０", "v3.0", "3,0", "2.0", "3.0.0",
            ],
            invalid("version"),
        ),
        // Well-formed but not a configured partner (codes are case-sensitive).
        (
            "partnerCode",
            &["p000818", "P000819", "P0008180", "-", "_"],
            Expect::Refused(401, "PARTNER_UNKNOWN", "partnerCode"),
        ),
        // Accepted variants: the rules are no stricter than the contract.
        ("payCurrency", &["USD", "Usd", "eur", "GBP"], OK),
        (
            "tradeType",
            &[
                " ",
                "支付",
                "\u{202e}evil",
                "a\u{200d}b",
                "<script>",
                "'; DROP TABLE x; --",
            ],
            OK,
        ),
        (
            "plan_id",
            &[" ", "plan/with/slashes", "计划", "a\u{200d}b", "{tag}"],
            OK,
        ),
        (
            "email",
            &["用户@例子.cn", "a.b+c@x.co.uk", "\"q\"@x.com"],
            OK,
        ),
        ("payAmount", &["019.99", "999999.99", "0.01", "1"], OK),
    ];
    for (field, values, expect) in cases {
        for value in *values {
            out.push(Case::new(
                "bad format",
                format!("{field} = {value:?}"),
                with_value(field, json!(value)),
                *expect,
            ));
        }
    }
}

/// A key given twice, in every field, with the same or another value; also when the second
/// spelling is a JSON escape of the first.
fn duplicates(out: &mut Vec<Case>) {
    for field in SUBSCRIPTION_FIELDS {
        for same in [true, false] {
            let map = sign_map(fresh(), SECRET);
            let mut entries = tokens(&map);
            let key = serde_json::to_vec(field).expect("key");
            let value = if same {
                serde_json::to_vec(&map[*field]).expect("value")
            } else {
                b"\"other\"".to_vec()
            };
            entries.push((key, value));
            out.push(Case::new(
                "duplicate key",
                format!(
                    "{field} twice, {} value",
                    if same { "same" } else { "other" }
                ),
                raw_object(&entries),
                BODY_INVALID,
            ));
        }
    }
    let map = sign_map(fresh(), SECRET);
    let mut entries = tokens(&map);
    entries.push((br#""pay\u0049d""#.to_vec(), b"\"P2\"".to_vec()));
    out.push(Case::new(
        "duplicate key",
        "payId and its escaped spelling pay\\u0049d",
        raw_object(&entries),
        BODY_INVALID,
    ));
    let mut entries = tokens(&map);
    entries.push((b"\"memo\"".to_vec(), b"\"1\"".to_vec()));
    entries.push((b"\"memo\"".to_vec(), b"\"2\"".to_vec()));
    out.push(Case::new(
        "duplicate key",
        "an extra key twice",
        raw_object(&entries),
        BODY_INVALID,
    ));
    // The escaped spelling alone is simply the key: it is read, and signed, as `payId`.
    let entries: Vec<_> = tokens(&map)
        .into_iter()
        .map(|(k, v)| {
            if k == b"\"payId\"" {
                (br#""pay\u0049d""#.to_vec(), v)
            } else {
                (k, v)
            }
        })
        .collect();
    out.push(Case::new(
        "duplicate key",
        "payId spelled pay\\u0049d (once)",
        raw_object(&entries),
        OK,
    ));
}

/// Byte-level encodings: BOMs, invalid UTF-8 in values and keys, escaped lone surrogates.
fn encodings(out: &mut Vec<Case>) {
    let valid = signed_bytes(fresh());
    for (name, prefix) in [
        ("UTF-8 BOM", &b"\xef\xbb\xbf"[..]),
        ("UTF-16LE BOM", b"\xff\xfe"),
        ("UTF-16BE BOM", b"\xfe\xff"),
        ("whitespace then a UTF-8 BOM", b" \xef\xbb\xbf"),
    ] {
        let mut body = prefix.to_vec();
        body.extend_from_slice(&valid);
        out.push(Case::new(
            "encoding",
            format!("{name} first"),
            body,
            BODY_INVALID,
        ));
    }
    let mut body = valid.clone();
    body.extend_from_slice(b"\xef\xbb\xbf");
    out.push(Case::new(
        "encoding",
        "a UTF-8 BOM last",
        body,
        BODY_INVALID,
    ));
    // A BOM character inside a value is just a character: wrong where the rule is strict, fine
    // in a free-text field.
    out.push(Case::new(
        "encoding",
        "a BOM inside payId",
        with_value("payId", json!("\u{feff}P1")),
        invalid("payId"),
    ));
    out.push(Case::new(
        "encoding",
        "a BOM inside tradeType",
        with_value("tradeType", json!("\u{feff}pay")),
        OK,
    ));

    let broken: &[(&str, &[u8])] = &[
        ("0xFF", b"\xff"),
        ("a lone continuation byte", b"\x80"),
        ("an overlong /", b"\xc0\xaf"),
        ("an overlong NUL", b"\xc0\x80"),
        ("a UTF-8 encoded surrogate", b"\xed\xa0\x80"),
        ("a truncated sequence", b"\xe4\xb8"),
        ("beyond U+10FFFF", b"\xf4\x90\x80\x80"),
        ("Latin-1 é", b"caf\xe9"),
    ];
    for field in SUBSCRIPTION_FIELDS {
        let picks: &[(&str, &[u8])] = if *field == "payId" {
            broken
        } else {
            &broken[..2]
        };
        for (name, raw) in picks {
            out.push(Case::new(
                "encoding",
                format!("{field} holds {name}"),
                with_raw_value(field, &quoted(raw)),
                BODY_INVALID,
            ));
        }
    }
    let mut entries = tokens(&sign_map(fresh(), SECRET));
    entries.push((quoted(b"k\xff"), b"\"v\"".to_vec()));
    out.push(Case::new(
        "encoding",
        "a key with 0xFF",
        raw_object(&entries),
        BODY_INVALID,
    ));
    for (name, escape) in [
        ("a lone high surrogate", &br"P\ud800"[..]),
        ("a lone low surrogate", br"P\udc00x"),
        ("a bad escape", br"P\x41"),
        ("a short \\u escape", br"P\u41"),
    ] {
        for field in ["payId", "tradeType"] {
            out.push(Case::new(
                "encoding",
                format!("{field} with {name}"),
                with_raw_value(field, &quoted(escape)),
                BODY_INVALID,
            ));
        }
    }
    // A valid escaped astral character (a surrogate pair) is fine in free text.
    out.push(Case::new(
        "encoding",
        "tradeType with an escaped emoji",
        {
            // Signed over the decoded value, sent escaped: the sign is over what the JSON means.
            let mut map = sign_map(
                {
                    let mut m = fresh();
                    m.insert("tradeType".into(), json!("pay😀"));
                    m
                },
                SECRET,
            );
            let sign = map.remove("sign").expect("sign");
            let mut entries = tokens(&map);
            for (k, v) in &mut entries {
                if k == b"\"tradeType\"" {
                    *v = br#""pay\ud83d\ude00""#.to_vec();
                }
            }
            entries.push((
                b"\"sign\"".to_vec(),
                serde_json::to_vec(&sign).expect("sign"),
            ));
            raw_object(&entries)
        },
        OK,
    ));
}

/// Every C0 control character (and DEL, and a C1) raw and escaped.
fn control_chars(out: &mut Vec<Case>) {
    // Raw control characters are not allowed inside a JSON string: the body is not JSON.
    for byte in 0u8..0x20 {
        out.push(Case::new(
            "control char",
            format!("raw 0x{byte:02x} inside payId"),
            with_raw_value("payId", &quoted(&[b'P', byte, b'1'])),
            BODY_INVALID,
        ));
    }
    // Escaped, they are characters of the value: payId's alphabet has none of them.
    for code in (0u32..0x20).chain([0x7f, 0x85]) {
        let c = char::from_u32(code).expect("a char");
        out.push(Case::new(
            "control char",
            format!("escaped U+{code:04X} inside payId"),
            with_value("payId", json!(format!("P{c}1"))),
            invalid("payId"),
        ));
    }
    // In tradeType (any non-empty string) they are allowed, and count in the sign.
    for code in [0x00u32, 0x09, 0x0a, 0x0d, 0x1b, 0x1f, 0x7f, 0x85] {
        let c = char::from_u32(code).expect("a char");
        out.push(Case::new(
            "control char",
            format!("escaped U+{code:04X} inside tradeType"),
            with_value("tradeType", json!(format!("pay{c}Pal"))),
            OK,
        ));
    }
    // …but the sign must be over them: the same body signed without them does not verify.
    let mut map = sign_map(fresh(), SECRET);
    map.insert("tradeType".into(), json!("stripeSub\u{0}Directly"));
    out.push(Case::new(
        "control char",
        "a NUL added to tradeType after signing",
        bytes(&map),
        SIGN_INVALID,
    ));
    for (field, expect) in [
        ("email", invalid("email")),
        ("partnerCode", invalid("partnerCode")),
        ("payAmount", invalid("payAmount")),
        ("payCurrency", invalid("payCurrency")),
        ("plan_id", invalid("plan_id")),
        ("pm_id", invalid("pm_id")),
        ("tradeTime", invalid("tradeTime")),
        ("version", invalid("version")),
        ("memo", OK),
    ] {
        for c in ['\0', '\n', '\u{85}'] {
            let value = match field {
                "payCurrency" => format!("us{c}"),
                "payAmount" => format!("19.9{c}"),
                "tradeTime" => format!("{}{c}", now_millis()),
                "version" => format!("3.0{c}"),
                "partnerCode" => format!("{PARTNER}{c}"),
                "email" => format!("a{c}b@x.com"),
                "pm_id" => format!("pm_a{c}b"),
                _ => format!("x{c}y"),
            };
            out.push(Case::new(
                "control char",
                format!("U+{:04X} inside {field}", c as u32),
                with_value(field, json!(value)),
                expect,
            ));
        }
    }
    let mut map = fresh();
    map.insert("k\u{0}\u{1b}".into(), json!("v"));
    out.push(Case::new(
        "control char",
        "control characters in an extra key",
        signed_bytes(map),
        OK,
    ));
}

/// Characters that look like ASCII but are not.
fn look_alike(c: char) -> Option<char> {
    Some(match c {
        'a' => 'а',
        'c' => 'с',
        'e' => 'е',
        'i' => 'і',
        'o' => 'о',
        'p' => 'р',
        'x' => 'х',
        'y' => 'у',
        'T' => 'Т',
        'P' => 'Р',
        'C' => 'С',
        'A' => 'А',
        'I' => 'І',
        _ => return None,
    })
}

fn fullwidth(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(c as u32 - 0x21 + 0xff01).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Keys that look like a field's name but are not it: an unknown extra field, so the real field
/// is missing (PARAM_MISSING naming it), even though the look-alike is signed.
fn look_alike_keys(out: &mut Vec<Case>) {
    for field in SUBSCRIPTION_FIELDS {
        let mut variants: Vec<(&str, String)> = Vec::new();
        if let Some((at, c)) = field.char_indices().find(|(_, c)| look_alike(*c).is_some()) {
            let mut key = field.to_string();
            key.replace_range(
                at..at + c.len_utf8(),
                &look_alike(c).unwrap_or(c).to_string(),
            );
            variants.push(("a Cyrillic look-alike letter", key));
        }
        variants.push(("fullwidth", fullwidth(field)));
        let mut zwj = field.to_string();
        zwj.insert(1, '\u{200d}');
        variants.push(("a zero-width joiner", zwj));
        variants.push(("a trailing zero-width space", format!("{field}\u{200b}")));
        variants.push(("a trailing space", format!("{field} ")));
        variants.push(("a leading no-break space", format!("\u{a0}{field}")));
        variants.push(("a trailing NUL", format!("{field}\u{0}")));
        variants.push(("a combining acute", format!("{field}\u{301}")));
        let mut upper_first = field.to_string();
        upper_first[..1].make_ascii_uppercase();
        variants.push(("a capital first letter", upper_first));
        variants.push(("all capitals", field.to_ascii_uppercase()));
        variants.push(("all lower case", field.to_ascii_lowercase()));
        if *field == "payId" {
            variants.push(("PayID", "PayID".into()));
            variants.push(("pay_id", "pay_id".into()));
        }
        for (name, key) in variants {
            if key == *field {
                continue;
            }
            // Sign first, then rename, so that `sign` itself can be renamed too.
            let mut map = if *field == "sign" {
                sign_map(fresh(), SECRET)
            } else {
                fresh()
            };
            let value = map.remove(*field).expect("field");
            map.insert(key.clone(), value);
            let body = if *field == "sign" {
                bytes(&map)
            } else {
                signed_bytes(map)
            };
            out.push(Case::new(
                "look-alike key",
                format!("{field} spelled {key:?} ({name})"),
                body,
                missing(field),
            ));
        }
    }
    // Next to the real key, a look-alike is just one more signed extra field.
    for key in ["раyId", "PayID", "email\u{200b}", "Sign"] {
        let mut map = fresh();
        map.insert(key.into(), json!("decoy"));
        out.push(Case::new(
            "look-alike key",
            format!("a decoy {key:?} beside the real field"),
            signed_bytes(map),
            OK,
        ));
    }
}

/// Content types other than JSON, odd spellings of JSON, and odd header bytes.
fn content_types(out: &mut Vec<Case>) {
    let refused: &[&[u8]] = &[
        b"text/plain",
        b"text/json",
        b"text/html; charset=utf-8",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/xml",
        b"application/jsonx",
        b"application/json-seq",
        b"application/javascript",
        b"application/octet-stream",
        b"json",
        b"application/",
        b"application/ json",
        b"*/*",
        b"application/*",
        b"",
        b"application/json\xff",
        b"application/\xc3\xa9json",
    ];
    for content_type in refused {
        let name = String::from_utf8_lossy(content_type).into_owned();
        out.push(
            Case::new(
                "content type",
                format!("Content-Type {name:?}"),
                signed_bytes(fresh()),
                UNSUPPORTED,
            )
            .content_type(Some(content_type)),
        );
    }
    // The content type is checked before the body is read: a broken body still gets 415.
    out.push(
        Case::new(
            "content type",
            "text/plain with a broken body",
            b"{\"payId\":".to_vec(),
            UNSUPPORTED,
        )
        .content_type(Some(b"text/plain")),
    );
    let accepted: &[&[u8]] = &[
        b"APPLICATION/JSON",
        b"Application/Json",
        b"application/json;charset=utf-8",
        b"application/json ; charset=UTF-8",
        b"application/json; charset=latin1",
        b"application/json; foo=bar; baz",
        b"application/problem+json",
        b"application/vnd.partner.v3+json",
        b"  application/json  ",
    ];
    for content_type in accepted {
        let name = String::from_utf8_lossy(content_type).into_owned();
        out.push(
            Case::new(
                "content type",
                format!("Content-Type {name:?}"),
                signed_bytes(fresh()),
                OK,
            )
            .content_type(Some(content_type)),
        );
    }
    out.push(
        Case::new(
            "content type",
            "no Content-Type (taken as JSON)",
            signed_bytes(fresh()),
            OK,
        )
        .content_type(None),
    );
    out.push(
        Case::new(
            "content type",
            "no Content-Type and not JSON",
            b"payId=1".to_vec(),
            BODY_INVALID,
        )
        .content_type(None),
    );
}

/// A way of (mis)computing a sign over a request's fields.
type SignOf = Box<dyn Fn(&Map<String, Value>) -> String>;

/// The sign in every wrong form, and the forms that must still verify.
fn sign_variants(out: &mut Vec<Case>) {
    let with_sign = |sign: &str| {
        let mut map = sign_map(fresh(), SECRET);
        map.insert("sign".into(), json!(sign));
        bytes(&map)
    };
    let good = || {
        let map = sign_map(fresh(), SECRET);
        let sign = map["sign"].as_str().expect("sign").to_owned();
        (map, sign)
    };
    let mut push = |name: &str, body: Vec<u8>, expect: Expect| {
        out.push(Case::new("sign", name, body, expect));
    };

    let (mut map, sign) = good();
    map.insert("sign".into(), json!(sign.to_uppercase()));
    push("upper-case hex", bytes(&map), OK);
    let (mut map, sign) = good();
    let mixed: String = sign
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    map.insert("sign".into(), json!(mixed));
    push("mixed-case hex", bytes(&map), OK);

    for keep in [0usize, 1, 16, 31] {
        let (mut map, sign) = good();
        map.insert("sign".into(), json!(&sign[..keep]));
        let expect = if keep == 0 {
            missing("sign")
        } else {
            SIGN_INVALID
        };
        push(&format!("truncated to {keep} chars"), bytes(&map), expect);
    }
    let (mut map, sign) = good();
    map.insert("sign".into(), json!(format!("{sign}0")));
    push("one char too many", bytes(&map), SIGN_INVALID);
    let (mut map, sign) = good();
    map.insert("sign".into(), json!(format!(" {sign}")));
    push("a leading space", bytes(&map), SIGN_INVALID);
    let (mut map, sign) = good();
    map.insert("sign".into(), json!(format!("{sign}\n")));
    push("a trailing newline", bytes(&map), SIGN_INVALID);
    let (mut map, sign) = good();
    map.insert("sign".into(), json!(fullwidth(&sign)));
    push("fullwidth hex", bytes(&map), SIGN_INVALID);
    let (mut map, sign) = good();
    let flipped: String = sign
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 31 {
                if c == '0' { '1' } else { '0' }
            } else {
                c
            }
        })
        .collect();
    map.insert("sign".into(), json!(flipped));
    push("last hex digit changed", bytes(&map), SIGN_INVALID);
    push("all zeros", with_sign(&"0".repeat(32)), SIGN_INVALID);
    push("not hex", with_sign(&"g".repeat(32)), SIGN_INVALID);
    push(
        "64 hex chars (a SHA-256 length)",
        with_sign(&"a".repeat(64)),
        SIGN_INVALID,
    );
    push(
        "0x-prefixed",
        with_sign(&format!("0x{}", "a".repeat(30))),
        SIGN_INVALID,
    );

    // Signed over another body: each field changed after signing.
    for field in SUBSCRIPTION_FIELDS.iter().filter(|f| **f != "sign") {
        let mut map = sign_map(fresh(), SECRET);
        let other = match *field {
            "email" => "other@x.com".to_string(),
            "partnerCode" => OTHER_PARTNER.to_string(),
            "payAmount" => "29.99".into(),
            "payCurrency" => "USD".into(),
            "payId" => format!("T{}", uuid::Uuid::new_v4().simple()),
            "plan_id" => "PLAN_YEARLY".into(),
            "pm_id" => "pm_card_visa".into(),
            "tradeTime" => (now_millis() - 1).to_string(),
            "tradeType" => "payPalPay".into(),
            // Checked before the sign: a changed version is refused for itself.
            "version" => "2.0".into(),
            _ => "x".into(),
        };
        let expect = if *field == "version" {
            invalid("version")
        } else {
            SIGN_INVALID
        };
        map.insert((*field).into(), json!(other));
        push(
            &format!("signed, then {field} changed"),
            bytes(&map),
            expect,
        );
    }
    let mut map = sign_map(fresh(), SECRET);
    map.insert("memo".into(), json!("added"));
    push(
        "signed, then an extra field added",
        bytes(&map),
        SIGN_INVALID,
    );
    let mut with_memo = fresh();
    with_memo.insert("memo".into(), json!("signed"));
    let mut map = sign_map(with_memo, SECRET);
    map.remove("memo");
    push(
        "signed, then an extra field removed",
        bytes(&map),
        SIGN_INVALID,
    );
    // An empty extra field added after signing changes nothing: empty values are not signed.
    let mut map = sign_map(fresh(), SECRET);
    map.insert("memo".into(), json!(""));
    push("signed, then an empty extra added", bytes(&map), OK);

    push(
        "another partner's secret",
        bytes(&sign_map(fresh(), OTHER_SECRET)),
        SIGN_INVALID,
    );
    push(
        "the empty secret",
        bytes(&sign_map(fresh(), "")),
        SIGN_INVALID,
    );
    push(
        "the secret in upper case",
        bytes(&sign_map(fresh(), &SECRET.to_uppercase())),
        SIGN_INVALID,
    );
    // Another partner's request, signed with its own secret, is valid for that partner.
    let mut other = fresh();
    other.insert("partnerCode".into(), json!(OTHER_PARTNER));
    push(
        "another partner, its own secret",
        bytes(&sign_map(other, OTHER_SECRET)),
        OK,
    );

    // Signing mistakes a partner could make: each yields another content, so another sign.
    let content_sign = |content: &str, secret_first: bool| {
        if secret_first {
            sign::sign("", &format!("{SECRET}{content}"))
        } else {
            sign::sign(content, SECRET)
        }
    };
    let mistakes: Vec<(&str, SignOf)> = vec![
        (
            "secret before the content",
            Box::new(move |m| content_sign(&sign::sign_content(strs(m)), true)),
        ),
        (
            "pretty-printed content",
            Box::new(|m| {
                let sorted: BTreeMap<&str, &str> = strs(m).collect();
                sign::sign(
                    &serde_json::to_string_pretty(&sorted).expect("json"),
                    SECRET,
                )
            }),
        ),
        (
            "keys unsorted (insertion order reversed)",
            Box::new(|m| {
                let pairs: Vec<String> = strs(m)
                    .rev()
                    .map(|(k, v)| format!("{}:{}", json!(k), json!(v)))
                    .collect();
                sign::sign(&format!("{{{}}}", pairs.join(",")), SECRET)
            }),
        ),
        (
            "the content with the sign field in it",
            Box::new(|m| {
                let mut sorted: BTreeMap<&str, &str> = strs(m).collect();
                sorted.insert("sign", "x");
                sign::sign(&serde_json::to_string(&sorted).expect("json"), SECRET)
            }),
        ),
        (
            "keys sorted case-insensitively",
            Box::new(|m| {
                let mut pairs: Vec<(&str, &str)> = strs(m).collect();
                pairs.sort_by_key(|(k, _)| k.to_ascii_lowercase());
                let pairs: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{}", json!(k), json!(v)))
                    .collect();
                sign::sign(&format!("{{{}}}", pairs.join(",")), SECRET)
            }),
        ),
        (
            "the MD5 of the content alone",
            Box::new(|m| sign::sign(&sign::sign_content(strs(m)), "")),
        ),
    ];
    for (name, sign_of) in mistakes {
        // `plan_id` and `pm_id` sort differently case-insensitively only with an upper-case
        // key: add one so every mistake really changes the content.
        let mut map = fresh();
        map.insert("Zeta".into(), json!("z"));
        let sign = sign_of(&map);
        map.insert("sign".into(), json!(sign));
        push(&format!("sign over {name}"), bytes(&map), SIGN_INVALID);
    }

    // `/` and non-ASCII: the content keeps them raw. A signer that escaped them signed another
    // content; how the body itself spells them does not matter.
    let mut map = fresh();
    map.insert("plan_id".into(), json!("plan/a"));
    let escaped = sign::sign_content(strs(&map)).replace('/', "\\/");
    map.insert("sign".into(), json!(sign::sign(&escaped, SECRET)));
    push("content with / escaped", bytes(&map), SIGN_INVALID);
    let mut map = fresh();
    map.insert("email".into(), json!("用户@例子.cn"));
    let ascii_only: String = sign::sign_content(strs(&map))
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect();
    map.insert("sign".into(), json!(sign::sign(&ascii_only, SECRET)));
    push("content with non-ASCII escaped", bytes(&map), SIGN_INVALID);
    let mut map = fresh();
    map.insert("plan_id".into(), json!("plan/a"));
    map.insert("email".into(), json!("用户@例子.cn"));
    let body = bytes(&sign_map(map, SECRET));
    let text = String::from_utf8(body).expect("utf8");
    let text = text.replace('/', "\\/").replace("用户", "\\u7528\\u6237");
    push("body with / and non-ASCII escaped", text.into_bytes(), OK);
}

fn strs(map: &Map<String, Value>) -> impl DoubleEndedIterator<Item = (&str, &str)> {
    map.iter()
        .filter(|(k, _)| k.as_str() != "sign")
        .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s)))
        .filter(|(_, v)| !v.is_empty())
}

/// tradeTime at the edges of `intake.max_clock_skew_ms`.
fn trade_times(out: &mut Vec<Case>, skew_ms: u64) {
    let now = now_millis();
    let margin = 30_000;
    for (name, time, expect) in [
        ("just inside the skew, past", now - skew_ms + margin, OK),
        ("just inside the skew, future", now + skew_ms - margin, OK),
        (
            "just outside the skew, past",
            now - skew_ms - margin,
            EXPIRED,
        ),
        (
            "just outside the skew, future",
            now + skew_ms + margin,
            EXPIRED,
        ),
        ("a day ahead", now + 86_400_000, EXPIRED),
        ("in seconds, not milliseconds", now / 1000, EXPIRED),
        ("in microseconds", now * 1000, EXPIRED),
        ("zero", 0, EXPIRED),
        ("the largest 16 digits", 9_999_999_999_999_999, EXPIRED),
    ] {
        out.push(Case::new(
            "tradeTime",
            name,
            with_value("tradeTime", json!(time.to_string())),
            expect,
        ));
    }
    out.push(Case::new(
        "tradeTime",
        "leading zeros",
        with_value("tradeTime", json!(format!("000{now}"))),
        OK,
    ));
}

/// `/resultQuery` abuse; `known` are payIds already accepted for PARTNER and OTHER_PARTNER.
fn result_queries(out: &mut Vec<Case>, ours: &str, theirs: &str) {
    let mut push = |name: &str, body: Vec<u8>, expect: Expect| {
        out.push(Case::new("resultQuery", name, body, expect).to(QUERY));
    };
    push(
        "our own payId",
        bytes(&sign_map(query(PARTNER, ours), SECRET)),
        OK,
    );
    push(
        "another partner's payId",
        bytes(&sign_map(query(PARTNER, theirs), SECRET)),
        PAY_ID_UNKNOWN,
    );
    push(
        "the other partner asks for ours",
        bytes(&sign_map(query(OTHER_PARTNER, ours), OTHER_SECRET)),
        PAY_ID_UNKNOWN,
    );
    push(
        "a payId nobody sent",
        bytes(&sign_map(query(PARTNER, "NEVER-SENT-1"), SECRET)),
        PAY_ID_UNKNOWN,
    );
    push(
        "our partnerCode, the other partner's secret",
        bytes(&sign_map(query(PARTNER, theirs), OTHER_SECRET)),
        SIGN_INVALID,
    );
    let mut map = query(PARTNER, ours);
    map.insert(
        "tradeTime".into(),
        json!((now_millis() - 3_600_000).to_string()),
    );
    push(
        "an hour-old tradeTime",
        bytes(&sign_map(map, SECRET)),
        EXPIRED,
    );
    let mut map = query(PARTNER, ours);
    map.insert("email".into(), json!("extra@x.com"));
    map.insert("memo".into(), json!("extra"));
    push("extra fields, signed", bytes(&sign_map(map, SECRET)), OK);
    for field in RESULT_QUERY_FIELDS {
        let mut map = sign_map(query(PARTNER, ours), SECRET);
        map.remove(*field);
        push(&format!("{field} missing"), bytes(&map), missing(field));
        let mut map = sign_map(query(PARTNER, ours), SECRET);
        map.insert((*field).into(), json!(7));
        push(&format!("{field} a number"), bytes(&map), invalid(field));
    }
    for (name, pay_id) in [
        ("a Redis glob", "*"),
        ("a hash tag", "{P1}"),
        ("a key separator", "a:b"),
        ("a newline", "a\nb"),
        ("too long", &"a".repeat(65)),
    ] {
        push(
            &format!("payId with {name}"),
            bytes(&sign_map(query(PARTNER, pay_id), SECRET)),
            invalid("payId"),
        );
    }
    let mut map = query(PARTNER, ours);
    let value = map.remove("payId").expect("payId");
    map.insert("раyId".into(), value);
    push(
        "a look-alike payId key",
        bytes(&sign_map(map, SECRET)),
        missing("payId"),
    );
    push(
        "truncated",
        {
            let b = bytes(&sign_map(query(PARTNER, ours), SECRET));
            b[..b.len() / 2].to_vec()
        },
        BODY_INVALID,
    );
}

/// Methods and paths around the two endpoints.
fn routes(out: &mut Vec<Case>) {
    for method in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        out.push(
            Case::new(
                "route",
                format!("{method} /stripeSubDirectly"),
                signed_bytes(fresh()),
                Expect::Refused(405, "METHOD_NOT_ALLOWED", ""),
            )
            .method(method),
        );
    }
    for path in [
        "/stripeSubDirectly/",
        "/STRIPESUBDIRECTLY",
        "/stripesubdirectly",
        "//stripeSubDirectly",
        "/stripeSubDirectly%00",
        "/stripeSubDirectly/..",
        "/resultquery",
    ] {
        out.push(
            Case::new(
                "route",
                format!("POST {path}"),
                signed_bytes(fresh()),
                Expect::Refused(404, "NOT_FOUND", ""),
            )
            .to(path),
        );
    }
    // The other routes: a wrong method is 405, a near-miss of the path is 404.
    for (method, path) in [
        (Method::GET, "/cancelAutoRenewalRecord"),
        (Method::PUT, "/queryAutoRenewalRecord"),
        (Method::GET, "/stripe/webhook"),
        (Method::DELETE, "/stripe/webhook"),
    ] {
        out.push(
            Case::new(
                "route",
                format!("{method} {path}"),
                signed_bytes(fresh()),
                Expect::Refused(405, "METHOD_NOT_ALLOWED", ""),
            )
            .method(method)
            .to(path),
        );
    }
    for path in [
        "/cancelautorenewalrecord",
        "/queryAutoRenewalRecord/",
        "/stripe/webhook/",
        "/stripe/Webhook",
        "/stripe",
    ] {
        out.push(
            Case::new(
                "route",
                format!("POST {path}"),
                signed_bytes(fresh()),
                Expect::Refused(404, "NOT_FOUND", ""),
            )
            .to(path),
        );
    }
    out.push(
        Case::new(
            "route",
            "a query string is ignored",
            signed_bytes(fresh()),
            OK,
        )
        .to("/stripeSubDirectly?payId=x&sign=y"),
    );
}

/// Odd values of the other headers the intake reads: none of them changes the answer.
fn other_headers(out: &mut Vec<Case>) {
    let cases: &[(&str, &[u8], Expect)] = &[
        ("x-request-id", b"../../etc/passwd", OK),
        ("x-request-id", &[b'a'; 1000], OK),
        ("x-request-id", "é-id".as_bytes(), OK),
        ("x-request-id", b"id\xff", OK),
        ("x-request-id", b"", OK),
        ("prefer", b"wait=0", OK),
        ("prefer", b"wait=abc", OK),
        ("prefer", b"wait=-1", OK),
        ("prefer", b"wait=", OK),
        ("prefer", b"respond-async, wait", OK),
        ("prefer", b"\xff\xfe", OK),
        ("accept", b"text/html", OK),
        ("accept-charset", b"utf-16", OK),
        ("content-encoding", b"identity", OK),
        ("expect", b"100-continue", OK),
        ("host", b"evil.example", OK),
    ];
    for (name, value, expect) in cases {
        let shown = String::from_utf8_lossy(value)
            .chars()
            .take(40)
            .collect::<String>();
        out.push(
            Case::new(
                "header",
                format!("{name}: {shown:?}"),
                signed_bytes(fresh()),
                *expect,
            )
            .header(name, value),
        );
    }
    // A gzip body is not decoded: the intake reads JSON as sent, so compressed bytes are not
    // JSON.
    out.push(
        Case::new(
            "header",
            "content-encoding: gzip with gzip bytes",
            vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03],
            BODY_INVALID,
        )
        .header("content-encoding", b"gzip"),
    );
}

/// Every case of the first round. `ours` / `theirs` are payIds the two partners already sent.
pub fn all(limit: usize, skew_ms: u64, ours: &str, theirs: &str) -> Vec<Case> {
    let mut out = Vec::new();
    truncations(&mut out);
    malformed(&mut out);
    nesting(&mut out);
    sizes(&mut out, limit);
    wrong_types(&mut out);
    bad_formats(&mut out);
    duplicates(&mut out);
    encodings(&mut out);
    control_chars(&mut out);
    look_alike_keys(&mut out);
    content_types(&mut out);
    sign_variants(&mut out);
    trade_times(&mut out, skew_ms);
    result_queries(&mut out, ours, theirs);
    routes(&mut out);
    other_headers(&mut out);
    out
}

/// The second round, over requests the first accepted (`accepted` = their exact bodies):
/// replays, retries and conflicts (CONTRACT §4's idempotency).
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
