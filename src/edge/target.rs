//! The request target, parsed once: where the upstream API's path starts, which account it names,
//! and whether it is a chunked-upload route. Everything that needs the account (the allowlist,
//! routing, quotas, rate limits) reads it from this one parse, so no two parsers can disagree.

pub use crate::ids::{parse_seq, valid_account, valid_upload_id};

/// A screened request target: `{prefix}/{version}/accounts/{account}/...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiTarget<'a> {
    /// Everything before `/v2.1` or `/v2`, e.g. `/restapi`.
    pub prefix: &'a str,
    pub version: &'a str,
    /// The segment after `{version}/accounts/`, when the path has one (validated).
    pub account: Option<&'a str>,
    /// The chunked-upload route the path is, if it is one.
    pub chunked: Option<Chunked<'a>>,
    /// The path is under the account's envelopes (`.../accounts/{account}/envelopes[/...]`):
    /// creating or changing an envelope may use chunked uploads.
    pub envelopes: bool,
}

/// `{prefix}/{version}/accounts/{account}/chunked_uploads[/{upload}[/{part}]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunked<'a> {
    pub upload: Option<&'a str>,
    pub part: Option<&'a str>,
}

/// Why a request target is refused before anything else looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// CONNECT, or absolute-form or authority-form over HTTP/1: the gateway is no proxy to anywhere else.
    NotOrigin,
    /// `.` or `..` segments, encoded separators or dots, backslashes.
    Traversal,
    /// No `/v2/` or `/v2.1/` segment: not a path of the upstream API.
    NotApi,
    /// More than one `/v2/` or `/v2.1/` segment: which one names the account would be a guess.
    AmbiguousVersion,
    BadAccount,
    BadUploadId,
    BadSequence,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::NotOrigin => {
                "only origin-form request targets are accepted (no CONNECT, no absolute, authority or asterisk form)"
            }
            Refused::Traversal => "the path holds dot segments, encoded separators or backslashes",
            Refused::NotApi => "the path is not one of the upstream API (no /v2/ or /v2.1/ segment)",
            Refused::AmbiguousVersion => "the path holds more than one API version segment (/v2/ or /v2.1/)",
            Refused::BadAccount => "the account id must be an integer account number or a GUID",
            Refused::BadUploadId => "the chunked upload id holds characters outside A-Z, a-z, 0-9 and '-'",
            Refused::BadSequence => "the part sequence must be a small non-negative integer",
        }
    }
}

/// Screens and parses a request target: only origin-form paths of the upstream API, with one API
/// version segment and well-formed ids, are forwarded anywhere.
///
/// HTTP/2 (and HTTP/3) requests carry their scheme and `:authority` in the URI hyper hands over;
/// that is their normal form, not an absolute-form target. Over HTTP/1 a scheme or an authority
/// means absolute-form or authority-form, which is refused.
pub fn screen<'a>(method: &http::Method, uri: &'a http::Uri, version: http::Version) -> Result<ApiTarget<'a>, Refused> {
    let path = origin_path(method, uri, version)?;
    let at = version_at(path)?;
    // `at` is where the version segment starts; the slash before it ends the prefix.
    let mut segments = Segments::new(&path[at..]);
    let version = segments.next().unwrap_or_default();
    let mut target = ApiTarget { prefix: &path[..at - 1], version, account: None, chunked: None, envelopes: false };
    if segments.next() != Some("accounts") {
        return Ok(target);
    }
    let account = match segments.next() {
        // `/v2.1/accounts` (account creation) names none.
        None => return Ok(target),
        Some("") if segments.0.is_none() => return Ok(target),
        Some(account) => account,
    };
    if !valid_account(account) {
        return Err(Refused::BadAccount);
    }
    target.account = Some(account);
    match segments.next() {
        Some("chunked_uploads") => target.chunked = chunked_route(segments)?,
        Some("envelopes") => target.envelopes = true,
        _ => {}
    }
    Ok(target)
}

/// The `/`-separated segments of a path, as `str::split('/')` yields them, found byte by byte:
/// segments are short, and every request's path is walked here.
#[derive(Clone)]
struct Segments<'a>(Option<&'a str>);

