//! Configuration: the repo's config.toml works, the environment overrides it, and a bad value
//! stops start-up with a message that names the key.

use std::collections::HashMap;
use std::process::Command;

use autorenew::config::Settings;

use crate::helpers::repo_path;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_repo_config_loads_and_the_environment_overrides_it() {
    let settings = Settings::load_with_env(
        Some(&repo_path("config.toml")),
        Some(env(&[
            ("AUTORENEW__AMQP__PREFIX", "elsewhere"),
            ("AUTORENEW__INTAKE__MAX_BODY_BYTES", "4096"),
        ])),
    )
    .expect("loads");
    assert_eq!(settings.amqp.prefix, "elsewhere");
    assert_eq!(settings.intake.max_body_bytes, 4096);
    assert_eq!(settings.partners[0].code, "P000818");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        (
            "AUTORENEW__INTAKE__LISTEN",
            "not-an-address",
            "intake.listen",
        ),
        ("AUTORENEW__AMQP__URL", "http://x", "amqp.url"),
        ("AUTORENEW__AMQP__PREFIX", "has space", "amqp.prefix"),
        ("AUTORENEW__WORKER__CONCURRENCY", "0", "worker.concurrency"),
        (
            "AUTORENEW__STRIPE__SECRET_KEY",
            "pk_test_123",
            "stripe.secret_key",
        ),
        (
            "AUTORENEW__INTAKE__MAX_BODY_BYTES",
            "lots",
            "max_body_bytes",
        ),
    ];
    for (key, value, named) in cases {
        let error =
            Settings::load_with_env(Some(&repo_path("config.toml")), Some(env(&[(key, value)])))
                .expect_err(key)
                .to_string();
        assert!(error.contains(named), "{key}={value}: {error}");
    }
}

#[test]
fn a_partner_with_an_empty_secret_needs_allow_empty_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[[partners]]\ncode = \"P1\"\nsecret = \"\"\n").expect("write");
    let error = Settings::load_with_env(Some(&path), Some(HashMap::new()))
        .expect_err("empty secret")
        .to_string();
    assert!(error.contains("partners[0].secret"), "{error}");

    std::fs::write(
        &path,
        "[[partners]]\ncode = \"P1\"\nsecret = \"\"\nallow_empty_secret = true\n",
    )
    .expect("write");
    assert!(Settings::load_with_env(Some(&path), Some(HashMap::new())).is_ok());
}

#[test]
fn a_partner_weight_defaults_to_one_and_a_bad_weight_or_code_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    let load = |text: &str| {
        std::fs::write(&path, text).expect("write");
        Settings::load_with_env(Some(&path), Some(HashMap::new()))
    };
    let settings = load(
        "[[partners]]\ncode = \"P1\"\nsecret = \"s\"\n[[partners]]\ncode = \"P2\"\nsecret = \"s\"\nweight = 3\n",
    )
    .expect("two partners");
    let weights: Vec<u32> = settings.partners.iter().map(|p| p.weight).collect();
    assert_eq!(weights, [1, 3]);

    for (text, named) in [
        (
            "[[partners]]\ncode = \"P1\"\nsecret = \"s\"\nweight = 0\n",
            "partners[0].weight",
        ),
        (
            "[[partners]]\ncode = \"P1\"\nsecret = \"s\"\nweight = 1001\n",
            "partners[0].weight",
        ),
        // The code names the partner's queue: no dots, spaces or wildcards.
        (
            "[[partners]]\ncode = \"P.1\"\nsecret = \"s\"\n",
            "partners[0].code",
        ),
    ] {
        let error = load(text).expect_err(text).to_string();
        assert!(error.contains(named), "{text}: {error}");
    }
}

#[test]
fn the_binary_refuses_to_start_on_a_bad_configuration() {
    let output = Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("--config")
        .arg(repo_path("config.toml"))
        .arg("intake")
        .env("AUTORENEW__REDIS__URL", "nope://x")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis.url"), "{stderr}");
}

