//! Ranged catalogs: a partitioned index split into a head file, which the widget loads first,
//! and a lists file of one block per inverted list, which it fetches with HTTP Range
//! requests as searches reach the lists, so that a query on a large catalog downloads only
//! the lists it scans.
//!
//! The head is an index file whose vectors section holds the codec's parameters alone, whose
//! colours section is empty or holds the colour palette alone and whose blocks section says
//! where each list's block lies in the lists file: u32 flags (bit 0: the blocks hold colours),
//! u32 list count, then per list u64 start, u64 length and the block's sha256. The head's own
//! checksum covers these, so a block the head vouches for is as trustworthy as the head.
//!
//! A block holds its products' rows as the vectors section lays out all of them, then, with
//! colours, their colours as the colours section does after its palette. The blocks follow
//! one another in list order, without gaps.
//!
//! Since version 6 the head's product metadata holds only what filters and "more like this"
//! need (ids, brands, prices, categories, colours, stock): each product's title, link and
//! thumbnail lie in a page of [`PRODUCTS_PER_PAGE`] products after the last block, a gzip JSON
//! array of `{title, url, thumbnail}`, which the widget fetches for the results it shows. The
//! blocks section then goes on with u32 products per page, u32 page count and per page the
//! same start, length and sha256 as a list's. A version 5 head holds all the metadata itself.

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::{corrupt, Reader};
use super::format::{inflate, METADATA_BYTES_PER_PRODUCT};
use super::partition::Partitions;
use super::{unit_length, Filter, Index, IndexError};

const HAS_COLOURS: u32 = 1;
const HAS_PAGES: u32 = 2;
/// Bytes a list or a page takes in the blocks section: start, length, sha256.
const ENTRY_BYTES: usize = 8 + 8 + 32;
/// Products per page of details. A page of real titles and links is about 2 KB gzipped: small
/// enough that a dozen results cost a few tens of KB, large enough that its head entry (48
/// bytes) adds only 1.5 bytes per product to the head.
pub const PRODUCTS_PER_PAGE: usize = 32;

/// Where each list's block lies in the lists file, and which lists are loaded.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Blocks {
    blocks: Vec<Block>,
    loaded: Vec<bool>,
    colours: bool,
    /// The pages of product details, for a head of version 6 or later.
    pages: Option<Pages>,
}

/// Where each page of product details lies in the lists file, and which are loaded.
#[derive(Clone, Debug, PartialEq)]
struct Pages {
    per_page: usize,
    blocks: Vec<Block>,
    loaded: Vec<bool>,
}

/// What a shopper sees of a product that a ranged head leaves to its page.
#[derive(Serialize, Deserialize)]
struct Details {
    title: String,
    url: String,
    thumbnail: String,
}

#[derive(Clone, Debug, PartialEq)]
struct Block {
    start: u64,
    len: u64,
    sha256: [u8; 32],
}

impl Block {
    /// Whether `bytes` are this block: its length and its sha256.
    fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && Sha256::digest(bytes)[..] == self.sha256
    }
}

