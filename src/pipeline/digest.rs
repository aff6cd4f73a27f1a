//! The client's `Content-Digest` (RFC 9530): the sha-256 member, if any.

use base64::{Engine, engine::general_purpose::STANDARD};
use http::HeaderMap;

/// Every sha-256 member, in every `Content-Digest` line (none: empty; other algorithms are
/// ignored, as RFC 9530 allows): the body must match each (only the last had counted, so a wrong
/// one before a right one passed); `Err(())` when one is malformed.
pub fn sha256_of(headers: &HeaderMap) -> Result<Vec<[u8; 32]>, ()> {
    let mut found = Vec::new();
    for value in headers.get_all("content-digest") {
        let value = value.to_str().map_err(|_| ())?;
        for member in value.split(',') {
            let Some((alg, rest)) = member.trim().split_once('=') else { return Err(()) };
            if !alg.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let b64 = rest.trim().strip_prefix(':').and_then(|r| r.strip_suffix(':')).ok_or(())?;
            let bytes = STANDARD.decode(b64).map_err(|_| ())?;
            found.push(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ())?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-digest", v.parse().unwrap());
        h
    }

    #[test]
    fn reads_the_sha256_member_and_refuses_malformed_ones() {
        // sha-256 of "hello world", from RFC 9530's examples style.
        let v = "sha-512=:abc:, sha-256=:uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=:";
        let got = sha256_of(&headers(v)).unwrap();
        assert_eq!(
            got.iter().map(|d| crate::upstream::resource::hex(d)).collect::<Vec<_>>(),
            ["b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"]
        );
        assert_eq!(sha256_of(&HeaderMap::new()), Ok(vec![]));
        assert_eq!(sha256_of(&headers("sha-512=:abc:")), Ok(vec![]));
        // Two members: both are kept, in order.
        let two = sha256_of(&headers(&format!("sha-256=:{}:, {}", "A".repeat(43) + "=", &v[15..]))).unwrap();
        assert_eq!((two.len(), two[0], two[1]), (2, [0; 32], got[0]));
        assert_eq!(sha256_of(&headers("sha-256=uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=")), Err(()));
        assert_eq!(sha256_of(&headers("sha-256=:AAAA:")), Err(()));
    }
}