#[test]
fn webhook_secrets_come_from_the_environment_as_a_list_and_never_print() {
    let settings = Settings::load_with_env(
        Some(&repo_path("config.toml")),
        Some(env(&[(
            "AUTORENEW__STRIPE__WEBHOOK_SECRETS",
            "whsec_new_one,whsec_old_one",
        )])),
    )
    .expect("loads");
    let secrets: Vec<&str> = settings
        .stripe
        .webhook_secrets
        .iter()
        .map(secrecy::ExposeSecret::expose_secret)
        .collect();
    assert_eq!(secrets, ["whsec_new_one", "whsec_old_one"]);
    assert_eq!(settings.stripe.webhook_tolerance_secs, 300);
    let printed = format!("{settings:?}");
    assert!(
        !printed.contains("whsec_new_one"),
        "a secret in Debug output"
    );

    let error = Settings::load_with_env(
        Some(&repo_path("config.toml")),
        Some(env(&[(
            "AUTORENEW__STRIPE__WEBHOOK_SECRETS",
            "sk_test_oops",
        )])),
    )
    .expect_err("not a webhook secret")
    .to_string();
    assert!(error.contains("stripe.webhook_secrets"), "{error}");
    assert!(
        !error.contains("sk_test_oops"),
        "the value is not echoed: {error}"
    );
}

#[test]
fn give_up_after_reads_seconds_or_a_unit_and_names_itself_when_wrong() {
    let load = |value: &str| {
        Settings::load_with_env(
            Some(&repo_path("config.toml")),
            Some(env(&[("AUTORENEW__WORKER__GIVE_UP_AFTER", value)])),
        )
    };
    let day = std::time::Duration::from_secs(86_400);
    let repo = Settings::load_with_env(Some(&repo_path("config.toml")), Some(HashMap::new()))
        .expect("loads");
    assert_eq!(repo.worker.give_up_after.0, day, "the default is a day");
    assert_eq!(load("86400").expect("seconds").worker.give_up_after.0, day);
    assert_eq!(load("24h").expect("a unit").worker.give_up_after.0, day);
    let wrong = load("soon").expect_err("refused").to_string();
    assert!(wrong.contains("give_up_after"), "{wrong}");
}

#[test]
fn every_list_key_is_set_from_the_environment_comma_separated() {
    let settings = Settings::load_with_env(
        Some(&repo_path("config.toml")),
        Some(env(&[
            ("AUTORENEW__AMQP__RETRY_DELAYS_MS", "1000,2000"),
            ("AUTORENEW__STRIPE__WEBHOOK_SECRETS", "whsec_a,whsec_b"),
            // A comma in a key that is not a list stays in its one string.
            (
                "AUTORENEW__AMQP__URL",
                "amqp://a:5672/%2f,amqp://b:5672/%2f",
            ),
        ])),
    )
    .expect("loads");

    assert_eq!(settings.amqp.retry_delays_ms, [1000, 2000]);
    let secrets: Vec<&str> = settings
        .stripe
        .webhook_secrets
        .iter()
        .map(secrecy::ExposeSecret::expose_secret)
        .collect();
    assert_eq!(secrets, ["whsec_a", "whsec_b"]);
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&settings.amqp.url),
        "amqp://a:5672/%2f,amqp://b:5672/%2f"
    );
    for key in autorenew::config::LIST_KEYS {
        let variable = format!("AUTORENEW__{}", key.replace('.', "__").to_uppercase());
        let value = if key.contains("secret") {
            "whsec_x,whsec_y"
        } else {
            "1,2"
        };
        Settings::load_with_env(
            Some(&repo_path("config.toml")),
            Some(env(&[(variable.as_str(), value)])),
        )
        .unwrap_or_else(|e| panic!("{variable}={value}: {e}"));
    }
}

#[test]
fn a_bad_configuration_is_reported_once() {
    let output = Command::new(env!("CARGO_BIN_EXE_autorenew"))
        .arg("--config")
        .arg(repo_path("config.toml"))
        .arg("intake")
        .env("AUTORENEW__AMQP__RETRY_DELAYS_MS", "1000,soon")
        .output()
        .expect("runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("retry_delays_ms"), "{stderr}");
    assert_eq!(
        stderr.matches("retry_delays_ms").count(),
        1,
        "said once: {stderr}"
    );
}
