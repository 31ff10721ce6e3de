//! Inverted lists (IVF): the products grouped by the nearest of a few hundred centroids of the
//! catalog, so that a search scans the lists whose centroids lie nearest the query rather
//! than every product. The index stores the products list by list, so a list is a run of
//! consecutive products.
//!
//! The partitions section: u32 list count, u32 lists to probe, then per list the u32 end of
//! its run (the first list starts at product 0), then the unit-length centroids in the int8
//! layout (`lists` f32 scales, then `lists * dims` i8 codes); since format version 9 then a u32,
//! the most lists to probe, and an f32, the margin (below). Earlier versions probe a fixed number.
//! Since version 11 then a u32 of flags: bit 0 set when the codec's codes stand for each
//! product's offset from its list's centroid (product quantisation only), so that a product
//! scores its centroid's score plus its code's.
//!
//! A search scans the `probe` nearest lists, then each next one whose centroid scores within
//! `margin` of the nearest's, up to `most` lists. A query deep inside one group of products
//! then fetches one list, and one between groups the few it needs: on Fashion Product Images
//! (`otlens bench-index`) that scanned a fifth to a third fewer products than a fixed number
//! of lists for the same recall. `Index::with_calibrated_margin` chooses the margin for a
//! catalog.

use std::cell::Cell;
use std::ops::Range;

use super::codec::{corrupt, Int8Rows, Reader, Run, TopK};
use super::IndexError;

/// The flag bit of codes relative to their list's centroid.
const RELATIVE_CODES: u32 = 1;

/// What a partitions section holds, by format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PartitionsLayout {
    /// Versions 4 to 8: a fixed number of lists to probe.
    FixedProbe,
    /// Versions 9 and 10: the most lists to probe and the margin.
    Margin,
    /// Version 11 on: and the flags.
    Flagged,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Partitions {
    /// List `l` holds the products from `ends[l - 1]` (0 for the first) to `ends[l]`.
    ends: Vec<u32>,
    /// How many of the nearest lists a search scans at least.
    probe: usize,
    /// How many it scans at most, counting those within `margin` (but not those a filter needs).
    most: usize,
    /// How far below the nearest list's centroid score a further list's may lie to be scanned.
    margin: f32,
    centroids: Int8Rows,
    /// Whether the codes stand for each product's offset from its list's centroid.
    relative: bool,
}

impl Partitions {
    pub(super) fn lists(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn probe(&self) -> usize {
        self.probe
    }

    /// Scans exactly the `probe` nearest lists (and more for a narrow filter).
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn set_probe(&mut self, probe: usize) {
        self.probe = probe.clamp(1, self.lists());
        self.most = self.probe;
        self.margin = 0.0;
    }

    /// Scans the nearest list, then those within `margin` of it, `most` at most.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn set_margin(&mut self, margin: f32, most: usize) {
        self.probe = 1;
        self.most = most.clamp(1, self.lists());
        self.margin = margin;
    }

