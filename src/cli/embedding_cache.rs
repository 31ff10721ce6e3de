//! What `otlens build-index` worked out for each photo before, by the photo's sha256, so a
//! rebuild embeds only the photos that are new or changed.
//!
//! One file per model: `<cache folder>/<first 16 hex digits of the shipped model's sha256>.embeddings`.
//! A missing, damaged or outdated file is only a slower build: it is reported and rebuilt.
//!
//! Layout (little-endian): the magic `OTLEMB\0\0`, u32 [`RECIPE`], u32 dims, u64 count, then
//! `count` records of the photo's sha256 (32 bytes), its [`CompactColour`] (12 u16) and its
//! embedding (`dims` f32), in sha256 order so that equal caches are equal files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::colour::{CompactColour, COMPACT_BINS};

const MAGIC: &[u8; 8] = b"OTLEMB\0\0";
/// Bump when decoding, `Embedder::embed_catalog_photo` or `colour::describe` change what they
/// produce: the model's bytes alone do not say that cached embeddings are stale. 2: embeddings
/// are averaged with the mirror image's.
const RECIPE: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 4 + 8;

/// The photo's embedding and colour, as the index stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached {
    pub embedding: Vec<f32>,
    pub colour: CompactColour,
}

pub struct EmbeddingCache {
    path: PathBuf,
    dims: usize,
    entries: BTreeMap<[u8; 32], Cached>,
    added: usize,
}

impl EmbeddingCache {
    /// The cache of the model whose shipped bytes have `model_sha256` (hex) in `folder`; empty
    /// when there is none yet, or when the file cannot be used (said on stderr).
    pub fn open(folder: &Path, model_sha256: &str, dims: usize) -> EmbeddingCache {
        let path = folder.join(format!("{}.embeddings", &model_sha256[..16]));
        let entries = match fs::read(&path) {
            Ok(bytes) => parse(&bytes, dims).unwrap_or_else(|problem| {
                eprintln!("{}: {problem}; every photo is embedded again", path.display());
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        EmbeddingCache {
            path,
            dims,
            entries,
            added: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, photo_sha256: &[u8; 32]) -> Option<&Cached> {
        self.entries.get(photo_sha256)
    }

    pub fn insert(&mut self, photo_sha256: [u8; 32], cached: Cached) {
        debug_assert_eq!(cached.embedding.len(), self.dims);
        if self.entries.insert(photo_sha256, cached).is_none() {
            self.added += 1;
        }
    }

    /// Writes the cache when something was added, through a temporary file so that an
    /// interrupted write leaves the previous cache.
    pub fn save(&self) -> Result<()> {
        if self.added == 0 {
            return Ok(());
        }
        let folder = self.path.parent().expect("the cache file is in a folder");
        fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
        let record = record_len(self.dims);
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.entries.len() * record);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&RECIPE.to_le_bytes());
        bytes.extend_from_slice(&(self.dims as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (sha256, cached) in &self.entries {
            bytes.extend_from_slice(sha256);
            bytes.extend(cached.colour.0.iter().flat_map(|word| word.to_le_bytes()));
            bytes.extend(cached.embedding.iter().flat_map(|value| value.to_le_bytes()));
        }
        let partial = self.path.with_extension("partial");
        fs::write(&partial, &bytes).with_context(|| format!("cannot write {}", partial.display()))?;
        fs::rename(&partial, &self.path).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

fn record_len(dims: usize) -> usize {
    32 + 2 * COMPACT_BINS + 4 * dims
}

fn parse(bytes: &[u8], dims: usize) -> Result<BTreeMap<[u8; 32], Cached>, String> {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("not an otlens embedding cache".into());
    }
    if word(8) != RECIPE {
        return Err(format!("made by another version of otlens (recipe {})", word(8)));
    }
    if word(12) as usize != dims {
        return Err(format!("holds {}-dimensional embeddings, not {dims}", word(12)));
    }
    let count = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let record = record_len(dims);
    let body = &bytes[HEADER_LEN..];
    if count.checked_mul(record as u64) != Some(body.len() as u64) {
        return Err(format!("is {} bytes, not the size of {count} entries", bytes.len()));
    }
    Ok(body
        .chunks_exact(record)
        .map(|record| {
            let (sha256, rest) = record.split_at(32);
            let (colour, embedding) = rest.split_at(2 * COMPACT_BINS);
            let mut words = [0u16; COMPACT_BINS];
            for (word, pair) in words.iter_mut().zip(colour.chunks_exact(2)) {
                *word = u16::from_le_bytes([pair[0], pair[1]]);
            }
            let embedding = embedding
                .chunks_exact(4)
                .map(|value| f32::from_le_bytes(value.try_into().expect("4 bytes")))
                .collect();
            let sha256: [u8; 32] = sha256.try_into().expect("32 bytes");
            (
                sha256,
                Cached {
                    embedding,
                    colour: CompactColour(words),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "0123456789abcdef0123456789abcdef";

    fn entry(n: u8) -> ([u8; 32], Cached) {
        let mut colour = [0u16; COMPACT_BINS];
        colour[0] = (u16::from(n) << 7) | 100;
        (
            [n; 32],
            Cached {
                embedding: vec![f32::from(n), -0.5, 1e-7],
                colour: CompactColour(colour),
            },
        )
    }

    #[test]
    fn saved_entries_read_back() {
        let folder = tempfile::tempdir().unwrap();
        let mut cache = EmbeddingCache::open(folder.path(), MODEL, 3);
        assert!(cache.get(&[1; 32]).is_none());
        for n in [2, 1] {
            let (sha256, cached) = entry(n);
            cache.insert(sha256, cached);
        }
        cache.save().unwrap();
        assert_eq!(cache.path(), folder.path().join("0123456789abcdef.embeddings"));

        let reopened = EmbeddingCache::open(folder.path(), MODEL, 3);
        for n in [1, 2] {
            assert_eq!(reopened.get(&[n; 32]), Some(&entry(n).1));
        }
        // Nothing new: the file is left as it is.
        std::fs::write(reopened.path(), b"left alone").unwrap();
        reopened.save().unwrap();
        assert_eq!(std::fs::read(reopened.path()).unwrap(), b"left alone");
    }

    #[test]
    fn unusable_files_are_an_empty_cache() {
        let folder = tempfile::tempdir().unwrap();
        let mut cache = EmbeddingCache::open(folder.path(), MODEL, 3);
        let (sha256, cached) = entry(7);
        cache.insert(sha256, cached);
        cache.save().unwrap();
        let good = std::fs::read(cache.path()).unwrap();

        let mut other_recipe = good.clone();
        other_recipe[8] ^= 1;
        for (bytes, problem) in [
            (b"garbage".to_vec(), "not an otlens embedding cache"),
            (other_recipe, "another version of otlens"),
            (good[..good.len() - 1].to_vec(), "not the size of 1 entries"),
        ] {
            assert!(parse(&bytes, 3).unwrap_err().contains(problem), "{problem}");
            std::fs::write(cache.path(), &bytes).unwrap();
            assert!(EmbeddingCache::open(folder.path(), MODEL, 3).get(&sha256).is_none());
        }
        assert!(parse(&good, 4).unwrap_err().contains("3-dimensional"));
        // A count so large that count × record overflows is refused, not allocated.
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge, 3).is_err());
    }
}