impl<'a> Segments<'a> {
    fn new(path: &'a str) -> Self {
        Self(Some(path))
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.0 = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                // The last segment: after it, none.
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// The path of an origin-form target, without dot segments, encoded separators or backslashes.
fn origin_path<'a>(method: &http::Method, uri: &'a http::Uri, version: http::Version) -> Result<&'a str, Refused> {
    let h1 = version <= http::Version::HTTP_11;
    if method == http::Method::CONNECT || (h1 && (uri.scheme().is_some() || uri.authority().is_some())) {
        return Err(Refused::NotOrigin);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        // `*` (asterisk-form, `OPTIONS *`): not a path of the API.
        return Err(Refused::NotOrigin);
    }
    if path.bytes().any(|b| b == b'\\') || has_encoded_separator(path) {
        return Err(Refused::Traversal);
    }
    Ok(path)
}

/// Where the one API version segment starts. One pass over the segments, without allocating:
/// every request passes here.
fn version_at(path: &str) -> Result<usize, Refused> {
    let mut at = None;
    let mut offset = 0;
    for segment in Segments::new(path) {
        match segment {
            "." | ".." => return Err(Refused::Traversal),
            "v2" | "v2.1" if at.is_some() => return Err(Refused::AmbiguousVersion),
            "v2" | "v2.1" => at = Some(offset),
            _ => {}
        }
        offset += segment.len() + 1;
    }
    at.ok_or(Refused::NotApi)
}

/// The segments after `chunked_uploads`: the collection, an upload or one of its parts, with
/// well-formed ids. Anything longer is not a route of the resource (`None`: passed through for the
/// upstream to refuse).
fn chunked_route<'a>(segments: impl Iterator<Item = &'a str>) -> Result<Option<Chunked<'a>>, Refused> {
    // At most three segments matter (upload, part, and a trailing slash's empty one): more is
    // not a route of the resource.
    let mut tail = [""; 3];
    let mut n = 0;
    for segment in segments {
        if n == tail.len() {
            return Ok(None);
        }
        tail[n] = segment;
        n += 1;
    }
    // A trailing slash names the same route.
    let tail = match &tail[..n] {
        [head @ .., ""] => head,
        all => all,
    };
    let chunked = match tail {
        [] => Chunked { upload: None, part: None },
        [upload] => Chunked { upload: Some(upload), part: None },
        [upload, part] => Chunked { upload: Some(upload), part: Some(part) },
        _ => return Ok(None),
    };
    if chunked.upload.is_some_and(|id| !valid_upload_id(id)) {
        return Err(Refused::BadUploadId);
    }
    if chunked.part.is_some_and(|seq| parse_seq(seq).is_none()) {
        return Err(Refused::BadSequence);
    }
    Ok(Some(chunked))
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

#[cfg(test)]
mod tests {
    use http::{Method, Version};

    use super::*;

    fn check(m: &str, t: &str) -> Result<(Option<String>, Option<Chunked<'static>>), Refused> {
        let uri: &'static http::Uri = Box::leak(Box::new(t.parse().unwrap()));
        screen(&m.parse().unwrap(), uri, Version::HTTP_11).map(|t| (t.account.map(str::to_owned), t.chunked))
    }

    #[test]
    fn finds_the_account_and_the_resource_under_any_prefix() {
        let uri: http::Uri = "/restapi/v2.1/accounts/123/chunked_uploads/ABC/4".parse().unwrap();
        let t = screen(&Method::PUT, &uri, Version::HTTP_11).unwrap();
        assert_eq!((t.prefix, t.version, t.account), ("/restapi", "v2.1", Some("123")));
        assert_eq!(t.chunked, Some(Chunked { upload: Some("ABC"), part: Some("4") }));
        let uri: http::Uri = "/v2/accounts/123/chunked_uploads/".parse().unwrap();
        let t = screen(&Method::POST, &uri, Version::HTTP_11).unwrap();
        assert_eq!((t.prefix, t.version, t.chunked), ("", "v2", Some(Chunked { upload: None, part: None })));
        assert_eq!(check("GET", "/v2.1/accounts/123/envelopes"), Ok((Some("123".into()), None)));
        let envelopes = |t: &str| screen(&Method::POST, &t.parse().unwrap(), Version::HTTP_11).unwrap().envelopes;
        assert!(envelopes("/restapi/v2.1/accounts/123/envelopes") && envelopes("/v2/accounts/1/envelopes/E/documents"));
        assert!(!envelopes("/v2.1/accounts/123/templates") && !envelopes("/v2.1/accounts/123/x/envelopes"));
        assert_eq!(check("GET", "/v2.1/accounts/123/chunked_uploads/a/1/x"), Ok((Some("123".into()), None)));
        assert_eq!(check("GET", "/v2.1/login_information"), Ok((None, None)));
        assert_eq!(check("GET", "/v2.1/accounts/123/chunked_uploads//1"), Err(Refused::BadUploadId));
    }

