//! Training throughput: how many tokens per second one full training step
//! (forward, loss, backward, clip, AdamW) gets through, per model shape.
//!
//! ```text
//! cargo run --release -p bench                                   # tiny and mini on the CPU
//! cargo run --release -p bench -- --preset tiny --batch 8 --ctx 128 --vocab 4096
//! cargo run --release -p bench --features cuda -- --device cuda --preset gpt2-124m
//! ```
//!
//! Each result is one JSON line with the keys of the PyTorch reference
//! (`tokens_per_s`, `step_ms`, `peak_mem_gib`, `mfu_pct`, ...), so the two can
//! sit side by side in one table: `scripts/bench-vs-pytorch.sh` does that.
//! It also splits the step into its phases (`forward_ms`, `backward_ms`,
//! `optim_ms`), which is where to look first when a step is slow.
//!
//! The data is random tokens: throughput does not depend on what the tokens
//! say, and the benchmark then needs no tokenizer or corpus.

use std::time::Instant;

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor};
use clap::Parser;
use kernels::{AutodiffBackend, Backend};
use model::{ComputeConfig, Gpt, GptConfig, Precision};
use train::args::range;
use train::clip::clip_grad_norm;
use train::optim::{Optim, OptimizerKind};

// mimalloc, keeping freed memory for reuse (see `train::alloc`).
#[global_allocator]
static ALLOCATOR: train::alloc::MiMalloc = train::alloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Measure training throughput (tokens/s, step time, peak memory) per model shape")]
struct Args {
    /// Where to run: `cpu` (burn's ndarray backend), `flex` (burn's newer CPU
    /// backend; build with `--features flex`), `cuda` or `cuda:N` (build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Model presets to measure, comma-separated (tiny, mini, gpt2-124m).
    /// The shape flags below override every preset's value.
    #[arg(long, value_delimiter = ',', default_value = "tiny,mini")]
    preset: Vec<String>,
    /// Vocabulary size (default: 4096 for tiny, 6400 for mini, 50304 for gpt2-124m,
    /// the sizes the PyTorch reference uses). [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    vocab: Option<usize>,
    /// Tokens per sequence (default: the preset's context length). [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    ctx: Option<usize>,
    /// Sequences per step (default: 8 for tiny, 4 for mini on the CPU; 16 for gpt2-124m). [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    batch: Option<usize>,
    /// Width of the residual stream. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    d_model: Option<usize>,
    /// Number of transformer blocks. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    layers: Option<usize>,
    /// Number of attention heads. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    heads: Option<usize>,
    /// Timed steps (their mean is reported). [≥ 1]
    #[arg(long, default_value_t = 10, value_parser = range::at_least_one)]
    steps: usize,
    /// Untimed steps first: allocator pools, caches and (on a GPU) kernel compilation warm up here.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Attention as written out (softmax(QKᵀ/√d + mask)·V) instead of the fused kernel.
    #[arg(long)]
    plain_attention: bool,
    /// Precision of the products: f32, or bf16 / fp16 mixed precision (f32 weights and
    /// optimizer; see `model::precision`). 16-bit needs `--device flex` or `cuda`. fp16 is
    /// timed without loss scaling (one multiply of the loss and one of the gradients).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Dropout during the benchmark (the reference uses 0). [0, 1)
    #[arg(long, default_value_t = 0.0, value_parser = range::probability)]
    dropout: f64,
}

/// One line of output. Field names follow the PyTorch reference.
#[derive(serde::Serialize)]
struct Record {
    name: String,
    backend: String,
    params_m: f64,
    batch: usize,
    ctx: usize,
    dtype: &'static str,
    compiled: bool,
    step_ms: f64,
    tokens_per_s: f64,
    /// Only on a GPU: the share of the device's peak FLOP/s the step achieves.
    mfu_pct: Option<f64>,
    /// Peak resident memory of the process during the timed steps (CPU), GiB.
    peak_mem_gib: Option<f64>,
    loss: f64,
    forward_ms: f64,
    backward_ms: f64,
    optim_ms: f64,
    warmup_s: f64,
}

fn main() -> Result<()> {
    train::alloc::keep_freed_memory();
    let args = Args::parse();
    train::device::check_dtype(&args.device, args.dtype)?;
    for preset in &args.preset {
        let cfg = shape(&args, preset)?;
        let batch = args.batch.unwrap_or(match preset.as_str() {
            "tiny" => 8,
            "mini" => 4,
            _ => 16,
        });
        let record = train::run_on_device!(&args.device, bench(preset, &cfg, batch, &args))?;
        println!("{}", serde_json::to_string(&record)?);
    }
    Ok(())
}

