//! The training loop. Every stage runs this same function; only the `Task`
//! (batches and loss) differs.
//!
//! One optimizer step:
//! ```text
//! for each of grad_accum micro-batches:  forward → loss / grad_accum → backward → add gradients
//! [data parallelism: average the gradients over all workers]
//! clip gradients → lr = schedule(step) → optimizer step → log / evaluate / save
//! ```
//! With several workers (`--devices`, `--nodes`), each runs this loop on its
//! own shard of every batch (`data_parallel/`); alone, those lines do nothing.
//! At the end the run's curves are read (`diagnosis.rs`) and `report.md`
//! says what they show.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ElementConversion;
use data::BatchSampler;
use indicatif::{ProgressBar, ProgressStyle};
use kernels::AutodiffBackend;
use model::{Gpt, Precision};

use crate::args::TrainArgs;
use crate::checkpoint::{TrainerState, load_checkpoint, save_best, save_checkpoint};
use crate::clip::{clip_grad_value, clip_to_norm, global_grad_norm, scale_grads};
use crate::data_parallel::{Worker, launch};
use crate::diagnosis::Diagnosis;
use crate::loss_scale::{LossScale, Verdict};
use crate::metrics::{Event, MetricsLog};
use crate::optim::Optim;
pub use crate::plan::Plan;
use crate::plot::draw_loss_curves;
use crate::report::write_report;
use crate::schedule::LrSchedule;
use crate::task::Task;

/// What a finished (or interrupted) run hands back.
pub struct Outcome<B: AutodiffBackend> {
    pub model: Gpt<B>,
    pub log: MetricsLog,
    /// True if a signal stopped the run early (a checkpoint was saved).
    pub interrupted: bool,
    /// What the curves say (None: interrupted, or too few evaluations to tell).
    pub diagnosis: Option<Diagnosis>,
}

/// Trains `model` on `task` as `args` say, writing everything to `args.out`.
/// `stop` is raised by Ctrl-C or SIGTERM (`stop::stop_on_signals`): the loop
/// then saves a checkpoint and returns. A diverging loss ends the run with
/// an error, the last good checkpoint kept (see `divergence.rs`). With
/// `--devices`/`--nodes`, one worker per device runs the loop below.
pub fn train<B: AutodiffBackend, T: Task + Sync>(
    model: Gpt<B>,
    task: &T,
    args: &TrainArgs,
    device: &B::Device,
    stop: Arc<AtomicBool>,
    title: &str,
) -> Result<Outcome<B>> {
    launch(args, model, device, stop.clone(), |worker, model, device| {
        train_worker(worker, model, task, args, &device, stop.clone(), title)
    })
}

