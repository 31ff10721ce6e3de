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

/// Loads the blocks a search for `query` (blending in `colour`) needs from `lists_file` (in two
/// rounds at most); returns how many of them are lists.
fn lists_loaded(
    head: &mut Index,
    lists_file: &[u8],
    query: &[f32],
    colour: Option<ColourQuery>,
    k: usize,
    filter: &Filter,
) -> usize {
    let lists = head.lists().unwrap().0;
    let rounds = head.load_needed(lists_file, query, colour, k, filter).unwrap();
    assert!(rounds.len() <= 2, "two rounds at most, not {rounds:?}");
    rounds.iter().flatten().filter(|&&block| block < lists).count()
}

fn load_blocks(head: &mut Index, lists_file: &[u8], blocks: &[usize]) {
    for &block in blocks {
        let range = head.block_range(block).unwrap();
        head.load_block(block, &lists_file[range.start as usize..range.end as usize])
            .unwrap();
    }
}

const REFINED: Codec = Codec::RefinedProductQuantised {
    subspaces: 4,
    refinement: 8,
};

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
    for codec in [
        Codec::Int8,
        Codec::Binary,
        Codec::ProductQuantised { subspaces: 8 },
        REFINED,
    ] {
        let whole = partitioned(codec);
        let (head_bytes, lists_file) = whole.to_ranged_bytes().unwrap();
        // The rows, colours and pages of details fill the lists file, in that order.
        let mut head = Index::from_bytes(&head_bytes).unwrap();
        let pages = whole.len().div_ceil(PRODUCTS_PER_PAGE);
        // Refined pq's refinement codes lie between the lists and the pages.
        let refinements = (lists_file.len() as u64 - head.block_range(GROUPS - 1).unwrap().end)
            - (head.page_range(pages - 1).unwrap().end - head.page_range(0).unwrap().start);
        assert_eq!(refinements, 2000 * if codec == REFINED { 8 } else { 0 });
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
            loaded += lists_loaded(&mut head, &lists_file, query, None, 10, filter);
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
            loaded += lists_loaded(&mut head, &lists_file, query, colour, 10, filter);
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
    for codec in [Codec::Int8, REFINED] {
        more_like_this_loads_its_own_list_first(codec);
    }
}

