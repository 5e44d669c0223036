use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where inference runs: this machine's CPU (the default and the reference), or one NVIDIA GPU through ONNX
/// Runtime's CUDA execution provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    #[default]
    Cpu,
    /// The GPU of this CUDA device index.
    Cuda(u32),
}

impl Device {
    /// The ONNX Runtime execution provider's name, as the feature cache and the report record it.
    pub fn provider(self) -> &'static str {
        match self {
            Device::Cpu => "CPUExecutionProvider",
            Device::Cuda(_) => "CUDAExecutionProvider",
        }
    }

    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Cuda(_))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("unknown device {text:?}: expected cpu, cuda or cuda:N");
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Device> for String {
    fn from(device: Device) -> String {
        device.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_back() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("CUDA:3", Device::Cuda(3)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
        }
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let message = bad.parse::<Device>().unwrap_err();
            assert!(message.contains("expected cpu, cuda or cuda:N"), "{message}");
        }
        let json = serde_json::to_string(&Device::Cuda(1)).unwrap();
        assert_eq!(json, "\"cuda:1\"");
        assert_eq!(serde_json::from_str::<Device>(&json).unwrap(), Device::Cuda(1));
    }
}
