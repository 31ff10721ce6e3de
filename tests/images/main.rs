//! Photos people actually have: every format variant the widget reads, the ones it refuses
//! by name, EXIF rotations and decompression bombs. The corpus is generated here, so no
//! image file is committed.

use std::io::Write;
use std::time::{Duration, Instant};

use image::codecs::{bmp::BmpEncoder, gif::GifEncoder, jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder};
use image::metadata::Orientation;
use image::{DynamicImage, Frame, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use otlens::preprocess::{decode, DecodeLimits, ImageError};

const RED: Rgb<u8> = Rgb([220, 30, 30]);
const GREEN: Rgb<u8> = Rgb([30, 200, 60]);
const BLUE: Rgb<u8> = Rgb([40, 60, 220]);
const YELLOW: Rgb<u8> = Rgb([240, 220, 40]);

/// 32x16, a different colour in each quadrant: any flip or rotation changes it.
fn quadrants() -> RgbImage {
    RgbImage::from_fn(32, 16, |x, y| match (x < 16, y < 8) {
        (true, true) => RED,
        (false, true) => GREEN,
        (true, false) => BLUE,
        (false, false) => YELLOW,
    })
}

/// Whether `decoded` shows `expected` (lossy codecs allowed), judged at each quadrant's centre.
fn assert_looks_like(decoded: &RgbImage, expected: &RgbImage, what: &str) {
    assert_eq!(decoded.dimensions(), expected.dimensions(), "{what}: size");
    let (w, h) = expected.dimensions();
    for (x, y) in [
        (w / 4, h / 4),
        (3 * w / 4, h / 4),
        (w / 4, 3 * h / 4),
        (3 * w / 4, 3 * h / 4),
    ] {
        let (a, b) = (decoded.get_pixel(x, y), expected.get_pixel(x, y));
        let distance =
            a.0.iter()
                .zip(b.0)
                .map(|(&p, q)| (i32::from(p) - i32::from(q)).abs())
                .max();
        assert!(
            distance.unwrap() <= 24,
            "{what}: pixel ({x}, {y}) is {a:?}, expected about {b:?}"
        );
    }
}

fn decode_ok(bytes: &[u8], what: &str) -> RgbImage {
    decode(bytes, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn jpeg(image: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, 95);
    if let Some(exif) = exif {
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder.encode_image(image).unwrap();
    out
}

fn png(image: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_with_encoder(PngEncoder::new(&mut out)).unwrap();
    out
}

/// Replaces a PNG's IHDR width and height and fixes its CRC.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)));
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An Adam7-interlaced RGB PNG (the `png` crate only writes progressive-free files).
fn interlaced_png(image: &RgbImage) -> Vec<u8> {
    const PASSES: [(u32, u32, u32, u32); 7] = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ];
    let (width, height) = image.dimensions();
    let mut raw = Vec::new();
    for (x0, y0, dx, dy) in PASSES {
        if x0 >= width || y0 >= height {
            continue;
        }
        for y in (y0..height).step_by(dy as usize) {
            raw.push(0); // filter: none
            for x in (x0..width).step_by(dx as usize) {
                raw.extend_from_slice(&image.get_pixel(x, y).0);
            }
        }
    }
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&raw).unwrap();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 1]); // 8-bit RGB, deflate, adaptive filters, Adam7
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &header);
    png_chunk(&mut out, b"IDAT", &zlib.finish().unwrap());
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A little-endian TIFF/EXIF block with one Orientation entry.
fn exif_with_orientation(orientation: u16) -> Vec<u8> {
    let mut exif = b"II*\0\x08\0\0\0\x01\0".to_vec();
    exif.extend_from_slice(&0x0112u16.to_le_bytes()); // tag: Orientation
    exif.extend_from_slice(&3u16.to_le_bytes()); // type: SHORT
    exif.extend_from_slice(&1u32.to_le_bytes()); // count
    exif.extend_from_slice(&orientation.to_le_bytes());
    exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding + next IFD offset
    exif
}

