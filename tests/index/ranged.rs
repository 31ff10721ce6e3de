//! Ranged catalogs: a head that loads first and a lists file whose blocks load as searches
//! reach them. The head with its lists loaded searches exactly as the whole index does.

use otlens::colour::CompactColour;
use otlens::index::{Codec, ColourQuery, Filter, Hit, Index, IndexError, PRODUCTS_PER_PAGE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::partitions::{grouped_catalog, resealed, GROUPS};
use super::{header_u64, one_bin, products, random_unit_vectors, MODEL_SHA256};

/// A partitioned catalog of 2,000 products in `codec`, with colours.
fn partitioned(codec: Codec) -> Index {
    let (products, embeddings) = grouped_catalog(2000);
    let colours = (0..2000)
        .map(|n| CompactColour::from_histogram(&one_bin(n % 290)))
        .collect();
    Index::build_with(codec, MODEL_SHA256, products, &embeddings)
        .unwrap()
        .with_colours(colours)
        .unwrap()
        .partitioned(GROUPS, 3)
}

/// `whole` split for Range requests: the head as read, with nothing loaded, and the lists file.
fn split(whole: &Index) -> (Index, Vec<u8>) {
    let (head_bytes, lists_file) = whole.to_ranged_bytes().unwrap();
    (Index::from_bytes(&head_bytes).unwrap(), lists_file)
}

/// Loads the lists a search for `query` needs from `lists_file`, as the widget does with
/// Range requests; returns how many it loaded.
fn load_needed(head: &mut Index, lists_file: &[u8], query: &[f32], k: usize, filter: &Filter) -> usize {
    let needed = head.lists_to_load(query, k, filter, None);
    for &list in &needed {
        let range = head.block_range(list).unwrap();
        head.load_list(list, &lists_file[range.start as usize..range.end as usize])
            .unwrap();
    }
    needed.len()
}

fn ids(index: &Index, hits: &[Hit]) -> Vec<String> {
    hits.iter()
        .map(|hit| index.products()[hit.product].id.clone())
        .collect()
}

#[test]
fn a_head_with_the_lists_it_needs_finds_what_the_whole_index_finds() {
    let (_, embeddings) = grouped_catalog(2000);
    let rare = Filter {
        categories: vec!["Rare".into()],
        ..Filter::default()
    };
    for codec in [Codec::Int8, Codec::Binary, Codec::ProductQuantised { subspaces: 8 }] {
        let whole = partitioned(codec);
        let (head_bytes, lists_file) = whole.to_ranged_bytes().unwrap();
        // The rows, colours and pages of details fill the lists file, in that order.
        let mut head = Index::from_bytes(&head_bytes).unwrap();
        let pages = whole.len().div_ceil(PRODUCTS_PER_PAGE);
        assert_eq!(
            head.page_range(0).unwrap().start,
            head.block_range(GROUPS - 1).unwrap().end
        );
        assert_eq!(head.page_range(pages - 1).unwrap().end, lists_file.len() as u64);
        assert_eq!(head.page_range(pages), None);
        assert!(head.is_ranged() && !whole.is_ranged());
        assert_eq!(head.facets(), whole.facets());
        assert!(
            head.search(&embeddings[0], 10, &Filter::ANY).is_empty(),
            "nothing loaded, nothing found"
        );

        let mut loaded = 0;
        for (n, query) in embeddings.iter().enumerate().step_by(131) {
            let filter = if n % 2 == 0 { &Filter::ANY } else { &rare };
            loaded += load_needed(&mut head, &lists_file, query, 10, filter);
            assert!(head.lists_to_load(query, 10, filter, None).is_empty());
            assert_eq!(
                ids(&head, &head.search(query, 10, filter)),
                ids(&whole, &whole.search(query, 10, filter)),
                "{codec}: query {n}"
            );
            let histogram = one_bin(n % 290);
            let colour = Some(ColourQuery {
                histogram: &histogram,
                weight: 0.3,
            });
            assert_eq!(
                head.search_with_colour(query, colour, 10, filter),
                whole.search_with_colour(query, colour, 10, filter),
                "{codec}: query {n} with colour"
            );
        }
        assert!(
            loaded < GROUPS,
            "{codec}: the queries loaded {loaded} of {GROUPS} lists"
        );
    }
}

#[test]
fn more_like_this_needs_the_products_own_list_first() {
    let whole = partitioned(Codec::Int8);
    let (mut head, lists_file) = split(&whole);
    let product = head.position("sku-77").unwrap();
    assert!(!head.is_loaded(product));
    assert_eq!(head.stored_vector(product), None);
    assert_eq!(head.colour(product), None);
    assert!(head.similar(product, 5, &Filter::ANY).is_empty());

    let own = head.list_of(product).unwrap();
    let range = head.block_range(own).unwrap();
    head.load_list(own, &lists_file[range.start as usize..range.end as usize])
        .unwrap();
    assert_eq!(head.stored_vector(product), whole.stored_vector(product));
    assert_eq!(head.colour(product), whole.colour(product));
    let stored = head.stored_vector(product).unwrap();
    for list in head.lists_to_load(&stored, 5, &Filter::ANY, Some(product)) {
        let range = head.block_range(list).unwrap();
        head.load_list(list, &lists_file[range.start as usize..range.end as usize])
            .unwrap();
    }
    assert_eq!(
        head.similar(product, 5, &Filter::ANY),
        whole.similar(product, 5, &Filter::ANY)
    );
}

#[test]
fn the_whole_lists_file_loads_every_list_and_damage_is_refused() {
    let whole = partitioned(Codec::ProductQuantised { subspaces: 8 });
    let (mut head, lists_file) = split(&whole);

    let range = head.block_range(5).unwrap();
    let mut block = lists_file[range.start as usize..range.end as usize].to_vec();
    block[3] ^= 1;
    assert_eq!(head.load_list(5, &block), Err(IndexError::BlockMismatch { list: 5 }));
    assert_eq!(
        head.load_list(5, &block[..block.len() - 1]),
        Err(IndexError::BlockMismatch { list: 5 })
    );
    let other = head.block_range(6).unwrap();
    assert_eq!(
        head.load_list(5, &lists_file[other.start as usize..other.end as usize]),
        Err(IndexError::BlockMismatch { list: 5 }),
        "another list's block"
    );
    assert_eq!(
        head.load_list(GROUPS, &block),
        Err(IndexError::NoSuchList {
            list: GROUPS,
            lists: GROUPS
        })
    );
    assert_eq!(head.block_range(GROUPS), None);
    let size = lists_file.len() as u64;
    assert_eq!(
        head.load_lists_file(&lists_file[..lists_file.len() - 1]),
        Err(IndexError::ListsFileSize {
            expected: size,
            found: size - 1
        })
    );
    let mut longer = lists_file.clone();
    longer.push(0);
    assert_eq!(
        head.load_lists_file(&longer),
        Err(IndexError::ListsFileSize {
            expected: size,
            found: size + 1
        })
    );
    let last_page = head.page_range(head.len().div_ceil(PRODUCTS_PER_PAGE) - 1).unwrap();
    let mut damaged = lists_file.clone();
    damaged[last_page.start as usize] ^= 1;
    assert!(matches!(
        head.load_lists_file(&damaged),
        Err(IndexError::PageMismatch { .. })
    ));

    head.load_lists_file(&lists_file).unwrap();
    assert!((0..head.len()).all(|product| head.is_loaded(product)));
    let query = whole.stored_vector(0).unwrap();
    assert!(head.lists_to_load(&query, 10, &Filter::ANY, None).is_empty());
    assert_eq!(
        head.search(&query, 10, &Filter::ANY),
        whole.search(&query, 10, &Filter::ANY)
    );
    assert_eq!(whole.clone().load_lists_file(&lists_file), Err(IndexError::NotRanged));
}

#[test]
fn only_a_partitioned_index_splits_and_a_damaged_blocks_section_is_corrupt() {
    let (products, embeddings) = grouped_catalog(100);
    let flat = Index::build(MODEL_SHA256, products, &embeddings).unwrap();
    assert_eq!(flat.to_ranged_bytes(), Err(IndexError::NotPartitioned));

    let (head, _) = flat.partitioned(4, 2).to_ranged_bytes().unwrap();
    let blocks_at = header_u64(&head, 156);
    let damaged = |offset: usize, value: &[u8]| {
        let mut bytes = head.clone();
        bytes[blocks_at + offset..blocks_at + offset + value.len()].copy_from_slice(value);
        match Index::from_bytes(&resealed(bytes, otlens::index::HEADER_LEN)) {
            Err(IndexError::Corrupt(message)) => message,
            other => panic!("{offset}: {other:?}"),
        }
    };
    // Unknown flags, a wrong list count, a gap before the second block, a wrong length, a
    // wrong page size, a wrong page count, a gap before the first page.
    let pages_at = 8 + 4 * 48;
    for (offset, value) in [
        (0, 4u64),
        (4, 3),
        (8 + 48, 1),
        (8 + 8, 1),
        (pages_at, 0),
        (pages_at + 4, 2),
        (pages_at + 8, 1),
    ] {
        let width = if offset < 8 || offset == pages_at || offset == pages_at + 4 {
            4
        } else {
            8
        };
        let message = damaged(offset, &value.to_le_bytes()[..width]);
        assert!(message.contains("blocks"), "{offset}: {message}");
    }
}

#[test]
fn a_head_holds_what_filters_need_and_results_load_their_details_by_page() {
    let whole = partitioned(Codec::Int8);
    let (mut head, lists_file) = split(&whole);
    let product = head.position("sku-77").unwrap();
    let (in_head, in_whole) = (&head.products()[product], &whole.products()[product]);
    assert_eq!((&in_head.id, &in_head.category), (&in_whole.id, &in_whole.category));
    assert!(in_head.title.is_empty() && in_head.url.is_empty() && in_head.thumbnail.is_empty());
    assert!(!head.has_details(product) && whole.has_details(product));
    assert!(
        whole.pages_to_load(&[product]).is_empty(),
        "a whole index has every detail"
    );

    let query = whole.stored_vector(product).unwrap();
    load_needed(&mut head, &lists_file, &query, 12, &Filter::ANY);
    let hits: Vec<usize> = head
        .search(&query, 12, &Filter::ANY)
        .iter()
        .map(|hit| hit.product)
        .collect();
    let pages = head.pages_to_load(&hits);
    assert!(!pages.is_empty() && pages.len() <= hits.len());
    assert!(
        pages.windows(2).all(|pair| pair[0] < pair[1]),
        "each page once, in order"
    );
    let page_of = |head: &Index, page: usize| {
        let range = head.page_range(page).unwrap();
        lists_file[range.start as usize..range.end as usize].to_vec()
    };
    let mut damaged = page_of(&head, pages[0]);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert_eq!(
        head.load_page(pages[0], &damaged),
        Err(IndexError::PageMismatch { page: pages[0] })
    );
    let count = whole.len().div_ceil(PRODUCTS_PER_PAGE);
    assert_eq!(
        head.load_page(count, &damaged),
        Err(IndexError::NoSuchPage {
            page: count,
            pages: count
        })
    );
    for page in pages {
        let bytes = page_of(&head, page);
        head.load_page(page, &bytes).unwrap();
    }
    assert!(head.pages_to_load(&hits).is_empty());
    for &hit in &hits {
        assert!(head.has_details(hit));
        assert_eq!(head.products()[hit], whole.products()[hit]);
    }
    assert!(
        (0..head.len()).any(|product| !head.has_details(product)),
        "only the pages asked for"
    );

    head.load_lists_file(&lists_file).unwrap();
    assert_eq!(head.products(), whole.products());
}

/// Products in 8 families of 8 styles each (a family: tops, say; a style: its cut), one list
/// per style. A query for a style probes its family's lists, which the build lays out side by
/// side in the lists file, so that they load in a run or two rather than eight requests.
#[test]
fn the_lists_one_query_probes_lie_side_by_side() {
    const FAMILIES: usize = 8;
    const STYLES: usize = 8;
    const DIMS: usize = 32;
    let mut rng = StdRng::seed_from_u64(5);
    let family_centres = random_unit_vectors(&mut rng, FAMILIES, DIMS);
    let style_centres: Vec<Vec<f32>> = (0..FAMILIES * STYLES)
        .map(|n| {
            let family = &family_centres[n % FAMILIES];
            let offset = random_unit_vectors(&mut rng, 1, DIMS).remove(0);
            family.iter().zip(&offset).map(|(f, o)| f + 0.3 * o).collect()
        })
        .collect();
    let embeddings: Vec<Vec<f32>> = (0..4096)
        .map(|n| {
            style_centres[n % style_centres.len()]
                .iter()
                .map(|value| value + rng.random_range(-0.02..0.02))
                .collect()
        })
        .collect();
    let whole = Index::build(MODEL_SHA256, products(embeddings.len()), &embeddings)
        .unwrap()
        .partitioned(FAMILIES * STYLES, STYLES);
    let (head, _) = split(&whole);

    let queries: Vec<&Vec<f32>> = embeddings.iter().step_by(37).collect();
    let runs: usize = queries
        .iter()
        .map(|query| {
            let mut lists = head.lists_to_load(query, 10, &Filter::ANY, None);
            assert_eq!(lists.len(), STYLES);
            lists.sort_unstable();
            1 + lists.windows(2).filter(|pair| pair[1] != pair[0] + 1).count()
        })
        .sum();
    let per_query = runs as f64 / queries.len() as f64;
    assert!(per_query <= 2.0, "the probed lists form {per_query} runs per query");
}
