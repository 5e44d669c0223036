//! `report.html`: the run report as one self-contained page (inline CSS and SVG, no script, no request to
//! anywhere), rendered with minijinja's HTML auto-escaping since labels, paths and messages go into it.
//!
//! This module computes the charts' geometry; the template (`page.html`) lays them out. It reads the run's
//! `report.json`, its errors file and (for the map) two PCA components of its result rows; it writes nothing
//! but the page.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::functions_nested::expr_fn::array_element;
use datafusion::prelude::{col, lit, ParquetReadOptions};
use futures::TryStreamExt;
use serde::Serialize;

use super::Report;
use crate::classify::run_rows::strings;
use crate::error::JobError;
use crate::io::claim::OutputClaim;
use crate::io::output::OutputStore;
use crate::layout;

const TEMPLATE: &str = include_str!("page.html");
/// Points drawn on the PCA map at most: a subsample beyond, so that the page stays small at any size.
pub const MAP_POINTS: usize = 4000;
/// Failed rows listed with their paths.
const FIRST_ERRORS: usize = 25;
/// Components drawn on the scree plot at most.
const SCREE_COMPONENTS: usize = 100;

/// What the page shows besides `report.json`: read from the output's files.
#[derive(Debug, Clone, Default)]
pub struct PageInput {
    /// `(path, stage, message)` of every failed row, sorted by path.
    pub errors: Vec<(String, String, String)>,
    /// `(label, pc1, pc2)` of at most [`MAP_POINTS`] result rows, and how many rows there are in all.
    pub points: Vec<(String, f64, f64)>,
    pub rows: u64,
    /// `quality --thumbnails`: the listed images as `data:` URIs, by path.
    pub thumbnails: std::collections::BTreeMap<String, String>,
}

/// Reads what the page needs from `out` and writes `report.html` there.
pub async fn write(out: &OutputStore, report: &Report) -> Result<(), JobError> {
    let input = read_input(out, report).await?;
    let html = render(report, out.display(), &input)
        .map_err(|e| JobError::Report(format!("rendering {}: {e}", layout::REPORT_PAGE)))?;
    Ok(out.put(layout::REPORT_PAGE, html.into_bytes()).await?)
}

/// Writes `report.html` of the run at `output` again from its `report.json`, holding the output's claim so
/// that no run writes there meanwhile; returns the page's location.
pub async fn rewrite(output: &str, store: &crate::io::store::StoreOptions) -> Result<String, JobError> {
    let out = OutputStore::open(output, store)?;
    if !out.exists(layout::REPORT).await? {
        return Err(JobError::Report(format!(
            "{output} has no {}: not a verger run's output, or its run has not ended",
            layout::REPORT
        )));
    }
    let claim = OutputClaim::take(&out, crate::config::DEFAULT_LEASE_TTL_S).await?;
    let written = async {
        let report = Report::from_json(&out.get(layout::REPORT).await?, &format!("{output}/{}", layout::REPORT))
            .map_err(JobError::Report)?;
        claim.confirm().await?;
        write(&out, &report).await
    }
    .await;
    claim.release().await;
    written?;
    Ok(out.url(layout::REPORT_PAGE))
}

/// The errors file and a subsample of the result rows' first two PCA components.
pub async fn read_input(out: &OutputStore, report: &Report) -> Result<PageInput, JobError> {
    let ctx = crate::context::reader(1);
    out.register(&ctx);
    let mut input = PageInput::default();
    let errors = layout::file(layout::ERRORS, &layout::part_name(0));
    if out.exists(&errors).await? {
        let batches = ctx
            .read_parquet(out.url(&errors), ParquetReadOptions::default())
            .await?
            .select(vec![col("path"), col("stage"), col("message")])?
            .collect()
            .await?;
        for batch in &batches {
            let [paths, stages, messages] = [0, 1, 2].map(|i| strings(batch, i));
            for ((path, stage), message) in paths?.into_iter().zip(stages?).zip(messages?) {
                input.errors.push((path, stage, message));
            }
        }
    }
    let k = report.pca.as_ref().map_or(0, |p| p.k);
    let files = out.parquet_urls(layout::RESULT).await?;
    if k >= 2 && !files.is_empty() {
        let ctx = &ctx;
        let batches = crate::context::grouped(&files, |group| async move {
            Ok(ctx
                .read_parquet(group, ParquetReadOptions::default())
                .await?
                .select(vec![
                    col("label"),
                    array_element(col("pca_features"), lit(1i64)),
                    array_element(col("pca_features"), lit(2i64)),
                ])?)
        });
        let mut batches = std::pin::pin!(batches);
        // Streamed, every step-th row kept, in the files' order (by path, hence by folder: each label keeps
        // its share): the page's memory does not grow with the run. The step comes from the report's count,
        // which the run checked against the result files.
        let step = (report.counts.featurized as usize).div_ceil(MAP_POINTS).max(1);
        let mut i = 0;
        while let Some(batch) = batches.try_next().await? {
            let labels = strings(&batch, 0)?;
            let [x, y] = [1, 2].map(|c| cast(batch.column(c), &DataType::Float64));
            let (x, y) = (x?, y?);
            let (x, y) = (x.as_primitive::<Float64Type>(), y.as_primitive::<Float64Type>());
            for (row, label) in labels.into_iter().enumerate() {
                if i % step == 0 && x.is_valid(row) && y.is_valid(row) {
                    input.points.push((label, x.value(row), y.value(row)));
                }
                i += 1;
            }
        }
        input.rows = i as u64;
    }
    if report.quality.as_ref().is_some_and(|q| q.thumbnails) && out.exists(crate::quality::THUMBNAILS).await? {
        input.thumbnails = serde_json::from_slice(&out.get(crate::quality::THUMBNAILS).await?).map_err(|e| {
            JobError::Report(format!(
                "{} is not what verger quality wrote: {e}",
                crate::quality::THUMBNAILS
            ))
        })?;
    }
    Ok(input)
}

