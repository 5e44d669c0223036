//! Executors run only verger's plans, on verger's data: before a task runs, its plan is checked against the
//! shapes verger's client submits (images as VALUES, `featurize`/`pca_project` projections, a scan of one of
//! the output's files, and a write of one output file), and anything else (a CSV, Parquet or JSON table, a
//! listing, an arbitrary operator) is refused with the operator named. An executor confined by
//! `--allow-location` ([`Reach`]) also refuses every location the plan would touch outside its prefixes (the
//! scanned and written files, the model, each image `featurize` would read) and store options that point
//! its S3 client elsewhere than its own `--endpoint` or over a transport it does not allow, naming the
//! location. So even a holder of a client certificate and the token can neither turn executors into a
//! general reader of their files and buckets, nor make them write outside the prefixes, nor send their
//! signed requests to another server (docs/cluster.md's threat model).
//!
//! It does not sandbox the process: a plan that passes runs with the executor's own permissions.

use std::sync::Arc;

use ballista_core::execution_plans::{ShuffleWriterExec, SortShuffleWriterExec};
use ballista_core::JobId;
use ballista_executor::execution_engine::{DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor};
use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use verger_engine::featurize::FeaturizeUdf;
use verger_engine::io::output::Resolved;
use verger_engine::io::output_file::{OutputFile, OutputFileScanExec, OutputFileSink};
use verger_engine::io::store::StoreOptions;
use verger_listing::Location;

/// Where a confined executor may read and write (`--allow-location`, repeatable), and the one store its S3
/// client may be pointed at (`--endpoint`, `--allow-http`: the executor's own, whatever a plan says).
#[derive(Debug)]
pub struct Reach {
    /// Local prefixes resolved when the executor starts (they need not exist yet); S3 ones by segment.
    prefixes: Vec<Resolved>,
    endpoint: Option<String>,
    allow_http: bool,
    /// The prefixes as given, for messages.
    shown: String,
}

impl Reach {
    /// The reach of `prefixes` (folders or `s3://bucket[/prefix]`) through the store at `endpoint` (`None`:
    /// AWS).
    pub fn new(prefixes: &[String], endpoint: Option<String>, allow_http: bool) -> Result<Reach, String> {
        if prefixes.is_empty() {
            return Err("--allow-location names no prefix".into());
        }
        for prefix in prefixes {
            match Location::parse(prefix) {
                Location::S3 { .. } if has_parent_segment(prefix) => {
                    return Err(format!("--allow-location {prefix}: `..` is not allowed in a key"))
                }
                Location::S3 { bucket, .. } if bucket.is_empty() => {
                    return Err(format!("--allow-location {prefix} names no bucket"))
                }
                _ => {}
            }
        }
        Ok(Reach {
            prefixes: prefixes.iter().map(|p| Resolved::of(p)).collect(),
            endpoint,
            allow_http,
            shown: prefixes.join(", "),
        })
    }

    /// Refuses `location` (a path, `file://` URI or `s3://bucket/key`) outside the prefixes (a local one
    /// with its links and `..` resolved as the system would), an S3 key with a `..` segment, or an S3 location
    /// reached with `store` options whose endpoint or transport are not this executor's.
    pub fn check(&self, location: &str, store: &StoreOptions) -> Result<(), String> {
        if let Location::S3 { .. } = Location::parse(location) {
            if has_parent_segment(location) {
                return Err(format!("{location}: `..` is not allowed in a key"));
            }
            self.check_store(store)?;
        }
        let resolved = Resolved::of(location);
        match self.prefixes.iter().any(|prefix| prefix.contains(&resolved)) {
            true => Ok(()),
            false => Err(format!(
                "{location} is outside this executor's --allow-location ({})",
                self.shown
            )),
        }
    }

    fn check_store(&self, store: &StoreOptions) -> Result<(), String> {
        let shown = |e: &Option<String>| e.clone().unwrap_or_else(|| "AWS".into());
        if store.endpoint != self.endpoint {
            return Err(format!(
                "the plan's store endpoint ({}) is not this executor's ({}; its --endpoint)",
                shown(&store.endpoint),
                shown(&self.endpoint)
            ));
        }
        if store.allow_http && !self.allow_http {
            return Err("the plan allows plain HTTP to its store; this executor does not (--allow-http)".into());
        }
        Ok(())
    }

