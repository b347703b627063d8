//! One layer with LoRA: a linear layer whose frozen weight W gets a
//! trainable low-rank update, y = x·W + b + (alpha/rank)·x·A·B.

use std::str::FromStr;
use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Distribution, Tensor, TensorData};
use kernels::Backend;
use kernels::quant::{QuantFormat, QuantizedMatrix};
use serde::{Deserialize, Serialize};

use crate::precision::Precision;

/// Which linear layers get an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    Out,
    /// MLP expansion (d → 4d).
    Fc,
    /// MLP projection (4d → d).
    Proj,
}

impl FromStr for LoraTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q" => Ok(Self::Q),
            "k" => Ok(Self::K),
            "v" => Ok(Self::V),
            "out" => Ok(Self::Out),
            "fc" => Ok(Self::Fc),
            "proj" => Ok(Self::Proj),
            other => Err(format!("unknown LoRA target `{other}`: expected q, k, v, out, fc or proj")),
        }
    }
}

/// The adapter's shape; saved beside the adapter weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Inner width of A·B. Higher = more expressive update, more parameters.
    pub rank: usize,
    /// The update is scaled by alpha/rank. With Adam, whose steps have about
    /// the same size whatever the gradient's scale, this keeps the size of the
    /// learned update about the same across ranks: tune alpha (or the
    /// learning rate) once, then try ranks freely.
    pub alpha: f64,
    /// Dropout on the adapter's input only.
    pub dropout: f64,
    /// Layers that get an adapter (the LoRA paper's default: q and v).
    pub targets: Vec<LoraTarget>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// The trainable pair of one wrapped layer.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// Down-projection `[d_in, rank]`, Kaiming-uniform.
    pub a: Param<Tensor<B, 2>>,
    /// Up-projection `[rank, d_out]`, zeros.
    pub b: Param<Tensor<B, 2>>,
    dropout: Dropout,
    /// alpha / rank.
    scale: f64,
}

impl<B: Backend> LoraAdapter<B> {
    pub fn new(d_in: usize, d_out: usize, cfg: &LoraConfig, device: &B::Device) -> Self {
        // A: Kaiming-uniform (PyTorch's default for a layer with fan-in
        // d_in), so x·A carries signal from the first step. B: zeros, so A·B
        // = 0 and the wrapped model starts *exactly* equal to the base model;
        // training then grows the update from nothing. (Both zero would leave
        // no gradient for either: ∂/∂A ∝ B and ∂/∂B ∝ x·A.)
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Param::from_tensor(Tensor::random([d_in, cfg.rank], Distribution::Uniform(-bound, bound), device)),
            b: Param::from_tensor(Tensor::zeros([cfg.rank, d_out], device)),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            scale: cfg.scale(),
        }
    }

    /// `[rows, d_in]` → `[rows, d_out]`: (alpha/rank)·x·A·B, the products
    /// in `precision` (`x` already is; A and B are rounded copies).
    pub fn forward(&self, x: Tensor<B, 2>, precision: Precision) -> Tensor<B, 2> {
        let (a, b) = (precision.low(self.a.val()), precision.low(self.b.val()));
        let down = kernels::matmul(self.dropout.forward(x), a); // [rows, d_in]·[d_in, r] → [rows, r]
        kernels::matmul(down, b) * self.scale // [rows, r]·[r, d_out] → [rows, d_out]
    }

    /// ΔW = (alpha/rank)·A·B, `[d_in, d_out]`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }
}

/// A `Linear` that can carry a LoRA adapter: y = x·W + b (+ (alpha/rank)·x·A·B).
/// Without an adapter it is exactly the `Linear`. It dereferences to the
/// wrapped `Linear`, so `layer.weight` reads the base weight.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub base: Linear<B>,
    pub adapter: Option<LoraAdapter<B>>,
    /// The precision of the product (`ComputeConfig::precision`); not saved.
    #[module(skip)]
    pub(crate) precision: Precision,
    /// QLoRA: the frozen W in 4 or 8 bits (`Gpt::quantize_base`), in place
    /// of `base.weight`, which then has no rows. Not saved: a QLoRA run's
    /// checkpoint holds the adapters, and the base is quantized again from
    /// `--init` (quantizing is deterministic).
    #[module(skip)]
    pub quantized: Option<Arc<QuantizedMatrix>>,
}

