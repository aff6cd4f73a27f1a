//! The two body shapes the simulator can speak (UPSTREAM.md), written here rather than borrowed
//! from the gateway, which reads them: bare DocuSign bodies, and the same wrapped in
//! `{"success", "data" | "error"}`.

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::config::Dialect;

/// The body of a successful answer carrying `value`.
pub fn success<T: Serialize>(dialect: Dialect, value: &T) -> Bytes {
    let body = match dialect {
        Dialect::Docusign => serde_json::to_vec(value),
        Dialect::Wrapped => serde_json::to_vec(&json!({ "success": true, "data": value })),
    };
    Bytes::from(body.expect("plain data serializes"))
}

/// The body of an error answer.
pub fn error(dialect: Dialect, code: &str, message: &str) -> Bytes {
    let value = match dialect {
        Dialect::Docusign => json!({ "errorCode": code, "message": message }),
        Dialect::Wrapped => json!({ "success": false, "error": { "code": code, "message": message } }),
    };
    Bytes::from(value.to_string())
}
