//! Exactly-once resume: a run killed at any point, then resumed, ends with the bytes of an uninterrupted run.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{run_args, small_input, verger};
use verger_testdata::fruits360_dir;

const SMALL_RUN: [&str; 6] = ["--k", "5", "--partition-rows", "4", "--batch-size", "2"];

/// Every committed output file, by path relative to the output folder (the report's timings excepted).
fn committed_files(output: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in ["result", "errors", "pca", "manifest"] {
        let mut names: Vec<_> = std::fs::read_dir(output.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for path in names {
            let name = path.strip_prefix(output).unwrap().display().to_string();
            if name.ends_with("part-00000.parquet") && name.starts_with("manifest") {
                continue; // holds modification times, identical anyway; compared through the rows below
            }
            files.push((name, std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn assert_same_output(resumed: &Path, baseline: &Path, what: &str) {
    assert!(resumed.join("_SUCCESS").exists(), "{what}: no _SUCCESS");
    assert!(!resumed.join("_staging").exists(), "{what}: staging left behind");
    let (got, want) = (committed_files(resumed), committed_files(baseline));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{what}: different files");
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        assert!(a == b, "{what}: {name} differs from the uninterrupted run");
    }
}

#[test]
fn a_run_aborted_at_any_commit_point_resumes_to_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let baseline = tmp.path().join("baseline");
    assert_eq!(verger(&run_args(&input, &baseline, &SMALL_RUN)).status.code(), Some(3));

    for point in [
        "listed",
        "manifest",
        "featurize:1",
        "featurize:4",
        "errors",
        "pca",
        "write:3",
        "report",
    ] {
        let output = tmp.path().join(point.replace(':', "-"));
        let aborted = Command::new(env!("CARGO_BIN_EXE_verger"))
            .args(run_args(&input, &output, &SMALL_RUN))
            .env("VERGER_ABORT_AT", point)
            .output()
            .unwrap();
        assert_eq!(aborted.status.code(), None, "{point}: the hook must abort the process");
        assert!(
            !output.join("_SUCCESS").exists(),
            "{point}: an aborted run must not look finished"
        );

        if point == "listed" {
            // Nothing is written before the manifest but the claim (unlocked, since its process is gone).
            let written: Vec<_> = std::fs::read_dir(&output)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(written, ["_CLAIM"], "listed: nothing written before the manifest");
        } else {
            let refused = verger(&run_args(&input, &output, &SMALL_RUN));
            assert_eq!(
                refused.status.code(),
                Some(1),
                "{point}: unfinished output taken without --resume"
            );
        }

        let mut resume = SMALL_RUN.to_vec();
        resume.push("--resume");
        let resumed = verger(&run_args(&input, &output, &resume));
        assert_eq!(
            resumed.status.code(),
            Some(3),
            "{point}: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert_same_output(&output, &baseline, point);
    }
}

/// A real `kill -9` in the middle of featurization, with more work left to do.
#[test]
fn a_killed_run_resumes_to_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    for class in ["Pear", "Plum", "Quince"] {
        let from = fruits360_dir().join("Training").join(class);
        std::fs::create_dir_all(input.join(class)).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, input.join(class).join(path.file_name().unwrap())).unwrap();
        }
    }
    let extra = ["--k", "8", "--partition-rows", "6", "--batch-size", "2"];
    let baseline = tmp.path().join("baseline");
    assert!(verger(&run_args(&input, &baseline, &extra)).status.success());

    let output = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(run_args(&input, &output, &extra))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staged = |n: usize| {
        std::fs::read_dir(output.join("_staging"))
            .map(|d| {
                d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("part-"))
                    .count()
                    >= n
            })
            .unwrap_or(false)
    };
    let started = Instant::now();
    while !staged(3) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no partition committed in time"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!output.join("_SUCCESS").exists());

    let mut resume = extra.to_vec();
    resume.push("--resume");
    let resumed = verger(&run_args(&input, &output, &resume));
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_same_output(&output, &baseline, "kill -9");
}

#[test]
fn max_errors_stops_the_run_and_resume_of_a_finished_run_does_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let output = tmp.path().join("out");
    let mut strict = SMALL_RUN.to_vec();
    strict.extend(["--max-errors", "1"]);
    let stopped = verger(&run_args(&input, &output, &strict));
    assert_eq!(stopped.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("more than the 1 that --max-errors allows"));
    assert!(!output.join("_SUCCESS").exists());

    let mut tolerant = SMALL_RUN.to_vec();
    tolerant.extend(["--max-errors", "10%", "--resume"]);
    assert_eq!(verger(&run_args(&input, &output, &tolerant)).status.code(), Some(3));
    let again = verger(&run_args(&input, &output, &tolerant));
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already complete"));
}

