//! LoRA: fine-tune a few small matrices instead of the whole model.
//!
//! Full fine-tuning learns an update ΔW for every weight matrix W. LoRA bets
//! that the update needs far fewer directions than W has, and learns it as
//! a product of two thin matrices: ΔW = (alpha/rank)·A·B, with A `[d_in, rank]`
//! and B `[rank, d_out]`. For a 128×128 matrix and rank 8 that is 2,048
//! trainable numbers instead of 16,384. The base weights stay frozen: no
//! gradients and no optimizer state for them, which is where the memory goes.

use std::str::FromStr;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Distribution, Tensor};
use crate::{Backend, kernels};
use serde::{Deserialize, Serialize};

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

    /// `[rows, d_in]` → `[rows, d_out]`: (alpha/rank)·x·A·B.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let down = kernels::matmul(self.dropout.forward(x), self.a.val()); // [rows, d_in]·[d_in, r] → [rows, r]
        kernels::matmul(down, self.b.val()) * self.scale // [rows, r]·[r, d_out] → [rows, d_out]
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
}

impl<B: Backend> LoraLinear<B> {
    pub fn new(base: Linear<B>) -> Self {
        Self { base, adapter: None }
    }

    /// `[..., d_in]` → `[..., d_out]`, any rank (the model passes 2-D rows).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        // Every position goes through the same weight, so fold all leading
        // dimensions into rows: one [positions, d_in]·[d_in, d_out] matmul.
        // Given a 3-D tensor, burn would broadcast the weight over the batch
        // instead, and its backward pass then builds one weight gradient per
        // sequence and sums them: `batch` times the work for the same result.
        let x = kernels::to_rows(x); // [positions, d_in]
        // x·W + b as one kernel (see `kernels::linear`).
        let weight = self.base.weight.val();
        let y = match &self.base.bias {
            Some(bias) => kernels::linear(x.clone(), weight, bias.val()), // [positions, d_in]·[d_in, d_out] + [d_out]
            None => kernels::matmul(x.clone(), weight),                   // [positions, d_in]·[d_in, d_out]
        };
        let y = match &self.adapter {
            Some(adapter) => y + adapter.forward(x),
            None => y,
        }; // [positions, d_out]
        dims[D - 1] = y.dims()[1];
        kernels::from_rows(y, dims)
    }

    /// Freezes the base and attaches a fresh adapter.
    /// Panics if the layer already has one: replacing it would silently
    /// throw a trained adapter away (merge it, or load adapters instead).
    pub fn attach(self, cfg: &LoraConfig, device: &B::Device) -> Self {
        assert!(self.adapter.is_none(), "this layer already has a LoRA adapter: merge it first, or use load_lora_adapters");
        let [d_in, d_out] = self.base.weight.val().dims();
        Self { base: self.base.no_grad(), adapter: Some(LoraAdapter::new(d_in, d_out, cfg, device)) }
    }

    /// Folds the adapter into the base weight: W ← W + (alpha/rank)·A·B.
    /// The result is a plain linear layer again.
    pub fn merge(self) -> Self {
        let Some(adapter) = self.adapter else { return self };
        let mut base = self.base;
        let merged = base.weight.val() + adapter.delta();
        base.weight = Param::from_tensor(merged);
        Self { base, adapter: None }
    }
}

impl<B: Backend> std::ops::Deref for LoraLinear<B> {
    type Target = Linear<B>;
    fn deref(&self) -> &Linear<B> {
        &self.base
    }
}

// ---------------------------------------------------------------------------
// The whole model: attach, merge, and move adapters in and out.
// ---------------------------------------------------------------------------

impl<B: Backend> crate::Gpt<B> {
    /// The wrapped layers of every block, in a fixed order (block by block,
    /// then q, k, v, out, fc, proj), with their target kind.
    fn lora_layers_mut(&mut self) -> Vec<(LoraTarget, &mut LoraLinear<B>)> {
        let mut layers = Vec::new();
        for block in &mut self.blocks {
            let attention = &mut block.attention;
            layers.push((LoraTarget::Q, &mut attention.query));
            layers.push((LoraTarget::K, &mut attention.key));
            layers.push((LoraTarget::V, &mut attention.value));
            layers.push((LoraTarget::Out, &mut attention.out_proj));
            layers.push((LoraTarget::Fc, &mut block.mlp.fc));
            layers.push((LoraTarget::Proj, &mut block.mlp.proj));
        }
        layers
    }

    /// Freezes every base weight and attaches fresh adapters to the targets.
    /// Only the adapters receive gradients afterwards.
    pub fn with_lora(self, cfg: &LoraConfig, device: &B::Device) -> Self {
        let mut model = self.no_grad();
        for (target, layer) in model.lora_layers_mut() {
            if cfg.targets.contains(&target) {
                let plain = std::mem::replace(layer, LoraLinear { base: layer.base.clone(), adapter: None });
                *layer = plain.attach(cfg, device);
            }
        }
        model
    }

