//! Will the run fit? A rough, deliberately low estimate of the memory one
//! training step needs, checked against the memory the machine has free
//! before the model is allocated: a run that cannot fit is refused with
//! advice, instead of aborting later with "memory allocation failed".
//!
//! What a step holds, in f32 (4 bytes each):
//! - the weights, and for every trained weight its gradient and AdamW's two
//!   moments: 4 numbers per trained parameter, 1 per frozen one;
//! - the activations the backward pass needs, per position and layer: the
//!   block's input and normalised input, q, k and v, the context, the MLP's
//!   4·d-wide hidden layer before and after GELU (at least 12·d numbers),
//!   plus one attention weight per head and key; and the logits with their
//!   gradient, 2 × vocabulary per position.
//!
//! The estimate leaves out burn's temporaries and allocator slack, so a run
//! it passes may still not fit; one it refuses would not have.

use anyhow::{Result, bail};
use model::GptConfig;

use crate::device::{DeviceKind, parse_device};

/// Bytes one training step needs at least; `trainable` parameters get
/// gradients and optimizer state.
pub fn training_bytes(cfg: &GptConfig, trainable: usize, batch: usize, seq: usize) -> f64 {
    let (d, heads, layers, vocab) =
        (cfg.d_model as f64, cfg.n_heads as f64, cfg.n_layers as f64, cfg.vocab_size as f64);
    let params = cfg.num_params() as f64;
    let weights = params + 3.0 * trainable as f64;
    let positions = batch as f64 * seq as f64;
    let activations = positions * (layers * (12.0 * d + heads * seq as f64) + 2.0 * vocab);
    4.0 * (weights + activations)
}

/// The memory the operating system says is free for new allocations
/// (Linux's MemAvailable), if it says.
fn available_bytes() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses a run on the CPU that cannot fit in the free memory; returns the
/// estimate as a line for the run's plan. (On a GPU the limit is the
/// device's memory, which burn does not report: only the estimate is given.)
pub fn check(cfg: &GptConfig, trainable: usize, batch: usize, seq: usize, device: &str) -> Result<String> {
    let need = training_bytes(cfg, trainable, batch, seq);
    let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
    let on_cpu = !matches!(parse_device(device)?, DeviceKind::Cuda(_));
    let free = available_bytes().filter(|_| on_cpu);
    let line = match free {
        Some(free) => format!("memory:     about {:.2} GiB for a training step ({:.1} GiB free)", gib(need), gib(free)),
        None => format!("memory:     about {:.2} GiB for a training step", gib(need)),
    };
    if let Some(free) = free
        && need > free
    {
        bail!(
            "this run needs at least {:.1} GiB, more than the {:.1} GiB free: lower --batch-size (now {batch}; --grad-accum keeps the effective batch) or the sequence length ({seq}), or choose a smaller model",
            gib(need),
            gib(free)
        );
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_grows_with_what_it_should() {
        let tiny = GptConfig::tiny(4096);
        let all = tiny.num_params();
        let base = training_bytes(&tiny, all, 16, 128);
        // Weights with their gradients and moments: 16 bytes per parameter, at least.
        assert!(base > 16.0 * all as f64);
        assert!(training_bytes(&tiny, all, 32, 128) > 1.9 * base - 16.0 * all as f64);
        assert!(training_bytes(&tiny, 0, 16, 128) < base, "frozen weights need no gradient or moments");
        // GPT-2 small at batch 16 × 1024: several GiB, as PyTorch's runs show.
        let gpt2 = training_bytes(&GptConfig::gpt2_124m(), 124_439_808, 16, 1024);
        assert!(gpt2 > 4e9 && gpt2 < 40e9, "{gpt2}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn an_absurd_run_is_refused_before_it_allocates() {
        assert!(available_bytes().is_some_and(|b| b > 0.0), "Linux reports the free memory");
        let huge = GptConfig::tiny(4096).with_d_model(65536).with_n_heads(1).with_n_layers(64);
        let err = check(&huge, huge.num_params(), 16, 128, "cpu").unwrap_err().to_string();
        assert!(err.contains("more than the") && err.contains("lower --batch-size (now 16"), "{err}");
        assert!(check(&GptConfig::tiny(4096), 1_000, 16, 128, "cpu").unwrap().contains("GiB free"));
    }
}
