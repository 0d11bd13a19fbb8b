//! A test bed for the push: a receiver on a random port, two partners pushing to it, a
//! notifier in process (or as a child process), and result events published straight onto
//! the results exchange, as a worker publishes them. Its own prefixes.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use autorenew::broker::Topology;
use autorenew::config::{PartnerPush, Settings};
use autorenew::domain::push::PushSecret;
use autorenew::push::receiver::{self, Behaviour, Receiver};
use autorenew::store::Store;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    SHARED_AMQP, SHARED_REDIS, delete_keys, poll_until, shared_amqp, test_settings,
};

pub struct Bed {
    pub settings: Settings,
    pub receiver: Arc<Receiver>,
    pub secret: String,
    pub store: Store,
    stops: Vec<CancellationToken>,
    _config_dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

/// Settings with a push for both test partners to `base/<partner>`, short retries, quick
/// timeouts.
pub fn push_settings(base: &str, secret: &str) -> Settings {
    let mut settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    settings.push.allow_http = true;
    settings.push.allow_private_networks = true;
    settings.push.listen = "127.0.0.1:0".into();
    settings.push.timeout_secs = 2.0;
    settings.push.connect_timeout_secs = 1.0;
    settings.push.retry_schedule_secs = vec![0.2, 0.4, 0.6];
    settings.push.breaker_failures = 1_000;
    settings.push.breaker_cooldown_secs = 0.5;
    settings.push.breaker_cooldown_max_secs = 2.0;
    for partner in settings.partners.iter_mut() {
        partner.push = Some(PartnerPush {
            url: format!("{base}/{}", partner.code),
            secrets: vec![SecretString::from(secret.to_owned())],
            secrets_env: Vec::new(),
            events: vec!["subscription.*".into()],
            max_in_flight: 4,
        });
    }
    settings
}

impl Bed {
    pub async fn start(tweak: impl FnOnce(&mut Settings)) -> Bed {
        let secret = PushSecret::encode(uuid::Uuid::new_v4().simple().to_string().as_bytes());
        let key = PushSecret::parse(&secret).expect("secret");
        let app = receiver::Application::build(
            "127.0.0.1:0".parse().expect("addr"),
            Receiver::new(vec![key], 300, true),
        )
        .await
        .expect("the receiver binds");
        let receiver_base = format!("http://{}", app.local_addr());
        let receiver = app.receiver();
        let receiver_stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(receiver_stop.clone()));
        let mut settings = push_settings(&receiver_base, &secret);
        tweak(&mut settings);
        settings.check().expect("the test settings are valid");
        let config_dir = tempfile::tempdir().expect("dir");
        let config_path = config_dir.path().join("config.toml");
        std::fs::write(&config_path, config_file(&settings, &secret)).expect("config");
        let store = Store::new(&settings.redis).expect("store");
        Bed {
            settings,
            receiver,
            secret,
            store,
            stops: vec![receiver_stop],
            _config_dir: config_dir,
            config_path,
        }
    }

