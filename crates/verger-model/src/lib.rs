//! MobileNetV2 features with ONNX Runtime.
//!
//! The original pipeline broadcast the Keras weights once to every Spark worker. Here the model file is read
//! and verified (sha256) once per process ([`VerifiedModel`]), and each worker thread runs its own ONNX Runtime
//! session with one intra-op thread and spinning off ([`Featurizer`]): on a busy machine parallelism across
//! images costs less CPU than parallelism inside one image. The runtime library is loaded dynamically from the
//! `onnxruntime` Python wheel the setup step installs ([`runtime`]).
//!
//! With [`Device::Cuda`], sessions run on an NVIDIA GPU through ONNX Runtime's CUDA execution provider (TF32
//! off, so that the GPU computes in fp32 as the CPU does).
//!
//! With [`Precision::Bf16`] (opt-in, CPUs with AVX512-BF16 or AMX), sessions run on OpenVINO's CPU plugin,
//! MobileNetV2's first block in fp32 and the rest in bf16 ([`bf16`]).
//!
//! Scope: float32 NHWC batches in (uint8 pixels on a GPU, scaled in the graph), 1280-d features out; and
//! [`app_model`], the featurizer spliced with a linear head into the one ONNX file an app runs. No image
//! decoding, no files other than the model.

pub mod app_model;
pub mod bf16;
mod device;
mod error;
mod featurizer;
mod model;
mod precision;
pub mod runtime;
pub mod split;

pub use device::Device;
pub use error::ModelError;
pub use featurizer::{Featurizer, FeaturizerPool, ModelInput, PooledFeaturizer};
pub use model::{read_local, ModelReader, ModelSpec, VerifiedModel};
pub use precision::Precision;

/// Length of one feature vector (MobileNetV2's global-average-pool layer).
pub const FEATURE_DIM: usize = 1280;
/// Floats in one preprocessed 224x224 RGB image.
pub const INPUT_LEN: usize = 224 * 224 * 3;
/// sha256 of `shared/models/mobilenet_v2/mobilenet_v2_imagenet.onnx`, the model the original pipeline used.
pub const MOBILENET_V2_SHA256: &str = "ac4f27c791d79080e9a239ae4dba42be64f588a703769b0dd8504663e0d7bcaf";
