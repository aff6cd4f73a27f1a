//! Any upstream answer, in either dialect and with any status, is parsed or refused; never a panic.
#![no_main]

use bytes::Bytes;
use chunkgate::{config::Dialect, upstream::Answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, bool, &[u8])| {
    let (status, envelope, body) = input;
    let Ok(status) = http::StatusCode::from_u16(100 + status % 500) else { return };
    let answer = Answer { status, headers: Default::default(), body: Bytes::copy_from_slice(body) };
    let dialect = if envelope { Dialect::Wrapped } else { Dialect::Docusign };
    if let Ok(resource) = answer.resource(dialect) {
        let _ = (resource.is_committed(), resource.max_parts(), resource.max_total(), resource.part_size(0));
    }
    let _ = answer.error_code(dialect);
    let _ = chunkgate::policy::retry::is_throttle(&answer, dialect);
});
