//! Policies the edge hands to the pipeline and the passthrough.

pub mod callers; // who is calling, and requests running per caller and per account
pub mod pacing; // per-account pacing of upstream calls: burst, hourly plans, feedback
pub mod quota; // the members' quota ledger: uploads and bytes from create until used, deleted, expired
pub mod retry; // classification of outcomes, backoff, the process-wide retry budget
pub mod shared; // limits and quotas shared by the sidecars of an account through Redis
pub mod wait; // waiting for room in a shared budget
