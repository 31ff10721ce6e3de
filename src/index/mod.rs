//! The catalog index: a versioned binary file and top-k search over it.
//!
//! Each product's embedding is L2-normalised and stored as int8 codes plus one f32
//! scale that brings the codes back to unit length, so a search is an integer dot
//! product per product (4x smaller than f32 and fast on wasm SIMD). A search may carry a
//! [`Filter`] (category, colour, brand, price range, in stock), tested before a product's
//! vector is read; "more like this" searches by a product's stored vector.

mod filter;
mod format;
mod manifest;

use self::filter::Columns;
use crate::catalog::Product;

pub use self::filter::{FacetValue, Facets, Filter, PriceRange};
#[cfg(fuzzing)]
pub use self::format::reseal;
pub use self::format::{FORMAT_VERSION, HEADER_LEN, MAGIC};
pub use self::manifest::{FileEntry, Manifest, MANIFEST_FORMAT};

/// Why an index could not be built or read. Messages are meant to be shown as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error(
        "this is not an otlens catalog index (the file does not start with {magic:?})",
        magic = "OTLENSIX"
    )]
    BadMagic,
    #[error("the catalog index has format version {found}, but this version of otlens reads version {supported}; rebuild the index with the same otlens release as the widget")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("the catalog index is incomplete ({found} of {expected} bytes); download or build it again")]
    Truncated { expected: u64, found: u64 },
    #[error("the catalog index is damaged (its checksum does not match); download or build it again")]
    ChecksumMismatch,
    #[error("the catalog index is damaged: {0}")]
    Corrupt(String),
    #[error("the embedding of product {product} has {found} values, but the index has {expected} dimensions")]
    DimsMismatch {
        product: usize,
        expected: usize,
        found: usize,
    },
    #[error("the embedding of product {product} contains a value that is not a finite number")]
    NotFinite { product: usize },
    #[error("there are {products} products but {embeddings} embeddings")]
    CountMismatch { products: usize, embeddings: usize },
    #[error("an index needs at least one product")]
    Empty,
    #[error("the embeddings are empty (0 dimensions)")]
    NoDimensions,
    #[error("the model sha256 must be 64 hex digits, not {0:?}")]
    BadModelHash(String),
}

/// A search result: position of the product in [`Index::products`] and its cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub product: usize,
    pub score: f32,
}

/// Products with their quantised embeddings, searchable by cosine similarity.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    model_sha256: [u8; 32],
    dims: usize,
    products: Vec<Product>,
    /// Per product: multiplying its codes by this gives a unit-length vector.
    scales: Vec<f32>,
    /// `products.len() * dims` codes, one row per product.
    codes: Vec<i8>,
    /// Derived from `products`; not stored in the file.
    columns: Columns,
}

impl Index {
    /// Quantises `embeddings` (one per product, same order) for the model with the given sha256.
    pub fn build(model_sha256_hex: &str, products: Vec<Product>, embeddings: &[Vec<f32>]) -> Result<Index, IndexError> {
        let model_sha256 = parse_sha256(model_sha256_hex)?;
        if products.len() != embeddings.len() {
            return Err(IndexError::CountMismatch {
                products: products.len(),
                embeddings: embeddings.len(),
            });
        }
        let dims = embeddings.first().ok_or(IndexError::Empty)?.len();
        if dims == 0 {
            return Err(IndexError::NoDimensions);
        }
        let mut scales = Vec::with_capacity(embeddings.len());
        let mut codes = Vec::with_capacity(embeddings.len() * dims);
        for (product, embedding) in embeddings.iter().enumerate() {
            if embedding.len() != dims {
                return Err(IndexError::DimsMismatch {
                    product,
                    expected: dims,
                    found: embedding.len(),
                });
            }
            if embedding.iter().any(|value| !value.is_finite()) {
                return Err(IndexError::NotFinite { product });
            }
            scales.push(quantise(embedding, &mut codes));
        }
        Ok(Index::from_parts(model_sha256, dims, products, scales, codes))
    }

    fn from_parts(
        model_sha256: [u8; 32],
        dims: usize,
        products: Vec<Product>,
        scales: Vec<f32>,
        codes: Vec<i8>,
    ) -> Index {
        Index {
            model_sha256,
            dims,
            columns: Columns::new(&products),
            products,
            scales,
            codes,
        }
    }

    /// Lower-case hex sha256 of the model file the embeddings came from.
    pub fn model_sha256(&self) -> String {
        self.model_sha256.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Length of the embeddings.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Always false: an index holds at least one product.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// Position of the product with this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.products.iter().position(|product| product.id == id)
    }

