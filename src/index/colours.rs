//! The products' colours as an index keeps them: each product's own [`CompactColour`] (24
//! bytes), or, for a large catalog, the number of its nearest word in a palette of the
//! catalog's typical colours (2 bytes), which a search scores through a table of the
//! query's similarity to each word.
//!
//! The colours section (version 10): u32 palette words (0: none), the words as
//! [`COMPACT_BINS`] u16 each, then per product its own colour's words (no palette) or a u16
//! word number. A ranged catalog's head keeps the palette alone; each list's block holds
//! its products' part. Versions 3 to 9 hold the products' own colours without the count.

use std::ops::Range;

use super::codec::{corrupt, Reader};
use super::IndexError;
use crate::colour::{CompactColour, COMPACT_BINS, MAX_PALETTE_WORDS};

/// Bytes of one [`CompactColour`].
const COMPACT_BYTES: usize = COMPACT_BINS * 2;
/// Bytes of one word number.
const CODE_BYTES: usize = 2;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Colours {
    /// Each product's own colour.
    Own(Vec<CompactColour>),
    /// Each product's word in `palette`.
    Coded {
        palette: Vec<CompactColour>,
        codes: Vec<u16>,
    },
}

/// A query colour's similarity to each product, worked out once per search.
pub(super) enum ColourScores<'a> {
    Own(&'a [CompactColour], &'a [f32]),
    /// The similarity of each palette word, and each product's word.
    Coded(Vec<f32>, &'a [u16]),
}

impl ColourScores<'_> {
    pub(super) fn of(&self, product: usize) -> f32 {
        match self {
            ColourScores::Own(colours, histogram) => colours[product].similarity(histogram),
            ColourScores::Coded(words, codes) => words[usize::from(codes[product])],
        }
    }
}

impl Colours {
    pub(super) fn len(&self) -> usize {
        match self {
            Colours::Own(colours) => colours.len(),
            Colours::Coded { codes, .. } => codes.len(),
        }
    }

    pub(super) fn get(&self, product: usize) -> Option<CompactColour> {
        match self {
            Colours::Own(colours) => colours.get(product).copied(),
            Colours::Coded { palette, codes } => codes.get(product).map(|&code| palette[usize::from(code)]),
        }
    }

    /// The words of the palette, when the colours are coded.
    pub(super) fn palette_len(&self) -> Option<usize> {
        match self {
            Colours::Own(_) => None,
            Colours::Coded { palette, .. } => Some(palette.len()),
        }
    }

    /// Scores products against the query colour `histogram`.
    pub(super) fn scores<'a>(&'a self, histogram: &'a [f32]) -> ColourScores<'a> {
        match self {
            Colours::Own(colours) => ColourScores::Own(colours, histogram),
            Colours::Coded { palette, codes } => {
                ColourScores::Coded(palette.iter().map(|word| word.similarity(histogram)).collect(), codes)
            }
        }
    }

