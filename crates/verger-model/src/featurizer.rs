use std::sync::{Arc, Condvar, Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::bf16::Bf16Session;
use crate::error::ModelError;
use crate::model::{per_spec, ModelReader, ModelSpec, PerSpec, VerifiedModel};
use crate::{runtime, Device, Precision, FEATURE_DIM, INPUT_LEN};

/// What a session is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelInput {
    /// Preprocessed float32 NHWC (`x / 127.5 − 1`, scaled by the caller): the CPU's input, the reference.
    Scaled,
    /// The 224×224 RGB pixels as uint8 NHWC, scaled inside the graph ([`crate::app_model::with_pixel_input`]):
    /// a quarter of the bytes to move to a GPU.
    Pixels,
}

impl ModelInput {
    /// The input a device is fed: pixels on a GPU, scaled floats on the CPU.
    pub fn on(device: Device) -> ModelInput {
        match device {
            Device::Cpu => ModelInput::Scaled,
            Device::Cuda(_) => ModelInput::Pixels,
        }
    }
}

/// One inference session: images in (as [`ModelInput`] says), 1280-d features out.
pub struct Featurizer {
    engine: Engine,
    input: ModelInput,
}

/// What runs the model: ONNX Runtime in fp32, or OpenVINO in bf16.
enum Engine {
    Ort(Session),
    Bf16(Box<Bf16Session>),
}

impl Featurizer {
    /// A session over a verified model on `device`, fed as [`ModelInput::on`] the device, tuned for one image
    /// stream per thread.
    pub fn new(model: &VerifiedModel, device: Device) -> Result<Self, ModelError> {
        Self::with_input(model, device, ModelInput::on(device))
    }

    /// [`Featurizer::new`] computing in `precision`; bf16 runs on the CPU only.
    pub fn with_precision(model: &VerifiedModel, device: Device, precision: Precision) -> Result<Self, ModelError> {
        match (precision, device) {
            (Precision::Fp32, _) => Self::new(model, device),
            (Precision::Bf16, Device::Cpu) => Ok(Featurizer {
                engine: Engine::Bf16(Box::new(Bf16Session::new(&model.bytes)?)),
                input: ModelInput::Scaled,
            }),
            (Precision::Bf16, gpu) => Err(ModelError::Precision(format!(
                "bf16 runs on the CPU (OpenVINO); on {gpu} inference computes in fp32: drop --precision or --device"
            ))),
        }
    }

    /// [`Featurizer::new`], fed as `input` says.
    pub fn with_input(model: &VerifiedModel, device: Device, input: ModelInput) -> Result<Self, ModelError> {
        let mut builder = Session::builder(runtime::environment(device)?)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(1)?
            .with_inter_threads(1)?
            .with_intra_op_spinning(false)?
            .with_inter_op_spinning(false)?;
        if let Device::Cuda(index) = device {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(index as i32)
                // TF32 rounds convolution inputs to 10-bit mantissas: features would drift from the fp32
                // reference far beyond rounding.
                .with_tf32(false)
                // The default, exhaustive search benchmarks cuDNN's algorithms again for every new batch shape in
                // every session (each partition's last batch is one): it kept an H200 6 % busy.
                .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
                .build()
                // Without this, ONNX Runtime quietly falls back to the CPU.
                .error_on_failure();
            builder = builder
                .with_execution_providers([cuda])
                .map_err(|e| ModelError::GpuUnavailable(format!("the CUDA execution provider on {device}: {e}")))?;
        }
        let session = match input {
            ModelInput::Scaled => builder.commit_from_memory(&model.bytes)?,
            ModelInput::Pixels => builder.commit_from_memory(&crate::app_model::with_pixel_input(&model.bytes)?)?,
        };
        Ok(Featurizer {
            engine: Engine::Ort(session),
            input,
        })
    }

    pub fn input(&self) -> ModelInput {
        self.input
    }

    /// Features of `inputs.len() / INPUT_LEN` scaled images, row-major `[n, 1280]`.
    pub fn embed(&mut self, inputs: &[f32]) -> Result<Vec<f32>, ModelError> {
        self.expect(ModelInput::Scaled)?;
        if let Engine::Bf16(session) = &mut self.engine {
            return session.embed(inputs);
        }
        self.run(inputs, "input")
    }

    /// Features of `pixels.len() / INPUT_LEN` images given as their uint8 pixels, row-major `[n, 1280]`.
    pub fn embed_pixels(&mut self, pixels: &[u8]) -> Result<Vec<f32>, ModelError> {
        self.expect(ModelInput::Pixels)?;
        self.run(pixels, crate::app_model::APP_INPUT)
    }

    fn expect(&self, input: ModelInput) -> Result<(), ModelError> {
        match self.input == input {
            true => Ok(()),
            false => Err(ModelError::Ort(format!(
                "this session takes {:?} input, not {input:?}",
                self.input
            ))),
        }
    }

