//! `/resultQuery`: payIds of our own, of another partner, and unknown.

use super::*;

/// `/resultQuery` abuse; `known` are payIds already accepted for PARTNER and OTHER_PARTNER.
pub(super) fn result_queries(out: &mut Vec<Case>, ours: &str, theirs: &str) {
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
