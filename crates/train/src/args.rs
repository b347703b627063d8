//! The training flags every stage shares (`--lr`, `--epochs`, ...).
//!
//! Stages flatten `TrainArgs` into their own command line and pick their own
//! defaults with `with_defaults`, so `--help` shows each stage's real values.

use std::path::PathBuf;

use clap::{Args, Command};
use serde::{Deserialize, Serialize};

use model::Precision;

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
    /// Data parallelism: one worker per listed device, all of one kind (`cpu,cpu` to learn
    /// and test on a CPU; `cuda:0,cuda:1,…`). Each worker gets --batch-size examples of every
    /// step's batch; their gradients are averaged (notebook 03, §9). Replaces --device.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    #[serde(default)]
    pub devices: Vec<String>,
    /// Machines in a multi-machine run, each running this command with its own --node-rank
    /// and the same --devices count. [≥ 1]
    #[arg(long, default_value_t = 1, value_parser = range::at_least_one)]
    #[serde(default = "one")]
    pub nodes: usize,
    /// This machine's place among --nodes: 0 hosts the coordinator and writes the run. [0, nodes)
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub node_rank: usize,
    /// host:port of the coordinator, on node 0 (every node gives the same one). Needed with --nodes > 1.
    #[arg(long)]
    #[serde(default)]
    pub master_addr: Option<String>,
    /// host:port at which the other nodes reach this one, to exchange gradients. Needed with --nodes > 1.
    #[arg(long)]
    #[serde(default)]
    pub node_addr: Option<String>,
    /// Seconds a worker waits for the others at a step before it stops the run, saying
    /// which wait failed (a worker that died never answers). Covers evaluations and saves. [≥ 1]
    #[arg(long, default_value_t = 300, value_parser = range::at_least_one)]
    #[serde(default = "default_collective_timeout")]
    pub collective_timeout: usize,
    /// Passes over the training data. One epoch = (examples / batch size / grad accum) optimizer steps. [≥ 1]
    #[arg(long, default_value_t = 1, value_parser = range::at_least_one)]
    pub epochs: usize,
    /// Stop after this many optimizer steps, whatever --epochs says. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    pub max_steps: Option<usize>,
    /// Examples per micro-batch: what must fit in memory at once. [≥ 1]
    #[arg(long, default_value_t = 16, value_parser = range::at_least_one)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step. Effective batch = batch size × grad accum:
    /// a large batch's gradient at a small batch's memory cost. [≥ 1]
    #[arg(long, default_value_t = 1, value_parser = range::at_least_one)]
    pub grad_accum: usize,
    /// Peak learning rate. [> 0]
    #[arg(long, default_value_t = 1e-3, value_parser = range::positive)]
    pub lr: f64,
    /// Learning rate at the end of the cosine or linear decay. [0, --lr]
    #[arg(long, default_value_t = 1e-4, value_parser = range::non_negative)]
    pub min_lr: f64,
    /// Steps of linear warmup from ~0 to --lr. [≥ 0]
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleKind,
    /// Optimizer.
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: OptimizerKind,
    /// Weight decay on weight matrices (not biases, LayerNorm or embeddings). [≥ 0]
    #[arg(long, default_value_t = 0.1, value_parser = range::non_negative)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 = off). [≥ 0]
    #[arg(long, default_value_t = 1.0, value_parser = range::non_negative)]
    pub clip_norm: f64,
    /// Clamp every gradient element into [-v, v] (off unless given). [> 0]
    #[arg(long, value_parser = range::positive)]
    pub clip_value: Option<f64>,
    /// Stop as diverged when the training loss, smoothed over about ten
    /// steps, exceeds this many times its lowest value, or a validation loss
    /// this many times the best (and at least one nat more); a loss that is
    /// not a number always stops the run. The last good checkpoint is kept.
    /// [0 = only NaN, or ≥ 1]
    #[arg(long, default_value_t = 4.0, value_parser = range::divergence)]
    pub divergence_factor: f64,
    /// Evaluate on the validation set every N optimizer steps (and at step 0 and the end).
    /// Default: a tenth of the run, so every run's curve has about ten points. [≥ 1]
    #[arg(long, value_parser = range::at_least_one)]
    pub eval_interval: Option<usize>,
    /// Precision of the matrix products: `f32`, or mixed precision with `bf16` or `fp16`
    /// products (weights, optimizer state and checkpoints stay f32; notebook 00, §7).
    /// 16-bit runs need `--device flex` or `cuda`; fp16 adds dynamic loss scaling.
    #[arg(long, default_value = "f32")]
    #[serde(default)]
    pub dtype: Precision,
    /// fp16 only: the loss scale to start from (halved at each overflow). [> 0]
    #[arg(long, default_value_t = 65536.0, value_parser = range::positive)]
    #[serde(default = "default_loss_scale")]
    pub loss_scale: f64,
    /// fp16 only: double the loss scale after this many steps in a row without an overflow. [≥ 1]
    #[arg(long, default_value_t = 2000, value_parser = range::at_least_one)]
    #[serde(default = "default_growth_interval")]
    pub loss_scale_growth_interval: usize,
    /// Validation batches per evaluation (the same ones every time). [≥ 1]
    #[arg(long, default_value_t = 20, value_parser = range::at_least_one)]
    pub eval_batches: usize,
    /// Write a training-loss event every N optimizer steps. [≥ 1]
    #[arg(long, default_value_t = 10, value_parser = range::at_least_one)]
    pub log_interval: usize,
    /// Save a checkpoint every N optimizer steps (and at the end, and when stopped by a signal). [≥ 1]
    #[arg(long, default_value_t = 200, value_parser = range::at_least_one)]
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

    /// Checks what the flags' own ranges cannot: how they fit together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.min_lr <= self.lr, "--min-lr ({}) must not exceed --lr ({})", self.min_lr, self.lr);
        crate::data_parallel::Topology::from_args(self)?;
        crate::device::check_dtype(self.first_device(), self.dtype)
    }

    /// The device that names the backend: --device, or the first of --devices.
    pub fn first_device(&self) -> &str {
        self.devices.first().unwrap_or(&self.device)
    }

    /// Workers in all: devices per node × nodes. Each takes --batch-size examples per micro-batch.
    pub fn world_size(&self) -> usize {
        self.devices.len().max(1) * self.nodes
    }
}

