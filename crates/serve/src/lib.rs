//! Talk to a trained model from anything that speaks OpenAI's API, or from
//! a browser: `cargo run --release -p serve -- --model runs/sft`.
//!
//! Read in this order: [`api`] (the wire format), [`routes`] (the HTTP
//! side), [`worker`] (the thread that generates). The chat template, the
//! fitting of a long conversation into the context and the sampling are
//! the same code `chat` runs (`data::chat`, `model::generate`).

pub mod api;
pub mod routes;
pub mod worker;
