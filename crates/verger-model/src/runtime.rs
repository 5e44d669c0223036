//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`), one per process.
//!
//! For the CPU, the search order is: `VERGER_ORT_LIB`, `ORT_DYLIB_PATH`, the executable's folder (for
//! deployments that ship the library beside the binary), the active Python virtual environment, then this
//! checkout's `.venv`, which `scripts/setup` fills. For `--device cuda`, the GPU build (`onnxruntime-gpu`, its
//! own version): `VERGER_ORT_GPU_LIB`, then this checkout's `.venv-gpu` (`scripts/setup-gpu`), then the active
//! virtual environment; the NVIDIA libraries of the pip wheels beside it are loaded first, so that the CUDA
//! provider finds them without `LD_LIBRARY_PATH`. The first library loaded serves the whole process (the GPU
//! build runs on the CPU too; the CPU build cannot run on a GPU).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep::ExecutionProvider;

use crate::device::Device;
use crate::error::ModelError;

const LIBRARY_PREFIX: &str = "libonnxruntime.so";

/// The loaded library and its ONNX Runtime environment, once per process.
struct Loaded {
    path: PathBuf,
    environment: Environment,
    /// Whether the library has the CUDA execution provider (the GPU build), and the GPU set-up's outcome.
    cuda: bool,
    gpu_ready: OnceLock<Result<(), String>>,
}

/// Asks ONNX Runtime not to record or send usage telemetry, unless the user decided otherwise: Microsoft's
/// builds (the PyPI wheels) otherwise write a device id and an event database under `~/.cache/Microsoft` and
/// may upload model metadata, errors and run counts. Read once, when the library initialises, so front ends
/// call this first thing, before other threads run ([`loaded`] calls it again for library users).
pub fn opt_out_of_telemetry() {
    const VAR: &str = "ORT_DISABLE_TELEMETRY";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "1");
    }
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// The process's library, loaded for `device` on first use; a later call for a GPU device fails when the
/// library loaded first cannot run there. A failed load is not remembered: the next call tries again.
fn loaded(device: Device) -> Result<&'static Loaded, ModelError> {
    static LOADING: Mutex<()> = Mutex::new(());
    let loaded = match LOADED.get() {
        Some(loaded) => loaded,
        None => {
            let _one_at_a_time = LOADING.lock().unwrap_or_else(|p| p.into_inner());
            match LOADED.get() {
                Some(loaded) => loaded,
                None => {
                    let loading = load(device)?;
                    LOADED.get_or_init(|| loading)
                }
            }
        }
    };
    if device.is_gpu() {
        if !loaded.cuda {
            return Err(ModelError::NoCudaProvider {
                path: loaded.path.clone(),
            });
        }
        loaded
            .gpu_ready
            .get_or_init(|| prepare_gpu(&loaded.path))
            .clone()
            .map_err(ModelError::GpuUnavailable)?;
    }
    Ok(loaded)
}

fn load(device: Device) -> Result<Loaded, ModelError> {
    opt_out_of_telemetry();
    let path = locate_for(device)?;
    if device.is_gpu() {
        // Before loading anything: a process refused a GPU goes on with the CPU build.
        nvidia_driver().map_err(ModelError::GpuUnavailable)?;
    }
    let load_error = |message: String| ModelError::RuntimeLoad {
        path: path.clone(),
        message,
    };
    let environment = ort::init_from(&path)
        .map_err(|e| load_error(e.to_string()))?
        .with_name("verger")
        // Events of a process that opted out anyway (see `opt_out_of_telemetry`).
        .with_telemetry(false)
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    let cuda = ort::ep::CUDA::is_available().unwrap_or(false);
    tracing::info!(library = %path.display(), cuda, "ONNX Runtime loaded");
    Ok(Loaded {
        path,
        environment,
        cuda,
        gpu_ready: OnceLock::new(),
    })
}

