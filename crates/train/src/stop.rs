//! Stopping a run from outside without losing it: Ctrl-C (SIGINT), and
//! SIGTERM, which `timeout`, `kill`, `docker stop` and job schedulers send.
//!
//! The first signal raises a flag; the loop sees it after the step it is
//! in, saves a checkpoint and returns, and the stage then exits with the
//! shell's code for "killed by this signal" (130, 143), so that
//! `pretrain && sft` does not go on with a half-trained model. A second
//! signal ends the process at once, without saving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};

/// The flag the training loop watches, and which signal raised it.
#[derive(Clone)]
pub struct StopSignal {
    requested: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

/// A run stopped by a signal, after saving: the error a stage returns so
/// that it exits with 128 + the signal's number.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", signal_name(self.signal as usize))
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// The shell's convention for a process ended by a signal.
    pub fn exit_status(&self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }
}

impl StopSignal {
    /// The flag `train::train` watches.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }

    /// The error for a run this signal stopped.
    pub fn interrupted(&self) -> Interrupted {
        let signal = match self.signal.load(Ordering::SeqCst) {
            0 => SIGINT as usize, // raised by hand (tests): call it a Ctrl-C
            s => s,
        };
        Interrupted { signal: signal as i32 }
    }
}

/// Catches SIGINT and SIGTERM for the rest of the process.
pub fn stop_on_signals() -> StopSignal {
    let stop = StopSignal { requested: Arc::new(AtomicBool::new(false)), signal: Arc::new(AtomicUsize::new(0)) };
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it acts only from the second signal on, once
        // the flag below is raised.
        let second = signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.requested.clone());
        let first = signal_hook::flag::register_usize(signal, stop.signal.clone(), signal as usize)
            .and_then(|_| signal_hook::flag::register(signal, stop.requested.clone()));
        if let Err(e) = second.and(first) {
            eprintln!(
                "warning: cannot catch {} ({e}); an interrupted run keeps only its last checkpoint",
                signal_name(signal as usize)
            );
        }
    }
    // A signal handler may not print (or allocate); a watcher thread says
    // at once that the signal was heard, since the step may take a while.
    let watched = stop.clone();
    std::thread::spawn(move || {
        while !watched.requested.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let name = signal_name(watched.signal.load(Ordering::SeqCst));
        eprintln!("\n{name}: finishing this step and saving a checkpoint (again to quit at once, without saving)");
    });
    stop
}

fn signal_name(signal: usize) -> &'static str {
    match signal as i32 {
        SIGINT => "Ctrl-C (SIGINT)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
