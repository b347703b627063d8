//! Chores every stage binary does the same way: preparing the output folder,
//! printing the plan and a short summary, sampling from the model.

use std::path::Path;

use anyhow::{Context, Result, bail};
use data::Tokenizer;
use data::util::SplitMix64;
use kernels::Backend;
use model::{GenerateOptions, Gpt, GptConfig, Sampling, generate};

use crate::checkpoint::{checkpoint_dir, read_model_config};
use crate::trainer::Plan;

/// Makes sure `--out` can be written and that nothing is overwritten by
/// accident: a fresh run into a folder holding a checkpoint is refused
/// unless `overwrite`; `--resume` needs weights of the same shape as the
/// saved run's (other settings, dropout included, may change).
pub fn prepare_out_dir(out: &Path, resume: bool, overwrite: bool, model: &GptConfig) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create this folder; pick a writable path", out.display()))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: folder is not writable; pick another path", out.display()))?;
    std::fs::remove_file(probe).ok();
    let has_checkpoint = checkpoint_dir(out).join("state.json").exists();
    if resume {
        let saved = read_model_config(out).context("--resume")?;
        if let Some(difference) = saved.shape_difference(model) {
            bail!(
                "--resume: {} holds a model of another shape ({difference}, saved vs now); use the same --preset and overrides, or a new --out",
                out.display()
            );
        }
    } else if has_checkpoint && !overwrite {
        bail!(
            "--out {} already holds a checkpoint: pass --resume to continue it, --overwrite to start over, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

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

/// The end of every stage's `main`: print an error as one line, exit non-zero.
pub fn exit_code(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a fine-tuning stage starts from (`--init`): a chat-ready tokenizer,
/// the model shape (with `dropout` overridden if given) and the weights.
pub fn load_init<B: Backend>(
    init: &Path,
    dropout: Option<f64>,
    device: &B::Device,
) -> Result<(Tokenizer, GptConfig, Gpt<B>)> {
    let context = || format!("--init {}", init.display());
    let tokenizer_path = init.join("tokenizer.json");
    let tokenizer = Tokenizer::load(&tokenizer_path).with_context(context)?;
    data::chat::check_chat_tokens(&tokenizer, &tokenizer_path)?;
    let mut config = read_model_config(init).with_context(context)?;
    config.dropout = dropout.unwrap_or(config.dropout);
    let model = crate::checkpoint::load_run_weights::<B>(init, &config, device).with_context(context)?;
    Ok((tokenizer, config, model))
}

/// Prepares `out` (see `prepare_out_dir`) and writes the run's config.json
/// and tokenizer.json, so the run directory is usable from its first checkpoint.
pub fn start_run<A: serde::Serialize>(
    out: &Path,
    resume: bool,
    overwrite: bool,
    config: &crate::checkpoint::RunConfig<A>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    prepare_out_dir(out, resume, overwrite, &config.model)?;
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
    use crate::checkpoint::{RunConfig, save_run_config};

    /// `--resume` compares only what decides the weights' shapes: another
    /// dropout is fine, another width is refused, and the error says which.
    #[test]
    fn resume_allows_another_dropout_and_names_a_changed_shape() {
        let out = std::env::temp_dir().join(format!("minigpt-resume-shape-{}", std::process::id()));
        std::fs::remove_dir_all(&out).ok();
        std::fs::create_dir_all(&out).unwrap();
        let saved = GptConfig::tiny(40);
        save_run_config(&out, &RunConfig { stage: "pretrain".into(), model: saved.clone(), args: () }).unwrap();
        prepare_out_dir(&out, true, false, &saved.clone().with_dropout(0.0)).unwrap();
        let err = prepare_out_dir(&out, true, false, &saved.with_d_model(64)).unwrap_err();
        assert!(format!("{err:#}").contains("(d_model: 128 vs 64, saved vs now)"), "{err:#}");
        std::fs::remove_dir_all(out).ok();
    }
}
