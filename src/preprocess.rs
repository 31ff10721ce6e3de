//! Photo bytes -> model input, identically on wasm and native.
//!
//! Every step is pure Rust with no platform-specific maths, so the same bytes give
//! the same tensor in the browser and in the companion binary. Decoding is bounded
//! before any pixel buffer is allocated (see [`DecodeLimits`]).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Rgb, RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};

/// Bounds on what a photo may be. Checked from the file header, before decoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    /// Largest accepted file, in bytes (default 30 MiB: a 50 MP phone JPEG is ~20 MiB).
    pub max_bytes: usize,
    /// Largest accepted width and height, in pixels (default 12,000).
    pub max_side: u32,
    /// Largest accepted width x height (default 50 MP, a high-end phone sensor).
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes (default 256 MiB).
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 30 << 20,
            max_side: 12_000,
            max_pixels: 50_000_000,
            max_alloc: 256 << 20,
        }
    }
}

/// How a model wants its input; stored in the model file's metadata by the importer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Side of the square input, in pixels.
    pub size: u32,
    /// Per-channel (R, G, B) mean and standard deviation applied to pixel / 255.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            size: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// Why a photo was refused. Messages are written for the shopper.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is too large ({bytes} bytes; the limit is {limit} bytes)")]
    FileTooLarge { bytes: usize, limit: usize },
    #[error("the photo is too large ({width}x{height} pixels; the limit is {max_side} pixels a side and {max_pixels} pixels in all)")]
    DimensionsTooLarge {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("this is not a supported image (JPEG, PNG, WebP, GIF or BMP)")]
    Unsupported,
    /// A recognised image kind we cannot read, e.g. "HEIC" or "12-bit JPEG".
    #[error("{0} images are not supported; use a JPEG, PNG, WebP, GIF or BMP photo")]
    UnsupportedKind(String),
    #[error("the photo needs more memory to decode than allowed ({limit} bytes)")]
    TooMuchMemory { limit: u64 },
    #[error("the image is damaged or incomplete: {0}")]
    Corrupt(String),
}

const SUPPORTED: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
];

/// Decodes a photo within `limits` and turns it upright according to its EXIF orientation.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::FileTooLarge {
            bytes: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = match image::guess_format(bytes) {
        Ok(format) if SUPPORTED.contains(&format) => format,
        Ok(other) => {
            let name = other.extensions_str().first().map_or("this kind of", |e| e);
            return Err(ImageError::UnsupportedKind(name.to_uppercase()));
        }
        Err(_) => return Err(heif_kind(bytes).map_or(ImageError::Unsupported, ImageError::UnsupportedKind)),
    };
    if format == ImageFormat::Jpeg {
        check_jpeg(bytes)?;
    }
    // Read the size from the header before any decoder runs: on wasm32 the PNG decoder refuses
    // a huge photo on its own (its buffer overflows usize) without saying how large it is.
    let side = |pixels: usize| u32::try_from(pixels).unwrap_or(u32::MAX);
    let header_size = imagesize::blob_size(bytes)
        .ok()
        .map(|size| (side(size.width), side(size.height)));
    if let Some((width, height)) = header_size {
        check_size(width, height, limits)?;
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| classify(e, header_size.unwrap_or_default(), limits))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, (width, height), limits))?;
    image.apply_orientation(orientation);
    Ok(if image.color().has_alpha() {
        over_white(&image.into_rgba8())
    } else {
        image.into_rgb8()
    })
}

/// Transparent parts become white, as on a catalog photo (dropping alpha would leave
/// whatever colour the editor stored there, often black).
fn over_white(image: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b, a] = image.get_pixel(x, y).0;
        let blend = |c: u8| ((u32::from(c) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255) as u8;
        Rgb([blend(r), blend(g), blend(b)])
    })
}

