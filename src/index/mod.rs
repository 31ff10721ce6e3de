//! The catalog index: a versioned binary file and top-k search over it.
//!
//! Each product's embedding is L2-normalised and stored with the [`Codec`] chosen at build
//! time: int8 codes (the default; 4x smaller than f32, an integer dot product per product),
//! product quantisation (a few bytes per product; refined, with second codes that rescore a
//! search's best candidates) or sign bits with int8 rescoring. The
//! top `k` are kept in a bounded heap while scanning. A search may carry a
//! [`Filter`] (category, colour, brand, price range, in stock), tested before a product's
//! vector is read; "more like this" searches by a product's stored vector. An index may also
//! hold each product's colour ([`CompactColour`], 24 bytes, or 2 as a word of a palette of the
//! catalog's colours), which a search can blend in.
//! A large index is partitioned into inverted lists ([`Index::partitioned`]); a search then
//! scans the lists nearest the query. A partitioned index may also be split into a head and a
//! lists file ([`Index::to_ranged_bytes`]), whose lists a browser fetches as searches need them,
//! and the details (title, link, thumbnail) of the products it shows.

mod codec;
mod colours;
mod filter;
mod format;
mod manifest;
mod partition;
mod ranged;
mod table;

use std::cell::Cell;

use self::codec::{Run, TopK, Vectors};
use self::colours::Colours;
use self::filter::Columns;
use self::partition::Partitions;
use self::ranged::Blocks;
use crate::catalog::Product;
use crate::colour::{vote_colour_name, CompactColour, NAME_VOTERS, NAMING_SHAPE_WEIGHT};

pub use self::codec::{Codec, PQ_CENTROIDS};
pub use self::filter::{FacetValue, Facets, Filter, PriceRange};
#[cfg(fuzzing)]
pub use self::format::reseal;
pub use self::format::{FORMAT_VERSION, HEADER_LEN, MAGIC, METADATA_BYTES_PER_PRODUCT};
pub use self::manifest::{FileEntry, Manifest, MANIFEST_FORMAT};
#[cfg(fuzzing)]
pub use self::ranged::reseal_blocks;
pub use self::ranged::{MOST_BLOCK_ROUNDS, PRODUCTS_PER_PAGE};

/// Why an index could not be built or read. Messages are meant to be shown as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error(
        "this is not an otlens catalog index (the file does not start with {magic:?})",
        magic = "OTLENSIX"
    )]
    BadMagic,
    #[error("the catalog index has format version {found}, but this version of otlens reads versions 1 to {supported}; rebuild the index with the same otlens release as the widget")]
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
    #[error("the catalog index stores its vectors with codec {0}, which this version of otlens does not know; rebuild the index with the same otlens release as the widget")]
    UnknownCodec(u32),
    #[error("product quantisation needs between 1 and {dims} subspaces (the embedding's dimensions), not {subspaces}")]
    BadSubspaces { subspaces: usize, dims: usize },
    #[error("the refinement of product quantisation needs a number of subspaces that divides the {kept} dimensions quantised, not {refinement}")]
    BadRefinement { refinement: usize, kept: usize },
    #[error("the model sha256 must be 64 hex digits, not {0:?}")]
    BadModelHash(String),
    #[error("there are {products} products but {colours} colours")]
    ColourCountMismatch { products: usize, colours: usize },
    #[error("a catalog split for Range requests needs inverted lists; build it with --lists")]
    NotPartitioned,
    #[error("this catalog index is whole; it has no lists to load")]
    NotRanged,
    #[error("the catalog's lists file has {lists} blocks, so there is no block {list}")]
    NoSuchList { list: usize, lists: usize },
    #[error(
        "a refinement block of list {list} came before the list's own block, which vouches for it; load the list first"
    )]
    RefinementBeforeList { list: usize },
    #[error("part {list} of the catalog's lists file is damaged or comes from another build (its checksum does not match the index); download or build it again")]
    BlockMismatch { list: usize },
    #[error("the catalog's lists file has {found} bytes where its index expects {expected}; the shop must deploy the catalog files together")]
    ListsFileSize { expected: u64, found: u64 },
    #[error("the catalog has {pages} pages of product details, so there is no page {page}")]
    NoSuchPage { page: usize, pages: usize },
    #[error("page {page} of the catalog's product details is damaged or comes from another build (its checksum does not match the index); download or build it again")]
    PageMismatch { page: usize },
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
    vectors: Vectors,
    /// One per product, when the index was built with colours.
    colours: Option<Colours>,
    /// The inverted lists, for a partitioned index.
    partitions: Option<Partitions>,
    /// For the head of a ranged catalog: its lists' blocks, and which are loaded.
    blocks: Option<Blocks>,
    /// Derived from `products`; not stored in the file.
    columns: Columns,
}

