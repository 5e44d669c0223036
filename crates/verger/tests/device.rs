//! `--device cuda` on a machine without a GPU (this one, and CI's): what is missing (the GPU build of ONNX
//! Runtime, the NVIDIA driver) is named, with what to do, before the output is touched. (A process that loaded
//! the CPU build first is told the CPU build has no CUDA provider: the Python package's tests.)
//!
//! On a machine with an NVIDIA GPU, `cargo test --test device -- --ignored` runs the GPU's own tests: the run
//! there matches the CPU's and says where it ran, and a GPU that is not there is named.

// A build without the cluster leaves this file's cluster tests out, and with them some helpers' only use.
#![cfg_attr(not(feature = "cluster"), allow(dead_code, unused_imports))]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_success, json, python, repo_root, run_args, small_input, text, verger};

/// `verger run --device DEVICE` over the small input, with `VERGER_ORT_GPU_LIB` set to `gpu_library`.
fn gpu_run(tmp: &Path, device: &str, gpu_library: &Path) -> (Output, PathBuf) {
    let (input, output) = (tmp.join("in"), tmp.join("out"));
    small_input(&input);
    let out = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(run_args(&input, &output, &["--device", device]))
        .env("VERGER_ORT_GPU_LIB", gpu_library)
        .output()
        .unwrap();
    (out, output)
}

fn assert_refused(out: &Output, output: &Path, expected: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    for part in expected {
        assert!(text(out).contains(part), "no {part:?} in:\n{}", text(out));
    }
    assert!(!output.exists(), "the output was touched");
}

#[test]
fn without_the_gpu_runtime_the_run_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere/libonnxruntime.so");
    let (out, output) = gpu_run(tmp.path(), "cuda", &missing);
    assert_refused(
        &out,
        &output,
        &[
            "GPU build",
            "scripts/setup-gpu",
            "VERGER_ORT_GPU_LIB",
            missing.to_str().unwrap(),
        ],
    );
}

/// The GPU build that scripts/setup installs (without NVIDIA's libraries) in `.venv-gpu`.
fn gpu_build() -> PathBuf {
    let capi = repo_root().join(".venv-gpu/lib/python3.11/site-packages/onnxruntime/capi");
    std::fs::read_dir(&capi)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("libonnxruntime.so")
        })
        .unwrap_or_else(|| panic!("no GPU build of ONNX Runtime in {}: run scripts/setup", capi.display()))
}

/// [`gpu_build`], on a machine without an NVIDIA driver (the tests below are for those); None, said so, where
/// there is one.
fn gpu_build_without_a_driver() -> Option<PathBuf> {
    if Path::new("/dev/nvidiactl").exists() {
        eprintln!("SKIPPED: this machine has an NVIDIA driver; the test is for machines without one");
        return None;
    }
    Some(gpu_build())
}

/// The GPU build itself (installed by scripts/setup, without NVIDIA's libraries), on a machine without an
/// NVIDIA driver: the driver is named as what is missing.
#[test]
fn the_gpu_runtime_without_a_gpu_names_the_missing_driver() {
    let Some(library) = gpu_build_without_a_driver() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (out, output) = gpu_run(tmp.path(), "cuda", &library);
    assert_refused(&out, &output, &["--device cuda", "no NVIDIA driver", "libcuda.so.1"]);
}

#[test]
fn an_unknown_device_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, output) = gpu_run(tmp.path(), "tpu", Path::new("/nowhere"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expected cpu, cuda or cuda:N"), "{}", text(&out));
    assert!(!output.exists());
}

/// On a cluster the client runs no model, so it needs no GPU: the executors do, and one without a driver fails
/// the run with the executor's reason, committing nothing.
#[test]
#[cfg(feature = "cluster")]
fn on_a_cluster_the_executors_gpu_is_what_counts() {
    let Some(library) = gpu_build_without_a_driver() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let executors_env = [("VERGER_ORT_GPU_LIB", library.to_str().unwrap())];
    let (_processes, url) = common::cluster(tmp.path(), 0, &executors_env);
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    small_input(&input);
    let out = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(run_args(&input, &output, &["--device", "cuda", "--cluster", &url]))
        // The client's own GPU runtime is nowhere: it must not need one.
        .env("VERGER_ORT_GPU_LIB", tmp.path().join("nowhere/libonnxruntime.so"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no NVIDIA driver"), "{}", text(&out));
    assert!(!output.join("_SUCCESS").exists() && !output.join("result").exists());
}

/// The small input on the CPU and on the GPU: the same rows and the same bad files, the GPU's features those of
/// fp32 (TF32 off), and the report, the page and the Parquet metadata say where the features were computed.
#[test]
#[ignore = "needs an NVIDIA GPU, its driver and ONNX Runtime's GPU build (scripts/setup-gpu)"]
fn on_a_gpu_the_run_matches_the_cpu_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let (cpu, gpu) = (tmp.path().join("cpu"), tmp.path().join("gpu"));
    let out = verger(&run_args(&input, &cpu, &["--k", "3"]));
    // Exit status 3: the small input's broken files.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let extra = ["--k", "3", "--device", "cuda", "--batch-size", "8"];
    let out = verger(&run_args(&input, &gpu, &extra));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let report = json(&gpu.join("report.json"));
    assert_eq!(report["versions"]["device"], "cuda:0", "{}", report["versions"]);
    assert_eq!(json(&cpu.join("report.json"))["versions"]["device"], "cpu");
    let page = std::fs::read_to_string(gpu.join("report.html")).unwrap();
    assert!(
        page.contains("inference device") && page.contains("cuda:0"),
        "the page does not say the device"
    );
    let compared = python(
        "compare_features.py",
        &[cpu.to_str().unwrap(), gpu.to_str().unwrap(), "--device", "cuda:0"],
    );
    assert_success(&compared, "GPU vs CPU features");
    eprintln!("{}", text(&compared));
}

/// A GPU index the machine does not have is named, and the output is not touched.
#[test]
#[ignore = "needs an NVIDIA GPU, its driver and ONNX Runtime's GPU build (scripts/setup-gpu)"]
fn a_gpu_the_machine_does_not_have_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let output = tmp.path().join("out");
    let out = verger(&run_args(&input, &output, &["--device", "cuda:63"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cuda:63"), "{}", text(&out));
    assert!(!output.exists(), "the output was touched");
}
