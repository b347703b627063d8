//! Pretraining: a GPT learns to predict the next token of raw text
//! (walkthrough: `notebooks-md/03-pretraining.md`).
//!
//! ```text
//! cargo run --release -p pretrain                      # tiny model, shipped corpus, CPU, ~3 min
//! cargo run --release -p pretrain -- --help            # every flag
//! cargo run --release -p pretrain --features cuda -- --device cuda --preset gpt2-124m
//! ```
//! Writes `runs/pretrain/`: checkpoint/, config.json, tokenizer.json,
//! metrics.jsonl, loss.svg and loss.png.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;
use data::prepare::{load_or_train_tokenizer, tokenize_corpus};
use data::{Corpus, WindowDataset, train_val_split};
use kernels::AutodiffBackend;
use model::{Gpt, GptConfig, count_params};
use serde::{Deserialize, Serialize};
use train::args::range;
use train::checkpoint::{RunConfig, load_run_weights, read_model_config};
use train::run::{find_in_repo, percent_change, print_plan, print_sample, start_run};
use train::tasks::pretrain::PretrainTask;
use train::{Plan, TrainArgs, run_on_device};

// mimalloc, keeping freed memory for reuse (see `train::alloc`).
#[global_allocator]
static ALLOCATOR: train::alloc::MiMalloc = train::alloc::MiMalloc;

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Pretrain a GPT on raw text: next-token prediction on sliding windows.
#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(version)]
struct Args {
    /// Corpus: a .txt file (documents separated by a blank line), a .jsonl
    /// file with a "text" field per line, or a folder of them.
    #[arg(long, default_value = "data/corpus.txt")]
    data: PathBuf,
    /// Continue pretraining a model instead of starting from random weights: a run
    /// directory (e.g. GPT-2 from `convert import-hf`). Its shape and tokenizer come with it.
    #[arg(long, conflicts_with_all = ["preset", "d_model", "n_layers", "n_heads", "context_length", "vocab_size"])]
    init: Option<PathBuf>,
    /// The tokenizer: a tokenizer.json, or a folder with one, or with GPT-2's files (vocab.json +
    /// merges.txt, or encoder.json + vocab.bpe). Default: --init's, or else a byte-level BPE
    /// trained on --data (cached in --cache-dir, so later runs reuse it).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Vocabulary size when training the tokenizer. [260, 1048576]
    #[arg(long, default_value_t = 4096, value_parser = range::vocabulary)]
    vocab_size: usize,
    /// Model shape: tiny (1.3M parameters), mini (MiniMind-sized) or gpt2-124m.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Override the preset's width (a multiple of the heads). [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    d_model: Option<usize>,
    /// Override the preset's number of transformer blocks. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    n_layers: Option<usize>,
    /// Override the preset's attention heads per block. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    n_heads: Option<usize>,
    /// Override the preset's context length (longest sequence the model can see). [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    context_length: Option<usize>,
    /// Override the preset's dropout probability. [0, 1)
    #[arg(long, value_parser = range::probability)]
    dropout: Option<f64>,
    /// Tokens per training window (default: the model's context length). [1, context length]
    #[arg(long, value_parser = range::at_least_one)]
    max_seq_len: Option<usize>,
    /// Distance between the starts of consecutive windows (default: --max-seq-len, no overlap). [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    stride: Option<usize>,
    /// Share of the token stream held out for validation (taken from its end). (0, 1)
    #[arg(long, default_value_t = 0.1, value_parser = range::part)]
    val_ratio: f64,
    /// Train on a random subset of this many windows. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    max_samples: Option<usize>,
    /// Skip (and count) JSONL lines that are not JSON or lack "text", instead of stopping.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Fact completions scored at each evaluation ("fact accuracy"): the held-out
    /// towns' and people's facts, which only the pretraining text holds (`--fact-eval=`: not scored).
    #[arg(long, default_value = "data/facts_eval.jsonl", value_parser = range::path_or_nothing)]
    fact_eval: PathBuf,
    /// Where tokenizers and token files are cached between runs.
    #[arg(long, default_value = "runs/cache")]
    cache_dir: PathBuf,
    #[command(flatten)]
    train: TrainArgs,
}