/// The page of `report` for the output at `output`.
pub fn render(report: &Report, output: &str, input: &PageInput) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.add_template("page.html", TEMPLATE)?;
    let page = Page::new(report, output, input);
    env.get_template("page.html")?.render(&page)
}

/// A name and a shown value.
#[derive(Serialize)]
struct Fact {
    name: &'static str,
    value: String,
}

/// A tick on an axis: its position in pixels and its text.
#[derive(Serialize)]
struct Tick {
    at: f64,
    text: String,
}

/// Maps `lo..hi` onto `from..to` pixels.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn new(lo: f64, hi: f64, from: f64, to: f64) -> Scale {
        let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
        Scale { lo, hi, from, to }
    }

    fn at(&self, v: f64) -> f64 {
        round1(self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from))
    }

    /// About `n` ticks at round values.
    fn ticks(&self, n: usize, format: impl Fn(f64) -> String) -> Vec<Tick> {
        let raw = (self.hi - self.lo) / n.max(1) as f64;
        // Steps of 1, 2, 2.5 or 5 times a power of ten, in tenths of that power: each tick is an integer
        // count of tenths, scaled once, so that 3 x 0.2 prints as 0.6.
        let exponent = raw.log10().floor() as i32 - 1;
        let tenth = 10f64.powi(exponent);
        let tenths = [10i64, 20, 25, 50, 100]
            .into_iter()
            .find(|t| *t as f64 * tenth >= raw)
            .unwrap_or(100);
        let value = |count: i64| match exponent {
            e if e >= 0 => count as f64 * 10f64.powi(e),
            e => count as f64 / 10f64.powi(-e),
        };
        let step = tenths as f64 * tenth;
        let first = (self.lo / step - 1e-9).ceil() as i64;
        let last = (self.hi / step + 1e-9).floor() as i64;
        (first..=last)
            .map(|i| {
                let v = value(i * tenths);
                Tick {
                    at: self.at(v),
                    text: format(v),
                }
            })
            .collect()
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Plot area inside every chart, in pixels.
const LEFT: f64 = 56.0;
const TOP: f64 = 12.0;
const WIDTH: f64 = 760.0;

#[derive(Serialize)]
struct Bar {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: String,
}

#[derive(Serialize)]
struct Scree {
    height: f64,
    bottom: f64,
    right: f64,
    bars: Vec<Bar>,
    /// The cumulative explained variance, as polyline points.
    cumulative: String,
    k_x: f64,
    k_text: String,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    components: usize,
}

fn scree(pca: &super::PcaSummary) -> Scree {
    let spectrum = match pca.spectrum.is_empty() {
        true => &pca.explained_variance_ratio,
        false => &pca.spectrum,
    };
    // Twice the kept components (at least 20, at most SCREE_COMPONENTS): k sits inside the plot, not at an edge.
    let shown = spectrum.len().min((2 * pca.k).clamp(20, SCREE_COMPONENTS));
    let (height, bottom, right) = (300.0, 268.0, WIDTH - 16.0);
    let x = Scale::new(0.5, shown as f64 + 0.5, LEFT, right);
    let y = Scale::new(0.0, 1.0, bottom, TOP);
    let bar = (x.at(1.5) - x.at(0.5)) * 0.8;
    let mut total = 0.0;
    let mut cumulative = Vec::new();
    let bars = spectrum[..shown]
        .iter()
        .enumerate()
        .map(|(i, &ratio)| {
            total += ratio;
            let c = (i + 1) as f64;
            cumulative.push(format!("{},{}", x.at(c), y.at(total)));
            Bar {
                x: round1(x.at(c) - bar / 2.0),
                y: y.at(ratio),
                w: round1(bar.max(0.6)),
                h: round1(bottom - y.at(ratio)),
                title: format!(
                    "component {}: {:.4} of the variance, {:.4} up to it",
                    i + 1,
                    ratio,
                    total
                ),
            }
        })
        .collect();
    Scree {
        height,
        bottom,
        right,
        bars,
        cumulative: cumulative.join(" "),
        k_x: x.at(pca.k as f64 + 0.5),
        k_text: format!("k = {}: {:.1} % of the variance", pca.k, pca.explained_variance * 100.0),
        x_ticks: x.ticks(10, |v| format!("{v:.0}")),
        y_ticks: y.ticks(5, |v| format!("{:.0} %", v * 100.0)),
        components: shown,
    }
}

#[derive(Serialize)]
struct LegendItem {
    class: usize,
    label: String,
    colour: String,
    count: u64,
}

#[derive(Serialize)]
struct Map {
    height: f64,
    bottom: f64,
    right: f64,
    /// `(x, y, label class)`.
    points: Vec<(f64, f64, usize)>,
    legend: Vec<LegendItem>,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    shown: usize,
    rows: u64,
}

/// A colour per label: hues a golden angle apart, two lightnesses, so neighbours in the list differ.
fn colour(i: usize) -> String {
    let hue = (i as f64 * 137.508) % 360.0;
    let lightness = if i.is_multiple_of(2) { 42 } else { 58 };
    format!("hsl({hue:.0} 70% {lightness}%)")
}

fn map(input: &PageInput) -> Option<Map> {
    if input.points.is_empty() {
        return None;
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for (label, _, _) in &input.points {
        *counts.entry(label.as_str()).or_default() += 1;
    }
    let class: BTreeMap<&str, usize> = counts.keys().enumerate().map(|(i, l)| (*l, i)).collect();
    let bounds = |pick: fn(&(String, f64, f64)) -> f64| {
        input
            .points
            .iter()
            .map(pick)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let ((x_lo, x_hi), (y_lo, y_hi)) = (bounds(|p| p.1), bounds(|p| p.2));
    let pad = |lo: f64, hi: f64| (hi - lo).max(1e-9) * 0.03;
    let (height, bottom, right) = (500.0, 468.0, WIDTH - 16.0);
    let x = Scale::new(x_lo - pad(x_lo, x_hi), x_hi + pad(x_lo, x_hi), LEFT, right);
    let y = Scale::new(y_lo - pad(y_lo, y_hi), y_hi + pad(y_lo, y_hi), bottom, TOP);
    Some(Map {
        height,
        bottom,
        right,
        points: input
            .points
            .iter()
            .map(|(label, a, b)| (x.at(*a), y.at(*b), class[label.as_str()]))
            .collect(),
        legend: counts
            .iter()
            .enumerate()
            .map(|(i, (label, count))| LegendItem {
                class: i,
                label: label.to_string(),
                colour: colour(i),
                count: *count,
            })
            .collect(),
        x_ticks: x.ticks(8, |v| format!("{v:.1}")),
        y_ticks: y.ticks(6, |v| format!("{v:.1}")),
        shown: input.points.len(),
        rows: input.rows,
    })
}

#[derive(Serialize)]
struct Line {
    height: f64,
    bottom: f64,
    right: f64,
    points: String,
    area: String,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    interval_s: f64,
    peak: String,
}

fn throughput(t: &super::Throughput) -> Option<Line> {
    if t.images.is_empty() {
        return None;
    }
    let rates: Vec<f64> = t.images.iter().map(|&n| n as f64 / t.interval_s).collect();
    let peak = rates.iter().cloned().fold(0.0, f64::max);
    let (height, bottom, right) = (240.0, 208.0, WIDTH - 16.0);
    let span = t.images.len() as f64 * t.interval_s;
    let x = Scale::new(t.started_s, t.started_s + span, LEFT, right);
    let y = Scale::new(0.0, (peak * 1.1).max(1.0), bottom, TOP);
    // A step line: each interval's rate held over its width.
    let mut points = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let from = t.started_s + i as f64 * t.interval_s;
        points.push(format!("{},{}", x.at(from), y.at(*rate)));
        points.push(format!("{},{}", x.at(from + t.interval_s), y.at(*rate)));
    }
    let area = format!(
        "{},{} {} {},{}",
        x.at(t.started_s),
        bottom,
        points.join(" "),
        x.at(t.started_s + span),
        bottom
    );
    Some(Line {
        height,
        bottom,
        right,
        points: points.join(" "),
        area,
        x_ticks: match span < 20.0 {
            true => x.ticks(8, |v| format!("{v:.1} s")),
            false => x.ticks(8, |v| format!("{v:.0} s")),
        },
        y_ticks: y.ticks(4, |v| format!("{v:.0}")),
        interval_s: t.interval_s,
        peak: format!("{peak:.0}"),
    })
}

#[derive(Serialize)]
struct StageRow {
    stage: String,
    wall: String,
    cpu: String,
    wall_pct: f64,
    cpu_pct: f64,
    /// CPU seconds per wall second: how many cores the stage kept busy.
    cores: String,
    peak: String,
}

#[derive(Serialize)]
struct Reason {
    stage: String,
    reason: String,
    count: u64,
}

#[derive(Serialize)]
struct FailedRow {
    path: String,
    stage: String,
    message: String,
}

/// A message without what varies between images of one cause (sizes, offsets): its text before the first
/// colon, digits folded.
fn reason(message: &str) -> String {
    let head = message.split(": ").next().unwrap_or(message);
    let mut out = String::new();
    for c in head.chars().take(160) {
        match c.is_ascii_digit() {
            true if out.ends_with('N') => {}
            true => out.push('N'),
            false => out.push(c),
        }
    }
    out
}

#[derive(Serialize)]
struct Cell {
    x: f64,
    y: f64,
    opacity: f64,
    title: String,
}

#[derive(Serialize)]
struct Heatmap {
    size: f64,
    cell: f64,
    offset: f64,
    cells: Vec<Cell>,
    /// `(position, label)` of each class along both axes, when few enough to read.
    names: Vec<(f64, String)>,
    classes: usize,
}

/// A label cut to fit beside the confusion matrix (the cells' titles hold it whole).
fn short(label: &str) -> String {
    match label.chars().count() > 22 {
        true => format!("{}…", label.chars().take(21).collect::<String>()),
        false => label.to_string(),
    }
}

#[derive(Serialize)]
struct NovelView {
    against: String,
    threshold: f64,
    rows: u64,
    top1: String,
    top5: String,
    macro_f1: String,
}

#[derive(Serialize)]
struct SuspectRow {
    image: ImageRow,
    suggested: String,
    score: String,
    disagree: String,
}

#[derive(Serialize)]
struct OutlierRow {
    image: ImageRow,
    score: String,
}

#[derive(Serialize)]
struct LeakageRow {
    against: String,
    rows: u64,
    leaked: u64,
    share: String,
    same_label: u64,
}

/// Rows listed on the page (the summary and `images.parquet` hold more).
const QUALITY_ROWS: usize = crate::quality::PAGE_ROWS;

#[derive(Serialize)]
struct ImageRow {
    thumb: Option<String>,
    path: String,
    label: String,
}

#[derive(Serialize)]
struct QualityView {
    facts: Vec<Fact>,
    threshold: f64,
    neighbours: usize,
    leakage: Vec<LeakageRow>,
    bars: Vec<Bar>,
    bottom: f64,
    y_ticks: Vec<Tick>,
    x_labels: Vec<(f64, String)>,
    issues: u64,
    folds: usize,
    suspects_total: u64,
    suspects: Vec<SuspectRow>,
    outliers: Vec<OutlierRow>,
    duplicates: Vec<Vec<ImageRow>>,
    details: String,
    thumbnails: bool,
}

fn quality(q: &crate::quality::QualitySummary, thumbnails: &std::collections::BTreeMap<String, String>) -> QualityView {
    let image = |path: &str, label: &str| ImageRow {
        thumb: thumbnails.get(path).cloned(),
        path: path.to_string(),
        label: label.to_string(),
    };
    let percent = |n: u64| format!("{:.1} %", 100.0 * n as f64 / q.rows.max(1) as f64);
    let mut facts = vec![Fact {
        name: "images checked",
        value: q.rows.to_string(),
    }];
    match &q.exact_duplicates {
        Some(d) => facts.extend([
            Fact {
                name: "exact duplicate copies",
                value: d.copies.to_string(),
            },
            Fact {
                name: "duplicate groups with conflicting labels",
                value: d.conflicting_labels.to_string(),
            },
        ]),
        None => facts.push(Fact {
            name: "exact duplicates (not checked: pseudonymised)",
            value: "n/a".into(),
        }),
    }
    facts.extend([
        Fact {
            name: "with a near duplicate",
            value: percent(q.near_duplicate_images),
        },
        Fact {
            name: "label issues",
            value: q.label_issues.to_string(),
        },
    ]);
    // An index never hides its quality loss.
    facts.push(match q.search {
        verger_classify::knn::Method::Exact => Fact {
            name: "neighbours: exact search",
            value: "exact".into(),
        },
        verger_classify::knn::Method::Approximate(r) => Fact {
            name: "neighbours by an HNSW index: recall@10 against exact search",
            value: format!("{:.3} ({} images)", r.recall_at_10, r.sample),
        },
    });
    let height = 160.0;
    let bottom = TOP + height;
    let most = q.nearest_similarity.iter().map(|b| b.images).max().unwrap_or(0).max(1) as f64;
    let y = Scale::new(0.0, most, bottom, TOP);
    let n = q.nearest_similarity.len().max(1) as f64;
    let slot = WIDTH / n;
    let bars = q
        .nearest_similarity
        .iter()
        .enumerate()
        .map(|(i, b)| Bar {
            x: round1(LEFT + i as f64 * slot + 2.0),
            y: round1(y.at(b.images as f64)),
            w: round1(slot - 4.0),
            h: round1(bottom - y.at(b.images as f64)),
            title: format!(
                "{} images with a nearest similarity in [{:.2}, {:.2})",
                b.images,
                b.from.max(-1.0),
                b.to
            ),
        })
        .collect();
    let x_labels = q
        .nearest_similarity
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let text = match b.from < 0.5 {
                true => format!("< {:.1}", b.to),
                false => format!("{:.2}", b.from).trim_start_matches('0').to_string(),
            };
            (round1(LEFT + (i as f64 + 0.5) * slot), text)
        })
        .collect();
    QualityView {
        facts,
        threshold: q.threshold,
        neighbours: q.neighbours,
        leakage: q
            .leakage
            .iter()
            .map(|l| LeakageRow {
                against: l.against.clone(),
                rows: l.rows,
                leaked: l.leaked,
                share: format!("{:.1} %", 100.0 * l.share),
                same_label: l.same_label,
            })
            .collect(),
        bars,
        bottom,
        y_ticks: y.ticks(4, |v| format!("{v:.0}")),
        x_labels,
        issues: q.label_issues,
        folds: q.folds,
        suspects_total: q.label_suspects,
        suspects: q
            .suspects
            .iter()
            .take(QUALITY_ROWS)
            .map(|s| SuspectRow {
                image: image(&s.path, &s.label),
                suggested: s.suggested.clone(),
                score: format!("{:.3}", s.score),
                disagree: format!("{:.0} %", 100.0 * s.neighbours_disagree),
            })
            .collect(),
        outliers: q
            .outliers
            .iter()
            .take(QUALITY_ROWS)
            .map(|o| OutlierRow {
                image: image(&o.path, &o.label),
                score: format!("{:.3}", o.score),
            })
            .collect(),
        duplicates: q
            .exact_duplicates
            .iter()
            .flat_map(|d| d.examples.iter().take(QUALITY_ROWS))
            .map(|group| group.iter().map(|i| image(&i.path, &i.label)).collect())
            .collect(),
        details: q.details.clone(),
        thumbnails: q.thumbnails,
    }
}

