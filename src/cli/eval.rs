//! `otlens eval`: Recall@K and mAP@R of one or more models on a query/gallery split, through
//! the widget's preprocessing, and the accuracy of the colour names the widget would give,
//! written as a Markdown report with a Recall@K plot.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::colour::{
    colour_similarity, describe, palette_codes, train_palette, vote_colour_name, CompactColour, HISTOGRAM_LEN,
    NAME_VOTERS, NAMING_SHAPE_WEIGHT,
};
use crate::model::Embedder;
use crate::preprocess::DecodeLimits;
use crate::progress::PhotoProgress;
use crate::train::dataset::{Dataset, Role};
use crate::train::features::{extract_as_indexed, Features, Rows};
use crate::train::metrics::{score_queries, summarise, Labelled, Retrieval};
use crate::train::plot::recall_curves;

/// How many of the most frequent mistakes (colour names; categories of misses) a report lists.
const CONFUSIONS_REPORTED: usize = 15;

/// The K of Recall@K in reports.
pub const REPORTED_K: [usize; 3] = [1, 10, 20];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// ONNX embedding model(s) to evaluate; give --model more than once to compare. Without
    /// one, only colour names are evaluated.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Split CSV: path, item_id, role (query/gallery), optional category and colour (e.g.
    /// In-shop's val.csv, or Fashion Product Images' products.csv).
    #[arg(long)]
    pub split: PathBuf,
    /// What a hit is: a photo of the query's product, or of its category (class-level retrieval).
    #[arg(long = "match", value_enum, default_value_t = Match::Product)]
    pub match_by: Match,
    /// When the split has no query photos, the products held out as queries: one in this many.
    #[arg(long, default_value_t = 5)]
    pub queries_every: u32,
    /// Markdown report to write; the Recall@K plot goes beside it as .svg.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where embeddings are cached between runs.
    #[arg(long, default_value = ".cache/features")]
    pub cache: PathBuf,
    /// Also name colours from the gallery's colours as a catalog index stores them: 0 for each
    /// photo's own 24-byte colour, N for the nearest word of a palette of N trained on the
    /// gallery (`build-index --colour-palette`). A list, e.g. 0,1024,4096.
    #[arg(long, value_delimiter = ',')]
    pub stored_colours: Vec<usize>,
}

/// What makes a gallery photo the right answer to a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Match {
    /// The same product (instance retrieval).
    Product,
    /// The same category, e.g. articleType (class-level retrieval).
    Category,
}

/// One model's figures on the split: overall, and per category of the query photo.
pub struct ModelReport {
    pub name: String,
    pub dims: usize,
    pub overall: Retrieval,
    pub by_category: BTreeMap<String, Retrieval>,
    /// The most frequent misses at rank 1: ((category of the query, category of its first
    /// result), queries), most frequent first; empty when the split has no categories.
    pub confusions: Vec<((String, String), usize)>,
    /// Recall@K for K = 1..=20, for the plot.
    pub curve: Vec<f64>,
    pub seconds: f64,
}

/// Ranks `dataset`'s gallery for each of its queries with `embeddings` (one row per photo).
pub fn evaluate_split(name: &str, dataset: &Dataset, embeddings: &Features, match_by: Match) -> Result<ModelReport> {
    let queries = dataset.with_role(Role::Query);
    let gallery = dataset.with_role(Role::Gallery);
    if queries.is_empty() || gallery.is_empty() {
        bail!("the split needs photos with role \"query\" and with role \"gallery\"");
    }
    let label_of = match match_by {
        Match::Product => dataset.photos.iter().map(|p| p.item).collect(),
        Match::Category => numbered(dataset.photos.iter().map(|p| p.category.as_str())),
    };
    let labels = |positions: &[usize]| -> Vec<u32> { positions.iter().map(|&i| label_of[i]).collect() };
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
    let (by_category, confusions) = if grouped.len() > 1 {
        let category = |photo: usize| dataset.photos[photo].category.as_str();
        let misses = scores
            .iter()
            .zip(&queries)
            .filter(|(score, _)| score.first_hit != Some(1))
            .filter_map(|(score, &q)| Some((category(q), category(gallery[score.first_result?]))));
        let by_category = grouped
            .into_iter()
            .map(|(category, s)| (category, summarise(&s, gallery.len(), &REPORTED_K)))
            .collect();
        (by_category, most_frequent(misses))
    } else {
        (BTreeMap::new(), Vec::new())
    };
    Ok(ModelReport {
        name: name.to_owned(),
        dims: embeddings.dims,
        overall: summarise(&all, gallery.len(), &REPORTED_K),
        by_category,
        confusions,
        curve,
        seconds: 0.0,
    })
}

