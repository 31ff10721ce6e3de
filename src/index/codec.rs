//! How an index stores its vectors. The codec is chosen when the index is built and
//! recorded in the file; every codec stores unit-length vectors, so scores approximate
//! cosine similarity.
//!
//! | codec | bytes per product | search |
//! |---|---|---|
//! | int8 | dims + 4 | integer dot product with every product |
//! | pq | subspaces (e.g. 32) + shared codebooks | table lookups (asymmetric distance) |
//! | binary | dims / 8 + dims + 4 | Hamming distance picks candidates, int8 rescores them |
//! | refined pq | subspaces + refinement (e.g. 16 + 16) | pq's lookups, then the refinement's for the best 50 |
//!
//! In an index grouped into inverted lists, pq's codes stand for each product's offset from
//! its list's centroid (see [`Run`]): shorter than the vector, so the same bytes keep more of
//! the ranking.
//!
//! Refined pq adds a second set of codes for what the first leaves over (the residual), which a
//! search reads only for its best candidates: a ranged catalog fetches the first codes of every
//! product it scans and the second of a few dozen.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Range;

use half::f16;

use super::{Hit, IndexError};

const INT8_ID: u32 = 1;
pub(super) const PQ_ID: u32 = 2;
const BINARY_ID: u32 = 3;
pub(super) const REFINED_PQ_ID: u32 = 4;

/// Centroids per product-quantisation subspace: one byte per code.
pub const PQ_CENTROIDS: usize = 256;
/// Candidates the binary codec's Hamming pass hands to int8 rescoring, per result asked for.
const RESCORED_PER_RESULT: usize = 30;
/// Lower bound on rescored candidates, so that small `k` still sees enough of the ranking.
const MIN_RESCORED: usize = 300;

/// How an index stores its vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// int8 codes and one f32 scale per product: dims + 4 bytes, cosine to within ~1e-3.
    Int8,
    /// Product quantisation: the vector is cut into `subspaces` equal parts, each stored as
    /// the number of the nearest of 256 centroids trained on the catalog; a query scores a
    /// product with one table lookup per subspace. `subspaces` bytes per product.
    ProductQuantised { subspaces: usize },
    /// Sign bits of the vector minus the catalog mean choose candidates by Hamming
    /// distance; their int8 codes rescore them. Faster than int8 at scale, not smaller.
    Binary,
    /// Product quantisation in `subspaces` bytes, then a second quantiser of the residual in
    /// `refinement` bytes, which only the best candidates of a search are rescored with.
    /// `subspaces + refinement` bytes per product; a ranged catalog fetches the second part for
    /// those candidates only.
    RefinedProductQuantised { subspaces: usize, refinement: usize },
}

impl Codec {
    /// The number the file's header records.
    pub(super) fn id(self) -> u32 {
        match self {
            Codec::Int8 => INT8_ID,
            Codec::ProductQuantised { .. } => PQ_ID,
            Codec::Binary => BINARY_ID,
            Codec::RefinedProductQuantised { .. } => REFINED_PQ_ID,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::Int8 => write!(f, "int8"),
            Codec::ProductQuantised { subspaces } => write!(f, "pq{subspaces}"),
            Codec::Binary => write!(f, "binary"),
            Codec::RefinedProductQuantised { subspaces, refinement } => write!(f, "pq{subspaces}+{refinement}"),
        }
    }
}

/// A run of consecutive products to scan, and the score their list adds to each of them: its
/// centroid's, when the codes stand for each product's offset from it; 0 otherwise.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Run {
    pub(super) products: Range<usize>,
    pub(super) base: f32,
}

impl Run {
    /// Every product of an index whose codes stand for the vectors themselves.
    pub(super) fn all(count: usize) -> Run {
        Run {
            products: 0..count,
            base: 0.0,
        }
    }
}

/// The stored vectors of an index, in one of the [`Codec`]s.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Vectors {
    Int8(Int8Rows),
    ProductQuantised(PqRows),
    Binary { signs: SignRows, rows: Int8Rows },
}

impl Vectors {
    pub(super) fn codec(&self) -> Codec {
        match self {
            Vectors::Int8(_) => Codec::Int8,
            Vectors::ProductQuantised(pq) => match &pq.refinement {
                None => Codec::ProductQuantised {
                    subspaces: pq.subspaces(),
                },
                Some(refinement) => Codec::RefinedProductQuantised {
                    subspaces: pq.subspaces(),
                    refinement: refinement.subspaces(),
                },
            },
            Vectors::Binary { .. } => Codec::Binary,
        }
    }

    /// The best `k` products passing `keep`, for a unit-length `query`, best first. `rank`
    /// turns a product's cosine into its score (e.g. blends in its colour).
    pub(super) fn nearest(
        &self,
        query: &[f32],
        k: usize,
        lists: &mut dyn Iterator<Item = Run>,
        keep: &dyn Fn(usize) -> bool,
        rank: impl Fn(usize, f32) -> f32,
    ) -> Vec<Hit> {
        let mut best = TopK::new(k);
        self.scan(query, k, lists, keep, &mut |product, cosine| {
            best.push(product, rank(product, cosine))
        });
        best.into_best_first()
    }

    /// Calls `visit` with the cosine to a unit-length `query` of every product in `lists`
    /// (runs of products, taken one at a time) passing `keep`; for binary, of the candidates
    /// its sign bits pick there for `k` results. One pass can then feed several rankings.
    /// (`dyn`: one copy of each scan in the widget's module.) Only product-quantised codes
    /// are ever offsets from a centroid, so only their runs have a base.
    pub(super) fn scan(
        &self,
        query: &[f32],
        k: usize,
        lists: &mut dyn Iterator<Item = Run>,
        keep: &dyn Fn(usize) -> bool,
        visit: &mut dyn FnMut(usize, f32),
    ) {
        match self {
            Vectors::Int8(rows) => rows.scan(query, lists, keep, visit),
            Vectors::ProductQuantised(pq) => pq.scan(query, lists, keep, visit),
            Vectors::Binary { signs, rows } => {
                let wanted = (k * RESCORED_PER_RESULT).max(MIN_RESCORED);
                let candidates = signs.nearest(query, wanted, lists, keep);
                rows.rescore(query, candidates.iter().map(|hit| hit.product), visit);
            }
        }
    }

    /// The vector stored for `product`, as the codec reproduces it.
    pub(super) fn reconstruct(&self, product: usize) -> Vec<f32> {
        match self {
            Vectors::Int8(rows) | Vectors::Binary { rows, .. } => rows.reconstruct(product),
            Vectors::ProductQuantised(pq) => pq.reconstruct(product),
        }
    }

    /// What refined pq's second codes add to `product`'s vector (in the embedding's basis); `None`
    /// for other codecs.
    pub(super) fn reconstruct_refinement(&self, product: usize) -> Option<Vec<f32>> {
        match self {
            Vectors::ProductQuantised(pq) => {
                let refinement = pq.refinement.as_ref()?;
                Some(pq.unrotate(&refinement.codebooks.decode(&refinement.codes, product)))
            }
            Vectors::Int8(_) | Vectors::Binary { .. } => None,
        }
    }

