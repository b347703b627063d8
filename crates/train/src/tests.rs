//! Tests of the shared loop: accumulation, learning, resuming, logging.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Tensor, TensorData, Tolerance};
use kernels::Backend;
use kernels::CpuTrain;
use model::{Gpt, GptConfig};

use crate::metrics::Event;
use model::gpt::int_tensor;

use crate::task::Task;
use crate::{Plan, TrainArgs, train};

/// Windows over an in-memory token sequence: a task with no files.
struct VecTask {
    tokens: Vec<u32>,
    seq: usize,
    n_train: usize,
    n_val: usize,
    /// Raise `stop` once this many training batches were drawn (to simulate Ctrl-C).
    stop_after: Option<(usize, Arc<AtomicBool>)>,
    drawn: AtomicUsize,
    /// Multiply the loss by this (NaN to test divergence handling)...
    loss_scale: f64,
    /// ...or by 1e6 from this many training batches on: a blow-up with finite losses.
    blow_up_after: Option<usize>,
    /// The gradient (not the loss) of this training batch 10⁶ times larger:
    /// an overflow for fp16's loss scaling to catch.
    grad_spike_at: Option<usize>,
    /// Panic at this training batch (a worker that fails mid-run).
    panic_at: Option<usize>,
    /// Sleep this long at this training batch (a worker that stops answering).
    stall_at: Option<(usize, std::time::Duration)>,
}

struct Batch {
    inputs: Vec<u32>,
    targets: Vec<u32>,
    rows: usize,
}

impl VecTask {
    /// A learnable sequence: a fixed pseudo-random "text" over 40 tokens, repeated.
    fn new(n_train: usize, n_val: usize, seq: usize) -> Self {
        let pattern: Vec<u32> = (0..97u32).map(|i| (i * i * 7 + 3 * i) % 40).collect();
        let tokens = pattern.iter().cycle().take((n_train + n_val) * seq + 1).copied().collect();
        Self {
            tokens,
            seq,
            n_train,
            n_val,
            stop_after: None,
            drawn: AtomicUsize::new(0),
            loss_scale: 1.0,
            blow_up_after: None,
            grad_spike_at: None,
            panic_at: None,
            stall_at: None,
        }
    }
    /// Independent draws from a skewed distribution over 40 tokens: nothing
    /// to learn but the token frequencies, so a model that learns more is
    /// memorising its few training windows.
    fn noise(n_train: usize, n_val: usize, seq: usize) -> Self {
        let mut rng = data::util::SplitMix64(7);
        let tokens = (0..(n_train + n_val) * seq + 1).map(|_| (40.0 * rng.next_f64().powi(3)) as u32).collect();
        Self { tokens, ..Self::new(0, 0, seq) }.with_sizes(n_train, n_val)
    }
    fn with_sizes(mut self, n_train: usize, n_val: usize) -> Self {
        (self.n_train, self.n_val) = (n_train, n_val);
        self
    }
    fn rows(&self, starts: impl Iterator<Item = usize>) -> Batch {
        let (mut inputs, mut targets, mut rows) = (Vec::new(), Vec::new(), 0);
        for s in starts {
            inputs.extend(&self.tokens[s..s + self.seq]);
            targets.extend(&self.tokens[s + 1..s + self.seq + 1]);
            rows += 1;
        }
        Batch { inputs, targets, rows }
    }
}

