//! One worker's link to the others: the all-reduce of each step, run on a
//! thread of its own so that a worker that never answers is noticed.
//!
//! burn-collective's calls block until every worker has made the same call;
//! a worker that died never makes it. The call therefore runs on a helper
//! thread, and the training thread waits for its answer with a deadline
//! (`--collective-timeout`) and an eye on the other threads of this process
//! (a worker here that failed is known at once, see `Failure`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use kernels::AutodiffBackend;

use super::Failure;

type Float<B> = burn::tensor::ops::FloatTensor<B>;

/// Across machines, the pause between joining a session and its
/// all-reduce: the join returns once every node has registered, which can
/// be before each node's tensor server (started at registration) accepts
/// connections, and a download that finds no server fails the step.
const SESSION_SETTLE: Duration = Duration::from_millis(50);

/// How long a stopped worker still waits for an exchange under way.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where a worker joins: its rank and the group's settings (see `launch`).
pub(crate) struct Place {
    pub rank: usize,
    pub world: usize,
    /// burn-collective's settings, one per session parity (see `helper`).
    pub configs: [CollectiveConfig; 2],
    /// Across machines: this node's workers, met between sessions.
    pub sessions: Option<Arc<Barrier>>,
    pub timeout: Duration,
    pub failure: Arc<Failure>,
    pub stop: Arc<AtomicBool>,
}

/// One worker's place in the run, handed to the training loop.
pub struct Worker<B: AutodiffBackend> {
    /// 0 ..= world - 1; worker 0 writes the run.
    pub rank: usize,
    /// Workers in the whole run.
    pub world: usize,
    /// None when training alone: every call below is then a no-op.
    link: Option<Link<B::InnerBackend>>,
}

struct Link<I: Backend> {
    requests: Option<mpsc::Sender<Float<I>>>,
    replies: mpsc::Receiver<Result<Option<Float<I>>, String>>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
    failure: Arc<Failure>,
    /// Ctrl-C or SIGTERM: the others may never answer again (see `wait`).
    stop: Arc<AtomicBool>,
    /// False once a wait failed: the helper may be stuck in a call for good.
    healthy: bool,
}

impl<B: AutodiffBackend> Worker<B> {
    /// The only worker: no collective, nothing exchanged.
    pub fn alone() -> Self {
        Self { rank: 0, world: 1, link: None }
    }

    /// Joins the group as worker `rank` (waiting, up to `timeout`, for the others to join).
    pub(crate) fn join(place: Place, device: B::Device) -> Result<Self> {
        let Place { rank, world, configs, sessions, timeout, failure, stop } = place;
        let (requests, inbox) = mpsc::channel::<Float<B::InnerBackend>>();
        let (outbox, replies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("collective-{rank}"))
            .spawn(move || helper::<B::InnerBackend>(PeerId::from(rank), device, configs, sessions, inbox, outbox))
            .context("cannot start a thread for the collective")?;
        let mut link =
            Link { requests: Some(requests), replies, thread: Some(thread), timeout, failure, stop, healthy: true };
        link.wait("waiting for the other workers to join")?;
        Ok(Self { rank, world, link: Some(link) })
    }

    /// A worker of a group that exchanges nothing (to test `shard`).
    #[cfg(test)]
    pub(crate) fn for_test(rank: usize, world: usize) -> Self {
        Self { rank, world, link: None }
    }

    /// True for the one worker that writes checkpoints, metrics and the progress bar.
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    /// This worker's share of a batch drawn for all workers: the rank-th of
    /// `world` equal slices, so the shards are disjoint and cover the batch.
    /// (A batch that does not divide evenly, as a last validation batch may
    /// not, gives shards one example apart.)
    pub fn shard(&self, batch: Vec<usize>) -> Vec<usize> {
        let part = |rank: usize| rank * batch.len() / self.world;
        batch[part(self.rank)..part(self.rank + 1)].to_vec()
    }

