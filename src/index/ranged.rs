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
//!
//! Since version 12 a head of refined pq ([`super::Codec::RefinedProductQuantised`]) sets flag
//! bit 2, and the blocks section goes on, before any pages, with u32 products per refinement
//! block. Each list's products then fall into refinement blocks of that many (the last of a
//! list may hold fewer), numbered list after list. A list's block ends with the sha256 of each
//! of its refinement blocks, and the lists file holds every product's refinement codes, in
//! product order, right after the last list's block (pages follow them). A search fetches the
//! lists it scans, ranks their products by the first codes, then fetches the refinement blocks
//! of its best candidates only: the list block vouches for them as the head does for the list.

use std::cell::Cell;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::{corrupt, Reader};
use super::format::{inflate, METADATA_BYTES_PER_PRODUCT};
use super::partition::Partitions;
use super::{unit_length, ColourQuery, Filter, Index, IndexError};

const HAS_COLOURS: u32 = 1;
const HAS_PAGES: u32 = 2;
const HAS_REFINEMENTS: u32 = 4;
/// Bytes a list or a page takes in the blocks section: start, length, sha256.
const ENTRY_BYTES: usize = 8 + 8 + 32;
/// Products per page of details. A page of real titles and links is about 2 KB gzipped: small
/// enough that a dozen results cost a few tens of KB, large enough that its head entry (48
/// bytes) adds only 1.5 bytes per product to the head.
pub const PRODUCTS_PER_PAGE: usize = 32;
/// Products per refinement block. A search's 50 best candidates fell in about 16 blocks on FPI; at
/// 16 bytes a product (pq16+16), 64 products make 1 KB a block, and its sha256 in the list's
/// block adds half a byte per product to what every scan fetches.
#[cfg(not(target_arch = "wasm32"))]
const PRODUCTS_PER_REFINEMENT_BLOCK: usize = 64;

/// Rounds of blocks a search may ask for before its catalog is taken as broken, here and in the
/// widget's worker (`otlens-worker.js`): a search needs two (its lists, then refined pq's
/// refinement blocks of its best candidates), "more like this" four (the product's own list and
/// refinement block first).
pub const MOST_BLOCK_ROUNDS: usize = 4;

/// Where each list's block lies in the lists file, and which lists are loaded.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Blocks {
    blocks: Vec<Block>,
    loaded: Vec<bool>,
    colours: bool,
    /// The pages of product details, for a head of version 6 or later.
    pages: Option<Pages>,
    /// Where each list's refinement codes lie, for refined pq.
    refinements: Option<Refinements>,
}

/// Where refinement blocks lie in the lists file, what their lists' blocks say they hold, and
/// which are loaded.
#[derive(Clone, Debug, PartialEq)]
struct Refinements {
    per_block: usize,
    /// Bytes of one product's refinement codes.
    product_bytes: u64,
    /// Where the first product's refinement codes lie in the lists file, and where the last's end.
    start: u64,
    end: u64,
    /// The number of each list's first refinement block, and after the last list, the block count.
    first_blocks: Vec<usize>,
    /// Each block's sha256, once its list is loaded.
    sha256: Vec<Option<[u8; 32]>>,
    loaded: Vec<bool>,
}

impl Refinements {
    /// For `partitions`' lists, refinement blocks of `per_block` products of `product_bytes`
    /// each, from `start` in the lists file; none loaded.
    fn new(partitions: &Partitions, per_block: usize, product_bytes: usize, start: u64) -> Refinements {
        let mut first_blocks = vec![0];
        for list in 0..partitions.lists() {
            let blocks = partitions.run(list).len().div_ceil(per_block);
            first_blocks.push(first_blocks[list] + blocks);
        }
        let blocks = first_blocks[partitions.lists()];
        let products = partitions
            .lists()
            .checked_sub(1)
            .map_or(0, |last| partitions.run(last).end);
        Refinements {
            per_block,
            product_bytes: product_bytes as u64,
            start,
            end: start.saturating_add(products as u64 * product_bytes as u64),
            first_blocks,
            sha256: vec![None; blocks],
            loaded: vec![false; blocks],
        }
    }

    /// The refinement blocks of `list`.
    fn of_list(&self, list: usize) -> Range<usize> {
        self.first_blocks[list]..self.first_blocks[list + 1]
    }

