//! Accepting connections: HTTP/1.1 and HTTP/2 on one listener, time limits on connections that
//! send nothing, a cap on open connections that idle ones make room under, and a graceful drain.
//! Binding addresses and catching signals is left to the caller, so tests hand in a `127.0.0.1:0`
//! listener and a future of their own.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulConnection},
};
use tokio::{
    net::TcpListener,
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch},
    time::Instant,
};

use crate::{
    body::BoxError,
    edge::{
        canned::{Answering, Answers, Canned, Render},
        linger::Linger,
    },
};

/// Connection-level limits shared by every listener of the crate.
#[derive(Clone)]
pub struct ConnLimits {
    /// Time a new connection has to deliver its first request head, counted from accept (TLS
    /// handshake and HTTP version detection included); also the time allowed to read any later
    /// request head once it has begun.
    pub header_read_timeout: Duration,
    /// A connection that has served requests and has none running is closed after this long.
    pub idle_timeout: Duration,
    /// Open connections: the cap, the count, and the signal that makes idle ones close when full.
    pub connections: Arc<Connections>,
    /// Largest request head accepted over HTTP/1.1 by the connection itself (the gateway checks its
    /// own, possibly smaller, limit on each request).
    pub max_header_bytes: usize,
    /// Largest read from a connection. Bigger reads mean fewer system calls, wake-ups and frames
    /// per byte of a streamed body; a connection's buffer only grows while reads fill it.
    pub read_buffer_bytes: usize,
    /// Serve TLS (and verify client certificates, if its config asks) instead of plain TCP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Event loops taking connections from the listener: 1 = the caller's runtime alone; more
    /// start single-threaded runtimes on threads of their own (see [`serve`]).
    pub threads: usize,
    /// Gives hyper's own bodiless answers to malformed requests a body (see `canned`).
    pub render: Option<Render>,
    /// Work the requests leave running in tasks of this event loop (uploads deleting what they
    /// made after their client left): a stopping loop waits for it, up to [`CLEANUP`], before it
    /// ends and its tasks with it (an HTTP/2 client gone during the drain had left uploads open).
    pub settle: Option<Arc<crate::pipeline::calls::Outstanding>>,
    /// HTTP/2: streams one connection may have open at once.
    pub http2_max_streams: u32,
    /// HTTP/2: bytes a stream may receive before its handler reads them. The connection's window
    /// is this times `http2_max_streams`, so streams whose bodies wait (an upload queued for its
    /// account's quota, a request waiting for the rate limiter) can never use up the window the
    /// streams being read need: with the library's default (1 MiB for both), one waiting upload
    /// stalled every other upload on its connection.
    pub http2_stream_window: u32,
}

impl ConnLimits {
    /// The main listener's limits from its settings, with its TLS when configured; `connections`
    /// counts its connections (made with `max_connections` slots).
    pub fn for_server(
        c: &crate::config::ServerConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
        connections: Arc<Connections>,
    ) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms),
            connections,
            max_header_bytes: c.max_header_bytes,
            read_buffer_bytes: c.read_buffer_bytes,
            tls,
            threads: match c.scheduler {
                crate::config::Scheduler::PerThread => c.threads(),
                crate::config::Scheduler::WorkStealing => 1,
            },
            render: None,
            settle: None,
            http2_max_streams: c.http2_max_streams,
            http2_stream_window: c.http2_stream_window_bytes,
        }
    }
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connections: Connections::new(1024),
            max_header_bytes: 64 * 1024,
            read_buffer_bytes: 512 * 1024,
            tls: None,
            threads: 1,
            render: None,
            settle: None,
            http2_max_streams: 100,
            http2_stream_window: 1024 * 1024,
        }
    }
}

/// When the listener is full, a connection with no request running that has been quiet this long
/// is closed to make room (as nginx reuses keep-alive connections under load).
const PRESSURE_GRACE: Duration = Duration::from_secs(1);

/// Time a connection closed for idleness gets to say goodbye (an HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The open connections of one listener: at most `max`, counted, and told to make room when full.
pub struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
    /// Notified while accepting waits for a free slot: idle connections close.
    pressure: Notify,
    /// Slots held by accept loops waiting for a connection: room, not connections.
    ready: AtomicUsize,
}

