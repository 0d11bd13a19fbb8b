//! `autorenew run` with its built-in simulator: a restart keeps Redis in step with the fresh
//! simulator, and `reconcile` works against it with no setup.

use std::time::Duration;

use autorenew::config::Settings;
use autorenew::run::{RunArgs, Running};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Answer, SECRET, SHARED_AMQP, SHARED_REDIS, delete_keys, delete_queues, poll_until, signed,
    test_settings, valid_request,
};

struct Run {
    running: Running,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    http: reqwest::Client,
}

/// `autorenew run` on free ports, ready.
async fn start(settings: &Settings) -> Run {
    let args = RunArgs {
        sim_listen: "127.0.0.1:0".parse().expect("address"),
    };
    let stop = CancellationToken::new();
    let (running, tasks) = autorenew::run::start(
        settings.clone(),
        &args,
        crate::wiring::start_simulator,
        stop.clone(),
    )
    .await
    .expect("run starts");
    let http = reqwest::Client::new();
    let ready = poll_until(Duration::from_secs(20), || async {
        http.get(format!("http://{}/readyz", running.intake))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "the intake of `run` is ready");
    Run {
        running,
        stop,
        tasks,
        http,
    }
}

impl Run {
    async fn post(&self, path: &str, body: &Value, wait: bool) -> Answer {
        let mut request = self
            .http
            .post(format!("http://{}/{path}", self.running.intake))
            .json(body);
        if wait {
            request = request.header("prefer", "wait=15");
        }
        Answer::from(request.send().await.expect("the intake answers")).await
    }

    fn sim(&self) -> String {
        format!("http://{}", self.running.simulator.expect("a simulator"))
    }

    async fn sim_get(&self, path: &str) -> reqwest::StatusCode {
        self.http
            .get(format!("{}{path}", self.sim()))
            .basic_auth(autorenew::run::SIM_KEY, Some(""))
            .send()
            .await
            .expect("the simulator answers")
            .status()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while let Some(done) = self.tasks.join_next().await {
            done.expect("joined").expect("stopped cleanly");
        }
    }
}

fn settings() -> Settings {
    let mut settings = test_settings(SHARED_AMQP, SHARED_REDIS);
    settings.worker.listen = "127.0.0.1:0".into();
    settings.stripe.max_requests_per_second = 1_000;
    settings
}

#[tokio::test]
async fn a_second_run_creates_the_same_pay_id_again_in_its_fresh_simulator() {
    let settings = settings();
    let mut request = valid_request();
    request["pm_id"] = json!("pm_card_visa");

    let mut answers = Vec::new();
    for _ in 0..2 {
        let run = start(&settings).await;
        let answer = run
            .post("stripeSubDirectly", &signed(request.clone(), SECRET), true)
            .await;
        let sub_id = answer.body["sub_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let known = run.sim_get(&format!("/v1/subscriptions/{sub_id}")).await;
        answers.push((
            answer.body.clone(),
            known,
            run.running.redis_key_prefix.clone(),
        ));
        run.stop().await;
    }

    for (body, known, _) in &answers {
        assert_eq!(body["status"], "active", "{body}");
        assert_eq!(*known, 200, "the simulator of this run knows {body}");
    }
    assert_ne!(answers[0].2, answers[1].2, "each run has keys of its own");
    for (_, _, prefix) in &answers {
        delete_keys(SHARED_REDIS, prefix).await;
    }
    delete_queues(&settings.amqp.prefix).await;
}

#[tokio::test]
async fn reconcile_under_run_needs_no_setup() {
    let mut settings = settings();
    let run = start(&settings).await;
    let mut request = valid_request();
    request["pm_id"] = json!("pm_card_visa");
    let created = run
        .post("stripeSubDirectly", &signed(request, SECRET), true)
        .await;
    assert_eq!(created.body["status"], "active", "{:?}", created.body);
    let intake: url::Url = format!("http://{}", run.running.intake)
        .parse()
        .expect("URL");
    let sim: url::Url = run.sim().parse().expect("URL");

    // The configuration `run` was given, as `autorenew reconcile` reads it: no Stripe key, no
    // webhook secret.
    let plain = autorenew::reconcile::against_run_simulator(settings.clone(), Some(&sim));
    let first = autorenew::reconcile::reconcile(&plain, Duration::from_secs(3600), &intake).await;
    // With the run's own Redis keys (the banner's AUTORENEW__REDIS__KEY_PREFIX), it sees what
    // the intake took already.
    settings.redis.key_prefix = run.running.redis_key_prefix.clone();
    let exact = autorenew::reconcile::against_run_simulator(settings.clone(), Some(&sim));
    let second = autorenew::reconcile::reconcile(&exact, Duration::from_secs(3600), &intake).await;

    let first = first.expect("reconcile works under run");
    assert!(first.listed >= 1, "{first}");
    let second = second.expect("reconcile works under run");
    assert_eq!(second.listed, first.listed, "{second}");
    assert_eq!(second.fed, 0, "{second}");
    run.stop().await;
    delete_keys(SHARED_REDIS, &settings.redis.key_prefix).await;
    delete_keys(SHARED_REDIS, &plain.redis.key_prefix).await;
    delete_queues(&settings.amqp.prefix).await;
}
