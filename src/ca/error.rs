//! The service layer's errors: [`CaError`] (one variant per HTTP status, mapped in one place
//! by the HTTP layer) and [`StartError`] (start-up failures with their exit codes).

use std::path::PathBuf;

use crate::authority::{AuthorityError, CommitError};
use crate::keys::KeyError;
use crate::store::StoreError;
use crate::x509::X509Error;

/// Errors of the service layer; each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// 400: the body does not fit the schema.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no, untrusted or revoked client certificate, or a bad join token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 405: the endpoint exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: a state rule refused.
    #[error("{0}")]
    Conflict(String),
    /// 413: too large.
    #[error("{0}")]
    TooLarge(String),
    /// 422: a well-formed but invalid value; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// 429: slow down.
    #[error("{0}")]
    RateLimited(String),
    /// 503: not ready.
    #[error("{0}")]
    NotReady(String),
    /// 503: too much work queued or too many connections of the caller's kind; answered
    /// with `Retry-After: 1`, since a retry a moment later may find room.
    #[error("{0}")]
    Busy(String),
    /// 500: our fault; the detail is logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CaError {
    /// A 422 for `field`.
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        CaError::Invalid {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

impl From<AuthorityError> for CaError {
    fn from(e: AuthorityError) -> Self {
        CaError::from(&e)
    }
}

/// By reference too: a failed group write hands the same error to every caller in it.
impl From<&AuthorityError> for CaError {
    fn from(e: &AuthorityError) -> Self {
        use crate::rotation::RotationError;
        match e {
            AuthorityError::Rotation(RotationError::Conflict(m)) => CaError::Conflict(m.clone()),
            AuthorityError::Rotation(RotationError::NotFound(id)) => {
                CaError::NotFound(format!("authority {id} does not exist"))
            }
            AuthorityError::NoActive
            | AuthorityError::Superseded(_)
            | AuthorityError::IntermediateExpiring(..)
            | AuthorityError::Store(StoreError::Unavailable(_)) => CaError::NotReady(e.to_string()),
            other => CaError::Internal(other.to_string()),
        }
    }
}

impl From<CommitError> for CaError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Busy => CaError::Busy(e.to_string()),
            CommitError::Stopped => CaError::Internal(e.to_string()),
            CommitError::Failed(e) => CaError::from(e.as_ref()),
        }
    }
}

impl From<StoreError> for CaError {
    fn from(e: StoreError) -> Self {
        match e {
            // The database is down or unreachable: a retry later may succeed (503).
            StoreError::Unavailable(_) => CaError::NotReady(e.to_string()),
            other => CaError::Internal(other.to_string()),
        }
    }
}

impl From<X509Error> for CaError {
    fn from(e: X509Error) -> Self {
        match e {
            X509Error::MalformedCsr(_)
            | X509Error::BadCsrSignature
            | X509Error::UnsupportedKey(_) => {
                let msg = e.to_string();
                CaError::invalid("csr", msg.trim_start_matches("csr: "))
            }
            other => CaError::Internal(other.to_string()),
        }
    }
}

impl From<KeyError> for CaError {
    fn from(e: KeyError) -> Self {
        CaError::Internal(e.to_string())
    }
}

/// Start-up failures, with the exit code they deserve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem (exit 2).
    #[error("{0}")]
    Config(String),
    /// `init` on an initialized state (exit 1).
    #[error("the state in {0} is already initialized; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    /// Anything else at start (exit 1).
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> Self {
        StartError::Runtime(e.to_string())
    }
}

impl From<AuthorityError> for StartError {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::Key(KeyError::WrongKek) => StartError::Config(e.to_string()),
            other => StartError::Runtime(other.to_string()),
        }
    }
}

impl From<KeyError> for StartError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Io { .. } | KeyError::Random => StartError::Runtime(e.to_string()),
            other => StartError::Config(other.to_string()),
        }
    }
}