impl Blocks {
    /// Whether the blocks section `section` says that the blocks hold colours (read before
    /// the section itself, which needs to know how many bytes they take).
    pub(super) fn hold_colours(section: &[u8]) -> bool {
        section
            .get(..4)
            .is_some_and(|flags| u32::from_le_bytes(flags.try_into().expect("4 bytes")) & HAS_COLOURS != 0)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn write(&self, bytes: &mut Vec<u8>) {
        let mut flags = if self.colours { HAS_COLOURS } else { 0 };
        if self.pages.is_some() {
            flags |= HAS_PAGES;
        }
        for field in [flags, self.blocks.len() as u32] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        let write_entries = |blocks: &[Block], bytes: &mut Vec<u8>| {
            for block in blocks {
                bytes.extend_from_slice(&block.start.to_le_bytes());
                bytes.extend_from_slice(&block.len.to_le_bytes());
                bytes.extend_from_slice(&block.sha256);
            }
        };
        write_entries(&self.blocks, bytes);
        if let Some(pages) = &self.pages {
            for field in [pages.per_page as u32, pages.blocks.len() as u32] {
                bytes.extend_from_slice(&field.to_le_bytes());
            }
            write_entries(&pages.blocks, bytes);
        }
    }

    /// Reads the blocks section of a head of `count` products whose lists are `partitions` and
    /// whose products take `product_bytes` each in a block (row and colour); no list or page is
    /// loaded yet.
    pub(super) fn read(
        section: &[u8],
        count: usize,
        partitions: &Partitions,
        product_bytes: usize,
    ) -> Result<Blocks, IndexError> {
        let mut reader = Reader {
            bytes: section,
            section: "blocks",
        };
        let flags = reader.u32("flags")?;
        let lists = reader.u32("list count")? as usize;
        let blocks = read_entries(&mut reader, lists, "blocks")?;
        let pages = if flags & HAS_PAGES != 0 {
            let per_page = reader.u32("products per page")? as usize;
            let pages = reader.u32("page count")? as usize;
            let blocks = read_entries(&mut reader, pages, "pages")?;
            Some((per_page, blocks))
        } else {
            None
        };
        reader.finish("its blocks need")?;
        let colours = flags & HAS_COLOURS != 0;
        let product_bytes = product_bytes as u64;
        // One message for every inconsistency: each means the same damage to a shopper.
        let mut end = 0;
        let mut follows = |block: &Block| {
            let in_order = block.start == end;
            end = block.start.saturating_add(block.len);
            in_order
        };
        let lists_consistent = flags & !(HAS_COLOURS | HAS_PAGES) == 0
            && lists == partitions.lists()
            && blocks
                .iter()
                .enumerate()
                .all(|(list, block)| follows(block) && block.len == partitions.run(list).len() as u64 * product_bytes);
        let pages_consistent = pages.as_ref().is_none_or(|(per_page, pages)| {
            *per_page > 0
                && pages.len() == count.div_ceil(*per_page)
                && pages.iter().all(|page| follows(page) && page.len > 0)
        });
        if !(lists_consistent && pages_consistent) {
            return Err(corrupt(format!(
                "its list blocks do not match its {} inverted lists",
                partitions.lists()
            )));
        }
        Ok(Blocks {
            loaded: vec![false; lists],
            blocks,
            colours,
            pages: pages.map(|(per_page, blocks)| Pages {
                per_page,
                loaded: vec![false; blocks.len()],
                blocks,
            }),
        })
    }

    /// Where the last block or page ends: the length of the lists file.
    fn end(&self) -> u64 {
        let last = self.pages.as_ref().and_then(|pages| pages.blocks.last());
        last.or(self.blocks.last()).map_or(0, |block| block.start + block.len)
    }
}

/// `count` entries of the blocks section (lists or pages).
fn read_entries(reader: &mut Reader, count: usize, what: &str) -> Result<Vec<Block>, IndexError> {
    let entries = reader.take(count.saturating_mul(ENTRY_BYTES), what)?;
    Ok(entries
        .chunks_exact(ENTRY_BYTES)
        .map(|entry| Block {
            start: u64::from_le_bytes(entry[..8].try_into().expect("8 bytes")),
            len: u64::from_le_bytes(entry[8..16].try_into().expect("8 bytes")),
            sha256: entry[16..].try_into().expect("32 bytes"),
        })
        .collect())
}

/// Appends `bytes` to the lists file as a block.
#[cfg(not(target_arch = "wasm32"))]
fn append_block(lists_file: &mut Vec<u8>, bytes: &[u8]) -> Block {
    let start = lists_file.len();
    lists_file.extend_from_slice(bytes);
    Block {
        start: start as u64,
        len: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
    }
}

impl Index {
    /// The head and the lists file of this partitioned index as a ranged catalog.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_ranged_bytes(&self) -> Result<(Vec<u8>, Vec<u8>), IndexError> {
        let partitions = self.partitions.as_ref().ok_or(IndexError::NotPartitioned)?;
        let mut lists_file = Vec::new();
        let blocks = (0..partitions.lists())
            .map(|list| {
                let run = partitions.run(list);
                let mut block = Vec::new();
                self.vectors.write_rows(run.clone(), &mut block);
                if let Some(colours) = &self.colours {
                    colours.write_products(run, &mut block);
                }
                append_block(&mut lists_file, &block)
            })
            .collect();
        let pages: Vec<Block> = self
            .products
            .chunks(PRODUCTS_PER_PAGE)
            .map(|products| {
                let details: Vec<Details> = products
                    .iter()
                    .map(|product| Details {
                        title: product.title.clone(),
                        url: product.url.clone(),
                        thumbnail: product.thumbnail.clone(),
                    })
                    .collect();
                let json = serde_json::to_vec(&details).expect("details are plain data and always serialise");
                append_block(&mut lists_file, &super::format::deflate(&json))
            })
            .collect();
        let blocks = Blocks {
            loaded: vec![true; partitions.lists()],
            blocks,
            colours: self.colours.is_some(),
            pages: Some(Pages {
                per_page: PRODUCTS_PER_PAGE,
                loaded: vec![true; pages.len()],
                blocks: pages,
            }),
        };
        let mut section = Vec::new();
        blocks.write(&mut section);
        let head_products: Vec<_> = self
            .products
            .iter()
            .map(|product| crate::catalog::Product {
                title: String::new(),
                url: String::new(),
                thumbnail: String::new(),
                ..product.clone()
            })
            .collect();
        Ok((self.encode(&head_products, Some(section)), lists_file))
    }