    fn run<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        &mut self,
        inputs: &[T],
        name: &str,
    ) -> Result<Vec<f32>, ModelError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        if !inputs.len().is_multiple_of(INPUT_LEN) {
            return Err(ModelError::InputShape { len: inputs.len() });
        }
        let n = inputs.len() / INPUT_LEN;
        let tensor = TensorRef::from_array_view(([n, 224, 224, 3], inputs))?;
        let Engine::Ort(session) = &mut self.engine else {
            return Err(ModelError::Precision("bf16 sessions take scaled input only".into()));
        };
        let outputs = session.run(ort::inputs![name => tensor])?;
        let (shape, features) = outputs["features"].try_extract_tensor::<f32>()?;
        if shape.num_elements() != n * FEATURE_DIM {
            return Err(ModelError::Ort(format!("unexpected output shape {shape:?}")));
        }
        Ok(features.to_vec())
    }
}

/// Sessions shared by the threads of one process, created on demand and reused: the model is read and
/// verified once, and a session's set-up cost is paid once per concurrent worker, not per batch. On a GPU at
/// most [`GPU_SESSIONS`] exist; more workers wait for one to come back.
pub struct FeaturizerPool {
    model: Arc<VerifiedModel>,
    device: Device,
    precision: Precision,
    sessions: Mutex<Sessions>,
    returned: Condvar,
}

struct Sessions {
    idle: Vec<Featurizer>,
    made: usize,
}

/// Sessions on one GPU: enough batches in flight to keep it busy (4 sessions run MobileNetV2 far faster than
/// 16 cores decode), while each more costs ~0.8 s of set-up that ONNX Runtime's CUDA provider does one session
/// at a time (measured on an H200: 16 sessions made a run on 9,856 images slower than the CPU's).
pub const GPU_SESSIONS: usize = 4;

impl FeaturizerPool {
    /// The process-wide pool for `spec` on `device` in `precision` (reading the model with `read` and verifying
    /// it on first use). The first session is made here, so that a device or precision that cannot run the
    /// model fails the caller.
    pub fn shared(
        spec: &ModelSpec,
        device: Device,
        precision: Precision,
        read: &ModelReader,
    ) -> Result<Arc<FeaturizerPool>, ModelError> {
        static POOLS: PerSpec<(ModelSpec, Device, Precision), FeaturizerPool> = OnceLock::new();
        per_spec(&POOLS, &(spec.clone(), device, precision), || {
            let model = VerifiedModel::load(spec, read)?;
            let first = Featurizer::with_precision(&model, device, precision)?;
            Ok(FeaturizerPool {
                model,
                device,
                precision,
                sessions: Mutex::new(Sessions {
                    idle: vec![first],
                    made: 1,
                }),
                returned: Condvar::new(),
            })
        })
    }

    /// The model the sessions run (its verified bytes).
    pub fn model(&self) -> &VerifiedModel {
        &self.model
    }

    /// What the pool's sessions are fed.
    pub fn input(&self) -> ModelInput {
        ModelInput::on(self.device)
    }

    /// How many sessions the pool makes at most: [`GPU_SESSIONS`] on a GPU, one per caller on the CPU.
    pub fn max_sessions(&self) -> usize {
        match self.device {
            Device::Cpu => usize::MAX,
            Device::Cuda(_) => GPU_SESSIONS,
        }
    }

    /// A session for the caller's exclusive use; it returns to the pool when dropped. Waits for one to come
    /// back when [`FeaturizerPool::max_sessions`] are out, so a caller must not hold one while asking for another.
    pub fn get(self: &Arc<Self>) -> Result<PooledFeaturizer, ModelError> {
        let pooled = |featurizer| PooledFeaturizer {
            pool: self.clone(),
            featurizer: Some(featurizer),
        };
        let mut sessions = self.sessions();
        loop {
            if let Some(featurizer) = sessions.idle.pop() {
                return Ok(pooled(featurizer));
            }
            if sessions.made < self.max_sessions() {
                sessions.made += 1;
                break;
            }
            sessions = self.returned.wait(sessions).unwrap_or_else(|p| p.into_inner());
        }
        drop(sessions);
        match Featurizer::with_precision(&self.model, self.device, self.precision) {
            Ok(featurizer) => Ok(pooled(featurizer)),
            Err(e) => {
                self.sessions().made -= 1;
                self.returned.notify_one();
                Err(e)
            }
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A [`Featurizer`] borrowed from a [`FeaturizerPool`].
pub struct PooledFeaturizer {
    pool: Arc<FeaturizerPool>,
    featurizer: Option<Featurizer>,
}

impl std::ops::Deref for PooledFeaturizer {
    type Target = Featurizer;
    fn deref(&self) -> &Featurizer {
        self.featurizer.as_ref().expect("present until drop")
    }
}

impl std::ops::DerefMut for PooledFeaturizer {
    fn deref_mut(&mut self) -> &mut Featurizer {
        self.featurizer.as_mut().expect("present until drop")
    }
}

impl Drop for PooledFeaturizer {
    fn drop(&mut self) {
        if let Some(f) = self.featurizer.take() {
            self.pool.sessions().idle.push(f);
            self.pool.returned.notify_one();
        }
    }
}