    /// [`Reach::check`] for a file of an output, whose name must stay inside it.
    fn check_file(&self, file: &OutputFile) -> Result<(), String> {
        for name in std::iter::once(&file.name).chain(&file.guard) {
            if name.starts_with('/') || has_parent_segment(name) {
                return Err(format!("{name} is not a name inside output {}", file.output));
            }
            self.check(&format!("{}/{name}", file.output.trim_end_matches('/')), &file.store)?;
        }
        self.check(&file.output, &file.store)
    }
}

fn has_parent_segment(location: &str) -> bool {
    location.split(['/', '\\']).any(|segment| segment == "..")
}

/// Why `plan` is not one of verger's, naming the first operator that is not allowed, or (with `reach`) the
/// first location outside it; `None` when it may run.
pub fn refusal(plan: &Arc<dyn ExecutionPlan>, reach: Option<&Reach>) -> Option<String> {
    let allowed = plan.is::<ShuffleWriterExec>()
        || plan.is::<SortShuffleWriterExec>()
        || plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<RepartitionExec>()
        || plan.is::<CooperativeExec>()
        || plan.is::<OutputFileScanExec>()
        || plan
            .downcast_ref::<DataSinkExec>()
            .is_some_and(|sink| sink.sink().is::<OutputFileSink>())
        || plan
            .downcast_ref::<DataSourceExec>()
            .is_some_and(|source| source.data_source().is::<MemorySourceConfig>());
    if !allowed {
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .one_line()
            .to_string();
        return Some(format!("{} ({})", plan.name(), shown.trim()));
    }
    if let Some(reach) = reach {
        if let Err(why) = locations_within(plan, reach) {
            return Some(why);
        }
    }
    plan.children().into_iter().find_map(|child| refusal(child, reach))
}

