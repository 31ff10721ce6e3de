//! The catalog index file: round trip, search quality, and refusal of damaged files.

use std::io::{Read, Write};

use otlens::catalog::Product;
use otlens::colour::{CompactColour, HISTOGRAM_LEN};
use otlens::index::{
    Codec, ColourQuery, Filter, Index, IndexError, FORMAT_VERSION, HEADER_LEN, METADATA_BYTES_PER_PRODUCT,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const MODEL_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn random_unit_vectors(rng: &mut StdRng, count: usize, dims: usize) -> Vec<Vec<f32>> {
    (0..count)
        .map(|_| {
            let vector: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            vector.into_iter().map(|v| v / norm).collect()
        })
        .collect()
}

fn products(count: usize) -> Vec<Product> {
    (0..count)
        .map(|n| Product {
            id: format!("sku-{n}"),
            title: format!("Product \"{n}\" — ünïcode"),
            price: (n % 2 == 0).then_some(39_000.0 + n as f64),
            currency: "KRW".into(),
            thumbnail: format!("thumbs/{n}.jpg"),
            ..Product::default()
        })
        .collect()
}

fn sample_index(count: usize, dims: usize) -> (Index, Vec<Vec<f32>>) {
    let mut rng = StdRng::seed_from_u64(7);
    let embeddings = random_unit_vectors(&mut rng, count, dims);
    (
        Index::build(MODEL_SHA256, products(count), &embeddings).unwrap(),
        embeddings,
    )
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn round_trip_keeps_everything() {
    let (index, _) = sample_index(50, 64);
    let bytes = index.to_bytes();
    let read = Index::from_bytes(&bytes).unwrap();
    assert_eq!(read, index);
    assert_eq!(read.model_sha256(), MODEL_SHA256);
    assert_eq!(read.dims(), 64);
    assert_eq!(read.len(), 50);
    assert_eq!(read.products(), &products(50)[..]);
    assert_eq!(read.to_bytes(), bytes, "writing is deterministic");
    assert_eq!(&bytes[..8], b"OTLENSIX");
}

#[test]
fn index_size_is_header_metadata_and_one_byte_per_dimension() {
    let (index, _) = sample_index(100, 1280);
    let bytes = index.to_bytes();
    let (metadata, vectors) = (header_u64(&bytes, 68), header_u64(&bytes, 84));
    assert_eq!(vectors, 100 * (1280 + 4));
    assert_eq!(bytes.len(), HEADER_LEN + metadata + vectors);
}

#[test]
fn search_agrees_with_float_cosine_top_k() {
    let (count, dims, k) = (2000, 256, 10);
    let (index, embeddings) = sample_index(count, dims);
    let mut rng = StdRng::seed_from_u64(11);
    for query in random_unit_vectors(&mut rng, 20, dims) {
        let hits = index.search(&query, k, &Filter::ANY);
        assert_eq!(hits.len(), k);
        let mut exact: Vec<f32> = embeddings.iter().map(|e| cosine(&query, e)).collect();
        for hit in &hits {
            assert!(
                (hit.score - exact[hit.product]).abs() < 0.01,
                "score {hit:?} vs {}",
                exact[hit.product]
            );
        }
        assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score), "best first");
        // Quantisation may swap near-ties at the boundary, but never lets in a clearly worse product.
        exact.sort_by(|a, b| b.total_cmp(a));
        let kth_best = exact[k - 1];
        assert!(hits.iter().all(|hit| hit.score > kth_best - 0.02));
    }
}

#[test]
fn each_product_finds_itself_first_with_score_one() {
    let (index, embeddings) = sample_index(500, 128);
    for (product, embedding) in embeddings.iter().enumerate() {
        let hits = index.search(embedding, 3, &Filter::ANY);
        assert_eq!(hits[0].product, product);
        assert!((hits[0].score - 1.0).abs() < 1e-5, "{:?}", hits[0]);
    }
}

#[test]
fn search_scale_of_the_query_does_not_matter_and_k_clamps() {
    let (index, embeddings) = sample_index(30, 32);
    let scaled: Vec<f32> = embeddings[4].iter().map(|v| v * 17.0).collect();
    assert_eq!(
        index.search(&scaled, 5, &Filter::ANY),
        index.search(&embeddings[4], 5, &Filter::ANY)
    );
    assert_eq!(index.search(&embeddings[4], 1000, &Filter::ANY).len(), 30);
    assert!(index.search(&embeddings[4], 0, &Filter::ANY).is_empty());
    assert!(
        index.search(&[1.0; 31], 5, &Filter::ANY).is_empty(),
        "a query of the wrong length finds nothing"
    );
}