// === impl Connections ===

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            pressure: Notify::new(),
            ready: AtomicUsize::new(0),
        })
    }

    /// Connections open now (the slots taken, less those the accept loops hold while they wait).
    pub fn open(&self) -> usize {
        (self.max - self.permits.available_permits()).saturating_sub(self.ready.load(Ordering::Relaxed))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Every slot is taken by a connection: a new client waits in the accept backlog.
    pub fn saturated(&self) -> bool {
        self.permits.available_permits() == 0 && self.ready.load(Ordering::Relaxed) == 0
    }

    /// A slot for the next connection, taken before it is accepted (so connections are accepted
    /// in turn, only with room). While none is free, and no other accept loop holds one to accept
    /// with, idle connections are asked (every [`PRESSURE_GRACE`]) to close and make room.
    async fn slot(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return permit;
        }
        loop {
            if self.ready.load(Ordering::Relaxed) == 0 {
                self.pressure.notify_waiters();
            }
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => return permit.expect("semaphore is never closed"),
                () = tokio::time::sleep(PRESSURE_GRACE) => {}
            }
        }
    }

    /// Counts a slot as held by a loop waiting to accept until the guard is dropped: an idle
    /// gateway with one loop per thread had shown a connection open per thread, `/readyz` had said
    /// `saturated` with room left, and idle connections had been closed for it.
    fn waiting_to_accept(self: &Arc<Self>) -> Ready {
        self.ready.fetch_add(1, Ordering::Relaxed);
        Ready(self.clone())
    }
}

/// A slot held by an accept loop while it waits for a connection (see `waiting_to_accept`).
struct Ready(Arc<Connections>);

impl Drop for Ready {
    fn drop(&mut self) {
        self.0.ready.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one connection is doing, for its idle timers.
struct Activity {
    opened: Instant,
    /// Requests whose handler is running now.
    busy: AtomicUsize,
    /// Requests begun on this connection so far.
    served: AtomicU64,
    /// When the connection last had no request running, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
}

/// Counts a request as running on its connection for as long as its handler runs.
struct Busy(Arc<Activity>);

pin_project_lite::pin_project! {
    /// A handler's answer, counted as running until it resolves or is dropped, and as being
    /// written (see `canned::Answers`) until its body ends. (A future of its own rather than an
    /// `async` block: the block's auto-trait inference trips over the service's boxed error type.)
    struct Counted<F> {
        #[pin]
        answer: F,
        _busy: Busy,
        answering: Option<Answering>,
    }
}

impl<F, B, E> Future for Counted<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Written<B>>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.answer.poll(cx));
        let answering = this.answering.take();
        std::task::Poll::Ready(answer.map(|response| response.map(|body| Written { body, answering })))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, counted as being written until it ends or is dropped.
    struct Written<B> {
        #[pin]
        body: B,
        answering: Option<Answering>,
    }
}

impl<B: http_body::Body> http_body::Body for Written<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            this.answering.take();
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

// === impl Activity ===

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How long the connection has had no request running; zero while one runs.
    fn idle_for(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let since = self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Instant::now().saturating_duration_since(since)
    }

    /// The idle limit in force: the header timeout until a first request arrives, then the idle timeout.
    fn limit(&self, limits: &ConnLimits) -> Duration {
        if self.served.load(Ordering::Relaxed) == 0 { limits.header_read_timeout } else { limits.idle_timeout }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = self.0.opened.elapsed().as_millis() as u64;
            self.0.idle_since_ms.store(ms, Ordering::Relaxed);
        }
    }
}

/// Serves `handler` on every connection accepted from `listener` until `shutdown` resolves, then
/// waits up to `drain` for open connections to finish their requests. If some are still busy then,
/// `on_overrun` is called (to cancel what they wait for) and they get [`CLEANUP`] more to answer.
///
/// With `limits.threads` above 1, that many event loops take connections from the listener: this
/// task's, and one more per extra thread, each a single-threaded runtime of its own. A connection
/// and everything its requests start then run on one thread, with no wake-ups across threads.
///
/// A handler that returns `Err` makes the connection close without an answer; the simulator uses
/// that to reproduce a peer that stored a request and then went away.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: ConnLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    on_overrun: impl FnOnce(),
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (stop, stopping) = watch::channel(false);
    // Each extra loop says here when its connections are all closed (or its thread ended).
    let mut others = Vec::new();
    for i in 1..limits.threads {
        match spawn_loop(i, &listener, &limits, &handler, &stopping) {
            Ok(closed) => others.push(closed),
            Err(err) => {
                tracing::warn!(error = %err, threads = i, "cannot start another event loop; serving with fewer");
                break;
            }
        }
    }
    let all_closed = async move {
        accept_loop(listener, &limits, handler, stopping).await;
        for closed in others {
            let _ = closed.await;
        }
    };
    tokio::pin!(all_closed);
    // This task's own loop runs inside `all_closed`, so that is polled while serving too.
    tokio::select! {
        () = shutdown => {}
        () = &mut all_closed => {}
    }
    stop.send_replace(true);
    if tokio::time::timeout(drain, &mut all_closed).await.is_err() {
        tracing::warn!(?drain, "connections still busy after the drain period");
        on_overrun();
        if tokio::time::timeout(CLEANUP, all_closed).await.is_err() {
            tracing::warn!("connections still open after cleanup; closing them");
        }
    }
}

