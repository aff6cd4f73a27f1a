//! The dialect setting: which body shape the upstream speaks.

use serde::{Deserialize, Serialize};

/// Which body shape the upstream speaks (the shapes themselves are read and written in
/// `upstream::dialect`; the simulator writes its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
pub enum Dialect {
    /// `{...resource...}` and `{"errorCode", "message"}`.
    #[default]
    #[serde(rename = "docusign")]
    #[value(name = "docusign")]
    Docusign,
    /// `{"success": true, "data": {...}}` and `{"success": false, "error": {"code", "message"}}`:
    /// the whole body wrapped, as some API gateways do. Called `envelope` in settings (not to be
    /// confused with DocuSign's envelopes, the documents' containers).
    #[serde(rename = "envelope")]
    #[value(name = "envelope")]
    Wrapped,
}