impl Task for VecTask {
    type Batch = Batch;
    fn train_len(&self) -> usize {
        self.n_train
    }
    fn train_batch(&self, indices: &[usize]) -> Batch {
        let drawn = self.drawn.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((n, stop)) = &self.stop_after
            && drawn >= *n
        {
            stop.store(true, Ordering::SeqCst);
        }
        if self.panic_at == Some(drawn) {
            panic!("batch {drawn} is broken");
        }
        if let Some((n, pause)) = self.stall_at
            && n == drawn
        {
            std::thread::sleep(pause);
        }
        self.rows(indices.iter().map(|i| i * self.seq))
    }
    fn val_len(&self) -> usize {
        self.n_val
    }
    fn val_batch(&self, indices: &[usize]) -> Batch {
        // Offset by 5 so validation windows differ from training windows.
        self.rows(indices.iter().map(|i| (self.n_train + i) * self.seq - 5))
    }
    fn tokens(&self, batch: &Batch) -> usize {
        batch.inputs.len()
    }
    fn loss<B: Backend>(&self, model: &Gpt<B>, batch: &Batch, device: &B::Device) -> Tensor<B, 1> {
        let inputs = int_tensor::<B>(&batch.inputs, batch.rows, self.seq, device);
        let targets = int_tensor::<B>(&batch.targets, batch.rows, self.seq, device);
        let scale = match self.blow_up_after {
            Some(n) if self.drawn.load(Ordering::SeqCst) > n => 1e6,
            _ => self.loss_scale,
        };
        let loss = model.loss(inputs, targets) * scale;
        match self.grad_spike_at {
            // Adds 10⁶·loss − 10⁶·loss: zero in value, 10⁶ in gradient.
            Some(n) if self.drawn.load(Ordering::SeqCst) == n => {
                loss.clone() + (loss.clone() * 1e6 - (loss * 1e6).detach())
            }
            _ => loss,
        }
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minigpt-train-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn args(out: &std::path::Path, extra: &[&str]) -> TrainArgs {
    let mut flags = vec![
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--log-interval",
        "1",
        "--eval-interval",
        "5",
        "--eval-batches",
        "2",
    ];
    flags.extend(extra);
    TrainArgs::from_flags(&flags)
}

fn tiny_model() -> Gpt<CpuTrain> {
    // Dropout 0: results must not depend on the process-wide RNG, which
    // tests running in parallel share.
    let cfg = GptConfig::tiny(40).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0);
    Gpt::new(&cfg, &Default::default())
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn train_losses(events: &[Event]) -> Vec<(usize, f64)> {
    events.iter().filter(|e| e.split == "train").map(|e| (e.step, e.loss)).collect()
}

/// All gradients of a model, flattened in visiting order.
fn flat_grads(model: &Gpt<CpuTrain>, grads: &GradientsParams) -> Vec<f32> {
    struct Collect<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor<CpuTrain> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<CpuTrain, D>>) {
            let g = self.0.get::<kernels::Cpu, D>(param.id).unwrap();
            self.1.extend(g.into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut c = Collect(grads, Vec::new());
    model.visit(&mut c);
    c.1
}

mod data_parallel;
mod precision;

#[test]
fn accumulated_micro_batches_equal_one_big_batch() {
    let task = VecTask::new(8, 2, 16);
    let model = tiny_model();
    let device = Default::default();
    // One batch of 4 windows...
    let big = task.loss(&model, &task.train_batch(&[0, 1, 2, 3]), &device);
    let big = GradientsParams::from_grads(big.backward(), &model);
    // ...against 2 micro-batches of 2, each loss divided by 2, as the loop does.
    let mut acc = GradientsAccumulator::<Gpt<CpuTrain>>::new();
    for half in [[0, 1], [2, 3]] {
        let loss = task.loss(&model, &task.train_batch(&half), &device) / 2.0;
        acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
    }
    let (a, b) = (flat_grads(&model, &big), flat_grads(&model, &acc.grads()));
    assert_eq!(a.len(), b.len());
    // 1e-5: the multi-threaded CPU kernels sum in a different order for a
    // batch of 4 than for two of 2 (seen: 1e-6 apart). A forgotten division
    // by grad_accum would be off by 100%.
    TensorData::from(a.as_slice()).assert_approx_eq::<f32>(&TensorData::from(b.as_slice()), Tolerance::absolute(1e-5));
}

#[test]
fn a_short_run_lowers_validation_loss_and_logs_both_splits() {
    let out = out_dir("learn");
    let task = VecTask::new(64, 8, 16);
    let args = args(&out, &["--epochs", "2", "--grad-accum", "2"]);
    let outcome = train(tiny_model(), &task, &args, &Default::default(), no_stop(), "test").unwrap();
    let val = outcome.log.curve("val");
    assert_eq!(val[0].0, 0.0, "evaluated before the first step");
    assert_eq!(val.last().unwrap().0, 16.0, "2 epochs × 64/(4·2) steps");
    assert!(val.last().unwrap().1 < 0.8 * val[0].1, "val loss {:?}", val);
    // metrics.jsonl parses back into the same events, with both splits.
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let parsed: Vec<Event> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), outcome.log.events.len());
    for (p, e) in parsed.iter().zip(&outcome.log.events) {
        assert_eq!((p.step, &p.split), (e.step, &e.split));
        assert!((p.loss - e.loss).abs() < 1e-9 && (p.lr - e.lr).abs() < 1e-12);
    }
    assert!(parsed.iter().any(|e| e.split == "train" && e.grad_norm.is_some()));
    assert!(parsed.iter().any(|e| e.split == "val"));
    assert!(out.join("loss.svg").exists() && out.join("loss.png").exists());
    assert!(out.join("checkpoint/model.mpk").exists() && !out.join("checkpoint.tmp").exists());
}

#[test]
fn resumed_training_equals_uninterrupted_training() {
    let model = tiny_model();
    let device = Default::default();
    // Uninterrupted: 12 steps.
    let full_out = out_dir("full");
    let extra = ["--max-steps", "12", "--grad-accum", "2"];
    let full =
        train(model.clone(), &VecTask::new(40, 8, 16), &args(&full_out, &extra), &device, no_stop(), "t").unwrap();

    // Interrupted after step 5 (10 micro-batches: "Ctrl-C" during step 5)...
    let out = out_dir("resume");
    let stop = no_stop();
    let mut task = VecTask::new(40, 8, 16);
    task.stop_after = Some((10, stop.clone()));
    let first = train(model.clone(), &task, &args(&out, &extra), &device, stop, "t").unwrap();
    assert!(first.interrupted);
    // ...then resumed from the checkpoint, with a freshly initialised model
    // that the checkpoint must overwrite.
    let mut resume_args = args(&out, &extra);
    resume_args.resume = true;
    let resumed = train(tiny_model(), &VecTask::new(40, 8, 16), &resume_args, &device, no_stop(), "t").unwrap();

    let (a, b) = (train_losses(&full.log.events), train_losses(&resumed.log.events));
    assert_eq!(a.len(), 12);
    assert_eq!(a.iter().map(|p| p.0).collect::<Vec<_>>(), b.iter().map(|p| p.0).collect::<Vec<_>>());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "step {step}: uninterrupted {x} vs resumed {y}");
    }
    let w = |m: &Gpt<CpuTrain>| m.token_emb.weight.val().into_data();
    w(&full.model).assert_approx_eq::<f32>(&w(&resumed.model), Tolerance::absolute(1e-5));
}

