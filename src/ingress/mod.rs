//! Ingresses: the ways a document comes in and drives an upload's stages.

pub mod streamed; // one request carries the whole document
pub mod tus; // resumable uploads: the tus 1.0 protocol, spooled to disk, driving the same pipeline
