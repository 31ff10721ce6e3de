//! Training and evaluation: metrics on a hand-made ranking, a loss that learns, a head
//! that embeds the same in the ONNX model (tract) as in the training library (candle), a
//! catalog scored by category and colour name, and one split for training by category.

use std::path::Path;

use otlens::cli::eval::{colour_split, evaluate_colour, evaluate_split, Match};
use otlens::cli::train::split_for_training;
use otlens::import::head::{feature_map_model, feature_model, with_head, with_tuned_convs, Activation, Head, HeadInfo};
use otlens::import::{decode, encode};
use otlens::index::unit_length;
use otlens::model::{cosine, Embedder};
use otlens::preprocess::{to_tensor, DecodeLimits};
use otlens::train::dataset::{Dataset, Role};
use otlens::train::features::{extract_as_indexed, Features};
use otlens::train::head::{proxy_anchor_loss, train, Auxiliary, HeadModel, TrainConfig, TrainData};
use otlens::train::metrics::{evaluate, score_queries, Labelled};
use otlens::train::tune::{FeatureMaps, TunedModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/efficientnet-lite0-int8-weights.onnx"
);

#[test]
fn metrics_match_a_ranking_worked_out_by_hand() {
    // Gallery: A at (1,0) and (-1,0); B at (0,1) and (0.8,0.6).
    let gallery = [1.0, 0.0, 0.0, 1.0, 0.8, 0.6, -1.0, 0.0];
    let gallery_labels = [0, 1, 1, 0];
    // Query 0 (A) ranks A, B, B, A; query 1 (A) ranks B, B, A, A; query 2 (B) ranks B, B, A, A
    // (the tie at 0 goes to the lower position); query 3's product (C) is not in the gallery.
    let queries = [1.0, 0.0, 0.6, 0.8, 0.0, 1.0, 0.0, -1.0];
    let query_labels = [0, 0, 1, 2];
    let queries = Labelled {
        vectors: &queries,
        dims: 2,
        labels: &query_labels,
    };
    let gallery = Labelled {
        vectors: &gallery,
        dims: 2,
        labels: &gallery_labels,
    };
    let scores = score_queries(&queries, &gallery);
    let first_hits: Vec<_> = scores.iter().map(|s| s.first_hit).collect();
    assert_eq!(first_hits, [Some(1), Some(3), Some(1), None]);
    // Query 3's tie at 0 between positions 0 and 3 goes to 0.
    let first_results: Vec<_> = scores.iter().map(|s| s.first_result).collect();
    assert_eq!(first_results, [Some(0), Some(2), Some(1), Some(0)]);
    let figures = evaluate(&queries, &gallery, &[1, 2, 3]);
    assert_eq!(figures.recall, [(1, 0.5), (2, 0.5), (3, 0.75)]);
    // AP@R (R = 2): query 0 hits at 1 of 2 -> 1/2; query 1 none in its first 2; query 2 both -> 1.
    assert!((figures.map_at_r - (0.5 + 0.0 + 1.0 + 0.0) / 4.0).abs() < 1e-12);
    assert_eq!((figures.queries, figures.gallery), (4, 4));
}

const NUISANCE: f32 = 1.5;

/// Recall@1 of `queries` against `gallery`, both rows of the same photos labelled `labels`.
fn recall_at_1(queries: &Features, gallery: &Features, labels: &[u32]) -> f64 {
    let queries = Labelled {
        vectors: &queries.values,
        dims: queries.dims,
        labels,
    };
    let gallery = Labelled {
        vectors: &gallery.values,
        dims: gallery.dims,
        labels,
    };
    evaluate(&queries, &gallery, &[1]).recall[0].1
}

