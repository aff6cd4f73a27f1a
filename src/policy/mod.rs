//! Policies the edge hands to the pipeline and the passthrough.

pub mod pacing; // per-account pacing of upstream calls
pub mod retry; // classification of outcomes, backoff, the process-wide retry budget
