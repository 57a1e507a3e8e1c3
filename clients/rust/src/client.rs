//! The typed client.

use std::time::{Duration, Instant};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{Error, Result};
use crate::pb::inference_service_client::InferenceServiceClient;
use crate::pb::{
    ConstraintIr, GenerateRequest, GenerateResponse, GenerateStreamRequest, GenerationRequest,
    GetModelInfoRequest, GetModelInfoResponse, GetServerStatsRequest, GetServerStatsResponse,
    ValidateConstraintsRequest, ValidateConstraintsResponse,
};
use crate::stream::GenerationStream;

/// How a [`Client`] connects and calls.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    api_key: Option<String>,
}

impl ClientOptions {
    /// Defaults: no call deadline, no connect timeout, no API key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deadline of every call (sent as `grpc-timeout`; for a stream it covers
    /// the whole stream). The server aborts the generation when it passes.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Longest wait for the connection to open.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// API key, sent as `authorization: Bearer <key>` on every call.
    #[must_use]
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }
}

/// A client of `ananke.v1.InferenceService` and `grpc.health.v1.Health`.
///
/// Cheap to clone; clones share one HTTP/2 connection. `https://` addresses
/// need the crate's `tls` feature.
#[derive(Clone, Debug)]
pub struct Client {
    inference: InferenceServiceClient<Channel>,
    health: HealthClient<Channel>,
    timeout: Option<Duration>,
    authorization: Option<AsciiMetadataValue>,
}

impl Client {
    /// Connects to `addr` (for example `http://127.0.0.1:50051`) with default
    /// options.
    pub async fn connect(addr: impl Into<String>) -> Result<Self> {
        Self::connect_with(addr, ClientOptions::default()).await
    }

    /// Connects to `addr` with `options`; fails when the server cannot be
    /// reached.
    pub async fn connect_with(addr: impl Into<String>, options: ClientOptions) -> Result<Self> {
        let endpoint = endpoint(addr.into(), &options)?;
        let channel = endpoint.connect().await.map_err(Error::transport)?;
        Self::from_channel(channel, options)
    }

    /// Like [`Self::connect_with`] but connects on the first call. Must be
    /// called inside a Tokio runtime.
    pub fn connect_lazy(addr: impl Into<String>, options: ClientOptions) -> Result<Self> {
        let endpoint = endpoint(addr.into(), &options)?;
        Self::from_channel(endpoint.connect_lazy(), options)
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel, options: ClientOptions) -> Result<Self> {
        let authorization = options
            .api_key
            .as_deref()
            .map(|key| {
                MetadataValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| Error::invalid_argument("API key is not a valid header value"))
            })
            .transpose()?;
        Ok(Self {
            inference: InferenceServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            timeout: options.timeout,
            authorization,
        })
    }

    /// A clone that uses `timeout` as the deadline of its calls (`None`: no
    /// deadline).
    #[must_use]
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// When a call starting now must end, if it has a deadline.
    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|timeout| Instant::now() + timeout)
    }

    /// Wraps `message` with the deadline and the API key.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        request
    }

    /// Generates under constraints and returns the whole output.
    pub async fn generate(&self, request: GenerationRequest) -> Result<GenerateResponse> {
        let deadline = self.deadline();
        let request = self.request(GenerateRequest {
            request: Some(request),
        });
        let response = self.inference.clone().generate(request).await;
        unary(response, deadline)
    }

    /// Generates under constraints and streams the output as it is produced.
    /// Errors found before generation starts (a bad constraint, overload)
    /// are returned here or as the stream's first item. Dropping the stream
    /// cancels the generation.
    pub async fn generate_stream(&self, request: GenerationRequest) -> Result<GenerationStream> {
        let deadline = self.deadline();
        let request = self.request(GenerateStreamRequest {
            request: Some(request),
        });
        let response = self.inference.clone().generate_stream(request).await;
        let stream = unary(response, deadline)?;
        Ok(GenerationStream::new(stream, deadline))
    }

    /// Compiles constraints without generating.
    pub async fn validate_constraints(
        &self,
        constraints: impl IntoIterator<Item = ConstraintIr>,
    ) -> Result<ValidateConstraintsResponse> {
        let deadline = self.deadline();
        let request = self.request(ValidateConstraintsRequest {
            constraints: constraints.into_iter().collect(),
        });
        let response = self.inference.clone().validate_constraints(request).await;
        unary(response, deadline)
    }

    /// Describes the model, the engine and the limits.
    pub async fn model_info(&self) -> Result<GetModelInfoResponse> {
        let deadline = self.deadline();
        let request = self.request(GetModelInfoRequest {});
        let response = self.inference.clone().get_model_info(request).await;
        unary(response, deadline)
    }

    /// Reports the server's load, compile cache and generation counters.
    pub async fn server_stats(&self) -> Result<GetServerStatsResponse> {
        let deadline = self.deadline();
        let request = self.request(GetServerStatsRequest {});
        let response = self.inference.clone().get_server_stats(request).await;
        unary(response, deadline)
    }

    /// `grpc.health.v1.Health/Check` of `service`: `""` for the server as a
    /// whole, or `"ananke.v1.InferenceService"`.
    pub async fn health(&self, service: &str) -> Result<ServingStatus> {
        let deadline = self.deadline();
        let request = self.request(HealthCheckRequest {
            service: service.to_owned(),
        });
        let response = self.health.clone().check(request).await;
        Ok(unary(response, deadline)?.status())
    }

    /// The generated tonic client, for calls this wrapper does not cover.
    pub fn inference_client(&self) -> InferenceServiceClient<Channel> {
        self.inference.clone()
    }
}

