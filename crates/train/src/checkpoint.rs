//! Checkpoints: everything needed to continue a run exactly, or to use its model.
//!
//! ```text
//! <out>/config.json       every setting of the run (model shape included)
//! <out>/tokenizer.json    the tokenizer the ids mean something in
//! <out>/checkpoint/       model.mpk, optimizer.mpk, state.json
//! <out>/best/             the weights of the lowest validation loss, as a run directory
//! ```
//! The checkpoint folder is written whole to `checkpoint.tmp/`, then swapped
//! in by renames: a crash at any moment leaves either the previous
//! checkpoint or the new one, never a mix. `state.json` holds a CRC-32 of
//! each weights file, checked before anything is loaded, so a damaged or
//! truncated file is reported as such; and a model loads only into a config
//! whose every tensor has the shape the file holds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use data::SamplerPosition;
use data::util::write_atomic;
use kernels::Backend;
use model::params::param_shapes;
use model::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};

use crate::divergence::LossWatch;
use crate::loss_scale::LossScale;

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
    /// What the divergence test has seen so far.
    #[serde(default)]
    pub watch: LossWatch,
    /// Sum and count of the training losses since the last logged one: each
    /// logged training loss is the mean over its interval, not one batch's.
    #[serde(default)]
    pub interval_loss: (f64, usize),
    /// fp16's loss scale, where it has got to (None: not an fp16 run).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

