//! The training flags every stage shares (`--lr`, `--epochs`, ...).
//!
//! Stages flatten `TrainArgs` into their own command line and pick their own
//! defaults with `with_defaults`, so `--help` shows each stage's real values.

use std::path::PathBuf;

use clap::{Args, Command};
use serde::{Deserialize, Serialize};

use crate::optim::OptimizerKind;
use crate::schedule::ScheduleKind;

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Directory for checkpoints, config.json, metrics.jsonl and loss curves.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to train: `cpu` (burn's ndarray backend), `flex` (burn's faster flex CPU backend;
    /// needs a build with `--features flex`), or `cuda` / `cuda:N` (needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Passes over the training data. One epoch = (examples / batch size / grad accum) optimizer steps.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever --epochs says.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples per micro-batch: what must fit in memory at once.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step. Effective batch = batch size × grad accum:
    /// a large batch's gradient at a small batch's memory cost.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate at the end of the cosine or linear decay.
    #[arg(long, default_value_t = 1e-4)]
    pub min_lr: f64,
    /// Steps of linear warmup from ~0 to --lr.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleKind,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: OptimizerKind,
    /// Weight decay on weight matrices (not biases, LayerNorm or embeddings).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip_norm: f64,
    /// Clamp every gradient element into [-v, v] (off unless given).
    #[arg(long)]
    pub clip_value: Option<f64>,
    /// Evaluate on the validation set every N optimizer steps (and at step 0 and the end).
    #[arg(long, default_value_t = 50)]
    pub eval_interval: usize,
    /// Validation batches per evaluation (the same ones every time).
    #[arg(long, default_value_t = 20)]
    pub eval_batches: usize,
    /// Write a training-loss event every N optimizer steps.
    #[arg(long, default_value_t = 10)]
    pub log_interval: usize,
    /// Save a checkpoint every N optimizer steps (and at the end, and on Ctrl-C).
    #[arg(long, default_value_t = 200)]
    pub save_interval: usize,
    /// Seed for initialisation, shuffling, dropout and sampling.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Continue from the checkpoint in --out instead of starting over.
    #[arg(long)]
    pub resume: bool,
    /// Start over even if --out already holds a checkpoint (it is replaced).
    #[arg(long)]
    pub overwrite: bool,
    /// Print the plan (model size, tokens, steps) and exit without training.
    #[arg(long)]
    pub dry_run: bool,
}

/// Replaces the default values of `command`'s flags: `[("lr", "5e-5"), ...]`.
pub fn with_defaults(mut command: Command, defaults: &[(&'static str, &'static str)]) -> Command {
    for &(name, value) in defaults {
        command = command.mut_arg(name, |arg| arg.default_value(value).required(false));
    }
    command
}

/// Parses a stage's command line with that stage's defaults (see `with_defaults`).
pub fn parse_with_defaults<A: clap::Parser>(defaults: &[(&'static str, &'static str)]) -> A {
    let command = with_defaults(A::command(), defaults);
    A::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

impl TrainArgs {
    /// Training flags from a list, as on a command line; a later flag
    /// overrides an earlier one. For tests and notebooks.
    pub fn from_flags(flags: &[&str]) -> Self {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            train: TrainArgs,
        }
        use clap::{CommandFactory, FromArgMatches};
        let argv = std::iter::once("train").chain(flags.iter().copied());
        let matches = Cli::command().args_override_self(true).get_matches_from(argv);
        Cli::from_arg_matches(&matches).expect("flags parsed above").train
    }

    /// Checks the numbers make sense together, naming the flag at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-interval", self.eval_interval),
            ("--log-interval", self.log_interval),
            ("--save-interval", self.save_interval),
        ];
        for (flag, value) in positive {
            anyhow::ensure!(value > 0, "{flag} must be at least 1");
        }
        anyhow::ensure!(self.lr > 0.0 && self.lr.is_finite(), "--lr must be a positive number, got {}", self.lr);
        anyhow::ensure!(
            self.min_lr >= 0.0 && self.min_lr <= self.lr,
            "--min-lr must be between 0 and --lr ({})",
            self.lr
        );
        anyhow::ensure!(
            self.epochs > 0 || self.max_steps.is_some(),
            "--epochs must be at least 1 (or give --max-steps)"
        );
        if let Some(v) = self.clip_value {
            anyhow::ensure!(v > 0.0, "--clip-value must be positive");
        }
        Ok(())
    }
}
