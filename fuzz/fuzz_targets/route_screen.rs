//! Whatever target a client sends, the screen never panics, and what it lets through holds no
//! traversal and well-formed ids.
#![no_main]

use chunkgate::route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &str)| {
    let (m, target) = input;
    let method = ["GET", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS"][m as usize % 6].parse::<http::Method>().unwrap();
    let Ok(uri) = target.parse::<http::Uri>() else { return };
    if route::screen(&method, &uri).is_ok() {
        let path = uri.path();
        assert!(uri.authority().is_none() && method != http::Method::CONNECT);
        assert!(!path.split('/').any(|s| s == ".." || s == "."));
        assert!(!path.to_ascii_lowercase().contains("%2f"));
        if let Some(account) = route::account_in(path) {
            assert!(route::valid_account(account));
        }
        if let Some(t) = route::chunked_upload_target(path) {
            assert!(t.upload.is_none_or(route::valid_upload_id));
            assert!(t.part.is_none_or(|p| route::parse_seq(p).is_some()));
        }
    }
});
