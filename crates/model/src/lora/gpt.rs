//! LoRA on a whole GPT: attach adapters to the chosen layers of every
//! block, read them out and put them back (how an adapter is saved alone),
//! and fold them into the weights.

use burn::module::Module;
use kernels::Backend;
use kernels::quant::QuantFormat;

use crate::gpt::Gpt;
use crate::lora::layer::{LoraAdapter, LoraConfig, LoraLinear, LoraTarget};

impl<B: Backend> Gpt<B> {
    /// The wrapped layers of every block, in a fixed order (block by block,
    /// then q, k, v, out, fc, proj), with their target kind.
    pub(crate) fn lora_layers_mut(&mut self) -> Vec<(LoraTarget, &mut LoraLinear<B>)> {
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
                let plain = std::mem::replace(layer, LoraLinear::new(layer.base.clone()));
                *layer = plain.attach(cfg, device);
            }
        }
        model
    }

    /// Whether any layer carries an adapter (then only the adapters train).
    pub fn has_lora(&self) -> bool {
        self.blocks.iter().any(|b| {
            let (a, m) = (&b.attention, &b.mlp);
            [&a.query, &a.key, &a.value, &a.out_proj, &m.fc, &m.proj].iter().any(|l| l.adapter.is_some())
        })
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

    /// QLoRA: every linear layer of every block keeps W in `format`
    /// (4-bit NF4 or int8), its f32 copy dropped. Embeddings, LayerNorms,
    /// biases and the adapters stay f32. Call before `with_lora`.
    pub fn quantize_base(mut self, format: QuantFormat) -> Self {
        for (_, layer) in self.lora_layers_mut() {
            let plain = std::mem::replace(layer, LoraLinear::new(layer.base.clone()));
            *layer = plain.quantize(format);
        }
        self
    }

    /// Bytes the blocks' linear weights take as stored, and as f32: what
    /// quantizing saves.
    pub fn linear_weight_bytes(&self) -> (usize, usize) {
        let mut model = self.clone();
        let (mut stored, mut f32_bytes) = (0, 0);
        for (_, layer) in model.lora_layers_mut() {
            let [d_in, d_out] = layer.dims();
            f32_bytes += 4 * d_in * d_out;
            stored += layer.quantized.as_ref().map_or(4 * d_in * d_out, |q| q.bytes());
        }
        (stored, f32_bytes)
    }

    /// Folds every adapter into its base weight: a plain model again.
    pub fn merge_lora(mut self) -> Self {
        for (_, layer) in self.lora_layers_mut() {
            let wrapped = std::mem::replace(layer, LoraLinear::new(layer.base.clone()));
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

    use burn::tensor::Tensor;
    use kernels::{Backend, Cpu, CpuTrain};

    use super::*;
    use crate::config::GptConfig;
    use crate::lora::layer::LoraTarget;
    use crate::params::count_params;

    fn cfg(targets: &[LoraTarget]) -> LoraConfig {
        LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: targets.to_vec() }
    }

    fn tokens<B: Backend>() -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new((0..16).map(|i| (i * 7) % 50).collect::<Vec<i64>>(), [2, 8]),
            &Default::default(),
        )
    }

    fn base() -> Gpt<CpuTrain> {
        Gpt::new(
            &GptConfig::tiny(50).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0),
            &Default::default(),
        )
    }

    #[test]
    fn at_initialisation_the_wrapped_model_equals_the_base_exactly() {
        let model = base();
        let wrapped =
            model.clone().with_lora(&cfg(&[LoraTarget::Q, LoraTarget::V, LoraTarget::Fc]), &Default::default());
        model.forward(tokens(), None).into_data().assert_eq(&wrapped.forward(tokens(), None).into_data(), true);
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
        unmerged
            .forward(tokens(), None)
            .into_data()
            .assert_approx_eq::<f32>(&merged.forward(tokens(), None).into_data(), Tolerance::absolute(1e-5));

        // Adapters move to a fresh wrapping of the same base and give the same model.
        let fresh = start.valid().with_lora(&cfg(&[LoraTarget::Q, LoraTarget::V, LoraTarget::Out]), &device);
        let moved = fresh.load_lora_adapters(unmerged.lora_adapters());
        moved.forward(tokens(), None).into_data().assert_eq(&unmerged.forward(tokens(), None).into_data(), true);
    }

    /// A QLoRA model merges into an f32 model equal to it: the adapters
    /// folded into the dequantized base (which is what they trained on).
    #[test]
    fn a_quantized_base_merges_into_the_f32_model_it_computes() {
        let device = Default::default();
        let targets = cfg(&[LoraTarget::Q, LoraTarget::Fc]);
        let start = base();
        let mut model = start.clone().quantize_base(QuantFormat::Nf4).with_lora(&targets, &device);
        let mut optim = AdamWConfig::new().init();
        for _ in 0..5 {
            let loss = model.loss(tokens(), tokens());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let unmerged: Gpt<Cpu> = model.valid();
        let merged = unmerged.clone().merge_lora();
        assert!(merged.blocks.iter().all(|b| b.attention.query.quantized.is_none() && b.mlp.proj.quantized.is_none()));
        assert_eq!(merged.blocks[0].mlp.proj.weight.val().dims(), [128, 32], "f32 weights again");
        unmerged
            .forward(tokens(), None)
            .into_data()
            .assert_approx_eq::<f32>(&merged.forward(tokens(), None).into_data(), Tolerance::absolute(1e-4));
        // The same adapters on the f32 base give another model: the rounding is real.
        let on_f32 = start.valid().with_lora(&targets, &device).load_lora_adapters(unmerged.lora_adapters());
        let diff = (on_f32.forward(tokens(), None) - merged.forward(tokens(), None)).abs().max().into_scalar();
        assert!(diff > 1e-4, "{diff}");
    }
}
