//! One writer per output, and a commit that checks itself, on a local output: two runs started at once leave
//! one complete result and one clear refusal; files removed by hand between stages are caught before
//! `_SUCCESS`. (Object stores: `s3.rs`.)

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_success, python, run_args, small_input, verger};

const SMALL_RUN: [&str; 6] = ["--k", "5", "--partition-rows", "4", "--batch-size", "2"];

fn spawn(args: &[&str], env: &[(&str, &str)], stderr: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("verger starts")
}

fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `log` contains `needle`.
fn wait_for(log: &Path, needle: &str) {
    let started = Instant::now();
    while !text(log).contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{needle:?} never came:\n{}",
            text(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn simultaneous_runs_on_one_output_leave_one_complete_result() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let baseline = tmp.path().join("baseline");
    assert_eq!(verger(&run_args(&input, &baseline, &SMALL_RUN)).status.code(), Some(3));

    let mut collisions = 0;
    for pair in 0..10 {
        let output = tmp.path().join(format!("pair-{pair}"));
        let args = run_args(&input, &output, &SMALL_RUN);
        let logs = [0, 1].map(|i| tmp.path().join(format!("pair-{pair}-{i}.log")));
        let children = [spawn(&args, &[], &logs[0]), spawn(&args, &[], &logs[1])];
        let codes: Vec<Option<i32>> = children.into_iter().map(|mut c| c.wait().unwrap().code()).collect();
        let (won, lost) = match codes.as_slice() {
            [Some(3), Some(1)] => (0, 1),
            [Some(1), Some(3)] => (1, 0),
            other => panic!(
                "pair {pair}: exit statuses {other:?}, want one 3 and one 1:\n{}\n{}",
                text(&logs[0]),
                text(&logs[1])
            ),
        };
        let refusal = text(&logs[lost]);
        if refusal.contains("is being written by another verger run") {
            collisions += 1;
            assert!(
                refusal.contains("pid ") && refusal.contains("started at"),
                "the refusal names the other run: {refusal}"
            );
        } else {
            // The other run had already finished: an existing output is refused as ever.
            assert!(refusal.contains("already exists"), "pair {pair}: {refusal}");
        }
        assert!(output.join("_SUCCESS").exists(), "pair {pair}: {}", text(&logs[won]));
        assert!(
            !output.join("_CLAIM").exists(),
            "pair {pair}: the claim outlived its run"
        );
        assert_success(
            &python(
                "compare_runs.py",
                &[output.to_str().unwrap(), baseline.to_str().unwrap()],
            ),
            &format!("pair {pair} against the baseline"),
        );
    }
    assert!(collisions > 0, "no pair ever overlapped: the test proves nothing");
}

fn paused_run(input: &Path, output: &Path, pause: &str, log: &Path) -> Child {
    spawn(&run_args(input, output, &SMALL_RUN), &[("VERGER_PAUSE_AT", pause)], log)
}

fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

#[test]
fn files_removed_between_stages_are_caught_before_success() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let baseline = tmp.path().join("baseline");
    assert_eq!(verger(&run_args(&input, &baseline, &SMALL_RUN)).status.code(), Some(3));

    // A staged partition deleted between featurization and writing.
    let output = tmp.path().join("staged");
    let log = tmp.path().join("staged.log");
    let run = paused_run(&input, &output, "featurized:3", &log);
    wait_for(&log, "pausing");
    std::fs::remove_file(output.join("_staging/part-00001.parquet")).unwrap();
    assert_eq!(finish(run).status.code(), Some(1));
    let message = text(&log);
    assert!(
        message.contains("commit check failed") && message.contains("_staging/part-00001.parquet is missing"),
        "{message}"
    );
    assert!(!output.join("_SUCCESS").exists());
    let mut resume = SMALL_RUN.to_vec();
    resume.push("--resume");
    assert_eq!(verger(&run_args(&input, &output, &resume)).status.code(), Some(3));
    assert_success(
        &python(
            "compare_runs.py",
            &[output.to_str().unwrap(), baseline.to_str().unwrap()],
        ),
        "resumed after a lost staging file",
    );

    // A result file deleted after writing, before the report: the counts no longer add up.
    let output = tmp.path().join("result");
    let log = tmp.path().join("result.log");
    let run = paused_run(&input, &output, "written:3", &log);
    wait_for(&log, "pausing");
    std::fs::remove_file(output.join("result/part-00002.parquet")).unwrap();
    assert_eq!(finish(run).status.code(), Some(1));
    let message = text(&log);
    assert!(
        message.contains("result file result/part-00002.parquet is missing"),
        "{message}"
    );
    assert!(!output.join("_SUCCESS").exists());
    assert!(
        !output.join("report.json").exists(),
        "no report for an output that failed its check"
    );

    // A staged partition replaced by another one's rows: counted, and refused.
    let output = tmp.path().join("replaced");
    let log = tmp.path().join("replaced.log");
    let run = paused_run(&input, &output, "featurized:3", &log);
    wait_for(&log, "pausing");
    std::fs::copy(
        output.join("_staging/part-00003.parquet"),
        output.join("_staging/part-00000.parquet"),
    )
    .unwrap();
    assert_eq!(finish(run).status.code(), Some(1));
    let message = text(&log);
    assert!(
        message.contains("_staging/part-00000.parquet holds 1 rows where its manifest partition has 4"),
        "{message}"
    );
}
