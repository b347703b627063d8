//! Saving a LoRA adapter alone, and putting it back on its base model.
//!
//! ```text
//! <out>/adapter.json   rank, alpha, targets, and which base model (path + hash of its weights)
//! <out>/adapter.mpk    the A and B matrices only
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use data::util::{fnv1a, write_atomic};
use kernels::Backend;
use model::lora::LoraConfig;
use model::{Gpt, GptConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{checkpoint_dir, load_run_model};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub lora: LoraConfig,
    /// The run whose weights the adapter was trained on.
    pub base: PathBuf,
    /// Hash of that run's model.mpk: an adapter only makes sense on exactly
    /// the weights it learned a correction for.
    pub base_hash: u64,
}

/// Hash of a run's weights file.
pub fn weights_hash(run: &Path) -> Result<u64> {
    let path = checkpoint_dir(run).join("model.mpk");
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(fnv1a(&bytes))
}

/// Writes `adapter.json` and `adapter.mpk`; returns the size of the weights file.
pub fn save_adapter<B: Backend>(out: &Path, model: &Gpt<B>, config: &AdapterConfig) -> Result<u64> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let adapters = model.lora_adapters();
    let bytes = Recorder::<B>::record(&recorder, adapters.into_record(), ())?;
    write_atomic(&out.join("adapter.mpk"), &bytes)?;
    write_atomic(&out.join("adapter.json"), serde_json::to_string_pretty(config)?.as_bytes())?;
    Ok(bytes.len() as u64)
}

/// Loads the base model of `base` and puts the adapter in `adapter` on it.
/// Refuses an adapter trained on other weights.
pub fn load_with_adapter<B: Backend>(
    base: &Path,
    adapter: &Path,
    device: &B::Device,
) -> Result<(GptConfig, Gpt<B>, AdapterConfig)> {
    let json = adapter.join("adapter.json");
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("--adapter {}: no adapter.json here", adapter.display()))?;
    let config: AdapterConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid adapter config", json.display()))?;
    if weights_hash(base)? != config.base_hash {
        bail!(
            "the adapter in {} was trained on other base weights ({}), not those in {}: load it on the model it was trained from",
            adapter.display(),
            config.base.display(),
            base.display()
        );
    }
    let (model_config, model) = load_run_model::<B>(base, device)?;
    let model = model.with_lora(&config.lora, device);
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = std::fs::read(adapter.join("adapter.mpk"))
        .with_context(|| format!("--adapter {}: no adapter.mpk here", adapter.display()))?;
    let record = recorder
        .load(bytes, device)
        .with_context(|| format!("{}/adapter.mpk does not match its adapter.json", adapter.display()))?;
    let adapters = model.lora_adapters().load_record(record);
    Ok((model_config, model.load_lora_adapters(adapters), config))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Int, Tensor, TensorData};
    use kernels::Cpu;
    use model::GptConfig;
    use model::lora::LoraTarget;

    use super::*;
    use crate::checkpoint::{RunConfig, save_checkpoint, save_run_config};

    fn save_run(dir: &Path, model: &Gpt<Cpu>, cfg: &GptConfig) {
        std::fs::create_dir_all(dir).unwrap();
        save_run_config(dir, &RunConfig { stage: "sft".into(), model: cfg.clone(), args: () }).unwrap();
        save_checkpoint(dir, model, Vec::new(), &Default::default()).unwrap();
    }

    #[test]
    fn adapters_round_trip_and_refuse_another_base() {
        let root = std::env::temp_dir().join(format!("minigpt-adapter-{}", std::process::id()));
        std::fs::remove_dir_all(&root).ok();
        let device = Default::default();
        let cfg = GptConfig::tiny(40).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0);
        let base = Gpt::<Cpu>::new(&cfg, &device);
        save_run(&root.join("base"), &base, &cfg);
        let lora = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::Q, LoraTarget::V] };
        let mut tuned = base.clone().with_lora(&lora, &device);
        // Give the adapter non-zero weights, as training would.
        let adapters = tuned.lora_adapters().into_iter().map(|mut a| {
            a.b = burn::module::Param::from_tensor(Tensor::ones(a.b.val().dims(), &device));
            a
        });
        tuned = tuned.load_lora_adapters(adapters.collect());
        let adapter_dir = root.join("adapter");
        std::fs::create_dir_all(&adapter_dir).unwrap();
        let config =
            AdapterConfig { lora, base: root.join("base"), base_hash: weights_hash(&root.join("base")).unwrap() };
        let size = save_adapter(&adapter_dir, &tuned, &config).unwrap();
        let full = std::fs::metadata(root.join("base/checkpoint/model.mpk")).unwrap().len();
        assert!(size * 5 < full, "adapter {size} B vs model {full} B");

        let (_, loaded, _) = load_with_adapter::<Cpu>(&root.join("base"), &adapter_dir, &device).unwrap();
        let x: Tensor<Cpu, 2, Int> = Tensor::from_data(TensorData::new(vec![1i64, 5, 9, 2], [1, 4]), &device);
        loaded.forward(x.clone(), None).into_data().assert_eq(&tuned.forward(x, None).into_data(), true);

        let other = Gpt::<Cpu>::new(&cfg, &device); // different random weights
        save_run(&root.join("other"), &other, &cfg);
        let err = load_with_adapter::<Cpu>(&root.join("other"), &adapter_dir, &device).err().unwrap().to_string();
        assert!(err.contains("was trained on other base weights"), "{err}");
        std::fs::remove_dir_all(root).ok();
    }
}