    /// Whether this is the head of a ranged catalog, whose lists load one by one.
    pub fn is_ranged(&self) -> bool {
        self.blocks.is_some()
    }

    /// Whether the vector (and colour) of the product at `product` is at hand: always, unless
    /// its list of a ranged catalog is not loaded yet.
    pub fn is_loaded(&self, product: usize) -> bool {
        match (&self.blocks, &self.partitions) {
            (Some(blocks), Some(partitions)) => partitions.list_of(product).is_some_and(|list| blocks.loaded[list]),
            _ => product < self.len(),
        }
    }

    /// The inverted list holding the product at `product`.
    pub fn list_of(&self, product: usize) -> Option<usize> {
        self.partitions.as_ref()?.list_of(product)
    }

    /// Where the block of `list` lies in the lists file of a ranged catalog: the bytes from
    /// `start` up to `end`.
    pub fn block_range(&self, list: usize) -> Option<std::ops::Range<u64>> {
        let block = self.blocks.as_ref()?.blocks.get(list)?;
        Some(block.start..block.start + block.len)
    }

    /// Loads the block of `list`, refusing one that is not the block the head vouches for.
    pub fn load_list(&mut self, list: usize, block: &[u8]) -> Result<(), IndexError> {
        let (Some(blocks), Some(partitions)) = (&mut self.blocks, &self.partitions) else {
            return Err(IndexError::NotRanged);
        };
        let expected = blocks.blocks.get(list).ok_or(IndexError::NoSuchList {
            list,
            lists: partitions.lists(),
        })?;
        if !expected.matches(block) {
            return Err(IndexError::BlockMismatch { list });
        }
        if blocks.loaded[list] {
            return Ok(());
        }
        let run = partitions.run(list);
        let mut reader = Reader {
            bytes: block,
            section: "list block",
        };
        self.vectors.read_rows(run.clone(), &mut reader)?;
        if let Some(colours) = &mut self.colours {
            let bytes = reader.take(run.len() * colours.product_bytes(), "colours")?;
            colours.read_products(bytes, run.start)?;
        }
        reader.finish(&format!("the rows of its {} products need", run.len()))?;
        blocks.loaded[list] = true;
        Ok(())
    }

    /// Loads every list and page from the whole lists file (for hosts that ignore Range requests).
    pub fn load_lists_file(&mut self, file: &[u8]) -> Result<(), IndexError> {
        let blocks = self.blocks.as_ref().ok_or(IndexError::NotRanged)?;
        let lists = blocks.blocks.len();
        let pages = blocks.pages.as_ref().map_or(0, |pages| pages.blocks.len());
        // Before hashing any block: another length means another file.
        let end = blocks.end();
        if file.len() as u64 != end {
            return Err(IndexError::ListsFileSize {
                expected: end,
                found: file.len() as u64,
            });
        }
        let part = |range: std::ops::Range<u64>| file.get(range.start as usize..range.end as usize);
        for list in 0..lists {
            let range = self.block_range(list).expect("a list of this head");
            let block = part(range).ok_or(IndexError::BlockMismatch { list })?;
            self.load_list(list, block)?;
        }
        for page in 0..pages {
            let range = self.page_range(page).expect("a page of this head");
            let bytes = part(range).ok_or(IndexError::PageMismatch { page })?;
            self.load_page(page, bytes)?;
        }
        Ok(())
    }

    /// The pages of product details of a ranged head of version 6 or later.
    fn pages(&self) -> Option<&Pages> {
        self.blocks.as_ref()?.pages.as_ref()
    }

