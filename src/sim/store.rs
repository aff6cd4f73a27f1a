//! The simulator's uploads and the rules the upstream enforces on them: write-once parts, nothing
//! after commit, contiguous 0..n to commit, part and size limits, lifetime, per-member quota and
//! ownership. No HTTP here; times are Unix seconds handed in by the caller.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::resource::{Resource, ResourcePart, hex};
use crate::config::sim::{BoolStyle, Limits, Storage};

/// A refusal, with the code the simulator answers it with. DocuSign publishes no codes for the chunk
/// rules; every `CHUNKED_UPLOAD_*` code here is the simulator's own invention.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("The chunked upload was not found, or belongs to another member.")]
    NotFound,
    #[error("The chunked upload expired and can no longer be used.")]
    Expired,
    #[error("The chunked upload is already committed; no part can be added and it cannot be committed again.")]
    Committed,
    #[error("Part {0} was already received and cannot be replaced.")]
    PartExists(u32),
    #[error("The parts are not contiguous from 0: part {0} is missing.")]
    NotContiguous(u32),
    #[error("Part sequence {0} is beyond the limit of {1} parts.")]
    TooManyParts(u32, u32),
    #[error("The chunked upload would exceed its maximum total size of {0} bytes.")]
    TooLarge(u64),
    #[error("A request may carry at most {0} bytes of data.")]
    PartTooLarge(u64),
    #[error("The member already holds {0} unexpired, unused chunked uploads.")]
    QuotaUploads(u32),
    #[error("The member's chunked uploads would exceed {0} bytes.")]
    QuotaBytes(u64),
    #[error("The part carries no data.")]
    Empty,
    /// An envelope names an upload it cannot use; nothing is used.
    #[error("The document's remoteUrl names chunked upload {0}, which {1}; no upload was used.")]
    Unusable(String, &'static str),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotFound => "CHUNKED_UPLOAD_NOT_FOUND",
            Refusal::Expired => "CHUNKED_UPLOAD_EXPIRED",
            Refusal::Committed => "CHUNKED_UPLOAD_ALREADY_COMMITTED",
            Refusal::PartExists(_) => "CHUNKED_UPLOAD_PART_ALREADY_EXISTS",
            Refusal::NotContiguous(_) => "CHUNKED_UPLOAD_PARTS_NOT_CONTIGUOUS",
            Refusal::TooManyParts(..) => "CHUNKED_UPLOAD_TOO_MANY_PARTS",
            Refusal::TooLarge(_) => "CHUNKED_UPLOAD_TOO_LARGE",
            Refusal::PartTooLarge(_) => "CHUNKED_UPLOAD_PART_TOO_LARGE",
            Refusal::QuotaUploads(_) => "CHUNKED_UPLOAD_QUOTA_EXCEEDED",
            Refusal::QuotaBytes(_) => "CHUNKED_UPLOAD_QUOTA_EXCEEDED",
            Refusal::Empty => "CHUNKED_UPLOAD_EMPTY_PART",
            Refusal::Unusable(..) => "CHUNKED_UPLOAD_NOT_USABLE",
        }
    }
}

/// Who is calling and when: the account in the path, the member behind the token, Unix seconds.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub account: &'a str,
    pub owner: &'a str,
    pub now: i64,
}

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Open,
    Committed,
    Deleted,
    /// Used by an envelope (or `/__sim/uploads/{id}/consume`).
    Consumed,
}

/// What the simulator knows of one upload, cheap to scan for quota.
struct Meta {
    account: String,
    owner: String,
    expires: i64,
    state: State,
    sizes: BTreeMap<u32, u64>,
    total: u64,
    max_parts: u32,
    max_total: u64,
    max_request: u64,
    content: Arc<Mutex<Content>>,
}

