//! Connection limits, against a served SQLite fixture over raw sockets: clients that send
//! nothing, send headers or a body too slowly, or keep connections idle are cut off, requests in
//! progress are not, and a graceful shutdown neither waits for idle clients nor cuts requests
//! in flight short.
//!
//! Every limit here is a few seconds, and every timing is asserted with generous slack (the
//! tests share two cores with others), but each cut-off is asserted to happen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_crds::RuntimeConfig;
use sluice_crds::dataapi::Engine;
use sluice_tests::runtime::{API_KEY_HEADER, TestApi, request, start_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How much later than its limit a cut-off may come on a busy machine.
const SLACK: Duration = Duration::from_secs(4);

/// Starts the fixture with these limits, in seconds.
async fn start_limited(header: u32, body: u32, idle: u32, shutdown: u32) -> TestApi {
    start_with(Engine::Sqlite, |config: &mut RuntimeConfig| {
        config.limits.header_read_timeout_seconds = header;
        config.limits.body_read_timeout_seconds = body;
        config.limits.idle_timeout_seconds = idle;
        config.limits.shutdown_timeout_seconds = shutdown;
    })
    .await
}

async fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address).await.expect("connect to the runtime")
}

/// Reads until the server closes the connection (or resets it, which closing a socket with
/// unread input does), for at most `limit`; how long that took, or `None` if it stayed open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Reads one response with a `Content-Length` from a connection that stays open; its status
/// and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await.expect("read the response");
        assert!(read > 0, "the connection closed before a whole response came");
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("a response without Content-Length: {head}"));
        if body.len() >= length {
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .expect("status line");
            return (status, body[..length].to_owned());
        }
    }
}

/// A keep-alive connection that has asked for `/healthz` once and read the answer.
async fn kept_alive(address: SocketAddr) -> TcpStream {
    let mut stream = connect(address).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .await
        .expect("send a request");
    assert_eq!(read_response(&mut stream).await, (200, "ok".to_owned()));
    stream
}

const PARTIAL_HEADERS: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n";

/// The head of a POST of a new customer as the admin, and its body.
fn customer_post(api: &TestApi, id: u32, path: &str) -> (String, String) {
    let body = format!(r#"{{"id": {id}, "name": "Patient {id}"}}"#);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: sluice\r\n{API_KEY_HEADER}: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        api.key("admin"),
        body.len()
    );
    (head, body)
}

fn assert_between(what: &str, elapsed: Option<Duration>, at_least: Duration, at_most: Duration) {
    let elapsed = elapsed.unwrap_or_else(|| panic!("{what}: still open after {at_most:?}"));
    assert!(
        elapsed >= at_least && elapsed <= at_most,
        "{what}: closed after {elapsed:?}, expected between {at_least:?} and {at_most:?}"
    );
}

#[tokio::test]
async fn headers_must_arrive_within_the_header_read_timeout() {
    let api = start_limited(1, 30, 30, 5).await;
    let header_timeout = Duration::from_secs(1);
    // A connection is not cut before its limit, give or take the timer's granularity.
    let early = header_timeout - Duration::from_millis(200);

    let mut silent = connect(api.address).await;
    let mut partial = connect(api.address).await;
    partial.write_all(PARTIAL_HEADERS).await.expect("send partial headers");
    // On a kept-alive connection the header timeout runs from the next request's first byte,
    // well before the idle timeout.
    let mut kept_then_partial = kept_alive(api.address).await;
    kept_then_partial
        .write_all(PARTIAL_HEADERS)
        .await
        .expect("send partial headers");

    let limit = header_timeout + SLACK;
    let (silent, partial, kept_then_partial) = tokio::join!(
        closed_within(&mut silent, limit),
        closed_within(&mut partial, limit),
        closed_within(&mut kept_then_partial, limit),
    );
    assert_between("a connection that sends nothing", silent, early, limit);
    assert_between("a connection that sends partial headers", partial, early, limit);
    assert_between(
        "a kept-alive connection that sends partial headers",
        kept_then_partial,
        early,
        limit,
    );
    api.cleanup().await;
}

