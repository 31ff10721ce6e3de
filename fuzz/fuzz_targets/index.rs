//! Any bytes served as an index file: parse, then search it. Must return a typed error or a
//! usable index, never panic or allocate more than the file implies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otlens::index::Index;
use sha2::{Digest, Sha256};

/// Where the header keeps its length and the body's sha256 (see `src/index/format.rs`).
const HEADER_LEN_AT: usize = 12;
const CHECKSUM_AT: usize = 92;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    // Recompute the checksum so that mutations reach the sections behind it, not only the header.
    if bytes.len() >= CHECKSUM_AT + 32 {
        let header_len = u32::from_le_bytes(bytes[HEADER_LEN_AT..HEADER_LEN_AT + 4].try_into().unwrap()) as usize;
        if (CHECKSUM_AT + 32..=bytes.len()).contains(&header_len) {
            let checksum = Sha256::digest(&bytes[header_len..]);
            bytes[CHECKSUM_AT..CHECKSUM_AT + 32].copy_from_slice(&checksum);
        }
    }
    if let Ok(index) = Index::from_bytes(&bytes) {
        let query = vec![1.0 / (index.dims() as f32).sqrt(); index.dims()];
        let hits = index.search(&query, 5);
        assert!(hits.len() <= index.len().min(5));
    }
});
