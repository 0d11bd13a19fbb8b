//! Hostile input against a running intake: hundreds of generated malformed, oversized,
//! mis-encoded, look-alike and mis-signed requests, each with the docs/partners.md#what-to-do-with-each-answer answer it
//! deserves, sent concurrently in bounded batches with valid requests interleaved. Never a 5xx,
//! never a non-JSON answer, never a hang; valid traffic is accepted throughout.
//! `slow` covers what needs raw TCP: slow bodies, slow and oversized headers.

mod cases;
mod slow;

use std::collections::BTreeMap;

use futures_util::future::join_all;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use self::cases::{Body, Case, Expect};
use crate::helpers::{
    FLAT_FIELDS, OTHER_PARTNER, OTHER_SECRET, PARTNER, SECRET, TestApp, TestStack,
};

/// Requests in flight at once: enough to interleave, few enough for two shared cores.
const BATCH: usize = 16;

/// Sends one case; the answer's status and JSON body, or why there is none.
async fn send(app: &TestApp, case: &Case) -> Result<(u16, Value), String> {
    let mut request = app
        .client
        .request(case.method.clone(), format!("{}{}", app.address, case.path));
    if let Some(content_type) = &case.content_type {
        let value = HeaderValue::from_bytes(content_type).map_err(|e| format!("header: {e}"))?;
        request = request.header(CONTENT_TYPE, value);
    }
    for (name, value) in &case.headers {
        let value = HeaderValue::from_bytes(value).map_err(|e| format!("header: {e}"))?;
        request = request.header(*name, value);
    }
    request = match &case.body {
        Body::Sized(bytes) => request.body(bytes.clone()),
        Body::Chunked(bytes, piece) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                bytes.chunks(*piece).map(|c| Ok(c.to_vec())).collect();
            request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        }
    };
    // The client's own timeout (15 s) turns a hang into a failure here.
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e:?}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type.starts_with("application/json") {
        return Err(format!("{status} with Content-Type {content_type:?}"));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("{status}, body unreadable: {e}"))?;
    let body = serde_json::from_str(&text).map_err(|_| format!("{status}, not JSON: {text:?}"))?;
    Ok((status, body))
}

/// What is wrong with an answer, if anything.
fn check(case: &Case, status: u16, body: &Value) -> Result<(), String> {
    if status >= 500 {
        return Err(format!("a server error {status}: {body}"));
    }
    for field in FLAT_FIELDS {
        if !body[field].is_string() {
            return Err(format!("{status}: flat field `{field}` missing: {body}"));
        }
    }
    // An accepted request answers for its own payId; a refusal echoes one only when it is a
    // well-formed payId (never the hostile bytes).
    let pay_id = body["payId"].as_str().unwrap_or("");
    let sent: Option<String> = match &case.body {
        Body::Sized(bytes) | Body::Chunked(bytes, _) => serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v["payId"].as_str().map(str::to_owned)),
    };
    let well_formed = pay_id.len() <= 64
        && pay_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !well_formed || (case.expect == Expect::Accepted && sent.as_deref() != Some(pay_id)) {
        return Err(format!("answered for payId {pay_id:?}, sent {sent:?}"));
    }
    let code = body["errorCode"].as_str().unwrap_or("");
    let field = body["field"].as_str().unwrap_or("");
    let operate = body["operateCode"].as_str().unwrap_or("");
    match case.expect {
        Expect::Accepted if status == 200 && operate == "S" && code.is_empty() => Ok(()),
        Expect::Refused(s, c, f) if status == s && operate == "F" && code == c && field == f => {
            Ok(())
        }
        expect => Err(format!(
            "expected {expect:?}, got {status} {operate} {code:?} field {field:?}: {}",
            body["message"]
        )),
    }
}

/// Runs `cases` in batches of `BATCH`, each with a valid request; returns the failures and
/// the bodies of the interleaved valid requests.
async fn run(app: &TestApp, cases: &[Case]) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut failures = Vec::new();
    let mut valid_bodies = Vec::new();
    for batch in cases.chunks(BATCH) {
        let valid = cases::valid();
        let all: Vec<&Case> = batch.iter().chain(std::iter::once(&valid)).collect();
        let answers = join_all(all.iter().map(|case| send(app, case))).await;
        for (case, answer) in all.iter().zip(answers) {
            let verdict = answer.and_then(|(status, body)| check(case, status, &body));
            if let Err(why) = verdict {
                failures.push(format!("[{}] {}: {why}", case.category, case.name));
            }
        }
        if let Body::Sized(bytes) = &valid.body {
            valid_bodies.push(bytes.clone());
        }
    }
    (failures, valid_bodies)
}

#[tokio::test]
async fn hostile_requests_get_their_codes_and_valid_traffic_keeps_flowing() {
    let stack = TestStack::builder().intake().start().await;
    let app = stack.intake();
    let limit = app.settings.intake.max_body_bytes;
    let skew_ms = app.settings.intake.max_clock_skew_ms;

    // One accepted payId per partner, for the resultQuery cases.
    let mut seeds = Vec::new();
    for (partner, secret) in [(PARTNER, SECRET), (OTHER_PARTNER, OTHER_SECRET)] {
        let (pay_id, body) = cases::seed(partner, secret);
        let answer = crate::helpers::Answer::from(
            app.post_raw("/stripeSubDirectly", body, Some("application/json"))
                .await,
        )
        .await;
        assert_eq!(answer.body["operateCode"], "S", "seed: {:?}", answer.body);
        seeds.push(pay_id);
    }

    let first = cases::all(limit, skew_ms, &seeds[0], &seeds[1]);
    let (mut failures, accepted) = run(app, &first).await;
    // Replays and conflicts over requests the first round accepted.
    let second = cases::replays(&accepted[..accepted.len().min(4)]);
    let (more, _) = run(app, &second).await;
    failures.extend(more);

    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    for case in first.iter().chain(&second) {
        *per_category.entry(case.category).or_default() += 1;
    }
    let total = first.len() + second.len();
    eprintln!("hostile: {total} cases {per_category:?}");
    assert!(total >= 200, "only {total} cases");
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Still serving after all of it.
    assert_eq!(app.get("/healthz").await.status(), 200);
    let answer = app.subscribe(crate::helpers::valid_request()).await;
    assert_eq!(answer.body["operateCode"], "S", "{:?}", answer.body);
    stack.teardown().await;
}