/// The NVIDIA driver's library, loaded for the life of the process.
fn nvidia_driver() -> Result<(), String> {
    // SAFETY: loading a shared library runs its initialisers; libcuda's are the driver's own.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(driver) => {
            std::mem::forget(driver);
            Ok(())
        }
        Err(e) => {
            // libloading keeps dlerror's text (which says why) as the error's source.
            let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            Err(format!(
                "no NVIDIA driver on this machine (libcuda.so.1 cannot be loaded: {why}); --device cuda needs an \
                 NVIDIA GPU with its driver installed"
            ))
        }
    }
}

/// What the CUDA provider needs before its first session: the NVIDIA driver, then the CUDA and cuDNN
/// libraries of the pip wheels in the library's `site-packages` and in the `nvidia` folders that
/// `VERGER_NVIDIA_LIBS` lists (`:`-separated, such as another environment's `site-packages/nvidia`); where
/// none holds them, the system's are used.
fn prepare_gpu(library: &Path) -> Result<(), String> {
    nvidia_driver()?;
    let mut roots: Vec<PathBuf> = library
        .ancestors()
        .nth(3)
        .map(|site_packages| site_packages.join("nvidia"))
        .into_iter()
        .collect();
    if let Some(listed) = std::env::var_os("VERGER_NVIDIA_LIBS") {
        roots.extend(std::env::split_paths(&listed));
    }
    let preloaded = preload_nvidia_libraries(&roots);
    tracing::info!(preloaded, ?roots, "NVIDIA libraries loaded from pip wheels");
    Ok(())
}

/// Libraries the CUDA provider links or opens (CUDA runtime, cuBLAS, cuRAND, cuFFT, NVRTC, nvJitLink, cuDNN).
const NVIDIA_LIBRARIES: &[&str] = &[
    "libcudart.so",
    "libcublasLt.so",
    "libcublas.so",
    "libcurand.so",
    "libcufft.so",
    "libnvrtc.so",
    "libnvJitLink.so",
    "libcudnn",
];

/// Loads, globally and for the life of the process, the NVIDIA libraries under each of `roots` (the `nvidia`
/// folder of a `site-packages`) in `*/lib` (and `*/*/lib`, the CUDA 13 wheels' layout), so that the
/// provider's own loading finds them by name.
/// Their dependencies on each other decide the order: each round loads what it can until none is left or a
/// round loads nothing (what is left is then missing something, and the provider's error will name it).
/// Returns how many were loaded.
fn preload_nvidia_libraries(roots: &[PathBuf]) -> usize {
    let mut folders = Vec::new();
    for package in roots
        .iter()
        .flat_map(|root| std::fs::read_dir(root).into_iter().flatten().flatten())
    {
        folders.push(package.path().join("lib"));
        for nested in std::fs::read_dir(package.path()).into_iter().flatten().flatten() {
            folders.push(nested.path().join("lib"));
        }
    }
    let mut left: Vec<PathBuf> = folders
        .iter()
        .flat_map(|folder| std::fs::read_dir(folder).into_iter().flatten().flatten())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".so") && NVIDIA_LIBRARIES.iter().any(|p| n.starts_with(p)))
        })
        .collect();
    left.sort();
    let mut loaded = 0;
    loop {
        let before = left.len();
        left.retain(|path| {
            // SAFETY: NVIDIA's libraries, as the CUDA provider would load them; kept for the process's life.
            let opened = unsafe {
                libloading::os::unix::Library::open(
                    Some(path),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            };
            match opened {
                Ok(library) => {
                    std::mem::forget(library);
                    false
                }
                Err(_) => true,
            }
        });
        loaded += before - left.len();
        if left.is_empty() || left.len() == before {
            break;
        }
    }
    if !left.is_empty() {
        tracing::warn!(?left, "NVIDIA libraries that could not be loaded");
    }
    loaded
}

