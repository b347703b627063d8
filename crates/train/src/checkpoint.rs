//! Checkpoints: everything needed to continue a run exactly, or to use its model.
//!
//! ```text
//! <out>/config.json       every setting of the run (model shape included)
//! <out>/tokenizer.json    the tokenizer the ids mean something in
//! <out>/checkpoint/       model.mpk, optimizer.mpk, state.json
//! ```
//! The checkpoint folder is written whole to `checkpoint.tmp/`, then swapped
//! in by renames: a crash at any moment leaves either the previous
//! checkpoint or the new one, never a mix.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use data::SamplerPosition;
use data::util::write_atomic;
use kernels::Backend;
use model::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};

/// Where the loop stands; saved as `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The sampler's position: the next batch to train on.
    pub sampler: SamplerPosition,
    /// Training tokens processed so far.
    pub tokens: usize,
    /// Training seconds so far (excluding time spent stopped).
    pub elapsed_s: f64,
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Model weights as bytes.
pub fn model_bytes<B: Backend>(model: &Gpt<B>) -> Result<Vec<u8>> {
    Ok(Recorder::<B>::record(&recorder(), model.clone().into_record(), ())?)
}

/// Writes `<out>/checkpoint/` atomically.
pub fn save_checkpoint<B: Backend>(out: &Path, model: &Gpt<B>, optimizer: Vec<u8>, state: &TrainerState) -> Result<()> {
    let dir = checkpoint_dir(out);
    let tmp = out.join("checkpoint.tmp");
    let old = out.join("checkpoint.old");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_atomic(&tmp.join("model.mpk"), &model_bytes(model)?)?;
    write_atomic(&tmp.join("optimizer.mpk"), &optimizer)?;
    write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&dir, &old)?;
    }
    std::fs::rename(&tmp, &dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// The checkpoint folder to read: `checkpoint/`, or `checkpoint.old/` if a
/// crash struck between the two renames of `save_checkpoint`.
fn existing_checkpoint(out: &Path) -> Option<PathBuf> {
    [checkpoint_dir(out), out.join("checkpoint.old")].into_iter().find(|d| d.join("state.json").exists())
}

/// Loads state, model weights and optimizer bytes for `--resume`.
pub fn load_checkpoint<B: Backend>(
    out: &Path,
    model: Gpt<B>,
    device: &B::Device,
) -> Result<(Gpt<B>, Vec<u8>, TrainerState)> {
    let Some(dir) = existing_checkpoint(out) else {
        bail!(
            "--resume: {} holds no checkpoint (expected {}/state.json); run without --resume to start fresh",
            out.display(),
            checkpoint_dir(out).display()
        );
    };
    let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
        .with_context(|| format!("{}/state.json is not a valid trainer state", dir.display()))?;
    let model = load_weights(&dir.join("model.mpk"), model, device)?;
    let optimizer = std::fs::read(dir.join("optimizer.mpk"))?;
    Ok((model, optimizer, state))
}

/// Loads weights into a model of the right shape.
pub fn load_weights<B: Backend>(path: &Path, model: Gpt<B>, device: &B::Device) -> Result<Gpt<B>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let record = recorder()
        .load(bytes, device)
        .with_context(|| format!("{} is not a model checkpoint of this shape", path.display()))?;
    Ok(model.load_record(record))
}

/// The settings saved in `<out>/config.json` by every stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig<A> {
    /// Which stage wrote it: "pretrain", "sft", ...
    pub stage: String,
    pub model: GptConfig,
    /// The stage's full command line, parsed.
    pub args: A,
}

pub fn save_run_config<A: Serialize>(out: &Path, config: &RunConfig<A>) -> Result<()> {
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())
}

/// Reads the model shape of a finished run (`--init runs/pretrain`, chat).
pub fn read_model_config(run: &Path) -> Result<GptConfig> {
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} has no config.json: is it a run directory?", run.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    serde_json::from_value(value["model"].clone())
        .with_context(|| format!("{} has no valid \"model\" section", path.display()))
}

/// Loads the trained model of a run directory, ready for use.
pub fn load_run_model<B: Backend>(run: &Path, device: &B::Device) -> Result<(GptConfig, Gpt<B>)> {
    let config = read_model_config(run)?;
    let model = load_run_weights(run, &config, device)?;
    Ok((config, model))
}

/// Loads a run's weights into a model built from `config` (the run's own
/// shape, possibly with another dropout).
pub fn load_run_weights<B: Backend>(run: &Path, config: &GptConfig, device: &B::Device) -> Result<Gpt<B>> {
    config.validate().map_err(anyhow::Error::msg)?;
    let dir = existing_checkpoint(run).with_context(|| format!("{} holds no checkpoint/", run.display()))?;
    load_weights(&dir.join("model.mpk"), Gpt::new(config, device), device)
}

/// Which stage wrote a run ("pretrain", "sft", ...), from its config.json.
pub fn read_stage(run: &Path) -> Result<String> {
    let text = std::fs::read_to_string(run.join("config.json"))
        .with_context(|| format!("{} has no config.json", run.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    Ok(value["stage"].as_str().unwrap_or("pretrain").to_string())
}