#[test]
fn resume_without_a_checkpoint_is_a_clear_error() {
    let out = out_dir("nockpt");
    let mut a = args(&out, &[]);
    a.resume = true;
    let err = train(tiny_model(), &VecTask::new(8, 2, 16), &a, &Default::default(), no_stop(), "t").err().unwrap();
    assert!(err.to_string().contains("holds no checkpoint"), "{err}");
}

#[test]
fn a_diverging_loss_stops_the_run_with_advice() {
    let out = out_dir("nan");
    let mut task = VecTask::new(8, 2, 16);
    task.loss_scale = f64::NAN;
    let err = train(tiny_model(), &task, &args(&out, &[]), &Default::default(), no_stop(), "t").err().unwrap();
    let err = err.to_string();
    assert!(
        err.contains("training diverged: the validation loss became NaN at step 0") && err.contains("--lr"),
        "{err}"
    );
}

/// A loss that blows up but stays finite (as at a too high learning rate)
/// stops the run too, and the checkpoint on disk is the last one whose
/// weights were seen to give a sane loss.
#[test]
fn a_finite_blow_up_keeps_the_last_good_checkpoint() {
    let out = out_dir("blowup");
    let mut task = VecTask::new(40, 8, 16);
    task.blow_up_after = Some(6); // the loss of step 7 is a million times too large
    let flags = ["--save-interval", "1", "--eval-interval", "100", "--max-steps", "20"];
    let err = train(tiny_model(), &task, &args(&out, &flags), &Default::default(), no_stop(), "t").err().unwrap();
    let err = err.to_string();
    assert!(err.contains("rose to") && err.contains("at step 7"), "{err}");
    // Step 6's save was due during step 7, whose loss judged its weights: not written.
    assert!(err.contains("the checkpoint of step 5"), "{err}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 5);
}

#[test]
fn plan_arithmetic() {
    let a = args(std::path::Path::new("x"), &["--batch-size", "8", "--grad-accum", "4", "--epochs", "3"]);
    let plan = Plan::new(1000, &a).unwrap();
    assert_eq!(
        (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps, plan.effective_batch),
        (125, 31, 93, 32)
    );
    let err = Plan::new(5, &a).unwrap_err().to_string();
    assert!(err.contains("--batch-size 8 is larger than the 5 training examples"), "{err}");
    let err = Plan::new(20, &a).unwrap_err().to_string();
    assert!(err.contains("--grad-accum 4 needs more micro-batches than one epoch has (2)"), "{err}");
}

/// Each logged training loss is the mean over its logging interval: here
/// the mean of the per-step losses an identical run logs one by one.
#[test]
fn the_logged_training_loss_is_the_mean_of_its_interval() {
    let (device, model) = (Default::default(), tiny_model());
    let run = |name: &str, every: &str| {
        let out = out_dir(name);
        let a = args(&out, &["--max-steps", "10", "--log-interval", every]);
        let outcome = train(model.clone(), &VecTask::new(40, 8, 16), &a, &device, no_stop(), "t").unwrap();
        train_losses(&outcome.log.events)
    };
    let (each, fives) = (run("log1", "1"), run("log5", "5"));
    assert_eq!(fives.iter().map(|p| p.0).collect::<Vec<_>>(), [5, 10]);
    for (i, (step, mean)) in fives.iter().enumerate() {
        let expected = each[5 * i..5 * i + 5].iter().map(|p| p.1).sum::<f64>() / 5.0;
        assert!((mean - expected).abs() < 1e-6, "step {step}: logged {mean}, mean of its steps {expected}");
    }
}

/// Without --eval-interval a run evaluates about ten times, so its curve
/// has points to read.
#[test]
fn a_run_evaluates_about_ten_times_by_default() {
    let out = out_dir("evals");
    let a = TrainArgs::from_flags(&["--out", out.to_str().unwrap(), "--batch-size", "4", "--max-steps", "30"]);
    let outcome = train(tiny_model(), &VecTask::new(40, 8, 16), &a, &Default::default(), no_stop(), "t").unwrap();
    let steps: Vec<f64> = outcome.log.curve("val").iter().map(|p| p.0).collect();
    assert_eq!(steps, (0..=10).map(|i| 3.0 * i as f64).collect::<Vec<_>>());
}

/// A deliberately over-fitted run (8 windows of noise, 40 epochs) is
/// diagnosed as such, and best/ keeps the weights of its best evaluation,
/// loadable like any run.
#[test]
fn an_over_fitted_run_is_diagnosed_and_its_best_weights_are_kept() {
    let out = out_dir("overfit");
    let task = VecTask::noise(8, 8, 16);
    let a = args(&out, &["--epochs", "40", "--lr", "1e-2", "--eval-interval", "4", "--log-interval", "2"]);
    let outcome = train(tiny_model(), &task, &a, &Default::default(), no_stop(), "t").unwrap();
    let d = outcome.diagnosis.expect("enough evaluations");
    let crate::diagnosis::Verdict::OverFitting { best_step } = d.verdict else {
        panic!("expected over-fitting, got {d:?}; val {:?}", outcome.log.curve("val"))
    };
    let val = outcome.log.curve("val");
    let best = val.iter().copied().fold(val[0], |b, p| if p.1 < b.1 { p } else { b });
    assert_eq!(best_step, best.0);
    assert!(val.last().unwrap().1 > best.1 * 1.05, "validation rose after its best: {val:?}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Diagnosis: over-fitting"), "{report}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best/checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_f64(), Some(best_step));
    let cfg = GptConfig::tiny(40).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0);
    let loaded = crate::checkpoint::load_run_weights::<kernels::Cpu>(&out.join("best"), &cfg, &Default::default());
    assert!(loaded.is_ok(), "{:?}", loaded.err());
}

