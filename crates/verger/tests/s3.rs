//! Object storage and the GDPR guard-rails end to end, against a real S3-compatible server (SeaweedFS)
//! started on 127.0.0.1 by each test, which checks credentials: images, model and results in buckets,
//! encryption, region refusal, resume, a server restart in the middle of a run, credentials from a shared
//! profile file, listing in parallel, no image metadata in any output, and one writer per output (leases).

// A build without the cluster leaves this file's cluster tests out, and with them some helpers' only use.
#![cfg_attr(not(feature = "cluster"), allow(dead_code, unused_imports))]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use common::{assert_success, repo_root, run_args, small_input};
use verger_testdata::{fruits360_dir, model_path};

const ACCESS_KEY: &str = "test-access-key";
/// The secret the server accepts; it must never appear in a log line, an output or the report.
const SECRET: &str = "planted-secret-4f1c9a";

/// A `weed mini` server on loopback ports that accepts only ACCESS_KEY/SECRET, stopped when dropped.
struct Seaweed {
    child: Option<Child>,
    base_port: u16,
    data: tempfile::TempDir,
}

impl Seaweed {
    fn start() -> Seaweed {
        let data = tempfile::tempdir().unwrap();
        // One identity, so other keys are refused; SeaweedFS's local KMS (key alias/seaweedfs-default) for SSE-KMS.
        let identities = serde_json::json!({
            "identities": [{
                "name": "verger-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }],
            "kms": {"default_provider": "local", "providers": {"local": {"type": "local"}}},
        });
        std::fs::write(data.path().join("s3.json"), identities.to_string()).unwrap();
        std::fs::create_dir(data.path().join("store")).unwrap();
        let mut server = Seaweed {
            child: None,
            base_port: free_ports(),
            data,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let weed = repo_root().join(".venv/bin/weed");
        assert!(weed.is_file(), "{} missing: run scripts/setup", weed.display());
        let port = |i: u16| (self.base_port + i).to_string();
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", self.data.path().join("store").display()))
            .arg(format!("-s3.config={}", self.data.path().join("s3.json").display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            // Every port this server opens (gRPC ones are these + 10000), so that servers run side by side.
            .args([format!("-master.port={}", port(0)), format!("-volume.port={}", port(1))])
            .args([format!("-filer.port={}", port(2)), format!("-s3.port={}", port(3))])
            .arg(format!("-admin.port={}", port(4)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed starts");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.base_port + 3)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS S3 did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the server (SIGKILL) and starts it again on the same data and ports.
    fn restart(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.launch();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.base_port + 3)
    }

    /// A script of tests/python with this server's endpoint and credentials.
    fn python(&self, script: &str, args: &[&str]) -> Output {
        Command::new(repo_root().join(".venv/bin/python"))
            .arg(repo_root().join("tests/python").join(script))
            .args(args)
            .env("VERGER_S3_ENDPOINT", self.endpoint())
            .env("VERGER_S3_ACCESS_KEY", ACCESS_KEY)
            .env("VERGER_S3_SECRET", SECRET)
            .env("PLANTED_SECRET", SECRET)
            .output()
            .expect("python runs")
    }

    /// Uploads a file or folder with boto3, retrying while the server finishes starting.
    fn upload(&self, bucket: &str, prefix: &str, path: &Path) {
        common::until_success("upload", || {
            self.python("s3_put.py", &[bucket, prefix, path.to_str().unwrap()])
        });
    }

    fn create_bucket(&self, bucket: &str) {
        let empty = tempfile::tempdir().unwrap();
        self.upload(bucket, "", empty.path());
    }

    /// `verger ARGS` against this server with its buckets taken to be in us-east-1 while only `eu-*` is
    /// allowed: every such command must be refused before any byte moves.
    fn outside_allowed_regions(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_verger"))
            .args(args)
            .args(["--endpoint", &self.endpoint(), "--region", "us-east-1"])
            .args(["--allowed-regions", "eu-*"])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .output()
            .unwrap()
    }

    /// `verger ARGS` against this server, authenticated through the environment.
    fn verger(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_verger"));
        command
            .args(args)
            .args(["--endpoint", &self.endpoint(), "--region", "eu-west-1"])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET);
        command
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first of eight ports for one server: distinct per test process (its slot) and per server within it, and
/// with their gRPC twins (+10000) below Linux's ephemeral range (32768+), where outgoing connections live.
fn free_ports() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let server = NEXT.fetch_add(1, Ordering::Relaxed) % 8;
    20000 + common::slot() * 64 + server * 8
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every file under `dir` containing `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|f| contains(&std::fs::read(f).unwrap(), needle))
        .map(|f| f.display().to_string())
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The same job (k = 5) on the images on disk: the baseline an S3 or cluster run must equal.
fn run_on_disk(input: &Path, output: &Path) -> PathBuf {
    let run = common::verger(&run_args(input, output, &["--k", "5"]));
    assert_eq!(code(&run), Some(3), "{}", stderr(&run));
    output.to_path_buf()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_job_from_bucket_to_bucket_gives_the_rows_of_the_same_job_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    small_input(&local);
    let server = Seaweed::start();
    server.upload("images", "fruits", &local);
    server.upload("models", "mobilenet", &model_path());
    server.create_bucket("results");
    let model = format!(
        "s3://models/mobilenet/{}",
        model_path().file_name().unwrap().to_str().unwrap()
    );

    let in_s3 = [
        "-v",
        "run",
        "--input",
        "s3://images/fruits",
        "--output",
        "s3://results/run1",
        "--model",
        &model,
        "--sse",
        "AES256",
        "--allowed-regions",
        "eu-*",
        "--k",
        "5",
    ];
    let s3_run = server.verger(&in_s3).output().unwrap();
    assert_eq!(code(&s3_run), Some(3), "{}", stderr(&s3_run));
    let from_disk = run_on_disk(&local, &tmp.path().join("from-disk"));

    // Same rows, errors and PCA as on disk; layout, _SUCCESS last, SSE on every object, report; pyarrow reads it.
    assert_success(
        &server.python("compare_runs.py", &["s3://results/run1", from_disk.to_str().unwrap()]),
        "compare",
    );
    let checked = server.python("check_s3_output.py", &["s3://results/run1", "AES256", "24"]);
    assert_success(&checked, "check_s3_output");
    let summary = String::from_utf8_lossy(&checked.stdout);
    for bucket in ["images", "results", "models"] {
        assert!(
            summary.contains(&format!(
                "'bucket': '{bucket}', 'region': 'eu-west-1', 'source': 'configured'"
            )),
            "{summary}"
        );
    }

    // The report page is in the bucket too, encrypted like every object (check_s3_output), and the estimate
    // of a run reads the bucket as the run does.
    let estimate = server
        .verger(&[
            "estimate",
            "--input",
            "s3://images/fruits",
            "--model",
            &model,
            "--sample",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&estimate), Some(0), "{}", stderr(&estimate));
    let estimate: serde_json::Value = serde_json::from_slice(&estimate.stdout).unwrap();
    let jpgs: Vec<PathBuf> = walk(&local)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    assert_eq!(estimate["images"], jpgs.len());
    let bytes: u64 = jpgs.iter().map(|p| p.metadata().unwrap().len()).sum();
    assert_eq!(estimate["bytes"], bytes);
    assert_eq!(estimate["sampled"], 10);
    assert!(estimate["images_per_s"].as_f64().unwrap() > 0.0);

    // The secret the run authenticated with appears in no log line (nor in any object: check_s3_output).
    let logs = [s3_run.stdout.as_slice(), s3_run.stderr.as_slice()].concat();
    assert!(!contains(&logs, SECRET), "secret in the logs");

    // Interrupted after some results were written: no _SUCCESS, so a reader waiting for it sees nothing;
    // --resume then completes the same output.
    let run2: Vec<&str> = in_s3
        .iter()
        .map(|a| {
            if *a == "s3://results/run1" {
                "s3://results/run2"
            } else {
                a
            }
        })
        .collect();
    let aborted = server.verger(&run2).env("VERGER_ABORT_AT", "write:1").output().unwrap();
    assert_eq!(code(&aborted), None, "the hook aborts the process");
    let waiting = server.python("s3_success.py", &["s3://results/run2"]);
    assert_eq!(
        String::from_utf8_lossy(&waiting.stdout).trim(),
        "absent",
        "{}",
        stderr(&waiting)
    );
    let refused = server.verger(&run2).output().unwrap();
    assert_eq!(
        code(&refused),
        Some(1),
        "an unfinished output is not taken over without --resume"
    );
    let resumed = server
        .verger(&[run2.as_slice(), &["--resume"]].concat())
        .output()
        .unwrap();
    assert_eq!(code(&resumed), Some(3), "{}", stderr(&resumed));
    assert_success(
        &server.python("compare_runs.py", &["s3://results/run2", from_disk.to_str().unwrap()]),
        "compare after resume",
    );
    assert_success(
        &server.python("check_s3_output.py", &["s3://results/run2", "AES256", "24"]),
        "resumed output",
    );

    // SSE-KMS with a named key: every object says aws:kms and which key.
    let with_kms: Vec<&str> = run2
        .iter()
        .map(|a| match *a {
            "s3://results/run2" => "s3://results/kms",
            "AES256" => "aws:kms",
            other => other,
        })
        .chain(["--sse-kms-key-id", "alias/seaweedfs-default"])
        .collect();
    let kms_run = server.verger(&with_kms).output().unwrap();
    assert_eq!(code(&kms_run), Some(3), "{}", stderr(&kms_run));
    assert_success(
        &server.python("check_s3_output.py", &["s3://results/kms", "aws:kms", "24"]),
        "SSE-KMS output",
    );

    // Outside the allowed regions: refused before anything is read or written, naming bucket and region.
    let refused_output = tmp.path().join("refused");
    let output = refused_output.to_str().unwrap();
    let refused = server.outside_allowed_regions(&["run", "--input", "s3://images/fruits", "--output", output]);
    assert_eq!(code(&refused), Some(1));
    assert!(
        stderr(&refused).contains("bucket images is in region us-east-1"),
        "{}",
        stderr(&refused)
    );
    assert!(!refused_output.exists(), "nothing is written for a refused job");

    // Wrong credentials are refused by the server, and the message carries no secret.
    let wrong = server
        .verger(&["list", "--input", "s3://images/fruits"])
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
        .output()
        .unwrap();
    assert_eq!(code(&wrong), Some(1), "{}", stderr(&wrong));
    assert!(!contains(&wrong.stderr, "wrong-secret-value"), "{}", stderr(&wrong));
}

/// Issue 41, points 1, 3 and 6: keys with characters object_store would percent-encode (`#`, `%`, `~`, `[`,
/// a space) are read as listed, so every one is featurized; `--overwrite` of a bucket's root is refused; every
/// command holds every bucket it touches to `--allowed-regions`.
#[test]
fn odd_keys_are_read_as_listed_and_a_bucket_root_is_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    common::copy_images("Kiwi", &local.join("Kiwi"), 5);
    let mut plain: Vec<PathBuf> = walk(&local.join("Kiwi"));
    plain.sort();
    let odd = ["a #1.jpg", "50%.jpg", "t~x.jpg", "[x].jpg", "sp ace+plus.jpg"];
    for (from, to) in plain.iter().zip(odd) {
        std::fs::rename(from, local.join("Kiwi").join(to)).unwrap();
    }
    let server = Seaweed::start();
    server.upload("images", "odd", &local);
    server.create_bucket("results");
    let output = tmp.path().join("out");
    let run = server
        .verger(&[
            "run",
            "--input",
            "s3://images/odd",
            "--output",
            output.to_str().unwrap(),
            "--k",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&run), Some(0), "every odd key is read: {}", stderr(&run));
    let report = common::json(&output.join("report.json"));
    assert_eq!(report["counts"]["featurized"], 5, "{}", report["counts"]);

    // A bucket holding the input, and a bucket on its own.
    for (input, bucket, says) in [
        ("s3://images/odd", "s3://images", "contains the input"),
        (local.to_str().unwrap(), "s3://images", "whole bucket"),
        (local.to_str().unwrap(), "s3://results", "whole bucket"),
    ] {
        let root = server
            .verger(&["run", "--input", input, "--output", bucket, "--overwrite"])
            .output()
            .unwrap();
        assert_eq!(code(&root), Some(1), "{}", stderr(&root));
        assert!(stderr(&root).contains(says), "{bucket}: {}", stderr(&root));
    }
    // Issue 41, point 6: the buckets of the cache and of a given PCA model are held to --allowed-regions too.
    for (i, extra) in [
        ["--cache", "s3://results/cache"],
        ["--pca-model", "s3://results/pca/model.json"],
    ]
    .iter()
    .enumerate()
    {
        let refused_output = tmp.path().join(format!("refused-{i}"));
        let output = refused_output.to_str().unwrap();
        let refused = server.outside_allowed_regions(
            &[
                &["run", "--input", local.to_str().unwrap(), "--output", output],
                &extra[..],
            ]
            .concat(),
        );
        assert_eq!(code(&refused), Some(1), "{extra:?}: {}", stderr(&refused));
        assert!(
            stderr(&refused).contains("bucket results is in region us-east-1"),
            "{extra:?}: {}",
            stderr(&refused)
        );
        assert!(
            !refused_output.exists(),
            "{extra:?}: nothing is written for a refused job"
        );
    }
    // ... and so are every other command's: a run, a classifier folder, photos, an ONNX file in that region.
    let commands: [&[&str]; 6] = [
        &["report", "s3://results/none"],
        &["train", "s3://results/none", "--out", "s3://results/classifier"],
        &["evaluate", "--model", "s3://results/classifier", "s3://results/none"],
        &[
            "identify",
            "--model",
            "s3://results/classifier",
            "s3://images/odd/Kiwi/50%.jpg",
        ],
        &[
            "export",
            "--model",
            "s3://results/classifier",
            "--onnx",
            "s3://results/app.onnx",
        ],
        &["serve", "--model", "s3://results/classifier", "--port", "0"],
    ];
    for args in commands {
        let refused = server.outside_allowed_regions(args);
        assert_eq!(code(&refused), Some(1), "{args:?}: {}", stderr(&refused));
        assert!(
            stderr(&refused).contains("is in region us-east-1"),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    let kept = server
        .verger(&["list", "--input", "s3://images/odd", "--all"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&kept.stdout).matches(".jpg").count(),
        5,
        "{}",
        stderr(&kept)
    );
}

#[test]
fn no_image_metadata_reaches_the_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    // A photo carrying EXIF: camera owner, GPS position, a comment; written by Pillow.
    let made = common::python(
        "exif_photo.py",
        &[
            fruits360_dir().join("Training/Kiwi").to_str().unwrap(),
            input.join("Kiwi/with-exif.jpg").to_str().unwrap(),
        ],
    );
    assert_success(&made, "exif_photo.py");
    let markers = String::from_utf8_lossy(&made.stdout).into_owned();
    let markers: Vec<&str> = markers.split_whitespace().collect();
    assert!(markers.len() >= 3, "{markers:?}");
    let plain = std::fs::read_dir(fruits360_dir().join("Training/Kiwi"))
        .unwrap()
        .nth(1)
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&plain, input.join("Kiwi/plain.jpg")).unwrap();
    for marker in &markers {
        assert!(
            !files_containing(&input, marker).is_empty(),
            "{marker} must be in the input photo"
        );
    }
    let output = tmp.path().join("out");
    let run = common::verger(&run_args(&input, &output, &["--k", "1"]));
    assert_success(&run, "verger run");
    for marker in &markers {
        assert_eq!(files_containing(&output, marker), Vec::<String>::new(), "{marker}");
    }
}

#[test]
fn a_store_restart_in_the_middle_of_a_run_loses_no_row() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    let mut images = 0;
    for class in ["Cherry 1", "Lemon", "Pear", "Plum"] {
        let from = fruits360_dir().join("Training").join(class);
        std::fs::create_dir_all(local.join(class)).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, local.join(class).join(path.file_name().unwrap())).unwrap();
            images += 1;
        }
    }
    let mut server = Seaweed::start();
    server.upload("images", "fruits", &local);
    server.create_bucket("results");

    let mut run = server
        .verger(&[
            "-v",
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/restart",
            "--threads",
            "1",
            "--partition-rows",
            "16",
            "--k",
            "5",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the manifest is written, featurization reads images and stages partitions: take the store away.
    let mut log = BufReader::new(run.stderr.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "the run ended early: {lines:?}");
        lines.push(line.clone());
        if line.contains("listed") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(run.try_wait().unwrap().is_none(), "the run must still be going");
    server.restart(Duration::from_secs(2));
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut log, &mut rest).unwrap();
        rest
    });
    let status = run.wait().unwrap();
    let rest = rest.join().unwrap();
    assert_eq!(status.code(), Some(0), "{}{rest}", lines.concat());
    assert!(
        rest.contains("backing off") || rest.contains("retry"),
        "the outage was noticed and retried:\n{rest}"
    );
    assert_success(
        &server.python(
            "check_s3_output.py",
            &["s3://results/restart", "none", &images.to_string()],
        ),
        "every row after the restart",
    );
}

#[test]
fn credentials_come_from_a_shared_profile_file() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    small_input(&local);
    let server = Seaweed::start();
    server.upload("images", "fruits", &local);

    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    std::fs::write(
        home.join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong\n\n\
             [project]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET}\n"
        ),
    )
    .unwrap();
    std::fs::write(home.join(".aws/config"), "[profile project]\nregion = eu-west-1\n").unwrap();
    let list = |profile: &str| {
        Command::new(env!("CARGO_BIN_EXE_verger"))
            .args(["-v", "list", "--input", "s3://images/fruits"])
            .args(["--endpoint", &server.endpoint()])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env("HOME", &home)
            .env("AWS_PROFILE", profile)
            .output()
            .unwrap()
    };
    let listed = list("project");
    assert_success(&listed, "verger list with the project profile");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("26 images in 4 labels"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    assert!(!contains(&[listed.stdout, listed.stderr].concat(), SECRET));
    let refused = list("default");
    assert_eq!(code(&refused), Some(1), "the default profile's keys are wrong");
}

#[test]
fn a_hundred_folders_list_the_same_in_parallel_and_one_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    for i in 0..2000 {
        let dir = local.join(format!("label{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("img{i:05}.jpg")), b"x").unwrap();
    }
    let server = Seaweed::start();
    server.upload("many", "objects", &local);
    let list = |concurrency: &str| {
        let out = server
            .verger(&[
                "list",
                "--input",
                "s3://many/objects",
                "--all",
                "--concurrency",
                concurrency,
            ])
            .output()
            .unwrap();
        assert_success(&out, "verger list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (parallel, sequential) = (list("16"), list("1"));
    let body = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("s3://"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(body(&parallel).len(), 2000);
    assert_eq!(body(&parallel), body(&sequential));
    assert!(parallel.contains("2000 images in 100 labels"), "{parallel}");
}

/// Cluster mode with everything in buckets: the executors fetch the images and the model and write the output
/// themselves, with their own credentials; the rows are the local run's.
#[test]
#[cfg(feature = "cluster")]
fn executors_read_and_write_buckets_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    small_input(&local);
    let server = Seaweed::start();
    server.upload("images", "fruits", &local);
    server.upload("models", "mobilenet", &model_path());
    let model = format!(
        "s3://models/mobilenet/{}",
        model_path().file_name().unwrap().to_str().unwrap()
    );
    let credentials = [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET)];
    let (_cluster, url) = common::cluster(tmp.path(), 0, &credentials);

    server.create_bucket("results");
    let run = server
        .verger(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/on-cluster",
            "--model",
            &model,
            "--k",
            "5",
            "--cluster",
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(code(&run), Some(3), "{}", stderr(&run));
    let from_disk = run_on_disk(&local, &tmp.path().join("from-disk"));
    assert_success(
        &server.python(
            "compare_runs.py",
            &["s3://results/on-cluster", from_disk.to_str().unwrap()],
        ),
        "cluster run from and to S3 vs local run on disk",
    );
}

/// A feature cache in a bucket, used by a run here and by a run on a cluster: the second and third runs
/// featurize only the inputs that never could be, and give the rows of a run without a cache.
#[test]
#[cfg(feature = "cluster")]
fn a_cache_in_a_bucket_serves_later_runs_here_and_on_a_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    small_input(&local);
    let server = Seaweed::start();
    server.upload("images", "fruits", &local);
    server.create_bucket("results");
    server.create_bucket("caches");
    let credentials = [("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET)];
    let (_cluster, url) = common::cluster(tmp.path(), 8, &credentials);
    let from_disk = run_on_disk(&local, &tmp.path().join("from-disk"));
    let cache_of = |prefix: &str, extra: &[&str], from_disk: &Path| {
        let output = format!("s3://results/{prefix}");
        let args = [
            &["run", "--input", "s3://images/fruits", "--output", &output, "--k", "5"][..],
            &["--cache", "s3://caches/fruits"],
            extra,
        ]
        .concat();
        let run = server.verger(&args).output().unwrap();
        assert_eq!(code(&run), Some(3), "{prefix}: {}", stderr(&run));
        assert_success(
            // PCA up to rounding: the cached runs merge the statistics the cache stores.
            &server.python(
                "compare_runs.py",
                &[&output, from_disk.to_str().unwrap(), "--pca-rtol", "1e-9"],
            ),
            &format!("{prefix} vs the run on disk without a cache"),
        );
        let report = server.python("s3_get.py", &[&format!("{output}/report.json")]);
        assert_success(&report, "reading the report");
        let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
        let cache = &report["cache"];
        ["hits", "featurized", "unread"].map(|k| cache[k].as_u64().unwrap())
    };
    // 24 images and 2 broken files (never cached).
    assert_eq!(cache_of("first", &[], &from_disk), [0, 26, 0]);
    assert_eq!(cache_of("second", &[], &from_disk), [24, 2, 24]);
    assert_eq!(cache_of("on-cluster", &["--cluster", &url], &from_disk), [24, 2, 24]);

    // The bucket changes (an image added, one replaced, one deleted), and so does its copy on disk: the
    // cluster featurizes the new bytes only, and the rows are those of a run from scratch.
    let nth = |class: &str, n: usize| {
        let mut files: Vec<_> = std::fs::read_dir(fruits360_dir().join("Training").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files[n].clone()
    };
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let stats_objects = || {
        let listed = server.python("s3_list.py", &["s3://caches/fruits/"]);
        assert_success(&listed, "listing the cache");
        let keys = String::from_utf8_lossy(&listed.stdout);
        keys.lines()
            .filter(|key| key.contains("/pca-stats-"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let merged = stats_objects();
    std::fs::copy(nth("Lemon", 8), local.join("Lemon/new.jpg")).unwrap();
    std::fs::copy(nth("Kiwi", 8), local.join("Kiwi").join(name(&nth("Kiwi", 0)))).unwrap();
    std::fs::remove_file(local.join("Orange").join(name(&nth("Orange", 0)))).unwrap();
    server.upload("images", "fruits/Lemon", &local.join("Lemon/new.jpg"));
    server.upload("images", "fruits/Kiwi", &local.join("Kiwi").join(name(&nth("Kiwi", 0))));
    let deleted = format!("s3://images/fruits/Orange/{}", name(&nth("Orange", 0)));
    assert_success(&server.python("s3_delete.py", &[&deleted]), "deleting an image");
    let changed = run_on_disk(&local, &tmp.path().join("changed-from-disk"));
    assert_eq!(cache_of("changed", &["--cluster", &url], &changed), [22, 4, 22]);
    // The PCA statistics stored with the new parts replace those the run merged: one object, another one.
    let stored = stats_objects();
    assert!(stored.len() == 1 && stored != merged, "{merged:?} then {stored:?}");

    // The same bytes uploaded again (a later modification time, the same entity tag): not even read.
    server.upload("images", "fruits/Lemon", &local.join("Lemon/new.jpg"));
    assert_eq!(cache_of("uploaded-again", &[], &changed), [24, 2, 24]);
}

/// `verger run` into `s3://results/PREFIX` (k = 5), started in the background with `env`, logging to `log`.
fn spawn_s3_run(server: &Seaweed, prefix: &str, extra: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let output = format!("s3://results/{prefix}");
    let args = [
        &["run", "--input", "s3://images/fruits", "--output", &output, "--k", "5"],
        extra,
    ]
    .concat();
    server
        .verger(&args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn wait_for_log(log: &Path, needle: &str) {
    let started = Instant::now();
    while !read_log(log).contains(needle) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{needle:?} never came:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lease as another verger run would have written it, on another host.
fn planted_lease(dir: &Path, expires_at_ms: u64) -> PathBuf {
    let lease = serde_json::json!({
        "run_id": "planted", "host": "elsewhere", "boot_id": "b", "pid": 4242, "pid_start": 1,
        "started_at": "2026-11-29T08:00:00Z", "started_at_ms": 0, "expires_at_ms": expires_at_ms, "ttl_s": 60,
    });
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("_CLAIM");
    std::fs::write(&path, lease.to_string()).unwrap();
    path
}

#[test]
fn one_writer_per_bucket_output() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    small_input(&local);
    let server = Seaweed::start();
    server.upload("images", "fruits", &local);
    server.create_bucket("results");
    let from_disk = run_on_disk(&local, &tmp.path().join("from-disk"));
    let same_as_disk = |prefix: &str, what: &str| {
        assert_success(
            &server.python(
                "compare_runs.py",
                &[&format!("s3://results/{prefix}"), from_disk.to_str().unwrap()],
            ),
            what,
        );
    };

    // Ten pairs started at once: one complete result and one refusal each time.
    let mut collisions = 0;
    for pair in 0..10 {
        let prefix = format!("pair-{pair}");
        let logs = [0, 1].map(|i| tmp.path().join(format!("pair-{pair}-{i}.log")));
        let children = [0, 1].map(|i| spawn_s3_run(&server, &prefix, &[], &[], &logs[i]));
        let codes: Vec<Option<i32>> = children.into_iter().map(|mut c| c.wait().unwrap().code()).collect();
        let lost = match codes.as_slice() {
            [Some(3), Some(1)] => 1,
            [Some(1), Some(3)] => 0,
            other => panic!(
                "pair {pair}: {other:?}:\n{}\n{}",
                read_log(&logs[0]),
                read_log(&logs[1])
            ),
        };
        let refusal = read_log(&logs[lost]);
        if refusal.contains("is being written by another verger run") {
            collisions += 1;
        } else {
            assert!(refusal.contains("already exists"), "pair {pair}: {refusal}");
        }
        same_as_disk(&prefix, &format!("pair {pair}"));
        assert_success(
            &server.python("check_s3_output.py", &[&format!("s3://results/{prefix}"), "none", "24"]),
            &format!("pair {pair}: layout, _SUCCESS last, the lease released"),
        );
    }
    assert!(collisions > 0, "no pair ever overlapped: the test proves nothing");

    // A live run's lease is never taken, however short: it is renewed (1 s lease, paused 6 s).
    let live_log = tmp.path().join("live.log");
    let live = spawn_s3_run(
        &server,
        "live",
        &["--lease-ttl", "1"],
        &[("VERGER_PAUSE_AT", "featurized:6")],
        &live_log,
    );
    wait_for_log(&live_log, "pausing");
    std::thread::sleep(Duration::from_secs(3));
    let second = server
        .verger(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/live",
            "--resume",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&second), Some(1), "{}", stderr(&second));
    assert!(
        stderr(&second).contains(&format!("pid {}", live.id())),
        "the refusal names the live run: {}",
        stderr(&second)
    );
    let live = live.wait_with_output().unwrap();
    assert_eq!(code(&live), Some(3), "{}", read_log(&live_log));
    same_as_disk("live", "the run whose lease was kept");

    // A run killed with -9 leaves its lease; on this host its process is gone, so --resume goes on at once.
    let killed_log = tmp.path().join("killed.log");
    let mut killed = spawn_s3_run(
        &server,
        "killed",
        &[],
        &[("VERGER_PAUSE_AT", "featurized:60")],
        &killed_log,
    );
    wait_for_log(&killed_log, "pausing");
    killed.kill().unwrap();
    killed.wait().unwrap();
    let started = Instant::now();
    let resumed = server
        .verger(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/killed",
            "--k",
            "5",
            "--resume",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&resumed), Some(3), "{}", stderr(&resumed));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the stale lease held the resume back"
    );
    same_as_disk("killed", "resumed after kill -9");

    // Another host's lease: refused while it is fresh, taken over once it is long expired.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    server.upload(
        "results",
        "planted",
        &planted_lease(&tmp.path().join("fresh"), now_ms + 60_000),
    );
    let refused = server
        .verger(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/planted",
            "--k",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&refused), Some(1));
    assert!(
        stderr(&refused).contains("run planted on host elsewhere, pid 4242"),
        "{}",
        stderr(&refused)
    );
    server.upload(
        "results",
        "planted",
        &planted_lease(&tmp.path().join("stale"), now_ms - 600_000),
    );
    let taken = server
        .verger(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/planted",
            "--k",
            "5",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&taken), Some(3), "{}", stderr(&taken));
    same_as_disk("planted", "the output whose stale lease was taken over");

    // Issue 41, point 5: a lease of this host and boot whose pid runs nowhere here is taken over at once only
    // when it comes from this PID namespace; from another (a container beside this one, where that pid may be
    // alive) it is refused while fresh.
    let read = |file: &str| std::fs::read_to_string(file).unwrap().trim().to_string();
    let here = [
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id"),
    ];
    let our_namespace = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    for (i, (namespace, code_wanted)) in [("pid:[1]", 1), (our_namespace.as_str(), 3)].into_iter().enumerate() {
        let lease = serde_json::json!({
            "run_id": "neighbour", "host": here[0], "boot_id": here[1], "pid": 4_194_000, "pid_start": 1,
            "pid_ns": namespace, "started_at": "2026-12-06T08:00:00Z", "started_at_ms": 0,
            "expires_at_ms": now_ms + 600_000, "ttl_s": 60,
        });
        let dir = tmp.path().join(format!("neighbour-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("_CLAIM"), lease.to_string()).unwrap();
        let prefix = format!("neighbour-{i}");
        server.upload("results", &prefix, &dir.join("_CLAIM"));
        let output = format!("s3://results/{prefix}");
        let run = server
            .verger(&["run", "--input", "s3://images/fruits", "--output", &output, "--k", "5"])
            .output()
            .unwrap();
        assert_eq!(code(&run), Some(code_wanted), "{namespace}: {}", stderr(&run));
    }

    // Issue 41, point 5: a run whose lease is taken over stops at once (exit 1), not at its final check, and
    // writes nothing more (no PCA model, no result).
    // A run of `prefix` paused at `pause`, whose lease another run takes over meanwhile: its output, when the
    // lease was taken, and its log.
    let taken_over = |prefix: &str, ttl: &str, pause: &str| {
        let log = tmp.path().join(format!("{prefix}.log"));
        let run = spawn_s3_run(
            &server,
            prefix,
            &["--lease-ttl", ttl],
            &[("VERGER_PAUSE_AT", pause)],
            &log,
        );
        wait_for_log(&log, "pausing");
        let taker = planted_lease(&tmp.path().join(format!("{prefix}-taker")), now_ms + 600_000);
        server.upload("results", prefix, &taker);
        let taken_at = Instant::now();
        (run.wait_with_output().unwrap(), taken_at, log)
    };
    let (lost, stolen_at, lost_log) = taken_over("lost", "2", "featurized:40");
    assert_eq!(code(&lost), Some(1), "{}", read_log(&lost_log));
    assert!(
        stolen_at.elapsed() < Duration::from_secs(20),
        "it stopped when its lease was taken, not after its pause: {:?}",
        stolen_at.elapsed()
    );
    assert!(
        read_log(&lost_log).contains("lost the claim"),
        "{}",
        read_log(&lost_log)
    );
    let written = server
        .verger(&[
            "list",
            "--input",
            "s3://results/lost",
            "--glob",
            "*.json",
            "--glob",
            "*.parquet",
            "--all",
        ])
        .output()
        .unwrap();
    let written = String::from_utf8_lossy(&written.stdout).into_owned();
    assert!(written.contains("_staging"), "the staged work is kept: {written}");
    assert!(
        !written.contains("pca/") && !written.contains("result/"),
        "nothing after: {written}"
    );

    // Issue 41, point 5: release is conditional on the lease's version. A finished run's lease is marked
    // released (not deleted), and the next run takes it over at once. A lease taken over after the run's last
    // renewal (here while it waits before writing its reports, renewals 15 s apart) is found out when the run
    // confirms its lease with the store right before `_SUCCESS`: the run fails without it (exit 1), and the
    // taker's lease is left as the taker wrote it, where an unconditional delete would have removed it.
    let lease = |prefix: &str| -> serde_json::Value {
        let out = server.python("s3_get.py", &[&format!("s3://results/{prefix}/_CLAIM")]);
        assert_success(&out, "s3_get.py _CLAIM");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let released = lease("live");
    assert_eq!(released["released"], true, "{released}");
    let again = server
        .verger(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            "s3://results/live",
            "--k",
            "5",
            "--overwrite",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&again), Some(3), "{}", stderr(&again));
    assert_ne!(
        lease("live")["run_id"],
        released["run_id"],
        "the next run took the released lease over"
    );
    let (late, _, late_log) = taken_over("late", "60", "written:4");
    assert_eq!(code(&late), Some(1), "{}", read_log(&late_log));
    assert!(
        read_log(&late_log).contains("lost the claim"),
        "{}",
        read_log(&late_log)
    );
    let finished = server.python("s3_success.py", &["s3://results/late"]);
    assert_eq!(
        String::from_utf8_lossy(&finished.stdout).trim(),
        "absent",
        "_SUCCESS written by a run that lost its lease"
    );
    let kept = lease("late");
    assert_eq!(kept["run_id"], "planted", "the taker's lease was replaced: {kept}");
    assert!(kept.get("released").is_none(), "{kept}");
}