#[derive(Serialize)]
struct EvaluationView {
    classifier: String,
    rows: u64,
    top1: String,
    top5: String,
    macro_f1: String,
    details: String,
    unseen: Vec<(String, u64)>,
    heatmap: Option<Heatmap>,
    /// Off-diagonal cells, largest first.
    confused: Vec<(String, String, u64)>,
    novel: Option<NovelView>,
}

fn evaluation(e: &super::EvaluationSummary) -> EvaluationView {
    let heatmap = e.confusion.as_ref().filter(|c| !c.labels.is_empty()).map(|c| {
        let n = c.labels.len();
        let offset = if n <= 60 { 150.0 } else { 4.0 };
        // Cells of 28 px for a few labels, shrinking to fit 560 px for many.
        let size = (n as f64 * 28.0).clamp(112.0, 560.0);
        let cell = round1(size / n as f64);
        let mut support = vec![0u64; n];
        for &(t, _, count) in &c.cells {
            support[t] += count;
        }
        Heatmap {
            size,
            cell: cell.max(0.5),
            offset,
            cells: c
                .cells
                .iter()
                .map(|&(t, p, count)| Cell {
                    x: round1(offset + p as f64 * size / n as f64),
                    y: round1(offset + t as f64 * size / n as f64),
                    // Each cell as the share of its true label's rows: a row's colours compare.
                    opacity: ((count as f64 / support[t].max(1) as f64) * 100.0).round() / 100.0,
                    title: format!("{} predicted as {}: {count}", c.labels[t], c.labels[p]),
                })
                .collect(),
            names: match n <= 60 {
                true => c
                    .labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (round1(offset + (i as f64 + 0.5) * size / n as f64), short(l)))
                    .collect(),
                false => Vec::new(),
            },
            classes: n,
        }
    });
    let mut confused: Vec<(String, String, u64)> = e
        .confusion
        .iter()
        .flat_map(|c| {
            c.cells
                .iter()
                .filter(|(t, p, _)| t != p)
                .map(|&(t, p, n)| (c.labels[t].clone(), c.labels[p].clone(), n))
        })
        .collect();
    confused.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    confused.truncate(10);
    EvaluationView {
        classifier: e.classifier.clone(),
        rows: e.rows,
        top1: format!("{:.2} %", e.top1 * 100.0),
        top5: format!("{:.2} %", e.top5 * 100.0),
        macro_f1: format!("{:.4}", e.macro_f1),
        details: e.details.clone(),
        unseen: e.unseen_labels.iter().map(|(l, n)| (l.clone(), *n)).collect(),
        heatmap,
        confused,
        novel: e.novel.as_ref().map(|n| NovelView {
            against: n.against.clone(),
            threshold: n.threshold,
            rows: n.rows,
            top1: format!("{:.2} %", n.top1 * 100.0),
            top5: format!("{:.2} %", n.top5 * 100.0),
            macro_f1: format!("{:.4}", n.macro_f1),
        }),
    }
}

