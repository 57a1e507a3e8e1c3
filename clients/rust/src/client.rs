//! The typed client.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::error::{Error, Result};
use crate::pb::inference_service_client::InferenceServiceClient;
use crate::pb::{
    ChatMessage, ConstraintIr, DetokenizeRequest, GenerateRequest, GenerateStreamRequest,
    GenerationRequest, GetModelInfoRequest, GetModelInfoResponse, GetServerStatsRequest,
    GetServerStatsResponse, TokenizeRequest, TokenizeResponse, ValidateConstraintsRequest,
    ValidateConstraintsResponse,
};
use crate::result::GenerationResult;
use crate::retry::{CallKind, RetryPolicy};
use crate::stream::GenerationStream;

mod adapters;

/// How a [`Client`] connects and calls (the Python client's keyword
/// arguments of the same names).
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    api_key: Option<String>,
    retry: Option<RetryPolicy>,
    root_certificates: Option<Vec<u8>>,
    client_certificate: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
}

impl ClientOptions {
    /// Defaults: no call deadline, no connect timeout, no API key, the default
    /// [`RetryPolicy`], the platform's web PKI roots for `https://`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deadline of every call, retries included (sent as `grpc-timeout`; for
    /// a stream it covers the whole stream). The server aborts the generation
    /// when it passes.
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

    /// API key, sent as `authorization: Bearer <key>` on every call of every
    /// stub the client hands out.
    #[must_use]
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// When failed calls are retried ([`RetryPolicy::none`] never retries).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// PEM of the CA(s) that signed the server's certificate, instead of the
    /// web PKI roots (needs the `tls` feature and an `https://` address).
    #[must_use]
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// PEM of the client certificate and of its private key, for servers that
    /// require mutual TLS (needs the `tls` feature and an `https://` address).
    #[must_use]
    pub fn client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_certificate = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The name the server's certificate must carry, when it differs from the
    /// address's host.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    fn wants_tls(&self) -> bool {
        self.root_certificates.is_some()
            || self.client_certificate.is_some()
            || self.server_name.is_some()
    }
}

/// The channel interceptor of every stub a [`Client`] hands out: adds the API
/// key and, unless the request has its own, the client's deadline.
#[derive(Clone, Debug, Default)]
pub struct CallInterceptor {
    authorization: Option<AsciiMetadataValue>,
    timeout: Option<Duration>,
}

