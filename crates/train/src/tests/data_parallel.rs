//! Data parallelism in one process: two CPU workers against one with twice
//! the batch, and how a run ends when a worker fails or stops answering.
//! (Two processes on loopback are tested in `crates/pretrain/tests/`.)

use std::time::{Duration, Instant};

use super::*;
use crate::Outcome;
use crate::data_parallel::Topology;

/// Every weight of a model, flattened in visiting order.
fn flat_weights(model: &Gpt<CpuTrain>) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor<CpuTrain> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuTrain, D>>) {
            self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The promise of data parallelism: two workers with batch 2 each take the
/// same steps as one worker with batch 4, with accumulation, clipping and
/// the schedule acting on the averaged gradient. Only the order of
/// summation differs, hence a tolerance.
#[test]
fn two_workers_with_batch_b_equal_one_worker_with_batch_2b() {
    let model = tiny_model();
    let device = Default::default();
    let common = ["--max-steps", "8", "--grad-accum", "2", "--clip-norm", "0.5", "--eval-interval", "4"];
    let one_out = out_dir("dp-one");
    let one_args = args(&one_out, &[&common[..], &["--batch-size", "4"]].concat());
    let one = train(model.clone(), &VecTask::new(64, 8, 16), &one_args, &device, no_stop(), "t").unwrap();

    let two_out = out_dir("dp-two");
    let two_args = args(&two_out, &[&common[..], &["--batch-size", "2", "--devices", "cpu,cpu"]].concat());
    let two = train(model, &VecTask::new(64, 8, 16), &two_args, &device, no_stop(), "t").unwrap();

    let (a, b) = (flat_weights(&one.model), flat_weights(&two.model));
    let moved = largest_difference(&a, &flat_weights(&tiny_model()));
    assert!(moved > 1e-2, "8 steps should move the weights (moved {moved})");
    let apart = largest_difference(&a, &b);
    assert!(apart < 1e-5, "two workers ended {apart} away from one worker with their batch");
    // The logged losses are the mean over both shards, step by step.
    let (la, lb) = (train_losses(&one.log.events), train_losses(&two.log.events));
    assert_eq!(la.len(), 8);
    for ((step, x), (_, y)) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-5, "step {step}: one worker {x}, two workers {y}");
    }
    let tokens = |o: &Outcome<CpuTrain>| o.log.events.last().unwrap().tokens;
    assert_eq!(tokens(&one), tokens(&two), "tokens count both workers' shards");
    assert!(two_out.join("checkpoint/state.json").exists() && two_out.join("metrics.jsonl").exists());
}

/// A worker that fails stops the others at once, with its reason, and the
/// checkpoint on disk is the last one saved, whole.
#[test]
fn a_failing_worker_stops_the_others_with_its_reason() {
    let out = out_dir("dp-panic");
    let mut task = VecTask::new(64, 8, 16);
    task.panic_at = Some(9); // the 5th step's draws (2 workers × 1 batch per step)
    let flags = ["--devices", "cpu,cpu", "--batch-size", "2", "--save-interval", "1", "--collective-timeout", "120"];
    let started = Instant::now();
    let err = train(tiny_model(), &task, &args(&out, &flags), &Default::default(), no_stop(), "t").err().unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("stopped: it panicked: batch 9 is broken"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "waited {:?}, as for a timeout", started.elapsed());
    crate::checkpoint::verify_checkpoint(&out).unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 3, "saved at steps 1–3; step 4's save waits for step 5's loss");
}

/// A worker that stops answering (as a killed process would) makes the
/// others give up after --collective-timeout, saying so.
#[test]
fn a_silent_worker_times_the_others_out() {
    let out = out_dir("dp-silent");
    let mut task = VecTask::new(64, 8, 16);
    task.stall_at = Some((5, Duration::from_secs(4)));
    let flags = ["--devices", "cpu,cpu", "--batch-size", "2", "--collective-timeout", "1"];
    let err = train(tiny_model(), &task, &args(&out, &flags), &Default::default(), no_stop(), "t").err().unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("no answer from the other workers in 1 s (--collective-timeout)"), "{err}");
}

#[test]
fn data_parallel_flags_are_checked() {
    let check = |flags: &[&str]| Topology::from_args(&args(std::path::Path::new("x"), flags)).map(|t| t.world());
    assert_eq!(check(&["--devices", "cpu,cpu,cpu"]).unwrap(), 3);
    let two_nodes = ["--nodes", "2", "--master-addr", "10.0.0.1:29500", "--node-addr", "10.0.0.2:29501"];
    assert_eq!(check(&[&two_nodes[..], &["--devices", "cuda:0,cuda:1"]].concat()).unwrap(), 4);
    let err = |flags: &[&str]| check(flags).unwrap_err().to_string();
    assert!(err(&["--devices", "cpu,cuda:0"]).contains("all devices must be of one kind"));
    assert!(err(&["--devices", "cuda:1,cuda:1"]).contains("cuda:1 is listed twice"));
    assert!(err(&["--nodes", "2", "--node-addr", "a:1"]).contains("--nodes 2 needs --master-addr host:port"));
    assert!(
        err(&["--nodes", "2", "--master-addr", "a:1", "--node-addr", "b"])
            .contains("--node-addr b: expected host:port")
    );
    assert!(err(&["--nodes", "2", "--node-rank", "2"]).contains("--node-rank 2 must be below --nodes 2"));
    assert!(err(&["--master-addr", "a:1"]).contains("add --nodes N"));
    // One micro-batch is every worker's share together.
    let plan = Plan::new(40, &args(std::path::Path::new("x"), &["--devices", "cpu,cpu", "--batch-size", "4"])).unwrap();
    assert_eq!((plan.batches_per_epoch, plan.effective_batch), (5, 8));
}

#[test]
fn shards_are_disjoint_and_cover_the_batch() {
    let batch: Vec<usize> = (0..12).map(|i| i * 7 % 12).collect();
    let mut seen = Vec::new();
    for rank in 0..3 {
        let worker = crate::data_parallel::Worker::<CpuTrain>::for_test(rank, 3);
        seen.extend(worker.shard(batch.clone()));
    }
    assert_eq!(seen, batch, "in order, each example once");
}
