//! The `verger` binary end to end: real files in, Parquet out, read back by pyarrow and pandas.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use verger_testdata::{fruits360_dir, model_dir, shared_dir};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn verger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .output()
        .expect("verger runs")
}

/// The Python of `.venv`, where scripts/setup installed pyarrow and pandas.
fn python(script: &str, args: &[&str]) -> Output {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup",
        python.display()
    );
    Command::new(python)
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("python runs")
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 3 classes x 8 real images, plus an empty file and a text file named .jpg.
fn small_input(dir: &Path) {
    for class in ["Kiwi", "Lemon", "Orange"] {
        let from = fruits360_dir().join("Training").join(class);
        let to = dir.join(class);
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&from)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(8) {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("Broken")).unwrap();
    std::fs::write(dir.join("Broken/empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("Broken/notes.jpg"), b"this is not an image").unwrap();
    std::fs::write(dir.join("Broken/ignored.txt"), b"not matched by the glob").unwrap();
}

#[test]
fn run_writes_parquet_that_pyarrow_and_pandas_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    small_input(&input);
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--k",
        "5",
        "--threads",
        "2",
        "--partition-rows",
        "7",
        "--batch-size",
        "4",
    ];
    let out = verger(&args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "bad inputs make exit status 3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_success(
        &python(
            "check_output.py",
            &[output.to_str().unwrap(), "5", "24", "2"],
        ),
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
    let out = verger(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--variance",
        "0.9",
    ]);
    assert_success(&out, "verger run --variance");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("pca/model.json")).unwrap()).unwrap();
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
    let out = verger(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--k",
        "50",
    ]);
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
    let ours = verger_image::decode(
        &std::fs::read(tmp.path().join("banana.png")).unwrap(),
        &limits,
    )
    .unwrap();
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
