//! A cluster in one process, for trying cluster mode: a scheduler and one executor on loopback, then the job
//! submitted to them. Real deployments run `verger scheduler` and `verger executor` on their own hosts
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
    std::thread::spawn(|| verger::scheduler(([127, 0, 0, 1], SCHEDULER).into()));
    while TcpStream::connect(("127.0.0.1", SCHEDULER)).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::spawn(|| {
        verger::executor(verger::ExecutorOptions {
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: SCHEDULER,
            bind_host: "127.0.0.1".into(),
            port: SCHEDULER + 1,
            slots: 2,
            work_dir: None,
        })
    });
    // Give the executor a moment to register; cluster jobs wait for one anyway.
    std::thread::sleep(Duration::from_secs(2));

    let model = verger::default_model().expect("set VERGER_MODEL to the MobileNetV2 ONNX file");
    let mut config = verger::JobConfig::new(verger::absolute(&input)?, verger::absolute(&output)?, model);
    config.cluster = Some(format!("df://127.0.0.1:{SCHEDULER}"));
    config.overwrite = true;
    if let verger::RunOutcome::Done(report) = verger::run(&config, Arc::new(verger::NoProgress))? {
        println!(
            "{} images featurized on the cluster in {:.1} s",
            report.counts.featurized, report.wall_s
        );
    }
    Ok(())
}