    #[test]
    fn one_version_segment_names_the_account() {
        // The allowlist bypass: an account in the prefix and another after a second version.
        assert_eq!(
            check("POST", "/restapi/v2.1/accounts/42/x/v2.1/accounts/43/chunked_uploads"),
            Err(Refused::AmbiguousVersion)
        );
        assert_eq!(check("GET", "/restapi/v2/accounts/42/v2.1/accounts/43/envelopes"), Err(Refused::AmbiguousVersion));
        assert_eq!(check("GET", "/v2.1/accounts/42/x/accounts/43/chunked_uploads"), Ok((Some("42".into()), None)));
        assert_eq!(check("GET", "/v2.1/accounts/42/envelopes/v2.10"), Ok((Some("42".into()), None)));
    }

    #[test]
    fn hostile_targets_are_screened_out() {
        assert!(check("GET", "/restapi/v2.1/accounts/42/envelopes?x=1").is_ok());
        assert!(check("PUT", "/v2.1/accounts/42/chunked_uploads/AB-12/3").is_ok());
        assert_eq!(check("GET", "http://evil.example/v2.1/accounts/42"), Err(Refused::NotOrigin));
        assert_eq!(check("CONNECT", "evil.example:443"), Err(Refused::NotOrigin));
        assert_eq!(check("GET", "/v2.1/accounts/42/../../admin"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/%2e%2e/x"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42%2F..%2Fx"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/a%5cb"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/%2E%2E/x"), Err(Refused::Traversal));
        assert_eq!(check("GET", "/v2.1/accounts/42/a%00"), Err(Refused::Traversal));
        assert!(check("GET", "/v2.1/accounts/42/envelopes/a%20b%").is_ok());
        assert_eq!(check("GET", "/admin/metrics"), Err(Refused::NotApi));
        assert_eq!(check("GET", "/v2.1/accounts/4x2/envelopes"), Err(Refused::BadAccount));
        assert_eq!(check("GET", "/v2.1/accounts//envelopes"), Err(Refused::BadAccount));
        assert_eq!(check("POST", "/v2.1/accounts"), Ok((None, None)));
        assert_eq!(check("GET", "/v2.1/accounts/42/chunked_uploads/a_b"), Err(Refused::BadUploadId));
        assert_eq!(check("PUT", "/v2.1/accounts/42/chunked_uploads/ab/99999999"), Err(Refused::BadSequence));
    }

    #[test]
    fn segments_are_those_split_finds() {
        for path in ["", "/", "//", "/a", "/a/", "a/b//c/", "/restapi/v2.1/accounts/42/chunked_uploads/AB/3", "///x"] {
            assert_eq!(Segments::new(path).collect::<Vec<_>>(), path.split('/').collect::<Vec<_>>(), "{path:?}");
        }
    }

    #[test]
    fn http2_targets_carry_their_authority() {
        let uri: http::Uri = "https://gw.local:8443/restapi/v2.1/accounts/42/chunked_uploads".parse().unwrap();
        let t = screen(&Method::POST, &uri, Version::HTTP_2).unwrap();
        assert_eq!((t.prefix, t.account), ("/restapi", Some("42")));
        assert_eq!(screen(&Method::POST, &uri, Version::HTTP_11), Err(Refused::NotOrigin));
        assert_eq!(screen(&Method::CONNECT, &uri, Version::HTTP_2), Err(Refused::NotOrigin));
    }
}
