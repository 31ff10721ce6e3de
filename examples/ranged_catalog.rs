//! A ranged catalog from vectors to results: build a small catalog in refined pq, split it into
//! the head and the lists file a static host serves, then search it as the widget does: the
//! head first, then round by round only the blocks the search names, as Range requests would
//! fetch them, then the pages of details its results need.
//!
//! `cargo run --release --example ranged_catalog [OUT_DIR]`. With OUT_DIR it also writes the
//! head and the lists file there as `head.otl` and `lists.otb`: `./build.sh fuzz ranged` seeds
//! its fuzzer with them, since 16 dimensions make a head of kilobytes, not the megabyte of a
//! real model's.

use std::{env, fs, path::PathBuf};

use otlens::catalog::Product;
use otlens::colour::{CompactColour, HISTOGRAM_LEN};
use otlens::index::{unit_length, Codec, Filter, Index};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PRODUCTS: usize = 300;
const DIMS: usize = 16;
const LISTS: usize = 6;
/// Any sha256 will do: it names the model the vectors came from.
const MODEL_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn main() -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let vectors: Vec<Vec<f32>> = (0..PRODUCTS)
        .map(|_| unit_length(&(0..DIMS).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f32>>()))
        .collect();
    let products = (0..PRODUCTS)
        .map(|n| Product {
            id: format!("p{n}"),
            title: format!("Product {n}"),
            brand: ["otlens", "Musinsa"][n % 2].into(),
            price: Some(10_000.0 + 1_000.0 * (n % 50) as f64),
            currency: "KRW".into(),
            category: ["Tshirts", "Dresses", "Jeans"][n % 3].into(),
            url: format!("https://shop.example/p{n}"),
            sold_out: n % 7 == 0,
            ..Product::default()
        })
        .collect();
    // One colour bin each, spread over the histogram: a palette of 16 words still has to choose.
    let colours = (0..PRODUCTS)
        .map(|n| {
            let mut histogram = vec![0.0; HISTOGRAM_LEN];
            histogram[n * 37 % HISTOGRAM_LEN] = 1.0;
            CompactColour::from_histogram(&histogram)
        })
        .collect();
    let codec = Codec::RefinedProductQuantised {
        subspaces: 4,
        refinement: 4,
    };
    let (catalog, _) = Index::build_with(codec, MODEL_SHA256, products, &vectors)?
        .with_colours(colours)?
        .with_colour_palette(16)
        .partitioned(LISTS, 2)
        .with_calibrated_margin(0.98, LISTS);
    let (head, lists_file) = catalog.to_ranged_bytes()?;
    println!(
        "{PRODUCTS} products in {codec}: a head of {} bytes and a lists file of {} bytes",
        head.len(),
        lists_file.len()
    );

    let mut shop = Index::from_bytes(&head)?;
    let query = &vectors[0];
    let fetch = |range: std::ops::Range<u64>| &lists_file[range.start as usize..range.end as usize];
    for round in 1.. {
        let blocks = shop.blocks_to_load(query, None, 5, &Filter::ANY, None);
        if blocks.is_empty() {
            break;
        }
        for &block in &blocks {
            let range = shop.block_range(block).expect("a block the head names");
            shop.load_block(block, fetch(range))?;
        }
        println!("round {round}: fetched blocks {blocks:?}");
    }
    let hits = shop.search(query, 5, &Filter::ANY);
    // The head and the blocks it fetched find what the whole catalog finds.
    anyhow::ensure!(
        hits == catalog.search(query, 5, &Filter::ANY),
        "the ranged search found other products"
    );
    let shown: Vec<usize> = hits.iter().map(|hit| hit.product).collect();
    for page in shop.pages_to_load(&shown) {
        let range = shop.page_range(page).expect("a page the head names");
        shop.load_page(page, fetch(range))?;
    }
    for hit in &hits {
        let product = &shop.products()[hit.product];
        println!(
            "{:.3}  {} ({}), {}",
            hit.score, product.title, product.category, product.url
        );
    }

    if let Some(out) = env::args_os().nth(1).map(PathBuf::from) {
        fs::create_dir_all(&out)?;
        fs::write(out.join("head.otl"), &head)?;
        fs::write(out.join("lists.otb"), &lists_file)?;
        println!("wrote head.otl and lists.otb to {}", out.display());
    }
    Ok(())
}
