//! I2VGen-XL as diffusers' `I2VGenXLPipeline` runs it (../shared/SEED-SYSTEMS.md 3.4). So far: the
//! pipeline's image preprocessing, Pillow-exact, for its two branches:
//!
//! - the CLIP branch: [`center_crop_wide`] to `width` x `width`, a bilinear resize to the image encoder's
//!   crop, `u8 / 255`, CLIP normalisation ([`clip_pixels`]);
//! - the latent branch: [`center_crop_wide`] to `width` x `height`, then `2 x - 1` ([`latent_pixels`]), what
//!   the VAE encoder reads.

use image::RgbImage;

use crate::models::image_reward::preprocess::{Filter, resize};

/// diffusers' `_center_crop_wide(image, (width, height))`: scale by the smaller of the two ratios (Pillow's
/// BOX filter to `round(w // s)` x `round(h // s)`), then crop `width` x `height` at `((W - width) // 2,
/// (H - height) // 2)` (Pillow pads with black where the crop leaves the image).
pub fn center_crop_wide(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let scale = (w / f64::from(width.max(1))).min(h / f64::from(height.max(1)));
    // Python: round(w // scale), with Python's float floor division (47 // 1.175 is 39.0, not 40).
    let side = |v: f64| (python_floor_div(v, scale).round() as u32).max(1);
    let resized = resize(img, side(w), side(h), Filter::Box);
    let x1 = (i64::from(resized.width()) - i64::from(width)).div_euclid(2);
    let y1 = (i64::from(resized.height()) - i64::from(height)).div_euclid(2);
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) + x1, i64::from(y) + y1);
        if sx >= 0 && sy >= 0 && sx < i64::from(resized.width()) && sy < i64::from(resized.height()) {
            *resized.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// Python's `a // b` for floats (CPython's `float_floor_div`): from `fmod`, so it can differ from
/// `floor(a / b)` when `a / b` rounds up to a whole number.
pub fn python_floor_div(a: f64, b: f64) -> f64 {
    let m = a % b; // C fmod
    let mut div = (a - m) / b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        div -= 1.0;
    }
    if div != 0.0 {
        let mut floor = div.floor();
        if div - floor > 0.5 {
            floor += 1.0;
        }
        floor
    } else {
        0.0_f64.copysign(a / b)
    }
}

/// The image encoder's input [3, crop, crop] (planar): the wide crop to `width` x `width`, Pillow's bilinear
/// resize to `crop` x `crop`, `u8 / 255` in f32 and `(x - mean) / std`.
pub fn clip_pixels(img: &RgbImage, width: u32, crop: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let square = resize(&center_crop_wide(img, width, width), crop, crop, Filter::Bilinear);
    planar(&square, |c, v| (f32::from(v) / 255.0 - mean[c]) / std[c])
}

/// The VAE encoder's input [3, height, width] in [-1, 1]: the wide crop to `width` x `height`, `2 (u8 / 255)
/// - 1` in f32.
pub fn latent_pixels(img: &RgbImage, width: u32, height: u32) -> Vec<f32> {
    planar(&center_crop_wide(img, width, height), |_, v| 2.0 * (f32::from(v) / 255.0) - 1.0)
}

fn planar(img: &RgbImage, value: impl Fn(usize, u8) -> f32) -> Vec<f32> {
    let plane = (img.width() * img.height()) as usize;
    let mut out = vec![0.0f32; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = value(c, p.0[c]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_division_is_pythons() {
        assert_eq!(python_floor_div(47.0, 1.175), 39.0, "47 / 1.175 rounds to 40.0, Python's // gives 39.0");
        assert_eq!((47.0f64 / 1.175).floor(), 40.0);
        assert_eq!(python_floor_div(61.0, 1.175), 51.0);
        assert_eq!(python_floor_div(-7.0, 2.0), -4.0);
        assert_eq!(python_floor_div(7.0, -2.0), -4.0);
        assert_eq!(python_floor_div(6.0, 3.0), 2.0);
    }
}