    /// What refined pq's second codes add to each product's score for a unit-length `query`;
    /// `None` for other codecs.
    pub(super) fn refinement_scores(&self, query: &[f32]) -> Option<RefinementScores<'_>> {
        match self {
            Vectors::ProductQuantised(pq) => {
                let refinement = pq.refinement.as_ref()?;
                Some(RefinementScores {
                    table: refinement.codebooks.table(&pq.rotate(query)),
                    refinement,
                })
            }
            Vectors::Int8(_) | Vectors::Binary { .. } => None,
        }
    }

    /// The vector stored for `product` in the codec's own basis (pq's rotated one). Dot
    /// products and lengths are those of [`Vectors::reconstruct`]'s vectors, without the cost
    /// of turning each back (1.6M multiplications a product at 1,280 dimensions). While the
    /// builder still holds pq's unquantised vectors, it gives those.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn reconstruct_in_basis(&self, product: usize) -> Vec<f32> {
        match self {
            Vectors::Int8(rows) | Vectors::Binary { rows, .. } => rows.reconstruct(product),
            Vectors::ProductQuantised(pq) if !pq.unquantised.is_empty() => {
                pq.unquantised[product * pq.kept()..(product + 1) * pq.kept()].to_vec()
            }
            Vectors::ProductQuantised(pq) => pq.reconstruct_rotated(product),
        }
    }

    /// The length of [`Vectors::reconstruct_in_basis`]'s vectors.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn basis_dims(&self) -> usize {
        match self {
            Vectors::Int8(rows) | Vectors::Binary { rows, .. } => rows.dims,
            Vectors::ProductQuantised(pq) => pq.kept(),
        }
    }

    /// A vector of the codec's own basis ([`Vectors::reconstruct_in_basis`]) in the embedding's.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn to_embedding_basis(&self, vector: &[f32]) -> Vec<f32> {
        match self {
            Vectors::Int8(_) | Vectors::Binary { .. } => vector.to_vec(),
            Vectors::ProductQuantised(pq) => pq.unrotate(vector),
        }
    }

    /// Bytes of each product's refinement codes (refined pq's second codes; 0 for others).
    pub(super) fn refinement_bytes(&self) -> usize {
        match self {
            Vectors::ProductQuantised(PqRows {
                refinement: Some(refinement),
                ..
            }) => refinement.subspaces(),
            _ => 0,
        }
    }

    /// Bytes each product's row takes in a list's block: all its codes but the refinement's.
    pub(super) fn row_bytes(&self) -> usize {
        match self {
            Vectors::Int8(rows) => rows.row_bytes(),
            Vectors::ProductQuantised(pq) => pq.subspaces(),
            Vectors::Binary { signs, rows } => signs.words_per_row * 8 + rows.row_bytes(),
        }
    }

    /// The vectors section: the codec's parameters, then every product's row, then every
    /// product's refinement codes.
    pub(super) fn write(&self, bytes: &mut Vec<u8>) {
        self.write_parameters(bytes);
        self.write_rows(0..self.len(), bytes);
        self.write_refinements(0..self.len(), bytes);
    }

    /// The refinement codes of the products in `run`, product by product (none but refined pq's).
    pub(super) fn write_refinements(&self, run: Range<usize>, bytes: &mut Vec<u8>) {
        if let Vectors::ProductQuantised(PqRows {
            refinement: Some(refinement),
            ..
        }) = self
        {
            let width = refinement.subspaces();
            bytes.extend_from_slice(&refinement.codes[run.start * width..run.end * width]);
        }
    }

    /// Reads the refinement codes of the products in `run` (as [`Vectors::write_refinements`]
    /// wrote them) into their places.
    pub(super) fn read_refinements(&mut self, run: Range<usize>, reader: &mut Reader) -> Result<(), IndexError> {
        if let Vectors::ProductQuantised(PqRows {
            refinement: Some(refinement),
            ..
        }) = self
        {
            let width = refinement.subspaces();
            let codes = reader.take(run.len() * width, "refinement codes")?;
            refinement.codes[run.start * width..run.end * width].copy_from_slice(codes);
        }
        Ok(())
    }

    /// What all products share: the pq rotation and codebooks, the binary codec's catalog mean.
    pub(super) fn write_parameters(&self, bytes: &mut Vec<u8>) {
        match self {
            Vectors::Int8(_) => {}
            Vectors::ProductQuantised(pq) => pq.write_parameters(bytes),
            Vectors::Binary { signs, .. } => signs.write_parameters(bytes),
        }
    }

    /// The rows of the products in `run`, laid out as the vectors section lays out all of them.
    pub(super) fn write_rows(&self, run: Range<usize>, bytes: &mut Vec<u8>) {
        match self {
            Vectors::Int8(rows) => rows.write_rows(run, bytes),
            Vectors::ProductQuantised(pq) => {
                bytes.extend_from_slice(&pq.codes[run.start * pq.subspaces()..run.end * pq.subspaces()]);
            }
            Vectors::Binary { signs, rows } => {
                for word in &signs.bits[run.start * signs.words_per_row..run.end * signs.words_per_row] {
                    bytes.extend_from_slice(&word.to_le_bytes());
                }
                rows.write_rows(run, bytes);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Vectors::Int8(rows) | Vectors::Binary { rows, .. } => rows.scales.len(),
            Vectors::ProductQuantised(pq) => pq.codes.len() / pq.subspaces(),
        }
    }

    /// Reads the vectors section of a file whose header gave `codec`, `count` and `dims`, and
    /// whose version lays its quantiser out as `layout`.
    pub(super) fn read(
        codec: u32,
        section: &[u8],
        count: usize,
        dims: usize,
        layout: QuantiserLayout,
    ) -> Result<Vectors, IndexError> {
        let mut reader = Reader {
            bytes: section,
            section: "vectors",
        };
        let mut vectors = Vectors::read_parameters(codec, &mut reader, dims, layout)?;
        let expected = count as u64 * (vectors.row_bytes() + vectors.refinement_bytes()) as u64;
        if (reader.bytes.len() as u64) < expected {
            return Err(corrupt(format!(
                "the vectors section is too short for {count} products of {dims} dimensions"
            )));
        }
        vectors.make_room(count);
        vectors.read_rows(0..count, &mut reader)?;
        vectors.read_refinements(0..count, &mut reader)?;
        reader.finish(&format!("{count} products of {dims} dimensions need"))?;
        Ok(vectors)
    }

    /// Reads the codec's parameters (see [`Vectors::write_parameters`]); holds no rows yet.
    pub(super) fn read_parameters(
        codec: u32,
        reader: &mut Reader,
        dims: usize,
        layout: QuantiserLayout,
    ) -> Result<Vectors, IndexError> {
        Ok(match codec {
            INT8_ID => Vectors::Int8(Int8Rows::empty(dims)),
            PQ_ID => Vectors::ProductQuantised(PqRows::read_parameters(reader, dims, layout)?),
            REFINED_PQ_ID => {
                let mut pq = PqRows::read_parameters(reader, dims, layout)?;
                pq.refinement = Some(Refinement::read_parameters(reader, pq.kept())?);
                Vectors::ProductQuantised(pq)
            }
            BINARY_ID => Vectors::Binary {
                signs: SignRows::read_parameters(reader, dims)?,
                rows: Int8Rows::empty(dims),
            },
            _ => return Err(IndexError::UnknownCodec(codec)),
        })
    }

    /// Zero rows for `count` products, to be read in run by run. Zeroed allocations come
    /// straight from fresh memory, so rows never read cost address space, not pages.
    pub(super) fn make_room(&mut self, count: usize) {
        match self {
            Vectors::Int8(rows) => rows.make_room(count),
            Vectors::ProductQuantised(pq) => {
                pq.codes = vec![0; count * pq.subspaces()];
                if let Some(refinement) = &mut pq.refinement {
                    refinement.codes = vec![0; count * refinement.subspaces()];
                }
            }
            Vectors::Binary { signs, rows } => {
                signs.bits = vec![0; count * signs.words_per_row];
                rows.make_room(count);
            }
        }
    }

    /// Reads the rows of the products in `run` (as [`Vectors::write_rows`] wrote them) into
    /// their places.
    pub(super) fn read_rows(&mut self, run: Range<usize>, reader: &mut Reader) -> Result<(), IndexError> {
        match self {
            Vectors::Int8(rows) => rows.read_rows(run, reader),
            Vectors::ProductQuantised(pq) => {
                let width = pq.subspaces();
                let codes = reader.take(run.len() * width, "quantisation codes")?;
                pq.codes[run.start * width..run.end * width].copy_from_slice(codes);
                Ok(())
            }
            Vectors::Binary { signs, rows } => {
                let width = signs.words_per_row;
                let words = reader.take(run.len() * width * 8, "sign bits")?;
                for (word, bytes) in signs.bits[run.start * width..run.end * width]
                    .iter_mut()
                    .zip(words.chunks_exact(8))
                {
                    *word = u64::from_le_bytes(bytes.try_into().expect("chunks of 8 bytes"));
                }
                rows.read_rows(run, reader)
            }
        }
    }

    /// The same vectors with the products in `order` (a permutation of their positions).
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn reorder(&self, order: &[usize]) -> Vectors {
        match self {
            Vectors::Int8(rows) => Vectors::Int8(rows.reorder(order)),
            Vectors::ProductQuantised(pq) => Vectors::ProductQuantised(PqRows {
                rotation: pq.rotation.clone(),
                codebooks: pq.codebooks.clone(),
                codes: reorder_rows(&pq.codes, pq.subspaces(), order),
                refinement: pq.refinement.as_ref().map(|refinement| Refinement {
                    codes: reorder_rows(&refinement.codes, refinement.subspaces(), order),
                    ..refinement.clone()
                }),
                unquantised: reorder_rows(&pq.unquantised, pq.kept(), order),
            }),
            Vectors::Binary { signs, rows } => Vectors::Binary {
                signs: SignRows {
                    bits: reorder_rows(&signs.bits, signs.words_per_row, order),
                    ..signs.clone()
                },
                rows: rows.reorder(order),
            },
        }
    }
}

