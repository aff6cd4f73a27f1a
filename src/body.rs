//! The HTTP body type every handler returns, and bounded reads of request bodies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Errors that are only reported, never branched on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every service in this crate.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Why a bounded body read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body is longer than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Io(BoxError),
}

/// Reads a whole body, refusing it once it passes `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    read_limited_into(body, limit, Vec::new()).await.map(Bytes::from)
}

/// Reads a whole body into `buf` (cleared first), refusing it once it passes `limit` bytes. Each
/// byte is copied once, into a buffer the caller may size and reuse.
pub async fn read_limited_into<B>(mut body: B, limit: usize, mut buf: Vec<u8>) -> Result<Vec<u8>, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    buf.clear();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Io(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}