    /// Records that the codes now stand for each product's offset from its list's centroid.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn set_relative(&mut self) {
        self.relative = true;
    }

    pub(super) fn is_relative(&self) -> bool {
        self.relative
    }

    /// The centroid of `list`, as stored (unit length, to int8's precision).
    pub(super) fn centroid(&self, list: usize) -> Vec<f32> {
        self.centroids.reconstruct(list)
    }

    /// The products of `list` to scan for the unit-length `query`, with the score its
    /// centroid adds to each when the codes are relative to it.
    pub(super) fn run_for(&self, list: usize, query: &[f32]) -> Run {
        Run {
            products: self.run(list),
            base: if self.relative {
                self.centroids.dot_exact(list, query)
            } else {
                0.0
            },
        }
    }

    /// The run of products in `list`.
    pub(super) fn run(&self, list: usize) -> Range<usize> {
        let start = list.checked_sub(1).map_or(0, |previous| self.ends[previous] as usize);
        start..self.ends[list] as usize
    }

    /// The list holding `product`, if the lists hold it.
    pub(super) fn list_of(&self, product: usize) -> Option<usize> {
        let list = self.ends.partition_point(|&end| end as usize <= product);
        (list < self.lists()).then_some(list)
    }

    /// Every non-empty list with its centroid's score for the unit-length `query`, the
    /// nearest first.
    pub(super) fn ranked(&self, query: &[f32]) -> Vec<(usize, f32)> {
        // A top-k of all the lists: the widget's module already holds its sort.
        let mut ranking = TopK::new(self.lists());
        self.centroids.scan(
            query,
            &mut std::iter::once(Run::all(self.lists())),
            &|_| true,
            &mut |list, score| ranking.push(list, score),
        );
        ranking
            .into_best_first()
            .into_iter()
            .map(|hit| (hit.product, hit.score))
            .filter(|&(list, _)| !self.run(list).is_empty())
            .collect()
    }

    /// The lists a search for the unit-length `query` scans, nearest first: the `probe`
    /// nearest, those within the margin up to `most`, then the next ones while fewer than
    /// `wanted` products have `passed` its filter (counted by the caller as it takes each
    /// list), so that a narrow filter fills its results.
    pub(super) fn to_scan<'a>(
        &self,
        query: &[f32],
        wanted: usize,
        passed: &'a Cell<usize>,
    ) -> impl Iterator<Item = usize> + 'a {
        let (probe, most) = (self.probe, self.most);
        let ranked = self.ranked(query);
        let floor = ranked.first().map_or(0.0, |&(_, best)| best - self.margin);
        ranked
            .into_iter()
            .enumerate()
            .take_while(move |&(rank, (_, score))| {
                rank < probe || (rank < most && score >= floor) || passed.get() < wanted
            })
            .map(|(_, (list, _))| list)
    }

    pub(super) fn write(&self, bytes: &mut Vec<u8>) {
        for field in [self.lists() as u32, self.probe as u32].iter().chain(&self.ends) {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        self.centroids.write(bytes);
        bytes.extend_from_slice(&(self.most as u32).to_le_bytes());
        bytes.extend_from_slice(&self.margin.to_le_bytes());
        let flags = if self.relative { RELATIVE_CODES } else { 0 };
        bytes.extend_from_slice(&flags.to_le_bytes());
    }

    /// Reads the partitions section of an index of `count` products of `dims` dimensions,
    /// laid out as its version's `layout`.
    pub(super) fn read(
        section: &[u8],
        count: usize,
        dims: usize,
        layout: PartitionsLayout,
    ) -> Result<Partitions, IndexError> {
        let mut reader = Reader {
            bytes: section,
            section: "partitions",
        };
        let lists = reader.u32("list count")? as usize;
        let probe = reader.u32("lists to probe")? as usize;
        let ends: Vec<u32> = reader
            .take(lists.saturating_mul(4), "list ends")?
            .chunks_exact(4)
            .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("chunks of 4 bytes")))
            .collect();
        let centroids = Int8Rows::read(&mut reader, lists, dims)?;
        let (most, margin) = if layout == PartitionsLayout::FixedProbe {
            (probe, 0.0)
        } else {
            let most = reader.u32("most lists to probe")? as usize;
            let margin = f32::from_le_bytes(reader.take(4, "probe margin")?.try_into().expect("4 bytes"));
            (most, margin)
        };
        let flags = if layout == PartitionsLayout::Flagged {
            reader.u32("flags")?
        } else {
            0
        };

        // One message for every inconsistency: each means the same damage to a shopper.
        let consistent = (1..=lists).contains(&probe)
            && (probe..=lists).contains(&most)
            && (0.0..=2.0).contains(&margin)
            && ends.windows(2).all(|pair| pair[0] <= pair[1])
            && ends.last().is_some_and(|&end| end as usize == count)
            && reader.bytes.is_empty();
        if !consistent {
            return Err(corrupt(format!(
                "its {lists} inverted lists do not partition its {count} products"
            )));
        }
        if flags & !RELATIVE_CODES != 0 {
            return Err(corrupt(format!(
                "its inverted lists carry flags {flags:#x} that this version does not know"
            )));
        }
        Ok(Partitions {
            ends,
            probe,
            most,
            margin,
            centroids,
            relative: flags & RELATIVE_CODES != 0,
        })
    }
}

/// Partitioning, done by the companion binary when it builds an index.
#[cfg(not(target_arch = "wasm32"))]
mod build {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rayon::prelude::*;

    use super::super::codec::encode::{closest, k_means};
    use super::*;

    /// Points the centroids are trained on per list: plenty for a stable mean, and a 1M
    /// catalog trains on 64k vectors rather than all of them.
    const TRAINING_POINTS_PER_LIST: usize = 64;

