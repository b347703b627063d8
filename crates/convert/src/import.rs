//! `convert import-hf`: a Hugging Face GPT-2 folder → one of our run
//! directories (`stage: "import"`), which `chat --model`, `sft --init`,
//! `lora --init` and `dpo --init` take like any other run.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Param;
use burn::tensor::Tensor;
use data::Tokenizer;
use kernels::{Backend, Cpu};
use model::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};
use train::checkpoint::{RunConfig, save_checkpoint, save_run_config};
use train::run::check_vocabulary;
use train::run_dir::{build_then_rename, check_replaceable, prepare_out_dir};

use crate::weights::Source;
use crate::{hf_config, safetensors_file, weights};

/// What an import reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportOptions {
    /// The Hugging Face folder: config.json, model.safetensors, and
    /// (unless `tokenizer` says otherwise) the tokenizer's files.
    pub hf_dir: PathBuf,
    /// The run directory to write.
    pub out: PathBuf,
    /// The tokenizer, if not in `hf_dir` (see `Tokenizer::load` for the forms).
    pub tokenizer: Option<PathBuf>,
    /// Leave the vocabulary exactly as it is, without the chat and padding
    /// tokens the fine-tuning stages need.
    pub keep_vocabulary: bool,
    /// Replace an earlier run of ours at `out`.
    pub overwrite: bool,
}

/// Saved as the run's `args`: where it came from, and what was added.
#[derive(Serialize)]
struct ImportRecord<'a> {
    options: &'a ImportOptions,
    /// The special tokens added to the vocabulary, with their ids.
    added_tokens: &'a [(String, u32)],
}

/// What was imported.
pub struct Imported {
    pub config: GptConfig,
    pub added_tokens: Vec<(String, u32)>,
}

/// A Hugging Face folder, read.
pub struct HfModel<B: Backend> {
    pub config: GptConfig,
    pub model: Gpt<B>,
    pub tokenizer: Tokenizer,
    /// The special tokens added to the vocabulary, with their ids.
    pub added_tokens: Vec<(String, u32)>,
}

/// The model and tokenizer of `hf_dir`, and the special tokens added to
/// both. Nothing is written.
pub fn read_hf_dir<B: Backend>(options: &ImportOptions, device: &B::Device) -> Result<HfModel<B>> {
    let dir = &options.hf_dir;
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: download a GPT-2 one first (e.g. `huggingface-cli download openai-community/gpt2 --local-dir {0}`)",
            dir.display()
        );
    }
    if dir.join(train::run_dir::MARKER).exists() {
        bail!("{} is already a run directory of this project: give it to --init or --model as it is", dir.display());
    }
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: no config.json (expected a Hugging Face model folder)", dir.display()))?;
    let hf: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", config_path.display()))?;
    let config = hf_config::from_hf(&hf, &config_path)?;

    let weights_path = dir.join("model.safetensors");
    if !weights_path.exists() {
        let why = if dir.join("model.safetensors.index.json").exists() {
            "its weights are split into shards, which this importer does not read"
        } else if dir.join("pytorch_model.bin").exists() {
            "it holds pytorch_model.bin only: load it in transformers and save_pretrained it again to get safetensors"
        } else {
            "expected model.safetensors"
        };
        bail!("{}: no model.safetensors ({why})", dir.display());
    }
    let tensors = safetensors_file::read(&weights_path)?;
    let mut source = Source::new(tensors, weights_path.display().to_string());
    let model = weights::import::<B>(&mut source, &config, device)?;

    let tokenizer_path = options.tokenizer.as_deref().unwrap_or(dir);
    let tokenizer = Tokenizer::load(tokenizer_path).context(match options.tokenizer {
        Some(_) => "--tokenizer",
        None => "the model folder's tokenizer (or give one with --tokenizer)",
    })?;
    check_vocabulary(&tokenizer, tokenizer_path, &config)?;
    if options.keep_vocabulary {
        return Ok(HfModel { config, model, tokenizer, added_tokens: Vec::new() });
    }
    let (tokenizer, new_ids) = tokenizer.with_special_tokens()?;
    let added_tokens = new_ids.iter().map(|&id| (tokenizer.decode(&[id]), id)).collect();
    let (config, model) = add_token_rows(config, model, &new_ids);
    Ok(HfModel { config, model, tokenizer, added_tokens })
}

/// Imports `options.hf_dir` into the run directory `options.out`, written
/// beside it and renamed into place once complete.
pub fn import_hf(options: &ImportOptions) -> Result<Imported> {
    check_replaceable(&options.out, options.overwrite)?;
    let device = Default::default();
    let HfModel { config, model, tokenizer, added_tokens } = read_hf_dir::<Cpu>(options, &device)?;
    build_then_rename(&options.out, |tmp| {
        prepare_out_dir(tmp, "import", false, false, &config)?;
        let args = ImportRecord { options, added_tokens: &added_tokens };
        save_run_config(tmp, &RunConfig { stage: "import".into(), model: config.clone(), args })?;
        tokenizer.save(&tmp.join("tokenizer.json"))?;
        save_checkpoint(tmp, &model, None, &Default::default())
    })?;
    Ok(Imported { config, added_tokens })
}

/// Embedding rows (and, untied, head columns) for tokens the model never
/// saw: each set to the mean of the existing ones, a neutral start (its
/// logit is the mean logit, so greedy decoding never picks it before
/// fine-tuning teaches it). The vocabulary grows to cover the highest id;
/// an id inside it (a row a checkpoint padded its vocabulary with) gets
/// its row reset the same way.
fn add_token_rows<B: Backend>(mut config: GptConfig, mut model: Gpt<B>, ids: &[u32]) -> (GptConfig, Gpt<B>) {
    let Some(&highest) = ids.iter().max() else { return (config, model) };
    let vocab = config.vocab_size.max(highest as usize + 1);
    let grow = |table: Tensor<B, 2>, dim: usize| {
        let [rows, cols] = table.dims();
        let mean = table.clone().mean_dim(dim); // [1, cols] for rows, [rows, 1] for columns
        let (old, d) = if dim == 0 { (rows, cols) } else { (cols, rows) };
        let extra = Tensor::zeros(if dim == 0 { [vocab - old, d] } else { [d, vocab - old] }, &table.device());
        let mut grown = Tensor::cat(vec![table, extra], dim); // [vocab, d] or [d, vocab]
        for &id in ids {
            let id = id as usize;
            grown = match dim {
                0 => grown.slice_assign([id..id + 1, 0..d], mean.clone()),
                _ => grown.slice_assign([0..d, id..id + 1], mean.clone()),
            };
        }
        grown
    };
    model.token_emb.weight = Param::from_tensor(grow(model.token_emb.weight.val(), 0)); // [vocab, d_model]
    if let Some(head) = &mut model.lm_head {
        head.weight = Param::from_tensor(grow(head.weight.val(), 1)); // [d_model, vocab]
    }
    config.vocab_size = vocab;
    (config, model)
}
