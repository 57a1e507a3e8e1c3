//! When a failed call may be retried, and after how long (the same policy as
//! the Python client's `ananke.retry.RetryPolicy`).

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tonic::Code;

use crate::error::Error;

/// How safe a call is to repeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// ValidateConstraints, GetModelInfo, GetServerStats, Health: no effects,
    /// repeat freely.
    Idempotent,
    /// Generate: repeat only when the server never started generating.
    Generate,
    /// GenerateStream before the stream opened (nothing reached the caller).
    StreamStart,
}

/// UNAVAILABLE reasons that mean the server refused the call before generating
/// (no reason: the server was never reached).
const REFUSED_REASONS: [&str; 2] = ["NOT_READY", "SHUTTING_DOWN"];

/// Exponential backoff for failures that are safe to retry.
///
/// UNAVAILABLE is retried for idempotent calls, for a stream that has not
/// opened, and for `generate` when the server never answered or refused it as
/// NOT_READY / SHUTTING_DOWN. RESOURCE_EXHAUSTED (overload) is retried only
/// when `honour_retry_info` is set and the server sent a `RetryInfo`, after
/// the delay it asks for (capped at `max_retry_info_delay`). Every attempt
/// shares the call's deadline.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 never retries.
    pub max_attempts: u32,
    /// The pause after the first failed attempt.
    pub initial_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
    /// Each pause is the previous one times this (at least 1).
    pub multiplier: f64,
    /// Each pause varies by up to this fraction either way (0 to 1).
    pub jitter: f64,
    /// Whether an overload with `RetryInfo` is retried after the asked delay.
    pub honour_retry_info: bool,
    /// The longest `RetryInfo` delay honoured.
    pub max_retry_info_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 0.2 s doubling up to 5 s, 20 % jitter, overloads not retried.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            honour_retry_info: false,
            max_retry_info_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries (Python's `NO_RETRY`).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The pause after failed attempt number `attempt` (from 1), with jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = (self.initial_backoff.as_secs_f64() * self.multiplier.max(1.0).powi(exponent))
            .min(self.max_backoff.as_secs_f64());
        let spread = base * self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64((base + spread * (2.0 * unit_random() - 1.0)).max(0.0))
    }

    /// The pause before retrying after `attempt` failed with `error`, or
    /// `None` to give up.
    pub fn delay(&self, error: &Error, kind: CallKind, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        match error.code() {
            Code::Unavailable => {
                let refused = error.reason().is_none_or(|r| REFUSED_REASONS.contains(&r));
                (kind != CallKind::Generate || refused).then(|| self.backoff(attempt))
            }
            Code::ResourceExhausted if self.honour_retry_info => error
                .retry_delay()
                .map(|delay| delay.min(self.max_retry_info_delay)),
            _ => None,
        }
    }
}

/// A number in [0, 1) from the standard library's per-process random keys.
fn unit_random() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    fn error(code: Code, reason: &str, retry_delay: Option<Duration>) -> Error {
        let mut details = ErrorDetails::new();
        if !reason.is_empty() {
            details = ErrorDetails::with_error_info(reason, "ananke.dev", []);
        }
        details.set_retry_info(retry_delay);
        Error::from(tonic::Status::with_error_details(code, "x", details))
    }

    #[test]
    fn decisions_match_the_python_client() {
        let fast = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let delay = Some(Duration::from_millis(500));
        let cases = [
            (CallKind::Idempotent, Code::Unavailable, "", true),
            (
                CallKind::Idempotent,
                Code::Unavailable,
                "ENGINE_UNAVAILABLE",
                true,
            ),
            (
                CallKind::StreamStart,
                Code::Unavailable,
                "ENGINE_UNAVAILABLE",
                true,
            ),
            (CallKind::Generate, Code::Unavailable, "", true),
            (CallKind::Generate, Code::Unavailable, "NOT_READY", true),
            (CallKind::Generate, Code::Unavailable, "SHUTTING_DOWN", true),
            (
                CallKind::Generate,
                Code::Unavailable,
                "ENGINE_UNAVAILABLE",
                false,
            ),
            (
                CallKind::Idempotent,
                Code::InvalidArgument,
                "PROMPT_EMPTY",
                false,
            ),
            (CallKind::Idempotent, Code::DeadlineExceeded, "", false),
            (
                CallKind::Idempotent,
                Code::Internal,
                "INTERNAL_ERROR",
                false,
            ),
            (
                CallKind::Idempotent,
                Code::ResourceExhausted,
                "OVERLOADED",
                false,
            ),
        ];
        for (kind, code, reason, retried) in cases {
            let got = fast.delay(&error(code, reason, delay), kind, 1);
            assert_eq!(got.is_some(), retried, "{kind:?} {code:?} {reason}");
        }
    }

    #[test]
    fn retry_info_only_when_opted_in_and_attempts_bounded() {
        let overloaded = error(
            Code::ResourceExhausted,
            "OVERLOADED",
            Some(Duration::from_millis(500)),
        );
        assert_eq!(
            RetryPolicy::default().delay(&overloaded, CallKind::Generate, 1),
            None
        );
        let opted = RetryPolicy {
            honour_retry_info: true,
            max_retry_info_delay: Duration::from_millis(250),
            ..RetryPolicy::default()
        };
        assert_eq!(
            opted.delay(&overloaded, CallKind::Generate, 1),
            Some(Duration::from_millis(250))
        );
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let down = error(Code::Unavailable, "", None);
        assert_eq!(
            policy.delay(&down, CallKind::Idempotent, 1),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            policy.delay(&down, CallKind::Idempotent, 2),
            Some(Duration::from_secs(2))
        );
        assert_eq!(policy.delay(&down, CallKind::Idempotent, 3), None);
        assert_eq!(policy.backoff(5), Duration::from_secs(3));
        assert_eq!(
            RetryPolicy::none().delay(&down, CallKind::Idempotent, 1),
            None
        );
        let jittered = RetryPolicy::default().backoff(1);
        assert!(jittered >= Duration::from_millis(160) && jittered <= Duration::from_millis(240));
    }
}
