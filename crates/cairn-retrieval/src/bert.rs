//! The BERT encoder for [`crate::minilm`]: candle-transformers' `BertModel`
//! (Apache-2.0/MIT) cut down to what inference with all-MiniLM-L6-v2 uses, with
//! one change — the exact GELU of the feed-forward layers runs as a vectorised
//! rational approximation of `erf` instead of candle's scalar one.
//!
//! candle's `gelu_erf` calls a branchy scalar `erf` per element: 12% of an
//! embedding's time on Zen 4 (BENCHMARKS.md, "Speed"). [`gelu_erf`] is a
//! straight-line rational function of `x²` (Eigen's single-precision `erf`, max
//! error 6.5e-8 against `math.erf`), compiled for the CPU's widest vectors at run
//! time through `pulp` (AVX-512 where the CPU has it, else the SSE2 baseline every
//! x86-64 has), so every machine runs it.
//! Weights, tensor names and every other operation are candle-transformers' own.

use candle_core::{CpuStorage, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use candle_transformers::models::bert::{Config, HiddenAct};

struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        Ok(Self {
            words: embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            positions: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_types: embedding(
                c.type_vocab_size,
                c.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, ids: &Tensor, types: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let xs = (self.words.forward(ids)? + self.token_types.forward(types)?)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        self.norm.forward(&xs)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    act: HiddenAct,
    out: Linear,
    out_norm: LayerNorm,
    heads: usize,
    head_size: usize,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let (h, attn) = (c.hidden_size, vb.pp("attention"));
        Ok(Self {
            query: linear(h, h, attn.pp("self").pp("query"))?,
            key: linear(h, h, attn.pp("self").pp("key"))?,
            value: linear(h, h, attn.pp("self").pp("value"))?,
            attention_out: linear(h, h, attn.pp("output").pp("dense"))?,
            attention_norm: layer_norm(h, c.layer_norm_eps, attn.pp("output").pp("LayerNorm"))?,
            intermediate: linear(h, c.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            act: c.hidden_act,
            out: linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
            head_size: h / c.num_attention_heads,
        })
    }

    /// `(batch, len, hidden)` → `(batch, heads, len, head_size)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, len, _) = xs.dims3()?;
        xs.reshape((b, len, self.heads, self.head_size))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let q = self.split_heads(&self.query.forward(xs)?)?;
        let k = self.split_heads(&self.key.forward(xs)?)?;
        let v = self.split_heads(&self.value.forward(xs)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_size as f64).sqrt())?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .flatten_from(candle_core::D::Minus2)?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context)? + xs)?)?;
        let inner = self.intermediate.forward(&attended)?;
        let inner = match self.act {
            HiddenAct::Gelu => inner.apply_op1_no_bwd(&GeluErf)?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.out_norm
            .forward(&(self.out.forward(&inner)? + attended)?)
    }
}

/// The BERT encoder: embeddings and layers, as candle-transformers loads them.
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Loads the weights (optionally under a `bert.` or `<model_type>.` prefix).
    pub fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let prefixes = ["bert".to_owned()]
            .into_iter()
            .chain(c.model_type.clone())
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")));
        let vb = match prefixes {
            Some(p) => vb.pp(p),
            None => vb,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(vb.pp("encoder").pp(format!("layer.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::load(vb.pp("embeddings"), c)?,
            layers,
        })
    }

    /// `(batch, len)` token ids, token types and attention mask (1 = token,
    /// 0 = padding) → `(batch, len, hidden)`.
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(ids, types)?;
        let dtype = xs.dtype();
        // 0 where there is a token, the dtype's lowest value where there is padding.
        let mask = mask.unsqueeze(1)?.unsqueeze(1)?.to_dtype(dtype)?;
        let mask = ((mask.ones_like()? - &mask)? * f32::MIN as f64)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(xs)
    }
}

/// The exact GELU, `x · (1 + erf(x / √2)) / 2`, on f32 tensors.
struct GeluErf;

impl candle_core::CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "cairn-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(all) = storage else {
            candle_core::bail!("cairn-gelu-erf: f32 tensors only");
        };
        let xs = match layout.contiguous_offsets() {
            Some((start, end)) => &all[start..end],
            None => candle_core::bail!("cairn-gelu-erf: the input must be contiguous"),
        };
        let mut ys = vec![0f32; xs.len()];
        gelu_erf(xs, &mut ys);
        Ok((CpuStorage::F32(ys), layout.shape().clone()))
    }
}

/// `ys[i] = gelu(xs[i])` for the exact GELU, vectorised for the CPU it runs on.
pub fn gelu_erf(xs: &[f32], ys: &mut [f32]) {
    pulp::Arch::new().dispatch(|| {
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// Eigen's single-precision `erf` (`generic_fast_erf_float`): a rational function
/// with no branches, so loops over it vectorise; inputs are clamped to ±4, beyond
/// which `erf` is ±1 in f32. Plain `*` and `+`, not `mul_add`: without FMA in the
/// baseline, `mul_add` would be a libm call per element.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.954_600_1e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf` in f64 by its Maclaurin series (|x| ≤ 3) or its continued fraction
    /// beyond, to 1e-12: the reference the f32 version is held to.
    fn erf_ref(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc(x) = exp(-x²)/(x√π) · 1/(1 + 1/(2x²)/(1 + 2/(2x²)/(1 + …)))
            let (a, z) = (x.abs(), x * x);
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (a + f);
            }
            let erfc = (-z).exp() / std::f64::consts::PI.sqrt() / (a + f);
            return (1.0 - erfc).copysign(x);
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn the_vectorised_gelu_matches_the_exact_one() {
        let xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 / 1000.0).collect();
        let mut ys = vec![0f32; xs.len()];
        gelu_erf(&xs, &mut ys);
        let mut worst = 0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let x = x as f64;
            let exact = 0.5 * x * (1.0 + erf_ref(x / std::f64::consts::SQRT_2));
            // Relative to the value's size, absolute near zero.
            worst = worst.max((y as f64 - exact).abs() / exact.abs().max(1.0));
        }
        // f32 rounding through the rational function: 1.1e-6 at worst (~10 ulp).
        assert!(worst < 2e-6, "largest error {worst}");
        // Odd sizes take the scalar tail: every element is written.
        let mut tail = vec![f32::NAN; 7];
        gelu_erf(&xs[..7], &mut tail);
        assert!(tail.iter().all(|y| y.is_finite()));
    }

    #[test]
    fn agrees_with_candles_gelu_erf_on_a_tensor() {
        let xs: Vec<f32> = (0..1536 * 3)
            .map(|i| (i as f32 * 0.37).sin() * 6.0)
            .collect();
        let t = Tensor::from_vec(xs, (3, 1536), &candle_core::Device::Cpu).unwrap();
        let ours = t.apply_op1_no_bwd(&GeluErf).unwrap();
        let theirs = t.gelu_erf().unwrap();
        let diff = (ours - theirs)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "max difference {diff}");
        assert_eq!(
            candle_core::DType::F32,
            t.apply_op1_no_bwd(&GeluErf).unwrap().dtype(),
            "f32 in, f32 out"
        );
    }
}
