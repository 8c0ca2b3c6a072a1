//! 2D convolution over NCHW images on the CPU: for each tile of output rows, the tile's im2col columns are
//! gathered into a small buffer (padding as zeros, no padded copy of the image) and one matrix product with
//! the [out, in x kh x kw] weight writes the tile's outputs in place, in the output's own NCHW layout.
//! Tiles of all images run in parallel, each with its own column buffer, so that gathering is spread over
//! the cores as well as the products; a 1x1 convolution without stride or padding reads the image itself.

use rayon::prelude::*;

use crate::KernelError;

/// Sizes of a [`conv2d`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub images: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
}

impl ConvDims {
    /// The output's height and width, or why there is none (zero stride, kernel larger than the padded image).
    pub fn output(&self) -> Result<[usize; 2], KernelError> {
        let ([kh, kw], [sh, sw], [top, left, bottom, right]) = (self.kernel, self.stride, self.padding);
        let (padded_h, padded_w) = (self.height + top + bottom, self.width + left + right);
        if sh == 0 || sw == 0 || kh == 0 || kw == 0 {
            return Err(KernelError::Shape { kernel: "conv2d", reason: format!("zero stride or kernel in {self:?}") });
        }
        if padded_h < kh || padded_w < kw {
            return Err(KernelError::Shape {
                kernel: "conv2d",
                reason: format!("a {kh}x{kw} kernel is larger than the padded {padded_h}x{padded_w} image"),
            });
        }
        Ok([(padded_h - kh) / sh + 1, (padded_w - kw) / sw + 1])
    }

    /// Rows of the im2col columns: in_channels x kh x kw.
    fn taps(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    fn pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0; 4]
    }
}

/// Bytes of im2col columns a tile aims at: with the weight's packed panel it stays within a core's L2.
pub const TILE_COLUMN_BYTES: usize = 1 << 20;

/// Fewest output pixels per tile: narrower products lose more to packing the weight than the cache saves.
pub const MIN_TILE_PIXELS: usize = 192;

/// Output rows per tile for `dims` with output width `ow`.
fn tile_rows(dims: &ConvDims, [oh, ow]: [usize; 2]) -> usize {
    let pixels = (TILE_COLUMN_BYTES / (dims.taps() * std::mem::size_of::<f32>()).max(1)).max(MIN_TILE_PIXELS);
    (pixels / ow.max(1)).clamp(1, oh.max(1))
}

/// Bytes of column buffers [`conv2d`] holds at once with `threads` workers (zero for a pointwise convolution).
pub fn conv2d_scratch_bytes(dims: &ConvDims, threads: usize) -> usize {
    match dims.output() {
        Ok(out) if !dims.pointwise() => {
            let tiles = dims.images * out[0].div_ceil(tile_rows(dims, out));
            threads.clamp(1, tiles.max(1)) * dims.taps() * tile_rows(dims, out) * out[1] * std::mem::size_of::<f32>()
        }
        _ => 0,
    }
}