/// What a photo search ranks by besides the embedding: the photo's colour
/// ([`crate::colour::ColourDescriptor::histogram`]) and how much it counts, from 0 (shape
/// only) to 1 (colour only). The score is `(1 - weight) * cosine + weight * colour similarity`.
#[derive(Clone, Copy, Debug)]
pub struct ColourQuery<'a> {
    pub histogram: &'a [f32],
    pub weight: f32,
}

impl Index {
    /// Stores `embeddings` (one per product, same order) for the model with the given sha256
    /// with the int8 codec.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn build(model_sha256_hex: &str, products: Vec<Product>, embeddings: &[Vec<f32>]) -> Result<Index, IndexError> {
        Index::build_with(Codec::Int8, model_sha256_hex, products, embeddings)
    }

    /// Stores `embeddings` (one per product, same order) for the model with the given sha256
    /// with `codec`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn build_with(
        codec: Codec,
        model_sha256_hex: &str,
        products: Vec<Product>,
        embeddings: &[Vec<f32>],
    ) -> Result<Index, IndexError> {
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
        let mut unit = Vec::with_capacity(embeddings.len());
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
            unit.push(unit_length(embedding));
        }
        let vectors = Vectors::encode(codec, &unit, dims)?;
        Ok(Index::from_parts(model_sha256, dims, products, vectors))
    }

    fn from_parts(model_sha256: [u8; 32], dims: usize, products: Vec<Product>, vectors: Vectors) -> Index {
        Index {
            model_sha256,
            dims,
            columns: Columns::new(&products),
            products,
            vectors,
            colours: None,
            partitions: None,
            blocks: None,
        }
    }

    /// The index with its products grouped into `lists` inverted lists (at most one per
    /// product), of which a search scans the `probe` nearest the query, and more while
    /// fewer than the results asked for pass its filter. Reorders the products, list by list.
    /// A freshly built pq index then stores each product as its offset from its list's
    /// centroid, which keeps more of the ranking in the same bytes; such an index is
    /// returned as it is, since its codes no longer say where its products lie.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn partitioned(self, lists: usize, probe: usize) -> Index {
        use rayon::prelude::*;
        if self.partitions.as_ref().is_some_and(Partitions::is_relative) {
            return self;
        }
        // Grouped in the codec's own basis, where cosines are as the codec scores them (pq's
        // keeps the principal axes only, which also makes grouping a million products 4x
        // faster); only the centroids are turned back to the embedding's, for the queries.
        let stored: Vec<Vec<f32>> = (0..self.len())
            .into_par_iter()
            .map(|product| unit_length(&self.vectors.reconstruct_in_basis(product)))
            .collect();
        let widths = (self.vectors.basis_dims(), self.dims);
        let (mut partitions, mut order) = Partitions::build(&stored, widths, lists, probe, |centroid| {
            self.vectors.to_embedding_basis(centroid)
        });
        if self.vectors.refinement_bytes() > 0 {
            partitions.order_within_lists(&mut order, &stored, widths.0);
        }
        drop(stored);
        let unordered = self.vectors;
        let mut vectors = unordered.reorder(&order);
        drop(unordered);
        let list_of: Vec<usize> = (0..partitions.lists())
            .flat_map(|list| std::iter::repeat_n(list, partitions.run(list).len()))
            .collect();
        let centroids: Vec<Vec<f32>> = (0..partitions.lists()).map(|list| partitions.centroid(list)).collect();
        if vectors.make_relative(&centroids, &list_of) {
            partitions.set_relative();
        }
        let products: Vec<Product> = order.iter().map(|&product| self.products[product].clone()).collect();
        Index {
            model_sha256: self.model_sha256,
            dims: self.dims,
            columns: Columns::new(&products),
            products,
            vectors,
            colours: self.colours.map(|colours| colours.reordered(&order)),
            partitions: Some(partitions),
            blocks: None,
        }
    }

    /// The index scanning at least `probe` of its inverted lists per search (at most all).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_probe(mut self, probe: usize) -> Index {
        if let Some(partitions) = &mut self.partitions {
            partitions.set_probe(probe);
        }
        self
    }

    /// The index scanning, per search, the nearest of its inverted lists and then each next
    /// one whose centroid scores within a margin of the nearest's, `most` at most (more only
    /// for a narrow filter): for a ranged catalog, which downloads each list it scans. The
    /// margin is the smallest that keeps `recall` of the nearest neighbours of a sample of
    /// the catalog's own products, as a full scan of its codec finds them.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_calibrated_margin(mut self, recall: f64, most: usize) -> (Index, Option<ProbeMargin>) {
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        use rayon::prelude::*;
        let Some(partitions) = &self.partitions else {
            return (self, None);
        };
        let most = most.clamp(1, partitions.lists());
        let sampled = CALIBRATION_QUERIES.min(self.len());
        let sample = rand::seq::index::sample(&mut StdRng::seed_from_u64(5), self.len(), sampled).into_vec();
        // Per sampled product: how far below the nearest list each of its `most` nearest
        // lists scores, and the margin each of its neighbours' lists needs (none past `most`).
        let per_query: Vec<(Vec<f32>, Vec<Option<f32>>)> = sample
            .par_iter()
            .filter_map(|&product| {
                let query = self.stored_vector(product)?;
                let ranked = partitions.ranked(&query);
                let best = ranked.first().map_or(0.0, |&(_, score)| score);
                let gaps: Vec<f32> = ranked.iter().take(most).map(|&(_, score)| best - score).collect();
                let candidates = self.vectors.nearest(
                    &query,
                    self.candidates_wanted(CALIBRATION_NEIGHBOURS),
                    &mut self.all_runs(&query),
                    &|other| other != product,
                    |_, cosine| cosine,
                );
                let neighbours = self.refined(&query, candidates, 1.0, CALIBRATION_NEIGHBOURS);
                let needed = neighbours
                    .iter()
                    .map(|hit| {
                        let list = partitions.list_of(hit.product)?;
                        gaps.get(ranked.iter().position(|&(ranked, _)| ranked == list)?)
                            .copied()
                    })
                    .collect();
                Some((gaps, needed))
            })
            .collect();
        let mut reachable: Vec<f32> = per_query
            .iter()
            .flat_map(|(_, needed)| needed.iter().flatten().copied())
            .collect();
        reachable.sort_by(f32::total_cmp);
        let pairs: usize = per_query.iter().map(|(_, needed)| needed.len()).sum();
        let wanted = (recall.clamp(0.0, 1.0) * pairs as f64).ceil() as usize;
        // Past what `most` lists can hold, every search scans `most`.
        let margin = match wanted.checked_sub(1) {
            None => 0.0,
            Some(last) => reachable.get(last).copied().unwrap_or(2.0),
        };
        let covered = reachable.iter().filter(|&&needed| needed <= margin).count();
        let scanned: usize = per_query
            .iter()
            .map(|(gaps, _)| gaps.iter().filter(|&&gap| gap <= margin).count())
            .sum();
        if let Some(partitions) = &mut self.partitions {
            partitions.set_margin(margin, most);
        }
        let sampled = per_query.len();
        let report = ProbeMargin {
            margin,
            most,
            mean_lists: scanned as f64 / sampled.max(1) as f64,
            recall: covered as f64 / pairs.max(1) as f64,
            sampled,
        };
        (self, Some(report))
    }

    /// How many inverted lists and products a search for `query` with `k` results passing
    /// `filter` scans (no lists: every product).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn scanned(&self, query: &[f32], k: usize, filter: &Filter) -> (usize, usize) {
        match &self.partitions {
            Some(partitions) => {
                let lists = self.lists_scanned(query, k, filter, None);
                let products = lists.iter().map(|&list| partitions.run(list).len()).sum();
                (lists.len(), products)
            }
            None => (0, self.len()),
        }
    }

    /// The number of inverted lists and how many a search scans at least, when partitioned.
    pub fn lists(&self) -> Option<(usize, usize)> {
        self.partitions.as_ref().map(|p| (p.lists(), p.probe()))
    }

    /// The index with one colour per product (same order), which searches can then blend in.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_colours(mut self, colours: Vec<CompactColour>) -> Result<Index, IndexError> {
        if colours.len() != self.len() {
            return Err(IndexError::ColourCountMismatch {
                products: self.len(),
                colours: colours.len(),
            });
        }
        self.colours = Some(Colours::Own(colours));
        Ok(self)
    }

    /// The index with each product's colour replaced by the nearest of a palette of `words`
    /// typical colours of the catalog (2 bytes a product rather than 24): for large catalogs,
    /// where a ranged one downloads a colour with each row it scans.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_colour_palette(mut self, words: usize) -> Index {
        self.colours = self.colours.map(|colours| colours.coded(words));
        self
    }

    /// The number of colours in the palette that products' colours are words of, if any.
    pub fn colour_palette(&self) -> Option<usize> {
        self.colours.as_ref()?.palette_len()
    }

    /// Whether the index holds the products' colours.
    pub fn has_colours(&self) -> bool {
        self.colours.is_some()
    }

    /// The colour stored for the product at `product`.
    pub fn colour(&self, product: usize) -> Option<CompactColour> {
        self.colours.as_ref().filter(|_| self.is_loaded(product))?.get(product)
    }

    /// How the vectors are stored.
    pub fn codec(&self) -> Codec {
        self.vectors.codec()
    }

    /// Lower-case hex sha256 of the model file the embeddings came from.
    pub fn model_sha256(&self) -> String {
        crate::model::hex(&self.model_sha256)
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
        self.search_with_colour(query, None, k, filter)
    }

    /// [`Index::search`], ranking by a blend of shape and `colour` when the index has colours.
    pub fn search_with_colour(
        &self,
        query: &[f32],
        colour: Option<ColourQuery>,
        k: usize,
        filter: &Filter,
    ) -> Vec<Hit> {
        if query.len() != self.dims {
            return Vec::new();
        }
        self.nearest(&unit_length(query), colour, k, filter, None)
    }

    /// "More like this": the `k` products passing `filter` most similar to the product at
    /// `product` (a position in [`Index::products`]), itself excluded. Uses the stored vector,
    /// so it needs no photo and no model.
    pub fn similar(&self, product: usize, k: usize, filter: &Filter) -> Vec<Hit> {
        self.similar_with_colour(product, 0.0, k, filter)
    }

    /// [`Index::similar`], with the product's stored colour counting `colour_weight` (0 to 1).
    pub fn similar_with_colour(&self, product: usize, colour_weight: f32, k: usize, filter: &Filter) -> Vec<Hit> {
        self.with_similar_query(product, colour_weight, |stored, colour| {
            self.nearest(stored, colour, k, filter, Some(product))
        })
        .unwrap_or_default()
    }

    /// `search` called with the query of "more like this" for the product at `product`: its
    /// stored vector and its stored colour counting `colour_weight`; `None` while its vector is
    /// not at hand.
    fn with_similar_query<T>(
        &self,
        product: usize,
        colour_weight: f32,
        search: impl FnOnce(&[f32], Option<ColourQuery>) -> T,
    ) -> Option<T> {
        let stored = self.stored_vector(product)?;
        let histogram = self.colour(product).map(|colour| colour.to_histogram());
        let colour = histogram.as_deref().map(|histogram| ColourQuery {
            histogram,
            weight: colour_weight,
        });
        Some(search(&stored, colour))
    }

    /// [`Index::search_with_colour`] for a photo, with the name of its colour in the shop's own
    /// words: the catalog colour that the products nearest in colour (and, less, in shape) vote
    /// for, whatever the filter. `None` without colours or colour names in the index. One pass
    /// over the vectors serves both: a second one doubled the search time on 100k products.
    pub fn search_photo(
        &self,
        query: &[f32],
        colour: ColourQuery,
        k: usize,
        filter: &Filter,
    ) -> (Vec<Hit>, Option<&str>) {
        let Some(colours) = self.colours.as_ref().filter(|_| query.len() == self.dims) else {
            return (self.search_with_colour(query, Some(colour), k, filter), None);
        };
        let colour_scores = colours.scores(colour.histogram);
        let matcher = self.columns.matcher(filter);
        let shown = |product| matcher.as_ref().is_none_or(|m| m.matches(product));
        let named = |product: usize| !self.products[product].colour.is_empty();
        let weight = colour.weight.clamp(0.0, 1.0);
        let k = k.min(self.len());
        let mut best = TopK::new(self.candidates_wanted(k));
        let mut voters = TopK::new(NAME_VOTERS);
        let query = unit_length(query);
        let shown_count = Cell::new(0);
        let keep = |product| {
            let is_shown = shown(product);
            shown_count.set(shown_count.get() + usize::from(is_shown));
            is_shown || named(product)
        };
        self.vectors.scan(
            &query,
            k.max(NAME_VOTERS),
            &mut self.runs_to_scan(&query, weight, k, &shown_count),
            &keep,
            &mut |product, cosine| {
                let similarity = colour_scores.of(product);
                if shown(product) {
                    best.push(product, (1.0 - weight) * cosine + weight * similarity);
                }
                if named(product) {
                    voters.push(product, similarity + NAMING_SHAPE_WEIGHT * cosine);
                }
            },
        );
        let hits = self.refined(&query, best.into_best_first(), 1.0 - weight, k);
        (hits, self.name_by_vote(voters.into_best_first()))
    }

    /// The colour name that `voters`' products vote for, each vote weighted by its score.
    fn name_by_vote(&self, voters: Vec<Hit>) -> Option<&str> {
        let mut names: Vec<&str> = Vec::new();
        let mut ballots = Vec::with_capacity(voters.len());
        for hit in voters {
            let name = self.products[hit.product].colour.as_str();
            let number = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                names.push(name);
                names.len() - 1
            });
            ballots.push((hit.score, number as u32));
        }
        vote_colour_name(ballots).map(|number| names[number as usize])
    }

    /// The unit-length vector stored for the product at `product`, as its codec gives it back.
    pub fn stored_vector(&self, product: usize) -> Option<Vec<f32>> {
        if !self.is_loaded(product) {
            return None;
        }
        let mut vector = self.vectors.reconstruct(product);
        if let Some(refinement) = self
            .vectors
            .reconstruct_refinement(product)
            .filter(|_| self.is_refined(product))
        {
            vector
                .iter_mut()
                .zip(refinement)
                .for_each(|(value, extra)| *value += extra);
        }
        if let Some(partitions) = self.partitions.as_ref().filter(|p| p.is_relative()) {
            let centroid = partitions.centroid(partitions.list_of(product)?);
            vector
                .iter_mut()
                .zip(centroid)
                .for_each(|(value, centre)| *value += centre);
        }
        Some(unit_length(&vector))
    }

    fn nearest(
        &self,
        query: &[f32],
        colour: Option<ColourQuery>,
        k: usize,
        filter: &Filter,
        skip: Option<usize>,
    ) -> Vec<Hit> {
        let (candidates, shape_weight) = self.candidates(query, colour, k, filter, skip);
        self.refined(query, candidates, shape_weight, k)
    }

    /// The candidates of [`Index::nearest`] ranked by the codes of the lists it scans, best
    /// first, and the weight of their shape in their scores.
    fn candidates(
        &self,
        query: &[f32],
        colour: Option<ColourQuery>,
        k: usize,
        filter: &Filter,
        skip: Option<usize>,
    ) -> (Vec<Hit>, f32) {
        if k == 0 {
            return (Vec::new(), 1.0);
        }
        let matcher = self.columns.matcher(filter);
        let kept = Cell::new(0);
        let keep = |product| {
            let is_kept = Some(product) != skip && matcher.as_ref().is_none_or(|m| m.matches(product));
            kept.set(kept.get() + usize::from(is_kept));
            is_kept
        };
        let k = k.min(self.len());
        let wanted = self.candidates_wanted(k);
        match (colour, &self.colours) {
            (Some(ColourQuery { histogram, weight }), Some(colours)) if weight > 0.0 => {
                let weight = weight.min(1.0);
                let mut lists = self.runs_to_scan(query, weight, k, &kept);
                let colour_scores = colours.scores(histogram);
                let hits = self
                    .vectors
                    .nearest(query, wanted, &mut lists, &keep, |product, cosine| {
                        (1.0 - weight) * cosine + weight * colour_scores.of(product)
                    });
                (hits, 1.0 - weight)
            }
            _ => {
                let mut lists = self.runs_to_scan(query, 0.0, k, &kept);
                let hits = self
                    .vectors
                    .nearest(query, wanted, &mut lists, &keep, |_, cosine| cosine);
                (hits, 1.0)
            }
        }
    }

    /// How many candidates a search for `k` results ranks by the codes of the lists it scans:
    /// `k`, or for refined pq [`REFINED_CANDIDATES`] at least, which the refinement then rescores.
    fn candidates_wanted(&self, k: usize) -> usize {
        if self.vectors.refinement_bytes() > 0 {
            k.max(REFINED_CANDIDATES)
        } else {
            k
        }
    }

    /// The best `k` of `candidates` (best first) once refined pq's refinement codes add
    /// `shape_weight` times their score for the unit-length `query` to each candidate whose codes
    /// are at hand; the first `k` of them for other codecs.
    fn refined(&self, query: &[f32], mut candidates: Vec<Hit>, shape_weight: f32, k: usize) -> Vec<Hit> {
        let Some(scores) = self.vectors.refinement_scores(query) else {
            candidates.truncate(k);
            return candidates;
        };
        let mut best = TopK::new(k);
        for hit in candidates {
            let refinement = if self.is_refined(hit.product) {
                shape_weight * scores.of(hit.product)
            } else {
                0.0
            };
            best.push(hit.product, hit.score + refinement);
        }
        best.into_best_first()
    }

    /// The runs of products a search for the unit-length `query` scans, in order: all of
    /// them in one run when the index is not partitioned. Otherwise the `probe` lists nearest
    /// the query, then the next ones while fewer than `wanted` products have been `kept`, so
    /// that a narrow filter still fills its results. A search that weights colour above
    /// shape scans every list (the lists group products by shape, not colour), unless the
    /// catalog is ranged: that would download all of it. Lists not loaded are skipped.
    fn runs_to_scan<'a>(
        &'a self,
        query: &'a [f32],
        colour_weight: f32,
        wanted: usize,
        kept: &'a Cell<usize>,
    ) -> Box<dyn Iterator<Item = Run> + 'a> {
        match &self.partitions {
            Some(partitions) if colour_weight <= 0.5 || self.is_ranged() => Box::new(
                partitions
                    .to_scan(query, wanted, kept)
                    .filter(|&list| self.is_list_loaded(list))
                    .map(|list| partitions.run_for(list, query)),
            ),
            _ => self.all_runs(query),
        }
    }

    /// Every product, in runs: one, unless the codes are offsets from the lists' centroids,
    /// then list by list with each centroid's score for the unit-length `query`.
    fn all_runs<'a>(&'a self, query: &'a [f32]) -> Box<dyn Iterator<Item = Run> + 'a> {
        match &self.partitions {
            Some(partitions) if partitions.is_relative() => {
                Box::new((0..partitions.lists()).map(|list| partitions.run_for(list, query)))
            }
            _ => Box::new(std::iter::once(Run::all(self.len()))),
        }
    }
}