/// A LoRA run's checkpoint holds the adapters alone (the base is frozen),
/// and resuming from it, on the base rebuilt from scratch, equals the
/// uninterrupted run; `best/` is an adapter of its own.
#[test]
fn a_lora_run_checkpoints_only_its_adapters_and_resumes_exactly() {
    use model::lora::{LoraConfig, LoraTarget};
    let device = Default::default();
    let base = tiny_model();
    let lora =
        LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Fc] };
    let adapted = |seed: u64| {
        // The same adapters' initial values in every run (A is random).
        <CpuTrain as burn::tensor::backend::Backend>::seed(&device, seed);
        base.clone().with_lora(&lora, &device)
    };
    let extra = ["--max-steps", "10", "--lr", "1e-2"];
    let full_out = out_dir("lora-full");
    let start = adapted(5);
    let full =
        train(start.clone(), &VecTask::new(40, 8, 16), &args(&full_out, &extra), &device, no_stop(), "t").unwrap();

    let out = out_dir("lora-resume");
    let stop = no_stop();
    let mut task = VecTask::new(40, 8, 16);
    task.stop_after = Some((6, stop.clone()));
    assert!(train(start.clone(), &task, &args(&out, &extra), &device, stop, "t").unwrap().interrupted);
    let checkpoint = std::fs::metadata(out.join("checkpoint/model.mpk")).unwrap().len();
    let whole = crate::checkpoint::model_bytes(&base).unwrap().len() as u64;
    assert!(checkpoint * 10 < whole, "the checkpoint is {checkpoint} bytes, the model {whole}");
    let mut resume_args = args(&out, &extra);
    resume_args.resume = true;
    // Other adapter values to start from: the checkpoint must replace them.
    let resumed = train(adapted(99), &VecTask::new(40, 8, 16), &resume_args, &device, no_stop(), "t").unwrap();

    let (a, b) = (train_losses(&full.log.events), train_losses(&resumed.log.events));
    assert_eq!(a.len(), 10);
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "step {step}: uninterrupted {x} vs resumed {y}");
    }
    let adapters = |m: &Gpt<CpuTrain>| m.lora_adapters().into_iter().map(|a| a.b.val().into_data()).collect::<Vec<_>>();
    for (x, y) in adapters(&full.model).iter().zip(adapters(&resumed.model)) {
        x.assert_approx_eq::<f32>(&y, Tolerance::absolute(1e-5));
    }
    assert!(out.join("best/adapter.mpk").exists(), "best/ is an adapter too");
    let cfg = GptConfig::tiny(40).with_d_model(32).with_n_layers(2).with_context_length(16).with_dropout(0.0);
    let refused = crate::checkpoint::load_run_weights::<kernels::Cpu>(&out, &cfg, &device).err().unwrap().to_string();
    assert!(refused.contains("holds a LoRA adapter, not a model"), "{refused}");
}

