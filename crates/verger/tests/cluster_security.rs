//! A secured cluster (`verger cluster init`, `--security`): real scheduler and executor processes on
//! 127.0.0.1 speaking mTLS, a client with the cluster's certificate and token, `curl` as the stranger.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_success, cluster_port, cluster_secured, copy_images, curl_scheduler, executors_listed, python, run_args,
    text, verger, Process,
};

fn init(dir: &Path) {
    let made = verger(&["cluster", "init", dir.to_str().unwrap()]);
    assert_success(&made, "verger cluster init");
}

/// `verger ARGS` without `$VERGER_SECURITY` from the environment the tests run in.
fn verger_bare(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(args)
        .env_remove(verger::SECURITY_ENV)
        .output()
        .unwrap()
}

#[test]
fn init_makes_private_credentials_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("credentials");
    init(&dir);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert_eq!(
                e.metadata().unwrap().permissions().mode() & 0o777,
                0o600,
                "{:?}",
                e.path()
            );
            e.file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "client.crt",
            "client.key",
            "executor.crt",
            "executor.key",
            "scheduler.crt",
            "scheduler.key",
            "token"
        ]
    );
    let again = verger(&["cluster", "init", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
}

/// Without --security, schedulers and executors listen on loopback only; --insecure opens them, with a
/// warning.
#[test]
fn an_unsecured_process_refuses_a_network_address() {
    for args in [
        vec!["scheduler", "--bind", "0.0.0.0", "--port", "1"],
        vec!["executor", "--bind", "0.0.0.0", "--port", "1"],
    ] {
        let refused = verger_bare(&args);
        assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
        let said = text(&refused);
        assert!(
            said.contains("refusing to listen on 0.0.0.0 without --security") && said.contains("verger cluster init"),
            "{said}"
        );
    }
    let both = verger_bare(&["scheduler", "--insecure", "--security", "x"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));

    let tmp = tempfile::tempdir().unwrap();
    let port = cluster_port(30);
    let log = tmp.path().join("insecure.log");
    let child = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args([
            "scheduler",
            "--bind",
            "0.0.0.0",
            "--port",
            &port.to_string(),
            "--insecure",
        ])
        .env_remove(verger::SECURITY_ENV)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _scheduler = Process::new(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the --insecure scheduler did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("--insecure") && logged.contains("unauthenticated"),
        "{logged}"
    );
}

/// The whole Test split on a secured cluster equals the local run bit for bit, while strangers are turned
/// away: clients without certificates, with another cluster's, with a wrong or missing token; executors
/// without the cluster's certificate; `curl` without the token (401 for listing and cancel). A job cancelled
/// with the token is submitted again, so the run still completes with the local output.
#[test]
fn a_secured_cluster_runs_the_test_split_like_local_and_lets_no_stranger_in() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("credentials");
    init(&creds);
    let (mut processes, url) = cluster_secured(tmp.path(), 0, &[], [&[], &[]], Some(&creds));
    let port = cluster_port(0);
    let token = std::fs::read_to_string(creds.join("token")).unwrap().trim().to_string();

    // Clients turned away, each told why, before any work.
    let few = tmp.path().join("few");
    copy_images("Kiwi", &few.join("Kiwi"), 2);
    let client = |name: &str, security: Option<&Path>| {
        let output = tmp.path().join(name);
        let mut args = run_args(&few, &output, &["--cluster", &url]);
        if let Some(dir) = security {
            args.extend(["--security", dir.to_str().unwrap()]);
        }
        let out = verger_bare(&args);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out));
        assert!(!output.join("_SUCCESS").exists());
        text(&out)
    };
    let plain = client("plain", None);
    assert!(
        plain.contains("secured cluster") && plain.contains("--security"),
        "{plain}"
    );
    let stranger = tmp.path().join("another-cluster");
    init(&stranger);
    let other_ca = client("other-ca", Some(&stranger));
    assert!(other_ca.contains("does not vouch for"), "{other_ca}");
    let wrong = tmp.path().join("wrong-token");
    std::fs::create_dir(&wrong).unwrap();
    for file in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(creds.join(file), wrong.join(file)).unwrap();
    }
    std::fs::copy(stranger.join("token"), wrong.join("token")).unwrap();
    let refused = client("wrong-token", Some(&wrong));
    assert!(
        refused.contains("refused this client") && refused.contains("token was refused"),
        "{refused}"
    );
    std::fs::remove_file(wrong.join("token")).unwrap();
    let missing = client("no-token", Some(&wrong));
    assert!(
        missing.contains("token") && missing.contains("No such file"),
        "{missing}"
    );

    // Executors without the cluster's certificate do not join.
    for (i, security) in [None, Some(&stranger)].into_iter().enumerate() {
        let mut args = vec![
            "executor".to_string(),
            "--scheduler".into(),
            format!("127.0.0.1:{port}"),
            "--port".into(),
            (port + 10 + 2 * i as u16).to_string(),
            "--slots".into(),
            "1".into(),
        ];
        if let Some(dir) = security {
            args.extend(["--security".into(), dir.to_str().unwrap().into()]);
            args.extend(["--allow-location".into(), tmp.path().to_str().unwrap().into()]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_verger"))
            .args(&args)
            .env_remove(verger::SECURITY_ENV)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join(format!("stranger-{i}.log"))).unwrap())
            .spawn()
            .unwrap();
        processes.push(Process::new(child));
    }
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        executors_listed(port, Some(&creds)),
        2,
        "an executor without the cluster's certificate joined"
    );

    beyond_the_allowed_locations_nothing_is_read_or_written(tmp.path(), &few, &url, &creds);
    shuffle_data_goes_to_executors_and_clients_by_job_id_only(&creds, port + 2);

    // REST without the token: 401, for reading and for cancelling.
    for (method, path) in [
        ("GET", "/api/executors"),
        ("GET", "/api/jobs"),
        ("PATCH", "/api/job/anything"),
    ] {
        let (status, body) = curl_scheduler(&creds, port, method, path, None);
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body.contains("token is required"), "{body}");
    }

    // The Test split, here and on the cluster.
    let input = verger_testdata::fruits360_dir().join("Test");
    let local = tmp.path().join("local");
    let run = verger_bare(&run_args(&input, &local, &["--threads", "2"]));
    assert_success(&run, "the local run");
    let on_cluster = tmp.path().join("on-cluster");
    let mut args = run_args(&input, &on_cluster, &["--threads", "2", "--cluster", &url]);
    args.extend(["--security", creds.to_str().unwrap()]);
    let mut run = Command::new(env!("CARGO_BIN_EXE_verger"))
        .args(&args)
        .env_remove(verger::SECURITY_ENV)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A job in flight: the stranger's cancel is refused, the operator's (with the token) is done.
    let started = Instant::now();
    let job = loop {
        let (status, body) = curl_scheduler(&creds, port, "GET", "/api/jobs", Some(&token));
        assert_eq!(status, 200, "{body}");
        let jobs: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(job) = jobs.as_array().unwrap().iter().find(|j| j["status"] == "Running") {
            break job["job_id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no job ran: {body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (status, body) = curl_scheduler(&creds, port, "PATCH", &format!("/api/job/{job}"), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = curl_scheduler(&creds, port, "PATCH", &format!("/api/job/{job}"), Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"cancelled\":true"), "{body}");

    let status = run.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("submitting it again"),
        "the cancelled job was not retried:\n{stderr}"
    );
    assert_success(
        &python(
            "compare_runs.py",
            &[on_cluster.to_str().unwrap(), local.to_str().unwrap()],
        ),
        "secured cluster run vs local run",
    );
    assert_eq!(
        std::fs::read(on_cluster.join("pca/model.json")).unwrap(),
        std::fs::read(local.join("pca/model.json")).unwrap()
    );
}

