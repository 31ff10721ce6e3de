//! Inverted lists: what a partitioned index finds against a flat scan, narrow filters,
//! the products it regroups, and the partitions section of the file.

use otlens::catalog::Product;
use otlens::colour::CompactColour;
use otlens::index::{Codec, ColourQuery, Filter, Index, IndexError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::{header_u64, one_bin, random_unit_vectors, with_header_field, MODEL_SHA256};

pub(super) const DIMS: usize = 32;
pub(super) const GROUPS: usize = 40;

/// Products in `GROUPS` groups (garments of a kind, near each other), every 50th of them
/// in the category "Rare", so that a filter on it matches products all over the catalog.
pub(super) fn grouped_catalog(count: usize) -> (Vec<Product>, Vec<Vec<f32>>) {
    let mut rng = StdRng::seed_from_u64(3);
    let centres = random_unit_vectors(&mut rng, GROUPS, DIMS);
    let embeddings = (0..count)
        .map(|n| {
            centres[n % GROUPS]
                .iter()
                .map(|value| value + rng.random_range(-0.08..0.08))
                .collect()
        })
        .collect();
    let products = (0..count)
        .map(|n| Product {
            id: format!("sku-{n}"),
            title: format!("Shirt No. {n}"),
            url: format!("https://shop.example/p/{n}"),
            thumbnail: format!("thumbs/{n}.jpg"),
            category: if n % 50 == 0 { "Rare" } else { "Common" }.into(),
            ..Product::default()
        })
        .collect();
    (products, embeddings)
}

fn ids(index: &Index, query: &[f32], k: usize, filter: &Filter) -> Vec<String> {
    index
        .search(query, k, filter)
        .iter()
        .map(|hit| index.products()[hit.product].id.clone())
        .collect()
}

#[test]
fn a_partitioned_index_finds_what_a_full_scan_finds() {
    let (products, embeddings) = grouped_catalog(4000);
    for codec in [Codec::Int8, Codec::Binary, Codec::ProductQuantised { subspaces: 8 }] {
        let flat = Index::build_with(codec, MODEL_SHA256, products.clone(), &embeddings).unwrap();
        let partitioned = flat.clone().partitioned(GROUPS, 2);
        assert_eq!(partitioned.lists(), Some((GROUPS, 2)));
        assert_eq!(partitioned.len(), flat.len());
        let read = Index::from_bytes(&partitioned.to_bytes()).unwrap();
        assert_eq!(read, partitioned, "{codec}: round trip");

        // Every list scanned: pq's codes, now offsets from the lists' centroids, rank as the
        // flat index's do not.
        let everywhere = partitioned.clone().with_probe(GROUPS);
        let mut found = 0;
        for query in embeddings.iter().step_by(97) {
            let expected = ids(&everywhere, query, 10, &Filter::ANY);
            let got = ids(&read, query, 10, &Filter::ANY);
            found += got.iter().filter(|id| expected.contains(id)).count();
        }
        let queries = embeddings.iter().step_by(97).count();
        let recall = found as f64 / (queries * 10) as f64;
        assert!(recall >= 0.95, "{codec}: recall@10 {recall} against the full scan");
    }
}

#[test]
fn a_narrow_filter_still_fills_its_results() {
    let (products, embeddings) = grouped_catalog(4000);
    let index = Index::build(MODEL_SHA256, products, &embeddings)
        .unwrap()
        .partitioned(GROUPS, 1);
    let rare = Filter {
        categories: vec!["Rare".into()],
        ..Filter::default()
    };
    // 80 products are rare, 2 in each group: one list cannot hold 10 of them.
    let hits = index.search(&embeddings[1], 10, &rare);
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|hit| index.products()[hit.product].category == "Rare"));
    let similar = index.similar(index.position("sku-0").unwrap(), 10, &rare);
    assert_eq!(similar.len(), 10);
    assert!(similar.iter().all(|hit| index.products()[hit.product].id != "sku-0"));
}

#[test]
fn grouping_keeps_each_products_vector_and_colour() {
    let (products, embeddings) = grouped_catalog(400);
    let colours: Vec<CompactColour> = (0..400)
        .map(|n| CompactColour::from_histogram(&one_bin(n % 200)))
        .collect();
    let flat = Index::build(MODEL_SHA256, products, &embeddings)
        .unwrap()
        .with_colours(colours)
        .unwrap();
    let partitioned = flat.clone().partitioned(8, 2);
    for (position, product) in partitioned.products().iter().enumerate() {
        let before = flat.position(&product.id).unwrap();
        assert_eq!(partitioned.stored_vector(position), flat.stored_vector(before));
        assert_eq!(partitioned.colour(position), flat.colour(before));
        let first = partitioned.search(&embeddings[before], 1, &Filter::ANY)[0];
        assert!(first.score > 0.99, "{} finds itself", product.id);
    }
    // More lists than products: one per product at most.
    let tiny = Index::build(MODEL_SHA256, grouped_catalog(3).0, &grouped_catalog(3).1).unwrap();
    assert_eq!(tiny.partitioned(10, 20).lists(), Some((3, 3)));
}