#[derive(Serialize)]
struct Residency {
    input: String,
    output: String,
    model: String,
    buckets: Vec<crate::io::store::BucketRegion>,
    allowed_regions: Vec<String>,
    encryption: Option<String>,
    pseudonymized: bool,
}

#[derive(Serialize)]
struct CostView {
    machine: String,
    price: String,
    usd: String,
    per_million: Option<String>,
    original: String,
    original_rate: String,
    original_usd: String,
    original_per_million: String,
    saving: Option<String>,
    basis: String,
    source: String,
}

#[derive(Serialize)]
struct Page {
    output: String,
    finished_at: String,
    failed_run: bool,
    summary: Vec<Fact>,
    versions: Vec<Fact>,
    pca: Option<(Scree, bool, Option<String>)>,
    map: Option<Map>,
    map_note: String,
    throughput: Option<Line>,
    stages: Vec<StageRow>,
    failed: u64,
    reasons: Vec<Reason>,
    first_errors: Vec<FailedRow>,
    residency: Residency,
    cost: CostView,
    evaluations: Vec<EvaluationView>,
    quality: Option<QualityView>,
    /// What the feature cache did, when there was one.
    cache: Option<Vec<Fact>>,
    /// `(class, colour)` of every map label, for the page's style sheet.
    colours: Vec<(usize, String)>,
}

