//! LoRA: teach the chat model a new skill while its own weights stay frozen;
//! only small adapter matrices train, and they save on their own
//! (walkthrough: `notebooks-md/06-lora.md`).
//!
//! ```text
//! cargo run --release -p lora                     # from runs/sft, on data/lora.jsonl, ~1-2 min on CPU
//! cargo run --release -p lora -- --help           # every flag
//! cargo run --release -p chat -- --model runs/sft --adapter runs/lora
//! cargo run --release -p lora -- merge --base runs/sft --adapter runs/lora --out runs/lora-merged
//! cargo run --release -p lora -- --quantize nf4 --out runs/qlora   # QLoRA: a 4-bit base under the adapters
//! ```
//! Writes `runs/lora/`: adapter.json + adapter.mpk (the adapter alone),
//! plus checkpoint/ for --resume (the adapters and their optimizer state
//! only: the frozen base is read from --init again, and must be the same
//! weights), best/ (an adapter run of its own), config.json, metrics.jsonl
//! and loss curves. Evaluation events carry `task_accuracy` (the new skill) and
//! `answer_accuracy` (the SFT questions: what was retained).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use clap::{Args as ClapArgs, Parser, Subcommand};
use data::sft::{SftDataset, pad_id};
use kernels::AutodiffBackend;
use kernels::quant::QuantFormat;
use model::count_params;
use model::lora::{LoraConfig, LoraTarget};
use serde::{Deserialize, Serialize};
use train::adapter::{AdapterConfig, check_resume_base, merge_into, save_adapter, save_adapter_config, weights_hash};
use train::args::range;
use train::checkpoint::{RunConfig, checkpoint_dir};
use train::run::{find_in_repo, load_init, load_questions, percent_change, print_plan, start_run};
use train::tasks::sft::SftTask;
use train::{Plan, TrainArgs, run_on_device};

// mimalloc, keeping freed memory for reuse (see `train::alloc`).
#[global_allocator]
static ALLOCATOR: train::alloc::MiMalloc = train::alloc::MiMalloc;

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Train a LoRA adapter on a frozen chat model (or, with `merge`, fold one into its base).
#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The run whose weights stay frozen under the adapter: config.json, tokenizer.json, checkpoint/.
    #[arg(long, default_value = "runs/sft")]
    init: PathBuf,
    /// Training conversations of the new skill (same JSONL formats as SFT).
    #[arg(long, default_value = "data/lora.jsonl")]
    data: PathBuf,
    /// Held-out conversations of the new skill: validation loss, and task accuracy for lines with an "answer".
    #[arg(long, default_value = "data/lora_eval.jsonl")]
    eval_data: PathBuf,
    /// Held-out SFT questions, to measure what the old skill kept.
    #[arg(long, default_value = "data/sft_eval.jsonl")]
    sft_eval_data: PathBuf,
    /// Questions scored per accuracy at each evaluation (0 = all).
    #[arg(long, default_value_t = 100)]
    eval_questions: usize,
    /// Longest reply generated when scoring an answer. [≥ 1]
    #[arg(long, default_value_t = 32, value_parser = range::at_least_one)]
    max_answer_tokens: usize,
    /// Inner width of the adapter's A·B: more = a more expressive update, more parameters. [≥ 1]
    #[arg(long, default_value_t = 8, value_parser = range::at_least_one)]
    rank: usize,
    /// The update is scaled by alpha / rank. [> 0]
    #[arg(long, default_value_t = 16.0, value_parser = range::positive)]
    alpha: f64,
    /// Dropout on the adapter's input. [0, 1)
    #[arg(long, default_value_t = 0.05, value_parser = range::probability)]
    lora_dropout: f64,
    /// Layers to adapt, comma-separated: q, k, v, out (attention), fc, proj (MLP).
    #[arg(long, value_delimiter = ',', default_value = "q,v")]
    targets: Vec<String>,
    /// Longest conversation in tokens (default: the model's context length); longer ones are cut.
    #[arg(long, value_parser = range::at_least_one)]
    max_seq_len: Option<usize>,
    /// QLoRA: keep the frozen base's linear weights in 4-bit NormalFloat (`nf4`) or `int8`,
    /// one scale per block of 64, dequantized a few rows at a time inside each product.
    #[arg(long, value_parser = ["nf4", "int8"])]
    quantize: Option<String>,
    /// Skip (and count) malformed lines instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
