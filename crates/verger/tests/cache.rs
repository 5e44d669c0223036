//! The feature cache (`--cache`): a daily run featurizes only new or changed images and still equals a run
//! from scratch on the same final images; torn parts, other pipeline identities, interrupted runs and folders
//! that are not caches.

// A build without the cluster leaves this file's cluster tests out, and with them some helpers' only use.
#![cfg_attr(not(feature = "cluster"), allow(dead_code, unused_imports))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_success, json, python, run_args, small_input, text, verger};
use verger_testdata::fruits360_dir;

/// `verger run` (k = 3, partitions of 8) into `output`, with `extra`; exit status 3: the broken inputs.
fn run(input: &Path, output: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = run_args(input, output, &["--k", "3", "--partition-rows", "8", "--threads", "2"]);
    args.extend(extra);
    let out = verger(&args);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    json(&output.join("report.json"))
}

fn cached_run(input: &Path, output: &Path, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--cache", cache.to_str().unwrap()];
    args.extend(extra);
    let report = run(input, output, &args);
    report["cache"].clone()
}

/// The same rows, features bit for bit, and the same PCA up to rounding: a cached run merges the PCA
/// statistics the cache stores, summed in another order than a run from scratch sums them.
fn assert_same_runs(a: &Path, b: &Path) {
    assert_success(
        &python(
            "compare_runs.py",
            &[a.to_str().unwrap(), b.to_str().unwrap(), "--pca-rtol", PCA_RTOL],
        ),
        "cached run vs run from scratch",
    );
}

const PCA_RTOL: &str = "1e-9";

/// Rows whose PCA statistics were merged from the cache, and computed.
fn pca_rows(cache: &serde_json::Value) -> [u64; 2] {
    ["pca_rows_merged", "pca_rows_computed"].map(|k| cache[k].as_u64().unwrap())
}

fn stats_files(folder: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect()
}

fn counts(cache: &serde_json::Value) -> [u64; 5] {
    ["hits", "featurized", "duplicates", "unread", "hashed"].map(|k| cache[k].as_u64().unwrap())
}

/// A Training image of `class` that the small input does not hold.
fn other_image(class: &str, index: usize) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(fruits360_dir().join("Training").join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files[8 + index].clone()
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files[0].clone()
}

/// The same bytes under two paths: featurized once.
fn copy_first_kiwi(input: &Path) {
    let kiwi = first_file(&input.join("Kiwi"));
    std::fs::copy(&kiwi, input.join("Kiwi/copy-of-first.jpg")).unwrap();
}