    /// The refinement block holding `product` of `list`, whose products are `run`.
    fn block_of(&self, list: usize, run: &Range<usize>, product: usize) -> usize {
        self.first_blocks[list] + (product - run.start) / self.per_block
    }

    /// The products of block `block` of `list`, whose products are `run`.
    fn products(&self, list: usize, run: &Range<usize>, block: usize) -> Range<usize> {
        let first = run.start + (block - self.first_blocks[list]) * self.per_block;
        first..(first + self.per_block).min(run.end)
    }

    /// Where the products' refinement codes lie in the lists file.
    fn bytes_of(&self, products: &Range<usize>) -> Range<u64> {
        self.start + products.start as u64 * self.product_bytes..self.start + products.end as u64 * self.product_bytes
    }

    fn blocks(&self) -> usize {
        self.loaded.len()
    }
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
        if self.refinements.is_some() {
            flags |= HAS_REFINEMENTS;
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
        if let Some(refinements) = &self.refinements {
            bytes.extend_from_slice(&(refinements.per_block as u32).to_le_bytes());
        }
        if let Some(pages) = &self.pages {
            for field in [pages.per_page as u32, pages.blocks.len() as u32] {
                bytes.extend_from_slice(&field.to_le_bytes());
            }
            write_entries(&pages.blocks, bytes);
        }
    }

    /// Reads the blocks section of a head of `count` products whose lists are `partitions` and
    /// whose products take `product_bytes` each in a block (row and colour) and
    /// `refinement_bytes` in refinement blocks; no list or page is loaded yet.
    pub(super) fn read(
        section: &[u8],
        count: usize,
        partitions: &Partitions,
        (product_bytes, refinement_bytes): (usize, usize),
    ) -> Result<Blocks, IndexError> {
        let mut reader = Reader {
            bytes: section,
            section: "blocks",
        };
        let flags = reader.u32("flags")?;
        let lists = reader.u32("list count")? as usize;
        let blocks = read_entries(&mut reader, lists, "blocks")?;
        let per_refinement_block = if flags & HAS_REFINEMENTS != 0 {
            Some(reader.u32("products per refinement block")? as usize)
        } else {
            None
        };
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
        // Refinement codes come with refined pq only, and then in blocks of some products.
        let refinements_consistent =
            per_refinement_block.is_some_and(|per_block| per_block > 0) == (refinement_bytes > 0);
        let sha256s_in_list = |products: usize| {
            per_refinement_block.map_or(0, |per_block| products.div_ceil(per_block.max(1)) as u64 * 32)
        };
        // One message for every inconsistency: each means the same damage to a shopper.
        let mut end = 0;
        // Each block starts where the one before ends, and ends within u64, so that every
        // range this head names (`block_range`, `page_range`, the file's length) can be added up.
        let follows = |block: &Block, end: &mut u64| {
            let in_order = block.start == *end;
            match block.start.checked_add(block.len) {
                Some(block_end) => {
                    *end = block_end;
                    in_order
                }
                None => false,
            }
        };
        let lists_consistent = flags & !(HAS_COLOURS | HAS_PAGES | HAS_REFINEMENTS) == 0
            && refinements_consistent
            && lists == partitions.lists()
            && blocks.iter().enumerate().all(|(list, block)| {
                let products = partitions.run(list).len();
                follows(block, &mut end) && block.len == products as u64 * product_bytes + sha256s_in_list(products)
            });
        let refinements = per_refinement_block
            .filter(|_| lists_consistent)
            .map(|per_block| Refinements::new(partitions, per_block, refinement_bytes, end));
        end = end.saturating_add(count as u64 * refinement_bytes as u64);
        let pages_consistent = pages.as_ref().is_none_or(|(per_page, pages)| {
            *per_page > 0
                && pages.len() == count.div_ceil(*per_page)
                && pages.iter().all(|page| follows(page, &mut end) && page.len > 0)
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
            refinements,
        })
    }

