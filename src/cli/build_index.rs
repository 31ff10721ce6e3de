//! `otlens build-index`: embeds every catalog photo and writes the folder the widget loads:
//! `manifest.json`, `model-<sha8>.nnef.tgz` (the model compiled for the widget),
//! `index-<sha8>.otl` and `thumbs/<n>.jpg`.
//!
//! Everything is written into a staging folder first and moved into place at the end,
//! manifest last, so an interrupted build leaves the previous catalog working.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::{codecs::jpeg::JpegEncoder, imageops::FilterType};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::catalog::{read_catalog, CatalogEntry};
use crate::colour::{self, CompactColour};
use crate::index::{Codec, FileEntry, Index, Manifest, MANIFEST_FORMAT};
use crate::model::{self, Embedder};
use crate::preprocess::{self, DecodeLimits};

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
    /// Bytes per product of the pq codec; must divide the embedding's dimensions.
    #[arg(long, default_value_t = 32)]
    pub pq_subspaces: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CodecName {
    Int8,
    Binary,
    Pq,
}

impl CodecName {
    /// The codec, with `pq_subspaces` bytes per product for pq.
    pub fn codec(self, pq_subspaces: usize) -> Codec {
        match self {
            CodecName::Int8 => Codec::Int8,
            CodecName::Binary => Codec::Binary,
            CodecName::Pq => Codec::ProductQuantised {
                subspaces: pq_subspaces,
            },
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let built = build_catalog(
        &args.catalog,
        &args.model,
        &args.out,
        args.codec.codec(args.pq_subspaces),
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
}

/// Reads the catalog file, reports the rows it skips, and writes the catalog folder `out`
/// with its vectors stored by `codec`.
pub fn build_catalog(catalog_path: &Path, model_path: &Path, out: &Path, codec: Codec) -> Result<Built> {
    let catalog = read_catalog(catalog_path)?;
    for problem in &catalog.problems {
        eprintln!("{}: skipped {problem}", catalog_path.display());
    }
    let mut built = build(model_path, catalog.entries, out, codec)?;
    built.reported += catalog.problems.len();
    Ok(built)
}

/// Embeds `entries` with the model at `model_path` and writes the catalog folder `out`.
fn build(model_path: &Path, entries: Vec<CatalogEntry>, out: &Path, codec: Codec) -> Result<Built> {
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
    let built = stage(&embedder, &model_bytes, entries, &staging, codec).and_then(|built| {
        commit(&staging, out, &built.manifest)?;
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

/// Writes thumbnails, index, model copy and manifest into `staging`.
fn stage(
    embedder: &Embedder,
    model_bytes: &[u8],
    entries: Vec<CatalogEntry>,
    staging: &Path,
    codec: Codec,
) -> Result<Built> {
    let staged_thumbs = staging.join(THUMBS_DIR);
    fs::create_dir_all(&staged_thumbs).with_context(|| format!("cannot create {}", staged_thumbs.display()))?;
    let started = Instant::now();
    let progress = ProgressBar::new(entries.len() as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} photos, {per_sec}, {eta} left")
            .expect("the template is valid"),
    );
    let limits = DecodeLimits::default();
    // Thumbnails are named by catalog position: never by the shop's ids, which may hold any character.
    let embedded: Vec<Result<Embedded>> = entries
        .par_iter()
        .enumerate()
        .map(|(position, entry)| {
            let thumbnail = staged_thumbs.join(format!("{position}.jpg"));
            let result = embed_entry(embedder, entry, &limits, &thumbnail);
            progress.inc(1);
            result
        })
        .collect();
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let photos = entries.len();
    let mut products = Vec::with_capacity(photos);
    let mut embeddings = Vec::with_capacity(photos);
    let mut colours = Vec::with_capacity(photos);
    let mut reported = 0;
    // Two products with the same photo are usually a copy-paste slip in the catalog; both are kept.
    let mut first_with_photo: HashMap<[u8; 32], (u64, String)> = HashMap::new();
    for (position, (entry, result)) in entries.into_iter().zip(embedded).enumerate() {
        match result {
            Ok(Embedded {
                embedding,
                colour,
                photo_sha256,
            }) => {
                if let Some((line, id)) = first_with_photo.get(&photo_sha256) {
                    eprintln!(
                        "line {}: product {:?} has the same photo as product {id:?} on line {line}",
                        entry.line, entry.product.id
                    );
                    reported += 1;
                } else {
                    first_with_photo.insert(photo_sha256, (entry.line, entry.product.id.clone()));
                }
                let mut product = entry.product;
                product.thumbnail = format!("{THUMBS_DIR}/{position}.jpg");
                products.push(product);
                embeddings.push(embedding);
                colours.push(colour);
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
    if products.is_empty() {
        bail!("none of the catalog's photos could be used");
    }
    eprintln!(
        "embedded {} of {photos} photos in {seconds:.1} s ({:.1} photos/s)",
        products.len(),
        photos as f64 / seconds.max(1e-9)
    );

    let info = embedder.info();
    let index = Index::build_with(codec, &info.sha256, products, &embeddings)?.with_colours(colours)?;
    let index_bytes = index.to_bytes();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        model: FileEntry::content_named("model", "nnef.tgz", model_bytes),
        index: FileEntry::content_named("index", "otl", &index_bytes),
        products: index.len(),
        dims: index.dims(),
        arch: info.arch.clone(),
        thumbnails: format!("{THUMBS_DIR}/"),
    };
    write(&staging.join(&manifest.model.file), model_bytes)?;
    write(&staging.join(&manifest.index.file), &index_bytes)?;
    write(
        &staging.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest).context("cannot encode the manifest")?,
    )?;
    Ok(Built { manifest, reported })
}

struct Embedded {
    embedding: Vec<f32>,
    colour: CompactColour,
    photo_sha256: [u8; 32],
}

fn embed_entry(embedder: &Embedder, entry: &CatalogEntry, limits: &DecodeLimits, thumbnail: &Path) -> Result<Embedded> {
    let bytes = fs::read(&entry.image).context("cannot read the photo")?;
    let photo_sha256 = Sha256::digest(&bytes).into();
    let photo = preprocess::decode(&bytes, limits)?;
    let embedding = embedder.embed_tensor(preprocess::to_tensor(&photo, &embedder.info().input))?;
    let colour = CompactColour::from_histogram(&colour::describe(&photo).histogram);
    let (width, height) = photo.dimensions();
    let longest = width.max(height);
    // Never enlarged: a small catalog photo stays as sharp as it is.
    let small = if longest > THUMBNAIL_SIDE {
        let scale = f64::from(THUMBNAIL_SIDE) / f64::from(longest);
        let side = |pixels: u32| ((f64::from(pixels) * scale).round() as u32).max(1);
        image::imageops::resize(&photo, side(width), side(height), FilterType::Triangle)
    } else {
        photo
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, THUMBNAIL_QUALITY)
        .encode_image(&small)
        .context("cannot encode the thumbnail")?;
    write(thumbnail, &jpeg)?;
    Ok(Embedded {
        embedding,
        colour,
        photo_sha256,
    })
}

pub(super) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Moves the staged files into `out`: content-named model and index first, then the
/// thumbnails, then the manifest that switches the widget over; then removes what the
/// previous manifest used.
fn commit(staging: &Path, out: &Path, manifest: &Manifest) -> Result<()> {
    let rename = |from: &Path, to: &Path| {
        fs::rename(from, to).with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
    };
    for file in [&manifest.model.file, &manifest.index.file] {
        rename(&staging.join(file), &out.join(file))?;
    }
    let thumbs = out.join(THUMBS_DIR);
    let old_thumbs = staging.join("previous-thumbs");
    if thumbs.exists() {
        rename(&thumbs, &old_thumbs)?;
    }
    rename(&staging.join(THUMBS_DIR), &thumbs)?;
    rename(&staging.join("manifest.json"), &out.join("manifest.json"))?;

    for stale in fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))? {
        let name = stale?.file_name();
        let name = name.to_string_lossy();
        // `.onnx`: the model file of catalogs built before the widget ran compiled models.
        let ours = (name.starts_with("model-") && (name.ends_with(".nnef.tgz") || name.ends_with(".onnx")))
            || (name.starts_with("index-") && name.ends_with(".otl"));
        if ours && name != manifest.model.file && name != manifest.index.file {
            fs::remove_file(out.join(name.as_ref())).with_context(|| format!("cannot remove the old {name}"))?;
        }
    }
    fs::remove_dir_all(staging).with_context(|| format!("cannot remove {}", staging.display()))
}
