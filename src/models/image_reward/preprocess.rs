//! ImageReward's image preprocessing, exactly as the package does it on a PIL image:
//! torchvision `Resize(224, BICUBIC)` (shorter side to 224, the longer `int(224 * long / short)`), which on a
//! PIL image is Pillow's `Image.resize(size, BICUBIC)`; `CenterCrop(224)` (offsets rounded half-to-even, as
//! Python's `round`); `ToTensor` (u8 / 255); `Normalize` with CLIP's mean and std.
//!
//! Pillow's bicubic resampling, reproduced bit for bit: separable, horizontal pass first (only when the
//! width changes), then vertical (only when the height changes); the filter is the cubic convolution kernel
//! with a = -0.5 and support 2, stretched by the downscale factor (antialiasing); weights are computed in
//! double precision per output pixel, normalised to sum 1, then converted to 22-bit fixed point; each pass
//! accumulates in integers with a rounding offset and clamps to 0..=255, so the intermediate image is
//! rounded to u8 between the passes.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

/// CLIP's normalisation mean (ImageReward uses CLIP's `Normalize`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Fixed-point precision of Pillow's 8-bit resampling (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: the first input index, the number of taps and their fixed-point weights.
struct Taps {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's resampling filters (`Image.BOX`, `Image.BILINEAR`, `Image.BICUBIC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Bicubic,
}

impl Filter {
    /// The filter's support (half width) at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => bicubic(x),
        }
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-range resize `in_size -> out_size`.
fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero; negative starts clamp to 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, xmax) = (xmin as usize, xmax.max(0) as usize);
        let mut total = 0.0;
        for (x, w) in k.iter_mut().enumerate().take(xmax) {
            *w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
            total += *w;
        }
        for (slot, &w) in weights[xx * ksize..xx * ksize + xmax].iter_mut().zip(&k) {
            let w = if total != 0.0 { w / total } else { w };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            *slot = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Taps { bounds, ksize, weights }
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One separable pass over interleaved RGB rows: `along_x` resamples each row, otherwise each column.
fn pass(src: &[u8], w: usize, h: usize, out_len: usize, along_x: bool, filter: Filter) -> Vec<u8> {
    let t = taps(if along_x { w } else { h }, out_len, filter);
    let (ow, oh) = if along_x { (out_len, h) } else { (w, out_len) };
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let o = if along_x { x } else { y };
            let (start, n) = t.bounds[o];
            let k = &t.weights[o * t.ksize..o * t.ksize + n];
            for c in 0..3 {
                let mut acc: i32 = 1 << (PRECISION_BITS - 1);
                for (i, &wk) in k.iter().enumerate() {
                    let idx = if along_x { (y * w + start + i) * 3 + c } else { ((start + i) * w + x) * 3 + c };
                    acc += i32::from(src[idx]) * wk;
                }
                out[(y * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

/// Pillow's `Image.resize((width, height), Image.BICUBIC)` of an RGB image, bit for bit.
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(img, width, height, Filter::Bicubic)
}

/// Pillow's `Image.resize((width, height), filter)` of an RGB image, bit for bit (same size: a copy).
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let mut data = img.as_raw().clone();
    let mut cur_w = w;
    if ow != w {
        data = pass(&data, w, h, ow, true, filter);
        cur_w = ow;
    }
    if oh != h {
        data = pass(&data, cur_w, h, oh, false, filter);
    }
    // Sizes come from u32 and the buffer has exactly width * height * 3 bytes.
    RgbImage::from_raw(width, height, data).unwrap_or_else(|| RgbImage::new(width, height))
}

/// torchvision's output size of `Resize(short)`: (width, height) with the shorter side `short` and the
/// longer `int(short * long / short_side)`.
pub fn resized_size(width: u32, height: u32, short: u32) -> (u32, u32) {
    let (s, l) = if width <= height { (width, height) } else { (height, width) };
    let long = (f64::from(short) * f64::from(l) / f64::from(s.max(1))) as u32;
    if width <= height { (short, long) } else { (long, short) }
}

/// Python's `round(d / 2)` for an integer `d >= 0` (half to even).
fn half_round_even(d: u32) -> u32 {
    let half = d / 2;
    if d.is_multiple_of(2) || half.is_multiple_of(2) { half } else { half + 1 }
}

/// torchvision's `CenterCrop(size)` of an image at least `size` on both sides.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let top = half_round_even(img.height().saturating_sub(size));
    let left = half_round_even(img.width().saturating_sub(size));
    image::imageops::crop_imm(img, left, top, size.min(img.width()), size.min(img.height())).to_image()
}

/// Resize (shorter side to `size`, Pillow bicubic) and center crop to `size` x `size`: the uint8 image
/// ImageReward's `ToTensor` sees. An image already of the resized size is not resampled (torchvision skips it).
pub fn resize_and_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = resized_size(img.width(), img.height(), size);
    let crop =
        |im: &RgbImage| if im.width() == size && im.height() == size { im.clone() } else { center_crop(im, size) };
    if (w, h) == (img.width(), img.height()) { crop(img) } else { crop(&resize_bicubic(img, w, h)) }
}

/// `ToTensor` + `Normalize(CLIP mean, std)` of crops of equal size: [N, 3, H, W] in f32.
pub fn normalize(crops: &[RgbImage], device: &Device) -> Tensor<4> {
    let (w, h) = crops.first().map_or((0, 0), |c| (c.width() as usize, c.height() as usize));
    let mut data = Vec::with_capacity(crops.len() * 3 * w * h);
    for crop in crops {
        let raw = crop.as_raw();
        for c in 0..3 {
            data.extend(raw.chunks_exact(3).map(|px| (f32::from(px[c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]));
        }
    }
    Tensor::from_data(TensorData::new(data, [crops.len(), 3, h, w]), device)
}

/// ImageReward's whole preprocessing of a batch of images: [N, 3, size, size].
pub fn preprocess(images: &[RgbImage], size: u32, device: &Device) -> Tensor<4> {
    let crops: Vec<RgbImage> = images.iter().map(|im| resize_and_crop(im, size)).collect();
    normalize(&crops, device)
}

/// A decoded frame [3, H, W] with values in [0, 1] as the RGB image a PIL conversion would give
/// (`round(clamp(x, 0, 1) * 255)`, as diffusers' `numpy_to_pil`).
pub fn frame_to_image(frame: &Tensor<3>) -> RgbImage {
    let [c, h, w] = frame.dims();
    let values: Vec<f32> = frame.to_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
    let mut img = RgbImage::new(w as u32, h as u32);
    if c < 3 || values.len() != c * h * w {
        return img;
    }
    for (i, px) in img.pixels_mut().enumerate() {
        for (ch, v) in px.0.iter_mut().enumerate() {
            *v = (values[ch * h * w + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_sizes_and_offsets() {
        assert_eq!(resized_size(300, 200, 224), (336, 224));
        assert_eq!(resized_size(150, 260, 224), (224, 388));
        assert_eq!(resized_size(97, 61, 224), (356, 224));
        // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4
        assert_eq!([1, 3, 5, 7, 4].map(half_round_even), [0, 2, 2, 4, 2]);
    }

    #[test]
    fn bicubic_kernel_is_pillows() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
    }
}
