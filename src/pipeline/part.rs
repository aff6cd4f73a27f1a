//! A part's request body, `{"data":"<standard padded base64>"}`, made from the part's raw bytes as
//! it is sent: the base64 exists only a slice at a time, written into a small buffer that the
//! connection sends while it is still in the cache. The raw bytes are the very frames the client's
//! body arrived in (slices of the connection's read buffers, never copied; small frames gathered),
//! so a part holds its raw size in memory, not the 4/3 of a whole encoded body, and a retry encodes
//! the same bytes again.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use base64_simd::STANDARD;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::body::{Body, BoxError};

const HEAD: &[u8] = b"{\"data\":\"";
const TAIL: &[u8] = b"\"}";

/// Base64 written per frame of the body (about): hyper writes it in one go.
const SLICE: usize = 256 * 1024;

/// Frames smaller than this are copied together rather than kept one by one, so that a client
/// sending tiny frames cannot make a part a list of millions of them.
const SMALL: usize = 16 * 1024;

/// Gathered small frames are kept once they reach this.
const GATHERED: usize = 64 * 1024;

/// Bytes of the JSON body for a part of `len` raw bytes.
pub fn encoded_len(len: usize) -> usize {
    HEAD.len() + len.div_ceil(3) * 4 + TAIL.len()
}

/// Bytes of memory a part of `len` raw bytes holds while it is in flight: its raw bytes, and the
/// slice of base64 being written.
pub fn held_len(len: usize) -> usize {
    len + SLICE.min(encoded_len(len))
}

/// A part's raw bytes, whose JSON body is made as it is sent. Cloning shares the bytes.
#[derive(Clone, Debug)]
pub struct PartJson {
    frames: Arc<[Bytes]>,
    len: usize,
}

/// A part's raw bytes as they arrive.
#[derive(Default)]
pub struct Gather {
    frames: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

// === impl Gather ===

impl Gather {
    /// Raw bytes taken so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the next bytes of the part.
    pub fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        if bytes.len() < SMALL {
            if self.small.is_empty() {
                self.small.reserve(GATHERED + SMALL);
            }
            self.small.extend_from_slice(&bytes);
            if self.small.len() >= GATHERED {
                self.frames.push(self.small.split().freeze());
            }
            return;
        }
        if !self.small.is_empty() {
            self.frames.push(self.small.split().freeze());
        }
        self.frames.push(bytes);
    }

    pub fn finish(mut self) -> PartJson {
        if !self.small.is_empty() {
            self.frames.push(self.small.split().freeze());
        }
        PartJson { frames: self.frames.into(), len: self.len }
    }
}

// === impl PartJson ===

impl PartJson {
    pub fn new(raw: Bytes) -> Self {
        Self { len: raw.len(), frames: Arc::new([raw]) }
    }