/// The bytes side of an upload: a SHA-256 over the contiguous prefix of parts, parts waiting for
/// their predecessors, and in full storage every part's bytes.
#[derive(Default)]
struct Content {
    hasher: Sha256,
    /// Next sequence the hasher expects.
    next: u32,
    waiting: BTreeMap<u32, Bytes>,
    kept: BTreeMap<u32, Bytes>,
}

impl Content {
    fn add(&mut self, seq: u32, data: Bytes, storage: Storage) {
        if storage == Storage::Full {
            self.kept.insert(seq, data.clone());
        }
        self.waiting.insert(seq, data);
        while let Some(data) = self.waiting.remove(&self.next) {
            self.hasher.update(&data);
            self.next += 1;
        }
    }

    fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

/// A read-only view of an upload for `/__sim/uploads/{id}`.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub id: String,
    pub account: String,
    pub state: State,
    pub expired: bool,
    pub parts: Vec<(u32, u64)>,
    pub total_size: u64,
    /// SHA-256 of the contiguous parts from 0, hex.
    pub sha256: String,
}

/// Counts over the whole simulator, for tests that prove nothing was lost or left behind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counts {
    pub created: u64,
    pub committed: u64,
    pub deleted: u64,
    /// Neither committed, deleted nor consumed, expired or not: what a client left behind.
    pub open: u64,
    /// Second PUTs of a part that was already there.
    pub duplicate_parts: u64,
    /// Uploads used by envelopes.
    pub used: u64,
    pub envelopes: u64,
}

/// All uploads. Metadata sits under one lock (quota needs to see a member's uploads together);
/// hashing and part bytes sit under a lock per upload, so big parts do not serialize the simulator.
pub struct Store {
    storage: Storage,
    bool_style: BoolStyle,
    meta: Mutex<HashMap<String, Meta>>,
    counts: Mutex<Counts>,
    rng: Mutex<fastrand::Rng>,
}

// === impl Store ===

