//! I2VGen-XL as diffusers' `I2VGenXLPipeline` (0.27.2) runs it (../shared/SEED-SYSTEMS.md 3.4):
//!
//! 1. the text: prompt and negative prompt through the CLIP text encoder with `clip_skip` 1 (the
//!    penultimate layer, then the final layer norm);
//! 2. the CLIP branch of the image: [`center_crop_wide`] to `width` x `width`, a bilinear resize to the
//!    feature extractor's crop, `u8 / 255`, CLIP normalisation ([`clip_pixels`]), the image encoder's projected
//!    embedding as one token; the unconditional branch gets zeros;
//! 3. the latent branch: [`center_crop_wide`] to `width` x `height`, `2 x - 1` ([`latent_pixels`]), a VAE
//!    posterior *sample* (its noise from the [`NoiseSource`], `i2vgen_xl/image_latent`) times the scaling
//!    factor, followed by `frames - 1` constant maps of value `(i + 1) / (frames - 1)` ([`image_latents`]),
//!    the same for both branches;
//! 4. the frame rate as a micro-condition; the initial latents (`i2vgen_xl/start`) times the scheduler's
//!    initial sigma (1 for DDIM);
//! 5. DDIM from the family's scheduler configuration (v-prediction, zero-terminal-SNR cosine betas) with
//!    classifier-free guidance `u + g (c - u)`;
//! 6. decoding `decode_chunk` frames at a time.
//!
//! Defaults ([`I2vgenXlSettings::default`]) are diffusers': 1280 x 704, 16 frames, fps 16, 50 steps, CFG 9;
//! [`NEGATIVE_PROMPT`] is VGen's configured negative prompt (diffusers' example passes it too).

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::PipelineError;
use super::denoiser::{Conditioning, GuidanceConditioning};
use super::i4vgen::{Guided, Observer};
use super::memory::CfgBatch;
use super::noise::NoiseSource;
use crate::models::i2vgen_xl::{I2vgenXl, I2vgenXlDenoiser, ImageConcat};
use crate::models::image_reward::preprocess::{Filter, resize};
use crate::models::unet::Motion;
use crate::schedulers::Ddim;

/// VGen's `cfg.negative_prompt` for I2VGen-XL (the unconditional branch's text).
pub const NEGATIVE_PROMPT: &str = "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, \
                                   disfigured, disconnected limbs, Ugly faces, incomplete arms";

/// The settings of one I2VGen-XL run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct I2vgenXlSettings {
    /// Output size in pixels (multiples of 8 and of the UNet's downsampling in latents).
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    /// The frame rate the clip is conditioned on (and meant to be played at).
    pub fps: f64,
    pub steps: usize,
    pub guidance_scale: f64,
    /// Frames the VAE decodes at a time.
    pub decode_chunk: usize,
    /// Both guidance branches in one UNet call, or one after the other.
    pub cfg_batch: CfgBatch,
    /// How the encoded image enters the UNet (diffusers' once, or VGen's twice).
    pub image_concat: ImageConcat,
}

impl Default for I2vgenXlSettings {
    /// `I2VGenXLPipeline.__call__`'s defaults.
    fn default() -> Self {
        I2vgenXlSettings {
            width: 1280,
            height: 704,
            frames: 16,
            fps: 16.0,
            steps: 50,
            guidance_scale: 9.0,
            decode_chunk: 1,
            cfg_batch: CfgBatch::Together,
            image_concat: ImageConcat::Diffusers,
        }
    }
}

/// The conditioning of a run (both guidance branches) and what the text window dropped.
#[derive(Clone, Debug)]
pub struct I2vgenXlConditioning {
    pub guidance: GuidanceConditioning,
    /// BPE tokens of the prompt / negative prompt past the tokenizer's window.
    pub truncated: usize,
    pub truncated_negative: usize,
}

/// What a run made: the final latents [1, C, F, h, w] and the decoded frames [1, 3, F, H, W] in [0, 1].
pub struct I2vgenXlOutput {
    pub latents: Tensor<5>,
    pub video: Tensor<5>,
}

