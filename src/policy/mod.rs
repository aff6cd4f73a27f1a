//! Policies the edge hands to the pipeline and the passthrough.

pub mod callers; // who is calling, and requests running per caller and per account
pub mod pacing; // per-account pacing of upstream calls
pub mod quota; // uploads and bytes per account, waited for
pub mod retry; // classification of outcomes, backoff, the process-wide retry budget
