//! Every known-answer case of the sign: the partner's published examples and ours.

use autorenew::domain::sign;
use serde_json::Value;

use crate::helpers::repo_path;

fn cases(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let vectors: Value = serde_json::from_str(&text).expect("vectors are JSON");
    vectors["cases"].as_array().expect("cases").clone()
}

fn check_all(cases: &[Value]) {
    assert!(cases.len() >= 7, "expected the full vector set");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let params = case["params"].as_object().expect("params");
        let pairs = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().expect("string params")));
        let content = sign::sign_content(pairs);
        assert_eq!(
            content,
            case["signContent"].as_str().expect("signContent"),
            "{name}"
        );
        let secret = case["secret"].as_str().expect("secret");
        let expected = case["sign"].as_str().expect("sign");
        assert_eq!(sign::sign(&content, secret), expected, "{name}");
        assert!(
            sign::verify(&content, secret, &expected.to_uppercase()),
            "{name}"
        );
    }
}

#[test]
fn every_shared_vector_signs_and_verifies() {
    let shared = repo_path("../shared/vectors/sign.json");
    if shared.exists() {
        check_all(&cases(&shared));
    }
    // Our own copy keeps the check alive where ../shared is absent.
    check_all(&cases(&repo_path("tests/data/sign.json")));
}

#[test]
fn the_sign_command_prints_the_documented_sign() {
    let case = &cases(&repo_path("tests/data/sign.json"))[2];
    let body = serde_json::to_string(&case["params"]).expect("json");
    let output =
        autorenew::sign_tool::sign_body(&body, case["secret"].as_str().unwrap_or(""), None)
            .expect("signs");
    assert!(
        output.contains(case["sign"].as_str().expect("sign")),
        "{output}"
    );
}