#[test]
fn build_refuses_inconsistent_input() {
    let good = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
    assert_eq!(
        Index::build(MODEL_SHA256, products(3), &good),
        Err(IndexError::CountMismatch {
            products: 3,
            embeddings: 2
        })
    );
    assert_eq!(
        Index::build(MODEL_SHA256, products(2), &[vec![1.0, 0.0], vec![1.0]]),
        Err(IndexError::DimsMismatch {
            product: 1,
            expected: 2,
            found: 1
        })
    );
    assert_eq!(
        Index::build(MODEL_SHA256, products(2), &[vec![1.0, 0.0], vec![f32::NAN, 1.0]]),
        Err(IndexError::NotFinite { product: 1 })
    );
    assert_eq!(Index::build(MODEL_SHA256, Vec::new(), &[]), Err(IndexError::Empty));
    assert_eq!(
        Index::build(MODEL_SHA256, products(1), &[vec![]]),
        Err(IndexError::NoDimensions)
    );
    assert!(matches!(
        Index::build("not-a-hash", products(2), &good),
        Err(IndexError::BadModelHash(_))
    ));
}

#[test]
fn a_changed_byte_is_a_checksum_mismatch() {
    let (index, _) = sample_index(10, 16);
    let bytes = index.to_bytes();
    for position in [HEADER_LEN, HEADER_LEN + 20, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x40;
        assert_eq!(
            Index::from_bytes(&damaged),
            Err(IndexError::ChecksumMismatch),
            "byte {position}"
        );
    }
}

#[test]
fn a_truncated_file_says_so() {
    let (index, _) = sample_index(10, 16);
    let bytes = index.to_bytes();
    let found = bytes.len() as u64 - 100;
    assert_eq!(
        Index::from_bytes(&bytes[..found as usize]),
        Err(IndexError::Truncated {
            expected: bytes.len() as u64,
            found
        })
    );
    assert!(matches!(
        Index::from_bytes(&bytes[..40]),
        Err(IndexError::Truncated { found: 40, .. })
    ));
}

/// A u64 field of an index header: 60/68 the metadata's offset/length, 76/84 the vectors'.
fn header_u64(bytes: &[u8], at: usize) -> usize {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
}

/// `bytes` (an index) with its metadata section replaced by `metadata`, the version set to
/// `version`, every later section moved by the difference and the checksum redone, as a writer
/// of that version would.
fn with_metadata(bytes: &[u8], version: u32, metadata: &[u8]) -> Vec<u8> {
    let (metadata_at, metadata_len) = (header_u64(bytes, 60), header_u64(bytes, 68));
    let mut file = bytes[..metadata_at].to_vec();
    file[8..12].copy_from_slice(&version.to_le_bytes());
    file.extend_from_slice(metadata);
    file.extend_from_slice(&bytes[metadata_at + metadata_len..]);
    file[68..76].copy_from_slice(&(metadata.len() as u64).to_le_bytes());
    // The vectors, colours, partitions and blocks sections all follow the metadata.
    for at in [76, 124, 140, 156] {
        let moved = header_u64(bytes, at) + metadata.len() - metadata_len;
        file[at..at + 8].copy_from_slice(&(moved as u64).to_le_bytes());
    }
    let checksum = Sha256::digest(&file[HEADER_LEN..]);
    file[92..124].copy_from_slice(&checksum);
    file
}

/// `bytes` (a flat index without colours) as a writer of `version` with these sections would write it.
fn with_sections(bytes: &[u8], version: u32, metadata: &[u8], vectors: &[u8]) -> Vec<u8> {
    let mut file = bytes[..HEADER_LEN].to_vec();
    file[8..12].copy_from_slice(&version.to_le_bytes());
    let vectors_at = HEADER_LEN + metadata.len();
    for (at, value) in [(68, metadata.len()), (76, vectors_at), (84, vectors.len())] {
        file[at..at + 8].copy_from_slice(&(value as u64).to_le_bytes());
    }
    file.extend_from_slice(metadata);
    file.extend_from_slice(vectors);
    let checksum = Sha256::digest(&file[HEADER_LEN..]);
    file[92..124].copy_from_slice(&checksum);
    file
}

