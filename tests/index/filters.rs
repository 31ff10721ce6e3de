//! Filters combined with search, "more like this" and facets, against brute-force references.

use otlens::catalog::Product;
use otlens::index::{Codec, FacetValue, Filter, Index};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::{random_unit_vectors, MODEL_SHA256};

const CATEGORIES: [&str; 5] = ["Dress", "Coat", "Shirt", "Trouser", ""];
const COLOURS: [&str; 4] = ["red", "black", "white", "navy"];
const BRANDS: [&str; 3] = ["Acme", "Bolt", "Cobalt"];

fn shop(rng: &mut StdRng, count: usize) -> Vec<Product> {
    (0..count)
        .map(|n| Product {
            id: format!("sku-{n}"),
            title: format!("Product {n}"),
            category: CATEGORIES.choose(rng).unwrap().to_string(),
            colour: COLOURS.choose(rng).unwrap().to_string(),
            brand: BRANDS.choose(rng).unwrap().to_string(),
            price: rng
                .random_bool(0.9)
                .then(|| f64::from(rng.random_range(10..200u32)) * 1000.0),
            currency: "KRW".into(),
            sold_out: rng.random_bool(0.2),
            ..Product::default()
        })
        .collect()
}

fn some_of(rng: &mut StdRng, values: &[&str]) -> Vec<String> {
    values
        .iter()
        .filter(|_| rng.random_bool(0.3))
        .map(|value| value.to_string())
        .collect()
}

fn random_filter(rng: &mut StdRng) -> Filter {
    Filter {
        categories: some_of(rng, &CATEGORIES),
        colours: some_of(rng, &COLOURS),
        brands: some_of(rng, &BRANDS),
        min_price: rng
            .random_bool(0.4)
            .then(|| f64::from(rng.random_range(0..120u32)) * 1000.0),
        max_price: rng
            .random_bool(0.4)
            .then(|| f64::from(rng.random_range(80..220u32)) * 1000.0),
        in_stock: rng.random_bool(0.5),
    }
}

/// The filter's meaning, written out plainly.
fn passes(product: &Product, filter: &Filter) -> bool {
    let allows = |wanted: &[String], value: &str| wanted.is_empty() || wanted.iter().any(|w| w == value);
    let price = product.price;
    allows(&filter.categories, &product.category)
        && allows(&filter.colours, &product.colour)
        && allows(&filter.brands, &product.brand)
        && filter
            .min_price
            .is_none_or(|min| price.is_some_and(|price| price >= min))
        && filter
            .max_price
            .is_none_or(|max| price.is_some_and(|price| price <= max))
        && !(filter.in_stock && product.sold_out)
}

fn sample_shop(count: usize, dims: usize) -> (Index, Vec<Vec<f32>>) {
    sample_shop_with(Codec::Int8, count, dims)
}

fn sample_shop_with(codec: Codec, count: usize, dims: usize) -> (Index, Vec<Vec<f32>>) {
    let mut rng = StdRng::seed_from_u64(21);
    let products = shop(&mut rng, count);
    let embeddings = random_unit_vectors(&mut rng, count, dims);
    (
        Index::build_with(codec, MODEL_SHA256, products, &embeddings).unwrap(),
        embeddings,
    )
}

/// Holds for the codecs that score every product the same way whatever the filter; the
/// binary codec's shortlist is drawn from the filtered products, so it can only do better.
#[test]
fn filtered_search_is_the_unfiltered_ranking_with_the_rest_removed() {
    for codec in [Codec::Int8, Codec::ProductQuantised { subspaces: 16 }] {
        filtered_search_keeps_the_ranking(codec);
    }
}

