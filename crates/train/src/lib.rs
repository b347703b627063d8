//! The shared training machinery: one loop (`trainer::train`) that every
//! stage runs, and its parts: schedules, clipping, the optimizer,
//! checkpoints, metrics and learning curves; and the stages' tasks.
//!
//! A stage implements [`task::Task`] (its batch type and its loss; the
//! stages' own are in [`tasks`]) and calls [`trainer::train`]. Nothing of
//! the loop is copied per stage.

pub mod adapter;
pub mod alloc;
pub mod args;
pub mod checkpoint;
pub mod clip;
pub mod data_parallel;
pub mod device;
pub mod diagnosis;
pub mod divergence;
pub mod loss_scale;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod plan;
pub mod plot;
pub mod report;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod stop;
pub mod task;
pub mod tasks;
pub mod trainer;

#[cfg(test)]
mod tests;

pub use args::TrainArgs;
pub use task::Task;
pub use trainer::{Outcome, Plan, train};

#[doc = include_str!("../../../notebooks-md/00-concepts.md")]
#[cfg(doctest)]
pub struct Notebook00;

#[doc = include_str!("../../../notebooks-md/03-pretraining.md")]
#[cfg(doctest)]
pub struct Notebook03;

#[doc = include_str!("../../../notebooks-md/04-generation.md")]
#[cfg(doctest)]
pub struct Notebook04;

#[doc = include_str!("../../../notebooks-md/05-sft.md")]
#[cfg(doctest)]
pub struct Notebook05;

#[doc = include_str!("../../../notebooks-md/07-dpo.md")]
#[cfg(doctest)]
pub struct Notebook07;
