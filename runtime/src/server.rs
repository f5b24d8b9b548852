//! Serving the router on a socket: an accept loop of HTTP/1.1 connections, each bounded in time,
//! and graceful shutdown.
//!
//! Every connection is held to its [`ConnectionLimits`], so that clients that connect and send
//! nothing, send headers or a body a byte at a time, or keep connections open unused, cannot pile
//! up connections (each costs a task, buffers and a file descriptor) or hold up a shutdown:
//! - headers: a new connection must send its first request's headers within the header read
//!   timeout; on a kept-alive connection the timeout starts at the next request's first byte;
//! - idle: a kept-alive connection with no request in progress is closed after the idle timeout;
//! - body: a request's body must arrive within the body read timeout of its headers, or reading
//!   it fails (see [`BodyReadDeadline`]);
//! - shutdown: connections without a request in progress close at once, requests in flight may
//!   finish within the shutdown timeout, then what remains is closed.
//!
//! No deadline runs while a request is being answered (a handler, a long streamed response) or
//! while the client is slow to take the response's bytes: those are the handlers' and the
//! database's limits to bound, not the connection's.
//!
//! hyper's own `header_read_timeout` is not used: in hyper 1.12 its timer starts whenever hyper
//! starts reading a request head, which on a kept-alive connection is right after the previous
//! response, so it closes idle connections after the (short) header timeout rather than the
//! idle timeout that a load balancer in front is configured against. hyper's
//! `graceful_shutdown` closes idle connections, but not a new one still sending its first
//! request's headers; this module closes those itself.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use sluice_crds::limits::LimitsSpec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// How long a connection may take over each part of its life; read when it is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest a client may take to send a request's headers: from the connection's start for
    /// its first request, from the request's first byte for later ones.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body, counted from its headers.
    pub body_read_timeout: Duration,
    /// Longest a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest requests in flight may run on after shutdown starts.
    pub shutdown_timeout: Duration,
}

impl From<&LimitsSpec> for ConnectionLimits {
    fn from(limits: &LimitsSpec) -> Self {
        Self {
            header_read_timeout: limits.header_read_timeout(),
            body_read_timeout: limits.body_read_timeout(),
            idle_timeout: limits.idle_timeout(),
            shutdown_timeout: limits.shutdown_timeout(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then closes connections without a
/// request in progress, lets requests in flight finish for at most the shutdown timeout, closes
/// what remains and returns. `limits` is called for each accepted connection (and once at
/// shutdown), so a reloaded config applies to new connections. Handlers see the peer address
/// as `ConnectInfo<SocketAddr>` (anonymous callers are rate limited per address).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: impl Fn() -> ConnectionLimits + Send,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, router.clone(), limits(), stopping.clone()));
                }
                Err(error) => back_off_after(error).await,
            },
            // Reaps finished connections, whose results are kept until joined.
            Some(_) = connections.join_next() => {}
        }
    }
    drop(listener);
    let shutdown_timeout = limits().shutdown_timeout;
    stop.send_replace(true);
    let drained = tokio::time::timeout(shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            shutdown_timeout_seconds = shutdown_timeout.as_secs(),
            "requests still in flight at the shutdown timeout; closing their connections"
        );
        connections.shutdown().await;
    }
}

/// Waits after a failed accept. Errors about one connection (reset or aborted before it was
/// accepted) need no wait; others, such as running out of file descriptors, persist for a while,
/// and retrying at once would spin.
async fn back_off_after(error: io::Error) {
    let about_one_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    );
    if !about_one_connection {
        tracing::error!(%error, "accepting a connection failed; retrying in a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Serves one connection until the client or hyper closes it, a deadline of `limits` passes, or
/// shutdown closes it.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) {
    // Without TCP_NODELAY, a response written in two segments (headers, then a streamed body such
    // as an MCP event stream) waits for the client's delayed ACK: ~40 ms per call on Linux.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
    }
    let activity = Arc::new(Activity::new(limits));
    let io = TokioIo::new(WatchedIo {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let request = prepare_request(request, peer, limits.body_read_timeout);
            let answering = InFlight::start(&activity);
            let mut router = router.clone();
            async move {
                // `Router` is always ready, so it is called without `poll_ready`.
                let response = router.call(request).await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _answering: answering,
                }))
            }
        })
    };
    let mut connection = pin!(
        http1::Builder::new()
            // Header and idle deadlines are kept here (see the module's documentation).
            .header_read_timeout(None)
            .serve_connection(io, service)
    );
    let mut deadline = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut draining = false;
    loop {
        let outcome = poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            // Polling the connection is what moves it between phases, so the deadline it is
            // held to is read afterwards.
            match activity.deadline() {
                Some(due) => {
                    if deadline.deadline() != due {
                        deadline.as_mut().reset(due);
                    }
                    deadline.as_mut().poll(cx).map(|()| None)
                }
                None => Poll::Pending,
            }
        });
        tokio::select! {
            outcome = outcome => {
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(error)) => tracing::debug!(%error, %peer, "connection ended with an error"),
                    None => tracing::debug!(%peer, phase = activity.phase_name(), "closing a connection past its deadline"),
                }
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                // Nothing was ever asked on it, so nothing is owed; hyper would wait for the
                // first request's headers to complete.
                if activity.awaiting_first_request() {
                    return;
                }
                // Closes it once the request in progress, if any, is answered and flushed.
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Gives handlers the peer address, and puts the body, if any, under the body read deadline.
fn prepare_request(request: Request<Incoming>, peer: SocketAddr, body_read_timeout: Duration) -> Request<Body> {
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    let body = if http_body::Body::is_end_stream(&body) {
        Body::new(body)
    } else {
        let deadline = BodyReadDeadline {
            timeout: body_read_timeout,
            expired: Arc::new(AtomicBool::new(false)),
        };
        parts.extensions.insert(deadline.clone());
        Body::new(DeadlineBody {
            body,
            due: Instant::now() + body_read_timeout,
            timer: None,
            deadline,
        })
    };
    Request::from_parts(parts, body)
}