#[test]
fn every_exif_orientation_ends_up_upright() {
    let upright = quadrants();
    for tag in 1..=8u8 {
        let orientation = Orientation::from_exif(tag).unwrap();
        // What a camera stores so that applying `tag` shows `upright`: every orientation is its
        // own inverse except the two quarter turns, which undo each other.
        let undo = match orientation {
            Orientation::Rotate90 => Orientation::Rotate270,
            Orientation::Rotate270 => Orientation::Rotate90,
            other => other,
        };
        let mut stored = DynamicImage::ImageRgb8(upright.clone());
        stored.apply_orientation(undo);
        let bytes = jpeg(&stored.to_rgb8(), Some(exif_with_orientation(u16::from(tag))));
        assert_looks_like(&decode_ok(&bytes, "exif"), &upright, &format!("EXIF orientation {tag}"));
    }
}

#[test]
fn jpeg_variants_decode_or_are_named() {
    let image = quadrants();
    let (w, h) = (image.width() as u16, image.height() as u16);
    assert_looks_like(&decode_ok(&jpeg(&image, None), "baseline"), &image, "baseline JPEG");

    let mut progressive = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut progressive, 95);
    encoder.set_progressive(true);
    encoder
        .encode(image.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    assert_looks_like(&decode_ok(&progressive, "progressive"), &image, "progressive JPEG");

    // Print shops and some editors save CMYK; its YCCK form is what Photoshop writes.
    let cmyk: Vec<u8> = image
        .pixels()
        .flat_map(|&Rgb([r, g, b])| {
            let k = 255 - r.max(g).max(b);
            let ink = |c: u8| {
                if k == 255 {
                    0
                } else {
                    ((255 - c - k) as u32 * 255 / (255 - k) as u32) as u8
                }
            };
            [ink(r), ink(g), ink(b), k]
        })
        .collect();
    for (color, name) in [
        (jpeg_encoder::ColorType::Cmyk, "CMYK"),
        (jpeg_encoder::ColorType::CmykAsYcck, "YCCK"),
    ] {
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 95)
            .encode(&cmyk, w, h, color)
            .unwrap();
        assert_looks_like(&decode_ok(&bytes, name), &image, &format!("{name} JPEG"));
    }

    // A 12-bit JPEG (medical and some camera raw exports): the frame header says 12.
    let mut twelve_bit = jpeg(&image, None);
    let sof = twelve_bit.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    twelve_bit[sof + 4] = 12;
    assert_eq!(
        decode(&twelve_bit, &DecodeLimits::default()),
        Err(ImageError::UnsupportedKind("12-bit JPEG".into()))
    );
    let mut lossless = jpeg(&image, None);
    lossless[sof + 1] = 0xC3;
    assert_eq!(
        decode(&lossless, &DecodeLimits::default()),
        Err(ImageError::UnsupportedKind("lossless JPEG".into()))
    );
}

#[test]
fn png_variants_decode() {
    let image = quadrants();
    let wide = DynamicImage::ImageRgb8(image.clone()).to_rgb16();
    assert_looks_like(&decode_ok(&png(&wide.into()), "16-bit"), &image, "16-bit PNG");
    assert_looks_like(&decode_ok(&interlaced_png(&image), "Adam7"), &image, "interlaced PNG");

    let palette = [RED, GREEN, BLUE, YELLOW];
    let mut indexed = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut indexed, image.width(), image.height());
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_palette(palette.iter().flat_map(|c| c.0).collect::<Vec<u8>>());
        let indices: Vec<u8> = image
            .pixels()
            .map(|p| palette.iter().position(|c| c == p).unwrap() as u8)
            .collect();
        encoder.write_header().unwrap().write_image_data(&indices).unwrap();
    }
    assert_looks_like(&decode_ok(&indexed, "palette"), &image, "palette PNG");
}

#[test]
fn transparent_pixels_become_white_like_a_catalog_background() {
    // A cut-out product: the left half is transparent (stored as black), the right half opaque red.
    let cut_out = RgbaImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([220, 30, 30, 255])
        }
    });
    let decoded = decode_ok(&png(&DynamicImage::ImageRgba8(cut_out)), "alpha");
    assert_eq!(decoded.get_pixel(4, 8), &Rgb([255, 255, 255]));
    assert_eq!(decoded.get_pixel(24, 8), &RED);
    let half = RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 128]));
    assert_eq!(
        decode_ok(&png(&DynamicImage::ImageRgba8(half)), "half alpha").get_pixel(0, 0),
        &Rgb([127, 127, 127])
    );
}

