//! The product metadata as a table (format version 7): column by column, the few distinct
//! values of brands, currencies, categories, colours and prices stored once with a small
//! number per product. Read without a JSON parser: at a million products the JSON of
//! versions 1 to 6 took most of the time a head took to load.
//!
//! Layout (gzip-compressed in the file; integers little-endian): the string columns id, title,
//! brand, currency, category, colour, url and thumbnail, then the price column, then
//! `ceil(count / 8)` bytes of sold-out bits (bit `n % 8` of byte `n / 8`). A column starts
//! with a u8 kind:
//! - 0, plain: `count` u32 lengths, then the values' bytes one after another;
//! - 1, dictionary: u32 `distinct`, the distinct values (strings: `distinct` u32 lengths then
//!   their bytes; prices: `distinct` f64, NaN for none), then `count` numbers of 1 byte when
//!   `distinct` is at most 256, 2 bytes up to 65,536, else 4.
//!
//! Prices are always a dictionary; a price that is not a number reads back as none, as it did
//! from JSON.

use crate::catalog::Product;

use super::codec::{corrupt, Reader};
use super::IndexError;

const PLAIN: u8 = 0;
const DICTIONARY: u8 = 1;

/// The table of `products`.
pub(super) fn write(products: &[Product]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let columns: [fn(&Product) -> &str; 8] = [
        |p| &p.id,
        |p| &p.title,
        |p| &p.brand,
        |p| &p.currency,
        |p| &p.category,
        |p| &p.colour,
        |p| &p.url,
        |p| &p.thumbnail,
    ];
    for column in columns {
        write_strings(&products.iter().map(column).collect::<Vec<_>>(), &mut bytes);
    }
    let prices: Vec<u64> = products
        .iter()
        .map(|product| product.price.unwrap_or(f64::NAN).to_bits())
        .collect();
    let (distinct, numbers) = dictionary(&prices);
    bytes.push(DICTIONARY);
    bytes.extend_from_slice(&(distinct.len() as u32).to_le_bytes());
    for bits in &distinct {
        bytes.extend_from_slice(&bits.to_le_bytes());
    }
    write_numbers(&numbers, distinct.len(), &mut bytes);
    let mut sold_out = vec![0u8; products.len().div_ceil(8)];
    for (n, product) in products.iter().enumerate() {
        sold_out[n / 8] |= u8::from(product.sold_out) << (n % 8);
    }
    bytes.extend_from_slice(&sold_out);
    bytes
}