/// Candidates, at least, that a search of refined pq ranks by its first codes and rescores with
/// the refinement's: with 16 bytes of each, rescoring the best 50 of the lists' products by
/// both codes kept as much of the exact top 10 on Fashion Product Images as scoring every
/// product by both (0.956 either way, in session 43's simulation, which had no rotation).
const REFINED_CANDIDATES: usize = 50;

/// Products whose neighbours choose a catalog's probe margin: a million-product catalog
/// takes some 15 s for them.
#[cfg(not(target_arch = "wasm32"))]
const CALIBRATION_QUERIES: usize = 1000;
/// The neighbours of each that the lists scanned should hold.
#[cfg(not(target_arch = "wasm32"))]
const CALIBRATION_NEIGHBOURS: usize = 10;

/// The probe margin [`Index::with_calibrated_margin`] chose, and what it does for the
/// products it was measured on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeMargin {
    pub margin: f32,
    /// The most lists a search scans (besides those a narrow filter needs).
    pub most: usize,
    /// The lists the sampled products' searches scan, on average.
    pub mean_lists: f64,
    /// The share of their nearest neighbours those lists hold.
    pub recall: f64,
    /// How many products were sampled.
    pub sampled: usize,
}

/// `vector` scaled to length 1, as the index stores and searches it; a zero vector stays
/// zero (and then matches nothing better than anything else).
pub fn unit_length(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    let scale = if norm > 0.0 && norm.is_finite() {
        1.0 / norm
    } else {
        0.0
    };
    vector.iter().map(|value| value * scale).collect()
}

#[cfg(not(target_arch = "wasm32"))]
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
