//! Any bytes a shopper drops: decode, orient, crop, resize, normalise. Must return a tensor
//! or a typed error, never panic, hang or exceed the allocation limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otlens::preprocess::{preprocess, DecodeLimits, InputSpec};

fuzz_target!(|bytes: &[u8]| {
    // Smaller than the product's limits so that each run stays fast; the checks are the same code.
    let limits = DecodeLimits {
        max_bytes: 1 << 20,
        max_side: 2_048,
        max_pixels: 2_000_000,
        max_alloc: 64 << 20,
    };
    let spec = InputSpec {
        size: 32,
        ..InputSpec::default()
    };
    if let Ok(tensor) = preprocess(bytes, &spec, &limits) {
        assert_eq!(tensor.len(), 3 * 32 * 32);
    }
});
