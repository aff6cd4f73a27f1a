//! Lingering close. An answer often goes out before the request's body was read: a refused upload
//! (429, 503, 413) is answered at once, while the client is still sending its document. Closing the
//! socket with the client's bytes unread makes the kernel send a reset, and a reset can destroy
//! the answer before the client reads it: the client sees a broken connection instead of a clear
//! error. So a connection's socket is not closed when the connection ends: its write side is shut
//! (the client sees the answer, then the end of the stream) and what the client still sends is read
//! and thrown away until it closes, for a bounded time and number of bytes (as nginx's
//! `lingering_close` does).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    time::Instant,
};

use crate::body::{LINGER_BYTES, LINGER_FOR, LINGER_IDLE};

/// A connection's socket, closed by lingering when dropped.
pub struct Linger {
    io: Option<TcpStream>,
    /// Held until the lingering ends: a stopping server waits for every clone to be gone before
    /// its event loops end. A socket dropped with its loop would close with the client's bytes
    /// unread, which resets the connection and can destroy the last answer before the client
    /// reads it.
    open: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Linger {
    pub fn new(io: TcpStream, open: tokio::sync::mpsc::Sender<()>) -> Self {
        Self { io: Some(io), open: Some(open) }
    }

    fn io(&mut self) -> &mut TcpStream {
        self.io.as_mut().expect("present until dropped")
    }
}

impl AsyncRead for Linger {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Linger {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_shutdown(cx)
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else { return };
        let open = self.open.take();
        // Outside a runtime (the process is ending), the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                linger(io).await;
                drop(open);
            });
        }
    }
}

/// Shuts the write side, then reads until the client closes, or the bounds are reached.
async fn linger(mut io: TcpStream) {
    let _ = io.shutdown().await;
    let end = Instant::now() + LINGER_FOR;
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0u64;
    while read < LINGER_BYTES {
        let wait = LINGER_IDLE.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n as u64,
            _ => break,
        }
    }
}
