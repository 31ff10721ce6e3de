//! The colour of the garment in a photo, identically on wasm and native.
//!
//! photo -> small thumbnail in CIELAB (distances there follow what people see) ->
//! background suppressed: colours of the border ring (the studio backdrop, a floor or a
//! wall) and the outer frame weigh little -> a soft Lab histogram, the descriptor that
//! photos are compared by, and the dominant colours, which a shopper can be shown.
//!
//! Colour *names* are the shop's own: [`vote_colour_name`] lets the labelled catalog photos
//! whose histograms are nearest vote, so "Navy Blue" means what the shop's photos of
//! navy garments look like, under its lighting, rather than a textbook value.

use image::RgbImage;
use palette::{IntoColor, Lab, Srgb};

/// Photos are described from a thumbnail this many pixels on its longer side: colour
/// needs no detail, and the cost stays the same for a 50 MP photo.
const THUMBNAIL_SIDE: u32 = 64;
/// Histogram bin centres: L* every 20 from 0 to 100; a* and b* every 20 from -60 to 60.
const L_BINS: usize = 6;
const AB_BINS: usize = 7;
const BIN_STEP: f32 = 20.0;
const AB_OFFSET: f32 = 60.0;
/// Length of [`ColourDescriptor::histogram`].
pub const HISTOGRAM_LEN: usize = L_BINS * AB_BINS * AB_BINS;
/// Width of the border ring whose colours are taken as background, in thumbnail pixels.
const BORDER: u32 = 2;
/// A pixel this close (CIE76 delta E) to a background colour counts as background; from
/// there its weight rises to full at [`BACKGROUND_FAR`].
const BACKGROUND_NEAR: f32 = 6.0;
const BACKGROUND_FAR: f32 = 18.0;
/// Spread of the centre prior, as a fraction of the half width and half height.
const CENTRE_SIGMA: f32 = 0.6;
const DOMINANT_COLOURS: usize = 4;
/// Dominant colours covering less than this share of the garment are dropped.
const MIN_SHARE: f32 = 0.05;
/// Dominant colours closer than this (delta E) are one colour.
const MERGE_DISTANCE: f32 = 12.0;
/// How many nearest labelled photos vote on a colour name.
pub const NAME_VOTERS: usize = 10;
/// When naming a colour, the weight of the model's cosine next to the colour similarity:
/// the kind of product tells "Silver" (a watch) from "Grey" (a shirt), and a white shirt
/// on a white backdrop from the backdrop.
pub const NAMING_SHAPE_WEIGHT: f32 = 0.5;

