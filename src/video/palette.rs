//! One colour palette for all frames of a clip (what a GIF needs), and frames mapped onto it.
//!
//! A clip with few colours keeps exactly its colours; otherwise the palette comes from median cut over the
//! colour histogram of all frames, so every frame shares one global color table.

use image::RgbImage;

/// The most colours a GIF color table holds.
pub const MAX_COLORS: usize = 256;

/// A palette of at most 256 colours; a pixel's index is its position in `colors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Palette {
    pub colors: Vec<[u8; 3]>,
}

fn pack(c: [u8; 3]) -> u32 {
    (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32
}

fn unpack(k: u32) -> [u8; 3] {
    [(k >> 16) as u8, (k >> 8) as u8, k as u8]
}

/// Distinct colours of all frames with their pixel counts, sorted by colour. Built frame by frame (sort,
/// count runs, merge), so memory grows with the number of distinct colours, not with the clip's length.
fn histogram<F: std::borrow::Borrow<RgbImage>>(frames: &[F]) -> Vec<(u32, u64)> {
    let mut total: Vec<(u32, u64)> = Vec::new();
    let mut keys = Vec::new();
    for frame in frames {
        let frame = frame.borrow();
        keys.clear();
        keys.extend(frame.pixels().map(|p| pack(p.0)));
        keys.sort_unstable();
        let mut counted: Vec<(u32, u64)> = Vec::new();
        for &k in &keys {
            match counted.last_mut() {
                Some((last, n)) if *last == k => *n += 1,
                _ => counted.push((k, 1)),
            }
        }
        if total.is_empty() {
            total = counted;
            continue;
        }
        let mut merged = Vec::with_capacity(total.len() + counted.len());
        let (mut i, mut j) = (0, 0);
        while i < total.len() && j < counted.len() {
            let (a, b) = (total[i], counted[j]);
            if a.0 == b.0 {
                merged.push((a.0, a.1 + b.1));
                i += 1;
                j += 1;
            } else if a.0 < b.0 {
                merged.push(a);
                i += 1;
            } else {
                merged.push(b);
                j += 1;
            }
        }
        merged.extend_from_slice(&total[i..]);
        merged.extend_from_slice(&counted[j..]);
        total = merged;
    }
    total
}

/// A box of median cut: a range of the histogram's entries and its bounds.
struct ColorBox {
    lo: usize,
    hi: usize,
    min: [u8; 3],
    max: [u8; 3],
}

impl ColorBox {
    fn new(entries: &[([u8; 3], u64)], lo: usize, hi: usize) -> ColorBox {
        let (mut min, mut max) = ([255u8; 3], [0u8; 3]);
        for (c, _) in &entries[lo..hi] {
            for ch in 0..3 {
                min[ch] = min[ch].min(c[ch]);
                max[ch] = max[ch].max(c[ch]);
            }
        }
        ColorBox { lo, hi, min, max }
    }

    /// The longest axis (the first of R, G, B on ties) and its range.
    fn longest(&self) -> (usize, u8) {
        let mut best = (0, 0);
        for ch in 0..3 {
            let range = self.max[ch] - self.min[ch];
            if range > best.1 {
                best = (ch, range);
            }
        }
        best
    }
}

/// A palette for all `frames` with at most `max_colors` colours (clamped to 1..=256). When the frames hold
/// no more distinct colours than that, the palette is exactly those colours, sorted. Otherwise it is made by
/// median cut: starting from one box around the histogram of all frames' pixels, the box with the largest
/// range is split along its longest axis at the count-weighted median (colours at or below the median value
/// on one side, those above on the other) until there are `max_colors` boxes;
/// each box gives its count-weighted mean colour, rounded. The result is sorted and depends only on the
/// pixels (not on hashing or timing). No frames give an empty palette.
pub fn palette_for<F: std::borrow::Borrow<RgbImage>>(frames: &[F], max_colors: usize) -> Palette {
    let max_colors = max_colors.clamp(1, MAX_COLORS);
    let hist = histogram(frames);
    if hist.len() <= max_colors {
        return Palette { colors: hist.iter().map(|&(k, _)| unpack(k)).collect() };
    }
    let mut entries: Vec<([u8; 3], u64)> = hist.iter().map(|&(k, n)| (unpack(k), n)).collect();
    let mut boxes = vec![ColorBox::new(&entries, 0, entries.len())];
    while boxes.len() < max_colors {
        let mut pick = None;
        for (i, b) in boxes.iter().enumerate() {
            let (axis, range) = b.longest();
            if range > 0 && pick.is_none_or(|(_, _, best)| range > best) {
                pick = Some((i, axis, range));
            }
        }
        // With more distinct colours than boxes, some box always has a non-zero range.
        let Some((i, axis, _)) = pick else { break };
        let (lo, hi) = (boxes[i].lo, boxes[i].hi);
        let (min, max) = (boxes[i].min[axis], boxes[i].max[axis]);
        // The weighted median along the axis: the smallest value with at least half the box's pixels at or
        // below it, kept below the box's maximum so that both halves hold colours.
        let mut counts = [0u64; 256];
        for (c, n) in &entries[lo..hi] {
            counts[c[axis] as usize] += n;
        }
        let total: u64 = counts.iter().sum();
        let mut seen = 0;
        let mut median = min;
        for v in min..max {
            seen += counts[v as usize];
            median = v;
            if 2 * seen >= total {
                break;
            }
        }
        // Entries at or below the median go first (an in-place partition: deterministic for a given order).
        let mut split = lo;
        for j in lo..hi {
            if entries[j].0[axis] <= median {
                entries.swap(split, j);
                split += 1;
            }
        }
        boxes[i] = ColorBox::new(&entries, lo, split);
        boxes.push(ColorBox::new(&entries, split, hi));
    }
    let mut colors: Vec<[u8; 3]> = boxes
        .iter()
        .map(|b| {
            let mut sum = [0u64; 3];
            let mut count = 0u64;
            for (c, n) in &entries[b.lo..b.hi] {
                for ch in 0..3 {
                    sum[ch] += c[ch] as u64 * n;
                }
                count += n;
            }
            sum.map(|s| ((s + count / 2) / count.max(1)) as u8)
        })
        .collect();
    colors.sort_unstable();
    colors.dedup();
    Palette { colors }
}

fn distance(a: [u8; 3], b: [u8; 3]) -> u32 {
    (0..3).map(|ch| (a[ch] as i32 - b[ch] as i32).pow(2) as u32).sum()
}

/// Maps colours to their nearest palette entry (squared RGB distance, the lowest index on ties), exactly as
/// a search over the whole palette would, but fast: a lazily built 32x32x32 grid keeps, per cell, the
/// entries that can be nearest to some colour inside it (those no farther from the cell than the best
/// entry's farthest corner), so a lookup compares a handful of entries. Building a cell costs one pass over
/// the palette; keep one map for all frames of a clip to build each cell once. Only the first 256 entries
/// are used; an empty palette maps everything to 0.
pub struct PaletteMap<'a> {
    colors: &'a [[u8; 3]],
    /// Per cell: where its candidates start in `candidates` and how many there are; `None` until needed.
    cells: Vec<Option<(u32, u16)>>,
    candidates: Vec<u8>,
}