    /// The adapters, in the fixed order of `lora_layers_mut`.
    pub fn lora_adapters(&self) -> Vec<LoraAdapter<B>> {
        let mut model = self.clone();
        model.lora_layers_mut().into_iter().filter_map(|(_, layer)| layer.adapter.clone()).collect()
    }

    /// Replaces the adapters (from `lora_adapters` of a model with the same
    /// LoRA config) — how a saved adapter is put back on its base model.
    pub fn load_lora_adapters(mut self, adapters: Vec<LoraAdapter<B>>) -> Self {
        let mut adapters = adapters.into_iter();
        for (_, layer) in self.lora_layers_mut() {
            if layer.adapter.is_some() {
                layer.adapter = Some(adapters.next().expect("as many adapters as wrapped layers"));
            }
        }
        assert!(adapters.next().is_none(), "more adapters than wrapped layers");
        self
    }

    /// Folds every adapter into its base weight: a plain model again.
    pub fn merge_lora(mut self) -> Self {
        for (_, layer) in self.lora_layers_mut() {
            let wrapped = std::mem::replace(layer, LoraLinear { base: layer.base.clone(), adapter: None });
            *layer = wrapped.merge();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use burn::module::AutodiffModule;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::{Int, TensorData, Tolerance};

    use super::*;
    use crate::{Cpu, CpuTrain, Gpt, GptConfig, count_params};

    fn cfg(targets: &[LoraTarget]) -> LoraConfig {
        LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: targets.to_vec() }
    }

    fn tokens<B: Backend>() -> Tensor<B, 2, Int> {
        Tensor::from_data(TensorData::new((0..16).map(|i| (i * 7) % 50).collect::<Vec<i64>>(), [2, 8]), &Default::default())
    }

    fn base() -> Gpt<CpuTrain> {
        Gpt::new(&GptConfig::tiny(50).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0), &Default::default())
    }

    #[test]
    fn at_initialisation_the_wrapped_model_equals_the_base_exactly() {
        let model = base();
        let wrapped = model.clone().with_lora(&cfg(&[LoraTarget::Q, LoraTarget::V, LoraTarget::Fc]), &Default::default());
        model.forward(tokens()).into_data().assert_eq(&wrapped.forward(tokens()).into_data(), true);
    }

    #[test]
    fn trainable_count_is_the_closed_form() {
        let d = 32;
        let r = 4;
        let model = base().with_lora(&cfg(&[LoraTarget::Q, LoraTarget::V]), &Default::default());
        // Two square d×d matrices per block, 2 blocks: 2·r·d each.
        assert_eq!(count_params(&model).trainable, 2 * 2 * (2 * r * d));
        let mlp = base().with_lora(&cfg(&[LoraTarget::Fc, LoraTarget::Proj]), &Default::default());
        // fc is d×4d and proj 4d×d: r·(d_in + d_out) each.
        assert_eq!(count_params(&mlp).trainable, 2 * (r * (d + 4 * d) + r * (4 * d + d)));
    }

    #[test]
    fn training_changes_only_adapters_and_merged_equals_unmerged() {
        let device = Default::default();
        let start = base();
        let mut model = start.clone().with_lora(&cfg(&[LoraTarget::Q, LoraTarget::V, LoraTarget::Out]), &device);
        let mut optim = AdamWConfig::new().init();
        for _ in 0..5 {
            let loss = model.loss(tokens(), tokens());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        // Base weights are bit-for-bit what they were; adapters moved.
        let w = |m: &Gpt<CpuTrain>| m.blocks[0].attention.query.weight.val().into_data();
        w(&model).assert_eq(&w(&start), true);
        start.token_emb.weight.val().into_data().assert_eq(&model.token_emb.weight.val().into_data(), true);
        let b = model.lora_adapters()[0].b.val().into_data().to_vec::<f32>().unwrap();
        assert!(b.iter().any(|&x| x != 0.0), "B left zero: the adapter did not train");

        let unmerged: Gpt<Cpu> = model.valid();
        let merged = unmerged.clone().merge_lora();
        assert!(merged.lora_adapters().is_empty());
        unmerged.forward(tokens()).into_data().assert_approx_eq::<f32>(&merged.forward(tokens()).into_data(), Tolerance::absolute(1e-5));

        // Adapters move to a fresh wrapping of the same base and give the same model.
        let fresh = start.valid().with_lora(&cfg(&[LoraTarget::Q, LoraTarget::V, LoraTarget::Out]), &device);
        let moved = fresh.load_lora_adapters(unmerged.lora_adapters());
        moved.forward(tokens()).into_data().assert_eq(&unmerged.forward(tokens()).into_data(), true);
    }

    #[test]
    fn targets_parse() {
        assert_eq!("v".parse::<LoraTarget>(), Ok(LoraTarget::V));
        assert!("mlp".parse::<LoraTarget>().unwrap_err().contains("expected q, k, v, out, fc or proj"));
    }
}
