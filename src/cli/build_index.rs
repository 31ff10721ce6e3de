//! `otlens build-index`: embeds every catalog photo and writes the folder the widget loads:
//! `manifest.json`, `model-<sha8>.nnef.tgz` (the model compiled for the widget),
//! `index-<sha8>.otl` and `thumbs/<photo sha16>.jpg`; with `--ranged`, the index is a head
//! and `lists-<sha8>.otb` holds the inverted lists the widget fetches with Range requests.
//!
//! Rebuilds are incremental: embeddings are cached by photo sha256 ([`EmbeddingCache`]) and
//! thumbnails are named by it, so an unchanged photo is read and hashed, never decoded.
//!
//! Publishing is atomic: every file is named by its content, the manifest that switches the
//! widget over is moved into place last, and the files of the version before stay, so a page
//! opened on it keeps working. An interrupted build leaves the previous catalog working.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::embedding_cache::{Cached, EmbeddingCache};
use crate::catalog::{read_catalog, CatalogEntry};
use crate::colour::{self, CompactColour};
use crate::index::{Codec, FileEntry, Index, Manifest, MANIFEST_FORMAT};
use crate::model::{self, hex, sha256_hex, Embedder};
use crate::preprocess::{self, DecodeLimits};
use crate::progress::PhotoProgress;

/// Longest side of a thumbnail, in pixels: sharp in a results grid on a phone, ~10 KB each.
const THUMBNAIL_SIDE: u32 = 192;
const THUMBNAIL_QUALITY: u8 = 82;
const THUMBS_DIR: &str = "thumbs";
const STAGING_DIR: &str = ".otlens-build";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Embedding model: ONNX from `otlens import` or `otlens train` (compiled here for the
    /// widget), or a model already compiled by `otlens compile`.
    #[arg(long)]
    pub model: PathBuf,
    /// Catalog: CSV with a header row, or JSON Lines. Columns: id, title, brand, price, currency,
    /// category, colour, url, image (a path relative to the catalog file, or absolute).
    #[arg(long)]
    pub catalog: PathBuf,
    /// Output folder; its previous catalog is replaced only once the new one is complete.
    #[arg(long)]
    pub out: PathBuf,
    /// Exit with an error when a row was skipped or two products share a photo (the catalog
    /// is still written for the good rows).
    #[arg(long)]
    pub strict: bool,
    /// How the index stores vectors: int8 (dims + 4 bytes per product, the most exact),
    /// binary (sign bits pick candidates for int8 rescoring: ~8x faster on large catalogs,
    /// ~12 % larger), or pq (product quantisation: --pq-subspaces bytes per product plus a
    /// shared rotation and codebooks; small, but it loses part of the exact ranking; see
    /// `otlens bench-index`).
    #[arg(long, value_enum, default_value_t = CodecName::Int8)]
    pub codec: CodecName,
    /// Bytes per product of the pq codec (at most the embedding's dimensions).
    #[arg(long, default_value_t = 32)]
    pub pq_subspaces: usize,
    /// With pq: bytes per product of a second quantiser of what the first leaves over, which a
    /// search reads for its best 50 candidates only (0: none). For large ranged catalogs: a
    /// search then fetches these bytes of a few dozen products rather than of every product it
    /// scans, so `--pq-subspaces 16 --pq-refinement 16` fetches about half of what pq32 does.
    #[arg(long, default_value_t = 0)]
    pub pq_refinement: usize,
    /// Where embeddings are kept between builds, by photo and model, so that a rebuild embeds
    /// only new and changed photos. Keep it out of the published folder.
    #[arg(long, default_value = ".cache/embeddings")]
    pub cache: PathBuf,
    #[command(flatten)]
    pub partitions: PartitionArgs,
}

