//! Any bytes served as an index file: parse, then search it. Must return a typed error or a
//! usable index, never panic or allocate more than the file implies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otlens::index::{reseal, Index};

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    // A valid checksum lets mutations reach the sections behind it, not only the header.
    reseal(&mut bytes);
    if let Ok(index) = Index::from_bytes(&bytes) {
        let query = vec![1.0 / (index.dims() as f32).sqrt(); index.dims()];
        let hits = index.search(&query, 5);
        assert!(hits.len() <= index.len().min(5));
    }
});