/// `state.json`: the loop's state and the checksums of the files beside it.
#[derive(Serialize, Deserialize)]
struct StateFile {
    #[serde(flatten)]
    state: TrainerState,
    /// CRC-32 of model.mpk and of optimizer.mpk (None: written before checksums were).
    #[serde(default)]
    model_crc32: Option<u32>,
    #[serde(default)]
    optimizer_crc32: Option<u32>,
    /// model.mpk holds only the LoRA adapters: the rest is the frozen base,
    /// which `--resume` reads from `--init` again (see `adapter::check_resume_base`).
    #[serde(default)]
    adapters_only: bool,
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

/// Writes `<out>/checkpoint/` atomically. `optimizer` None (a merged model,
/// which has no training to resume) writes no optimizer file.
pub fn save_checkpoint<B: Backend>(
    out: &Path,
    model: &Gpt<B>,
    optimizer: Option<Vec<u8>>,
    state: &TrainerState,
) -> Result<()> {
    let dir = checkpoint_dir(out);
    let tmp = out.join("checkpoint.tmp");
    let old = out.join("checkpoint.old");
    remove_dir(&tmp)?; // what a crash left half-written
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    // A model with adapters trains only them: they are all a checkpoint
    // needs (a small fraction of the model; its base never changes).
    let adapters_only = model.has_lora();
    let weights = if adapters_only { crate::adapter::adapter_bytes(model)? } else { model_bytes(model)? };
    write_atomic(&tmp.join("model.mpk"), &weights)?;
    if let Some(optimizer) = &optimizer {
        write_atomic(&tmp.join("optimizer.mpk"), optimizer)?;
    }
    let file = StateFile {
        state: state.clone(),
        model_crc32: Some(crc32fast::hash(&weights)),
        optimizer_crc32: optimizer.as_deref().map(crc32fast::hash),
        adapters_only,
    };
    write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(&file)?.as_bytes())?;
    if dir.exists() {
        remove_dir(&old)?;
        std::fs::rename(&dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    remove_dir(&old)
}

/// `<out>/best/`: the weights of the evaluation with the lowest validation
/// loss so far, as a run directory of their own (the run's marker, config and
/// tokenizer beside a checkpoint without optimizer state), so that
/// `--init <out>/best` or `chat --model <out>/best` use them like any run.
/// An over-fitted run's last weights are worse than these.
pub fn save_best<B: Backend>(out: &Path, model: &Gpt<B>, state: &TrainerState) -> Result<()> {
    let best = out.join("best");
    std::fs::create_dir_all(&best).with_context(|| format!("cannot create {}", best.display()))?;
    for name in [crate::run_dir::MARKER, "config.json", "tokenizer.json", "adapter.json"] {
        let from = out.join(name);
        if from.exists() {
            let bytes = std::fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
            write_atomic(&best.join(name), &bytes)?;
        }
    }
    if model.has_lora() {
        // An adapter run of its own: `--adapter <out>/best` on the same base.
        write_atomic(&best.join("adapter.mpk"), &crate::adapter::adapter_bytes(model)?)?;
    }
    save_checkpoint(&best, model, None, state)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// The checkpoint folder to read: `checkpoint/`, or `checkpoint.old/` if a
/// crash struck between the two renames of `save_checkpoint`.
pub fn existing_checkpoint(out: &Path) -> Option<PathBuf> {
    [checkpoint_dir(out), out.join("checkpoint.old")].into_iter().find(|d| d.join("state.json").exists())
}

/// A checkpoint folder's state and checksums.
fn read_state(dir: &Path) -> Result<StateFile> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid trainer state", path.display()))
}

/// A file's bytes, checked against the CRC-32 its checkpoint recorded.
pub(crate) fn read_checked(path: &Path, crc32: Option<u32>) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(expected) = crc32
        && crc32fast::hash(&bytes) != expected
    {
        bail!(
            "{} is damaged: its checksum does not match the one saved with it ({} bytes; truncated or altered since)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Checks a `--resume` checkpoint before anything is written: state,
/// weights and optimizer state present and intact.
pub fn verify_checkpoint(out: &Path) -> Result<()> {
    let dir = existing_checkpoint(out).with_context(|| {
        format!(
            "--resume: {} holds no checkpoint (expected {}/state.json); run without --resume to start fresh",
            out.display(),
            checkpoint_dir(out).display()
        )
    })?;
    let state = read_state(&dir)?;
    read_checked(&dir.join("model.mpk"), state.model_crc32)?;
    read_checked(&dir.join("optimizer.mpk"), state.optimizer_crc32)?;
    Ok(())
}

/// Loads state, model weights and optimizer bytes for `--resume`.
pub fn load_checkpoint<B: Backend>(
    out: &Path,
    model: Gpt<B>,
    device: &B::Device,
) -> Result<(Gpt<B>, Vec<u8>, TrainerState)> {
    verify_checkpoint(out)?;
    let dir = existing_checkpoint(out).expect("verified above");
    let state = read_state(&dir)?;
    let path = dir.join("model.mpk");
    let model = match state.adapters_only {
        // `model` is the base from --init with fresh adapters: these replace them.
        true => crate::adapter::load_adapter_bytes(read_checked(&path, state.model_crc32)?, &path, model, device)?,
        false => load_weights(&path, state.model_crc32, model, device)?,
    };
    let optimizer = read_checked(&dir.join("optimizer.mpk"), state.optimizer_crc32)?;
    Ok((model, optimizer, state.state))
}

/// Loads weights into `model`, which was built from the run's config: every
/// tensor in the file must have the shape the config gives it.
fn load_weights<B: Backend>(path: &Path, crc32: Option<u32>, model: Gpt<B>, device: &B::Device) -> Result<Gpt<B>> {
    let bytes = read_checked(path, crc32)?;
    let record: model::gpt::GptRecord<B> =
        recorder().load(bytes, device).with_context(|| format!("{} is not a model checkpoint", path.display()))?;
    // burn would panic on another number of blocks, and load tensors of
    // any other shape as they are: both are checked here instead.
    if record.blocks.len() != model.n_layers() {
        bail!(
            "{} holds {} blocks, but its config says n_layers {}",
            path.display(),
            record.blocks.len(),
            model.n_layers()
        );
    }
    let expected = param_shapes(&model);
    let model = model.load_record(record);
    check_shapes(path, &expected, &param_shapes(&model))?;
    Ok(model)
}

/// The first tensor whose shape differs from the config's, as an error.
pub fn check_shapes(path: &Path, expected: &[(String, Vec<usize>)], found: &[(String, Vec<usize>)]) -> Result<()> {
    for (name, shape) in expected {
        match found.iter().find(|(n, _)| n == name) {
            Some((_, s)) if s == shape => {}
            Some((_, s)) => bail!("{}: {name} is {s:?}, but its config makes it {shape:?}", path.display()),
            None => bail!("{}: the config has a tensor {name} {shape:?} that the file lacks", path.display()),
        }
    }
    if let Some((name, shape)) = found.iter().find(|(n, _)| !expected.iter().any(|(e, _)| e == n)) {
        bail!("{}: the file has a tensor {name} {shape:?} that its config does not", path.display());
    }
    Ok(())
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
    let config: GptConfig = serde_json::from_value(value["model"].clone())
        .with_context(|| format!("{} has no valid \"model\" section", path.display()))?;
    config.validate().map_err(|e| anyhow::anyhow!("{}: model shape: {e}", path.display()))?;
    Ok(config)
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
    let state = read_state(&dir)?;
    if state.adapters_only {
        bail!("{} holds a LoRA adapter, not a model: use it as --adapter on its base run", run.display());
    }
    load_weights(&dir.join("model.mpk"), state.model_crc32, Gpt::new(config, device), device)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor, TensorData};
    use kernels::Cpu;

    use super::*;

    fn out(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minigpt-ckpt-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cfg() -> GptConfig {
        GptConfig::tiny(40).with_d_model(32).with_n_layers(2).with_context_length(8).with_dropout(0.0)
    }

    fn saved(name: &str) -> (PathBuf, Gpt<Cpu>) {
        let dir = out(name);
        save_run_config(&dir, &RunConfig { stage: "pretrain".into(), model: cfg(), args: () }).unwrap();
        let model = Gpt::<Cpu>::new(&cfg(), &Default::default());
        save_checkpoint(&dir, &model, Some(vec![7; 100]), &TrainerState { step: 3, ..Default::default() }).unwrap();
        (dir, model)
    }

    fn logits(model: &Gpt<Cpu>) -> TensorData {
        let x = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3], [1, 3]), &Default::default());
        model.forward(x, None).into_data()
    }

    #[test]
    fn weights_round_trip_and_damage_is_named_as_such() {
        let (dir, model) = saved("damage");
        let (_, loaded) = load_run_model::<Cpu>(&dir, &Default::default()).unwrap();
        logits(&loaded).assert_eq(&logits(&model), true);
        let (_, optimizer, state) =
            load_checkpoint(&dir, Gpt::<Cpu>::new(&cfg(), &Default::default()), &Default::default()).unwrap();
        assert_eq!((optimizer, state.step), (vec![7; 100], 3));

        let path = checkpoint_dir(&dir).join("model.mpk");
        let bytes = std::fs::read(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10; // one bit in the middle of the weights
        for damaged in [flipped, bytes[..bytes.len() - 10].to_vec()] {
            std::fs::write(&path, damaged).unwrap();
            let err = format!("{:#}", load_run_model::<Cpu>(&dir, &Default::default()).err().unwrap());
            assert!(err.contains("model.mpk is damaged: its checksum does not match"), "{err}");
        }
        std::fs::write(checkpoint_dir(&dir).join("optimizer.mpk"), [0u8; 3]).unwrap();
        assert!(format!("{:#}", verify_checkpoint(&dir).unwrap_err()).contains("is damaged"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn weights_load_only_into_a_config_of_their_shape() {
        let (dir, _) = saved("shape");
        let load = |cfg: &GptConfig| {
            let err = load_run_weights::<Cpu>(&dir, cfg, &Default::default()).expect_err("refused");
            format!("{err:#}")
        };
        let wider = load(&cfg().with_d_model(64));
        assert!(wider.contains("token_emb.weight is [40, 32], but its config makes it [40, 64]"), "{wider}");
        assert!(load(&GptConfig { vocab_size: 50, ..cfg() }).contains("[40, 32], but its config makes it [50, 32]"));
        assert!(load(&cfg().with_n_layers(3)).contains("holds 2 blocks, but its config says n_layers 3"));
        let untied = load(&cfg().with_tie_embeddings(false));
        assert!(untied.contains("the config has a tensor lm_head.weight [32, 40] that the file lacks"), "{untied}");
        std::fs::remove_dir_all(dir).ok();
    }
}
