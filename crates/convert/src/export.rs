//! `convert export-hf`: one of our runs → a Hugging Face folder that
//! `transformers` loads as a `GPT2LMHeadModel`:
//!
//! ```text
//! config.json             GPT2Config (hf_config::to_hf)
//! generation_config.json  where generation stops
//! model.safetensors       the weights, f32, named as transformers names them
//! tokenizer.json          our tokenizer, as it is
//! tokenizer_config.json   its special tokens, and for a chat model the chat template
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use data::Tokenizer;
use data::tokenizer::{EOT, IM_END, IM_START, PAD};
use data::util::write_atomic;
use kernels::Cpu;
use serde_json::{Value, json};
use train::run::{LoadedRun, load_for_use};
use train::run_dir::build_then_rename;

use crate::hf_config::{self, SpecialIds};
use crate::{safetensors_file, weights};

/// The files an export writes, the only ones `--overwrite` replaces.
const FILES: [&str; 5] =
    ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

/// Stages whose models answer in the chat template.
const CHAT_STAGES: [&str; 3] = ["sft", "dpo", "lora-merged"];

/// What an export reads and writes.
pub struct ExportOptions {
    /// The run to export.
    pub run: PathBuf,
    /// A LoRA run to merge into it first (as `chat --adapter` would apply it).
    pub adapter: Option<PathBuf>,
    /// The Hugging Face folder to write.
    pub out: PathBuf,
    /// Replace an earlier export at `out`.
    pub overwrite: bool,
}

/// The chat template SFT trains with (`data::chat::tokenize_conversation`),
/// in the Jinja that `transformers`' `apply_chat_template` renders.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Exports `options.run` (with its adapter merged, if given); returns the
/// number of tensors written.
pub fn export_hf(options: &ExportOptions) -> Result<usize> {
    check_export_dir(&options.out, options.overwrite)?;
    let device = Default::default();
    let loaded = load_for_use::<Cpu>(&options.run, "the run", options.adapter.as_deref(), &device)?;
    let LoadedRun { stage, tokenizer, config, model } = loaded;
    // With an adapter, the model is exported with it folded in.
    let model = model.merge_lora();
    let chat = CHAT_STAGES.contains(&stage.as_str()) || options.adapter.is_some();
    let im_end = tokenizer.token_id(IM_END).filter(|_| chat);
    let ids = SpecialIds { eot: tokenizer.eot_id, im_end, pad: tokenizer.token_id(PAD) };
    let tensors = weights::export(&model);
    let json = |value: &Value| serde_json::to_vec_pretty(value).expect("JSON values serialise");
    build_then_rename(&options.out, |tmp| {
        std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write_atomic(&tmp.join("config.json"), &json(&hf_config::to_hf(&config, &ids)))?;
        write_atomic(&tmp.join("generation_config.json"), &json(&hf_config::generation_config(&ids)))?;
        safetensors_file::write(&tmp.join("model.safetensors"), &tensors)?;
        tokenizer.save(&tmp.join("tokenizer.json"))?;
        write_atomic(
            &tmp.join("tokenizer_config.json"),
            &json(&tokenizer_config(&tokenizer, config.context_length, chat)),
        )
    })?;
    Ok(tensors.len())
}

/// What `AutoTokenizer` reads beside tokenizer.json: which class to build
/// (the generic fast tokenizer: ours is not GPT-2's, whose class would
/// expect its files) and which tokens are special for what.
fn tokenizer_config(tokenizer: &Tokenizer, context_length: usize, chat: bool) -> Value {
    let has = |token: &'static str| tokenizer.token_id(token).map(|_| token);
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": if chat { has(IM_END).unwrap_or(EOT) } else { EOT },
        "pad_token": has(PAD),
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": false,
    });
    if chat && has(IM_START).is_some() && has(IM_END).is_some() {
        config["chat_template"] = json!(CHAT_TEMPLATE);
    }
    config
}

/// `out` may be written when it is new or empty, or, with `overwrite`,
/// when it holds only what an export writes.
fn check_export_dir(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {} is a file, not a folder", out.display());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    if names.is_empty() {
        return Ok(());
    }
    if let Some(stranger) = names.iter().find(|n| !FILES.contains(&n.as_str())) {
        bail!("--out {}: {stranger} was not written by an export; choose a new or empty folder", out.display());
    }
    if !overwrite {
        bail!("--out {} already holds an export: pass --overwrite to replace it", out.display());
    }
    Ok(())
}