    /// What the catalog can be filtered by, with product counts.
    pub fn facets(&self) -> Facets {
        self.columns.facets(&self.products)
    }

    /// The `k` products passing `filter` that are most similar to `query` (an embedding from
    /// the index's model), best first.
    ///
    /// `k` is clamped to the number of products. A query whose length is not [`Index::dims`]
    /// cannot come from the index's model and finds nothing.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
        if query.len() != self.dims {
            return Vec::new();
        }
        let mut query_codes = Vec::with_capacity(self.dims);
        let query_scale = quantise(query, &mut query_codes);
        self.nearest(&query_codes, query_scale, k, filter, None)
    }

    /// "More like this": the `k` products passing `filter` most similar to the product at
    /// `product` (a position in [`Index::products`]), itself excluded. Uses the stored vector,
    /// so it needs no photo and no model.
    pub fn similar(&self, product: usize, k: usize, filter: &Filter) -> Vec<Hit> {
        if product >= self.len() {
            return Vec::new();
        }
        let codes = &self.codes[product * self.dims..(product + 1) * self.dims];
        self.nearest(codes, self.scales[product], k, filter, Some(product))
    }

    fn nearest(
        &self,
        query_codes: &[i8],
        query_scale: f32,
        k: usize,
        filter: &Filter,
        skip: Option<usize>,
    ) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        let matcher = self.columns.matcher(filter);
        let mut hits: Vec<Hit> = self
            .codes
            .chunks_exact(self.dims)
            .zip(&self.scales)
            .enumerate()
            .filter(|&(product, _)| Some(product) != skip && matcher.as_ref().is_none_or(|m| m.matches(product)))
            .map(|(product, (codes, scale))| Hit {
                product,
                score: dot(query_codes, codes) as f32 * scale * query_scale,
            })
            .collect();
        let best_first = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.product.cmp(&b.product));
        if k < hits.len() {
            hits.select_nth_unstable_by(k - 1, best_first);
            hits.truncate(k);
        }
        hits.sort_unstable_by(best_first);
        hits
    }
}

/// Appends the int8 codes of `vector` to `codes` and returns the scale that makes them unit length.
///
/// Codes use the full -127..=127 range of the vector's largest component; the scale is
/// the inverse norm of the codes themselves, so a quantised vector compared with its own
/// codes scores exactly 1. A zero (or non-finite) vector gets zero codes and scale 0.
fn quantise(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
    let largest = vector.iter().fold(0f32, |largest, value| largest.max(value.abs()));
    if !(largest.is_finite() && largest > 0.0) {
        codes.extend(std::iter::repeat_n(0, vector.len()));
        return 0.0;
    }
    let step = largest / 127.0;
    let start = codes.len();
    // The clamp keeps rounding noise from producing -128, whose square would break symmetry.
    codes.extend(
        vector
            .iter()
            .map(|value| (value / step).round().clamp(-127.0, 127.0) as i8),
    );
    let norm_squared = dot(&codes[start..], &codes[start..]);
    1.0 / (norm_squared as f32).sqrt()
}

/// Integer dot product; written as a plain fold so that LLVM vectorises it (SSE/AVX, wasm SIMD).
fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

fn parse_sha256(hex: &str) -> Result<[u8; 32], IndexError> {
    let bad = || IndexError::BadModelHash(hex.to_owned());
    if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_vector_matches_itself_exactly() {
        let mut codes = Vec::new();
        let scale = quantise(&[0.3, -0.5, 0.1, 0.8], &mut codes);
        assert_eq!(codes[3], 127);
        let norm = codes.iter().map(|&c| (f32::from(c) * scale).powi(2)).sum::<f32>();
        assert!((norm - 1.0).abs() < 1e-6);
    }

    #[test]
    fn zero_vector_gets_zero_scale() {
        let mut codes = Vec::new();
        assert_eq!(quantise(&[0.0; 4], &mut codes), 0.0);
        assert_eq!(codes, [0; 4]);
    }

    #[test]
    fn model_hash_must_be_64_hex_digits() {
        assert!(parse_sha256(&"ab".repeat(32)).is_ok());
        assert!(matches!(parse_sha256("abc"), Err(IndexError::BadModelHash(_))));
        assert!(matches!(
            parse_sha256(&"zz".repeat(32)),
            Err(IndexError::BadModelHash(_))
        ));
        assert!(matches!(
            parse_sha256(&"é".repeat(32)),
            Err(IndexError::BadModelHash(_))
        ));
    }
}
