//! `otlens eval`: Recall@K and mAP@R of one or more models on a query/gallery split, through
//! the widget's preprocessing, written as a Markdown report with a Recall@K plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::model::Embedder;
use crate::train::dataset::{Dataset, Role};
use crate::train::features::{extract, Features, Rows};
use crate::train::metrics::{score_queries, summarise, Labelled, Retrieval};
use crate::train::plot::recall_curves;

/// The K of Recall@K in reports.
pub const REPORTED_K: [usize; 3] = [1, 10, 20];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// ONNX embedding model(s) to evaluate; give --model more than once to compare.
    #[arg(long = "model", required = true)]
    pub models: Vec<PathBuf>,
    /// Split CSV: path, item_id, role (query/gallery), optional category (e.g. In-shop's val.csv).
    #[arg(long)]
    pub split: PathBuf,
    /// Markdown report to write; the Recall@K plot goes beside it as .svg.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where embeddings are cached between runs.
    #[arg(long, default_value = ".cache/features")]
    pub cache: PathBuf,
}

/// One model's figures on the split: overall, and per category of the query photo.
pub struct ModelReport {
    pub name: String,
    pub dims: usize,
    pub overall: Retrieval,
    pub by_category: BTreeMap<String, Retrieval>,
    /// Recall@K for K = 1..=20, for the plot.
    pub curve: Vec<f64>,
    pub seconds: f64,
}

/// Ranks `dataset`'s gallery for each of its queries with `embeddings` (one row per photo).
pub fn evaluate_split(name: &str, dataset: &Dataset, embeddings: &Features) -> Result<ModelReport> {
    let queries = dataset.with_role(Role::Query);
    let gallery = dataset.with_role(Role::Gallery);
    if queries.is_empty() || gallery.is_empty() {
        bail!("the split needs photos with role \"query\" and with role \"gallery\"");
    }
    let labels = |positions: &[usize]| -> Vec<u32> { positions.iter().map(|&i| dataset.photos[i].item).collect() };
    let (query_rows, gallery_rows) = (embeddings.select(&queries), embeddings.select(&gallery));
    let (query_labels, gallery_labels) = (labels(&queries), labels(&gallery));
    let scores = score_queries(
        &Labelled {
            vectors: &query_rows.values,
            dims: embeddings.dims,
            labels: &query_labels,
        },
        &Labelled {
            vectors: &gallery_rows.values,
            dims: embeddings.dims,
            labels: &gallery_labels,
        },
    );
    let all: Vec<_> = scores.iter().collect();
    let curve_ks: Vec<usize> = (1..=20).collect();
    let curve = summarise(&all, gallery.len(), &curve_ks)
        .recall
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let mut grouped: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for (score, &q) in scores.iter().zip(&queries) {
        grouped
            .entry(dataset.photos[q].category.clone())
            .or_default()
            .push(score);
    }
    let by_category = if grouped.len() > 1 {
        grouped
            .into_iter()
            .map(|(category, s)| (category, summarise(&s, gallery.len(), &REPORTED_K)))
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok(ModelReport {
        name: name.to_owned(),
        dims: embeddings.dims,
        overall: summarise(&all, gallery.len(), &REPORTED_K),
        by_category,
        curve,
        seconds: 0.0,
    })
}

pub fn run(args: Args) -> Result<()> {
    let dataset = Dataset::read(&args.split)?;
    let mut reports = Vec::new();
    for path in &args.models {
        let started = Instant::now();
        let bytes = fs::read(path).with_context(|| format!("cannot read the model {}", path.display()))?;
        let embedder = Embedder::from_bytes(&bytes).with_context(|| format!("cannot load {}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
        let embeddings = extract(&embedder, &dataset, 0, &args.cache, &name)?;
        let mut report = evaluate_split(&name, &dataset, &embeddings)?;
        report.seconds = started.elapsed().as_secs_f64();
        println!("{}", summary_line(&report));
        reports.push(report);
    }
    if let Some(path) = &args.report {
        let plot = path.with_extension("svg");
        let curves: Vec<_> = reports.iter().map(|r| (r.name.clone(), r.curve.clone())).collect();
        recall_curves(&curves, &plot)?;
        let markdown = markdown(&args.split, &dataset, &reports, &plot);
        fs::write(path, markdown).with_context(|| format!("cannot write {}", path.display()))?;
        println!("report: {} (plot {})", path.display(), plot.display());
    }
    Ok(())
}

fn summary_line(report: &ModelReport) -> String {
    let o = &report.overall;
    let recall: Vec<String> = o.recall.iter().map(|(k, r)| format!("R@{k} {r:.3}")).collect();
    format!(
        "{}: {}, mAP@R {:.3} ({} queries, {} gallery photos, {} dims, {:.0} s)",
        report.name,
        recall.join(", "),
        o.map_at_r,
        o.queries,
        o.gallery,
        report.dims,
        report.seconds
    )
}

fn row(name: &str, r: &Retrieval) -> String {
    let recall: Vec<String> = REPORTED_K
        .iter()
        .map(|&k| format!("{:.3}", r.recall_at(k).unwrap_or(f64::NAN)))
        .collect();
    format!(
        "| {name} | {} | {} | {:.3} |\n",
        r.queries,
        recall.join(" | "),
        r.map_at_r
    )
}

fn markdown(split: &Path, dataset: &Dataset, reports: &[ModelReport], plot: &Path) -> String {
    let queries = dataset.with_role(Role::Query).len();
    let gallery = dataset.with_role(Role::Gallery).len();
    let mut out = format!(
        "# Retrieval on {}\n\n{queries} queries against {gallery} gallery photos of {} products. A hit at K: a photo \
         of the query's product is among its K nearest gallery photos (cosine). mAP@R: precision over the first R \
         results, R = the product's gallery photos.\n\n",
        split.display(),
        dataset.items.len()
    );
    out.push_str("| model | queries | R@1 | R@10 | R@20 | mAP@R |\n|---|---|---|---|---|---|\n");
    for report in reports {
        out.push_str(&row(&format!("{} ({} d)", report.name, report.dims), &report.overall));
    }
    let plot_name = plot
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let _ = write!(out, "\n![Recall@K]({plot_name})\n");
    for report in reports.iter().filter(|r| !r.by_category.is_empty()) {
        let _ = write!(
            out,
            "\n## {} by category of the query\n\n| category | queries | R@1 | R@10 | R@20 | mAP@R |\n\
             |---|---|---|---|---|---|\n",
            report.name
        );
        for (category, figures) in &report.by_category {
            out.push_str(&row(category, figures));
        }
    }
    out
}
