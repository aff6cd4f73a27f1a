//! The HTTP body type every handler returns, and bounded reads of request bodies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};

/// Errors that are only reported, never branched on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every service in this crate.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
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
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge { limit }),
        Err(err) => Err(ReadError::Io(err)),
    }
}
