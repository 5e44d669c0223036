//! The run report as a page, the cost of a run and `verger estimate`, end to end: real runs, the page opened in
//! a real headless Chromium, the estimate made on the shared Test split.

mod common;

use std::path::Path;

use common::{assert_success, copy_images, json, python, run_args, small_input, text, verger};
use verger_testdata::fruits360_dir;

/// A label with every character HTML gives a meaning to.
const ODD_LABEL: &str = r#"Papaya <b>&amp; "Co" 'x'"#;

/// The test's output folder, kept after the test so that people can look at the screenshots.
fn kept(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn check_page(page: &Path, screenshot: &str, extra: &[&str]) -> String {
    let shot = kept(screenshot);
    let mut args = vec![page.to_str().unwrap(), shot.to_str().unwrap()];
    args.extend_from_slice(extra);
    let checked = python("check_report_page.py", &args);
    assert_success(&checked, "the page in Chromium");
    assert!(shot.is_file(), "no screenshot");
    String::from_utf8_lossy(&checked.stdout).into_owned()
}

#[test]
fn every_run_writes_a_page_that_a_real_browser_shows_whole_and_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    small_input(&input);
    copy_images("Papaya", &input.join(ODD_LABEL), 8);
    let run = verger(&run_args(
        &input,
        &output,
        &[
            "--k",
            "5",
            "--threads",
            "2",
            "--partition-rows",
            "5",
            "--instance-type",
            "c5.xlarge",
        ],
    ));
    assert_eq!(run.status.code(), Some(3), "{}", text(&run));
    assert!(
        text(&run).contains("report.html"),
        "the run names its page: {}",
        text(&run)
    );

    let report = json(&output.join("report.json"));
    assert_eq!(report["counts"]["featurized"], 32);
    // Throughput over time counts every listed image once.
    let intervals = report["throughput"]["images"].as_array().unwrap();
    let done: u64 = intervals.iter().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(done, 34, "{:?}", report["throughput"]);
    assert!(report["throughput"]["interval_s"].as_f64().unwrap() > 0.0);
    // Priced as asked, against the original set-up.
    let cost = &report["cost"];
    assert_eq!(cost["instance_type"], "c5.xlarge");
    assert_eq!(cost["region"], "eu-west-1");
    let (usd, wall) = (cost["usd"].as_f64().unwrap(), report["wall_s"].as_f64().unwrap());
    let hourly = cost["usd_per_node_hour"].as_f64().unwrap();
    assert!((usd - wall / 3600.0 * hourly).abs() < 1e-9, "{cost}");
    assert!((cost["usd_per_million_images"].as_f64().unwrap() - usd / 32.0 * 1e6).abs() < 1e-6);
    assert_eq!(cost["original"]["images_per_s"], 416.0);
    assert!(cost["saving"].as_f64().unwrap() > 0.0);
    assert_eq!(report["pca"]["spectrum"].as_array().unwrap().len(), 1280);
    assert_eq!(report["versions"]["pca_model_sha256"].as_str().unwrap().len(), 64);

    // The label is text in the page, never markup.
    let html = std::fs::read_to_string(output.join("report.html")).unwrap();
    assert!(!html.contains("<b>&amp;"), "a label went into the page unescaped");
    assert!(html.contains("Papaya &lt;b&gt;&amp;amp; "), "the label, escaped");
    assert!(!html.contains(r#""Co""#) && !html.contains("'x'"), "quotes escaped too");
    let checked = check_page(&output.join("report.html"), "run.png", &["--label", ODD_LABEL]);
    assert!(checked.contains("\"points\": 32"), "{checked}");

    // Evaluated: the page gains the classifier's scores and confusion matrix.
    let classifier = tmp.path().join("classifier");
    assert_success(
        &verger(&["train", output.to_str().unwrap(), "--out", classifier.to_str().unwrap()]),
        "verger train",
    );
    assert_success(
        &verger(&[
            "evaluate",
            "--model",
            classifier.to_str().unwrap(),
            output.to_str().unwrap(),
        ]),
        "verger evaluate",
    );
    let report = json(&output.join("report.json"));
    let confusion = &report["evaluations"][0]["confusion"];
    assert_eq!(confusion["labels"].as_array().unwrap().len(), 4, "{confusion}");
    let cells: u64 = confusion["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[2].as_u64().unwrap())
        .sum();
    assert_eq!(cells, 32);
    check_page(
        &output.join("report.html"),
        "evaluated.png",
        &["--label", ODD_LABEL, "--evaluated"],
    );

    // `verger report` writes the same page again from the output.
    let page = std::fs::read(output.join("report.html")).unwrap();
    std::fs::remove_file(output.join("report.html")).unwrap();
    let again = verger(&["report", output.to_str().unwrap()]);
    assert_success(&again, "verger report");
    assert_eq!(std::fs::read(output.join("report.html")).unwrap(), page);
    let missing = verger(&["report", tmp.path().join("nothing").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("has no report.json"), "{}", text(&missing));
}

#[test]
fn a_run_that_featurizes_nothing_still_reports_why() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(input.join("Broken")).unwrap();
    std::fs::write(input.join("Broken/empty.jpg"), b"").unwrap();
    std::fs::write(input.join("Broken/notes.jpg"), b"this is not an image").unwrap();
    let run = verger(&run_args(&input, &output, &["--k", "5"]));
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(text(&run).contains("no image could be featurized"), "{}", text(&run));
    assert!(!output.join("_SUCCESS").exists());
    let report = json(&output.join("report.json"));
    assert_eq!(report["counts"]["featurized"], 0);
    assert_eq!(report["counts"]["failed"], 2);
    assert!(report["pca"].is_null());
    assert!(report["cost"]["usd_per_million_images"].is_null());
    check_page(&output.join("report.html"), "nothing-featurized.png", &["--failed-run"]);
    let html = std::fs::read_to_string(output.join("report.html")).unwrap();
    assert!(
        html.contains("empty file") && html.contains("cannot identify image file"),
        "reasons shown"
    );
}

#[test]
fn price_tables_that_cannot_price_the_run_stop_it_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let output = tmp.path().join("out");
    let header = "instance_type,region,vcpus,ec2_usd_per_hour,emr_uplift_usd_per_hour,as_of,source\n";
    let malformed = tmp.path().join("malformed.csv");
    std::fs::write(
        &malformed,
        format!("{header}m5.xlarge,eu-west-1,4,0.214,0.048,2024-06,x\nc5.xlarge,eu-west-1,4,a lot,0.048,2024-06,x\n"),
    )
    .unwrap();
    let cases: [(Vec<&str>, &str); 3] = [
        (vec!["--prices", malformed.to_str().unwrap()], "line 3"),
        (vec!["--instance-type", "m9.huge"], "no price for m9.huge in eu-west-1"),
        (vec!["--price-region", "mars-1"], "no prices in region mars-1"),
    ];
    for (extra, expected) in cases {
        let run = verger(&run_args(&input, &output, &extra));
        assert_eq!(run.status.code(), Some(1), "{extra:?}: {}", text(&run));
        assert!(text(&run).contains(expected), "{extra:?}: {}", text(&run));
        assert!(text(&run).contains("price table"), "{}", text(&run));
        assert!(
            !output.exists(),
            "{extra:?}: nothing may be written before the run is priced"
        );
    }
}

#[test]
fn estimate_extrapolates_a_sample_to_the_whole_input_and_to_clusters() {
    let test = fruits360_dir().join("Test");
    let out = verger(&[
        "estimate",
        "--input",
        test.to_str().unwrap(),
        "--sample",
        "30",
        "--threads",
        "2",
        "--json",
    ]);
    assert_success(&out, "verger estimate --json");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["images"], 2464);
    assert_eq!(e["labels"], 88);
    assert_eq!(e["sampled"], 30);
    assert_eq!(e["sample_failed"], 0);
    let bytes: u64 = walk_sizes(&test);
    assert_eq!(e["bytes"], bytes);
    let rate = e["images_per_s"].as_f64().unwrap();
    assert!(rate > 1.0, "{e}");
    let here = e["here"]["wall_s"].as_f64().unwrap();
    assert!((here - (e["list_s"].as_f64().unwrap() + 2464.0 / rate)).abs() < 1e-6);
    let clusters = e["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 4);
    let walls: Vec<f64> = clusters.iter().map(|c| c["wall_s"].as_f64().unwrap()).collect();
    assert!(
        walls.windows(2).all(|w| w[1] < w[0]),
        "more executors, less time: {walls:?}"
    );
    assert_eq!(clusters[3]["nodes"], 17);
    let cpu_hours = 2464.0 * e["cpu_ms_per_image"].as_f64().unwrap() / 1000.0 / 3600.0;
    assert!((e["here"]["cpu_hours"].as_f64().unwrap() - cpu_hours).abs() < 1e-9);
    assert!(e["original"]["usd"].as_f64().unwrap() > 0.0);
    assert!(!e["assumptions"].as_array().unwrap().is_empty());

    // The table for people, with the same sample.
    let out = verger(&[
        "estimate",
        "--input",
        test.to_str().unwrap(),
        "--sample",
        "10",
        "--threads",
        "2",
    ]);
    assert_success(&out, "verger estimate");
    let table = String::from_utf8_lossy(&out.stdout);
    for needed in ["2464 images", "16 executors", "EMR 6.7", "assumptions:", "prices:"] {
        assert!(table.contains(needed), "{needed} missing from:\n{table}");
    }
    let bad = verger(&[
        "estimate",
        "--input",
        test.to_str().unwrap(),
        "--instance-type",
        "m9.huge",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("no price for m9.huge"), "{}", text(&bad));
}

/// Bytes of every .jpg under `dir`.
fn walk_sizes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "jpg") {
                total += path.metadata().unwrap().len();
            }
        }
    }
    total
}
