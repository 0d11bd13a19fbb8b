//! Partners: several secrets during a rotation, secrets from the environment, and per-partner
//! intake rates that keep one partner's flood from starving the others.

use std::collections::HashMap;

use autorenew::config::Settings;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::helpers::{
    OTHER_PARTNER, OTHER_SECRET, PARTNER, SECRET, TestStack, repo_path, valid_request,
};

#[tokio::test]
async fn during_a_rotation_the_old_and_the_new_secret_both_verify() {
    let stack = TestStack::builder()
        .settings(|settings| {
            let partner = settings
                .partners
                .iter_mut()
                .find(|p| p.code == PARTNER)
                .expect("the demo partner");
            partner.secret = SecretString::from("the-new-secret");
            partner.secrets = vec![SecretString::from(SECRET)];
        })
        .intake()
        .start()
        .await;
    let app = stack.intake();

    let with_old = app
        .post_signed("/stripeSubDirectly", valid_request(), SECRET)
        .await;
    let with_new = app
        .post_signed("/stripeSubDirectly", valid_request(), "the-new-secret")
        .await;
    let with_neither = app
        .post_signed("/stripeSubDirectly", valid_request(), "a-guess")
        .await;

    assert_eq!(with_old.status, 200, "{:?}", with_old.body);
    assert_eq!(with_new.status, 200, "{:?}", with_new.body);
    assert_eq!(
        (with_neither.status, with_neither.code()),
        (401, "SIGN_INVALID")
    );
    stack.teardown().await;
}

#[test]
fn a_partner_secret_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[[partners]]\ncode = \"P1\"\nsecret_env = \"P1_SECRET\"\nsecrets_env = [\"P1_OLD\"]\n",
    )
    .expect("write");
    let env: HashMap<String, String> = [
        ("P1_SECRET".to_owned(), "from-env".to_owned()),
        ("P1_OLD".to_owned(), "old-from-env".to_owned()),
    ]
    .into();

    let settings = Settings::load_with_env(Some(&path), Some(env)).expect("loads");
    let missing = Settings::load_with_env(Some(&path), Some(HashMap::new()))
        .expect_err("the variable is missing")
        .to_string();

    assert_eq!(settings.partners[0].secret.expose_secret(), "from-env");
    assert_eq!(
        settings.partners[0].secrets[0].expose_secret(),
        "old-from-env"
    );
    assert!(missing.contains("partners[0].secret_env"), "{missing}");
    assert!(repo_path("config.toml").exists());
}

#[tokio::test]
async fn a_partner_over_its_rate_gets_429_and_others_are_not_slowed() {
    let stack = TestStack::builder()
        .settings(|settings| {
            for partner in &mut settings.partners {
                if partner.code == PARTNER {
                    partner.rate_limit_per_second = Some(5);
                }
            }
        })
        .intake()
        .start()
        .await;
    let app = stack.intake();

    let flood =
        futures_util::future::join_all((0..30).map(|_| app.subscribe(valid_request()))).await;
    let mut other = valid_request();
    other["partnerCode"] = json!(OTHER_PARTNER);
    let neighbour = app
        .post_signed("/stripeSubDirectly", other, OTHER_SECRET)
        .await;

    let limited: Vec<_> = flood.iter().filter(|a| a.status == 429).collect();
    let accepted = flood.iter().filter(|a| a.status == 200).count();
    assert!(!limited.is_empty(), "the flood was limited");
    assert!(
        (1..=10).contains(&accepted),
        "about one second's worth got in: {accepted}"
    );
    for answer in &limited {
        assert_eq!(answer.code(), "RATE_LIMITED");
        assert!(answer.retry_after.is_some());
    }
    assert_eq!(neighbour.status, 200, "{:?}", neighbour.body);
    stack.teardown().await;
}