/// `classes` clusters in `dims` dimensions, `per_class` noisy photos each, in two views. The
/// classes differ in the first quarter of the dimensions only; the rest is noise wider than
/// their spread, which a trained projection learns to ignore and a cosine does not.
fn clustered(rng: &mut StdRng, classes: usize, per_class: usize, dims: usize) -> (Vec<Features>, Vec<u32>) {
    let signal = dims / 4;
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..signal).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let labels: Vec<u32> = (0..classes * per_class).map(|i| (i / per_class) as u32).collect();
    let view = |rng: &mut StdRng| Features {
        values: labels
            .iter()
            .flat_map(|&l| {
                let centre = &centres[l as usize];
                (0..dims)
                    .map(|d| match centre.get(d) {
                        Some(c) => c + rng.random_range(-0.3..0.3),
                        None => rng.random_range(-NUISANCE..NUISANCE),
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        dims,
    };
    let views = vec![view(rng), view(rng)];
    (views, labels)
}

#[test]
fn stage_two_learning_rate_falls_along_a_cosine_to_zero() {
    let decaying = TrainConfig {
        learning_rate: 2e-4,
        cosine_decay: true,
        ..TrainConfig::default()
    };
    let rates: Vec<f64> = [0.0, 0.5, 1.0].map(|done| decaying.learning_rate_at(done)).into();
    assert!(
        (rates[0] - 2e-4).abs() < 1e-12 && (rates[1] - 1e-4).abs() < 1e-12 && rates[2] < 1e-12,
        "{rates:?}"
    );
    let constant = TrainConfig {
        cosine_decay: false,
        ..decaying
    };
    assert_eq!(constant.learning_rate_at(0.7), 2e-4);
}

#[test]
fn proxy_anchor_training_lowers_the_loss_and_separates_products() {
    let mut rng = StdRng::seed_from_u64(7);
    let (views, labels) = clustered(&mut rng, 12, 20, 32);
    let data = TrainData {
        views: &views,
        labels: &labels,
        classes: 12,
        auxiliary: &[],
    };
    let config = TrainConfig {
        dims: 16,
        epochs: 40,
        patience: 40,
        batch: 64,
        learning_rate: 1e-2,
        ..TrainConfig::default()
    };
    // Recall@1 of one view's photos against the other's: each photo's own copy carries other
    // noise, so the nearest photo is of its product only where the products are apart.
    let recall = |queries: &Features, gallery: &Features| recall_at_1(queries, gallery, &labels);
    let unit = |f: &Features| Features {
        values: f.values.chunks(f.dims).flat_map(unit_length).collect(),
        dims: f.dims,
    };
    let untrained = recall(&unit(&views[1]), &unit(&views[0]));
    let trained = train(&data, &config, |model| {
        Ok(recall(&model.embed(&views[1])?, &model.embed(&views[0])?))
    })
    .unwrap();
    let first = trained.log.first().unwrap().loss;
    let last = trained.log.last().unwrap().loss;
    assert!(last < first / 3.0, "loss {first} -> {last}");
    let best = trained.log[trained.best_epoch - 1].holdout_recall_at_1;
    assert!(best > 0.95 && best > untrained + 0.3, "recall {untrained} -> {best}");
    assert_eq!((trained.head.dims, trained.head.channels), (16, 32));
}

#[test]
fn an_auxiliary_target_groups_different_products_by_its_labels() {
    // 24 products of 4 colours. A product's features are its own random centre plus a
    // smaller offset for its colour, so products of one colour lie no nearer each other
    // than chance unless the head learns that they share a label.
    let (products, per_product, dims, colours) = (24, 10, 32, 4);
    let mut rng = StdRng::seed_from_u64(11);
    let offsets: Vec<Vec<f32>> = (0..colours)
        .map(|_| (0..dims).map(|_| rng.random_range(-0.4..0.4)).collect())
        .collect();
    let centres: Vec<Vec<f32>> = (0..products)
        .map(|p| {
            (0..dims)
                .map(|d| rng.random_range(-1.0..1.0) + offsets[p % colours][d])
                .collect()
        })
        .collect();
    let labels: Vec<u32> = (0..products * per_product).map(|i| (i / per_product) as u32).collect();
    let view = |rng: &mut StdRng| Features {
        values: labels
            .iter()
            .flat_map(|&l| {
                centres[l as usize]
                    .iter()
                    .map(|c| c + rng.random_range(-0.5..0.5))
                    .collect::<Vec<_>>()
            })
            .collect(),
        dims,
    };
    let views = vec![view(&mut rng), view(&mut rng)];
    let colour = Auxiliary {
        name: "colour".into(),
        // One photo in ten has no colour label: it still trains the products.
        labels: labels
            .iter()
            .enumerate()
            .map(|(i, &p)| (i % 10 != 3).then_some(p % colours as u32))
            .collect(),
        classes: colours,
    };
    let product_means = Features {
        values: centres.concat(),
        dims,
    };
    // How often a product's nearest other product has its colour.
    let same_colour_neighbours = |auxiliary: &[Auxiliary]| -> f64 {
        let data = TrainData {
            views: &views,
            labels: &labels,
            classes: products,
            auxiliary,
        };
        let config = TrainConfig {
            dims: 16,
            epochs: 30,
            patience: 30,
            batch: 64,
            learning_rate: 1e-2,
            ..TrainConfig::default()
        };
        // Every epoch scores higher, so the last one is kept.
        let mut epochs = 0.0;
        let trained = train(&data, &config, |_| {
            epochs += 1.0;
            Ok(epochs)
        })
        .unwrap();
        let embedded = HeadModel::from_head(&trained.head)
            .unwrap()
            .embed(&product_means)
            .unwrap();
        let row = |p: usize| &embedded.values[p * embedded.dims..(p + 1) * embedded.dims];
        let same = (0..products)
            .filter(|&p| {
                let nearest = (0..products)
                    .filter(|&other| other != p)
                    .max_by(|&x, &y| cosine(row(p), row(x)).total_cmp(&cosine(row(p), row(y))))
                    .unwrap();
                nearest % colours == p % colours
            })
            .count();
        same as f64 / products as f64
    };
    let without = same_colour_neighbours(&[]);
    let with = same_colour_neighbours(std::slice::from_ref(&colour));
    assert!(with > 0.9 && with > without + 0.3, "{without} -> {with}");
}

#[test]
fn the_same_seed_trains_the_same_head() {
    let mut rng = StdRng::seed_from_u64(7);
    let (views, labels) = clustered(&mut rng, 6, 10, 16);
    let data = TrainData {
        views: &views,
        labels: &labels,
        classes: 6,
        auxiliary: &[],
    };
    let head = |seed| {
        let config = TrainConfig {
            dims: 8,
            epochs: 3,
            batch: 16,
            seed,
            ..TrainConfig::default()
        };
        // A score that grows every epoch keeps the last, so all three epochs' steps count.
        let mut epoch = 0.0;
        let trained = train(&data, &config, |_| {
            epoch += 1.0;
            Ok(epoch)
        })
        .unwrap();
        assert_eq!(trained.best_epoch, 3);
        (trained.head.weight, trained.head.bias)
    };
    assert_eq!(head(1), head(1));
    assert_ne!(head(1), head(2));
}

#[test]
fn proxy_anchor_loss_is_small_when_photos_sit_on_their_proxies() {
    use candle_core::{Device, Tensor};
    let proxies = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let loss = |embeddings: &[[f32; 2]; 2]| {
        let embeddings = Tensor::new(embeddings, &Device::Cpu).unwrap();
        proxy_anchor_loss(&embeddings, &proxies, &labels, 32.0, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let right = loss(&[[2.0, 0.0], [0.0, 0.5]]);
    let swapped = loss(&[[0.0, 1.0], [1.0, 0.0]]);
    // On the proxy: pull log(1 + e^(-32 * 0.9)) ~ 0, push log(1 + e^(32 * 0.1)) = 3.24 per proxy / 2.
    assert!((right - (1.0 + 3.2f32.exp()).ln()).abs() < 1e-3, "{right}");
    assert!(swapped > 30.0, "{swapped}");
}

fn gradient_photo() -> image::RgbImage {
    image::RgbImage::from_fn(300, 260, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 200) as u8])
    })
}

#[test]
fn a_head_written_into_onnx_embeds_in_tract_as_in_candle() {
    let base = decode(&std::fs::read(MODEL).unwrap()).unwrap();
    let (features_proto, channels) = feature_model(&base).unwrap();
    assert_eq!(channels, 1280);
    let mut rng = StdRng::seed_from_u64(3);
    let dims = 64;
    let head = random_head(&mut rng, dims, channels);
    let info = HeadInfo {
        pooling: "gem-3".into(),
        dims,
        base_model: "test".into(),
        trained_on: "random weights".into(),
        tuned: Vec::new(),
    };
    let trained_proto = with_head(&base, &head, &info).unwrap();
    let extractor = Embedder::from_bytes(&encode(&features_proto)).unwrap();
    let trained = Embedder::from_bytes(&encode(&trained_proto)).unwrap();
    assert_eq!(trained.info().dims, dims);
    assert_eq!(trained.info().input, extractor.info().input);

    let input = to_tensor(&gradient_photo(), &trained.info().input);
    let features = extractor.embed_tensor(input.clone()).unwrap();
    assert!(
        features.iter().all(|v| v.is_finite() && *v >= 0.0),
        "GeM of ReLU6 maps is >= 0"
    );
    let in_candle = HeadModel::from_head(&head)
        .unwrap()
        .embed(&Features {
            values: features,
            dims: channels,
        })
        .unwrap();
    let in_tract = trained.embed_tensor(input).unwrap();
    let similarity = cosine(&in_candle.values, &in_tract);
    // The ONNX head has int8 weights (per output channel); candle's are f32.
    assert!(similarity > 0.999, "cosine {similarity}");
    let norm: f32 = in_tract.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);

    let error = feature_model(&trained_proto).unwrap_err().to_string();
    assert!(error.contains("already has a trained head"), "{error}");
}

