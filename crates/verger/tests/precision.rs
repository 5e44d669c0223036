//! `verger run --precision bf16`: the report, the result's Parquet metadata and the feature cache say and
//! separate the precision, and the features stay close to fp32's, on a CPU with bf16 support; elsewhere the run
//! is refused before the output is touched (which of the two is decided from /proc/cpuinfo, not by verger).

mod common;

use common::{assert_success, json, python, run_args, small_input, text, verger};
use verger_testdata::cpu_has_bf16;

#[test]
fn a_bf16_run_says_so_and_keeps_its_features_apart_from_fp32_s() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, cache) = (tmp.path().join("in"), tmp.path().join("cache"));
    small_input(&input);
    let run = |output: &std::path::Path, precision: &str| {
        let extra = ["--k", "3", "--precision", precision, "--cache", cache.to_str().unwrap()];
        verger(&run_args(&input, output, &extra))
    };
    let (fp32, bf16) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    let out = run(&fp32, "fp32");
    // Exit status 3: the small input's broken files.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = run(&bf16, "bf16");
    if !cpu_has_bf16() {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("AVX512-BF16 or AMX"), "{}", text(&out));
        assert!(!bf16.exists(), "the output was touched");
        eprintln!("this CPU has no bf16: checked the refusal only");
        return;
    }
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let (fp32_report, bf16_report) = (json(&fp32.join("report.json")), json(&bf16.join("report.json")));
    assert_eq!(fp32_report["versions"]["precision"], "fp32");
    assert_eq!(bf16_report["versions"]["precision"], "bf16");
    let library = bf16_report["versions"]["openvino_library"].as_str().unwrap_or_default();
    assert!(library.contains("libopenvino_c.so"), "{library:?}");
    let page = std::fs::read_to_string(bf16.join("report.html")).unwrap();
    assert!(page.contains("inference precision") && page.contains("bf16"));

    // The cache keys on the precision: the bf16 run reused none of fp32's features.
    assert_eq!(bf16_report["cache"]["hits"], 0, "{}", bf16_report["cache"]);
    let identities = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("features-")
        })
        .count();
    assert_eq!(identities, 2);

    let compared = python(
        "compare_features.py",
        &[fp32.to_str().unwrap(), bf16.to_str().unwrap(), "--precision", "bf16"],
    );
    assert_success(&compared, "bf16 vs fp32");
    eprintln!("{}", text(&compared));
}

#[test]
fn an_unknown_precision_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("out");
    let out = verger(&run_args(tmp.path(), &output, &["--precision", "int8"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expected fp32 or bf16"), "{}", text(&out));
    assert!(!output.exists());
}

/// OpenVINO is loaded only when bf16 is asked for: with it nowhere, an fp32 run goes on, and a bf16 run is
/// refused, naming where it looked and what to install, before the output is touched.
#[test]
fn openvino_is_needed_by_bf16_runs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let nowhere = tmp.path().join("nowhere/libopenvino_c.so");
    let run = |output: &std::path::Path, precision: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_verger"))
            .args(run_args(&input, output, &["--k", "3", "--precision", precision]))
            .env("VERGER_OPENVINO_LIB", &nowhere)
            .output()
            .unwrap()
    };
    let (fp32, bf16) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    let out = run(&fp32, "fp32");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = run(&bf16, "bf16");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for part in [
        "needs OpenVINO",
        "scripts/setup",
        "VERGER_OPENVINO_LIB",
        nowhere.to_str().unwrap(),
    ] {
        assert!(text(&out).contains(part), "no {part:?} in:\n{}", text(&out));
    }
    assert!(!bf16.exists(), "the output was touched");
}
