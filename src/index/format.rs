//! The index file format, version 12. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "OTLENSIX"
//!      8     4  format version (12)
//!     12     4  header length (172; sections start at or after it)
//!     16     4  vector codec (1 = int8, 2 = product quantisation, 3 = binary + int8,
//!                  4 = refined product quantisation, since version 12)
//!     20     4  dims
//!     24     4  product count
//!     28    32  sha256 of the model file the embeddings came from
//!     60     8  metadata offset      68  8  metadata length
//!     76     8  vectors offset       84  8  vectors length
//!     92    32  sha256 of every byte after the header
//!    124     8  colours offset      132  8  colours length (0: none)
//!    140     8  partitions offset   148  8  partitions length (0: none)
//!    156     8  blocks offset       164  8  blocks length (0: none)
//! ```
//!
//! Metadata: the products as a table, gzip-compressed, laid out as [`super::table`] describes.
//! Versions 2 to 6 (still read) stored them as a gzip-compressed JSON array, version 1 as
//! plain JSON.
//! Vectors, by codec:
//! - int8: `count` f32 scales, then `count * dims` i8 codes, row by row;
//! - product quantisation: u32 `subspaces`, u32 `kept` (the principal dimensions quantised,
//!   a multiple of `subspaces`; up to version 7 absent and `dims`), then the `kept * dims`
//!   rotation (row-major), then `subspaces * 256 * (kept / subspaces)` centroids, subspace by
//!   subspace, each value an f16 (an f32 up to version 5), then `count * subspaces` u8 codes,
//!   row by row;
//! - refined product quantisation: the product quantisation layout's parameters, then u32
//!   `refinement` and `refinement * 256 * (kept / refinement)` f16 centroids of the residual,
//!   then `count * subspaces` u8 codes, then `count * refinement` u8 refinement codes;
//! - binary: `dims` f32 (the catalog mean), `count * ceil(dims / 64)` u64 sign words, then
//!   the int8 layout.
//!
//! Colours (version 3; versions 1 and 2 end their header at 124 and have none): `count *`
//! [`COMPACT_BINS`] u16 words, product by product, each [`CompactColour`]'s `bin << 7 | weight`;
//! since version 10 after a palette, which may replace them with word numbers, as
//! [`super::colours`] describes.
//!
//! Partitions (version 4; version 3 ends its header at 140 and has none): the inverted lists,
//! laid out as [`super::partition`] describes (version 9 adds how many lists to probe at most
//! and the margin that picks them, version 11 whether the codes are offsets from the lists'
//! centroids).
//!
//! Blocks (version 5; version 4 ends its header at 156 and has none): present in the head of
//! a ranged catalog only, whose vectors section then holds the codec's parameters alone and
//! whose colours section is empty or holds the palette alone; see [`super::ranged`]. Version
//! 6 stores the product quantiser's floats as f16, and the blocks section of a ranged
//! catalog's head may also locate pages of product details.
//!
//! Reading checks every size against the buffer before allocating, so a hostile or
//! damaged file costs at most a copy of itself, and its metadata at most
//! [`METADATA_BYTES_PER_PRODUCT`] per product once inflated.

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use super::codec::{QuantiserLayout, Reader, Vectors, PQ_ID, REFINED_PQ_ID};
use super::colours::Colours;
use super::partition::{Partitions, PartitionsLayout};
use super::ranged::Blocks;
use super::{Index, IndexError};
use crate::catalog::Product;

pub const MAGIC: [u8; 8] = *b"OTLENSIX";
pub const FORMAT_VERSION: u32 = 12;
/// The oldest version still read: version 1 differs only in storing the metadata uncompressed.
const PLAIN_METADATA_VERSION: u32 = 1;
/// The first version with a colours section, and a header long enough to locate it.
const COLOURS_VERSION: u32 = 3;
const HEADER_LEN_BEFORE_COLOURS: usize = 124;
/// The first version with a partitions section.
const PARTITIONS_VERSION: u32 = 4;
const HEADER_LEN_BEFORE_PARTITIONS: usize = 140;
/// The first version with a blocks section.
const BLOCKS_VERSION: u32 = 5;
const HEADER_LEN_BEFORE_BLOCKS: usize = 156;
/// The first version whose product quantiser's floats are f16.
const HALF_QUANTISER_VERSION: u32 = 6;
/// The first version whose metadata is a table rather than JSON.
const TABLE_METADATA_VERSION: u32 = 7;
/// The first version whose product quantiser may keep fewer dimensions than the embedding's.
const PROJECTED_QUANTISER_VERSION: u32 = 8;
/// The first version whose inverted lists record a probe margin.
const PROBE_MARGIN_VERSION: u32 = 9;
/// The first version whose colours section may hold a palette.
const COLOUR_PALETTE_VERSION: u32 = 10;
/// The first version whose inverted lists say whether the codes are offsets from their centroids.
const RELATIVE_CODES_VERSION: u32 = 11;
/// Most metadata one product may inflate to (a product's JSON is a few hundred bytes), so that
/// a hostile file cannot make the reader allocate without bound.
pub const METADATA_BYTES_PER_PRODUCT: u64 = 64 * 1024;
pub const HEADER_LEN: usize = 172;
const HEADER_LEN_AT: usize = 12;
const CHECKSUM_AT: usize = 92;