/// Principal angles in words: the largest and the mean.
fn drift(angles: &[f64]) -> Option<String> {
    let largest = angles
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))))?;
    let mean = angles.iter().sum::<f64>() / angles.len() as f64;
    Some(format!(
        "at most {largest:.2}° (mean {mean:.2}° over {} axes)",
        angles.len()
    ))
}

fn cache_facts(c: &crate::job::cache::CacheSummary) -> Vec<Fact> {
    let mut facts = vec![
        Fact {
            name: "from the cache",
            value: c.hits.to_string(),
        },
        Fact {
            name: "featurized (not in the cache)",
            value: c.featurized.to_string(),
        },
        Fact {
            name: "same bytes as another new image",
            value: c.duplicates.to_string(),
        },
        Fact {
            name: "unchanged by their listing (not read)",
            value: c.unread.to_string(),
        },
        Fact {
            name: "read and hashed",
            value: c.hashed.to_string(),
        },
        Fact {
            name: "time saved (estimate)",
            value: c.saved_s.map_or_else(|| "-".into(), seconds),
        },
        Fact {
            name: "rows added to the cache",
            value: c.added_rows.to_string(),
        },
        Fact {
            name: "cache",
            value: format!("{} ({})", c.location, c.identity),
        },
        Fact {
            name: "parts read",
            value: c.parts.to_string(),
        },
        Fact {
            name: "PCA statistics merged from the cache (rows)",
            value: c.pca_rows_merged.to_string(),
        },
        Fact {
            name: "PCA statistics computed (rows)",
            value: c.pca_rows_computed.to_string(),
        },
    ];
    if !c.ignored_parts.is_empty() {
        facts.push(Fact {
            name: "parts ignored (images featurized again)",
            value: c.ignored_parts.join("; "),
        });
    }
    if !c.other_identities.is_empty() {
        facts.push(Fact {
            name: "other pipeline identities (not used)",
            value: c.other_identities.join(", "),
        });
    }
    facts
}