    /// Starts a notifier in this process and waits until its lanes consume.
    pub async fn spawn_notifier(&mut self) -> CancellationToken {
        let stop = CancellationToken::new();
        let app = autorenew::push::Application::build(&self.settings)
            .await
            .expect("the notifier builds");
        let probes = format!("http://{}/readyz", app.local_addr());
        tokio::spawn(app.run_until_stopped(stop.clone()));
        self.stops.push(stop.clone());
        let client = reqwest::Client::new();
        let ready = poll_until(Duration::from_secs(20), || async {
            match client.get(&probes).send().await {
                Ok(response) => response
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|body| body["consuming"].as_array().is_some_and(|l| l.len() == 2)),
                Err(_) => false,
            }
        })
        .await;
        assert!(ready, "the notifier's lanes did not start consuming");
        stop
    }

    /// Starts `autorenew notifier` as a child process with this bed's configuration and waits
    /// until it has declared the push queues; the process is killed when the guard drops.
    pub async fn notifier_process(&self) -> ChildGuard {
        let child = Command::new(env!("CARGO_BIN_EXE_autorenew"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("notifier")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("autorenew notifier starts");
        let guard = ChildGuard(child);
        let declared = poll_until(Duration::from_secs(20), || async {
            self.try_queued(crate::helpers::PARTNER).await.is_some()
        })
        .await;
        assert!(declared, "the notifier process did not declare its queues");
        guard
    }

    pub fn behave(&self, partner: &str, behaviour: Behaviour) {
        self.receiver.behave(partner, behaviour);
    }

    /// Publishes a result event for `partner` as a worker does; answers its id and bytes.
    pub async fn publish(&self, partner: &str) -> (String, Vec<u8>) {
        self.publish_many(partner, 1).await.remove(0)
    }

    pub async fn publish_many(&self, partner: &str, count: usize) -> Vec<(String, Vec<u8>)> {
        let connection = shared_amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let exchange = Topology::from_settings(&self.settings).results();
        let mut published = Vec::new();
        for _ in 0..count {
            let pay_id = format!("T{}", uuid::Uuid::new_v4().simple());
            let id = format!("{pay_id}:succeeded");
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .expect("time");
            let body = serde_json::to_vec(&json!({
                "specversion": "1.0", "id": id, "source": "autorenew/test",
                "type": "autorenew.subscription.succeeded", "subject": pay_id, "time": now,
                "datacontenttype": "application/json",
                "data": {"payId": pay_id, "partnerCode": partner, "status": "active"},
            }))
            .expect("JSON");
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    format!("subscription.succeeded.{partner}").as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/cloudevents+json".into())
                        .with_message_id(id.as_str().into()),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            published.push((id, body));
        }
        let _ = connection.close(200, "done".into()).await;
        published
    }

    /// Messages in a partner's push queue now (panics when it does not exist).
    pub async fn queued(&self, partner: &str) -> u32 {
        self.try_queued(partner)
            .await
            .expect("the partner's queue exists")
    }

    /// Messages in a partner's push queue now; None until a process declared it.
    pub async fn try_queued(&self, partner: &str) -> Option<u32> {
        let connection = shared_amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let queue = Topology::from_settings(&self.settings).push_queue(partner);
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok();
        let _ = connection.close(200, "done".into()).await;
        declared.map(|d| d.message_count())
    }

    pub async fn teardown(self) {
        for stop in &self.stops {
            stop.cancel();
        }
        let topology = Topology::from_settings(&self.settings);
        crate::helpers::delete_topology(&topology).await;
        delete_keys(
            self.settings.redis.url.expose_secret(),
            &self.settings.redis.key_prefix,
        )
        .await;
    }
}

/// A child process, killed (SIGKILL) when dropped, so a failed test leaves none behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bed's settings as a file, for child processes.
fn config_file(settings: &Settings, secret: &str) -> String {
    let mut text = format!(
        "[amqp]\nurl = \"{}\"\nprefix = \"{}\"\n\n[redis]\nurl = \"{}\"\nkey_prefix = \"{}\"\n\n",
        settings.amqp.url.expose_secret(),
        settings.amqp.prefix,
        settings.redis.url.expose_secret(),
        settings.redis.key_prefix,
    );
    let push = &settings.push;
    text.push_str(&format!(
        "[push]\nlisten = \"127.0.0.1:0\"\ntimeout_secs = {}\nconnect_timeout_secs = {}\n\
         retry_schedule_secs = {:?}\nbreaker_failures = {}\nbreaker_cooldown_secs = {}\n\
         breaker_cooldown_max_secs = {}\nallow_http = true\nallow_private_networks = true\n\n",
        push.timeout_secs,
        push.connect_timeout_secs,
        push.retry_schedule_secs,
        push.breaker_failures,
        push.breaker_cooldown_secs,
        push.breaker_cooldown_max_secs,
    ));
    for partner in &settings.partners {
        text.push_str(&format!(
            "[[partners]]\ncode = \"{}\"\nsecret = \"{}\"\n",
            partner.code,
            partner.secret.expose_secret()
        ));
        if let Some(partner_push) = &partner.push {
            text.push_str(&format!(
                "[partners.push]\nurl = \"{}\"\nsecrets = [\"{secret}\"]\nmax_in_flight = {}\n",
                partner_push.url, partner_push.max_in_flight
            ));
        }
        text.push('\n');
    }
    text
}