impl<'a> PaletteMap<'a> {
    pub fn new(palette: &'a Palette) -> PaletteMap<'a> {
        let colors = &palette.colors[..palette.colors.len().min(MAX_COLORS)];
        PaletteMap { colors, cells: vec![None; 32 * 32 * 32], candidates: Vec::new() }
    }

    fn build(&mut self, cell: usize) -> (u32, u16) {
        let lo = [(cell >> 10) as i32 * 8, ((cell >> 5) & 31) as i32 * 8, (cell & 31) as i32 * 8];
        let (mut near, mut far) = (Vec::with_capacity(self.colors.len()), u32::MAX);
        for c in self.colors {
            let (mut dmin, mut dmax) = (0u32, 0u32);
            for ch in 0..3 {
                let (v, a, b) = (c[ch] as i32, lo[ch], lo[ch] + 7);
                let inside = if v < a {
                    a - v
                } else if v > b {
                    v - b
                } else {
                    0
                };
                let corner = (v - a).abs().max((v - b).abs());
                dmin += (inside * inside) as u32;
                dmax += (corner * corner) as u32;
            }
            near.push(dmin);
            far = far.min(dmax);
        }
        let start = self.candidates.len() as u32;
        self.candidates.extend((0..self.colors.len()).filter(|&i| near[i] <= far).map(|i| i as u8));
        let found = (start, (self.candidates.len() as u32 - start) as u16);
        self.cells[cell] = Some(found);
        found
    }

    /// The index of the palette entry nearest to `c`.
    pub fn index(&mut self, c: [u8; 3]) -> u8 {
        if self.colors.is_empty() {
            return 0;
        }
        let cell = (c[0] as usize >> 3) << 10 | (c[1] as usize >> 3) << 5 | c[2] as usize >> 3;
        let (start, len) = match self.cells[cell] {
            Some(found) => found,
            None => self.build(cell),
        };
        let mut best = (u32::MAX, 0u8);
        for &i in &self.candidates[start as usize..start as usize + len as usize] {
            let d = distance(c, self.colors[i as usize]);
            if d < best.0 {
                best = (d, i);
            }
        }
        best.1
    }

    /// The index of every pixel of `frame`, row by row.
    pub fn map_frame(&mut self, frame: &RgbImage) -> Vec<u8> {
        let mut out = Vec::with_capacity(frame.width() as usize * frame.height() as usize);
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

    /// Like [`PaletteMap::map_frame`], with Floyd–Steinberg error diffusion (left to right on every row):
    /// smoother gradients for a small palette, at the price of noise that compresses less well. A frame
    /// whose colours are all in the palette maps exactly as without dithering.
    pub fn map_frame_dithered(&mut self, frame: &RgbImage) -> Vec<u8> {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let mut out = Vec::with_capacity(w * h);
        if self.colors.is_empty() {
            out.resize(w * h, 0);
            return out;
        }
        // Error carried to the current and the next row, one pixel of padding on each side.
        let mut this_row = vec![[0f32; 3]; w + 2];
        let mut next_row = vec![[0f32; 3]; w + 2];
        for row in frame.rows() {
            for (x, p) in row.enumerate() {
                let wanted: [f32; 3] =
                    std::array::from_fn(|ch| (p.0[ch] as f32 + this_row[x + 1][ch]).clamp(0.0, 255.0));
                let i = self.index(wanted.map(|v| v.round() as u8));
                out.push(i);
                let got = self.colors[i as usize];
                for ch in 0..3 {
                    let err = wanted[ch] - got[ch] as f32;
                    this_row[x + 2][ch] += err * 7.0 / 16.0;
                    next_row[x][ch] += err * 3.0 / 16.0;
                    next_row[x + 1][ch] += err * 5.0 / 16.0;
                    next_row[x + 2][ch] += err / 16.0;
                }
            }
            std::mem::swap(&mut this_row, &mut next_row);
            next_row.iter_mut().for_each(|e| *e = [0.0; 3]);
        }
        out
    }
}

/// The palette index of every pixel of `frame` (row by row): the nearest entry by squared RGB distance,
/// the lowest index on ties. Colours that are in the palette map to themselves. Only the first 256 entries
/// are used; an empty palette maps everything to 0. For several frames, one [`PaletteMap`] is faster.
pub fn index_frame(frame: &RgbImage, palette: &Palette) -> Vec<u8> {
    PaletteMap::new(palette).map_frame(frame)
}

/// Like [`index_frame`], with Floyd–Steinberg error diffusion (see [`PaletteMap::map_frame_dithered`]).
pub fn index_frame_dithered(frame: &RgbImage, palette: &Palette) -> Vec<u8> {
    PaletteMap::new(palette).map_frame_dithered(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(indices: &[u8], palette: &Palette, w: u32, h: u32) -> RgbImage {
        let raw = indices.iter().flat_map(|&i| palette.colors[i as usize]).collect();
        RgbImage::from_raw(w, h, raw).unwrap()
    }

    fn brute_force(c: [u8; 3], palette: &Palette) -> u8 {
        let mut best = (u32::MAX, 0);
        for (i, &p) in palette.colors.iter().enumerate() {
            if distance(c, p) < best.0 {
                best = (distance(c, p), i as u8);
            }
        }
        best.1
    }

    /// Two frames of a smooth gradient: 64 x 48 pixels, 3072 distinct colours each, 6144 in all.
    fn gradient() -> Vec<RgbImage> {
        (0..2u32)
            .map(|f| {
                RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, (100 + f * 60 + x) as u8]))
            })
            .collect()
    }

