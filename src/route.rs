//! Recognising the chunked-upload routes of the upstream API under any path prefix, and the
//! shapes of their identifiers.

/// A path of the chunked-upload resource: `{prefix}/v2.1/accounts/{account}/chunked_uploads[/{id}[/{seq}]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// Everything before `/v2.1` or `/v2`, e.g. `/restapi`.
    pub prefix: &'a str,
    pub version: &'a str,
    pub account: &'a str,
    pub upload: Option<&'a str>,
    pub part: Option<&'a str>,
}

/// Finds the chunked-upload resource in `path`, or `None` if the path is not one of its routes.
pub fn chunked_upload_target(path: &str) -> Option<Target<'_>> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let at = segments
        .windows(4)
        .position(|w| matches!(w[0], "v2.1" | "v2") && w[1] == "accounts" && w[3] == "chunked_uploads")?;
    let rest = &segments[at + 4..];
    if rest.len() > 2 || rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let prefix_len = segments[..at].iter().map(|s| s.len() + 1).sum::<usize>().saturating_sub(1);
    Some(Target {
        prefix: &trimmed[..prefix_len],
        version: segments[at],
        account: segments[at + 2],
        upload: rest.first().copied(),
        part: rest.get(1).copied(),
    })
}

/// The account a path names (`.../v2.1/accounts/{id}/...`), if any.
pub fn account_in(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    while let Some(s) = segments.next() {
        if matches!(s, "v2.1" | "v2") {
            return match (segments.next(), segments.next()) {
                (Some("accounts"), Some(id)) if !id.is_empty() => Some(id),
                _ => None,
            };
        }
    }
    None
}

/// Why a request target is refused before anything else looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// CONNECT, absolute-form or authority-form: the gateway is no proxy to anywhere else.
    NotOrigin,
    /// `.` or `..` segments, encoded separators or dots, backslashes.
    Traversal,
    /// No `/v2/` or `/v2.1/` segment: not a path of the upstream API.
    NotApi,
    BadAccount,
    BadUploadId,
    BadSequence,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::NotOrigin => {
                "only origin-form request targets are accepted (no CONNECT, no absolute or authority form)"
            }
            Refused::Traversal => "the path holds dot segments, encoded separators or backslashes",
            Refused::NotApi => "the path is not one of the upstream API (no /v2/ or /v2.1/ segment)",
            Refused::BadAccount => "the account id must be an integer account number or a GUID",
            Refused::BadUploadId => "the chunked upload id holds characters outside A-Z, a-z, 0-9 and '-'",
            Refused::BadSequence => "the part sequence must be a small non-negative integer",
        }
    }
}

/// Screens a request target before routing: only origin-form paths of the upstream API, with
/// well-formed ids, are forwarded anywhere.
pub fn screen(method: &http::Method, uri: &http::Uri) -> Result<(), Refused> {
    if method == http::Method::CONNECT || uri.scheme().is_some() || uri.authority().is_some() {
        return Err(Refused::NotOrigin);
    }
    // One pass over the bytes and one over the segments, without allocating: every request
    // passes here.
    let path = uri.path();
    if !path.starts_with('/') || path.bytes().any(|b| b == b'\\') || has_encoded_separator(path) {
        return Err(Refused::Traversal);
    }
    let mut api = false;
    for segment in path.split('/') {
        match segment {
            "." | ".." => return Err(Refused::Traversal),
            "v2" | "v2.1" => api = true,
            _ => {}
        }
    }
    if !api {
        return Err(Refused::NotApi);
    }
    if let Some(account) = account_in(path) {
        if !valid_account(account) {
            return Err(Refused::BadAccount);
        }
    }
    if !path.contains("/chunked_uploads") {
        return Ok(());
    }
    if let Some(t) = chunked_upload_target(path) {
        if t.upload.is_some_and(|id| !valid_upload_id(id)) {
            return Err(Refused::BadUploadId);
        }
        if t.part.is_some_and(|seq| parse_seq(seq).is_none()) {
            return Err(Refused::BadSequence);
        }
    }
    Ok(())
}

