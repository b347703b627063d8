//! Data parallelism: several workers train one model together, each on its
//! own share of every batch (walkthrough: `notebooks-md/03-pretraining.md`, §9).
//!
//! Every worker runs the same loop (`trainer.rs`) on its own copy of the
//! model. At each step it computes gradients on its shard, one all-reduce
//! sums the gradients of all workers (and the step's loss, token count and
//! stop request), each divides by the number of workers and applies the same
//! update: the copies stay equal, and the step is the step one worker would
//! take on the whole batch. Worker 0 alone writes checkpoints, metrics, plots
//! and the progress bar.
//!
//! The engine is burn's `burn-collective`: all-reduce of tensors between
//! threads of one process (one per device) and, through its orchestrator,
//! between processes on several machines. burn also has a `distributed`
//! feature, which all-reduces inside the backward pass through NCCL; it
//! exists only for CUDA, so it could neither be tested nor learned from on
//! a CPU, and it would hide the averaging inside backward. Ours happens
//! after backward, where the loop already holds the gradients: accumulation,
//! fp16 unscaling and clipping then act on the averaged gradient, as they do
//! on one device.
//!
//! Workers are threads of this process, one per `--devices` entry; with
//! `--nodes`, one such process per machine. Worker ranks count across nodes:
//! node r's first worker is r × devices per node.

mod collective;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::prelude::DeviceOps;
use burn::tensor::backend::DeviceId;
use burn_collective::CollectiveConfig;
use kernels::AutodiffBackend;
use model::Gpt;

pub use collective::Worker;

use crate::args::TrainArgs;
use crate::device::{DeviceKind, parse_device};
use crate::trainer::Outcome;

/// Who trains where: this node's devices and the nodes of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// One worker per entry, on this node.
    pub devices: Vec<DeviceKind>,
    pub nodes: usize,
    pub node_rank: usize,
    /// The coordinator's host:port (multi-node runs only).
    pub master_addr: Option<String>,
    /// This node's host:port for the gradient exchange (multi-node runs only).
    pub node_addr: Option<String>,
    pub timeout: Duration,
}

impl Topology {
    /// Reads and checks the data-parallel flags.
    pub fn from_args(args: &TrainArgs) -> Result<Self> {
        let names = match args.devices.is_empty() {
            true => vec![args.device.clone()],
            false => args.devices.clone(),
        };
        let devices = names.iter().map(|d| parse_device(d.trim())).collect::<Result<Vec<_>>>()?;
        let kind = |d: &DeviceKind| std::mem::discriminant(d);
        if devices.iter().any(|d| kind(d) != kind(&devices[0])) {
            bail!("--devices {}: all devices must be of one kind (one backend trains them all)", names.join(","));
        }
        for (i, d) in devices.iter().enumerate() {
            if matches!(d, DeviceKind::Cuda(_)) && devices[..i].contains(d) {
                bail!("--devices {}: {} is listed twice; one worker per GPU", names.join(","), names[i]);
            }
        }
        if args.node_rank >= args.nodes {
            bail!("--node-rank {} must be below --nodes {}", args.node_rank, args.nodes);
        }
        let (master_addr, node_addr) = (args.master_addr.clone(), args.node_addr.clone());
        match args.nodes {
            1 if master_addr.is_some() || node_addr.is_some() => {
                bail!("--master-addr and --node-addr are for multi-machine runs: add --nodes N (N > 1)")
            }
            1 => {}
            n => {
                for (flag, value) in [("--master-addr", &master_addr), ("--node-addr", &node_addr)] {
                    let Some(value) = value else { bail!("--nodes {n} needs {flag} host:port") };
                    port_of(flag, value)?;
                }
            }
        }
        let timeout = Duration::from_secs(args.collective_timeout as u64);
        Ok(Self { devices, nodes: args.nodes, node_rank: args.node_rank, master_addr, node_addr, timeout })
    }

    /// Workers in the whole run.
    pub fn world(&self) -> usize {
        self.devices.len() * self.nodes
    }