/// The HEIF family (iPhone photos, AVIF), which `image` does not recognise: an ISO-BMFF
/// file whose `ftyp` box names an image brand.
fn heif_kind(bytes: &[u8]) -> Option<String> {
    if bytes.get(4..8) != Some(b"ftyp") {
        return None;
    }
    let kind = match bytes.get(8..12)? {
        b"avif" | b"avis" => "AVIF",
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"hevm" | b"hevs" | b"mif1" | b"msf1" => "HEIC",
        _ => return None,
    };
    Some(kind.into())
}

/// Refuses the JPEG kinds the decoder cannot read (12-bit, lossless, arithmetic-coded,
/// hierarchical) by name, and a JPEG whose compressed pixels do not end with the end-of-image
/// marker: the decoder would fill what a cut-off file (an interrupted download) lacks with grey.
fn check_jpeg(bytes: &[u8]) -> Result<(), ImageError> {
    let incomplete = || ImageError::Corrupt("the file ends before the end of the image".into());
    // Walk the marker segments after SOI up to the first start-of-scan. Inside compressed data
    // 0xFF is always followed by 0x00 or a restart marker, so the first FF D9 after it is the end.
    let mut position = 2;
    while position + 4 <= bytes.len() {
        if bytes[position] != 0xFF {
            return Err(incomplete());
        }
        let marker = bytes[position + 1];
        if marker == 0xFF {
            position += 1; // fill byte
            continue;
        }
        let length = usize::from(u16::from_be_bytes([bytes[position + 2], bytes[position + 3]]));
        if let Some(kind) = unsupported_jpeg_kind(marker, bytes.get(position + 4).copied()) {
            return Err(ImageError::UnsupportedKind(kind));
        }
        position += 2 + length;
        if marker == 0xDA {
            let complete = bytes
                .get(position..)
                .is_some_and(|scan| scan.windows(2).any(|pair| pair == [0xFF, 0xD9]));
            return if complete { Ok(()) } else { Err(incomplete()) };
        }
    }
    Err(incomplete())
}

/// For a start-of-frame `marker` with sample `precision`: the name of a JPEG kind we cannot read.
fn unsupported_jpeg_kind(marker: u8, precision: Option<u8>) -> Option<String> {
    match marker {
        // Baseline, extended and progressive Huffman: readable at 8 bits.
        0xC0..=0xC2 => precision
            .filter(|&bits| bits != 8)
            .map(|bits| format!("{bits}-bit JPEG")),
        0xC3 => Some("lossless JPEG".into()),
        0xC5..=0xC7 => Some("hierarchical JPEG".into()),
        0xC9..=0xCB | 0xCD..=0xCF => Some("arithmetic-coded JPEG".into()),
        _ => None,
    }
}

fn check_size(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), ImageError> {
    let fits = width > 0
        && height > 0
        && width <= limits.max_side
        && height <= limits.max_side
        && u64::from(width) * u64::from(height) <= limits.max_pixels;
    if fits {
        Ok(())
    } else {
        Err(too_large(width, height, limits))
    }
}

fn too_large(width: u32, height: u32, limits: &DecodeLimits) -> ImageError {
    ImageError::DimensionsTooLarge {
        width,
        height,
        max_side: limits.max_side,
        max_pixels: limits.max_pixels,
    }
}

/// `dimensions`: the photo's size when the header has been read, else (0, 0).
fn classify(error: image::ImageError, (width, height): (u32, u32), limits: &DecodeLimits) -> ImageError {
    match error {
        // The size was checked; what remains is memory (e.g. a GIF frame larger than its screen).
        image::ImageError::Limits(_) if check_size(width, height, limits).is_ok() => ImageError::TooMuchMemory {
            limit: limits.max_alloc,
        },
        image::ImageError::Limits(_) => too_large(width, height, limits),
        image::ImageError::Unsupported(_) => ImageError::Unsupported,
        other => ImageError::Corrupt(other.to_string()),
    }
}