impl I2vgenXl {
    /// The pixel sides must be multiples of: 8 (diffusers' check) and the VAE's and the UNet's downsampling.
    pub fn size_step(&self) -> u32 {
        let unet = self.unet.base.unet.down_blocks.iter().map(|b| b.downsamplers.len()).sum::<usize>();
        let step = (self.vae.downsampling() << unet).max(1) as u32;
        // The least common multiple of 8 and the model's step (both powers of two in practice).
        let gcd = |mut a: u32, mut b: u32| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        step / gcd(step, 8) * 8
    }
}

/// Checks the settings against the model, naming the parameter that is wrong.
pub fn check_settings(model: &I2vgenXl, settings: &I2vgenXlSettings) -> Result<(), PipelineError> {
    let step = model.size_step();
    for (name, value) in [("width", settings.width), ("height", settings.height)] {
        if value == 0 || !value.is_multiple_of(step) {
            return Err(PipelineError::Data(format!(
                "I2VGen-XL: {name} {value} is not a multiple of {step} pixels (the VAE's 8x8 blocks and the UNet's \
                 downsampling)"
            )));
        }
    }
    if settings.frames == 0 {
        return Err(PipelineError::Data("I2VGen-XL: frames must be at least 1".into()));
    }
    if settings.steps == 0 {
        return Err(PipelineError::Data("I2VGen-XL: steps must be at least 1".into()));
    }
    if !(settings.fps.is_finite() && settings.fps > 0.0) {
        return Err(PipelineError::Data(format!("I2VGen-XL: fps {} must be a positive number", settings.fps)));
    }
    Ok(())
}

/// `prepare_image_latents` after the VAE: the image's latent [1, C, h, w] as the first frame, then
/// `frames - 1` frames filled with `(i + 1) / (frames - 1)`: [1, C, frames, h, w].
pub fn image_latents(latent: Tensor<4>, frames: usize) -> Tensor<5> {
    let [b, c, h, w] = latent.dims();
    let device = latent.device();
    let mut parts = vec![latent.reshape([b, c, 1, h, w])];
    if frames > 1 {
        let plane = b * c * h * w;
        let values: Vec<f32> = (0..frames - 1)
            .flat_map(|i| {
                let value = (i + 1) as f32 / (frames - 1) as f32;
                std::iter::repeat_n(value, plane)
            })
            .collect();
        // Built as [F - 1, B, C, h, w], then moved to [B, C, F - 1, h, w].
        let maps = Tensor::<5>::from_data(TensorData::new(values, [frames - 1, b, c, h, w]), &device);
        parts.push(maps.permute([1, 2, 0, 3, 4]));
    }
    Tensor::cat(parts, 2)
}

/// Steps 1-3: the text, the CLIP image embedding (zeros for the unconditional branch) and the image latents
/// with the frame-position maps, for `image` at the settings' size.
pub fn conditioning(
    model: &I2vgenXl,
    image: &RgbImage,
    prompt: &str,
    negative: &str,
    settings: &I2vgenXlSettings,
    noise: &mut dyn NoiseSource,
    device: &Device,
) -> Result<I2vgenXlConditioning, PipelineError> {
    check_settings(model, settings)?;
    let tokenizer_error = |e: crate::models::clip::TokenizerError| PipelineError::Data(e.to_string());
    let encode = |text: &str| -> Result<(Tensor<3>, usize), PipelineError> {
        let encoding = model.tokenizer.encode(text).map_err(tokenizer_error)?;
        let states = model.text_encoder.encode_ids_clip_skip(std::slice::from_ref(&encoding.ids), 1, device);
        Ok((states, encoding.truncated))
    };
    let (text, truncated) = encode(prompt)?;
    let (negative_text, truncated_negative) = encode(negative)?;

    let processor = &model.feature_extractor;
    let (crop_w, crop_h) = processor.crop.unwrap_or((224, 224));
    let (width, height) = (settings.width, settings.height);
    let pixels = clip_pixels(image, width, (crop_w, crop_h), processor.mean, processor.std);
    let pixels = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, crop_h as usize, crop_w as usize]), device);
    let embeds = model
        .image_encoder
        .forward(pixels)
        .map_err(|e| PipelineError::Data(format!("I2VGen-XL image encoder: {e}")))?
        .image_embeds;
    let [_, d] = embeds.dims();
    let embeds = embeds.reshape([1, 1, d]);

    let latent_in = latent_pixels(image, width, height);
    let latent_in = Tensor::<4>::from_data(TensorData::new(latent_in, [1, 3, height as usize, width as usize]), device);
    let posterior = model.vae.encode(latent_in);
    let [_, c, h, w] = posterior.mean.dims();
    let eps = noise.normal("i2vgen_xl/image_latent", [1, c, 1, h, w], device)?.reshape([1, c, h, w]);
    let latent = posterior.sample(eps).mul_scalar(model.vae.scaling_factor);
    let latents = image_latents(latent, settings.frames);

    let branch = |text: Tensor<3>, tokens: Tensor<3>| Conditioning {
        text,
        image_tokens: Some(tokens),
        concat_latents: Some(latents.clone()),
        fps: Some(settings.fps),
    };
    let guidance =
        GuidanceConditioning { cond: branch(text, embeds.clone()), uncond: branch(negative_text, embeds.zeros_like()) };
    Ok(I2vgenXlConditioning { guidance, truncated, truncated_negative })
}

