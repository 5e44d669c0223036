//! A cluster on separate hosts: the scheduler, each executor, the S3 server (SeaweedFS) and the client each
//! in a Linux network namespace of their own, joined by veth pairs on a private bridge that the test creates
//! and removes, with addresses that exist only inside those namespaces, so nothing works by accident through
//! 127.0.0.1. Images and output live in the S3 server; the network misbehaves in the middle of a run, and
//! every row is then checked, once, against the local run of the same images.
//!
//! Needs root (namespaces, links, `tc`); without it each test says so and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_success, copy_images, repo_root, text, Process};

const ACCESS_KEY: &str = "netns-access-key";
const SECRET: &str = "netns-secret-7d2e";
const SCHEDULER_PORT: u16 = 50050;
const EXECUTOR_PORT: u16 = 50051;

/// Hosts, each a namespace: 0 the scheduler, 1 the S3 server, 2 the client, 3.. executors.
const SCHEDULER: usize = 0;
const STORE: usize = 1;
const CLIENT: usize = 2;
const FIRST_EXECUTOR: usize = 3;

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("ip runs")
}

fn must(out: Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", text(&out));
}

/// The namespaces, the bridge and the links; removed when dropped.
struct Net {
    tag: String,
    hosts: usize,
    subnet: String,
}

impl Net {
    /// `hosts` namespaces on a new bridge, or None (with a message saying why) where this process may not
    /// create them.
    fn create(name: &str, index: u32, hosts: usize) -> Option<Net> {
        // Names and addresses of their own for each test of each test process.
        let n = std::process::id() % 50 * 5 + index;
        let tag = format!("vg{n}");
        let probe = ip(&["netns", "add", &format!("{tag}probe")]);
        if !probe.status.success() {
            eprintln!(
                "SKIPPED {name}: cannot create network namespaces here ({}); run as root to test a cluster on separate hosts",
                String::from_utf8_lossy(&probe.stderr).trim()
            );
            return None;
        }
        ip(&["netns", "del", &format!("{tag}probe")]);
        let net = Net {
            subnet: format!("10.213.{n}"),
            tag,
            hosts,
        };
        net.remove();
        must(ip(&["link", "add", &net.bridge(), "type", "bridge"]), "bridge");
        must(ip(&["link", "set", &net.bridge(), "up"]), "bridge up");
        for h in 0..hosts {
            let (ns, outside, inside) = (net.ns(h), format!("{}h{h}", net.tag), format!("{}n{h}", net.tag));
            must(ip(&["netns", "add", &ns]), "netns");
            must(
                ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]),
                "veth",
            );
            must(ip(&["link", "set", &outside, "master", &net.bridge()]), "attach");
            must(ip(&["link", "set", &outside, "up"]), "up");
            must(ip(&["link", "set", &inside, "netns", &ns]), "move");
            let in_ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend(args);
                ip(&all)
            };
            must(in_ns(&["link", "set", &inside, "name", "eth0"]), "rename");
            must(
                in_ns(&["addr", "add", &format!("{}/24", net.addr(h)), "dev", "eth0"]),
                "address",
            );
            must(in_ns(&["link", "set", "eth0", "up"]), "eth0 up");
            must(in_ns(&["link", "set", "lo", "up"]), "lo up");
        }
        Some(net)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    /// A port no other test's namespaces use (see the S3 server's).
    fn port(&self, i: u16) -> u16 {
        let n: u16 = self.subnet.rsplit('.').next().unwrap().parse().unwrap();
        20000 + n * 10 + i
    }

    fn ns(&self, host: usize) -> String {
        format!("{}-{host}", self.tag)
    }

    fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, host + 2)
    }

    /// `program args` inside host `host`'s namespace.
    fn command(&self, host: usize, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(host)]).arg(program).args(args);
        command
    }

    /// Takes host `host`'s link down or up.
    fn link(&self, host: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        must(
            ip(&["netns", "exec", &self.ns(host), "ip", "link", "set", "eth0", state]),
            "link",
        );
    }

    /// Drops every packet host `host` sends (or stops dropping them): a token bucket of one byte, which no
    /// packet fits. (`tc netem loss 100%` does the same where the kernel has netem; this sandbox's has not.)
    fn drop_packets(&self, host: usize, drop: bool) {
        let ns = self.ns(host);
        let mut tc = Command::new("ip");
        tc.args(["netns", "exec", &ns, "tc", "qdisc"]);
        if drop {
            tc.args([
                "add", "dev", "eth0", "root", "tbf", "rate", "1kbit", "burst", "1", "latency", "1ms",
            ]);
        } else {
            tc.args(["del", "dev", "eth0", "root"]);
        }
        must(tc.output().unwrap(), "tc");
    }

    fn remove(&self) {
        for h in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.ns(h)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

fn verger_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_verger"))
}

