//! Where tus uploads live between requests and across restarts: each upload's bytes in a spool
//! file (`{dir}/{id}.bin`), its state in an embedded database (`{dir}/sessions.redb`).
//!
//! The database is redb rather than SQLite: a key-value table of small JSON records is all this
//! needs, redb is pure Rust (no C library to build, link or patch), and each write transaction is
//! durable when its commit returns (fsync, copy-on-write, no write-ahead log to manage). An offset
//! is written only after the spool's bytes up to it were synced, so after a crash (SIGKILL, power)
//! the database never claims bytes the spool lacks; bytes past the recorded offset are cut off
//! when the store opens.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// One tus upload, as kept on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    /// Where it goes upstream: the API prefix, version and account its creation named.
    pub prefix: String,
    pub version: String,
    pub account: String,
    /// SHA-256 (hex) of the creating request's `Authorization` (see `quota::member_of`): later
    /// requests must present the same token. The token itself is never written to disk.
    pub token: String,
    /// `Upload-Length`, once known.
    pub length: Option<u64>,
    /// Bytes durable in the spool.
    pub offset: u64,
    /// `Upload-Metadata`, as the client sent it.
    pub metadata: Option<String>,
    /// Unix seconds after which the upload is reaped.
    pub expires: u64,
    /// Spool bytes counted against `tus.max_disk_bytes`.
    pub reserved: u64,
    /// How it ended, once it has.
    pub outcome: Option<Outcome>,
    /// The upstream upload now being driven, once created: deleted on the next start if this
    /// process died before it ended.
    #[serde(default)]
    pub upstream: Option<String>,
}

/// How a tus upload ended upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Committed {
        upload_id: String,
        uri: String,
        /// How the bytes were checked before the commit, as `X-Chunkgate-Checksum` says it
        /// (`verified`, `unverified`: sizes only, `skipped`); empty in sessions of older versions.
        #[serde(default)]
        checksum: String,
    },
    Failed {
        status: u16,
        code: String,
        body: String,
    },
}

/// The spool directory and the database.
pub struct Store {
    dir: PathBuf,
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, cutting every spool back to its recorded offset.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Session>), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("tus.dir {}: {e}", dir.display()))?;
        let db = Database::create(dir.join("sessions.redb")).map_err(|e| format!("tus.dir: the database: {e}"))?;
        let store = Self { dir: dir.to_owned(), db: Arc::new(db) };
        let mut sessions = store.load().map_err(|e| format!("tus.dir: the database: {e}"))?;
        for s in &mut sessions {
            if s.outcome.is_some() {
                continue;
            }
            let path = store.spool(&s.id);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("tus.dir: {}: {e}", path.display()))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if len < s.offset {
                // The spool lost bytes the record counts (removed or cut by hand): the offset goes
                // back to what is there, never forward over zeros.
                tracing::warn!(tus_id = %s.id, recorded = s.offset, spooled = len, "tus: a spool is shorter than its record; the upload resumes from what it holds");
                s.offset = len;
                store.put_now(s).map_err(|e| format!("tus.dir: the database: {e}"))?;
            } else if len > s.offset {
                // Bytes past the last durable offset (a crash mid-PATCH) were never acknowledged.
                let _ = file.set_len(s.offset);
                let _ = file.sync_all();
            }
        }
        Ok((store, sessions))
    }

    fn load(&self) -> Result<Vec<Session>, String> {
        let tx = self.db.begin_read().map_err(text)?;
        let table = match tx.open_table(SESSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(text)? {
            let (_, v) = row.map_err(text)?;
            if let Ok(s) = serde_json::from_slice::<Session>(v.value()) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The spool file of upload `id`.
    pub fn spool(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    /// Writes a session durably, on this thread.
    fn put_now(&self, session: &Session) -> Result<(), String> {
        let json = serde_json::to_vec(session).expect("serialisable");
        let tx = self.db.begin_write().map_err(text)?;
        {
            let mut table = tx.open_table(SESSIONS).map_err(text)?;
            table.insert(session.id.as_str(), json.as_slice()).map_err(text)?;
        }
        tx.commit().map_err(text)
    }

    /// Writes a session durably (on a blocking thread).
    pub async fn put(&self, session: &Session) -> Result<(), String> {
        let (db, id, json) = (self.db.clone(), session.id.clone(), serde_json::to_vec(session).expect("serialisable"));
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let tx = db.begin_write().map_err(text)?;
            {
                let mut table = tx.open_table(SESSIONS).map_err(text)?;
                table.insert(id.as_str(), json.as_slice()).map_err(text)?;
            }
            tx.commit().map_err(text)
        })
        .await
        .map_err(text)?
    }

    /// Removes a session and its spool.
    pub async fn remove(&self, id: &str) {
        let (db, key) = (self.db.clone(), id.to_owned());
        let removed = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let tx = db.begin_write().map_err(text)?;
            {
                let mut table = tx.open_table(SESSIONS).map_err(text)?;
                table.remove(key.as_str()).map_err(text)?;
            }
            tx.commit().map_err(text)
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!("tus: a session could not be removed from the database");
        }
        let _ = tokio::fs::remove_file(self.spool(id)).await;
    }

    /// Drops a finished upload's spooled bytes (its record stays until it expires).
    pub async fn drop_spool(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.spool(id)).await;
    }
}

