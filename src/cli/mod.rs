//! The companion binary's commands, one module each (native only).

pub mod bench_index;
pub mod build_index;
pub mod compile;
pub mod demo;
pub mod embed;
pub mod embedding_cache;
pub mod eval;
pub mod import;
pub mod serve;
pub mod train;