/// Centre square crop, resized to `spec.size`, as a normalised NCHW tensor (1x3xSxS).
///
/// Cropping before resizing gives the same picture as resize-then-crop at a fraction
/// of the work on large phone photos.
pub fn to_tensor(image: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    let (width, height) = image.dimensions();
    let side = width.min(height);
    let square = image::imageops::crop_imm(image, (width - side) / 2, (height - side) / 2, side, side).to_image();
    normalise(&resize(&square, spec.size, spec.size), spec)
}

/// [`to_tensor`] of the mirror image: what a catalog index averages with the photo's own
/// (`Embedder::embed_catalog_photo`).
pub fn to_mirrored_tensor(image: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    to_tensor(&image::imageops::flip_horizontal(image), spec)
}

/// `image` resized with a triangle (bilinear) filter: bit for bit what the image crate's
/// `resize(.., FilterType::Triangle)` gives, the same weights summed in the same order, but
/// over rows of bytes rather than pixel by pixel through generic accessors, which made
/// preparing a 768x576 photo (this resize and the colour thumbnail's) 2.5x slower in wasm.
/// Bit for bit, so that indexes built before still meet the same query embeddings.
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (source_width, source_height) = image.dimensions();
    if source_width == 0 || source_height == 0 {
        return RgbImage::new(width, height);
    }
    if (width, height) == (source_width, source_height) {
        return image.clone();
    }
    // Down the columns into f32 first, then along the rows, as the image crate does. Each
    // output row adds whole source rows, which the compiler turns into SIMD.
    let source_row = 3 * source_width as usize;
    let down = triangle_taps(source_height, height);
    let mut columns = vec![0f32; source_row * height as usize];
    for (out_row, taps) in columns.chunks_exact_mut(source_row).zip(&down) {
        for (row, &weight) in (taps.first..).zip(&taps.weights) {
            let source = &image.as_raw()[row * source_row..(row + 1) * source_row];
            for (out, &value) in out_row.iter_mut().zip(source) {
                *out += f32::from(value) * weight;
            }
        }
    }
    let across = triangle_taps(source_width, width);
    let mut resized = RgbImage::new(width, height);
    let out_rows = resized.chunks_exact_mut(3 * width as usize);
    for (out_row, row) in out_rows.zip(columns.chunks_exact(source_row)) {
        for (out, taps) in out_row.chunks_exact_mut(3).zip(&across) {
            let mut sum = [0f32; 3];
            for (column, &weight) in (taps.first..).zip(&taps.weights) {
                for (channel, total) in sum.iter_mut().enumerate() {
                    *total += row[3 * column + channel] * weight;
                }
            }
            for (value, total) in out.iter_mut().zip(sum) {
                *value = total.clamp(0.0, 255.0).round() as u8;
            }
        }
    }
    resized
}

/// The source pixels, from `first` on, that one output pixel of a triangle-filter resize
/// reads, with their weights.
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