fn more_like_this_loads_its_own_list_first(codec: Codec) {
    let whole = partitioned(codec);
    let (mut head, lists_file) = split(&whole);
    let product = head.position("sku-77").unwrap();
    assert!(!head.is_loaded(product));
    assert_eq!(head.stored_vector(product), None);
    assert_eq!(head.colour(product), None);
    assert!(head.similar(product, 5, &Filter::ANY).is_empty());

    let own = head.list_of(product).unwrap();
    assert_eq!(head.blocks_to_load_similar(product, 0.0, 5, &Filter::ANY), [own]);
    load_blocks(&mut head, &lists_file, &[own]);
    assert_eq!(head.colour(product), whole.colour(product));
    if codec == REFINED {
        // Its refinement block next: without it, its stored vector lacks the refinement.
        assert_ne!(head.stored_vector(product), whole.stored_vector(product));
        let needed = head.blocks_to_load_similar(product, 0.0, 5, &Filter::ANY);
        assert!(matches!(needed[..], [block] if block >= GROUPS), "{needed:?}");
        load_blocks(&mut head, &lists_file, &needed);
    }
    assert_eq!(head.stored_vector(product), whole.stored_vector(product));
    for _ in 0..2 {
        let needed = head.blocks_to_load_similar(product, 0.0, 5, &Filter::ANY);
        load_blocks(&mut head, &lists_file, &needed);
    }
    assert!(head.blocks_to_load_similar(product, 0.0, 5, &Filter::ANY).is_empty());
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
    assert_eq!(head.load_block(5, &block), Err(IndexError::BlockMismatch { list: 5 }));
    assert_eq!(
        head.load_block(5, &block[..block.len() - 1]),
        Err(IndexError::BlockMismatch { list: 5 })
    );
    let other = head.block_range(6).unwrap();
    assert_eq!(
        head.load_block(5, &lists_file[other.start as usize..other.end as usize]),
        Err(IndexError::BlockMismatch { list: 5 }),
        "another list's block"
    );
    assert_eq!(
        head.load_block(GROUPS, &block),
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
    let query = whole.stored_vector(0).unwrap();
    let (mut fresh, _) = split(&whole);
    let first = fresh.blocks_to_load(&query, None, 10, &Filter::ANY, None)[0];
    assert_eq!(
        fresh.load_needed(&lists_file[..0], &query, None, 10, &Filter::ANY),
        Err(IndexError::BlockMismatch { list: first }),
        "a lists file without the blocks the search needs"
    );

    head.load_lists_file(&lists_file).unwrap();
    assert!((0..head.len()).all(|product| head.is_loaded(product)));
    assert!(head.blocks_to_load(&query, None, 10, &Filter::ANY, None).is_empty());
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
    // wrong page size, a wrong page count, a gap before the first page, a last page (of 4) whose
    // end lies past 2^64.
    let pages_at = 8 + 4 * 48;
    for (offset, value) in [
        (0, 4u64),
        (4, 3),
        (8 + 48, 1),
        (8 + 8, 1),
        (pages_at, 0),
        (pages_at + 4, 2),
        (pages_at + 8, 1),
        (pages_at + 8 + 3 * 48 + 8, u64::MAX),
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
    lists_loaded(&mut head, &lists_file, &query, None, 12, &Filter::ANY);
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

/// A refinement block is vouched for by its list's block: it loads only after it, only as
/// itself, and a damaged one is refused like a damaged list; the whole lists file loads it too.
#[test]
fn refinement_blocks_load_after_their_list_and_damage_is_refused() {
    let whole = partitioned(REFINED);
    let (mut head, lists_file) = split(&whole);
    let query = whole.stored_vector(0).unwrap();
    let lists = head.blocks_to_load(&query, None, 10, &Filter::ANY, None);
    assert!(lists.iter().all(|&block| block < GROUPS), "lists first: {lists:?}");
    let block_of = |head: &Index, block: usize| {
        let range = head.block_range(block).unwrap();
        lists_file[range.start as usize..range.end as usize].to_vec()
    };
    // The first refinement block holds the first products of list 0, which is not loaded.
    let bytes = block_of(&head, GROUPS);
    assert_eq!(
        head.load_block(GROUPS, &bytes),
        Err(IndexError::RefinementBeforeList { list: 0 })
    );
    load_blocks(&mut head, &lists_file, &lists);
    let refinements = head.blocks_to_load(&query, None, 10, &Filter::ANY, None);
    assert!(
        !refinements.is_empty() && refinements.iter().all(|&block| block >= GROUPS),
        "then refinements: {refinements:?}"
    );
    let mut damaged = block_of(&head, refinements[0]);
    damaged[0] ^= 1;
    assert_eq!(
        head.load_block(refinements[0], &damaged),
        Err(IndexError::BlockMismatch { list: refinements[0] })
    );
    load_blocks(&mut head, &lists_file, &refinements);
    assert_eq!(
        head.search(&query, 10, &Filter::ANY),
        whole.search(&query, 10, &Filter::ANY)
    );
    // Lists of 64 products or fewer make one refinement block each.
    let mut sizes = vec![0usize; GROUPS];
    (0..whole.len()).for_each(|product| sizes[whole.list_of(product).unwrap()] += 1);
    let refinement_blocks: usize = sizes.iter().map(|size| size.div_ceil(64)).sum();
    assert!(head.block_range(GROUPS + refinement_blocks - 1).is_some());
    assert_eq!(head.block_range(GROUPS + refinement_blocks), None);

    let (mut head, _) = split(&whole);
    head.load_lists_file(&lists_file).unwrap();
    assert!(head.blocks_to_load(&query, None, 10, &Filter::ANY, None).is_empty());
    assert_eq!(
        head.search(&query, 10, &Filter::ANY),
        whole.search(&query, 10, &Filter::ANY)
    );
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
            let mut lists = head.blocks_to_load(query, None, 10, &Filter::ANY, None);
            assert_eq!(lists.len(), STYLES);
            lists.sort_unstable();
            1 + lists.windows(2).filter(|pair| pair[1] != pair[0] + 1).count()
        })
        .sum();
    let per_query = runs as f64 / queries.len() as f64;
    assert!(per_query <= 2.0, "the probed lists form {per_query} runs per query");
}