fn random_head(rng: &mut StdRng, dims: usize, channels: usize) -> Head {
    Head {
        weight: (0..dims * channels).map(|_| rng.random_range(-0.05..0.05)).collect(),
        bias: (0..dims).map(|_| rng.random_range(-0.1..0.1)).collect(),
        dims,
        channels,
    }
}

#[test]
fn tuned_last_convolutions_run_in_tract_as_in_candle() {
    let base = decode(&std::fs::read(MODEL).unwrap()).unwrap();
    let (features_proto, _) = feature_model(&base).unwrap();
    let features_model = Embedder::from_bytes(&encode(&features_proto)).unwrap();
    let input = to_tensor(&gradient_photo(), &features_model.info().input);
    let gem = features_model.embed_tensor(input.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    // `_conv_head` alone, then with the last MBConv block (1x1, depthwise 3x3, 1x1) before it.
    for (count, channels) in [(1, 320), (4, 192)] {
        let (maps_proto, convs) = feature_map_model(&base, count).unwrap();
        let names: Vec<&str> = convs.iter().map(|c| c.name.as_str()).collect();
        let expected = [
            "_blocks.15._expand_conv",
            "_blocks.15._depthwise_conv",
            "_blocks.15._project_conv",
            "_conv_head",
        ];
        assert_eq!(names, expected[4 - count..]);
        let last = convs.last().unwrap();
        assert_eq!((last.inputs, last.outputs), (320, 1280));
        assert_eq!(
            last.activation,
            Activation::Clip(6.0),
            "EfficientNet-Lite's activation is ReLU6"
        );
        let maps_model = Embedder::from_bytes(&encode(&maps_proto)).unwrap();
        let maps = Features {
            values: maps_model.embed_tensor(input.clone()).unwrap(),
            dims: maps_model.info().dims,
        };
        assert_eq!(maps.dims, channels * 7 * 7);
        let maps = FeatureMaps::new(maps, convs[0].inputs).unwrap();

        // The convolutions as imported: candle's GeM features are tract's.
        let frozen = TunedModel::new(&convs, None).unwrap().embed(&maps).unwrap();
        let similarity = cosine(&frozen.values, &gem);
        assert!(similarity > 0.9999, "{count} convolutions: cosine {similarity}");

        // Changed convolutions and a head, written into ONNX: tract embeds as candle does.
        let mut tuned = convs.clone();
        for conv in &mut tuned {
            let spread = 0.1 * conv.weight.iter().fold(0f32, |m, w| m.max(w.abs()));
            for w in &mut conv.weight {
                *w += rng.random_range(-spread..spread);
            }
        }
        let head = random_head(&mut rng, 64, last.outputs);
        let info = HeadInfo {
            pooling: "gem-3".into(),
            dims: 64,
            base_model: "test".into(),
            trained_on: "random weights".into(),
            tuned: names.iter().map(|n| n.to_string()).collect(),
        };
        let trained_proto = with_head(&with_tuned_convs(&base, &tuned).unwrap(), &head, &info).unwrap();
        let in_tract = Embedder::from_bytes(&encode(&trained_proto))
            .unwrap()
            .embed_tensor(input.clone())
            .unwrap();
        let in_candle = TunedModel::new(&tuned, Some(&head)).unwrap().embed(&maps).unwrap();
        let untuned = TunedModel::new(&convs, Some(&head)).unwrap().embed(&maps).unwrap();
        let similarity = cosine(&in_candle.values, &in_tract);
        assert!(similarity > 0.999, "{count} convolutions: cosine {similarity}");
        assert!(
            cosine(&untuned.values, &in_tract) < similarity,
            "the tuned weights, not the imported ones, are in the model"
        );

        let mut wrong = tuned.clone();
        wrong[0].inputs = 64;
        wrong[0].weight.truncate(10);
        let error = with_tuned_convs(&base, &wrong).unwrap_err().to_string();
        assert!(error.contains("does not fit"), "{error}");
    }
    // A fifth would be the previous block's projection, whose output is summed with its input.
    let error = feature_map_model(&base, 5).unwrap_err().to_string();
    assert!(
        error.contains("_blocks.14.add") && error.contains("not a convolution"),
        "{error}"
    );
    // A value inside the chain that also feeds another layer: the chain cannot be cut off there.
    let mut fanned_out = base.clone();
    let graph = fanned_out.graph.as_mut().unwrap();
    let project = graph
        .node
        .iter()
        .find(|n| n.name == "_blocks.15._project_conv")
        .unwrap();
    let depthwise_relu6 = project.input[0].clone();
    graph.node.push(tract_onnx::pb::NodeProto {
        name: "probe".into(),
        op_type: "Identity".into(),
        input: vec![depthwise_relu6],
        output: vec!["probe".into()],
        ..Default::default()
    });
    let error = feature_map_model(&fanned_out, 4).unwrap_err().to_string();
    assert!(
        error.contains("_blocks.15._depthwise_conv also feeds other layers"),
        "{error}"
    );
    assert!(
        feature_map_model(&fanned_out, 2).is_ok(),
        "cut at the shared value, the last two convolutions are still a chain"
    );
}

#[test]
fn a_split_with_a_bad_role_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("split.csv");
    std::fs::write(&csv, "path,item_id,role\na.jpg,1,query\nb.jpg,1,probe\n").unwrap();
    let error = Dataset::read(&csv).err().unwrap().to_string();
    assert!(error.contains("line 3") && error.contains("probe"), "{error}");
    std::fs::write(
        &csv,
        "path,item_id,role,category\na.jpg,x,query,Dresses\nb.jpg,y,,\nc.jpg,x,gallery,\n",
    )
    .unwrap();
    let dataset = Dataset::read(&csv).unwrap();
    assert_eq!(dataset.items, ["x", "y"]);
    assert_eq!(dataset.photos[2].item, 0);
    assert_eq!(dataset.photos[0].path, Path::new(dir.path()).join("a.jpg"));
}