#[test]
fn a_calibrated_margin_scans_fewer_lists_for_the_same_neighbours() {
    let (products, embeddings) = grouped_catalog(4000);
    let flat = Index::build(MODEL_SHA256, products.clone(), &embeddings).unwrap();
    let fixed = flat.clone().partitioned(GROUPS, 8);
    let (calibrated, margin) = flat.clone().partitioned(GROUPS, 1).with_calibrated_margin(0.97, 8);
    let margin = margin.expect("a partitioned index");
    assert_eq!((margin.most, margin.sampled), (8, 1000));
    assert!(margin.recall >= 0.97, "{margin:?}");
    // The groups are tight and far apart: each product's neighbours lie in its own list.
    assert!(margin.mean_lists < 2.0, "{margin:?}");
    // The same with pq codes, which in lists are offsets: each sampled product searches with
    // its vector, its centroid added back.
    let pq = Index::build_with(
        Codec::ProductQuantised { subspaces: 8 },
        MODEL_SHA256,
        products,
        &embeddings,
    )
    .unwrap();
    let (_, pq_margin) = pq.partitioned(GROUPS, 1).with_calibrated_margin(0.97, 8);
    let pq_margin = pq_margin.expect("a partitioned index");
    assert!(pq_margin.recall >= 0.97 && pq_margin.mean_lists < 2.0, "{pq_margin:?}");

    let queries: Vec<&Vec<f32>> = embeddings.iter().step_by(97).collect();
    let (mut found, mut scanned, mut scanned_fixed) = (0, 0, 0);
    for query in &queries {
        let expected = ids(&flat, query, 10, &Filter::ANY);
        found += ids(&calibrated, query, 10, &Filter::ANY)
            .iter()
            .filter(|id| expected.contains(id))
            .count();
        scanned += calibrated.scanned(query, 10, &Filter::ANY).1;
        scanned_fixed += fixed.scanned(query, 10, &Filter::ANY).1;
    }
    let recall = found as f64 / (queries.len() * 10) as f64;
    assert!(recall >= 0.95, "recall@10 {recall} against the full scan");
    assert!(
        scanned * 4 < scanned_fixed,
        "{scanned} products scanned, {scanned_fixed} with 8 lists"
    );
    assert_eq!(fixed.scanned(queries[0], 10, &Filter::ANY).0, 8);

    // A narrow filter still takes the lists it needs, past the most.
    let rare = Filter {
        categories: vec!["Rare".into()],
        ..Filter::default()
    };
    assert_eq!(calibrated.search(&embeddings[1], 10, &rare).len(), 10);
    assert!(calibrated.scanned(&embeddings[1], 10, &rare).0 > 1);

    // The margin and the most are part of the file.
    let read = Index::from_bytes(&calibrated.to_bytes()).unwrap();
    assert_eq!(read, calibrated);
    assert_ne!(read, flat.partitioned(GROUPS, 1));

    // Scattered products, whose neighbours lie in many lists: a share beyond what the most
    // lists hold has every search scan the most.
    let scattered = random_unit_vectors(&mut StdRng::seed_from_u64(4), 1000, DIMS);
    let (_, unreachable) = Index::build(MODEL_SHA256, grouped_catalog(1000).0, &scattered)
        .unwrap()
        .partitioned(20, 1)
        .with_calibrated_margin(1.0, 2);
    let unreachable = unreachable.unwrap();
    assert_eq!((unreachable.margin, unreachable.mean_lists), (2.0, 2.0));
    assert!(unreachable.recall < 1.0);
}

/// The bytes with the checksum made valid again from `header_len` on.
pub(super) fn resealed(mut bytes: Vec<u8>, header_len: usize) -> Vec<u8> {
    let checksum = Sha256::digest(&bytes[header_len..]);
    bytes[92..124].copy_from_slice(&checksum);
    bytes
}

