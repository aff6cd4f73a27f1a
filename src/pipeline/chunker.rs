//! Cuts the client's body into parts of a requested size, hashing every byte as it passes (beside
//! the I/O, see `hasher`) and keeping each part's raw bytes as the frames they came in; the JSON
//! body is made from them as the part is sent (see `part`).
//! Reading is cancel-safe: all state lives in the chunker, so it can sit in a `select!`.

use std::time::Duration;

use tokio::time::Instant;

use bytes::{Buf, Bytes};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;

use super::{
    hasher::StreamHash,
    part::{Gather, PartJson},
};

/// One part, ready to send.
#[derive(Debug)]
pub struct Part {
    /// The raw bytes (the body's own frames, shared), and the JSON body
    /// `{"data":"<base64>"}` made from them.
    pub body: PartJson,
    /// Raw bytes of the document in this part.
    pub len: usize,
}

/// Why the body could not be read to its end.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// No bytes for this long.
    Idle(Duration),
    /// The body did not end by the deadline, this long after it began.
    Deadline(Duration),
    /// The body broke off (client gone, framing error), or ended with other than the declared
    /// number of bytes.
    Broken,
}

pub struct Chunker<B> {
    body: B,
    /// The part being filled; kept here so a cancelled `next_part` loses nothing.
    current: Option<Gather>,
    /// What is left of the last frame read.
    pending: Bytes,
    hasher: StreamHash,
    total: u64,
    idle: Duration,
    /// The declared length: the body must end with exactly this many bytes. HTTP/2 reports a
    /// stream reset with NO_ERROR as a clean end (hyper), so a short body is caught here.
    declared: Option<u64>,
    /// When the whole body must have arrived, and when it began (for the error).
    deadline: Option<(Instant, Instant)>,
    done: bool,
    /// The body's trailer fields, if it ended with any (a `Content-Digest` may come there).
    trailers: Option<http::HeaderMap>,
}

// === impl Chunker ===

