//! Response bodies in the upstream's two dialects: bare DocuSign bodies and the
//! `{"success", "data" | "error"}` envelope some API gateways wrap them in.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

pub use crate::config::Dialect;

/// An error body as either dialect carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

// === impl Dialect ===

impl Dialect {
    /// The body of a successful answer carrying `value`.
    pub fn success<T: Serialize>(self, value: &T) -> Bytes {
        let body = match self {
            Dialect::Docusign => serde_json::to_vec(value),
            Dialect::Wrapped => serde_json::to_vec(&json!({ "success": true, "data": value })),
        };
        Bytes::from(body.expect("serializing plain data cannot fail"))
    }

    /// The body of an error answer.
    pub fn error(self, code: &str, message: &str) -> Bytes {
        let value = match self {
            Dialect::Docusign => json!({ "errorCode": code, "message": message }),
            Dialect::Wrapped => {
                json!({ "success": false, "error": { "code": code, "message": message } })
            }
        };
        Bytes::from(value.to_string())
    }

    /// Splits a parsed body into the payload of a success or the error it carries.
    /// Returns `None` when the body is in neither shape of this dialect.
    pub fn unwrap(self, body: Value) -> Option<Result<Value, ErrorBody>> {
        match self {
            Dialect::Docusign => match error_fields(&body, "errorCode") {
                Some(err) => Some(Err(err)),
                None if body.is_object() => Some(Ok(body)),
                None => None,
            },
            Dialect::Wrapped => {
                let Value::Object(mut map) = body else {
                    return None;
                };
                match map.get("success")? {
                    Value::Bool(true) => Some(Ok(map.remove("data").unwrap_or(Value::Null))),
                    Value::Bool(false) => map.get("error").and_then(|e| error_fields(e, "code")).map(Err),
                    _ => None,
                }
            }
        }
    }
}

fn error_fields(value: &Value, code_key: &str) -> Option<ErrorBody> {
    let code = value.get(code_key)?.as_str()?;
    let message = value.get("message").and_then(Value::as_str).unwrap_or_default();
    Some(ErrorBody { code: code.to_owned(), message: message.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_round_trip_errors_and_successes() {
        for dialect in [Dialect::Docusign, Dialect::Wrapped] {
            let err: Value = serde_json::from_slice(&dialect.error("SOME_CODE", "text")).unwrap();
            assert_eq!(dialect.unwrap(err), Some(Err(ErrorBody { code: "SOME_CODE".into(), message: "text".into() })));
            let ok: Value = serde_json::from_slice(&dialect.success(&json!({"a": "1"}))).unwrap();
            assert_eq!(dialect.unwrap(ok), Some(Ok(json!({"a": "1"}))));
        }
        assert_eq!(Dialect::Wrapped.unwrap(json!({"a": 1})), None);
        assert_eq!(Dialect::Docusign.unwrap(json!([1])), None);
    }
}