/// `bytes` (an index of this version) with its metadata as versions 2 to 6 stored it, gzipped
/// JSON: what to relabel as an older version.
fn with_json_metadata(bytes: &[u8]) -> Vec<u8> {
    let products = Index::from_bytes(bytes).unwrap().products().to_vec();
    with_metadata(bytes, FORMAT_VERSION, &gzip(&serde_json::to_vec(&products).unwrap()))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn metadata_is_a_compressed_table_and_json_files_still_read() {
    let (index, _) = sample_index(200, 16);
    let bytes = index.to_bytes();
    let compressed = &bytes[header_u64(&bytes, 60)..][..header_u64(&bytes, 68)];
    let json = serde_json::to_vec(index.products()).unwrap();
    assert!(
        compressed.len() * 3 < json.len(),
        "{} compressed bytes for {} of JSON",
        compressed.len(),
        json.len()
    );
    // Catalogs built before the metadata became a table keep working: version 1 stored
    // plain JSON, versions 2 to 6 gzipped JSON.
    assert_eq!(Index::from_bytes(&with_metadata(&bytes, 1, &json)).unwrap(), index);
    assert_eq!(
        Index::from_bytes(&with_metadata(&bytes, 6, &gzip(&json))).unwrap(),
        index
    );
}

#[test]
fn every_field_survives_the_table() {
    let mut products = products(600);
    for (n, product) in products.iter_mut().enumerate() {
        product.brand = ["Hanul", "Mono Lab", ""][n % 3].into();
        product.category = format!("Category {}", n % 300);
        product.colour = if n % 7 == 0 { "Navy Blue" } else { "Black" }.into();
        product.url = format!("https://shop.example/p/{n}");
        product.sold_out = n % 5 == 0;
    }
    let embeddings = random_unit_vectors(&mut StdRng::seed_from_u64(8), products.len(), 8);
    let index = Index::build(MODEL_SHA256, products.clone(), &embeddings).unwrap();
    assert_eq!(Index::from_bytes(&index.to_bytes()).unwrap().products(), &products[..]);
}

#[test]
fn a_damaged_table_is_refused_without_a_panic() {
    let (index, _) = sample_index(5, 8);
    let bytes = index.to_bytes();
    let compressed = &bytes[header_u64(&bytes, 60)..][..header_u64(&bytes, 68)];
    let mut table = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .read_to_end(&mut table)
        .unwrap();
    let read = |table: &[u8]| Index::from_bytes(&with_metadata(&bytes, FORMAT_VERSION, &gzip(table)));
    assert_eq!(read(&table).unwrap(), index);
    for damaged in [&table[..table.len() - 1], &[&table[..], &[0]].concat()[..]] {
        let error = read(damaged).unwrap_err();
        assert!(
            matches!(&error, IndexError::Corrupt(m) if m.contains("metadata")),
            "{error}"
        );
    }
    // Any byte set to any of these values: a clear error or, where the value was harmless,
    // a readable index; never a panic.
    for at in 0..table.len() {
        for value in [0, 1, 2, 0x7f, 0x80, 0xff] {
            let mut damaged = table.clone();
            damaged[at] = value;
            if let Err(error) = read(&damaged) {
                assert!(matches!(error, IndexError::Corrupt(_)), "byte {at} = {value}: {error}");
            }
        }
    }
}

#[test]
fn metadata_that_inflates_without_bound_is_refused() {
    let (index, _) = sample_index(2, 8);
    let bytes = index.to_bytes();
    let bomb = gzip(&vec![b' '; 2 * METADATA_BYTES_PER_PRODUCT as usize + 1]);
    let error = Index::from_bytes(&with_metadata(&bytes, FORMAT_VERSION, &bomb)).unwrap_err();
    assert!(
        matches!(&error, IndexError::Corrupt(message) if message.contains("inflates beyond")),
        "{error}"
    );
    let garbled = Index::from_bytes(&with_metadata(&bytes, FORMAT_VERSION, b"not gzip")).unwrap_err();
    assert!(
        matches!(&garbled, IndexError::Corrupt(message) if message.contains("unreadable product metadata")),
        "{garbled}"
    );
}

#[test]
fn a_future_version_is_refused_by_number() {
    let (index, _) = sample_index(3, 8);
    let mut bytes = index.to_bytes();
    let future = FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&future.to_le_bytes());
    let error = Index::from_bytes(&bytes).unwrap_err();
    assert_eq!(
        error,
        IndexError::UnsupportedVersion {
            found: future,
            supported: FORMAT_VERSION
        }
    );
    assert!(error.to_string().contains(&format!("version {future}")), "{error}");
    // Even a newer file cut short is reported as newer: its header layout may differ.
    assert!(matches!(
        Index::from_bytes(&bytes[..12]),
        Err(IndexError::UnsupportedVersion { found, .. }) if found == future
    ));
}