/// A `colour` garment on a white studio backdrop, as in a catalog photo.
fn catalog_photo(colour: [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_fn(60, 80, |x, y| {
        let garment = (12..48).contains(&x) && (10..70).contains(&y);
        image::Rgb(if garment { colour } else { [250, 250, 250] })
    })
}

#[test]
fn a_catalog_is_scored_by_category_and_colour_name() {
    let dir = tempfile::tempdir().unwrap();
    // Fashion Product Images' own column names.
    let mut csv = String::from("product_id,title,articleType,baseColour,image\n");
    let kinds = [("Tshirts", "Red", [200, 30, 40]), ("Jeans", "Navy Blue", [25, 35, 80])];
    for id in 0..40u8 {
        let (category, colour, rgb) = kinds[usize::from(id % 2)];
        let shade = rgb.map(|c: u8| c.saturating_add(id / 2));
        catalog_photo(shade).save(dir.path().join(format!("{id}.png"))).unwrap();
        csv.push_str(&format!("{id},Product {id},{category},{colour},{id}.png\n"));
    }
    let path = dir.path().join("products.csv");
    std::fs::write(&path, csv).unwrap();
    let mut dataset = Dataset::read(&path).unwrap();
    assert_eq!(dataset.with_role(Role::Query), Vec::<usize>::new());
    dataset.hold_out_queries(5);
    let queries = dataset.with_role(Role::Query);
    assert!((3..=15).contains(&queries.len()), "about one in five: {queries:?}");
    let mut again = Dataset::read(&path).unwrap();
    again.hold_out_queries(5);
    assert_eq!(again.with_role(Role::Query), queries, "the same products every run");

    let split = colour_split(&dataset).unwrap().expect("the catalog has colour labels");
    let report = evaluate_colour(&dataset, &split, "colour", None);
    assert_eq!((report.queries, report.references), (queries.len(), 40 - queries.len()));
    assert_eq!(report.accuracy, 1.0, "{:?}", report.by_colour);

    // Embeddings that know the category only: class-level retrieval is perfect,
    // instance retrieval finds nothing (each product has one photo).
    let embeddings = Features {
        values: (0..40)
            .flat_map(|id| if id % 2 == 0 { [1.0, 0.0] } else { [0.0, 1.0] })
            .collect(),
        dims: 2,
    };
    let by_category = evaluate_split("toy", &dataset, &embeddings, Match::Category).unwrap();
    assert_eq!(by_category.overall.recall_at(1), Some(1.0));
    assert_eq!(by_category.confusions, []);
    let by_product = evaluate_split("toy", &dataset, &embeddings, Match::Product).unwrap();
    assert_eq!(by_product.overall.recall_at(20), Some(0.0));

    // Embeddings that know nothing: every query's first result is the first gallery photo
    // (ties go to the lower position), so the queries of the other category all miss at 1.
    let blind = Features {
        values: vec![1.0; 80],
        dims: 2,
    };
    let first = &dataset.photos[dataset.with_role(Role::Gallery)[0]].category;
    let other = if first == "Tshirts" { "Jeans" } else { "Tshirts" };
    let missed = queries.iter().filter(|&&q| dataset.photos[q].category == other).count();
    assert!(missed > 0 && missed < queries.len(), "queries of both categories");
    let blind = evaluate_split("blind", &dataset, &blind, Match::Category).unwrap();
    assert_eq!(blind.confusions, [((other.to_owned(), first.clone()), missed)]);
}

#[test]
fn a_catalog_trains_by_category_without_the_photos_eval_asks_with() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("product_id,articleType,image\n");
    for id in 0..60 {
        csv.push_str(&format!("{id},{},{id}.jpg\n", ["Tshirts", "Jeans", "Dresses"][id % 3]));
    }
    let path = dir.path().join("products.csv");
    std::fs::write(&path, csv).unwrap();
    let mut evaluated = Dataset::read(&path).unwrap();
    evaluated.hold_out_queries(5);
    let eval_queries = evaluated.with_role(Role::Query);

    let mut dataset = Dataset::read(&path).unwrap();
    let split = split_for_training(&mut dataset, Match::Category, 4, Some(5)).unwrap();
    assert_eq!(split.classes, 3, "one class per category, not per product");
    assert_eq!(split.labels.len(), split.train_photos.len());
    let used: Vec<usize> = split
        .train_photos
        .iter()
        .chain(&split.holdout_photos)
        .copied()
        .collect();
    assert_eq!(used.len() + eval_queries.len(), 60, "every photo but eval's queries");
    assert!(used.iter().all(|photo| !eval_queries.contains(photo)));
    for (&photo, &label) in split.train_photos.iter().zip(&split.labels) {
        let first = split.labels.iter().position(|&l| l == label).unwrap();
        let category = |photo: usize| &dataset.photos[photo].category;
        assert_eq!(category(split.train_photos[first]), category(photo));
    }
    // One photo per product: held-out photos are split into queries and gallery all the same.
    assert!(!split.holdout.with_role(Role::Query).is_empty());
    assert!(!split.holdout.with_role(Role::Gallery).is_empty());

    // By product, a catalog of one photo per product leaves nothing to choose an epoch with.
    let mut dataset = Dataset::read(&path).unwrap();
    let error = split_for_training(&mut dataset, Match::Product, 4, Some(5))
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("no held-out product has two photos"),
        "{error}"
    );
    // By category, with a single held-out photo there is nothing to search for it.
    let mut dataset = Dataset::read(&path).unwrap();
    let error = split_for_training(&mut dataset, Match::Category, 60, None)
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("fewer than two photos are held out"),
        "{error}"
    );
    // A split whose roles are given already has its queries.
    std::fs::write(&path, "path,item_id,role\na.jpg,1,query\nb.jpg,1,gallery\n").unwrap();
    let error = split_for_training(&mut Dataset::read(&path).unwrap(), Match::Product, 2, Some(5))
        .err()
        .unwrap();
    assert!(error.to_string().contains("--queries-every"), "{error}");
}

