//! Finding and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Search order: `VERGER_ORT_LIB`, `ORT_DYLIB_PATH`, the executable's folder (for deployments that ship the
//! library beside the binary), the active Python virtual environment, then this checkout's `.venv`, which
//! `scripts/setup` fills. The first hit is loaded once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::error::ModelError;

const LIBRARY_PREFIX: &str = "libonnxruntime.so";

/// The loaded library and its ONNX Runtime environment, once per process.
struct Loaded {
    path: PathBuf,
    environment: Environment,
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

fn loaded() -> Result<&'static Loaded, ModelError> {
    static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();
    let outcome = LOADED.get_or_init(|| {
        opt_out_of_telemetry();
        let path = locate().map_err(|e| e.to_string())?;
        let load_error = |message: String| {
            ModelError::RuntimeLoad {
                path: path.clone(),
                message,
            }
            .to_string()
        };
        let environment = ort::init_from(&path)
            .map_err(|e| load_error(e.to_string()))?
            .with_name("verger")
            // Events of a process that opted out anyway (see `opt_out_of_telemetry`).
            .with_telemetry(false)
            .build()
            .map_err(|e| load_error(e.to_string()))?;
        Ok(Loaded { path, environment })
    });
    outcome.as_ref().map_err(|message| ModelError::Ort(message.clone()))
}

/// Loads ONNX Runtime (once per process) and returns the library's path.
pub fn ensure_loaded() -> Result<&'static Path, ModelError> {
    Ok(loaded()?.path.as_path())
}

/// The process's ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, ModelError> {
    Ok(&loaded()?.environment)
}

/// The library file that [`ensure_loaded`] would load.
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
    for venv in venvs {
        for lib in ["lib", "lib64"] {
            let Ok(entries) = std::fs::read_dir(venv.join(lib)) else {
                continue;
            };
            for python in entries.flatten() {
                folders.push(python.path().join("site-packages/onnxruntime/capi"));
            }
        }
    }
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
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(folder)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(LIBRARY_PREFIX))
        })
        .collect();
    candidates.sort();
    candidates.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

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