/// The rows of the products in `run`, each with its product, from `values` stored row by row,
/// `width` values a row.
fn rows_of<T>(values: &[T], width: usize, run: Range<usize>) -> impl Iterator<Item = (usize, &[T])> {
    run.clone()
        .zip(values[run.start * width..run.end * width].chunks_exact(width))
}

/// Rows of `width` values, in `order`.
#[cfg(not(target_arch = "wasm32"))]
fn reorder_rows<T: Copy>(values: &[T], width: usize, order: &[usize]) -> Vec<T> {
    order
        .iter()
        .flat_map(|&row| &values[row * width..(row + 1) * width])
        .copied()
        .collect()
}

/// int8 codes plus, per product, the scale that brings them back to unit length.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Int8Rows {
    dims: usize,
    scales: Vec<f32>,
    codes: Vec<i8>,
}

impl Int8Rows {
    fn row(&self, product: usize) -> &[i8] {
        &self.codes[product * self.dims..(product + 1) * self.dims]
    }

    /// The scan walks each list's rows in order rather than calling [`Int8Rows::rescore`] on
    /// every product: indexing each row cost 10 % more time per query on FPI (8.4 vs 9.4 ms).
    pub(super) fn scan(
        &self,
        query: &[f32],
        lists: &mut dyn Iterator<Item = Run>,
        keep: &dyn Fn(usize) -> bool,
        visit: &mut dyn FnMut(usize, f32),
    ) {
        let mut query_codes = Vec::with_capacity(self.dims);
        let query_scale = quantise(query, &mut query_codes);
        for Run { products, base } in lists {
            for ((product, codes), scale) in
                rows_of(&self.codes, self.dims, products.clone()).zip(&self.scales[products])
            {
                if keep(product) {
                    visit(product, base + dot(&query_codes, codes) as f32 * scale * query_scale);
                }
            }
        }
    }

    /// The int8 cosines of `candidates`.
    fn rescore(&self, query: &[f32], candidates: impl Iterator<Item = usize>, visit: &mut dyn FnMut(usize, f32)) {
        let mut query_codes = Vec::with_capacity(self.dims);
        let query_scale = quantise(query, &mut query_codes);
        for product in candidates {
            visit(
                product,
                dot(&query_codes, self.row(product)) as f32 * self.scales[product] * query_scale,
            );
        }
    }

    pub(super) fn reconstruct(&self, product: usize) -> Vec<f32> {
        let scale = self.scales[product];
        self.row(product).iter().map(|&code| f32::from(code) * scale).collect()
    }

    /// The dot product of the f32 `vector` with the row of `product` as it reconstructs: the
    /// query is not rounded to int8 as a scan rounds it.
    pub(super) fn dot_exact(&self, product: usize, vector: &[f32]) -> f32 {
        let sum: f32 = self
            .row(product)
            .iter()
            .zip(vector)
            .map(|(&code, value)| f32::from(code) * value)
            .sum();
        sum * self.scales[product]
    }

    fn empty(dims: usize) -> Int8Rows {
        Int8Rows {
            dims,
            scales: Vec::new(),
            codes: Vec::new(),
        }
    }

    fn row_bytes(&self) -> usize {
        4 + self.dims
    }

    fn make_room(&mut self, count: usize) {
        self.scales = vec![0.0; count];
        self.codes = vec![0; count * self.dims];
    }

    pub(super) fn write(&self, bytes: &mut Vec<u8>) {
        self.write_rows(0..self.scales.len(), bytes);
    }

