//! Per-byte costs of the hot path, one core, buffers reused: base64 encode and decode with the
//! `base64` crate against `base64-simd` (in use), and SHA-256 with `sha2` against `ring`, both whole
//! and fed in 64 KiB pieces as frames arrive. Prints GB/s.
//!
//! `cargo bench --bench codecs`

use std::{hint::black_box, time::Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

/// GB/s of `f` over `bytes` per call, best of a few rounds.
fn rate(bytes: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..8 {
                f();
            }
            bytes as f64 * 8.0 / started.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() {
    let mut data = vec![0u8; 16 * MIB];
    fastrand::Rng::with_seed(1).fill(&mut data);
    let encoded_len = data.len().div_ceil(3) * 4;
    let mut out = vec![0u8; encoded_len];
    let text = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut back = vec![0u8; data.len()];

    let b64_enc = rate(data.len(), || {
        black_box(base64::engine::general_purpose::STANDARD.encode_slice(black_box(&data), &mut out).unwrap());
    });
    let simd_enc = rate(data.len(), || {
        black_box(base64_simd::STANDARD.encode(black_box(&data), base64_simd::Out::from_slice(&mut out)));
    });
    let b64_dec = rate(data.len(), || {
        black_box(
            base64::engine::general_purpose::STANDARD.decode_slice(black_box(text.as_bytes()), &mut back).unwrap(),
        );
    });
    let simd_dec = rate(data.len(), || {
        black_box(
            base64_simd::STANDARD.decode(black_box(text.as_bytes()), base64_simd::Out::from_slice(&mut back)).unwrap(),
        );
    });
    let sha = rate(data.len(), || {
        black_box(Sha256::digest(black_box(&data)));
    });
    let sha_frames = rate(data.len(), || {
        let mut h = Sha256::new();
        for frame in data.chunks(64 * 1024) {
            h.update(black_box(frame));
        }
        black_box(h.finalize());
    });
    let ring_sha = rate(data.len(), || {
        black_box(ring::digest::digest(&ring::digest::SHA256, black_box(&data)));
    });
    let ring_frames = rate(data.len(), || {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for frame in data.chunks(64 * 1024) {
            h.update(black_box(frame));
        }
        black_box(h.finish());
    });
    println!("16 MiB buffers, one core, GB/s (best of 5 x 8):");
    println!("  base64 encode: base64 {b64_enc:.2}, base64-simd {simd_enc:.2} ({:.1}x)", simd_enc / b64_enc);
    println!("  base64 decode: base64 {b64_dec:.2}, base64-simd {simd_dec:.2} ({:.1}x)", simd_dec / b64_dec);
    println!("  SHA-256 whole: sha2 {sha:.2}, ring {ring_sha:.2} ({:.2}x)", ring_sha / sha);
    println!(
        "  SHA-256 in 64 KiB frames: sha2 {sha_frames:.2}, ring {ring_frames:.2} ({:.2}x)",
        ring_frames / sha_frames
    );
}