/// What a photo's garment looks like in colour.
#[derive(Clone, Debug, PartialEq)]
pub struct ColourDescriptor {
    /// Square roots of a weighted Lab histogram summing to one, so the dot product of two
    /// histograms is their Bhattacharyya coefficient: 1 for the same colours, 0 for none shared.
    pub histogram: Vec<f32>,
    /// The garment's main colours, largest share first.
    pub dominant: Vec<Dominant>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dominant {
    /// CIELAB (D65) L*, a*, b*.
    pub lab: [f32; 3],
    /// Share of the garment's weight, 0..=1.
    pub share: f32,
}

impl Dominant {
    /// The colour as 8-bit sRGB, for a swatch.
    pub fn rgb(&self) -> [u8; 3] {
        let [l, a, b] = self.lab;
        let rgb: Srgb = Lab::new(l, a, b).into_color();
        let rgb: Srgb<u8> = rgb.into_format();
        [rgb.red, rgb.green, rgb.blue]
    }
}

/// Describes the colour of the garment in `image` (any size; at least one pixel).
pub fn describe(image: &RgbImage) -> ColourDescriptor {
    let (width, height) = thumbnail_size(image.width(), image.height());
    let thumbnail = crate::preprocess::resize(image, width, height);
    let labs: Vec<[f32; 3]> = thumbnail.pixels().map(|p| to_lab(p.0)).collect();
    let weights = garment_weights(&labs, width, height);
    let histogram = histogram(&labs, &weights);
    let dominant = dominant_colours(&labs, &weights, &histogram);
    ColourDescriptor { histogram, dominant }
}

fn thumbnail_size(width: u32, height: u32) -> (u32, u32) {
    let longer = width.max(height).max(1);
    let scale = (THUMBNAIL_SIDE as f32 / longer as f32).min(1.0);
    let side = |s: u32| ((s as f32 * scale).round() as u32).max(1);
    (side(width), side(height))
}

fn to_lab([r, g, b]: [u8; 3]) -> [f32; 3] {
    let lab: Lab = Srgb::new(r, g, b).into_format::<f32>().into_color();
    [lab.l, lab.a, lab.b]
}

fn distance2(x: &[f32; 3], y: &[f32; 3]) -> f32 {
    (0..3).map(|i| (x[i] - y[i]) * (x[i] - y[i])).sum()
}

/// How much each pixel counts as garment: far from every background colour, and near the centre.
fn garment_weights(labs: &[[f32; 3]], width: u32, height: u32) -> Vec<f32> {
    let position = |i: usize| ((i as u32 % width), (i as u32 / width));
    let on_border = |(x, y): (u32, u32)| x < BORDER || y < BORDER || x + BORDER >= width || y + BORDER >= height;
    let border: Vec<[f32; 3]> = (0..labs.len())
        .filter(|&i| on_border(position(i)))
        .map(|i| labs[i])
        .collect();
    let uniform = vec![1.0; border.len()];
    let backgrounds: Vec<[f32; 3]> = kmeans(&border, &uniform, initial_spread(&border, 3))
        .into_iter()
        .filter(|(_, share)| *share >= 0.15)
        .map(|(lab, _)| lab)
        .collect();
    let centre = |i: usize| {
        let (x, y) = position(i);
        let u = (x as f32 + 0.5) / width as f32 * 2.0 - 1.0;
        let v = (y as f32 + 0.5) / height as f32 * 2.0 - 1.0;
        (-(u * u + v * v) / (2.0 * CENTRE_SIGMA * CENTRE_SIGMA)).exp()
    };
    let centred: Vec<f32> = (0..labs.len()).map(centre).collect();
    let garment: Vec<f32> = labs
        .iter()
        .zip(&centred)
        .map(|(lab, &c)| {
            let nearest = backgrounds
                .iter()
                .map(|b| distance2(lab, b).sqrt())
                .fold(f32::INFINITY, f32::min);
            c * smoothstep(BACKGROUND_NEAR, BACKGROUND_FAR, nearest)
        })
        .collect();
    // A garment that fills the frame has its own colour on the border: when almost
    // everything looks like background, the centre prior alone decides.
    if garment.iter().sum::<f32>() < 0.05 * centred.iter().sum::<f32>() {
        centred
    } else {
        garment
    }
}

fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Continuous bin coordinates of a Lab colour.
fn bin_coordinates([l, a, b]: [f32; 3]) -> [f32; 3] {
    [
        (l / BIN_STEP).clamp(0.0, (L_BINS - 1) as f32),
        ((a + AB_OFFSET) / BIN_STEP).clamp(0.0, (AB_BINS - 1) as f32),
        ((b + AB_OFFSET) / BIN_STEP).clamp(0.0, (AB_BINS - 1) as f32),
    ]
}

fn bin_index(l: usize, a: usize, b: usize) -> usize {
    (l * AB_BINS + a) * AB_BINS + b
}

fn bin_centre(index: usize) -> [f32; 3] {
    let (l, a, b) = (index / (AB_BINS * AB_BINS), index / AB_BINS % AB_BINS, index % AB_BINS);
    [
        l as f32 * BIN_STEP,
        a as f32 * BIN_STEP - AB_OFFSET,
        b as f32 * BIN_STEP - AB_OFFSET,
    ]
}

/// Each pixel's weight spread over the 8 nearest bins (trilinear), so a colour near a
/// bin edge does not jump between bins; then square roots of the normalised counts.
fn histogram(labs: &[[f32; 3]], weights: &[f32]) -> Vec<f32> {
    let mut bins = vec![0f32; HISTOGRAM_LEN];
    for (lab, &weight) in labs.iter().zip(weights) {
        let coordinates = bin_coordinates(*lab);
        let lower = coordinates.map(|c| c.floor() as usize);
        let fraction: Vec<f32> = (0..3).map(|i| coordinates[i] - lower[i] as f32).collect();
        let limits = [L_BINS, AB_BINS, AB_BINS];
        for corner in 0..8 {
            let mut share = weight;
            let mut at = [0usize; 3];
            for axis in 0..3 {
                let upper = corner >> axis & 1 == 1;
                share *= if upper { fraction[axis] } else { 1.0 - fraction[axis] };
                at[axis] = (lower[axis] + usize::from(upper)).min(limits[axis] - 1);
            }
            bins[bin_index(at[0], at[1], at[2])] += share;
        }
    }
    let total: f32 = bins.iter().sum();
    if total > 0.0 {
        bins.iter_mut().for_each(|b| *b = (*b / total).sqrt());
    }
    bins
}

/// Weighted k-means, started from the fullest histogram bins so the result is the same
/// on every run and platform.
fn dominant_colours(labs: &[[f32; 3]], weights: &[f32], histogram: &[f32]) -> Vec<Dominant> {
    let start: Vec<[f32; 3]> = largest_first(histogram)
        .into_iter()
        .take_while(|&i| histogram[i] > 0.0)
        .take(DOMINANT_COLOURS)
        .map(bin_centre)
        .collect();
    let clusters = kmeans(labs, weights, start);
    let shares: Vec<f32> = clusters.iter().map(|cluster| cluster.1).collect();
    let clusters = largest_first(&shares).into_iter().map(|i| clusters[i]);
    // Two starting bins can fall on one colour: a cluster that close to a larger one joins it.
    let mut dominant: Vec<Dominant> = Vec::new();
    for (lab, share) in clusters {
        let same = MERGE_DISTANCE * MERGE_DISTANCE;
        match dominant.iter_mut().find(|d| distance2(&d.lab, &lab) < same) {
            Some(larger) => {
                let total = larger.share + share;
                larger.lab = std::array::from_fn(|i| (larger.lab[i] * larger.share + lab[i] * share) / total);
                larger.share = total;
            }
            None => dominant.push(Dominant { lab, share }),
        }
    }
    dominant.retain(|d| d.share >= MIN_SHARE);
    let shares: Vec<f32> = dominant.iter().map(|d| d.share).collect();
    largest_first(&shares).into_iter().map(|i| dominant[i]).collect()
}

/// Positions of `keys`, largest first, ties in position order. Every ranking here goes
/// through it, so the widget's module carries the sorting code once (each `sort_by` with
/// its own closure is another copy, 2 KB gzipped).
fn largest_first(keys: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&x, &y| keys[y].total_cmp(&keys[x]).then(x.cmp(&y)));
    order
}

