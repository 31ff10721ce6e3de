//! Product metadata: what a shopper sees for each search result, and (native only)
//! reading a shop's catalog file.

use serde::{Deserialize, Serialize};

#[cfg(not(target_arch = "wasm32"))]
pub use self::reading::{parse_catalog, read_catalog, Catalog, CatalogEntry, CatalogError, CatalogFormat, RowProblem};

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
    /// Out of stock. Stored only when true, since most of a shop's products can be bought.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sold_out: bool,
}

#[cfg(not(target_arch = "wasm32"))]
mod reading {
    //! Catalog files: CSV with a header row, or JSON Lines, one product per row with the
    //! fields `id, title, brand, price, currency, category, colour (or color), url, image, in_stock`.
    //! `id`, `title` and `image` are required; other columns are ignored. A bad row is
    //! reported with its line number and skipped, so one typo does not stop a shop's build.

    use std::collections::HashMap;
    use std::fmt;
    use std::path::{Path, PathBuf};

    use super::Product;

    /// A catalog file that can be indexed, plus the rows that could not.
    #[derive(Debug, Default)]
    pub struct Catalog {
        pub entries: Vec<CatalogEntry>,
        pub problems: Vec<RowProblem>,
    }

    /// A product and the photo to index it by.
    #[derive(Clone, Debug, PartialEq)]
    pub struct CatalogEntry {
        /// 1-based line of the row in the catalog file, for messages.
        pub line: u64,
        pub product: Product,
        /// The photo: absolute, or joined to the catalog file's folder.
        pub image: PathBuf,
    }

