//! The arithmetic of a run: how many examples make a batch, batches an
//! optimizer step, and steps an epoch and the whole run
//! (`notebooks-md/00-concepts.md`, section 3).

use anyhow::{Result, bail};

use crate::args::TrainArgs;

/// The arithmetic of a run, printed before it starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub examples: usize,
    /// Micro-batches per epoch: ⌊examples / (batch_size × workers)⌋ (drop_last).
    pub batches_per_epoch: usize,
    /// Optimizer steps per epoch: batches_per_epoch / grad_accum.
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// batch_size × grad_accum × workers examples per optimizer step.
    pub effective_batch: usize,
    /// Data-parallel workers (1: one device).
    pub workers: usize,
}

impl Plan {
    pub fn new(examples: usize, args: &TrainArgs) -> Result<Self> {
        // With data parallelism one micro-batch is every worker's share together.
        let workers = args.world_size();
        let batches_per_epoch = examples / (args.batch_size * workers);
        if batches_per_epoch == 0 {
            let (batch, most) = (args.batch_size, examples / workers);
            match workers {
                1 => bail!("--batch-size {batch} is larger than the {examples} training examples: use at most {most}"),
                _ => bail!(
                    "--batch-size {batch} × {workers} workers is larger than the {examples} training examples: use at most {most}"
                ),
            }
        }
        if args.grad_accum > batches_per_epoch {
            bail!(
                "--grad-accum {} needs more micro-batches than one epoch has ({batches_per_epoch}): use at most {batches_per_epoch}",
                args.grad_accum
            );
        }
        let steps_per_epoch = batches_per_epoch / args.grad_accum;
        let total_steps = args.max_steps.unwrap_or(steps_per_epoch * args.epochs);
        Ok(Self {
            examples,
            batches_per_epoch,
            steps_per_epoch,
            total_steps,
            effective_batch: args.batch_size * args.grad_accum * workers,
            workers,
        })
    }
}
