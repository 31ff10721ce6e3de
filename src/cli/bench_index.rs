//! `otlens bench-index`: what each index codec keeps of exact float search on a real
//! catalog's embeddings (gallery photos embedded as `build-index` stores them, with their
//! mirror image), what it costs per product, and how fast it searches (as a ratio to int8,
//! measured in the same run).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;

use super::build_index::default_probe;
use crate::catalog::Product;
use crate::index::{unit_length, Codec, Filter, Hit, Index, IndexError};
use crate::model::Embedder;
use crate::train::dataset::{Dataset, Role};
use crate::train::features::{extract_as_indexed, Rows};

const K: usize = 10;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// ONNX embedding model whose embeddings are indexed.
    #[arg(long)]
    pub model: PathBuf,
    /// Split CSV (e.g. Fashion Product Images' products.csv): the gallery photos are indexed,
    /// the query photos search it. A split without queries holds out one product in 5.
    #[arg(long)]
    pub split: PathBuf,
    /// Query photos searched, spread evenly over the split's queries.
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Product-quantisation sizes to compare (bytes per product; those above the embedding's
    /// dimensions are skipped).
    #[arg(long, value_delimiter = ',', default_value = "16,32,40,64")]
    pub pq_subspaces: Vec<usize>,
    /// Refined pq to compare, as `subspaces+refinement` bytes per product (`build-index
    /// --pq-subspaces S --pq-refinement R`).
    #[arg(long, value_delimiter = ',', default_value = "16+16", value_parser = parse_refined)]
    pub refined_pq: Vec<(usize, usize)>,
    /// Where embeddings are cached between runs (shared with `otlens eval`).
    #[arg(long, default_value = ".cache/features")]
    pub cache: PathBuf,
    /// Inverted lists compared with the flat scan (default: about the square root of the
    /// gallery size, as `build-index` picks from 50,000 products up).
    #[arg(long)]
    pub lists: Option<usize>,
    /// Lists scanned per query, for each of which the partitioned int8 index is measured.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    pub probes: Vec<usize>,
    /// Products per inverted list, instead of a list count: with `--scales`, shows how the
    /// lists a query must scan grow with the catalog when lists keep their size, which is
    /// what a catalog too large to measure (1M products) can be extrapolated from.
    #[arg(long, conflicts_with = "lists")]
    pub list_size: Option<usize>,
    /// Smaller catalogs to partition too, each a random sample of the gallery of this many
    /// products (searched by the same queries, against its own exact top 10).
    #[arg(long, value_delimiter = ',')]
    pub scales: Vec<usize>,
    /// Shares of the catalog's own neighbours that a ranged catalog's probe margin is chosen
    /// to keep (`build-index --list-recall`), each measured beside the fixed numbers of lists.
    #[arg(long, value_delimiter = ',', default_value = "0.97,0.98,0.99")]
    pub list_recalls: Vec<f64>,
}