/// Issue 41, point 8: executors confined to the test's folder, the images and the model (`--allow-location`)
/// refuse, naming the location, a run writing elsewhere, a run reading images from elsewhere, and a client's
/// own plans that scan or write an output file elsewhere; nothing is read or written there.
fn beyond_the_allowed_locations_nothing_is_read_or_written(work: &Path, few: &Path, url: &str, creds: &Path) {
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::provider_as_source;
    use datafusion::logical_expr::{dml::InsertOp, LogicalPlanBuilder};
    use datafusion::prelude::DataFrame;
    use std::sync::Arc;
    use verger_engine::io::output_file::{OutputFile, OutputFileTable};

    let beyond = tempfile::tempdir().unwrap();
    let refused = |input: &Path, output: &Path, location: &Path| {
        let mut args = run_args(input, output, &["--cluster", url]);
        args.extend(["--security", creds.to_str().unwrap()]);
        let out = verger_bare(&args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains("outside this executor's --allow-location") && said.contains(location.to_str().unwrap()),
            "{said}"
        );
        assert!(!output.join("_SUCCESS").exists());
    };
    // Written elsewhere: the executors' write of the output's first file.
    let elsewhere = beyond.path().join("out");
    refused(few, &elsewhere, &elsewhere);
    assert!(!elsewhere.join("result").exists());
    // Read from elsewhere: featurize's images.
    let photos = beyond.path().join("photos");
    copy_images("Kiwi", &photos.join("Kiwi"), 2);
    refused(&photos, &work.join("from-elsewhere"), &photos);

    // A client's own plans: a scan of a Parquet file outside, and a write outside.
    let secret = beyond.path().join("secret.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("path", DataType::Utf8, false)]));
    let rows = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&secret).unwrap(), schema.clone(), None)
            .unwrap();
    writer.write(&rows).unwrap();
    writer.close().unwrap();
    let table = |name: &str| {
        Arc::new(OutputFileTable {
            file: OutputFile {
                output: beyond.path().to_str().unwrap().to_string(),
                store: Default::default(),
                name: name.to_string(),
                guard: None,
                metadata: Vec::new(),
            },
            schema: schema.clone(),
        })
    };
    let model = verger::default_model().unwrap();
    let config = verger::JobConfig::new(few.to_str().unwrap(), work.join("unused").to_str().unwrap(), model);
    let security = verger_cluster::Security::load(creds, verger_cluster::Role::Client).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = verger_cluster::connect(url, &config.featurize, Some(&security))
            .await
            .unwrap();
        let scan = ctx.read_table(table("secret.parquet")).unwrap().collect().await;
        let scan = scan.expect_err("a scan outside the allowed locations ran").to_string();
        assert!(
            scan.contains("outside this executor's --allow-location") && scan.contains(secret.to_str().unwrap()),
            "{scan}"
        );
        let values = LogicalPlanBuilder::values(vec![vec![datafusion::prelude::lit("a")]])
            .unwrap()
            .project(vec![datafusion::prelude::col("column1").alias("path")])
            .unwrap()
            .build()
            .unwrap();
        let insert = LogicalPlanBuilder::insert_into(
            values,
            "t",
            provider_as_source(table("written.parquet")),
            InsertOp::Append,
        )
        .unwrap()
        .build()
        .unwrap();
        let write = DataFrame::new(ctx.state(), insert).collect().await;
        let write = write
            .expect_err("a write outside the allowed locations ran")
            .to_string();
        assert!(
            write.contains("outside this executor's --allow-location") && write.contains("written.parquet"),
            "{write}"
        );
    });
    assert!(!beyond.path().join("written.parquet").exists());
}

/// Issue 41, point 9: an executor's Flight service (pyarrow.flight over mTLS, on executor 0's port) serves
/// executors and clients only, and takes job ids, never paths; a well-formed id passes on to Ballista, which
/// answers that it has no such partition.
fn shuffle_data_goes_to_executors_and_clients_by_job_id_only(creds: &Path, flight_port: u16) {
    let probe = |role: &str, job: &str| {
        let out = python(
            "flight_probe.py",
            &[creds.to_str().unwrap(), role, &flight_port.to_string(), job],
        );
        assert_success(&out, "flight_probe.py");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let scheduler = probe("scheduler", "abc1234");
    assert!(
        scheduler.starts_with("refused") && scheduler.contains("scheduler role fetches no shuffle data"),
        "{scheduler}"
    );
    for path in ["../../../../etc/passwd", "/etc", "a/../b"] {
        let answer = probe("client", path);
        assert!(
            answer.starts_with("refused") && answer.contains("is not a job id"),
            "{path}: {answer}"
        );
    }
    for role in ["client", "executor"] {
        let answer = probe(role, "abc1234");
        assert!(
            answer.contains("partition file") && !answer.contains("job id"),
            "{role}: {answer}"
        );
    }
}
