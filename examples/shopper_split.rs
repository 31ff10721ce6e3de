//! A split of shoppers' photos against a catalog, for `otlens eval --match category`: the 160
//! photos of garments that people took (`clothing/`: clutter, folds, floors) are the queries,
//! Fashion Product Images' studio photos (`fpi/`) the gallery, both labelled with `clothing/`'s
//! eight kinds of garment. Recall@1 is then how often a shopper's photo finds a product of its
//! kind first, which FPI's own held-out studio photos do not tell.
//!
//! ```text
//! cargo run --release --example shopper_split -- [DATA_DIR] [OUT_CSV] [EVERY]
//! otlens eval --model M --split OUT_CSV --match category
//! ```
//!
//! DATA_DIR defaults to `../shared/data`; without it the example says so and writes nothing.
//! OUT_CSV defaults to `target/shopper-split.csv` (it names the photos, which stay where they
//! are). The gallery is every EVERY-th (default 4th) product of `fpi/products.csv`, from the
//! first: 10,451 photos, embedded in about 5 minutes. Products of other kinds (watches, bags,
//! saris) stay in it, as a shop's catalog holds them too, as `other: ` and their articleType, so
//! that `eval`'s list of misses says which of them a shopper's photo found instead.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use otlens::train::dataset::Dataset;
use serde::Deserialize;

/// `clothing/`'s kinds of garment and the FPI articleTypes of each, comma-separated.
const KINDS: [(&str, &str); 8] = [
    (
        "upper_body_top",
        "Tshirts, Shirts, Tops, Sweatshirts, Sweaters, Kurtas, Kurtis, Tunics, Camisoles, Lounge Tshirts",
    ),
    (
        "outerwear",
        "Jackets, Blazers, Rain Jacket, Waistcoat, Shrug, Nehru Jackets",
    ),
    ("dress", "Dresses"),
    ("skirt", "Skirts"),
    ("shorts", "Shorts, Lounge Shorts"),
    (
        "trousers",
        "Jeans, Trousers, Track Pants, Leggings, Capris, Jeggings, Lounge Pants, Patiala, Churidar, Salwar",
    ),
    (
        "shoes",
        "Casual Shoes, Sports Shoes, Formal Shoes, Heels, Flats, Sandals, Flip Flops, Sports Sandals, Booties",
    ),
    ("hat", "Caps, Hat"),
];

#[derive(Deserialize)]
struct ShopperRow {
    image: String,
    category_coarse: String,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data = PathBuf::from(args.first().map_or("../shared/data", String::as_str));
    let out = PathBuf::from(args.get(1).map_or("target/shopper-split.csv", String::as_str));
    let every: usize = args.get(2).map_or(Ok(4), |n| n.parse()).context("EVERY is a count")?;
    if every == 0 {
        bail!("EVERY is at least 1");
    }
    let (catalog, shoppers) = (data.join("fpi"), data.join("clothing"));
    if !catalog.join("products.csv").is_file() || !shoppers.join("labels.csv").is_file() {
        println!(
            "skipped: {} needs fpi/products.csv and clothing/labels.csv (see ../shared/data/README.md)",
            data.display()
        );
        return Ok(());
    }
    // Absolute paths, so that the split may be written anywhere.
    let (catalog, shoppers) = (catalog.canonicalize()?, shoppers.canonicalize()?);
    // The catalog as `otlens eval` reads it: photo paths, product ids, articleTypes.
    let catalog = Dataset::read(&catalog.join("products.csv"))?;
    let mut split = csv::Writer::from_path(&out).with_context(|| format!("writing {}", out.display()))?;
    split.write_record(["path", "item_id", "role", "category"])?;
    let mut gallery = 0;
    for photo in catalog.photos.iter().step_by(every) {
        let kind = KINDS
            .iter()
            .find(|(_, types)| types.split(", ").any(|t| t == photo.category))
            .map_or_else(|| format!("other: {}", photo.category), |(kind, _)| (*kind).to_owned());
        let product = &catalog.items[photo.item as usize];
        split.write_record([&photo.path.display().to_string(), product, "gallery", &kind])?;
        gallery += 1;
    }
    let mut queries = 0;
    for row in csv::Reader::from_path(shoppers.join("labels.csv"))?.deserialize() {
        let row: ShopperRow = row?;
        let path = shoppers.join(&row.image).display().to_string();
        split.write_record([&path, &row.image, "query", &row.category_coarse])?;
        queries += 1;
    }
    split.flush()?;
    println!(
        "{}: {queries} shoppers' photos against {gallery} catalog photos",
        out.display()
    );
    Ok(())
}
