//! chunkgate: an upload gateway sidecar for DocuSign-style chunked-upload APIs.
#![forbid(unsafe_code)]

pub mod admin; // the admin listener: /healthz, /readyz, /metrics
pub mod body; // the response body type and bounded body reads
pub mod caller; // who is calling, and requests running per caller and per account
pub mod canned; // a body for hyper's own answers to malformed requests
pub mod config; // settings, defaults, env overrides, validation listing every problem
pub mod demo; // `chunkgate demo`: simulator and gateway in one process, one document through them
pub mod envelope; // response bodies in the upstream's two dialects
pub mod error; // errors the gateway originates: status, code, advice
pub mod gateway; // routing each request to the upload or the passthrough
pub mod ids; // the shapes of the upstream's identifiers
pub mod proxy; // passthrough of every other request
pub mod ratelimit; // per-account pacing: governor limiters and rate-limit header feedback
pub mod resource; // the chunked-upload resource as the upstream's JSON carries it
pub mod retry; // classification of failures, backoff, the process-wide retry budget
pub mod route; // recognising chunked-upload routes and the shapes of their ids
pub mod server; // accepting connections, limits, graceful drain
pub mod sim; // the upstream simulator
pub mod telemetry; // logs and signals
pub mod tls; // rustls client configuration
pub mod upload; // the streamed upload: chunker, parts, integrity, commit, cleanup
pub mod upstream; // the upstream client and its typed calls
