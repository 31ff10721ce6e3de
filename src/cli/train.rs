//! `otlens train`: a retrieval head trained on a shop's (or a dataset's) photos of products,
//! written back into the model as one ONNX file.
//!
//! Every `holdout_every`-th product is held out of training: its photos pick the best epoch
//! (early stopping), so the split the figures are reported on (`otlens eval`) never steers
//! training.
//!
//! With `--tune-convs N`, the backbone's last N convolutions are then fine-tuned with the head
//! (stage 2, `train::tune`), from feature maps cached before them.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

use super::eval::{evaluate_split, numbered, Match};
use candle_nn::VarMap;
use tract_onnx::pb::ModelProto;

use crate::import::head::{feature_map_model, feature_model, with_head, with_tuned_convs, Head, HeadInfo};
use crate::import::{decode, encode};
use crate::model::Embedder;
use crate::train::dataset::{Dataset, Photo, Role};
use crate::train::features::{extract, Features, Rows};
use crate::train::head::{train, Auxiliary, EpochLog, TrainConfig, TrainData};
use crate::train::plot::training_curves;
use crate::train::tune::{tune, FeatureMaps, TuneData, TunedModel};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model to start from, as `otlens import` wrote it (its backbone stays frozen).
    #[arg(long)]
    pub model: PathBuf,
    /// Training CSV: path, item_id, optional role (for the held-out products), category.
    #[arg(long)]
    pub train: PathBuf,
    /// What the head learns to bring together: photos of one product (In-shop's several per
    /// product), or of one category, for a catalog of one photo per product such as Fashion
    /// Product Images (measured by `otlens eval --match category`).
    #[arg(long = "match", value_enum, default_value_t = Match::Product)]
    pub match_by: Match,
    /// Label columns the embedding also learns to group by, with less weight, next to what it
    /// matches: `category`, `colour` or both (comma-separated). Photos without the label add
    /// nothing to that part.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub auxiliary: Vec<LabelColumn>,
    /// Weight of each `--auxiliary` column's loss next to the main one's.
    #[arg(long, default_value_t = 0.25)]
    pub auxiliary_weight: f64,
    /// For a CSV without a role column: leave out of training the products that
    /// `otlens eval --queries-every N` holds out as queries, so the same catalog can train
    /// the head and measure it.
    #[arg(long)]
    pub queries_every: Option<u32>,
    /// The trained model to write; curves (.svg) and the head checkpoint (.safetensors) go beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Views per photo: the photo as the widget sees it, plus views-1 augmented ones.
    #[arg(long, default_value_t = 4)]
    pub views: u32,
    /// Every Nth product is held out to choose the best epoch.
    #[arg(long, default_value_t = 10)]
    pub holdout_every: u32,
    /// Embedding width. 32 suits very large catalogs: an index stores 36 or 32.5 bytes a product
    /// (int8, or pq32 in inverted lists), which kept 0.98 and 0.97 of exact search's top 10 on
    /// 33,611 products, for 0.05 less In-shop Recall@1 than 256 (README, Vector codecs).
    #[arg(long, default_value_t = 256)]
    pub dims: usize,
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Epochs without a better held-out Recall@1 before stopping.
    #[arg(long, default_value_t = 8)]
    pub patience: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Then fine-tune the backbone's last N convolutions with the head (stage 2): 1 is
    /// EfficientNet-Lite0's `_conv_head`, 4 adds its last MBConv block. 0 keeps the backbone frozen.
    #[arg(long, default_value_t = 0)]
    pub tune_convs: usize,
    /// Epochs of stage 2: its learning rate reaches zero at the last one. It stops sooner after
    /// `--patience` epochs (at most 3) without a better held-out Recall@1.
    #[arg(long, default_value_t = 10)]
    pub tune_epochs: usize,
    /// Peak learning rate of stage 2 (the convolutions and the head; proxies learn 10x
    /// faster). It falls along a cosine to zero over `--tune-epochs`.
    #[arg(long, default_value_t = 2e-4)]
    pub tune_learning_rate: f64,
    /// Where backbone features are cached between runs.
    #[arg(long, default_value = ".cache/features")]
    pub cache: PathBuf,
}

