//! Filters combined with search ("red dresses under 50,000 KRW") and the facet table the
//! widget builds its chips from.
//!
//! Category, colour and brand are dictionary-coded when the index is built or read: each
//! product holds one small number per column, and a filter becomes one yes/no table per
//! column. The search loop then tests a product with a few array reads before its vector is
//! touched, so a filtered search is one pass that skips what does not match.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Product;

/// Which products a search may return. An empty list allows every value; values are compared
/// without regard to case.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub categories: Vec<String>,
    pub colours: Vec<String>,
    pub brands: Vec<String>,
    /// Lowest price, inclusive. Products without a price fail any price bound.
    pub min_price: Option<f64>,
    /// Highest price, inclusive.
    pub max_price: Option<f64>,
    /// Only products that are not sold out.
    pub in_stock: bool,
}

impl Filter {
    /// Every product.
    pub const ANY: Filter = Filter {
        categories: Vec::new(),
        colours: Vec::new(),
        brands: Vec::new(),
        min_price: None,
        max_price: None,
        in_stock: false,
    };
}

/// One text column of the catalog, dictionary-coded.
#[derive(Clone, Debug, PartialEq)]
struct Column {
    /// Distinct values in order of first appearance.
    values: Vec<String>,
    /// Per product, its value's position in `values`.
    codes: Vec<u32>,
}

impl Column {
    fn new<'a>(texts: impl Iterator<Item = &'a str>) -> Column {
        let mut positions = std::collections::HashMap::new();
        let mut values = Vec::new();
        let codes = texts
            .map(|text| {
                *positions.entry(text).or_insert_with(|| {
                    values.push(text.to_owned());
                    values.len() as u32 - 1
                })
            })
            .collect();
        Column { values, codes }
    }

    /// Per dictionary value, whether `wanted` allows it; `None` when everything is allowed.
    fn allowed(&self, wanted: &[String]) -> Option<Vec<bool>> {
        if wanted.is_empty() {
            return None;
        }
        let wanted: Vec<String> = wanted.iter().map(|value| value.to_lowercase()).collect();
        Some(
            self.values
                .iter()
                .map(|value| wanted.contains(&value.to_lowercase()))
                .collect(),
        )
    }

    /// Distinct non-empty values with how many products have each, most common first.
    fn counts(&self) -> Vec<FacetValue> {
        let mut counts = vec![0usize; self.values.len()];
        for &code in &self.codes {
            counts[code as usize] += 1;
        }
        let mut facets: Vec<FacetValue> = self
            .values
            .iter()
            .zip(counts)
            .filter(|(value, _)| !value.is_empty())
            .map(|(value, products)| FacetValue {
                value: value.clone(),
                products,
            })
            .collect();
        facets.sort_by(|a, b| b.products.cmp(&a.products).then_with(|| a.value.cmp(&b.value)));
        facets
    }
}

/// The filterable columns of an index, derived from its products.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Columns {
    categories: Column,
    colours: Column,
    brands: Column,
    prices: Vec<Option<f64>>,
    sold_out: Vec<bool>,
}

impl Columns {
    pub(super) fn new(products: &[Product]) -> Columns {
        Columns {
            categories: Column::new(products.iter().map(|p| p.category.as_str())),
            colours: Column::new(products.iter().map(|p| p.colour.as_str())),
            brands: Column::new(products.iter().map(|p| p.brand.as_str())),
            prices: products.iter().map(|p| p.price).collect(),
            sold_out: products.iter().map(|p| p.sold_out).collect(),
        }
    }

    /// A test of one product against `filter`; `None` when every product passes.
    pub(super) fn matcher(&self, filter: &Filter) -> Option<Matcher<'_>> {
        if *filter == Filter::ANY {
            return None;
        }
        Some(Matcher {
            columns: self,
            categories: self.categories.allowed(&filter.categories),
            colours: self.colours.allowed(&filter.colours),
            brands: self.brands.allowed(&filter.brands),
            min_price: filter.min_price,
            max_price: filter.max_price,
            in_stock: filter.in_stock,
        })
    }

    pub(super) fn facets(&self, products: &[Product]) -> Facets {
        let priced = self.prices.iter().flatten().copied();
        let price = priced.clone().reduce(f64::min).zip(priced.reduce(f64::max));
        let mut currencies = BTreeMap::new();
        for product in products.iter().filter(|p| !p.currency.is_empty()) {
            *currencies.entry(product.currency.as_str()).or_insert(0usize) += 1;
        }
        Facets {
            categories: self.categories.counts(),
            colours: self.colours.counts(),
            brands: self.brands.counts(),
            price: price.map(|(min, max)| PriceRange { min, max }),
            currency: currencies
                .into_iter()
                .max_by_key(|&(_, count)| count)
                .map(|(currency, _)| currency.to_owned())
                .unwrap_or_default(),
            sold_out: self.sold_out.iter().filter(|&&sold_out| sold_out).count(),
        }
    }
}

/// A compiled [`Filter`].
pub(super) struct Matcher<'a> {
    columns: &'a Columns,
    categories: Option<Vec<bool>>,
    colours: Option<Vec<bool>>,
    brands: Option<Vec<bool>>,
    min_price: Option<f64>,
    max_price: Option<f64>,
    in_stock: bool,
}

impl Matcher<'_> {
    pub(super) fn matches(&self, product: usize) -> bool {
        let allows = |allowed: &Option<Vec<bool>>, column: &Column| {
            allowed
                .as_ref()
                .is_none_or(|allowed| allowed[column.codes[product] as usize])
        };
        // A product without a price fails any price bound.
        let price = self.columns.prices[product];
        allows(&self.categories, &self.columns.categories)
            && allows(&self.colours, &self.columns.colours)
            && allows(&self.brands, &self.columns.brands)
            && self.min_price.is_none_or(|min| price.is_some_and(|price| price >= min))
            && self.max_price.is_none_or(|max| price.is_some_and(|price| price <= max))
            && !(self.in_stock && self.columns.sold_out[product])
    }
}

/// What a catalog can be filtered by, for the widget's chips, swatches and price slider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Facets {
    pub categories: Vec<FacetValue>,
    pub colours: Vec<FacetValue>,
    pub brands: Vec<FacetValue>,
    /// Lowest and highest price; `None` when no product has one.
    pub price: Option<PriceRange>,
    /// The most common currency, for formatting the price range.
    pub currency: String,
    /// How many products are sold out (an in-stock switch is pointless when none are).
    pub sold_out: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FacetValue {
    pub value: String,
    pub products: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PriceRange {
    pub min: f64,
    pub max: f64,
}
