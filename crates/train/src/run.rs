//! Chores every stage binary does the same way: preparing the output folder,
//! printing the plan and a short summary, sampling from the model.

use std::path::Path;

use anyhow::{Context, Result, bail};
use data::Tokenizer;
use data::util::SplitMix64;
use kernels::Backend;
use model::{GenerateOptions, Gpt, GptConfig, Sampling, generate};

use crate::checkpoint::read_model_config;
use crate::plan::Plan;
use crate::run_dir::{prepare_out_dir, require_stage};

/// The start-up report: model size and the arithmetic of the run.
pub fn print_plan(
    params: model::ParamCounts,
    train_tokens: usize,
    val_tokens: usize,
    plan: &Plan,
    tokens_per_example: usize,
) {
    println!("model:      {params}");
    println!("data:       {train_tokens} training tokens, {val_tokens} validation tokens");
    println!("examples:   {} training examples of up to {tokens_per_example} tokens", plan.examples);
    println!(
        "steps:      {} per epoch ({} micro-batches / grad accum), {} in total; effective batch {} examples = at most {} tokens per step",
        plan.steps_per_epoch,
        plan.batches_per_epoch,
        plan.total_steps,
        plan.effective_batch,
        plan.effective_batch * tokens_per_example
    );
    if plan.workers > 1 {
        let per_worker = plan.effective_batch / plan.workers;
        println!("workers:    {} data-parallel workers, {per_worker} examples each per step", plan.workers);
    }
}

/// Generates a continuation of `prompt` (ids), printing it as it grows.
pub fn print_sample<B: Backend>(
    model: &Gpt<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    max_new: usize,
    seed: u64,
) -> String {
    let mut rng = SplitMix64(seed);
    let mut ids = prompt.to_vec();
    let sampling = Sampling { temperature: 0.8, top_k: Some(40), top_p: None, repetition_penalty: 1.0 };
    let options =
        GenerateOptions { max_new_tokens: max_new, sampling, stop_token: Some(tokenizer.eot_id), use_cache: true };
    let new = generate(model, prompt, &options, &mut || rng.next_f64(), &mut |_| true);
    ids.extend(&new);
    tokenizer.decode(&ids)
}

/// Default data paths (`data/corpus.txt`) are relative to the repository;
/// this also finds them when a command runs from another folder of the checkout.
pub fn find_in_repo(path: &Path) -> std::path::PathBuf {
    let in_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    if path.exists() || path.is_absolute() || !in_repo.exists() { path.to_path_buf() } else { in_repo }
}

/// A metric's first and last value, as percentages ("0.0% → 3.8%"), or why
/// there are none (an evaluation set without questions to score).
pub fn percent_change(first: &crate::metrics::Event, last: &crate::metrics::Event, key: &str) -> String {
    let get = |e: &crate::metrics::Event| e.extra.get(key).and_then(|v| v.as_f64());
    match (get(first), get(last)) {
        (Some(a), Some(b)) => format!("{:.1}% → {:.1}%", 100.0 * a, 100.0 * b),
        _ => "not measured (no held-out question with an \"answer\")".to_string(),
    }
}

