//! Labelled photo sets for training and evaluation: a CSV with a header row and the
//! columns `path` (relative to the CSV's folder), `item_id` (the product: photos sharing
//! it show the same garment), and optionally `role` (`query` or `gallery`), `category`
//! and `colour`. DeepFashion In-shop's `train.csv` and `val.csv` are in this form.
//! A set without queries (a catalog) can have some held out with [`Dataset::hold_out_queries`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::preprocess::{decode, DecodeLimits};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Query,
    Gallery,
}

#[derive(Clone, Debug)]
pub struct Photo {
    pub path: PathBuf,
    /// Index into [`Dataset::items`].
    pub item: u32,
    pub role: Role,
    pub category: String,
    pub colour: String,
}

impl Photo {
    /// The photo's pixels, decoded within `limits`; errors name the file.
    pub fn decode(&self, limits: &DecodeLimits) -> Result<RgbImage> {
        let bytes = std::fs::read(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        decode(&bytes, limits).with_context(|| format!("{}", self.path.display()))
    }
}

pub struct Dataset {
    pub photos: Vec<Photo>,
    /// The distinct item ids, in order of first appearance.
    pub items: Vec<String>,
    /// sha256 of the CSV file: names the feature cache, so an edited split is re-embedded.
    pub sha256: String,
}

/// Fashion Product Images' `products.csv` names its columns `image`, `product_id`,
/// `articleType` and `baseColour`; it is read as it is.
#[derive(Deserialize)]
struct Row {
    #[serde(alias = "image")]
    path: String,
    #[serde(alias = "product_id")]
    item_id: String,
    #[serde(default)]
    role: String,
    #[serde(default, alias = "articleType")]
    category: String,
    #[serde(default, alias = "color", alias = "baseColour")]
    colour: String,
}

impl Dataset {
    pub fn read(csv_path: &Path) -> Result<Dataset> {
        let bytes = std::fs::read(csv_path).with_context(|| format!("cannot read {}", csv_path.display()))?;
        let root = csv_path.parent().unwrap_or(Path::new("."));
        let mut reader = csv::Reader::from_reader(bytes.as_slice());
        let mut photos = Vec::new();
        let mut items = Vec::new();
        let mut item_of: HashMap<String, u32> = HashMap::new();
        for (i, row) in reader.deserialize::<Row>().enumerate() {
            let line = i + 2;
            let row = row.with_context(|| format!("{} line {line}", csv_path.display()))?;
            let role = match row.role.to_ascii_lowercase().as_str() {
                "query" => Role::Query,
                "gallery" | "" => Role::Gallery,
                other => bail!(
                    "{} line {line}: role {other:?} is neither \"query\" nor \"gallery\"",
                    csv_path.display()
                ),
            };
            if row.item_id.is_empty() || row.path.is_empty() {
                bail!("{} line {line}: path and item_id must not be empty", csv_path.display());
            }
            let next = items.len() as u32;
            let item = *item_of.entry(row.item_id.clone()).or_insert_with(|| {
                items.push(row.item_id);
                next
            });
            photos.push(Photo {
                path: root.join(&row.path),
                item,
                role,
                category: row.category,
                colour: row.colour,
            });
        }
        if photos.is_empty() {
            bail!("{} has no photos", csv_path.display());
        }
        Ok(Dataset {
            photos,
            items,
            sha256: crate::model::sha256_hex(&bytes),
        })
    }

    /// Makes every photo of one product in `every` a query, the product chosen by a hash of
    /// its id so the split is the same on every run. For sets with no `role` column.
    pub fn hold_out_queries(&mut self, every: u32) {
        let held_out: Vec<bool> = self
            .items
            .iter()
            .map(|id| {
                let digest = Sha256::digest(id.as_bytes());
                u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]) % every == 0
            })
            .collect();
        for photo in &mut self.photos {
            if held_out[photo.item as usize] {
                photo.role = Role::Query;
            }
        }
    }

    /// Positions of the photos with `role`.
    pub fn with_role(&self, role: Role) -> Vec<usize> {
        (0..self.photos.len())
            .filter(|&i| self.photos[i].role == role)
            .collect()
    }
}
