//! Data parallelism across processes: two `pretrain` processes on
//! 127.0.0.1 as two nodes train exactly as two workers in one process, and
//! killing one makes the other stop, saying why, its checkpoint whole.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A small model and run, so that each process takes seconds.
const SMALL: &[&str] = &[
    "--d-model",
    "32",
    "--n-layers",
    "1",
    "--n-heads",
    "2",
    "--context-length",
    "32",
    "--vocab-size",
    "400",
    "--dropout",
    "0",
    "--batch-size",
    "4",
    "--fact-eval=",
    "--eval-batches",
    "2",
    "--log-interval",
    "1",
];

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minigpt-dp-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// The coordinator's port and each node's first (a node uses two), from a
/// range of this test process's own: ports the OS hands out as free could
/// be handed out again before the nodes bind them.
fn ports(test: u16) -> [u16; 3] {
    let base = 10000 + (std::process::id() % 2000) as u16 * 10 + test * 5;
    [base, base + 1, base + 3]
}

fn pretrain(out: &Path, cache: &Path, flags: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pretrain"));
    command.args(SMALL).arg("--out").arg(out).arg("--cache-dir").arg(cache).args(flags);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command
}

/// Node `rank` of two, on loopback.
fn node(rank: usize, ports: [u16; 3], out: &Path, cache: &Path, flags: &[&str]) -> Child {
    let (master, addr) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1 + rank]));
    let rank = rank.to_string();
    let mut command = pretrain(out, cache, flags);
    command.args(["--nodes", "2", "--node-rank", &rank, "--master-addr", &master, "--node-addr", &addr]);
    command.spawn().unwrap()
}

fn finish(child: Child, what: &str) -> String {
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

/// (step, split, loss, tokens) of every event in a run's metrics.jsonl.
fn events(out: &Path) -> Vec<(u64, String, f64, u64)> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let event = |line: &str| {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        (
            e["step"].as_u64().unwrap(),
            e["split"].as_str().unwrap().to_string(),
            e["loss"].as_f64().unwrap(),
            e["tokens"].as_u64().unwrap(),
        )
    };
    text.lines().map(event).collect()
}

/// One test, the two cases in turn: four processes at once would be more
/// than a 2-core machine runs in step.
#[test]
fn across_processes() {
    two_processes_as_two_nodes_equal_two_workers_in_one_process();
    a_killed_node_stops_the_other_with_its_checkpoint_whole();
}

fn two_processes_as_two_nodes_equal_two_workers_in_one_process() {
    let cache = temp("cache");
    let steps = ["--max-steps", "6", "--eval-interval", "3"];
    let threads = temp("threads");
    let flags = [&steps[..], &["--devices", "cpu,cpu"]].concat();
    finish(pretrain(&threads, &cache, &flags).spawn().unwrap(), "two workers in one process");

    let ports = ports(0);
    let (out0, out1) = (temp("node0"), temp("node1"));
    let second = node(1, ports, &out1, &cache, &steps);
    let first = node(0, ports, &out0, &cache, &steps);
    finish(first, "node 0");
    let text = finish(second, "node 1");
    assert!(text.contains("node 0 writes the run"), "{text}");
    assert!(!out1.join("metrics.jsonl").exists(), "only node 0 writes");

    let (a, b) = (events(&threads), events(&out0));
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, &x.1, x.3), (y.0, &y.1, y.3));
        assert!((x.2 - y.2).abs() < 1e-6, "step {} {}: threads {} vs nodes {}", x.0, x.1, x.2, y.2);
    }
    assert!(a.iter().filter(|e| e.1 == "train").count() == 6);
}

fn a_killed_node_stops_the_other_with_its_checkpoint_whole() {
    let cache = temp("kill-cache");
    let ports = ports(1);
    let (out0, out1) = (temp("kill0"), temp("kill1"));
    let flags = ["--max-steps", "100000", "--save-interval", "2", "--collective-timeout", "10"];
    // The tokenizer and token files cached first, so that both nodes start at once.
    finish(pretrain(&temp("kill-warm"), &cache, &["--dry-run"]).spawn().unwrap(), "the dry run");
    let mut second = node(1, ports, &out1, &cache, &flags);
    let mut first = node(0, ports, &out0, &cache, &flags);
    let state = out0.join("checkpoint/state.json");
    let started = Instant::now();
    while !state.exists() {
        if first.try_wait().unwrap().is_some() {
            finish(first, "node 0");
            panic!("node 0 ended before its first checkpoint");
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let killed = Instant::now();
    let output = first.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        text.contains("no answer from the other workers in 10 s") || text.contains("the collective failed"),
        "{text}"
    );
    assert!(killed.elapsed() < Duration::from_secs(60), "node 0 took {:?} to stop", killed.elapsed());
    train::checkpoint::verify_checkpoint(&out0).unwrap();
}
