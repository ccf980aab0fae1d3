//! The gRPC listener, bounded: at most `max_connections` connections; a connection that
//! opens no stream within the handshake timeout, or has had none open for the idle
//! timeout, is closed; `accept` errors (out of file descriptors, ...) back off instead of
//! spinning. Every limit hit is counted ([`Counters`]) and logged (at most once per
//! [`LOG_EVERY`] per limit, with how many were not logged).
//!
//! Streams are bounded by the service ([`super::stream`]): in total, and per connection
//! (advertised to clients as HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`, so Envoy opens
//! another connection instead of queueing; h2 refuses streams beyond it).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::counters::Counters;

/// Connection and stream limits of the gRPC server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Streams open at once, over all connections; more are refused
    /// (`RESOURCE_EXHAUSTED`).
    pub max_streams: usize,
    /// Streams open at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// From accept to the first stream's `Hello`.
    pub handshake_timeout: Duration,
    /// A connection with no stream open for this long is closed.
    pub idle_timeout: Duration,
}

/// Defaults, sized for the install's gateway (`--gateway-max-replicas` 10, 2 workers
/// each: 20 streams, 40 while replaced streams linger) with room for larger meshes;
/// worst-case memory is `max_streams` × the message limit (4 MiB) of half-sent messages.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
pub const DEFAULT_MAX_STREAMS: usize = 512;
/// A controller behind its Istio sidecar gets every gateway stream over a few
/// connections from the sidecar: Envoy opens another one when a connection is full.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 128;
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A limit is logged at most this often; the line says how many hits were not logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit for one kind of log line.
#[derive(Debug, Default)]
pub struct LogEvery {
    last: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl LogEvery {
    /// `Some(hits not logged since the last line)` when this hit should be logged.
    pub fn hit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY) {
            self.unlogged.fetch_add(1, Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.unlogged.swap(0, Relaxed))
    }
}

/// The log rate limits of the listener and the streams, one per limit.
#[derive(Debug, Default)]
pub struct LimitLogs {
    pub connection_cap: LogEvery,
    pub accept_error: LogEvery,
    pub handshake: LogEvery,
    pub idle: LogEvery,
    pub stream_cap: LogEvery,
    pub connection_stream_cap: LogEvery,
    pub hello_timeout: LogEvery,
    /// Streams refused by `--edge-auth` ([`super::auth`]).
    pub auth: LogEvery,
    /// TLS handshakes that failed (`--edge-auth mtls`).
    pub tls_handshake: LogEvery,
}

/// What a stream knows of its connection (tonic puts it in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    state: Arc<ConnState>,
    /// With TLS (`--edge-auth mtls`): the URI SANs of the client certificate the
    /// handshake verified (empty: none was presented). `None`: plain TCP.
    pub client_cert_uris: Option<Arc<[String]>>,
}

#[derive(Debug)]
struct ConnState {
    accepted: Instant,
    /// Streams open now.
    streams: AtomicUsize,
    /// A stream said Hello: the handshake is over.
    greeted: AtomicBool,
    /// Milliseconds after `accepted` when the last stream closed.
    idle_since_ms: AtomicU64,
}

/// Counts a stream on its connection while alive.
#[derive(Debug)]
pub struct ConnStream(Arc<ConnState>);

impl Drop for ConnStream {
    fn drop(&mut self) {
        let state = &self.0;
        let since = state.accepted.elapsed().as_millis();
        state
            .idle_since_ms
            .store(u64::try_from(since).unwrap_or(u64::MAX), Relaxed);
        state.streams.fetch_sub(1, Relaxed);
    }
}

impl ConnInfo {
    /// A stream opened on this connection; returns its guard and how many are open now.
    pub fn stream_opened(&self) -> (ConnStream, usize) {
        let open = self.state.streams.fetch_add(1, Relaxed).saturating_add(1);
        (ConnStream(self.state.clone()), open)
    }

    /// The stream said Hello: the connection is past its handshake.
    pub fn greeted(&self) {
        self.state.greeted.store(true, Relaxed);
    }

    /// The same connection, after a TLS handshake that verified these client URI SANs.
    pub fn with_client_cert_uris(&self, uris: Vec<String>) -> ConnInfo {
        ConnInfo {
            client_cert_uris: Some(uris.into()),
            ..self.clone()
        }
    }
}

/// `at + after`, or far in the future when that does not fit in an `Instant`.
fn later(at: Instant, after: Duration) -> Instant {
    at.checked_add(after)
        .or_else(|| at.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(at)
}

/// Why a connection was closed by a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Handshake,
    Idle,
}

impl ConnState {
    /// Expired now, or when to look again.
    /// While a stream is open the stream keeps its own Hello deadline (and ends with a
    /// status the gateway can read), so the connection only looks again later.
    fn check(&self, now: Instant, limits: &ConnLimits) -> Result<Instant, Expiry> {
        let greeted = self.greeted.load(Relaxed);
        if self.streams.load(Relaxed) > 0 {
            let again = if greeted {
                limits.idle_timeout
            } else {
                limits.handshake_timeout
            };
            return Ok(later(now, again));
        }
        let (deadline, expiry) = if greeted {
            let since = Duration::from_millis(self.idle_since_ms.load(Relaxed));
            let idle = since.saturating_add(limits.idle_timeout);
            (later(self.accepted, idle), Expiry::Idle)
        } else {
            (
                later(self.accepted, limits.handshake_timeout),
                Expiry::Handshake,
            )
        };
        if now >= deadline {
            Err(expiry)
        } else {
            Ok(deadline)
        }
    }
}