/// Up to `k` starting centres, each the point farthest from those already chosen.
fn initial_spread(points: &[[f32; 3]], k: usize) -> Vec<[f32; 3]> {
    let mut centres: Vec<[f32; 3]> = points.first().copied().into_iter().collect();
    while centres.len() < k {
        let farthest = points.iter().max_by(|x, y| {
            let nearest = |p: &[f32; 3]| centres.iter().map(|c| distance2(p, c)).fold(f32::INFINITY, f32::min);
            nearest(x).total_cmp(&nearest(y))
        });
        match farthest {
            Some(p) if !centres.contains(p) => centres.push(*p),
            _ => break,
        }
    }
    centres
}

/// Lloyd's iterations from `centres`; returns each centre with its share of the total weight.
fn kmeans(points: &[[f32; 3]], weights: &[f32], mut centres: Vec<[f32; 3]>) -> Vec<([f32; 3], f32)> {
    let total: f32 = weights.iter().sum();
    if centres.is_empty() || total <= 0.0 {
        return Vec::new();
    }
    let mut mass = vec![0f32; centres.len()];
    for _ in 0..8 {
        let mut sums = vec![[0f32; 3]; centres.len()];
        mass.iter_mut().for_each(|m| *m = 0.0);
        for (point, &weight) in points.iter().zip(weights) {
            let nearest = (0..centres.len())
                .min_by(|&x, &y| distance2(point, &centres[x]).total_cmp(&distance2(point, &centres[y])))
                .unwrap_or(0);
            mass[nearest] += weight;
            (0..3).for_each(|axis| sums[nearest][axis] += weight * point[axis]);
        }
        for (centre, (sum, &m)) in centres.iter_mut().zip(sums.iter().zip(&mass)) {
            if m > 0.0 {
                *centre = sum.map(|s| s / m);
            }
        }
    }
    centres.into_iter().zip(mass.into_iter().map(|m| m / total)).collect()
}