/// The taps of each of `target` output pixels along an axis of `source` pixels, computed as
/// the image crate computes them.
fn triangle_taps(source: u32, target: u32) -> Vec<Taps> {
    let ratio = source as f32 / target as f32;
    // Shrinking widens the filter to cover every source pixel; enlarging keeps it one wide.
    let spread = if ratio < 1.0 { 1.0 } else { ratio };
    (0..target)
        .map(|out| {
            let centre = (out as f32 + 0.5) * ratio;
            let first = ((centre - spread).floor() as i64).clamp(0, i64::from(source) - 1);
            let end = ((centre + spread).ceil() as i64).clamp(first + 1, i64::from(source));
            let mut weights: Vec<f32> = (first..end)
                .map(|at| {
                    let distance = ((at as f32 - (centre - 0.5)) / spread).abs();
                    if distance < 1.0 {
                        1.0 - distance
                    } else {
                        0.0
                    }
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            weights.iter_mut().for_each(|weight| *weight /= sum);
            Taps {
                first: first as usize,
                weights,
            }
        })
        .collect()
}

/// A photo already `spec.size` pixels square as a normalised NCHW tensor (1x3xSxS).
pub fn normalise(resized: &RgbImage, spec: &InputSpec) -> Vec<f32> {
    debug_assert_eq!(resized.dimensions(), (spec.size, spec.size));
    let plane = (spec.size * spec.size) as usize;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, pixel) in resized.pixels().enumerate() {
        for c in 0..3 {
            tensor[c * plane + i] = (f32::from(pixel[c]) / 255.0 - spec.mean[c]) / spec.std[c];
        }
    }
    tensor
}

/// [`decode`] then [`to_tensor`].
pub fn preprocess(bytes: &[u8], spec: &InputSpec, limits: &DecodeLimits) -> Result<Vec<f32>, ImageError> {
    Ok(to_tensor(&decode(bytes, limits)?, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn png(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    #[test]
    fn resize_gives_the_image_crates_triangle_filter_bit_for_bit() {
        let mut state = 7u32;
        let photo = RgbImage::from_fn(97, 61, |_, _| {
            let mut byte = || {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 23) as u8
            };
            Rgb([byte(), byte(), byte()])
        });
        // Shrinking and enlarging, each axis alone, both, to one pixel, and to the same size.
        for (width, height) in [(224, 224), (64, 40), (33, 97), (1, 1), (97, 61), (97, 20), (200, 61)] {
            let expected = image::imageops::resize(&photo, width, height, image::imageops::FilterType::Triangle);
            assert!(resize(&photo, width, height) == expected, "{width}x{height}");
        }
    }

    #[test]
    fn tensor_is_nchw_and_normalised() {
        let image = RgbImage::from_pixel(10, 10, Rgb([255, 0, 128]));
        let spec = InputSpec {
            size: 4,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let tensor = to_tensor(&image, &spec);
        assert_eq!(tensor.len(), 3 * 16);
        assert!(tensor[..16].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(tensor[16..32].iter().all(|v| (v + 1.0).abs() < 1e-6));
        assert!(tensor[32..]
            .iter()
            .all(|v| (v - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6));
    }

    #[test]
    fn centre_crop_keeps_the_middle_of_a_tall_photo() {
        // A tall photo: red top quarter, green middle, blue bottom quarter.
        let image = RgbImage::from_fn(8, 16, |_, y| match y {
            0..=3 => Rgb([255, 0, 0]),
            12..=15 => Rgb([0, 0, 255]),
            _ => Rgb([0, 255, 0]),
        });
        let spec = InputSpec {
            size: 8,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let tensor = to_tensor(&image, &spec);
        let plane = 64;
        assert!(tensor[..plane].iter().all(|&r| r == 0.0), "no red survives the crop");
        assert!(tensor[plane..2 * plane].iter().all(|&g| g == 1.0));
    }

    #[test]
    fn png_round_trip_decodes_to_the_same_pixels() {
        let image = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8 * 40, y as u8 * 80, 7]));
        assert_eq!(decode(&png(&image), &DecodeLimits::default()).unwrap(), image);
    }

    #[test]
    fn bad_inputs_get_typed_errors() {
        let limits = DecodeLimits::default();
        assert_eq!(decode(b"", &limits), Err(ImageError::Empty));
        assert_eq!(
            decode(b"hello, I am a text file\n", &limits),
            Err(ImageError::Unsupported)
        );
        let jpeg = {
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new(&mut out)
                .encode_image(&RgbImage::from_fn(256, 256, |x, y| {
                    Rgb([(x * y) as u8, (x ^ y) as u8, (x + y) as u8])
                }))
                .unwrap();
            out
        };
        // Cut inside the header, and deep inside the pixels (the decoder alone would fill the rest with grey).
        for cut in [jpeg.len() / 20, jpeg.len() / 2, jpeg.len() * 9 / 10] {
            assert!(
                matches!(decode(&jpeg[..cut], &limits), Err(ImageError::Corrupt(_))),
                "cut at {cut}"
            );
        }
    }
}