    fn mean_abs_error(frames: &[RgbImage], palette: &Palette) -> f64 {
        let (mut sum, mut n) = (0u64, 0u64);
        for frame in frames {
            let back = decode(&index_frame(frame, palette), palette, frame.width(), frame.height());
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
        let palette = palette_for(&frames, 256);
        let mut sorted = colors.to_vec();
        sorted.sort();
        assert_eq!(palette.colors, sorted);
        assert_eq!(palette_for(&frames, 5).colors, sorted, "max_colors equal to the count keeps them all");
        for frame in &frames {
            let indices = index_frame(frame, &palette);
            assert_eq!(decode(&indices, &palette, 5, 4), *frame);
            assert_eq!(index_frame_dithered(frame, &palette), indices);
        }
        assert_eq!(palette_for::<RgbImage>(&[], 256).colors, Vec::<[u8; 3]>::new());
        assert_eq!(palette_for(&frames[..1], 0).colors.len(), 1, "max_colors is clamped to at least 1");
    }

    #[test]
    fn a_gradient_is_cut_to_256_colours_with_a_small_error() {
        let frames = gradient();
        assert_eq!(histogram(&frames).len(), 6144);
        assert_eq!(histogram(&frames).iter().map(|e| e.1).sum::<u64>(), 2 * 64 * 48);
        let palette = palette_for(&frames, 256);
        assert_eq!(palette.colors.len(), 256);
        let error = mean_abs_error(&frames, &palette);
        // Measured: 4.17 per channel (6144 colours, about 24 per palette entry).
        assert!(error < 4.5, "mean absolute error {error:.3} per channel, measured 4.17");
        let small = palette_for(&frames, 16);
        assert_eq!(small.colors.len(), 16);
        let small_error = mean_abs_error(&frames, &small);
        eprintln!("gradient, mean absolute error per channel: 256 colours {error:.3}, 16 colours {small_error:.3}");
        // Measured: 20.08.
        assert!(small_error > error && small_error < 22.0, "16 colours: {small_error:.3}, measured 20.08");
    }

    #[test]
    fn the_palette_is_deterministic() {
        let frames = gradient();
        let a = palette_for(&frames, 256);
        assert_eq!(a, palette_for(&frames, 256));
        assert_eq!(a, palette_for(&frames.iter().rev().cloned().collect::<Vec<_>>(), 256), "frame order");
        let mut sorted = a.colors.clone();
        sorted.sort();
        assert_eq!(a.colors, sorted);
    }

    #[test]
    fn nearest_lookup_matches_brute_force() {
        let palette = palette_for(&gradient(), 200);
        let mut state = 5u64;
        let mut nearest = PaletteMap::new(&palette);
        for _ in 0..20_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let c = unpack((state >> 40) as u32);
            assert_eq!(nearest.index(c), brute_force(c, &palette), "{c:?}");
        }
        for (i, &c) in palette.colors.iter().enumerate() {
            assert_eq!(nearest.index(c) as usize, i);
        }
        // Equally near entries: the lowest index wins, as in the brute-force search.
        let tie = Palette { colors: vec![[10, 0, 0], [0, 10, 0], [0, 0, 0]] };
        assert_eq!(index_frame(&RgbImage::from_pixel(1, 1, image::Rgb([5, 5, 0])), &tie), vec![0]);
        assert_eq!(index_frame(&RgbImage::new(2, 1), &Palette { colors: vec![] }), vec![0, 0]);
    }

