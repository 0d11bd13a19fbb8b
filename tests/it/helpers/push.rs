//! The push part of a [`TestStack`](super::stack::TestStack) (`.push_receiver()`): a
//! receiver on a random port that both test partners push to, notifiers in process (or as
//! child processes), and result events published straight onto the results exchange, as a
//! worker publishes them.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use autorenew::broker::Topology;
use autorenew::config::{PartnerPush, Settings};
use autorenew::domain::push::PushSecret;
use autorenew::push::receiver::{self, Behaviour, Receiver};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::stack::TestStack;
use super::{ChildGuard, PARTNER, poll_until, shared_amqp};

/// The receiver the partners push to, and the secret they sign with.
pub(super) struct PushReceiver {
    receiver: Arc<Receiver>,
    base: String,
    secret: String,
    stop: CancellationToken,
}

impl PushReceiver {
    pub(super) async fn start() -> PushReceiver {
        let secret = PushSecret::encode(uuid::Uuid::new_v4().simple().to_string().as_bytes());
        let key = PushSecret::parse(&secret).expect("secret");
        let app = receiver::Application::build(
            "127.0.0.1:0".parse().expect("addr"),
            Receiver::new(vec![key], 300, true),
        )
        .await
        .expect("the receiver binds");
        let base = format!("http://{}", app.local_addr());
        let receiver = app.receiver();
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        PushReceiver {
            receiver,
            base,
            secret,
            stop,
        }
    }

    /// A push for every partner to `base/<partner>`, short retries, quick timeouts.
    pub(super) fn point_partners(&self, settings: &mut Settings) {
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
                url: format!("{}/{}", self.base, partner.code),
                secrets: vec![SecretString::from(self.secret.clone())],
                secrets_env: Vec::new(),
                events: vec!["subscription.*".into()],
                max_in_flight: 4,
            });
        }
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
    }
}

impl TestStack {
    fn push(&self) -> &PushReceiver {
        self.push
            .as_ref()
            .expect("this stack has no push receiver: call `.push_receiver()` on its builder")
    }

    /// What the receiver has been sent, by partner.
    pub fn receiver(&self) -> &Receiver {
        &self.push().receiver
    }

    /// The secret the partners' pushes are signed with.
    pub fn push_secret(&self) -> &str {
        &self.push().secret
    }

    /// Starts a notifier in this process and waits until its lanes consume.
    pub async fn spawn_notifier(&mut self) -> CancellationToken {
        let stop = CancellationToken::new();
        let app = autorenew::push::Application::build(&self.settings)
            .await
            .expect("the notifier builds");
        let probes = format!("http://{}/readyz", app.local_addr());
        tokio::spawn(app.run_until_stopped(stop.clone()));
        self.notifiers.push(stop.clone());
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

    /// Starts `autorenew notifier` as a child process with this stack's configuration and waits
    /// until it has declared the push queues; the process is killed when the guard drops.
    pub async fn notifier_process(&self) -> ChildGuard {
        let child = self
            .autorenew(&["notifier"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("autorenew notifier starts");
        let guard = ChildGuard(child);
        let declared = poll_until(Duration::from_secs(20), || async {
            self.try_queued(PARTNER).await.is_some()
        })
        .await;
        assert!(declared, "the notifier process did not declare its queues");
        guard
    }

    pub fn behave(&self, partner: &str, behaviour: Behaviour) {
        self.receiver().behave(partner, behaviour);
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
}