/// This stage's defaults for the shared training flags, sized for the tiny
/// model on the shipped corpus within the pipeline's time budget. Seven
/// passes: a fact read once is rarely stored, and the validation loss is
/// still falling at the end (the run report calls it under-fitting, rightly;
/// the budget is the limit). The rate is high for the same reason: a small
/// model and few steps.
const DEFAULTS: &[(&str, &str)] = &[
    ("out", "runs/pretrain"),
    ("epochs", "7"),
    ("batch_size", "16"),
    ("lr", "3e-3"),
    ("min_lr", "3e-4"),
    ("warmup_steps", "20"),
    ("eval_batches", "10"),
];

fn main() -> std::process::ExitCode {
    train::alloc::keep_freed_memory();
    let args: Args = train::args::parse_with_defaults(DEFAULTS);
    train::run::exit_code(run_on_device!(args.train.first_device(), run(args.clone())))
}

fn run<B: AutodiffBackend>(device: &B::Device, mut args: Args) -> Result<()> {
    args.train.validate()?;
    B::seed(device, args.train.seed);

    // -----------------------------------------------------------------------
    // 2. Tokenizer
    // -----------------------------------------------------------------------
    args.data = find_in_repo(&args.data);
    let mut corpus = Corpus::open(&args.data).context("--data")?;
    corpus.skip_bad_lines = args.skip_bad_lines;
    let init = match args.init.as_deref() {
        Some(run) => {
            train::run_dir::require_stage(run, "--init", &[])?;
            Some((run, read_model_config(run).with_context(|| format!("--init {}", run.display()))?))
        }
        None => None,
    };
    let tokenizer_path = match (&args.tokenizer, &init) {
        (None, Some((run, _))) => Some(run.join("tokenizer.json")),
        (path, _) => path.clone(),
    };
    let (tokenizer, trained) =
        load_or_train_tokenizer(tokenizer_path.as_deref(), &corpus, args.vocab_size, &args.cache_dir)?;
    if let Some((run, cfg)) = &init
        && tokenizer.vocab_size() != cfg.vocab_size
    {
        bail!(
            "--tokenizer has {} tokens, but --init {}'s model has a vocabulary of {}: use the model's own tokenizer",
            tokenizer.vocab_size(),
            run.display(),
            cfg.vocab_size
        );
    }
    println!(
        "tokenizer:  {} tokens{}",
        tokenizer.vocab_size(),
        if trained { " (trained on the corpus just now)" } else { "" }
    );

    // -----------------------------------------------------------------------
    // 3. Data: token file → 90/10 split → sliding windows
    // -----------------------------------------------------------------------
    let (tokens, _) = tokenize_corpus(&corpus, &tokenizer, &args.cache_dir)?;
    let tokens = Arc::new(tokens);
    // The model's shape comes first: windows are as long as its context
    // unless --max-seq-len says otherwise.
    let model_cfg = match &init {
        Some((_, cfg)) => cfg.clone().with_dropout(args.dropout.unwrap_or(cfg.dropout)),
        None => model_config(&args, tokenizer.vocab_size())?,
    };
    let seq_len = args.max_seq_len.unwrap_or(model_cfg.context_length);
    if seq_len > model_cfg.context_length {
        bail!("--max-seq-len {seq_len} must be between 1 and the model's context length {}", model_cfg.context_length);
    }
    let stride = args.stride.unwrap_or(seq_len);
    let (train_range, val_range) = train_val_split(tokens.len(), args.val_ratio);
    let mut train_set = WindowDataset::new(tokens.clone(), train_range.clone(), seq_len, stride);
    if let Some(max) = args.max_samples {
        train_set = train_set.subset(max, args.train.seed);
    }
    // Validation windows never overlap: each held-out token is scored once.
    let val_set = WindowDataset::new(tokens.clone(), val_range.clone(), seq_len, seq_len);
    if train_set.is_empty() {
        bail!("the corpus ({} tokens) is too short for one window of --max-seq-len {seq_len}", tokens.len());
    }

    // -----------------------------------------------------------------------
    // 4. Model (once it is known to fit)
    // -----------------------------------------------------------------------
    let batch = args.train.batch_size;
    let memory = train::memory::check(&model_cfg, model_cfg.num_params(), batch, seq_len, args.train.first_device())?;
    let model = match &init {
        Some((run, _)) => {
            load_run_weights::<B>(run, &model_cfg, device).with_context(|| format!("--init {}", run.display()))?
        }
        None => Gpt::<B>::new(&model_cfg, device),
    };

    // -----------------------------------------------------------------------
    // 5. The plan (and --dry-run)
    // -----------------------------------------------------------------------
    let plan = Plan::new(train_set.len(), &args.train)?;
    print_plan(count_params(&model), train_range.len(), val_range.len(), &plan, seq_len);
    println!("{memory}");
    if args.train.dry_run {
        return Ok(());
    }
    let out = args.train.out.clone();
    start_run(
        &out,
        args.train.resume,
        args.train.overwrite,
        &RunConfig { stage: "pretrain".into(), model: model_cfg.clone(), args: args.clone() },
        &tokenizer,
    )?;

    // -----------------------------------------------------------------------
    // 6. Train
    // -----------------------------------------------------------------------
    let facts = match args.fact_eval.as_os_str().is_empty() {
        true => Vec::new(),
        false => {
            args.fact_eval = find_in_repo(&args.fact_eval);
            data::facts::load_facts(&args.fact_eval).context("--fact-eval")?
        }
    };
    let task = PretrainTask { train: train_set, val: val_set, facts, tokenizer: tokenizer.clone() };
    let stop = train::stop::stop_on_signals();
    let outcome = train::train(model, &task, &args.train, device, stop.flag(), "pretraining")?;
    if outcome.interrupted {
        return Err(stop.interrupted().into());
    }
    if args.train.node_rank > 0 {
        println!("done: node 0 writes the run and reports on it");
        return Ok(());
    }

    // -----------------------------------------------------------------------
    // 7. Summary and a sample
    // -----------------------------------------------------------------------
    let val = outcome.log.curve("val");
    if let (Some(first), Some(last)) = (val.first(), val.last()) {
        let secs = outcome.log.events.last().map_or(0.0, |e| e.elapsed_s);
        println!(
            "validation loss {:.3} → {:.3} in {secs:.0} s ({} steps); curves in {}/loss.svg",
            first.1,
            last.1,
            last.0,
            out.display()
        );
    }
    if let Some((first, last)) = outcome.log.first_and_last("val")
        && !task.facts.is_empty()
    {
        let facts = percent_change(first, last, "fact_accuracy");
        println!("fact accuracy {facts} ({} held-out fact completions)", task.facts.len());
    }
    let prompt: Vec<u32> = (val_range.start..val_range.start + 8).map(|i| tokens.get(i)).collect();
    let valid = burn::module::AutodiffModule::valid(&outcome.model);
    println!("sample:\n{}", print_sample(&valid, &tokenizer, &prompt, 80, args.train.seed));
    Ok(())
}

/// The preset with any overrides applied.
fn model_config(args: &Args, vocab_size: usize) -> Result<GptConfig> {
    let mut cfg = GptConfig::preset(&args.preset, Some(vocab_size)).map_err(|e| anyhow::anyhow!("--preset: {e}"))?;
    cfg.d_model = args.d_model.unwrap_or(cfg.d_model);
    cfg.n_layers = args.n_layers.unwrap_or(cfg.n_layers);
    cfg.n_heads = args.n_heads.unwrap_or(cfg.n_heads);
    cfg.context_length = args.context_length.unwrap_or(cfg.context_length);
    cfg.dropout = args.dropout.unwrap_or(cfg.dropout);
    cfg.validate().map_err(|e| anyhow::anyhow!("model shape: {e}"))?;
    Ok(cfg)
}
