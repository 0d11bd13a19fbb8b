//! Every validation rule and error code of the intake, over real HTTP (docs/partners.md#refusals).

use serde_json::{Value, json};

use crate::helpers::{OTHER_SECRET, SECRET, TestStack, signed, valid_request};

/// One case: what to change in a valid request, and the answer it must get.
struct Case {
    name: &'static str,
    change: fn(&mut Value),
    status: u16,
    code: &'static str,
    field: &'static str,
}

fn set(request: &mut Value, field: &str, value: Value) {
    request[field] = value;
}

fn remove(request: &mut Value, field: &str) {
    request.as_object_mut().expect("object").remove(field);
}

const CASES: &[Case] = &[
    Case {
        name: "email missing",
        change: |r| remove(r, "email"),
        status: 400,
        code: "PARAM_MISSING",
        field: "email",
    },
    Case {
        name: "email empty",
        change: |r| set(r, "email", json!("")),
        status: 400,
        code: "PARAM_MISSING",
        field: "email",
    },
    Case {
        name: "email null",
        change: |r| set(r, "email", Value::Null),
        status: 400,
        code: "PARAM_MISSING",
        field: "email",
    },
    Case {
        name: "email not an address",
        change: |r| set(r, "email", json!("not-an-email")),
        status: 400,
        code: "PARAM_INVALID",
        field: "email",
    },
    Case {
        name: "partnerCode missing",
        change: |r| remove(r, "partnerCode"),
        status: 400,
        code: "PARAM_MISSING",
        field: "partnerCode",
    },
    Case {
        name: "payAmount missing",
        change: |r| remove(r, "payAmount"),
        status: 400,
        code: "PARAM_MISSING",
        field: "payAmount",
    },
    Case {
        name: "payAmount a number",
        change: |r| set(r, "payAmount", json!(19.99)),
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payAmount negative",
        change: |r| set(r, "payAmount", json!("-1")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payAmount zero",
        change: |r| set(r, "payAmount", json!("0.00")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payAmount three decimals in usd",
        change: |r| set(r, "payAmount", json!("19.999")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payAmount decimals in jpy",
        change: |r| {
            set(r, "payCurrency", json!("jpy"));
            set(r, "payAmount", json!("500.5"));
        },
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payAmount in exponent form",
        change: |r| set(r, "payAmount", json!("1e3")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payAmount beyond Stripe's maximum",
        change: |r| set(r, "payAmount", json!("1000000.00")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payAmount",
    },
    Case {
        name: "payCurrency unknown",
        change: |r| set(r, "payCurrency", json!("xyz")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payCurrency",
    },
    Case {
        name: "payCurrency missing",
        change: |r| remove(r, "payCurrency"),
        status: 400,
        code: "PARAM_MISSING",
        field: "payCurrency",
    },
    Case {
        name: "payId missing",
        change: |r| remove(r, "payId"),
        status: 400,
        code: "PARAM_MISSING",
        field: "payId",
    },
    Case {
        name: "payId with a slash",
        change: |r| set(r, "payId", json!("abc/def")),
        status: 400,
        code: "PARAM_INVALID",
        field: "payId",
    },
    Case {
        name: "payId too long",
        change: |r| set(r, "payId", json!("a".repeat(65))),
        status: 400,
        code: "PARAM_INVALID",
        field: "payId",
    },
    Case {
        name: "plan_id missing",
        change: |r| remove(r, "plan_id"),
        status: 400,
        code: "PARAM_MISSING",
        field: "plan_id",
    },
    Case {
        name: "pm_id missing",
        change: |r| remove(r, "pm_id"),
        status: 400,
        code: "PARAM_MISSING",
        field: "pm_id",
    },
    Case {
        name: "pm_id without pm_",
        change: |r| set(r, "pm_id", json!("card_123")),
        status: 400,
        code: "PARAM_INVALID",
        field: "pm_id",
    },
    Case {
        name: "tradeType missing",
        change: |r| remove(r, "tradeType"),
        status: 400,
        code: "PARAM_MISSING",
        field: "tradeType",
    },
    Case {
        name: "version missing",
        change: |r| remove(r, "version"),
        status: 400,
        code: "PARAM_MISSING",
        field: "version",
    },
    Case {
        name: "version 2.0",
        change: |r| set(r, "version", json!("2.0")),
        status: 400,
        code: "PARAM_INVALID",
        field: "version",
    },
    Case {
        name: "tradeTime not digits",
        change: |r| set(r, "tradeTime", json!("2018-10-31")),
        status: 400,
        code: "PARAM_INVALID",
        field: "tradeTime",
    },
    Case {
        name: "an extra field that is not a string",
        change: |r| set(r, "memo", json!(["x"])),
        status: 400,
        code: "PARAM_INVALID",
        field: "memo",
    },
    Case {
        name: "partner not configured",
        change: |r| set(r, "partnerCode", json!("P404404")),
        status: 401,
        code: "PARTNER_UNKNOWN",
        field: "partnerCode",
    },
    Case {
        name: "tradeTime an hour old",
        change: |r| {
            set(
                r,
                "tradeTime",
                json!((crate::helpers::now_millis() - 3_600_000).to_string()),
            )
        },
        status: 401,
        code: "TRADE_TIME_EXPIRED",
        field: "tradeTime",
    },
    Case {
        name: "tradeTime an hour ahead",
        change: |r| {
            set(
                r,
                "tradeTime",
                json!((crate::helpers::now_millis() + 3_600_000).to_string()),
            )
        },
        status: 401,
        code: "TRADE_TIME_EXPIRED",
        field: "tradeTime",
    },
];

#[tokio::test]
async fn every_validation_rule_answers_its_code_and_names_its_field() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    for case in CASES {
        let mut request = valid_request();
        (case.change)(&mut request);
        let answer = app.subscribe(request).await;
        assert_eq!(
            answer.status, case.status,
            "{}: {:?}",
            case.name, answer.body
        );
        assert_eq!(answer.code(), case.code, "{}: {:?}", case.name, answer.body);
        assert_eq!(
            answer.field(),
            case.field,
            "{}: {:?}",
            case.name,
            answer.body
        );
        assert_eq!(answer.body["operateCode"], "F", "{}", case.name);
    }
    stack.teardown().await;
}

#[tokio::test]
async fn valid_variants_are_accepted() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let variants: [fn(&mut Value); 5] = [
        |r| set(r, "payCurrency", json!("USD")),
        |r| {
            set(r, "payCurrency", json!("jpy"));
            set(r, "payAmount", json!("500"));
        },
        |r| {
            set(r, "payCurrency", json!("kwd"));
            set(r, "payAmount", json!("1.234"));
        },
        |r| {
            set(
                r,
                "memo",
                json!("an unknown extra field, signed like the rest"),
            )
        },
        |r| set(r, "tradeType", json!("payPalPay")),
    ];
    for (index, change) in variants.iter().enumerate() {
        let mut request = valid_request();
        change(&mut request);
        let answer = app.subscribe(request).await;
        assert_eq!(answer.status, 200, "variant {index}: {:?}", answer.body);
        assert_eq!(answer.body["operateCode"], "S", "variant {index}");
    }
    stack.teardown().await;
}

#[tokio::test]
async fn a_wrong_sign_is_refused_in_every_form() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let good = signed(valid_request(), SECRET);
    let sign = good["sign"].as_str().expect("sign").to_owned();
    let mut variants = vec![
        (
            "another partner's secret",
            signed(valid_request(), OTHER_SECRET),
        ),
        ("truncated", {
            let mut r = good.clone();
            r["sign"] = json!(&sign[..31]);
            r
        }),
        ("over another body", {
            let mut r = good.clone();
            r["payAmount"] = json!("29.99");
            r
        }),
        ("not hex", {
            let mut r = good.clone();
            r["sign"] = json!("z".repeat(32));
            r
        }),
    ];
    variants.push(("empty", {
        let mut r = good.clone();
        r["sign"] = json!("");
        r
    }));
    for (name, body) in variants {
        let answer = crate::helpers::Answer::from(
            app.post_raw(
                "/stripeSubDirectly",
                body.to_string(),
                Some("application/json"),
            )
            .await,
        )
        .await;
        let expected = if name == "empty" {
            "PARAM_MISSING"
        } else {
            "SIGN_INVALID"
        };
        assert_eq!(answer.code(), expected, "{name}: {:?}", answer.body);
        assert_eq!(answer.field(), "sign", "{name}");
    }
    // The sign's hex case does not matter.
    let mut upper = good.clone();
    upper["sign"] = json!(sign.to_uppercase());
    let answer = crate::helpers::Answer::from(
        app.post_raw(
            "/stripeSubDirectly",
            upper.to_string(),
            Some("application/json"),
        )
        .await,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    stack.teardown().await;
}

#[tokio::test]
async fn bodies_that_are_not_a_json_object_are_body_invalid() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let duplicate = r#"{"payId":"a","payId":"b"}"#;
    let deep = "[".repeat(10_000);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"payId=1&sign=2".to_vec()),
        ("truncated", br#"{"payId":"#.to_vec()),
        ("an array", b"[]".to_vec()),
        ("a string", br#""hello""#.to_vec()),
        ("a key twice", duplicate.as_bytes().to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("invalid UTF-8", b"{\"payId\":\"\xff\xfe\"}".to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, body) in bodies {
        let answer = crate::helpers::Answer::from(
            app.post_raw("/stripeSubDirectly", body, Some("application/json"))
                .await,
        )
        .await;
        assert_eq!(answer.status, 400, "{name}: {:?}", answer.body);
        assert_eq!(answer.code(), "BODY_INVALID", "{name}: {:?}", answer.body);
    }
    stack.teardown().await;
}

#[tokio::test]
async fn an_oversized_body_is_413_and_a_non_json_content_type_is_415() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let mut big = valid_request();
    big["memo"] = json!("x".repeat(20_000));
    let big = signed(big, SECRET).to_string();
    let answer = crate::helpers::Answer::from(
        app.post_raw("/stripeSubDirectly", big.clone(), Some("application/json"))
            .await,
    )
    .await;
    assert_eq!((answer.status, answer.code()), (413, "BODY_TOO_LARGE"));

    // Without Content-Length (a stream), the limit still holds.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let answer = crate::helpers::Answer::from(
        app.post_raw(
            "/stripeSubDirectly",
            reqwest::Body::wrap_stream(stream),
            Some("application/json"),
        )
        .await,
    )
    .await;
    assert_eq!((answer.status, answer.code()), (413, "BODY_TOO_LARGE"));

    let body = signed(valid_request(), SECRET).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let answer = crate::helpers::Answer::from(
            app.post_raw("/stripeSubDirectly", body.clone(), Some(content_type))
                .await,
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (415, "CONTENT_TYPE_UNSUPPORTED"),
            "{content_type}"
        );
    }
    // A missing Content-Type is taken as JSON; a charset parameter is fine.
    let answer =
        crate::helpers::Answer::from(app.post_raw("/stripeSubDirectly", body, None).await).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let body = signed(valid_request(), SECRET).to_string();
    let answer = crate::helpers::Answer::from(
        app.post_raw(
            "/stripeSubDirectly",
            body,
            Some("application/json; charset=utf-8"),
        )
        .await,
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    stack.teardown().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let answer = crate::helpers::Answer::from(app.get("/nope").await).await;
    assert_eq!((answer.status, answer.code()), (404, "NOT_FOUND"));
    let answer = crate::helpers::Answer::from(app.get("/stripeSubDirectly").await).await;
    assert_eq!((answer.status, answer.code()), (405, "METHOD_NOT_ALLOWED"));
    stack.teardown().await;
}
