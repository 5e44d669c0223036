//! verger's functions on a real Ballista cluster: a scheduler and two executors started as processes on
//! 127.0.0.1 by the test, a client submitting a featurize plan.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::{col, lit, CsvReadOptions, ParquetReadOptions, SessionContext};
use verger_cluster::SessionContextExt;
use verger_engine::featurize::FeaturizeUdf;
use verger_engine::FeaturizeSettings;
use verger_model::{ModelSpec, MOBILENET_V2_SHA256};
use verger_testdata::model_path;

use common::{assert_success, cluster, cluster_with, python, run_args, small_input, verger, Process};

fn settings() -> FeaturizeSettings {
    FeaturizeSettings {
        model: ModelSpec {
            location: model_path().to_string_lossy().into_owned(),
            sha256: MOBILENET_V2_SHA256.into(),
        },
        batch_size: 1,
        max_pixels: verger_image::Limits::default().max_pixels,
        store: Default::default(),
        device: Default::default(),
        precision: Default::default(),
    }
}

/// The `path` column of the Parquet file `manifest`, read here.
async fn manifest_paths(manifest: &str) -> Vec<String> {
    let batches = SessionContext::new()
        .read_parquet(manifest, ParquetReadOptions::default())
        .await
        .unwrap()
        .select(vec![col("path")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut paths = Vec::new();
    for batch in batches {
        let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8).unwrap();
        paths.extend(column.as_string::<i32>().iter().flatten().map(String::from));
    }
    paths
}

/// (path, features) of every row `featurize` succeeded on, sorted by path: the paths travel in the plan
/// (VALUES), as in verger's own cluster jobs.
async fn featurize_on(ctx: &SessionContext, paths: &[String]) -> datafusion::error::Result<Vec<(String, Vec<f32>)>> {
    let featurize = ctx.udf(FeaturizeUdf::NAME)?;
    let values = paths.iter().map(|p| vec![lit(p.as_str())]).collect();
    let plan = LogicalPlanBuilder::values(values)?
        .project(vec![col("column1").alias("path")])?
        .build()?;
    let batches = DataFrame::new(ctx.state(), plan)
        .select(vec![col("path"), featurize.call(vec![col("path")]).alias("f")])?
        .collect()
        .await?;
    let mut rows = Vec::new();
    for batch in batches {
        let paths = batch.column(0).as_string::<i32>();
        let features = batch.column(1).as_struct().column(0).as_list::<i32>();
        for i in 0..batch.num_rows() {
            if features.is_valid(i) {
                let values = features.value(i);
                rows.push((
                    paths.value(i).to_string(),
                    values.as_primitive::<Float32Type>().values().to_vec(),
                ));
            }
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

#[test]
fn featurize_on_a_cluster_gives_the_local_features_and_fails_loudly_without_the_codec() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    small_input(&input);
    let run_into = |output: &Path, extra: &[&str]| {
        let mut args = run_args(&input, output, &["--k", "3", "--partition-rows", "8"]);
        args.extend(extra);
        verger(&args)
    };
    let local = tmp.path().join("local");
    let run = run_into(&local, &[]);
    assert_eq!(run.status.code(), Some(3), "{}", String::from_utf8_lossy(&run.stderr));
    let manifest = local.join("manifest/part-00000.parquet");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let paths = runtime.block_on(manifest_paths(manifest.to_str().unwrap()));

    let (_processes, url) = cluster(tmp.path(), 0, &[]);

    // With verger's codecs: the same features as the local run, bit for bit.
    let connected = runtime
        .block_on(verger_cluster::connect(&url, &settings(), None))
        .unwrap();
    let remote = runtime.block_on(featurize_on(&connected, &paths)).unwrap();
    let embedded = verger_engine::context::local(2, &settings());
    let here = runtime.block_on(featurize_on(&embedded, &paths)).unwrap();
    assert_eq!(remote.len(), 24);
    assert_eq!(remote, here, "cluster features differ from local ones");

    // The whole job with featurization on the cluster: the local run's rows, errors and PCA, bit for bit.
    let on_cluster = tmp.path().join("on-cluster");
    let run = run_into(&on_cluster, &["--cluster", &url]);
    assert_eq!(run.status.code(), Some(3), "{}", String::from_utf8_lossy(&run.stderr));
    assert_success(
        &python(
            "compare_runs.py",
            &[on_cluster.to_str().unwrap(), local.to_str().unwrap()],
        ),
        "cluster run vs local run",
    );
    let local_model = std::fs::read(local.join("pca/model.json")).unwrap();
    assert_eq!(std::fs::read(on_cluster.join("pca/model.json")).unwrap(), local_model);
    // One cluster job per partition: both executors took some (their shuffle files tell).
    for executor in ["executor-0", "executor-1"] {
        let used = walk_count(&tmp.path().join(executor));
        assert!(used > 0, "{executor} ran no task");
    }
    // The executors wrote the output, both of them, every staged and result file (the client only renamed).
    let logs: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(tmp.path().join(format!("executor-{i}.log"))).unwrap())
        .collect();
    let written = |log: &str, file: &str| {
        log.lines()
            .any(|l| l.contains("output_file: written") && l.contains(file))
    };
    for i in 0..13 {
        for file in [
            format!("_staging/part-{i:05}.parquet"),
            format!("result/part-{i:05}.parquet"),
        ] {
            assert!(logs.iter().any(|log| written(log, &file)), "no executor wrote {file}");
        }
    }
    assert!(on_cluster.join("result/part-00012.parquet").is_file());
    assert!(!on_cluster.join("result/part-00013.parquet").exists());
    for (i, log) in logs.iter().enumerate() {
        assert!(written(log, "result/part-"), "executor-{i} wrote no result file");
    }

    // A client without verger's codecs sends `featurize` by name only: the executors' own instance names no
    // model, so the job fails with a message that says why, instead of computing anything.
    let bare = runtime
        .block_on(async {
            let state = verger_cluster::session_state(ballista_config_without_codecs(), &settings());
            let ctx = SessionContext::remote_with_state(&url, state).await?;
            verger_engine::register_functions(&ctx, &settings());
            featurize_on(&ctx, &paths).await
        })
        .unwrap_err()
        .to_string();
    assert!(bare.contains("without verger's codec"), "{bare}");

    // Executors run only verger's plans: a client that reads a table through DataFusion's own providers (a
    // CSV of this host's files, a Parquet file) is refused, naming the operator, and nothing is read.
    for (table, register) in [("host", "csv"), ("manifest", "parquet")] {
        let refused = runtime
            .block_on(async {
                match register {
                    "csv" => {
                        let options = CsvReadOptions::new().has_header(false).file_extension("");
                        connected.register_csv(table, "/etc/hostname", options).await?
                    }
                    _ => {
                        let file = manifest.to_str().unwrap();
                        connected
                            .register_parquet(table, file, ParquetReadOptions::default())
                            .await?
                    }
                }
                connected.sql(&format!("SELECT * FROM {table}")).await?.collect().await
            })
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("runs only verger's plans") && refused.contains("DataSourceExec"),
            "{table}: {refused}"
        );
    }
}

fn ballista_config_without_codecs() -> datafusion::prelude::SessionConfig {
    use verger_cluster::SessionConfigExt;
    datafusion::prelude::SessionConfig::new_with_ballista()
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| if e.path().is_dir() { walk_count(&e.path()) } else { 1 })
                .sum()
        })
        .unwrap_or(0)
}