/// Starts `command` logging to `log`, and waits until `addr:port` accepts connections from host `from`.
fn start(net: &Net, mut command: Command, log: &Path, from: usize, addr: &str, port: u16) -> Process {
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let process = Process::new(child);
    let started = Instant::now();
    let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
    while !net
        .command(from, Path::new("bash"), &["-c", &probe])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{addr}:{port} did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    process
}

/// A cluster across namespaces, its S3 server holding the images, and what the client needs.
struct Hosts {
    net: Net,
    work: tempfile::TempDir,
    credentials: PathBuf,
    processes: Vec<Process>,
    executors: Vec<Option<Process>>,
    scheduler: Option<Process>,
    local: PathBuf,
}

impl Hosts {
    /// The scheduler, `executors` executors and an S3 server, each in its namespace; `images` per class of
    /// three classes uploaded; the local run made for comparison.
    fn start(name: &str, index: u32, executors: usize, images: usize) -> Option<Hosts> {
        let net = Net::create(name, index, FIRST_EXECUTOR + executors + 1)?;
        let work = tempfile::tempdir().unwrap();
        let credentials = work.path().join("credentials");
        assert_success(
            &common::verger(&["cluster", "init", credentials.to_str().unwrap()]),
            "cluster init",
        );
        let mut hosts = Hosts {
            net,
            credentials,
            processes: Vec::new(),
            executors: Vec::new(),
            scheduler: None,
            local: work.path().join("images"),
            work,
        };
        hosts.start_store();
        hosts.start_scheduler();
        for i in 0..executors {
            hosts.start_executor(i);
        }
        for class in ["Kiwi", "Lemon", "Orange"] {
            copy_images(class, &hosts.local.join(class), images);
        }
        hosts.upload("images", "fruits", &hosts.local);
        let empty = hosts.work.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        hosts.upload("results", "", &empty);
        Some(hosts)
    }

    fn s3_port(&self) -> u16 {
        self.net.port(4)
    }

    fn endpoint(&self) -> String {
        format!("http://{}:{}", self.net.addr(STORE), self.s3_port())
    }