    /// The scales of the products in `run`, then their codes.
    fn write_rows(&self, run: Range<usize>, bytes: &mut Vec<u8>) {
        for scale in &self.scales[run.clone()] {
            bytes.extend_from_slice(&scale.to_le_bytes());
        }
        bytes.extend(
            self.codes[run.start * self.dims..run.end * self.dims]
                .iter()
                .map(|&code| code as u8),
        );
    }

    fn read_rows(&mut self, run: Range<usize>, reader: &mut Reader) -> Result<(), IndexError> {
        let scales = reader.f32s(run.len(), "int8 scales")?;
        if let Some(position) = scales.iter().position(|scale| !(scale.is_finite() && *scale >= 0.0)) {
            return Err(corrupt(format!(
                "product {} has an invalid scale",
                run.start + position
            )));
        }
        self.scales[run.clone()].copy_from_slice(&scales);
        let codes = reader.take(run.len() * self.dims, "int8 codes")?;
        for (code, &byte) in self.codes[run.start * self.dims..run.end * self.dims]
            .iter_mut()
            .zip(codes)
        {
            *code = byte as i8;
        }
        Ok(())
    }

    /// Reads `count` rows of `dims` codes, checking that the section holds them before
    /// making room for them.
    pub(super) fn read(reader: &mut Reader, count: usize, dims: usize) -> Result<Int8Rows, IndexError> {
        let mut rows = Int8Rows::empty(dims);
        if (reader.bytes.len() as u64) < count as u64 * rows.row_bytes() as u64 {
            return Err(corrupt(format!(
                "the {} section is too short for its rows",
                reader.section
            )));
        }
        rows.make_room(count);
        rows.read_rows(0..count, reader)?;
        Ok(rows)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn reorder(&self, order: &[usize]) -> Int8Rows {
        Int8Rows {
            dims: self.dims,
            scales: order.iter().map(|&row| self.scales[row]).collect(),
            codes: reorder_rows(&self.codes, self.dims, order),
        }
    }
}

/// How a file stores its product quantiser's rotation and codebooks: as f32 up to format
/// version 5, as f16 since, which halves the largest part of a pq head (6.5 MB of rotation at
/// 1,280 dimensions) for a change below the quantisation's own error; and since version 8,
/// with the number of principal dimensions kept, the rotation only that many rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QuantiserLayout {
    SquareF32,
    SquareF16,
    Projected,
}

/// Product-quantisation codes: one centroid number per subspace and product, of the vector
/// projected on the catalog's principal axes, which the rotation deals out so as to spread
/// the variance evenly over the subspaces. The rotation and codebooks hold f16 values (as
/// f32), as the file stores them.
#[derive(Clone, Debug)]
pub(super) struct PqRows {
    /// `kept x dims` (`kept` = the codebooks' dimensions), row-major with orthonormal rows, so
    /// it keeps dot products within the principal axes it keeps.
    rotation: Vec<f32>,
    codebooks: Codebooks,
    /// `subspaces` codes per product, row by row.
    codes: Vec<u8>,
    /// Refined pq's second quantiser, of what `codes` leave over.
    refinement: Option<Refinement>,
    /// What the codes stand for, unquantised: `kept` rotated values per product. The builder
    /// keeps them until it groups the products into lists, and then encodes each product
    /// again as its offset from its list's centroid. Empty in an index read from a file.
    #[cfg(not(target_arch = "wasm32"))]
    unquantised: Vec<f32>,
}

/// Equal when the file would hold the same: what the builder keeps aside does not count.
impl PartialEq for PqRows {
    fn eq(&self, other: &PqRows) -> bool {
        (&self.rotation, &self.codebooks, &self.codes, &self.refinement)
            == (&other.rotation, &other.codebooks, &other.codes, &other.refinement)
    }
}

impl PqRows {
    /// The principal dimensions the codes keep.
    fn kept(&self) -> usize {
        self.codebooks.dims()
    }

    /// Codes (bytes) per product.
    fn subspaces(&self) -> usize {
        self.codebooks.subspaces
    }

    /// The embedding's dimensions: the rotation's row length.
    fn embedding_dims(&self) -> usize {
        self.rotation.len() / self.kept()
    }

    fn rotate(&self, vector: &[f32]) -> Vec<f32> {
        self.rotation
            .chunks_exact(vector.len())
            .map(|row| dot_f32(row, vector))
            .collect()
    }

    fn scan(
        &self,
        query: &[f32],
        lists: &mut dyn Iterator<Item = Run>,
        keep: &dyn Fn(usize) -> bool,
        visit: &mut dyn FnMut(usize, f32),
    ) {
        let table = self.codebooks.table(&self.rotate(query));
        for Run { products, base } in lists {
            for (product, codes) in rows_of(&self.codes, self.subspaces(), products) {
                if keep(product) {
                    visit(product, base + Codebooks::score(codes, &table));
                }
            }
        }
    }

    fn reconstruct(&self, product: usize) -> Vec<f32> {
        self.unrotate(&self.reconstruct_rotated(product))
    }

    /// The product's vector as its codes stand for it, still turned by the rotation.
    fn reconstruct_rotated(&self, product: usize) -> Vec<f32> {
        self.codebooks.decode(&self.codes, product)
    }

    /// `rotated` turned back into the embedding's dimensions: the inverse of orthonormal
    /// rows is their transpose.
    fn unrotate(&self, rotated: &[f32]) -> Vec<f32> {
        let dims = self.embedding_dims();
        let mut vector = vec![0f32; dims];
        for (row, &value) in self.rotation.chunks_exact(dims).zip(rotated) {
            vector.iter_mut().zip(row).for_each(|(out, r)| *out += r * value);
        }
        vector
    }

    fn write_parameters(&self, bytes: &mut Vec<u8>) {
        for field in [self.subspaces(), self.kept()] {
            bytes.extend_from_slice(&(field as u32).to_le_bytes());
        }
        for &value in self.rotation.iter().chain(&self.codebooks.centroids) {
            bytes.extend_from_slice(&f16::from_f32(value).to_le_bytes());
        }
        if let Some(refinement) = &self.refinement {
            bytes.extend_from_slice(&(refinement.codebooks.subspaces as u32).to_le_bytes());
            for &value in &refinement.codebooks.centroids {
                bytes.extend_from_slice(&f16::from_f32(value).to_le_bytes());
            }
        }
    }

