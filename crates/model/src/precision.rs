//! Mixed precision: which numbers the model computes in 16 bits, and which
//! stay in 32.
//!
//! A 16-bit float halves the memory and, on a GPU's tensor cores, runs
//! matrix products several times faster than f32. The price is precision:
//! bf16 keeps f32's 8 exponent bits (the same range, up to ~3·10³⁸) but only
//! 8 significant bits (about 2–3 decimal digits); fp16 keeps 11 significant
//! bits but only 5 exponent bits (largest 65504, smallest normal 6·10⁻⁵),
//! so small gradients underflow to zero unless the loss is scaled first
//! (`train::loss_scale`). Mixed precision spends the low precision where
//! rounding does little harm and keeps f32 where it would do a lot:
//!
//! | what | precision | why |
//! |---|---|---|
//! | the weights the optimizer updates (master weights), Adam's moments | f32 | an update of lr·g ≈ 10⁻⁶ of a weight ≈ 1 is below bf16's resolution (2⁻⁸ ≈ 0.004): in bf16 most updates would round away |
//! | embeddings, the residual stream, its additions | f32 | every block adds to the stream: rounding it each time would pile up error through the depth |
//! | LayerNorm (in, statistics, out) | f32 | a variance is a mean of squares: in 8 bits it loses what it measures |
//! | linear layers and the LM head: inputs, weights, outputs | low | the products are almost all the arithmetic; the weights are rounded copies of the f32 masters, made on use |
//! | attention: Q, K, V and the context | low | the same products |
//! | attention's softmax | f32 inside the kernel | exp of a rounded score amplifies its error |
//! | GELU | low storage, f32 arithmetic inside the kernel | element-wise: nothing accumulates |
//! | logits and the cross-entropy | f32 | a log-sum-exp over the vocabulary, and the number training minimises |
//!
//! burn 0.21 has no autocast, so the casts are written where the table
//! says: [`Precision::low`] before a product, [`add_to_stream`] when a
//! sublayer's output joins the residual stream. `Tensor::cast` is
//! differentiable and its backward pass casts the gradient back to the
//! source's dtype, so the gradient of an f32 master weight arrives in f32
//! whatever precision the product ran in. The CPU kernels compute in f32
//! and round their outputs to their inputs' dtype (`kernels::cpu`), as a
//! GPU kernel loads bf16 and accumulates in f32.

use burn::tensor::{FloatDType, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// The precision of the products (see the table above).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Products in bfloat16: f32's range, 8 significant bits. Needs no loss scaling.
    Bf16,
    /// Products in IEEE half precision: 11 significant bits, range ±65504.
    /// Training needs dynamic loss scaling (`train::loss_scale`).
    Fp16,
}

impl Precision {
    /// The dtype of the products.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::Fp16 => FloatDType::F16,
        }
    }

    /// `x` in the products' precision (no-op in f32, or if it already is).
    pub fn low<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        x.cast(self.dtype())
    }

    /// The name used by `--dtype` and in saved configs.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" | "f16" => Ok(Precision::Fp16),
            other => Err(format!("unknown dtype `{other}`: expected f32, bf16 or fp16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `x` back in f32: logits before the loss, anything leaving the products.
pub fn full<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::F32)
}

/// `stream + update`, the residual connection: the sublayer's output
/// (low precision) is widened to the stream's f32 before it is added.
/// burn checks only shapes when adding, and some backends silently read
/// both sides as the left one's dtype, so the two are checked here too.
pub fn add_to_stream<B: Backend, const D: usize>(stream: Tensor<B, D>, update: Tensor<B, D>) -> Tensor<B, D> {
    let update = update.cast(FloatDType::from(stream.dtype()));
    kernels::assert_same_dtype("the residual addition", &[stream.dtype(), update.dtype()]);
    stream + update
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        for p in [Precision::F32, Precision::Bf16, Precision::Fp16] {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("f64".parse::<Precision>().unwrap_err().contains("expected f32, bf16 or fp16"));
    }
}