/// The preset, with the reference's vocabulary sizes and any shape flags applied.
fn shape(args: &Args, preset: &str) -> Result<GptConfig> {
    let vocab = args.vocab.unwrap_or(match preset {
        "tiny" => 4096,
        "mini" => 6400,
        _ => 50304, // GPT-2's 50257 padded to a multiple of 64, as nanoGPT does
    });
    let mut cfg = GptConfig::preset(preset, Some(vocab)).map_err(anyhow::Error::msg)?;
    cfg.context_length = args.ctx.unwrap_or(cfg.context_length);
    cfg.d_model = args.d_model.unwrap_or(cfg.d_model);
    cfg.n_layers = args.layers.unwrap_or(cfg.n_layers);
    cfg.n_heads = args.heads.unwrap_or(cfg.n_heads);
    cfg.dropout = args.dropout;
    cfg.validate().map_err(anyhow::Error::msg)?;
    Ok(cfg)
}

fn bench<B: AutodiffBackend>(
    device: &B::Device,
    name: &str,
    cfg: &GptConfig,
    batch: usize,
    args: &Args,
) -> Result<Record> {
    B::seed(device, 0);
    let compute = ComputeConfig::new().with_fused_attention(!args.plain_attention).with_precision(args.dtype);
    train::memory::check(cfg, cfg.num_params(), batch, cfg.context_length, &args.device)?;
    let mut model = Gpt::<B>::new(cfg, device).with_compute(&compute);
    let mut optim = Optim::new(OptimizerKind::Adamw, 0.1, &model, &model.embedding_param_ids());
    let ctx = cfg.context_length;
    let random_tokens = || {
        Tensor::<B, 2>::random([batch, ctx], Distribution::Uniform(0.0, cfg.vocab_size as f64), device)
            .int()
            .clamp(0, cfg.vocab_size as i64 - 1)
    };
    let (inputs, targets): (Tensor<B, 2, Int>, Tensor<B, 2, Int>) = (random_tokens(), random_tokens());

    // One step, the same calls as the training loop, with a sync after each
    // phase so the phases can be timed (a device runs ahead otherwise).
    let mut phases = [0.0f64; 3];
    let mut step = |model: Gpt<B>, phases: &mut [f64; 3]| -> (Gpt<B>, f64) {
        let t0 = Instant::now();
        let loss = model.loss(inputs.clone(), targets.clone());
        sync::<B>(device);
        let t1 = Instant::now();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        sync::<B>(device);
        let t2 = Instant::now();
        clip_grad_norm(&model, &mut grads, 1.0);
        let model = optim.step(6e-4, model, grads);
        let loss: f64 = loss.into_scalar().elem();
        let t3 = Instant::now();
        phases[0] += (t1 - t0).as_secs_f64();
        phases[1] += (t2 - t1).as_secs_f64();
        phases[2] += (t3 - t2).as_secs_f64();
        (model, loss)
    };

    let started = Instant::now();
    for _ in 0..args.warmup {
        model = step(model, &mut phases).0;
    }
    let warmup_s = started.elapsed().as_secs_f64();
    reset_peak_rss();
    phases = [0.0; 3];
    let started = Instant::now();
    let mut loss = 0.0;
    for _ in 0..args.steps {
        (model, loss) = step(model, &mut phases);
    }
    let secs = started.elapsed().as_secs_f64() / args.steps as f64;
    let ms = |total: f64| round(total / args.steps as f64 * 1e3, 2);
    let params = cfg.num_params() - cfg.context_length * cfg.d_model; // as the reference: no position table
    Ok(Record {
        name: name.to_string(),
        backend: backend_name::<B>(),
        params_m: round(params as f64 / 1e6, 2),
        batch,
        ctx,
        // The reference's names.
        dtype: match args.dtype {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        },
        compiled: false,
        step_ms: round(secs * 1e3, 2),
        tokens_per_s: ((batch * ctx) as f64 / secs).round(),
        mfu_pct: None,
        peak_mem_gib: peak_rss_gib(),
        loss: round(loss, 3),
        forward_ms: ms(phases[0]),
        backward_ms: ms(phases[1]),
        optim_ms: ms(phases[2]),
        warmup_s: round(warmup_s, 2),
    })
}

fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).expect("device sync failed");
}

fn backend_name<B: Backend>() -> String {
    let name = B::name(&Default::default());
    // The CPU backends' products go to OpenBLAS with that feature (not CUDA's).
    match cfg!(feature = "openblas") && !name.contains("cuda") {
        true => format!("{name} + openblas"),
        false => name,
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so
/// each preset reports its own peak, not the largest so far.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round(kib / (1024.0 * 1024.0), 3))
}
