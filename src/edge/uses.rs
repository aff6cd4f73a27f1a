//! What a passed-through request does to the member's quota: an envelope whose documents name
//! uploads by `remoteUrl: "docusignchunkedupload://{id}"` uses them once it is answered 2xx, and a
//! DELETE of an upload ends it. The body of an envelope request is streamed, not buffered: a
//! [`RemoteUrls`] scanner reads the upload ids as the frames go by.

use std::collections::BTreeSet;

use crate::ids::valid_upload_id;

const SCHEME: &[u8] = b"docusignchunkedupload:";
/// The longest upload id (see `ids::valid_upload_id`).
const MAX_ID: usize = 64;
/// At most this many ids are kept from one request: a bound on what a hostile body can make the
/// gateway hold. An envelope names a document per upload, and DocuSign caps documents far lower.
const MAX_IDS: usize = 1000;
/// What must come before the scheme: the URL is a document's `remoteUrl`, as the upstream reads
/// it, not a mention anywhere else in the envelope (a subject line naming an upload uses nothing).
const KEY: &[u8] = b"\"remoteUrl\"";
/// Bytes looked at before the scheme: the key, the colon, the string's opening quote, and some
/// spaces between them (more spaces than that: not seen, and the upload stays counted).
const LOOKBACK: usize = KEY.len() + 2 + 27;
/// Bytes of one match: what comes before it, the scheme, `\/\/` (JSON may escape the slashes)
/// and the id.
const CARRY: usize = LOOKBACK + SCHEME.len() + 4 + MAX_ID + 1;

/// Finds `"remoteUrl": "docusignchunkedupload://{id}"` in a body that arrives in frames, with the
/// slashes as they are or escaped (`:\/\/`), a match split across frames included.
#[derive(Debug, Default)]
pub struct RemoteUrls {
    /// The last bytes seen, for a match that spans frames.
    carry: Vec<u8>,
    ids: BTreeSet<String>,
    /// An XML envelope definition (`<remoteUrl>`); otherwise JSON (`"remoteUrl": "`).
    xml: bool,
}

impl RemoteUrls {
    /// A scanner for a body of this `Content-Type` (XML or, by default, JSON).
    pub fn for_content_type(content_type: Option<&http::HeaderValue>) -> Self {
        let essence = content_type.and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next()).unwrap_or("");
        let essence = essence.trim().to_ascii_lowercase();
        Self { xml: essence.ends_with("/xml") || essence.ends_with("+xml"), ..Self::default() }
    }

    /// Reads one frame.
    pub fn feed(&mut self, frame: &[u8]) {
        if frame.is_empty() {
            return;
        }
        // Across the boundary: what was carried, and the start of this frame.
        let mut joint = std::mem::take(&mut self.carry);
        let carried = joint.len();
        joint.extend_from_slice(&frame[..frame.len().min(CARRY)]);
        if carried > 0 {
            self.scan(&joint);
        }
        self.scan(frame);
        // Carry the last bytes of everything seen so far.
        let mut tail = if frame.len() >= CARRY { Vec::new() } else { joint[..carried].to_vec() };
        tail.extend_from_slice(&frame[frame.len().saturating_sub(CARRY)..]);
        let excess = tail.len().saturating_sub(CARRY);
        tail.drain(..excess);
        self.carry = tail;
    }

    /// How many ids were found.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids found, each once.
    pub fn ids(&self) -> Vec<String> {
        self.ids.iter().cloned().collect()
    }

    /// Every complete match in `buf`; an id that runs to the end of `buf` may go on in the next
    /// frame, so it waits for the scan across the boundary.
    fn scan(&mut self, buf: &[u8]) {
        let mut from = 0;
        while let Some(at) = find(&buf[from..], SCHEME) {
            let scheme_at = from + at;
            let start = scheme_at + SCHEME.len();
            from = start;
            // Too near the start of `buf` to see what comes before: the scan across the boundary
            // (with the bytes carried from before) sees it.
            if !is_remote_url(&buf[scheme_at.saturating_sub(LOOKBACK)..scheme_at], self.xml) {
                continue;
            }
            let rest = &buf[start..];
            let skip = if rest.starts_with(b"//") {
                2
            } else if rest.starts_with(b"\\/\\/") {
                4
            } else {
                continue;
            };
            let id_bytes = &rest[skip..];
            let len = id_bytes.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'-').count();
            if len == id_bytes.len() {
                continue; // may go on in the next frame
            }
            let id = std::str::from_utf8(&id_bytes[..len]).unwrap_or_default();
            if valid_upload_id(id) && self.ids.len() < MAX_IDS {
                self.ids.insert(id.to_owned());
            }
        }
    }
}