/// Bytes of codes above which a ranged catalog gets a warning: the widget sets aside memory for
/// every product's codes when the head loads (README, Ranged catalogs). pq64 at a million
/// products stays below it, int8 of 1,280 dimensions passes it at some 200,000.
const RANGED_ROWS_WARNING_BYTES: usize = 256_000_000;

/// The warning for a ranged catalog of `products` whose codes take `product_bytes` each in
/// `codec`, if they pass [`RANGED_ROWS_WARNING_BYTES`].
fn ranged_rows_warning(products: usize, product_bytes: usize, codec: Codec) -> Option<String> {
    let rows = products * product_bytes;
    (rows > RANGED_ROWS_WARNING_BYTES).then(|| {
        format!(
            "warning: the widget sets aside {} MB for these {products} products' codes ({product_bytes} bytes each in {codec}) \
             when the head loads, and each search fetches the rows of every list it scans. For a catalog \
             this large, --codec pq --pq-subspaces 16 --pq-refinement 16 takes 32 bytes a product, best \
             with a 32-dimension head from `otlens train --dims 32` (README, Vector codecs)",
            rows / 1_000_000
        )
    })
}

/// From this many products up, an index is partitioned unless `--lists 0` says otherwise.
const PARTITION_FROM: usize = 50_000;

/// How an index stores its products: the codec, and the inverted lists.
#[derive(Clone, Copy, Debug)]
pub struct Storage {
    pub codec: Codec,
    pub partitions: PartitionArgs,
}

/// Inverted lists, so that a search on a large catalog scans the part of it nearest the query.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct PartitionArgs {
    /// Inverted lists to group the products into (0 or 1: none; every search scans every
    /// product). Default: none below 50,000 products, else about the square root of the
    /// product count.
    #[arg(long)]
    pub lists: Option<usize>,
    /// Lists a search scans, nearest the query first; more when its filter leaves fewer
    /// products than results asked for. More lists: closer to an exact search, slower.
    /// Default: a sixteenth of the lists, at least 8. With --ranged, where each list scanned is
    /// downloaded, the most a search scans: the nearest list, then those whose centroids score
    /// within a margin of it (see --list-recall); default the cube root of the lists, at least
    /// 8 (10 of 1,000 lists).
    #[arg(long)]
    pub probe: Option<usize>,
    /// With --ranged: the share of the catalog's own products' 10 nearest neighbours that the
    /// lists a search scans must hold, measured on 1,000 of them at build time, which sets the
    /// margin. Lower: fewer bytes a search, fewer of the exact results.
    #[arg(long, default_value_t = DEFAULT_LIST_RECALL, value_parser = share)]
    pub list_recall: f64,
    /// Split the index into a small head and a lists file, which the widget fetches list by
    /// list with HTTP Range requests as searches reach the lists (the whole file from hosts
    /// that ignore Range). For large catalogs; needs inverted lists.
    #[arg(long)]
    pub ranged: bool,
    /// With inverted lists: store each product's colour as the nearest of this many typical
    /// colours of the catalog, 2 bytes a product rather than 24 (a ranged catalog downloads
    /// one with each row a search scans), at some cost to naming a photo's colour. 0: each
    /// product's own colour. Default: 4,096 with --ranged, else 0.
    #[arg(long)]
    pub colour_palette: Option<usize>,
}

/// Colours of a ranged catalog's palette unless told: on Fashion Product Images' photos, more
/// words named colours better (`otlens eval --stored-colours`, by colour and the model's cosine
/// as the widget names them: 1,024 words 0.631, 4,096 0.639, each photo's own colour 0.654),
/// and 4,096 cost 98 KB of head.
const RANGED_COLOUR_PALETTE: usize = 4096;