/// candle allocates a fresh tensor for every op, 64 MB and more for a batch of feature maps,
/// and frees it soon after. By default glibc maps blocks that large afresh and returns freed
/// heap to the kernel, so each op page-faulted and zeroed its memory again: on In-shop's maps
/// that was over half of stage 2's time. Serving every block from the heap and never trimming
/// it (both documented in mallopt(3)) makes freed tensors reused; training is one process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters, and is valid at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

pub fn run(args: Args) -> Result<()> {
    if args.views == 0 || args.holdout_every < 2 {
        bail!("--views must be at least 1 and --holdout-every at least 2");
    }
    if let Some(folder) = args.out.parent().filter(|f| !f.as_os_str().is_empty()) {
        // Now, not after an hour of training.
        fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
    }
    keep_freed_memory();
    let started = Instant::now();
    let base_bytes =
        fs::read(&args.model).with_context(|| format!("cannot read the model {}", args.model.display()))?;
    let base = decode(&base_bytes)?;
    let mut dataset = Dataset::read(&args.train)?;
    let TrainingSplit {
        train_photos,
        labels,
        classes,
        holdout_photos,
        holdout,
    } = split_for_training(&mut dataset, args.match_by, args.holdout_every, args.queries_every)?;
    let class_name = match args.match_by {
        Match::Product => "products",
        Match::Category => "categories",
    };
    println!(
        "{}: {} photos of {classes} {class_name} for training, {} photos held out",
        args.train.display(),
        train_photos.len(),
        holdout.photos.len()
    );
    let auxiliary = args
        .auxiliary
        .iter()
        .map(|&column| auxiliary_target(&dataset, &train_photos, column, args.match_by))
        .collect::<Result<Vec<_>>>()?;
    for target in &auxiliary {
        let labelled = target.labels.iter().flatten().count();
        println!(
            "also grouped by {}: {labelled} photos labelled, {} labels",
            target.name, target.classes
        );
    }

    let (features, stage2_maps) = if args.tune_convs > 0 {
        let (maps_proto, convs) = feature_map_model(&base, args.tune_convs)?;
        let extractor = Embedder::from_bytes(&encode(&maps_proto)).context("cannot load the feature-map model")?;
        let maps = split_views(args.views, &train_photos, &holdout_photos, |view| {
            let maps = extract(&extractor, &dataset, view, &args.cache, "feature maps")?;
            FeatureMaps::new(maps, convs[0].inputs)
        })?;
        // Stage 1 trains on the GeM features the untouched convolutions give.
        let frozen = TunedModel::new(&convs, None)?;
        let features = Split {
            train: maps.train.iter().map(|m| frozen.embed(m)).collect::<Result<_>>()?,
            holdout: frozen.embed(&maps.holdout)?,
        };
        (features, Some((maps, convs)))
    } else {
        let (features_proto, _) = feature_model(&base)?;
        let extractor = Embedder::from_bytes(&encode(&features_proto)).context("cannot load the feature model")?;
        let features = split_views(args.views, &train_photos, &holdout_photos, |view| {
            extract(&extractor, &dataset, view, &args.cache, "features")
        })?;
        (features, None)
    };
    let extracted = started.elapsed().as_secs_f64();
    let config = TrainConfig {
        dims: args.dims,
        epochs: args.epochs,
        patience: args.patience,
        learning_rate: args.learning_rate,
        auxiliary_weight: args.auxiliary_weight,
        ..TrainConfig::default()
    };
    let holdout_recall = |embedded: &Features| -> Result<f64> {
        let report = evaluate_split("holdout", &holdout, embedded, args.match_by)?;
        Ok(report.overall.recall_at(1).unwrap_or(0.0))
    };
    let untrained = holdout_recall(&features.holdout)?;
    let data = TrainData {
        views: &features.train,
        labels: &labels,
        classes,
        auxiliary: &auxiliary,
    };
    let stage1 = train(&data, &config, |model| holdout_recall(&model.embed(&features.holdout)?))?;
    let stage1_recall = stage1.log[stage1.best_epoch - 1].holdout_recall_at_1;
    println!(
        "held-out Recall@1: {untrained:.3} untrained (GeM features) -> {stage1_recall:.3} with the head, \
         epoch {} of {}",
        stage1.best_epoch,
        stage1.log.len()
    );
    drop(features);

    let mut result = Outcome {
        base: base.clone(),
        head: stage1.head.clone(),
        log: stage1.log.clone(),
        best_epoch: stage1.best_epoch,
        varmap: stage1.varmap.clone(),
        tuned: Vec::new(),
    };
    if let Some((maps, convs)) = stage2_maps {
        let data = TuneData {
            views: &maps.train,
            labels: &labels,
            auxiliary: &auxiliary,
        };
        let config = TrainConfig {
            epochs: args.tune_epochs,
            patience: args.patience.min(3),
            learning_rate: args.tune_learning_rate,
            cosine_decay: true,
            ..config
        };
        let tuned = tune(&data, &convs, &stage1, &config, |model| {
            holdout_recall(&model.embed(&maps.holdout)?)
        })?;
        let tuned_recall = tuned.log[tuned.best_epoch - 1].holdout_recall_at_1;
        let offset = stage1.log.len();
        result.log.extend(tuned.log.iter().map(|l| EpochLog {
            epoch: l.epoch + offset,
            ..l.clone()
        }));
        if tuned_recall > stage1_recall {
            let names: Vec<String> = convs.iter().map(|c| c.name.clone()).collect();
            println!(
                "stage 2 ({} tuned): held-out Recall@1 {tuned_recall:.3}, epoch {} of {}",
                names.join(", "),
                tuned.best_epoch,
                tuned.log.len()
            );
            result.base = with_tuned_convs(&base, &tuned.convs)?;
            result.head = tuned.head;
            result.best_epoch = offset + tuned.best_epoch;
            result.varmap = tuned.varmap;
            result.tuned = names;
        } else {
            println!("stage 2 did not beat stage 1 on the held-out products ({tuned_recall:.3}); keeping stage 1");
        }
    }
    let trained_seconds = started.elapsed().as_secs_f64() - extracted;

    let info = HeadInfo {
        pooling: "gem-3".into(),
        dims: args.dims,
        base_model: crate::model::sha256_hex(&base_bytes),
        trained_on: format!(
            "{} ({} photos of {classes} {class_name}, {} views{})",
            args.train
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            train_photos.len(),
            args.views,
            auxiliary
                .iter()
                .map(|target| format!(", also by {}", target.name))
                .collect::<String>()
        ),
        tuned: result.tuned,
    };
    let model = encode(&with_head(&result.base, &result.head, &info)?);
    fs::write(&args.out, &model).with_context(|| format!("cannot write {}", args.out.display()))?;
    let curves = args.out.with_extension("curves.svg");
    training_curves(&result.log, result.best_epoch, &curves)?;
    let checkpoint = args.out.with_extension("head.safetensors");
    result
        .varmap
        .save(&checkpoint)
        .with_context(|| format!("cannot write {}", checkpoint.display()))?;
    println!(
        "features {extracted:.0} s, training {trained_seconds:.0} s; wrote {} ({} bytes), {}, {}",
        args.out.display(),
        model.len(),
        curves.display(),
        checkpoint.display()
    );
    Ok(())
}

