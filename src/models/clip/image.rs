//! transformers' `CLIPImageProcessor` (the `feature_extractor/` folder of I2VGen-XL and of every CLIP image
//! encoder), exactly: the shorter side resized to `shortest_edge` with Pillow's bicubic filter (the longer to
//! `int(shortest_edge * long / short)`), a centre crop at `(size - crop) // 2` (zero padding where the image
//! is smaller, as transformers pads), `u8 / 255`, and normalisation with the configured mean and std.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::models::image_reward::preprocess::{resize_bicubic, resized_size};

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), with the digits as
/// published (they round to the same f32 values).
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The settings of a `preprocessor_config.json` the processor uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipImageProcessor {
    /// The shorter side after resizing (None: no resize).
    pub shortest_edge: Option<u32>,
    /// The centre crop, width x height (None: no crop).
    pub crop: Option<(u32, u32)>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for ClipImageProcessor {
    /// CLIP at 224 px.
    fn default() -> Self {
        ClipImageProcessor { shortest_edge: Some(224), crop: Some((224, 224)), mean: CLIP_MEAN, std: CLIP_STD }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProcessorError {
    #[error("{file}: {message}")]
    Config { file: String, message: String },
}

impl ClipImageProcessor {
    /// Reads a `preprocessor_config.json` (`size` as `{"shortest_edge": n}` or a number, `crop_size` as
    /// `{"height", "width"}` or a number, `do_resize`, `do_center_crop`, `image_mean`, `image_std`; a
    /// resample filter other than bicubic (3) is refused, as is a size out of range).
    pub fn from_json(text: &str, file: &str) -> Result<Self, ProcessorError> {
        let bad = |message: String| ProcessorError::Config { file: file.to_string(), message };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let side = |x: &serde_json::Value, what: &str| -> Result<u32, ProcessorError> {
            match x.as_u64() {
                Some(n) if (1..=4096).contains(&n) => Ok(n as u32),
                _ => Err(bad(format!("{what} {x} is not a size in 1..=4096"))),
            }
        };
        let on = |key: &str| v.get(key).and_then(serde_json::Value::as_bool).unwrap_or(true);
        if let Some(r) = v.get("resample")
            && r.as_u64() != Some(3)
        {
            return Err(bad(format!("resample {r} is not bicubic (3), the only filter supported")));
        }
        let shortest_edge = match v.get("size") {
            _ if !on("do_resize") => None,
            None => Some(224),
            Some(s) if s.is_number() => Some(side(s, "size")?),
            Some(s) => match s.get("shortest_edge") {
                Some(e) => Some(side(e, "size.shortest_edge")?),
                None => return Err(bad(format!("size {s} has no shortest_edge"))),
            },
        };
        let crop = match v.get("crop_size") {
            _ if !on("do_center_crop") => None,
            None => Some((224, 224)),
            Some(c) if c.is_number() => Some((side(c, "crop_size")?, side(c, "crop_size")?)),
            Some(c) => {
                let get = |k: &str| c.get(k).ok_or_else(|| bad(format!("crop_size {c} has no {k}")));
                Some((side(get("width")?, "crop_size.width")?, side(get("height")?, "crop_size.height")?))
            }
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ProcessorError> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => {
                    let values: Vec<f32> = x
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(serde_json::Value::as_f64)
                        .map(|f| f as f32)
                        .collect();
                    <[f32; 3]>::try_from(values).map_err(|_| bad(format!("{key} {x} is not three numbers")))
                }
            }
        };
        let std = triple("image_std", CLIP_STD)?;
        if std.iter().any(|s| *s <= 0.0) {
            return Err(bad(format!("image_std {std:?} must be positive")));
        }
        Ok(ClipImageProcessor { shortest_edge, crop, mean: triple("image_mean", CLIP_MEAN)?, std })
    }

    /// The resized and cropped image, before normalisation.
    pub fn resize_and_crop(&self, img: &RgbImage) -> RgbImage {
        let resized = match self.shortest_edge {
            Some(short) => {
                let (w, h) = resized_size(img.width(), img.height(), short);
                if (w, h) == img.dimensions() { img.clone() } else { resize_bicubic(img, w, h) }
            }
            None => img.clone(),
        };
        match self.crop {
            Some((cw, ch)) => center_crop_padded(&resized, cw, ch),
            None => resized,
        }
    }

    /// The normalised planar pixels [3, height, width] of one image, and its size (width, height).
    pub fn pixels(&self, img: &RgbImage) -> (Vec<f32>, (u32, u32)) {
        let crop = self.resize_and_crop(img);
        let (w, h) = crop.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, p) in crop.pixels().enumerate() {
            for c in 0..3 {
                // transformers: rescale in float64, cast to float32, then (x - mean) / std in float32.
                let x = (f64::from(p.0[c]) * (1.0 / 255.0)) as f32;
                out[c * plane + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        (out, (w, h))
    }

    /// `pixel_values` [N, 3, H, W] of images that give crops of one size (the processor's crop makes them so;
    /// without a crop, images of different sizes are refused by name).
    pub fn preprocess(&self, images: &[RgbImage], device: &Device) -> Result<Tensor<4>, ProcessorError> {
        let mut data = Vec::new();
        let mut size = None;
        for (i, img) in images.iter().enumerate() {
            let (pixels, dims) = self.pixels(img);
            if size.is_some_and(|s| s != dims) {
                return Err(ProcessorError::Config {
                    file: format!("image {i}"),
                    message: format!("is {}x{} after preprocessing, the first is {:?}", dims.0, dims.1, size),
                });
            }
            size = Some(dims);
            data.extend(pixels);
        }
        let (w, h) = size.unwrap_or((0, 0));
        Ok(Tensor::from_data(TensorData::new(data, [images.len(), 3, h as usize, w as usize]), device))
    }
}

/// transformers' `center_crop` to `width` x `height`: offsets `(size - crop) // 2`; where the image is smaller
/// than the crop it is first padded with zeros, centred at `(crop - size) // 2`.
pub fn center_crop_padded(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let offset = |size: u32, crop: u32| -> i64 {
        if size >= crop { i64::from((size - crop) / 2) } else { -i64::from((crop - size) / 2) }
    };
    let (left, top) = (offset(img.width(), width), offset(img.height(), height));
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (i64::from(x) + left, i64::from(y) + top);
        if sx >= 0 && sy >= 0 && sx < i64::from(img.width()) && sy < i64::from(img.height()) {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}
