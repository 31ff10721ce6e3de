//! Product metadata: what a shopper sees for each search result.

use serde::{Deserialize, Serialize};

/// One buyable product, as stored in the index and returned by a search.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub brand: String,
    /// Price in the currency's major unit (e.g. 39000 KRW, 49.90 EUR).
    #[serde(default)]
    pub price: Option<f64>,
    /// ISO 4217 code, e.g. `KRW`.
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub colour: String,
    /// Link to the product page.
    #[serde(default)]
    pub url: String,
    /// Thumbnail path relative to the manifest, written by the index builder.
    #[serde(default)]
    pub thumbnail: String,
}
