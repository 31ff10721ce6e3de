//! Retrieval quality: Recall@K and mAP@R of query embeddings ranked against a gallery.
//!
//! A query's hit at K means a gallery photo with the query's label (the same product)
//! is among its K nearest; mAP@R (Musgrave et al., "A metric learning reality check")
//! also rewards ranking *all* R photos of the product first, which Recall@1 does not see.

use rayon::prelude::*;

/// Embeddings (rows of `dims` values, L2-normalised) with one label per row.
pub struct Labelled<'a> {
    pub vectors: &'a [f32],
    pub dims: usize,
    pub labels: &'a [u32],
}

impl Labelled<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dims..(i + 1) * self.dims]
    }
}

/// Figures for one set of queries.
#[derive(Clone, Debug, PartialEq)]
pub struct Retrieval {
    pub queries: usize,
    pub gallery: usize,
    /// (K, Recall@K) for each requested K, in the order asked.
    pub recall: Vec<(usize, f64)>,
    pub map_at_r: f64,
}

impl Retrieval {
    /// Recall@`k` if it was asked for.
    pub fn recall_at(&self, k: usize) -> Option<f64> {
        self.recall.iter().find(|(at, _)| *at == k).map(|(_, r)| *r)
    }
}

/// What one query scored, kept per query so callers can group them (e.g. by category).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryScore {
    /// 1-based rank of the first gallery photo with the query's label; `None` when the
    /// gallery has none (such a query counts as a miss).
    pub first_hit: Option<usize>,
    /// Gallery position of the query's first result; `None` when the gallery is empty.
    pub first_result: Option<usize>,
    pub average_precision_at_r: f64,
}

/// Ranks the whole gallery for every query by cosine similarity (dot product of
/// normalised rows); ties go to the lower gallery position, so results are reproducible.
pub fn score_queries(queries: &Labelled, gallery: &Labelled) -> Vec<QueryScore> {
    assert_eq!(
        queries.dims, gallery.dims,
        "queries and gallery must have the same width"
    );
    (0..queries.len())
        .into_par_iter()
        .map(|q| {
            let query = queries.row(q);
            let mut ranked: Vec<(f32, usize)> = (0..gallery.len()).map(|g| (dot(query, gallery.row(g)), g)).collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let label = queries.labels[q];
            let relevant = gallery.labels.iter().filter(|&&l| l == label).count();
            let is_hit = |&(_, g): &(f32, usize)| gallery.labels[g] == label;
            let first_hit = ranked.iter().position(is_hit).map(|p| p + 1);
            let mut hits = 0;
            let mut precision_sum = 0.0;
            for (i, entry) in ranked.iter().take(relevant).enumerate() {
                if is_hit(entry) {
                    hits += 1;
                    precision_sum += f64::from(hits) / (i + 1) as f64;
                }
            }
            QueryScore {
                first_hit,
                first_result: ranked.first().map(|&(_, g)| g),
                average_precision_at_r: if relevant == 0 {
                    0.0
                } else {
                    precision_sum / relevant as f64
                },
            }
        })
        .collect()
}

/// Recall@K for each of `ks` and mAP@R over `scores`.
pub fn summarise(scores: &[&QueryScore], gallery: usize, ks: &[usize]) -> Retrieval {
    let n = scores.len().max(1) as f64;
    let recall = ks
        .iter()
        .map(|&k| {
            let hits = scores.iter().filter(|s| s.first_hit.is_some_and(|r| r <= k)).count();
            (k, hits as f64 / n)
        })
        .collect();
    Retrieval {
        queries: scores.len(),
        gallery,
        recall,
        map_at_r: scores.iter().map(|s| s.average_precision_at_r).sum::<f64>() / n,
    }
}

/// [`score_queries`] then [`summarise`] over all queries.
pub fn evaluate(queries: &Labelled, gallery: &Labelled, ks: &[usize]) -> Retrieval {
    let scores = score_queries(queries, gallery);
    summarise(&scores.iter().collect::<Vec<_>>(), gallery.len(), ks)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
