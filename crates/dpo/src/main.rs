//! DPO (direct preference optimisation): from pairs of a preferred and a
//! rejected answer, move the chat model toward the preferred ones, without a
//! reward model (walkthrough: `notebooks-md/07-dpo.md`).
//!
//! ```text
//! cargo run --release -p dpo                      # from runs/sft, on data/dpo.jsonl, ~1-2 min on CPU
//! cargo run --release -p dpo -- --help            # every flag
//! cargo run --release -p chat -- --model runs/dpo
//! ```
//! Writes `runs/dpo/` with the same layout as the other stages; its events in
//! metrics.jsonl carry `reward_accuracy`, `reward_margin`, the chosen and
//! rejected rewards and (at evaluations) the SFT `answer_accuracy`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use clap::Parser;
use data::dpo::DpoDataset;
use data::sft::pad_id;
use kernels::{AutodiffBackend, Backend};
use model::{Gpt, count_params};
use serde::{Deserialize, Serialize};
use train::Task;
use train::args::range;
use train::checkpoint::RunConfig;
use train::run::{find_in_repo, load_init, load_questions, percent_change, print_plan, start_run};
use train::tasks::dpo::{DpoTask, answer_log_probs};
use train::tasks::eval::sampled_reply;
use train::{Plan, TrainArgs, run_on_device};

// mimalloc, keeping freed memory for reuse (see `train::alloc`).
#[global_allocator]
static ALLOCATOR: train::alloc::MiMalloc = train::alloc::MiMalloc;

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Preference-tune a chat model with DPO against a frozen copy of itself.
#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(version)]
struct Args {
    /// The run to start from (and the frozen reference): config.json, tokenizer.json, checkpoint/.
    #[arg(long, default_value = "runs/sft")]
    init: PathBuf,
    /// Training pairs (JSONL: {"chosen": [turns], "rejected": [turns]} or {"prompt", "chosen", "rejected"}).
    #[arg(long, default_value = "data/dpo.jsonl")]
    data: PathBuf,
    /// Held-out pairs: validation loss, reward accuracy and margin.
    #[arg(long, default_value = "data/dpo_eval.jsonl")]
    eval_data: PathBuf,
    /// Held-out SFT questions, to see whether DPO cost answer accuracy.
    #[arg(long, default_value = "data/sft_eval.jsonl")]
    sft_eval_data: PathBuf,
    /// SFT questions scored at each evaluation (0 = all).
    #[arg(long, default_value_t = 100)]
    eval_questions: usize,
    /// Longest reply generated when scoring an answer. [≥ 1]
    #[arg(long, default_value_t = 32, value_parser = range::at_least_one)]
    max_answer_tokens: usize,
    /// β: how far the policy may move from the reference. Small β lets it
    /// drift far to satisfy the preferences; large β keeps it close. Above
    /// the DPO paper's 0.1 because the tiny default model collapsed there to
    /// replying "." (the likelihood of every answer fell). It is fragile at
    /// 0.5 too: some runs keep their answers, others also end up replying ".".
    #[arg(long, default_value_t = 0.5, value_parser = range::positive)]
    beta: f64,
    /// Conservative DPO: assume each preference label is wrong with this probability.
    #[arg(long, default_value_t = 0.0, value_parser = range::label_smoothing)]
    label_smoothing: f64,
    /// RPO: add this weight times the chosen answers' negative log-likelihood
    /// (per token) to the DPO loss, so that preferring the chosen answer
    /// never means making it unlikely (0 = plain DPO). [≥ 0]
    #[arg(long, default_value_t = 1.0, value_parser = range::non_negative)]
    rpo_alpha: f64,
    /// Run the reference model on every batch instead of scoring all pairs once up front (slower; same result).
    #[arg(long)]
    ref_on_the_fly: bool,
    /// Longest conversation in tokens (default: the model's context length); longer pairs are an error.
    #[arg(long, value_parser = range::at_least_one)]
    max_seq_len: Option<usize>,
    /// Override the dropout of the initial model's config. [0, 1)
    #[arg(long, value_parser = range::probability)]
    dropout: Option<f64>,
    /// Skip (and count) malformed or over-long lines instead of stopping at the first.
    #[arg(long)]
    skip_bad_lines: bool,
    #[command(flatten)]
    train: TrainArgs,
}

