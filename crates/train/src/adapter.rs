//! Saving a LoRA adapter alone, and putting it back on its base model.
//!
//! ```text
//! <out>/adapter.json   rank, alpha, targets, which base model (path + hash of its weights),
//!                      and the CRC-32 of adapter.mpk
//! <out>/adapter.mpk    the A and B matrices only
//! ```
//!
//! And `lora merge`'s work: folding an adapter into its base, as a run
//! directory of its own.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use data::util::{fnv1a, write_atomic};
use kernels::Backend;
use model::lora::LoraConfig;
use model::params::param_shapes;
use model::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    RunConfig, check_shapes, checkpoint_dir, load_run_model, read_checked, save_checkpoint, save_run_config,
};
use crate::run_dir::{build_then_rename, check_replaceable, prepare_out_dir, require_stage};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub lora: LoraConfig,
    /// The run whose weights the adapter was trained on.
    pub base: PathBuf,
    /// Hash of that run's model.mpk: an adapter only makes sense on exactly
    /// the weights it learned a correction for.
    pub base_hash: u64,
    /// CRC-32 of adapter.mpk, checked before loading (None: written before checksums were).
    #[serde(default)]
    pub adapter_crc32: Option<u32>,
    /// QLoRA: the format the base was quantized to while the adapter trained
    /// ("nf4", "int8"); the base is quantized the same way wherever the
    /// adapter is used, since that is the base it learnt to correct.
    #[serde(default)]
    pub quantize: Option<String>,
}

impl AdapterConfig {
    /// The base's format while training, parsed.
    pub fn quant_format(&self) -> Result<Option<kernels::quant::QuantFormat>> {
        self.quantize
            .as_deref()
            .map(|f| f.parse().map_err(|e: String| anyhow::anyhow!("adapter.json: quantize: {e}")))
            .transpose()
    }
}

/// Hash of a run's weights file.
pub fn weights_hash(run: &Path) -> Result<u64> {
    let path = checkpoint_dir(run).join("model.mpk");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(fnv1a(&bytes))
}

/// The adapters of `model` (A and B of every adapted layer) as bytes.
pub(crate) fn adapter_bytes<B: Backend>(model: &Gpt<B>) -> Result<Vec<u8>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    Ok(Recorder::<B>::record(&recorder, model.lora_adapters().into_record(), ())?)
}

/// Puts adapters read from `bytes` (the file `path`) on `model`, which
/// carries fresh adapters of the same config: their number and every
/// shape must match.
pub(crate) fn load_adapter_bytes<B: Backend>(
    bytes: Vec<u8>,
    path: &Path,
    model: Gpt<B>,
    device: &B::Device,
) -> Result<Gpt<B>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record: Vec<_> =
        recorder.load(bytes, device).with_context(|| format!("{} is not an adapter file", path.display()))?;
    let fresh = model.lora_adapters();
    if record.len() != fresh.len() {
        bail!(
            "{} holds {} adapters, but its adapter.json puts {} on this model",
            path.display(),
            record.len(),
            fresh.len()
        );
    }
    let expected = param_shapes(&fresh);
    let adapters = fresh.load_record(record);
    check_shapes(path, &expected, &param_shapes(&adapters))?;
    Ok(model.load_lora_adapters(adapters))
}

/// Writes `adapter.json` alone: at the start of a LoRA run, so that its
/// checkpoints (adapters only) say which base they go on.
pub fn save_adapter_config(out: &Path, config: &AdapterConfig) -> Result<()> {
    write_atomic(&out.join("adapter.json"), serde_json::to_string_pretty(config)?.as_bytes())
}

/// The `adapter.json` of the run `dir` (named `flag` in errors).
fn read_adapter_config(dir: &Path, flag: &str) -> Result<AdapterConfig> {
    let json = dir.join("adapter.json");
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!("{flag} {}: no adapter.json here to say which base the adapter is for", dir.display())
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid adapter config", json.display()))
}

/// `--resume` of a LoRA run: its checkpoint holds only the adapters, so the
/// base comes from `--init` again, and must be the same weights, quantized
/// the same way (`quantize`, as `--quantize` says now).
pub fn check_resume_base(out: &Path, init: &Path, quantize: Option<&str>) -> Result<()> {
    let config = read_adapter_config(out, "--resume")?;
    if config.quantize.as_deref() != quantize {
        let named = |q: Option<&str>| q.map_or("no --quantize".to_string(), |q| format!("--quantize {q}"));
        bail!(
            "--resume: {} was started with {}, not {}: resume it as it started",
            out.display(),
            named(config.quantize.as_deref()),
            named(quantize)
        );
    }
    if weights_hash(init)? != config.base_hash {
        bail!(
            "--resume: {} trains an adapter on the weights of {} as they were, but --init {} holds other weights now (their hash differs); resume with the same base",
            out.display(),
            config.base.display(),
            init.display()
        );
    }
    Ok(())
}

