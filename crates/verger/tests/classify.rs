//! The app's use case end to end on the shared Fruits-360 sample: featurize Training, project Test with the
//! Training PCA (`--pca-model`), train on both feature sets, evaluate on Test against the scikit-learn
//! reference accuracies, identify photos (good and bad), export the app's ONNX file and run it with plain
//! onnxruntime, and refuse what does not belong together.

mod common;

use std::path::Path;

use common::{assert_success, json, python, run_args, small_input, text, verger};
use verger_testdata::fruits360_dir;

/// scikit-learn `LogisticRegression` on the original pipeline's features, Training → Test, 88 classes.
const REFERENCE_PCA50_TOP1: f64 = 0.9598;
const REFERENCE_FULL_TOP1: f64 = 0.9797;

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn train_evaluate_identify_on_the_shared_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_run, test_run) = (tmp.path().join("training"), tmp.path().join("test"));
    let training = fruits360_dir().join("Training");
    let test = fruits360_dir().join("Test");
    assert_success(&verger(&run_args(&training, &train_run, &[])), "training run");
    let model_json = train_run.join("pca/model.json");
    let pca_model = model_json.to_str().unwrap();
    assert_success(
        &verger(&run_args(&test, &test_run, &["--pca-model", pca_model])),
        "test run with the training PCA",
    );
    assert_eq!(
        std::fs::read(test_run.join("pca/model.json")).unwrap(),
        std::fs::read(&model_json).unwrap(),
        "the test run saves the model it was projected with, unchanged"
    );
    // The report states how far a basis refit on the Test images would turn from the given one.
    let report = json(&test_run.join("report.json"));
    let angles: Vec<f64> = serde_json::from_value(report["pca"]["drift_degrees"].clone()).unwrap();
    assert_eq!(angles.len(), 50);
    assert!(
        angles.windows(2).all(|w| w[0] <= w[1]) && (0.0..=90.0).contains(&angles[49]),
        "{angles:?}"
    );
    // The same fruit under the same camera: the leading directions agree, the tail turns.
    assert!(angles[0] < 5.0 && angles[49] > angles[0], "{angles:?}");
    let page = std::fs::read_to_string(test_run.join("report.html")).unwrap();
    assert!(page.contains("principal angles"), "the page does not state the drift");

    for (on, reference) in [
        ("pca-features", REFERENCE_PCA50_TOP1),
        ("features", REFERENCE_FULL_TOP1),
    ] {
        let classifier = tmp.path().join(format!("classifier-{on}"));
        let trained = verger(&[
            "train",
            train_run.to_str().unwrap(),
            "--out",
            classifier.to_str().unwrap(),
            "--on",
            on,
        ]);
        assert_success(&trained, &format!("train on {on}"));
        let evaluated = verger(&[
            "evaluate",
            "--model",
            classifier.to_str().unwrap(),
            test_run.to_str().unwrap(),
        ]);
        assert_success(&evaluated, &format!("evaluate on {on}"));
        assert!(text(&evaluated).contains("summarised in"), "{}", text(&evaluated));
        let evaluation = json(&classifier.join("evaluation.json"));
        let top1 = evaluation["top1"].as_f64().unwrap();
        println!("{on}: top-1 {top1:.4} (reference {reference}), {}", text(&evaluated));
        assert!(top1 >= reference, "{on}: top-1 {top1} below the reference {reference}");
        assert!(evaluation["top5"].as_f64().unwrap() >= top1);
        assert_eq!(evaluation["rows"], 2464);
        assert_eq!(evaluation["per_class"].as_array().unwrap().len(), 88);
        assert!(evaluation["unseen_labels"].as_object().unwrap().is_empty());
        assert_success(
            &python("check_classifier.py", &[classifier.to_str().unwrap(), "88", "2464"]),
            "pyarrow reads the classifier's Parquet",
        );
    }

    // The evaluated run's report summarises each classifier's evaluation (re-evaluating replaces its entry).
    let evaluations = json(&test_run.join("report.json"))["evaluations"].clone();
    let evaluations = evaluations.as_array().unwrap();
    assert_eq!(evaluations.len(), 2, "{evaluations:?}");
    for (entry, on) in evaluations.iter().zip(["pca-features", "features"]) {
        let saved = json(&tmp.path().join(format!("classifier-{on}/evaluation.json")));
        assert_eq!(entry["top1"], saved["top1"]);
        assert!(entry["classifier"]
            .as_str()
            .unwrap()
            .ends_with(&format!("classifier-{on}")));
    }
    assert!(!test_run.join("_CLAIM").exists(), "the claim is released");

    // The accuracy that holds on photos unlike the training images: the same scores on the Test images
    // without a near twin in Training, checked against numpy and the classifier's own weights.
    let pca_classifier = tmp.path().join("classifier-pca-features");
    let (c, t, tr) = (
        pca_classifier.to_str().unwrap(),
        test_run.to_str().unwrap(),
        train_run.to_str().unwrap(),
    );
    let novel = verger(&["evaluate", "--model", c, t, "--novel-only-vs", tr]);
    assert_success(&novel, "evaluate --novel-only-vs");
    println!("{}", text(&novel));
    assert!(text(&novel).contains("without a near twin in"), "{}", text(&novel));
    let checked = python("check_novel.py", &[c, t, tr]);
    println!("{}", text(&checked));
    assert_success(&checked, "novel-only scores against numpy");
    let page = std::fs::read_to_string(test_run.join("report.html")).unwrap();
    assert!(
        page.contains("On photos unlike any training image"),
        "the page lacks the novel scores"
    );
    let refused = verger(&["evaluate", "--model", c, t, "--novel-only-vs", tr, "--threshold", "2"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("(0, 1]"), "{}", text(&refused));

    // Export: one ONNX file per classifier; plain onnxruntime on Pillow-resized Test photos agrees with
    // verger identify on every photo's top-1 and on every probability within 1e-4. Every 8th Test photo
    // (308, every class): identifying all 2,464 twice and checking them cost four minutes on 2 cores.
    let test_photos: Vec<String> = walk(&test);
    assert_eq!(test_photos.len(), 2464);
    let test_photos: Vec<String> = test_photos.into_iter().step_by(8).collect();
    for on in ["pca-features", "features"] {
        let classifier = tmp.path().join(format!("classifier-{on}"));
        let onnx = tmp.path().join(format!("app-{on}.onnx"));
        let exported = verger(&[
            "export",
            "--model",
            classifier.to_str().unwrap(),
            "--onnx",
            onnx.to_str().unwrap(),
        ]);
        assert_success(&exported, &format!("export {on}"));
        println!("export {on}: {}", text(&exported));
        let mut args = vec![
            "identify",
            "--model",
            classifier.to_str().unwrap(),
            "--json",
            "--top",
            "88",
            "--neighbours",
            "0",
        ];
        args.extend(test_photos.iter().map(String::as_str));
        let identified = verger(&args);
        assert_success(&identified, "identify every Test photo");
        let answers = tmp.path().join(format!("identify-{on}.json"));
        std::fs::write(&answers, &identified.stdout).unwrap();
        let checked = python(
            "check_app_model.py",
            &[onnx.to_str().unwrap(), answers.to_str().unwrap()],
        );
        println!("{on}: {}", text(&checked));
        assert_success(&checked, &format!("onnxruntime runs the app model of {on}"));
    }

    // Unknown photos: Test fruit rarely is (the rate is printed), Pillow's test photos and noise always are.
    let rule = json(&pca_classifier.join("classifier.json"))["unknown"].clone();
    assert_eq!(rule["percentile"], 99.0, "{rule}");
    assert!(rule["distance"].as_f64().unwrap() > 0.0, "{rule}");
    let answers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("identify-pca-features.json")).unwrap()).unwrap();
    let answers = answers.as_array().unwrap();
    let unknown = answers
        .iter()
        .filter(|a| a["identified"]["unknown"].as_bool().unwrap())
        .count();
    let rate = unknown as f64 / answers.len() as f64;
    println!(
        "false-unknown rate on {} Test photos: {rate:.4} ({unknown})",
        answers.len()
    );
    assert!(
        rate <= 0.05,
        "{unknown} of {} Test photos called unknown",
        answers.len()
    );
    let strangers = tmp.path().join("strangers");
    assert_success(
        &python("noise_photo.py", &[strangers.to_str().unwrap(), "5"]),
        "noise photos",
    );
    let pillow = verger_testdata::shared_dir().join("datasets/pillow-test-images");
    let mut args = vec!["identify", "--model", c, "--json"];
    let mut photos: Vec<String> = ["flower.jpg", "hopper.jpg", "iptc.jpg", "xmp_test.jpg", "pil123rgba.png"]
        .iter()
        .map(|p| pillow.join(p).to_string_lossy().into_owned())
        .collect();
    photos.extend((0..5).map(|i| strangers.join(format!("noise_{i}.jpg")).to_string_lossy().into_owned()));
    args.extend(photos.iter().map(String::as_str));
    let identified = verger(&args);
    assert_success(&identified, "identify strangers");
    let answers: serde_json::Value = serde_json::from_slice(&identified.stdout).unwrap();
    for answer in answers.as_array().unwrap() {
        let novelty = answer["identified"]["novelty"].as_f64().unwrap();
        println!("{}: novelty {novelty:.2}", answer["photo"]);
        assert_eq!(answer["identified"]["unknown"], true, "{answer}");
    }
    let table = verger(&["identify", "--model", c, &photos[0]]);
    assert!(
        text(&table).contains("unknown, unlike every training image"),
        "{}",
        text(&table)
    );

    // Deterministic: the same run gives the same bytes.
    let again = tmp.path().join("classifier-again");
    assert_success(
        &verger(&["train", train_run.to_str().unwrap(), "--out", again.to_str().unwrap()]),
        "train again",
    );
    for file in ["classifier.json", "pca_model.json", "neighbours.parquet"] {
        assert!(
            std::fs::read(again.join(file)).unwrap() == std::fs::read(pca_classifier.join(file)).unwrap(),
            "{file} differs between two trainings"
        );
    }

    // The HNSW index (what more than 100,000 training images get by default), asked for here: saved with the
    // classifier and checked on loading, its recall reported; identify finds the same nearest images.
    let indexed = tmp.path().join("classifier-index");
    let trained = verger(&[
        "train",
        train_run.to_str().unwrap(),
        "--out",
        indexed.to_str().unwrap(),
        "--search",
        "approximate",
    ]);
    assert_success(&trained, "train with the index");
    let search = json(&indexed.join("training.json"))["search"].clone();
    assert_eq!(search["method"], "approximate", "{search}");
    assert_eq!(search["sample"], 1000, "{search}");
    assert!(search["recall_at_10"].as_f64().unwrap() >= 0.95, "{search}");
    assert!(indexed.join("neighbours.usearch").exists());
    assert!(
        !pca_classifier.join("neighbours.usearch").exists(),
        "an index for 7,432 images by default"
    );
    let (exact_rule, indexed_rule) = (
        json(&pca_classifier.join("classifier.json"))["unknown"]["distance"]
            .as_f64()
            .unwrap(),
        json(&indexed.join("classifier.json"))["unknown"]["distance"]
            .as_f64()
            .unwrap(),
    );
    assert!(
        (indexed_rule - exact_rule).abs() <= 0.01 * exact_rule,
        "{indexed_rule} vs {exact_rule}"
    );
    let some: Vec<String> = ["Kiwi", "Lemon", "Pomegranate", "Cherry 1", "Apple 10"]
        .iter()
        .map(|label| walk(&test.join(label))[0].clone())
        .collect();
    let nearest = |classifier: &Path| -> Vec<Vec<String>> {
        let mut args = vec!["identify", "--model", classifier.to_str().unwrap(), "--json"];
        args.extend(some.iter().map(String::as_str));
        let identified = verger(&args);
        assert_success(&identified, "identify");
        let answers: serde_json::Value = serde_json::from_slice(&identified.stdout).unwrap();
        answers
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let found = a["identified"]["neighbours"].as_array().unwrap();
                found.iter().map(|n| n["path"].as_str().unwrap().to_string()).collect()
            })
            .collect()
    };
    assert_eq!(
        nearest(&indexed),
        nearest(&pca_classifier),
        "the index finds other nearest images"
    );
    let mut damaged = std::fs::read(indexed.join("neighbours.usearch")).unwrap();
    damaged.push(0);
    std::fs::write(indexed.join("neighbours.usearch"), damaged).unwrap();
    let refused = verger(&["identify", "--model", indexed.to_str().unwrap(), &some[0]]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("neighbours.usearch is not the index the classifier was trained with"),
        "{}",
        text(&refused)
    );

    // Identify: three Test photos, an empty file and a text file; the bad ones are errors, never a crash.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("empty.jpg"), b"").unwrap();
    std::fs::write(bad.join("notes.jpg"), b"not an image").unwrap();
    let photos: Vec<std::path::PathBuf> = ["Kiwi", "Lemon", "Pomegranate"]
        .iter()
        .map(|label| {
            let mut files: Vec<_> = std::fs::read_dir(test.join(label))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files[0].clone()
        })
        .collect();
    let mut args = vec![
        "identify",
        "--model",
        pca_classifier.to_str().unwrap(),
        "--json",
        "--top",
        "3",
    ];
    args.extend(photos.iter().map(|p| p.to_str().unwrap()));
    let (empty, notes) = (bad.join("empty.jpg"), bad.join("notes.jpg"));
    args.extend([empty.to_str().unwrap(), notes.to_str().unwrap()]);
    let identified = verger(&args);
    assert_eq!(identified.status.code(), Some(3), "{}", text(&identified));
    let answers: serde_json::Value = serde_json::from_slice(&identified.stdout).unwrap();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 5);
    for (answer, label) in answers.iter().zip(["Kiwi", "Lemon", "Pomegranate"]) {
        let labels = answer["identified"]["labels"].as_array().unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels[0]["label"], label, "{answer}");
        let p: Vec<f64> = labels.iter().map(|l| l["probability"].as_f64().unwrap()).collect();
        assert!(p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0);
        let nearest = answer["identified"]["neighbours"].as_array().unwrap();
        assert_eq!(nearest.len(), 5);
        assert_eq!(nearest[0]["label"], label, "nearest training image of a {label}");
    }
    for answer in &answers[3..] {
        assert_eq!(answer["error"]["stage"], "decode", "{answer}");
        assert!(answer.get("identified").is_none());
    }
    // The table for people.
    let table = verger(&[
        "identify",
        "--model",
        pca_classifier.to_str().unwrap(),
        photos[0].to_str().unwrap(),
    ]);
    assert_success(&table, "identify as a table");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("Kiwi"),
        "{}",
        text(&table)
    );
}

