//! The body as JSON: cut short, malformed, nested deep, and sized around the limit.

use super::*;

/// Every prefix of a valid body is not JSON: each truncation point is BODY_INVALID.
pub(super) fn truncations(out: &mut Vec<Case>) {
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
pub(super) fn malformed(out: &mut Vec<Case>) {
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
pub(super) fn nesting(out: &mut Vec<Case>) {
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
pub(super) fn sizes(out: &mut Vec<Case>, limit: usize) {
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