/// The message of a call's response, or its error.
fn unary<T>(
    response: std::result::Result<tonic::Response<T>, tonic::Status>,
    deadline: Option<Instant>,
) -> Result<T> {
    response
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::from_call_status(status, deadline))
}

/// The endpoint for `addr` with the options that apply at connect time.
fn endpoint(addr: String, options: &ClientOptions) -> Result<Endpoint> {
    let https = addr.starts_with("https://");
    let mut endpoint = Endpoint::from_shared(addr)
        .map_err(|e| Error::invalid_argument(format!("invalid address: {e}")))?;
    if let Some(timeout) = options.connect_timeout {
        endpoint = endpoint.connect_timeout(timeout);
    }
    if https {
        endpoint = tls(endpoint)?;
    }
    Ok(endpoint)
}

#[cfg(feature = "tls")]
fn tls(endpoint: Endpoint) -> Result<Endpoint> {
    let config = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
    endpoint.tls_config(config).map_err(Error::transport)
}

#[cfg(not(feature = "tls"))]
fn tls(_endpoint: Endpoint) -> Result<Endpoint> {
    Err(Error::invalid_argument(
        "https:// needs ananke-client built with the `tls` feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_bad_addresses_and_keys() {
        let err = Client::connect_lazy("not a uri", ClientOptions::new()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let err = Client::connect_lazy("http://127.0.0.1:1", ClientOptions::new().api_key("a\nb"))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn sets_deadline_and_authorization() {
        let client = Client::connect_lazy(
            "http://127.0.0.1:1",
            ClientOptions::new()
                .api_key("s3cret")
                .timeout(Duration::from_millis(1500)),
        )
        .expect("lazy client");
        let request = client.request(());
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "1500000u");

        let request = client.with_timeout(None).request(());
        assert!(request.metadata().get("grpc-timeout").is_none());
    }

    #[tokio::test]
    async fn https_needs_the_tls_feature() {
        let made = Client::connect_lazy("https://ananke.example:443", ClientOptions::new());
        if cfg!(feature = "tls") {
            made.expect("TLS client");
        } else {
            assert_eq!(made.unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        let err = Client::connect_with(
            "http://127.0.0.1:1",
            ClientOptions::new().connect_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
}