/// Starts event loop `i` on a thread of its own, serving a duplicate of `listener`; the receiver
/// hears when that loop is done.
fn spawn_loop<H, F, B>(
    i: usize,
    listener: &TcpListener,
    limits: &ConnLimits,
    handler: &H,
    stopping: &watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<()>>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // The same listening socket, registered with the new thread's own poller: whichever loop is
    // free first takes the next connection.
    let dup = std::net::TcpListener::from(std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?);
    dup.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::memory::on_thread_park)
        .on_thread_unpark(crate::memory::on_thread_unpark)
        .build()?;
    let (done, closed) = oneshot::channel();
    let (limits, handler, stopping) = (limits.clone(), handler.clone(), stopping.clone());
    // Named for the port it serves and its number (at most 15 characters show in /proc and top).
    let port = listener.local_addr().map_or(0, |a| a.port());
    std::thread::Builder::new().name(format!("loop-{port}-{i}")).spawn(move || {
        runtime.block_on(async move {
            let ticker = tokio::spawn(crate::memory::ticker());
            match TcpListener::from_std(dup) {
                Ok(listener) => accept_loop(listener, &limits, handler, stopping).await,
                Err(err) => tracing::warn!(error = %err, "event loop cannot use the listener"),
            }
            ticker.abort();
        });
        let _ = done.send(());
    })?;
    Ok(closed)
}