/// `x` [images, in, h, w] convolved with `weight` [out, in, kh, kw] plus `bias` [out]: [images, out, oh, ow],
/// all row-major (see [`ConvDims::output`] for oh, ow).
pub fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, dims: ConvDims) -> Result<Vec<f32>, KernelError> {
    let [oh, ow] = dims.output()?;
    let ConvDims { images, in_channels, height, width, out_channels, .. } = dims;
    let taps = dims.taps();
    for (name, found, expected) in [
        ("x", x.len(), images * in_channels * height * width),
        ("weight", weight.len(), out_channels * taps),
        ("bias", bias.map_or(out_channels, <[f32]>::len), out_channels),
    ] {
        if found != expected {
            return Err(KernelError::Length { kernel: "conv2d", name, expected, found });
        }
    }
    let mut out = vec![0.0f32; images * out_channels * oh * ow];
    if out.is_empty() || taps == 0 {
        if let Some(bias) = bias {
            out.chunks_exact_mut(oh * ow).enumerate().for_each(|(i, plane)| plane.fill(bias[i % out_channels]));
        }
        return Ok(out);
    }
    let rows = tile_rows(&dims, [oh, ow]);
    let tiles_per_image = oh.div_ceil(rows);
    let tiles = images * tiles_per_image;
    let threads = rayon::current_num_threads();
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run_tile = |tile: usize, columns: &mut Vec<f32>, parallelism: gemm::Parallelism| {
        let (image, first_row) = (tile / tiles_per_image, (tile % tiles_per_image) * rows);
        let tile_rows = rows.min(oh - first_row);
        let pixels = tile_rows * ow;
        let image_in = &x[image * in_channels * height * width..(image + 1) * in_channels * height * width];
        let (rhs, rhs_rs) = if dims.pointwise() {
            (image_in[first_row * width..].as_ptr(), (height * width) as isize)
        } else {
            columns.resize(taps * pixels, 0.0);
            gather(image_in, &dims, [first_row, tile_rows], ow, columns);
            (columns.as_ptr(), pixels as isize)
        };
        let plane = oh * ow;
        // SAFETY: tiles address disjoint output pixels (rows first_row..first_row + tile_rows of each of
        // this image's out_channels planes), so no two tasks touch the same element; `out` outlives the
        // parallel loop. The product below writes exactly those elements: m = out_channels rows at stride
        // `plane`, n = pixels columns at stride 1, starting at the tile's first pixel.
        let dst = unsafe { out_ptr.get().add(image * out_channels * plane + first_row * ow) };
        if let Some(bias) = bias {
            for (channel, &b) in bias.iter().enumerate() {
                // SAFETY: as above, the tile's pixels of one channel plane.
                unsafe { std::slice::from_raw_parts_mut(dst.add(channel * plane), pixels) }.fill(b);
            }
        }
        // SAFETY: dst as above; weight is [out_channels, taps] row-major (length checked); rhs is [taps,
        // pixels] at row stride rhs_rs: the tile's columns, or for a pointwise convolution the image's
        // [in_channels, h * w] planes from the tile's first pixel (pixels <= h * w - first_row * w).
        unsafe {
            gemm::gemm(
                out_channels,
                pixels,
                taps,
                dst,
                1,
                plane as isize,
                bias.is_some(),
                weight.as_ptr(),
                1,
                taps as isize,
                rhs,
                1,
                rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    if tiles >= threads {
        (0..tiles)
            .into_par_iter()
            .for_each_init(Vec::new, |columns, tile| run_tile(tile, columns, gemm::Parallelism::None));
    } else {
        let mut columns = Vec::new();
        for tile in 0..tiles {
            run_tile(tile, &mut columns, gemm::Parallelism::Rayon(threads));
        }
    }
    Ok(out)
}

/// The output buffer's pointer, shared by the tile tasks (each writes its own pixels).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks holding it write disjoint elements (see `conv2d`).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// The im2col columns of output rows `first_row..first_row + rows` of one image into `columns` [taps,
/// rows x ow], row order (channel, ki, kj) like the weight's; pixels that fall in the padding are zero.
fn gather(image: &[f32], dims: &ConvDims, [first_row, rows]: [usize; 2], ow: usize, columns: &mut [f32]) {
    let ConvDims { in_channels, height, width, kernel: [kh, kw], stride: [sh, sw], padding: [top, left, ..], .. } =
        *dims;
    let pixels = rows * ow;
    let mut tap_rows = columns.chunks_exact_mut(pixels);
    for channel in 0..in_channels {
        let plane = &image[channel * height * width..(channel + 1) * height * width];
        for ki in 0..kh {
            for kj in 0..kw {
                let Some(tap) = tap_rows.next() else { return };
                // Output columns whose input column lies inside the image: ox * sw + kj - left in 0..width.
                let first_ox = left.saturating_sub(kj).div_ceil(sw).min(ow);
                let end_ox = if width + left > kj { ((width + left - kj - 1) / sw + 1).min(ow) } else { 0 };
                let end_ox = end_ox.max(first_ox);
                for (r, segment) in tap.chunks_exact_mut(ow).enumerate() {
                    let iy = (first_row + r) * sh + ki;
                    if iy < top || iy - top >= height {
                        segment.fill(0.0);
                        continue;
                    }
                    let source = &plane[(iy - top) * width..(iy - top + 1) * width];
                    segment[..first_ox].fill(0.0);
                    segment[end_ox..].fill(0.0);
                    if first_ox == end_ox {
                        continue;
                    }
                    let first_ix = first_ox * sw + kj - left;
                    if sw == 1 {
                        segment[first_ox..end_ox].copy_from_slice(&source[first_ix..first_ix + end_ox - first_ox]);
                    } else {
                        for (o, value) in segment[first_ox..end_ox].iter_mut().enumerate() {
                            *value = source[first_ix + o * sw];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::values;

    fn reference(x: &[f32], weight: &[f32], bias: Option<&[f32]>, d: ConvDims) -> Vec<f32> {
        let [oh, ow] = d.output().unwrap();
        let ([kh, kw], [sh, sw], [top, left, ..]) = (d.kernel, d.stride, d.padding);
        let mut out = Vec::with_capacity(d.images * d.out_channels * oh * ow);
        for n in 0..d.images {
            for co in 0..d.out_channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = bias.map_or(0.0, |b| f64::from(b[co]));
                        for ci in 0..d.in_channels {
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let (iy, ix) = (
                                        (oy * sh + ki) as isize - top as isize,
                                        (ox * sw + kj) as isize - left as isize,
                                    );
                                    if iy < 0 || ix < 0 || iy >= d.height as isize || ix >= d.width as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((n * d.in_channels + ci) * d.height + iy as usize) * d.width + ix as usize];
                                    let wv = weight[((co * d.in_channels + ci) * kh + ki) * kw + kj];
                                    sum += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        out.push(sum as f32);
                    }
                }
            }
        }
        out
    }

    /// Against a float64 direct convolution: odd and non-square images, stride 2 with odd sizes, asymmetric
    /// and zero padding, padding wider than the kernel reaches, 1x1 (pointwise and strided), 1x3 and 5x5
    /// kernels, with and without bias, images with several tiles and a short last tile, and a single tile
    /// (the product parallel inside).
    #[test]
    fn conv2d_equals_a_float64_reference() {
        let cases = [
            // images, cin, h, w, cout, kernel, stride, padding
            (2, 3, 7, 5, 4, [3, 3], [1, 1], [1, 1, 1, 1]),
            (1, 2, 9, 6, 3, [3, 3], [2, 2], [0, 1, 1, 0]),
            (3, 4, 6, 7, 5, [1, 1], [1, 1], [0, 0, 0, 0]),
            (1, 3, 5, 8, 2, [1, 1], [2, 1], [0, 0, 0, 0]),
            (2, 2, 6, 9, 3, [1, 3], [1, 1], [0, 1, 0, 1]),
            (1, 3, 8, 8, 2, [5, 5], [1, 1], [2, 2, 2, 2]),
            (1, 1, 3, 3, 1, [3, 3], [1, 1], [3, 3, 3, 3]),
            (2, 5, 37, 29, 6, [3, 3], [1, 1], [1, 1, 1, 1]),
            (1, 4, 41, 33, 3, [3, 3], [2, 2], [0, 0, 1, 1]),
            (1, 2, 3, 200, 2, [3, 3], [1, 1], [1, 1, 1, 1]),
        ];
        for (images, cin, h, w, cout, kernel, stride, padding) in cases {
            let d =
                ConvDims { images, in_channels: cin, height: h, width: w, out_channels: cout, kernel, stride, padding };
            let x = values(images * cin * h * w, 5);
            let weight = values(cout * cin * kernel[0] * kernel[1], 6);
            let bias = values(cout, 7);
            for bias in [None, Some(bias.as_slice())] {
                let got = conv2d(&x, &weight, bias, d).unwrap();
                let want = reference(&x, &weight, bias, d);
                assert_eq!(got.len(), want.len(), "{d:?}");
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "{d:?}, bias {}: max difference {worst}", bias.is_some());
            }
        }
    }

    /// Many tiles per image (channels chosen so that a tile is a few rows), run in parallel.
    #[test]
    fn tiled_images_equal_the_reference() {
        let d = ConvDims {
            images: 2,
            in_channels: 160,
            height: 20,
            width: 96,
            out_channels: 3,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1, 1, 1],
        };
        assert!(tile_rows(&d, d.output().unwrap()) < d.height, "the case must have several tiles");
        let (x, weight) = (values(2 * 160 * 20 * 96, 8), values(3 * 160 * 9, 9));
        let got = conv2d(&x, &weight, None, d).unwrap();
        let want = reference(&x, &weight, None, d);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 2e-3, "max difference {worst}");
    }

    #[test]
    fn bad_sizes_are_named() {
        let d = ConvDims {
            images: 1,
            in_channels: 2,
            height: 4,
            width: 4,
            out_channels: 3,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [0; 4],
        };
        let err = conv2d(&[0.0; 32], &[0.0; 53], None, d).unwrap_err();
        assert_eq!(err, KernelError::Length { kernel: "conv2d", name: "weight", expected: 54, found: 53 });
        let small = ConvDims { height: 2, ..d };
        assert!(matches!(conv2d(&[0.0; 16], &[0.0; 54], None, small), Err(KernelError::Shape { .. })));
        let zero = ConvDims { stride: [0, 1], ..d };
        assert!(matches!(zero.output(), Err(KernelError::Shape { .. })));
    }
}