/// QLoRA: on a base quantized to NF4, training changes the adapters and
/// nothing else (the quantized codes and scales are the same after), and
/// the loss falls.
#[test]
fn a_qlora_run_trains_only_its_adapters_and_leaves_the_quantized_base_as_it_was() {
    use kernels::quant::QuantFormat;
    use model::lora::{LoraConfig, LoraTarget};
    let device = Default::default();
    let lora =
        LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Fc] };
    let start = tiny_model().quantize_base(QuantFormat::Nf4).with_lora(&lora, &device);
    let (stored, f32_bytes) = start.linear_weight_bytes();
    assert!(stored * 5 < f32_bytes, "NF4 keeps {stored} of {f32_bytes} bytes");
    let quantized = |m: &Gpt<CpuTrain>| {
        m.blocks
            .iter()
            .flat_map(|b| [b.attention.query.quantized.clone(), b.mlp.proj.quantized.clone()])
            .collect::<Vec<_>>()
    };
    let out = out_dir("qlora");
    let trained = train(
        start.clone(),
        &VecTask::new(40, 8, 16),
        &args(&out, &["--max-steps", "20", "--lr", "1e-2"]),
        &device,
        no_stop(),
        "t",
    )
    .unwrap();
    assert!(quantized(&start).iter().all(Option::is_some));
    assert_eq!(quantized(&trained.model), quantized(&start), "the quantized base is bit for bit the same");
    let norm1 = |m: &Gpt<CpuTrain>| m.blocks[0].norm1.gamma.val().into_data();
    norm1(&trained.model).assert_eq(&norm1(&start), true);
    let b = |m: &Gpt<CpuTrain>| m.lora_adapters()[0].b.val().abs().sum().into_scalar();
    assert!(b(&start) == 0.0 && b(&trained.model) > 0.0, "the adapters trained");
    let val = trained.log.curve("val");
    assert!(val.last().unwrap().1 < val.first().unwrap().1, "validation loss fell: {val:?}");
}
