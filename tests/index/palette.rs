//! Colours stored as words of a palette of the catalog's colours: 2 bytes a product rather
//! than 24, in whole and ranged catalogs, ranking and naming as the products' own colours do
//! when the palette holds them.

use otlens::colour::CompactColour;
use otlens::index::{ColourQuery, Filter, Index, IndexError};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::partitions::{grouped_catalog, resealed, GROUPS};
use super::{header_u64, one_bin, products, random_unit_vectors, with_header_field, MODEL_SHA256};

const FAMILIES: usize = 12;

/// The colour of the product numbered `n`: one of [`FAMILIES`] single-bin histograms.
fn family(n: usize) -> Vec<f32> {
    one_bin((n % FAMILIES) * 23)
}

/// `index` with each product's own colour, named after its family.
fn coloured(index: Index) -> Index {
    let colours = (0..index.len())
        .map(|n| CompactColour::from_histogram(&family(n)))
        .collect();
    index.with_colours(colours).unwrap()
}

fn named(mut catalog: Vec<otlens::catalog::Product>) -> Vec<otlens::catalog::Product> {
    for (n, product) in catalog.iter_mut().enumerate() {
        product.colour = format!("colour {}", n % FAMILIES);
    }
    catalog
}

#[test]
fn a_palette_stores_two_bytes_a_product_and_ranks_as_the_own_colours_do() {
    let embeddings = random_unit_vectors(&mut StdRng::seed_from_u64(21), 600, 16);
    let own = coloured(Index::build(MODEL_SHA256, named(products(600)), &embeddings).unwrap());
    let coded = own.clone().with_colour_palette(16);
    assert_eq!((own.colour_palette(), coded.colour_palette()), (None, Some(16)));
    let bytes = coded.to_bytes();
    assert_eq!(own.to_bytes().len() - bytes.len(), 600 * (24 - 2) - 16 * 24);
    assert_eq!(Index::from_bytes(&bytes).unwrap(), coded);

    for n in 0..FAMILIES {
        let histogram = family(n);
        for weight in [0.0, 0.5, 1.0] {
            let query = ColourQuery {
                histogram: &histogram,
                weight,
            };
            let shape = &embeddings[n * 7];
            let (hits, name) = coded.search_photo(shape, query, 10, &Filter::ANY);
            assert_eq!(hits, own.search_photo(shape, query, 10, &Filter::ANY).0);
            assert_eq!(hits, own.search_with_colour(shape, Some(query), 10, &Filter::ANY));
            assert_eq!(name, Some(format!("colour {n}").as_str()));
        }
        assert_eq!(coded.colour(n), own.colour(n));
        assert_eq!(
            coded.similar_with_colour(n, 1.0, 5, &Filter::ANY),
            own.similar_with_colour(n, 1.0, 5, &Filter::ANY)
        );
    }
}

#[test]
fn a_ranged_catalog_fetches_two_byte_colours_with_its_rows() {
    let (catalog, embeddings) = grouped_catalog(2000);
    let own = coloured(Index::build(MODEL_SHA256, named(catalog), &embeddings).unwrap()).partitioned(GROUPS, 3);
    let coded = own.clone().with_colour_palette(FAMILIES);
    let (own_head, own_lists) = own.to_ranged_bytes().unwrap();
    let (head_bytes, lists_file) = coded.to_ranged_bytes().unwrap();
    // The head gains the palette, and each product's colour in the lists file shrinks.
    assert_eq!(head_bytes.len() - own_head.len(), 4 + FAMILIES * 24);
    assert_eq!(own_lists.len() - lists_file.len(), 2000 * (24 - 2));

    let mut head = Index::from_bytes(&head_bytes).unwrap();
    assert_eq!((head.has_colours(), head.colour_palette()), (true, Some(FAMILIES)));
    assert_eq!(head.colour(0), None, "not loaded yet");
    for list in 0..GROUPS {
        let range = head.block_range(list).unwrap();
        head.load_block(list, &lists_file[range.start as usize..range.end as usize])
            .unwrap();
    }
    for n in (0..2000).step_by(97) {
        let histogram = family(n + 1);
        let query = ColourQuery {
            histogram: &histogram,
            weight: 0.3,
        };
        let (hits, name) = head.search_photo(&embeddings[n], query, 10, &Filter::ANY);
        assert_eq!(
            (hits, name),
            coded.search_photo(&embeddings[n], query, 10, &Filter::ANY)
        );
        assert_eq!(head.colour(n), own.colour(n));
    }
}

#[test]
fn a_damaged_palette_is_refused_and_version_9_colours_still_read() {
    let embeddings = random_unit_vectors(&mut StdRng::seed_from_u64(22), 100, 8);
    let own = coloured(Index::build(MODEL_SHA256, products(100), &embeddings).unwrap());
    let coded = own.clone().with_colour_palette(FAMILIES);
    let bytes = coded.to_bytes();
    let colours_at = header_u64(&bytes, 124);
    let corrupt = |at: usize, value: &[u8]| match Index::from_bytes(&with_header_field(&bytes, at, value)) {
        Err(IndexError::Corrupt(message)) => message,
        other => panic!("{other:?}"),
    };
    let codes_at = colours_at + 4 + FAMILIES * 24;
    assert!(corrupt(codes_at + 2 * 7, &(FAMILIES as u16).to_le_bytes())
        .contains("product 7 has colour 12 of a palette of 12"));
    assert!(corrupt(colours_at, &70_000u32.to_le_bytes()).contains("palette has 70000 words"));
    assert!(corrupt(colours_at, &(FAMILIES as u32 + 1).to_le_bytes()).contains("colours section"));
    assert!(corrupt(colours_at + 4, &0xffffu16.to_le_bytes()).contains("palette word 0 has an invalid colour"));

    // Up to version 9 the section held each product's own colour, without a palette size.
    let own_bytes = own.to_bytes();
    let (at, len) = (header_u64(&own_bytes, 124), header_u64(&own_bytes, 132));
    assert_eq!(at + len, own_bytes.len(), "the colours section comes last");
    let mut version_9 = own_bytes[..at].to_vec();
    version_9.extend_from_slice(&own_bytes[at + 4..]);
    version_9[8..12].copy_from_slice(&9u32.to_le_bytes());
    version_9[132..140].copy_from_slice(&(len as u64 - 4).to_le_bytes());
    assert_eq!(Index::from_bytes(&resealed(version_9, 172)).unwrap(), own);
}