#[test]
fn what_does_not_belong_together_is_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let run = tmp.path().join("small");
    assert_eq!(verger(&run_args(&input, &run, &["--k", "5"])).status.code(), Some(3));
    let classifier = tmp.path().join("classifier");
    assert_success(
        &verger(&["train", run.to_str().unwrap(), "--out", classifier.to_str().unwrap()]),
        "train on the small run",
    );

    // A run projected with another PCA model.
    let other = tmp.path().join("other");
    assert_eq!(verger(&run_args(&input, &other, &["--k", "4"])).status.code(), Some(3));
    let refused = verger(&[
        "evaluate",
        "--model",
        classifier.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    let message = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(message.contains("projected with another PCA model"), "{message}");

    // --pca-model from another featurizer, and a file that is no model: refused before any image is read.
    let mut foreign = json(&run.join("pca/model.json"));
    foreign["model_sha256"] = serde_json::json!("0".repeat(64));
    let foreign_path = tmp.path().join("foreign.json");
    std::fs::write(&foreign_path, foreign.to_string()).unwrap();
    let refused = verger(&run_args(
        &input,
        &tmp.path().join("x"),
        &["--pca-model", foreign_path.to_str().unwrap()],
    ));
    let message = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(
        message.contains("fitted on the features of model sha256 0000"),
        "{message}"
    );
    assert!(!tmp.path().join("x").exists(), "nothing written for a refused model");
    let not_a_model = tmp.path().join("notes.json");
    std::fs::write(&not_a_model, b"{\"hello\": 1}").unwrap();
    let refused = verger(&run_args(
        &input,
        &tmp.path().join("y"),
        &["--pca-model", not_a_model.to_str().unwrap()],
    ));
    assert!(
        text(&refused).contains("is not a verger PCA model"),
        "{}",
        text(&refused)
    );

    // Export with a featurizer other than the classifier's: refused, nothing written.
    let onnx = tmp.path().join("app.onnx");
    let refused = verger(&[
        "export",
        "--model",
        classifier.to_str().unwrap(),
        "--featurizer",
        not_a_model.to_str().unwrap(),
        "--onnx",
        onnx.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("refusing to use it"), "{}", text(&refused));
    assert!(!onnx.exists());

    // Classifier folders that are missing or truncated.
    let missing = verger(&[
        "evaluate",
        "--model",
        tmp.path().join("nope").to_str().unwrap(),
        run.to_str().unwrap(),
    ]);
    assert!(
        text(&missing).contains("classifier.json is missing"),
        "{}",
        text(&missing)
    );
    let truncated = tmp.path().join("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    for file in ["pca_model.json", "neighbours.parquet", "training.json"] {
        std::fs::copy(classifier.join(file), truncated.join(file)).unwrap();
    }
    let whole = std::fs::read(classifier.join("classifier.json")).unwrap();
    std::fs::write(truncated.join("classifier.json"), &whole[..whole.len() / 2]).unwrap();
    let refused = verger(&[
        "identify",
        "--model",
        truncated.to_str().unwrap(),
        input.join("Kiwi").to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("truncated or corrupt"), "{}", text(&refused));

    // Training on a run of one class, and on something that is not a finished run.
    let one = tmp.path().join("one-class");
    std::fs::create_dir_all(one.join("Kiwi")).unwrap();
    for entry in std::fs::read_dir(input.join("Kiwi")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, one.join("Kiwi").join(path.file_name().unwrap())).unwrap();
    }
    let one_run = tmp.path().join("one-run");
    assert_success(&verger(&run_args(&one, &one_run, &["--k", "2"])), "one-class run");
    let refused = verger(&[
        "train",
        one_run.to_str().unwrap(),
        "--out",
        tmp.path().join("c1").to_str().unwrap(),
    ]);
    assert!(text(&refused).contains("one class only (Kiwi)"), "{}", text(&refused));
    let refused = verger(&[
        "train",
        input.to_str().unwrap(),
        "--out",
        tmp.path().join("c2").to_str().unwrap(),
    ]);
    assert!(
        text(&refused).contains("not a finished verger run"),
        "{}",
        text(&refused)
    );
}
