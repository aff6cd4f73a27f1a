//! Accepting connections: HTTP/1.1 and HTTP/2 on one listener, timeouts on reading headers, a cap
//! on open connections, and a graceful drain. Binding addresses and catching signals is left to the
//! caller, so tests hand in a `127.0.0.1:0` listener and a future of their own.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, oneshot, watch},
};

use crate::body::{Body, BoxError};

/// Connection-level limits shared by every listener of the crate.
#[derive(Clone)]
pub struct ConnLimits {
    /// Time allowed to read a request's headers (slow clients hold a connection otherwise).
    pub header_read_timeout: Duration,
    /// Open connections at once; further clients wait in the accept backlog.
    pub max_connections: usize,
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
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_header_bytes: 64 * 1024,
            read_buffer_bytes: 512 * 1024,
            tls: None,
            threads: 1,
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
pub async fn serve<H, F>(
    listener: TcpListener,
    limits: ConnLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    on_overrun: impl FnOnce(),
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    let (stop, stopping) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Each extra loop says here when its connections are all closed (or its thread ended).
    let mut others = Vec::new();
    for i in 1..limits.threads {
        match spawn_loop(i, &listener, &limits, &handler, &permits, &stopping) {
            Ok(closed) => others.push(closed),
            Err(err) => {
                tracing::warn!(error = %err, threads = i, "cannot start another event loop; serving with fewer");
                break;
            }
        }
    }
    let all_closed = async move {
        accept_loop(listener, &limits, handler, permits, stopping).await;
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
fn spawn_loop<H, F>(
    i: usize,
    listener: &TcpListener,
    limits: &ConnLimits,
    handler: &H,
    permits: &Arc<Semaphore>,
    stopping: &watch::Receiver<bool>,
) -> std::io::Result<oneshot::Receiver<()>>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    // The same listening socket, registered with the new thread's own poller: whichever loop is
    // free first takes the next connection.
    let dup = std::net::TcpListener::from(std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?);
    dup.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (done, closed) = oneshot::channel();
    let (limits, handler, permits, stopping) = (limits.clone(), handler.clone(), permits.clone(), stopping.clone());
    // Named for the port it serves and its number (at most 15 characters show in /proc and top).
    let port = listener.local_addr().map_or(0, |a| a.port());
    std::thread::Builder::new().name(format!("loop-{port}-{i}")).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(dup) {
                Ok(listener) => accept_loop(listener, &limits, handler, permits, stopping).await,
                Err(err) => tracing::warn!(error = %err, "event loop cannot use the listener"),
            }
        });
        let _ = done.send(());
    })?;
    Ok(closed)
}

/// Accepts and serves connections until `stopping` turns true, then waits for the connections it
/// accepted to finish their requests and close.
async fn accept_loop<H, F>(
    listener: TcpListener,
    limits: &ConnLimits,
    handler: H,
    permits: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper bounds the head and the read buffer with one setting.
        .max_buf_size(limits.max_header_bytes.max(limits.read_buffer_bytes).max(8192));
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let stop = async move {
        // A dropped sender means the server is gone: stop too.
        let _ = stopping.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| handler(req, peer));
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), limits.tls.clone());
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // The handshake happens here, not in the accept loop, so a slow one stalls nobody else.
            let result = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned())
                        .await
                }
                Some(acceptor) => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        watcher
                            .watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned())
                            .await
                    }
                    Ok(Err(err)) => {
                        tracing::info!(%peer, error = %err, "TLS handshake failed");
                        Ok(())
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        Ok(())
                    }
                },
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