    impl Partitions {
        /// Groups unit-length `vectors` into `lists` lists by spherical k-means; `to_embedding`
        /// turns a centroid into the basis queries come in (the vectors may lie in another
        /// one that keeps dot products). `(dims, embedding_dims)` are the widths of the
        /// vectors and of the queries. Returns the partitions and the order to store the
        /// products in: list by list, each list in the products' own order.
        pub(in crate::index) fn build(
            vectors: &[Vec<f32>],
            (dims, embedding_dims): (usize, usize),
            lists: usize,
            probe: usize,
            to_embedding: impl Fn(&[f32]) -> Vec<f32>,
        ) -> (Partitions, Vec<usize>) {
            let lists = lists.clamp(1, vectors.len());
            // At random (seeded): a stride could skip whole groups of a catalog listed in a
            // repeating order.
            let sampled = (lists * TRAINING_POINTS_PER_LIST).min(vectors.len());
            let sample: Vec<&[f32]> = rand::seq::index::sample(&mut StdRng::seed_from_u64(2), vectors.len(), sampled)
                .into_iter()
                .map(|position| vectors[position].as_slice())
                .collect();
            let centroids = in_locality_order(k_means(&sample, dims, lists, true), dims);
            let assigned: Vec<usize> = vectors
                .par_iter()
                .map(|vector| closest(centroids.chunks_exact(dims), vector))
                .collect();
            let mut order: Vec<usize> = (0..vectors.len()).collect();
            order.sort_by_key(|&product| assigned[product]);
            let mut ends = vec![0u32; lists];
            for &list in &assigned {
                ends[list] += 1;
            }
            let mut total = 0;
            for end in &mut ends {
                total += *end;
                *end = total;
            }
            // The centroids meet queries in the embedding's dimensions, which a quantiser's
            // basis may not keep all of.
            let centroid_rows: Vec<Vec<f32>> = centroids.chunks_exact(dims).map(to_embedding).collect();
            let probe = probe.clamp(1, lists);
            let partitions = Partitions {
                ends,
                probe,
                most: probe,
                margin: 0.0,
                centroids: Int8Rows::encode(&centroid_rows, embedding_dims),
                relative: false,
            };
            (partitions, order)
        }

        /// Reorders each list's run of `order` (products list by list, as [`Partitions::build`]
        /// gives them) so that near products lie near each other: the leaves of a tree of
        /// spherical 2-means splits of their unit-length `vectors`, depth first. A search's best
        /// candidates then fall in few of a ranged catalog's refinement blocks, which hold runs
        /// of consecutive products.
        pub(in crate::index) fn order_within_lists(&self, order: &mut [usize], vectors: &[Vec<f32>], dims: usize) {
            let mut runs = Vec::with_capacity(self.lists());
            let mut rest = order;
            for list in 0..self.lists() {
                let (run, after) = rest.split_at_mut(self.run(list).len());
                runs.push(run);
                rest = after;
            }
            let row = |product: usize| vectors[product].as_slice();
            runs.into_par_iter().for_each(|run| {
                let mut ordered = Vec::with_capacity(run.len());
                split_in_two(run, &row, dims, PRODUCTS_PER_LEAF, &mut ordered);
                run.copy_from_slice(&ordered);
            });
        }
    }

    /// Products that [`Partitions::order_within_lists`] leaves in their order: a quarter of a
    /// ranged catalog's refinement block.
    const PRODUCTS_PER_LEAF: usize = 16;

    /// `centroids` reordered so that near ones lie near each other: the leaves of a tree of
    /// spherical 2-means splits, depth first. The lists follow that order in the file, so the
    /// lists one query probes are more often neighbours, which load in one Range request.
    fn in_locality_order(centroids: Vec<f32>, dims: usize) -> Vec<f32> {
        let mut order = Vec::with_capacity(centroids.len() / dims);
        let all: Vec<usize> = (0..centroids.len() / dims).collect();
        let row = |list: usize| &centroids[list * dims..(list + 1) * dims];
        split_in_two(&all, &row, dims, 2, &mut order);
        order
            .into_iter()
            .flat_map(|list| centroids[list * dims..(list + 1) * dims].iter().copied())
            .collect()
    }

    /// Appends `items` (whose unit-length vectors `row` gives) to `order`, depth first through
    /// their 2-means tree, whose leaves hold at most `leaf` items.
    fn split_in_two<'a>(
        items: &[usize],
        row: &(dyn Fn(usize) -> &'a [f32] + Sync),
        dims: usize,
        leaf: usize,
        order: &mut Vec<usize>,
    ) {
        if items.len() <= leaf {
            order.extend_from_slice(items);
            return;
        }
        let points: Vec<&[f32]> = items.iter().map(|&item| row(item)).collect();
        let halves = k_means(&points, dims, 2, true);
        let (first, second): (Vec<usize>, Vec<usize>) = items
            .iter()
            .partition(|&&item| closest(halves.chunks_exact(dims), row(item)) == 0);
        // Equal vectors cannot be told apart: any split keeps the recursion finite.
        let (first, second) = if first.is_empty() || second.is_empty() {
            let (first, second) = items.split_at(items.len() / 2);
            (first.to_vec(), second.to_vec())
        } else {
            (first, second)
        };
        split_in_two(&first, row, dims, leaf, order);
        split_in_two(&second, row, dims, leaf, order);
    }
}
