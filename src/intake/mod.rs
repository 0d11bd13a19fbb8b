//! The HTTP intake (axum): checks a signed partner request (or a Stripe-signed webhook) and puts
//! it on the broker. Uses the domain, the broker and the store; Stripe only through the
//! gateway, for `/stripeSubAuthorization` (`authorize`), which Stripe answers synchronously.

mod authorize;
mod cancel;
mod enqueue;
mod error;
mod health;
mod marks;
mod metrics;
mod openapi;
mod partners;
mod push_calls;
mod renewal_query;
mod renewal_record;
mod request_id;
mod response;
mod result_query;
mod serve;
mod signed;
mod state;
mod subscribe;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use authorize::Authorizer;
pub use error::IntakeError;
pub use partners::Partners;
pub use response::ApiResponse;
pub use state::{AppState, Limits};

use crate::broker::{Broker, Topology};
use crate::config::Settings;
use crate::domain::webhook::WebhookSecrets;
use crate::store::Store;
use crate::telemetry;
use marks::EnqueuedMarks;

/// The intake, bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    broker: Broker,
    /// Stripe, for `/stripeSubAuthorization`; shared with the router's state.
    authorizer: Arc<Authorizer>,
    /// How long a client may take to send a request's headers (its body has the same again).
    header_timeout: Duration,
    max_connections: usize,
    /// Stops the broker connection: only after the requests in hand have their answers, which
    /// need its confirms. Also stops it if never run.
    broker_stop: DropGuard,
}

/// How long the broker connection may take to close after the last answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Application {
    /// Binds the listener and starts the broker connection (in the background: the intake
    /// serves, and reports not ready, while RabbitMQ is away). `shutdown` ends the waits of
    /// requests in hand (`Prefer: wait`); pass the same token to `run_until_stopped`.
    pub async fn build(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let broker_stop = CancellationToken::new();
        let broker = Broker::start(
            settings.amqp.url.clone(),
            Topology::from_settings(settings),
            broker_stop.clone(),
        );
        let store = Store::new(&settings.redis)?;
        let authorizer = Arc::new(Authorizer::default());
        authorizer.connect(settings, &store)?;
        let state = Arc::new(AppState {
            authorizer: authorizer.clone(),
            limits: Limits::from_settings(settings),
            webhooks: WebhookSecrets::new(
                settings.stripe.webhook_secrets.clone(),
                settings.stripe.webhook_tolerance_secs,
            ),
            partners: Partners::new(
                &settings.partners,
                settings.intake.partner_rate_limit_per_second,
            ),
            broker: broker.clone(),
            marks: EnqueuedMarks::start(store.clone()),
            store,
            metrics: telemetry::metrics_handle(),
            stopping: shutdown,
        });
        let address = settings.intake_listen();
        let listener = TcpListener::bind(address).await.map_err(|error| {
            crate::accept::bind_failed(
                &error,
                address,
                "intake.listen",
                "e.g. AUTORENEW__INTAKE__LISTEN=127.0.0.1:8081 (port 0: any free port)",
            )
        })?;
        Ok(Application {
            listener,
            router: router(state),
            broker,
            authorizer,
            header_timeout: Duration::from_millis(settings.intake.request_timeout_ms),
            max_connections: settings.intake.max_connections,
            broker_stop: broker_stop.drop_guard(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Connects `/stripeSubAuthorization` to this Stripe, unless it is connected already: for
    /// `autorenew run`, whose simulator listens only after the intake is built.
    pub fn use_stripe(&self, settings: &Settings) -> anyhow::Result<()> {
        self.authorizer
            .connect(settings, &Store::new(&settings.redis)?)
    }

    /// Serves until `shutdown`: then stops accepting, answers the requests in hand (with their
    /// broker confirms), and only then closes the broker connection. Clients that trickle their
    /// headers are dropped after `intake.request_timeout_ms` (see `serve`).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        serve::serve(
            self.listener,
            self.router,
            self.header_timeout,
            self.max_connections,
            shutdown,
        )
        .await;
        drop(self.broker_stop);
        if tokio::time::timeout(CLOSE_TIMEOUT, self.broker.stopped())
            .await
            .is_err()
        {
            tracing::warn!("the broker connection did not close in time");
        }
        Ok(())
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/stripeSubDirectly", post(subscribe::subscribe))
        .route("/resultQuery", post(result_query::result_query))
        .route(
            "/stripeSubAuthorization",
            post(authorize::stripe_sub_authorization),
        )
        .route(
            "/cancelAutoRenewalRecord",
            post(cancel::cancel_auto_renewal),
        )
        .route(
            "/queryAutoRenewalRecord",
            post(renewal_query::query_auto_renewal),
        )
        .route("/queryNotifications", post(push_calls::query_notifications))
        .route("/resendNotification", post(push_calls::resend_notification))
        .route(
            "/recoverNotifications",
            post(push_calls::recover_notifications),
        )
        .route("/stripe/webhook", post(webhook::stripe_webhook))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .fallback(|| async { IntakeError::NotFound })
        .method_not_allowed_fallback(|| async { IntakeError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// `autorenew intake`: serve until a signal.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Application::build(&settings, shutdown.clone()).await?;
    tracing::info!(address = %app.local_addr(), "intake listening");
    println!("autorenew intake listening on http://{}", app.local_addr());
    app.run_until_stopped(shutdown).await
}
