//! `--precision bf16`: MobileNetV2 on OpenVINO's CPU plugin, whose library is loaded at run time (from the
//! `openvino` wheel that `scripts/setup --bf16` installs) only when bf16 is asked for.
//!
//! The network's stem and first block run in fp32, the rest in bf16: cutting the graph at every block and
//! measuring on the shared splits showed that nearly all of bf16's error arises in those first layers at
//! 112×112, while most of the arithmetic comes after them (bench/README.md, "Reduced precision on the CPU").
//! The two parts are compiled per batch size, with static shapes (faster than one dynamic-batch model).
//!
//! Scope: finding and loading OpenVINO, refusing a CPU without bf16 support, running scaled float32 NHWC
//! batches. fp32 stays ONNX Runtime's ([`crate::Featurizer`]); nothing here runs on a GPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, Model, PartialShape, PropertyKey, RwPropertyKey, Shape,
    Tensor,
};

use crate::error::ModelError;
use crate::{FEATURE_DIM, INPUT_LEN};

/// Where fp32 hands over to bf16: the output of MobileNetV2's block 0 (`expanded_conv`).
pub const HANDOVER: &str = "mobilenetv2_features/expanded_conv_project_BN/FusedBatchNormV3:0";

const LIBRARY_PREFIX: &str = "libopenvino_c.so";
const VAR: &str = "VERGER_OPENVINO_LIB";

/// The OpenVINO C library to load: `VERGER_OPENVINO_LIB` (when set, the only place looked at), else the
/// `openvino` wheel of the active virtual environment, then of this checkout's `.venv`.
pub fn locate() -> Result<PathBuf, ModelError> {
    if let Some(path) = std::env::var_os(VAR).map(PathBuf::from) {
        return match path.is_file() {
            true => Ok(path),
            false => Err(ModelError::OpenVinoNotFound {
                searched: format!("${VAR}={}", path.display()),
            }),
        };
    }
    let mut venvs: Vec<PathBuf> = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from).into_iter().collect();
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let mut searched = Vec::new();
    for folder in crate::runtime::site_packages(venvs).map(|s| s.join("openvino/libs")) {
        if let Some(found) = crate::runtime::newest_library(&folder, LIBRARY_PREFIX) {
            return Ok(found);
        }
        searched.push(folder.display().to_string());
    }
    Err(ModelError::OpenVinoNotFound {
        searched: searched.join(", "),
    })
}

/// Loads OpenVINO's C library (once per process) and returns its path. A failed load is not remembered.
pub fn ensure_loaded() -> Result<&'static Path, ModelError> {
    static LOADED: OnceLock<PathBuf> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    if let Some(path) = LOADED.get() {
        return Ok(path);
    }
    let _one_at_a_time = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = LOADED.get() {
        return Ok(path);
    }
    let path = locate()?;
    openvino_sys::library::load_from(path.clone())
        .map_err(|message| ModelError::OpenVino(format!("cannot load {}: {message}", path.display())))?;
    tracing::info!(library = %path.display(), "OpenVINO loaded");
    Ok(LOADED.get_or_init(|| path))
}

/// An OpenVINO core on a CPU that computes in bf16, or why not.
fn core() -> Result<Core, ModelError> {
    ensure_loaded()?;
    let core = Core::new().map_err(ov)?;
    let capabilities = core
        .get_property(&DeviceType::CPU, &PropertyKey::DeviceCapabilities)
        .map_err(ov)?;
    check_capabilities(&capabilities)?;
    Ok(core)
}

/// Refuses a CPU whose capabilities (OpenVINO's `OPTIMIZATION_CAPABILITIES`) lack BF16: there OpenVINO would
/// emulate bf16 in fp32, slower than the fp32 path and no more exact.
pub fn check_capabilities(capabilities: &str) -> Result<(), ModelError> {
    match capabilities.split_whitespace().any(|c| c == "BF16") {
        true => Ok(()),
        false => Err(ModelError::Bf16Unsupported {
            capabilities: capabilities.trim().to_string(),
        }),
    }
}

fn ov(e: impl std::fmt::Display) -> ModelError {
    ModelError::OpenVino(e.to_string())
}

/// One featurizer in bf16 (see the module's documentation): scaled float32 NHWC in, 1280-d features out.
pub struct Bf16Session {
    core: Core,
    head: Model,
    tail: Model,
    /// The compiled parts for each batch size seen.
    compiled: HashMap<usize, Compiled>,
}

struct Compiled {
    head: InferRequest,
    tail: InferRequest,
    /// What the requests run, kept alive beside them.
    _models: [CompiledModel; 2],
}