pub fn run(args: Args) -> Result<()> {
    let mut dataset = Dataset::read(&args.split)?;
    if dataset.with_role(Role::Query).is_empty() {
        dataset.hold_out_queries(5);
    }
    let bytes = fs::read(&args.model).with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let embedder = Embedder::from_bytes(&bytes).with_context(|| format!("cannot load {}", args.model.display()))?;
    let embeddings = extract_as_indexed(&embedder, &dataset, &args.cache, "embeddings")?;
    let dims = embeddings.dims;
    let gallery = embeddings.select(&dataset.with_role(Role::Gallery));
    let all_queries = dataset.with_role(Role::Query);
    let step = all_queries.len().div_ceil(args.queries.max(1)).max(1);
    let queries = embeddings.select(&all_queries.into_iter().step_by(step).collect::<Vec<_>>());
    let gallery_rows: Vec<Vec<f32>> = gallery.values.chunks_exact(dims).map(unit_length).collect();
    let query_rows: Vec<Vec<f32>> = queries.values.chunks_exact(dims).map(unit_length).collect();
    println!(
        "{} gallery photos, {} queries, {dims} dimensions; recall@{K} against exact f32 cosine search",
        gallery_rows.len(),
        query_rows.len()
    );

    let exact: Vec<Vec<usize>> = query_rows
        .par_iter()
        .map(|query| exact_top_k(query, &gallery_rows))
        .collect();
    let products = numbered(gallery_rows.len());
    let sha256 = &embedder.info().sha256;
    // A narrow trained embedding has fewer dimensions than the larger default sizes.
    let (fitting, too_wide): (Vec<usize>, Vec<usize>) = args.pq_subspaces.iter().partition(|&&size| size <= dims);
    for size in too_wide {
        println!("pq{size} skipped: more subspaces than the embedding's {dims} dimensions");
    }
    let refined = args
        .refined_pq
        .iter()
        .filter(|&&(subspaces, _)| subspaces <= dims)
        .map(|&(subspaces, refinement)| Codec::RefinedProductQuantised { subspaces, refinement });
    let codecs = [Codec::Int8, Codec::Binary]
        .into_iter()
        .chain(
            fitting
                .into_iter()
                .map(|subspaces| Codec::ProductQuantised { subspaces }),
        )
        .chain(refined);
    println!("| codec | vector bytes per product | recall@{K} | search time vs int8 | build |");
    println!("|---|---|---|---|---|");
    let mut int8_time = None;
    let mut int8 = None;
    // One line of the table: recall, search time as a ratio to int8's (the first line), build.
    let mut report = |label: String, index: &Index, vector_bytes: f64, build: Duration| {
        let (recall, search) = measure(index, &query_rows, &exact);
        let ratio = search.as_secs_f64() / int8_time.get_or_insert(search).as_secs_f64();
        println!(
            "| {label} | {vector_bytes:.1} | {recall:.3} | {ratio:.2} ({:.2} ms) | {:.1} s |",
            per_query_ms(search, query_rows.len()),
            build.as_secs_f64()
        );
    };
    for codec in codecs {
        let started = Instant::now();
        let index = match Index::build_with(codec, sha256, products.clone(), &gallery_rows) {
            Err(error @ IndexError::BadRefinement { .. }) => {
                println!("{codec} skipped: {error}");
                continue;
            }
            built => built?,
        };
        let build = started.elapsed();
        let vector_bytes = index.vector_bytes() as f64 / gallery_rows.len() as f64;
        report(codec.to_string(), &index, vector_bytes, build);
        match codec {
            Codec::Int8 => int8 = Some(index),
            Codec::ProductQuantised { .. } | Codec::RefinedProductQuantised { .. } => {
                // The same codes as offsets from the centroids of the inverted lists a large
                // catalog is stored in; every list scanned, so that only the codes differ.
                let lists = list_count(&args, gallery_rows.len());
                let started = Instant::now();
                let index = index.partitioned(lists, lists);
                let label = format!("{codec}, offsets from {lists} lists' centroids (build: grouping)");
                report(label, &index, vector_bytes, started.elapsed());
                // As a ranged catalog searches them: only the lists within its probe margin.
                let most = default_probe(lists, true);
                for &recall in &args.list_recalls {
                    let started = Instant::now();
                    let (within, margin) = index.clone().with_calibrated_margin(recall, most);
                    let margin = margin.map_or(0.0, |m| m.margin);
                    let (mean_lists, scanned) = mean_scanned(&within, &query_rows);
                    let fetched = fetched_per_query(&within, &query_rows)?;
                    let label = format!(
                        "{codec}, offsets, lists within {margin:.3} (for {recall}): \
                         {mean_lists:.1} lists, {scanned:.0} products, {fetched:.1} KB fetched \
                         as a ranged catalog on average (build: margin)"
                    );
                    report(label, &within, vector_bytes, started.elapsed());
                }
            }
            Codec::Binary => {}
        }
    }

    let (Some(int8), Some(int8_time)) = (int8, int8_time) else {
        return Ok(());
    };
    println!("\nint8 in inverted lists; recall@{K} against exact f32 search of the same products");
    println!("| products | lists | lists scanned | products scanned (share) | recall@{K} | search time vs flat int8 |");
    println!("|---|---|---|---|---|---|");
    let mut scales: Vec<usize> = args
        .scales
        .iter()
        .copied()
        .filter(|&n| n < gallery_rows.len())
        .collect();
    scales.push(gallery_rows.len());
    for size in scales {
        let (index, exact) = if size == gallery_rows.len() {
            (int8.clone(), exact.clone())
        } else {
            sampled(size, &gallery_rows, &query_rows, sha256)?
        };
        let lists = list_count(&args, size);
        let partitioned = index.partitioned(lists, 1);
        // A fixed number of lists, labelled by it; then calibrated margins, labelled by what
        // they were chosen for, and by the lists their searches scan on average.
        let fixed = args
            .probes
            .iter()
            .map(|&probe| (probe.to_string(), false, partitioned.clone().with_probe(probe)));
        let most = default_probe(lists, true);
        let calibrated = args.list_recalls.iter().map(|&recall| {
            let (index, margin) = partitioned.clone().with_calibrated_margin(recall, most);
            let margin = margin.map_or(0.0, |m| m.margin);
            (
                format!("within {margin:.3} (for {recall}), at most {most}"),
                true,
                index,
            )
        });
        for (label, calibrated, index) in fixed.chain(calibrated) {
            let (recall, search) = measure(&index, &query_rows, &exact);
            let (mean_lists, scanned) = mean_scanned(&index, &query_rows);
            let label = if calibrated {
                format!("{label}: {mean_lists:.1} on average")
            } else {
                label
            };
            println!(
                "| {size} | {lists} | {label} | {scanned:.0} ({:.1}%) | {recall:.3} | {:.2} ({:.2} ms) |",
                100.0 * scanned / size as f64,
                search.as_secs_f64() / int8_time.as_secs_f64(),
                per_query_ms(search, query_rows.len())
            );
        }
    }
    Ok(())
}