    fn read_parameters(reader: &mut Reader, dims: usize, layout: QuantiserLayout) -> Result<PqRows, IndexError> {
        let subspaces = reader.u32("the subspace count")? as usize;
        let kept = match layout {
            QuantiserLayout::Projected => reader.u32("the dimensions kept")? as usize,
            QuantiserLayout::SquareF32 | QuantiserLayout::SquareF16 => dims,
        };
        if subspaces == 0 || kept < subspaces || kept > dims || !kept.is_multiple_of(subspaces) {
            return Err(corrupt(format!(
                "{subspaces} quantisation subspaces do not divide {kept} of {dims} dimensions"
            )));
        }
        let mut floats = |count: usize, what| match layout {
            QuantiserLayout::SquareF32 => reader.f32s(count, what),
            QuantiserLayout::SquareF16 | QuantiserLayout::Projected => reader.f16s(count, what),
        };
        let rotation = floats(kept.saturating_mul(dims), "rotation")?;
        let codebooks = floats(kept.saturating_mul(PQ_CENTROIDS), "codebooks")?;
        if rotation.iter().chain(&codebooks).any(|value| !value.is_finite()) {
            return Err(corrupt(
                "the quantiser holds a value that is not a finite number".into(),
            ));
        }
        Ok(PqRows {
            rotation,
            codebooks: Codebooks {
                subspaces,
                sub_dims: kept / subspaces,
                centroids: codebooks,
            },
            codes: Vec::new(),
            refinement: None,
            #[cfg(not(target_arch = "wasm32"))]
            unquantised: Vec::new(),
        })
    }
}

/// One codebook of 256 centroids for each of `subspaces` equal parts (`sub_dims` long) of a
/// rotated vector, whose codes name one centroid per part; f16 values (as f32), as the file
/// stores them. Pq's codes and refined pq's second codes each have their own.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Codebooks {
    subspaces: usize,
    sub_dims: usize,
    /// `subspaces * PQ_CENTROIDS` centroids of `sub_dims` values, subspace by subspace.
    centroids: Vec<f32>,
}

impl Codebooks {
    /// The dimensions the codebooks cover.
    fn dims(&self) -> usize {
        self.subspaces * self.sub_dims
    }

    fn centroid(&self, subspace: usize, code: u8) -> &[f32] {
        let at = (subspace * PQ_CENTROIDS + code as usize) * self.sub_dims;
        &self.centroids[at..at + self.sub_dims]
    }

    /// The rotated `query`'s dot product with every centroid, so that a product's score costs
    /// one lookup per subspace ([`Codebooks::score`]).
    fn table(&self, query: &[f32]) -> Vec<f32> {
        (0..self.subspaces)
            .flat_map(|subspace| {
                let part = &query[subspace * self.sub_dims..(subspace + 1) * self.sub_dims];
                (0..PQ_CENTROIDS).map(move |code| dot_f32(part, self.centroid(subspace, code as u8)))
            })
            .collect()
    }

    /// The dot product of a product's `codes` (one row) with the query of `table`.
    fn score(codes: &[u8], table: &[f32]) -> f32 {
        codes
            .iter()
            .zip(table.chunks_exact(PQ_CENTROIDS))
            .map(|(&code, row)| row[code as usize])
            .sum()
    }

    /// What `product`'s row of `codes` stands for, in the rotated basis.
    fn decode(&self, codes: &[u8], product: usize) -> Vec<f32> {
        codes[product * self.subspaces..(product + 1) * self.subspaces]
            .iter()
            .enumerate()
            .flat_map(|(subspace, &code)| self.centroid(subspace, code).iter().copied())
            .collect()
    }
}

/// Refined pq's second quantiser: codes of what the first codes leave of each product's
/// rotated vector, cut into its own subspaces.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Refinement {
    codebooks: Codebooks,
    /// `subspaces` codes per product, row by row.
    codes: Vec<u8>,
}

impl Refinement {
    /// Codes (bytes) per product.
    fn subspaces(&self) -> usize {
        self.codebooks.subspaces
    }

    /// u32 subspaces, then the codebooks as f16, for a quantiser keeping `kept` dimensions.
    fn read_parameters(reader: &mut Reader, kept: usize) -> Result<Refinement, IndexError> {
        let subspaces = reader.u32("the refinement's subspace count")? as usize;
        if subspaces == 0 || subspaces > kept || !kept.is_multiple_of(subspaces) {
            return Err(corrupt(format!(
                "{subspaces} refinement subspaces do not divide the {kept} dimensions quantised"
            )));
        }
        let centroids = reader.f16s(kept.saturating_mul(PQ_CENTROIDS), "refinement codebooks")?;
        if centroids.iter().any(|value| !value.is_finite()) {
            return Err(corrupt(
                "the refinement holds a value that is not a finite number".into(),
            ));
        }
        Ok(Refinement {
            codebooks: Codebooks {
                subspaces,
                sub_dims: kept / subspaces,
                centroids,
            },
            codes: Vec::new(),
        })
    }
}

/// What refined pq's second codes add to each product's score for one query.
pub(super) struct RefinementScores<'a> {
    refinement: &'a Refinement,
    table: Vec<f32>,
}

impl RefinementScores<'_> {
    pub(super) fn of(&self, product: usize) -> f32 {
        let width = self.refinement.subspaces();
        Codebooks::score(
            &self.refinement.codes[product * width..(product + 1) * width],
            &self.table,
        )
    }
}

/// One bit per dimension: whether the product's vector lies above the catalog mean there.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SignRows {
    centre: Vec<f32>,
    words_per_row: usize,
    bits: Vec<u64>,
}

impl SignRows {
    fn signs(centre: &[f32], vector: &[f32], bits: &mut Vec<u64>) {
        for (values, centres) in vector.chunks(64).zip(centre.chunks(64)) {
            let word = values
                .iter()
                .zip(centres)
                .enumerate()
                .filter(|(_, (value, centre))| value > centre)
                .fold(0u64, |word, (bit, _)| word | 1 << bit);
            bits.push(word);
        }
    }

    /// Candidates ranked by how many signs they share with the query (score = -Hamming distance).
    fn nearest(
        &self,
        query: &[f32],
        k: usize,
        lists: &mut dyn Iterator<Item = Run>,
        keep: &dyn Fn(usize) -> bool,
    ) -> Vec<Hit> {
        let mut query_bits = Vec::with_capacity(self.words_per_row);
        SignRows::signs(&self.centre, query, &mut query_bits);
        let mut best = TopK::new(k);
        for run in lists {
            debug_assert_eq!(run.base, 0.0, "binary codes are never offsets from a centroid");
            for (product, words) in rows_of(&self.bits, self.words_per_row, run.products) {
                if keep(product) {
                    let distance: u32 = words.iter().zip(&query_bits).map(|(a, b)| (a ^ b).count_ones()).sum();
                    best.push(product, -(distance as f32));
                }
            }
        }
        best.into_best_first()
    }

    fn write_parameters(&self, bytes: &mut Vec<u8>) {
        for value in &self.centre {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }

    fn read_parameters(reader: &mut Reader, dims: usize) -> Result<SignRows, IndexError> {
        let centre = reader.f32s(dims, "the catalog mean")?;
        if centre.iter().any(|value| !value.is_finite()) {
            return Err(corrupt(
                "the catalog mean holds a value that is not a finite number".into(),
            ));
        }
        Ok(SignRows {
            centre,
            words_per_row: dims.div_ceil(64),
            bits: Vec::new(),
        })
    }
}

/// Encoding, done by the companion binary when it builds an index.
#[cfg(not(target_arch = "wasm32"))]
pub(super) mod encode {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rayon::prelude::*;