fn filtered_search_keeps_the_ranking(codec: Codec) {
    let (index, _) = sample_shop_with(codec, 3000, 64);
    let mut rng = StdRng::seed_from_u64(5);
    let mut empty_results = 0;
    for query in random_unit_vectors(&mut StdRng::seed_from_u64(6), 100, 64) {
        let filter = random_filter(&mut rng);
        let k = rng.random_range(1..40);
        let everything = index.search(&query, index.len(), &Filter::ANY);
        let expected: Vec<_> = everything
            .into_iter()
            .filter(|hit| passes(&index.products()[hit.product], &filter))
            .take(k)
            .collect();
        assert_eq!(index.search(&query, k, &filter), expected, "{filter:?}");
        empty_results += usize::from(expected.is_empty());
    }
    assert!(empty_results < 50, "the random filters mostly match something");
}

#[test]
fn filter_values_ignore_case_and_unknown_values_match_nothing() {
    let (index, embeddings) = sample_shop(500, 32);
    let query = &embeddings[0];
    let dresses = Filter {
        categories: vec!["Dress".into()],
        ..Filter::ANY
    };
    let shouted = Filter {
        categories: vec!["DRESS".into()],
        ..Filter::ANY
    };
    let found = index.search(query, 20, &dresses);
    assert_eq!(found.len(), 20);
    assert_eq!(index.search(query, 20, &shouted), found);
    let unknown = Filter {
        colours: vec!["mauve".into()],
        ..Filter::ANY
    };
    assert!(index.search(query, 20, &unknown).is_empty());
}

#[test]
fn more_like_this_is_a_search_by_the_stored_vector_without_the_product_itself() {
    let (index, embeddings) = sample_shop(800, 48);
    let mut rng = StdRng::seed_from_u64(9);
    for product in [0, 1, 399, 799] {
        let filter = if product % 2 == 0 {
            Filter::ANY
        } else {
            random_filter(&mut rng)
        };
        let similar = index.similar(product, 10, &filter);
        let mut by_photo = index.search(&embeddings[product], 11, &filter);
        by_photo.retain(|hit| hit.product != product);
        by_photo.truncate(10);
        assert_eq!(similar, by_photo);
        assert!(similar.iter().all(|hit| hit.product != product));
    }
    assert!(index.similar(800, 10, &Filter::ANY).is_empty(), "no such product");
    assert_eq!(index.position("sku-399"), Some(399));
    assert_eq!(index.position("sku-x"), None);
}

#[test]
fn facets_count_each_value_most_common_first() {
    let (index, _) = sample_shop(1000, 16);
    let facets = index.facets();
    let count = |value: &str, of: fn(&Product) -> &str| index.products().iter().filter(|p| of(p) == value).count();
    let named = |facets: &[FacetValue]| facets.iter().map(|f| f.value.clone()).collect::<Vec<_>>();
    let mut categories = named(&facets.categories);
    categories.sort();
    assert_eq!(categories, ["Coat", "Dress", "Shirt", "Trouser"], "no empty category");
    for facet in &facets.categories {
        assert_eq!(facet.products, count(&facet.value, |p| &p.category));
    }
    for facet in &facets.colours {
        assert_eq!(facet.products, count(&facet.value, |p| &p.colour));
    }
    assert!(facets
        .brands
        .windows(2)
        .all(|pair| pair[0].products >= pair[1].products));
    let prices: Vec<f64> = index.products().iter().filter_map(|p| p.price).collect();
    let range = facets.price.unwrap();
    assert_eq!(range.min, prices.iter().copied().fold(f64::INFINITY, f64::min));
    assert_eq!(range.max, prices.iter().copied().fold(0.0, f64::max));
    assert_eq!(facets.currency, "KRW");
    assert_eq!(facets.sold_out, index.products().iter().filter(|p| p.sold_out).count());
}

#[test]
fn filters_read_from_json_refuse_unknown_fields() {
    let filter: Filter = serde_json::from_str(r#"{"categories": ["Dress"], "max_price": 50000}"#).unwrap();
    assert_eq!(filter.max_price, Some(50000.0));
    assert_eq!(serde_json::from_str::<Filter>("{}").unwrap(), Filter::ANY);
    let error = serde_json::from_str::<Filter>(r#"{"colors": ["red"]}"#).unwrap_err();
    assert!(error.to_string().contains("unknown field `colors`"), "{error}");
}
