//! `verger quality` on planted problems in a copy of the shared Training split (wrong labels, re-encoded and
//! exact duplicates, non-fruit photos), checked against what was planted, cleanlab and a numpy oracle
//! (`tests/python/check_quality.py`), and on bad input.

mod common;

use common::{assert_success, json, python, run_args, small_input, text, verger};
use verger_testdata::{fruits360_dir, shared_dir};

#[test]
fn planted_problems_are_found_and_leakage_matches_numpy() {
    let tmp = tempfile::tempdir().unwrap();
    let (planted, manifest) = (tmp.path().join("planted"), tmp.path().join("planted.json"));
    let pillow = shared_dir().join("datasets/pillow-test-images");
    assert_success(
        &python(
            "plant_quality.py",
            &[
                fruits360_dir().join("Training").to_str().unwrap(),
                pillow.to_str().unwrap(),
                planted.to_str().unwrap(),
                manifest.to_str().unwrap(),
            ],
        ),
        "plant problems",
    );
    let (run, test_run) = (tmp.path().join("run"), tmp.path().join("test"));
    assert_success(&verger(&run_args(&planted, &run, &[])), "run on the planted copy");
    let model = run.join("pca/model.json");
    let test = fruits360_dir().join("Test");
    assert_success(
        &verger(&run_args(&test, &test_run, &["--pca-model", model.to_str().unwrap()])),
        "Test run with the planted run's PCA",
    );

    let checked = verger(&["quality", run.to_str().unwrap()]);
    assert_success(&checked, "quality");
    let printed = text(&checked);
    println!("{printed}");
    assert!(
        printed.contains("exact duplicates: ") && printed.contains("likely wrong labels"),
        "{printed}"
    );
    let against = verger(&[
        "quality",
        test_run.to_str().unwrap(),
        "--against",
        run.to_str().unwrap(),
    ]);
    assert_success(&against, "quality of Test against the planted Training");
    assert!(text(&against).contains("have a near twin in"), "{}", text(&against));

    // The same check through the HNSW index (what more than 100,000 images get by default): its recall
    // reported, the planted problems still found (check_quality.py below reads these results), the exact
    // duplicates the same.
    let exact = json(&run.join("quality/summary.json"));
    let approximate = verger(&["quality", run.to_str().unwrap(), "--search", "approximate"]);
    assert_success(&approximate, "quality through the index");
    assert!(text(&approximate).contains("recall@10"), "{}", text(&approximate));
    let indexed = json(&run.join("quality/summary.json"));
    assert_eq!(indexed["search"]["method"], "approximate", "{}", indexed["search"]);
    assert_eq!(indexed["search"]["sample"], 1000);
    assert!(
        indexed["search"]["recall_at_10"].as_f64().unwrap() >= 0.95,
        "{}",
        indexed["search"]
    );
    assert_eq!(exact["search"]["method"], "exact");
    assert_eq!(indexed["exact_duplicates"], exact["exact_duplicates"]);
    let near = |s: &serde_json::Value| s["near_duplicate_images"].as_f64().unwrap();
    assert!(
        (near(&indexed) - near(&exact)).abs() <= 0.01 * near(&exact),
        "{} vs {}",
        near(&indexed),
        near(&exact)
    );
    assert!(std::fs::read_to_string(run.join("report.html"))
        .unwrap()
        .contains("HNSW index"));

    let verdict = python(
        "check_quality.py",
        &[
            run.to_str().unwrap(),
            test_run.to_str().unwrap(),
            manifest.to_str().unwrap(),
        ],
    );
    println!("{}", text(&verdict));
    assert_success(&verdict, "the findings against what was planted, cleanlab and numpy");

    // The report and its page carry the section; the page names no photo by thumbnail.
    let report = json(&run.join("report.json"));
    assert_eq!(
        report["quality"]["rows"],
        json(&run.join("quality/summary.json"))["rows"]
    );
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        page.contains("Data quality") && page.contains("Likely wrong labels"),
        "no quality section"
    );
    assert!(!page.contains("data:image"), "thumbnails without --thumbnails");
    let test_page = std::fs::read_to_string(test_run.join("report.html")).unwrap();
    assert!(
        test_page.contains("have a near twin"),
        "the Test page states its leakage"
    );
    assert!(!run.join("_CLAIM").exists(), "the claim is released");

    // --overwrite replaces what quality wrote with the rest of the run.
    assert!(run.join("quality/images.parquet").exists());
    assert_success(
        &verger(&run_args(&fruits360_dir().join("Test"), &run, &["--overwrite"])),
        "overwrite the checked run",
    );
    assert!(!run.join("quality").exists(), "--overwrite left the old run's quality/");
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let run = tmp.path().join("small");
    assert_eq!(verger(&run_args(&input, &run, &["--k", "5"])).status.code(), Some(3));
    let r = run.to_str().unwrap();

    for threshold in ["0", "1.5", "-0.2", "nan"] {
        let refused = verger(&["quality", r, &format!("--threshold={threshold}")]);
        assert_eq!(refused.status.code(), Some(2), "{threshold}: {}", text(&refused));
        assert!(text(&refused).contains("(0, 1]"), "{}", text(&refused));
    }
    let refused = verger(&["quality", r, "--folds", "1"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("--folds"), "{}", text(&refused));

    // Not a run.
    let refused = verger(&["quality", input.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("not a finished verger run"),
        "{}",
        text(&refused)
    );

    // Runs with their own PCA bases: their features compare, but the runs do not belong together.
    let other = tmp.path().join("other");
    assert_eq!(verger(&run_args(&input, &other, &["--k", "4"])).status.code(), Some(3));
    let refused = verger(&["quality", r, "--against", other.to_str().unwrap()]);
    let message = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(
        message.contains("different PCA models") && message.contains(r) && message.contains(other.to_str().unwrap()),
        "{message}"
    );

    // A run in which every image failed.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(broken.join("Broken")).unwrap();
    std::fs::write(broken.join("Broken/empty.jpg"), b"").unwrap();
    std::fs::write(broken.join("Broken/notes.jpg"), b"not an image").unwrap();
    let failed_run = tmp.path().join("failed");
    let ran = verger(&run_args(&broken, &failed_run, &[]));
    assert_ne!(ran.status.code(), Some(0), "{}", text(&ran));
    let refused = verger(&["quality", failed_run.to_str().unwrap()]);
    let message = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(message.contains("no featurized images"), "{message}");

    for checked in [&run, &other, &failed_run] {
        assert!(
            !checked.join("quality").exists(),
            "a refused check wrote {}",
            checked.display()
        );
    }

    // The small run itself checks (24 images, 3 labels, no PCA issue): one line a finding.
    let checked = verger(&["quality", r, "--neighbours", "3", "--folds", "2"]);
    assert_success(&checked, "quality of the small run");
    let summary = json(&run.join("quality/summary.json"));
    assert_eq!(summary["rows"], 24);
    assert_eq!(summary["neighbours"], 3);
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(!page.contains("data:image") && !run.join("quality/thumbnails.json").exists());

    // Thumbnails only when asked for, and gone with the next check that does not ask.
    let checked = verger(&["quality", r, "--neighbours", "3", "--folds", "2", "--thumbnails"]);
    assert_success(&checked, "quality --thumbnails");
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    let shown = page.matches("src=\"data:image&#x2f;jpeg;base64,").count()
        + page.matches("src=\"data:image/jpeg;base64,").count();
    assert!(shown >= 20, "{shown} thumbnails on the page");
    assert!(run.join("quality/thumbnails.json").exists());
    let page_path = run.join("report.html");
    let shot = tmp.path().join("quality.png");
    let (page_arg, shot_arg) = (page_path.to_str().unwrap(), shot.to_str().unwrap());
    let drawn = python(
        "check_report_page.py",
        &[page_arg, shot_arg, "--quality", "--thumbnails"],
    );
    println!("{}", text(&drawn));
    assert_success(&drawn, "Chromium shows the quality section and its thumbnails");
    // `verger report` renders the page again from the files, thumbnails included.
    assert_success(&verger(&["report", r]), "report");
    let again = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(again.contains("data:image"), "the rewritten page lost its thumbnails");
    assert_success(
        &verger(&["quality", r, "--neighbours", "3", "--folds", "2"]),
        "quality again",
    );
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(!page.contains("data:image") && !run.join("quality/thumbnails.json").exists());
    let drawn = python("check_report_page.py", &[page_arg, shot_arg, "--quality"]);
    assert_success(&drawn, "Chromium shows the quality section without thumbnails");
}
