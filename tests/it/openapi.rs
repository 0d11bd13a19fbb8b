//! The OpenAPI document (`src/intake/openapi.json`) against the code: every field and its
//! rules, every errorCode with its HTTP status, every route, and `GET /openapi.json` serving it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use autorenew::broker::BrokerError;
use autorenew::domain::authorization::{AUTHORIZATION_FIELDS, AUTHORIZATION_TRADE_TYPE};
use autorenew::domain::cancel::{CANCEL_FIELDS, CANCEL_TRADE_TYPE};
use autorenew::domain::money::Currency;
use autorenew::domain::push_calls::{QUERY_NOTIFICATIONS_FIELDS, RECOVER_FIELDS, RESEND_FIELDS};
use autorenew::domain::renewal::{QUERY_TRADE_TYPE, RENEWAL_QUERY_FIELDS};
use autorenew::domain::request::{RESULT_QUERY_FIELDS, SUBSCRIPTION_FIELDS, VERSION};
use autorenew::domain::webhook::SignatureError;
use autorenew::domain::{FailureCode, FieldError};
use autorenew::intake::IntakeError;
use autorenew::store::StoreError;
use serde_json::Value;

use crate::helpers::{FLAT_FIELDS, TestStack};

const DOCUMENT: &str = include_str!("../../src/intake/openapi.json");

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`) to what it names.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(doc, doc.pointer(pointer).expect("the $ref resolves"))
        }
        None => value,
    }
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The `errorCode` values a response allows: the narrowing `allOf` branch, else the schema's own.
fn response_codes(doc: &Value, response: &Value) -> BTreeSet<String> {
    let schema = resolve(doc, &response["content"]["application/json"]["schema"]);
    let branches: Vec<&Value> = match schema.get("allOf").and_then(Value::as_array) {
        Some(all) => all.iter().map(|branch| resolve(doc, branch)).collect(),
        None => vec![schema],
    };
    branches
        .iter()
        .rev()
        .find_map(|branch| branch["properties"]["errorCode"].get("enum"))
        .map(strings)
        .unwrap_or_default()
}

/// (HTTP status, errorCode) pairs the document declares, over every operation and every
/// reusable response (which says its status in `x-status`).
fn declared_pairs(doc: &Value) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for item in doc["paths"].as_object().expect("paths").values() {
        for operation in item.as_object().expect("path item").values() {
            for (status, response) in operation["responses"].as_object().expect("responses") {
                let response = resolve(doc, response);
                if let Some(declared) = response.get("x-status") {
                    assert_eq!(
                        declared, status,
                        "a reusable response used under another status"
                    );
                }
                for code in response_codes(doc, response) {
                    pairs.insert((status.clone(), code));
                }
            }
        }
    }
    for response in doc["components"]["responses"]
        .as_object()
        .expect("components.responses")
        .values()
    {
        let status = response["x-status"].as_str().expect("x-status").to_owned();
        for code in response_codes(doc, response) {
            pairs.insert((status.clone(), code));
        }
    }
    pairs
}

/// One intake error of each kind (the unit test in `src/intake/error.rs` keeps
/// `IntakeError::ERROR_CODES` complete; this list covers each of its codes).
fn one_of_each() -> Vec<IntakeError> {
    vec![
        IntakeError::BodyTooLarge { limit: 16 },
        IntakeError::ContentType("text/plain".into()),
        IntakeError::SlowBody(10),
        IntakeError::Field(FieldError::Body("not JSON".into())),
        IntakeError::Field(FieldError::Missing {
            field: "email".into(),
        }),
        IntakeError::Field(FieldError::invalid("email", "must be an email address")),
        IntakeError::PartnerUnknown("P0".into()),
        IntakeError::SignInvalid,
        IntakeError::TradeTimeExpired { max_skew_ms: 1 },
        IntakeError::PayIdUnknown,
        IntakeError::PayIdConflict,
        IntakeError::PayIdBusy,
        IntakeError::PayIdNotCancelable("canceled already"),
        IntakeError::WebhookSignature(SignatureError::Missing),
        IntakeError::WebhookEventBusy,
        IntakeError::NotificationUnknown,
        IntakeError::RateLimited,
        IntakeError::NotFound,
        IntakeError::MethodNotAllowed,
        IntakeError::Broker(BrokerError::Unavailable),
        IntakeError::Store(StoreError::Timeout(Duration::from_millis(1))),
        IntakeError::StripeUnavailable("timed out".into()),
        IntakeError::StripeRejected("invalid".into()),
    ]
}

fn failure_codes() -> BTreeSet<String> {
    use FailureCode::*;
    let all = [
        CardDeclined,
        PaymentMethodUnavailable,
        StripeRejected,
        StripeUnavailable,
        InternalError,
    ];
    for code in &all {
        // A new variant fails to compile here until it is listed above.
        match code {
            CardDeclined
            | PaymentMethodUnavailable
            | StripeRejected
            | StripeUnavailable
            | InternalError => {}
        }
    }
    all.iter().map(|code| code.as_str().to_owned()).collect()
}

#[test]
fn the_document_is_openapi_3() {
    let doc = document();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/stripeSubDirectly",
        "/stripeSubAuthorization",
        "/resultQuery",
        "/cancelAutoRenewalRecord",
        "/queryAutoRenewalRecord",
        "/stripe/webhook",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    let prefer = doc["paths"]["/stripeSubDirectly"]["post"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| resolve(&doc, p))
        .any(|p| p["name"] == "Prefer" && p["in"] == "header");
    assert!(prefer, "the Prefer header is not documented");
}

#[test]
fn the_request_schemas_list_every_field_as_a_required_non_empty_string() {
    let doc = document();
    // (schema, required fields, optional fields)
    for (name, fields, optional) in [
        ("SubscriptionRequest", SUBSCRIPTION_FIELDS, &[][..]),
        ("AuthorizationRequest", AUTHORIZATION_FIELDS, &[]),
        ("ResultQueryRequest", RESULT_QUERY_FIELDS, &[]),
        ("CancelRequest", CANCEL_FIELDS, &["when"]),
        ("RenewalQueryRequest", RENEWAL_QUERY_FIELDS, &[]),
        ("NotificationQueryRequest", QUERY_NOTIFICATIONS_FIELDS, &[]),
        ("ResendNotificationRequest", RESEND_FIELDS, &[]),
        ("RecoverNotificationsRequest", RECOVER_FIELDS, &["until"]),
    ] {
        let schema = schema(&doc, name);
        let required: Vec<&str> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            required, fields,
            "{name}: required fields, in checking order"
        );
        let properties = schema["properties"].as_object().expect("properties");
        let documented: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        let code: BTreeSet<&str> = fields.iter().chain(optional).copied().collect();
        assert_eq!(documented, code, "{name}: documented fields");
        for (field, rule) in properties {
            assert_eq!(rule["type"], "string", "{name}.{field}");
            let non_empty =
                rule["minLength"].as_u64().is_some_and(|n| n >= 1) || rule.get("enum").is_some();
            assert!(non_empty, "{name}.{field} may be empty");
            assert!(
                rule["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}.{field} has no description"
            );
        }
        assert_eq!(
            schema["additionalProperties"]["type"], "string",
            "{name}: extra fields are strings"
        );
        assert_eq!(
            strings(&properties["version"]["enum"]),
            BTreeSet::from([VERSION.to_owned()])
        );
    }
}

#[test]
fn the_renewal_endpoints_document_their_trade_type_and_when() {
    let doc = document();
    for (name, trade_type) in [
        ("CancelRequest", CANCEL_TRADE_TYPE),
        ("RenewalQueryRequest", QUERY_TRADE_TYPE),
        ("AuthorizationRequest", AUTHORIZATION_TRADE_TYPE),
    ] {
        assert_eq!(
            strings(&schema(&doc, name)["properties"]["tradeType"]["enum"]),
            BTreeSet::from([trade_type.to_owned()]),
            "{name}.tradeType"
        );
    }
    assert_eq!(
        strings(&schema(&doc, "CancelRequest")["properties"]["when"]["enum"]),
        BTreeSet::from(["now".to_owned(), "period_end".to_owned()])
    );
}

#[test]
fn the_field_patterns_agree_with_the_validation() {
    let doc = document();
    let props = &schema(&doc, "SubscriptionRequest")["properties"];
    assert_eq!(props["payId"]["pattern"], "^[A-Za-z0-9_-]{1,64}$");
    assert_eq!(props["pm_id"]["pattern"], "^pm_[A-Za-z0-9_]+$");
    assert_eq!(props["plan_id"]["maxLength"], 100);
    assert_eq!(props["tradeTime"]["pattern"], "^[0-9]{1,16}$");
    // payCurrency: exactly the codes the validation accepts, lower and upper case.
    let listed = strings(&props["payCurrency"]["enum"]);
    let mut accepted = BTreeSet::new();
    for a in b'a'..=b'z' {
        for b in b'a'..=b'z' {
            for c in b'a'..=b'z' {
                let code = String::from_utf8(vec![a, b, c]).expect("ascii");
                if Currency::parse(&code).is_some() {
                    accepted.insert(code.to_ascii_uppercase());
                    accepted.insert(code);
                }
            }
        }
    }
    assert!(!accepted.is_empty());
    assert_eq!(listed, accepted, "payCurrency");
}

#[test]
fn every_error_code_is_documented_with_its_status() {
    let doc = document();
    let refusal = strings(&schema(&doc, "Refusal")["properties"]["errorCode"]["enum"]);
    let listed: BTreeSet<String> = IntakeError::ERROR_CODES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    assert_eq!(refusal, listed, "Refusal.errorCode");

    let declared = declared_pairs(&doc);
    let mut covered = BTreeSet::new();
    for error in one_of_each() {
        let pair = (error.status().as_u16().to_string(), error.code().to_owned());
        assert!(
            declared.contains(&pair),
            "{} {} is not documented",
            pair.0,
            pair.1
        );
        covered.insert(error.code());
    }
    for code in IntakeError::ERROR_CODES {
        assert!(covered.contains(code), "{code}: add it to one_of_each");
    }
    // Nothing documented that the intake cannot answer: its refusals, and a failed job's
    // code on a 200.
    let mut answered: BTreeSet<(String, String)> = one_of_each()
        .iter()
        .map(|e| (e.status().as_u16().to_string(), e.code().to_owned()))
        .collect();
    answered.extend(failure_codes().into_iter().map(|c| ("200".to_owned(), c)));
    let extra: Vec<_> = declared.difference(&answered).collect();
    assert!(extra.is_empty(), "documented but never answered: {extra:?}");
}

#[test]
fn job_failure_codes_are_documented() {
    let doc = document();
    let codes = failure_codes();
    assert_eq!(
        strings(&schema(&doc, "JobStatus")["properties"]["errorCode"]["enum"]),
        codes
    );
    assert_eq!(
        strings(&schema(&doc, "FailureDetail")["properties"]["code"]["enum"]),
        codes
    );
}

#[test]
fn every_response_schema_has_the_flat_fields() {
    let doc = document();
    for name in [
        "JobStatus",
        "Refusal",
        "RenewalRecord",
        "WebhookReceipt",
        "Notifications",
        "ResendReceipt",
        "RecoverReceipt",
        "Authorization",
    ] {
        let required = strings(&schema(&doc, name)["required"]);
        for field in FLAT_FIELDS {
            assert!(required.contains(*field), "{name} does not require {field}");
        }
    }
}

/// The documented operations, as (method, path, documented statuses).
fn operations(doc: &Value) -> Vec<(String, String, BTreeMap<String, Value>)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let statuses = operation["responses"]
                .as_object()
                .expect("responses")
                .iter()
                .map(|(status, response)| (status.clone(), resolve(doc, response).clone()))
                .collect();
            all.push((method.clone(), path.clone(), statuses));
        }
    }
    all
}

#[tokio::test]
async fn the_intake_serves_the_document_and_every_documented_route() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();

    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let served: Value = response.json().await.expect("JSON");
    assert_eq!(served, document());

    for (method, path, statuses) in operations(&document()) {
        let response = match method.as_str() {
            "get" => app.get(&path).await,
            // An empty object: routed, and refused for its first missing field.
            "post" => app.post_raw(&path, "{}", Some("application/json")).await,
            other => panic!("{other} {path}: no probe for this method"),
        };
        let status = response.status().as_u16().to_string();
        assert!(
            statuses.contains_key(&status),
            "{method} {path} answered {status}, which is not documented"
        );
        // The webhook is signed by Stripe, not a partner: no secret is configured here (404).
        if method == "post" && path != "/stripe/webhook" {
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(body["errorCode"], "PARAM_MISSING", "{path}: {body}");
        }
    }
    stack.teardown().await;
}
