//! An upload's state: everything its stages need to go on from where it stands, serialisable, so
//! that a resumable upload can keep it across requests and restarts. A streamed upload holds it in
//! memory for the length of one request.
//!
//! **The running SHA-256 across a restart.** The `sha2` hasher's midstate cannot be serialised
//! through its public API, and a home-made copy of SHA-256 to get at it is not worth its risk. The
//! resumable ingress keeps every byte of an upload in its spool until the commit, so after a restart
//! the digest is recomputed from the spool: `hashed` says how many bytes the digest must cover,
//! and reading them back costs about half a second per GiB at the SHA-NI speed of these machines.
//! A streamed upload never restarts, so its hasher lives in its chunker and `hashed` follows it.

use serde::{Deserialize, Serialize};

/// Where one upload stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The upstream's `chunkedUploadId`, once create has answered.
    pub upstream_id: Option<String>,
    /// The upload's `expirationDateTime`, as the upstream announced it.
    pub expires: String,
    /// Unix seconds, on this machine's clock, after which no call is attempted (the upstream's
    /// expiry, less the margin the finish needs, measured against the upstream's own clock).
    pub deadline_unix: u64,
    /// What create announced.
    pub announced: Option<Announced>,
    /// Bytes of each of parts 1..n (the last may be shorter).
    pub part_size: usize,
    /// The sequence of the next part to cut.
    pub next_seq: u32,
    /// Parts the upstream has acknowledged, by sequence.
    pub accepted: Vec<u32>,
    /// Raw bytes of each part sent, indexed by sequence.
    pub sizes: Vec<u64>,
    /// Bytes of the document cut into parts so far.
    pub bytes: u64,
    /// Bytes the running SHA-256 covers (see the module's note on restarts).
    pub hashed: u64,
    /// Upstream calls made for this upload so far, retries and lookups included.
    pub calls_used: u32,
    /// Upstream calls set aside for it and not yet made (none yet: admission by call plan
    /// reserves them).
    pub calls_reserved: u32,
}

/// The limits create announced, and what part 0 took of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    pub max_parts: u32,
    pub max_total: u64,
    /// Bytes in part 0.
    pub part0: u64,
}

impl Announced {
    /// The most the upload can hold with parts 1..n of `part` bytes.
    pub fn capacity(&self, part: usize) -> u64 {
        let rest = u64::from(self.max_parts.saturating_sub(1)).saturating_mul(part as u64);
        self.max_total.min(self.part0.saturating_add(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_round_trip_through_json() {
        let state = UploadState {
            upstream_id: Some("ABC".into()),
            expires: "2026-11-29T04:00:00Z".into(),
            deadline_unix: 1_795_000_000,
            announced: Some(Announced { max_parts: 128, max_total: 50 << 20, part0: 1000 }),
            part_size: 8 << 20,
            next_seq: 3,
            accepted: vec![0, 2, 1],
            sizes: vec![1000, 8 << 20, 17],
            bytes: 1017 + (8 << 20),
            hashed: 1017 + (8 << 20),
            calls_used: 6,
            calls_reserved: 0,
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<UploadState>(&json).unwrap(), state);
    }

    #[test]
    fn capacity_counts_part_zero_and_the_parts_left() {
        let a = Announced { max_parts: 1, max_total: u64::MAX, part0: 65536 };
        assert_eq!(a.capacity(1 << 20), 65536, "part 0 alone");
        let a = Announced { max_parts: 3, max_total: 100, part0: 10 };
        assert_eq!((a.capacity(20), a.capacity(60)), (50, 100));
    }
}
