//! Devices by name: `cpu`, `cuda:N` (`cuda` is `cuda:0`). The runner's `--device` and the tests'
//! `NDM_TEST_DEVICE` both go through [`open`], so they accept the same names and refuse the same
//! way, in one line.

use crate::error::one_line;
use crate::{NdmError, Result};
use candle_core::Device;

/// What a device name asks for, before anything is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceName {
    Cpu,
    Cuda(usize),
}

impl DeviceName {
    /// `cpu`, `cuda` or `cuda:N`; anything else is an error that lists the accepted forms.
    pub fn parse(s: &str) -> Result<Self> {
        let unknown = || NdmError::Device(format!("unknown device `{s}`; use cpu or cuda:N"));
        if s == "cpu" {
            return Ok(DeviceName::Cpu);
        }
        let n = if s == "cuda" {
            "0"
        } else {
            s.strip_prefix("cuda:").ok_or_else(unknown)?
        };
        n.parse().map(DeviceName::Cuda).map_err(|_| unknown())
    }
}

/// Parses a device name and opens the device. A CUDA device in a build without candle's CUDA
/// backend, or one that cannot be opened (no GPU, no driver), is a one-line error.
pub fn open(s: &str) -> Result<Device> {
    match DeviceName::parse(s)? {
        DeviceName::Cpu => Ok(Device::Cpu),
        DeviceName::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                return Err(NdmError::Device(format!(
                    "device {s}: this program was built without CUDA support (the `cuda` feature: \
                     `--features cuda` for the runner, `--features ndm-api/cuda` for the tests)"
                )));
            }
            Device::new_cuda(n)
                .map_err(|e| NdmError::Device(format!("cannot open device {s}: {}", one_line(&e))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(DeviceName::parse("cpu").unwrap(), DeviceName::Cpu);
        assert_eq!(DeviceName::parse("cuda").unwrap(), DeviceName::Cuda(0));
        assert_eq!(DeviceName::parse("cuda:3").unwrap(), DeviceName::Cuda(3));
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda0"] {
            let e = DeviceName::parse(bad).unwrap_err().to_string();
            assert_eq!(e, format!("unknown device `{bad}`; use cpu or cuda:N"));
        }
    }

    #[test]
    fn cpu_opens_and_cuda_says_why_not() {
        assert!(open("cpu").unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() {
            let e = open("cuda:0").unwrap_err().to_string();
            assert!(e.starts_with("device cuda:0: this program was built without CUDA support"));
            assert!(!e.contains('\n'));
        }
    }
}