    /// Whether the title, link and thumbnail of the product at `product` are at hand: always,
    /// unless its page of a ranged catalog's details is not loaded yet.
    pub fn has_details(&self, product: usize) -> bool {
        match self.pages() {
            Some(pages) => pages.loaded.get(product / pages.per_page) == Some(&true),
            None => product < self.len(),
        }
    }

    /// The pages of details, not loaded yet, that the products at `products` need: each once,
    /// in order. What to fetch before showing them as results.
    pub fn pages_to_load(&self, products: &[usize]) -> Vec<usize> {
        let Some(pages) = self.pages() else {
            return Vec::new();
        };
        let mut missing: Vec<usize> = products
            .iter()
            .map(|product| product / pages.per_page)
            .filter(|&page| pages.loaded.get(page) == Some(&false))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Where page `page` of a ranged catalog's details lies in the lists file.
    pub fn page_range(&self, page: usize) -> Option<std::ops::Range<u64>> {
        let block = self.pages()?.blocks.get(page)?;
        Some(block.start..block.start + block.len)
    }

    /// Loads page `page` of the products' details, refusing one that is not the page the head
    /// vouches for.
    pub fn load_page(&mut self, page: usize, bytes: &[u8]) -> Result<(), IndexError> {
        let pages = self
            .blocks
            .as_mut()
            .and_then(|blocks| blocks.pages.as_mut())
            .ok_or(IndexError::NotRanged)?;
        let expected = pages.blocks.get(page).ok_or(IndexError::NoSuchPage {
            page,
            pages: pages.blocks.len(),
        })?;
        if !expected.matches(bytes) {
            return Err(IndexError::PageMismatch { page });
        }
        if pages.loaded[page] {
            return Ok(());
        }
        let first = page * pages.per_page;
        let end = (first + pages.per_page).min(self.products.len());
        let products = &mut self.products[first..end];
        let json = inflate(bytes, products.len() as u64 * METADATA_BYTES_PER_PRODUCT)?;
        let details: Vec<Details> = serde_json::from_slice(&json)
            .map_err(|e| corrupt(format!("unreadable product details on page {page}: {e}")))?;
        if details.len() != products.len() {
            return Err(corrupt(format!(
                "page {page} of product details lists {} products, not {}",
                details.len(),
                products.len()
            )));
        }
        for (product, details) in products.iter_mut().zip(details) {
            product.title = details.title;
            product.url = details.url;
            product.thumbnail = details.thumbnail;
        }
        pages.loaded[page] = true;
        Ok(())
    }

    /// The lists, not loaded yet, that a search for `query` with `k` results passing `filter`
    /// (and not `skip`) scans, nearest first: what to fetch before searching. Empty unless ranged.
    pub fn lists_to_load(&self, query: &[f32], k: usize, filter: &Filter, skip: Option<usize>) -> Vec<usize> {
        let Some(blocks) = &self.blocks else {
            return Vec::new();
        };
        let mut lists = self.lists_scanned(query, k, filter, skip);
        lists.retain(|&list| !blocks.loaded[list]);
        lists
    }

    /// The lists a search for `query` with `k` results passing `filter` (and not `skip`)
    /// scans, nearest first, loaded or not; empty unless partitioned.
    pub(super) fn lists_scanned(&self, query: &[f32], k: usize, filter: &Filter, skip: Option<usize>) -> Vec<usize> {
        let Some(partitions) = &self.partitions else {
            return Vec::new();
        };
        if query.len() != self.dims {
            return Vec::new();
        }
        let matcher = self.columns.matcher(filter);
        let passed = Cell::new(0);
        let mut lists = Vec::new();
        // The lists a search takes, its filter's passes counted from the metadata, which the
        // head holds, where the search counts them as it scans.
        for list in partitions.to_scan(&unit_length(query), k.min(self.len()), &passed) {
            lists.push(list);
            let run = partitions.run(list);
            let passing = run
                .filter(|&product| Some(product) != skip && matcher.as_ref().is_none_or(|m| m.matches(product)))
                .count();
            passed.set(passed.get() + passing);
        }
        lists
    }

    /// Whether `list` may be scanned: loaded, or part of an index that is not ranged.
    pub(super) fn is_list_loaded(&self, list: usize) -> bool {
        self.blocks.as_ref().is_none_or(|blocks| blocks.loaded[list])
    }
}
