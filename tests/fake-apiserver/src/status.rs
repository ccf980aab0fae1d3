//! API errors, rendered as `meta/v1` `Status` objects.

use std::fmt;

use serde_json::{json, Value};

/// A failed request as the API server reports it: HTTP code, `reason` and `message`, plus
/// optional `details`. Rendered as a `Status` JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code (404, 409, 410, 422, 429, 500, …).
    pub code: u16,
    /// Machine-readable reason: `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, …
    pub reason: String,
    /// Human-readable message, worded like the real API server's.
    pub message: String,
    /// `Status.details`, when the reason carries any.
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}
