//! The intake's and worker's pure hot paths: the sign check, request validation, and a job's
//! encode/decode. `cargo bench --bench domain`.

use std::hint::black_box;

use autorenew::domain::{Job, SignedFields, SubscriptionRequest, sign};
use criterion::{Criterion, criterion_group, criterion_main};

const SECRET: &str = "s3cr3t-P000818";

/// The documented example request, signed for the demo partner.
fn body() -> Vec<u8> {
    let unsigned = r#"{"email":"421516116@qq.com","partnerCode":"P000818","payAmount":"19.99","payCurrency":"usd","payId":"P0002702020110214193780630","plan_id":"PLAN_MONTHLY_1GB","pm_id":"pm_1GnMUDLnVNBddzslXw7xuoe6","tradeTime":"1764108000000","tradeType":"stripeSubDirectly","version":"3.0"}"#;
    let fields = SignedFields::parse(unsigned.as_bytes(), &[]).expect("the example parses");
    let sign = sign::sign(&fields.sign_content(), SECRET);
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(unsigned).expect("the example is JSON");
    object.insert("sign".into(), serde_json::Value::String(sign));
    serde_json::to_vec(&object).expect("a map of strings serializes")
}

fn benches(c: &mut Criterion) {
    let body = body();
    let (request, fields) = SubscriptionRequest::parse(&body).expect("the example is valid");

    c.bench_function("parse and validate a request", |b| {
        b.iter(|| SubscriptionRequest::parse(black_box(&body)))
    });
    c.bench_function("verify the sign", |b| {
        // As the intake checks it (`Partner::verifies`): signContent, then the sign of one secret.
        b.iter(|| {
            let fields = black_box(&fields);
            sign::verify(
                &fields.sign_content(),
                black_box(SECRET),
                fields.get(sign::SIGN_FIELD),
            )
        })
    });
    c.bench_function("fingerprint", |b| {
        b.iter(|| black_box(&fields).fingerprint())
    });

    let job = Job::new(
        &request,
        Default::default(),
        "2026-11-26T00:00:00Z".into(),
        "req-1".into(),
    );
    let encoded = job.encode();
    c.bench_function("encode a job", |b| b.iter(|| black_box(&job).encode()));
    c.bench_function("decode a job", |b| {
        b.iter(|| Job::decode(black_box(&encoded)))
    });
}

criterion_group!(domain, benches);
criterion_main!(domain);
