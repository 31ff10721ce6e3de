//! Any bytes served as an index file (or a ranged catalog's head): parse, then search it. Must return a typed error or a
//! usable index, never panic or allocate more than the file implies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otlens::index::{reseal, Filter, Index};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    // A valid checksum lets mutations reach the sections behind it, not only the header.
    reseal(&mut bytes);
    if let Ok(index) = Index::from_bytes(&bytes) {
        let query = vec![1.0 / (index.dims() as f32).sqrt(); index.dims()];
        let hits = index.search(&query, 5, &Filter::ANY);
        assert!(hits.len() <= index.len().min(5));
        // Facets and filters read the metadata columns a mutation may have made odd.
        let facets = index.facets();
        let filter = Filter {
            categories: facets
                .categories
                .iter()
                .take(1)
                .map(|facet| facet.value.clone())
                .collect(),
            max_price: facets.price.map(|price| price.max),
            in_stock: true,
            ..Filter::ANY
        };
        assert!(index.similar(0, 5, &filter).len() <= 5);
        // A ranged head: its lists and pages are not loaded, and no bytes are a whole lists file
        // or an empty page.
        if index.is_ranged() {
            assert!(index.blocks_to_load(&query, None, 5, &filter, None).len() <= index.len());
            assert!(index.pages_to_load(&[0, index.len() - 1]).len() <= 2);
            let mut index = index;
            assert!(index.load_lists_file(&[]).is_err());
            assert!(index.load_page(0, &[]).is_err());
        }
    }
});
