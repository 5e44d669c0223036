use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The arithmetic inference runs in: fp32 (the default and the reference, ONNX Runtime), or bf16 (opt-in, on
/// CPUs with AVX512-BF16 or AMX, through OpenVINO: see [`crate::bf16`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(format!("unknown precision {text:?}: expected fp32 or bf16")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in [Precision::Fp32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!(" BF16 ".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("int8".parse::<Precision>().unwrap_err().contains("fp32 or bf16"));
        assert_eq!(Precision::default(), Precision::Fp32);
    }
}