/// The locations `plan`'s own node touches, each within `reach`.
fn locations_within(plan: &Arc<dyn ExecutionPlan>, reach: &Reach) -> Result<(), String> {
    if let Some(scan) = plan.downcast_ref::<OutputFileScanExec>() {
        return reach
            .check_file(&scan.file)
            .map_err(|why| format!("a scan of {}: {why}", scan.file));
    }
    if let Some(sink) = plan
        .downcast_ref::<DataSinkExec>()
        .and_then(|s| s.sink().downcast_ref::<OutputFileSink>())
    {
        return reach
            .check_file(&sink.file)
            .map_err(|why| format!("a write of {}: {why}", sink.file));
    }
    let Some(projection) = plan.downcast_ref::<ProjectionExec>() else {
        return Ok(());
    };
    let input = projection.input();
    for projected in projection.expr() {
        let mut outcome = Ok(());
        projected
            .expr
            .apply(|expr| {
                if let Some(call) = featurize_call(expr) {
                    outcome = featurize_within(call, input, reach);
                    if outcome.is_err() {
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .map_err(|e| e.to_string())?;
        outcome?;
    }
    Ok(())
}

fn featurize_call(expr: &Arc<dyn PhysicalExpr>) -> Option<(&ScalarFunctionExpr, &FeaturizeUdf)> {
    let call = expr.downcast_ref::<ScalarFunctionExpr>()?;
    call.fun().inner().downcast_ref::<FeaturizeUdf>().map(|udf| (call, udf))
}

/// `featurize`'s model, and every image it would read (the VALUES its argument comes from), within `reach`.
fn featurize_within(
    (call, udf): (&ScalarFunctionExpr, &FeaturizeUdf),
    input: &Arc<dyn ExecutionPlan>,
    reach: &Reach,
) -> Result<(), String> {
    let store = &udf.settings.store;
    reach
        .check(&udf.settings.model.location, store)
        .map_err(|why| format!("the model: {why}"))?;
    let column = call
        .args()
        .first()
        .and_then(|arg| arg.downcast_ref::<Column>())
        .ok_or("featurize reads a computed location; a confined executor takes only listed ones")?;
    for values in column_values(input, column.index())? {
        let values = datafusion::arrow::compute::cast(&values, &DataType::Utf8).map_err(|e| e.to_string())?;
        for uri in values.as_string::<i32>().iter().flatten() {
            reach
                .check(uri, store)
                .map_err(|why| format!("featurize of {uri}: {why}"))?;
        }
    }
    Ok(())
}

/// Every value of column `index` of `plan`'s output, when it is a column of VALUES passed through verger's
/// projections, filters and repartitions.
fn column_values(plan: &Arc<dyn ExecutionPlan>, index: usize) -> Result<Vec<ArrayRef>, String> {
    if let Some(memory) = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|source| source.data_source().downcast_ref::<MemorySourceConfig>())
    {
        let index = memory
            .projection()
            .as_ref()
            .map_or(Some(index), |p| p.get(index).copied());
        let index = index.ok_or("featurize reads a column its VALUES do not have")?;
        return memory
            .partitions()
            .iter()
            .flatten()
            .map(|batch| {
                (index < batch.num_columns())
                    .then(|| batch.column(index).clone())
                    .ok_or_else(|| "featurize reads a column its VALUES do not have".to_string())
            })
            .collect();
    }
    let through = |index: usize| match plan.children().first() {
        Some(child) => column_values(child, index),
        None => Err(format!("featurize reads a column {} does not pass on", plan.name())),
    };
    if plan.is::<RepartitionExec>() || plan.is::<CoalescePartitionsExec>() || plan.is::<CooperativeExec>() {
        return through(index);
    }
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let index = filter
            .projection()
            .as_ref()
            .map_or(Some(index), |p| p.get(index).copied());
        return through(index.ok_or("featurize reads a column the filter drops")?);
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        if let Some(column) = projection
            .expr()
            .get(index)
            .and_then(|p| p.expr.downcast_ref::<Column>())
        {
            return through(column.index());
        }
    }
    Err(format!(
        "featurize reads locations computed by {}; a confined executor takes only listed ones",
        plan.name()
    ))
}

/// Ballista's own engine behind [`refusal`]'s check.
pub struct VergerPlansOnly {
    inner: DefaultExecutionEngine,
    reach: Option<Reach>,
}

impl VergerPlansOnly {
    /// Only verger's plans, touching only what `reach` allows (anything, without one).
    pub fn new(reach: Option<Reach>) -> Self {
        VergerPlansOnly {
            inner: DefaultExecutionEngine::new(),
            reach,
        }
    }
}

impl ExecutionEngine for VergerPlansOnly {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        if let Some(why) = refusal(&plan, self.reach.as_ref()) {
            tracing::warn!("refused a plan of job {job_id}: {why}");
            return Err(DataFusionError::Plan(format!(
                "this verger executor runs only verger's plans on its allowed locations; refused {why}"
            )));
        }
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(endpoint: Option<&str>, allow_http: bool) -> StoreOptions {
        StoreOptions {
            endpoint: endpoint.map(str::to_string),
            allow_http,
            ..StoreOptions::default()
        }
    }

    /// Issue 41, point 8: inside a prefix at a segment boundary, never through `..` or a link out of it; S3 only
    /// through the executor's own endpoint and transport.
    #[test]
    fn a_confined_executor_reaches_its_prefixes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("data");
        std::fs::create_dir_all(allowed.join("in")).unwrap();
        std::fs::create_dir_all(tmp.path().join("secret")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), allowed.join("link")).unwrap();
        let endpoint = "http://127.0.0.1:8333";
        let prefixes = [allowed.to_str().unwrap().to_string(), "s3://photos/team".to_string()];
        let reach = Reach::new(&prefixes, Some(endpoint.into()), false).unwrap();
        let ours = store(Some(endpoint), false);
        let data = allowed.display();
        for within in [
            format!("{data}/in/a.jpg"),
            format!("file://{data}/in/a.jpg"),
            format!("{data}/out/not-yet/part-0.parquet"),
            "s3://photos/team".into(),
            "s3://photos/team/apple/1.jpg".into(),
        ] {
            assert_eq!(reach.check(&within, &ours), Ok(()), "{within}");
        }
        for (outside, why) in [
            (format!("{}/secret/a.arrow", tmp.path().display()), "outside"),
            (format!("{}2/a.jpg", data), "outside"),
            (format!("{data}/link/a.arrow"), "outside"),
            (format!("{data}/in/../../secret/a.arrow"), "outside"),
            (format!("{data}/new/../../secret/a.arrow"), "outside"),
            ("s3://photos/teamwork/a.jpg".into(), "outside"),
            ("s3://other/team/a.jpg".into(), "outside"),
            ("s3://photos/team/../x.jpg".into(), "`..`"),
        ] {
            let refused = reach.check(&outside, &ours).expect_err(&outside);
            assert!(refused.contains(why), "{outside}: {refused}");
        }
        let elsewhere = reach.check("s3://photos/team/a.jpg", &store(Some("http://10.0.0.9:80"), false));
        assert!(elsewhere.unwrap_err().contains("http://10.0.0.9:80"));
        let plain = reach.check("s3://photos/team/a.jpg", &store(Some(endpoint), true));
        assert!(plain.unwrap_err().contains("plain HTTP"));
        assert!(Reach::new(&["s3://photos/team/../x".into()], None, false).is_err());
        assert!(Reach::new(&[], None, false).is_err());
    }
}