impl<B: Backend> LoraLinear<B> {
    pub fn new(base: Linear<B>) -> Self {
        Self { base, adapter: None, precision: Precision::F32, quantized: None }
    }

    /// `[d_in, d_out]` of W, stored in f32 or quantized.
    pub fn dims(&self) -> [usize; 2] {
        match &self.quantized {
            Some(q) => [q.rows, q.cols],
            None => self.base.weight.val().dims(),
        }
    }

    /// `[rows, d_in]` → `[rows, d_out]`, one row per position, in the
    /// layer's precision: input, weight and output (see `model::precision`).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let low = self.precision;
        let x = low.low(x);
        let y = match (&self.quantized, &self.base.bias) {
            // QLoRA: the product dequantizes W a few rows at a time (see `kernels::quant`).
            (Some(q), Some(bias)) => kernels::quantized_matmul(x.clone(), q) + low.low(bias.val()).unsqueeze(),
            (Some(q), None) => kernels::quantized_matmul(x.clone(), q),
            // x·W + b as one kernel (see `kernels::linear`).
            (None, Some(bias)) => {
                let weight = low.low(self.base.weight.val());
                kernels::linear(x.clone(), weight, low.low(bias.val())) // [rows, d_in]·[d_in, d_out] + [d_out]
            }
            (None, None) => kernels::matmul(x.clone(), low.low(self.base.weight.val())), // [rows, d_in]·[d_in, d_out]
        };
        match &self.adapter {
            Some(adapter) => y + adapter.forward(x, low), // [rows, d_out]
            None => y,
        }
    }

    /// Freezes the base and attaches a fresh adapter.
    /// Panics if the layer already has one: replacing it would silently
    /// throw a trained adapter away (merge it, or load adapters instead).
    pub fn attach(self, cfg: &LoraConfig, device: &B::Device) -> Self {
        assert!(
            self.adapter.is_none(),
            "this layer already has a LoRA adapter: merge it first, or use load_lora_adapters"
        );
        let [d_in, d_out] = self.dims();
        let adapter = Some(LoraAdapter::new(d_in, d_out, cfg, device));
        Self { base: self.base.no_grad(), adapter, ..self }
    }

    /// QLoRA's base: W stored in `format` (see `kernels::quant`), the f32
    /// copy dropped. The bias stays f32 (it is small).
    pub fn quantize(mut self, format: QuantFormat) -> Self {
        if self.quantized.is_some() {
            return self;
        }
        let weight = self.base.weight.val();
        let [d_in, d_out] = weight.dims();
        let values: Vec<f32> = weight.clone().into_data().convert::<f32>().to_vec().expect("f32 weights");
        self.quantized = Some(Arc::new(QuantizedMatrix::quantize(&values, d_in, d_out, format)));
        self.base.weight = Param::from_tensor(Tensor::zeros([0, d_out], &weight.device())).set_require_grad(false);
        self
    }

    /// W in f32 again, as the quantized codes say (what a QLoRA adapter was trained on).
    pub fn dequantize(mut self) -> Self {
        if let Some(q) = self.quantized.take() {
            let device = self.base.weight.val().device();
            let weight = Tensor::from_data(TensorData::new(q.dequantize(), [q.rows, q.cols]), &device);
            self.base.weight = Param::from_tensor(weight).set_require_grad(false);
        }
        self
    }

    /// Folds the adapter into the base weight: W ← W + (alpha/rank)·A·B.
    /// The result is a plain linear layer again.
    /// A quantized W is dequantized first: the adapter learnt its
    /// correction for the quantized weights, and the merge is f32.
    pub fn merge(self) -> Self {
        let layer = self.dequantize();
        let Some(adapter) = layer.adapter else { return layer };
        let mut base = layer.base;
        let merged = base.weight.val() + adapter.delta();
        base.weight = Param::from_tensor(merged);
        Self { base, adapter: None, precision: layer.precision, quantized: None }
    }
}

impl<B: Backend> std::ops::Deref for LoraLinear<B> {
    type Target = Linear<B>;
    fn deref(&self) -> &Linear<B> {
        &self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("v".parse::<LoraTarget>(), Ok(LoraTarget::V));
        assert!("mlp".parse::<LoraTarget>().unwrap_err().contains("expected q, k, v, out, fc or proj"));
    }
}