    /// A skipped row and why.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RowProblem {
        pub line: u64,
        pub message: String,
    }

    impl fmt::Display for RowProblem {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }

    /// Problems with the catalog file as a whole.
    #[derive(Debug, thiserror::Error)]
    pub enum CatalogError {
        #[error("cannot read the catalog {path}: {source}")]
        Read { path: PathBuf, source: std::io::Error },
        #[error("the catalog's header row has no {0} column (columns: id, title, brand, price, currency, category, colour, url, image, in_stock)")]
        MissingColumn(&'static str),
        #[error("cannot read the catalog's header row: {0}")]
        BadHeader(String),
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CatalogFormat {
        Csv,
        JsonLines,
    }

    impl CatalogFormat {
        /// By extension (`.csv`, `.jsonl`, `.ndjson`), else JSON Lines if the file starts with `{`.
        pub fn detect(path: &Path, bytes: &[u8]) -> CatalogFormat {
            let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            match extension.as_deref() {
                Some("csv") => CatalogFormat::Csv,
                Some("jsonl" | "ndjson") => CatalogFormat::JsonLines,
                _ if bytes.trim_ascii_start().starts_with(b"{") => CatalogFormat::JsonLines,
                _ => CatalogFormat::Csv,
            }
        }
    }

    const FIELDS: [&str; 10] = [
        "id", "title", "brand", "price", "currency", "category", "colour", "url", "image", "in_stock",
    ];
    const REQUIRED: [&str; 3] = ["id", "title", "image"];

    /// Reads a catalog file; relative photo paths are taken from the file's folder.
    pub fn read_catalog(path: &Path) -> Result<Catalog, CatalogError> {
        let bytes = std::fs::read(path).map_err(|source| CatalogError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        parse_catalog(&bytes, CatalogFormat::detect(path, &bytes), base_dir)
    }

    /// Parses a catalog's bytes; relative photo paths are joined to `base_dir`.
    pub fn parse_catalog(bytes: &[u8], format: CatalogFormat, base_dir: &Path) -> Result<Catalog, CatalogError> {
        // Spreadsheet exports often start with a UTF-8 byte order mark.
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut builder = Builder {
            base_dir,
            catalog: Catalog::default(),
            first_line_of: HashMap::new(),
        };
        match format {
            CatalogFormat::Csv => parse_csv(bytes, &mut builder)?,
            CatalogFormat::JsonLines => parse_json_lines(bytes, &mut builder),
        }
        Ok(builder.catalog)
    }

    /// One row's fields by name, as text.
    type Row = HashMap<&'static str, String>;

    fn parse_csv(bytes: &[u8], builder: &mut Builder) -> Result<(), CatalogError> {
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
        let header = reader
            .headers()
            .map_err(|e| CatalogError::BadHeader(e.to_string()))?
            .clone();
        // Column number of each known field; unknown columns are ignored.
        let columns: Vec<(usize, &'static str)> = header
            .iter()
            .enumerate()
            .filter_map(|(column, name)| field_name(name.trim()).map(|field| (column, field)))
            .collect();
        if let Some(missing) = REQUIRED
            .iter()
            .find(|&&field| !columns.iter().any(|(_, f)| *f == field))
        {
            return Err(CatalogError::MissingColumn(missing));
        }
        let mut lines = LineCounter::new(bytes);
        for record in reader.records() {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    let line = error.position().map_or(0, |position| lines.line_at(position.byte()));
                    builder.problem(line, format!("unreadable row: {error}"));
                    if error.is_io_error() {
                        break;
                    }
                    continue;
                }
            };
            let line = record.position().map_or(0, |position| lines.line_at(position.byte()));
            if record.len() != header.len() {
                builder.problem(
                    line,
                    format!(
                        "the row has {} fields but the header has {}",
                        record.len(),
                        header.len()
                    ),
                );
                continue;
            }
            let row = columns
                .iter()
                .filter_map(|&(column, field)| Some((field, record.get(column)?.to_owned())))
                .collect();
            builder.add(line, row);
        }
        Ok(())
    }

    /// Line numbers from byte offsets: the csv crate's own line count misses blank lines.
    struct LineCounter<'a> {
        bytes: &'a [u8],
        counted_to: usize,
        line: u64,
    }

    impl<'a> LineCounter<'a> {
        fn new(bytes: &'a [u8]) -> Self {
            LineCounter {
                bytes,
                counted_to: 0,
                line: 1,
            }
        }

        /// The line of the record starting at `byte` (offsets must not decrease).
        fn line_at(&mut self, byte: u64) -> u64 {
            let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(self.bytes.len());
            // The reported offset is where the reader started looking, before any blank lines.
            while matches!(self.bytes.get(start), Some(b'\r' | b'\n')) {
                start += 1;
            }
            let start = start.max(self.counted_to);
            let newlines = self.bytes[self.counted_to..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            self.line += newlines as u64;
            self.counted_to = start;
            self.line
        }
    }

    fn parse_json_lines(bytes: &[u8], builder: &mut Builder) {
        for (line, text) in (1..).zip(bytes.split(|&byte| byte == b'\n')) {
            if text.trim_ascii().is_empty() {
                continue;
            }
            match json_row(text) {
                Ok(row) => builder.add(line, row),
                Err(message) => builder.problem(line, message),
            }
        }
    }

    fn json_row(text: &[u8]) -> Result<Row, String> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(text).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut row = Row::new();
        for (key, value) in object {
            let Some(field) = field_name(&key) else { continue };
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(text) => text,
                serde_json::Value::Number(number) => number.to_string(),
                serde_json::Value::Bool(flag) => flag.to_string(),
                _ => return Err(format!("the field {key:?} must be text, a number or true/false")),
            };
            row.insert(field, text);
        }
        Ok(row)
    }

    /// The canonical name of a catalog column or JSON key (`color` is accepted for `colour`).
    fn field_name(name: &str) -> Option<&'static str> {
        let name = name.to_ascii_lowercase();
        let name = if name == "color" { "colour" } else { name.as_str() };
        FIELDS.iter().copied().find(|&field| field == name)
    }

    struct Builder<'a> {
        base_dir: &'a Path,
        catalog: Catalog,
        first_line_of: HashMap<String, u64>,
    }

    impl Builder<'_> {
        fn problem(&mut self, line: u64, message: String) {
            self.catalog.problems.push(RowProblem { line, message });
        }

        fn add(&mut self, line: u64, mut row: Row) {
            match entry(line, &mut row, self.base_dir) {
                Ok(entry) => match self.first_line_of.get(&entry.product.id) {
                    Some(first) => {
                        let message = format!("duplicate id {:?} (first used on line {first})", entry.product.id);
                        self.problem(line, message);
                    }
                    None => {
                        self.first_line_of.insert(entry.product.id.clone(), line);
                        self.catalog.entries.push(entry);
                    }
                },
                Err(message) => self.problem(line, message),
            }
        }
    }

    fn entry(line: u64, row: &mut Row, base_dir: &Path) -> Result<CatalogEntry, String> {
        let mut take = |field: &str| row.remove(field).map(|text| text.trim().to_owned()).unwrap_or_default();
        let id = take("id");
        let title = take("title");
        let image = take("image");
        let price = take("price");
        let currency = take("currency").to_ascii_uppercase();
        let in_stock = take("in_stock").to_lowercase();
        let product = Product {
            brand: take("brand"),
            category: take("category"),
            colour: take("colour"),
            url: take("url"),
            ..Product::default()
        };
        if id.is_empty() {
            return Err("missing id".into());
        }
        if title.is_empty() {
            return Err(format!("product {id:?} has no title"));
        }
        if image.is_empty() {
            return Err(format!("product {id:?} has no image"));
        }
        if image.starts_with("http://") || image.starts_with("https://") {
            return Err(format!(
                "product {id:?}: image URLs are not supported; download the photo and give its file path"
            ));
        }
        let price = match price.as_str() {
            "" => None,
            text => match text.parse::<f64>() {
                Ok(price) if price.is_finite() && price >= 0.0 => Some(price),
                _ => {
                    return Err(format!(
                        "product {id:?}: the price {text:?} is not a number like 39000 or 49.90"
                    ))
                }
            },
        };
        let iso_4217 = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
        if !currency.is_empty() && !iso_4217 {
            return Err(format!(
                "product {id:?}: the currency {currency:?} is not a 3-letter ISO 4217 code like KRW"
            ));
        }
        // An empty cell means the shop does not track stock: the product is shown as buyable.
        let sold_out = match in_stock.as_str() {
            "" | "1" | "true" | "yes" | "y" | "in stock" => false,
            "0" | "false" | "no" | "n" | "out of stock" | "sold out" => true,
            text => {
                return Err(format!(
                    "product {id:?}: in_stock {text:?} is not one of true, false, yes, no, 1, 0"
                ))
            }
        };
        Ok(CatalogEntry {
            line,
            image: base_dir.join(image),
            product: Product {
                id,
                title,
                price,
                currency,
                sold_out,
                ..product
            },
        })
    }
}