/// Loads ONNX Runtime for `device` (once per process) and returns the library's path.
pub fn ensure_loaded(device: Device) -> Result<&'static Path, ModelError> {
    Ok(loaded(device)?.path.as_path())
}

/// The process's ONNX Runtime environment, loading the library for `device` on first use.
pub fn environment(device: Device) -> Result<&'static Environment, ModelError> {
    Ok(&loaded(device)?.environment)
}

/// The library this process uses for `device`: the one loaded, else the one [`ensure_loaded`] would load.
pub fn library_for(device: Device) -> Result<PathBuf, ModelError> {
    match LOADED.get() {
        Some(loaded) if loaded.cuda || !device.is_gpu() => Ok(loaded.path.clone()),
        _ => locate_for(device),
    }
}

/// The library file that [`ensure_loaded`] would load for `device`.
pub fn locate_for(device: Device) -> Result<PathBuf, ModelError> {
    match device {
        Device::Cpu => locate(),
        Device::Cuda(_) => locate_gpu(),
    }
}

/// The GPU build: `VERGER_ORT_GPU_LIB` (when set, the only place looked at), else this checkout's
/// `.venv-gpu`, then the active virtual environment.
fn locate_gpu() -> Result<PathBuf, ModelError> {
    let var = "VERGER_ORT_GPU_LIB";
    if let Some(path) = std::env::var_os(var).map(PathBuf::from) {
        return match path.is_file() {
            true => Ok(path),
            false => Err(ModelError::GpuRuntimeNotFound {
                searched: format!("${var}={}", path.display()),
            }),
        };
    }
    let searched = Vec::new();
    let mut venvs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-gpu")];
    venvs.extend(std::env::var_os("VIRTUAL_ENV").map(PathBuf::from));
    search(venv_folders(venvs), searched).map_err(|e| match e {
        ModelError::RuntimeNotFound { searched } => ModelError::GpuRuntimeNotFound { searched },
        other => other,
    })
}

/// The `onnxruntime/capi` folders of the Python installations in `venvs`.
fn venv_folders(venvs: Vec<PathBuf>) -> Vec<PathBuf> {
    site_packages(venvs).map(|s| s.join("onnxruntime/capi")).collect()
}

/// The `site-packages` folders of the Python installations in `venvs` (virtual environments' roots).
pub(crate) fn site_packages(venvs: Vec<PathBuf>) -> impl Iterator<Item = PathBuf> {
    venvs.into_iter().flat_map(|venv| {
        ["lib", "lib64"].into_iter().flat_map(move |lib| {
            std::fs::read_dir(venv.join(lib))
                .into_iter()
                .flatten()
                .flatten()
                .map(|python| python.path().join("site-packages"))
        })
    })
}

/// The CPU library file that [`ensure_loaded`] would load.
pub fn locate() -> Result<PathBuf, ModelError> {
    let mut searched = Vec::new();
    for var in ["VERGER_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(path) = std::env::var_os(var).map(PathBuf::from) {
            if path.is_file() {
                return Ok(path);
            }
            searched.push(format!("${var}={}", path.display()));
        }
    }
    let mut folders = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        folders.push(dir);
    }
    let mut venvs: Vec<PathBuf> = std::env::var_os("VIRTUAL_ENV").map(PathBuf::from).into_iter().collect();
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    folders.extend(venv_folders(venvs));
    search(folders, searched)
}

/// The first folder holding the library; otherwise an error naming every place searched and what to run.
fn search(folders: Vec<PathBuf>, mut searched: Vec<String>) -> Result<PathBuf, ModelError> {
    for folder in folders {
        if let Some(found) = library_in(&folder) {
            return Ok(found);
        }
        searched.push(folder.display().to_string());
    }
    Err(ModelError::RuntimeNotFound {
        searched: searched.join(", "),
    })
}

fn library_in(folder: &Path) -> Option<PathBuf> {
    newest_library(folder, LIBRARY_PREFIX)
}

