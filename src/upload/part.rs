//! A part's request body: `{"data":"<standard padded base64>"}`, encoded once, so a retry resends
//! the very same bytes.

use base64_simd::{Out, STANDARD};
use bytes::BytesMut;

const HEAD: &[u8] = b"{\"data\":\"";
const TAIL: &[u8] = b"\"}";

/// Bytes of the JSON body for a part of `len` raw bytes.
pub fn encoded_len(len: usize) -> usize {
    HEAD.len() + len.div_ceil(3) * 4 + TAIL.len()
}

/// The JSON body carrying `data`, written into `out` (cleared first; grown if too small).
pub fn encode_into(data: &[u8], mut out: BytesMut) -> BytesMut {
    out.clear();
    out.resize(encoded_len(data.len()), 0);
    let end = out.len() - TAIL.len();
    out[..HEAD.len()].copy_from_slice(HEAD);
    // base64-simd: about 5x the `base64` crate's encode speed on these machines (benches/codecs.rs).
    let written = STANDARD.encode(data, Out::from_slice(&mut out[HEAD.len()..end])).len();
    debug_assert_eq!(HEAD.len() + written, end);
    out[end..].copy_from_slice(TAIL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_with_padded_base64() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n as u8).collect();
            let body = encode_into(&data, BytesMut::new());
            assert_eq!(body.len(), encoded_len(n));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            use base64::Engine;
            assert_eq!(v["data"].as_str().unwrap(), base64::engine::general_purpose::STANDARD.encode(&data));
        }
    }
}