    /// The colours of the products in `order`.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn reordered(self, order: &[usize]) -> Colours {
        match self {
            Colours::Own(colours) => Colours::Own(order.iter().map(|&product| colours[product]).collect()),
            Colours::Coded { palette, codes } => Colours::Coded {
                palette,
                codes: order.iter().map(|&product| codes[product]).collect(),
            },
        }
    }

    /// The same colours as the numbers of their nearest words in a palette of `words`.
    #[cfg(not(target_arch = "wasm32"))]
    pub(super) fn coded(self, words: usize) -> Colours {
        let own = match self {
            Colours::Own(own) => own,
            coded @ Colours::Coded { .. } => return coded,
        };
        let palette = crate::colour::train_palette(&own, words);
        let codes = crate::colour::palette_codes(&palette, &own);
        Colours::Coded { palette, codes }
    }

    /// The placeholder colours of a ranged catalog's `count` products, before any list loads.
    pub(super) fn unloaded(palette: Option<Vec<CompactColour>>, count: usize) -> Colours {
        match palette {
            Some(palette) => Colours::Coded {
                palette,
                codes: vec![0; count],
            },
            None => Colours::Own(vec![CompactColour::default(); count]),
        }
    }

    /// Bytes each product's colour takes in the colours section and in a list's block.
    pub(super) fn product_bytes(&self) -> usize {
        product_bytes(self.palette_len().is_some())
    }

    /// The colours section; for a ranged catalog's head (`in_head`), the palette alone.
    pub(super) fn write_section(&self, in_head: bool, bytes: &mut Vec<u8>) {
        let palette: &[CompactColour] = match self {
            Colours::Own(_) => &[],
            Colours::Coded { palette, .. } => palette,
        };
        if in_head && palette.is_empty() {
            return;
        }
        bytes.extend_from_slice(&(palette.len() as u32).to_le_bytes());
        write_compact(palette, bytes);
        if !in_head {
            self.write_products(0..self.len(), bytes);
        }
    }

    /// The colours of the products in `run`, as a list's block holds them.
    pub(super) fn write_products(&self, run: Range<usize>, bytes: &mut Vec<u8>) {
        match self {
            Colours::Own(colours) => write_compact(&colours[run], bytes),
            Colours::Coded { codes, .. } => bytes.extend(codes[run].iter().flat_map(|code| code.to_le_bytes())),
        }
    }

    /// Reads the colours of the products from `first` on from `bytes`, exactly as long.
    pub(super) fn read_products(&mut self, bytes: &[u8], first: usize) -> Result<(), IndexError> {
        match self {
            Colours::Own(colours) => read_compact(bytes, &mut colours[first..], "product", first),
            Colours::Coded { palette, codes } => {
                for (position, (code, pair)) in codes[first..]
                    .iter_mut()
                    .zip(bytes.chunks_exact(CODE_BYTES))
                    .enumerate()
                {
                    *code = u16::from_le_bytes([pair[0], pair[1]]);
                    if usize::from(*code) >= palette.len() {
                        return Err(corrupt(format!(
                            "product {} has colour {} of a palette of {}",
                            first + position,
                            code,
                            palette.len()
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads the colours section of `count` products (`counted`: of version 10 or later, which
    /// begins with the palette's size): `None` when empty. `head` is `Some(in_blocks)` for a
    /// ranged catalog's head, where only a palette may lie and whose list blocks hold the
    /// products' colours when `in_blocks`; it then returns placeholders for the lists to fill.
    pub(super) fn read_section(
        section: &[u8],
        count: usize,
        counted: bool,
        head: Option<bool>,
    ) -> Result<Option<Colours>, IndexError> {
        if section.is_empty() {
            return Ok(head
                .filter(|&in_blocks| in_blocks)
                .map(|_| Colours::unloaded(None, count)));
        }
        let mut reader = Reader {
            bytes: section,
            section: "colours",
        };
        let words = if counted {
            reader.u32("palette size")? as usize
        } else {
            0
        };
        if words > MAX_PALETTE_WORDS {
            return Err(corrupt(format!(
                "its colour palette has {words} words, more than {MAX_PALETTE_WORDS}"
            )));
        }
        let mut palette = vec![CompactColour::default(); words];
        read_compact(
            reader.take(words * COMPACT_BYTES, "palette")?,
            &mut palette,
            "palette word",
            0,
        )?;
        let palette = (words > 0).then_some(palette);
        let colours = match head {
            Some(in_blocks) if palette.is_some() && in_blocks => Colours::unloaded(palette, count),
            Some(_) => {
                return Err(corrupt(
                    "its head holds colours that are no palette for its list blocks".into(),
                ))
            }
            None => {
                let needed = count as u64 * product_bytes(palette.is_some()) as u64;
                if reader.bytes.len() as u64 != needed {
                    return Err(corrupt(format!(
                        "the colours section has {} bytes for its products, {count} products need {needed}",
                        reader.bytes.len()
                    )));
                }
                let mut colours = Colours::unloaded(palette, count);
                colours.read_products(reader.take(needed as usize, "colours")?, 0)?;
                colours
            }
        };
        reader.finish("its colours need")?;
        Ok(Some(colours))
    }
}

/// Bytes a product's colour takes: a word number with a palette, else its own colour.
fn product_bytes(palette: bool) -> usize {
    if palette {
        CODE_BYTES
    } else {
        COMPACT_BYTES
    }
}

fn write_compact(colours: &[CompactColour], bytes: &mut Vec<u8>) {
    bytes.extend(colours.iter().flat_map(|colour| colour.0).flat_map(u16::to_le_bytes));
}

/// Fills `colours` from `bytes`, refusing a colour that names no histogram bin; `what` and
/// `first` name them in the message.
fn read_compact(bytes: &[u8], colours: &mut [CompactColour], what: &str, first: usize) -> Result<(), IndexError> {
    for (position, (colour, chunk)) in colours.iter_mut().zip(bytes.chunks_exact(COMPACT_BYTES)).enumerate() {
        let mut words = [0u16; COMPACT_BINS];
        for (word, pair) in words.iter_mut().zip(chunk.chunks_exact(2)) {
            *word = u16::from_le_bytes([pair[0], pair[1]]);
        }
        *colour = CompactColour(words);
        if !colour.is_valid() {
            return Err(corrupt(format!("{what} {} has an invalid colour", first + position)));
        }
    }
    Ok(())
}
