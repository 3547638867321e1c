//! The HTTP plumbing shared by the provider adapters: one `reqwest` client with
//! connect and request timeouts, retries with exponential backoff on 429, 5xx and
//! transport errors, and Server-Sent Event decoding for streamed answers.

use crate::names::ToolNames;
use backon::{ExponentialBuilder, Retryable};
use cairn_core::config::LlmConfig;
use cairn_core::ports::ModelError;
use cairn_core::ports::{ChatRequest, ChatResponse, DeltaSender};
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use std::time::Duration;

/// A provider HTTP client.
#[derive(Clone)]
pub struct ProviderClient {
    client: reqwest::Client,
    max_retries: usize,
    base_delay: Duration,
    throttle: std::sync::Arc<crate::throttle::Throttle>,
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
            throttle: crate::throttle::Throttle::new(config.max_concurrency),
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
            // The permit covers sending and the response head; a streamed body
            // is read after it is released.
            let permit = self.throttle.acquire().await;
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
                self.throttle.on_success();
                return Ok(resp);
            }
            if status.as_u16() == 429 {
                self.throttle
                    .on_throttled(crate::throttle::retry_after(resp.headers()));
            }
            drop(permit);
            let mut text = redact(resp.text().await.unwrap_or_default(), headers);
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

/// Removes the request's credentials (header values, with or without a
/// `Bearer ` prefix) from a provider's error body before it is logged:
/// providers echo rejected keys back.
fn redact(mut body: String, headers: &HeaderMap) -> String {
    for value in headers.values() {
        let Ok(v) = value.to_str() else { continue };
        for secret in [v, v.strip_prefix("Bearer ").unwrap_or(v)] {
            if secret.len() >= 8 {
                body = body.replace(secret, "<redacted>");
            }
        }
    }
    body
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

/// What every HTTP provider keeps: its client, headers, model and generation
/// settings.
pub struct ProviderBase {
    /// The HTTP client with timeouts and retries.
    pub http: ProviderClient,
    /// Headers sent with every request (the API key is marked sensitive).
    pub headers: HeaderMap,
    /// Model name.
    pub model: String,
    /// Whether to stream when the caller wants deltas.
    pub stream: bool,
    /// `llm.max_tokens`.
    pub max_tokens: u32,
    /// `llm.temperature`.
    pub temperature: Option<f32>,
}

/// A request on its way: the tool-name mapping, whether the answer streams, the
/// response, and the response value to fill in.
pub struct Started {
    /// Catalog ↔ wire tool names for this request.
    pub names: ToolNames,
    /// True when the response is a Server-Sent Event stream.
    pub stream: bool,
    /// The HTTP response (status already checked).
    pub resp: reqwest::Response,
    /// An empty response carrying the provider metadata.
    pub out: ChatResponse,
}

impl ProviderBase {
    /// The settings of `config`, with `auth` (header name and value) when a key is set.
    pub fn new(
        config: &LlmConfig,
        model: String,
        auth: Option<(HeaderName, String)>,
        extra: &[(&'static str, &'static str)],
    ) -> Result<Self, ModelError> {
        let mut headers = HeaderMap::new();
        for (k, v) in extra {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        if let Some((name, value)) = auth {
            let mut v = HeaderValue::from_str(&value).map_err(|_| {
                ModelError::Config("the API key is not a valid header value".into())
            })?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        Ok(Self {
            http: ProviderClient::new(config)?,
            headers,
            model,
            stream: config.stream,
            max_tokens: config.max_tokens,
            temperature: config.temperature,
        })
    }

    /// True when this call streams (configured, and the caller takes deltas).
    pub fn streams(&self, deltas: Option<&DeltaSender>) -> bool {
        self.stream && deltas.is_some()
    }

    /// Builds the body with `body(names, stream)`, sends it to `url`, and returns
    /// the started request.
    pub async fn send(
        &self,
        provider: &str,
        url: &str,
        req: &ChatRequest,
        deltas: Option<&DeltaSender>,
        body: impl FnOnce(&ToolNames, bool) -> Value,
    ) -> Result<Started, ModelError> {
        let names = ToolNames::new(&req.tools);
        let stream = self.streams(deltas);
        let resp = self
            .http
            .post_json(url, &self.headers, &body(&names, stream))
            .await?;
        let out = ChatResponse {
            metadata: serde_json::json!({"provider": provider, "model": self.model}),
            ..Default::default()
        };
        Ok(Started {
            names,
            stream,
            resp,
            out,
        })
    }
}