/// Similarity of two [`ColourDescriptor::histogram`]s: 1 for the same colours, 0 for none shared.
pub fn colour_similarity(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Bins a [`CompactColour`] keeps: a garment of one colour fills the 8 bins around it (the
/// histogram is trilinear), so 12 hold it and one more colour.
pub const COMPACT_BINS: usize = 12;
/// A bin's weight takes 7 bits of its word; the bin number the other 9 ([`HISTOGRAM_LEN`] < 512).
const WEIGHT_BITS: u32 = 7;
const WEIGHT_MAX: u16 = (1 << WEIGHT_BITS) - 1;

/// A colour histogram in 24 bytes, as the catalog index stores one per product: the fullest
/// bins, rescaled so that the kept part sums to one again, each as `bin << 7 | weight` in one
/// u16. Unused words are 0 (weight 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompactColour(pub [u16; COMPACT_BINS]);

impl CompactColour {
    pub fn from_histogram(histogram: &[f32]) -> CompactColour {
        let histogram = &histogram[..histogram.len().min(HISTOGRAM_LEN)];
        let fullest: Vec<usize> = largest_first(histogram)
            .into_iter()
            .take_while(|&i| histogram[i] > 0.0)
            .take(COMPACT_BINS)
            .collect();
        let kept: f32 = fullest.iter().map(|&i| histogram[i] * histogram[i]).sum::<f32>().sqrt();
        let mut words = [0u16; COMPACT_BINS];
        let mut slot = 0;
        for &bin in &fullest {
            let weight = (histogram[bin] / kept * f32::from(WEIGHT_MAX)).round() as u16;
            if weight > 0 {
                words[slot] = (bin as u16) << WEIGHT_BITS | weight.min(WEIGHT_MAX);
                slot += 1;
            }
        }
        CompactColour(words)
    }

    /// (bin, weight) of the used words.
    fn bins(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        self.0.iter().filter(|word| *word & WEIGHT_MAX > 0).map(|word| {
            let weight = f32::from(word & WEIGHT_MAX) / f32::from(WEIGHT_MAX);
            (usize::from(word >> WEIGHT_BITS), weight)
        })
    }

    /// Whether every used word names a histogram bin (a file read from the network may not).
    pub fn is_valid(&self) -> bool {
        self.bins().all(|(bin, _)| bin < HISTOGRAM_LEN)
    }

    /// [`colour_similarity`] with a full histogram of [`HISTOGRAM_LEN`] values.
    pub fn similarity(&self, histogram: &[f32]) -> f32 {
        self.bins()
            .map(|(bin, weight)| histogram.get(bin).map_or(0.0, |value| value * weight))
            .sum()
    }

    /// The histogram back, with zeros where bins were dropped.
    pub fn to_histogram(&self) -> Vec<f32> {
        let mut histogram = vec![0f32; HISTOGRAM_LEN];
        for (bin, weight) in self.bins() {
            if let Some(value) = histogram.get_mut(bin) {
                *value = weight;
            }
        }
        histogram
    }
}

/// Most words a colour palette may hold: a product's word is a u16.
pub const MAX_PALETTE_WORDS: usize = 1 << 16;

/// A palette of `words` typical colours of `colours`, for a large catalog to store each
/// product's colour as the number of its nearest word (2 bytes rather than 24): spherical
/// k-means on the histograms of a seeded sample, compared as searches compare colours.
#[cfg(not(target_arch = "wasm32"))]
pub fn train_palette(colours: &[CompactColour], words: usize) -> Vec<CompactColour> {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    /// Colours the words are trained on, per word, and rounds of k-means.
    const SAMPLE_PER_WORD: usize = 16;
    const ITERATIONS: usize = 10;

    let words = words.min(MAX_PALETTE_WORDS);
    let sampled = (words * SAMPLE_PER_WORD).min(colours.len());
    // At random: a strided sample could miss the colours of a catalog listed by colour.
    let sample: Vec<CompactColour> = rand::seq::index::sample(&mut StdRng::seed_from_u64(3), colours.len(), sampled)
        .into_iter()
        .map(|position| colours[position])
        .collect();
    let words = words.min(sample.len());
    let mut centres = farthest_first(&sample, words);
    for _ in 0..ITERATIONS {
        let nearest = WordColumns::new(&centres).nearest_each(&sample);
        let mut sums = vec![0f32; words * HISTOGRAM_LEN];
        for (colour, &word) in sample.iter().zip(&nearest) {
            for (bin, weight) in colour.bins() {
                sums[usize::from(word) * HISTOGRAM_LEN + bin] += weight;
            }
        }
        for (centre, sum) in centres
            .chunks_exact_mut(HISTOGRAM_LEN)
            .zip(sums.chunks_exact(HISTOGRAM_LEN))
        {
            let norm = sum.iter().map(|value| value * value).sum::<f32>().sqrt();
            // A word no colour chose keeps its place.
            if norm > 0.0 {
                centre.iter_mut().zip(sum).for_each(|(c, s)| *c = s / norm);
            }
        }
    }
    centres
        .chunks_exact(HISTOGRAM_LEN)
        .map(CompactColour::from_histogram)
        .collect()
}

/// `words` of `sample` as histograms, one after another, each the colour least like those
/// already chosen: a rare colour (the one red dress of a catalog in black and white) gets a
/// word of its own, where a random start could leave it none.
#[cfg(not(target_arch = "wasm32"))]
fn farthest_first(sample: &[CompactColour], words: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut centres = Vec::with_capacity(words * HISTOGRAM_LEN);
    let mut closest = vec![f32::NEG_INFINITY; sample.len()];
    let mut next = 0;
    for _ in 0..words {
        let centre = sample[next].to_histogram();
        closest
            .par_iter_mut()
            .zip(sample)
            .for_each(|(closest, colour)| *closest = closest.max(colour.similarity(&centre)));
        centres.extend(centre);
        next = (0..sample.len())
            .min_by(|&x, &y| closest[x].total_cmp(&closest[y]))
            .unwrap_or(0);
    }
    centres
}

/// The number of the word of `palette` (at most [`MAX_PALETTE_WORDS`]) most similar to each
/// of `colours`.
#[cfg(not(target_arch = "wasm32"))]
pub fn palette_codes(palette: &[CompactColour], colours: &[CompactColour]) -> Vec<u16> {
    let words: Vec<f32> = palette.iter().flat_map(CompactColour::to_histogram).collect();
    WordColumns::new(&words).nearest_each(colours)
}

/// Palette words (histograms) stored bin by bin, so that a colour's similarity to every word
/// is a few runs of multiply-adds over contiguous floats: a million products against 4,096
/// words in seconds rather than minutes.
#[cfg(not(target_arch = "wasm32"))]
struct WordColumns {
    words: usize,
    /// `HISTOGRAM_LEN` rows of `words` values.
    columns: Vec<f32>,
}

#[cfg(not(target_arch = "wasm32"))]
impl WordColumns {
    /// From histograms, one after another.
    fn new(histograms: &[f32]) -> WordColumns {
        let words = histograms.len() / HISTOGRAM_LEN;
        let mut columns = vec![0f32; HISTOGRAM_LEN * words];
        for (word, histogram) in histograms.chunks_exact(HISTOGRAM_LEN).enumerate() {
            for (bin, &value) in histogram.iter().enumerate() {
                columns[bin * words + word] = value;
            }
        }
        WordColumns { words, columns }
    }

    /// The most similar word to each of `colours` (the first of equals).
    fn nearest_each(&self, colours: &[CompactColour]) -> Vec<u16> {
        use rayon::prelude::*;
        colours
            .par_iter()
            .map_init(
                || vec![0f32; self.words],
                |scores, colour| {
                    scores.fill(0.0);
                    for (bin, weight) in colour.bins() {
                        let column = &self.columns[bin * self.words..(bin + 1) * self.words];
                        scores
                            .iter_mut()
                            .zip(column)
                            .for_each(|(score, value)| *score += weight * value);
                    }
                    let best = scores
                        .iter()
                        .enumerate()
                        .max_by(|x, y| x.1.total_cmp(y.1).then(y.0.cmp(&x.0)))
                        .map_or(0, |(word, _)| word);
                    best as u16
                },
            )
            .collect()
    }
}

/// The colour name that the [`NAME_VOTERS`] most similar labelled photos vote for, each
/// vote weighted by its similarity. `candidates` holds (similarity, name) for every
/// labelled photo; `None` when there are none.
pub fn vote_colour_name(candidates: Vec<(f32, u32)>) -> Option<u32> {
    let voters = NAME_VOTERS.min(candidates.len());
    if voters == 0 {
        return None;
    }
    let similarities: Vec<f32> = candidates.iter().map(|candidate| candidate.0).collect();
    let mut tally: Vec<(u32, f32)> = Vec::new();
    for i in largest_first(&similarities).into_iter().take(voters) {
        let (similarity, name) = candidates[i];
        match tally.iter_mut().find(|(n, _)| *n == name) {
            Some((_, votes)) => *votes += similarity,
            None => tally.push((name, similarity)),
        }
    }
    tally
        .into_iter()
        .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A `garment`-coloured rectangle on a `backdrop`, as in a studio photo.
    fn studio_photo(garment: [u8; 3], backdrop: [u8; 3]) -> RgbImage {
        RgbImage::from_fn(60, 80, |x, y| {
            if (15..45).contains(&x) && (15..65).contains(&y) {
                Rgb(garment)
            } else {
                Rgb(backdrop)
            }
        })
    }

    fn close(rgb: [u8; 3], expected: [u8; 3]) -> bool {
        rgb.iter().zip(expected).all(|(&x, y)| x.abs_diff(y) <= 3)
    }

    #[test]
    fn the_backdrop_is_not_the_garment() {
        for backdrop in [[255, 255, 255], [40, 120, 40], [20, 20, 20]] {
            let descriptor = describe(&studio_photo([200, 30, 40], backdrop));
            let main = descriptor.dominant[0];
            assert!(close(main.rgb(), [200, 30, 40]), "{backdrop:?}: {:?}", main.rgb());
            assert!(main.share > 0.9, "{backdrop:?}: {descriptor:?}");
        }
    }

    #[test]
    fn a_garment_filling_the_frame_is_still_seen() {
        let descriptor = describe(&RgbImage::from_pixel(300, 200, Rgb([20, 30, 90])));
        assert!(close(descriptor.dominant[0].rgb(), [20, 30, 90]));
        assert_eq!(descriptor.dominant.len(), 1);
    }

    #[test]
    fn histograms_compare_by_colour_not_by_backdrop() {
        let red_on_white = describe(&studio_photo([200, 30, 40], [255, 255, 255])).histogram;
        let red_on_grey = describe(&studio_photo([200, 30, 40], [128, 128, 128])).histogram;
        let blue_on_white = describe(&studio_photo([30, 40, 200], [255, 255, 255])).histogram;
        assert!((colour_similarity(&red_on_white, &red_on_white) - 1.0).abs() < 1e-4);
        assert!(colour_similarity(&red_on_white, &red_on_grey) > 0.95);
        assert!(colour_similarity(&red_on_white, &blue_on_white) < 0.1);
    }

    #[test]
    fn a_compact_colour_compares_like_its_histogram() {
        let photos = [
            studio_photo([200, 30, 40], [255, 255, 255]),
            studio_photo([190, 60, 40], [128, 128, 128]),
            studio_photo([30, 40, 200], [255, 255, 255]),
            studio_photo([240, 220, 60], [20, 20, 20]),
        ];
        let histograms: Vec<Vec<f32>> = photos.iter().map(|photo| describe(photo).histogram).collect();
        for x in &histograms {
            let compact = CompactColour::from_histogram(x);
            assert!(compact.is_valid());
            assert!(compact.similarity(x) > 0.97, "{}", compact.similarity(x));
            for y in &histograms {
                let error = (compact.similarity(y) - colour_similarity(x, y)).abs();
                assert!(error < 0.05, "{error}");
            }
            assert!((compact.similarity(&compact.to_histogram()) - 1.0).abs() < 0.02);
        }
        assert!(!CompactColour([0xffff; COMPACT_BINS]).is_valid());
        assert_eq!(CompactColour::default().similarity(&histograms[0]), 0.0);
    }

    #[test]
    fn names_come_from_the_nearest_labelled_photos() {
        let colours = [[200, 30, 40], [30, 40, 200], [20, 20, 20]];
        let mut references = Vec::new();
        for (name, &colour) in colours.iter().enumerate() {
            for shade in 0..12u8 {
                let shaded = colour.map(|c: u8| c.saturating_add(shade * 2));
                references.push((describe(&studio_photo(shaded, [250, 250, 250])).histogram, name as u32));
            }
        }
        let name = |query: [u8; 3], backdrop: [u8; 3]| {
            let query = describe(&studio_photo(query, backdrop)).histogram;
            vote_colour_name(
                references
                    .iter()
                    .map(|(h, n)| (colour_similarity(&query, h), *n))
                    .collect(),
            )
        };
        assert_eq!(name([190, 40, 50], [230, 230, 225]), Some(0));
        assert_eq!(name([25, 25, 30], [250, 250, 250]), Some(2));
        assert_eq!(vote_colour_name(Vec::new()), None);
    }

    /// Shades of a few garment colours on a white backdrop: a palette of twice as many words
    /// never gives two garments one word, so the one rare colour has a word of its own.
    #[test]
    fn a_palette_has_a_word_for_each_colour_even_a_rare_one() {
        let garments = [[200, 30, 40], [30, 60, 160], [30, 30, 35], [240, 200, 40]];
        let mut colours = Vec::new();
        let mut garment_of = Vec::new();
        for shade in 0..60u8 {
            // The yellow garment is rare: one photo in sixty.
            for (garment, &rgb) in garments.iter().enumerate().filter(|&(g, _)| g < 3 || shade == 0) {
                let shaded = rgb.map(|c: u8| c.saturating_add(shade / 4));
                colours.push(CompactColour::from_histogram(
                    &describe(&studio_photo(shaded, [250, 250, 250])).histogram,
                ));
                garment_of.push(garment);
            }
        }
        let palette = train_palette(&colours, 2 * garments.len());
        assert_eq!(palette.len(), 2 * garments.len());
        let codes = palette_codes(&palette, &colours);
        let mut garment_of_word = std::collections::HashMap::new();
        for (n, &code) in codes.iter().enumerate() {
            let garment = *garment_of_word.entry(code).or_insert(garment_of[n]);
            assert_eq!(garment, garment_of[n], "word {code} stands for two garments");
            let word = palette[usize::from(code)];
            assert!(word.similarity(&colours[n].to_histogram()) > 0.7, "colour {n}");
        }
    }
}
