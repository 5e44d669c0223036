//! verger's Python extension module, `verger._verger`: each function translates Python arguments into the
//! command line's options (parsed by [`verger::cli`], so options, defaults and messages are the CLI's), calls
//! the library with the GIL released, and hands results back as JSON or Arrow (through `arrow-pyarrow`,
//! without copying columns). The Python package (`python/verger`) wraps it with types, docstrings and
//! progress bars. It implements no pipeline step of its own.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_pyarrow::{IntoPyArrow, Table, ToPyArrow};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyType};
use verger::cli::{self, Command, Failure, FeaturizeOptions, StoreOptionsArgs};
use verger::{Error, Image, JobError, Progress, RunOutcome, Stop, StoreError};

/// How often a run's caller looks for Ctrl-C and draws progress.
const POLL: Duration = Duration::from_millis(100);

/// The exception class `kind` of `verger.errors` raised with `message`.
fn raise(py: Python<'_>, kind: &str, message: String) -> PyErr {
    let class = py
        .import("verger.errors")
        .and_then(|m| m.getattr(kind))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        Err(e) => e,
    }
}

/// The Python exception for a failed call: its class by what failed, its message the CLI's.
fn failure(py: Python<'_>, e: Failure) -> PyErr {
    match e {
        Failure::Usage(message) => raise(py, "UsageError", message),
        Failure::Verger(e) => error(py, e),
    }
}

fn error(py: Python<'_>, e: Error) -> PyErr {
    let message = e.to_string();
    let kind = match &e {
        Error::Job(JobError::Interrupted(_)) => return PyKeyboardInterrupt::new_err(message),
        Error::Config(_) | Error::Job(JobError::Config(_)) => "UsageError",
        // An output the run may not write (it exists, or holds what is not verger's): the run's own refusal.
        Error::Job(JobError::Store(StoreError::Refused { .. })) => "RunError",
        Error::Store(_) | Error::Job(JobError::Store(_)) => "StoreError",
        Error::Model(_) | Error::Job(JobError::Model(_)) => "ModelError",
        Error::Io { .. } | Error::Job(JobError::Io { .. }) => "FileError",
        Error::Classify(_) => "ClassifyError",
        Error::Quality(verger::QualityError::Options(_)) => "UsageError",
        Error::Quality(_) => "ClassifyError",
        Error::Cluster(_) | Error::ClusterNotBuilt { .. } => "ClusterError",
        Error::Job(_) => "RunError",
        Error::Serve(_) => "VergerError",
    };
    raise(py, kind, message)
}

/// A stage's name, items done and total.
type StageState = (String, u64, Option<u64>);

/// A run's progress, kept for the caller's thread to draw (Python code runs only where the GIL is held).
/// Stages that ended are kept until drawn, so that a stage shorter than the polling interval is still seen.
#[derive(Default)]
struct Shared {
    current: Option<StageState>,
    ended: Vec<StageState>,
}

#[derive(Default)]
struct PyProgress(Mutex<Shared>);

impl PyProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stages that ended since the last call, and the current one.
    fn take(&self) -> (Vec<StageState>, Option<StageState>) {
        let mut shared = self.lock();
        (std::mem::take(&mut shared.ended), shared.current.clone())
    }
}

impl Progress for PyProgress {
    fn begin(&self, stage: &str, total: Option<u64>) {
        self.lock().current = Some((stage.to_string(), 0, total));
    }

    fn advance(&self, n: u64) {
        if let Some(current) = self.lock().current.as_mut() {
            current.1 += n;
        }
    }

    fn end(&self, _stage: &str) {
        let mut shared = self.lock();
        if let Some(current) = shared.current.take() {
            shared.ended.push(current);
        }
    }
}