/// The family's DDIM scheduler set to `steps` steps.
pub fn scheduler(model: &I2vgenXl, steps: usize) -> Result<Ddim, PipelineError> {
    let mut ddim = Ddim::new(model.scheduler.clone())?;
    ddim.set_timesteps(steps)?;
    Ok(ddim)
}

/// Steps 4-5: DDIM with guidance from the initial latents `i2vgen_xl/start` [1, C, F, h, w]; progress per step
/// (stage "i2vgen_xl", with the step's clean-latent estimate); a break stops before the next UNet call.
pub fn sample(
    model: &I2vgenXl,
    conditioning: &I2vgenXlConditioning,
    settings: &I2vgenXlSettings,
    noise: &mut dyn NoiseSource,
    device: &Device,
    observer: Observer<'_>,
) -> Result<Tensor<5>, PipelineError> {
    check_settings(model, settings)?;
    let ddim = scheduler(model, settings.steps)?;
    let down = model.vae.downsampling();
    let (h, w) = (settings.height as usize / down, settings.width as usize / down);
    let shape = [1, model.unet.in_channels, settings.frames, h, w];
    let start = noise.normal("i2vgen_xl/start", shape, device)?;
    let denoiser = I2vgenXlDenoiser { unet: &model.unet, concat: settings.image_concat };
    let guided =
        Guided::new(&denoiser, &conditioning.guidance, settings.guidance_scale).with_cfg_batch(settings.cfg_batch);
    guided.sample(&ddim, start, &ddim.timesteps, Motion::On, "i2vgen_xl", observer)
}

/// The whole pipeline: [`conditioning`], [`sample`], and the decode in chunks of `decode_chunk` frames.
#[allow(clippy::too_many_arguments)]
pub fn i2vgen_xl(
    model: &I2vgenXl,
    image: &RgbImage,
    prompt: &str,
    negative: &str,
    settings: &I2vgenXlSettings,
    noise: &mut dyn NoiseSource,
    device: &Device,
    observer: Observer<'_>,
) -> Result<I2vgenXlOutput, PipelineError> {
    let conditioning = conditioning(model, image, prompt, negative, settings, noise, device)?;
    let latents = sample(model, &conditioning, settings, noise, device, observer)?;
    let video = model.vae.decode_video_scaled(latents.clone(), settings.decode_chunk);
    Ok(I2vgenXlOutput { latents, video })
}

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

/// The image encoder's input [3, crop height, crop width] (planar): the wide crop to `width` x `width`,
/// Pillow's bilinear resize to the crop (width, height), `u8 / 255` in f32 and `(x - mean) / std`.
pub fn clip_pixels(img: &RgbImage, width: u32, crop: (u32, u32), mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let square = resize(&center_crop_wide(img, width, width), crop.0, crop.1, Filter::Bilinear);
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
