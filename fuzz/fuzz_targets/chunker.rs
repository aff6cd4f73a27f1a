//! However the body is split into frames and whatever part sizes are asked for, the parts' bodies
//! are JSON whose base64 decodes to their bytes, those put back together are the body, none is
//! larger than asked, and the digest is the body's.
#![no_main]

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use chunkgate::pipeline::{chunker::Chunker, pool::BufferPool};
use http_body::Frame;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

struct Frames(VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fuzz_target!(|input: (Vec<u8>, Vec<u8>, Vec<u8>)| {
    let (data, splits, sizes) = input;
    let data = Bytes::from(data);
    let mut frames = VecDeque::new();
    let mut at = 0;
    for s in splits.iter().cycle().take(data.len() + 1) {
        if at >= data.len() {
            break;
        }
        let n = (*s as usize).min(data.len() - at);
        frames.push_back(data.slice(at..at + n));
        at += n;
    }
    if at < data.len() {
        frames.push_back(data.slice(at..));
    }
    let sizes: Vec<usize> = if sizes.is_empty() { vec![7] } else { sizes.iter().map(|s| *s as usize + 1).collect() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        let pool = BufferPool::new(1 << 16);
        let mut chunker = Chunker::new(Frames(frames), Duration::from_secs(5), pool.clone());
        let mut joined = Vec::new();
        let mut i = 0;
        while let Some(part) = chunker.next_part(sizes[i % sizes.len()]).await.unwrap() {
            assert!(part.len > 0 && part.len <= sizes[i % sizes.len()]);
            let json: serde_json::Value = serde_json::from_slice(&part.body).unwrap();
            let raw = base64::engine::general_purpose::STANDARD.decode(json["data"].as_str().unwrap()).unwrap();
            assert_eq!(raw.len(), part.len);
            joined.extend_from_slice(&raw);
            assert_eq!(chunker.emitted(), joined.len() as u64);
            drop(part);
            i += 1;
        }
        assert_eq!(joined, data);
        assert_eq!(chunker.sha256().await, <[u8; 32]>::from(Sha256::digest(&data)));
    });
});