/// DPO defaults: a small learning rate (large steps quickly lower the
/// likelihood of *both* answers) and one pass over the pairs.
const DEFAULTS: &[(&str, &str)] = &[
    ("out", "runs/dpo"),
    ("epochs", "1"),
    ("batch_size", "16"),
    ("lr", "3e-4"),
    ("min_lr", "3e-5"),
    ("warmup_steps", "5"),
    ("weight_decay", "0.0"),
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
    // 2. Tokenizer, the policy and its frozen reference
    // -----------------------------------------------------------------------
    let stages = ["sft", "dpo", "lora-merged", "import"];
    let (tokenizer, model_cfg, model) = load_init::<B>(&args.init, &stages, args.dropout, device)?;
    // The reference: the same weights on the inner backend, where no
    // gradient can ever reach them.
    let reference = model.valid();

    // -----------------------------------------------------------------------
    // 3. Data: preference pairs (and SFT questions for answer accuracy)
    // -----------------------------------------------------------------------
    let seq_len = args.max_seq_len.unwrap_or(model_cfg.context_length);
    anyhow::ensure!(
        seq_len <= model_cfg.context_length,
        "--max-seq-len {seq_len} must be between 1 and the model's context length {}",
        model_cfg.context_length
    );
    args.data = find_in_repo(&args.data);
    args.eval_data = find_in_repo(&args.eval_data);
    let train_set = DpoDataset::load(&args.data, &tokenizer, seq_len, args.skip_bad_lines).context("--data")?;
    let val_set = DpoDataset::load(&args.eval_data, &tokenizer, seq_len, args.skip_bad_lines).context("--eval-data")?;
    println!(
        "pairs:      {} training, {} held out ({} + {} bad lines skipped)",
        train_set.pairs.len(),
        val_set.pairs.len(),
        train_set.skipped,
        val_set.skipped
    );
    let questions = load_questions(&args.sft_eval_data, &tokenizer, seq_len, args.skip_bad_lines, args.eval_questions)
        .context("--sft-eval-data")?;

    // -----------------------------------------------------------------------
    // 4. The plan (and --dry-run)
    // -----------------------------------------------------------------------
    let plan = Plan::new(train_set.pairs.len(), &args.train)?;
    let tokens = |set: &DpoDataset| set.pairs.iter().map(|p| p.chosen.ids.len() + p.rejected.ids.len()).sum::<usize>();
    let counts = count_params(&model);
    print_plan(counts, tokens(&train_set), tokens(&val_set), &plan, 2 * seq_len);
    // Each pair is two rows, chosen and rejected.
    let rows = 2 * args.train.batch_size;
    println!("{}", train::memory::check(&model_cfg, counts.trainable, rows, seq_len, args.train.first_device())?);
    println!(
        "method:     sigmoid DPO, β {}, label smoothing {}, RPO α {}; reference {}",
        args.beta,
        args.label_smoothing,
        args.rpo_alpha,
        if args.ref_on_the_fly { "run on every batch" } else { "scored once up front" }
    );
    if args.train.dry_run {
        return Ok(());
    }
    let out = args.train.out.clone();
    start_run(
        &out,
        args.train.resume,
        args.train.overwrite,
        &RunConfig { stage: "dpo".into(), model: model_cfg.clone(), args: args.clone() },
        &tokenizer,
    )?;

    // -----------------------------------------------------------------------
    // 5. Train
    // -----------------------------------------------------------------------
    let mut task = DpoTask {
        train: train_set,
        val: val_set,
        reference,
        device: device.clone(),
        beta: args.beta,
        label_smoothing: args.label_smoothing,
        rpo_alpha: args.rpo_alpha,
        pad_id: pad_id(&tokenizer),
        questions,
        tokenizer,
        max_answer_tokens: args.max_answer_tokens,
        reference_scores: None,
    };
    if !args.ref_on_the_fly {
        task.precompute_reference(args.train.batch_size);
    }
    let stop = train::stop::stop_on_signals();
    let outcome = train::train(model, &task, &args.train, device, stop.flag(), "DPO")?;
    if outcome.interrupted {
        return Err(stop.interrupted().into());
    }
    if args.train.node_rank > 0 {
        println!("done: node 0 writes the run and reports on it");
        return Ok(());
    }

    // -----------------------------------------------------------------------
    // 6. Summary: did the preferences move, and what did it cost?
    // -----------------------------------------------------------------------
    if let Some((first, last)) = outcome.log.first_and_last("val") {
        let get = |e: &train::metrics::Event, k: &str| e.extra.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        println!(
            "held-out pairs: loss {:.3} → {:.3}; reward accuracy {:.1}% → {:.1}%; margin {:.3} → {:.3}",
            first.loss,
            last.loss,
            100.0 * get(first, "reward_accuracy"),
            100.0 * get(last, "reward_accuracy"),
            get(first, "reward_margin"),
            get(last, "reward_margin")
        );
        println!(
            "rewards at the end: chosen {:.3}, rejected {:.3} (both falling together is a warning sign)",
            get(last, "chosen_reward"),
            get(last, "rejected_reward")
        );
        println!("SFT answer accuracy {} ({:.0} s)", percent_change(first, last, "answer_accuracy"), last.elapsed_s);
        println!(
            "degeneration on the held-out questions: replies in a loop {} (must not rise); distinct-2 {:.3} → {:.3}",
            percent_change(first, last, "looping"),
            get(first, "distinct_2"),
            get(last, "distinct_2")
        );
    }
    print_preference_sample(&task, &outcome.model.valid(), args.train.seed);
    Ok(())
}

