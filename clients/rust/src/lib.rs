//! Rust client for Ananke, constrained code generation over gRPC
//! (`ananke.v1.InferenceService`).
//!
//! ```no_run
//! use ananke_client::{Client, ClientOptions, GenerationEvent, constraint};
//! use ananke_client::pb::GenerationRequest;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), ananke_client::Error> {
//! let client = Client::connect_with(
//!     "http://127.0.0.1:50051",
//!     ClientOptions::new().timeout(Duration::from_secs(60)),
//! )
//! .await?;
//! let request = GenerationRequest::from_prompt("A user as JSON: ")
//!     .with_constraint(constraint::json_schema(r#"{"type": "object"}"#))
//!     .with_max_tokens(64);
//! let mut stream = client.generate_stream(request).await?;
//! while let Some(event) = stream.message().await? {
//!     if let GenerationEvent::Chunk(chunk) = event {
//!         print!("{}", chunk.text);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Dropping a [`GenerationStream`] cancels the call; the server aborts the
//! generation. Every failure is an [`Error`], which exposes the gRPC code, the
//! message and the server's `ErrorInfo` reason and field violations.
//!
//! With the `ffi` feature the crate also exports a C ABI (see [`ffi`] and
//! `include/ananke.h`) for Zig and C callers.

mod client;
pub mod constraint;
mod error;
mod request;
mod result;
mod retry;
mod stream;

#[cfg(feature = "ffi")]
pub mod ffi;

/// Generated `ananke.v1` messages and the tonic client (code generated from
/// `proto/ananke/v1/*.proto` at build time). Messages implement serde's
/// `Serialize`/`Deserialize` with the canonical proto3 JSON mapping.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("ananke.v1");
    include!(concat!(env!("OUT_DIR"), "/ananke.v1.serde.rs"));
}

pub use client::{AuthenticatedChannel, CallInterceptor, Client, ClientOptions};
pub use error::{Error, FieldViolation, Result};
pub use result::GenerationResult;
pub use retry::{CallKind, RetryPolicy};
pub use stream::{GenerationEvent, GenerationStream};
pub use tonic::Code;
pub use tonic_health::pb::health_check_response::ServingStatus;
