//! The pipeline: what an upload is made of and goes through, whichever ingress drives it.

pub(crate) mod calls; // the upstream calls of one upload, under the retry policy and the pacing
pub mod chunker; // the body cut into parts, hashed and encoded as it passes
pub(crate) mod digest; // the client's Content-Digest
mod hasher; // the SHA-256 beside the I/O
pub mod part; // a part's request body
pub(crate) mod presence; // whether the client is still there
pub mod stages; // one upload driven through open, feed, finish or abort
pub mod state; // an upload's state, serialisable
pub mod uploads; // what all uploads share, and admission