/// The loop, as one worker runs it (the only one, unless data-parallel).
fn train_worker<B: AutodiffBackend, T: Task>(
    mut worker: Worker<B>,
    mut model: Gpt<B>,
    task: &T,
    args: &TrainArgs,
    device: &B::Device,
    stop: Arc<AtomicBool>,
    title: &str,
) -> Result<Outcome<B>> {
    // Worker 0 alone writes the run and prints; the others train in silence.
    let writer = worker.writes();
    let say = move |bar: &ProgressBar, line: String| {
        if writer {
            print_line(bar, line)
        }
    };
    // 1. The plan: how many steps, on what schedule.
    if writer {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("--out {}: cannot create this folder", args.out.display()))?;
    }
    let plan = Plan::new(task.train_len(), args)?;
    let schedule = LrSchedule {
        kind: args.schedule,
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_steps: args.warmup_steps,
        total_steps: plan.total_steps,
    };
    let eval_interval = args.eval_interval.unwrap_or(plan.total_steps.div_ceil(10)).max(1);
    // Training batches: shuffled every epoch, last partial batch dropped.
    // Each is drawn for all workers together; each worker takes its shard.
    let batch_for_all = args.batch_size * worker.world;
    let mut sampler = BatchSampler::new(task.train_len(), batch_for_all, true, true, args.seed);
    let mut state = TrainerState::default();

    // 2. Resume: weights, optimizer moments, step and data position. The
    // optimizer is built after the weights are loaded: loading brings the
    // saved parameter ids, which key the optimizer's state.
    let mut optim_bytes = None;
    if args.resume {
        let (loaded, bytes, saved) = load_checkpoint(&args.out, model, device)?;
        model = loaded;
        optim_bytes = Some(bytes);
        sampler.restore(saved.sampler);
        state = saved;
    }
    // Data parallelism: every worker starts from worker 0's weights.
    model = worker.same_start(model)?;
    // The products in --dtype; the weights and the optimizer stay f32.
    model = model.with_precision(args.dtype);
    match args.dtype {
        Precision::Fp16 if state.loss_scale.is_none() => state.loss_scale = Some(LossScale::new(args.loss_scale)),
        Precision::Fp16 => {} // resumed: the scale it had reached
        _ => state.loss_scale = None,
    }
    let mut optim = Optim::new(args.optimizer, args.weight_decay, &model, &model.embedding_param_ids());
    if let Some(bytes) = optim_bytes {
        optim = optim.load_bytes(bytes, device).context("the optimizer state does not match this model")?;
    }
    let mut log = match writer {
        true => MetricsLog::open(&args.out, args.resume.then_some(state.step))?,
        false => MetricsLog::in_memory(),
    };

    // The same validation batches at every evaluation, so the numbers compare.
    if task.val_len() == 0 {
        bail!("the validation set holds no example: raise --val-ratio or lower --max-seq-len");
    }
    // Drawn for all workers together too: each scores its shard of each batch.
    let mut val_sampler = BatchSampler::new(task.val_len(), batch_for_all, false, false, 0);
    let n_val = args.eval_batches.min(val_sampler.batches_per_epoch());
    let val_batches: Vec<Vec<usize>> = (0..n_val).map(|_| val_sampler.next_batch().1).collect();

    let bar = match writer {
        true => ProgressBar::new(plan.total_steps as u64).with_position(state.step as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps | {msg} | ETA {eta}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let (elapsed_before, tokens_before) = (state.elapsed_s, state.tokens);
    let elapsed = || elapsed_before + started.elapsed().as_secs_f64();
    // Throughput counts time spent in training steps only, not evaluations or saves.
    let mut step_secs = 0.0;
    let tokens_per_s = |s: &TrainerState, secs: f64| (s.tokens - tokens_before) as f64 / secs.max(1e-9);
    let epoch_of = |s: &TrainerState| s.sampler.epoch as f64 + s.sampler.batch as f64 / plan.batches_per_epoch as f64;

    let mut interrupted = false;
    // The last logged training loss (a mean over its interval), printed beside each validation loss.
    let mut train_mean = f64::NAN;
    // A checkpoint due at the end of a step is written during the next one,
    // once these weights have scored a sane training loss: a model that has
    // just diverged never replaces the last good checkpoint.
    let mut save_pending = false;
    let mut last_saved = args.resume.then_some(state.step);
    let diverged = |why: String, lr: f64, last_saved: Option<usize>| {
        let kept = match last_saved {
            Some(step) => format!("the checkpoint of step {step} in {} is kept", args.out.display()),
            None => "no checkpoint had been saved yet".to_string(),
        };
        anyhow::anyhow!(
            "training diverged: {why}; {kept}. Lower --lr (now {lr:.2e}), add --warmup-steps or clip harder (--clip-norm 0.5); --divergence-factor {} sets this test (0: stop only at NaN)",
            args.divergence_factor
        )
    };

    // 3. Evaluate before any update, so the starting point is on record.
    if state.step == 0 {
        let (loss, extra) = evaluate(&model, task, &val_batches, device, &mut worker)?;
        say(&bar, format!("step 0: val loss {loss:.4} (perplexity {:.1}){}", loss.exp(), fmt_extra(&extra)));
        log.log(Event { extra: to_map(&extra), ..event("val", &state, 0.0, loss, schedule.lr_at(0), 0.0) })?;
        state
            .watch
            .validation(0, loss, args.divergence_factor)
            .map_err(|why| diverged(why, schedule.lr_at(0), None))?;
        // A fine-tuning run can make its starting model worse: that model is then the best.
        if writer {
            save_best(&args.out, &model, &state)?;
        }
    }

    while state.step < plan.total_steps {
        // Dropout masks depend only on (seed, step): a resumed run draws the
        // same ones as an uninterrupted run would.
        // Each worker draws its own (rank 0's are those of a run alone).
        let dropout_seed = args.seed.wrapping_add(state.step as u64).wrapping_mul(0x9e3779b97f4a7c15);
        B::seed(device, dropout_seed.wrapping_add(worker.rank as u64));
        let step_started = Instant::now();

        // 4. Forward and backward over grad_accum micro-batches.
        let mut accumulator = GradientsAccumulator::<Gpt<B>>::new();
        let (mut step_loss, mut step_tokens) = (None, 0);
        let mut step_metrics: Vec<(&'static str, f64)> = Vec::new();
        let log_now = (state.step + 1) % args.log_interval == 0 || state.step + 1 == plan.total_steps;
        for _ in 0..args.grad_accum {
            let (_, indices) = sampler.next_batch();
            let batch = task.train_batch(&worker.shard(indices));
            step_tokens += task.tokens(&batch);
            let (loss, metrics) = task.loss_and_metrics(&model, &batch, device);
            // Dividing by grad_accum makes the summed gradients equal the
            // gradient of the *mean* loss over all micro-batches.
            let loss = loss / args.grad_accum as f64;
            // fp16: the gradients travel the backward pass S times larger (see loss_scale.rs).
            let grads = match &state.loss_scale {
                Some(s) => GradientsParams::from_grads((loss.clone() * s.scale).backward(), &model),
                None => GradientsParams::from_grads(loss.backward(), &model),
            };
            accumulator.accumulate(&model, grads);
            let loss = loss.detach();
            step_loss = Some(match step_loss.take() {
                Some(sum) => sum + loss,
                None => loss,
            });
            if log_now {
                // Read back only when logged: each read waits for the device.
                for (i, (name, value)) in metrics.into_iter().enumerate() {
                    let value: f64 = value.into_scalar().elem::<f64>() / args.grad_accum as f64;
                    match step_metrics.get_mut(i) {
                        Some(entry) => entry.1 += value,
                        None => step_metrics.push((name, value)),
                    }
                }
            }
        }
        let loss: f64 = step_loss.expect("grad_accum >= 1").into_scalar().elem();
        // Data parallelism: the mean gradient over all workers' shards, and the
        // step's loss, tokens, metrics and stop request from all of them.
        let stats: Vec<f64> = [loss, step_tokens as f64, stop.load(Ordering::SeqCst) as u8 as f64]
            .into_iter()
            .chain(step_metrics.iter().map(|(_, v)| *v))
            .collect();
        let (mut grads, stats) = match worker.average(&model, accumulator.grads(), &stats) {
            Ok(averaged) => averaged,
            // Stopped while the others were out of reach (across machines,
            // Ctrl-C also stops node 0's coordinator): the last whole step is kept.
            Err(e) if stop.load(Ordering::SeqCst) => {
                if writer {
                    save_checkpoint(&args.out, &model, Some(optim.to_bytes()?), &state)?;
                }
                say(&bar, format!("interrupted ({e:#}): checkpoint saved at step {}", state.step));
                interrupted = true;
                break;
            }
            Err(e) => return Err(e),
        };
        let (loss, step_tokens) = (stats[0], (stats[1] * worker.world as f64).round() as usize);
        let stop_requested = stats[2] > 0.0;
        step_metrics.iter_mut().zip(&stats[3..]).for_each(|(metric, mean)| metric.1 = *mean);
        let lr = schedule.lr_at(state.step);
        // This loss judges the weights of the step before: sane, and they may
        // be saved (`state` still describes the end of that step).
        let mut watch = state.watch.clone();
        watch.train_step(state.step + 1, loss, args.divergence_factor).map_err(|why| diverged(why, lr, last_saved))?;
        if save_pending && writer {
            save_checkpoint(&args.out, &model, Some(optim.to_bytes()?), &state)?;
            (save_pending, last_saved) = (false, Some(state.step));
        }
        state.watch = watch;

        // 5. Unscale (fp16), clip, then step.
        let (mut verdict, mut norm) = (Verdict::Step, None);
        if let Some(scaler) = &mut state.loss_scale {
            scale_grads(&model, &mut grads, 1.0 / scaler.scale);
            // Checked before clipping, which would hide an inf.
            let n = global_grad_norm(&model, &mut grads);
            verdict = scaler.after_backward(n.is_finite(), args.loss_scale_growth_interval);
            norm = Some(n);
        }
        let mut grad_norm = None;
        if verdict == Verdict::Step {
            if let Some(v) = args.clip_value {
                clip_grad_value(&model, &mut grads, v);
                norm = None; // clamping changed it
            }
            let n = norm.unwrap_or_else(|| global_grad_norm(&model, &mut grads));
            if args.clip_norm > 0.0 {
                clip_to_norm(&model, &mut grads, n, args.clip_norm);
            }
            grad_norm = Some(n);
            model = optim.step(lr, model, grads);
        }
        // A skipped step still counts (its batches were used, the schedule moves on).
        step_secs += step_started.elapsed().as_secs_f64();
        state.step += 1;
        state.tokens += step_tokens;
        state.sampler = sampler.position();
        state.elapsed_s = elapsed();
        state.interval_loss = (state.interval_loss.0 + loss, state.interval_loss.1 + 1);
        let last = state.step == plan.total_steps;
        interrupted = stop_requested && !last;

        // 6. Log, evaluate, save.
        bar.set_position(state.step as u64);
        let scale_note = match &state.loss_scale {
            Some(s) => format!(" | loss scale {} ({} skipped)", s.scale, s.skipped),
            None => String::new(),
        };
        let speed = tokens_per_s(&state, step_secs);
        bar.set_message(format!("loss {loss:.3} | lr {lr:.1e} | {speed:.0} tok/s{scale_note}"));
        if let (Verdict::Skip, Some(s)) = (verdict, &state.loss_scale) {
            let extra = [("loss_scale".to_string(), s.scale)];
            log.log(Event { extra: to_map(&extra), ..event("skipped", &state, epoch_of(&state), loss, lr, speed) })?;
        }
        if state.step % args.log_interval == 0 || last {
            let mut extra: Vec<(String, f64)> = step_metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            if let Some(s) = &state.loss_scale {
                extra.extend([("loss_scale".to_string(), s.scale), ("skipped_steps".to_string(), s.skipped as f64)]);
            }
            // One batch's loss is noisy; the mean over the interval is the curve.
            let (sum, steps) = std::mem::take(&mut state.interval_loss);
            train_mean = sum / steps.max(1) as f64;
            let at = event("train", &state, epoch_of(&state), train_mean, lr, tokens_per_s(&state, step_secs));
            log.log(Event { grad_norm, extra: to_map(&extra), ..at })?;
        }
        if state.step % eval_interval == 0 || last {
            let (val_loss, extra) = evaluate(&model, task, &val_batches, device, &mut worker)?;
            // The training loss beside it: of the interval under way, or the last logged one.
            let (sum, steps) = state.interval_loss;
            let train_now = if steps > 0 { sum / steps as f64 } else { train_mean };
            say(
                &bar,
                format!(
                    "step {}: train loss {train_now:.4}, val loss {val_loss:.4} (perplexity {:.1}){}",
                    state.step,
                    val_loss.exp(),
                    fmt_extra(&extra)
                ),
            );
            let at = event("val", &state, epoch_of(&state), val_loss, lr, tokens_per_s(&state, step_secs));
            log.log(Event { extra: to_map(&extra), ..at })?;
            if writer {
                draw_loss_curves(&args.out, title, &log.curve("train"), &log.curve("val"), &log.share_curves())?;
            }
            state
                .watch
                .validation(state.step, val_loss, args.divergence_factor)
                .map_err(|why| diverged(why, lr, last_saved))?;
            // The watch keeps the best validation loss: a new one is `best/`'s.
            if writer && state.watch.best_val.is_some_and(|(_, step)| step == state.step) {
                save_best(&args.out, &model, &state)?;
            }
        }
        if !writer {
            // Nothing to save.
        } else if last || interrupted {
            // No next step to wait for: the last weights were just validated;
            // interrupted ones are saved as they are, rather than lost.
            save_checkpoint(&args.out, &model, Some(optim.to_bytes()?), &state)?;
        } else if state.step % args.save_interval == 0 {
            save_pending = true;
        }
        if interrupted {
            say(&bar, format!("interrupted: checkpoint saved at step {}; continue with --resume", state.step));
            break;
        }
    }
    bar.finish_and_clear();
    let mut diagnosis = None;
    if !interrupted && writer {
        let best = state.watch.best_val.map(|(loss, step)| (step, loss));
        diagnosis = write_report(&args.out, title, &log, best)?;
        match &diagnosis {
            Some(d) => println!("diagnosis: {} ({}); {}", d.name(), d.evidence, d.advice),
            None => println!("diagnosis: too few evaluations to read the curves (lower --eval-interval)"),
        }
        println!("report: {}", args.out.join("report.md").display());
    }
    Ok(Outcome { model, log, interrupted, diagnosis })
}

/// Mean validation loss over the fixed batches, plus the task's own metrics.
/// Runs on the inner (non-autodiff) backend: no graph is built and dropout
/// is off, which is what "evaluation mode" means. With several workers, each
/// scores its shard of every batch and worker 0 alone the task's metrics.
pub fn evaluate<B: AutodiffBackend, T: Task>(
    model: &Gpt<B>,
    task: &T,
    batches: &[Vec<usize>],
    device: &B::Device,
    worker: &mut Worker<B>,
) -> Result<(f64, Vec<(String, f64)>)> {
    let valid: Gpt<B::InnerBackend> = model.valid();
    // Each batch's mean is weighted by its size, so a short last batch
    // counts for what it holds.
    let (mut total, mut examples) = (0.0, 0.0);
    for indices in batches {
        let shard = worker.shard(indices.clone());
        if shard.is_empty() {
            continue;
        }
        let batch = task.val_batch(&shard);
        let loss: f64 = task.loss::<B::InnerBackend>(&valid, &batch, device).into_scalar().elem();
        total += loss * shard.len() as f64;
        examples += shard.len() as f64;
    }
    let sums = worker.sum(&[total, examples], device)?;
    let extra = match worker.writes() {
        true => task.evaluate::<B::InnerBackend>(&valid, device),
        false => Vec::new(),
    };
    Ok((sums[0] / sums[1].max(1.0), extra))
}

/// Prints above the progress bar, or plainly when there is no terminal (the
/// bar then hides itself, and would hide these lines with it).
fn print_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// A metrics event at the loop's position `state`, with no gradient norm
/// and no extra numbers (the caller adds those it has).
fn event(split: &str, state: &TrainerState, epoch: f64, loss: f64, lr: f64, tokens_per_s: f64) -> Event {
    Event {
        step: state.step,
        epoch,
        split: split.into(),
        loss,
        lr,
        grad_norm: None,
        tokens: state.tokens,
        tokens_per_s,
        elapsed_s: state.elapsed_s,
        extra: Default::default(),
    }
}

fn fmt_extra(extra: &[(String, f64)]) -> String {
    extra.iter().map(|(k, v)| format!(", {k} {v:.3}")).collect()
}

fn to_map(extra: &[(String, f64)]) -> serde_json::Map<String, serde_json::Value> {
    extra.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect()
}