/// A day later: 2 new images, 1 changed, 1 deleted, 1 new path holding bytes the cache has.
fn a_day_later(input: &Path) {
    for i in 0..2 {
        std::fs::copy(other_image("Lemon", i), input.join(format!("Lemon/new-{i}.jpg"))).unwrap();
    }
    let orange = first_file(&input.join("Orange"));
    std::fs::copy(other_image("Orange", 0), &orange).unwrap();
    let mut kiwis: Vec<_> = std::fs::read_dir(input.join("Kiwi"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    kiwis.sort();
    std::fs::remove_file(&kiwis[1]).unwrap();
    std::fs::copy(first_file(&input.join("Lemon")), input.join("Orange/moved-lemon.jpg")).unwrap();
}

#[test]
fn a_daily_run_featurizes_only_what_changed_and_equals_a_run_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let cache = tmp.path().join("cache");
    copy_first_kiwi(&input);

    // The first run fills the cache, and equals a run without one.
    let first = cached_run(&input, &tmp.path().join("first"), &cache, &[]);
    // 27 listed: 24 images, their copy and 2 broken files (hashed like the others; never cached).
    assert_eq!(counts(&first), [0, 26, 1, 0, 27], "{first}");
    assert_eq!(first["added_rows"], 25, "24 images and the copy's listing: {first}");
    assert_eq!(pca_rows(&first), [0, 25], "24 images and the copy summarised: {first}");
    run(&input, &tmp.path().join("first-from-scratch"), &[]);
    assert_same_runs(&tmp.path().join("first"), &tmp.path().join("first-from-scratch"));

    a_day_later(&input);
    let daily = cached_run(&input, &tmp.path().join("daily"), &cache, &[]);
    // 29 listed: 2 new + 1 changed + 2 broken featurized; the moved image and the rest from the cache; only
    // the new, changed, moved and broken files read.
    assert_eq!(counts(&daily), [24, 5, 0, 23, 6], "{daily}");
    assert!(daily["saved_s"].as_f64().unwrap() > 0.0, "{daily}");
    // The PCA statistics of the first run's 24 images merged, not summarised again: only the 3 new ones
    // computed, the 2 whose bytes are gone taken out, and the 2 held twice (the copy, the moved image) added.
    assert_eq!(pca_rows(&daily), [24, 7], "{daily}");
    run(&input, &tmp.path().join("daily-from-scratch"), &[]);
    assert_same_runs(&tmp.path().join("daily"), &tmp.path().join("daily-from-scratch"));
    let page = std::fs::read_to_string(tmp.path().join("daily/report.html")).unwrap();
    assert!(
        page.contains("Feature cache") && page.contains("from the cache"),
        "the page shows no cache"
    );

    // --verify-cache reads every image, and finds the same.
    let verified = cached_run(&input, &tmp.path().join("verified"), &cache, &["--verify-cache"]);
    assert_eq!(counts(&verified), [27, 2, 0, 0, 29], "{verified}");
    assert_same_runs(&tmp.path().join("verified"), &tmp.path().join("daily-from-scratch"));

    // Torn PCA statistics are ignored and the rows summarised again: the same output.
    let stats = stats_files(&only_identity(&cache));
    assert_eq!(stats.len(), 1, "one statistics file, the others replaced: {stats:?}");
    let bytes = std::fs::read(&stats[0]).unwrap();
    std::fs::write(&stats[0], &bytes[..bytes.len() - 8]).unwrap();
    let torn_stats = cached_run(&input, &tmp.path().join("torn-stats"), &cache, &[]);
    let ignored = torn_stats["ignored_parts"].as_array().unwrap();
    assert!(
        ignored.len() == 1 && ignored[0].as_str().unwrap().contains("torn or corrupt"),
        "{torn_stats}"
    );
    assert_eq!(pca_rows(&torn_stats)[0], 0, "{torn_stats}");
    assert_same_runs(&tmp.path().join("torn-stats"), &tmp.path().join("daily-from-scratch"));

    // A torn part is ignored and its images featurized again: the same output.
    let folder = only_identity(&cache);
    let mut parts: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    let bytes = std::fs::read(&parts[0]).unwrap();
    std::fs::write(&parts[0], &bytes[..bytes.len() - 100]).unwrap();
    let torn = cached_run(&input, &tmp.path().join("torn"), &cache, &[]);
    // The part, and the statistics that cover it.
    let ignored: Vec<&str> = torn["ignored_parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        ignored.len() == 2 && ignored[0].contains("unreadable") && ignored[1].contains("was not read"),
        "{torn}"
    );
    assert!(torn["featurized"].as_u64().unwrap() > 2, "{torn}");
    assert_same_runs(&tmp.path().join("torn"), &tmp.path().join("daily-from-scratch"));

    // Features of another pipeline identity are not used, and the report says they are there.
    std::fs::rename(&folder, cache.join("features-0123456789abcdef")).unwrap();
    let other = cached_run(&input, &tmp.path().join("other"), &cache, &[]);
    assert_eq!(
        other["other_identities"],
        serde_json::json!(["features-0123456789abcdef"]),
        "{other}"
    );
    // Both copies are of images still there: featurized once each.
    assert_eq!(counts(&other), [0, 27, 2, 0, 29], "{other}");
}

/// The same days on a cluster (a scheduler and two executors, processes of their own): the cache's misses
/// featurized by the executors, the rest from the cache, and each day's output that of a local run from scratch.
#[test]
#[cfg(feature = "cluster")]
fn a_daily_run_on_a_cluster_featurizes_only_what_changed_and_equals_a_local_run_from_scratch() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    copy_first_kiwi(&input);
    let cache = tmp.path().join("cache");
    let (_processes, url) = common::cluster(tmp.path(), 0, &[]);
    let on_cluster = ["--cluster", url.as_str()];
    let executor_logs = || -> String {
        (0..2)
            .map(|i| std::fs::read_to_string(tmp.path().join(format!("executor-{i}.log"))).unwrap())
            .collect()
    };

    let first = cached_run(&input, &tmp.path().join("first"), &cache, &on_cluster);
    assert_eq!(counts(&first), [0, 26, 1, 0, 27], "{first}");
    assert_eq!(pca_rows(&first), [0, 25], "{first}");
    run(&input, &tmp.path().join("first-from-scratch"), &[]);
    assert_same_runs(&tmp.path().join("first"), &tmp.path().join("first-from-scratch"));
    // The executors featurized the misses: they wrote the fresh partitions.
    let fresh_files = |log: &str| {
        log.lines()
            .filter(|l| l.contains("output_file: written") && l.contains("_staging/fresh/part-"))
            .count()
    };
    let written_first = fresh_files(&executor_logs());
    assert!(written_first > 0, "no executor featurized the misses");

    a_day_later(&input);
    let daily = cached_run(&input, &tmp.path().join("daily"), &cache, &on_cluster);
    assert_eq!(counts(&daily), [24, 5, 0, 23, 6], "{daily}");
    assert_eq!(pca_rows(&daily), [24, 7], "{daily}");
    run(&input, &tmp.path().join("daily-from-scratch"), &[]);
    assert_same_runs(&tmp.path().join("daily"), &tmp.path().join("daily-from-scratch"));
    assert!(
        fresh_files(&executor_logs()) > written_first,
        "no executor featurized the second day's misses"
    );
}

