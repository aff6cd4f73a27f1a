//! The chunked-upload resource exactly as the upstream's JSON carries it: every scalar a string.

use serde::{Deserialize, Serialize};

/// The body of every answer of the five chunked-upload routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkedUpload {
    #[serde(default)]
    pub chunked_upload_id: String,
    #[serde(default)]
    pub chunked_upload_uri: String,
    #[serde(default)]
    pub committed: String,
    #[serde(default)]
    pub expiration_date_time: String,
    #[serde(default)]
    pub chunked_upload_parts: Vec<ListedPart>,
    #[serde(default)]
    pub total_size: String,
    #[serde(default)]
    pub max_chunked_upload_parts: String,
    #[serde(default)]
    pub max_total_size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// One received part as the resource lists it; `size` counts decoded bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedPart {
    pub sequence: String,
    pub size: String,
}

// === impl ChunkedUpload ===

impl ChunkedUpload {
    /// Whether the resource's id is `id` (GUIDs come back in either case).
    pub fn has_id(&self, id: &str) -> bool {
        self.chunked_upload_id.eq_ignore_ascii_case(id)
    }

    /// `committed` read without regard to case: DocuSign has sent both `"false"` and `"False"`.
    pub fn is_committed(&self) -> bool {
        self.committed.eq_ignore_ascii_case("true")
    }

    /// The announced part limit, if it parses.
    pub fn max_parts(&self) -> Option<u32> {
        self.max_chunked_upload_parts.trim().parse().ok()
    }

    /// The announced total-size limit, if it parses.
    pub fn max_total(&self) -> Option<u64> {
        self.max_total_size.trim().parse().ok()
    }

    /// The size of part `seq`, if the upstream lists it.
    pub fn part_size(&self, seq: u32) -> Option<u64> {
        self.chunked_upload_parts
            .iter()
            .find(|p| p.sequence.trim().parse() == Ok(seq))
            .and_then(|p| p.size.trim().parse().ok())
    }
}

/// Lower-case hex, as the upstream's `checksum` carries a SHA-256.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_and_numbers_are_read_from_strings() {
        let up: ChunkedUpload = serde_json::from_str(
            r#"{"chunkedUploadId":"X","committed":"False","maxChunkedUploadParts":"128",
                "maxTotalSize":"52428800","chunkedUploadParts":[{"sequence":"3","size":"18"}]}"#,
        )
        .unwrap();
        assert!(!up.is_committed());
        assert!(ChunkedUpload { committed: "TRUE".into(), ..up.clone() }.is_committed());
        assert_eq!(up.max_parts(), Some(128));
        assert_eq!(up.max_total(), Some(52_428_800));
        assert_eq!(up.part_size(3), Some(18));
        assert_eq!(up.part_size(0), None);
    }
}
