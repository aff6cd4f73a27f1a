//! The simulator's own reading of request paths and queries, written from UPSTREAM.md's route
//! table and kept apart from the gateway's on purpose: a bug in one parser must not be hidden by
//! the same bug in the upstream the tests check the gateway against.

/// A route the simulator serves: `{prefix}/{v2.1|v2}/accounts/{account}/chunked_uploads[/{upload}[/{part}]]`,
/// or `{prefix}/{v2.1|v2}/accounts/{account}/envelopes` (`upload` and `part` then `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route<'a> {
    pub account: &'a str,
    pub collection: Collection,
    pub upload: Option<&'a str>,
    pub part: Option<&'a str>,
}

/// The collection a route is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Collection {
    ChunkedUploads,
    Envelopes,
}

/// The route `path` names under `prefix` (the API is served there and nowhere else, as DocuSign
/// serves it under `/restapi` only), or `None`.
pub fn api<'a>(path: &'a str, prefix: &str) -> Option<Route<'a>> {
    let rest = path.strip_prefix(prefix)?;
    let rest = rest.strip_prefix("/v2.1/").or_else(|| rest.strip_prefix("/v2/"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = rest.split('/');
    if segments.next()? != "accounts" {
        return None;
    }
    let account = segments.next().filter(|a| !a.is_empty())?;
    let collection = match segments.next()? {
        "chunked_uploads" => Collection::ChunkedUploads,
        "envelopes" => Collection::Envelopes,
        _ => return None,
    };
    let upload = segments.next();
    let part = segments.next();
    if segments.next().is_some() || upload == Some("") || part == Some("") {
        return None;
    }
    if collection == Collection::Envelopes && upload.is_some() {
        return None;
    }
    Some(Route { account, collection, upload, part })
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
        let r = api("/restapi/v2.1/accounts/7/chunked_uploads/AB/3", "/restapi").unwrap();
        assert_eq!(
            (r.account, r.collection, r.upload, r.part),
            ("7", Collection::ChunkedUploads, Some("AB"), Some("3"))
        );
        assert_eq!(api("/restapi/v2/accounts/7/chunked_uploads/", "/restapi").unwrap().upload, None);
        assert_eq!(api("/restapi/restapi/v2.1/accounts/7/chunked_uploads", "/restapi"), None);
        assert_eq!(api("/v2.1/accounts/7/chunked_uploads", "/restapi"), None);
        assert!(api("/v2.1/accounts/7/chunked_uploads", "").is_some());
        assert_eq!(api("/restapi/v2.1/accounts/7/chunked_uploads/a/1/x", "/restapi"), None);
        let e = api("/restapi/v2.1/accounts/7/envelopes", "/restapi").unwrap();
        assert_eq!((e.collection, e.upload), (Collection::Envelopes, None));
        assert_eq!(api("/restapi/v2.1/accounts/7/envelopes/E1", "/restapi"), None);
        assert_eq!(api("/restapi/v2.1/accounts/7/templates", "/restapi"), None);
        assert!(valid_account("3216e4b2-0a1b-4c2d-8e3f-34cc91813ea2") && !valid_account("12a"));
        assert_eq!((sequence("12"), sequence("-1"), sequence("")), (Some(12), None, None));
        assert!(query_has(Some("x=1&action=Commit"), "action", "commit"));
    }
}
