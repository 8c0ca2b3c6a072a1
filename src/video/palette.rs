//! One colour palette for all frames of a clip (a GIF's global colour table), and frames mapped onto it.
//!
//! A clip with at most 256 distinct colours keeps exactly those colours, so it round-trips losslessly.
//! Otherwise `color_quant::NeuQuant` learns 256 colours from the pixels of all frames (evenly spaced frames and
//! rows when the clip is large) and maps every pixel to its nearest entry. There is no dithering: it would
//! add noise that changes from frame to frame (flicker in a looping clip) and compresses worse.

use std::borrow::Borrow;
use std::collections::HashSet;

use color_quant::NeuQuant;
use image::RgbImage;

/// The most colours a GIF colour table holds.
pub const MAX_COLORS: usize = 256;

/// At most this many pixels train the quantizer (4 MiB of RGBA samples).
const TRAINING_PIXELS: usize = 1 << 20;
/// At least this many: NeuQuant needs that many learning steps (a small clip's pixels are repeated).
const MIN_TRAINING_PIXELS: usize = 1 << 18;

/// NeuQuant's sampling factor, 1 to 30: 1 learns from every training pixel (the best palette, the slowest).
const SAMPLE_FACTOR: i32 = 1;

/// A palette of at most 256 colours for a clip; a pixel's index is its position in [`ClipPalette::colors`].
pub struct ClipPalette {
    colors: Vec<[u8; 3]>,
    /// `None` when `colors` are exactly the clip's colours (sorted, so found by binary search).
    quantizer: Option<NeuQuant>,
}

impl ClipPalette {
    /// The palette for all `frames`: their colours, sorted, when there are at most 256 (none for no frames);
    /// otherwise 256 colours learnt by NeuQuant. It depends only on the frames' pixels, in order.
    pub fn new<F: Borrow<RgbImage>>(frames: &[F]) -> ClipPalette {
        if let Some(colors) = exact_colors(frames) {
            return ClipPalette { colors, quantizer: None };
        }
        let quantizer = NeuQuant::new(SAMPLE_FACTOR, MAX_COLORS, &training_pixels(frames));
        let colors = quantizer.color_map_rgb().chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        ClipPalette { colors, quantizer: Some(quantizer) }
    }

    pub fn colors(&self) -> &[[u8; 3]] {
        &self.colors
    }

    /// Whether the palette holds exactly the clip's colours (every pixel maps to its own colour).
    pub fn is_exact(&self) -> bool {
        self.quantizer.is_none()
    }

    /// The colour table as GIF stores it: R, G, B for each entry.
    pub fn rgb_table(&self) -> Vec<u8> {
        self.colors.iter().flatten().copied().collect()
    }

    /// The index of the entry nearest to `c`: its own entry when the palette is exact, NeuQuant's nearest
    /// otherwise. A colour missing from an exact palette gets the nearest entry by squared RGB distance.
    pub fn index(&self, c: [u8; 3]) -> u8 {
        let index = match &self.quantizer {
            Some(quantizer) => quantizer.index_of(&[c[0], c[1], c[2], 255]),
            None => self.colors.binary_search(&c).unwrap_or_else(|_| nearest(&self.colors, c)),
        };
        u8::try_from(index).unwrap_or(u8::MAX)
    }

    /// The index of every pixel of `frame`, row by row.
    pub fn map_frame(&self, frame: &RgbImage) -> Vec<u8> {
        let mut out = Vec::with_capacity(frame.as_raw().len() / 3);
        let mut last: Option<([u8; 3], u8)> = None;
        for p in frame.pixels() {
            let i = match last {
                Some((c, i)) if c == p.0 => i,
                _ => self.index(p.0),
            };
            last = Some((p.0, i));
            out.push(i);
        }
        out
    }
}

/// The frames' distinct colours, sorted, or `None` as soon as there are more than [`MAX_COLORS`].
fn exact_colors<F: Borrow<RgbImage>>(frames: &[F]) -> Option<Vec<[u8; 3]>> {
    let mut seen: HashSet<[u8; 3]> = HashSet::with_capacity(MAX_COLORS + 1);
    for frame in frames {
        for p in frame.borrow().pixels() {
            if seen.insert(p.0) && seen.len() > MAX_COLORS {
                return None;
            }
        }
    }
    let mut colors: Vec<[u8; 3]> = seen.into_iter().collect();
    colors.sort_unstable();
    Some(colors)
}