/// The end of every stage's `main`: an error printed as one line, and a
/// non-zero exit; a run stopped by a signal (after saving) exits as the
/// shell expects of it, 130 for Ctrl-C and 143 for SIGTERM.
pub fn exit_code(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<crate::stop::Interrupted>() {
            Some(stopped) => {
                eprintln!("{stopped}");
                std::process::ExitCode::from(stopped.exit_status())
            }
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// What a fine-tuning stage starts from (`--init`): a chat-ready tokenizer,
/// the model shape (with `dropout` overridden if given) and the weights.
/// `stages` lists the stages a run must come from (empty: any).
pub fn load_init<B: Backend>(
    init: &Path,
    stages: &[&str],
    dropout: Option<f64>,
    device: &B::Device,
) -> Result<(Tokenizer, GptConfig, Gpt<B>)> {
    let context = || format!("--init {}", init.display());
    require_stage(init, "--init", stages)?;
    let tokenizer_path = init.join("tokenizer.json");
    let tokenizer = Tokenizer::load(&tokenizer_path).with_context(context)?;
    data::chat::check_chat_tokens(&tokenizer, &tokenizer_path)?;
    let mut config = read_model_config(init).with_context(context)?;
    check_vocabulary(&tokenizer, &tokenizer_path, &config)?;
    config.dropout = dropout.unwrap_or(config.dropout);
    let model = crate::checkpoint::load_run_weights::<B>(init, &config, device).with_context(context)?;
    Ok((tokenizer, config, model))
}

/// A trained model ready for use (`chat`, `serve`, `convert export-hf`).
pub struct LoadedRun<B: Backend> {
    /// The stage that made the run.
    pub stage: String,
    pub tokenizer: Tokenizer,
    pub config: GptConfig,
    /// With the adapter on it, if one was given.
    pub model: Gpt<B>,
}

/// Loads the run `run` (named `flag` in errors), with the LoRA run
/// `adapter` on it if given, and its tokenizer, checked against its
/// vocabulary. A LoRA run given as the model is refused, pointing at
/// `--adapter`: it holds an adapter, not a model.
pub fn load_for_use<B: Backend>(
    run: &Path,
    flag: &str,
    adapter: Option<&Path>,
    device: &B::Device,
) -> Result<LoadedRun<B>> {
    let stage = require_stage(run, flag, &[])?;
    if stage == "lora" {
        bail!(
            "{flag} {}: a LoRA run holds an adapter, not a model; give its base run here and this one as --adapter",
            run.display()
        );
    }
    let tokenizer_path = run.join("tokenizer.json");
    let tokenizer = Tokenizer::load(&tokenizer_path).with_context(|| format!("{flag} {}", run.display()))?;
    let (config, model) = match adapter {
        Some(adapter) => {
            require_stage(adapter, "--adapter", &["lora"])?;
            let (config, model, _) = crate::adapter::load_with_adapter::<B>(run, adapter, device)?;
            (config, model)
        }
        None => {
            crate::checkpoint::load_run_model::<B>(run, device).with_context(|| format!("{flag} {}", run.display()))?
        }
    };
    check_vocabulary(&tokenizer, &tokenizer_path, &config)?;
    Ok(LoadedRun { stage, tokenizer, config, model })
}

/// A tokenizer whose ids reach past the model's vocabulary would index
/// outside its embedding table.
pub fn check_vocabulary(tokenizer: &Tokenizer, tokenizer_path: &Path, config: &GptConfig) -> Result<()> {
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "{} has {} tokens, but the model's vocabulary (vocab_size in config.json) is {}: use the tokenizer the model was trained with",
            tokenizer_path.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    Ok(())
}

/// Prepares `out` for a run of `config.stage` (see `run_dir::prepare_out_dir`)
/// and writes the run's config.json and tokenizer.json, so the run
/// directory is usable from its first checkpoint.
pub fn start_run<A: serde::Serialize>(
    out: &Path,
    resume: bool,
    overwrite: bool,
    config: &crate::checkpoint::RunConfig<A>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    prepare_out_dir(out, &config.stage, resume, overwrite, &config.model)?;
    crate::checkpoint::save_run_config(out, config)?;
    tokenizer.save(&out.join("tokenizer.json"))
}

/// The lines of a JSONL conversation file that carry an `"answer"` (at most
/// `limit`, 0 = all): questions scored by generation. An empty path gives none.
pub fn load_questions(
    path: &Path,
    tokenizer: &Tokenizer,
    max_seq_len: usize,
    skip_bad_lines: bool,
    limit: usize,
) -> Result<Vec<data::sft::SftExample>> {
    if path.as_os_str().is_empty() {
        return Ok(Vec::new());
    }
    let set = data::sft::SftDataset::load(&find_in_repo(path), tokenizer, max_seq_len, skip_bad_lines)?;
    let mut questions: Vec<_> = set.examples.into_iter().filter(|e| e.answer.is_some()).collect();
    if limit > 0 {
        questions.truncate(limit);
    }
    Ok(questions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer with more ids than the model's vocabulary is refused
    /// before any id can index past the embedding table.
    #[test]
    fn a_tokenizer_larger_than_the_vocabulary_is_refused() {
        let docs = (0..30).map(|i| format!("word{i} and more words, number {i}"));
        let tokenizer = Tokenizer::train(docs, 300).unwrap();
        let path = Path::new("runs/sft/tokenizer.json");
        let fits = GptConfig::tiny(tokenizer.vocab_size());
        check_vocabulary(&tokenizer, path, &fits).unwrap();
        let small = GptConfig::tiny(tokenizer.vocab_size() - 1);
        let err = check_vocabulary(&tokenizer, path, &small).unwrap_err().to_string();
        assert!(err.contains(&format!("has {} tokens, but the model's vocabulary", tokenizer.vocab_size())), "{err}");
    }
}