/// A label column of the training CSV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelColumn {
    Category,
    Colour,
}

impl LabelColumn {
    /// Its label of `photo` (empty when the photo has none).
    fn of(self, photo: &Photo) -> &str {
        match self {
            LabelColumn::Category => &photo.category,
            LabelColumn::Colour => &photo.colour,
        }
    }
}

/// The `column` labels of `photos` as an auxiliary target, numbered densely; unlabelled photos
/// have none.
pub fn auxiliary_target(
    dataset: &Dataset,
    photos: &[usize],
    column: LabelColumn,
    match_by: Match,
) -> Result<Auxiliary> {
    let name = column
        .to_possible_value()
        .expect("no column is skipped")
        .get_name()
        .to_owned();
    if column == LabelColumn::Category && match_by == Match::Category {
        bail!("--auxiliary category: the head already matches by category");
    }
    let mut numbers: HashMap<&str, u32> = HashMap::new();
    let labels = photos
        .iter()
        .map(|&i| {
            let label = column.of(&dataset.photos[i]);
            let next = numbers.len() as u32;
            (!label.is_empty()).then(|| *numbers.entry(label).or_insert(next))
        })
        .collect();
    if numbers.len() < 2 {
        bail!("--auxiliary {name}: the training photos carry fewer than two {name} labels");
    }
    Ok(Auxiliary {
        name,
        labels,
        classes: numbers.len(),
    })
}