/// Raises this process's soft limit on open files to `wanted` if it is lower, as far as the
/// hard limit allows: the test holds both ends of every connection.
fn allow_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "this test needs {wanted} open files; the hard limit is {}",
        limit.rlim_max
    );
}

#[tokio::test]
async fn a_thousand_idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    const CONNECTIONS: usize = 1_000;
    allow_open_files(4 * CONNECTIONS as u64);
    let api = start_limited(1, 30, 2, 5).await;
    let idle_timeout = Duration::from_secs(2);
    let address = api.address;

    // Connections are opened a hundred at a time, so the listen backlog never overflows.
    let opening = Arc::new(Semaphore::new(100));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let opening = opening.clone();
        clients.spawn(async move {
            let permit = opening.acquire_owned().await;
            let mut stream = kept_alive(address).await;
            drop(permit);
            let answered = Instant::now();
            let closed = closed_within(&mut stream, idle_timeout + SLACK + Duration::from_secs(5)).await;
            (answered, closed)
        });
    }

    // While they are all idle, others are still served promptly.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let reply = request(address, "GET", "/healthz", &[], None).await;
    let took = asked.elapsed();
    assert_eq!(reply.status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a request beside idle connections took {took:?}"
    );

    let mut closed_early = 0;
    let mut last = Duration::ZERO;
    while let Some(result) = clients.join_next().await {
        let (answered, closed) = result.expect("a client task");
        let closed = closed.unwrap_or_else(|| {
            panic!(
                "an idle connection was still open {:?} after its response",
                answered.elapsed()
            )
        });
        // Closed by the idle timeout, not the (shorter) header read timeout.
        if closed < idle_timeout - Duration::from_millis(500) {
            closed_early += 1;
        }
        last = last.max(closed);
    }
    assert_eq!(closed_early, 0, "idle connections closed before the idle timeout");
    assert!(
        last <= idle_timeout + SLACK,
        "the last idle connection closed {last:?} after its response"
    );
    api.cleanup().await;
}

#[tokio::test]
async fn a_slow_body_within_its_timeout_outlives_the_idle_and_header_timeouts() {
    let api = start_limited(1, 5, 1, 5).await;
    let (head, body) = customer_post(&api, 40, "/api/customers");
    let mut stream = connect(api.address).await;
    stream.write_all(head.as_bytes()).await.expect("send the head");
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first.as_bytes()).await.expect("send half the body");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stream
        .write_all(rest.as_bytes())
        .await
        .expect("send the rest of the body");
    let (status, answer) = read_response(&mut stream).await;
    assert_eq!(status, 201, "{answer}");
    api.cleanup().await;
}

#[tokio::test]
async fn a_body_that_stalls_past_its_timeout_is_answered_408_and_the_connection_closed() {
    let api = start_limited(1, 2, 30, 5).await;
    let body_timeout = Duration::from_secs(2);
    let mcp_head = |body_length: usize| {
        format!(
            "POST /mcp HTTP/1.1\r\nHost: sluice\r\n{API_KEY_HEADER}: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {body_length}\r\n\r\n",
            api.key("admin")
        )
    };
    let (rest_head, rest_body) = customer_post(&api, 41, "/api/customers");
    let mcp_body = r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}"#;
    // REST reads bodies itself; rmcp reads MCP bodies and would answer a failed read with a 500.
    for (endpoint, head, body) in [
        ("REST", rest_head, rest_body.as_str()),
        ("MCP", mcp_head(mcp_body.len()), mcp_body),
    ] {
        let mut stream = connect(api.address).await;
        stream.write_all(head.as_bytes()).await.expect("send the head");
        stream
            .write_all(&body.as_bytes()[..body.len() / 2])
            .await
            .expect("send half the body");
        let started = Instant::now();
        let mut raw = Vec::new();
        let read = tokio::time::timeout(body_timeout + SLACK, stream.read_to_end(&mut raw)).await;
        let took = started.elapsed();
        assert!(
            matches!(read, Ok(Ok(_))),
            "{endpoint}: the connection was not answered and closed within {:?}",
            body_timeout + SLACK
        );
        assert!(
            took >= body_timeout - Duration::from_millis(200),
            "{endpoint}: answered after {took:?}, before the body timeout"
        );
        let text = String::from_utf8_lossy(&raw);
        let (head, json) = text.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 408 "), "{endpoint}: {text}");
        let error: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{endpoint}: {e}: {json}"));
        assert_eq!(error["code"], "request_timeout", "{endpoint}: {error}");
        assert!(
            error["hint"]
                .as_str()
                .is_some_and(|hint| hint.contains("spec.limits.bodyReadTimeoutSeconds")),
            "{endpoint}: {error}"
        );
    }
    api.cleanup().await;
}

