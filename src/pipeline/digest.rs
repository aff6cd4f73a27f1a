//! The client's `Content-Digest` (RFC 9530): the sha-256 member, if any.

use base64::{Engine, engine::general_purpose::STANDARD};
use http::HeaderMap;

/// `Ok(None)` without a sha-256 member (other algorithms are ignored, as RFC 9530 allows);
/// `Err(())` when the sha-256 member is malformed.
pub fn sha256_of(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ()> {
    let mut found = None;
    for value in headers.get_all("content-digest") {
        let value = value.to_str().map_err(|_| ())?;
        for member in value.split(',') {
            let Some((alg, rest)) = member.trim().split_once('=') else { return Err(()) };
            if !alg.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let b64 = rest.trim().strip_prefix(':').and_then(|r| r.strip_suffix(':')).ok_or(())?;
            let bytes = STANDARD.decode(b64).map_err(|_| ())?;
            found = Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| ())?);
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
        let got = sha256_of(&headers(v)).unwrap().unwrap();
        assert_eq!(
            crate::upstream::resource::hex(&got),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(sha256_of(&HeaderMap::new()), Ok(None));
        assert_eq!(sha256_of(&headers("sha-512=:abc:")), Ok(None));
        assert_eq!(sha256_of(&headers("sha-256=uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek=")), Err(()));
        assert_eq!(sha256_of(&headers("sha-256=:AAAA:")), Err(()));
    }
}
