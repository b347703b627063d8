//! GPT-2's tensors ↔ ours: a renaming, three splits and one transpose.
//!
//! | GPT-2 (`transformer.` prefix optional) | shape        | ours                                   |
//! |----------------------------------------|--------------|----------------------------------------|
//! | `wte.weight`                           | `[vocab, d]` | `token_emb.weight`                     |
//! | `wpe.weight`                           | `[ctx, d]`   | `pos_emb.weight`                       |
//! | `h.{i}.ln_1.weight` / `.bias`          | `[d]`        | `blocks[i].norm1.gamma` / `.beta`      |
//! | `h.{i}.attn.c_attn.weight` / `.bias`   | `[d, 3d]`    | `query`, `key`, `value`: its columns 0..d, d..2d, 2d..3d |
//! | `h.{i}.attn.c_proj.weight` / `.bias`   | `[d, d]`     | `attention.out_proj`                   |
//! | `h.{i}.ln_2.weight` / `.bias`          | `[d]`        | `blocks[i].norm2`                      |
//! | `h.{i}.mlp.c_fc.weight` / `.bias`      | `[d, 4d]`    | `mlp.fc`                               |
//! | `h.{i}.mlp.c_proj.weight` / `.bias`    | `[4d, d]`    | `mlp.proj`                             |
//! | `ln_f.weight` / `.bias`                | `[d]`        | `final_norm`                           |
//! | `lm_head.weight` (untied only)         | `[vocab, d]` | `lm_head.weight` `[d, vocab]`, transposed |
//!
//! GPT-2 was written with a `Conv1D` layer that stores its weight as
//! `[in, out]`, which is also how burn's `Linear` stores it: the weights
//! copy over as they are. Only `lm_head` is a PyTorch `nn.Linear`, stored
//! `[out, in]`. (A generic "PyTorch → burn" converter transposes every
//! linear layer, which is right for `nn.Linear` and wrong for GPT-2.)
//! Old GPT-2 files also hold each layer's causal mask (`attn.bias`,
//! `attn.masked_bias`): constants, not weights; ignored.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData};
use kernels::Backend;
use model::{Gpt, GptConfig};

/// Named host tensors, as a safetensors file holds them (names without the
/// `transformer.` prefix): `name → (shape, values)`.
pub type HostTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Hands out GPT-2's tensors, shape-checked, each once; what is left at
/// the end was never asked for.
pub struct Source {
    tensors: HostTensors,
    /// The file, for errors.
    file: String,
}

impl Source {
    pub fn new(tensors: HostTensors, file: String) -> Self {
        Self { tensors, file }
    }

    /// The tensor `name`, which must have `shape`, on `device`.
    fn take<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let Some((found, _)) = self.tensors.get(name) else {
            bail!("{}: tensor {name} {shape:?} is missing", self.file);
        };
        if found[..] != shape[..] {
            bail!("{}: tensor {name} is {found:?}, expected {shape:?} (from config.json)", self.file);
        }
        let (_, values) = self.tensors.remove(name).expect("just found");
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// A weight as a parameter.
    fn param<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Param<Tensor<B, D>>> {
        Ok(Param::from_tensor(self.take(name, shape, device)?))
    }

    /// The tensors never taken, but for the masks GPT-2's files may carry
    /// (and, for a tied model, a copy of the embedding as `lm_head.weight`).
    fn unread(&self, tied: bool) -> Vec<&str> {
        let ignored = |n: &str| {
            let mask = n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias");
            mask || (tied && n == "lm_head.weight")
        };
        self.tensors.keys().map(String::as_str).filter(|n| !ignored(n)).collect()
    }
}