    /// burn-collective's settings, the same on every worker of this node.
    /// Across machines, sessions alternate between two ports for the
    /// gradient exchange (see `collective::helper`): --node-addr's (`shift`
    /// 0) and the next one (`shift` 1).
    fn collective_config(&self, shift: u16) -> Result<CollectiveConfig> {
        let mut config = CollectiveConfig::default().with_num_devices(self.devices.len());
        if let (Some(master), Some(node)) = (&self.master_addr, &self.node_addr) {
            let url = |addr: &str| format!("ws://{addr}").parse().map_err(|e: String| anyhow!(e));
            let port = port_of("--node-addr", node)?.checked_add(shift).context("--node-addr: the port is too high")?;
            let host = node.rsplit_once(':').expect("checked").0;
            config = config
                .with_num_nodes(self.nodes as u32)
                .with_global_address(url(master)?)
                .with_node_address(url(&format!("{host}:{port}"))?)
                .with_data_service_port(port);
        }
        Ok(config)
    }
}

/// The port of a `host:port` flag.
fn port_of(flag: &str, addr: &str) -> Result<u16> {
    match addr.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>())) {
        Some((host, Ok(port))) if !host.is_empty() => Ok(port),
        _ => bail!("{flag} {addr}: expected host:port, e.g. 10.0.0.1:29500"),
    }
}

/// The backend's device for one `--devices` entry.
fn device_of<B: AutodiffBackend>(kind: DeviceKind) -> B::Device {
    match kind {
        DeviceKind::Cpu | DeviceKind::Flex => Default::default(),
        DeviceKind::Cuda(index) => B::Device::from_id(DeviceId::new(0, index as u16)),
    }
}

/// burn-collective keeps one server per backend in a process: one group at
/// a time (tests run several runs in one process).
static ONE_GROUP: Mutex<()> = Mutex::new(());

/// Runs `work` once per worker of this node, each with its copy of `model`
/// on its device, and returns worker 0's outcome. One worker in all: `work`
/// runs here with [`Worker::alone`], with no collective at all.
pub fn launch<B, F>(
    args: &TrainArgs,
    model: Gpt<B>,
    device: &B::Device,
    stop: Arc<AtomicBool>,
    work: F,
) -> Result<Outcome<B>>
where
    B: AutodiffBackend,
    F: Fn(Worker<B>, Gpt<B>, B::Device) -> Result<Outcome<B>> + Sync,
{
    let topology = Topology::from_args(args)?;
    if topology.world() == 1 {
        return work(Worker::alone(), model, device.clone());
    }
    let _group = ONE_GROUP.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    burn_collective::reset_collective::<B::InnerBackend>();
    if topology.nodes > 1 {
        collective::quiet_logs();
    }
    if topology.nodes > 1 && topology.node_rank == 0 {
        collective::start_coordinator(topology.master_addr.as_deref().expect("checked"))?;
    }
    let configs = [topology.collective_config(0)?, topology.collective_config(1)?];
    let failure = Arc::new(Failure::default());
    let sessions = (topology.nodes > 1).then(|| Arc::new(Barrier::new(topology.devices.len())));
    // One worker, from joining the group to its last step. How it ended is
    // recorded, so that the others stop waiting for it.
    let run_one = |local: usize, model: Gpt<B>, device: B::Device| {
        let rank = topology.node_rank * topology.devices.len() + local;
        let (world, timeout) = (topology.world(), topology.timeout);
        let place = collective::Place {
            rank,
            world,
            configs: configs.clone(),
            sessions: sessions.clone(),
            timeout,
            failure: failure.clone(),
            stop: stop.clone(),
        };
        let result = Worker::join(place, device.clone()).and_then(|worker| {
            std::panic::catch_unwind(AssertUnwindSafe(|| work(worker, model, device)))
                .unwrap_or_else(|panic| Err(anyhow!("it panicked: {}", panic_message(&*panic))))
        });
        if let Err(e) = &result {
            failure.record(rank, e);
        }
        result
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..topology.devices.len())
            .map(|local| {
                let device = device_of::<B>(topology.devices[local]);
                let model = model.clone().fork(&device);
                let run_one = &run_one;
                scope.spawn(move || run_one(local, model, device))
            })
            .collect();
        let first = run_one(0, model, device.clone());
        let mut other_error = None;
        for handle in others {
            if let Err(e) = handle.join().expect("panics are caught in run_one") {
                other_error.get_or_insert(e);
            }
        }
        match (first, other_error) {
            (Ok(_), Some(e)) => Err(e),
            (first, _) => first,
        }
    })
}

/// The first worker of this process to fail, and why: the others, waiting
/// for it at a step, stop at once with this message instead of timing out.
#[derive(Default)]
pub(crate) struct Failure(Mutex<Option<String>>);

impl Failure {
    fn record(&self, rank: usize, error: &anyhow::Error) {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("worker {rank} stopped: {error:#}"));
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".into(),
    }
}