/// Kiwi and Lemon from the Training sample (about 160 images) under `tmp/in`, run locally into `tmp/local`,
/// then on a cluster into `tmp/on-cluster`, with `interrupt` done to the cluster's processes (scheduler,
/// executor 1, executor 2) once two partitions are staged. Returns the processes left and the time the run
/// took after the interruption, once the run has succeeded with the local run's output.
fn interrupted_cluster_run(
    tmp: &Path,
    (mut processes, url): (Vec<Process>, String),
    interrupt: impl FnOnce(&mut Vec<Process>),
) -> (Vec<Process>, Duration) {
    let input = tmp.join("in");
    for class in ["Kiwi", "Lemon"] {
        let from = verger_testdata::fruits360_dir().join("Training").join(class);
        std::fs::create_dir_all(input.join(class)).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, input.join(class).join(path.file_name().unwrap())).unwrap();
        }
    }
    let job_args = |output: &Path, extra: &[&str]| {
        let mut args: Vec<String> = run_args(&input, output, &["--k", "4", "--partition-rows", "8", "--threads", "2"])
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let local = tmp.join("local");
    let run = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(job_args(&local, &[]))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let on_cluster = tmp.join("on-cluster");
    let mut client = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(job_args(&on_cluster, &["--cluster", &url]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let staged = on_cluster.join("_staging");
    while std::fs::read_dir(&staged)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
                .count()
        })
        .unwrap_or(0)
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no partition staged in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    interrupt(&mut processes);
    let interrupted_at = Instant::now();
    let status = client.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let after = interrupted_at.elapsed();
    assert_success(
        &python(
            "compare_runs.py",
            &[on_cluster.to_str().unwrap(), local.to_str().unwrap()],
        ),
        "after the interruption",
    );
    assert!(!on_cluster.join("_staging").exists());
    (processes, after)
}

/// `kill -9` of an executor in the middle of a cluster run: the scheduler notices within its heartbeat
/// timeout, the lost tasks run on the other executor, and the output is exactly the local run's.
#[test]
fn a_killed_executor_costs_time_not_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (_processes, after) = interrupted_cluster_run(tmp.path(), cluster(tmp.path(), 16, &[]), |processes| {
        drop(processes.remove(2)); // SIGKILL
    });
    assert!(
        after < Duration::from_secs(120),
        "the run took {after:?} after the kill"
    );
}

/// An executor that freezes (SIGSTOP) just before publishing a file is given up after the heartbeat timeout
/// and its task runs elsewhere. Woken after the run (SIGCONT), it publishes nothing: every committed file
/// stays as it was and no file appears in the output.
#[test]
fn a_stalled_executor_never_replaces_a_committed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let stall = [(verger_engine::fault::STALL_ENV, "publish")];
    let processes = cluster_with(tmp.path(), 24, &[], [&[], &stall]);
    let (mut processes, after) = interrupted_cluster_run(tmp.path(), processes, |processes| {
        let started = Instant::now();
        while !processes[2].is_stopped() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "executor-1 never stalled:\n{}",
                std::fs::read_to_string(tmp.path().join("executor-1.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(
        after < Duration::from_secs(120),
        "the run took {after:?} after the stall"
    );
    let output = tmp.path().join("on-cluster");
    let committed = snapshot(&output);
    assert!(committed.keys().any(|f| f.starts_with("result/part-")));

    processes[2].signal("CONT");
    // Woken, its task finds its job closed, or the executor, dropped by the scheduler, shuts down (possibly
    // before it gets to say it resumed): either way it must publish nothing.
    let log = tmp.path().join("executor-1.log");
    let started = Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("resumed at publish") && !processes[2].has_exited() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the executor neither resumed nor ended (stopped: {}):\n{}",
            processes[2].is_stopped(),
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(snapshot(&output) == committed, "the woken executor changed the output");
}

/// Every file under `dir`, by relative path, with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut files = std::collections::BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}