/// The [`CONFUSIONS_REPORTED`] most frequent of `pairs`, with their counts, most frequent first
/// (ties in alphabetical order).
fn most_frequent<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<((String, String), usize)> {
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    for pair in pairs {
        *counts.entry(pair).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    counts.truncate(CONFUSIONS_REPORTED);
    counts
        .into_iter()
        .map(|((label, answer), count)| ((label.to_owned(), answer.to_owned()), count))
        .collect()
}

/// Each value's number in order of first appearance, so equal values get equal numbers.
pub(crate) fn numbered<'a>(values: impl Iterator<Item = &'a str>) -> Vec<u32> {
    let mut numbers: HashMap<&str, u32> = HashMap::new();
    values
        .map(|value| {
            let next = numbers.len() as u32;
            *numbers.entry(value).or_insert(next)
        })
        .collect()
}

/// The split's labelled photos and their colour histograms, computed once for every report.
#[derive(Clone)]
pub struct ColourSplit {
    queries: Vec<usize>,
    references: Vec<usize>,
    query_rows: Vec<f32>,
    reference_rows: Vec<f32>,
    /// Each photo's colour label, numbered.
    names: Vec<u32>,
}

/// Describes the colour of the split's labelled photos, or `None` when it has no colour labels.
pub fn colour_split(dataset: &Dataset) -> Result<Option<ColourSplit>> {
    let labelled = |role| -> Vec<usize> {
        dataset
            .with_role(role)
            .into_iter()
            .filter(|&i| !dataset.photos[i].colour.is_empty())
            .collect()
    };
    let (queries, references) = (labelled(Role::Query), labelled(Role::Gallery));
    if queries.is_empty() || references.is_empty() {
        return Ok(None);
    }
    let progress = PhotoProgress::new(queries.len() + references.len(), "colour");
    let limits = DecodeLimits::default();
    let histograms = |positions: &[usize]| -> Result<Vec<f32>> {
        let rows: Vec<Result<Vec<f32>>> = positions
            .par_iter()
            .map(|&i| {
                let image = dataset.photos[i].decode(&limits)?;
                progress.inc();
                Ok(describe(&image).histogram)
            })
            .collect();
        Ok(rows.into_iter().collect::<Result<Vec<_>>>()?.concat())
    };
    let (query_rows, reference_rows) = (histograms(&queries)?, histograms(&references)?);
    progress.finish();
    Ok(Some(ColourSplit {
        queries,
        references,
        query_rows,
        reference_rows,
        names: numbered(dataset.photos.iter().map(|p| p.colour.as_str())),
    }))
}

impl ColourSplit {
    /// The split with the references' colours as an index stores them: each its own
    /// [`CompactColour`] (`palette` 0) or the nearest word of a palette of `palette` of them.
    fn as_stored(&self, palette: usize) -> ColourSplit {
        let own: Vec<CompactColour> = self
            .reference_rows
            .chunks_exact(HISTOGRAM_LEN)
            .map(CompactColour::from_histogram)
            .collect();
        let stored = if palette == 0 {
            own
        } else {
            let words = train_palette(&own, palette);
            palette_codes(&words, &own)
                .into_iter()
                .map(|code| words[usize::from(code)])
                .collect()
        };
        ColourSplit {
            reference_rows: stored.iter().flat_map(CompactColour::to_histogram).collect(),
            ..self.clone()
        }
    }
}

/// How often the colour name voted by the gallery's labelled photos (as the widget names a
/// shopper's photo from the catalog's) is the query's own label.
pub struct ColourReport {
    /// What the vote compared: colour alone, or colour and a model's embedding.
    pub by: String,
    pub queries: usize,
    pub references: usize,
    pub accuracy: f64,
    /// The most common label among the queries, and its share: what always guessing it scores.
    pub majority: (String, f64),
    /// Per label: (queries, correctly named).
    pub by_colour: BTreeMap<String, (usize, usize)>,
    /// The most frequent mistakes: ((label, name given), queries), most frequent first.
    pub confusions: Vec<((String, String), usize)>,
}