#[test]
fn other_files_are_not_indexes() {
    for other in [
        &b"\x89PNG\r\n\x1a\n0000000000000"[..],
        b"{\"format\":1}",
        b"OTLENSIY",
        b"x",
    ] {
        assert_eq!(Index::from_bytes(other), Err(IndexError::BadMagic));
    }
    assert_eq!(
        Index::from_bytes(b""),
        Err(IndexError::Truncated {
            expected: HEADER_LEN as u64,
            found: 0
        })
    );
}

#[test]
fn every_prefix_of_a_valid_file_is_refused_without_panicking() {
    let (index, _) = sample_index(4, 8);
    let bytes = index.to_bytes();
    for len in 0..bytes.len() {
        assert!(
            matches!(Index::from_bytes(&bytes[..len]), Err(IndexError::Truncated { .. })),
            "prefix of {len} bytes"
        );
    }
}

/// A header field rewritten, with the checksum made valid again so that the field itself is checked.
fn with_header_field(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut edited = bytes.to_vec();
    edited[at..at + value.len()].copy_from_slice(value);
    let checksum = Sha256::digest(&edited[HEADER_LEN..]);
    edited[92..124].copy_from_slice(&checksum);
    edited
}

#[test]
fn hostile_headers_are_refused_without_allocating() {
    let (index, _) = sample_index(4, 8);
    let index = index.with_colours(vec![CompactColour::default(); 4]).unwrap();
    let bytes = index.to_bytes();
    let hostile = [
        (12, u32::MAX.to_le_bytes().to_vec()),            // header length beyond the file
        (12, 10u32.to_le_bytes().to_vec()),               // header length inside the fixed header
        (20, u32::MAX.to_le_bytes().to_vec()),            // dims that would need 16 GiB
        (24, u32::MAX.to_le_bytes().to_vec()),            // product count that would need 16 GiB
        (20, 0u32.to_le_bytes().to_vec()),                // zero dims
        (60, u64::MAX.to_le_bytes().to_vec()),            // metadata offset overflowing
        (68, u64::MAX.to_le_bytes().to_vec()),            // metadata length overflowing
        (84, (1u64 << 40).to_le_bytes().to_vec()),        // vectors section of 1 TiB
        (60, 0u64.to_le_bytes().to_vec()),                // metadata overlapping the header
        (76, (HEADER_LEN as u64).to_le_bytes().to_vec()), // vectors overlapping the metadata
        (132, u64::MAX.to_le_bytes().to_vec()),           // colours length overflowing
        (124, 0u64.to_le_bytes().to_vec()),               // colours overlapping the header
    ];
    for (at, value) in hostile {
        let result = Index::from_bytes(&with_header_field(&bytes, at, &value));
        assert!(
            matches!(result, Err(IndexError::Corrupt(_) | IndexError::Truncated { .. })),
            "field at {at}: {result:?}"
        );
    }
}

#[test]
fn metadata_that_disagrees_with_the_header_is_corrupt() {
    let (index, _) = sample_index(2, 4);
    let bytes = index.to_bytes();
    // Claim 3 products while the metadata lists 2 (and the vectors section fits 2).
    let result = Index::from_bytes(&with_header_field(&bytes, 24, &3u32.to_le_bytes()));
    assert!(matches!(result, Err(IndexError::Corrupt(_))), "{result:?}");
}

#[test]
fn errors_read_well() {
    let message = IndexError::Truncated {
        expected: 1000,
        found: 10,
    }
    .to_string();
    assert!(
        message.contains("incomplete") && message.contains("10 of 1000 bytes"),
        "{message}"
    );
    let error: otlens::Error = IndexError::ChecksumMismatch.into();
    assert!(error.to_string().contains("damaged"));
}

mod codecs;
mod filters;
mod palette;
mod partitions;
mod ranged;

/// A colour histogram with all its weight in one bin.
fn one_bin(bin: usize) -> Vec<f32> {
    let mut histogram = vec![0.0; HISTOGRAM_LEN];
    histogram[bin] = 1.0;
    histogram
}