/// A column of strings: a dictionary when values repeat (at most half of them distinct).
fn write_strings(values: &[&str], bytes: &mut Vec<u8>) {
    let (distinct, numbers) = dictionary(values);
    let (kind, stored) = if distinct.len() * 2 <= values.len() {
        (DICTIONARY, &distinct[..])
    } else {
        (PLAIN, values)
    };
    bytes.push(kind);
    if kind == DICTIONARY {
        bytes.extend_from_slice(&(distinct.len() as u32).to_le_bytes());
    }
    for value in stored {
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for value in stored {
        bytes.extend_from_slice(value.as_bytes());
    }
    if kind == DICTIONARY {
        write_numbers(&numbers, distinct.len(), bytes);
    }
}

/// The distinct values in order of first appearance, and each value's number among them.
fn dictionary<T: Copy + Eq + std::hash::Hash>(values: &[T]) -> (Vec<T>, Vec<u32>) {
    let mut numbers_of = std::collections::HashMap::new();
    let mut distinct = Vec::new();
    let numbers = values
        .iter()
        .map(|&value| {
            *numbers_of.entry(value).or_insert_with(|| {
                distinct.push(value);
                distinct.len() as u32 - 1
            })
        })
        .collect();
    (distinct, numbers)
}

fn write_numbers(numbers: &[u32], distinct: usize, bytes: &mut Vec<u8>) {
    let width = number_width(distinct);
    for number in numbers {
        bytes.extend_from_slice(&number.to_le_bytes()[..width]);
    }
}

/// Bytes per number into a dictionary of `distinct` values.
fn number_width(distinct: usize) -> usize {
    match distinct {
        0..=256 => 1,
        257..=65_536 => 2,
        _ => 4,
    }
}

/// The `count` products of a table.
pub(super) fn read(table: &[u8], count: usize) -> Result<Vec<Product>, IndexError> {
    let mut reader = Reader {
        bytes: table,
        section: "metadata",
    };
    let mut column = |name| StringColumn::read(&mut reader, count, name);
    let (ids, titles, brands, currencies) = (column("id")?, column("title")?, column("brand")?, column("currency")?);
    let (categories, colours, urls, thumbnails) = (
        column("category")?,
        column("colour")?,
        column("url")?,
        column("thumbnail")?,
    );
    if reader.take(1, "the price column's kind")?[0] != DICTIONARY {
        return Err(corrupt("the price column is not a dictionary".into()));
    }
    let distinct = reader.u32("the distinct price count")? as usize;
    let prices: Vec<Option<f64>> = reader
        .take(distinct.saturating_mul(8), "prices")?
        .chunks_exact(8)
        .map(|bits| f64::from_le_bytes(bits.try_into().expect("8 bytes")))
        .map(|price| (!price.is_nan()).then_some(price))
        .collect();
    let price_numbers = read_numbers(&mut reader, count, distinct, "price")?;
    let sold_out = reader.take(count.div_ceil(8), "sold-out bits")?;
    reader.finish(&format!("the metadata of {count} products needs"))?;

    Ok((0..count)
        .map(|n| Product {
            id: ids.get(n).to_owned(),
            title: titles.get(n).to_owned(),
            brand: brands.get(n).to_owned(),
            price: prices[price_numbers[n] as usize],
            currency: currencies.get(n).to_owned(),
            category: categories.get(n).to_owned(),
            colour: colours.get(n).to_owned(),
            url: urls.get(n).to_owned(),
            thumbnail: thumbnails.get(n).to_owned(),
            sold_out: (sold_out[n / 8] >> (n % 8)) & 1 == 1,
        })
        .collect())
}

/// A string column as read: every value, or the distinct values and each product's number.
enum StringColumn<'a> {
    Plain(Vec<&'a str>),
    Dictionary(Vec<&'a str>, Vec<u32>),
}

impl<'a> StringColumn<'a> {
    fn get(&self, product: usize) -> &'a str {
        match self {
            StringColumn::Plain(values) => values[product],
            StringColumn::Dictionary(distinct, numbers) => distinct[numbers[product] as usize],
        }
    }

    fn read(reader: &mut Reader<'a>, count: usize, name: &str) -> Result<StringColumn<'a>, IndexError> {
        match reader.take(1, "a column's kind")?[0] {
            PLAIN => Ok(StringColumn::Plain(read_strings(reader, count, name)?)),
            DICTIONARY => {
                let distinct = reader.u32("a column's distinct value count")? as usize;
                let values = read_strings(reader, distinct, name)?;
                let numbers = read_numbers(reader, count, distinct, name)?;
                Ok(StringColumn::Dictionary(values, numbers))
            }
            kind => Err(corrupt(format!("the {name} column has unknown kind {kind}"))),
        }
    }
}

/// `count` strings: their u32 lengths, then their bytes.
fn read_strings<'a>(reader: &mut Reader<'a>, count: usize, name: &str) -> Result<Vec<&'a str>, IndexError> {
    let lengths = reader.take(count.saturating_mul(4), "string lengths")?;
    let mut values = Vec::with_capacity(count);
    for length in lengths.chunks_exact(4) {
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let bytes = reader.take(length, "strings")?;
        let value = std::str::from_utf8(bytes)
            .map_err(|_| corrupt(format!("a value of the {name} column is not UTF-8 text")))?;
        values.push(value);
    }
    Ok(values)
}

/// `count` numbers into a dictionary of `distinct` values, each checked to lie in it.
fn read_numbers(reader: &mut Reader, count: usize, distinct: usize, name: &str) -> Result<Vec<u32>, IndexError> {
    let width = number_width(distinct);
    let numbers: Vec<u32> = reader
        .take(count.saturating_mul(width), "dictionary numbers")?
        .chunks_exact(width)
        .map(|number| {
            let mut bytes = [0u8; 4];
            bytes[..width].copy_from_slice(number);
            u32::from_le_bytes(bytes)
        })
        .collect();
    if numbers.iter().any(|&number| number as usize >= distinct) {
        return Err(corrupt(format!(
            "the {name} column refers to a value beyond its {distinct}"
        )));
    }
    Ok(numbers)
}