#[tokio::test]
async fn shutdown_closes_idle_and_half_open_connections_at_once_and_finishes_requests_in_flight() {
    let mut api = start_limited(10, 10, 30, 5).await;
    let shutdown_timeout = Duration::from_secs(5);
    let mut silent = connect(api.address).await;
    let mut partial = connect(api.address).await;
    partial.write_all(PARTIAL_HEADERS).await.expect("send partial headers");
    let mut idle = kept_alive(api.address).await;
    let mut idle_then_partial = kept_alive(api.address).await;
    idle_then_partial
        .write_all(PARTIAL_HEADERS)
        .await
        .expect("send partial headers");
    let (head, body) = customer_post(&api, 42, "/api/customers");
    let mut in_flight = connect(api.address).await;
    in_flight.write_all(head.as_bytes()).await.expect("send the head");
    let (first, rest) = body.split_at(body.len() / 2);
    in_flight.write_all(first.as_bytes()).await.expect("send half the body");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let in_flight_answer = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        in_flight
            .write_all(rest.as_bytes())
            .await
            .expect("send the rest of the body");
        read_response(&mut in_flight).await
    };
    // Well within the header (10 s) and idle (30 s) timeouts: only the shutdown closes them.
    let at_once = Duration::from_secs(2);
    let ((), silent, partial, idle, idle_then_partial, (status, answer)) = tokio::join!(
        api.shut_down(),
        closed_within(&mut silent, at_once),
        closed_within(&mut partial, at_once),
        closed_within(&mut idle, at_once),
        closed_within(&mut idle_then_partial, at_once),
        in_flight_answer,
    );
    let took = started.elapsed();
    for (what, closed) in [
        ("a connection that sent nothing", silent),
        ("a connection with partial headers", partial),
        ("an idle kept-alive connection", idle),
        ("a kept-alive connection with partial headers", idle_then_partial),
    ] {
        assert!(closed.is_some(), "{what} was not closed at once by the shutdown");
    }
    assert_eq!(status, 201, "the request in flight: {answer}");
    assert!(
        took < shutdown_timeout,
        "the shutdown took {took:?}, past its bound of {shutdown_timeout:?}"
    );
    api.cleanup().await;
}

#[tokio::test]
async fn shutdown_with_only_idle_clients_is_quick_and_with_a_stalled_request_is_bounded() {
    let mut quiet = start_limited(10, 30, 30, 10).await;
    let _silent = connect(quiet.address).await;
    let _idle = kept_alive(quiet.address).await;
    let started = Instant::now();
    quiet.shut_down().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a shutdown with nothing in flight took {took:?}"
    );
    quiet.cleanup().await;

    let mut stuck = start_limited(10, 30, 30, 2).await;
    let shutdown_timeout = Duration::from_secs(2);
    let (head, body) = customer_post(&stuck, 43, "/api/customers");
    let mut stalled = connect(stuck.address).await;
    stalled.write_all(head.as_bytes()).await.expect("send the head");
    stalled
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .expect("send half the body");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    stuck.shut_down().await;
    let took = started.elapsed();
    assert!(
        took >= shutdown_timeout - Duration::from_millis(200) && took <= shutdown_timeout + SLACK,
        "a shutdown with a stalled request took {took:?}, for a bound of {shutdown_timeout:?}"
    );
    assert!(
        closed_within(&mut stalled, Duration::from_secs(1)).await.is_some(),
        "the stalled request's connection outlived the shutdown"
    );
    stuck.cleanup().await;
}
