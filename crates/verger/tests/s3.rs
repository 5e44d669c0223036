//! S3 input end to end against a real S3-compatible server (SeaweedFS) started on 127.0.0.1 by the test.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_success, python, repo_root, small_input};

const SECRET: &str = "planted-secret-4f1c9a";

/// A `weed mini` server on loopback ports, stopped when dropped.
struct Seaweed {
    child: Child,
    s3_port: u16,
    _data: tempfile::TempDir,
}

impl Seaweed {
    fn start() -> Seaweed {
        let weed = repo_root().join(".venv/bin/weed");
        assert!(weed.is_file(), "{} missing: run scripts/setup", weed.display());
        let data = tempfile::tempdir().unwrap();
        let base = 20000 + (std::process::id() % 2000) as u16 * 4;
        let port = |i: u16| (base + i).to_string();
        let child = Command::new(weed)
            .args(["mini", &format!("-dir={}", data.path().display())])
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
            ])
            .args([format!("-master.port={}", port(0)), format!("-volume.port={}", port(1))])
            .args([format!("-filer.port={}", port(2)), format!("-s3.port={}", port(3))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed starts");
        let server = Seaweed {
            child,
            s3_port: base + 3,
            _data: data,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", server.s3_port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS S3 did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Uploads a folder with boto3, retrying while the server finishes starting.
    fn upload(&self, bucket: &str, prefix: &str, folder: &Path) {
        let started = Instant::now();
        loop {
            let out = python(
                "s3_put.py",
                &[&self.endpoint(), bucket, prefix, folder.to_str().unwrap()],
            );
            if out.status.success() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "upload failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verger_with_credentials(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test-access-key")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .output()
        .expect("verger runs")
}

/// Every file under `dir`, as text where it is text and bytes otherwise, searched for `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            hits.push(entry.display().to_string());
        }
    }
    hits
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
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

#[test]
fn images_in_s3_give_the_rows_of_the_same_images_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("local");
    small_input(&local);
    let server = Seaweed::start();
    server.upload("images", "fruits", &local);

    let (from_s3, from_disk) = (tmp.path().join("from-s3"), tmp.path().join("from-disk"));
    let s3_run = verger_with_credentials(&[
        "-v",
        "run",
        "--input",
        "s3://images/fruits",
        "--output",
        from_s3.to_str().unwrap(),
        "--endpoint",
        &server.endpoint(),
        "--region",
        "eu-west-1",
        "--allowed-regions",
        "eu-*",
        "--k",
        "5",
    ]);
    assert_eq!(
        s3_run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&s3_run.stderr)
    );
    let disk_run = common::verger(&[
        "run",
        "--input",
        local.to_str().unwrap(),
        "--output",
        from_disk.to_str().unwrap(),
        "--k",
        "5",
    ]);
    assert_eq!(disk_run.status.code(), Some(3));
    assert_success(
        &python(
            "compare_runs.py",
            &[from_s3.to_str().unwrap(), from_disk.to_str().unwrap()],
        ),
        "compare",
    );
    let script = "import sys, pyarrow.parquet as pq; paths = pq.read_table(sys.argv[1]).column('path').to_pylist(); \
                  assert len(paths) == 24 and all(p.startswith('s3://images/fruits/') for p in paths), paths[:3]";
    let python_bin = repo_root().join(".venv/bin/python");
    let checked = Command::new(python_bin)
        .args(["-c", script, from_s3.join("result").to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&checked, "S3 paths in the result");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from_s3.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["buckets"][0]["bucket"], "images");
    assert_eq!(report["buckets"][0]["region"], "eu-west-1");
    assert_eq!(
        report["buckets"][0]["source"], "configured",
        "SeaweedFS reports no region"
    );

    // A bucket outside the allowed regions is refused before anything is read or written.
    let refused_output = tmp.path().join("refused");
    let refused = verger_with_credentials(&[
        "run",
        "--input",
        "s3://images/fruits",
        "--output",
        refused_output.to_str().unwrap(),
        "--endpoint",
        &server.endpoint(),
        "--region",
        "us-east-1",
        "--allowed-regions",
        "eu-*",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("bucket images is in region us-east-1"), "{message}");
    assert!(!refused_output.exists(), "nothing is written for a refused job");

    // The secret the run authenticated with appears nowhere: not in logs, outputs or the report.
    let logs = [s3_run.stdout.as_slice(), s3_run.stderr.as_slice()].concat();
    assert!(
        !logs.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "secret in the logs"
    );
    assert_eq!(files_containing(&from_s3, SECRET.as_bytes()), Vec::<String>::new());
}

#[test]
fn plain_http_to_another_machine_is_refused_before_anything_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let out = verger_with_credentials(&[
        "run",
        "--input",
        "s3://images/fruits",
        "--output",
        tmp.path().join("out").to_str().unwrap(),
        "--endpoint",
        "http://storage.example.invalid:9000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-http"));
    assert!(!tmp.path().join("out").exists(), "nothing is written");
}
