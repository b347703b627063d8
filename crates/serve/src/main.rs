//! An OpenAI-compatible server for a trained model, with a web chat page.
//!
//! ```text
//! cargo run --release -p serve -- --model runs/sft                      # then open http://127.0.0.1:8000/
//! cargo run --release -p serve -- --model runs/sft --adapter runs/lora
//! curl http://127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "What is 7 plus 5?"}]}'
//! ```
//! Any OpenAI client works with `base_url="http://127.0.0.1:8000/v1"` and
//! any API key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use data::chat::check_chat_tokens;
use kernels::AutodiffBackend;
use serve::routes::{Limits, Server, router};
use serve::worker::{self, Stats};
use train::args::range;
use train::run::{LoadedRun, load_for_use};
use train::run_on_device;

/// Serve a trained model over OpenAI's chat-completions API, with a web chat page at /.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// The run to serve (a fine-tuned one answers in turns; config.json, tokenizer.json, checkpoint/).
    #[arg(long, default_value = "runs/sft")]
    model: PathBuf,
    /// A LoRA adapter run to put on top of --model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Address to listen on. Loopback by default: only this machine can connect.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Requests that may wait while one generates; more get 503 and Retry-After. [≥ 1]
    #[arg(long, default_value_t = 16, value_parser = range::at_least_one)]
    queue: usize,
    /// The most tokens one reply may have: a larger max_tokens is lowered to it,
    /// and it is the default when a request gives none. [≥ 1]
    #[arg(long, default_value_t = 256, value_parser = range::at_least_one)]
    max_tokens: usize,
    /// The largest request body in bytes; larger ones get 413. [≥ 1]
    #[arg(long, default_value_t = 1 << 20, value_parser = range::at_least_one)]
    body_limit: usize,
    /// Where to run: `cpu`, `flex` (needs `--features flex`) or `cuda` / `cuda:N` (needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    train::run::exit_code(run_on_device!(&args.device, run(args.clone())))
}

fn run<B: AutodiffBackend>(device: &B::Device, args: Args) -> Result<()> {
    let loaded = load_for_use::<B::InnerBackend>(&args.model, "--model", args.adapter.as_deref(), device)?;
    let LoadedRun { stage, tokenizer, config, model } = loaded;
    check_chat_tokens(&tokenizer, &args.model.join("tokenizer.json"))?;
    if stage == "pretrain" || stage == "import" {
        eprintln!(
            "note: {} was not fine-tuned to chat; its replies will read as text continuations",
            args.model.display()
        );
    }
    let name = args.model.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let limits = Limits { max_tokens: args.max_tokens, body_bytes: args.body_limit, queue: args.queue };
    let stats = Arc::new(Stats::default());
    let jobs = worker::start(model, tokenizer.clone(), args.queue, stats.clone());
    let server = Arc::new(Server::new(jobs, tokenizer, config.context_length, name, limits, stats));

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address} (is another server using the port? try --port)"))?;
        let bound: SocketAddr = listener.local_addr()?;
        println!(
            "serving {} on http://{bound}/ (OpenAI API at http://{bound}/v1; Ctrl-C to stop)",
            args.model.display()
        );
        axum::serve(listener, router(server))
            .with_graceful_shutdown(async {
                tokio::signal::ctrl_c().await.ok();
            })
            .await
            .context("the server stopped")
    })
}