/// RGBA pixels to train the quantizer on: all of them when the clip has at most [`TRAINING_PIXELS`];
/// otherwise evenly spaced frames, and evenly spaced rows of each when a single frame is larger than that.
fn training_pixels<F: Borrow<RgbImage>>(frames: &[F]) -> Vec<u8> {
    let frame_pixels = frames.first().map_or(1, |f| f.borrow().as_raw().len() / 3).max(1);
    let count = (TRAINING_PIXELS / frame_pixels).clamp(1, frames.len().max(1));
    let row_step = frame_pixels.div_ceil(TRAINING_PIXELS).max(1);
    let mut out = Vec::with_capacity(4 * TRAINING_PIXELS.min(frame_pixels * count));
    for k in 0..count {
        let Some(frame) = frames.get(k * frames.len() / count) else { continue };
        for row in frame.borrow().rows().step_by(row_step) {
            for p in row {
                out.extend_from_slice(&[p.0[0], p.0[1], p.0[2], 255]);
            }
        }
    }
    // NeuQuant learns in one pass over its samples: a small clip is repeated so that it converges.
    let once = out.len();
    while once > 0 && out.len() < 4 * MIN_TRAINING_PIXELS {
        out.extend_from_within(..once);
    }
    out
}

/// The position of the entry nearest to `c` (squared RGB distance, the first on ties); 0 for no entries.
fn nearest(colors: &[[u8; 3]], c: [u8; 3]) -> usize {
    let distance = |e: &[u8; 3]| (0..3).map(|ch| (i32::from(e[ch]) - i32::from(c[ch])).pow(2)).sum::<i32>();
    colors.iter().enumerate().min_by_key(|&(_, e)| distance(e)).map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(indices: &[u8], palette: &ClipPalette, w: u32, h: u32) -> RgbImage {
        let raw = indices.iter().flat_map(|&i| palette.colors()[i as usize]).collect();
        RgbImage::from_raw(w, h, raw).unwrap()
    }

    /// Two frames of a smooth gradient: 64 x 48 pixels, 3072 distinct colours each, 6144 in all.
    fn gradient() -> Vec<RgbImage> {
        (0..2u32)
            .map(|f| {
                RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, (100 + f * 60 + x) as u8]))
            })
            .collect()
    }

    fn mean_abs_error(frames: &[RgbImage], palette: &ClipPalette) -> f64 {
        let (mut sum, mut n) = (0u64, 0u64);
        for frame in frames {
            let back = decode(&palette.map_frame(frame), palette, frame.width(), frame.height());
            for (a, b) in frame.as_raw().iter().zip(back.as_raw()) {
                sum += a.abs_diff(*b) as u64;
                n += 1;
            }
        }
        sum as f64 / n as f64
    }

    #[test]
    fn few_colours_give_exactly_those_colours_and_exact_indices() {
        let colors = [[9, 9, 9], [255, 0, 0], [0, 128, 255], [1, 2, 3], [200, 200, 10]];
        let frames: Vec<RgbImage> = (0..2)
            .map(|f| RgbImage::from_fn(5, 4, |x, y| image::Rgb(colors[((x + y * 2 + f) % 5) as usize])))
            .collect();
        let palette = ClipPalette::new(&frames);
        let mut sorted = colors.to_vec();
        sorted.sort();
        assert!(palette.is_exact());
        assert_eq!(palette.colors(), sorted);
        assert_eq!(palette.rgb_table().len(), 15);
        for frame in &frames {
            assert_eq!(decode(&palette.map_frame(frame), &palette, 5, 4), *frame);
        }
        // A colour that is not in the clip maps to the nearest entry.
        assert_eq!(palette.colors()[palette.index([250, 10, 5]) as usize], [255, 0, 0]);
        assert!(ClipPalette::new::<RgbImage>(&[]).colors().is_empty());
        // 256 colours are still exact; 257 are not.
        let many = |n: u32| RgbImage::from_fn(n, 1, |x, _| image::Rgb([x as u8, (x >> 8) as u8, 7]));
        assert!(ClipPalette::new(&[many(256)]).is_exact());
        let quantized = ClipPalette::new(&[many(257)]);
        assert!(!quantized.is_exact());
        assert_eq!(quantized.colors().len(), MAX_COLORS);
    }

    #[test]
    fn a_gradient_is_quantized_to_256_colours_with_a_small_error() {
        let frames = gradient();
        let palette = ClipPalette::new(&frames);
        assert!(!palette.is_exact());
        assert_eq!(palette.colors().len(), 256);
        let error = mean_abs_error(&frames, &palette);
        eprintln!("gradient, mean absolute error per channel with 256 colours: {error:.3}");
        // Measured: 4.79 (an exact nearest-entry search over the same palette: 4.69; the median cut this
        // replaced: 4.17).
        assert!(error < 5.5, "mean absolute error {error:.3} per channel, measured 4.79");
        // Every entry NeuQuant trained (alpha 255; an untrained one keeps its initial alpha) maps to itself.
        let quantizer = palette.quantizer.as_ref().unwrap();
        let mut trained = 0;
        for (i, &c) in palette.colors().iter().enumerate() {
            if quantizer.lookup(i).unwrap()[3] == 255 {
                assert_eq!(palette.colors()[palette.index(c) as usize], c, "entry {i}");
                trained += 1;
            }
        }
        assert!(trained > 250, "{trained} trained entries");
    }

    #[test]
    fn the_palette_is_deterministic() {
        let frames = gradient();
        assert_eq!(ClipPalette::new(&frames).colors(), ClipPalette::new(&frames).colors());
    }

    #[test]
    fn large_clips_train_on_evenly_spaced_frames_and_rows() {
        // 40 frames of 256 x 256, each of its own red level: 2.6 M pixels, more than the training budget.
        let frames: Vec<RgbImage> = (0..40u32)
            .map(|f| RgbImage::from_fn(256, 256, |x, y| image::Rgb([f as u8 * 6, x as u8, y as u8])))
            .collect();
        let samples = training_pixels(&frames);
        assert!(samples.len() / 4 <= TRAINING_PIXELS, "{} samples", samples.len() / 4);
        let reds: HashSet<u8> = samples.chunks_exact(4).map(|p| p[0]).collect();
        assert_eq!(reds.len(), 16, "16 whole frames fit the budget");
        assert!(reds.contains(&0) && reds.contains(&(37 * 6)), "from the first frame to near the last: {reds:?}");
        // A single frame larger than the budget: every other row.
        let huge = [RgbImage::from_fn(1024, 1100, |_, y| image::Rgb([0, (y % 256) as u8, (y / 256) as u8]))];
        let samples = training_pixels(&huge);
        assert_eq!(samples.len() / 4, 1024 * 550);
        assert!(samples.chunks_exact(4).all(|p| (p[1] as u32 + 256 * p[2] as u32).is_multiple_of(2)));
    }

    #[test]
    fn sixteen_frames_of_512x512_map_quickly() {
        let frames: Vec<RgbImage> = (0..16u32)
            .map(|f| {
                RgbImage::from_fn(512, 512, |x, y| {
                    image::Rgb([(x / 2) as u8, (y / 2) as u8, ((x + y + f * 16) / 4) as u8])
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let palette = ClipPalette::new(&frames);
        let built = started.elapsed();
        let indices: Vec<Vec<u8>> = frames.iter().map(|f| palette.map_frame(f)).collect();
        let mapped = started.elapsed() - built;
        eprintln!("16 x 512x512: palette {built:?}, indices {mapped:?} (this crate unoptimised in tests)");
        assert_eq!(palette.colors().len(), 256);
        assert!(indices.iter().all(|i| i.len() == 512 * 512));
        // Generous: the test build does not optimise this crate, and the machine may be busy.
        assert!((built + mapped).as_secs_f64() < 20.0, "palette {built:?}, mapping {mapped:?}");
    }
}