#[test]
fn colours_are_stored_and_blend_into_the_ranking() {
    let (index, embeddings) = sample_index(20, 16);
    let (red, blue) = (one_bin(10), one_bin(200));
    let colours = (0..20)
        .map(|product| CompactColour::from_histogram(if product == 3 { &red } else { &blue }))
        .collect();
    let index = index.with_colours(colours).unwrap();
    let bytes = index.to_bytes();
    let read = Index::from_bytes(&bytes).unwrap();
    assert!(read.has_colours());
    assert_eq!(read, index);

    let query = &embeddings[0];
    let by = |weight| {
        let colour = ColourQuery {
            histogram: &red,
            weight,
        };
        read.search_with_colour(query, Some(colour), 1, &Filter::ANY)[0].product
    };
    assert_eq!(by(0.0), 0, "shape only: the product itself");
    assert_eq!(by(1.0), 3, "colour only: the one red product");
    assert_eq!(read.similar_with_colour(3, 1.0, 1, &Filter::ANY).len(), 1);

    // A colour word naming a bin beyond the histogram is damage, not a panic.
    // The colours follow the palette's size (0: none).
    let colours_at = header_u64(&bytes, 124) + 4;
    let damaged = with_header_field(&bytes, colours_at, &0xffffu16.to_le_bytes());
    assert!(matches!(Index::from_bytes(&damaged), Err(IndexError::Corrupt(_))));
    let short = with_header_field(&bytes, 132, &(header_u64(&bytes, 132) as u64 - 2).to_le_bytes());
    assert!(Index::from_bytes(&short).is_err());
    assert!(matches!(
        sample_index(2, 4).0.with_colours(Vec::new()),
        Err(IndexError::ColourCountMismatch { .. })
    ));
}

/// A photo search ranks as `search_with_colour` does and names the photo's colour from the
/// same pass: the name the products nearest in colour carry, whatever the filter.
#[test]
fn a_photo_search_names_its_colour_in_the_catalogs_words() {
    let mut rng = StdRng::seed_from_u64(11);
    let embeddings = random_unit_vectors(&mut rng, 30, 16);
    let (red, blue) = (one_bin(10), one_bin(200));
    let mut catalog = products(30);
    for (n, product) in catalog.iter_mut().enumerate() {
        // Every third product is red; one red product has no colour name and cannot vote.
        product.colour = match n {
            3 => String::new(),
            _ if n % 3 == 0 => "red".into(),
            _ => "blue".into(),
        };
    }
    let colours: Vec<CompactColour> = (0..30)
        .map(|n| CompactColour::from_histogram(if n % 3 == 0 { &red } else { &blue }))
        .collect();
    for codec in [Codec::Int8, Codec::Binary] {
        let index = Index::build_with(codec, MODEL_SHA256, catalog.clone(), &embeddings)
            .unwrap()
            .with_colours(colours.clone())
            .unwrap();
        let blue_only = Filter {
            colours: vec!["blue".into()],
            ..Filter::ANY
        };
        for filter in [&Filter::ANY, &blue_only] {
            for weight in [0.0, 0.5, 1.0] {
                let colour = || ColourQuery {
                    histogram: &red,
                    weight,
                };
                // A blue product's shape with a red photo: the name follows the colour.
                let (hits, name) = index.search_photo(&embeddings[4], colour(), 5, filter);
                assert_eq!(name, Some("red"), "{codec:?}, weight {weight}");
                assert_eq!(
                    hits,
                    index.search_with_colour(&embeddings[4], Some(colour()), 5, filter)
                );
                assert_eq!(hits.len(), 5);
            }
        }
        let (_, name) = index.search_photo(
            &embeddings[4],
            ColourQuery {
                histogram: &blue,
                weight: 0.0,
            },
            5,
            &Filter::ANY,
        );
        assert_eq!(name, Some("blue"));
    }
    // Without colours in the index: the same results, and no name.
    let plain = Index::build(MODEL_SHA256, catalog, &embeddings).unwrap();
    let colour = ColourQuery {
        histogram: &red,
        weight: 0.5,
    };
    let (hits, name) = plain.search_photo(&embeddings[4], colour, 3, &Filter::ANY);
    assert_eq!(name, None);
    assert_eq!(hits, plain.search(&embeddings[4], 3, &Filter::ANY));
}