/// Where a connection is in its life, which decides the deadline it is held to.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Opened at `since`; its first request's headers are due within the header read timeout.
    AwaitingFirstRequest { since: Instant },
    /// Kept alive with no request since `since`: closed after the idle timeout.
    Idle { since: Instant },
    /// The next request's first bytes came at `since`; the rest of its headers are due within
    /// the header read timeout.
    ReadingHeaders { since: Instant },
    /// Answering `requests` requests (HTTP/1.1 answers one at a time; a count stays right
    /// whatever order hyper drops a finished and a new request's state in).
    Answering { requests: usize },
}

/// A connection's phase, shared by its socket (reads and writes), its requests and its task.
struct Activity {
    limits: ConnectionLimits,
    state: Mutex<ActivityState>,
}

struct ActivityState {
    phase: Phase,
    /// The client is not taking the bytes written to it; the server is still sending a
    /// response, so no deadline applies.
    writes_blocked: bool,
}

impl Activity {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(ActivityState {
                phase: Phase::AwaitingFirstRequest { since: Instant::now() },
                writes_blocked: false,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, ActivityState> {
        // The lock is only held to read or set plain values, which cannot leave them half-set.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// When the connection is to be closed unless it moves on, or `None` while it is answering.
    fn deadline(&self) -> Option<Instant> {
        let state = self.state();
        if state.writes_blocked {
            return None;
        }
        match state.phase {
            Phase::AwaitingFirstRequest { since } | Phase::ReadingHeaders { since } => {
                Some(since + self.limits.header_read_timeout)
            }
            Phase::Idle { since } => Some(since + self.limits.idle_timeout),
            Phase::Answering { .. } => None,
        }
    }

    fn awaiting_first_request(&self) -> bool {
        matches!(self.state().phase, Phase::AwaitingFirstRequest { .. })
    }

    fn phase_name(&self) -> &'static str {
        match self.state().phase {
            Phase::AwaitingFirstRequest { .. } => "awaiting the first request's headers",
            Phase::Idle { .. } => "idle",
            Phase::ReadingHeaders { .. } => "reading a request's headers",
            Phase::Answering { .. } => "answering",
        }
    }

    fn bytes_received(&self) {
        let mut state = self.state();
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::ReadingHeaders { since: Instant::now() };
        }
    }

    fn writes_blocked(&self, blocked: bool) {
        let mut state = self.state();
        if state.writes_blocked && !blocked {
            // The tail of a response went out only now: the connection is idle from here.
            if let Phase::Idle { since } = &mut state.phase {
                *since = Instant::now();
            }
        }
        state.writes_blocked = blocked;
    }

    fn request_started(&self) {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Answering { requests } => Phase::Answering { requests: requests + 1 },
            _ => Phase::Answering { requests: 1 },
        };
    }

    fn request_finished(&self) {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Answering { requests } if requests > 1 => Phase::Answering { requests: requests - 1 },
            _ => Phase::Idle { since: Instant::now() },
        };
    }
}

/// A request being answered, from its headers until its response's body is sent or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request [`InFlight`] until hyper has taken all of it.
struct TrackedBody {
    body: Body,
    /// Held for its drop.
    _answering: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive and whether the client
/// takes the bytes written to it.
struct WatchedIo {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl WatchedIo {
    fn note_write<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.writes_blocked(poll.is_pending());
        poll
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.bytes_received();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.note_write(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.note_write(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.note_write(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// In the extensions of a request with a body: the body read timeout it is held to, and whether
/// it ran out. Reading the body fails then, and the handler's answer to that failure is replaced
/// by a 408 (see [`crate::gate`]), as not every handler can tell a timeout from other failures.
#[derive(Clone, Debug)]
pub struct BodyReadDeadline {
    timeout: Duration,
    expired: Arc<AtomicBool>,
}

impl BodyReadDeadline {
    /// The body read timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the body did not arrive in time.
    pub fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }
}

/// The error reading a request body fails with when it does not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
struct BodyReadTimedOut(Duration);

/// A request body that fails once its deadline passes before it has all arrived.
struct DeadlineBody {
    body: Incoming,
    due: Instant,
    /// Set the first time the body has to be waited for; most bodies arrive with their headers.
    timer: Option<Pin<Box<Sleep>>>,
    deadline: BodyReadDeadline,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.expired() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(axum::Error::new)));
        }
        let due = self.due;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        ready!(timer.as_mut().poll(cx));
        self.deadline.expired.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(axum::Error::new(BodyReadTimedOut(self.deadline.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down; finishing requests in flight");
}