fn seconds(s: f64) -> String {
    match s {
        s if s < 10.0 => format!("{s:.2} s"),
        s if s < 600.0 => format!("{s:.1} s"),
        s => format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0),
    }
}

fn usd(v: f64) -> String {
    match v {
        v if v < 0.01 => format!("${v:.5}"),
        v if v < 10.0 => format!("${v:.4}"),
        v => format!("${v:.2}"),
    }
}

impl Page {
    fn new(report: &Report, output: &str, input: &PageInput) -> Page {
        let config = |key: &str| {
            report
                .config
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let c = &report.counts;
        let summary = vec![
            Fact {
                name: "images listed",
                value: c.listed.to_string(),
            },
            Fact {
                name: "featurized",
                value: c.featurized.to_string(),
            },
            Fact {
                name: "failed",
                value: c.failed.to_string(),
            },
            Fact {
                name: "wall time",
                value: seconds(report.wall_s),
            },
            Fact {
                name: "CPU time",
                value: seconds(report.cpu_s),
            },
            Fact {
                name: "images/s",
                value: format!("{:.1}", report.images_per_s),
            },
            Fact {
                name: "CPU per image",
                value: format!("{:.2} ms", report.cpu_ms_per_image),
            },
            Fact {
                name: "peak memory",
                value: format!("{:.0} MiB", report.peak_rss_mib),
            },
            Fact {
                name: "cost",
                value: usd(report.cost.usd),
            },
        ];
        let v = &report.versions;
        let mut versions = vec![
            Fact {
                name: "verger",
                value: v.verger.clone(),
            },
            Fact {
                name: "Apache DataFusion",
                value: v.datafusion.clone(),
            },
            Fact {
                name: "ONNX Runtime library",
                value: v.onnxruntime_library.clone(),
            },
            Fact {
                name: "inference device",
                value: v.device.to_string(),
            },
            Fact {
                name: "inference precision",
                value: v.precision.to_string(),
            },
            Fact {
                name: "model sha256",
                value: v.model_sha256.clone(),
            },
        ];
        if let Some(library) = &v.openvino_library {
            versions.push(Fact {
                name: "OpenVINO library (bf16)",
                value: library.clone(),
            });
        }
        if let Some(sha) = &v.pca_model_sha256 {
            versions.push(Fact {
                name: "pca/model.json sha256",
                value: sha.clone(),
            });
        }
        let total_wall: f64 = report.stages.iter().map(|s| s.wall_s).sum::<f64>().max(1e-9);
        let max_cpu = report
            .stages
            .iter()
            .map(|s| s.cpu_s)
            .fold(1e-9, f64::max)
            .max(total_wall);
        let stages = report
            .stages
            .iter()
            .map(|s| StageRow {
                stage: s.stage.clone(),
                wall: seconds(s.wall_s),
                cpu: seconds(s.cpu_s),
                wall_pct: round1(s.wall_s / total_wall * 100.0),
                cpu_pct: round1(s.cpu_s / max_cpu * 100.0),
                cores: format!("{:.2}", s.cpu_s / s.wall_s.max(1e-9)),
                peak: format!("{:.0} MiB", s.peak_rss_mib),
            })
            .collect();
        let mut reasons: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (_, stage, message) in &input.errors {
            *reasons.entry((stage.clone(), reason(message))).or_default() += 1;
        }
        let mut reasons: Vec<Reason> = reasons
            .into_iter()
            .map(|((stage, reason), count)| Reason { stage, reason, count })
            .collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.count));
        let map = map(input);
        let map_note = match (&report.pca, &map) {
            (None, _) => "no PCA: nothing was featurized".to_string(),
            (Some(p), None) if p.k < 2 => format!("the map needs two components; this run kept k = {}", p.k),
            (Some(_), None) => "no result rows to draw".to_string(),
            (Some(_), Some(m)) if (m.shown as u64) < m.rows => {
                format!(
                    "{} of {} rows drawn (every {}th)",
                    m.shown,
                    m.rows,
                    m.rows.div_ceil(m.shown as u64)
                )
            }
            (Some(_), Some(m)) => format!("all {} rows drawn", m.rows),
        };
        let cost = &report.cost;
        let o = &cost.original;
        Page {
            output: output.to_string(),
            finished_at: report.finished_at.clone(),
            failed_run: report.pca.is_none(),
            summary,
            versions,
            pca: report
                .pca
                .as_ref()
                .map(|p| (scree(p), p.given, p.drift_degrees.as_deref().and_then(drift))),
            colours: map
                .as_ref()
                .map(|m| m.legend.iter().map(|l| (l.class, l.colour.clone())).collect())
                .unwrap_or_default(),
            map,
            map_note,
            throughput: report.throughput.as_ref().and_then(throughput),
            stages,
            failed: input.errors.len() as u64,
            reasons,
            first_errors: input
                .errors
                .iter()
                .take(FIRST_ERRORS)
                .map(|(path, stage, message)| FailedRow {
                    path: path.clone(),
                    stage: stage.clone(),
                    message: message.clone(),
                })
                .collect(),
            residency: Residency {
                input: config("input"),
                output: config("output"),
                model: report
                    .config
                    .pointer("/featurize/model/location")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string(),
                buckets: report.buckets.clone(),
                allowed_regions: report
                    .config
                    .pointer("/featurize/store/allowed_regions")
                    // Reports of runs made before the store options held them.
                    .or_else(|| report.config.get("allowed_regions"))
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default(),
                encryption: report.encryption.clone(),
                pseudonymized: report.pseudonymized,
            },
            cost: CostView {
                machine: format!("{} x {} in {}", cost.nodes, cost.instance_type, cost.region),
                price: format!("{}/h a node", usd(cost.usd_per_node_hour)),
                usd: usd(cost.usd),
                per_million: cost.usd_per_million_images.map(usd),
                original: o.description.clone(),
                original_rate: format!("{:.0} images/s, {}/h", o.images_per_s, usd(o.usd_per_hour)),
                original_usd: usd(o.usd),
                original_per_million: usd(o.usd_per_million_images),
                saving: cost.saving.map(|s| format!("{s:.1}x")),
                basis: cost.basis.clone(),
                source: format!(
                    "{} (prices as of {}: {})",
                    cost.price_table, cost.price_as_of, cost.price_source
                ),
            },
            evaluations: report.evaluations.iter().map(evaluation).collect(),
            quality: report.quality.as_ref().map(|q| quality(q, &input.thumbnails)),
            cache: report.cache.as_ref().map(cache_facts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_round_values_inside_the_range() {
        let s = Scale::new(0.0, 1.0, 0.0, 100.0);
        let ticks = s.ticks(5, |v| format!("{v}"));
        let texts: Vec<&str> = ticks.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(ticks[5].at, 100.0);
        let s = Scale::new(-3.7, 12.2, 0.0, 100.0);
        let ticks = s.ticks(8, |v| format!("{v}"));
        assert!(ticks.iter().all(|t| (0.0..=100.0).contains(&t.at)));
        assert_eq!(ticks[0].text, "-2");
    }

    /// A report as a run writes it, with `labels` evaluated on.
    fn report(labels: &[String]) -> Report {
        let pricing = super::super::Pricing::new(&super::super::CostConfig::default()).unwrap();
        let cells: Vec<(usize, usize, u64)> = (0..labels.len())
            .flat_map(|t| [(t, t, 20), (t, (t + 1) % labels.len(), 1)])
            .collect();
        serde_json::from_value(serde_json::json!({
            "counts": {"listed": 100_002, "featurized": 100_000, "failed": 2},
            "stages": [{"stage": "list", "wall_s": 1.5, "cpu_s": 1.0}, {"stage": "featurize", "wall_s": 300.0, "cpu_s": 590.0}],
            "wall_s": 310.0, "cpu_s": 600.0, "images_per_s": 322.6, "cpu_ms_per_image": 6.0, "peak_rss_mib": 400.0,
            "pca": {"k": 50, "explained_variance": 0.8, "explained_variance_ratio": vec![0.016; 50],
                    "spectrum": vec![0.00078; 1280], "given": false},
            "cost": pricing.cost(310.0, 100_000),
            "versions": {"verger": "0", "datafusion": "55", "onnxruntime_library": "x", "model_sha256": "ab"},
            "finished_at": "2026-12-02T12:00:00Z",
            "throughput": {"started_s": 2.0, "interval_s": 2.0, "images": vec![640; 150]},
            "buckets": [{"bucket": "photos<eu>", "region": "eu-west-1", "source": "reported"}],
            "encryption": "AES256", "pseudonymized": true,
            "config": {"input": "s3://photos<eu>/in", "output": "s3://photos<eu>/out"},
            "evaluations": [{"classifier": "c", "rows": 100, "top1": 0.9, "top5": 1.0, "macro_f1": 0.9, "details": "c/e",
                             "confusion": {"labels": labels, "cells": cells}}],
        }))
        .unwrap()
    }

    #[test]
    fn text_from_the_data_is_escaped_and_the_page_stays_small_at_any_size() {
        let labels: Vec<String> = (0..88)
            .map(|i| format!("<script>alert({i})</script> & \"fruit\" 'x'"))
            .collect();
        let input = PageInput {
            errors: vec![
                (
                    "file:///a/<img src=x>.jpg".into(),
                    "decode".into(),
                    "broken JPEG data: <x>".into()
                );
                2
            ],
            // As many points as a run of any size draws.
            points: (0..MAP_POINTS)
                .map(|i| (labels[i % 88].clone(), (i as f64).sin() * 9.0, (i as f64).cos() * 7.0))
                .collect(),
            rows: 100_000,
            thumbnails: Default::default(),
        };
        let html = render(&report(&labels), "s3://photos<eu>/out", &input).unwrap();
        assert!(
            !html.contains("<script") && !html.contains("<img") && !html.contains("<eu>"),
            "unescaped text"
        );
        assert!(html.contains("&lt;script&gt;alert(87)&lt;&#x2f;script&gt; &amp; &quot;fruit&quot; &#x27;x&#x27;"));
        assert_eq!(html.matches("<circle").count(), MAP_POINTS);
        assert!(html.len() < 2 << 20, "{} bytes", html.len());
        for id in [
            "summary",
            "pca",
            "map",
            "time",
            "errors",
            "residency",
            "cost",
            "evaluation",
        ] {
            assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
        }
        assert!(html.contains("4000 of 100000 rows drawn"));
        assert!(html.contains("cheaper per image"));
    }

    #[test]
    fn reasons_fold_what_varies_between_images() {
        assert_eq!(reason("broken JPEG data: marker 0xd9 at 1234"), "broken JPEG data");
        assert_eq!(
            reason("image size 90000x90000 (8100000000 pixels) exceeds the limit of 178956970 pixels"),
            "image size NxN (N pixels) exceeds the limit of N pixels"
        );
    }
}
