//! The simulator's own reading of request paths and queries, written from UPSTREAM.md's route
//! table and kept apart from the gateway's on purpose: a bug in one parser must not be hidden by
//! the same bug in the upstream the tests check the gateway against.

/// A chunked-upload route: `{prefix}/{v2.1|v2}/accounts/{account}/chunked_uploads[/{upload}[/{part}]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub account: &'a str,
    pub upload: Option<&'a str>,
    pub part: Option<&'a str>,
}

/// The route `path` names under `prefix` (the API is served there and nowhere else, as DocuSign
/// serves it under `/restapi` only), or `None`.
pub fn chunked_upload<'a>(path: &'a str, prefix: &str) -> Option<Route<'a>> {
    let rest = path.strip_prefix(prefix)?;
    let rest = rest.strip_prefix("/v2.1/").or_else(|| rest.strip_prefix("/v2/"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = rest.split('/');
    if segments.next()? != "accounts" {
        return None;
    }
    let account = segments.next().filter(|a| !a.is_empty())?;
    if segments.next()? != "chunked_uploads" {
        return None;
    }
    let upload = segments.next();
    let part = segments.next();
    if segments.next().is_some() || upload == Some("") || part == Some("") {
        return None;
    }
    Some(Route { account, upload, part })
}

/// An account id: an integer account number or a GUID (UPSTREAM.md).
pub fn valid_account(id: &str) -> bool {
    let number = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
    let groups: Vec<&str> = id.split('-').collect();
    let guid = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    number || guid
}

/// A part sequence: a non-negative integer in plain digits, small enough to be a part number.
pub fn sequence(seq: &str) -> Option<u32> {
    (!seq.is_empty() && seq.len() <= 9 && seq.bytes().all(|b| b.is_ascii_digit())).then(|| seq.parse().ok()).flatten()
}

/// Whether `query` carries `name=value` (the value compared without regard to case).
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
    fn routes_exist_under_the_prefix_only() {
        let r = chunked_upload("/restapi/v2.1/accounts/7/chunked_uploads/AB/3", "/restapi").unwrap();
        assert_eq!((r.account, r.upload, r.part), ("7", Some("AB"), Some("3")));
        assert_eq!(chunked_upload("/restapi/v2/accounts/7/chunked_uploads/", "/restapi").unwrap().upload, None);
        assert_eq!(chunked_upload("/restapi/restapi/v2.1/accounts/7/chunked_uploads", "/restapi"), None);
        assert_eq!(chunked_upload("/v2.1/accounts/7/chunked_uploads", "/restapi"), None);
        assert!(chunked_upload("/v2.1/accounts/7/chunked_uploads", "").is_some());
        assert_eq!(chunked_upload("/restapi/v2.1/accounts/7/chunked_uploads/a/1/x", "/restapi"), None);
        assert_eq!(chunked_upload("/restapi/v2.1/accounts/7/envelopes", "/restapi"), None);
        assert!(valid_account("3216e4b2-0a1b-4c2d-8e3f-34cc91813ea2") && !valid_account("12a"));
        assert_eq!((sequence("12"), sequence("-1"), sequence("")), (Some(12), None, None));
        assert!(query_has(Some("x=1&action=Commit"), "action", "commit"));
    }
}
