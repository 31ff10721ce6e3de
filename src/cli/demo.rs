//! `otlens demo`: builds a demo catalog from a public clothing dataset, then indexes it
//! like a shop's catalog (same reader, same `build-index` code).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use image::{imageops::FilterType, GrayImage};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::build_index::{self, write, CodecName, PartitionArgs, Storage};
use crate::index::{Codec, Index, Manifest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub source: Source,
}

#[derive(Debug, clap::Subcommand)]
pub enum Source {
    /// Fashion-MNIST test set (Debian package dataset-fashion-mnist, MIT licence): 28x28 greyscale.
    Fmnist(FmnistArgs),
    /// Fashion Product Images: a folder with products.csv and images/<id>.jpg.
    Fpi(FpiArgs),
    /// A large synthetic catalog for benchmarks at scale: --count products made from another
    /// catalog's, each a stored vector moved by a little noise, sharing its thumbnails.
    Scale(ScaleArgs),
}

#[derive(Debug, clap::Args)]
pub struct FmnistArgs {
    /// ONNX embedding model written by `otlens import`.
    #[arg(long)]
    pub model: PathBuf,
    /// Catalog folder to write (manifest.json, model, index, thumbnails).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of products (the first N test images).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Folder with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub dataset: PathBuf,
    /// Where the product photos and catalog.csv are written.
    #[arg(long, default_value = ".cache/demo-fmnist")]
    pub work: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct FpiArgs {
    /// Folder with products.csv and images/.
    #[arg(long)]
    pub data: PathBuf,
    /// ONNX embedding model written by `otlens import`.
    #[arg(long)]
    pub model: PathBuf,
    /// Catalog folder to write (manifest.json, model, index, thumbnails).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of products (the first N rows of products.csv).
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Where catalog.csv is written (it points at the photos in --data).
    #[arg(long, default_value = ".cache/demo-fpi")]
    pub work: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Catalog folder to grow (written by `otlens build-index` or another demo).
    #[arg(long)]
    pub from: PathBuf,
    /// Catalog folder to write (manifest.json, the same model, a new index, thumbnails).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of products.
    #[arg(long, default_value_t = 100_000)]
    pub count: usize,
    /// How the index stores vectors (see `otlens build-index --help`).
    #[arg(long, value_enum, default_value_t = CodecName::Pq)]
    pub codec: CodecName,
    /// Bytes per product of the pq codec (at most the embedding's dimensions).
    #[arg(long, default_value_t = 64)]
    pub pq_subspaces: usize,
    /// Bytes per product of pq's refinement (see `otlens build-index --help`; 0: none).
    #[arg(long, default_value_t = 0)]
    pub pq_refinement: usize,
    #[command(flatten)]
    pub partitions: PartitionArgs,
}

pub fn run(args: Args) -> Result<()> {
    match args.source {
        Source::Fmnist(args) => fmnist(&args),
        Source::Fpi(args) => fpi(&args),
        Source::Scale(args) => scale(&args),
    }
}

/// Fashion-MNIST's ten classes, by label.
const FMNIST_CLASSES: [&str; 10] = [
    "T-shirt",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];
/// Fashion-MNIST's 28-pixel images, enlarged so that thumbnails and the model input are not mush.
const FMNIST_SIDE: u32 = 112;

/// A row of the catalog.csv the demos write: the same columns a shop would provide.
#[derive(Serialize)]
struct CatalogRow {
    id: String,
    title: String,
    brand: String,
    price: u64,
    currency: &'static str,
    category: String,
    colour: String,
    url: String,
    image: String,
    in_stock: bool,
}

fn fmnist(args: &FmnistArgs) -> Result<()> {
    let images_path = args.dataset.join("t10k-images-idx3-ubyte.gz");
    let labels_path = args.dataset.join("t10k-labels-idx1-ubyte.gz");
    if !images_path.is_file() || !labels_path.is_file() {
        bail!(
            "Fashion-MNIST was not found in {}: install Debian's dataset-fashion-mnist \
             (apt-get install dataset-fashion-mnist)",
            args.dataset.display()
        );
    }
    ensure!(args.count > 0, "--count must be at least 1");
    let (image_shape, pixels) = read_idx(&images_path, 3)?;
    let (label_shape, labels) = read_idx(&labels_path, 1)?;
    let [count, rows, columns] = [image_shape[0], image_shape[1], image_shape[2]];
    ensure!(rows > 0 && columns > 0, "{} holds empty images", images_path.display());
    ensure!(
        label_shape[0] == count,
        "{} has {count} images but {} has {} labels",
        images_path.display(),
        labels_path.display(),
        label_shape[0]
    );
    let count = count.min(args.count);

    let images_dir = args.work.join("images");
    if images_dir.exists() {
        fs::remove_dir_all(&images_dir).with_context(|| format!("cannot clear {}", images_dir.display()))?;
    }
    fs::create_dir_all(&images_dir).with_context(|| format!("cannot create {}", images_dir.display()))?;
    let catalog_path = args.work.join("catalog.csv");
    let mut catalog =
        csv::Writer::from_path(&catalog_path).with_context(|| format!("cannot write {}", catalog_path.display()))?;
    let side = rows * columns;
    for (n, (garment, &label)) in pixels.chunks_exact(side).zip(&labels).take(count).enumerate() {
        let class = FMNIST_CLASSES
            .get(usize::from(label))
            .with_context(|| format!("{}: label {label} is not a Fashion-MNIST class", labels_path.display()))?;
        // The dataset draws light garments on black; shops show dark on white.
        let inverted = garment.iter().map(|&value| 255 - value).collect();
        let small = GrayImage::from_raw(columns as u32, rows as u32, inverted).context("bad image size")?;
        let large = image::imageops::resize(&small, FMNIST_SIDE, FMNIST_SIDE, FilterType::Triangle);
        let file = format!("images/{n:04}.png");
        large
            .save(args.work.join(&file))
            .with_context(|| format!("cannot write {file}"))?;
        let id = format!("fmnist-{n:04}");
        catalog.serialize(CatalogRow {
            title: format!("{class} No. {n:04}"),
            brand: demo_brand(n).into(),
            price: demo_price_krw(n),
            currency: "KRW",
            category: (*class).into(),
            colour: "grey".into(),
            url: format!("#product-{id}"),
            image: file,
            in_stock: demo_in_stock(n),
            id,
        })?;
    }
    catalog.flush()?;
    drop(catalog);
    eprintln!("wrote {count} Fashion-MNIST products to {}", catalog_path.display());
    build_demo_catalog(&catalog_path, &args.model, &args.out, &args.work)
}

/// Builds a demo's catalog folder from the catalog.csv it wrote, with the embeddings cached in
/// its work folder, so that rebuilding a demo embeds nothing again.
fn build_demo_catalog(catalog_path: &Path, model: &Path, out: &Path, work: &Path) -> Result<()> {
    let cache = work.join("embeddings");
    let storage = Storage {
        codec: Codec::Int8,
        partitions: PartitionArgs::default(),
    };
    build_index::build_catalog(catalog_path, model, out, storage, &cache)?;
    Ok(())
}

/// Reads an IDX file (Fashion-MNIST's format) of unsigned bytes with `rank` dimensions.
fn read_idx(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{} is not a readable gzip file", path.display()))?;
    let header_len = 4 + 4 * rank;
    let magic = [0, 0, 0x08, rank as u8];
    ensure!(
        bytes.len() >= header_len && bytes[..4] == magic,
        "{} is not an IDX file of unsigned bytes with {rank} dimensions",
        path.display()
    );
    let shape: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|size| u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize)
        .collect();
    let data = bytes.split_off(header_len);
    ensure!(
        shape.iter().try_fold(1usize, |total, &size| total.checked_mul(size)) == Some(data.len()),
        "{} has {} data bytes, its header says {shape:?}",
        path.display(),
        data.len()
    );
    Ok((shape, data))
}