#[test]
fn damaged_partitions_are_refused_and_version_3_files_still_read() {
    let (products, embeddings) = grouped_catalog(100);
    let flat = Index::build(MODEL_SHA256, products, &embeddings).unwrap();
    let bytes = flat.clone().partitioned(4, 2).to_bytes();
    let at = header_u64(&bytes, 140);
    let corrupt = |offset: usize, value: u32| {
        let damaged = with_header_field(&bytes, at + offset, &value.to_le_bytes());
        match Index::from_bytes(&damaged) {
            Err(IndexError::Corrupt(message)) => message,
            other => panic!("{other:?}"),
        }
    };
    // The most lists to probe, the margin and the flags end the section.
    let most_at = header_u64(&bytes, 148) - 12;
    for (offset, value) in [
        (0, 0),
        (0, 3),
        (4, 0),
        (4, 5),
        (8 + 4, 1),
        (8 + 3 * 4, 99),
        (most_at, 1),
        (most_at, 5),
        (most_at + 4, f32::NAN.to_bits()),
        (most_at + 4, (-0.1f32).to_bits()),
    ] {
        let message = corrupt(offset, value);
        assert!(
            message.contains("inverted lists do not partition"),
            "{offset}: {value}: {message}"
        );
    }
    assert!(corrupt(most_at + 8, 2).contains("flags 0x2 that this version does not know"));
    // Only product quantisation stores offsets from the centroids.
    assert!(corrupt(most_at + 8, 1).contains("which only product quantisation stores"));
    let short = with_header_field(&bytes, 148, &(header_u64(&bytes, 148) as u64 - 1).to_le_bytes());
    assert!(matches!(Index::from_bytes(&short), Err(IndexError::Corrupt(_))));

    // A version 3 file: a 140-byte header and no partitions section.
    let mut version_3 = super::with_json_metadata(&flat.to_bytes());
    version_3[8..12].copy_from_slice(&3u32.to_le_bytes());
    version_3[12..16].copy_from_slice(&140u32.to_le_bytes());
    let read = Index::from_bytes(&resealed(version_3, 140)).unwrap();
    assert_eq!(read, flat);
    assert_eq!(read.lists(), None);

    // A version 4 file: a 156-byte header and no blocks section.
    let partitioned = flat.partitioned(4, 2);
    let mut version_4 = super::with_json_metadata(&without_probe_margin(&partitioned.to_bytes()));
    version_4[8..12].copy_from_slice(&4u32.to_le_bytes());
    version_4[12..16].copy_from_slice(&156u32.to_le_bytes());
    assert_eq!(Index::from_bytes(&resealed(version_4, 156)).unwrap(), partitioned);

    // A version 8 file: its lists record no margin, and a search scans a fixed number.
    let version_8 = without_probe_margin(&partitioned.to_bytes());
    assert_eq!(Index::from_bytes(&version_8).unwrap(), partitioned);

    // A version 10 file: its lists have no flags, and its codes are never offsets.
    let version_10 = without_trailing_fields(&partitioned.to_bytes(), 4, 10);
    assert_eq!(Index::from_bytes(&version_10).unwrap(), partitioned);
}

/// `bytes` (a flat index of this version with partitions, its last section) as version 8
/// wrote it, without the most lists to probe, the margin and the flags.
fn without_probe_margin(bytes: &[u8]) -> Vec<u8> {
    without_trailing_fields(bytes, 12, 8)
}

/// `bytes` (a flat index with partitions, its last section) as `version` wrote it, whose
/// partitions section ended `len` bytes sooner.
fn without_trailing_fields(bytes: &[u8], len: usize, version: u32) -> Vec<u8> {
    let (at, section) = (header_u64(bytes, 140), header_u64(bytes, 148));
    assert_eq!(at + section, bytes.len(), "the partitions section comes last");
    let mut file = bytes[..bytes.len() - len].to_vec();
    file[8..12].copy_from_slice(&version.to_le_bytes());
    file[148..156].copy_from_slice(&((section - len) as u64).to_le_bytes());
    resealed(file, 172)
}

#[test]
fn a_colour_led_search_scans_every_list() {
    let (products, embeddings) = grouped_catalog(200);
    let colours = (0..200).map(|n| CompactColour::from_histogram(&one_bin(n))).collect();
    let index = Index::build(MODEL_SHA256, products, &embeddings)
        .unwrap()
        .with_colours(colours)
        .unwrap()
        .partitioned(GROUPS, 1);
    // sku-7 is the one product of this colour, and lies in another group than the query.
    let histogram = one_bin(7);
    let first = |weight| {
        let colour = ColourQuery {
            histogram: &histogram,
            weight,
        };
        let hits = index.search_with_colour(&embeddings[0], Some(colour), 1, &Filter::ANY);
        index.products()[hits[0].product].id.clone()
    };
    assert_eq!(first(1.0), "sku-7");
    assert_eq!(first(0.6), "sku-7");
    assert_eq!(first(0.0), "sku-0");
}
