//! The pretraining binary under the faults a real user meets: bad flags, a
//! folder that is not a run, SIGTERM and Ctrl-C, and `kill -9` in the middle
//! of saving. Each run is a tiny model on a tiny corpus, a second or less.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minigpt-faults-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A corpus of 300 short documents in `dir`.
fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("corpus.txt");
    let docs: Vec<String> =
        (0..300).map(|i| format!("Town {i} lies by the river {}. {i} plus 1 is {}.", i % 7, i + 1)).collect();
    std::fs::write(&path, docs.join("\n\n")).unwrap();
    path
}

/// `pretrain` on `dir`'s corpus with a tiny model, writing to `dir/run`, plus `extra` flags.
fn pretrain(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pretrain"));
    let (data, cache, out) = (corpus(dir), dir.join("cache"), dir.join("run"));
    command.args(["--data", data.to_str().unwrap(), "--cache-dir", cache.to_str().unwrap()]);
    command.args(["--out", out.to_str().unwrap(), "--vocab-size", "300", "--d-model", "32", "--n-layers", "1"]);
    command.args(["--n-heads", "2", "--context-length", "16", "--batch-size", "4", "--eval-batches", "1"]);
    command.args(extra).env("RAYON_NUM_THREADS", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("the pretrain binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until the run in `dir/run` has saved a checkpoint.
fn wait_for_checkpoint(dir: &Path, child: &mut Child) {
    let started = Instant::now();
    while !dir.join("run/checkpoint/state.json").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before saving");
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint after a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn out_of_range_flags_are_refused_before_anything_runs() {
    let dir = temp("flags");
    for (flag, value, says) in [
        ("--batch-size", "0", "must be at least 1"),
        ("--lr", "nan", "not a finite number"),
        ("--val-ratio", "1.5", "must be in (0, 1)"),
        ("--vocab-size", "10", "must be between 260"),
        ("--eval-batches", "0", "must be at least 1"),
        ("--dropout", "1", "must be in [0, 1)"),
        ("--divergence-factor", "0.5", "0 (off) or at least 1"),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pretrain"));
        command.args(["--out", dir.join("run").to_str().unwrap(), flag, value]);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        assert!(stderr(&output).contains(says), "{flag} {value}: {}", stderr(&output));
    }
    assert!(!dir.join("run").exists(), "nothing was written");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_folder_of_someone_elses_is_left_as_it_was() {
    let dir = temp("foreign");
    let out = dir.join("run");
    std::fs::create_dir_all(out.join("checkpoint")).unwrap();
    std::fs::write(out.join("checkpoint/weights.bin"), "x").unwrap();
    std::fs::write(out.join("config.json"), "mine").unwrap();
    for extra in [&["--max-steps", "2"][..], &["--max-steps", "2", "--overwrite"]] {
        let output = run(pretrain(&dir, extra));
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let says = stderr(&output);
        assert!(says.contains("this project did not write") || says.contains("not written by this project"), "{says}");
    }
    assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), "mine");
    assert_eq!(std::fs::read_to_string(out.join("checkpoint/weights.bin")).unwrap(), "x");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
#[cfg(unix)]
fn sigterm_and_ctrl_c_save_exit_non_zero_and_resume() {
    for (name, code) in [("TERM", 143), ("INT", 130)] {
        let dir = temp(&format!("signal-{name}"));
        let mut child = pretrain(&dir, &["--max-steps", "100000", "--save-interval", "1", "--eval-interval", "100000"])
            .spawn()
            .unwrap();
        wait_for_checkpoint(&dir, &mut child);
        signal(&child, name);
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(code), "SIG{name}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("stopped by") && stderr(&output).contains(&format!("SIG{name}")),
            "{}",
            stderr(&output)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("checkpoint saved at step"));
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("run/checkpoint/state.json")).unwrap()).unwrap();
        let saved = state["step"].as_u64().unwrap();
        // --resume goes on from there (to a few steps further) and ends normally.
        let target = (saved + 3).to_string();
        let resumed = run(pretrain(&dir, &["--resume", "--max-steps", &target, "--eval-interval", "100000"]));
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        std::fs::remove_dir_all(dir).ok();
    }
}

/// `kill -9` at arbitrary moments of a run that saves every step: whatever
/// the moment, the checkpoint left behind loads, and the run resumes.
#[test]
fn kill_9_at_any_moment_leaves_a_checkpoint_that_loads() {
    let dir = temp("kill9");
    let flags = ["--max-steps", "100000", "--save-interval", "1", "--eval-interval", "100000"];
    let quiet = |mut command: Command| {
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    };
    let mut child = quiet(pretrain(&dir, &flags)).spawn().unwrap();
    wait_for_checkpoint(&dir, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut resume = flags.to_vec();
    resume.push("--resume");
    let mut steps = Vec::new();
    for round in 0..12u64 {
        let mut child = quiet(pretrain(&dir, &resume)).spawn().unwrap();
        // Killed anywhere from the start-up to a few dozen saves in.
        std::thread::sleep(Duration::from_millis(150 + (round * 37) % 200));
        child.kill().unwrap();
        child.wait().unwrap();
        let out = dir.join("run");
        train::checkpoint::verify_checkpoint(&out).unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        let config = train::checkpoint::read_model_config(&out).unwrap();
        let model = model::Gpt::<kernels::Cpu>::new(&config, &Default::default());
        let (_, _, state) = train::checkpoint::load_checkpoint(&out, model, &Default::default())
            .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
        steps.push(state.step);
    }
    // The rounds did train and save between the kills (so kills fell amid saves).
    assert!(steps.last() > steps.first(), "steps saved: {steps:?}");
    std::fs::remove_dir_all(dir).ok();
}
