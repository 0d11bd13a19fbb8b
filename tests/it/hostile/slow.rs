//! Hostile clients at the connection level, over raw TCP: bodies and headers sent slower than
//! `intake.request_timeout_ms` (slowloris), clients that connect and say nothing, oversized and
//! malformed heads. Each must end in a 4xx or a closed connection within a bound, and the
//! intake keeps serving valid requests meanwhile.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::helpers::{SECRET, TestApp, TestStack, signed};

/// The intake's deadline for a request's head and for its body, in these tests.
const REQUEST_TIMEOUT_MS: u64 = 1000;
/// How long a test waits for the intake to cut a slow client off before it fails: generous,
/// so only a server that never cuts it off fails it.
const BOUND: Duration = Duration::from_secs(10);
/// The pace of a slow client: one piece at a time, this far apart.
const DRIBBLE: Duration = Duration::from_millis(150);

/// A stack of an intake with the short request deadline of these tests.
async fn spawn() -> TestStack {
    TestStack::builder()
        .settings(|settings| settings.intake.request_timeout_ms = REQUEST_TIMEOUT_MS)
        .intake()
        .start()
        .await
}

async fn connect(app: &TestApp) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    TcpStream::connect(address).await.expect("connect")
}

fn valid_body() -> Vec<u8> {
    signed(crate::helpers::valid_request(), SECRET)
        .to_string()
        .into_bytes()
}

/// How a raw exchange ended.
#[derive(Debug)]
enum End {
    /// The server answered (the bytes it sent until it closed or the bound).
    Answered(Vec<u8>),
    /// The server closed (or reset) the connection without a byte.
    Closed,
}

/// Sends `head`, then `pieces` one at a time every `DRIBBLE` while reading: returns as soon as
/// the server answers or closes. Fails the test if neither happens within `BOUND`.
async fn dribble(stream: &mut TcpStream, head: &[u8], pieces: &[Vec<u8>], endless: bool) -> End {
    let deadline = Instant::now() + BOUND;
    let _ = stream.write_all(head).await;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let mut next = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "the intake kept a slow client for over {BOUND:?}"
        );
        match timeout(DRIBBLE, stream.read(&mut buffer)).await {
            // Nothing yet: send the next piece and keep listening.
            Err(_) => {
                let piece = if next < pieces.len() {
                    Some(pieces[next].clone())
                } else if endless {
                    Some(format!("X-Slow-{next}: a\r\n").into_bytes())
                } else {
                    None
                };
                next += 1;
                if let Some(piece) = piece
                    && stream.write_all(&piece).await.is_err()
                {
                    // Closed on us: what it said before, if anything, is still to be read.
                    continue;
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return if received.is_empty() {
                    End::Closed
                } else {
                    End::Answered(received)
                };
            }
            Ok(Ok(n)) => {
                received.extend_from_slice(&buffer[..n]);
                if complete(&received) {
                    return End::Answered(received);
                }
            }
        }
    }
}

/// Whether `bytes` hold a whole HTTP response (head and a Content-Length body).
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    bytes.len() >= end + 4 + length
}

/// The status and (when there is one) JSON body of a raw response.
fn parse(bytes: &[u8]) -> (u16, Option<Value>) {
    let text = String::from_utf8_lossy(bytes);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok());
    (status, body)
}

