//! `otlens train`: a retrieval head trained on a shop's (or a dataset's) photos of products,
//! written back into the model as one ONNX file.
//!
//! Every `holdout_every`-th product is held out of training: its photos pick the best epoch
//! (early stopping), so the split the figures are reported on (`otlens eval`) never steers
//! training.

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::eval::evaluate_split;
use crate::import::head::{feature_model, with_head, HeadInfo};
use crate::import::{decode, encode};
use crate::model::Embedder;
use crate::train::dataset::{Dataset, Role};
use crate::train::features::extract;
use crate::train::head::{train, TrainConfig, TrainData};
use crate::train::plot::training_curves;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model to start from, as `otlens import` wrote it (its backbone stays frozen).
    #[arg(long)]
    pub model: PathBuf,
    /// Training CSV: path, item_id, optional role (for the held-out products), category.
    #[arg(long)]
    pub train: PathBuf,
    /// The trained model to write; curves (.svg) and the head checkpoint (.safetensors) go beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Views per photo: the photo as the widget sees it, plus views-1 augmented ones.
    #[arg(long, default_value_t = 4)]
    pub views: u32,
    /// Every Nth product is held out to choose the best epoch.
    #[arg(long, default_value_t = 10)]
    pub holdout_every: u32,
    /// Embedding width.
    #[arg(long, default_value_t = 256)]
    pub dims: usize,
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Epochs without a better held-out Recall@1 before stopping.
    #[arg(long, default_value_t = 8)]
    pub patience: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Where backbone features are cached between runs.
    #[arg(long, default_value = ".cache/features")]
    pub cache: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    if args.views == 0 || args.holdout_every < 2 {
        bail!("--views must be at least 1 and --holdout-every at least 2");
    }
    let started = Instant::now();
    let base_bytes =
        fs::read(&args.model).with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let base = decode(&base_bytes)?;
    let (features_proto, _) = feature_model(&base)?;
    let extractor = Embedder::from_bytes(&encode(&features_proto)).context("cannot load the feature model")?;
    let dataset = Dataset::read(&args.train)?;

    let held_out = |item: u32| item % args.holdout_every == args.holdout_every - 1;
    let (holdout_photos, train_photos): (Vec<usize>, Vec<usize>) =
        (0..dataset.photos.len()).partition(|&i| held_out(dataset.photos[i].item));
    // Training classes are the kept products, numbered densely.
    let mut class_of = vec![u32::MAX; dataset.items.len()];
    let mut classes = 0;
    let labels: Vec<u32> = train_photos
        .iter()
        .map(|&i| {
            let item = dataset.photos[i].item as usize;
            if class_of[item] == u32::MAX {
                class_of[item] = classes;
                classes += 1;
            }
            class_of[item]
        })
        .collect();
    let mut holdout = Dataset {
        photos: holdout_photos.iter().map(|&i| dataset.photos[i].clone()).collect(),
        items: dataset.items.clone(),
        sha256: String::new(),
    };
    if holdout.with_role(Role::Query).is_empty() {
        // No roles in the CSV: each held-out product's photos alternate gallery, query, as In-shop's do.
        let mut seen = vec![0usize; dataset.items.len()];
        for photo in &mut holdout.photos {
            seen[photo.item as usize] += 1;
            photo.role = if seen[photo.item as usize] % 2 == 0 {
                Role::Query
            } else {
                Role::Gallery
            };
        }
    }
    if holdout.with_role(Role::Query).is_empty() {
        bail!(
            "no held-out product has two photos; every {}th product is held out to choose the best epoch",
            args.holdout_every
        );
    }
    println!(
        "{}: {} photos of {} products for training, {} photos held out",
        args.train.display(),
        train_photos.len(),
        classes,
        holdout.photos.len()
    );

    // Each view is split as soon as it is read, so only one whole view is in memory at a time.
    // View 0 (the photo as the widget sees it) also scores the held-out products.
    let clean = extract(&extractor, &dataset, 0, &args.cache, "features")?;
    let holdout_features = clean.select(&holdout_photos);
    let mut train_views = vec![clean.select(&train_photos)];
    drop(clean);
    for view in 1..args.views {
        train_views.push(extract(&extractor, &dataset, view, &args.cache, "features")?.select(&train_photos));
    }
    let extracted = started.elapsed().as_secs_f64();
    let config = TrainConfig {
        dims: args.dims,
        epochs: args.epochs,
        patience: args.patience,
        learning_rate: args.learning_rate,
        ..TrainConfig::default()
    };
    let untrained = evaluate_split("untrained", &holdout, &holdout_features)?.overall;
    let data = TrainData {
        views: &train_views,
        labels: &labels,
        classes: classes as usize,
    };
    let trained = train(&data, &config, |model| {
        let embedded = model.embed(&holdout_features)?;
        let report = evaluate_split("holdout", &holdout, &embedded)?;
        Ok(report.overall.recall_at(1).unwrap_or(0.0))
    })?;
    let trained_seconds = started.elapsed().as_secs_f64() - extracted;

    let info = HeadInfo {
        pooling: "gem-3".into(),
        dims: args.dims,
        base_model: crate::model::sha256_hex(&base_bytes),
        trained_on: format!(
            "{} ({} photos of {} products, {} views)",
            args.train
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            train_photos.len(),
            classes,
            args.views
        ),
    };
    let model = encode(&with_head(&base, &trained.head, &info)?);
    fs::write(&args.out, &model).with_context(|| format!("cannot write {}", args.out.display()))?;
    let curves = args.out.with_extension("curves.svg");
    training_curves(&trained.log, trained.best_epoch, &curves)?;
    let checkpoint = args.out.with_extension("head.safetensors");
    trained
        .varmap
        .save(&checkpoint)
        .with_context(|| format!("cannot write {}", checkpoint.display()))?;
    let best = &trained.log[trained.best_epoch - 1];
    println!(
        "held-out Recall@1: {:.3} untrained (GeM features) -> {:.3} at epoch {} of {}",
        untrained.recall_at(1).unwrap_or(0.0),
        best.holdout_recall_at_1,
        trained.best_epoch,
        trained.log.len()
    );
    println!(
        "features {extracted:.0} s, training {trained_seconds:.0} s; wrote {} ({} bytes), {}, {}",
        args.out.display(),
        model.len(),
        curves.display(),
        checkpoint.display()
    );
    Ok(())
}