/// Which photos train the head and under which class, and which choose the best epoch.
pub struct TrainingSplit {
    /// Positions in the dataset of the photos trained on.
    pub train_photos: Vec<usize>,
    /// The class of each training photo: its product's or its category's, numbered densely.
    pub labels: Vec<u32>,
    pub classes: usize,
    /// Positions of the held-out photos, which `holdout` holds with query and gallery roles.
    pub holdout_photos: Vec<usize>,
    pub holdout: Dataset,
}

/// Holds out every `holdout_every`-th product to choose the best epoch and numbers the classes
/// of the rest by `match_by`. With `queries_every`, the products `otlens eval` would take as
/// queries (`Dataset::hold_out_queries`) are left out of both parts.
pub fn split_for_training(
    dataset: &mut Dataset,
    match_by: Match,
    holdout_every: u32,
    queries_every: Option<u32>,
) -> Result<TrainingSplit> {
    if let Some(every) = queries_every {
        if every < 2 || !dataset.with_role(Role::Query).is_empty() {
            bail!("--queries-every needs a CSV without query photos and a value of at least 2");
        }
        dataset.hold_out_queries(every);
    }
    // Features are extracted for every photo of the CSV (the cache is named by it); the
    // evaluation's queries are left out here.
    let held_out = |item: u32| item % holdout_every == holdout_every - 1;
    let (holdout_photos, train_photos): (Vec<usize>, Vec<usize>) = (0..dataset.photos.len())
        .filter(|&i| dataset.photos[i].role == Role::Gallery || queries_every.is_none())
        .partition(|&i| held_out(dataset.photos[i].item));
    if match_by == Match::Category {
        if let Some(&i) = train_photos.iter().find(|&&i| dataset.photos[i].category.is_empty()) {
            bail!("{} has no category to train on", dataset.photos[i].path.display());
        }
    }
    let labels = numbered(train_photos.iter().map(|&i| {
        let photo = &dataset.photos[i];
        match match_by {
            Match::Product => dataset.items[photo.item as usize].as_str(),
            Match::Category => photo.category.as_str(),
        }
    }));
    // Numbered densely from 0, so the largest is one less than their count.
    let classes = labels.iter().max().map_or(0, |&largest| largest as usize + 1);
    let mut holdout = Dataset {
        photos: holdout_photos.iter().map(|&i| dataset.photos[i].clone()).collect(),
        items: dataset.items.clone(),
        sha256: String::new(),
    };
    if holdout.with_role(Role::Query).is_empty() {
        // No roles in the CSV: the held-out photos alternate gallery, query, each product's
        // (as In-shop's do), or all of them when categories are what a query must find.
        let mut seen = vec![0usize; dataset.items.len()];
        for photo in &mut holdout.photos {
            let counter = match match_by {
                Match::Product => photo.item as usize,
                Match::Category => 0,
            };
            seen[counter] += 1;
            photo.role = if seen[counter].is_multiple_of(2) {
                Role::Query
            } else {
                Role::Gallery
            };
        }
    }
    if holdout.with_role(Role::Query).is_empty() {
        match match_by {
            Match::Product => bail!(
                "no held-out product has two photos; every {holdout_every}th product is held out to choose the best epoch"
            ),
            Match::Category => bail!(
                "fewer than two photos are held out; every {holdout_every}th product's photos are held out to choose \
                 the best epoch"
            ),
        }
    }
    Ok(TrainingSplit {
        train_photos,
        labels,
        classes,
        holdout_photos,
        holdout,
    })
}

/// The model and head to write, and how training went.
struct Outcome {
    base: ModelProto,
    head: Head,
    log: Vec<EpochLog>,
    best_epoch: usize,
    varmap: VarMap,
    tuned: Vec<String>,
}

/// Each view's rows for the training photos, and view 0's for the held-out ones.
struct Split<T> {
    train: Vec<T>,
    holdout: T,
}

/// Reads `views` views with `read` and splits each as soon as it is read, so only one whole
/// view is in memory at a time. View 0 (the photo as the widget sees it) also scores the
/// held-out products.
fn split_views<T: Rows>(
    views: u32,
    train_photos: &[usize],
    holdout_photos: &[usize],
    mut read: impl FnMut(u32) -> Result<T>,
) -> Result<Split<T>> {
    let clean = read(0)?;
    let holdout = clean.select(holdout_photos);
    let mut train = vec![clean.select(train_photos)];
    drop(clean);
    for view in 1..views {
        train.push(read(view)?.select(train_photos));
    }
    Ok(Split { train, holdout })
}
