//! The sign and the trade time: every way a sign can be wrong, and times out of the window.

use super::*;

/// A way of (mis)computing a sign over a request's fields.
type SignOf = Box<dyn Fn(&Map<String, Value>) -> String>;

/// The sign in every wrong form, and the forms that must still verify.
pub(super) fn sign_variants(out: &mut Vec<Case>) {
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
            // A millisecond before the signed time: now − 1 ms could equal it.
            "tradeTime" => {
                let signed = match map.get("tradeTime") {
                    Some(Value::String(text)) => text.parse().unwrap_or_else(|_| now_millis()),
                    Some(Value::Number(number)) => number.as_u64().unwrap_or_else(now_millis),
                    _ => now_millis(),
                };
                (signed - 1).to_string()
            }
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
pub(super) fn trade_times(out: &mut Vec<Case>, skew_ms: u64) {
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