enum Command {
    /// Fold an adapter into its base weights: W ← W + (alpha/rank)·A·B, a plain model again.
    Merge(MergeArgs),
}

#[derive(ClapArgs, Debug, Clone, Serialize, Deserialize)]
struct MergeArgs {
    /// The base run the adapter was trained on.
    #[arg(long, default_value = "runs/sft")]
    base: PathBuf,
    /// The adapter's run directory.
    #[arg(long, default_value = "runs/lora")]
    adapter: PathBuf,
    /// Where to write the merged model (a run directory chat can load); not
    /// one of the inputs. Built beside it and renamed into place.
    #[arg(long, default_value = "runs/lora-merged")]
    out: PathBuf,
    /// Replace an earlier merged run at --out (only a run of this project's).
    #[arg(long)]
    overwrite: bool,
}

/// Adapter defaults: a larger rate than full fine-tuning suits the small,
/// zero-started update; no weight decay on it; ten passes over the data.
/// 6e-3 is above the 1e-4..1e-3 usual for large models: rank 8 on q,v of
/// the tiny model learns the persona slowly at lower rates. The passes are
/// for retention as much as for the persona (which three already give):
/// an adapter trained longer disturbs the old answers less, as measured on
/// the dev questions (README).
const DEFAULTS: &[(&str, &str)] = &[
    ("out", "runs/lora"),
    ("epochs", "10"),
    ("batch_size", "16"),
    ("lr", "6e-3"),
    ("min_lr", "6e-4"),
    ("warmup_steps", "10"),
    ("weight_decay", "0.0"),
    ("eval_batches", "10"),
];

fn main() -> std::process::ExitCode {
    train::alloc::keep_freed_memory();
    let args: Args = train::args::parse_with_defaults(DEFAULTS);
    train::run::exit_code(match &args.command {
        Some(Command::Merge(merge_args)) => merge(merge_args),
        None => run_on_device!(args.train.first_device(), run(args.clone())),
    })
}

