//! Model outputs for every photo of a dataset, one "view" at a time, cached on disk.
//!
//! View 0 is the photo as the widget prepares it; views 1.. are augmented
//! ([`super::augment`]); the mirrored view, of gallery photos only, is their mirror image,
//! which a catalog index averages with view 0. The backbone is frozen, so a view's features
//! are computed once: the cache file is named by the model's and the split's sha256 and the
//! view's name.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;

use super::augment::{augmented_view, view_rng};
use super::dataset::{Dataset, Role};
use crate::model::{mean_direction, sha256_hex, Embedder};
use crate::preprocess::{to_mirrored_tensor, to_tensor, DecodeLimits};
use crate::progress::PhotoProgress;

/// Rows of `dims` values, one per photo of the dataset, in its order.
pub struct Features {
    pub values: Vec<f32>,
    pub dims: usize,
}

impl Features {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dims..(i + 1) * self.dims]
    }
}

/// Per-photo rows that can be subset, such as one training split of a view.
pub trait Rows {
    /// The rows at `positions`, in that order.
    fn select(&self, positions: &[usize]) -> Self;
}

impl Rows for Features {
    fn select(&self, positions: &[usize]) -> Features {
        Features {
            values: positions.iter().flat_map(|&i| self.row(i).iter().copied()).collect(),
            dims: self.dims,
        }
    }
}

fn cache_path(cache: &Path, embedder: &Embedder, dataset: &Dataset, view: &str) -> PathBuf {
    let model = &embedder.info().sha256[..16];
    cache.join(format!("{model}-{}-{view}.f32", &dataset.sha256[..16]))
}

/// The first output of `embedder` for view `view` of every photo in `dataset`, from `cache`
/// when it is there.
pub fn extract(embedder: &Embedder, dataset: &Dataset, view: u32, cache: &Path, what: &str) -> Result<Features> {
    let spec = &embedder.info().input;
    let prepare = |i: usize, image: &RgbImage| {
        if view == 0 {
            to_tensor(image, spec)
        } else {
            augmented_view(image, spec, &mut view_rng(i, view))
        }
    };
    let every: Vec<usize> = (0..dataset.photos.len()).collect();
    extract_with(embedder, dataset, &every, &format!("view{view}"), cache, what, prepare)
}

/// Every photo's embedding as the widget and a catalog index hold it, from `cache` when it is
/// there: a query photo's own (view 0), as the widget embeds a shopper's photo once; a gallery
/// photo's averaged with its mirror image's, as [`Embedder::embed_catalog_photo`] stores it.
pub fn extract_as_indexed(embedder: &Embedder, dataset: &Dataset, cache: &Path, what: &str) -> Result<Features> {
    let mut embeddings = extract(embedder, dataset, 0, cache, what)?;
    let spec = &embedder.info().input;
    let prepare = |_, image: &RgbImage| to_mirrored_tensor(image, spec);
    let gallery = dataset.with_role(Role::Gallery);
    // Which photos are the gallery depends on `--queries-every` as well as the split's file.
    let positions: Vec<u8> = gallery.iter().flat_map(|&i| (i as u32).to_le_bytes()).collect();
    let view = format!("gallery{}-mirrored", &sha256_hex(&positions)[..8]);
    let mirrored = extract_with(embedder, dataset, &gallery, &view, cache, what, prepare)?;
    let dims = embeddings.dims;
    for (row, &i) in gallery.iter().enumerate() {
        let stored = mean_direction(embeddings.row(i), mirrored.row(row));
        embeddings.values[i * dims..(i + 1) * dims].copy_from_slice(&stored);
    }
    Ok(embeddings)
}

/// The first output of `embedder` for the photos of `dataset` at `positions`, in that order, as
/// `prepare` (given the photo's position) makes each into an input tensor, cached under the
/// name `view`.
fn extract_with(
    embedder: &Embedder,
    dataset: &Dataset,
    positions: &[usize],
    view: &str,
    cache: &Path,
    what: &str,
    prepare: impl Fn(usize, &RgbImage) -> Vec<f32> + Sync,
) -> Result<Features> {
    let dims = embedder.info().dims;
    let path = cache_path(cache, embedder, dataset, view);
    let expected_len = (positions.len() * dims * 4) as u64;
    if fs::metadata(&path).is_ok_and(|m| m.len() == expected_len) {
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let values = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        return Ok(Features { values, dims });
    }
    let progress = PhotoProgress::new(positions.len(), format!("{what}, {view}"));
    let limits = DecodeLimits::default();
    let rows: Vec<Result<Vec<f32>>> = positions
        .par_iter()
        .map(|&i| {
            let photo = &dataset.photos[i];
            let image = photo.decode(&limits)?;
            let row = embedder
                .embed_tensor(prepare(i, &image))
                .with_context(|| format!("{}", photo.path.display()))?;
            progress.inc();
            Ok(row)
        })
        .collect();
    progress.finish();
    let mut values = Vec::with_capacity(positions.len() * dims);
    for row in rows {
        let row = row?;
        if row.len() != dims {
            bail!("the model gave {} values, expected {dims}", row.len());
        }
        values.extend(row);
    }
    fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let partial = path.with_extension("partial");
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(&partial, bytes).with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Features { values, dims })
}