/// The columns of Fashion Product Images' products.csv that a catalog needs.
#[derive(Deserialize)]
struct FpiProduct {
    product_id: String,
    title: String,
    #[serde(rename = "articleType")]
    article_type: String,
    #[serde(rename = "baseColour")]
    base_colour: String,
    image: String,
}

fn fpi(args: &FpiArgs) -> Result<()> {
    let products_path = args.data.join("products.csv");
    if !products_path.is_file() || !args.data.join("images").is_dir() {
        bail!(
            "no Fashion Product Images in {}: expected products.csv and images/ there (pass the folder with --data)",
            args.data.display()
        );
    }
    ensure!(args.count > 0, "--count must be at least 1");
    // Absolute photo paths, so the catalog file may live anywhere.
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.data.display()))?;
    let mut reader =
        csv::Reader::from_path(&products_path).with_context(|| format!("cannot read {}", products_path.display()))?;
    fs::create_dir_all(&args.work).with_context(|| format!("cannot create {}", args.work.display()))?;
    let catalog_path = args.work.join("catalog.csv");
    let mut catalog =
        csv::Writer::from_path(&catalog_path).with_context(|| format!("cannot write {}", catalog_path.display()))?;
    let mut written = 0;
    for (n, row) in reader.deserialize::<FpiProduct>().enumerate() {
        if written == args.count {
            break;
        }
        let product = match row {
            Ok(product) => product,
            Err(error) => {
                eprintln!("{}: skipped a row: {error}", products_path.display());
                continue;
            }
        };
        let brand = product.title.split_whitespace().next().unwrap_or_default().to_owned();
        catalog.serialize(CatalogRow {
            url: format!("#product-{}", product.product_id),
            id: product.product_id,
            title: product.title,
            brand,
            price: demo_price_krw(n),
            currency: "KRW",
            category: product.article_type,
            colour: product.base_colour,
            image: data.join(&product.image).display().to_string(),
            in_stock: demo_in_stock(n),
        })?;
        written += 1;
    }
    catalog.flush()?;
    drop(catalog);
    eprintln!(
        "wrote {written} Fashion Product Images products to {}",
        catalog_path.display()
    );
    build_demo_catalog(&catalog_path, &args.model, &args.out, &args.work)
}