#[test]
fn an_interrupted_cached_run_resumes_with_what_it_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let cache = tmp.path().join("cache");
    let output = tmp.path().join("out");
    let mut args = run_args(
        &input,
        &output,
        &["--k", "3", "--partition-rows", "8", "--threads", "2"],
    );
    args.extend(["--cache", cache.to_str().unwrap()]);
    let crashed = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(&args)
        .env("VERGER_ABORT_AT", "featurize:8")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "{}", text(&crashed));
    assert!(text(&crashed).contains("aborting at featurize:8"), "{}", text(&crashed));

    args.push("--resume");
    let resumed = verger(&args);
    assert_eq!(resumed.status.code(), Some(3), "{}", text(&resumed));
    let report = json(&output.join("report.json"));
    let hits = report["cache"]["hits"].as_u64().unwrap();
    assert!(
        hits >= 4,
        "the resumed run did not use what the first attempt cached: {}",
        report["cache"]
    );
    run(&input, &tmp.path().join("from-scratch"), &[]);
    assert_same_runs(&output, &tmp.path().join("from-scratch"));
}

#[test]
fn a_folder_that_is_not_a_cache_is_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let output = tmp.path().join("out");
    let mut args = run_args(&input, &output, &[]);
    args.extend(["--cache", input.to_str().unwrap()]);
    let refused = verger(&args);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("not a verger feature cache"),
        "{}",
        text(&refused)
    );
    assert!(!output.join("_SUCCESS").exists() && !output.join("manifest").exists());
    let verify_alone = verger(&run_args(&input, &output, &["--verify-cache"]));
    assert_eq!(verify_alone.status.code(), Some(2), "{}", text(&verify_alone));
}

fn only_identity(cache: &Path) -> PathBuf {
    let folders: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders[0].clone()
}
