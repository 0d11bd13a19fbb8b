//! `autorenew probe URL`: a health check for containers. The image is distroless (no shell, no
//! curl), so a Compose or Docker `HEALTHCHECK` runs the binary itself: GET the URL, exit 0 on a
//! 2xx answer and 1 on anything else (another status, a refused connection, no answer in time).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The URL to GET, plain http:// (e.g. http://127.0.0.1:8080/readyz).
    pub url: String,

    /// Give up (and fail) after this many milliseconds, connecting included.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("`{0}` is not a plain http:// URL")]
    Url(String),
    /// Never echoed: the URL would carry the password into the container's health log.
    #[error("the URL carries credentials; a health endpoint needs none")]
    Credentials,
    #[error("{url}: no answer within {ms} ms")]
    Timeout { url: String, ms: u64 },
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: answered {status}")]
    Status { url: String, status: StatusCode },
}

/// GETs `args.url`; `Ok` with the status when it is 2xx, an error naming what went wrong otherwise.
pub async fn run(args: &ProbeArgs) -> Result<StatusCode, ProbeError> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|_| ProbeError::Url(args.url.clone()))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProbeError::Credentials);
    }
    // hyper's connector speaks plain HTTP only; a probe talks to the pod's own port anyway.
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ProbeError::Url(args.url.clone()));
    }
    let request = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|_| ProbeError::Url(args.url.clone()))?;
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let timeout = Duration::from_millis(args.timeout_ms);
    let answer = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| ProbeError::Timeout {
            url: args.url.clone(),
            ms: args.timeout_ms,
        })?
        .map_err(|source| ProbeError::Request {
            url: args.url.clone(),
            source,
        })?;
    let status = answer.status();
    if status.is_success() {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            url: args.url.clone(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot HTTP server answering `status_line`; returns its URL.
    async fn answering(status_line: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            let answer = format!("HTTP/1.1 {status_line}\r\ncontent-length: 0\r\n\r\n");
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        format!("http://{address}/readyz")
    }

    fn args(url: String) -> ProbeArgs {
        ProbeArgs {
            url,
            timeout_ms: 2000,
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_passes() {
        let url = answering("200 OK").await;
        assert_eq!(run(&args(url)).await.unwrap(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_503_fails_and_says_so() {
        let url = answering("503 Service Unavailable").await;
        let error = run(&args(url)).await.unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with("answered 503 Service Unavailable")
        );
    }

    #[tokio::test]
    async fn a_closed_port_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        drop(listener);
        assert!(matches!(
            run(&args(url)).await,
            Err(ProbeError::Request { .. })
        ));
    }

    #[tokio::test]
    async fn a_silent_server_fails_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/readyz", listener.local_addr().unwrap());
        let started = std::time::Instant::now();
        let outcome = run(&ProbeArgs {
            url,
            timeout_ms: 200,
        })
        .await;
        assert!(matches!(outcome, Err(ProbeError::Timeout { .. })));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[tokio::test]
    async fn https_and_garbage_are_refused() {
        for url in ["https://127.0.0.1/readyz", "not a url", "/readyz"] {
            assert!(matches!(
                run(&args(url.into())).await,
                Err(ProbeError::Url(_))
            ));
        }
        let error = run(&args("http://ops:hunter2@127.0.0.1:9/readyz".into()))
            .await
            .unwrap_err();
        assert!(matches!(error, ProbeError::Credentials));
        assert!(!error.to_string().contains("hunter2"));
    }
}