/// The inverted lists a catalog of `size` products is grouped into: `--lists`, or lists of
/// `--list-size`, or about the square root of the size, as `build-index` picks.
fn list_count(args: &Args, size: usize) -> usize {
    match (args.lists, args.list_size) {
        (Some(lists), _) => lists,
        (None, Some(list_size)) => size.div_ceil(list_size.max(1)),
        (None, None) => (size as f64).sqrt().round() as usize,
    }
}

/// KB a ranged catalog of `index` fetches per query on average: the blocks of the lists a
/// search scans and, for refined pq, the refinement blocks of its best candidates (there are no
/// colours, and the pages of the results' details are left out).
fn fetched_per_query(index: &Index, queries: &[Vec<f32>]) -> Result<f64> {
    let (head, lists_file) = index.to_ranged_bytes()?;
    let head = Index::from_bytes(&head)?;
    let fetched: u64 = queries
        .par_iter()
        .map(|query| {
            let mut index = head.clone();
            let rounds = index
                .load_needed(&lists_file, query, None, K, &Filter::ANY)
                .expect("the blocks the catalog was written with");
            let range = |&block: &usize| index.block_range(block).expect("a block the head names");
            rounds
                .iter()
                .flatten()
                .map(range)
                .map(|range| range.end - range.start)
                .sum::<u64>()
        })
        .sum();
    Ok(fetched as f64 / queries.len() as f64 / 1000.0)
}

/// `S+R`: refined pq's bytes per product, of its codes and of its refinement.
fn parse_refined(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{text:?} is not subspaces+refinement, e.g. 16+16");
    let (subspaces, refinement) = text.split_once('+').ok_or_else(bad)?;
    Ok((
        subspaces.trim().parse().map_err(|_| bad())?,
        refinement.trim().parse().map_err(|_| bad())?,
    ))
}

/// The lists and products a search scans, on average over `queries`.
fn mean_scanned(index: &Index, queries: &[Vec<f32>]) -> (f64, f64) {
    let (lists, products) = queries
        .iter()
        .map(|query| index.scanned(query, K, &Filter::ANY))
        .fold((0, 0), |(lists, products), (l, p)| (lists + l, products + p));
    let count = queries.len() as f64;
    (lists as f64 / count, products as f64 / count)
}

/// An int8 index of `size` of the gallery's products drawn at random (seeded), with the
/// exact top K of each query among them.
fn sampled(size: usize, gallery: &[Vec<f32>], queries: &[Vec<f32>], sha256: &str) -> Result<(Index, Vec<Vec<usize>>)> {
    let drawn = rand::seq::index::sample(&mut StdRng::seed_from_u64(size as u64), gallery.len(), size);
    let rows: Vec<Vec<f32>> = drawn.iter().map(|position| gallery[position].clone()).collect();
    let exact = queries.par_iter().map(|query| exact_top_k(query, &rows)).collect();
    Ok((Index::build_with(Codec::Int8, sha256, numbered(size), &rows)?, exact))
}

/// Products named by their position, which `measure` reads back.
fn numbered(count: usize) -> Vec<Product> {
    (0..count)
        .map(|n| Product {
            id: n.to_string(),
            ..Product::default()
        })
        .collect()
}

/// Recall@K of `index` against `exact` (gallery positions, which are the products' ids), and
/// the time its searches took on one thread, as in a browser worker.
fn measure(index: &Index, queries: &[Vec<f32>], exact: &[Vec<usize>]) -> (f64, Duration) {
    let started = Instant::now();
    let found: Vec<Vec<Hit>> = queries
        .iter()
        .map(|query| index.search(query, K, &Filter::ANY))
        .collect();
    let search = started.elapsed();
    let recalled: usize = found
        .iter()
        .zip(exact)
        .map(|(hits, exact)| {
            // A partitioned index stores the products in another order than the gallery's.
            let ids: Vec<usize> = hits
                .iter()
                .map(|hit| index.products()[hit.product].id.parse().expect("numeric ids"))
                .collect();
            exact.iter().filter(|position| ids.contains(position)).count()
        })
        .sum();
    (recalled as f64 / (queries.len() * K) as f64, search)
}

fn per_query_ms(total: Duration, queries: usize) -> f64 {
    total.as_secs_f64() * 1000.0 / queries as f64
}

fn exact_top_k(query: &[f32], gallery: &[Vec<f32>]) -> Vec<usize> {
    let mut scored: Vec<(usize, f32)> = gallery
        .iter()
        .map(|row| row.iter().zip(query).map(|(a, b)| a * b).sum())
        .enumerate()
        .collect();
    scored.select_nth_unstable_by(K - 1, |a, b| b.1.total_cmp(&a.1));
    scored[..K].iter().map(|&(product, _)| product).collect()
}
