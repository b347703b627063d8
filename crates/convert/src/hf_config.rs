//! Hugging Face's `config.json` for GPT-2 (`GPT2Config`) ↔ our [`GptConfig`].
//!
//! Our model is GPT-2's architecture, so most fields are one-to-one
//! renames (`n_embd` is `d_model`, `n_positions` is `context_length`).
//! The rest are checked: a config that asks for something this model does
//! not compute (another activation, an MLP of another width, attention
//! scaled per layer) is refused by name rather than imported into a model
//! that would quietly compute something else.

use std::path::Path;

use anyhow::{Result, bail};
use model::GptConfig;
use serde_json::{Value, json};

/// The token ids `transformers` is told about (`bos`/`eos`/`pad`).
pub struct SpecialIds {
    /// `<|endoftext|>`: GPT-2's beginning and end of text.
    pub eot: u32,
    /// `<|im_end|>`, where a chat model's reply ends (None: not a chat model).
    pub im_end: Option<u32>,
    /// `<|pad|>`, if the tokenizer has it.
    pub pad: Option<u32>,
}

/// Reads a `GPT2LMHeadModel` config. `path` names the file in errors.
pub fn from_hf(hf: &Value, path: &Path) -> Result<GptConfig> {
    let at = path.display();
    let model_type = hf["model_type"].as_str().unwrap_or("(none)");
    if model_type != "gpt2" {
        bail!("{at}: model_type is {model_type:?}, expected \"gpt2\" (only GPT-2's architecture can be imported)");
    }
    if let Some(architectures) = hf["architectures"].as_array() {
        let known = ["GPT2LMHeadModel", "GPT2Model"];
        if let Some(other) = architectures.iter().filter_map(Value::as_str).find(|a| !known.contains(a)) {
            bail!("{at}: architectures lists {other:?}, expected GPT2LMHeadModel");
        }
    }
    let size = |field: &str| -> Result<usize> {
        match hf[field].as_u64() {
            Some(n) if n > 0 => Ok(n as usize),
            _ => bail!("{at}: {field} is {}, expected a positive integer", hf[field]),
        }
    };
    let d_model = size("n_embd")?;
    // Fields that change what the model computes, with the only values ours
    // computes, and GPT-2's default when the field is absent.
    let number = |field: &str, default: f64| hf[field].as_f64().unwrap_or(default);
    let flag = |field: &str, default: bool| hf[field].as_bool().unwrap_or(default);
    let activation = hf["activation_function"].as_str().unwrap_or("gelu_new");
    if !["gelu_new", "gelu_pytorch_tanh"].contains(&activation) {
        bail!("{at}: activation_function is {activation:?}, expected \"gelu_new\" (GPT-2's tanh GELU)");
    }
    if !hf["n_inner"].is_null() && hf["n_inner"].as_u64() != Some(4 * d_model as u64) {
        bail!("{at}: n_inner is {}, expected null or {} (4 × n_embd)", hf["n_inner"], 4 * d_model);
    }
    for (field, wanted, default) in [
        ("scale_attn_weights", true, true),
        ("scale_attn_by_inverse_layer_idx", false, false),
        ("add_cross_attention", false, false),
    ] {
        if flag(field, default) != wanted {
            bail!("{at}: {field} is {}, expected {wanted}", !wanted);
        }
    }
    let config = GptConfig {
        vocab_size: size("vocab_size")?,
        context_length: size("n_positions")?,
        d_model,
        n_heads: size("n_head")?,
        n_layers: size("n_layer")?,
        // One dropout for all three of GPT-2's (it trained with 0.1 for each).
        dropout: number("resid_pdrop", 0.1),
        qkv_bias: true,
        tie_embeddings: flag("tie_word_embeddings", true),
        layer_norm_eps: number("layer_norm_epsilon", 1e-5),
    };
    config.validate().map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
    Ok(config)
}

/// The `config.json` that makes `transformers` build this model as a
/// `GPT2LMHeadModel`.
pub fn to_hf(config: &GptConfig, ids: &SpecialIds) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": model::init::INIT_STD,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": ids.eot,
        "eos_token_id": ids.eot,
        "pad_token_id": ids.pad,
        "use_cache": true,
        "dtype": "float32",
    })
}

/// `generation_config.json`: where generation stops (a chat model's reply
/// at `<|im_end|>` too).
pub fn generation_config(ids: &SpecialIds) -> Value {
    let eos: Vec<u32> = std::iter::once(ids.eot).chain(ids.im_end).collect();
    json!({ "bos_token_id": ids.eot, "eos_token_id": eos, "pad_token_id": ids.pad.unwrap_or(ids.eot) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2() -> Value {
        json!({
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
            "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": null,
            "activation_function": "gelu_new", "resid_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
        })
    }

    #[test]
    fn gpt2s_config_is_our_gpt2_preset() {
        let config = from_hf(&gpt2(), Path::new("config.json")).unwrap();
        assert_eq!(config, GptConfig::gpt2_124m());
        let ids = SpecialIds { eot: 50256, im_end: None, pad: None };
        assert_eq!(from_hf(&to_hf(&config, &ids), Path::new("x")).unwrap(), config, "a round trip");
        let untied = config.clone().with_tie_embeddings(false).with_n_layers(2);
        assert_eq!(from_hf(&to_hf(&untied, &ids), Path::new("x")).unwrap(), untied);
    }

    #[test]
    fn what_this_model_does_not_compute_is_refused_by_name() {
        let refused = |field: &str, value: Value| {
            let mut hf = gpt2();
            hf[field] = value;
            from_hf(&hf, Path::new("hf/config.json")).unwrap_err().to_string()
        };
        assert_eq!(
            refused("model_type", json!("llama")),
            "hf/config.json: model_type is \"llama\", expected \"gpt2\" (only GPT-2's architecture can be imported)"
        );
        assert!(refused("activation_function", json!("relu")).contains("activation_function is \"relu\""));
        assert!(refused("n_inner", json!(1000)).contains("n_inner is 1000, expected null or 3072"));
        assert!(refused("scale_attn_by_inverse_layer_idx", json!(true)).contains("expected false"));
        assert!(refused("n_embd", json!(-3)).contains("n_embd is -3, expected a positive integer"));
        assert!(refused("n_head", json!(5)).contains("d_model (768) must be a multiple of n_heads (5)"));
        assert!(
            refused("architectures", json!(["GPT2ForSequenceClassification"])).contains("expected GPT2LMHeadModel")
        );
        let mut no_vocab = gpt2();
        no_vocab.as_object_mut().unwrap().remove("vocab_size");
        assert!(from_hf(&no_vocab, Path::new("c")).unwrap_err().to_string().contains("vocab_size is null"));
    }
}