/// Our model with GPT-2's weights. Every tensor the config implies must be
/// there with its shape, and every tensor there must be one of them.
pub fn import<B: Backend>(source: &mut Source, config: &GptConfig, device: &B::Device) -> Result<Gpt<B>> {
    let (v, c, d) = (config.vocab_size, config.context_length, config.d_model);
    let mut gpt = Gpt::<B>::new(config, device);
    gpt.token_emb.weight = source.param("wte.weight", [v, d], device)?;
    gpt.pos_emb.weight = source.param("wpe.weight", [c, d], device)?;
    for (i, block) in gpt.blocks.iter_mut().enumerate() {
        let h = |name: &str| format!("h.{i}.{name}");
        block.norm1.gamma = source.param(&h("ln_1.weight"), [d], device)?;
        block.norm1.beta = source.param(&h("ln_1.bias"), [d], device)?;
        // Q, K and V side by side: [d, 3d] → three [d, d], and [3d] → three [d].
        let qkv = source.take::<B, 2>(&h("attn.c_attn.weight"), [d, 3 * d], device)?;
        let qkv_bias = source.take::<B, 1>(&h("attn.c_attn.bias"), [3 * d], device)?;
        let attention = &mut block.attention;
        for (j, linear) in [&mut attention.query, &mut attention.key, &mut attention.value].into_iter().enumerate() {
            let columns = j * d..(j + 1) * d;
            linear.base.weight = Param::from_tensor(qkv.clone().slice([0..d, columns.clone()])); // [d, d]
            linear.base.bias = Some(Param::from_tensor(qkv_bias.clone().slice([columns]))); // [d]
        }
        attention.out_proj.base.weight = source.param(&h("attn.c_proj.weight"), [d, d], device)?;
        attention.out_proj.base.bias = Some(source.param(&h("attn.c_proj.bias"), [d], device)?);
        block.norm2.gamma = source.param(&h("ln_2.weight"), [d], device)?;
        block.norm2.beta = source.param(&h("ln_2.bias"), [d], device)?;
        block.mlp.fc.base.weight = source.param(&h("mlp.c_fc.weight"), [d, 4 * d], device)?;
        block.mlp.fc.base.bias = Some(source.param(&h("mlp.c_fc.bias"), [4 * d], device)?);
        block.mlp.proj.base.weight = source.param(&h("mlp.c_proj.weight"), [4 * d, d], device)?;
        block.mlp.proj.base.bias = Some(source.param(&h("mlp.c_proj.bias"), [d], device)?);
    }
    gpt.final_norm.gamma = source.param("ln_f.weight", [d], device)?;
    gpt.final_norm.beta = source.param("ln_f.bias", [d], device)?;
    if let Some(head) = &mut gpt.lm_head {
        // nn.Linear's [vocab, d] → ours [d, vocab]
        head.weight = Param::from_tensor(source.take::<B, 2>("lm_head.weight", [v, d], device)?.transpose());
    }
    if let Some(stranger) = source.unread(config.tie_embeddings).first() {
        bail!("{}: tensor {stranger} is not part of a GPT-2 of this config", source.file);
    }
    Ok(gpt)
}

/// GPT-2's tensors of our model, named as `transformers` names them
/// (without the `transformer.` prefix, which the writer adds).
pub fn export<B: Backend>(gpt: &Gpt<B>) -> HostTensors {
    let mut out = HostTensors::new();
    let mut put = |name: String, data: TensorData| {
        let values = data.convert::<f32>();
        out.insert(name, (values.shape.to_vec(), values.to_vec().expect("f32 weights")));
    };
    let bias = |linear: &Linear<B>| match &linear.bias {
        Some(bias) => bias.val(),
        // A model without a QKV bias gets GPT-2's as zeros: the same function.
        None => Tensor::zeros([linear.weight.dims()[1]], &linear.weight.device()),
    };
    put("wte.weight".into(), gpt.token_emb.weight.val().into_data());
    put("wpe.weight".into(), gpt.pos_emb.weight.val().into_data());
    for (i, block) in gpt.blocks.iter().enumerate() {
        let h = |name: &str| format!("h.{i}.{name}");
        put(h("ln_1.weight"), block.norm1.gamma.val().into_data());
        put(h("ln_1.bias"), block.norm1.beta.val().into_data());
        let attention = &block.attention;
        let (q, k, v) = (&attention.query.base, &attention.key.base, &attention.value.base);
        // Three [d, d] side by side → [d, 3d], and three [d] → [3d].
        let qkv = Tensor::cat(vec![q.weight.val(), k.weight.val(), v.weight.val()], 1);
        put(h("attn.c_attn.weight"), qkv.into_data());
        put(h("attn.c_attn.bias"), Tensor::cat(vec![bias(q), bias(k), bias(v)], 0).into_data());
        for (name, linear) in [
            ("attn.c_proj", &attention.out_proj.base),
            ("mlp.c_fc", &block.mlp.fc.base),
            ("mlp.c_proj", &block.mlp.proj.base),
        ] {
            put(h(&format!("{name}.weight")), linear.weight.val().into_data());
            put(h(&format!("{name}.bias")), bias(linear).into_data());
        }
        put(h("ln_2.weight"), block.norm2.gamma.val().into_data());
        put(h("ln_2.bias"), block.norm2.beta.val().into_data());
    }
    put("ln_f.weight".into(), gpt.final_norm.gamma.val().into_data());
    put("ln_f.bias".into(), gpt.final_norm.beta.val().into_data());
    if let Some(head) = &gpt.lm_head {
        // ours [d, vocab] → nn.Linear's [vocab, d]
        put("lm_head.weight".into(), head.weight.val().transpose().into_data());
    }
    out
}