fn post_head(length: Option<usize>, chunked: bool) -> Vec<u8> {
    let mut head = "POST /stripeSubDirectly HTTP/1.1\r\nHost: intake\r\n\
                    Content-Type: application/json\r\n"
        .to_string();
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// A valid request over reqwest must still be accepted.
async fn still_serving(app: &TestApp) {
    let answer = app.subscribe(crate::helpers::valid_request()).await;
    assert_eq!(answer.body["operateCode"], "S", "{:?}", answer.body);
}

fn assert_request_timeout(end: End, what: &str) {
    let End::Answered(bytes) = end else {
        panic!("{what}: closed without an answer; expected 408 REQUEST_TIMEOUT");
    };
    let (status, body) = parse(&bytes);
    assert_eq!(status, 408, "{what}: {}", String::from_utf8_lossy(&bytes));
    let body = body.unwrap_or_else(|| panic!("{what}: 408 without a JSON body"));
    assert_eq!(body["errorCode"], "REQUEST_TIMEOUT", "{what}: {body}");
    assert_eq!(body["operateCode"], "F", "{what}: {body}");
}

#[tokio::test]
async fn slow_bodies_get_408_request_timeout() {
    let stack = spawn().await;
    let app = stack.intake();
    let body = valid_body();

    // Content-Length declared, the body trickled a byte at a time: far slower than 1 s allows.
    let mut stream = connect(app).await;
    let bytes: Vec<Vec<u8>> = body.iter().map(|b| vec![*b]).collect();
    let end = dribble(
        &mut stream,
        &post_head(Some(body.len()), false),
        &bytes,
        false,
    )
    .await;
    assert_request_timeout(end, "a trickled body");

    // Chunked, one tiny chunk at a time.
    let mut stream = connect(app).await;
    let chunks: Vec<Vec<u8>> = body
        .iter()
        .map(|b| {
            let mut chunk = b"1\r\n".to_vec();
            chunk.push(*b);
            chunk.extend_from_slice(b"\r\n");
            chunk
        })
        .collect();
    let end = dribble(&mut stream, &post_head(None, true), &chunks, false).await;
    assert_request_timeout(end, "a trickled chunked body");

    // A body announced and never sent.
    let mut stream = connect(app).await;
    let end = dribble(&mut stream, &post_head(Some(100), false), &[], false).await;
    assert_request_timeout(end, "a body that never comes");

    // Half a body, then silence.
    let mut stream = connect(app).await;
    let mut head = post_head(Some(body.len()), false);
    head.extend_from_slice(&body[..body.len() / 2]);
    let end = dribble(&mut stream, &head, &[], false).await;
    assert_request_timeout(end, "half a body");

    still_serving(app).await;
    stack.teardown().await;
}

#[tokio::test]
async fn slow_or_silent_heads_are_cut_off_and_others_are_still_served() {
    let stack = spawn().await;
    let app = stack.intake();

    // Many slowloris connections at once, each trickling header lines forever.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut stream = connect(app).await;
        stream
            .write_all(b"POST /stripeSubDirectly HTTP/1.1\r\nHost: intake\r\n")
            .await
            .expect("write");
        stalled.push(stream);
    }
    // While they hang on, valid requests are served.
    still_serving(app).await;

    // One of them keeps trickling: it is dropped (closed, or a 4xx) within the bound.
    let mut stream = connect(app).await;
    let end = dribble(
        &mut stream,
        b"POST /stripeSubDirectly HTTP/1.1\r\nHost: intake\r\n",
        &[],
        true,
    )
    .await;
    assert_cut_off(end, "headers trickled forever");

    // A client that connects and sends nothing.
    let mut stream = connect(app).await;
    let end = dribble(&mut stream, b"", &[], false).await;
    assert_cut_off(end, "a silent connection");

    // A keep-alive connection left idle after a complete request.
    let mut stream = connect(app).await;
    let body = valid_body();
    let mut request = post_head(Some(body.len()), false);
    request.extend_from_slice(&body);
    stream.write_all(&request).await.expect("write");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !complete(&received) {
        let n = timeout(BOUND, stream.read(&mut buffer))
            .await
            .expect("an answer within the bound")
            .expect("read");
        assert!(n > 0, "closed before answering");
        received.extend_from_slice(&buffer[..n]);
    }
    assert_eq!(parse(&received).0, 200);
    let end = dribble(&mut stream, b"", &[], false).await;
    assert_cut_off(end, "an idle keep-alive connection");

    // The 40 stalled ones are all closed by now or soon after, each within the bound.
    for (index, mut stream) in stalled.into_iter().enumerate() {
        let end = dribble(&mut stream, b"", &[], false).await;
        assert_cut_off(end, &format!("stalled connection {index}"));
    }
    still_serving(app).await;
    stack.teardown().await;
}

