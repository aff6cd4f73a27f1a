//! The edge: where requests come in and are told apart.

pub mod admin; // the admin listener: /healthz, /readyz, /metrics, over a small status handle
pub mod canned; // a body for hyper's own answers to malformed requests
pub mod gateway; // the gateway: routing each request to an ingress or the passthrough; wiring
pub mod linger; // lingering close: an answer sent before the body was read is not lost to a reset
pub mod listener; // accepting connections: limits, idle timers, graceful drain
pub mod passthrough; // every other request, forwarded as is
pub mod target; // the request target, screened and parsed once
pub mod uses; // what a passed-through request does to the member's quota (envelopes, deletes)
