//! Ranged catalogs: a partitioned index split into a head file, which the widget loads first,
//! and a lists file of one block per inverted list, which it fetches with HTTP Range
//! requests as searches reach the lists, so that a query on a large catalog downloads only
//! the lists it scans.
//!
//! The head is an index file whose vectors section holds the codec's parameters alone, whose
//! colours section is empty and whose blocks section says where each list's block lies in
//! the lists file: u32 flags (bit 0: the blocks hold colours), u32 list count, then per list
//! u64 start, u64 length and the block's sha256. The head's own checksum covers these, so a
//! block the head vouches for is as trustworthy as the head.
//!
//! A block holds its products' rows as the vectors section lays out all of them, then, with
//! colours, their colours as the colours section does. The blocks follow one another in list
//! order, without gaps.

use std::cell::Cell;

use sha2::{Digest, Sha256};

use super::codec::{corrupt, Reader};
use super::format::{read_colours_into, COLOUR_BYTES};
use super::partition::Partitions;
use super::{unit_length, Filter, Index, IndexError};

const HAS_COLOURS: u32 = 1;
/// Bytes a list takes in the blocks section: start, length, sha256.
const ENTRY_BYTES: usize = 8 + 8 + 32;

/// Where each list's block lies in the lists file, and which lists are loaded.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Blocks {
    blocks: Vec<Block>,
    loaded: Vec<bool>,
    colours: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct Block {
    start: u64,
    len: u64,
    sha256: [u8; 32],
}

impl Blocks {
    pub(super) fn has_colours(&self) -> bool {
        self.colours
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn write(&self, bytes: &mut Vec<u8>) {
        let flags = if self.colours { HAS_COLOURS } else { 0 };
        for field in [flags, self.blocks.len() as u32] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        for block in &self.blocks {
            bytes.extend_from_slice(&block.start.to_le_bytes());
            bytes.extend_from_slice(&block.len.to_le_bytes());
            bytes.extend_from_slice(&block.sha256);
        }
    }

    /// Reads the blocks section of a head whose lists are `partitions` and whose products'
    /// rows take `row_bytes` each; no list is loaded yet.
    pub(super) fn read(section: &[u8], partitions: &Partitions, row_bytes: usize) -> Result<Blocks, IndexError> {
        let mut reader = Reader {
            bytes: section,
            section: "blocks",
        };
        let flags = reader.u32("flags")?;
        let lists = reader.u32("list count")? as usize;
        let entries = reader.take(lists.saturating_mul(ENTRY_BYTES), "blocks")?;
        reader.finish("its blocks need")?;
        let colours = flags == HAS_COLOURS;
        let product_bytes = (row_bytes + if colours { COLOUR_BYTES } else { 0 }) as u64;
        let blocks: Vec<Block> = entries
            .chunks_exact(ENTRY_BYTES)
            .map(|entry| Block {
                start: u64::from_le_bytes(entry[..8].try_into().expect("8 bytes")),
                len: u64::from_le_bytes(entry[8..16].try_into().expect("8 bytes")),
                sha256: entry[16..].try_into().expect("32 bytes"),
            })
            .collect();
        // One message for every inconsistency: each means the same damage to a shopper.
        let mut end = 0;
        let consistent = flags & !HAS_COLOURS == 0
            && lists == partitions.lists()
            && blocks.iter().enumerate().all(|(list, block)| {
                let in_order = block.start == end;
                end = block.start.saturating_add(block.len);
                in_order && block.len == partitions.run(list).len() as u64 * product_bytes
            });
        if !consistent {
            return Err(corrupt(format!(
                "its list blocks do not match its {} inverted lists",
                partitions.lists()
            )));
        }
        Ok(Blocks {
            loaded: vec![false; lists],
            blocks,
            colours,
        })
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
                let start = lists_file.len();
                self.vectors.write_rows(run.clone(), &mut lists_file);
                if let Some(colours) = &self.colours {
                    super::format::write_colours(&colours[run], &mut lists_file);
                }
                Block {
                    start: start as u64,
                    len: (lists_file.len() - start) as u64,
                    sha256: Sha256::digest(&lists_file[start..]).into(),
                }
            })
            .collect();
        let blocks = Blocks {
            loaded: vec![true; partitions.lists()],
            blocks,
            colours: self.colours.is_some(),
        };
        let mut section = Vec::new();
        blocks.write(&mut section);
        Ok((self.encode(Some(section)), lists_file))
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
        if block.len() as u64 != expected.len || Sha256::digest(block)[..] != expected.sha256 {
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
            let bytes = reader.take(run.len() * COLOUR_BYTES, "colours")?;
            read_colours_into(bytes, &mut colours[run.clone()], run.start)?;
        }
        reader.finish(&format!("the rows of its {} products need", run.len()))?;
        blocks.loaded[list] = true;
        Ok(())
    }

    /// Loads every list from the whole lists file (for hosts that ignore Range requests).
    pub fn load_lists_file(&mut self, file: &[u8]) -> Result<(), IndexError> {
        let lists = self.blocks.as_ref().ok_or(IndexError::NotRanged)?.blocks.len();
        // Before hashing any block: bytes past the last one mean another file. A short file
        // is refused by the block it cuts.
        let end = self.block_range(lists - 1).map_or(0, |range| range.end);
        if file.len() as u64 > end {
            return Err(IndexError::Truncated {
                expected: end,
                found: file.len() as u64,
            });
        }
        for list in 0..lists {
            let range = self.block_range(list).expect("a list of this head");
            let block = file
                .get(range.start as usize..range.end as usize)
                .ok_or(IndexError::BlockMismatch { list })?;
            self.load_list(list, block)?;
        }
        Ok(())
    }

    /// The lists, not loaded yet, that a search for `query` with `k` results passing `filter`
    /// (and not `skip`) scans, nearest first: what to fetch before searching. Empty unless ranged.
    pub fn lists_to_load(&self, query: &[f32], k: usize, filter: &Filter, skip: Option<usize>) -> Vec<usize> {
        let (Some(blocks), Some(partitions)) = (&self.blocks, &self.partitions) else {
            return Vec::new();
        };
        if query.len() != self.dims {
            return Vec::new();
        }
        let matcher = self.columns.matcher(filter);
        let passed = Cell::new(0);
        let mut missing = Vec::new();
        // The lists a search takes, its filter's passes counted from the metadata, which the
        // head holds, where the search counts them as it scans.
        for list in partitions.to_scan(&unit_length(query), k.min(self.len()), &passed) {
            if !blocks.loaded[list] {
                missing.push(list);
            }
            let run = partitions.run(list);
            let passing = run
                .filter(|&product| Some(product) != skip && matcher.as_ref().is_none_or(|m| m.matches(product)))
                .count();
            passed.set(passed.get() + passing);
        }
        missing
    }

    /// Whether `list` may be scanned: loaded, or part of an index that is not ranged.
    pub(super) fn is_list_loaded(&self, list: usize) -> bool {
        self.blocks.as_ref().is_none_or(|blocks| blocks.loaded[list])
    }
}
