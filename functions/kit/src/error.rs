//! The one error type of the kit, and the HTTP status each variant maps to.

use std::fmt;

/// What went wrong, in terms a client can act on. `respond::error` turns it into
/// JSON `{"error": "..."}` with the status below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KitError {
    /// 400: the request is malformed (bad JSON, wrong shape, value out of range...).
    BadRequest(String),
    /// 404: no such model or route.
    NotFound(String),
    /// 405: the route exists but not for this method.
    MethodNotAllowed(String),
    /// 500: the model or the function itself failed.
    Internal(String),
}

impl KitError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// The HTTP status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::Internal(_) => 500,
        }
    }

    /// The human-readable reason, without the variant.
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m)
            | Self::NotFound(m)
            | Self::MethodNotAllowed(m)
            | Self::Internal(m) => m,
        }
    }

    /// Prefixes the message with some context, keeping the variant.
    pub fn context(self, ctx: impl fmt::Display) -> Self {
        match self {
            Self::BadRequest(m) => Self::BadRequest(format!("{ctx}: {m}")),
            Self::NotFound(m) => Self::NotFound(format!("{ctx}: {m}")),
            Self::MethodNotAllowed(m) => Self::MethodNotAllowed(format!("{ctx}: {m}")),
            Self::Internal(m) => Self::Internal(format!("{ctx}: {m}")),
        }
    }
}

impl fmt::Display for KitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for KitError {}
