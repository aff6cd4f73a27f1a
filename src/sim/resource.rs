//! The upload resource as the simulator writes it (UPSTREAM.md): every scalar a JSON string, the
//! checksum only when asked for. Written here, not borrowed from the gateway's reading of it, so
//! that a mistake in one is not repeated by the other.

use serde::Serialize;

/// The body of every answer of the five chunked-upload routes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub chunked_upload_id: String,
    pub chunked_upload_uri: String,
    pub committed: String,
    pub expiration_date_time: String,
    pub chunked_upload_parts: Vec<ResourcePart>,
    pub total_size: String,
    pub max_chunked_upload_parts: String,
    pub max_total_size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// One received part as the resource lists it; `size` counts decoded bytes.
#[derive(Clone, Debug, Serialize)]
pub struct ResourcePart {
    pub sequence: String,
    pub size: String,
}

/// Lower-case hex, as `checksum` carries a SHA-256.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|b| [DIGITS[(b >> 4) as usize] as char, DIGITS[(b & 15) as usize] as char]).collect()
}
