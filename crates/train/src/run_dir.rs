//! Run directories: which folders a stage may write into, and what it may
//! start from.
//!
//! A run directory says it is one: `minigpt-run.json`, written before
//! anything else, names the stage that made it. A folder without it is
//! someone else's, and nothing in it is replaced: a stage refuses it as
//! `--out` (with `--overwrite`, it writes beside the files there, as long as
//! none has one of our names). In a run directory of ours, `--overwrite`
//! replaces our own files, and only those.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use data::util::write_atomic;
use model::GptConfig;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{checkpoint_dir, read_model_config, verify_checkpoint};

/// The marker's file name.
pub const MARKER: &str = "minigpt-run.json";
/// Bumped when a run directory's layout changes in a way older code cannot read.
const FORMAT: u32 = 1;

/// What the stages write in a run directory: the only names `--overwrite` replaces.
const OURS: [&str; 13] = [
    MARKER,
    "config.json",
    "tokenizer.json",
    "metrics.jsonl",
    "loss.svg",
    "loss.png",
    "checkpoint",
    "checkpoint.tmp",
    "checkpoint.old",
    "adapter.json",
    "adapter.mpk",
    "report.md",
    "best",
];
/// What a checkpoint folder holds.
const CHECKPOINT_FILES: [&str; 3] = ["model.mpk", "optimizer.mpk", "state.json"];

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
    stage: String,
}

/// The stage that made `run`, or None if it is not a run directory of
/// ours. A run written before markers existed is recognised by its
/// config.json (a "stage" and a "model").
pub fn read_stage(run: &Path) -> Result<Option<String>> {
    let marker = run.join(MARKER);
    if marker.exists() {
        let text = std::fs::read_to_string(&marker).with_context(|| format!("cannot read {}", marker.display()))?;
        let marker: Marker =
            serde_json::from_str(&text).with_context(|| format!("{} is not a valid run marker", marker.display()))?;
        if marker.format > FORMAT {
            bail!("{} was written by a newer version of this project (format {})", run.display(), marker.format);
        }
        return Ok(Some(marker.stage));
    }
    let legacy = std::fs::read_to_string(run.join("config.json")).ok().and_then(|text| {
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        value["model"].is_object().then(|| value["stage"].as_str().map(str::to_string)).flatten()
    });
    Ok(legacy)
}

/// The stage of a run a command reads (`--init`, `--model`, `--base`),
/// which must be one of `accepted` (empty: any).
pub fn require_stage(run: &Path, flag: &str, accepted: &[&str]) -> Result<String> {
    let Some(stage) = read_stage(run)? else {
        bail!("{flag} {}: not a run directory of this project (no {MARKER})", run.display());
    };
    if !accepted.is_empty() && !accepted.contains(&stage.as_str()) {
        bail!(
            "{flag} {}: this stage needs a run of stage {}, but {MARKER} says {stage}",
            run.display(),
            accepted.join(" or ")
        );
    }
    Ok(stage)
}

/// Makes `out` ready for a run of `stage`: refuses a folder that is not
/// ours (see the module's documentation), a fresh run over a checkpoint
/// without `overwrite`, and a `--resume` of another stage, another model
/// shape or a damaged checkpoint; removes what a crash left half-written,
/// and what `overwrite` replaces; writes the marker.
pub fn prepare_out_dir(out: &Path, stage: &str, resume: bool, overwrite: bool, model: &GptConfig) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file, not a folder", out.display());
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create this folder; pick a writable path", out.display()))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: folder is not writable; pick another path", out.display()))?;
    std::fs::remove_file(probe).ok();
    match read_stage(out)? {
        None => check_foreign(out, resume, overwrite)?,
        Some(previous) if resume => {
            if previous != stage {
                bail!(
                    "--resume: {} is a {previous} run, not a {stage} one; choose the run to continue with --out",
                    out.display()
                );
            }
            let saved = read_model_config(out).context("--resume")?;
            if let Some(difference) = saved.shape_difference(model) {
                bail!(
                    "--resume: {} holds a model of another shape ({difference}, saved vs now); use the same --preset and overrides, or a new --out",
                    out.display()
                );
            }
            verify_checkpoint(out)?;
        }
        Some(previous) => {
            if checkpoint_dir(out).join("state.json").exists() && !overwrite {
                bail!(
                    "--out {} already holds a {previous} checkpoint: pass --resume to continue it, --overwrite to start over, or choose another --out",
                    out.display()
                );
            }
            for dir in ["checkpoint", "checkpoint.old"] {
                check_only_ours(&out.join(dir))?;
            }
            check_best_only_ours(&out.join("best"))?;
            // Starting over: the last run's files go, so none is mistaken for this one's.
            for name in OURS {
                remove(&out.join(name))?;
            }
        }
    }
    for temporary in temporaries(out)? {
        remove(&temporary)?;
    }
    let marker = Marker { format: FORMAT, stage: stage.to_string() };
    write_atomic(&out.join(MARKER), serde_json::to_string_pretty(&marker)?.as_bytes())
}