    #[test]
    fn dithering_keeps_the_mean_of_a_gradient() {
        let frame = RgbImage::from_fn(128, 16, |x, _| image::Rgb([(x * 2) as u8; 3]));
        let bw = Palette { colors: vec![[0, 0, 0], [255, 255, 255]] };
        let mean = |indices: &[u8]| indices.iter().map(|&i| bw.colors[i as usize][0] as f64).sum::<f64>() / 2048.0;
        let dithered = mean(&index_frame_dithered(&frame, &bw));
        let plain = mean(&index_frame(&frame, &bw));
        assert!((dithered - 127.0).abs() < 2.0, "dithered mean {dithered:.2}, source mean 127");
        assert!((plain - 127.0).abs() > (dithered - 127.0).abs(), "plain {plain:.2} vs dithered {dithered:.2}");
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
        let palette = palette_for(&frames, 256);
        let built = started.elapsed();
        let mut map = PaletteMap::new(&palette);
        let indices: Vec<Vec<u8>> = frames.iter().map(|f| map.map_frame(f)).collect();
        let mapped = started.elapsed() - built;
        assert_eq!(indices[3], index_frame(&frames[3], &palette));
        eprintln!("16 x 512x512: palette {built:?}, indices {mapped:?} (this crate unoptimised in tests)");
        assert_eq!(palette.colors.len(), 256);
        assert!(indices.iter().all(|i| i.len() == 512 * 512));
        // Generous: the test build does not optimise this crate, and the machine may be busy.
        assert!(mapped.as_secs_f64() < 20.0, "mapping took {mapped:?}");
    }
}
