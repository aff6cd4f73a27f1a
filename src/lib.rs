//! chunkgate: an upload gateway sidecar for DocuSign-style chunked-upload APIs.
//!
//! Dependencies point one way: `edge` → `ingress` → `pipeline` → `upstream`, with `policy`
//! handed in by the edge; `config`, `ids`, `body`, `error`, `telemetry` and `tls` are below all of
//! them; `sim` stands apart. ARCHITECTURE.md has the map and one upload's path.
// One measured exception, allowed where it stands: `ingress::tus::store::write_behind`.
#![deny(unsafe_code)]

pub mod body; // the HTTP body type and bounded body reads
pub mod config; // settings, defaults, env overrides, validation listing every problem
pub mod demo; // `chunkgate demo`: simulator and gateway in one process, one document through them
pub mod edge; // listeners, the request target, callers, routing, passthrough, admin
pub mod error; // errors the gateway originates: status, code, advice
pub mod ids; // the shapes of the upstream's identifiers
mod ingress; // the streamed upload: one request drives an upload through the pipeline's stages
pub mod memory; // what the allocator holds for nobody goes back to the system when idle
pub mod pipeline; // an upload's state and stages: chunker, hashing, part bodies, memory
pub mod policy; // retry, pacing and quota, behind small traits
pub mod sim; // the upstream simulator
pub mod telemetry; // logs, metrics and signals
mod tls; // rustls configurations
pub mod upstream; // the upstream: transport, dialects, the upload resource, answers

/// The maps every request looks into (running requests per caller and account, pacing per
/// account): foldhash, seeded per map, hashes a short key in a fraction of SipHash's time. Their
/// keys are screened ids and addresses, and the maps hold only what is running or known.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