/// What DPO changed in the model's own preferences, on the held-out pairs:
/// in how many it finds the chosen answer likelier than the rejected one,
/// before (the reference) and after; how many of its replies, sampled at
/// temperature 1 as a user would meet them, are the rejected answer word for
/// word; and one pair, shown with its replies before and after.
fn print_preference_sample<B: Backend>(task: &DpoTask<B>, policy: &Gpt<B>, seed: u64) {
    let pairs = &task.val.pairs;
    // (gap before, gap after) of log π(chosen) − log π(rejected), per pair,
    // scored in batches as the evaluations do.
    let mut gaps: Vec<(f32, f32)> = Vec::with_capacity(pairs.len());
    for start in (0..pairs.len()).step_by(16) {
        let indices: Vec<usize> = (start..(start + 16).min(pairs.len())).collect();
        let batch = task.val_batch(&indices);
        let lp = answer_log_probs(policy, &batch.rows, &task.device).into_data().convert::<f32>();
        let lp = lp.to_vec::<f32>().expect("f32"); // [2n]: chosen rows, then rejected
        let n = indices.len();
        gaps.extend((0..n).map(|j| (batch.ref_chosen[j] - batch.ref_rejected[j], lp[j] - lp[n + j])));
    }
    let n = pairs.len();
    let likelier = |after: bool| gaps.iter().filter(|g| if after { g.1 > 0.0 } else { g.0 > 0.0 }).count();
    println!(
        "the model finds the chosen answer likelier than the rejected one in {}/{n} held-out pairs before DPO, {}/{n} after",
        likelier(false),
        likelier(true)
    );
    let prompt = |i: usize| &pairs[i].chosen.messages[..pairs[i].chosen.messages.len() - 1];
    fn answer(turns: &[data::chat::Message]) -> &str {
        turns.last().map_or("", |m| m.content.as_str())
    }
    let max = task.max_answer_tokens;
    // The same seed per pair before and after: the two draws differ only by the model.
    let sample = |model: &Gpt<B>, i: usize| {
        sampled_reply(model, &task.tokenizer, prompt(i), max, Some((1.0, seed.wrapping_add(i as u64)))).text
    };
    let before: Vec<String> = (0..n).map(|i| sample(&task.reference, i)).collect();
    let after: Vec<String> = (0..n).map(|i| sample(policy, i)).collect();
    let is_rejected = |reply: &str, i: usize| reply == answer(&pairs[i].rejected.messages);
    let rejected = |replies: &[String]| (0..n).filter(|&i| is_rejected(&replies[i], i)).count();
    println!(
        "replies sampled at temperature 1 that are the rejected answer word for word: {}/{n} before DPO, {}/{n} after",
        rejected(&before),
        rejected(&after)
    );
    // Shown: a pair whose sampled reply was the rejected answer before and the
    // chosen one after; else one that was rejected before and not after; else
    // the pair whose gap grew most.
    let chosen_after = |i: usize| after[i] == answer(&pairs[i].chosen.messages);
    let turned = |i: usize| is_rejected(&before[i], i) && !is_rejected(&after[i], i);
    let grew = |i: usize| gaps[i].1 - gaps[i].0;
    let key = |i: usize| (turned(i) && chosen_after(i), turned(i), grew(i));
    let Some(i) = (0..n).max_by(|&a, &b| key(a).partial_cmp(&key(b)).expect("finite")) else { return };
    let turns = &pairs[i].chosen.messages;
    println!("preference sample (held-out pair {}):", i + 1);
    println!("Q: {}", turns[turns.len() - 2].content);
    println!("   chosen:   {}", answer(turns));
    println!("   rejected: {}", answer(&pairs[i].rejected.messages));
    println!("   log π(chosen) − log π(rejected): {:+.2} before DPO, {:+.2} after", gaps[i].0, gaps[i].1);
    println!("   sampled reply before DPO: {}", before[i]);
    println!("   sampled reply after DPO:  {}", after[i]);
}