fn run<B: AutodiffBackend>(device: &B::Device, mut args: Args) -> Result<()> {
    args.train.validate()?;
    let targets = args
        .targets
        .iter()
        .map(|t| t.parse::<LoraTarget>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--targets: {e}"))?;
    anyhow::ensure!(!targets.is_empty(), "--targets: name at least one layer to adapt (q, k, v, out, fc, proj)");
    let lora = LoraConfig { rank: args.rank, alpha: args.alpha, dropout: args.lora_dropout, targets };
    B::seed(device, args.train.seed);

    // -----------------------------------------------------------------------
    // 2. Tokenizer, the frozen base model and its adapters
    // -----------------------------------------------------------------------
    let (tokenizer, model_cfg, base) =
        load_init::<B>(&args.init, &["sft", "dpo", "lora-merged", "import"], None, device)?;
    let format = args.quantize.as_deref().map(|f| f.parse::<QuantFormat>().map_err(anyhow::Error::msg)).transpose()?;
    let base = match format {
        Some(format) => base.quantize_base(format),
        None => base,
    };
    let (stored, f32_bytes) = base.linear_weight_bytes();
    let model = base.with_lora(&lora, device);
    // A quantized weight is not a parameter tensor any more; it still counts.
    let quantized_params = if format.is_some() { f32_bytes / 4 } else { 0 };
    let counts = count_params(&model);
    let counts = model::ParamCounts { total: counts.total + quantized_params, ..counts };

    // -----------------------------------------------------------------------
    // 3. Data: the new skill, plus the old skill's questions for retention
    // -----------------------------------------------------------------------
    let seq_len = args.max_seq_len.unwrap_or(model_cfg.context_length);
    anyhow::ensure!(
        seq_len <= model_cfg.context_length,
        "--max-seq-len {seq_len} must be between 1 and the model's context length {}",
        model_cfg.context_length
    );
    args.data = find_in_repo(&args.data);
    args.eval_data = find_in_repo(&args.eval_data);
    let train_set = SftDataset::load(&args.data, &tokenizer, seq_len, args.skip_bad_lines).context("--data")?;
    let val_set = SftDataset::load(&args.eval_data, &tokenizer, seq_len, args.skip_bad_lines).context("--eval-data")?;
    let task_questions = load_questions(&args.eval_data, &tokenizer, seq_len, args.skip_bad_lines, args.eval_questions)
        .context("--eval-data")?;
    let questions = load_questions(&args.sft_eval_data, &tokenizer, seq_len, args.skip_bad_lines, args.eval_questions)
        .context("--sft-eval-data")?;

    // -----------------------------------------------------------------------
    // 4. The plan (and --dry-run)
    // -----------------------------------------------------------------------
    let plan = Plan::new(train_set.examples.len(), &args.train)?;
    let tokens = |set: &SftDataset| set.examples.iter().map(|e| e.ids.len()).sum::<usize>();
    print_plan(counts, tokens(&train_set), tokens(&val_set), &plan, seq_len);
    println!(
        "{}",
        train::memory::check(&model_cfg, counts.trainable, args.train.batch_size, seq_len, args.train.first_device())?
    );
    println!("adapter:    rank {}, alpha {}, on {:?} of each block", lora.rank, lora.alpha, args.targets);
    println!(
        "base:       linear weights {} KiB as stored{} ({} KiB in f32)",
        stored / 1024,
        format.map_or(String::new(), |f| format!(" in {f}")),
        f32_bytes / 1024
    );
    if args.train.dry_run {
        return Ok(());
    }
    let out = args.train.out.clone();
    if args.train.resume {
        check_resume_base(&out, &args.init, args.quantize.as_deref())?;
    }
    start_run(
        &out,
        args.train.resume,
        args.train.overwrite,
        &RunConfig { stage: "lora".into(), model: model_cfg.clone(), args: args.clone() },
        &tokenizer,
    )?;

    // The checkpoints hold the adapters only; this says which base they go on.
    let base_hash = weights_hash(&args.init)?;
    let quantize = args.quantize.clone();
    let adapter = AdapterConfig { lora, base: args.init.clone(), base_hash, adapter_crc32: None, quantize };
    save_adapter_config(&out, &adapter)?;

    // -----------------------------------------------------------------------
    // 5. Train (the shared loop; only adapter parameters have gradients)
    // -----------------------------------------------------------------------
    let pad = pad_id(&tokenizer);
    let task = SftTask {
        train: train_set,
        val: val_set,
        questions,
        paraphrases: Vec::new(),
        task_questions,
        tokenizer,
        pad_id: pad,
        max_answer_tokens: args.max_answer_tokens,
    };
    let stop = train::stop::stop_on_signals();
    let outcome = train::train(model, &task, &args.train, device, stop.flag(), "LoRA")?;
    if outcome.interrupted {
        return Err(stop.interrupted().into());
    }
    if args.train.node_rank > 0 {
        println!("done: node 0 writes the run and reports on it");
        return Ok(());
    }

    // -----------------------------------------------------------------------
    // 6. Save the adapter alone, and summarise
    // -----------------------------------------------------------------------
    let adapter_bytes = save_adapter(&out, &outcome.model.valid(), &adapter)?;
    let base_bytes = std::fs::metadata(checkpoint_dir(&args.init).join("model.mpk"))?.len();
    println!(
        "trained {counts}; adapter {} KiB vs the full model's {} KiB ({:.1}%)",
        adapter_bytes / 1024,
        base_bytes / 1024,
        100.0 * adapter_bytes as f64 / base_bytes as f64
    );
    if let Some((first, last)) = outcome.log.first_and_last("val") {
        println!(
            "validation loss {:.3} → {:.3}; task accuracy {}; SFT answer accuracy {} ({:.0} s)",
            first.loss,
            last.loss,
            percent_change(first, last, "task_accuracy"),
            percent_change(first, last, "answer_accuracy"),
            last.elapsed_s
        );
    }
    Ok(())
}

/// `lora merge`: base + adapter → a plain model in its own run directory
/// (see `train::adapter::merge_into`).
fn merge(args: &MergeArgs) -> Result<()> {
    merge_into(&args.base, &args.adapter, &args.out, args.overwrite)?;
    println!("merged {} into {}: {}", args.adapter.display(), args.base.display(), args.out.display());
    Ok(())
}
