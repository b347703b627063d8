//! Real weights in and out: GPT-2 / Hugging Face checkpoints become our run
//! directories, and our runs become folders `transformers` loads.
//!
//! ```text
//! cargo run --release -p convert -- import-hf hf/gpt2 --out runs/gpt2
//! cargo run --release -p chat -- --model runs/gpt2 --prompt "The meaning of life is"
//! cargo run --release -p convert -- export-hf runs/sft --out hf/sft
//! ```
//! Our model is GPT-2's architecture (tanh GELU, pre-LayerNorm with eps
//! 1e-5, learned positions, tied head), so both directions are a mapping
//! of names and layouts (`weights`), checked against `transformers` by the
//! tests (`tests.rs`, on fixtures written by `scripts/make_hf_fixture.py`).

mod export;
mod hf_config;
mod import;
mod safetensors_file;
mod weights;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::export::{ExportOptions, export_hf};
use crate::import::{ImportOptions, import_hf};

/// Import GPT-2 / Hugging Face checkpoints as runs of this project, and export runs for `transformers`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer files) → a run directory.
    ImportHf {
        /// The folder, as `save_pretrained` or `huggingface-cli download` leaves it.
        dir: PathBuf,
        /// The run directory to write (built beside it, renamed into place when complete).
        #[arg(long)]
        out: PathBuf,
        /// The tokenizer, if the folder has none: a tokenizer.json, or a folder with one, or with
        /// vocab.json + merges.txt (or encoder.json + vocab.bpe).
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Keep the vocabulary exactly as it is. By default the chat and padding tokens that
        /// fine-tuning needs (<|im_start|>, <|im_end|>, <|pad|>) are added when missing, each with a
        /// new embedding row set to the mean of the others.
        #[arg(long)]
        keep_vocabulary: bool,
        /// Replace an earlier run of this project's at --out.
        #[arg(long)]
        overwrite: bool,
    },
    /// A run directory → a Hugging Face folder (GPT2LMHeadModel) that `transformers` loads.
    ExportHf {
        /// The run to export (pretrain, sft, dpo, lora-merged or import).
        run: PathBuf,
        /// A LoRA run to merge into the model first.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The folder to write (built beside it, renamed into place when complete).
        #[arg(long)]
        out: PathBuf,
        /// Replace an earlier export at --out.
        #[arg(long)]
        overwrite: bool,
    },
}

fn main() -> std::process::ExitCode {
    train::run::exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::ImportHf { dir, out, tokenizer, keep_vocabulary, overwrite } => {
            let options = ImportOptions { hf_dir: dir, out, tokenizer, keep_vocabulary, overwrite };
            let imported = import_hf(&options)?;
            let config = &imported.config;
            println!(
                "imported {}: {} layers, d_model {}, {} heads, context {}, vocabulary {}: {} parameters",
                options.hf_dir.display(),
                config.n_layers,
                config.d_model,
                config.n_heads,
                config.context_length,
                config.vocab_size,
                config.num_params()
            );
            for (token, id) in &imported.added_tokens {
                println!("added {token} as id {id}");
            }
            println!("wrote {}", options.out.display());
        }
        Command::ExportHf { run, adapter, out, overwrite } => {
            let options = ExportOptions { run, adapter, out, overwrite };
            let tensors = export_hf(&options)?;
            println!("wrote {} ({tensors} tensors)", options.out.display());
            println!(
                "load it with: AutoModelForCausalLM.from_pretrained({0:?}), AutoTokenizer.from_pretrained({0:?})",
                options.out.display().to_string()
            );
        }
    }
    Ok(())
}
