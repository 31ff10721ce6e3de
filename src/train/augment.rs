//! Augmented views of a training photo: what a shopper's photo does to a garment
//! (framing, mirror image, a tilted phone, something in front of it, other lighting)
//! without changing its colour, since colour is a search criterion.

use image::imageops;
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::preprocess::{normalise, resize, InputSpec};

/// The seed of view `view` of photo `photo`: the same view is the same picture on every run,
/// so cached features stay valid.
pub fn view_rng(photo: usize, view: u32) -> StdRng {
    StdRng::seed_from_u64(((photo as u64) << 16) ^ u64::from(view) ^ 0x6f74_6c65_6e73)
}

/// One augmented view of `photo` as a model input tensor:
/// - random resized crop: 40-100 % of the area, aspect 3:4 to 4:3, stretched to the input square;
/// - horizontal flip, half the time;
/// - rotation by up to 10 degrees either way, corners filled with the photo's corner colour;
/// - erasing of one rectangle (2-12 % of the area) with grey, half the time;
/// - brightness x0.85-1.15, the same on every channel, so hue is kept.
pub fn augmented_view(photo: &RgbImage, spec: &InputSpec, rng: &mut StdRng) -> Vec<f32> {
    let mut view = random_resized_crop(photo, spec.size, rng);
    if rng.random_bool(0.5) {
        imageops::flip_horizontal_in_place(&mut view);
    }
    let degrees: f32 = rng.random_range(-10.0..10.0);
    view = rotate(&view, degrees.to_radians());
    if rng.random_bool(0.5) {
        erase(&mut view, rng);
    }
    let brightness: f32 = rng.random_range(0.85..1.15);
    for pixel in view.pixels_mut() {
        for c in &mut pixel.0 {
            *c = (f32::from(*c) * brightness).round().clamp(0.0, 255.0) as u8;
        }
    }
    normalise(&view, spec)
}

fn random_resized_crop(photo: &RgbImage, size: u32, rng: &mut StdRng) -> RgbImage {
    let (width, height) = photo.dimensions();
    let area = f64::from(width) * f64::from(height);
    for _ in 0..10 {
        let target = area * rng.random_range(0.4..1.0);
        let aspect = rng.random_range((3f64 / 4.0).ln()..(4f64 / 3.0).ln()).exp();
        let w = (target * aspect).sqrt().round() as u32;
        let h = (target / aspect).sqrt().round() as u32;
        if (1..=width).contains(&w) && (1..=height).contains(&h) {
            let x = rng.random_range(0..=width - w);
            let y = rng.random_range(0..=height - h);
            let crop = imageops::crop_imm(photo, x, y, w, h).to_image();
            return resize(&crop, size, size);
        }
    }
    // No crop fitted (a very thin photo): the whole photo, stretched.
    resize(photo, size, size)
}

/// Nearest-neighbour rotation about the centre; good enough at 224 pixels and 10 degrees.
fn rotate(view: &RgbImage, radians: f32) -> RgbImage {
    let (width, height) = view.dimensions();
    let fill = *view.get_pixel(0, 0);
    let (sin, cos) = radians.sin_cos();
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    RgbImage::from_fn(width, height, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let sx = cos * dx + sin * dy + cx;
        let sy = -sin * dx + cos * dy + cy;
        if sx >= 0.0 && sy >= 0.0 && (sx as u32) < width && (sy as u32) < height {
            *view.get_pixel(sx as u32, sy as u32)
        } else {
            fill
        }
    })
}

fn erase(view: &mut RgbImage, rng: &mut StdRng) {
    let (width, height) = view.dimensions();
    let area = f64::from(width * height) * rng.random_range(0.02..0.12);
    let aspect = rng.random_range(0.3f64.ln()..(1.0f64 / 0.3).ln()).exp();
    let w = ((area * aspect).sqrt() as u32).clamp(1, width);
    let h = ((area / aspect).sqrt() as u32).clamp(1, height);
    let x = rng.random_range(0..=width - w);
    let y = rng.random_range(0..=height - h);
    for yy in y..y + h {
        for xx in x..x + w {
            view.put_pixel(xx, yy, Rgb([127, 127, 127]));
        }
    }
}
