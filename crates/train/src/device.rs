//! Choosing the backend from `--device`.
//!
//! Every stage is generic over burn's `AutodiffBackend`; this is the one place
//! that names concrete backends. It is a macro so that `#[cfg(feature =
//! "cuda")]` is decided by the binary being built: the CUDA backend (a long
//! compile) is only built into binaries built with `--features cuda`, and
//! burn's flex CPU backend only with `--features flex`.

/// Where to run, parsed from `cpu`, `flex`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Flex,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> anyhow::Result<DeviceKind> {
    match s {
        "cpu" => Ok(DeviceKind::Cpu),
        "flex" => Ok(DeviceKind::Flex),
        "cuda" => Ok(DeviceKind::Cuda(0)),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => Ok(DeviceKind::Cuda(i)),
            None => anyhow::bail!("--device {s}: expected cpu, flex, cuda or cuda:N"),
        },
    }
}

/// Refuses `--dtype` on a backend without tensors of that precision: burn's
/// ndarray (`cpu`) holds f32 and f64 only; flex and CUDA have bf16 and fp16.
pub fn check_dtype(device: &str, dtype: model::Precision) -> anyhow::Result<()> {
    if dtype != model::Precision::F32 && parse_device(device)? == DeviceKind::Cpu {
        anyhow::bail!(
            "--dtype {dtype}: the cpu backend (burn's ndarray) has f32 tensors only; 16-bit products run on \
             --device flex (build with --features flex) or --device cuda (--features cuda)"
        );
    }
    Ok(())
}

/// Runs `f` on one of rayon's worker threads, and returns its result.
///
/// The CPU kernels split their work with rayon. Called from the main thread,
/// which is not one of rayon's workers, each parallel loop is handed to the
/// pool while the main thread sleeps until it is done: a wake-up and a
/// context switch on both sides, hundreds of times per training step. Run
/// from a worker, the loop starts on the calling thread and the other
/// workers steal halves of it. On the tiny model's step this cut context
/// switches fivefold (32k to 6.3k in 42 steps, `perf stat`) and the CPU
/// time by 7%. It is also what PyTorch's OpenMP does: the calling thread
/// is thread 0 of the team.
pub fn in_thread_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // The main thread's 8 MiB of stack rather than rayon's default 2, since
    // the whole run now lives on a worker. This only takes effect if nothing
    // has used rayon yet; otherwise the pool already exists, as it is.
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    rayon::scope(|_| f())
}

/// `run_on_device!(device_str, run_fn(args...))` calls `run_fn::<B>(&device, args...)`
/// with the backend `B` that `device_str` names, on a rayon worker thread
/// (see [`in_thread_pool`]).
#[macro_export]
macro_rules! run_on_device {
    ($device:expr, $run:ident ( $($arg:expr),* $(,)? )) => {{
        $crate::device::in_thread_pool(|| match $crate::device::parse_device($device) {
            Err(e) => Err(e),
            Ok($crate::device::DeviceKind::Cpu) => {
                $run::<burn::backend::Autodiff<burn::backend::NdArray<f32>>>(&Default::default(), $($arg),*)
            }
            #[cfg(feature = "flex")]
            Ok($crate::device::DeviceKind::Flex) => {
                $run::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default(), $($arg),*)
            }
            #[cfg(not(feature = "flex"))]
            Ok($crate::device::DeviceKind::Flex) => Err(anyhow::anyhow!(
                "--device flex: this binary was built without the flex backend; rebuild with `--features flex`"
            )),
            #[cfg(feature = "cuda")]
            Ok($crate::device::DeviceKind::Cuda(index)) => {
                $run::<burn::backend::Autodiff<burn::backend::Cuda<f32, i32>>>(&burn::backend::cuda::CudaDevice::new(index), $($arg),*)
            }
            #[cfg(not(feature = "cuda"))]
            Ok($crate::device::DeviceKind::Cuda(_)) => Err(anyhow::anyhow!(
                "--device cuda: this binary was built without CUDA support; rebuild with `--features cuda`"
            )),
        })
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu").unwrap(), DeviceKind::Cpu);
        assert_eq!(parse_device("flex").unwrap(), DeviceKind::Flex);
        assert_eq!(parse_device("cuda").unwrap(), DeviceKind::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), DeviceKind::Cuda(3));
        assert!(parse_device("gpu").unwrap_err().to_string().contains("expected cpu, flex, cuda"));
    }

    #[test]
    fn sixteen_bit_products_are_refused_where_the_backend_has_none() {
        use model::Precision;
        let err = check_dtype("cpu", Precision::Bf16).unwrap_err().to_string();
        assert!(err.contains("--dtype bf16") && err.contains("--device flex"), "{err}");
        assert!(check_dtype("cpu", Precision::F32).is_ok());
        assert!(check_dtype("flex", Precision::Fp16).is_ok());
        assert!(check_dtype("cuda:1", Precision::Bf16).is_ok());
    }
}
