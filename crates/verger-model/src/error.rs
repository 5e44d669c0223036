use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found (looked in: {searched}).\n\
         Install it with `scripts/setup` (it puts onnxruntime==1.32.0 into .venv), or point \
         VERGER_ORT_LIB at libonnxruntime.so, e.g. after `pip install onnxruntime==1.32.0`."
    )]
    RuntimeNotFound { searched: String },
    #[error(
        "--device cuda needs ONNX Runtime's GPU build, which was not found (looked in: {searched}).\n\
         Install it with `scripts/setup-gpu` (it puts onnxruntime-gpu and NVIDIA's CUDA and cuDNN wheels into \
         .venv-gpu), or point VERGER_ORT_GPU_LIB at the libonnxruntime.so of an onnxruntime-gpu install."
    )]
    GpuRuntimeNotFound { searched: String },
    #[error(
        "--device cuda: the ONNX Runtime this process loaded ({path}) has no CUDA execution provider (it is \
         the CPU build). Install the GPU build with `scripts/setup-gpu`, or point VERGER_ORT_GPU_LIB at the \
         libonnxruntime.so of an onnxruntime-gpu install (in a new process: one runtime serves a process)."
    )]
    NoCudaProvider { path: PathBuf },
    #[error("--device cuda: {0}")]
    GpuUnavailable(String),
    #[error(
        "--precision bf16 needs OpenVINO, which was not found (looked in: {searched}).\n\
         Install it with `scripts/setup --bf16` (it puts openvino==2026.4.1 into .venv), or point VERGER_OPENVINO_LIB \
         at the libopenvino_c.so of an `openvino` wheel (its `openvino/libs` folder)."
    )]
    OpenVinoNotFound { searched: String },
    #[error(
        "--precision bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither (OpenVINO lists its \
         capabilities as: {capabilities}); run with --precision fp32"
    )]
    Bf16Unsupported { capabilities: String },
    #[error("OpenVINO: {0}")]
    OpenVino(String),
    /// `--precision bf16` on a GPU, or a model the bf16 path cannot cut.
    #[error("--precision bf16: {0}")]
    Precision(String),
    #[error("{0}")]
    Split(String),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("cannot read model {location}: {message}")]
    Read { location: String, message: String },
    #[error("model {location} has sha256 {actual}, expected {expected}; refusing to use it")]
    Checksum {
        location: String,
        expected: String,
        actual: String,
    },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// The app model could not be built from the featurizer and head given.
    #[error("app model: {0}")]
    AppModel(String),
    #[error("input holds {len} floats, not a whole number of 224x224x3 images")]
    InputShape { len: usize },
}

impl<T> From<ort::Error<T>> for ModelError {
    fn from(e: ort::Error<T>) -> Self {
        ModelError::Ort(e.to_string())
    }
}