/// Invented shop data for demo product `n`, the same on every build. A multiply-xorshift hash
/// spreads neighbouring products over each range without a period.
fn demo_hash(n: usize) -> u64 {
    let hash = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    hash ^ (hash >> 29)
}

/// A plausible price in won: 9,000 to 98,900.
fn demo_price_krw(n: usize) -> u64 {
    let hash = demo_hash(n);
    let thousands = hash % 90 + 9;
    let ends_in_900 = (hash >> 32).is_multiple_of(3);
    thousands * 1000 + if ends_in_900 { 900 } else { 0 }
}

/// About one product in ten is sold out, so the demo's in-stock filter has something to hide.
fn demo_in_stock(n: usize) -> bool {
    !(demo_hash(n) >> 40).is_multiple_of(10)
}

/// Invented brands (the Fashion-MNIST images have none).
fn demo_brand(n: usize) -> &'static str {
    ["Hanul", "Mono Lab", "Seoul Basics", "Greyline"][(demo_hash(n) >> 48) as usize % 4]
}

/// Length of the noise added to a copied unit vector, spread over its dimensions: the copy
/// keeps a cosine of about 0.94 to its original, closer than most other products, whatever
/// the embedding's width (0.01 per dimension of the ImageNet model's 1,280).
const SCALE_NOISE_LENGTH: f32 = 0.358;