    use super::*;

    /// Vectors sampled to train the quantiser's codebooks: enough for 256 centroids per
    /// subspace, few enough to train a 44k catalog in seconds.
    const PQ_TRAINING_SAMPLE: usize = 20_000;
    /// Products rotated in one pass over the pq rotation: 16 vectors of 1,280 floats (80 KB)
    /// stay in cache while its rows stream past.
    const ROTATED_TOGETHER: usize = 16;
    const K_MEANS_ITERATIONS: usize = 12;

    /// The principal dimensions a product quantiser keeps, at most. On Fashion Product Images'
    /// 1,280-dimension embeddings, quantising the first 256 found as much of the exact top 10
    /// as quantising all (pq64: 0.694 against 0.684; pq32: 0.533 against 0.535): the
    /// quantisation's own error outweighs what the other axes hold. It makes a pq head 3 MB
    /// smaller and rotating a query 5x cheaper.
    const PQ_KEPT_DIMS: usize = 256;

    /// The principal dimensions a quantiser of `subspaces` keeps of `dims`: [`PQ_KEPT_DIMS`] (or
    /// `subspaces`, if more) at most, all if fewer, rounded down to a multiple of `subspaces`.
    /// `None` when there are fewer dimensions than subspaces.
    fn pq_kept_dims(dims: usize, subspaces: usize) -> Option<usize> {
        let kept = dims.min(PQ_KEPT_DIMS.max(subspaces));
        (subspaces > 0 && subspaces <= kept).then(|| kept - kept % subspaces)
    }

    impl Vectors {
        /// Encodes unit-length `vectors` (one per product, each `dims` long) with `codec`.
        pub(in crate::index) fn encode(codec: Codec, vectors: &[Vec<f32>], dims: usize) -> Result<Vectors, IndexError> {
            Ok(match codec {
                Codec::Int8 => Vectors::Int8(Int8Rows::encode(vectors, dims)),
                Codec::ProductQuantised { subspaces } => {
                    let kept = pq_kept_dims(dims, subspaces).ok_or(IndexError::BadSubspaces { subspaces, dims })?;
                    Vectors::ProductQuantised(PqRows::encode(vectors, dims, (subspaces, 0), kept))
                }
                Codec::RefinedProductQuantised { subspaces, refinement } => {
                    let kept = pq_kept_dims(dims, subspaces).ok_or(IndexError::BadSubspaces { subspaces, dims })?;
                    if refinement == 0 || !kept.is_multiple_of(refinement) {
                        return Err(IndexError::BadRefinement { refinement, kept });
                    }
                    Vectors::ProductQuantised(PqRows::encode(vectors, dims, (subspaces, refinement), kept))
                }
                Codec::Binary => Vectors::Binary {
                    signs: SignRows::encode(vectors, dims),
                    rows: Int8Rows::encode(vectors, dims),
                },
            })
        }

        /// Encodes each product again as its offset from its list's centroid
        /// (`centroids[lists[product]]`, in the embedding's basis), if the vectors are
        /// product-quantised and still hold what their codes stand for; says whether it did.
        /// An index read from a file holds only the codes, and int8 keeps the ranking as it is.
        pub(in crate::index) fn make_relative(&mut self, centroids: &[Vec<f32>], lists: &[usize]) -> bool {
            match self {
                Vectors::ProductQuantised(pq) => pq.make_relative(centroids, lists),
                Vectors::Int8(_) | Vectors::Binary { .. } => false,
            }
        }
    }

    impl Int8Rows {
        pub(in crate::index) fn encode(vectors: &[Vec<f32>], dims: usize) -> Int8Rows {
            let mut codes = Vec::with_capacity(vectors.len() * dims);
            let scales = vectors.iter().map(|vector| quantise(vector, &mut codes)).collect();
            Int8Rows { dims, scales, codes }
        }
    }

    impl SignRows {
        fn encode(vectors: &[Vec<f32>], dims: usize) -> SignRows {
            let mut centre = vec![0f32; dims];
            for vector in vectors {
                centre.iter_mut().zip(vector).for_each(|(sum, value)| *sum += value);
            }
            centre.iter_mut().for_each(|sum| *sum /= vectors.len() as f32);
            let words_per_row = dims.div_ceil(64);
            let mut bits = Vec::with_capacity(vectors.len() * words_per_row);
            for vector in vectors {
                SignRows::signs(&centre, vector, &mut bits);
            }
            SignRows {
                centre,
                words_per_row,
                bits,
            }
        }
    }

    impl PqRows {
        /// `(subspaces, refinement)`: the bytes of the codes and of the refinement's (0: none).
        fn encode(vectors: &[Vec<f32>], dims: usize, (subspaces, refinement): (usize, usize), kept: usize) -> PqRows {
            let sample = evenly_spaced(vectors);
            let rotation = to_f16_precision(balanced_rotation(&sample, dims, subspaces, kept));
            let unquantised = rotated(&rotation, dims, vectors);
            let mut pq = PqRows::quantising((subspaces, refinement), rotation, dims, &unquantised);
            pq.unquantised = unquantised;
            pq
        }