/// Whether `before` (the bytes ahead of the scheme) ends a document's `<remoteUrl>` (an XML
/// envelope definition) or `"remoteUrl": "` (JSON), where the key's opening quote is not escaped
/// (`"note\"remoteUrl":"` is inside a string).
fn is_remote_url(before: &[u8], xml: bool) -> bool {
    if xml {
        return before.trim_ascii_end().ends_with(b"<remoteUrl>");
    }
    let Some(before) = before.strip_suffix(b"\"") else { return false };
    let Some(before) = before.trim_ascii_end().strip_suffix(b":") else { return false };
    let Some(before) = before.trim_ascii_end().strip_suffix(KEY) else { return false };
    !before.ends_with(b"\\")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in(frames: &[&[u8]]) -> Vec<String> {
        scan_as(frames, "application/json")
    }

    fn scan_as(frames: &[&[u8]], content_type: &str) -> Vec<String> {
        let mut s = RemoteUrls::for_content_type(Some(&http::HeaderValue::from_str(content_type).unwrap()));
        frames.iter().for_each(|f| s.feed(f));
        s.ids()
    }

    #[test]
    fn finds_remote_urls_whole_escaped_and_split_across_frames() {
        let body = br#"{"documents":[{"remoteUrl":"docusignchunkedupload://AB-12"},{"remoteUrl":"docusignchunkedupload:\/\/CD34"},{"documentBase64":"eA=="}]}"#;
        let want = vec!["AB-12".to_owned(), "CD34".to_owned()];
        assert_eq!(scan_in(&[body]), want);
        // Every split point, and one byte at a time.
        for at in 0..body.len() {
            assert_eq!(scan_in(&[&body[..at], &body[at..]]), want, "split at {at}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(scan_in(&bytes), want);
        // Not a match: another scheme, an id too long, an id that never ends.
        assert!(scan_in(&[b"https://AB", b"\"docusignchunkedupload://\""]).is_empty());
        let long = format!("\"docusignchunkedupload://{}\"", "A".repeat(65));
        assert!(scan_in(&[long.as_bytes()]).is_empty());
        assert!(scan_in(&[b"docusignchunkedupload://AB"]).is_empty());
    }

    #[test]
    fn only_a_documents_remote_url_counts() {
        // A mention elsewhere (a subject, another key, a bare string) uses nothing.
        let mentions = br#"{"emailSubject":"docusignchunkedupload://AB-12","x":["docusignchunkedupload://CD34"],"notremoteUrl":"docusignchunkedupload://EF56"}"#;
        assert!(scan_in(&[mentions]).is_empty(), "{:?}", scan_in(&[mentions]));
        // An XML envelope definition's element, in an XML body only.
        let xml = b"<document><remoteUrl>docusignchunkedupload://AB-12</remoteUrl></document>";
        assert_eq!(scan_as(&[xml], "application/xml; charset=utf-8"), vec!["AB-12".to_owned()]);
        let in_json = br#"{"emailSubject":"<remoteUrl>docusignchunkedupload://AB-12</remoteUrl>"}"#;
        assert!(scan_in(&[in_json]).is_empty());
        // A key whose opening quote is escaped is inside a string.
        let escaped = br#"{"note\"remoteUrl":"docusignchunkedupload://AB-12"}"#;
        assert!(scan_in(&[escaped]).is_empty());
        // Spaces around the colon, as any JSON writer may put them; split at every point.
        let spaced = br#"{"documents":[{"remoteUrl" :  "docusignchunkedupload:\/\/AB-12"}]}"#;
        for at in 0..spaced.len() {
            assert_eq!(scan_in(&[&spaced[..at], &spaced[at..]]), vec!["AB-12".to_owned()], "split at {at}");
        }
    }
}