/// With pseudonymized paths the real manifest waits in staging, so a resumed run still finds every image.
#[test]
fn a_pseudonymized_run_resumes_to_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let key = tmp.path().join("key");
    common::key_file(&key, b"another-key-of-at-least-32-bytes-long");
    let mut args = SMALL_RUN.to_vec();
    args.extend(["--pseudonymize-paths", key.to_str().unwrap()]);
    let baseline = tmp.path().join("baseline");
    assert_eq!(verger(&run_args(&input, &baseline, &args)).status.code(), Some(3));

    let output = tmp.path().join("aborted");
    let aborted = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(run_args(&input, &output, &args))
        .env("VERGER_ABORT_AT", "featurize:2")
        .output()
        .unwrap();
    assert_eq!(aborted.status.code(), None);
    args.push("--resume");
    assert_eq!(verger(&run_args(&input, &output, &args)).status.code(), Some(3));
    assert_same_output(&output, &baseline, "pseudonymized resume");
    assert_eq!(
        std::fs::read(output.join("manifest/part-00000.parquet")).unwrap(),
        std::fs::read(baseline.join("manifest/part-00000.parquet")).unwrap()
    );
}

/// Issue 41, point 4: `--resume` continues only the run that was started there. Another input, glob,
/// partitioning or pseudonymisation key is refused, naming what differs, and leaves the staged work as it was;
/// the same command then resumes it to the uninterrupted run's output.
#[test]
fn resume_refuses_a_run_made_otherwise() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let other = tmp.path().join("other");
    common::copy_images("Kiwi", &other.join("Kiwi"), 4);
    common::copy_images("Lemon", &other.join("Lemon"), 4);
    let baseline = tmp.path().join("baseline");
    assert_eq!(verger(&run_args(&input, &baseline, &SMALL_RUN)).status.code(), Some(3));

    let output = tmp.path().join("aborted");
    let aborted = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(run_args(&input, &output, &SMALL_RUN))
        .env("VERGER_ABORT_AT", "featurize:2")
        .output()
        .unwrap();
    assert_eq!(aborted.status.code(), None);
    let staged = || {
        let mut names: Vec<_> = std::fs::read_dir(output.join("_staging"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = staged();

    let key = tmp.path().join("key");
    common::key_file(&key, b"a-key-of-at-least-32-bytes-for-hmac-sha256");
    let with = |extra: &[&str]| {
        let mut args = SMALL_RUN.to_vec();
        args.extend_from_slice(extra);
        args.push("--resume");
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let cases: [(&Path, Vec<String>, &str); 4] = [
        (&other, with(&[]), "input: "),
        (&input, with(&["--glob", "*.JPG"]), "globs: "),
        (
            &input,
            with(&["--pseudonymize-paths", key.to_str().unwrap()]),
            "pseudonymised",
        ),
        (
            &input,
            ["--k", "5", "--partition-rows", "5", "--resume"]
                .map(String::from)
                .to_vec(),
            "--partition-rows: 4 when it started, 5 now",
        ),
    ];
    for (from, args, says) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let refused = verger(&run_args(from, &output, &args));
        let text = common::text(&refused);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains("--resume refused") && text.contains(says),
            "{args:?}: {text}"
        );
        assert_eq!(staged(), before, "{args:?}: the staged work is untouched");
    }

    let mut same = SMALL_RUN.to_vec();
    same.push("--resume");
    assert_eq!(verger(&run_args(&input, &output, &same)).status.code(), Some(3));
    assert_same_output(&output, &baseline, "resumed after refusals");
}
