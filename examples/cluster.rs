//! A cluster in one process, for trying cluster mode: new credentials (`verger cluster init`), a scheduler and
//! one executor on loopback speaking mTLS with them, then the job submitted with the client's certificate and
//! token. Real deployments run `verger scheduler` and `verger executor` on their own hosts
//! (docs/cluster.md).
//!
//!     cargo run --release --example cluster -- ../shared/datasets/fruits360/Test out/test-cluster

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

const SCHEDULER: u16 = 50150;

fn main() -> Result<(), verger::Error> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        eprintln!("usage: cluster INPUT OUTPUT");
        std::process::exit(2);
    };
    let credentials = std::env::temp_dir().join(format!("verger-cluster-example-{}", std::process::id()));
    verger::cluster_init(&credentials)?;
    let guard = verger::ClusterGuard::Secured(credentials.clone());
    let scheduler_guard = guard.clone();
    std::thread::spawn(move || verger::scheduler(([127, 0, 0, 1], SCHEDULER).into(), &scheduler_guard));
    while TcpStream::connect(("127.0.0.1", SCHEDULER)).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let model = verger::default_model().expect("set VERGER_MODEL to the MobileNetV2 ONNX file");
    let (input, output) = (verger::absolute(&input)?, verger::absolute(&output)?);
    // The executor reads the images and the model and writes the output, and touches nothing else.
    let allow_locations = vec![input.clone(), output.clone(), model.clone()];
    std::thread::spawn(move || {
        let options = verger::ExecutorOptions {
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: SCHEDULER,
            bind_host: "127.0.0.1".into(),
            port: SCHEDULER + 1,
            slots: 2,
            work_dir: None,
            allow_locations,
            endpoint: None,
            allow_http: false,
        };
        verger::executor(options, &guard)
    });
    // Give the executor a moment to register; cluster jobs wait for one anyway.
    std::thread::sleep(Duration::from_secs(2));

    let mut config = verger::JobConfig::new(input, output, model);
    config.cluster = Some(format!("df://127.0.0.1:{SCHEDULER}"));
    config.cluster_security = Some(credentials.clone());
    config.overwrite = true;
    let outcome = verger::run(&config, Arc::new(verger::NoProgress));
    let _ = std::fs::remove_dir_all(&credentials);
    if let verger::RunOutcome::Done(report) = outcome? {
        println!(
            "{} images featurized on the cluster in {:.1} s",
            report.counts.featurized, report.wall_s
        );
    }
    Ok(())
}
