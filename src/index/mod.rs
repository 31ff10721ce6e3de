//! The catalog index: a versioned binary file and top-k search over it.

use crate::catalog::Product;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("not an otlens index (bad magic)")]
    BadMagic,
}

/// A search result: position of the product in [`Index::products`] and its similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub product: usize,
    pub score: f32,
}

pub struct Index {
    products: Vec<Product>,
}

impl Index {
    pub fn products(&self) -> &[Product] {
        &self.products
    }
}