/// Runs the job of `argv` (`run ...` options); returns `(status, report JSON or output)` with status
/// `success`, `partial` or `already_complete`. `progress(stage, done, total, ended)` is called from this
/// thread while it waits. Ctrl-C (or an exception in `progress`) stops the run cleanly: its output's claim is
/// released and what it staged is kept, so `resume` continues it.
#[pyfunction]
#[pyo3(signature = (argv, progress=None))]
fn run(py: Python<'_>, argv: Vec<String>, progress: Option<Py<PyAny>>) -> PyResult<(String, String)> {
    let config = match cli::parse(&argv).map_err(|e| failure(py, e))? {
        Command::Run(args) => args.config().map_err(|e| failure(py, e))?,
        _ => return Err(raise(py, "UsageError", "expected the options of a run".into())),
    };
    let state = Arc::new(PyProgress::default());
    let stop = Stop::new();
    let (sender, outcomes) = mpsc::channel();
    {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("verger-run".into())
            .spawn(move || {
                let _ = sender.send(verger::run_until(&config, state, &stop));
            })
            .map_err(|e| PyRuntimeError::new_err(format!("starting the run's thread: {e}")))?;
    }
    // Only this thread receives; the lock makes the receiver shareable with the GIL-free closure.
    let outcomes = Mutex::new(outcomes);
    let mut stopped_by: Option<PyErr> = None;
    let mut drawn = None;
    let outcome = loop {
        match py.detach(|| outcomes.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(POLL)) {
            Ok(outcome) => break outcome,
            Err(RecvTimeoutError::Disconnected) => return Err(PyRuntimeError::new_err("the run's thread ended")),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if stopped_by.is_some() {
            continue;
        }
        let drew = draw(py, &state, progress.as_ref(), &mut drawn);
        if let Err(e) = py.check_signals().and(drew) {
            stop.request();
            stopped_by = Some(e);
        }
    };
    if stopped_by.is_none() {
        draw(py, &state, progress.as_ref(), &mut drawn)?;
    }
    match (outcome, stopped_by) {
        (Err(Error::Job(JobError::Interrupted(output))), Some(e)) if e.is_instance_of::<PyKeyboardInterrupt>(py) => {
            Err(PyKeyboardInterrupt::new_err(format!(
                "run interrupted; what was staged in {output} is kept: run again with resume=True to continue"
            )))
        }
        (_, Some(e)) => Err(e),
        (Ok(RunOutcome::Done(report)), None) => {
            let status = match report.counts.failed {
                0 => "success",
                _ => "partial",
            };
            Ok((
                status.to_string(),
                String::from_utf8(report.to_json()).expect("JSON is UTF-8"),
            ))
        }
        (Ok(RunOutcome::AlreadyComplete(output)), None) => Ok(("already_complete".to_string(), output)),
        (Err(e), None) => Err(error(py, e)),
    }
}

/// Calls `progress(stage, done, total, ended)` for each stage that ended since the last call, then for the
/// current one when it changed since `drawn`.
fn draw(
    py: Python<'_>,
    state: &PyProgress,
    progress: Option<&Py<PyAny>>,
    drawn: &mut Option<StageState>,
) -> PyResult<()> {
    let Some(progress) = progress else { return Ok(()) };
    let (ended, current) = state.take();
    for (stage, done, total) in ended {
        progress.call1(py, (stage, done, total, true))?;
    }
    if let Some(current) = current {
        if drawn.as_ref() != Some(&current) {
            progress.call1(py, (current.0.clone(), current.1, current.2, false))?;
            *drawn = Some(current);
        }
    }
    Ok(())
}

/// The images as the library takes them: `str` paths or URIs, `bytes` of encoded images.
fn images(items: &[Bound<'_, PyAny>]) -> PyResult<Vec<Image>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if let Ok(bytes) = item.cast::<PyBytes>() {
                Ok(Image::Encoded(bytes.as_bytes().to_vec()))
            } else if let Ok(location) = item.extract::<String>() {
                Ok(Image::Location(location))
            } else {
                Err(PyTypeError::new_err(format!(
                    "images[{i}] is {}: expected a path (str or os.PathLike) or the image's bytes",
                    item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                )))
            }
        })
        .collect()
}

/// The features of `images` (paths, URIs or bytes) as a `pyarrow.RecordBatch`: path, features, error_stage,
/// error; `argv` are model and store options.
#[pyfunction]
#[pyo3(signature = (images, argv, threads=None))]
fn featurize(
    py: Python<'_>,
    images: Vec<Bound<'_, PyAny>>,
    argv: Vec<String>,
    threads: Option<usize>,
) -> PyResult<Py<PyAny>> {
    let images = self::images(&images)?;
    let settings = FeaturizeOptions::parse(&argv).map_err(|e| failure(py, e))?;
    let threads = threads.unwrap_or_else(verger::default_threads);
    if threads == 0 {
        return Err(raise(py, "UsageError", "threads must be at least 1".into()));
    }
    let batch = py
        .detach(|| verger::featurize(&images, &settings, threads))
        .map_err(|e| error(py, e))?;
    Ok(batch.to_pyarrow(py)?.unbind())
}