#[test]
fn eval_embeds_photos_as_the_widget_and_the_index_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("product_id,image\n");
    for id in 0..12u8 {
        catalog_photo([20 * id, 100, 200 - 10 * id])
            .save(dir.path().join(format!("{id}.png")))
            .unwrap();
        csv.push_str(&format!("{id},{id}.png\n"));
    }
    let path = dir.path().join("products.csv");
    std::fs::write(&path, csv).unwrap();
    let embedder = Embedder::from_bytes(&std::fs::read(MODEL).unwrap()).unwrap();
    let cache = dir.path().join("cache");

    // The second 5 reads the cache the first wrote; 2 makes other photos the gallery.
    for every in [5, 2, 5] {
        let mut dataset = Dataset::read(&path).unwrap();
        dataset.hold_out_queries(every);
        let embeddings = extract_as_indexed(&embedder, &dataset, &cache, "test").unwrap();
        assert!(!dataset.with_role(Role::Query).is_empty());
        for (i, photo) in dataset.photos.iter().enumerate() {
            let expected = match photo.role {
                Role::Query => embedder
                    .embed_photo(&std::fs::read(&photo.path).unwrap(), &DecodeLimits::default())
                    .unwrap(),
                Role::Gallery => embedder
                    .embed_catalog_photo(&image::open(&photo.path).unwrap().to_rgb8())
                    .unwrap(),
            };
            let similarity = cosine(embeddings.row(i), &expected);
            assert!(similarity > 0.9999, "every {every}, photo {i}: cosine {similarity}");
        }
    }
}
