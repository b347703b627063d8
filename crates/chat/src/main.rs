//! Generate text from any checkpoint, streaming it as it is produced.
//!
//! ```text
//! cargo run --release -p chat -- --model runs/pretrain --prompt "Varnel lies"   # completion
//! cargo run --release -p chat -- --model runs/sft                               # a conversation
//! cargo run --release -p chat -- --model runs/sft --prompt "What is 7 plus 5?"  # one answer
//! ```
//! A pretrained model continues text. A fine-tuned one (sft, lora, dpo) is
//! spoken to through the same chat template it was trained with.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use data::Tokenizer;
use data::chat::{Message, Role, check_chat_tokens, fit_prompt};
use data::tokenizer::{IM_END, TextStream};
use data::util::SplitMix64;
use kernels::{AutodiffBackend, Backend};
use model::{GenerateOptions, Gpt, Sampling, generate};
use train::args::range;
use train::run::{LoadedRun, load_for_use};
use train::run_on_device;

// mimalloc, keeping freed memory for reuse (see `train::alloc`).
#[global_allocator]
static ALLOCATOR: train::alloc::MiMalloc = train::alloc::MiMalloc;

// ---------------------------------------------------------------------------
// 1. Command line
// ---------------------------------------------------------------------------

/// Generate text from a trained model: one prompt, or an interactive session.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// A run directory written by a stage (holds config.json, tokenizer.json, checkpoint/).
    #[arg(long, default_value = "runs/pretrain")]
    model: PathBuf,
    /// A LoRA adapter directory (from `cargo run -p lora`) to put on top of --model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Text to continue; prints the completion and exits. Without it, asks for prompts interactively.
    #[arg(long)]
    prompt: Option<String>,
    /// Most tokens to generate per answer. [≥ 1]
    #[arg(long, default_value_t = 200, value_parser = range::at_least_one)]
    max_new_tokens: usize,
    /// Sampling temperature: 0 = greedy (always the likeliest token), 1 = the model's distribution. [≥ 0]
    #[arg(long, default_value_t = 0.8, value_parser = range::non_negative)]
    temperature: f64,
    /// Sample only among the k likeliest tokens (0 = no limit). [≥ 0]
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Sample only among the likeliest tokens whose probabilities sum to p (1 = no limit). (0, 1]
    #[arg(long, default_value_t = 1.0, value_parser = range::share)]
    top_p: f64,
    /// Values above 1 make repeating a token already in the text less likely (1 = off). [> 0]
    #[arg(long, default_value_t = 1.0, value_parser = range::positive)]
    repetition_penalty: f64,
    /// Seed of the sampler: the same seed and prompt give the same text.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Re-run the whole text every step instead of using the KV cache (slow; for comparison).
    #[arg(long)]
    no_cache: bool,
    /// Keep generating past <|endoftext|> (for measuring speed over a fixed length).
    #[arg(long)]
    ignore_eot: bool,
    /// System prompt for chat models (e.g. "You are a helpful assistant.").
    #[arg(long)]
    system: Option<String>,
    /// Plain text completion even for a fine-tuned model (no chat template).
    #[arg(long)]
    raw: bool,
    /// Where to run: `cpu` (burn's ndarray backend), `flex` (burn's faster flex CPU backend;
    /// needs a build with `--features flex`), or `cuda` / `cuda:N` (needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> std::process::ExitCode {
    train::alloc::keep_freed_memory();
    let args = Args::parse();
    train::run::exit_code(run_on_device!(&args.device, run(args.clone())))
}

fn run<B: AutodiffBackend>(device: &B::Device, args: Args) -> Result<()> {
    // -----------------------------------------------------------------------
    // 2. Tokenizer and model (inference only: no autodiff)
    // -----------------------------------------------------------------------
    let loaded = load_for_use::<B::InnerBackend>(&args.model, "--model", args.adapter.as_deref(), device)?;
    let LoadedRun { stage, tokenizer, config, model } = loaded;
    eprintln!(
        "loaded {} ({} layers, d_model {}, context {})",
        args.model.display(),
        config.n_layers,
        config.d_model,
        config.context_length
    );
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        top_p: (args.top_p < 1.0).then_some(args.top_p),
        repetition_penalty: args.repetition_penalty,
    };
    let rng = SplitMix64(args.seed);

    // -----------------------------------------------------------------------
    // 3. Generate: one prompt, or a loop reading prompts from stdin
    // -----------------------------------------------------------------------
    // A pretrained or imported model continues text; fine-tuned ones chat.
    let chat = !args.raw && stage != "pretrain" && stage != "import";
    if chat {
        check_chat_tokens(&tokenizer, &args.model.join("tokenizer.json"))?;
    }
    let history: Vec<Message> = args.system.iter().map(|s| Message::new(Role::System, s.clone())).collect();
    let first_turn = history.len();
    let mut session = Session { model: &model, tokenizer: &tokenizer, args: &args, sampling, rng, chat, history };
    if let Some(prompt) = &args.prompt {
        return session.respond(prompt);
    }
    let (what, reset) = match chat {
        true => ("chat with the model", ", /reset to forget the conversation"),
        false => ("type text for the model to continue", ""),
    };
    eprintln!("{what} (Ctrl-D or /exit to quit{reset})");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let Some(line) = read_line(&mut stdin.lock())? else {
            return Ok(());
        };
        match line.trim_end_matches(['\n', '\r']) {
            "" => {}
            "/exit" => return Ok(()),
            "/reset" => {
                session.history.truncate(first_turn);
                eprintln!("(conversation forgotten)");
            }
            prompt => session.respond(prompt)?,
        }
    }
}