impl<B> Chunker<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    pub fn new(body: B, idle: Duration) -> Self {
        Self {
            body,
            current: None,
            pending: Bytes::new(),
            hasher: StreamHash::new(),
            total: 0,
            idle,
            declared: None,
            deadline: None,
            done: false,
            trailers: None,
        }
    }

    /// The body must end with exactly `len` bytes, when a length was declared.
    pub fn expect_len(mut self, len: Option<u64>) -> Self {
        self.declared = len;
        self
    }

    /// The body must have ended by `deadline`; `began` is when it started, for the error.
    pub fn set_deadline(&mut self, deadline: Instant, began: Instant) {
        self.deadline = Some((deadline, began));
    }

    /// The next part of exactly `size` bytes (the last one may be shorter), or `None` at the end.
    /// Parts hold the body's frames themselves (small ones gathered), not copies.
    pub async fn next_part(&mut self, size: usize) -> Result<Option<Part>, ChunkError> {
        loop {
            let gather = self.current.get_or_insert_with(Gather::default);
            let take = (size.saturating_sub(gather.len())).min(self.pending.len());
            if take > 0 {
                gather.push(self.pending.split_to(take));
            }
            if gather.len() >= size || (self.done && self.pending.is_empty()) {
                let gather = self.current.take().expect("filled above");
                let len = gather.len();
                if len == 0 {
                    return Ok(None);
                }
                return Ok(Some(Part { body: gather.finish(), len }));
            }
            self.read_frame().await?;
        }
    }

    /// Reads the body's next frame into `pending` (hashed and counted), within the idle time and
    /// the deadline; at the end, marks the body done (checking its declared length).
    async fn read_frame(&mut self) -> Result<(), ChunkError> {
        let wait = match self.deadline {
            Some((deadline, _)) => self.idle.min(deadline.saturating_duration_since(Instant::now())),
            None => self.idle,
        };
        match tokio::time::timeout(wait, self.body.frame()).await {
            Err(_) => Err(match self.deadline {
                Some((deadline, began)) if Instant::now() >= deadline => ChunkError::Deadline(deadline - began),
                _ => ChunkError::Idle(self.idle),
            }),
            Ok(None) => {
                if self.declared.is_some_and(|len| len != self.total) {
                    return Err(ChunkError::Broken);
                }
                self.done = true;
                Ok(())
            }
            Ok(Some(Err(_))) => Err(ChunkError::Broken),
            Ok(Some(Ok(frame))) => {
                match frame.into_data() {
                    Ok(data) => {
                        self.total += data.len() as u64;
                        if self.declared.is_some_and(|len| self.total > len) {
                            return Err(ChunkError::Broken);
                        }
                        self.pending = data.clone();
                        self.hasher.update(data).await;
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers.get_or_insert_default().extend(trailers);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads and hashes the body's first `n` bytes without cutting them into parts (the parts an
    /// earlier run of an upload already sent). Fails as `next_part` does when the body ends,
    /// breaks or stops first.
    pub async fn skip(&mut self, n: u64) -> Result<(), ChunkError> {
        let mut left = n;
        loop {
            let take = left.min(self.pending.len() as u64) as usize;
            self.pending.advance(take);
            left -= take as u64;
            if left == 0 {
                return Ok(());
            }
            if self.done {
                return Err(ChunkError::Broken);
            }
            self.read_frame().await?;
        }
    }

    /// The trailer fields the body ended with, if any.
    pub fn trailers(&self) -> Option<&http::HeaderMap> {
        self.trailers.as_ref()
    }

    /// Bytes read from the body so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes handed out in parts so far (read bytes not yet cut into a part are not counted).
    pub fn emitted(&self) -> u64 {
        self.total - self.pending.len() as u64 - self.current.as_ref().map_or(0, |b| b.len() as u64)
    }

    /// The SHA-256 of every byte read.
    pub async fn sha256(&mut self) -> [u8; 32] {
        self.hasher.digest().await
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        pin::Pin,
        task::{Context, Poll},
    };

    use base64::Engine;
    use http_body::Frame;
    use sha2::{Digest, Sha256};

    use super::*;

    /// The raw bytes a part body carries.
    fn raw(part: &Part) -> Bytes {
        let v: serde_json::Value = serde_json::from_slice(&part.body.to_bytes()).unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(raw.len(), part.len);
        raw.into()
    }

    /// A body that yields the given frames.
    struct Frames(VecDeque<Bytes>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    async fn cut(frames: Vec<Bytes>, sizes: &[usize]) -> (Vec<Bytes>, [u8; 32], u64) {
        let mut c = Chunker::new(Frames(frames.into()), Duration::from_secs(5));
        let mut parts = Vec::new();
        let mut i = 0;
        while let Some(p) = c.next_part(sizes[i.min(sizes.len() - 1)]).await.unwrap() {
            parts.push(raw(&p));
            assert_eq!(c.emitted(), parts.iter().map(|p| p.len() as u64).sum::<u64>());
            drop(p);
            i += 1;
        }
        (parts, c.sha256().await, c.total())
    }

    #[tokio::test]
    async fn any_split_into_frames_yields_the_same_parts_and_digest() {
        let data = Bytes::from((0..10_007u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>());
        let sizes = [1000, 3000, 3000];
        let (want, want_sha, _) = cut(vec![data.clone()], &sizes).await;
        assert_eq!(want.iter().map(Bytes::len).collect::<Vec<_>>(), [1000, 3000, 3000, 3000, 7]);
        assert_eq!(want_sha, <[u8; 32]>::from(Sha256::digest(&data)));
        let mut rng = fastrand::Rng::with_seed(99);
        for _ in 0..200 {
            let mut frames = Vec::new();
            let mut at = 0;
            while at < data.len() {
                let n = rng.usize(0..=4000).min(data.len() - at);
                frames.push(data.slice(at..at + n)); // empty frames included
                at += n;
            }
            let (parts, sha, total) = cut(frames, &sizes).await;
            assert_eq!((parts, sha, total), (want.clone(), want_sha, data.len() as u64));
        }
    }

    #[tokio::test]
    async fn a_body_that_ends_short_of_or_past_its_declared_length_is_broken() {
        let data = Bytes::from(vec![7u8; 1000]);
        for (declared, ok) in [(1000, true), (1001, false), (999, false)] {
            let frames = Frames(vec![data.slice(..600), data.slice(600..)].into());
            let mut c = Chunker::new(frames, Duration::from_secs(5)).expect_len(Some(declared));
            let mut result = Ok(());
            loop {
                match c.next_part(300).await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            assert_eq!(result.is_ok(), ok, "declared {declared}: {result:?}");
        }
    }

    #[tokio::test]
    async fn an_empty_body_has_no_parts() {
        let (parts, sha, total) = cut(vec![], &[10]).await;
        assert!(parts.is_empty());
        assert_eq!((sha, total), (<[u8; 32]>::from(Sha256::digest(b"")), 0));
    }
}