/// Names each query's colour by a vote of the most similar references: by colour histogram,
/// plus [`NAMING_SHAPE_WEIGHT`] x the cosine of `embeddings` (one row per photo) when given.
pub fn evaluate_colour(
    dataset: &Dataset,
    split: &ColourSplit,
    by: &str,
    embeddings: Option<&Features>,
) -> ColourReport {
    let shape = |q: usize, r: usize| -> f32 {
        // Embedding rows are L2-normalised, so their dot product is the cosine.
        embeddings.map_or(0.0, |e| {
            NAMING_SHAPE_WEIGHT * e.row(q).iter().zip(e.row(r)).map(|(x, y)| x * y).sum::<f32>()
        })
    };
    let named: Vec<Option<u32>> = split
        .query_rows
        .par_chunks_exact(HISTOGRAM_LEN)
        .zip(&split.queries)
        .map(|(query, &q)| {
            let candidates = split
                .reference_rows
                .chunks_exact(HISTOGRAM_LEN)
                .zip(&split.references)
                .map(|(reference, &r)| (colour_similarity(query, reference) + shape(q, r), split.names[r]))
                .collect();
            vote_colour_name(candidates)
        })
        .collect();
    let label_of: HashMap<u32, &str> = split
        .names
        .iter()
        .zip(&dataset.photos)
        .map(|(&n, p)| (n, p.colour.as_str()))
        .collect();
    let mut by_colour: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut mistakes = Vec::new();
    let mut correct = 0;
    for (&q, name) in split.queries.iter().zip(&named) {
        let label = &dataset.photos[q].colour;
        let right = *name == Some(split.names[q]);
        let tally = by_colour.entry(label.clone()).or_default();
        tally.0 += 1;
        tally.1 += usize::from(right);
        correct += usize::from(right);
        if let (false, Some(name)) = (right, name) {
            mistakes.push((label.as_str(), label_of[name]));
        }
    }
    let queries = split.queries.len();
    let majority = by_colour
        .iter()
        .max_by_key(|(_, (count, _))| *count)
        .map(|(name, (count, _))| (name.clone(), *count as f64 / queries as f64))
        .unwrap_or_default();
    ColourReport {
        by: by.to_owned(),
        queries,
        references: split.references.len(),
        accuracy: correct as f64 / queries as f64,
        majority,
        by_colour,
        confusions: most_frequent(mistakes),
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut dataset = Dataset::read(&args.split)?;
    if dataset.with_role(Role::Query).is_empty() {
        dataset.hold_out_queries(args.queries_every);
        println!(
            "{} has no query photos: the {} photos of one product in {} are queries",
            args.split.display(),
            dataset.with_role(Role::Query).len(),
            args.queries_every
        );
    }
    let colour = colour_split(&dataset)?;
    // The full split first, then as each kind of stored colour.
    let colour_splits: Vec<(String, ColourSplit)> = colour
        .iter()
        .flat_map(|split| {
            let stored = args.stored_colours.iter().map(|&palette| match palette {
                0 => ("colour stored per photo".to_owned(), split.as_stored(0)),
                words => (format!("colour stored in a palette of {words}"), split.as_stored(words)),
            });
            std::iter::once(("colour".to_owned(), split.clone())).chain(stored)
        })
        .collect();
    let mut colour_reports = Vec::new();
    for (by, split) in &colour_splits {
        colour_reports.push(evaluate_colour(&dataset, split, by, None));
        println!("{}", colour_line(colour_reports.last().expect("just pushed")));
    }
    if colour.is_none() && args.models.is_empty() {
        bail!("give --model to evaluate, or a split with colour labels");
    }
    let mut reports = Vec::new();
    for path in &args.models {
        let started = Instant::now();
        let bytes = fs::read(path).with_context(|| format!("cannot read the model {}", path.display()))?;
        let embedder = Embedder::from_bytes(&bytes).with_context(|| format!("cannot load {}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
        let embeddings = extract_as_indexed(&embedder, &dataset, &args.cache, &name)?;
        let mut report = evaluate_split(&name, &dataset, &embeddings, args.match_by)?;
        report.seconds = started.elapsed().as_secs_f64();
        println!("{}", summary_line(&report));
        reports.push(report);
        for (by, split) in &colour_splits {
            let by = format!("{by} + {name}");
            colour_reports.push(evaluate_colour(&dataset, split, &by, Some(&embeddings)));
            println!("{}", colour_line(colour_reports.last().expect("just pushed")));
        }
    }
    if let Some(path) = &args.report {
        let plot = path.with_extension("svg");
        if !reports.is_empty() {
            let curves: Vec<_> = reports.iter().map(|r| (r.name.clone(), r.curve.clone())).collect();
            recall_curves(&curves, &plot)?;
        }
        let markdown = markdown(&args, &dataset, &reports, &colour_reports, &plot);
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

fn colour_line(report: &ColourReport) -> String {
    format!(
        "colour names by {}: accuracy {:.3} ({} queries named from {} labelled gallery photos; always \"{}\" \
         would score {:.3})",
        report.by, report.accuracy, report.queries, report.references, report.majority.0, report.majority.1
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

fn markdown(args: &Args, dataset: &Dataset, reports: &[ModelReport], colour: &[ColourReport], plot: &Path) -> String {
    let queries = dataset.with_role(Role::Query).len();
    let gallery = dataset.with_role(Role::Gallery).len();
    let mut out = format!("# Evaluation on {}\n\n", args.split.display());
    if let Some(first) = colour.first() {
        let _ = write!(
            out,
            "## Colour names\n\nEach of {} query photos is named by a vote of the {NAME_VOTERS} most similar \
             labelled gallery photos (of {}), as the widget names a shopper's photo from the catalog: similar by \
             colour histogram, or by colour histogram + {NAMING_SHAPE_WEIGHT} x the model's cosine. Always \
             answering \"{}\" would score {:.3}.\n\n| by | accuracy |\n|---|---|\n",
            first.queries, first.references, first.majority.0, first.majority.1
        );
        for report in colour {
            let _ = writeln!(out, "| {} | **{:.3}** |", report.by, report.accuracy);
        }
        let columns: Vec<&str> = colour.iter().map(|r| r.by.as_str()).collect();
        let _ = write!(
            out,
            "\n| colour | queries | {} |\n|---|---|{}\n",
            columns.join(" | "),
            "---|".repeat(columns.len())
        );
        let mut by_count: Vec<_> = first.by_colour.iter().collect();
        by_count.sort_by_key(|(name, (count, _))| (std::cmp::Reverse(*count), name.as_str()));
        for (name, (count, _)) in by_count {
            let accuracy: Vec<String> = colour
                .iter()
                .map(|r| r.by_colour.get(name).map_or(0, |t| t.1))
                .map(|right| format!("{:.3}", right as f64 / *count as f64))
                .collect();
            let _ = writeln!(out, "| {name} | {count} | {} |", accuracy.join(" | "));
        }
        for report in colour {
            let _ = write!(
                out,
                "\nMost frequent mistakes by {}:\n\n| label | named | queries |\n|---|---|---|\n",
                report.by
            );
            for ((label, named), count) in &report.confusions {
                let _ = writeln!(out, "| {label} | {named} | {count} |");
            }
        }
        out.push('\n');
    }
    if reports.is_empty() {
        return out;
    }
    let hit = match args.match_by {
        Match::Product => "a photo of the query's product",
        Match::Category => "a photo of the query's category",
    };
    let _ = write!(
        out,
        "## Retrieval\n\n{queries} queries against {gallery} gallery photos of {} products. A hit at K: {hit} is \
         among its K nearest gallery photos (cosine). Queries are embedded as the widget embeds a shopper's photo, \
         gallery photos as the index stores them (averaged with their mirror image). mAP@R: precision over the \
         first R results, R = the number of gallery photos that are hits.\n\n",
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
            "\n### {} by category of the query\n\n| category | queries | R@1 | R@10 | R@20 | mAP@R |\n\
             |---|---|---|---|---|---|\n",
            report.name
        );
        for (category, figures) in &report.by_category {
            out.push_str(&row(category, figures));
        }
        if report.confusions.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "\nMost frequent misses at rank 1 by {}:\n\n| category | first result's category | queries |\n\
             |---|---|---|\n",
            report.name
        );
        for ((category, found), count) in &report.confusions {
            let _ = writeln!(out, "| {category} | {found} | {count} |");
        }
    }
    out
}