/// A conversation with a loaded model (or, for a pretrained one, a series
/// of text continuations).
struct Session<'a, B: Backend> {
    model: &'a Gpt<B>,
    tokenizer: &'a Tokenizer,
    args: &'a Args,
    sampling: Sampling,
    /// One generator for the whole session: a seed reproduces all of it.
    rng: SplitMix64,
    /// Through the chat template (a fine-tuned model), or plain text.
    chat: bool,
    /// The turns so far (a system prompt first, if given).
    history: Vec<Message>,
}

impl<B: Backend> Session<'_, B> {
    /// Answers one user input: as the next chat turn, or as a text continuation.
    fn respond(&mut self, input: &str) -> Result<()> {
        let (model, tokenizer) = (self.model, self.tokenizer);
        if !self.chat {
            let ids = tokenizer.encode(input);
            anyhow::ensure!(!ids.is_empty(), "the prompt is empty");
            print!("{input}");
            self.stream(&ids, tokenizer.eot_id)?;
            return Ok(());
        }
        self.history.push(Message::new(Role::User, input));
        // The oldest turns go first when the conversation outgrows the
        // context, leaving room for the answer.
        let room = model.context_length().saturating_sub(self.args.max_new_tokens.min(model.context_length() / 2));
        let prompt = fit_prompt(tokenizer, &mut self.history, room);
        let im_end = tokenizer.token_id(IM_END).expect("checked at start");
        let answer = self.stream(&prompt, im_end)?;
        self.history.push(Message::new(Role::Assistant, answer));
        Ok(())
    }

    /// Prints the continuation of `prompt` token by token until `stop`; returns it.
    fn stream(&mut self, prompt: &[u32], stop: u32) -> Result<String> {
        let (tokenizer, args) = (self.tokenizer, self.args);
        let mut stdout = std::io::stdout();
        let mut text = TextStream::new(tokenizer);
        let started = Instant::now();
        let options = GenerateOptions {
            max_new_tokens: args.max_new_tokens,
            sampling: self.sampling,
            stop_token: (!args.ignore_eot).then_some(stop),
            use_cache: !args.no_cache,
        };
        let rng = &mut self.rng;
        let ids = generate(self.model, prompt, &options, &mut || rng.next_f64(), &mut |id| {
            if id == stop {
                return true;
            }
            print!("{}", text.push(id));
            stdout.flush().ok();
            true
        });
        let secs = started.elapsed().as_secs_f64();
        println!();
        let cache = if args.no_cache { ", no KV cache" } else { "" };
        eprintln!("[{} tokens in {secs:.2} s: {:.1} tokens/s{cache}]", ids.len(), ids.len() as f64 / secs);
        print!("{}", text.finish());
        Ok(text.text())
    }
}

/// The next line of `input` (None at its end). A line that is not UTF-8 (a
/// terminal in another encoding) is read with its bad bytes replaced, not
/// taken as the end of the conversation.
fn read_line(input: &mut impl BufRead) -> Result<Option<String>> {
    let mut bytes = Vec::new();
    if input.read_until(b'\n', &mut bytes).context("reading standard input")? == 0 {
        return Ok(None);
    }
    Ok(Some(String::from_utf8(bytes).unwrap_or_else(|e| {
        eprintln!("(this line was not UTF-8: its undecodable bytes became \u{FFFD})");
        String::from_utf8_lossy(e.as_bytes()).into_owned()
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_is_not_utf8_does_not_end_the_conversation() {
        let mut input: &[u8] = b"caf\xe9 au lait\nWhat is 3 plus 4?\n";
        assert_eq!(read_line(&mut input).unwrap().as_deref(), Some("caf\u{FFFD} au lait\n"));
        assert_eq!(read_line(&mut input).unwrap().as_deref(), Some("What is 3 plus 4?\n"));
        assert_eq!(read_line(&mut input).unwrap(), None);
    }
}
