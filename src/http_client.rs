//! The outgoing HTTP client, built one way for the two parts that call out: the Stripe gateway
//! and the partner push. Each gets its own pool, timeouts and name resolver.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// An HTTPS (and plain HTTP) client that sends whole bodies.
pub type HttpsClient<R> = Client<HttpsConnector<HttpConnector<R>>, Full<Bytes>>;

/// How a client connects and keeps its connections.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// An idle pooled connection is closed after this long (before the server drops it).
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
    /// Offer HTTP/2 first in TLS (ALPN); a server that does not speak it settles on HTTP/1.1.
    pub offer_http2: bool,
    /// Speak HTTP/2 from the first byte (prior knowledge), for a plain-HTTP server that knows it.
    pub http2_only: bool,
}

/// A client over `http` (a connector with the resolver of the caller's choice).
pub fn build<R>(
    mut http: HttpConnector<R>,
    options: &ClientOptions,
) -> Result<HttpsClient<R>, native_tls::Error>
where
    HttpsConnector<HttpConnector<R>>: Connect + Clone,
{
    // `https://` is only a scheme to the TCP connector; TLS is the layer above it.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    let mut tls = native_tls::TlsConnector::builder();
    if options.offer_http2 {
        tls.request_alpns(&["h2", "http/1.1"]);
    }
    let connector = HttpsConnector::from((http, tls.build()?.into()));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(options.idle_timeout)
        .pool_max_idle_per_host(options.max_idle_per_host);
    if options.http2_only {
        builder.http2_only(true);
    }
    Ok(builder.build(connector))
}
