//! Names of an output's files, relative to the output folder: the one place readers (report, train) and
//! writers agree on them.

pub const RESULT: &str = "result";
pub const ERRORS: &str = "errors";
pub const PCA_MODEL: &str = "pca/model.json";
pub const MANIFEST: &str = "manifest";
/// The partitioning the manifest was cut with.
pub const PLAN: &str = "manifest/_plan.json";
pub const STAGING: &str = "_staging";
/// Files written on a cluster, before the driver commits them to their names.
pub const ATTEMPTS: &str = "_staging/attempts";
/// With pseudonymized paths, the manifest of real paths, kept until the run succeeds.
pub const REAL_MANIFEST: &str = "_staging/manifest.parquet";
pub const REPORT: &str = "report.json";
pub const SUCCESS: &str = "_SUCCESS";
/// Present in an attempt's folder while its submission is open.
pub const OPEN: &str = "_OPEN";

pub fn file(folder: &str, name: &str) -> String {
    format!("{folder}/{name}")
}

/// The name of partition `index`'s file: fixed, so retries and resumed runs write the same names.
pub fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// The shared manifest (pseudonymized paths when asked for).
pub fn manifest() -> String {
    file(MANIFEST, &part_name(0))
}

/// A folder of its own for one submission of a cluster job.
pub fn attempt() -> String {
    format!("{ATTEMPTS}/{}", uuid::Uuid::new_v4())
}