/// The file of `folder` whose name starts with `prefix` and sorts last (the newest version of a library).
pub(crate) fn newest_library(folder: &Path, prefix: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(folder)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds the shared library `dir/file` (soname `file`) with gcc, linked against `needs` (a library file
    /// and its folder) when given, which must then be found by name when it is loaded.
    fn shared_library(dir: &Path, file: &str, symbol: &str, needs: Option<(&Path, &str)>) {
        std::fs::create_dir_all(dir).unwrap();
        let source = dir.join(format!("{symbol}.c"));
        let body = match needs {
            Some(_) => format!("int dependency(void); int {symbol}(void) {{ return dependency() + 1; }}"),
            None => format!("int {symbol}(void) {{ return 41; }}"),
        };
        std::fs::write(&source, body).unwrap();
        let mut gcc = std::process::Command::new("gcc");
        gcc.args(["-shared", "-fPIC", "-o"])
            .arg(dir.join(file))
            .arg(&source)
            .arg(format!("-Wl,-soname,{file}"));
        if let Some((folder, library)) = needs {
            gcc.arg(format!("-L{}", folder.display())).arg(format!("-l:{library}"));
        }
        assert!(gcc.status().unwrap().success(), "gcc failed");
    }

    /// A library whose dependency sorts after it loads in a second round, once the dependency is loaded; one
    /// whose dependency is nowhere is left out, and unrelated libraries are not loaded.
    #[test]
    fn nvidia_libraries_load_in_the_order_their_dependencies_need() {
        let tmp = tempfile::tempdir().unwrap();
        // Two environments' `nvidia` folders, the dependency in the second.
        let (nvidia, other) = (tmp.path().join("nvidia"), tmp.path().join("other-env/nvidia"));
        let (runtime, blas) = (other.join("zz_runtime/lib"), nvidia.join("cublas/lib"));
        shared_library(&runtime, "libcudart.so.99", "dependency", None);
        shared_library(&blas, "libcublas.so.99", "blas", Some((&runtime, "libcudart.so.99")));
        // Linked against a library that is then taken away: it can never load.
        let gone = tmp.path().join("gone");
        shared_library(&gone, "libgone.so.1", "dependency", None);
        shared_library(
            &nvidia.join("cu99/cufft/lib"),
            "libcufft.so.99",
            "fft",
            Some((&gone, "libgone.so.1")),
        );
        std::fs::remove_dir_all(&gone).unwrap();
        shared_library(&nvidia.join("other/lib"), "libunrelated.so.1", "unrelated", None);

        assert_eq!(preload_nvidia_libraries(&[nvidia, other]), 2);
        // Loaded globally: the soname now resolves without a path, and the dependent library works.
        let blas = unsafe { libloading::Library::new("libcublas.so.99") }.unwrap();
        let call = unsafe { blas.get::<unsafe extern "C" fn() -> i32>(b"blas") }.unwrap();
        assert_eq!(unsafe { call() }, 42);
        assert!(unsafe { libloading::Library::new("libunrelated.so.1") }.is_err());
        assert_eq!(preload_nvidia_libraries(&[tmp.path().join("no-such-folder")]), 0);
    }

    #[test]
    fn a_missing_runtime_says_what_to_run() {
        let empty = std::env::temp_dir().join("verger-no-onnxruntime-here");
        let message = search(vec![empty.clone()], vec![]).unwrap_err().to_string();
        assert!(
            message.contains("scripts/setup") && message.contains("VERGER_ORT_LIB"),
            "{message}"
        );
        assert!(message.contains(&empty.display().to_string()), "{message}");
    }

    #[test]
    fn the_newest_library_in_a_folder_wins() {
        let dir = std::env::temp_dir().join(format!("verger-ort-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libonnxruntime.so.1.31.0", "libonnxruntime.so.1.32.0", "unrelated.so"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(
            search(vec![dir.clone()], vec![]).unwrap(),
            dir.join("libonnxruntime.so.1.32.0")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