    /// The length of the JSON body.
    pub fn len(&self) -> usize {
        encoded_len(self.len)
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The JSON body, encoded a slice at a time as it is polled.
    pub fn body(&self) -> Body {
        http_body_util::BodyExt::boxed_unsync(self.encoding())
    }

    fn encoding(&self) -> Encoding {
        Encoding {
            frames: self.frames.clone(),
            next: 0,
            at: 0,
            carry: [0; 3],
            carried: 0,
            left: self.len(),
            started: false,
        }
    }

    /// The whole JSON body at once.
    pub fn to_bytes(&self) -> Bytes {
        let mut encoding = self.encoding();
        let mut out = Vec::with_capacity(self.len());
        while let Some(slice) = encoding.next_slice() {
            out.extend_from_slice(&slice);
        }
        Bytes::from(out)
    }
}

/// One send of a part's body. Base64 works on groups of three bytes; the one or two bytes at the
/// end of a frame that do not fill a group wait for the next frame, or for the end to pad them.
struct Encoding {
    frames: Arc<[Bytes]>,
    /// The frame being encoded, and how far.
    next: usize,
    at: usize,
    carry: [u8; 3],
    carried: usize,
    /// Bytes of the body not yet given out.
    left: usize,
    started: bool,
}

impl Encoding {
    /// The next slice of the body, or `None` once it has all been given out.
    fn next_slice(&mut self) -> Option<Vec<u8>> {
        if self.left == 0 {
            return None;
        }
        // The slice, plus a carried group, the head or the tail and its padding.
        let mut out = Vec::with_capacity(self.left.min(SLICE + 16));
        if !self.started {
            out.extend_from_slice(HEAD);
            self.started = true;
        }
        while out.len() < SLICE && self.next < self.frames.len() {
            let frame = &self.frames[self.next];
            let room = (SLICE - out.len()) / 4 * 3;
            let mut data = &frame[self.at..(self.at + room.max(3)).min(frame.len())];
            self.at += data.len();
            if self.at == frame.len() {
                (self.next, self.at) = (self.next + 1, 0);
            }
            if self.carried > 0 {
                let n = (3 - self.carried).min(data.len());
                self.carry[self.carried..self.carried + n].copy_from_slice(&data[..n]);
                self.carried += n;
                data = &data[n..];
                if self.carried < 3 {
                    continue;
                }
                STANDARD.encode_append(self.carry, &mut out);
                self.carried = 0;
            }
            let whole = data.len() / 3 * 3;
            // base64-simd: about 5x the `base64` crate's encode speed on these machines
            // (benches/codecs.rs); appending writes no zeros first.
            STANDARD.encode_append(&data[..whole], &mut out);
            let rest = &data[whole..];
            self.carry[..rest.len()].copy_from_slice(rest);
            self.carried = rest.len();
        }
        if self.next == self.frames.len() {
            STANDARD.encode_append(&self.carry[..self.carried], &mut out);
            self.carried = 0;
            out.extend_from_slice(TAIL);
        }
        self.left -= out.len();
        Some(out)
    }
}

impl http_body::Body for Encoding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.next_slice().map(|v| Ok(Frame::data(Bytes::from(v)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left as u64)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn the_settings_know_the_size_of_a_part_body_around_its_base64() {
        assert_eq!(encoded_len(0), crate::config::PART_BODY_OVERHEAD);
    }

    fn standard(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn bodies_are_json_with_padded_base64() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n as u8).collect();
            let body = PartJson::new(Bytes::from(data.clone())).to_bytes();
            assert_eq!(body.len(), encoded_len(n));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["data"].as_str().unwrap(), standard(&data));
        }
        assert_eq!(
            PartJson::new(Bytes::from_static(b"hello")).to_bytes(),
            format!("{{\"data\":\"{}\"}}", standard(b"hello")).as_bytes()
        );
    }

    /// A part gathered from frames of any size, around the slice boundaries: the streamed body
    /// is the whole body, frame by frame, every frame's size hint is what is left, and a retry
    /// sends the same bytes.
    #[tokio::test]
    async fn a_body_sent_slice_by_slice_is_the_whole_body_and_says_what_is_left() {
        let mut rng = fastrand::Rng::with_seed(5);
        let lens = [0, 1, 2, 3, 4, SLICE / 4 * 3 - 1, SLICE / 4 * 3, SLICE / 4 * 3 + 1, 2 * SLICE, 3 * SLICE + 7];
        for len in lens {
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            for max_frame in [1, 2, 5, SMALL - 1, SMALL + 1, 100_000, 1 << 20] {
                if max_frame < 16 && len > 100_000 {
                    continue;
                }
                let mut gather = Gather::default();
                let mut at = 0;
                while at < len {
                    let n = rng.usize(1..=max_frame).min(len - at);
                    gather.push(Bytes::copy_from_slice(&data[at..at + n]));
                    at += n;
                }
                assert_eq!(gather.len(), len);
                let part = gather.finish();
                let mut body = part.body();
                assert_eq!(body.size_hint().exact(), Some(part.len() as u64));
                let mut sent = Vec::new();
                while let Some(frame) = body.frame().await {
                    sent.extend_from_slice(&frame.unwrap().into_data().unwrap());
                    assert_eq!(body.size_hint().exact(), Some((part.len() - sent.len()) as u64), "len {len}");
                }
                assert!(body.is_end_stream());
                let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
                assert_eq!(v["data"].as_str().unwrap(), standard(&data), "len {len}, frames up to {max_frame}");
                assert_eq!(part.body().collect().await.unwrap().to_bytes(), sent);
                assert_eq!(part.to_bytes(), sent);
            }
        }
    }
}