    fn start_store(&mut self) {
        let data = self.work.path().join("s3");
        std::fs::create_dir_all(data.join("store")).unwrap();
        let identities = serde_json::json!({
            "identities": [{
                "name": "verger-netns",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }],
        });
        std::fs::write(data.join("s3.json"), identities.to_string()).unwrap();
        let addr = self.net.addr(STORE);
        let args = [
            "mini".to_string(),
            format!("-dir={}", data.join("store").display()),
            format!("-s3.config={}", data.join("s3.json").display()),
            format!("-ip={addr}"),
            format!("-ip.bind={addr}"),
            "-master.telemetry=false".into(),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.port={}", self.s3_port()),
            // Distinct ports per test: SeaweedFS names files outside its namespace after them (its volume
            // server's unix socket in /tmp), which would collide between tests run at once.
            format!("-master.port={}", self.net.port(0)),
            format!("-volume.port={}", self.net.port(1)),
            format!("-filer.port={}", self.net.port(2)),
            format!("-admin.port={}", self.net.port(3)),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let weed = repo_root().join(".venv/bin/weed");
        let command = self.net.command(STORE, &weed, &args);
        let log = self.work.path().join("s3.log");
        let store = start(&self.net, command, &log, CLIENT, &addr, self.s3_port());
        self.processes.push(store);
    }

    fn secured(&self, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--security".into(), self.credentials.to_str().unwrap().into()]);
        all
    }

    fn start_scheduler(&mut self) {
        let addr = self.net.addr(SCHEDULER);
        let port = SCHEDULER_PORT.to_string();
        let args = self.secured(&["scheduler", "--bind", &addr, "--port", &port]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let command = self.net.command(SCHEDULER, &verger_bin(), &args);
        let log = self.work.path().join("scheduler.log");
        self.scheduler = Some(start(&self.net, command, &log, CLIENT, &addr, SCHEDULER_PORT));
    }

    /// Executor `i` (host `FIRST_EXECUTOR + i`), one task slot.
    fn start_executor(&mut self, i: usize) {
        let host = FIRST_EXECUTOR + i;
        let addr = self.net.addr(host);
        let scheduler = format!("{}:{SCHEDULER_PORT}", self.net.addr(SCHEDULER));
        let port = EXECUTOR_PORT.to_string();
        let dir = self.work.path().join(format!("executor-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (endpoint, model) = (self.endpoint(), verger_testdata::model_path());
        let args = self.secured(&[
            "executor",
            "--scheduler",
            &scheduler,
            "--bind",
            &addr,
            "--port",
            &port,
            "--slots",
            "1",
            "--work-dir",
            dir.to_str().unwrap(),
            // Only the buckets of the run and the model, through this network's store.
            "--allow-location",
            "s3://images",
            "--allow-location",
            "s3://results",
            "--allow-location",
            model.to_str().unwrap(),
            "--endpoint",
            &endpoint,
            "--allow-http",
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = self.net.command(host, &verger_bin(), &args);
        command
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET);
        let log = self.work.path().join(format!("executor-{i}.log"));
        let executor = start(&self.net, command, &log, SCHEDULER, &addr, EXECUTOR_PORT);
        if self.executors.len() <= i {
            self.executors.resize_with(i + 1, || None);
        }
        self.executors[i] = Some(executor);
    }

    /// Uploads `path` to `s3://bucket/prefix`, retrying while the server finishes starting (its S3 port
    /// answers before its volume server has joined).
    fn upload(&self, bucket: &str, prefix: &str, path: &Path) {
        common::until_success("upload", || {
            self.python("s3_put.py", &[bucket, prefix, path.to_str().unwrap()])
        });
    }

    fn python(&self, script: &str, args: &[&str]) -> Output {
        let python = repo_root().join(".venv/bin/python");
        let mut all = vec![repo_root()
            .join("tests/python")
            .join(script)
            .to_str()
            .unwrap()
            .to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.net
            .command(CLIENT, &python, &all)
            .env("VERGER_S3_ENDPOINT", self.endpoint())
            .env("VERGER_S3_ACCESS_KEY", ACCESS_KEY)
            .env("VERGER_S3_SECRET", SECRET)
            .output()
            .unwrap()
    }

    /// `verger run` from the client's host into `s3://results/PREFIX` on the cluster, started.
    fn run(&self, prefix: &str, extra: &[&str]) -> std::process::Child {
        let cluster = format!("df://{}:{SCHEDULER_PORT}", self.net.addr(SCHEDULER));
        let output = format!("s3://results/{prefix}");
        let endpoint = self.endpoint();
        let mut args = self.secured(&[
            "run",
            "--input",
            "s3://images/fruits",
            "--output",
            &output,
            "--k",
            "5",
            "--partition-rows",
            "8",
            "--cluster",
            &cluster,
            "--endpoint",
            &endpoint,
            "--allow-http",
            "--region",
            "eu-west-1",
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.net
            .command(CLIENT, &verger_bin(), &args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.work.path().join(format!("{prefix}.log"))).unwrap())
            .spawn()
            .unwrap()
    }

    fn log(&self, prefix: &str) -> String {
        std::fs::read_to_string(self.work.path().join(format!("{prefix}.log"))).unwrap_or_default()
    }

    /// Waits until the run into `prefix` has committed at least `n` staged partitions.
    fn wait_for_staged(&self, prefix: &str, n: usize, run: &mut std::process::Child) {
        let started = Instant::now();
        loop {
            let listed = self.python("s3_list.py", &[&format!("s3://results/{prefix}/_staging/part-")]);
            let count = String::from_utf8_lossy(&listed.stdout).lines().count();
            if count >= n {
                return;
            }
            assert!(
                run.try_wait().unwrap().is_none(),
                "the run ended early: {}",
                self.log(prefix)
            );
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "nothing staged: {}",
                self.log(prefix)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The run into `prefix` ended well, and its rows are the local run's, each once.
    fn assert_like_local(&self, prefix: &str, mut run: std::process::Child) {
        let status = run.wait().unwrap();
        assert!(status.success(), "{prefix}: {}", self.log(prefix));
        let local = self.work.path().join("local");
        let out = common::verger(&[
            "run",
            "--input",
            self.local.to_str().unwrap(),
            "--output",
            local.to_str().unwrap(),
            "--k",
            "5",
            "--partition-rows",
            "8",
            "--overwrite",
        ]);
        assert_success(&out, "the local run");
        let compared = self.python(
            "compare_runs.py",
            &[&format!("s3://results/{prefix}"), local.to_str().unwrap()],
        );
        assert_success(&compared, &format!("{prefix} vs the local run"));
    }
}

/// An executor's link goes down for 30 s in the middle of a run.
#[test]
fn an_executors_link_down_for_30_s_loses_no_row() {
    let Some(hosts) = Hosts::start("link", 0, 2, 24) else {
        return;
    };
    let mut run = hosts.run("link", &[]);
    hosts.wait_for_staged("link", 1, &mut run);
    hosts.net.link(FIRST_EXECUTOR, false);
    std::thread::sleep(Duration::from_secs(30));
    hosts.net.link(FIRST_EXECUTOR, true);
    hosts.assert_like_local("link", run);
}

/// An executor is killed in the middle of a run, and a new one joins.
#[test]
fn an_executor_killed_and_one_joining_lose_no_row() {
    let Some(mut hosts) = Hosts::start("kill", 1, 2, 24) else {
        return;
    };
    let mut run = hosts.run("kill", &[]);
    hosts.wait_for_staged("kill", 1, &mut run);
    drop(hosts.executors[0].take());
    hosts.start_executor(2);
    hosts.assert_like_local("kill", run);
}

/// The S3 server's host drops every packet for 20 s in the middle of a run (requests in flight wait for their
/// timeout, then are retried).
#[test]
fn an_s3_server_unreachable_for_20_s_loses_no_row() {
    let Some(hosts) = Hosts::start("s3", 2, 2, 24) else {
        return;
    };
    let mut run = hosts.run("s3", &[]);
    hosts.wait_for_staged("s3", 1, &mut run);
    hosts.net.drop_packets(STORE, true);
    std::thread::sleep(Duration::from_secs(20));
    hosts.net.drop_packets(STORE, false);
    hosts.assert_like_local("s3", run);
}

/// The scheduler is killed in the middle of a run and restarted: the run fails saying that `--resume`
/// continues it, and `--resume` completes it with the local run's rows.
#[test]
fn a_restarted_scheduler_costs_a_resume_not_a_row() {
    let Some(mut hosts) = Hosts::start("sched", 3, 2, 24) else {
        return;
    };
    let mut run = hosts.run("sched", &[]);
    hosts.wait_for_staged("sched", 1, &mut run);
    drop(hosts.scheduler.take());
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", hosts.log("sched"));
    assert!(hosts.log("sched").contains("--resume"), "{}", hosts.log("sched"));
    hosts.start_scheduler();
    // Executors register again with the new scheduler.
    std::thread::sleep(Duration::from_secs(5));
    let resumed = hosts.run("sched", &["--resume"]);
    hosts.assert_like_local("sched", resumed);
}