/// Writes `adapter.json` and `adapter.mpk`; returns the size of the weights file.
pub fn save_adapter<B: Backend>(out: &Path, model: &Gpt<B>, config: &AdapterConfig) -> Result<u64> {
    let bytes = adapter_bytes(model)?;
    write_atomic(&out.join("adapter.mpk"), &bytes)?;
    let config = AdapterConfig { adapter_crc32: Some(crc32fast::hash(&bytes)), ..config.clone() };
    write_atomic(&out.join("adapter.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(bytes.len() as u64)
}

/// Loads the base model of `base` and puts the adapter in `adapter` on it.
/// Refuses an adapter trained on other weights.
pub fn load_with_adapter<B: Backend>(
    base: &Path,
    adapter: &Path,
    device: &B::Device,
) -> Result<(GptConfig, Gpt<B>, AdapterConfig)> {
    let config = read_adapter_config(adapter, "--adapter")?;
    if weights_hash(base)? != config.base_hash {
        bail!(
            "the adapter in {} was trained on other base weights ({}), not those in {}: load it on the model it was trained from",
            adapter.display(),
            config.base.display(),
            base.display()
        );
    }
    let (model_config, mut model) = load_run_model::<B>(base, device)?;
    if let Some(format) = config.quant_format()? {
        model = model.quantize_base(format);
    }
    let model = model.with_lora(&config.lora, device);
    let path = adapter.join("adapter.mpk");
    let bytes = read_checked(&path, config.adapter_crc32)?;
    Ok((model_config, load_adapter_bytes(bytes, &path, model, device)?, config))
}

/// `lora merge`: the base of `base` with the adapter of `adapter` folded in
/// (W ← W + (alpha/rank)·A·B), written as a run directory at `out`. It is
/// built in a folder beside `out` and renamed into place, so `out` is
/// either untouched or complete; `out` may be neither input, and an
/// existing run there is replaced only with `overwrite`.
pub fn merge_into(base: &Path, adapter: &Path, out: &Path, overwrite: bool) -> Result<()> {
    type B = kernels::Cpu;
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if same(out, base) || same(out, adapter) {
        bail!("--out {} is one of the inputs: the merged model needs a folder of its own", out.display());
    }
    check_replaceable(out, overwrite)?;
    require_stage(adapter, "--adapter", &["lora"])?;
    let device = Default::default();
    let (model_config, model, adapter_config) = load_with_adapter::<B>(base, adapter, &device)?;
    let merged = model.merge_lora();

    build_then_rename(out, |tmp| {
        prepare_out_dir(tmp, "lora-merged", false, false, &model_config)?;
        let args = (base, adapter, &adapter_config.lora);
        save_run_config(tmp, &RunConfig { stage: "lora-merged".into(), model: model_config, args })?;
        save_checkpoint(tmp, &merged, None, &Default::default())?;
        let tokenizer = base.join("tokenizer.json");
        let bytes = std::fs::read(&tokenizer).with_context(|| format!("cannot read {}", tokenizer.display()))?;
        write_atomic(&tmp.join("tokenizer.json"), &bytes)
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor, TensorData};
    use kernels::Cpu;
    use model::GptConfig;
    use model::lora::LoraTarget;

    use super::*;

    fn save_run(dir: &Path, model: &Gpt<Cpu>, cfg: &GptConfig) {
        prepare_out_dir(dir, "sft", false, true, cfg).unwrap();
        save_run_config(dir, &RunConfig { stage: "sft".into(), model: cfg.clone(), args: () }).unwrap();
        save_checkpoint(dir, model, None, &Default::default()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), "{}").unwrap(); // merge copies it, nothing reads it here
    }

    /// A base run and a trained-looking adapter on it, in `root`.
    fn fixture(root: &Path) -> (GptConfig, Gpt<Cpu>) {
        std::fs::remove_dir_all(root).ok();
        let device = Default::default();
        let cfg = GptConfig::tiny(40).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0);
        save_run(&root.join("base"), &Gpt::<Cpu>::new(&cfg, &device), &cfg);
        let (_, base) = load_run_model::<Cpu>(&root.join("base"), &device).unwrap();
        let lora = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::Q, LoraTarget::V] };
        let mut tuned = base.with_lora(&lora, &device);
        // Give the adapter non-zero weights, as training would.
        let adapters = tuned.lora_adapters().into_iter().map(|mut a| {
            a.b = burn::module::Param::from_tensor(Tensor::ones(a.b.val().dims(), &device));
            a
        });
        tuned = tuned.load_lora_adapters(adapters.collect());
        let adapter_dir = root.join("adapter");
        prepare_out_dir(&adapter_dir, "lora", false, false, &cfg).unwrap();
        let base_hash = weights_hash(&root.join("base")).unwrap();
        let config = AdapterConfig { lora, base: root.join("base"), base_hash, adapter_crc32: None, quantize: None };
        save_adapter(&adapter_dir, &tuned, &config).unwrap();
        (cfg, tuned)
    }

    fn logits(model: &Gpt<Cpu>) -> TensorData {
        let x: Tensor<Cpu, 2, Int> =
            Tensor::from_data(TensorData::new(vec![1i64, 5, 9, 2], [1, 4]), &Default::default());
        model.forward(x, None).into_data()
    }

    #[test]
    fn adapters_round_trip_and_refuse_another_base_or_a_damaged_file() {
        let root = std::env::temp_dir().join(format!("minigpt-adapter-{}", std::process::id()));
        let (cfg, tuned) = fixture(&root);
        let (base, adapter) = (root.join("base"), root.join("adapter"));
        let size = std::fs::metadata(adapter.join("adapter.mpk")).unwrap().len();
        let full = std::fs::metadata(root.join("base/checkpoint/model.mpk")).unwrap().len();
        assert!(size * 5 < full, "adapter {size} B vs model {full} B");

        let (_, loaded, _) = load_with_adapter::<Cpu>(&base, &adapter, &Default::default()).unwrap();
        logits(&loaded).assert_eq(&logits(&tuned), true);

        save_run(&root.join("other"), &Gpt::<Cpu>::new(&cfg, &Default::default()), &cfg); // other weights
        let err = load_with_adapter::<Cpu>(&root.join("other"), &adapter, &Default::default()).err().unwrap();
        assert!(err.to_string().contains("was trained on other base weights"), "{err}");

        let mut bytes = std::fs::read(adapter.join("adapter.mpk")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(adapter.join("adapter.mpk"), &bytes).unwrap();
        let err = load_with_adapter::<Cpu>(&base, &adapter, &Default::default()).err().unwrap().to_string();
        assert!(err.contains("adapter.mpk is damaged"), "{err}");
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn merge_writes_a_folder_of_its_own_and_replaces_only_its_own_runs() {
        let root = std::env::temp_dir().join(format!("minigpt-merge-{}", std::process::id()));
        let (_, tuned) = fixture(&root);
        let (base, adapter, out) = (root.join("base"), root.join("adapter"), root.join("merged"));
        for input in [&base, &adapter] {
            let err = merge_into(&base, &adapter, input, true).unwrap_err().to_string();
            assert!(err.contains("is one of the inputs"), "{err}");
        }
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let err = merge_into(&base, &adapter, &out, true).unwrap_err().to_string();
        assert!(err.contains("holds files this project did not write (notes.txt)"), "{err}");
        std::fs::remove_file(out.join("notes.txt")).unwrap();

        merge_into(&base, &adapter, &out, false).unwrap();
        let (_, merged) = load_run_model::<Cpu>(&out, &Default::default()).unwrap();
        logits(&merged).assert_approx_eq::<f32>(&logits(&tuned), burn::tensor::Tolerance::absolute(1e-5));
        assert!(!out.join("checkpoint/optimizer.mpk").exists(), "a merged model has no training to resume");
        let err = merge_into(&base, &adapter, &out, false).unwrap_err().to_string();
        assert!(err.contains("already holds a lora-merged run: pass --overwrite"), "{err}");
        merge_into(&base, &adapter, &out, true).unwrap();
        assert!(
            std::fs::read_dir(&root).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".partial"))
        );
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_lora_run_resumes_only_on_the_base_it_started_from() {
        let root = std::env::temp_dir().join(format!("minigpt-adapter-resume-{}", std::process::id()));
        let (cfg, _) = fixture(&root);
        let (base, out) = (root.join("base"), root.join("adapter"));
        let lora = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::Q] };
        let base_hash = weights_hash(&base).unwrap();
        let config = AdapterConfig { lora, base: base.clone(), base_hash, adapter_crc32: None, quantize: None };
        save_adapter_config(&out, &config).unwrap();
        check_resume_base(&out, &base, None).unwrap();
        let refused = check_resume_base(&out, &base, Some("nf4")).unwrap_err().to_string();
        assert!(refused.contains("was started with no --quantize, not --quantize nf4"), "{refused}");
        // The base is retrained (other weights) under the same name.
        save_run(&base, &Gpt::<Cpu>::new(&cfg, &Default::default()), &cfg);
        let refused = check_resume_base(&out, &base, None).unwrap_err().to_string();
        assert!(refused.contains("holds other weights now (their hash differs)"), "{refused}");
        std::fs::remove_dir_all(root).ok();
    }
}