        /// Codebooks trained on `unquantised` (`kept` values per product, in the basis of the
        /// `kept x dims` `rotation`), and each product's codes; with a `refinement` (its
        /// subspaces, 0 for none), a second quantiser of what the codes leave over.
        fn quantising(
            (subspaces, refinement): (usize, usize),
            rotation: Vec<f32>,
            dims: usize,
            unquantised: &[f32],
        ) -> PqRows {
            let kept = rotation.len() / dims;
            let rows: Vec<&[f32]> = unquantised.chunks_exact(kept).collect();
            let (codebooks, codes) = Codebooks::trained(&rows, kept, subspaces);
            let mut pq = PqRows {
                rotation,
                codebooks,
                codes,
                refinement: None,
                unquantised: Vec::new(),
            };
            if refinement > 0 {
                let residuals: Vec<f32> = rows
                    .par_iter()
                    .enumerate()
                    .flat_map_iter(|(product, row)| {
                        let coded = pq.reconstruct_rotated(product);
                        row.iter()
                            .zip(coded)
                            .map(|(value, coded)| value - coded)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let residual_rows: Vec<&[f32]> = residuals.chunks_exact(kept).collect();
                let (codebooks, codes) = Codebooks::trained(&residual_rows, kept, refinement);
                pq.refinement = Some(Refinement { codebooks, codes });
            }
            pq
        }

        /// Encodes the products again, each as its offset from its list's centroid
        /// (`centroids[lists[product]]`, in the embedding's basis), under a rotation and
        /// codebooks trained on the offsets; not without the unquantised vectors. An offset is
        /// shorter than the vector, so the same codes keep more of the ranking.
        fn make_relative(&mut self, centroids: &[Vec<f32>], lists: &[usize]) -> bool {
            if self.unquantised.is_empty() {
                return false;
            }
            let kept = self.kept();
            let centres: Vec<Vec<f32>> = centroids.iter().map(|centroid| self.rotate(centroid)).collect();
            let mut offsets = std::mem::take(&mut self.unquantised);
            offsets.par_chunks_exact_mut(kept).zip(lists).for_each(|(row, &list)| {
                row.iter_mut()
                    .zip(&centres[list])
                    .for_each(|(value, centre)| *value -= centre);
            });
            let rows: Vec<&[f32]> = offsets.chunks_exact(kept).collect();
            // The offsets' own principal axes within the kept ones, dealt out to the subspaces
            // anew: the offsets spread their variance unlike the vectors.
            let turn = balanced_rotation(&evenly_spaced(&rows), kept, self.subspaces(), kept);
            let dims = self.embedding_dims();
            let rotation = self.rotation.chunks_exact(dims).collect::<Vec<_>>();
            let turned_rotation: Vec<f32> = turn
                .chunks_exact(kept)
                .flat_map(|weights| {
                    let mut row = vec![0f32; dims];
                    for (&weight, axis) in weights.iter().zip(&rotation) {
                        row.iter_mut()
                            .zip(*axis)
                            .for_each(|(out, value)| *out += weight * value);
                    }
                    row
                })
                .collect();
            let turned = rotated(&turn, kept, &rows);
            drop(rows);
            drop(offsets);
            let refinement = self.refinement.as_ref().map_or(0, Refinement::subspaces);
            *self = PqRows::quantising(
                (self.subspaces(), refinement),
                to_f16_precision(turned_rotation),
                dims,
                &turned,
            );
            true
        }
    }

    impl Codebooks {
        /// Codebooks of 256 centroids for each of `subspaces` equal parts of `rows` (`kept`
        /// values each), trained on a sample, and every row's codes against them as the file
        /// holds them (f16).
        fn trained(rows: &[&[f32]], kept: usize, subspaces: usize) -> (Codebooks, Vec<u8>) {
            let sample = evenly_spaced(rows);
            let sub_dims = kept / subspaces;
            let centroids: Vec<f32> = (0..subspaces)
                .into_par_iter()
                .flat_map_iter(|subspace| {
                    let parts: Vec<&[f32]> = sample
                        .iter()
                        .map(|vector| &vector[subspace * sub_dims..(subspace + 1) * sub_dims])
                        .collect();
                    k_means(&parts, sub_dims, PQ_CENTROIDS, false)
                })
                .collect();
            let codebooks = Codebooks {
                subspaces,
                sub_dims,
                centroids: to_f16_precision(centroids),
            };
            let codes = rows
                .par_iter()
                .flat_map_iter(|row| {
                    let codebooks = &codebooks;
                    (0..subspaces).map(move |subspace| {
                        codebooks.closest(subspace, &row[subspace * sub_dims..(subspace + 1) * sub_dims]) as u8
                    })
                })
                .collect();
            (codebooks, codes)
        }

        /// The code of the centroid of `subspace` nearest to `part`.
        fn closest(&self, subspace: usize, part: &[f32]) -> usize {
            let start = subspace * PQ_CENTROIDS * self.sub_dims;
            let codebook = &self.centroids[start..start + PQ_CENTROIDS * self.sub_dims];
            closest(codebook.chunks_exact(self.sub_dims), part)
        }
    }

    /// At most [`PQ_TRAINING_SAMPLE`] of `rows`, at an even stride over the catalog:
    /// deterministic, and covers every part of it.
    fn evenly_spaced<T: AsRef<[f32]>>(rows: &[T]) -> Vec<&[f32]> {
        let stride = rows.len().div_ceil(PQ_TRAINING_SAMPLE).max(1);
        rows.iter().step_by(stride).map(AsRef::as_ref).collect()
    }

    /// Each of `vectors` (`dims` long) turned by the row-major `matrix`, one after another.
    /// Each row of the matrix (1.3 MB in all at 256 x 1,280) is read once for a block of
    /// vectors rather than once a vector, so that encoding a large catalog is not held up by
    /// memory.
    fn rotated<T: AsRef<[f32]> + Sync>(matrix: &[f32], dims: usize, vectors: &[T]) -> Vec<f32> {
        let rows = matrix.len() / dims;
        // Written in place: a million products' 1 GB collected from parallel parts took twice that.
        let mut turned = vec![0f32; vectors.len() * rows];
        turned
            .par_chunks_mut(ROTATED_TOGETHER * rows)
            .zip(vectors.par_chunks(ROTATED_TOGETHER))
            .for_each(|(turned, block)| {
                for (axis, row) in matrix.chunks_exact(dims).enumerate() {
                    for (vector, out) in block.iter().zip(turned.chunks_exact_mut(rows)) {
                        out[axis] = dot_in_lanes(row, vector.as_ref());
                    }
                }
            });
        turned
    }

    /// `values` rounded to the nearest f16, as the file stores them.
    fn to_f16_precision(values: Vec<f32>) -> Vec<f32> {
        values.into_iter().map(|value| f16::from_f32(value).to_f32()).collect()
    }

    /// Position of the centroid nearest to `point` (squared Euclidean distance).
    pub(in crate::index) fn closest<'a>(centroids: impl Iterator<Item = &'a [f32]>, point: &[f32]) -> usize {
        centroids
            .map(|centroid| squared_distance(centroid, point))
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(0, |(position, _)| position)
    }