impl Bf16Session {
    /// A session over the (verified) bytes of MobileNetV2's ONNX file.
    pub fn new(model: &[u8]) -> Result<Self, ModelError> {
        let mut core = core()?;
        let (head, _) = crate::split::split(model, HANDOVER, None)?;
        let head = core.read_model_from_buffer(&head, None).map_err(ov)?;
        // OpenVINO reads a graph input only with its rank known: the tail declares the head's output shape.
        let handed_over = head
            .get_output_by_index(0)
            .map_err(ov)?
            .get_partial_shape()
            .map_err(ov)?;
        let dims: Vec<Option<i64>> = handed_over
            .get_dimensions()
            .iter()
            .map(|d| (!d.is_dynamic()).then(|| d.get_min()))
            .collect();
        let (_, tail) = crate::split::split(model, HANDOVER, Some(&dims))?;
        let tail = core.read_model_from_buffer(&tail, None).map_err(ov)?;
        Ok(Bf16Session {
            core,
            head,
            tail,
            compiled: HashMap::new(),
        })
    }

    /// Features of `inputs.len() / INPUT_LEN` scaled images, row-major `[n, 1280]`.
    pub fn embed(&mut self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if !inputs.len().is_multiple_of(INPUT_LEN) {
            return Err(ModelError::InputShape { len: inputs.len() });
        }
        let n = inputs.len() / INPUT_LEN;
        if !self.compiled.contains_key(&n) {
            let compiled = self.compile(n)?;
            self.compiled.insert(n, compiled);
        }
        let parts = self.compiled.get_mut(&n).expect("compiled above");
        let mut input =
            Tensor::new(ElementType::F32, &Shape::new(&[n as i64, 224, 224, 3]).map_err(ov)?).map_err(ov)?;
        input.get_data_mut::<f32>().map_err(ov)?.copy_from_slice(inputs);
        parts.head.set_input_tensor(&input).map_err(ov)?;
        parts.head.infer().map_err(ov)?;
        let handed_over = parts.head.get_output_tensor().map_err(ov)?;
        parts.tail.set_input_tensor(&handed_over).map_err(ov)?;
        parts.tail.infer().map_err(ov)?;
        let output = parts.tail.get_output_tensor().map_err(ov)?;
        let features = output.get_data::<f32>().map_err(ov)?;
        if features.len() != n * FEATURE_DIM {
            return Err(ModelError::OpenVino(format!(
                "{} output values for {n} images",
                features.len()
            )));
        }
        Ok(features.to_vec())
    }

    fn compile(&mut self, n: usize) -> Result<Compiled, ModelError> {
        let input = PartialShape::new_static(4, &[n as i64, 224, 224, 3]).map_err(ov)?;
        self.head.reshape_single_input(&input).map_err(ov)?;
        let handed_over = self
            .head
            .get_output_by_index(0)
            .map_err(ov)?
            .get_partial_shape()
            .map_err(ov)?;
        self.tail.reshape_single_input(&handed_over).map_err(ov)?;
        let mut head = compile(&mut self.core, &self.head, "f32")?;
        let mut tail = compile(&mut self.core, &self.tail, "bf16")?;
        Ok(Compiled {
            head: head.create_infer_request().map_err(ov)?,
            tail: tail.create_infer_request().map_err(ov)?,
            _models: [head, tail],
        })
    }
}

/// `model` compiled for the CPU in `precision`, one thread and one stream (parallelism is across workers,
/// as with ONNX Runtime), unpinned (pinning would put every worker's thread on the same core).
fn compile(core: &mut Core, model: &Model, precision: &str) -> Result<CompiledModel, ModelError> {
    // Always set: on CPUs with bf16 support OpenVINO would otherwise pick bf16 for the whole network.
    let settings = [
        (RwPropertyKey::HintInferencePrecision, precision),
        (RwPropertyKey::InferenceNumThreads, "1"),
        (RwPropertyKey::NumStreams, "1"),
        (RwPropertyKey::HintEnableCpuPinning, "NO"),
        (RwPropertyKey::HintPerformanceMode, "LATENCY"),
    ];
    core.set_properties(&DeviceType::CPU, settings).map_err(ov)?;
    let compiled = core.compile_model(model, DeviceType::CPU).map_err(ov)?;
    let runs = compiled
        .get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision))
        .map_err(ov)?
        .into_owned();
    if runs != precision {
        return Err(ModelError::OpenVino(format!(
            "asked OpenVINO for {precision}, it compiled {runs}"
        )));
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_bf16_is_refused_with_its_capabilities() {
        assert!(check_capabilities("FP32 BF16 FP16 INT8 BIN EXPORT_IMPORT").is_ok());
        let e = check_capabilities("FP32 FP16 INT8 BIN EXPORT_IMPORT")
            .unwrap_err()
            .to_string();
        assert!(e.contains("AVX512-BF16 or AMX"), "{e}");
        assert!(e.contains("FP32 FP16 INT8"), "{e}");
        assert!(e.contains("--precision fp32"), "{e}");
    }

    #[test]
    fn a_missing_openvino_says_what_to_install() {
        // The variable names the only place looked at.
        std::env::set_var(VAR, "/no/such/libopenvino_c.so");
        let e = locate().unwrap_err().to_string();
        std::env::remove_var(VAR);
        assert!(e.contains("/no/such/libopenvino_c.so"), "{e}");
        assert!(e.contains("scripts/setup") && e.contains(VAR), "{e}");
    }
}
