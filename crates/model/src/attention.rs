//! Causal multi-head self-attention.
//!
//! Each position asks a question (its query), every position offers an
//! answer key and a value; a position's output is the average of the values,
//! weighted by how well its query matches each key. "Causal": position t may
//! only look at positions ≤ t, so the model can be trained to predict the next
//! token at every position at once without peeking at it.
//!
//! Two ways to compute it, with the same result (tested): the formula
//! written out step by step ([`MultiHeadAttention::plain_attention`], the
//! one to read), and one fused kernel (`kernels::causal_attention`), which
//! training uses because it is faster.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Bool, FloatDType, Int, Tensor};
use kernels::Backend;

use crate::config::GptConfig;
use crate::init;
use crate::kv_cache::LayerCache;
use crate::lora::layer::LoraLinear;
use crate::precision::full;

#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    /// Query projection, weight `[d_model, d_model]` (all heads side by side).
    /// Each projection is a `LoraLinear`: a plain `Linear` unless LoRA attaches an adapter.
    pub query: LoraLinear<B>,
    /// Key projection, weight `[d_model, d_model]`.
    pub key: LoraLinear<B>,
    /// Value projection, weight `[d_model, d_model]`.
    pub value: LoraLinear<B>,
    /// Mixes the heads' outputs back into the residual stream, `[d_model, d_model]`.
    pub out_proj: LoraLinear<B>,
    /// Dropout on the attention weights (written-out path only: the kernel has none).
    attn_dropout: Dropout,
    /// Dropout on the output before it joins the residual stream.
    resid_dropout: Dropout,
    n_heads: usize,
    /// Use the fused kernel when it applies (`ComputeConfig::fused_attention`).
    pub(crate) fused: bool,
}

impl<B: Backend> MultiHeadAttention<B> {
    pub fn new(cfg: &GptConfig, device: &B::Device) -> Self {
        let d = cfg.d_model;
        let std = init::INIT_STD;
        Self {
            query: LoraLinear::new(init::linear(d, d, cfg.qkv_bias, std, device)),
            key: LoraLinear::new(init::linear(d, d, cfg.qkv_bias, std, device)),
            value: LoraLinear::new(init::linear(d, d, cfg.qkv_bias, std, device)),
            out_proj: LoraLinear::new(init::linear(d, d, true, init::residual_std(cfg.n_layers), device)),
            attn_dropout: DropoutConfig::new(cfg.dropout).init(),
            resid_dropout: DropoutConfig::new(cfg.dropout).init(),
            n_heads: cfg.n_heads,
            fused: true,
        }
    }

    /// `x [batch·seq, d_model]` (sequence after sequence) → `[batch·seq, d_model]`.
    /// With a cache, `x` holds only the new positions, and the keys and
    /// values of earlier ones come from (and are appended to) the cache.
    pub fn forward(&self, x: Tensor<B, 2>, batch: usize, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 2> {
        let queries = self.query.forward(x.clone()); // [batch·seq, d_model]: every head side by side
        let keys = self.key.forward(x.clone());
        let values = self.value.forward(x);
        let context = match cache {
            // One kernel call, which reads each head's columns in place.
            None if self.fused => kernels::causal_attention(queries, keys, values, batch, self.n_heads),
            cache => self.plain_attention(queries, keys, values, batch, cache),
        }; // [batch·seq, d_model]
        self.resid_dropout.forward(self.out_proj.forward(context))
    }

    /// softmax(Q·Kᵀ/√head_dim + mask)·V, written out step by step.
    /// `queries, keys, values [batch·seq, d_model]` → `[batch·seq, d_model]`.
    /// With a cache, the keys and values of earlier positions are put in
    /// front of these, so there are more keys than queries.
    pub fn plain_attention(
        &self,
        queries: Tensor<B, 2>,
        keys: Tensor<B, 2>,
        values: Tensor<B, 2>,
        batch: usize,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 2> {
        let ([rows, d_model], device) = (queries.dims(), queries.device());
        let (seq, heads) = (rows / batch, self.n_heads);
        let head_dim = d_model / heads;
        // [batch·seq, d_model] → [batch, seq, heads, head_dim] → [batch, heads, seq, head_dim]
        let split = |t: Tensor<B, 2>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let (queries, keys, values) = (split(queries), split(keys), split(values));
        // With a cache: [batch, heads, past + seq, head_dim].
        let (keys, values) = match cache {
            Some(cache) => cache.append(keys, values),
            None => (keys, values),
        };
        let n_keys = keys.dims()[2];
        // [b, h, seq, hd] · [b, h, hd, n_keys] → [b, h, seq, n_keys]: one score per (query, key) pair.
        let scores = queries.matmul(keys.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        // Dividing by √head_dim keeps the scores' variance near 1 whatever the
        // head width, so softmax does not saturate into a one-hot at init.
        // Adding -inf hides the future: exp(-inf) = 0 in the softmax. The
        // bias is [1, 1, seq, n_keys] and broadcasts over batch and heads.
        // The mask and the softmax run in f32 whatever the products' precision
        // (see `model::precision`); the weights go back to V's for the product.
        let scores = full(scores) + causal_bias::<B>(seq, n_keys, &device);
        let attn_weights = self.attn_dropout.forward(kernels::softmax(scores)); // each row sums to 1
        let attn_weights = attn_weights.cast(FloatDType::from(values.dtype()));
        let context = attn_weights.matmul(values); // [b, h, seq, n_keys] · [b, h, n_keys, hd] → [b, h, seq, hd]
        // [batch, heads, seq, head_dim] → [batch, seq, heads, head_dim] → [batch·seq, d_model]
        context.swap_dims(1, 2).reshape([rows, d_model])
    }
}

/// `[1, 1, n_q, n_k]`: -inf where key j is in the future of query i, else 0.
pub fn causal_bias<B: Backend>(n_q: usize, n_k: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::zeros([1, 1, n_q, n_k], device).mask_fill(causal_mask::<B>(n_q, n_k, device), f32::NEG_INFINITY)
}

/// `[1, 1, n_q, n_k]`, true where key j is in the future of query i.
/// Query i sits at absolute position (n_k - n_q) + i: with a KV cache the
/// queries are the last n_q of the n_k positions.
pub fn causal_mask<B: Backend>(n_q: usize, n_k: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
    let offset = (n_k - n_q) as i64;
    let rows = Tensor::<B, 1, Int>::arange(offset..offset + n_q as i64, device).reshape([n_q, 1]);
    let cols = Tensor::<B, 1, Int>::arange(0..n_k as i64, device).reshape([1, n_k]);
    // [1, n_k] > [n_q, 1] broadcasts to [n_q, n_k].
    cols.greater(rows).reshape([1, 1, n_q, n_k])
}
