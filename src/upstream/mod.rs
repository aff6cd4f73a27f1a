//! The upstream: the transport and its typed calls, the two body dialects, the upload resource.

pub mod client; // pooled connections per thread, typed calls, what can go wrong with a call
pub mod dialect; // the two body shapes: bare DocuSign bodies and the wrapped ones
pub mod resource; // the chunked-upload resource as its JSON carries it

pub use self::client::{Answer, CallError, Parsed, Upstream};
