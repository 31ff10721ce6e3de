//! Any bytes served as a ranged catalog: a u32 (little-endian) length, a head of that length,
//! then its lists file. Load the blocks a search names round by round, as the widget does, then
//! the pages of its results, then the whole lists file, as a host without Range requests serves
//! it. Each must give a typed error or a usable index, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otlens::index::{reseal_blocks, Filter, Index};

fuzz_target!(|data: &[u8]| {
    let Some((head_len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let head_len = u32::from_le_bytes(*head_len) as usize;
    if head_len > rest.len() {
        return;
    }
    let (head, lists_file) = rest.split_at(head_len);
    let (mut head, mut lists_file) = (head.to_vec(), lists_file.to_vec());
    // Valid checksums let mutations reach the blocks behind them.
    reseal_blocks(&mut head, &mut lists_file);
    let Ok(mut index) = Index::from_bytes(&head) else {
        return;
    };
    if !index.is_ranged() {
        return;
    }
    let mut whole = index.clone();
    let part = |range: std::ops::Range<u64>| lists_file.get(range.start as usize..range.end as usize);
    let query = vec![1.0 / (index.dims() as f32).sqrt(); index.dims()];
    if index.load_needed(&lists_file, &query, None, 5, &Filter::ANY).is_err() {
        return;
    }
    let hits = index.search(&query, 5, &Filter::ANY);
    assert!(hits.len() <= index.len().min(5));
    let shown: Vec<usize> = hits.iter().map(|hit| hit.product).collect();
    for page in index.pages_to_load(&shown) {
        let range = index.page_range(page).expect("a page the head names");
        let Some(bytes) = part(range) else {
            return;
        };
        if index.load_page(page, bytes).is_err() {
            return;
        }
    }
    assert!(shown.iter().all(|&product| index.has_details(product)));
    if whole.load_lists_file(&lists_file).is_ok() {
        assert!(whole.blocks_to_load(&query, None, 5, &Filter::ANY, None).is_empty());
        assert!(whole.search(&query, 5, &Filter::ANY).len() <= 5);
        assert!(whole.similar(0, 5, &Filter::ANY).len() <= 5);
    }
});
