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

/// `run_on_device!(device_str, run_fn(args...))` calls `run_fn::<B>(&device, args...)`
/// with the backend `B` that `device_str` names.
#[macro_export]
macro_rules! run_on_device {
    ($device:expr, $run:ident ( $($arg:expr),* $(,)? )) => {{
        match $crate::device::parse_device($device) {
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
        }
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
}