    /// Sums a few numbers over all workers (e.g. the validation loss of each shard).
    pub fn sum(&mut self, numbers: &[f64], device: &B::Device) -> Result<Vec<f64>> {
        let Some(link) = &mut self.link else { return Ok(numbers.to_vec()) };
        let numbers: Vec<f32> = numbers.iter().map(|&x| x as f32).collect();
        let k = numbers.len();
        let tensor = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(numbers, [k]), device);
        let sum = link.exchange(tensor, "summing the validation loss")?;
        Ok(sum.into_data().convert::<f32>().to_vec::<f32>().expect("f32").into_iter().map(f64::from).collect())
    }

    /// Worker 0's weights on every worker, as DDP does at the start: each
    /// sends its weights (worker 0) or zeros (the others), and the sum is
    /// worker 0's. Resumed runs and runs from --init start equal anyway;
    /// this makes sure, whatever each device's random numbers were.
    pub fn same_start<M: AutodiffModule<B>>(&mut self, model: M) -> Result<M> {
        let Some(link) = &mut self.link else { return Ok(model) };
        let mut flat = Flatten::<B::InnerBackend> { parts: Vec::new(), shapes: Vec::new(), zeros: self.rank != 0 };
        model.visit(&mut flat);
        let weights = link.exchange(Tensor::cat(flat.parts, 0), "sharing worker 0's weights")?;
        Ok(model.map(&mut Unflatten { flat: weights, offset: 0, shapes: flat.shapes.into_iter() }))
    }

    /// Sums `grads` and `stats` over all workers in one all-reduce and
    /// divides by the number of workers: every worker gets the same mean
    /// gradient, and the means of the stats (one number per worker each).
    pub fn average<M: AutodiffModule<B>>(
        &mut self,
        model: &M,
        grads: GradientsParams,
        stats: &[f64],
    ) -> Result<(GradientsParams, Vec<f64>)> {
        let Some(link) = &mut self.link else { return Ok((grads, stats.to_vec())) };
        let mut gather = Gather::<B::InnerBackend> { grads, parts: Vec::new(), taken: Vec::new() };
        model.visit(&mut gather);
        let device = gather.parts.first().context("no parameter has a gradient")?.device();
        let stats: Vec<f32> = stats.iter().map(|&x| x as f32).collect();
        let k = stats.len();
        gather.parts.push(Tensor::from_data(TensorData::new(stats, [k]), &device));
        // [Σ parameters' elements + k]: one call per step, not one per tensor
        // (each is a round trip, across machines one over the network).
        let flat = Tensor::cat(gather.parts, 0);
        let sum = link.exchange(flat, "averaging the gradients")?;
        let mean = sum / self.world as f64;
        let n = mean.dims()[0];
        let stats = mean.clone().slice(n - k..n).into_data().convert::<f32>().to_vec::<f32>().expect("f32 stats");
        let mut scatter = Scatter { flat: mean, offset: 0, grads: GradientsParams::new(), taken: gather.taken.iter() };
        model.visit(&mut scatter);
        Ok((scatter.grads, stats.into_iter().map(f64::from).collect()))
    }
}

/// The helper thread: joins the group, then answers each request with the
/// sum over all workers, until the training thread hangs up.
///
/// Across machines (`sessions`), burn-collective 0.21 completes only one
/// all-reduce per registration: its end-of-operation sync never forgets the
/// nodes that synced, so the second one waits forever. Each exchange is
/// then a session of its own (join, all-reduce, leave), and this node's
/// workers wait for each other between sessions (`Barrier`). Sessions
/// alternate between `configs`' two ports: one session's server may still be
/// closing when the next one starts. Both are workarounds, costing
/// `SESSION_SETTLE` and a few connections per step.
fn helper<I: Backend>(
    peer: PeerId,
    device: I::Device,
    configs: [CollectiveConfig; 2],
    sessions: Option<Arc<Barrier>>,
    inbox: mpsc::Receiver<Float<I>>,
    outbox: mpsc::Sender<Result<Option<Float<I>>, String>>,
) {
    let describe = |e: burn_collective::CollectiveError| format!("{e:?}");
    let register = |session: usize| {
        burn_collective::register::<I>(peer, device.clone(), configs[session % 2].clone()).map_err(describe)
    };
    let sum = |tensor| burn_collective::all_reduce::<I>(peer, tensor, ReduceOperation::Sum).map_err(describe);
    let leave = || burn_collective::finish_collective::<I>(peer).map_err(describe);
    if sessions.is_none() {
        let joined = register(0);
        let ok = joined.is_ok();
        if outbox.send(joined.map(|_| None)).is_err() || !ok {
            return;
        }
    } else if outbox.send(Ok(None)).is_err() {
        return; // joining happens in each session
    }
    for session in 0.. {
        let Ok(tensor) = inbox.recv() else { break };
        let reply = match &sessions {
            None => sum(tensor),
            Some(barrier) => {
                let reply = register(session)
                    .inspect(|_| std::thread::sleep(SESSION_SETTLE))
                    .and_then(|_| sum(tensor))
                    .and_then(|s| leave().map(|_| s));
                barrier.wait();
                reply
            }
        };
        if outbox.send(reply.map(Some)).is_err() {
            return;
        }
    }
    // The loop is over: leave, so that a later run in this process can form a group.
    if sessions.is_none() {
        let _ = leave();
    }
}

impl<I: Backend> Link<I> {
    fn exchange(&mut self, tensor: Tensor<I, 1>, what: &str) -> Result<Tensor<I, 1>> {
        let sent = self.requests.as_ref().expect("open until dropped").send(tensor.into_primitive().tensor());
        sent.map_err(|_| anyhow!("{what}: the collective thread has ended"))?;
        let sum = self.wait(what)?.expect("an all-reduce answers with a tensor");
        Ok(Tensor::from_primitive(TensorPrimitive::Float(sum)))
    }

