//! The push's configuration (docs/operations.md#the-partner-push): defaults, and a bad value names its key.

use std::collections::HashMap;

use autorenew::config::Settings;
use autorenew::domain::push::PushSecret;
use secrecy::ExposeSecret;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, String> {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).expect("write");
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_with_env(Some(&path), Some(env)).map_err(|e| e.to_string())
}

fn partner_with(push: &str) -> String {
    format!("[[partners]]\ncode = \"P1\"\nsecret = \"s\"\n[partners.push]\n{push}\n")
}

fn secret() -> String {
    PushSecret::encode(&[9; 32])
}

#[test]
fn a_push_takes_the_contracts_defaults() {
    let settings = load(
        &partner_with(&format!(
            "url = \"https://partner.example/hook\"\nsecrets = [\"{}\"]",
            secret()
        )),
        &[],
    )
    .expect("loads");
    let push = settings.partners[0].push.as_ref().expect("a push");
    assert_eq!(push.events, ["subscription.*"]);
    assert_eq!(push.max_in_flight, 16);
    assert_eq!(settings.push.timeout_secs, 15.0);
    assert_eq!(
        settings.push.retry_schedule_secs,
        [
            5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0, 86400.0, 86400.0
        ]
    );
    assert_eq!(settings.push.breaker_failures, 10);
    assert_eq!(settings.push.breaker_cooldown_secs, 30.0);
    assert_eq!(settings.push.disable_after_hours, 120.0);
    assert_eq!(settings.push.log_retention_days, 14);
    assert!(!settings.push.allow_http);
    assert!(!settings.push.allow_private_networks);
}

#[test]
fn bad_push_values_name_their_key() {
    let good = secret();
    let cases = [
        (
            format!("url = \"http://partner.example/\"\nsecrets = [\"{good}\"]"),
            "partners[0].push.url",
        ),
        (
            format!("url = \"https://10.0.0.1/\"\nsecrets = [\"{good}\"]"),
            "partners[0].push.url",
        ),
        (
            format!("url = \"not a url\"\nsecrets = [\"{good}\"]"),
            "partners[0].push.url",
        ),
        (
            "url = \"https://partner.example/\"\nsecrets = [\"whsec_c2hvcnQ=\"]".to_owned(),
            "partners[0].push.secrets[0]",
        ),
        (
            "url = \"https://partner.example/\"\nsecrets = [\"plain\"]".to_owned(),
            "partners[0].push.secrets[0]",
        ),
        (
            "url = \"https://partner.example/\"".to_owned(),
            "partners[0].push.secrets",
        ),
        (
            format!(
                "url = \"https://partner.example/\"\nsecrets = [\"{good}\"]\nevents = [\"a..b\"]"
            ),
            "partners[0].push.events",
        ),
        (
            format!(
                "url = \"https://partner.example/\"\nsecrets = [\"{good}\"]\nmax_in_flight = 0"
            ),
            "partners[0].push.max_in_flight",
        ),
    ];
    for (push, named) in cases {
        let error = load(&partner_with(&push), &[]).expect_err(&push);
        assert!(error.contains(named), "{push}: {error}");
        assert!(
            !error.contains(&good[6..]),
            "the error shows a secret: {error}"
        );
    }
    let error = load("[push]\nretry_schedule_secs = []\n", &[]).expect_err("an empty schedule");
    assert!(error.contains("push.retry_schedule_secs"), "{error}");
}

#[test]
fn http_and_private_addresses_are_allowed_when_the_configuration_says_so() {
    let toml = format!(
        "[push]\nallow_http = true\nallow_private_networks = true\n{}",
        partner_with(&format!(
            "url = \"http://127.0.0.1:8090/P1\"\nsecrets = [\"{}\"]",
            secret()
        ))
    );
    assert!(load(&toml, &[]).is_ok());
}

#[test]
fn push_secrets_come_from_the_environment_and_never_print() {
    let value = secret();
    let settings = load(
        &partner_with("url = \"https://partner.example/\"\nsecrets_env = [\"P1_PUSH_SECRET\"]"),
        &[("P1_PUSH_SECRET", value.as_str())],
    )
    .expect("loads");
    let push = settings.partners[0].push.as_ref().expect("a push");
    assert_eq!(push.secrets[0].expose_secret(), value);
    assert!(!format!("{settings:?}").contains(&value[6..]));
    assert_eq!(push.keys().len(), 1);
}