/// Appends a PATCH's bytes to a spool on the blocking pool, a batch of frames at a time, with one
/// batch being written while the next is gathered. The frames are written as they came (tokio's
/// `File` copies each into a buffer of its own first), and the pool is handed one job per batch
/// rather than one per frame. On Linux each batch written is sent on to the disk at once
/// (`sync_file_range`, without waiting), so that the PATCH's closing `fdatasync` finds little
/// left to write: the disk works while the rest of the PATCH arrives.
pub struct SpoolWriter {
    /// `None` while a batch is being written (the job has it).
    file: Option<std::fs::File>,
    writing: Option<tokio::task::JoinHandle<(std::fs::File, std::io::Result<()>)>>,
    batch: Vec<bytes::Bytes>,
    batched: usize,
    /// Small frames, copied together: a frame is a slice of its connection's read buffer, and
    /// keeping thousands of tiny ones (a client sending a byte at a time) kept as many buffers
    /// alive (300 MB for six such PATCHes). A frame kept whole is at least half a default read
    /// buffer, so a batch never holds more than about twice its bytes.
    small: bytes::BytesMut,
    /// Where the next batch lands in the spool.
    at: u64,
}

impl SpoolWriter {
    /// Bytes gathered before they are handed to the pool.
    const BATCH: usize = 1 << 20;
    /// Frames under this size are copied into `small` rather than kept.
    const SMALL: usize = 256 << 10;

