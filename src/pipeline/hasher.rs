//! The SHA-256 of a streamed body, taken beside the I/O. Hashing is the largest per-byte cost of an
//! upload (about 0.6 CPU seconds per GiB with SHA-NI); large frames are hashed on tokio's blocking
//! pool while the upload's own thread goes on encoding and sending parts, so that an upload on an
//! event loop of its own (`server.scheduler = "per-thread"`) still keeps two cores busy. Frames are
//! hashed strictly in the order they came.

use std::mem;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

/// Frames are handed to another thread once this many bytes wait (a hand-over costs about what
/// hashing a few KiB does).
const OFFLOAD_MIN: usize = 64 * 1024;

/// Most frames left waiting, whatever their size.
const MAX_FRAMES_WAITING: usize = 1024;

/// Most bytes of frames left waiting while a hash job runs; past it, the reader waits for the job.
/// Frames are slices of the connection's read buffers: this bounds what they keep alive.
const MAX_WAITING: usize = 4 << 20;

pub struct StreamHash {
    /// The running state; `None` while a job holds it.
    state: Option<Sha256>,
    /// The job hashing frames now; it gives the state back, and the frames, so that they are
    /// freed on this thread: the allocator reuses memory freed by its owning thread at once, and
    /// memory freed by another only later (peak RSS grew with the document when jobs freed them).
    job: Option<JoinHandle<(Sha256, Vec<Bytes>)>>,
    /// Frames that came after the job's, in order.
    waiting: Vec<Bytes>,
    waiting_bytes: usize,
}

// === impl StreamHash ===

impl StreamHash {
    pub fn new() -> Self {
        Self { state: Some(Sha256::new()), job: None, waiting: Vec::new(), waiting_bytes: 0 }
    }

    /// Adds the next frame. Cancel-safe: the frame is taken before anything is awaited, and a job
    /// being awaited stays here to be awaited again.
    pub async fn update(&mut self, frame: Bytes) {
        self.waiting_bytes += frame.len();
        self.waiting.push(frame);
        // Small frames (HTTP/2 DATA frames are 16 KiB from most clients) are gathered until there
        // are enough to hand over; the rest is hashed by `digest`. Hashing each one here as it
        // came put the hash back on the upload's own thread (h2c uploads ran at 0.76x HTTP/1.1).
        // Bounded in count too: a client dripping tiny frames must not queue millions of them.
        let running = self.job.as_ref().is_some_and(|job| !job.is_finished());
        let many = self.waiting.len() >= MAX_FRAMES_WAITING;
        if !many && (self.waiting_bytes < OFFLOAD_MIN || (running && self.waiting_bytes < MAX_WAITING)) {
            return;
        }
        self.settle().await;
        let mut state = self.state.take().expect("settled above");
        let frames = mem::take(&mut self.waiting);
        if mem::take(&mut self.waiting_bytes) < OFFLOAD_MIN {
            // Many tiny frames: fewer bytes than a hand-over is worth.
            frames.iter().for_each(|f| state.update(f));
            self.state = Some(state);
            return;
        }
        self.job = Some(tokio::task::spawn_blocking(move || {
            frames.iter().for_each(|f| state.update(f));
            (state, frames)
        }));
    }

    /// The digest of every frame added so far.
    pub async fn digest(&mut self) -> [u8; 32] {
        self.settle().await;
        let state = self.state.as_mut().expect("settled above");
        mem::take(&mut self.waiting).iter().for_each(|f| state.update(f));
        self.waiting_bytes = 0;
        state.clone().finalize().into()
    }

    /// Waits for the running job, if any, and takes the state back.
    async fn settle(&mut self) {
        if let Some(job) = &mut self.job {
            // The job only hashes bytes: it cannot panic, and a started blocking task is never
            // cancelled; an error here would mean the runtime is gone, and this task with it.
            let (state, frames) = job.await.expect("a hash job runs to its end");
            self.job = None;
            self.state = Some(state);
            drop(frames);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_of_any_size_hash_as_the_whole_stream() {
        let data = Bytes::from((0..1_500_000u32).map(|i| (i * 7 % 253) as u8).collect::<Vec<_>>());
        let want: [u8; 32] = Sha256::digest(&data).into();
        let mut rng = fastrand::Rng::with_seed(3);
        for max in [100, 5000, 100_000, 400_000, 2_000_000] {
            let mut h = StreamHash::new();
            let (mut at, mut frames) = (0, 0);
            while at < data.len() {
                let n = rng.usize(0..=max).min(data.len() - at);
                h.update(data.slice(at..at + n)).await;
                at += n;
                frames += 1;
                if frames % 7 == 3 && frames < 60 {
                    // Asked for half-way: the digest so far, and nothing lost after it.
                    assert_eq!(h.digest().await, <[u8; 32]>::from(Sha256::digest(&data[..at])));
                }
            }
            assert_eq!(h.digest().await, want, "frames up to {max} bytes");
        }
    }
}