impl Index {
    /// The index file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode(&self.products, None)
    }

    /// The index file with `products` as its metadata, or with `blocks` (a blocks section) the
    /// head of a ranged catalog: the rows and colours then live in the lists file instead.
    pub(super) fn encode(&self, products: &[Product], blocks: Option<Vec<u8>>) -> Vec<u8> {
        let metadata = deflate(&super::table::write(products));
        let mut vectors = Vec::new();
        let mut colours = Vec::new();
        if blocks.is_some() {
            self.vectors.write_parameters(&mut vectors);
        } else {
            self.vectors.write(&mut vectors);
        }
        if let Some(stored) = &self.colours {
            stored.write_section(blocks.is_some(), &mut colours);
        }
        let vectors_len = vectors.len();
        let blocks = blocks.unwrap_or_default();
        let mut partitions = Vec::new();
        if let Some(lists) = &self.partitions {
            lists.write(&mut partitions);
        }
        let mut bytes = Vec::with_capacity(
            HEADER_LEN + metadata.len() + vectors_len + colours.len() + partitions.len() + blocks.len(),
        );
        bytes.extend_from_slice(&MAGIC);
        for field in [
            FORMAT_VERSION,
            HEADER_LEN as u32,
            self.codec().id(),
            self.dims as u32,
            self.products.len() as u32,
        ] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(&self.model_sha256);
        let metadata_at = HEADER_LEN;
        let vectors_at = metadata_at + metadata.len();
        for field in [metadata_at, metadata.len(), vectors_at, vectors_len] {
            bytes.extend_from_slice(&(field as u64).to_le_bytes());
        }
        bytes.resize(CHECKSUM_AT + 32, 0);
        let colours_at = vectors_at + vectors_len;
        let partitions_at = colours_at + colours.len();
        let blocks_at = partitions_at + partitions.len();
        for field in [
            colours_at,
            colours.len(),
            partitions_at,
            partitions.len(),
            blocks_at,
            blocks.len(),
        ] {
            bytes.extend_from_slice(&(field as u64).to_le_bytes());
        }
        bytes.extend_from_slice(&metadata);
        bytes.extend_from_slice(&vectors);
        bytes.extend_from_slice(&colours);
        bytes.extend_from_slice(&partitions);
        bytes.extend_from_slice(&blocks);
        seal(&mut bytes, HEADER_LEN);
        bytes
    }

    /// Bytes of each product's codes: its row and, for refined pq, its refinement codes.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn product_vector_bytes(&self) -> usize {
        self.vectors.row_bytes() + self.vectors.refinement_bytes()
    }

    /// Bytes the vectors take in the file (all of it but the header and the product metadata).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn vector_bytes(&self) -> usize {
        let mut vectors = Vec::new();
        self.vectors.write(&mut vectors);
        vectors.len()
    }

    /// Reads an index file, refusing anything that is not a complete, intact index of version
    /// 1 to [`FORMAT_VERSION`]. The head of a ranged catalog reads with no list loaded.
    pub fn from_bytes(bytes: &[u8]) -> Result<Index, IndexError> {
        let found = bytes.len() as u64;
        let magic_part = bytes.len().min(MAGIC.len());
        if bytes[..magic_part] != MAGIC[..magic_part] {
            return Err(IndexError::BadMagic);
        }
        let truncated = |expected: u64| IndexError::Truncated { expected, found };
        // The version comes first so that a newer file is reported as such, whatever its header says.
        if bytes.len() < 12 {
            return Err(truncated(HEADER_LEN as u64));
        }
        let version = read_u32(bytes, 8);
        if !(PLAIN_METADATA_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(IndexError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let min_header = match version {
            BLOCKS_VERSION.. => HEADER_LEN,
            PARTITIONS_VERSION => HEADER_LEN_BEFORE_BLOCKS,
            COLOURS_VERSION => HEADER_LEN_BEFORE_PARTITIONS,
            _ => HEADER_LEN_BEFORE_COLOURS,
        };
        if bytes.len() < min_header {
            return Err(truncated(min_header as u64));
        }
        let header_len = read_u32(bytes, HEADER_LEN_AT) as u64;
        if header_len < min_header as u64 {
            return Err(corrupt(format!("header length {header_len} is below {min_header}")));
        }
        let metadata = Section::read(bytes, 60, header_len, "metadata")?;
        let vectors = Section::read(bytes, 76, header_len, "vectors")?;
        let colours = Section::optional(bytes, version >= COLOURS_VERSION, 124, header_len, "colours")?;
        let partitions = Section::optional(bytes, version >= PARTITIONS_VERSION, 140, header_len, "partitions")?;
        let blocks = Section::optional(bytes, version >= BLOCKS_VERSION, 156, header_len, "blocks")?;
        let sections = [
            (&metadata, "metadata"),
            (&vectors, "vectors"),
            (&colours, "colours"),
            (&partitions, "partitions"),
            (&blocks, "blocks"),
        ];
        for (i, (x, x_name)) in sections.iter().enumerate() {
            for (y, y_name) in &sections[i + 1..] {
                if x.start < y.end && y.start < x.end {
                    return Err(corrupt(format!("the {x_name} and {y_name} sections overlap")));
                }
            }
        }
        let end = sections
            .iter()
            .map(|(section, _)| section.end)
            .fold(header_len, u64::max);
        if found < end {
            return Err(truncated(end));
        }
        if found > end {
            return Err(corrupt(format!(
                "{} unexpected bytes after the last section",
                found - end
            )));
        }
        if Sha256::digest(&bytes[header_len as usize..])[..] != bytes[CHECKSUM_AT..CHECKSUM_AT + 32] {
            return Err(IndexError::ChecksumMismatch);
        }

        let codec = read_u32(bytes, 16);
        let dims = read_u32(bytes, 20) as usize;
        let count = read_u32(bytes, 24) as usize;
        if dims == 0 || count == 0 {
            return Err(corrupt(format!("{count} products of {dims} dimensions")));
        }
        let inflated = if version == PLAIN_METADATA_VERSION {
            metadata.slice(bytes).to_vec()
        } else {
            inflate(metadata.slice(bytes), count as u64 * METADATA_BYTES_PER_PRODUCT)?
        };
        let products: Vec<Product> = if version >= TABLE_METADATA_VERSION {
            super::table::read(&inflated, count)?
        } else {
            serde_json::from_slice(&inflated).map_err(|e| corrupt(format!("unreadable product metadata: {e}")))?
        };
        if products.len() != count {
            return Err(corrupt(format!(
                "the header counts {count} products but the metadata lists {}",
                products.len()
            )));
        }
        let layout = match version {
            PROJECTED_QUANTISER_VERSION.. => QuantiserLayout::Projected,
            HALF_QUANTISER_VERSION.. => QuantiserLayout::SquareF16,
            _ => QuantiserLayout::SquareF32,
        };
        let partitions_layout = match version {
            RELATIVE_CODES_VERSION.. => PartitionsLayout::Flagged,
            PROBE_MARGIN_VERSION.. => PartitionsLayout::Margin,
            _ => PartitionsLayout::FixedProbe,
        };
        let partitions = partitions.slice(bytes);
        let partitions = (!partitions.is_empty())
            .then(|| Partitions::read(partitions, count, dims, partitions_layout))
            .transpose()?;
        if partitions.as_ref().is_some_and(Partitions::is_relative) && codec != PQ_ID && codec != REFINED_PQ_ID {
            return Err(corrupt(
                "its codes are said to be offsets from its lists' centroids, which only product quantisation stores"
                    .into(),
            ));
        }
        let blocks = blocks.slice(bytes);
        // Read after the metadata: the product count a head's rows make room for is then one
        // its own metadata lists, not any number a header may claim.
        let counted_colours = version >= COLOUR_PALETTE_VERSION;
        let (vectors, colours, blocks) = if blocks.is_empty() {
            let vectors = Vectors::read(codec, vectors.slice(bytes), count, dims, layout)?;
            let colours = Colours::read_section(colours.slice(bytes), count, counted_colours, None)?;
            (vectors, colours, None)
        } else {
            let Some(partitions) = &partitions else {
                return Err(corrupt("it has list blocks but no inverted lists".into()));
            };
            let mut reader = Reader {
                bytes: vectors.slice(bytes),
                section: "vectors",
            };
            let mut vectors = Vectors::read_parameters(codec, &mut reader, dims, layout)?;
            reader.finish("the codec's parameters need")?;
            let in_blocks = Blocks::hold_colours(blocks);
            let colours = Colours::read_section(colours.slice(bytes), count, counted_colours, Some(in_blocks))?;
            let colour_bytes = colours.as_ref().map_or(0, Colours::product_bytes);
            let product_bytes = (vectors.row_bytes() + colour_bytes, vectors.refinement_bytes());
            let blocks = Blocks::read(blocks, count, partitions, product_bytes)?;
            if count as u64 * vectors.row_bytes() as u64 > isize::MAX as u64 {
                return Err(corrupt(format!(
                    "its {count} products of {dims} dimensions cannot fit in this device's memory"
                )));
            }
            vectors.make_room(count);
            (vectors, colours, Some(blocks))
        };
        let mut model_sha256 = [0u8; 32];
        model_sha256.copy_from_slice(&bytes[28..60]);
        let mut index = Index::from_parts(model_sha256, dims, products, vectors);
        index.colours = colours;
        index.partitions = partitions;
        index.blocks = blocks;
        Ok(index)
    }
}

/// A byte range of the file, validated against the header and the u64 range.
struct Section {
    start: u64,
    end: u64,
}

impl Section {
    /// An absent section: empty, and overlapping nothing.
    const EMPTY: Section = Section { start: 0, end: 0 };

    fn read(bytes: &[u8], field_at: usize, header_len: u64, name: &str) -> Result<Section, IndexError> {
        let start = read_u64(bytes, field_at);
        let len = read_u64(bytes, field_at + 8);
        let end = start
            .checked_add(len)
            .ok_or_else(|| corrupt(format!("the {name} section lies outside any possible file")))?;
        if start < header_len {
            return Err(corrupt(format!("the {name} section overlaps the header")));
        }
        Ok(Section { start, end })
    }

    /// A section that files before some version lack (`in_version` false) and that an index
    /// without it marks with a zero length, and whatever offset.
    fn optional(
        bytes: &[u8],
        in_version: bool,
        field_at: usize,
        header_len: u64,
        name: &str,
    ) -> Result<Section, IndexError> {
        if in_version && read_u64(bytes, field_at + 8) > 0 {
            Section::read(bytes, field_at, header_len, name)
        } else {
            Ok(Section::EMPTY)
        }
    }

    /// Only called once the file is known to be at least `end` bytes long.
    fn slice<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start as usize..self.end as usize]
    }
}