#[test]
fn webp_gif_and_bmp_decode() {
    let image = quadrants();
    let rgba = DynamicImage::ImageRgb8(image.clone()).to_rgba8();

    let mut webp = Vec::new();
    WebPEncoder::new_lossless(&mut webp)
        .write_image(rgba.as_raw(), 32, 16, image::ExtendedColorType::Rgba8)
        .unwrap();
    assert_looks_like(&decode_ok(&webp, "webp"), &image, "lossless WebP");

    // An animated GIF: the first frame is the photo.
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        let second = RgbaImage::from_pixel(32, 16, Rgba([0, 0, 0, 255]));
        encoder
            .encode_frames([Frame::new(rgba.clone()), Frame::new(second)])
            .unwrap();
    }
    assert_looks_like(&decode_ok(&gif, "gif"), &image, "first GIF frame");

    let mut bmp = Vec::new();
    BmpEncoder::new(&mut bmp)
        .write_image(image.as_raw(), 32, 16, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_looks_like(&decode_ok(&bmp, "bmp"), &image, "BMP");
}

#[test]
fn phone_formats_we_cannot_read_are_named() {
    let ftyp = |brand: &[u8; 4]| {
        let mut bytes = vec![0, 0, 0, 24];
        bytes.extend_from_slice(b"ftyp");
        bytes.extend_from_slice(brand);
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        bytes.extend_from_slice(b"mif1");
        bytes.extend_from_slice(brand);
        bytes.resize(64, 0);
        bytes
    };
    let limits = DecodeLimits::default();
    for (bytes, kind) in [
        (ftyp(b"heic"), "HEIC"),
        (ftyp(b"mif1"), "HEIC"),
        (ftyp(b"avif"), "AVIF"),
        (b"II*\0\x08\0\0\0\0\0\0\0\0\0\0\0".to_vec(), "TIFF"),
    ] {
        let error = decode(&bytes, &limits).unwrap_err();
        assert_eq!(error, ImageError::UnsupportedKind(kind.into()));
        assert!(error
            .to_string()
            .starts_with(&format!("{kind} images are not supported")));
    }
    // An MP4 video is also ISO-BMFF, but not a photo kind worth naming.
    assert_eq!(decode(&ftyp(b"isom"), &limits), Err(ImageError::Unsupported));
}

#[test]
fn decompression_bombs_are_refused_before_decoding() {
    let limits = DecodeLimits::default();
    let refused = |bytes: &[u8], what: &str| {
        let started = Instant::now();
        let result = decode(bytes, &limits);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            started.elapsed()
        );
        result.expect_err(what)
    };
    // Within the side limit but over the pixel limit (60 MP), and over the side limit.
    for (width, height) in [(10_000, 6_000), (50_000, 100), (50_000, 50_000), (65_535, 65_535)] {
        assert!(
            matches!(
                refused(&png_declaring(width, height), "png"),
                ImageError::DimensionsTooLarge { width: w, height: h, .. } if (w, h) == (width, height)
            ),
            "{width}x{height}"
        );
    }
    let mut bmp = Vec::new();
    BmpEncoder::new(&mut bmp)
        .write_image(&[0; 12], 2, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    bmp[18..22].copy_from_slice(&40_000i32.to_le_bytes());
    bmp[22..26].copy_from_slice(&40_000i32.to_le_bytes());
    assert!(matches!(refused(&bmp, "bmp"), ImageError::DimensionsTooLarge { .. }));

    // A GIF whose screen is 16x16 but whose frame declares 60000x60000.
    let mut gif = Vec::new();
    GifEncoder::new(&mut gif)
        .encode_frame(Frame::new(RgbaImage::from_pixel(16, 16, Rgba([9, 9, 9, 255]))))
        .unwrap();
    let descriptor = gif
        .windows(9)
        .position(|d| d == [0x2C, 0, 0, 0, 0, 16, 0, 16, 0])
        .expect("image descriptor");
    gif[descriptor + 5..descriptor + 9].copy_from_slice(&[0x60, 0xEA, 0x60, 0xEA]);
    let error = refused(&gif, "gif frame");
    println!("a 60000x60000 frame in a 16x16 GIF: {error}");
    assert!(
        matches!(error, ImageError::TooMuchMemory { .. } | ImageError::Corrupt(_)),
        "gif frame: {error:?}"
    );

    let huge_file = vec![0xFF; limits.max_bytes + 1];
    assert!(matches!(refused(&huge_file, "file"), ImageError::FileTooLarge { .. }));
}