fn assert_cut_off(end: End, what: &str) {
    if let End::Answered(bytes) = end {
        let (status, _) = parse(&bytes);
        assert!(
            (400..500).contains(&status),
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

/// Heads that hyper refuses before the router sees them: too large, too many headers, broken.
/// These answers come from the HTTP layer (no JSON body): a 4xx, never a 5xx, and the intake
/// goes on serving.
#[tokio::test]
async fn oversized_and_broken_heads_are_refused_with_a_4xx() {
    let stack = spawn().await;
    let app = stack.intake();
    let body = valid_body();
    let with_body = |head: String| {
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    };
    let length = body.len();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "one 100 KiB header",
            with_body(format!(
                "POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\
                 Content-Length: {length}\r\n\r\n",
                "a".repeat(100 * 1024)
            )),
        ),
        (
            "200 headers",
            with_body(format!(
                "POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\n{}Content-Length: {length}\r\n\r\n",
                (0..200)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            )),
        ),
        (
            "a 100 KiB URI",
            with_body(format!(
                "POST /stripeSubDirectly?{} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n",
                "a".repeat(100 * 1024)
            )),
        ),
        ("garbage", b"GARBAGE\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /healthz\r\n\r\n".to_vec()),
        (
            "a NUL in a header",
            with_body(format!(
                "POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nContent-Length: {length}\r\n\r\n"
            )),
        ),
        (
            "a non-numeric Content-Length",
            with_body(
                "POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".into(),
            ),
        ),
        (
            "two different Content-Lengths",
            with_body(format!(
                "POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\
                 Content-Length: {}\r\n\r\n",
                length + 1
            )),
        ),
        (
            "a broken chunk size",
            b"POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              zz\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "a space before the colon",
            with_body(format!(
                "POST /stripeSubDirectly HTTP/1.1\r\nHost: x\r\nContent-Length : {length}\r\n\r\n"
            )),
        ),
    ];
    for (name, request) in cases {
        let mut stream = connect(app).await;
        let end = dribble(&mut stream, &request, &[], false).await;
        match end {
            End::Answered(bytes) => {
                let (status, _) = parse(&bytes);
                assert!(
                    (400..500).contains(&status),
                    "{name}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                );
            }
            // Closing on a head that cannot be HTTP is also a refusal.
            End::Closed => {}
        }
    }
    still_serving(app).await;
    stack.teardown().await;
}

/// The head deadline is for reading a request, not for answering it: a `Prefer: wait` answer
/// held longer than `request_timeout_ms` still arrives on its connection.
#[tokio::test]
async fn a_held_answer_outlives_the_head_deadline() {
    let stack = spawn().await;
    let app = stack.intake();
    let body = signed(crate::helpers::valid_request(), SECRET).to_string();
    let wait_secs = 2 * REQUEST_TIMEOUT_MS / 1000 + 1;
    let response = app
        .client
        .post(format!("{}/stripeSubDirectly", app.address))
        .header("content-type", "application/json")
        .header("prefer", format!("wait={wait_secs}"))
        .body(body)
        .send()
        .await
        .expect("an answer, not a dropped connection");
    let answer = crate::helpers::Answer::from(response).await;
    // No worker runs here: after the wait the job is still processing.
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "processing", "{:?}", answer.body);
    stack.teardown().await;
}

#[tokio::test]
async fn connections_beyond_intake_max_connections_wait_for_a_free_one() {
    let stack = TestStack::builder()
        .settings(|settings| {
            settings.intake.request_timeout_ms = REQUEST_TIMEOUT_MS;
            settings.intake.max_connections = 2;
        })
        .intake()
        .start()
        .await;
    let app = stack.intake();
    // Two clients that say nothing hold both connections until the head deadline drops them.
    let _first = connect(app).await;
    let _second = connect(app).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let answer = timeout(BOUND, reqwest::get(format!("{}/healthz", app.address)))
        .await
        .expect("served once a connection is free")
        .expect("an answer");
    let waited = started.elapsed();

    assert_eq!(answer.status(), 200);
    assert!(
        waited >= Duration::from_millis(REQUEST_TIMEOUT_MS) - Duration::from_millis(300),
        "a third connection was served at once ({waited:?}), beyond intake.max_connections = 2"
    );
    stack.teardown().await;
}