/// `bytes` as a gzip member, as the metadata is stored.
pub(super) fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).expect("writing to memory cannot fail");
    encoder.finish().expect("writing to memory cannot fail")
}

/// The gzip member `compressed`, if it inflates to at most `limit` bytes.
pub(super) fn inflate(compressed: &[u8], limit: u64) -> Result<Vec<u8>, IndexError> {
    let mut inflated = Vec::new();
    GzDecoder::new(compressed)
        .take(limit + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| corrupt(format!("unreadable product metadata: {e}")))?;
    if inflated.len() as u64 > limit {
        return Err(corrupt(format!("the product metadata inflates beyond {limit} bytes")));
    }
    Ok(inflated)
}

fn corrupt(message: String) -> IndexError {
    IndexError::Corrupt(message)
}

/// Writes the sha256 of everything after the header into the header.
fn seal(bytes: &mut [u8], header_len: usize) {
    let checksum = Sha256::digest(&bytes[header_len..]);
    bytes[CHECKSUM_AT..CHECKSUM_AT + 32].copy_from_slice(&checksum);
}

/// Seals bytes whose header length field is plausible, as writing does, so that a fuzzer's
/// mutations reach the sections behind the checksum instead of all failing it.
#[cfg(fuzzing)]
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        let header_len = read_u32(bytes, HEADER_LEN_AT) as usize;
        if (HEADER_LEN..=bytes.len()).contains(&header_len) {
            seal(bytes, header_len);
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(field)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}