    /// The spool at `path`, written from `at` on.
    pub async fn open(path: PathBuf, at: u64) -> std::io::Result<Self> {
        let file = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(at))?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Self { file: Some(file), writing: None, batch: Vec::new(), batched: 0, small: bytes::BytesMut::new(), at })
    }

    pub async fn write(&mut self, data: bytes::Bytes) -> std::io::Result<()> {
        self.batched += data.len();
        if data.len() < Self::SMALL {
            if self.small.capacity() - self.small.len() < data.len() {
                self.seal_small();
                self.small.reserve(Self::SMALL);
            }
            self.small.extend_from_slice(&data);
        } else {
            self.seal_small();
            self.batch.push(data);
        }
        if self.batched >= Self::BATCH {
            self.send(false).await?;
        }
        Ok(())
    }

    /// Everything written so far is on disk when this returns: written, then `fdatasync`.
    pub async fn sync(&mut self) -> std::io::Result<()> {
        self.send(true).await?;
        self.settle().await
    }

    /// Cuts the spool back to `len`; what was gathered and not yet written is dropped.
    pub async fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.batch.clear();
        self.small.clear();
        self.batched = 0;
        // A write that failed does not stop the cut.
        let _ = self.settle().await;
        let file = self.file.take().ok_or_else(|| std::io::Error::other("the spool's writer was lost"))?;
        let (file, cut) = tokio::task::spawn_blocking(move || {
            let mut file = file;
            // Later writes go on from the cut, not from where the file's position was.
            let cut = file.set_len(len).and_then(|()| std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len)));
            (file, cut.map(drop))
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        self.at = len;
        cut
    }

    /// Waits for the batch being written, then hands the gathered one to the pool (synced after
    /// it, if `sync`).
    async fn send(&mut self, sync: bool) -> std::io::Result<()> {
        self.settle().await?;
        self.seal_small();
        let batch = std::mem::take(&mut self.batch);
        let (at, len) = (self.at, self.batched as u64);
        self.at += len;
        self.batched = 0;
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("the spool's writer was lost"))?;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let written = batch.iter().try_for_each(|frame| std::io::Write::write_all(&mut file, frame));
            let done = written.and_then(|()| {
                if sync {
                    return file.sync_data();
                }
                write_behind(&file, at, len);
                Ok(())
            });
            (file, done)
        }));
        Ok(())
    }

    /// The small frames copied so far join the batch, in their place in the order.
    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.batch.push(self.small.split().freeze());
        }
    }

    /// Waits for the batch being written, if any.
    async fn settle(&mut self) -> std::io::Result<()> {
        if let Some(writing) = self.writing.take() {
            let (file, done) = writing.await.map_err(std::io::Error::other)?;
            self.file = Some(file);
            done?;
        }
        Ok(())
    }
}

/// Starts writing `len` bytes of `file` from `at` to the disk, without waiting for it (the durable
/// write is the `fdatasync` after; this only gives the disk the work earlier). The one `unsafe` of
/// the library: neither std nor rustix offers the call, and it took a PATCH's closing `fdatasync`
/// from 38 to 10 ms per 50 MB here (BENCHMARKS.md's optimisation log).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn write_behind(file: &std::fs::File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor, and a call that reads no memory of ours. Its result is not
    // looked at: a file system that cannot (EINVAL, ESPIPE...) loses nothing, the fdatasync does it all.
    unsafe { libc::sync_file_range(file.as_raw_fd(), at as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn write_behind(_: &std::fs::File, _: u64, _: u64) {}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::SpoolWriter;

    /// A client sending a byte at a time: each frame is a slice of a large read buffer, and the
    /// writer must copy small frames rather than keep them (and their buffers) until it writes.
    #[tokio::test]
    async fn small_frames_are_copied_and_everything_lands_in_order() {
        let dir = std::env::temp_dir().join(format!("chunkgate-spool-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spool");
        std::fs::write(&path, b"head").unwrap();
        let mut writer = SpoolWriter::open(path.clone(), 4).await.unwrap();
        let mut expected = b"head".to_vec();
        let mut ours = Vec::new();
        for i in 0..3000u32 {
            // A one-byte slice of a 64 KiB buffer, then now and then a large frame kept whole.
            let mut buffer = vec![0u8; 64 << 10];
            buffer[0] = i as u8;
            let buffer = Bytes::from(buffer);
            let frame = if i % 1000 == 999 { buffer.clone() } else { buffer.slice(0..1) };
            expected.extend_from_slice(&frame);
            writer.write(frame.clone()).await.unwrap();
            ours.push((i, buffer));
        }
        // Every small frame's buffer is ours alone once written into the writer: nothing kept it.
        for (i, buffer) in &ours {
            if i % 1000 != 999 {
                assert!(buffer.is_unique(), "the writer kept frame {i}'s buffer");
            }
        }
        writer.sync().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Cut back: the gathered tail is dropped, the file ends where it is told.
        writer.write(Bytes::from_static(b"not kept")).await.unwrap();
        writer.truncate(10).await.unwrap();
        writer.sync().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), &expected[..10]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
