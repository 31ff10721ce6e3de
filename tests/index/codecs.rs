//! Every codec: round trip, size, and how much of the exact float ranking it keeps.

use half::f16;
use otlens::index::{Codec, Filter, Index, IndexError, PQ_CENTROIDS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{cosine, header_u64, products, random_unit_vectors, MODEL_SHA256};

const CODECS: [Codec; 4] = [
    Codec::Int8,
    Codec::ProductQuantised { subspaces: 16 },
    Codec::Binary,
    Codec::RefinedProductQuantised {
        subspaces: 8,
        refinement: 8,
    },
];

/// Photos of `groups` garments, several each: a shared direction plus noise, like a catalog's
/// embeddings, where exact top-10 lists are mostly one garment's photos.
fn catalog_like(count: usize, dims: usize, groups: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres = random_unit_vectors(&mut rng, groups, dims);
    (0..count)
        .map(|n| {
            let vector: Vec<f32> = centres[n % groups]
                .iter()
                .map(|value| value + rng.random_range(-0.12..0.12))
                .collect();
            let norm = cosine(&vector, &vector).sqrt();
            vector.into_iter().map(|value| value / norm).collect()
        })
        .collect()
}

/// Share of the exact float top 10 that `index` returns in its top 10, over `queries`.
fn recall_at_10(index: &Index, embeddings: &[Vec<f32>], queries: &[Vec<f32>]) -> f32 {
    let found: usize = queries
        .iter()
        .map(|query| {
            let mut exact: Vec<(usize, f32)> = embeddings.iter().map(|e| cosine(query, e)).enumerate().collect();
            exact.sort_by(|a, b| b.1.total_cmp(&a.1));
            let hits = index.search(query, 10, &Filter::ANY);
            exact[..10]
                .iter()
                .filter(|(product, _)| hits.iter().any(|hit| hit.product == *product))
                .count()
        })
        .sum();
    found as f32 / (queries.len() * 10) as f32
}

#[test]
fn every_codec_round_trips_and_says_which_it_is() {
    let embeddings = catalog_like(300, 64, 30, 1);
    for codec in CODECS {
        let index = Index::build_with(codec, MODEL_SHA256, products(300), &embeddings).unwrap();
        assert_eq!(index.codec(), codec);
        let bytes = index.to_bytes();
        let read = Index::from_bytes(&bytes).unwrap();
        assert_eq!(read, index, "{codec}");
        assert_eq!(read.to_bytes(), bytes, "{codec}: writing is deterministic");
    }
}

#[test]
fn bytes_per_product_are_what_each_codec_promises() {
    let (count, dims) = (400, 128);
    let embeddings = catalog_like(count, dims, 40, 2);
    let vectors_len = |codec| {
        let bytes = Index::build_with(codec, MODEL_SHA256, products(count), &embeddings)
            .unwrap()
            .to_bytes();
        header_u64(&bytes, 84)
    };
    assert_eq!(vectors_len(Codec::Int8), count * (dims + 4));
    // The subspace count and dimensions kept, then the rotation and codebooks in f16.
    let codebooks = PQ_CENTROIDS * dims * 2;
    assert_eq!(
        vectors_len(Codec::ProductQuantised { subspaces: 16 }),
        8 + dims * dims * 2 + codebooks + count * 16
    );
    assert_eq!(vectors_len(Codec::Binary), dims * 4 + count * (dims / 8 + dims + 4));
    // pq's layout, then the refinement's subspace count and codebooks, then its codes.
    assert_eq!(
        vectors_len(Codec::RefinedProductQuantised {
            subspaces: 8,
            refinement: 8
        }),
        8 + dims * dims * 2 + codebooks + count * 8 + 4 + codebooks + count * 8
    );
    // Per product, which `build-index` weighs against its warning for large ranged catalogs.
    let per_product = |codec| {
        Index::build_with(codec, MODEL_SHA256, products(count), &embeddings)
            .unwrap()
            .product_vector_bytes()
    };
    assert_eq!(per_product(Codec::Int8), dims + 4);
    assert_eq!(per_product(Codec::ProductQuantised { subspaces: 16 }), 16);
    assert_eq!(per_product(Codec::Binary), dims / 8 + dims + 4);
    assert_eq!(
        per_product(Codec::RefinedProductQuantised {
            subspaces: 8,
            refinement: 8
        }),
        16
    );
}

#[test]
fn every_codec_keeps_most_of_the_exact_top_10() {
    let (count, dims) = (3000, 64);
    // New photos of the catalog's garments.
    let mut embeddings = catalog_like(count + 60, dims, 100, 3);
    let queries = embeddings.split_off(count);
    for (codec, at_least) in [(CODECS[0], 0.95), (CODECS[1], 0.6), (CODECS[2], 0.95), (CODECS[3], 0.6)] {
        let index = Index::build_with(codec, MODEL_SHA256, products(count), &embeddings).unwrap();
        let recall = recall_at_10(&index, &embeddings, &queries);
        eprintln!("{codec}: recall@10 {recall:.3}");
        assert!(recall >= at_least, "{codec}: recall@10 {recall:.3} < {at_least}");
    }
}

/// The refinement's 8 bytes, read for the best 50 candidates only, keep more of the ranking
/// than the first 8 alone and about what 16 bytes of one quantiser keep.
#[test]
fn a_refinement_rescores_the_candidates_that_the_first_codes_rank() {
    let (count, dims) = (3000, 64);
    let mut embeddings = catalog_like(count + 60, dims, 100, 3);
    let queries = embeddings.split_off(count);
    let recall = |codec| {
        let index = Index::build_with(codec, MODEL_SHA256, products(count), &embeddings).unwrap();
        recall_at_10(&index, &embeddings, &queries)
    };
    let first = recall(Codec::ProductQuantised { subspaces: 8 });
    let refined = recall(Codec::RefinedProductQuantised {
        subspaces: 8,
        refinement: 8,
    });
    let single = recall(Codec::ProductQuantised { subspaces: 16 });
    eprintln!("pq8 {first:.3}, pq8+8 {refined:.3}, pq16 {single:.3}");
    assert!(refined > first + 0.05, "pq8+8 {refined:.3} against pq8 {first:.3}");
    assert!(refined >= single - 0.05, "pq8+8 {refined:.3} against pq16 {single:.3}");
    assert_eq!(
        Index::build_with(
            Codec::RefinedProductQuantised {
                subspaces: 8,
                refinement: 24
            },
            MODEL_SHA256,
            products(10),
            &embeddings[..10]
        ),
        Err(IndexError::BadRefinement {
            refinement: 24,
            kept: 64
        })
    );
}

#[test]
fn a_quantiser_keeps_256_principal_dimensions_of_a_wider_embedding() {
    let (count, dims, subspaces) = (600, 512, 16);
    let mut embeddings = catalog_like(count + 30, dims, 60, 8);
    let queries = embeddings.split_off(count);
    let codec = Codec::ProductQuantised { subspaces };
    let index = Index::build_with(codec, MODEL_SHA256, products(count), &embeddings).unwrap();
    let bytes = index.to_bytes();
    // A 256 x 512 rotation and 256-dimension codebooks: a quarter and a half of keeping all.
    let kept = 256;
    assert_eq!(
        header_u64(&bytes, 84),
        8 + kept * dims * 2 + PQ_CENTROIDS * kept * 2 + count * subspaces
    );
    assert_eq!(Index::from_bytes(&bytes).unwrap(), index);
    let recall = recall_at_10(&index, &embeddings, &queries);
    assert!(recall >= 0.6, "recall@10 {recall:.3}");
    // Lists are grouped in the kept dimensions; their centroids meet queries in all of them,
    // so the nearest two of eight lists hold most of what the whole catalog ranks first.
    let partitioned = index.clone().partitioned(8, 2);
    let top_ids = |index: &Index, query: &[f32]| -> Vec<String> {
        let hits = index.search(query, 10, &Filter::ANY);
        hits.iter()
            .map(|hit| index.products()[hit.product].id.clone())
            .collect()
    };
    let kept: usize = queries
        .iter()
        .map(|query| {
            let everywhere = top_ids(&index, query);
            top_ids(&partitioned, query)
                .iter()
                .filter(|id| everywhere.contains(id))
                .count()
        })
        .sum();
    let share = kept as f32 / (queries.len() * 10) as f32;
    assert!(share >= 0.8, "the lists kept {share:.3} of the flat top 10");
}

#[test]
fn pq_codes_of_products_in_lists_are_offsets_from_their_centroids() {
    let (count, dims, lists) = (3000, 64, 100);
    let mut embeddings = catalog_like(count + 60, dims, 100, 9);
    let queries = embeddings.split_off(count);
    let codec = Codec::ProductQuantised { subspaces: 16 };
    let flat = Index::build_with(codec, MODEL_SHA256, products(count), &embeddings).unwrap();
    // A list per garment, every list scanned: only the codes differ, and each offset is a
    // photo's own departure from its garment.
    let partitioned = flat.clone().partitioned(lists, lists);
    let read = Index::from_bytes(&partitioned.to_bytes()).unwrap();
    assert_eq!(read, partitioned);
    // The products are stored list by list: recall compares ids.
    let original = |index: &Index, product: usize| -> usize { index.products()[product].id[4..].parse().unwrap() };
    let recall = |index: &Index| -> f32 {
        let found: usize = queries
            .iter()
            .map(|query| {
                let mut exact: Vec<(usize, f32)> = embeddings.iter().map(|e| cosine(query, e)).enumerate().collect();
                exact.sort_by(|a, b| b.1.total_cmp(&a.1));
                let hits: Vec<usize> = index
                    .search(query, 10, &Filter::ANY)
                    .iter()
                    .map(|hit| original(index, hit.product))
                    .collect();
                exact[..10].iter().filter(|(product, _)| hits.contains(product)).count()
            })
            .sum();
        found as f32 / (queries.len() * 10) as f32
    };
    let (absolute, relative) = (recall(&flat), recall(&read));
    eprintln!("pq16 recall@10: {absolute:.3} as vectors, {relative:.3} as offsets");
    assert!(relative >= absolute + 0.05, "{relative:.3} against {absolute:.3}");
    // "More like this" rebuilds each vector from its centroid and offset.
    let fidelity = |index: &Index| -> f32 {
        (0..count)
            .step_by(50)
            .map(|product| {
                cosine(
                    &index.stored_vector(product).unwrap(),
                    &embeddings[original(index, product)],
                )
            })
            .sum::<f32>()
            / (count / 50) as f32
    };
    let (absolute, relative) = (fidelity(&flat), fidelity(&read));
    assert!(
        relative > absolute,
        "stored vectors' cosine to the photos: {relative:.4} against {absolute:.4}"
    );
}

#[test]
fn more_like_this_and_filters_work_with_every_codec() {
    let embeddings = catalog_like(500, 64, 50, 4);
    let shop = products(500);
    let priced = Filter {
        max_price: Some(1e9),
        ..Filter::ANY
    };
    for codec in CODECS {
        let index = Index::build_with(codec, MODEL_SHA256, shop.clone(), &embeddings).unwrap();
        let similar = index.similar(7, 5, &Filter::ANY);
        assert_eq!(similar.len(), 5);
        assert!(similar.iter().all(|hit| hit.product != 7));
        assert!(
            similar.iter().filter(|hit| hit.product % 50 == 7).count() >= 4,
            "{codec}: photos of the same garment come first: {similar:?}"
        );
        // Only even products have a price (see `products`).
        let hits = index.search(&embeddings[3], 20, &priced);
        assert_eq!(hits.len(), 20, "{codec}");
        assert!(hits.iter().all(|hit| hit.product % 2 == 0), "{codec}");
    }
}

#[test]
fn a_subspace_count_must_fit_the_dimensions() {
    let embeddings = catalog_like(10, 64, 2, 5);
    let build = |subspaces| {
        Index::build_with(
            Codec::ProductQuantised { subspaces },
            MODEL_SHA256,
            products(10),
            &embeddings,
        )
    };
    for subspaces in [0, 65] {
        assert_eq!(build(subspaces), Err(IndexError::BadSubspaces { subspaces, dims: 64 }));
    }
    // 24 subspaces do not divide 64 dimensions: the quantiser keeps the first 48.
    assert_eq!(
        build(24).unwrap().vector_bytes(),
        8 + 48 * 64 * 2 + PQ_CENTROIDS * 48 * 2 + 10 * 24
    );
}

#[test]
fn an_unknown_codec_is_refused_by_number() {
    let (index, _) = super::sample_index(4, 8);
    let result = Index::from_bytes(&super::with_header_field(&index.to_bytes(), 16, &9u32.to_le_bytes()));
    assert_eq!(result, Err(IndexError::UnknownCodec(9)));
    assert!(IndexError::UnknownCodec(9).to_string().contains("rebuild"));
}

#[test]
fn a_damaged_quantiser_is_refused() {
    let embeddings = catalog_like(20, 16, 4, 6);
    let index = Index::build_with(
        Codec::ProductQuantised { subspaces: 4 },
        MODEL_SHA256,
        products(20),
        &embeddings,
    )
    .unwrap();
    let bytes = index.to_bytes();
    let vectors_at = u64::from_le_bytes(bytes[76..84].try_into().unwrap()) as usize;
    for subspaces in [0u32, 3, u32::MAX] {
        let result = Index::from_bytes(&super::with_header_field(&bytes, vectors_at, &subspaces.to_le_bytes()));
        assert!(matches!(result, Err(IndexError::Corrupt(_))), "{subspaces}: {result:?}");
    }
    // Dimensions kept: none, fewer than the subspaces, not a multiple of them, more than there are.
    for kept in [0u32, 2, 6, 20, u32::MAX] {
        let result = Index::from_bytes(&super::with_header_field(&bytes, vectors_at + 4, &kept.to_le_bytes()));
        assert!(matches!(result, Err(IndexError::Corrupt(_))), "{kept}: {result:?}");
    }
    let nan = super::with_header_field(&bytes, vectors_at + 8, &f16::NAN.to_le_bytes());
    assert!(matches!(Index::from_bytes(&nan), Err(IndexError::Corrupt(_))));
}

#[test]
fn a_version_5_quantiser_of_f32_values_still_reads() {
    let (count, dims, subspaces) = (300, 32, 8);
    let embeddings = catalog_like(count, dims, 30, 7);
    let index = Index::build_with(
        Codec::ProductQuantised { subspaces },
        MODEL_SHA256,
        products(count),
        &embeddings,
    )
    .unwrap();
    let bytes = super::with_json_metadata(&index.to_bytes());
    let metadata = &bytes[header_u64(&bytes, 60)..][..header_u64(&bytes, 68)];
    let vectors = &bytes[header_u64(&bytes, 76)..][..header_u64(&bytes, 84)];
    // Before version 8 the dimensions kept were all, and not recorded.
    let floats = dims * dims + PQ_CENTROIDS * dims;
    let (parameters, codes) = vectors[8..].split_at(floats * 2);
    let mut widened = vectors[..4].to_vec();
    for pair in parameters.chunks_exact(2) {
        widened.extend_from_slice(&f16::from_le_bytes([pair[0], pair[1]]).to_f32().to_le_bytes());
    }
    widened.extend_from_slice(codes);
    let version_5 = super::with_sections(&bytes, 5, metadata, &widened);
    assert_eq!(Index::from_bytes(&version_5).unwrap(), index);
}

#[test]
fn a_version_7_quantiser_of_all_dimensions_still_reads() {
    let (count, dims, subspaces) = (300, 32, 8);
    let embeddings = catalog_like(count, dims, 30, 9);
    let codec = Codec::ProductQuantised { subspaces };
    let index = Index::build_with(codec, MODEL_SHA256, products(count), &embeddings).unwrap();
    let bytes = index.to_bytes();
    let metadata = &bytes[header_u64(&bytes, 60)..][..header_u64(&bytes, 68)];
    let vectors = &bytes[header_u64(&bytes, 76)..][..header_u64(&bytes, 84)];
    let without_kept = [&vectors[..4], &vectors[8..]].concat();
    let version_7 = super::with_sections(&bytes, 7, metadata, &without_kept);
    assert_eq!(Index::from_bytes(&version_7).unwrap(), index);
}