/// The 224×224 RGB pixels (row-major bytes) the model sees for `image`: a path or the image's bytes.
#[pyfunction]
#[pyo3(signature = (image, max_pixels=None))]
fn preprocess<'py>(
    py: Python<'py>,
    image: Bound<'py, PyAny>,
    max_pixels: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut limits = verger::Limits::default();
    if let Some(max_pixels) = max_pixels {
        limits.max_pixels = max_pixels;
    }
    let (bytes, name) = match self::images(std::slice::from_ref(&image))?.remove(0) {
        Image::Encoded(bytes) => (bytes, "the image's bytes".to_string()),
        Image::Location(path) => match py.detach(|| std::fs::read(&path)) {
            Ok(bytes) => (bytes, path),
            Err(e) => return Err(raise(py, "FileError", format!("{path}: {e}"))),
        },
    };
    let rgb = py
        .detach(|| verger::preprocess(&bytes, &limits))
        .map_err(|e| raise(py, "ImageError", format!("{name}: {e}")))?;
    Ok(PyBytes::new(py, &rgb))
}

/// The finished run `output`'s result rows as a `pyarrow.Table`, sorted by path.
#[pyfunction]
fn read(py: Python<'_>, output: String, argv: Vec<String>) -> PyResult<Py<PyAny>> {
    let store = StoreOptionsArgs::parse(&argv).map_err(|e| failure(py, e))?;
    let (schema, batches) = py.detach(|| verger::read(&output, &store)).map_err(|e| error(py, e))?;
    let table = Table::try_new(batches, schema).map_err(|e| raise(py, "RunError", e.to_string()))?;
    Ok(table.into_pyarrow(py)?.unbind())
}

/// The finished run `output`'s PCA model (`pca/model.json`) as JSON.
#[pyfunction]
fn read_pca(py: Python<'_>, output: String, argv: Vec<String>) -> PyResult<String> {
    let store = StoreOptionsArgs::parse(&argv).map_err(|e| failure(py, e))?;
    let model = py
        .detach(|| verger::read_pca(&output, &store))
        .map_err(|e| error(py, e))?;
    Ok(String::from_utf8(model.to_json()).expect("JSON is UTF-8"))
}

/// `train`, `evaluate`, `identify` or `quality` with the command line's options `argv`; the result as JSON.
#[pyfunction]
fn classify(py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
    let command = cli::parse(&argv).map_err(|e| failure(py, e))?;
    let json = py.detach(|| -> Result<String, Failure> {
        Ok(match command {
            Command::Train(args) => to_json(&verger::train(&args.config()?)?),
            Command::Evaluate(args) => to_json(&args.evaluate()?),
            Command::Quality(args) => to_json(&verger::quality(&args.config()?)?),
            Command::Identify(args) => {
                let (classifier, settings) = args.classifier.load()?;
                to_json(&verger::identify(
                    &classifier,
                    &args.photos,
                    &settings,
                    args.top,
                    args.neighbours,
                )?)
            }
            _ => return Err(Failure::Usage("expected train, evaluate, identify or quality".into())),
        })
    });
    json.map_err(|e| failure(py, e))
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("results serialize")
}

/// The path of the ONNX Runtime library this process loaded (loading it if needed).
#[pyfunction]
fn runtime_library(py: Python<'_>) -> PyResult<String> {
    let path = py.detach(verger::runtime_library).map_err(|e| error(py, e))?;
    Ok(path.display().to_string())
}

#[pymodule]
fn _verger(m: &Bound<'_, PyModule>) -> PyResult<()> {
    verger::opt_out_of_telemetry();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(featurize, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(read, m)?)?;
    m.add_function(wrap_pyfunction!(read_pca, m)?)?;
    m.add_function(wrap_pyfunction!(classify, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_library, m)?)?;
    Ok(())
}
