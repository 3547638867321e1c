//! Dense embeddings from an OpenAI-compatible `/embeddings` endpoint (OpenAI,
//! vLLM, Ollama, TEI), batched, with the same timeouts and retries as the chat
//! providers.

use crate::http::{ProviderBase, json_body};
use async_trait::async_trait;
use cairn_core::config::LlmConfig;
use cairn_core::ports::{DenseEmbedder, EmbedError};
use reqwest::header::AUTHORIZATION;
use serde_json::json;

/// Texts per request.
pub const DEFAULT_BATCH: usize = 64;

/// An OpenAI-compatible embedder.
pub struct OpenAiEmbedder {
    /// Client, headers and model, shared with the chat providers.
    base: ProviderBase,
    url: String,
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
        let auth = api_key.map(|k| (AUTHORIZATION, format!("Bearer {k}")));
        let mut e = Self {
            base: ProviderBase::new(transport, model.to_owned(), auth, &[])
                .map_err(|e| EmbedError(e.to_string()))?,
            url: format!("{}/embeddings", base_url.trim_end_matches('/')),
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
        let body = json!({ "model": self.base.model, "input": texts });
        let resp = self
            .base
            .http
            .post_json(&self.url, &self.base.headers, &body)
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
        &self.base.model
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