/// Checks that `out` may be replaced as a whole by a new run directory (as
/// `lora merge` does, renaming a finished one into place): it does not
/// exist or is empty, or, with `overwrite`, it is a run of ours that holds
/// nothing but our files.
pub fn check_replaceable(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        bail!("--out {} is a file, not a folder", out.display());
    }
    let entries = names(out)?;
    if entries.is_empty() {
        return Ok(());
    }
    let Some(stage) = read_stage(out)? else {
        bail!(
            "--out {} holds files this project did not write ({}); choose a new or empty folder",
            out.display(),
            entries.join(", ")
        );
    };
    if !overwrite {
        bail!(
            "--out {} already holds a {stage} run: pass --overwrite to replace it, or choose another --out",
            out.display()
        );
    }
    if let Some(stranger) = entries.iter().find(|e| !OURS.contains(&e.as_str())) {
        bail!(
            "--out {}: {stranger} was not written by this project, and replacing the folder would lose it",
            out.display()
        );
    }
    check_only_ours(&checkpoint_dir(out))
}

/// Builds a whole folder for `out` with `build`, in a folder beside it
/// (`<out>.partial`), and renames it into place only once `build` has
/// succeeded: a failure or a crash midway leaves `out` as it was. Whether
/// `out` may be replaced is the caller's to check first.
pub fn build_then_rename(out: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = out.file_name().with_context(|| format!("--out {}: needs a folder name", out.display()))?;
    let tmp = out.with_file_name(format!("{}.partial", name.to_string_lossy()));
    remove(&tmp)?;
    if let Err(e) = build(&tmp) {
        remove(&tmp)?;
        return Err(e);
    }
    remove(out).with_context(|| format!("cannot replace {}", out.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))
}