fn scale(args: &ScaleArgs) -> Result<()> {
    ensure!(args.count > 0, "--count must be at least 1");
    let read = |name: &str| {
        let path = args.from.join(name);
        fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let source: Manifest = serde_json::from_slice(&read("manifest.json")?).with_context(|| {
        format!(
            "{} is not a catalog manifest",
            args.from.join("manifest.json").display()
        )
    })?;
    let model = read(&source.model.file)?;
    let index = Index::from_bytes(&read(&source.index.file)?)
        .with_context(|| format!("cannot read the index of {}", args.from.display()))?;

    let mut rng = StdRng::seed_from_u64(1);
    let noise_per_dimension = SCALE_NOISE_LENGTH / (index.dims() as f32).sqrt();
    let noise = Normal::new(0.0, noise_per_dimension).context("bad noise")?;
    let mut products = Vec::with_capacity(args.count);
    let mut embeddings = Vec::with_capacity(args.count);
    let mut colours = Vec::with_capacity(args.count);
    for n in 0..args.count {
        let original = n % index.len();
        let copy = n / index.len();
        let mut product = index.products()[original].clone();
        let mut embedding = index.stored_vector(original).context("the index lost a product")?;
        if copy > 0 {
            product.id = format!("{}~{copy}", product.id);
            product.title = format!("{} ({copy})", product.title);
            embedding.iter_mut().for_each(|value| *value += noise.sample(&mut rng));
        }
        products.push(product);
        embeddings.push(embedding);
        colours.extend(index.colour(original));
    }
    let started = Instant::now();
    let codec = args.codec.codec(args.pq_subspaces, args.pq_refinement);
    let mut scaled = Index::build_with(codec, &index.model_sha256(), products, &embeddings)?;
    // A million f32 embeddings take 5 GB; grouping into lists makes its own copy.
    drop(embeddings);
    if index.has_colours() {
        scaled = scaled.with_colours(colours)?;
    }
    let scaled = args.partitions.apply(scaled);
    let files = args.partitions.files(&scaled)?;
    eprintln!(
        "indexed {} products with {codec} in {:.1} s",
        scaled.len(),
        started.elapsed().as_secs_f64()
    );

    let thumbs = args.out.join(&source.thumbnails);
    fs::create_dir_all(&thumbs).with_context(|| format!("cannot create {}", thumbs.display()))?;
    for entry in fs::read_dir(args.from.join(&source.thumbnails)).context("cannot list the thumbnails")? {
        let entry = entry?;
        fs::copy(entry.path(), thumbs.join(entry.file_name()))
            .with_context(|| format!("cannot copy {}", entry.path().display()))?;
    }
    let manifest = Manifest {
        index: files.index.0.clone(),
        lists: files.lists.as_ref().map(|(entry, _)| entry.clone()),
        products: scaled.len(),
        ..source
    };
    write(&args.out.join(&manifest.model.file), &model)?;
    files.write(&args.out)?;
    write(&args.out.join("manifest.json"), &serde_json::to_vec_pretty(&manifest)?)?;
    eprintln!(
        "wrote {} products ({} index bytes) to {}",
        manifest.products,
        manifest.index.bytes + manifest.lists.as_ref().map_or(0, |lists| lists.bytes),
        args.out.join("manifest.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_prices_are_stable_and_plausible() {
        let prices: Vec<u64> = (0..1000).map(demo_price_krw).collect();
        assert!(prices.iter().all(|&p| (9_000..=98_900).contains(&p) && p % 100 == 0));
        assert_eq!(prices, (0..1000).map(demo_price_krw).collect::<Vec<_>>());
        let distinct: std::collections::HashSet<u64> = prices.iter().copied().collect();
        assert!(distinct.len() > 100, "prices vary between products");
        let sold_out = (0..1000).filter(|&n| !demo_in_stock(n)).count();
        assert!((50..150).contains(&sold_out), "{sold_out} of 1000 sold out");
        let brands: std::collections::HashSet<&str> = (0..1000).map(demo_brand).collect();
        assert_eq!(brands.len(), 4);
    }
}