    /// Where the last block, refinement code or page ends: the length of the lists file.
    fn end(&self) -> u64 {
        let last = self.pages.as_ref().and_then(|pages| pages.blocks.last());
        let blocks_end = self.blocks.last().map_or(0, |block| block.start + block.len);
        let refinements_end = self
            .refinements
            .as_ref()
            .map_or(blocks_end, |refinements| refinements.end);
        last.map_or(refinements_end, |page| page.start + page.len)
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
        let refined = self.vectors.refinement_bytes() > 0;
        // Every refinement block's place, as a head that read these bytes would find them.
        let mut refinements = refined.then(|| {
            let mut refinements = Refinements::new(
                partitions,
                PRODUCTS_PER_REFINEMENT_BLOCK,
                self.vectors.refinement_bytes(),
                0,
            );
            refinements.loaded.fill(true);
            refinements
        });
        let blocks = (0..partitions.lists())
            .map(|list| {
                let run = partitions.run(list);
                let mut block = Vec::new();
                self.vectors.write_rows(run.clone(), &mut block);
                if let Some(colours) = &self.colours {
                    colours.write_products(run.clone(), &mut block);
                }
                if let Some(refinements) = &mut refinements {
                    for number in refinements.of_list(list) {
                        let mut codes = Vec::new();
                        self.vectors
                            .write_refinements(refinements.products(list, &run, number), &mut codes);
                        let sha256: [u8; 32] = Sha256::digest(&codes).into();
                        block.extend_from_slice(&sha256);
                        refinements.sha256[number] = Some(sha256);
                    }
                }
                append_block(&mut lists_file, &block)
            })
            .collect();
        if let Some(refinements) = &mut refinements {
            let start = lists_file.len() as u64;
            self.vectors.write_refinements(0..self.len(), &mut lists_file);
            (refinements.start, refinements.end) = (start, lists_file.len() as u64);
        }
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
            refinements,
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

    /// Where block `block` lies in the lists file of a ranged catalog: the bytes from `start` up
    /// to `end`. Blocks are numbered as [`Index::blocks_to_load`] names them: the lists' first,
    /// then refined pq's refinement blocks.
    pub fn block_range(&self, block: usize) -> Option<Range<u64>> {
        let blocks = self.blocks.as_ref()?;
        if let Some(list) = blocks.blocks.get(block) {
            return Some(list.start..list.start + list.len);
        }
        let (refinements, partitions) = (blocks.refinements.as_ref()?, self.partitions.as_ref()?);
        let number = block - blocks.blocks.len();
        let list = self.list_of_refinement(number)?;
        Some(refinements.bytes_of(&refinements.products(list, &partitions.run(list), number)))
    }

    /// The list whose products refinement block `number` holds.
    fn list_of_refinement(&self, number: usize) -> Option<usize> {
        let refinements = self.blocks.as_ref()?.refinements.as_ref()?;
        (number < refinements.blocks()).then(|| refinements.first_blocks.partition_point(|&first| first <= number) - 1)
    }

    /// Loads block `block` (a list's, or a refinement block, numbered as
    /// [`Index::block_range`] says), refusing one that is not the block the head vouches for.
    pub fn load_block(&mut self, block: usize, bytes: &[u8]) -> Result<(), IndexError> {
        let lists = self.lists().map_or(0, |(lists, _)| lists);
        if block < lists || !self.is_ranged() {
            self.load_list(block, bytes)
        } else {
            self.load_refinement(block - lists, bytes)
        }
    }

    /// Loads refinement block `number`, whose list's block holds its sha256 and so must be
    /// loaded first.
    fn load_refinement(&mut self, number: usize, bytes: &[u8]) -> Result<(), IndexError> {
        let lists = self.lists().map_or(0, |(lists, _)| lists);
        let list = self.list_of_refinement(number).ok_or(IndexError::NoSuchList {
            list: lists + number,
            lists: lists + self.refinement_blocks(),
        })?;
        let (Some(blocks), Some(partitions)) = (&mut self.blocks, &self.partitions) else {
            return Err(IndexError::NotRanged);
        };
        let refinements = blocks
            .refinements
            .as_mut()
            .expect("a refinement block's list was found");
        let Some(sha256) = refinements.sha256[number] else {
            return Err(IndexError::RefinementBeforeList { list });
        };
        if Sha256::digest(bytes)[..] != sha256 {
            return Err(IndexError::BlockMismatch { list: lists + number });
        }
        if refinements.loaded[number] {
            return Ok(());
        }
        let products = refinements.products(list, &partitions.run(list), number);
        let mut reader = Reader {
            bytes,
            section: "refinement block",
        };
        self.vectors.read_refinements(products.clone(), &mut reader)?;
        reader.finish(&format!("the refinement codes of its {} products need", products.len()))?;
        refinements.loaded[number] = true;
        Ok(())
    }

    /// The number of refinement blocks of a ranged catalog of refined pq.
    fn refinement_blocks(&self) -> usize {
        self.blocks
            .as_ref()
            .and_then(|blocks| blocks.refinements.as_ref())
            .map_or(0, Refinements::blocks)
    }

    /// Whether the refinement codes of the product at `product` are at hand: always, unless its
    /// refinement block of a ranged catalog is not loaded yet.
    pub(super) fn is_refined(&self, product: usize) -> bool {
        let Some(refinements) = self.blocks.as_ref().and_then(|blocks| blocks.refinements.as_ref()) else {
            return true;
        };
        self.refinement_block_of(product)
            .is_some_and(|number| refinements.loaded[number])
    }

    /// Loads the block of `list`, refusing one that is not the block the head vouches for.
    fn load_list(&mut self, list: usize, block: &[u8]) -> Result<(), IndexError> {
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
        if let Some(refinements) = &mut blocks.refinements {
            for number in refinements.of_list(list) {
                let sha256 = reader.take(32, "refinement checksums")?;
                refinements.sha256[number] = Some(sha256.try_into().expect("32 bytes"));
            }
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
        // The lists first: their blocks vouch for the refinement blocks.
        for block in 0..lists + self.refinement_blocks() {
            self.load_block_from(block, file)?;
        }
        for page in 0..pages {
            let range = self.page_range(page).expect("a page of this head");
            let bytes = file
                .get(range.start as usize..range.end as usize)
                .ok_or(IndexError::PageMismatch { page })?;
            self.load_page(page, bytes)?;
        }
        Ok(())
    }

    /// Loads the blocks a search for `query` needs ([`Index::blocks_to_load`]) from `lists_file`
    /// held in memory, round after round as the widget fetches them by Range requests, and
    /// returns each round's blocks: how native tools and tests see what a ranged catalog fetches.
    /// A search still asking after [`MOST_BLOCK_ROUNDS`] rounds is an error, as in the widget.
    pub fn load_needed(
        &mut self,
        lists_file: &[u8],
        query: &[f32],
        colour: Option<ColourQuery>,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<usize>>, IndexError> {
        let mut rounds = Vec::new();
        loop {
            let blocks = self.blocks_to_load(query, colour, k, filter, None);
            if blocks.is_empty() {
                return Ok(rounds);
            }
            if rounds.len() == MOST_BLOCK_ROUNDS {
                return Err(corrupt(format!(
                    "a search still needs blocks after {MOST_BLOCK_ROUNDS} rounds"
                )));
            }
            for &block in &blocks {
                self.load_block_from(block, lists_file)?;
            }
            rounds.push(blocks);
        }
    }

    /// Loads `block` (of this head) from the whole lists file held in memory.
    fn load_block_from(&mut self, block: usize, file: &[u8]) -> Result<(), IndexError> {
        let range = self.block_range(block).expect("a block this head names");
        let bytes = file
            .get(range.start as usize..range.end as usize)
            .ok_or(IndexError::BlockMismatch { list: block })?;
        self.load_block(block, bytes)
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
    pub fn page_range(&self, page: usize) -> Option<Range<u64>> {
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

    /// The blocks, not loaded yet, that a search for `query` (blending in `colour`, if any) with
    /// `k` results passing `filter` (and not `skip`) needs next: the lists it scans, nearest
    /// first; once they are loaded, refined pq's refinement blocks of its best candidates
    /// (numbered after the lists). Fetch and load them ([`Index::block_range`],
    /// [`Index::load_block`]) and ask again until none are left. Empty unless ranged.
    pub fn blocks_to_load(
        &self,
        query: &[f32],
        colour: Option<ColourQuery>,
        k: usize,
        filter: &Filter,
        skip: Option<usize>,
    ) -> Vec<usize> {
        let Some(blocks) = &self.blocks else {
            return Vec::new();
        };
        let mut lists = self.lists_scanned(query, k, filter, skip);
        lists.retain(|&list| !blocks.loaded[list]);
        if !lists.is_empty() || blocks.refinements.is_none() || query.len() != self.dims {
            return lists;
        }
        let (candidates, _) = self.candidates(&unit_length(query), colour, k, filter, skip);
        let mut refinements: Vec<usize> = candidates
            .iter()
            .filter(|hit| !self.is_refined(hit.product))
            .filter_map(|hit| self.refinement_block_of(hit.product))
            .map(|number| blocks.blocks.len() + number)
            .collect();
        refinements.sort_unstable();
        refinements.dedup();
        refinements
    }

    /// The blocks, not loaded yet, that "more like this" for the product at `product` (its colour
    /// counting `colour_weight`) with `k` results passing `filter` needs next: the product's own
    /// list, then its refinement block (its stored vector is the query), then those of
    /// [`Index::blocks_to_load`]. Ask again after loading them until none are left.
    pub fn blocks_to_load_similar(&self, product: usize, colour_weight: f32, k: usize, filter: &Filter) -> Vec<usize> {
        if !self.is_loaded(product) {
            return self.list_of(product).into_iter().collect();
        }
        if !self.is_refined(product) {
            let lists = self.lists().map_or(0, |(lists, _)| lists);
            return self
                .refinement_block_of(product)
                .map(|number| lists + number)
                .into_iter()
                .collect();
        }
        self.with_similar_query(product, colour_weight, |stored, colour| {
            self.blocks_to_load(stored, colour, k, filter, Some(product))
        })
        .unwrap_or_default()
    }

    /// The refinement block holding the product at `product`, for a ranged catalog of refined pq.
    fn refinement_block_of(&self, product: usize) -> Option<usize> {
        let refinements = self.blocks.as_ref()?.refinements.as_ref()?;
        let partitions = self.partitions.as_ref()?;
        let list = partitions.list_of(product)?;
        Some(refinements.block_of(list, &partitions.run(list), product))
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

/// Makes `lists_file` what `head` vouches for, as writing does: the sha256 of each refinement
/// block into its list's block, then of each list and page into the head, then the head's own
/// checksum. So a fuzzer's mutations of either file reach the parsing behind the checksums
/// instead of all failing them.
#[cfg(fuzzing)]
pub fn reseal_blocks(head: &mut [u8], lists_file: &mut [u8]) {
    super::format::reseal(head);
    let Ok(index) = Index::from_bytes(head) else {
        return;
    };
    let Some(blocks) = &index.blocks else {
        return;
    };
    let lists = blocks.blocks.len();
    let file_len = lists_file.len() as u64;
    let in_file = |range: Range<u64>| (range.end <= file_len).then(|| range.start as usize..range.end as usize);
    if let Some(refinements) = &blocks.refinements {
        for list in 0..lists {
            let Some(block) = index.block_range(list).and_then(in_file) else {
                continue;
            };
            // The head's layout check made each list's block long enough for these checksums.
            let numbers = refinements.of_list(list);
            let first = block.end - numbers.len() * 32;
            for (number, at) in numbers.zip((first..).step_by(32)) {
                if let Some(range) = index.block_range(lists + number).and_then(in_file) {
                    let sha256 = Sha256::digest(&lists_file[range]);
                    lists_file[at..at + 32].copy_from_slice(&sha256);
                }
            }
        }
    }
    let list_entries = blocks
        .blocks
        .iter()
        .enumerate()
        .map(|(list, block)| (index.block_range(list), block));
    let page_entries = blocks
        .pages
        .iter()
        .flat_map(|pages| pages.blocks.iter().enumerate())
        .map(|(page, block)| (index.page_range(page), block));
    for (range, block) in list_entries.chain(page_entries) {
        let Some(range) = range.and_then(in_file) else {
            continue;
        };
        let sha256 = Sha256::digest(&lists_file[range]);
        // The block's entry in the head holds its old sha256: finding it there keeps the head's
        // layout in one place, the parser.
        if let Some(at) = head.windows(32).rposition(|window| window == block.sha256) {
            head[at..at + 32].copy_from_slice(&sha256);
        }
    }
    super::format::reseal(head);
}