/// Lists a search scans unless told. A whole catalog has downloaded all of them, so more cost
/// only time: a sixteenth. A ranged catalog downloads each list it scans, so as few as keep
/// recall: on Fashion Product Images' photos (`otlens bench-index --list-size`), the lists a
/// query must scan for 0.95-0.975 of exact search's top 10 grew as the 0.26th to 0.30th power
/// of the list count at a fixed list size, which the cube root covers.
pub(crate) fn default_probe(lists: usize, ranged: bool) -> usize {
    let probe = if ranged {
        // The cube root, rounded up.
        (1..).find(|root: &usize| root.pow(3) >= lists).unwrap_or(lists)
    } else {
        lists / 16
    };
    probe.max(8)
}

impl Default for PartitionArgs {
    /// The command line's defaults.
    fn default() -> PartitionArgs {
        PartitionArgs {
            lists: None,
            probe: None,
            list_recall: DEFAULT_LIST_RECALL,
            ranged: false,
            colour_palette: None,
        }
    }
}

/// The share of neighbours a ranged catalog's lists keep unless told: on Fashion Product
/// Images' photos (`otlens bench-index`, the 32-d head) 0.98 of the catalog's own neighbours
/// kept 0.950 of a held-out photo's exact top 10 in pq32 and 0.951 in pq16+16, where 0.97 kept
/// 0.940 and 0.942 (int8: 0.965 and 0.958) for a fifth fewer products scanned.
const DEFAULT_LIST_RECALL: f64 = 0.98;

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text} is not a share between 0 and 1")),
    }
}

/// The files an index is published as, each with its manifest entry.
pub struct IndexFiles {
    pub index: (FileEntry, Vec<u8>),
    /// The lists file of a ranged catalog.
    pub lists: Option<(FileEntry, Vec<u8>)>,
}

impl IndexFiles {
    /// Writes the files into `folder`.
    pub fn write(&self, folder: &Path) -> Result<()> {
        for (entry, bytes) in std::iter::once(&self.index).chain(&self.lists) {
            write(&folder.join(&entry.file), bytes)?;
        }
        Ok(())
    }
}