/// Accepts and serves connections until `stopping` turns true, then waits for the connections it
/// accepted to finish their requests and close. (Longer than most functions here: a connection's
/// task is written out in it, because the same task in a function generic over the service trips
/// the compiler's auto-trait inference over the service's boxed error type; see `Counted`.)
async fn accept_loop<H, F, B>(listener: TcpListener, limits: &ConnLimits, handler: H, stopping: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = Arc::new(http_builder(limits));
    // Every connection task and lingering socket holds a clone; when all are gone, every
    // connection has closed.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let stop = {
        let mut stopping = stopping.clone();
        // A dropped sender means the server is gone: stop too.
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    };
    tokio::pin!(stop);

    loop {
        let permit = tokio::select! {
            permit = limits.connections.slot() => permit,
            () = &mut stop => break,
        };
        let ready = limits.connections.waiting_to_accept();
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut stop => break,
        };
        drop(ready);
        let _ = stream.set_nodelay(true);
        let (activity, answers) = (Activity::new(), Answers::new());
        let service = {
            let (handler, activity, answers) = (handler.clone(), activity.clone(), answers.clone());
            service_fn(move |req| Counted {
                answer: handler(req, peer),
                _busy: activity.enter(),
                answering: Some(answers.begin()),
            })
        };
        let (builder, limits, stopping, open) = (builder.clone(), limits.clone(), stopping.clone(), open.clone());
        tokio::spawn(async move {
            // The handshake happens here, not in the accept loop, so a slow one stalls nobody
            // else; it counts against the time allowed before the first request.
            let result = match limits.tls.clone() {
                None => {
                    let io =
                        TokioIo::new(Canned::new(Linger::new(stream, open.clone()), limits.render.clone(), answers));
                    let conn = builder.serve_connection_with_upgrades(io, service);
                    drive(conn, &activity, &limits, stopping).await
                }
                Some(acceptor) => {
                    let accepting = acceptor.accept(Linger::new(stream, open.clone()));
                    match handshake(accepting, &limits, stopping.clone(), peer).await {
                        Some(tls) => {
                            let io = TokioIo::new(Canned::new(tls, limits.render.clone(), answers));
                            let conn = builder.serve_connection_with_upgrades(io, service);
                            drive(conn, &activity, &limits, stopping).await
                        }
                        None => Ok(()),
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop((permit, open));
        });
    }
    drop((listener, open));
    let _ = all_closed.recv().await;
    if let Some(work) = &limits.settle {
        work.settled(Instant::now() + CLEANUP).await;
    }
}

/// HTTP/1.1 and HTTP/2 on one listener, with the connection limits.
fn http_builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper bounds the head and the read buffer with one setting.
        .max_buf_size(limits.max_header_bytes.max(limits.read_buffer_bytes).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        // Above the gateway's own limit, which it checks itself to answer 431 HEADERS_TOO_LARGE
        // in the dialect's error shape: the HTTP/2 library's own refusal is a bare 431 and a
        // refused stream, which curl takes as safe to send again (six times, then it gives up).
        // Heads past four times the limit are still refused by the library, unread.
        .max_header_list_size(u32::try_from(limits.max_header_bytes.saturating_mul(4)).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_streams)
        .initial_stream_window_size(limits.http2_stream_window)
        .initial_connection_window_size(limits.http2_stream_window.saturating_mul(limits.http2_max_streams))
        // Clients may send DATA frames of up to a quarter of the stream's window (256 KiB at the
        // default) rather than the protocol's default 16 KiB: fewer frames, reads and wake-ups
        // per byte of an upload, while the window still holds four in flight.
        .max_frame_size((limits.http2_stream_window / 4).clamp(16_384, 1 << 20));
    builder
}

/// The next connection; a failed accept (out of descriptors and the like) backs off instead of
/// spinning.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TLS handshake, within the time allowed before the first request. A connection still in its
/// handshake has sent no request and is owed nothing: it is dropped, as a silent one is, when the
/// server stops and when the listener is full and it has had [`PRESSURE_GRACE`]. (Run apart from
/// `drive`, the handshake had heard neither: a client holding `server.max_connections` sockets
/// without a ClientHello locked the TLS listener out, and a stopping server waited for them.)
async fn handshake<T>(
    accepting: impl Future<Output = std::io::Result<T>>,
    limits: &ConnLimits,
    mut stopping: watch::Receiver<bool>,
    peer: SocketAddr,
) -> Option<T> {
    let started = Instant::now();
    let deadline = started + limits.header_read_timeout;
    tokio::pin!(accepting);
    loop {
        let pressure = limits.connections.pressure.notified();
        tokio::select! {
            accepted = &mut accepting => {
                return match accepted {
                    Ok(tls) => Some(tls),
                    Err(err) => {
                        tracing::info!(%peer, error = %err, "TLS handshake failed");
                        None
                    }
                };
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(%peer, "TLS handshake timed out");
                return None;
            }
            _ = stopping.wait_for(|s| *s) => {
                tracing::debug!(%peer, "server stopping: dropping a connection still in its TLS handshake");
                return None;
            }
            () = pressure => {
                if started.elapsed() >= PRESSURE_GRACE {
                    tracing::debug!(%peer, "listener full: dropping a connection still in its TLS handshake");
                    return None;
                }
            }
        }
    }
}

/// Serves one connection until it ends: closed gracefully when the server stops, when it stays
/// idle past its limit, or when the listener is full and it is idle.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: &ConnLimits,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    let mut closing = false;
    // Closing because the server stops: an HTTP/2 connection whose client never answers the
    // goodbye (GOAWAY waits for a PING's answer) is dropped once it has had no request running
    // for `CLOSE_GRACE` (it had held the process until the cleanup time ran out, 45 s).
    let mut stopped = false;
    // Once closing for idleness, the connection is dropped if it has not ended by then; a stopping
    // server's drain sets its own limits.
    let mut hard_stop: Option<Instant> = None;
    loop {
        let limit = activity.limit(limits);
        // While a request runs, look again after a full limit; once idle, when the limit is up.
        let check = Instant::now() + limit.saturating_sub(activity.idle_for()).max(Duration::from_millis(10));
        let pressure = limits.connections.pressure.notified();
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = stopping.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                (closing, stopped) = (true, true);
            }
            () = tokio::time::sleep(Duration::from_millis(250)), if stopped => {
                if activity.idle_for() >= CLOSE_GRACE {
                    return Ok(());
                }
            }
            () = tokio::time::sleep_until(check), if !closing => {
                if activity.idle_for() >= activity.limit(limits) {
                    let silent = activity.served.load(Ordering::Relaxed) == 0;
                    tracing::debug!(silent, "closing an idle connection");
                    // A connection that never asked for anything is owed no goodbye (an HTTP/2
                    // GOAWAY waits for the peer's answer to a PING): it is dropped now.
                    if silent {
                        return Ok(());
                    }
                    conn.as_mut().graceful_shutdown();
                    (closing, hard_stop) = (true, Some(Instant::now() + CLOSE_GRACE));
                }
            }
            () = pressure, if !closing => {
                if activity.idle_for() >= PRESSURE_GRACE {
                    tracing::debug!("listener full: closing an idle connection to make room");
                    if activity.served.load(Ordering::Relaxed) == 0 {
                        return Ok(());
                    }
                    conn.as_mut().graceful_shutdown();
                    (closing, hard_stop) = (true, Some(Instant::now() + CLOSE_GRACE));
                }
            }
            () = tokio::time::sleep_until(hard_stop.unwrap_or_else(Instant::now)), if hard_stop.is_some() => {
                return Ok(());
            }
        }
    }
}

/// Time given to cancelled requests to clean up and answer after the drain period.
pub const CLEANUP: Duration = Duration::from_secs(45);

/// Stops an in-process server when dropped (or when [`Stopper::stop`] is called).
pub struct Stopper(Option<tokio::sync::oneshot::Sender<()>>);

impl Stopper {
    /// A stopper and the future it resolves.
    pub fn new() -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(Some(tx)), async {
            let _ = rx.await;
        })
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}