    fn wait(&mut self, what: &str) -> Result<Option<Float<I>>> {
        let started = Instant::now();
        self.healthy = false;
        loop {
            match self.replies.recv_timeout(Duration::from_millis(50)) {
                Ok(reply) => {
                    let reply = reply.map_err(|e| anyhow!("{what}: the collective failed: {e}"))?;
                    self.healthy = true;
                    return Ok(reply);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(why) = self.failure.get() {
                        bail!("{what}: {why}");
                    }
                    // Stopped by a signal: an answer that has not come in a few
                    // seconds will not (across machines, Ctrl-C also ends node 0's coordinator).
                    if self.stop.load(Ordering::SeqCst) && started.elapsed() >= STOP_GRACE {
                        bail!("{what}: stopped by a signal while waiting for the other workers");
                    }
                    if started.elapsed() >= self.timeout {
                        bail!(
                            "{what}: no answer from the other workers in {} s (--collective-timeout); \
                             one of them has stopped or is unreachable",
                            self.timeout.as_secs()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => bail!("{what}: the collective thread has ended"),
            }
        }
    }
}

impl<I: Backend> Drop for Link<I> {
    /// A finished run waits for its helper to leave the group; a failed one
    /// leaves it behind, as it may never return.
    fn drop(&mut self) {
        self.requests = None;
        if let (true, Some(thread)) = (self.healthy, self.thread.take()) {
            let _ = thread.join();
        }
    }
}

/// Every float parameter, flattened, in the model's own order (the same on
/// every worker, whatever its parameter ids); zeros instead with `zeros`.
struct Flatten<I: Backend> {
    parts: Vec<Tensor<I, 1>>,
    shapes: Vec<Vec<usize>>,
    zeros: bool,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val().inner();
        let dims = value.dims().to_vec();
        let value = value.reshape([dims.iter().product::<usize>()]); // [D dims] → [n]
        self.parts.push(if self.zeros { value.zeros_like() } else { value });
        self.shapes.push(dims);
    }
}

/// Puts `Flatten`'s values back, in the same order, as new parameter values.
struct Unflatten<I: Backend> {
    flat: Tensor<I, 1>,
    offset: usize,
    shapes: std::vec::IntoIter<Vec<usize>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unflatten<B::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dims: [usize; D] = self.shapes.next().expect("same model").try_into().expect("same rank");
        let n: usize = dims.iter().product();
        let value = self.flat.clone().slice(self.offset..self.offset + n).reshape(dims); // [n] → dims
        self.offset += n;
        param.map(|old| {
            let value = Tensor::from_inner(value);
            if old.is_require_grad() { value.require_grad() } else { value }
        })
    }
}

/// The gradients of the parameters that have one, flattened in the model's order.
struct Gather<I: Backend> {
    grads: GradientsParams,
    parts: Vec<Tensor<I, 1>>,
    taken: Vec<(ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let dims = grad.dims().to_vec();
            self.parts.push(grad.reshape([dims.iter().product::<usize>()])); // [D dims] → [n]
            self.taken.push((param.id, dims));
        }
    }
}

/// Cuts the averaged buffer back into one gradient per parameter.
struct Scatter<'a, I: Backend> {
    flat: Tensor<I, 1>,
    offset: usize,
    grads: GradientsParams,
    taken: std::slice::Iter<'a, (ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scatter<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((id, dims)) = self.taken.as_slice().first() else { return };
        if *id != param.id {
            return; // a parameter without a gradient (frozen)
        }
        let dims: [usize; D] = dims.clone().try_into().expect("same rank");
        let n: usize = dims.iter().product();
        let grad = self.flat.clone().slice(self.offset..self.offset + n).reshape(dims); // [n] → dims
        self.grads.register::<B::InnerBackend, D>(param.id, grad);
        self.offset += n;
        self.taken.next();
    }
}

/// Node 0 hosts burn-collective's orchestrator, which the nodes' collective
/// clients meet at: it tells each node its peers for every all-reduce.
pub(crate) fn start_coordinator(master_addr: &str) -> Result<()> {
    quiet_logs();
    let port = super::port_of("--master-addr", master_addr)?;
    // Checked here so that a port in use is one clear line, not a log message.
    std::net::TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("--master-addr {master_addr}: cannot listen on port {port}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new()
        .name("coordinator".into())
        .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
        .context("cannot start the coordinator's thread")?;
    Ok(())
}

/// burn-communication logs every connection and transfer at INFO level
/// through a subscriber it installs itself unless one exists: this one
/// comes first and passes only warnings and errors.
pub(crate) fn quiet_logs() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .try_init();
}
