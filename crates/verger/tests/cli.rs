//! The `verger` binary end to end: real files in, Parquet out, read back by pyarrow and pandas.

mod common;

use std::process::Command;

use common::{assert_success, python, repo_root, run_args, small_input, verger};
use verger_testdata::{fruits360_dir, model_dir, shared_dir};

#[test]
fn run_writes_parquet_that_pyarrow_and_pandas_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    small_input(&input);
    let args = run_args(
        &input,
        &output,
        &[
            "--k",
            "5",
            "--threads",
            "2",
            "--partition-rows",
            "7",
            "--batch-size",
            "4",
        ],
    );
    let out = verger(&args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "bad inputs make exit status 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_success(
        &python("check_output.py", &[output.to_str().unwrap(), "5", "24", "2"]),
        "check_output.py",
    );

    let again = verger(&args);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn k_by_explained_variance() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    small_input(&input);
    std::fs::remove_dir_all(input.join("Broken")).unwrap();
    let out = verger(&run_args(&input, &output, &["--variance", "0.9", "--center"]));
    assert_success(&out, "verger run --variance");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("pca/model.json")).unwrap()).unwrap();
    assert_eq!(model["center"], true);
    let k = model["k"].as_u64().unwrap() as usize;
    let ratios: Vec<f64> = model["explained_variance_ratio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        ratios[..k].iter().sum::<f64>() >= 0.9 && ratios[..k - 1].iter().sum::<f64>() < 0.9,
        "k = {k}"
    );
}

/// The original pipeline's output on all 7,392 Training images is the ground truth.
#[test]
fn full_training_sample_matches_the_original_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("out");
    let input = fruits360_dir().join("Training");
    let out = verger(&run_args(&input, &output, &["--k", "50"]));
    assert_success(&out, "verger run on Training");
    let seed = shared_dir().join("reference-runs/seed-fruits360-training/seed_result.parquet");
    let compared = python(
        "compare_reference.py",
        &[output.to_str().unwrap(), seed.to_str().unwrap()],
    );
    assert_success(&compared, "compare_reference.py");
    println!("{}", String::from_utf8_lossy(&compared.stdout));
}

#[test]
fn preprocess_writes_the_pixels_pillow_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = model_dir().join("reference");
    let image = reference.join("images/banana.jpg");
    let out = verger(&[
        "preprocess",
        image.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]);
    assert_success(&out, "verger preprocess");
    let limits = verger_image::Limits::default();
    let ours = verger_image::decode(&std::fs::read(tmp.path().join("banana.png")).unwrap(), &limits).unwrap();
    let pillow = verger_image::decode(
        &std::fs::read(reference.join("resized_224/banana.png")).unwrap(),
        &limits,
    )
    .unwrap();
    assert_eq!(ours, pillow);
}

#[test]
fn embed_writes_path_and_features() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = model_dir().join("reference/images");
    let file = tmp.path().join("f.parquet");
    let out = verger(&[
        "embed",
        reference.join("kiwi.jpg").to_str().unwrap(),
        reference.join("melon.jpg").to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_success(&out, "verger embed");
    let script = "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); \
                  assert t.column_names == ['path', 'features'] and t.num_rows == 2; \
                  assert all(len(f) == 1280 for f in t.column('features').to_pylist())";
    let python = repo_root().join(".venv/bin/python");
    let checked = Command::new(python)
        .args(["-c", script, file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&checked, "pyarrow read-back");
}

/// Microsoft's ONNX Runtime builds record usage events in a database under the user's home unless told not to.
#[test]
fn inference_leaves_nothing_in_the_user_s_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let image = model_dir().join("reference/images/kiwi.jpg");
    let file = tmp.path().join("f.parquet");
    let out = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(["embed", image.to_str().unwrap(), "--out", file.to_str().unwrap()])
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    assert_success(&out, "verger embed");
    let left: Vec<_> = std::fs::read_dir(&home).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "a run wrote to the user's home: {left:?}");
}

#[test]
fn pseudonymized_paths_are_keyed_hashes_and_no_photo_path_remains() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output, key) = (tmp.path().join("in"), tmp.path().join("out"), tmp.path().join("key"));
    small_input(&input);
    std::fs::write(&key, b"a-key-of-at-least-16-bytes\n").unwrap();
    let out = verger(&run_args(
        &input,
        &output,
        &["--k", "5", "--pseudonymize-paths", key.to_str().unwrap()],
    ));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let checked = python(
        "check_pseudonyms.py",
        &[output.to_str().unwrap(), key.to_str().unwrap(), input.to_str().unwrap()],
    );
    assert_success(&checked, "check_pseudonyms.py");
}
