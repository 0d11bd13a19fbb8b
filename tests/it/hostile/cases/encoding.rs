//! How the bytes are encoded: charsets, control characters, look-alike keys.

use super::*;

/// Byte-level encodings: BOMs, invalid UTF-8 in values and keys, escaped lone surrogates.
pub(super) fn encodings(out: &mut Vec<Case>) {
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
pub(super) fn control_chars(out: &mut Vec<Case>) {
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

/// Keys that look like a field's name but are not it: an unknown extra field, so the real field
/// is missing (PARAM_MISSING naming it), even though the look-alike is signed.
pub(super) fn look_alike_keys(out: &mut Vec<Case>) {
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