impl Store {
    pub fn new(storage: Storage, bool_style: BoolStyle) -> Self {
        Self {
            storage,
            bool_style,
            meta: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    /// Create: a new upload carrying part 0.
    pub fn create(&self, c: Caller<'_>, data: Bytes, limits: &Limits) -> Result<Resource, Refusal> {
        let Caller { account, owner, now } = c;
        let len = data.len() as u64;
        if len == 0 {
            return Err(Refusal::Empty);
        }
        if len > limits.max_request_data {
            return Err(Refusal::PartTooLarge(limits.max_request_data));
        }
        if len > limits.max_total_size {
            return Err(Refusal::TooLarge(limits.max_total_size));
        }
        let id = {
            let v = self.rng.lock().unwrap().u128(..);
            uuid::Uuid::from_u128(v).hyphenated().encode_upper(&mut uuid::Uuid::encode_buffer()).to_owned()
        };
        let content = Arc::new(Mutex::new(Content::default()));
        {
            let mut meta = self.meta.lock().unwrap();
            let (uploads, bytes) = usage(&meta, owner, now);
            if uploads >= limits.quota_uploads as u64 {
                return Err(Refusal::QuotaUploads(limits.quota_uploads));
            }
            if bytes + len > limits.quota_bytes {
                return Err(Refusal::QuotaBytes(limits.quota_bytes));
            }
            meta.insert(
                id.clone(),
                Meta {
                    account: account.to_owned(),
                    owner: owner.to_owned(),
                    expires: now + limits.lifetime_secs as i64,
                    state: State::Open,
                    sizes: BTreeMap::from([(0, len)]),
                    total: len,
                    max_parts: limits.max_parts,
                    max_total: limits.max_total_size,
                    max_request: limits.max_request_data,
                    content: content.clone(),
                },
            );
        }
        content.lock().unwrap().add(0, data, self.storage);
        self.counts.lock().unwrap().created += 1;
        self.resource(c, &id, false)
    }

    /// Add part `seq` to upload `id`.
    pub fn add_part(
        &self,
        c: Caller<'_>,
        id: &str,
        seq: u32,
        data: Bytes,
        quota_bytes: u64,
    ) -> Result<Resource, Refusal> {
        let Caller { owner, now, .. } = c;
        let len = data.len() as u64;
        let content = {
            let mut meta = self.meta.lock().unwrap();
            let (_, used) = usage(&meta, owner, now);
            let m = live(&mut meta, c, id)?;
            if m.state == State::Committed {
                return Err(Refusal::Committed);
            }
            if m.sizes.contains_key(&seq) {
                drop(meta);
                self.counts.lock().unwrap().duplicate_parts += 1;
                return Err(Refusal::PartExists(seq));
            }
            if len == 0 {
                return Err(Refusal::Empty);
            }
            if len > m.max_request {
                return Err(Refusal::PartTooLarge(m.max_request));
            }
            if seq >= m.max_parts {
                return Err(Refusal::TooManyParts(seq, m.max_parts));
            }
            if m.total + len > m.max_total {
                return Err(Refusal::TooLarge(m.max_total));
            }
            if used + len > quota_bytes {
                return Err(Refusal::QuotaBytes(quota_bytes));
            }
            m.sizes.insert(seq, len);
            m.total += len;
            m.content.clone()
        };
        content.lock().unwrap().add(seq, data, self.storage);
        self.resource(c, id, false)
    }

    /// Commit: refused unless parts 0..n are all there.
    pub fn commit(&self, c: Caller<'_>, id: &str) -> Result<Resource, Refusal> {
        {
            let mut meta = self.meta.lock().unwrap();
            let m = live(&mut meta, c, id)?;
            if m.state == State::Committed {
                return Err(Refusal::Committed);
            }
            if let Some(missing) = (0..).zip(m.sizes.keys()).find(|(want, have)| want != *have).map(|(want, _)| want) {
                return Err(Refusal::NotContiguous(missing));
            }
            m.state = State::Committed;
        }
        self.counts.lock().unwrap().committed += 1;
        self.resource(c, id, false)
    }

    /// Delete: the upload stops counting against the member's quota.
    pub fn delete(&self, c: Caller<'_>, id: &str) -> Result<Resource, Refusal> {
        let resource = self.resource(c, id, false)?;
        let mut meta = self.meta.lock().unwrap();
        let m = live(&mut meta, c, id)?;
        m.state = State::Deleted;
        // Keep sizes and digest for inspection; free the bytes.
        m.content.lock().unwrap().kept.clear();
        drop(meta);
        self.counts.lock().unwrap().deleted += 1;
        Ok(resource)
    }

    /// The upload resource as the five routes answer it.
    pub fn resource(&self, c: Caller<'_>, id: &str, checksum: bool) -> Result<Resource, Refusal> {
        let mut meta = self.meta.lock().unwrap();
        let m = live(&mut meta, c, id)?;
        let flag = |b: bool| match (self.bool_style, b) {
            (BoolStyle::Lower, true) => "true",
            (BoolStyle::Lower, false) => "false",
            (BoolStyle::Title, true) => "True",
            (BoolStyle::Title, false) => "False",
        };
        let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.expires.max(0) as u64);
        Ok(Resource {
            chunked_upload_id: id.to_owned(),
            chunked_upload_uri: format!("docusignchunkedupload://{id}"),
            committed: flag(m.state == State::Committed).to_owned(),
            expiration_date_time: humantime::format_rfc3339_seconds(expires).to_string(),
            chunked_upload_parts: m
                .sizes
                .iter()
                .map(|(seq, size)| ResourcePart { sequence: seq.to_string(), size: size.to_string() })
                .collect(),
            total_size: m.total.to_string(),
            max_chunked_upload_parts: m.max_parts.to_string(),
            max_total_size: m.max_total.to_string(),
            checksum: checksum.then(|| m.content.lock().unwrap().sha256()),
        })
    }

    /// Uses the uploads an envelope names: each must be committed, unexpired, unused and the
    /// caller's own, or none is used.
    pub fn use_uploads(&self, c: Caller<'_>, ids: &[String]) -> Result<(), Refusal> {
        let mut meta = self.meta.lock().unwrap();
        for (i, id) in ids.iter().enumerate() {
            let unusable = |why| Err(Refusal::Unusable(id.clone(), why));
            if ids[..i].contains(id) {
                return unusable("the envelope names twice");
            }
            match meta.get(id) {
                None => return unusable("does not exist"),
                Some(m) if m.owner != c.owner || m.account != c.account => return unusable("does not exist"),
                Some(m) if m.state == State::Deleted => return unusable("was deleted"),
                Some(m) if m.state == State::Consumed => return unusable("was already used"),
                Some(m) if c.now >= m.expires => return unusable("has expired"),
                Some(m) if m.state == State::Open => return unusable("is not committed"),
                Some(_) => {}
            }
        }
        for id in ids {
            if let Some(m) = meta.get_mut(id) {
                m.state = State::Consumed;
            }
        }
        drop(meta);
        let mut counts = self.counts.lock().unwrap();
        counts.used += ids.len() as u64;
        counts.envelopes += 1;
        Ok(())
    }

    /// Marks a committed upload as used by an envelope.
    pub fn consume(&self, id: &str) -> Result<(), Refusal> {
        let mut meta = self.meta.lock().unwrap();
        let m = meta.get_mut(id).ok_or(Refusal::NotFound)?;
        if m.state != State::Committed {
            return Err(Refusal::NotFound);
        }
        m.state = State::Consumed;
        Ok(())
    }

    pub fn inspect(&self, id: &str, now: i64) -> Option<Inspection> {
        let meta = self.meta.lock().unwrap();
        let m = meta.get(id)?;
        Some(Inspection {
            id: id.to_owned(),
            account: m.account.clone(),
            state: m.state,
            expired: now >= m.expires,
            parts: m.sizes.iter().map(|(s, n)| (*s, *n)).collect(),
            total_size: m.total,
            sha256: m.content.lock().unwrap().sha256(),
        })
    }

    /// The bytes of parts 0..n in order, when storage keeps them and none is missing.
    pub fn content(&self, id: &str) -> Option<Bytes> {
        let content = self.meta.lock().unwrap().get(id)?.content.clone();
        let c = content.lock().unwrap();
        if self.storage != Storage::Full || c.kept.is_empty() || !c.waiting.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(c.kept.values().map(Bytes::len).sum());
        c.kept.values().for_each(|b| out.extend_from_slice(b));
        Some(out.into())
    }

    pub fn counts(&self) -> Counts {
        let mut counts = self.counts.lock().unwrap().clone();
        counts.open = self.meta.lock().unwrap().values().filter(|m| m.state == State::Open).count() as u64;
        counts
    }
}

/// Uploads and bytes a member holds against the quota: unexpired and unused.
fn usage(meta: &HashMap<String, Meta>, owner: &str, now: i64) -> (u64, u64) {
    meta.values()
        .filter(|m| m.owner == owner && now < m.expires && matches!(m.state, State::Open | State::Committed))
        .fold((0, 0), |(n, b), m| (n + 1, b + m.total))
}

/// The upload if this member may touch it: not someone else's, not deleted or used, not expired.
fn live<'a>(meta: &'a mut HashMap<String, Meta>, c: Caller<'_>, id: &str) -> Result<&'a mut Meta, Refusal> {
    let Caller { account, owner, now } = c;
    let m = meta.get_mut(id).ok_or(Refusal::NotFound)?;
    if m.owner != owner || m.account != account || matches!(m.state, State::Deleted | State::Consumed) {
        return Err(Refusal::NotFound);
    }
    if now >= m.expires {
        return Err(Refusal::Expired);
    }
    Ok(m)
}