impl PartitionArgs {
    /// `index` partitioned as these arguments say, and its colours then words of a palette.
    pub fn apply(&self, index: Index) -> Index {
        let index = self.grouped(index);
        let words = self
            .colour_palette
            .unwrap_or(if self.ranged { RANGED_COLOUR_PALETTE } else { 0 });
        // A palette as large as the catalog would only add to it.
        if words == 0 || words >= index.len() || !index.has_colours() || index.lists().is_none() {
            return index;
        }
        let started = Instant::now();
        let index = index.with_colour_palette(words);
        eprintln!(
            "stored the colours as words of a palette of {}, in {:.1} s",
            index.colour_palette().unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
        index
    }

    /// `index` partitioned as these arguments say.
    fn grouped(&self, index: Index) -> Index {
        let lists = self.lists.unwrap_or(if index.len() < PARTITION_FROM {
            0
        } else {
            (index.len() as f64).sqrt().round() as usize
        });
        if lists < 2 {
            return index;
        }
        let started = Instant::now();
        let probe = self.probe.unwrap_or(default_probe(lists, self.ranged));
        let index = index.partitioned(lists, probe);
        let (lists, least) = index.lists().unwrap_or_default();
        if !self.ranged {
            eprintln!(
                "grouped the products into {lists} lists, of which a search scans {least} or more, in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return index;
        }
        let (index, margin) = index.with_calibrated_margin(self.list_recall, probe);
        if let Some(margin) = margin {
            eprintln!(
                "grouped the products into {lists} lists, in {:.1} s; a search scans the nearest and those within \
                 {:.3} of it, {} at most: on {} of the products, {:.1} lists on average, holding {:.3} of their 10 nearest",
                started.elapsed().as_secs_f64(),
                margin.margin,
                margin.most,
                margin.sampled,
                margin.mean_lists,
                margin.recall
            );
        }
        index
    }

    /// The files `index` is published as: one, or with `--ranged` a head and a lists file.
    pub fn files(&self, index: &Index) -> Result<IndexFiles> {
        if !self.ranged {
            let bytes = index.to_bytes();
            return Ok(IndexFiles {
                index: (FileEntry::content_named("index", "otl", &bytes), bytes),
                lists: None,
            });
        }
        let (head, lists) = index
            .to_ranged_bytes()
            .context("--ranged needs inverted lists: pass --lists (at least 2)")?;
        eprintln!(
            "split the index into a {} KB head and a {} KB lists file",
            head.len() / 1000,
            lists.len() / 1000
        );
        if let Some(warning) = ranged_rows_warning(index.len(), index.product_vector_bytes(), index.codec()) {
            eprintln!("{warning}");
        }
        Ok(IndexFiles {
            index: (FileEntry::content_named("index", "otl", &head), head),
            lists: Some((FileEntry::content_named("lists", "otb", &lists), lists)),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CodecName {
    Int8,
    Binary,
    Pq,
}

impl CodecName {
    /// The codec, with `pq_subspaces` bytes per product for pq and `pq_refinement` more for its
    /// refinement (0: none).
    pub fn codec(self, pq_subspaces: usize, pq_refinement: usize) -> Codec {
        match self {
            CodecName::Int8 => Codec::Int8,
            CodecName::Binary => Codec::Binary,
            CodecName::Pq if pq_refinement == 0 => Codec::ProductQuantised {
                subspaces: pq_subspaces,
            },
            CodecName::Pq => Codec::RefinedProductQuantised {
                subspaces: pq_subspaces,
                refinement: pq_refinement,
            },
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let built = build_catalog(
        &args.catalog,
        &args.model,
        &args.out,
        Storage {
            codec: args.codec.codec(args.pq_subspaces, args.pq_refinement),
            partitions: args.partitions,
        },
        &args.cache,
    )?;
    if args.strict && built.reported > 0 {
        bail!(
            "{} rows were reported above (--strict); the catalog was written for the other {} products",
            built.reported,
            built.manifest.products
        );
    }
    Ok(())
}

/// What a build wrote, and how many rows it reported as skipped or suspicious.
pub struct Built {
    pub manifest: Manifest,
    pub reported: usize,
    /// The products' thumbnails, relative to the manifest.
    thumbnails: Vec<String>,
}

/// Reads the catalog file, reports the rows it skips, and writes the catalog folder `out`
/// with its products stored as `storage` says, reusing the embeddings kept in the folder
/// `cache`.
pub fn build_catalog(
    catalog_path: &Path,
    model_path: &Path,
    out: &Path,
    storage: Storage,
    cache: &Path,
) -> Result<Built> {
    let catalog = read_catalog(catalog_path)?;
    for problem in &catalog.problems {
        eprintln!("{}: skipped {problem}", catalog_path.display());
    }
    let mut built = build(model_path, catalog.entries, out, storage, cache)?;
    built.reported += catalog.problems.len();
    Ok(built)
}

/// Embeds `entries` with the model at `model_path` and writes the catalog folder `out`.
fn build(model_path: &Path, entries: Vec<CatalogEntry>, out: &Path, storage: Storage, cache: &Path) -> Result<Built> {
    if entries.is_empty() {
        bail!("the catalog has no usable products");
    }
    let model_bytes =
        fs::read(model_path).with_context(|| format!("cannot read the model {}", model_path.display()))?;
    // The index is built with the very file the widget runs.
    let model_bytes = if model::is_compiled(&model_bytes) {
        model_bytes
    } else {
        model::compile(&model_bytes).with_context(|| format!("cannot compile the model {}", model_path.display()))?
    };
    let embedder = Embedder::from_bytes(&model_bytes)
        .with_context(|| format!("cannot load the model {}", model_path.display()))?;

    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let staging = out.join(STAGING_DIR);
    // Left over from an interrupted build: nothing in it is referenced by the live manifest.
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    let mut cache = EmbeddingCache::open(cache, &sha256_hex(&model_bytes), embedder.info().dims);
    let built = stage(&embedder, &model_bytes, entries, out, &staging, storage, &mut cache).and_then(|built| {
        commit(&staging, out, &built)?;
        eprintln!(
            "wrote {} products to {}",
            built.manifest.products,
            out.join("manifest.json").display()
        );
        Ok(built)
    });
    if built.is_err() {
        // Best effort: the previous catalog is intact either way, this only tidies up.
        let _ = fs::remove_dir_all(&staging);
    }
    built
}

/// Embeds the photos the cache does not know, writes their thumbnails into `out`'s thumbnail
/// folder (named by content, so the live catalog never sees them), and the index, model copy
/// and manifest into `staging`.
fn stage(
    embedder: &Embedder,
    model_bytes: &[u8],
    entries: Vec<CatalogEntry>,
    out: &Path,
    staging: &Path,
    storage: Storage,
    cache: &mut EmbeddingCache,
) -> Result<Built> {
    let thumbs = out.join(THUMBS_DIR);
    fs::create_dir_all(&thumbs).with_context(|| format!("cannot create {}", thumbs.display()))?;
    fs::create_dir_all(staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let started = Instant::now();
    let progress = PhotoProgress::new(entries.len(), "embedding");
    let limits = DecodeLimits::default();
    let known: &EmbeddingCache = cache;
    let embedded: Vec<Result<Embedded>> = entries
        .par_iter()
        .map(|entry| {
            let result = embed_entry(embedder, entry, &limits, known, &thumbs);
            progress.inc();
            result
        })
        .collect();
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();

    let photos = entries.len();
    let mut products = Vec::with_capacity(photos);
    let mut embeddings = Vec::with_capacity(photos);
    let mut colours = Vec::with_capacity(photos);
    let mut reported = 0;
    let mut fresh = 0;
    // Two products with the same photo are usually a copy-paste slip in the catalog; both are kept.
    let mut first_with_photo: HashMap<[u8; 32], (u64, String)> = HashMap::new();
    for (entry, result) in entries.into_iter().zip(embedded) {
        match result {
            Ok(embedded) => {
                if let Some((line, id)) = first_with_photo.get(&embedded.photo_sha256) {
                    eprintln!(
                        "line {}: product {:?} has the same photo as product {id:?} on line {line}",
                        entry.line, entry.product.id
                    );
                    reported += 1;
                } else {
                    first_with_photo.insert(embedded.photo_sha256, (entry.line, entry.product.id.clone()));
                }
                if embedded.fresh {
                    fresh += 1;
                    let cached = Cached {
                        embedding: embedded.embedding.clone(),
                        colour: embedded.colour,
                    };
                    cache.insert(embedded.photo_sha256, cached);
                }
                let mut product = entry.product;
                product.thumbnail = format!("{THUMBS_DIR}/{}", embedded.thumbnail);
                products.push(product);
                embeddings.push(embedded.embedding);
                colours.push(embedded.colour);
            }
            Err(error) => {
                eprintln!(
                    "line {}: skipped product {:?}: {}: {error:#}",
                    entry.line,
                    entry.product.id,
                    entry.image.display()
                );
                reported += 1;
            }
        }
    }
    // Kept even when the build fails below: the embedding was the slow part.
    cache.save()?;
    if products.is_empty() {
        bail!("none of the catalog's photos could be used");
    }
    eprintln!(
        "photos embedded: {fresh}, from the cache: {} ({}), in {seconds:.1} s",
        products.len() - fresh,
        cache.path().display()
    );

    let info = embedder.info();
    let index = Index::build_with(storage.codec, &info.sha256, products, &embeddings)?.with_colours(colours)?;
    let index = storage.partitions.apply(index);
    let files = storage.partitions.files(&index)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        model: FileEntry::content_named("model", "nnef.tgz", model_bytes),
        index: files.index.0.clone(),
        lists: files.lists.as_ref().map(|(entry, _)| entry.clone()),
        products: index.len(),
        dims: index.dims(),
        arch: info.arch.clone(),
        thumbnails: format!("{THUMBS_DIR}/"),
    };
    write(&staging.join(&manifest.model.file), model_bytes)?;
    files.write(staging)?;
    write(
        &staging.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).context("cannot encode the manifest")?,
    )?;
    let thumbnails = index
        .products()
        .iter()
        .map(|product| product.thumbnail.clone())
        .collect();
    Ok(Built {
        manifest,
        reported,
        thumbnails,
    })
}

struct Embedded {
    embedding: Vec<f32>,
    colour: CompactColour,
    photo_sha256: [u8; 32],
    /// The thumbnail's file name in the thumbnail folder.
    thumbnail: String,
    /// Embedded now, not taken from the cache.
    fresh: bool,
}

/// The entry's embedding and colour (from `cache` when it has them), with its thumbnail
/// written into `thumbs` unless it is there already.
fn embed_entry(
    embedder: &Embedder,
    entry: &CatalogEntry,
    limits: &DecodeLimits,
    cache: &EmbeddingCache,
    thumbs: &Path,
) -> Result<Embedded> {
    let bytes = fs::read(&entry.image).context("cannot read the photo")?;
    let photo_sha256: [u8; 32] = Sha256::digest(&bytes).into();
    // 64 bits of the photo's sha256: a collision in one catalog is not a practical concern.
    let thumbnail = format!("{}.jpg", hex(&photo_sha256[..8]));
    let thumbnail_path = thumbs.join(&thumbnail);
    let cached = cache.get(&photo_sha256);
    if let (Some(cached), true) = (cached, thumbnail_path.is_file()) {
        return Ok(Embedded {
            embedding: cached.embedding.clone(),
            colour: cached.colour,
            photo_sha256,
            thumbnail,
            fresh: false,
        });
    }
    let photo = preprocess::decode(&bytes, limits)?;
    let (embedding, colour, fresh) = match cached {
        Some(cached) => (cached.embedding.clone(), cached.colour, false),
        None => (
            embedder.embed_catalog_photo(&photo)?,
            CompactColour::from_histogram(&colour::describe(&photo).histogram),
            true,
        ),
    };
    write_thumbnail(photo, &thumbnail_path)?;
    Ok(Embedded {
        embedding,
        colour,
        photo_sha256,
        thumbnail,
        fresh,
    })
}

/// A small JPEG of `photo` at `path`, written whole or not at all: a half-written file would
/// pass for a finished thumbnail on the next build.
fn write_thumbnail(photo: image::RgbImage, path: &Path) -> Result<()> {
    let (width, height) = photo.dimensions();
    let longest = width.max(height);
    // Never enlarged: a small catalog photo stays as sharp as it is.
    let small = if longest > THUMBNAIL_SIDE {
        let scale = f64::from(THUMBNAIL_SIDE) / f64::from(longest);
        let side = |pixels: u32| ((f64::from(pixels) * scale).round() as u32).max(1);
        preprocess::resize(&photo, side(width), side(height))
    } else {
        photo
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, THUMBNAIL_QUALITY)
        .encode_image(&small)
        .context("cannot encode the thumbnail")?;
    // Unique per thread: two products with the same photo write the same thumbnail at once.
    let partial = path.with_extension(format!("partial-{:?}", std::thread::current().id()));
    write(&partial, &jpeg)?;
    fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The files, relative to `out`, of the catalog published there: its model, index and
/// thumbnails. Empty when there is none, or when it cannot be read.
fn published_files(out: &Path) -> HashSet<String> {
    let Some(manifest) = fs::read(out.join("manifest.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
    else {
        return HashSet::new();
    };
    let thumbnails = fs::read(out.join(&manifest.index.file))
        .ok()
        .and_then(|bytes| Index::from_bytes(&bytes).ok())
        .map(|index| {
            index
                .products()
                .iter()
                .map(|product| product.thumbnail.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut files: HashSet<String> = thumbnails;
    files.extend([manifest.model.file, manifest.index.file]);
    files.extend(manifest.lists.map(|lists| lists.file));
    files
}

/// Moves the staged model and index into `out`, then the manifest that switches the widget
/// over; then removes what neither this version nor the one before it uses.
fn commit(staging: &Path, out: &Path, built: &Built) -> Result<()> {
    let manifest = &built.manifest;
    let mut in_use = published_files(out);
    let rename = |from: &Path, to: &Path| {
        fs::rename(from, to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
    };
    let lists = manifest.lists.as_ref().map(|lists| lists.file.as_str());
    for file in [manifest.model.file.as_str(), &manifest.index.file]
        .into_iter()
        .chain(lists)
        .chain(["manifest.json"])
    {
        rename(&staging.join(file), &out.join(file))?;
    }
    fs::remove_dir_all(staging).with_context(|| format!("cannot remove {}", staging.display()))?;

    in_use.extend([manifest.model.file.clone(), manifest.index.file.clone()]);
    in_use.extend(lists.map(str::to_owned));
    in_use.extend(built.thumbnails.iter().cloned());
    let unused = |folder: &str, name: &str| {
        let file = if folder.is_empty() {
            name.to_owned()
        } else {
            format!("{folder}/{name}")
        };
        !in_use.contains(&file)
    };
    for stale in fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))? {
        let name = stale?.file_name();
        let name = name.to_string_lossy();
        // `.onnx`: the model file of catalogs built before the widget ran compiled models.
        let ours = (name.starts_with("model-") && (name.ends_with(".nnef.tgz") || name.ends_with(".onnx")))
            || (name.starts_with("index-") && name.ends_with(".otl"))
            || (name.starts_with("lists-") && name.ends_with(".otb"));
        if ours && unused("", &name) {
            fs::remove_file(out.join(name.as_ref())).with_context(|| format!("cannot remove the old {name}"))?;
        }
    }
    // The thumbnail folder is the catalog's own: every file in it that no version uses goes.
    let thumbs = out.join(THUMBS_DIR);
    for stale in fs::read_dir(&thumbs).with_context(|| format!("cannot list {}", thumbs.display()))? {
        let stale = stale?;
        let name = stale.file_name();
        if stale.file_type()?.is_file() && unused(THUMBS_DIR, &name.to_string_lossy()) {
            fs::remove_file(stale.path())
                .with_context(|| format!("cannot remove the old thumbnail {}", stale.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{default_probe, ranged_rows_warning, Codec};

    #[test]
    fn a_ranged_catalog_scans_fewer_lists_than_a_whole_one() {
        assert_eq!(default_probe(183, false), 11);
        assert_eq!(default_probe(1000, false), 62);
        assert_eq!(default_probe(100, true), 8);
        assert_eq!(default_probe(1000, true), 10);
        assert_eq!(default_probe(1001, true), 11);
        assert_eq!(default_probe(3163, true), 15);
    }

    /// The threshold as its constant's comment puts it: int8 of 1,280 dimensions passes 256 MB
    /// at some 200,000 products; 32-byte refined pq stays below it at a million.
    #[test]
    fn large_ranged_catalogs_are_warned_of_their_codes_memory() {
        let int8 = Codec::Int8;
        assert_eq!(ranged_rows_warning(190_000, 1284, int8), None);
        let warning = ranged_rows_warning(200_000, 1284, int8).expect("256.8 MB of int8 codes");
        assert!(
            warning.contains("256 MB for these 200000 products' codes (1284 bytes each in int8)"),
            "{warning}"
        );
        let refined = Codec::RefinedProductQuantised {
            subspaces: 16,
            refinement: 16,
        };
        assert_eq!(ranged_rows_warning(1_000_000, 32, refined), None);
    }
}