// Defaults for configs saved before these flags existed.
fn one() -> usize {
    1
}
fn default_collective_timeout() -> usize {
    300
}
fn default_loss_scale() -> f64 {
    65536.0
}
fn default_growth_interval() -> usize {
    2000
}

/// Parsers for numeric flags, shared by every stage: a value out of range
/// is refused when the command line is read, with the range in the error
/// (and in each flag's `--help` line, in brackets).
pub mod range {
    fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
        s.trim().parse().map_err(|_| format!("`{s}` is not a number of the expected kind"))
    }

    fn finite(s: &str) -> Result<f64, String> {
        let x: f64 = number(s)?;
        if x.is_finite() { Ok(x) } else { Err(format!("`{s}` is not a finite number")) }
    }

    /// A count of at least 1.
    pub fn at_least_one(s: &str) -> Result<usize, String> {
        match number(s)? {
            0 => Err("must be at least 1".into()),
            n => Ok(n),
        }
    }

    /// A finite number above 0.
    pub fn positive(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if x > 0.0 { Ok(x) } else { Err(format!("must be above 0, got {x}")) }
    }

    /// A finite number, 0 or above.
    pub fn non_negative(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if x >= 0.0 { Ok(x) } else { Err(format!("must be 0 or above, got {x}")) }
    }

    /// A probability that is not certainty: [0, 1) (dropout).
    pub fn probability(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if (0.0..1.0).contains(&x) { Ok(x) } else { Err(format!("must be in [0, 1), got {x}")) }
    }

    /// A share that is not nothing: (0, 1] (top-p).
    pub fn share(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if x > 0.0 && x <= 1.0 { Ok(x) } else { Err(format!("must be in (0, 1], got {x}")) }
    }

    /// A file, or nothing (`--flag=`) to switch off what it feeds. clap's own
    /// path parser refuses the empty value.
    pub fn path_or_nothing(s: &str) -> Result<std::path::PathBuf, String> {
        Ok(s.into())
    }

    /// A part of a whole, neither none nor all: (0, 1) (the validation split).
    pub fn part(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if x > 0.0 && x < 1.0 { Ok(x) } else { Err(format!("must be in (0, 1), got {x}")) }
    }

    /// DPO's label smoothing: [0, 0.5), since at 0.5 the labels say nothing.
    pub fn label_smoothing(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if (0.0..0.5).contains(&x) { Ok(x) } else { Err(format!("must be in [0, 0.5), got {x}")) }
    }

    /// `--divergence-factor`: 0 (off), or a factor of at least 1.
    pub fn divergence(s: &str) -> Result<f64, String> {
        let x = finite(s)?;
        if x == 0.0 || x >= 1.0 { Ok(x) } else { Err(format!("must be 0 (off) or at least 1, got {x}")) }
    }

    /// A vocabulary size: room for the 256 bytes and 4 special tokens, and at
    /// most 2^20 (over four times the largest vocabularies in use).
    pub fn vocabulary(s: &str) -> Result<usize, String> {
        match number(s)? {
            n @ 260..=1_048_576 => Ok(n),
            n => Err(format!("must be between 260 (256 bytes + 4 special tokens) and 1048576, got {n}")),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ranges_refuse_what_they_should_and_say_why() {
            assert_eq!(at_least_one("3"), Ok(3));
            assert!(at_least_one("0").unwrap_err().contains("at least 1"));
            assert!(at_least_one("-1").unwrap_err().contains("not a number"));
            assert!(positive("0").unwrap_err().contains("above 0"));
            assert!(positive("nan").unwrap_err().contains("not a finite number"));
            assert!(positive("inf").is_err());
            assert_eq!(non_negative("0"), Ok(0.0));
            assert!(probability("1").unwrap_err().contains("[0, 1)"));
            assert!(share("0").is_err() && share("1") == Ok(1.0));
            assert!(part("1").is_err() && part("0.1") == Ok(0.1));
            assert!(label_smoothing("0.5").is_err());
            assert!(divergence("0.5").is_err() && divergence("0") == Ok(0.0) && divergence("4") == Ok(4.0));
            assert!(vocabulary("100").is_err() && vocabulary("99999999999").is_err() && vocabulary("4096") == Ok(4096));
        }
    }
}
