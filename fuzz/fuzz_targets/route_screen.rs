//! Whatever target a client sends, over either protocol, the screen never panics, and what it lets
//! through holds no traversal, exactly one API version segment, and an account and ids that are
//! the path's own segments and well formed.
#![no_main]

use chunkgate::edge::target as route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, bool, &str)| {
    let (m, h2, target) = input;
    let method = ["GET", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS"][m as usize % 6].parse::<http::Method>().unwrap();
    let version = if h2 { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
    let Ok(uri) = target.parse::<http::Uri>() else { return };
    let Ok(t) = route::screen(&method, &uri, version) else { return };
    let path = uri.path();
    assert!(method != http::Method::CONNECT);
    assert!(h2 || uri.authority().is_none(), "absolute form over HTTP/1.1");
    assert!(!path.split('/').any(|s| s == ".." || s == "."));
    assert!(!path.to_ascii_lowercase().contains("%2f"));
    let versions = path.split('/').filter(|s| *s == "v2" || *s == "v2.1").count();
    assert_eq!(versions, 1, "{path}");
    // The account is the segment after `{version}/accounts/`, and nothing else.
    let expected = format!("{}/{}/accounts/", t.prefix, t.version);
    if let Some(account) = t.account {
        assert!(route::valid_account(account));
        assert!(path.starts_with(&format!("{expected}{account}")), "{path}: {account}");
    } else {
        assert!(!path.starts_with(&expected) || path.len() == expected.len(), "{path}");
    }
    if let Some(c) = t.chunked {
        assert!(t.account.is_some());
        assert!(c.upload.is_none_or(route::valid_upload_id));
        assert!(c.part.is_none_or(|p| route::parse_seq(p).is_some()));
    }
});
