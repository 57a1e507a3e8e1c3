//! The one error type of the client.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::StatusExt;

use crate::pb::ErrorReason;

pub use tonic_types::FieldViolation;

/// Result alias with the client's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed call: a status from the server (with its `google.rpc` details), a
/// transport failure (reported as [`Code::Unavailable`]) or a bad argument
/// caught before sending (reported as [`Code::InvalidArgument`], no reason).
#[derive(Debug)]
pub struct Error(Box<Inner>);

/// The fields of an [`Error`], boxed to keep `Result`s small.
#[derive(Debug)]
struct Inner {
    code: Code,
    message: String,
    reason: Option<String>,
    domain: Option<String>,
    metadata: HashMap<String, String>,
    field_violations: Vec<FieldViolation>,
    retry_delay: Option<Duration>,
    source: Option<BoxError>,
}

impl Error {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            message: message.into(),
            reason: None,
            domain: None,
            metadata: HashMap::new(),
            field_violations: Vec::new(),
            retry_delay: None,
            source: None,
        }))
    }

    /// An argument the client refused before sending anything.
    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// A failure to reach the server.
    pub(crate) fn transport(err: tonic::transport::Error) -> Self {
        let mut error = Self::new(Code::Unavailable, format!("transport error: {err}"));
        error.0.source = Some(Box::new(err));
        error
    }

    /// The call's deadline passed before another attempt could start.
    pub(crate) fn deadline_exceeded() -> Self {
        Self::new(Code::DeadlineExceeded, "deadline exceeded (client)")
    }

    /// A server reply that breaks the contract.
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }

    /// A status of a call whose deadline was `deadline`. tonic reports its own
    /// client-side timeout as CANCELLED ("Timeout expired"); a CANCELLED
    /// status at or after the deadline is reported as DEADLINE_EXCEEDED, as
    /// the other gRPC clients do.
    ///
    /// Any other CANCELLED or UNKNOWN status that carries a source error was
    /// made by the client's own transport, not sent by the server (the
    /// connection failed or closed under the call, as when a server refuses
    /// the client's certificate), and is reported as UNAVAILABLE like every
    /// transport failure, as the Python client reports it.
    pub(crate) fn from_call_status(status: tonic::Status, deadline: Option<Instant>) -> Self {
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let from_transport = std::error::Error::source(&status).is_some();
        let mut error = Self::from(status);
        if expired && error.0.code == Code::Cancelled {
            error.0.code = Code::DeadlineExceeded;
            error.0.message = format!("call deadline exceeded ({})", error.0.message);
        } else if from_transport && matches!(error.0.code, Code::Cancelled | Code::Unknown) {
            error.0.code = Code::Unavailable;
            error.0.message = format!("connection failed ({})", error.0.message);
        }
        error
    }

    /// The gRPC status code.
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// The status message, for humans.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// `ErrorInfo.reason`: an `ErrorReason` value name such as
    /// `"JSON_SCHEMA_INVALID"`; `None` when the status carried no ErrorInfo.
    pub fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    /// [`Self::reason`] as the generated enum; `None` when absent or unknown to
    /// this client version.
    pub fn error_reason(&self) -> Option<ErrorReason> {
        self.0
            .reason
            .as_deref()
            .and_then(ErrorReason::from_str_name)
    }

    /// `ErrorInfo.domain` (the service's is `"ananke.dev"`).
    pub fn domain(&self) -> Option<&str> {
        self.0.domain.as_deref()
    }

    /// `ErrorInfo.metadata`: the values named in the message.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.0.metadata
    }

    /// `BadRequest.field_violations`: the request fields at fault.
    pub fn field_violations(&self) -> &[FieldViolation] {
        &self.0.field_violations
    }

    /// `RetryInfo.retry_delay`: how long to wait before retrying an overload.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.0.retry_delay
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let details = status.get_error_details();
        let mut error = Self::new(status.code(), status.message());
        if let Some(info) = details.error_info() {
            error.0.reason = Some(info.reason.clone()).filter(|r| !r.is_empty());
            error.0.domain = Some(info.domain.clone()).filter(|d| !d.is_empty());
            error.0.metadata = info.metadata.clone();
        }
        if let Some(bad_request) = details.bad_request() {
            error.0.field_violations = bad_request.field_violations.clone();
        }
        error.0.retry_delay = details.retry_info().and_then(|r| r.retry_delay);
        error.0.source = Some(Box::new(status));
        error
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.0.code, self.0.message)?;
        if let Some(reason) = &self.0.reason {
            write!(f, " [{reason}]")?;
        }
        for violation in &self.0.field_violations {
            write!(f, "; {}: {}", violation.field, violation.description)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn reads_rich_details_from_a_status() {
        let mut details = ErrorDetails::with_error_info(
            "JSON_SCHEMA_INVALID",
            "ananke.dev",
            [("constraint".to_string(), "user".to_string())],
        );
        details.add_bad_request_violation("constraints[0].json_schema.schema", "bad type");
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "schema is not valid",
            details,
        );

        let error = Error::from(status);
        assert_eq!(error.code(), Code::InvalidArgument);
        assert_eq!(error.message(), "schema is not valid");
        assert_eq!(error.reason(), Some("JSON_SCHEMA_INVALID"));
        assert_eq!(error.error_reason(), Some(ErrorReason::JsonSchemaInvalid));
        assert_eq!(error.domain(), Some("ananke.dev"));
        assert_eq!(error.metadata()["constraint"], "user");
        assert_eq!(error.field_violations().len(), 1);
        assert_eq!(
            error.field_violations()[0].field,
            "constraints[0].json_schema.schema"
        );
        assert_eq!(error.retry_delay(), Some(Duration::from_millis(1500)));
        assert_eq!(
            error.to_string(),
            "InvalidArgument: schema is not valid [JSON_SCHEMA_INVALID]; \
             constraints[0].json_schema.schema: bad type"
        );
    }

    #[test]
    fn cancelled_after_the_deadline_is_deadline_exceeded() {
        let past = Some(Instant::now());
        let future = Some(Instant::now() + Duration::from_secs(3600));
        let timeout = || tonic::Status::cancelled("Timeout expired");

        let error = Error::from_call_status(timeout(), past);
        assert_eq!(error.code(), Code::DeadlineExceeded);
        assert_eq!(error.message(), "call deadline exceeded (Timeout expired)");
        assert_eq!(
            Error::from_call_status(timeout(), future).code(),
            Code::Cancelled
        );
        assert_eq!(
            Error::from_call_status(timeout(), None).code(),
            Code::Cancelled
        );
        let other = tonic::Status::internal("boom");
        assert_eq!(Error::from_call_status(other, past).code(), Code::Internal);
    }

    #[test]
    fn failures_of_the_transport_are_unavailable() {
        for code in [Code::Cancelled, Code::Unknown] {
            let mut closed = tonic::Status::new(code, "operation was canceled");
            closed.set_source(std::sync::Arc::new(std::io::Error::other("closed")));
            let error = Error::from_call_status(closed, None);
            assert_eq!(error.code(), Code::Unavailable);
            assert_eq!(
                error.message(),
                "connection failed (operation was canceled)"
            );
        }
        // A CANCELLED status the server sent (no source) stays CANCELLED.
        let sent = tonic::Status::cancelled("server cancelled");
        assert_eq!(Error::from_call_status(sent, None).code(), Code::Cancelled);
    }

    #[test]
    fn plain_status_has_no_details() {
        let error = Error::from(tonic::Status::unavailable("down"));
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(error.reason(), None);
        assert_eq!(error.error_reason(), None);
        assert!(error.field_violations().is_empty());
        assert_eq!(error.retry_delay(), None);
    }
}
