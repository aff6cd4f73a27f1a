//! hyper answers some malformed HTTP/1.1 requests itself, before any handler sees them: a
//! non-numeric or doubled `Content-Length`, a bad header line, a head over its buffer (400, 414,
//! 431), always as `HTTP/1.1 <status>\r\nconnection: close\r\ncontent-length: 0\r\ndate: ...`,
//! with an empty body. Every answer the gateway originates has a body in the dialect's error shape,
//! so the connection's writes pass through [`Canned`], which swaps that exact head for a full
//! answer made by the listener's [`Render`].
//!
//! hyper reads a new request head only once the previous answer is written and flushed, so its
//! own error is always a write of its own, from the first byte, between two answers of the
//! service. A write is taken for it only there ([`Answers`]): an answer's body of those very
//! bytes, alone in a write (an upstream's, passed through), had been swapped for an error in the
//! middle of its answer, and the client read the rest as the next answer.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Makes the whole answer (status line, headers, body) for one of hyper's own error statuses.
pub type Render = Arc<dyn Fn(http::StatusCode) -> Bytes + Send + Sync>;

/// The service's answers on one connection that are still being written: hyper's own error
/// answer can only come when none is, and the last one's bytes have been flushed.
pub struct Answers {
    open: AtomicUsize,
    /// No answer is open and the connection has been flushed since the last one ended.
    between: AtomicBool,
}

/// An answer being written, from its request's arrival until its body has ended or is dropped.
pub struct Answering(Arc<Answers>);

impl Answers {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { open: AtomicUsize::new(0), between: AtomicBool::new(true) })
    }

    pub fn begin(self: &Arc<Self>) -> Answering {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.between.store(false, Ordering::SeqCst);
        Answering(self.clone())
    }

    fn between(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0 && self.between.load(Ordering::SeqCst)
    }

    /// The connection was flushed: the last answer's bytes are out if none is open.
    fn flushed(&self) {
        if self.open.load(Ordering::SeqCst) == 0 {
            self.between.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        // The body has ended, but hyper may still hold its last bytes: not between answers until
        // the next flush.
        self.0.between.store(false, Ordering::SeqCst);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection whose writes of hyper's bodiless error answers are replaced.
pub struct Canned<IO> {
    io: IO,
    /// `None`: writes pass as they are.
    render: Option<Render>,
    answers: Arc<Answers>,
    /// The replacement being written, how much of it is out, and the length of the write it stands for.
    pending: Option<(Bytes, usize, usize)>,
}

impl<IO> Canned<IO> {
    pub fn new(io: IO, render: Option<Render>, answers: Arc<Answers>) -> Self {
        Self { io, render, answers, pending: None }
    }

    /// What renders hyper's error, when this write may be one.
    fn render_now(&self) -> Option<Render> {
        self.render.clone().filter(|_| self.answers.between())
    }
}

/// The status of hyper's own error answer, if `head` is exactly one.
fn canned_status(head: &[u8]) -> Option<http::StatusCode> {
    // "HTTP/1.1 400 Bad Request\r\n" + "connection: close\r\ncontent-length: 0\r\ndate: " + 29 + "\r\n\r\n",
    // or, after an HTTP/1.0 request kept alive, "HTTP/1.0 400 Bad Request\r\n" with no `connection`
    // line (HTTP/1.0 closes by default).
    const HEADERS: &[u8] = b"connection: close\r\ncontent-length: 0\r\ndate: ";
    const HEADERS_10: &[u8] = b"content-length: 0\r\ndate: ";
    let http10 = head.starts_with(b"HTTP/1.0 ");
    if head.len() > 160 || !(http10 || head.starts_with(b"HTTP/1.1 ")) || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status = http::StatusCode::from_bytes(head.get(9..12)?).ok()?;
    if !matches!(status.as_u16(), 400 | 414 | 431) {
        return None;
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let headers = if http10 { HEADERS_10 } else { HEADERS };
    let rest = head[line_end + 2..].strip_prefix(headers)?;
    let date = rest.strip_suffix(b"\r\n\r\n")?;
    (date.len() == 29 && httpdate::parse_http_date(std::str::from_utf8(date).ok()?).is_ok()).then_some(status)
}

impl<IO: AsyncWrite + Unpin> Canned<IO> {
    /// Writes out the replacement; ready with the length of the write it stands for.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, done, stands_for)) = &mut self.pending {
            if *done == bytes.len() {
                let n = *stands_for;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(0))
    }

    fn start(&mut self, render: Render, status: http::StatusCode, stands_for: usize) {
        tracing::info!(status = status.as_u16(), "malformed request answered by the connection");
        self.pending = Some((render(status), 0, stands_for));
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Canned<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Canned<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match this.render_now().zip(canned_status(buf)) {
                Some((render, status)) => this.start(render, status, buf.len()),
                None => return Pin::new(&mut this.io).poll_write(cx, buf),
            }
        }
        this.poll_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            let mut filled = bufs.iter().filter(|b| !b.is_empty());
            let render = this.render_now();
            let status = render.as_ref().and(filled.next()).and_then(|b| canned_status(b));
            match (render, status, filled.next()) {
                (Some(render), Some(status), None) => this.start(render, status, bufs.iter().map(|b| b.len()).sum()),
                _ => return Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            }
        }
        this.poll_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.answers.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_exact_bodiless_error_head_is_recognised() {
        let date = "Sun, 29 Nov 2026 03:24:41 GMT";
        let canned =
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n");
        assert_eq!(canned_status(canned.as_bytes()), Some(http::StatusCode::BAD_REQUEST));
        // After an HTTP/1.0 request kept alive.
        let http10 = format!("HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n");
        assert_eq!(canned_status(http10.as_bytes()), Some(http::StatusCode::BAD_REQUEST));
        let big = canned.replace("400 Bad Request", "431 Request Header Fields Too Large");
        assert_eq!(canned_status(big.as_bytes()), Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        for other in [
            canned.replace("400 Bad Request", "404 Not Found"),
            canned.replace("content-length: 0", "content-length: 5"),
            canned.replace("connection: close\r\n", ""),
            http10.replace("HTTP/1.0", "HTTP/0.9"),
            format!("{canned}x"),
            canned.replace(date, "not a date at all, not at all"),
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"
            ),
        ] {
            assert_eq!(canned_status(other.as_bytes()), None, "{other:?}");
        }
    }
}