/// One accepted connection: the TCP stream, its share of the connection cap, and the
/// timer that closes it when its handshake or idle time is up (checked whenever hyper
/// polls it; the timer wakes it).
pub struct Conn {
    tcp: TcpStream,
    pub(super) info: ConnInfo,
    limits: ConnLimits,
    timer: Pin<Box<Sleep>>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.counters.connections_open.fetch_sub(1, Relaxed);
    }
}

impl Conn {
    /// `Err` once the connection's time is up (hyper then closes it).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        match self.info.state.check(Instant::now(), &self.limits) {
            Ok(next) => {
                self.timer.as_mut().reset(next.into());
                // Registers the waker for the new deadline.
                let _ = self.timer.as_mut().poll(cx);
                Ok(())
            }
            Err(expiry) => {
                let (counter, log, what, after) = match expiry {
                    Expiry::Handshake => (
                        &self.shared.counters.connections_closed_handshake_timeout,
                        &self.shared.logs.handshake,
                        "no stream said Hello",
                        self.limits.handshake_timeout,
                    ),
                    Expiry::Idle => (
                        &self.shared.counters.connections_closed_idle,
                        &self.shared.logs.idle,
                        "no stream open",
                        self.limits.idle_timeout,
                    ),
                };
                counter.fetch_add(1, Relaxed);
                if let Some(unlogged) = log.hit() {
                    tracing::info!(
                        peer = %self.info.peer, unlogged,
                        "closing a gRPC connection: {what} for {after:?}"
                    );
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} for {after:?}"),
                ))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// What the listener and its connections share.
#[derive(Debug)]
struct Shared {
    counters: Arc<Counters>,
    logs: Arc<LimitLogs>,
}

/// `accept` failures back off from this to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections within the limits; never ends and never yields an error (accept
/// errors are counted, logged and backed off here: tonic would retry them at once).
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    counters: Arc<Counters>,
    logs: Arc<LimitLogs>,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        limits,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        shared: Arc::new(Shared { counters, logs }),
        backoff: ACCEPT_BACKOFF_MIN,
    };
    futures::stream::unfold(acceptor, |mut acceptor| async move {
        let conn = acceptor.accept().await;
        Some((Ok(conn), acceptor))
    })
}

struct Acceptor {
    listener: TcpListener,
    limits: ConnLimits,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    backoff: Duration,
}

impl Acceptor {
    async fn accept(&mut self) -> Conn {
        let counters = &self.shared.counters;
        let logs = &self.shared.logs;
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    counters.accept_errors.fetch_add(1, Relaxed);
                    if let Some(unlogged) = logs.accept_error.hit() {
                        tracing::warn!(
                            %error, unlogged, backoff = ?self.backoff,
                            "cannot accept gRPC connections (out of file descriptors?); backing off"
                        );
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = self.backoff.saturating_mul(2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            self.backoff = ACCEPT_BACKOFF_MIN;
            counters.connections_accepted.fetch_add(1, Relaxed);
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                counters.connections_refused_at_cap.fetch_add(1, Relaxed);
                if let Some(unlogged) = logs.connection_cap.hit() {
                    tracing::warn!(
                        %peer, unlogged, max = self.limits.max_connections,
                        "gRPC connection closed: --max-connections are open"
                    );
                }
                drop(tcp);
                continue;
            };
            // Acks are small and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
            counters.connections_open.fetch_add(1, Relaxed);
            let accepted = Instant::now();
            return Conn {
                tcp,
                info: ConnInfo {
                    peer,
                    state: Arc::new(ConnState {
                        accepted,
                        streams: AtomicUsize::new(0),
                        greeted: AtomicBool::new(false),
                        idle_since_ms: AtomicU64::new(0),
                    }),
                    client_cert_uris: None,
                },
                limits: self.limits,
                timer: Box::pin(tokio::time::sleep_until(
                    later(accepted, self.limits.handshake_timeout).into(),
                )),
                shared: self.shared.clone(),
                _permit: permit,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(streams: usize, greeted: bool, idle_since_ms: u64, accepted: Instant) -> ConnState {
        ConnState {
            accepted,
            streams: AtomicUsize::new(streams),
            greeted: AtomicBool::new(greeted),
            idle_since_ms: AtomicU64::new(idle_since_ms),
        }
    }

    #[test]
    fn a_connection_expires_without_hello_or_after_idling() {
        let limits = ConnLimits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnLimits::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // (state, now, want)
        let cases = [
            // No Hello yet: the handshake deadline.
            (state(0, false, 0, t0), at(9), Ok(at(10))),
            (state(0, false, 0, t0), at(11), Err(Expiry::Handshake)),
            // A stream without Hello enforces its own deadline (a status for the client).
            (state(1, false, 0, t0), at(10), Ok(at(20))),
            // A live stream keeps it open; look again an idle timeout later.
            (state(1, true, 0, t0), at(500), Ok(at(560))),
            // Idle since its last stream closed (at 30 s).
            (state(0, true, 30_000, t0), at(60), Ok(at(90))),
            (state(0, true, 30_000, t0), at(90), Err(Expiry::Idle)),
        ];
        for (i, (state, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(state.check(now, &limits), want, "case {i}");
        }
    }

    #[test]
    fn limit_logs_are_rate_limited_and_count_what_they_skip() {
        let log = LogEvery::default();
        assert_eq!(log.hit(), Some(0));
        assert_eq!(log.hit(), None);
        assert_eq!(log.hit(), None);
        *log.last.lock().unwrap() = Some(Instant::now() - LOG_EVERY);
        assert_eq!(log.hit(), Some(2));
    }
}