/// `%2f`, `%5c`, `%2e` or `%00`, in either case.
fn has_encoded_separator(path: &str) -> bool {
    path.contains('%')
        && path.as_bytes().windows(3).any(|w| {
            w[0] == b'%'
                && matches!(
                    (w[1], w[2].to_ascii_lowercase()),
                    (b'2', b'f') | (b'5', b'c') | (b'2', b'e') | (b'0', b'0')
                )
        })
}

/// Upload ids are GUIDs upstream; anything outside `[A-Za-z0-9-]{1,64}` is refused.
pub fn valid_upload_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// An account id is an integer account number or a GUID.
pub fn valid_account(id: &str) -> bool {
    (!id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())) || is_guid(id)
}

/// `8-4-4-4-12` hex digits.
pub fn is_guid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A part sequence: a small non-negative integer written in plain digits.
pub fn parse_seq(seq: &str) -> Option<u32> {
    if seq.is_empty() || seq.len() > 5 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// Whether `query` carries `name=value` (value compared without regard to case).
pub fn query_has(query: Option<&str>, name: &str, value: &str) -> bool {
    query.unwrap_or_default().split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k == name && v.eq_ignore_ascii_case(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_resource_under_any_prefix() {
        let t = chunked_upload_target("/restapi/v2.1/accounts/123/chunked_uploads/ABC/4").unwrap();
        assert_eq!(
            (t.prefix, t.version, t.account, t.upload, t.part),
            ("/restapi", "v2.1", "123", Some("ABC"), Some("4"))
        );
        let t = chunked_upload_target("/v2/accounts/123/chunked_uploads/").unwrap();
        assert_eq!((t.prefix, t.version, t.upload), ("", "v2", None));
        assert_eq!(chunked_upload_target("/v2.1/accounts/123/envelopes"), None);
        assert_eq!(chunked_upload_target("/v2.1/accounts/123/chunked_uploads/a/1/x"), None);
        assert_eq!(chunked_upload_target("/v2.1/accounts/123/chunked_uploads//1"), None);
    }

    #[test]
    fn hostile_targets_are_screened_out() {
        let check = |m: &str, t: &str| screen(&m.parse().unwrap(), &t.parse().unwrap());
        assert_eq!(check("GET", "/restapi/v2.1/accounts/42/envelopes?x=1"), Ok(()));
        assert_eq!(check("PUT", "/v2.1/accounts/42/chunked_uploads/AB-12/3"), Ok(()));
        assert_eq!(check("GET", "http://evil.example/v2.1/accounts/42"), Err(Refused::NotOrigin));
        assert_eq!(check("CONNECT", "evil.example:443"), Err(Refused::NotOrigin));
        assert_eq!(check("GET", "/v2.1/accounts/42/../../admin"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/%2e%2e/x"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42%2F..%2Fx"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/a%5cb"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/%2E%2E/x"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/a%00"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/envelopes/a%20b%"), Ok(()));
        assert_eq!(check("GET", "/admin/metrics"), Err(Refused::NotApi));
        assert_eq!(check("GET", "/v2.1/accounts/4x2/envelopes"), Err(Refused::BadAccount));
        assert_eq!(check("GET", "/v2.1/accounts/42/chunked_uploads/a_b"), Err(Refused::BadUploadId));
        assert_eq!(check("PUT", "/v2.1/accounts/42/chunked_uploads/ab/99999999"), Err(Refused::BadSequence));
    }

    #[test]
    fn account_ids_are_integers_or_guids() {
        assert!(valid_account("12345"));
        assert!(valid_account("3216e4b2-0a1b-4c2d-8e3f-34cc91813ea2"));
        assert!(!valid_account("12a45"));
        assert!(!valid_account(""));
        assert!(!valid_account("3216e4b2-0a1b-4c2d-8e3f-34cc91813ea"));
        assert_eq!(parse_seq("12"), Some(12));
        assert_eq!(parse_seq("-1"), None);
        assert_eq!(parse_seq("1e3"), None);
        assert!(query_has(Some("x=1&action=Commit"), "action", "commit"));
        assert_eq!(account_in("/restapi/v2.1/accounts/42/envelopes"), Some("42"));
        assert_eq!(account_in("/oauth/userinfo"), None);
    }
}
