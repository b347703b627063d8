//! The memory allocator every binary uses: mimalloc, told to keep what is
//! freed.
//!
//! A training step allocates and frees tensors of the same few shapes, step
//! after step. The system allocator hands large blocks back to the OS at
//! once, so each step page-faults them in again and the kernel zeroes every
//! page (15% of the tiny model's CPU time, measured with perf). mimalloc
//! keeps freed memory for reuse, but by default still returns it to the OS
//! ("purges" it) 10 ms after it falls free, sooner than one step of the mini
//! model: there page zeroing was still 11% of the time, with 113k page
//! faults in 4 steps. With [`keep_freed_memory`] they fell to 1.1k and the
//! CPU time by 22% (`perf stat`). The cost: the process keeps its peak
//! memory until it exits, which is where a training run sits anyway.
//!
//! Each binary declares
//! `#[global_allocator] static ALLOCATOR: MiMalloc = MiMalloc;`
//! and calls [`keep_freed_memory`] first thing in `main`.

pub use mimalloc::MiMalloc;

/// Turns mimalloc's purging off for the rest of the process.
pub fn keep_freed_memory() {
    // The Rust binding does not name this option, so the C function is
    // declared here; `mimalloc` links the library. 15 is `mi_option_purge_delay`
    // in the option enum of the bundled mimalloc (v2 and v3 headers alike);
    // -1 means never purge.
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    // SAFETY: setting an option is allowed at any time; mimalloc reads it
    // whenever it considers purging.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