impl Interceptor for CallInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        if let Some(timeout) = self.timeout
            && request.metadata().get("grpc-timeout").is_none()
        {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

/// The channel under every stub of a [`Client`]: authenticated, with its deadline.
pub type AuthenticatedChannel = InterceptedService<Channel, CallInterceptor>;

/// A client of `ananke.v1.InferenceService` and `grpc.health.v1.Health`.
///
/// Cheap to clone; clones share one HTTP/2 connection. `https://` addresses
/// need the crate's `tls` feature.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    interceptor: CallInterceptor,
    inference: InferenceServiceClient<AuthenticatedChannel>,
    health: HealthClient<AuthenticatedChannel>,
    retry: RetryPolicy,
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

    /// A client over an existing channel (the connection options of `options`
    /// are not used; the API key, deadline and retry policy are).
    pub fn from_channel(channel: Channel, options: ClientOptions) -> Result<Self> {
        let authorization = options
            .api_key
            .as_deref()
            .map(|key| {
                MetadataValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| Error::invalid_argument("API key is not a valid header value"))
            })
            .transpose()?;
        let interceptor = CallInterceptor {
            authorization,
            timeout: options.timeout,
        };
        Ok(Self::with_interceptor(
            channel,
            interceptor,
            options.retry.unwrap_or_default(),
        ))
    }

    fn with_interceptor(
        channel: Channel,
        interceptor: CallInterceptor,
        retry: RetryPolicy,
    ) -> Self {
        let intercepted = InterceptedService::new(channel.clone(), interceptor.clone());
        Self {
            inference: InferenceServiceClient::new(intercepted.clone()),
            health: HealthClient::new(intercepted),
            channel,
            interceptor,
            retry,
        }
    }

    /// A clone that uses `timeout` as the deadline of its calls (`None`: no
    /// deadline).
    #[must_use]
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Self {
        let interceptor = CallInterceptor {
            timeout,
            ..self.interceptor.clone()
        };
        Self::with_interceptor(self.channel.clone(), interceptor, self.retry.clone())
    }

    /// A clone with another retry policy.
    #[must_use]
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        Self {
            retry,
            ..self.clone()
        }
    }

    /// One unary call: each attempt gets the time left of the call's deadline;
    /// failures are retried under the retry policy for `kind`.
    async fn call<M, T, F, Fut>(&self, kind: CallKind, message: M, mut send: F) -> Result<T>
    where
        M: Clone,
        F: FnMut(tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = self.interceptor.timeout.map(|t| Instant::now() + t);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = tonic::Request::new(message.clone());
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::deadline_exceeded());
                }
                request.set_timeout(left);
            }
            let status = match send(request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let error = Error::from_call_status(status, deadline);
            match self.retry.delay(&error, kind, attempt) {
                Some(delay) if deadline.is_none_or(|d| Instant::now() + delay < d) => {
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(error),
            }
        }
    }

    /// Generates under constraints and returns the whole output.
    pub async fn generate(&self, request: GenerationRequest) -> Result<GenerationResult> {
        let message = GenerateRequest {
            request: Some(request),
        };
        let inference = &self.inference;
        let response = self
            .call(CallKind::Generate, message, |r| {
                let mut stub = inference.clone();
                async move { stub.generate(r).await }
            })
            .await?;
        Ok(GenerationResult::from_response(response))
    }

    /// Generates under constraints and streams the output as it is produced.
    /// Errors found before generation starts (a bad constraint, overload)
    /// are returned here or as the stream's first item; opening the stream
    /// is retried as Python's `generate_stream` is before its first token.
    /// Dropping the stream cancels the generation.
    pub async fn generate_stream(&self, request: GenerationRequest) -> Result<GenerationStream> {
        let deadline = self.interceptor.timeout.map(|t| Instant::now() + t);
        let message = GenerateStreamRequest {
            request: Some(request),
        };
        let inference = &self.inference;
        let stream = self
            .call(CallKind::StreamStart, message, |r| {
                let mut stub = inference.clone();
                async move { stub.generate_stream(r).await }
            })
            .await?;
        Ok(GenerationStream::new(stream, deadline))
    }

    /// Compiles constraints without generating.
    pub async fn validate_constraints(
        &self,
        constraints: impl IntoIterator<Item = ConstraintIr>,
    ) -> Result<ValidateConstraintsResponse> {
        let message = ValidateConstraintsRequest {
            constraints: constraints.into_iter().collect(),
        };
        let inference = &self.inference;
        self.call(CallKind::Idempotent, message, |r| {
            let mut stub = inference.clone();
            async move { stub.validate_constraints(r).await }
        })
        .await
    }

    /// Describes the model, the engine and the limits.
    pub async fn model_info(&self) -> Result<GetModelInfoResponse> {
        let inference = &self.inference;
        self.call(CallKind::Idempotent, GetModelInfoRequest {}, |r| {
            let mut stub = inference.clone();
            async move { stub.get_model_info(r).await }
        })
        .await
    }

    /// Reports the server's load, compile cache and generation counters.
    pub async fn server_stats(&self) -> Result<GetServerStatsResponse> {
        let inference = &self.inference;
        self.call(CallKind::Idempotent, GetServerStatsRequest {}, |r| {
            let mut stub = inference.clone();
            async move { stub.get_server_stats(r).await }
        })
        .await
    }

    /// Token ids of `text`, tokenized exactly as a `prompt` of that text
    /// (`return_tokens`: with each token's text and bytes).
    pub async fn tokenize(&self, text: &str, return_tokens: bool) -> Result<TokenizeResponse> {
        self.tokenize_request(TokenizeRequest {
            text: text.to_owned(),
            return_tokens,
            ..TokenizeRequest::default()
        })
        .await
    }

    /// Token ids of chat `messages` rendered with the model's chat template,
    /// exactly as a request with those `messages`.
    pub async fn tokenize_chat(
        &self,
        messages: impl IntoIterator<Item = ChatMessage>,
        return_tokens: bool,
    ) -> Result<TokenizeResponse> {
        self.tokenize_request(TokenizeRequest {
            messages: messages.into_iter().collect(),
            return_tokens,
            ..TokenizeRequest::default()
        })
        .await
    }

    async fn tokenize_request(&self, message: TokenizeRequest) -> Result<TokenizeResponse> {
        let inference = &self.inference;
        self.call(CallKind::Idempotent, message, |r| {
            let mut stub = inference.clone();
            async move { stub.tokenize(r).await }
        })
        .await
    }

    /// The text of `token_ids` (special tokens kept unless
    /// `skip_special_tokens`).
    pub async fn detokenize(
        &self,
        token_ids: impl IntoIterator<Item = u32>,
        skip_special_tokens: bool,
    ) -> Result<String> {
        let inference = &self.inference;
        let request = DetokenizeRequest {
            token_ids: token_ids.into_iter().collect(),
            skip_special_tokens,
        };
        let response = self
            .call(CallKind::Idempotent, request, |r| {
                let mut stub = inference.clone();
                async move { stub.detokenize(r).await }
            })
            .await?;
        Ok(response.text)
    }

    /// `grpc.health.v1.Health/Check` of `service`: `""` for the server as a
    /// whole, or `"ananke.v1.InferenceService"`.
    pub async fn health(&self, service: &str) -> Result<ServingStatus> {
        let message = HealthCheckRequest {
            service: service.to_owned(),
        };
        let health = &self.health;
        let response = self
            .call(CallKind::Idempotent, message, |r| {
                let mut stub = health.clone();
                async move { stub.check(r).await }
            })
            .await?;
        Ok(response.status())
    }

    /// The generated tonic client, for calls this wrapper does not cover; its
    /// calls carry the API key and the deadline too (no retries).
    pub fn inference_client(&self) -> InferenceServiceClient<AuthenticatedChannel> {
        self.inference.clone()
    }

    /// The generated `grpc.health.v1` client, authenticated as
    /// [`Self::inference_client`].
    pub fn health_client(&self) -> HealthClient<AuthenticatedChannel> {
        self.health.clone()
    }
}

