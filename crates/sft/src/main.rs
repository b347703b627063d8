//! Supervised fine-tuning (SFT): the pretrained model learns to answer
//! questions in the chat format (walkthrough: `notebooks-md/05-sft.md`).
//!
//! ```text
//! cargo run --release -p sft                      # from runs/pretrain, on data/sft.jsonl, ~2 min on CPU
//! cargo run --release -p sft -- --help            # every flag
//! cargo run --release -p chat -- --model runs/sft # then talk to it
//! ```
//! Writes `runs/sft/` with the same layout as pretraining; its evaluation
//! events in metrics.jsonl also carry `answer_accuracy`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use data::sft::{SftDataset, pad_id};
use kernels::AutodiffBackend;
use model::count_params;
use serde::{Deserialize, Serialize};
use train::args::range;
use train::checkpoint::RunConfig;
use train::run::{find_in_repo, load_init, load_questions, percent_change, print_plan, start_run};
use train::tasks::eval::reply;
use train::tasks::sft::SftTask;
use train::{Plan, TrainArgs, run_on_device};

// mimalloc, keeping freed memory for reuse (see `train::alloc`).
#[global_allocator]
static ALLOCATOR: train::alloc::MiMalloc = train::alloc::MiMalloc;

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Fine-tune a pretrained GPT on conversations, learning only from the assistant's turns.
#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(version)]
struct Args {
    /// The run to start from: its config.json gives the model shape, its
    /// tokenizer.json the vocabulary, its checkpoint the weights.
    #[arg(long, default_value = "runs/pretrain")]
    init: PathBuf,
    /// Training conversations (JSONL: {"conversations": [...]} or {"instruction", "input", "output"}).
    #[arg(long, default_value = "data/sft.jsonl")]
    data: PathBuf,
    /// Held-out conversations: validation loss, and answer accuracy for lines with an "answer".
    /// (`data/sft_dev.jsonl` holds other towns and people, for tuning without looking at these.)
    #[arg(long, default_value = "data/sft_eval.jsonl")]
    eval_data: PathBuf,
    /// Trained facts asked in words the training file never uses: `paraphrase_accuracy`
    /// (`--paraphrase-data=`: not measured).
    #[arg(long, default_value = "data/sft_paraphrase_eval.jsonl", value_parser = range::path_or_nothing)]
    paraphrase_data: PathBuf,
    /// Longest conversation in tokens (default: the model's context length); longer ones are cut.
    #[arg(long, value_parser = range::at_least_one)]
    max_seq_len: Option<usize>,
    /// Held-out questions scored for answer accuracy at each evaluation (0 = all).
    #[arg(long, default_value_t = 100)]
    eval_questions: usize,
    /// Longest reply generated when scoring an answer. [≥ 1]
    #[arg(long, default_value_t = 32, value_parser = range::at_least_one)]
    max_answer_tokens: usize,
    /// Override the dropout of the initial model's config. [0, 1)
    #[arg(long, value_parser = range::probability)]
    dropout: Option<f64>,
    /// Skip (and count) malformed lines instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    #[command(flatten)]
    train: TrainArgs,
}

/// Fine-tuning defaults: a tenth of pretraining's peak rate (the weights
/// already hold the facts; big steps would overwrite them with the format),
/// a short warmup, and two passes (one leaves the format half learnt).
const DEFAULTS: &[(&str, &str)] = &[
    ("out", "runs/sft"),
    ("epochs", "2"),
    ("batch_size", "16"),
    ("lr", "3e-4"),
    ("min_lr", "3e-5"),
    ("warmup_steps", "10"),
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
    // 2. Tokenizer and the pretrained model
    // -----------------------------------------------------------------------
    let stages = ["pretrain", "import", "sft", "dpo", "lora-merged"];
    let (tokenizer, model_cfg, model) = load_init::<B>(&args.init, &stages, args.dropout, device)?;

    // -----------------------------------------------------------------------
    // 3. Data: conversations → ids and loss masks
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
    for (name, set) in [("training", &train_set), ("evaluation", &val_set)] {
        println!(
            "{name} set: {} conversations ({} dropped: no answer left after cutting to {seq_len} tokens; {} bad lines skipped)",
            set.examples.len(),
            set.dropped_truncated,
            set.skipped_bad
        );
    }
    let questions = load_questions(&args.eval_data, &tokenizer, seq_len, args.skip_bad_lines, args.eval_questions)
        .context("--eval-data")?;
    args.paraphrase_data = find_in_repo(&args.paraphrase_data);
    let paraphrases =
        load_questions(&args.paraphrase_data, &tokenizer, seq_len, args.skip_bad_lines, args.eval_questions)
            .context("--paraphrase-data")?;

    // -----------------------------------------------------------------------
    // 4. The plan (and --dry-run)
    // -----------------------------------------------------------------------
    let plan = Plan::new(train_set.examples.len(), &args.train)?;
    let train_tokens: usize = train_set.examples.iter().map(|e| e.ids.len()).sum();
    let val_tokens: usize = val_set.examples.iter().map(|e| e.ids.len()).sum();
    let counts = count_params(&model);
    print_plan(counts, train_tokens, val_tokens, &plan, seq_len);
    println!(
        "{}",
        train::memory::check(&model_cfg, counts.trainable, args.train.batch_size, seq_len, args.train.first_device())?
    );
    println!(
        "accuracy:   scored on {} held-out questions and {} paraphrased ones (greedy reply must contain the answer)",
        questions.len(),
        paraphrases.len()
    );
    if args.train.dry_run {
        return Ok(());
    }
    let out = args.train.out.clone();
    start_run(
        &out,
        args.train.resume,
        args.train.overwrite,
        &RunConfig { stage: "sft".into(), model: model_cfg.clone(), args: args.clone() },
        &tokenizer,
    )?;

    // -----------------------------------------------------------------------
    // 5. Train
    // -----------------------------------------------------------------------
    let pad = pad_id(&tokenizer);
    let task = SftTask {
        train: train_set,
        val: val_set,
        questions,
        paraphrases,
        task_questions: Vec::new(),
        tokenizer: tokenizer.clone(),
        pad_id: pad,
        max_answer_tokens: args.max_answer_tokens,
    };
    let stop = train::stop::stop_on_signals();
    let outcome = train::train(model, &task, &args.train, device, stop.flag(), "supervised fine-tuning")?;
    if outcome.interrupted {
        return Err(stop.interrupted().into());
    }
    if args.train.node_rank > 0 {
        println!("done: node 0 writes the run and reports on it");
        return Ok(());
    }

    // -----------------------------------------------------------------------
    // 6. Summary: what fine-tuning changed, and one answer
    // -----------------------------------------------------------------------
    if let Some((first, last)) = outcome.log.first_and_last("val") {
        println!(
            "validation loss {:.3} → {:.3}; answer accuracy {} (step {} → {}, {:.0} s)",
            first.loss,
            last.loss,
            percent_change(first, last, "answer_accuracy"),
            first.step,
            last.step,
            last.elapsed_s
        );
        println!(
            "paraphrased questions {}; well-formed replies {}",
            percent_change(first, last, "paraphrase_accuracy"),
            percent_change(first, last, "well_formed")
        );
    }
    if let Some(q) = task.questions.first() {
        let valid = burn::module::AutodiffModule::valid(&outcome.model);
        let history = &q.messages[..q.messages.len() - 1];
        println!(
            "Q: {}\nA: {}",
            history.last().map_or("", |m| m.content.as_str()),
            reply(&valid, &tokenizer, history, args.max_answer_tokens)
        );
    }
    Ok(())
}
