//! The HTTP plumbing shared by the provider adapters: one `reqwest` client with
//! connect and request timeouts, retries with exponential backoff on 429, 5xx and
//! transport errors, and Server-Sent Event decoding for streamed answers.

use backon::{ExponentialBuilder, Retryable};
use cairn_core::config::LlmConfig;
use cairn_core::ports::ModelError;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::time::Duration;

/// A provider HTTP client.
#[derive(Clone)]
pub struct ProviderClient {
    client: reqwest::Client,
    max_retries: usize,
    base_delay: Duration,
}

/// Longest part of an error body kept in an error message.
const MAX_ERROR_BODY: usize = 512;

fn retryable(e: &ModelError) -> bool {
    match e {
        ModelError::Http { status, .. } => *status == 429 || *status >= 500,
        ModelError::Transport(_) => true,
        _ => false,
    }
}

impl ProviderClient {
    /// A client with the timeouts and retry policy of `config`.
    pub fn new(config: &LlmConfig) -> Result<Self, ModelError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ModelError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            client,
            max_retries: config.max_retries,
            base_delay: config.retry_base_delay,
        })
    }

    /// POSTs `body` as JSON and returns the successful response; retries what is
    /// worth retrying.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<reqwest::Response, ModelError> {
        let attempt = || async {
            let resp = self
                .client
                .post(url)
                .headers(headers.clone())
                .json(body)
                .send()
                .await
                .map_err(|e| ModelError::Transport(e.without_url().to_string()))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let mut text = resp.text().await.unwrap_or_default();
            if text.len() > MAX_ERROR_BODY {
                let mut cut = MAX_ERROR_BODY;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            Err(ModelError::Http {
                status: status.as_u16(),
                body: text,
            })
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.base_delay)
                    .with_max_delay(self.base_delay * 16)
                    .with_max_times(self.max_retries)
                    .with_jitter(),
            )
            .when(retryable)
            .notify(|e, delay| tracing::warn!(error = %e, ?delay, "model call failed; retrying"))
            .await
    }
}

/// Installs ring as rustls' process-wide crypto provider (idempotent). reqwest is
/// built without a bundled provider so that no C toolchain beyond `cc` is needed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads JSON as the body of a non-streamed response.
pub async fn json_body(resp: reqwest::Response) -> Result<Value, ModelError> {
    resp.json::<Value>()
        .await
        .map_err(|e| ModelError::Protocol(format!("response is not JSON: {e}")))
}

/// One Server-Sent Event of a streamed response.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `event:` name (empty when absent).
    pub event: String,
    /// The `data:` payload.
    pub data: String,
}

/// Decodes a streamed response into its events.
pub fn sse_events(
    resp: reqwest::Response,
) -> impl Stream<Item = Result<SseEvent, ModelError>> + Send + Unpin {
    resp.bytes_stream().eventsource().map(|r| {
        r.map(|e| SseEvent {
            event: e.event,
            data: e.data,
        })
        .map_err(|e| ModelError::Transport(format!("stream interrupted: {e}")))
    })
}

/// Parses the JSON payload of an event.
pub fn event_json(e: &SseEvent) -> Result<Value, ModelError> {
    serde_json::from_str(&e.data)
        .map_err(|err| ModelError::Protocol(format!("stream event is not JSON: {err}")))
}

/// Parses tool-call arguments the model produced as a JSON string. Models
/// sometimes send an empty string for "no arguments".
pub fn parse_arguments(raw: &str) -> Result<Value, ModelError> {
    if raw.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(raw)
        .map_err(|e| ModelError::Protocol(format!("tool arguments are not JSON: {e}")))
}
