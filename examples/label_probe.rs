//! How much of a label a model's features hold: a classifier trained on the gallery photos'
//! features and scored on the query photos', next to the label of each query's nearest
//! gallery photo (what `otlens eval --match category` counts at Recall@1).
//!
//! When no classifier on the features names a label well, no head trained on those features
//! will retrieve by it well either; the backbone, the photos or the labels have to change.
//!
//! ```text
//! cargo run --release --example label_probe -- SPLIT MODEL category|colour [HIDDEN]
//! ```
//!
//! SPLIT is an `otlens eval` split (without query photos, every 5th product is held out, as
//! `eval` does); features come from MODEL as `eval` embeds them, from its cache
//! `.cache/features`. For `colour` the photo's colour histogram (as the widget describes it)
//! is added to the features. HIDDEN > 0 puts a ReLU layer of that width before the classes.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{linear, loss, AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use otlens::colour::describe;
use otlens::index::unit_length;
use otlens::model::Embedder;
use otlens::preprocess::DecodeLimits;
use otlens::train::dataset::{Dataset, Role};
use otlens::train::features::extract_as_indexed;
use otlens::train::metrics::{evaluate, Labelled};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

const EPOCHS: usize = 40;
const BATCH: usize = 512;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [split, model, label, rest @ ..] = args.as_slice() else {
        bail!("usage: label_probe SPLIT MODEL category|colour [HIDDEN]");
    };
    let hidden: usize = rest.first().map_or(Ok(0), |h| h.parse()).context("HIDDEN is a width")?;
    let by_colour = match label.as_str() {
        "category" => false,
        "colour" => true,
        other => bail!("the label is category or colour, not {other}"),
    };
    let mut dataset = Dataset::read(Path::new(split))?;
    if dataset.with_role(Role::Query).is_empty() {
        dataset.hold_out_queries(5);
    }
    let labels: Vec<&str> = dataset
        .photos
        .iter()
        .map(|p| {
            if by_colour {
                p.colour.as_str()
            } else {
                p.category.as_str()
            }
        })
        .collect();
    let labelled = |role| -> Vec<usize> {
        dataset
            .with_role(role)
            .into_iter()
            .filter(|&i| !labels[i].is_empty())
            .collect()
    };
    let (gallery, queries) = (labelled(Role::Gallery), labelled(Role::Query));
    if gallery.is_empty() || queries.is_empty() {
        bail!("{split} has no {label} labels on its gallery or its query photos");
    }
    let embedder = Embedder::from_bytes(&std::fs::read(model).with_context(|| format!("cannot read {model}"))?)?;
    let embeddings = extract_as_indexed(&embedder, &dataset, Path::new(".cache/features"), "features")?;
    let limits = DecodeLimits::default();
    let features: Vec<Vec<f32>> = (0..dataset.photos.len())
        .into_par_iter()
        .map(|i| {
            let mut row = embeddings.row(i).to_vec();
            if by_colour {
                row.extend(describe(&dataset.photos[i].decode(&limits)?).histogram);
            }
            Ok(row)
        })
        .collect::<Result<_>>()?;
    let mut numbers: HashMap<&str, u32> = HashMap::new();
    for &i in gallery.iter().chain(&queries) {
        let next = numbers.len() as u32;
        numbers.entry(labels[i]).or_insert(next);
    }
    let device = Device::Cpu;
    let rows = |photos: &[usize]| -> Result<Tensor> {
        let values: Vec<f32> = photos.iter().flat_map(|&i| features[i].iter().copied()).collect();
        Ok(Tensor::from_vec(values, (photos.len(), features[0].len()), &device)?)
    };
    let classes = |photos: &[usize]| -> Vec<u32> { photos.iter().map(|&i| numbers[labels[i]]).collect() };
    let (gallery_x, query_x) = (rows(&gallery)?, rows(&queries)?);
    let (gallery_y, query_y) = (classes(&gallery), classes(&queries));
    println!(
        "{} gallery and {} query photos, {} labels, {} features",
        gallery.len(),
        queries.len(),
        numbers.len(),
        features[0].len()
    );
    println!(
        "label of the nearest gallery photo: {:.3}",
        nearest_accuracy(&query_x, &gallery_x, &query_y, &gallery_y)?
    );

    let probe = Probe::train(&gallery_x, &gallery_y, numbers.len(), hidden)?;
    let named: Vec<u32> = probe.forward(&query_x)?.argmax(D::Minus1)?.to_vec1()?;
    let right = named.iter().zip(&query_y).filter(|(n, y)| n == y).count();
    println!(
        "classifier ({hidden} hidden): {:.3}",
        right as f64 / query_y.len() as f64
    );
    if let Some(layer) = &probe.hidden {
        let (query_h, gallery_h) = (layer.forward(&query_x)?.relu()?, layer.forward(&gallery_x)?.relu()?);
        let accuracy = nearest_accuracy(&query_h, &gallery_h, &query_y, &gallery_y)?;
        println!("label of the nearest gallery photo by the hidden layer: {accuracy:.3}");
    }
    Ok(())
}

struct Probe {
    hidden: Option<Linear>,
    classes: Linear,
}

impl Probe {
    fn train(x: &Tensor, y: &[u32], classes: usize, hidden: usize) -> Result<Probe> {
        let (photos, width) = x.dims2()?;
        let variables = VarMap::new();
        let builder = VarBuilder::from_varmap(&variables, DType::F32, x.device());
        let probe = if hidden > 0 {
            Probe {
                hidden: Some(linear(width, hidden, builder.pp("hidden"))?),
                classes: linear(hidden, classes, builder.pp("classes"))?,
            }
        } else {
            Probe {
                hidden: None,
                classes: linear(width, classes, builder.pp("classes"))?,
            }
        };
        let settings = ParamsAdamW {
            lr: 3e-3,
            weight_decay: 1e-4,
            ..Default::default()
        };
        let mut optimiser = AdamW::new(variables.all_vars(), settings)?;
        let targets = Tensor::new(y, x.device())?;
        let mut order: Vec<u32> = (0..photos as u32).collect();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..EPOCHS {
            order.shuffle(&mut rng);
            for batch in order.chunks(BATCH) {
                let batch = Tensor::new(batch, x.device())?;
                let logits = probe.forward(&x.index_select(&batch, 0)?)?;
                optimiser.backward_step(&loss::cross_entropy(&logits, &targets.index_select(&batch, 0)?)?)?;
            }
        }
        Ok(probe)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = match &self.hidden {
            Some(layer) => layer.forward(x)?.relu()?,
            None => x.clone(),
        };
        Ok(self.classes.forward(&x)?)
    }
}

/// Recall@1 by label, as `otlens eval` counts it: how often the nearest gallery row by cosine
/// has the query's label.
fn nearest_accuracy(queries: &Tensor, gallery: &Tensor, query_y: &[u32], gallery_y: &[u32]) -> Result<f64> {
    let unit_rows =
        |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_vec2::<f32>()?.iter().flat_map(|row| unit_length(row)).collect()) };
    let (queries_rows, gallery_rows, dims) = (unit_rows(queries)?, unit_rows(gallery)?, queries.dims2()?.1);
    let queries = Labelled {
        vectors: &queries_rows,
        dims,
        labels: query_y,
    };
    let gallery = Labelled {
        vectors: &gallery_rows,
        dims,
        labels: gallery_y,
    };
    Ok(evaluate(&queries, &gallery, &[1])
        .recall_at(1)
        .expect("asked for Recall@1"))
}
