//! Each field's values: the wrong JSON type, a bad format, the same key twice.

use super::*;

/// Every field given a value of the wrong JSON type, null or empty.
pub(super) fn wrong_types(out: &mut Vec<Case>) {
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
pub(super) fn bad_formats(out: &mut Vec<Case>) {
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
pub(super) fn duplicates(out: &mut Vec<Case>) {
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
