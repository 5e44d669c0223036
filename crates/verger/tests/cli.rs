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
    // Issue 41, point 7: a short key, or one others may read, is refused before anything runs.
    for (text, mode, says) in [
        (&b"sixteen-byte-key"[..], 0o600, "use at least 32"),
        (b"a-key-of-at-least-32-bytes-for-hmac-sha256", 0o644, "chmod 600"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&key, text).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let refused = verger(&run_args(
            &input,
            &output,
            &["--pseudonymize-paths", key.to_str().unwrap()],
        ));
        assert_eq!(refused.status.code(), Some(1), "{}", common::text(&refused));
        assert!(common::text(&refused).contains(says), "{}", common::text(&refused));
    }
    std::fs::remove_dir_all(&output).ok();
    common::key_file(&key, b"a-key-of-at-least-32-bytes-for-hmac-sha256\n");
    // With a feature cache (issue 41, point 7): run twice, the second served by the cache.
    let cache = tmp.path().join("cache");
    for pass in 0..2 {
        let out = verger(&run_args(
            &input,
            &output,
            &[
                "--k",
                "5",
                "--pseudonymize-paths",
                key.to_str().unwrap(),
                "--cache",
                cache.to_str().unwrap(),
                "--overwrite",
            ],
        ));
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(output.join("report.json")).unwrap()).unwrap();
        let hits = report["cache"]["hits"].as_u64().unwrap();
        assert_eq!(hits > 0, pass == 1, "pass {pass}: {}", report["cache"]);
    }
    let checked = python(
        "check_pseudonyms.py",
        &[
            output.to_str().unwrap(),
            key.to_str().unwrap(),
            input.to_str().unwrap(),
            cache.to_str().unwrap(),
        ],
    );
    assert_success(&checked, "check_pseudonyms.py");
    assert!(
        common::text(&checked).contains("the cache's"),
        "{}",
        common::text(&checked)
    );
}

/// Every file under `dir` (links not followed) with its bytes, to show that nothing in it changed.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            match entry.file_type().unwrap().is_dir() {
                true => folders.push(entry.path()),
                false => files.push((entry.path(), std::fs::read(entry.path()).unwrap_or_default())),
            }
        }
    }
    files.sort();
    files
}

/// Issue 41, point 1: `--overwrite` (and `--resume`) replace only what verger wrote. An output that contains
/// what the command reads, or that holds a user's files and none of verger's marks, is refused before
/// anything in it is touched (not even claimed); replacing a run's output removes verger's names only.
#[test]
fn overwrite_never_deletes_what_verger_did_not_write() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    small_input(&photos);
    let photos_before = snapshot(&photos);
    let refused = |args: &[&str], says: &str| {
        let out = verger(args);
        let text = common::text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?} must be refused: {text}");
        assert!(text.contains(says), "{args:?} must say {says:?}: {text}");
    };

    // The output contains the input: as written, through a link, and through `..`.
    let apple = photos.join("Kiwi");
    refused(&run_args(&apple, &photos, &["--overwrite"]), "contains the input");
    let link = tmp.path().join("link-to-photos");
    std::os::unix::fs::symlink(&photos, &link).unwrap();
    refused(&run_args(&apple, &link, &["--overwrite"]), "contains the input");
    let dotdot = photos.join("Kiwi/..");
    refused(&run_args(&apple, &dotdot, &["--resume"]), "contains the input");
    refused(&run_args(&photos, &photos, &[]), "contains the input");
    assert_eq!(snapshot(&photos), photos_before, "the photos are untouched");

    // A user's folder that is not verger's: neither replaced nor resumed, nor claimed.
    let documents = tmp.path().join("documents");
    std::fs::create_dir_all(documents.join("result")).unwrap();
    std::fs::write(documents.join("notes.txt"), b"mine").unwrap();
    std::fs::write(documents.join("result/thesis.tex"), b"mine too").unwrap();
    let documents_before = snapshot(&documents);
    let kiwi = tmp.path().join("kiwi");
    common::copy_images("Kiwi", &kiwi.join("Kiwi"), 3);
    common::copy_images("Lemon", &kiwi.join("Lemon"), 3);
    refused(
        &run_args(&kiwi, &documents, &["--overwrite"]),
        "not verger's to replace",
    );
    refused(&run_args(&kiwi, &documents, &["--resume"]), "not verger's to resume");
    assert_eq!(snapshot(&documents), documents_before, "the documents are untouched");

    // A run's output with a user's file beside it: --overwrite replaces the run, keeps the file.
    let run = tmp.path().join("run");
    assert_success(&verger(&run_args(&kiwi, &run, &["--k", "2"])), "first run");
    std::fs::write(run.join("my-notes.txt"), b"about this run").unwrap();
    assert_success(
        &verger(&run_args(&kiwi, &run, &["--k", "3", "--overwrite"])),
        "--overwrite of a run",
    );
    assert_eq!(std::fs::read(run.join("my-notes.txt")).unwrap(), b"about this run");
    assert_eq!(
        common::json(&run.join("pca/model.json"))["k"],
        3,
        "the run was replaced"
    );

    // `train --out RUN --overwrite` would delete the run it trains on; a user's folder is not a classifier.
    let run_before = snapshot(&run);
    let run_arg = run.to_str().unwrap();
    refused(&["train", run_arg, "--out", run_arg, "--overwrite"], "contains the run");
    let docs = documents.to_str().unwrap();
    refused(
        &["train", run_arg, "--out", docs, "--overwrite"],
        "not verger's to replace",
    );
    assert_eq!(snapshot(&run), run_before, "the run is untouched");
    assert_eq!(snapshot(&documents), documents_before, "the documents are untouched");
}