/// The endpoint for `addr` with the options that apply at connect time.
fn endpoint(addr: String, options: &ClientOptions) -> Result<Endpoint> {
    let https = addr.starts_with("https://");
    if options.wants_tls() && !https {
        return Err(Error::invalid_argument(
            "root_certificates, client_certificate and server_name need an https:// address",
        ));
    }
    let mut endpoint = Endpoint::from_shared(addr)
        .map_err(|e| Error::invalid_argument(format!("invalid address: {e}")))?;
    if let Some(timeout) = options.connect_timeout {
        endpoint = endpoint.connect_timeout(timeout);
    }
    if https {
        endpoint = tls(endpoint, options)?;
    }
    Ok(endpoint)
}

#[cfg(feature = "tls")]
fn tls(endpoint: Endpoint, options: &ClientOptions) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let mut config = ClientTlsConfig::new();
    config = match &options.root_certificates {
        Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
        None => config.with_webpki_roots(),
    };
    if let Some((certificate, key)) = &options.client_certificate {
        config = config.identity(Identity::from_pem(certificate, key));
    }
    if let Some(name) = &options.server_name {
        config = config.domain_name(name.clone());
    }
    endpoint.tls_config(config).map_err(Error::transport)
}

#[cfg(not(feature = "tls"))]
fn tls(_endpoint: Endpoint, _options: &ClientOptions) -> Result<Endpoint> {
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

        let err = Client::connect_lazy(
            "http://127.0.0.1:1",
            ClientOptions::new().root_certificates("pem"),
        )
        .unwrap_err();
        assert!(err.message().contains("https://"), "{err}");
    }

    #[tokio::test]
    async fn interceptor_sets_deadline_and_authorization() {
        let client = Client::connect_lazy(
            "http://127.0.0.1:1",
            ClientOptions::new()
                .api_key("s3cret")
                .timeout(Duration::from_millis(1500)),
        )
        .expect("lazy client");
        let request = client
            .interceptor
            .clone()
            .call(tonic::Request::new(()))
            .unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "1500000u");

        // A request's own deadline (the time left of a retried call) wins.
        let mut own = tonic::Request::new(());
        own.set_timeout(Duration::from_millis(20));
        let own = client.interceptor.clone().call(own).unwrap();
        assert_eq!(own.metadata().get("grpc-timeout").unwrap(), "20000000n");

        let untimed = client.with_timeout(None);
        let request = untimed
            .interceptor
            .clone()
            .call(tonic::Request::new(()))
            .unwrap();
        assert!(request.metadata().get("grpc-timeout").is_none());
        assert!(request.metadata().get("authorization").is_some());
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
    async fn unreachable_server_is_unavailable_after_retries() {
        let err = Client::connect_with(
            "http://127.0.0.1:1",
            ClientOptions::new().connect_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);

        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let client =
            Client::connect_lazy("http://127.0.0.1:1", ClientOptions::new().retry(policy)).unwrap();
        let started = Instant::now();
        let err = client.model_info().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        // Two pauses (50 ms, 100 ms) between three attempts.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
