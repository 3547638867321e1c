//! Dense embeddings from an OpenAI-compatible `/embeddings` endpoint (OpenAI,
//! vLLM, Ollama, TEI), batched, with the same timeouts and retries as the chat
//! providers.

use crate::http::{ProviderClient, json_body};
use async_trait::async_trait;
use cairn_core::config::LlmConfig;
use cairn_core::ports::{DenseEmbedder, EmbedError};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::json;

/// Texts per request.
pub const DEFAULT_BATCH: usize = 64;

/// An OpenAI-compatible embedder.
pub struct OpenAiEmbedder {
    http: ProviderClient,
    url: String,
    headers: HeaderMap,
    model: String,
    batch: usize,
    dimension: usize,
}

impl OpenAiEmbedder {
    /// An embedder at `base_url` (e.g. `https://api.openai.com/v1`). The vector
    /// size is learned with one request, so a wrong URL or model fails at start-up.
    pub async fn connect(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        batch: usize,
        transport: &LlmConfig,
    ) -> Result<Self, EmbedError> {
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| EmbedError("the API key is not a valid header value".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut e = Self {
            http: ProviderClient::new(transport).map_err(|e| EmbedError(e.to_string()))?,
            url: format!("{}/embeddings", base_url.trim_end_matches('/')),
            headers,
            model: model.to_owned(),
            batch: batch.max(1),
            dimension: 0,
        };
        let probe = e.request(&["dimension probe".to_owned()]).await?;
        e.dimension = probe.first().map_or(0, Vec::len);
        if e.dimension == 0 {
            return Err(EmbedError(
                "the endpoint returned an empty embedding".into(),
            ));
        }
        Ok(e)
    }

    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = json!({ "model": self.model, "input": texts });
        let resp = self
            .http
            .post_json(&self.url, &self.headers, &body)
            .await
            .map_err(|e| EmbedError(e.to_string()))?;
        let v = json_body(resp)
            .await
            .map_err(|e| EmbedError(e.to_string()))?;
        let data = v["data"]
            .as_array()
            .ok_or_else(|| EmbedError("no `data` in the embeddings response".into()))?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (i, item) in data.iter().enumerate() {
            let index = item["index"].as_u64().map_or(i, |n| n as usize);
            let vector: Vec<f32> = item["embedding"]
                .as_array()
                .ok_or_else(|| EmbedError("an item has no `embedding` array".into()))?
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                .collect();
            if let Some(slot) = out.get_mut(index) {
                *slot = Some(vector);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| EmbedError(format!("no embedding for input {i}"))))
            .collect()
    }
}

#[async_trait]
impl DenseEmbedder for OpenAiEmbedder {
    fn name(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch) {
            let got = self.request(batch).await?;
            if got.iter().any(|v| v.len() != self.dimension) {
                return Err(EmbedError(format!(
                    "the endpoint changed its vector size (expected {})",
                    self.dimension
                )));
            }
            out.extend(got);
        }
        Ok(out)
    }
}