    /// The sample's `kept` principal axes, dealt out to the subspaces so that each gets a
    /// similar product of variances ("eigenvalue allocation", Ge et al., Optimized Product
    /// Quantization, 2013): without it the first subspaces hold most of the variance and
    /// their 256 centroids cannot cover it.
    fn balanced_rotation(sample: &[&[f32]], dims: usize, subspaces: usize, kept: usize) -> Vec<f32> {
        let count = sample.len() as f64;
        let mut mean = vec![0f64; dims];
        for vector in sample {
            mean.iter_mut()
                .zip(vector.iter())
                .for_each(|(m, &v)| *m += f64::from(v) / count);
        }
        let centred =
            nalgebra::DMatrix::from_fn(sample.len(), dims, |row, col| f64::from(sample[row][col]) - mean[col]);
        let covariance = centred.tr_mul(&centred) / count;
        let eigen = covariance.symmetric_eigen();
        let mut axes: Vec<usize> = (0..dims).collect();
        axes.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        // Logs of variances relative to a floor, so that all are positive and an empty
        // subspace is always the least loaded.
        let floor = eigen.eigenvalues[axes[0]].max(f64::MIN_POSITIVE) * 1e-9;
        axes.truncate(kept);
        let sub_dims = kept / subspaces;
        let mut buckets: Vec<(f64, Vec<usize>)> = vec![(0.0, Vec::with_capacity(sub_dims)); subspaces];
        for axis in axes {
            let log_variance = (eigen.eigenvalues[axis].max(floor) / floor).ln();
            let (score, members) = buckets
                .iter_mut()
                .filter(|(_, members)| members.len() < sub_dims)
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .expect("the buckets hold exactly dims axes");
            *score += log_variance;
            members.push(axis);
        }
        buckets
            .iter()
            .flat_map(|(_, members)| members)
            .flat_map(|&axis| {
                eigen
                    .eigenvectors
                    .column(axis)
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `a . b`, vectorised. Native only: the widget's module is built for size, and there the
    /// lanes made a 100k-product search slower (6.6-7.1 against 3.6-5.3 ms) than [`dot_f32`].
    pub(in crate::index) fn dot_in_lanes(a: &[f32], b: &[f32]) -> f32 {
        sum_in_lanes(a, b, |x, y| x * y)
    }

    fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
        sum_in_lanes(a, b, |x, y| (x - y) * (x - y))
    }

    /// `term` of each pair of elements, summed in eight running sums so that the compiler can
    /// vectorise a float sum it may not reorder.
    fn sum_in_lanes(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
        let mut lanes = [0f32; 8];
        let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = a_chunks
            .remainder()
            .iter()
            .zip(b_chunks.remainder())
            .map(|(&x, &y)| term(x, y))
            .sum();
        for (x, y) in a_chunks.zip(b_chunks) {
            for lane in 0..8 {
                lanes[lane] += term(x[lane], y[lane]);
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    /// Lloyd's k-means with `count` centroids, started from distinct points of the sample
    /// picked at random (seeded: a rebuild gives the same index; evenly spaced points could
    /// all fall in a few groups of a catalog listed in a repeating order). A sample smaller
    /// than `count` repeats its points; a centroid left without points keeps its place.
    /// `spherical` keeps the centroids unit length, for unit-length points compared by cosine.
    pub(in crate::index) fn k_means(points: &[&[f32]], dims: usize, count: usize, spherical: bool) -> Vec<f32> {
        let starts = rand::seq::index::sample(&mut StdRng::seed_from_u64(1), points.len(), count.min(points.len()));
        let mut centroids: Vec<f32> = (0..count)
            .flat_map(|i| points[starts.index(i % starts.len())].iter().copied())
            .collect();
        for _ in 0..K_MEANS_ITERATIONS {
            let nearest: Vec<usize> = points
                .par_iter()
                .map(|point| closest(centroids.chunks_exact(dims), point))
                .collect();
            let mut sums = vec![0f32; count * dims];
            let mut counts = vec![0usize; count];
            for (point, &nearest) in points.iter().zip(&nearest) {
                counts[nearest] += 1;
                sums[nearest * dims..(nearest + 1) * dims]
                    .iter_mut()
                    .zip(point.iter())
                    .for_each(|(sum, value)| *sum += value);
            }
            for ((centroid, sum), &count) in centroids
                .chunks_exact_mut(dims)
                .zip(sums.chunks_exact(dims))
                .zip(&counts)
            {
                if count > 0 {
                    let scale = if spherical {
                        1.0 / dot_f32(sum, sum).sqrt().max(f32::MIN_POSITIVE)
                    } else {
                        1.0 / count as f32
                    };
                    centroid.iter_mut().zip(sum).for_each(|(c, s)| *c = s * scale);
                }
            }
        }
        centroids
    }
}

/// Keeps the best `k` hits pushed into it: O(k) memory however many products are scanned.
pub(super) struct TopK {
    k: usize,
    heap: BinaryHeap<Ranked>,
}

/// A hit ordered so that a better hit is smaller: the heap's top is the worst one kept.
/// Ties go to the earlier product, so results do not depend on the scan order.
struct Ranked(Hit);

impl Ord for Ranked {
    fn cmp(&self, other: &Ranked) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.product.cmp(&other.0.product))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Ranked) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Ranked) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl TopK {
    pub(super) fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)),
        }
    }

    pub(super) fn push(&mut self, product: usize, score: f32) {
        let hit = Ranked(Hit { product, score });
        if self.heap.len() < self.k {
            self.heap.push(hit);
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if hit < *worst {
                *worst = hit;
            }
        }
    }

    pub(super) fn into_best_first(self) -> Vec<Hit> {
        self.heap.into_sorted_vec().into_iter().map(|ranked| ranked.0).collect()
    }
}

/// Appends the int8 codes of `vector` to `codes` and returns the scale that makes them unit length.
///
/// Codes use the full -127..=127 range of the vector's largest component; the scale is
/// the inverse norm of the codes themselves, so a quantised vector compared with its own
/// codes scores exactly 1. A zero (or non-finite) vector gets zero codes and scale 0.
pub(super) fn quantise(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
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

pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(super) fn corrupt(message: String) -> IndexError {
    IndexError::Corrupt(message)
}

/// Reads a section front to back, each read checked against what is left.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    /// The section's name, for messages.
    pub(super) section: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], IndexError> {
        if len > self.bytes.len() {
            return Err(corrupt(format!(
                "the {} section is too short for its {what}",
                self.section
            )));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, IndexError> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    /// Fails unless the whole section was read; `needing` says what it should have held.
    pub(super) fn finish(&self, needing: &str) -> Result<(), IndexError> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        Err(corrupt(format!(
            "the {} section has {} bytes more than {needing}",
            self.section,
            self.bytes.len()
        )))
    }

    fn f16s(&mut self, count: usize, what: &str) -> Result<Vec<f32>, IndexError> {
        Ok(self
            .take(count.saturating_mul(2), what)?
            .chunks_exact(2)
            .map(|chunk| f16::from_le_bytes([chunk[0], chunk[1]]).to_f32())
            .collect())
    }

    fn f32s(&mut self, count: usize, what: &str) -> Result<Vec<f32>, IndexError> {
        Ok(self
            .take(count.saturating_mul(4), what)?
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("chunks of 4 bytes")))
            .collect())
    }
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
    fn dot_products_count_every_element_whatever_the_length() {
        for len in 0..20 {
            let a: Vec<f32> = (0..len).map(|i| i as f32 + 1.0).collect();
            let b: Vec<f32> = (0..len).map(|i| 0.5 - i as f32).collect();
            let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(encode::dot_in_lanes(&a, &b), expected, "length {len}");
        }
    }

    #[test]
    fn top_k_keeps_the_best_and_breaks_ties_by_position() {
        let mut best = TopK::new(3);
        for (product, score) in [0.1, 0.9, 0.5, 0.9, -1.0, 0.7].into_iter().enumerate() {
            best.push(product, score);
        }
        let kept: Vec<usize> = best.into_best_first().iter().map(|hit| hit.product).collect();
        assert_eq!(kept, [1, 3, 5]);
        assert!(TopK::new(0).into_best_first().is_empty());
    }
}
