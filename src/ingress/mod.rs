//! Ingresses: the ways a document comes in and drives an upload's stages.

pub mod streamed; // one request carries the whole document