/// A folder that is not a run of ours: fine when empty; with `overwrite`,
/// written into as long as none of our names is taken.
fn check_foreign(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    let entries = names(out)?;
    if entries.is_empty() {
        return Ok(());
    }
    if resume {
        bail!("--resume: {} is not a run directory of this project (no {MARKER})", out.display());
    }
    if !overwrite {
        bail!(
            "--out {} holds files this project did not write ({}); choose a new or empty folder, or pass --overwrite to write beside them",
            out.display(),
            entries.join(", ")
        );
    }
    if let Some(taken) = entries.iter().find(|e| OURS.contains(&e.as_str())) {
        bail!(
            "--out {}: {taken} is there but was not written by this project; move it, or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// Checks that the checkpoint folder `dir` holds only a checkpoint's files
/// (or their temporaries), before starting over removes it.
fn check_only_ours(dir: &Path) -> Result<()> {
    check_only(dir, &CHECKPOINT_FILES)
}

/// `best/` (see `checkpoint::save_best`) holds a marker, the config, the
/// tokenizer, checkpoint folders and, for a LoRA run, the adapter; nothing
/// else of ours.
fn check_best_only_ours(best: &Path) -> Result<()> {
    check_only(best, &[MARKER, "config.json", "tokenizer.json", "checkpoint", "adapter.json", "adapter.mpk"])?;
    ["checkpoint", "checkpoint.old"].iter().try_for_each(|dir| check_only_ours(&best.join(dir)))
}

/// Fails, naming them, if `dir` holds anything but the names in `ours` and
/// their variants (`name.tmp`, `name.old`).
fn check_only(dir: &Path, ours: &[&str]) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let strangers: Vec<String> =
        names(dir)?.into_iter().filter(|n| !ours.iter().any(|f| n == f || n.starts_with(&format!("{f}.")))).collect();
    if !strangers.is_empty() {
        bail!(
            "{} holds files this project did not write ({}): move them before starting over",
            dir.display(),
            strangers.join(", ")
        );
    }
    Ok(())
}

/// What a crash can leave half-written: `checkpoint.tmp/`, the loss
/// curves' temporaries, and each of our files' `.tmp` (see `write_atomic`).
fn temporaries(out: &Path) -> Result<Vec<PathBuf>> {
    let mut ours: Vec<String> = OURS.iter().map(|name| format!("{name}.tmp")).collect();
    ours.extend(["checkpoint.tmp", "loss.tmp.svg", "loss.tmp.png"].map(String::from));
    Ok(names(out)?.into_iter().filter(|n| ours.contains(n)).map(|n| out.join(n)).collect())
}

/// The entries of a folder, sorted, hidden ones left out.
fn names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let name = entry.with_context(|| format!("cannot read {}", dir.display()))?.file_name();
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn remove(path: &Path) -> Result<()> {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use kernels::Cpu;
    use model::Gpt;

    use super::*;
    use crate::checkpoint::{RunConfig, save_checkpoint, save_run_config};

    fn fresh(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minigpt-rundir-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    fn cfg() -> GptConfig {
        GptConfig::tiny(40).with_d_model(32).with_n_layers(1).with_context_length(8)
    }

    /// A finished run of `stage` in `out`, as a stage leaves it.
    fn finished_run(out: &Path, stage: &str) {
        prepare_out_dir(out, stage, false, false, &cfg()).unwrap();
        save_run_config(out, &RunConfig { stage: stage.into(), model: cfg(), args: () }).unwrap();
        let model = Gpt::<Cpu>::new(&cfg(), &Default::default());
        save_checkpoint(out, &model, Some(vec![1, 2, 3]), &Default::default()).unwrap();
    }

    fn err(result: Result<()>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn a_folder_that_is_not_ours_is_never_replaced() {
        // The reported case: someone's folder with a config.json and a checkpoint/ of their own.
        let out = fresh("foreign");
        std::fs::create_dir_all(out.join("checkpoint")).unwrap();
        std::fs::write(out.join("checkpoint/weights.bin"), "x").unwrap();
        std::fs::write(out.join("config.json"), "mine").unwrap();
        let refused = err(prepare_out_dir(&out, "pretrain", false, false, &cfg()));
        assert!(refused.contains("holds files this project did not write (checkpoint, config.json)"), "{refused}");
        let refused = err(prepare_out_dir(&out, "pretrain", false, true, &cfg()));
        assert!(refused.contains("checkpoint is there but was not written by this project"), "{refused}");
        assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), "mine");
        assert!(out.join("checkpoint/weights.bin").exists());
        // Files of other names may stay beside a run, with --overwrite.
        let beside = fresh("beside");
        std::fs::create_dir_all(&beside).unwrap();
        std::fs::write(beside.join("notes.txt"), "mine").unwrap();
        assert!(err(prepare_out_dir(&beside, "pretrain", false, false, &cfg())).contains("--overwrite"));
        prepare_out_dir(&beside, "pretrain", false, true, &cfg()).unwrap();
        assert_eq!(read_stage(&beside).unwrap().as_deref(), Some("pretrain"));
        std::fs::remove_dir_all(out).ok();
        std::fs::remove_dir_all(beside).ok();
    }

    #[test]
    fn overwrite_replaces_our_files_and_only_ours() {
        let out = fresh("ours");
        finished_run(&out, "sft");
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        std::fs::write(out.join("config.json.tmp"), "half-written").unwrap();
        let refused = err(prepare_out_dir(&out, "sft", false, false, &cfg()));
        assert!(refused.contains("already holds a sft checkpoint: pass --resume"), "{refused}");
        prepare_out_dir(&out, "pretrain", false, true, &cfg()).unwrap();
        assert!(!out.join("checkpoint").exists() && !out.join("config.json").exists());
        assert!(!out.join("config.json.tmp").exists(), "a crash's leftovers are cleaned up");
        assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
        assert_eq!(read_stage(&out).unwrap().as_deref(), Some("pretrain"));
        // A file that is not a checkpoint's inside checkpoint/ stops --overwrite.
        finished_run(&out, "sft");
        std::fs::write(out.join("checkpoint/keep-me.txt"), "mine").unwrap();
        assert!(err(prepare_out_dir(&out, "sft", false, true, &cfg())).contains("(keep-me.txt)"));
        std::fs::remove_dir_all(out).ok();
    }

    #[test]
    fn resume_needs_the_same_stage_and_shape_and_a_sound_checkpoint() {
        let out = fresh("resume");
        finished_run(&out, "sft");
        let refused = err(prepare_out_dir(&out, "pretrain", true, false, &cfg()));
        assert!(refused.contains("is a sft run, not a pretrain one"), "{refused}");
        // Only what decides the weights' shapes must match; the error says which field differs.
        prepare_out_dir(&out, "sft", true, false, &cfg().with_dropout(0.0)).unwrap();
        let refused = err(prepare_out_dir(&out, "sft", true, false, &cfg().with_d_model(64)));
        assert!(refused.contains("(d_model: 32 vs 64, saved vs now)"), "{refused}");
        // A damaged weights file is found before config.json is rewritten.
        let weights = out.join("checkpoint/model.mpk");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
        let refused = err(prepare_out_dir(&out, "sft", true, false, &cfg()));
        assert!(refused.contains("model.mpk is damaged"), "{refused}");
        std::fs::remove_dir_all(out).ok();
    }

    #[test]
    fn stages_are_read_from_the_marker_or_an_older_runs_config() {
        let out = fresh("stages");
        finished_run(&out, "pretrain");
        assert!(require_stage(&out, "--init", &["pretrain"]).is_ok());
        let refused = require_stage(&out, "--init", &["sft", "dpo"]).unwrap_err().to_string();
        assert!(refused.contains("needs a run of stage sft or dpo, but minigpt-run.json says pretrain"), "{refused}");
        // A run written before markers existed: its config.json says the stage.
        std::fs::remove_file(out.join(MARKER)).unwrap();
        assert_eq!(read_stage(&out).unwrap().as_deref(), Some("pretrain"));
        let elsewhere = fresh("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        assert!(require_stage(&elsewhere, "--model", &[]).unwrap_err().to_string().contains("not a run directory"));
        std::fs::remove_dir_all(out).ok();
        std::fs::remove_dir_all(elsewhere).ok();
    }
}
