//! A part's request body, `{"data":"<standard padded base64>"}`, built as the client's bytes arrive:
//! each frame is encoded straight into the body, so part bytes are never copied raw first. A body
//! is built once, so a retry resends the very same bytes.

use base64_simd::STANDARD;

const HEAD: &[u8] = b"{\"data\":\"";
const TAIL: &[u8] = b"\"}";

/// Bytes of the JSON body for a part of `len` raw bytes.
pub fn encoded_len(len: usize) -> usize {
    HEAD.len() + len.div_ceil(3) * 4 + TAIL.len()
}

/// A part body being written. Base64 works on groups of three bytes; the one or two bytes of a frame
/// that do not fill a group wait for the next frame, or for `finish` to pad them.
pub struct PartBody {
    buf: Vec<u8>,
    carry: [u8; 3],
    carried: usize,
    raw: usize,
}

// === impl PartBody ===

impl PartBody {
    /// Starts a body in `buf` (cleared first); give it the capacity of `encoded_len` of the part's
    /// size, so that it never grows.
    pub fn new(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.extend_from_slice(HEAD);
        Self { buf, carry: [0; 3], carried: 0, raw: 0 }
    }

    /// Raw bytes taken so far.
    pub fn raw_len(&self) -> usize {
        self.raw
    }

    /// Appends the base64 of `data`.
    pub fn push(&mut self, mut data: &[u8]) {
        self.raw += data.len();
        if self.carried > 0 {
            let n = (3 - self.carried).min(data.len());
            self.carry[self.carried..self.carried + n].copy_from_slice(&data[..n]);
            self.carried += n;
            data = &data[n..];
            if self.carried < 3 {
                return;
            }
            // base64-simd: about 5x the `base64` crate's encode speed on these machines
            // (benches/codecs.rs); appending writes no zeros first.
            STANDARD.encode_append(self.carry, &mut self.buf);
            self.carried = 0;
        }
        let whole = data.len() / 3 * 3;
        STANDARD.encode_append(&data[..whole], &mut self.buf);
        let rest = &data[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    /// The finished body: the last group padded, the JSON closed.
    pub fn finish(mut self) -> Vec<u8> {
        STANDARD.encode_append(&self.carry[..self.carried], &mut self.buf);
        self.buf.extend_from_slice(TAIL);
        debug_assert_eq!(self.buf.len(), encoded_len(self.raw));
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    /// The JSON body carrying `data`, in one go.
    fn encode(data: &[u8]) -> Vec<u8> {
        let mut body = PartBody::new(Vec::with_capacity(encoded_len(data.len())));
        body.push(data);
        body.finish()
    }

    #[test]
    fn the_settings_know_the_size_of_a_part_body_around_its_base64() {
        assert_eq!(encoded_len(0), crate::config::PART_BODY_OVERHEAD);
    }

    fn standard(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn bodies_are_json_with_padded_base64() {
        for n in 0..10 {
            let data: Vec<u8> = (0..n as u8).collect();
            let body = encode(&data);
            assert_eq!(body.len(), encoded_len(n));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["data"].as_str().unwrap(), standard(&data));
        }
    }

    #[test]
    fn a_body_written_frame_by_frame_is_the_body_written_at_once() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 % 256) as u8).collect();
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..500 {
            let len = rng.usize(0..=data.len());
            let mut body = PartBody::new(vec![1, 2, 3]);
            let mut at = 0;
            while at < len {
                let n = rng.usize(0..=7).min(len - at);
                body.push(&data[at..at + n]);
                at += n;
            }
            assert_eq!(body.raw_len(), len);
            assert_eq!(body.finish(), encode(&data[..len]));
        }
        assert_eq!(encode(b"hello"), format!("{{\"data\":\"{}\"}}", standard(b"hello")).as_bytes());
    }
}
