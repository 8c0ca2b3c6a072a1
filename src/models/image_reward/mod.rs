//! ImageReward (THUDM, the `image-reward` 1.5 package): the human-preference reward that I4VGen uses to pick
//! the anchor image.
//!
//! `score(prompt, images)`: each image is preprocessed ([`preprocess`]: Pillow-exact bicubic resize of the
//! shorter side to 224, center crop, CLIP normalisation) and encoded by BLIP's ViT-L/16 ([`vit`]) into 197
//! tokens; the prompt ([`tokenizer`]: BERT WordPiece, `[CLS] ... [SEP]` padded to 35) runs through BLIP's BERT
//! ([`bert`]) whose every layer cross-attends to the image tokens; the `[CLS]` state goes through the MLP head
//! (768-1024-128-64-16-1, no activations; Dropouts at 1, 3, 5 are identities in inference) and is normalised
//! as `(r - mean) / std` with the package's constants.
//!
//! Module trees carry the real `ImageReward.pt` key names (`blip.visual_encoder.*`, `blip.text_encoder.*`,
//! `mlp.layers.*`), except `self` in `*.attention.self.*` / `*.crossattention.self.*`, a Rust keyword, which
//! is `self_` here ([`CHECKPOINT_REMAP`]). The checkpoint's `blip.vision_proj`, `blip.text_proj` (BLIP's
//! contrastive heads, unused by the score) and the `position_ids` buffer are left out ([`IGNORED_KEYS`]).
//!
//! Folder layout: see docs/FORMATS.md ("ImageReward").

pub mod bert;
pub mod preprocess;
pub mod tokenizer;
pub mod vit;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;

use crate::models::bounds::{
    self, MAX_CHANNELS, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_HEADS, MAX_IMAGE_SIZE, MAX_MLP_LAYERS, MAX_TEXT_LENGTH,
    OutOfRange,
};
use crate::models::load::{self, LoadError, LoadOptions, LoadReport};

pub use bert::{BertModel, MedConfig};
pub use tokenizer::{BertEncoding, BertTokenizer, BertTokenizerError};
pub use vit::{VisionConfig, VisionTransformer};

/// The package's reward normalisation: `(r - MEAN) / STD`.
pub const MEAN: f64 = 0.16717362830052426;
/// See [`MEAN`].
pub const STD: f64 = 1.0333394966054072;

/// File key -> our key: `self` is a Rust keyword, our field is `self_`.
pub const CHECKPOINT_REMAP: &[(&str, &str)] = &[(r"\.(attention|crossattention)\.self\.", ".$1.self_.")];

/// Keys of the real checkpoint that the score does not use: BLIP's contrastive projections and BERT's
/// `position_ids` buffer.
pub const IGNORED_KEYS: &[&str] =
    &[r"^blip\.text_encoder\.embeddings\.position_ids$", r"^blip\.vision_proj\.", r"^blip\.text_proj\."];

/// Our key -> the checkpoint's (the inverse of [`CHECKPOINT_REMAP`]).
pub fn checkpoint_key(ours: &str) -> String {
    ours.replace(".attention.self_.", ".attention.self.").replace(".crossattention.self_.", ".crossattention.self.")
}

/// Loading options of ImageReward weights.
pub const LOAD_OPTIONS: LoadOptions<'static> = LoadOptions {
    remap: CHECKPOINT_REMAP,
    ignore_unused: IGNORED_KEYS,
    top_level_key: None,
    expected: Some("an ImageReward model"),
};

/// The whole ImageReward configuration. The BERT part is BLIP's `med_config.json`; the rest is fixed in
/// the package (and optional in `image_reward_config.json`, see docs/FORMATS.md).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImageRewardConfig {
    pub vision: VisionConfig,
    pub text: MedConfig,
    /// Hidden widths of the MLP head before its final 1-wide layer.
    pub mlp_dims: Vec<usize>,
    pub mean: f64,
    pub std: f64,
    /// Prompt length in tokens.
    pub max_length: usize,
}

impl Default for ImageRewardConfig {
    fn default() -> Self {
        Self::large()
    }
}

/// A configuration that cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageRewardConfigError {
    #[error("{what}: width {width} is not divisible by {heads} heads")]
    Heads { what: &'static str, width: usize, heads: usize },
    #[error("image size {image} is not a multiple of the patch size {patch}")]
    Patch { image: usize, patch: usize },
    #[error("hidden_act '{0}' is not supported (gelu)")]
    Activation(String),
    #[error("max_position_embeddings {positions} is shorter than the prompt length {max_length}")]
    Positions { positions: usize, max_length: usize },
    #[error("the MLP head needs at least one hidden width")]
    Mlp,
    #[error(transparent)]
    Bound(#[from] OutOfRange),
}

/// Patches per side of the vision tower (BLIP ViT-L/16 at 224: 14; at 384: 24).
pub const MAX_GRID: usize = 128;
/// The MLP ratio of the vision tower's blocks (4 in every ViT).
pub const MAX_MLP_RATIO: usize = 16;

impl ImageRewardConfig {
    /// The released ImageReward-v1.0: BLIP ViT-L/16 at 224, BLIP's bert-base med_config (vocab 30524 with
    /// [DEC] and [ENC], cross-attention to 1024-wide image tokens), MLP 768-1024-128-64-16-1.
    pub fn large() -> Self {
        ImageRewardConfig {
            vision: VisionConfig::default(),
            text: MedConfig::default(),
            mlp_dims: vec![1024, 128, 64, 16],
            mean: MEAN,
            std: STD,
            max_length: tokenizer::MAX_LENGTH,
        }
    }

    /// The sizes of image_reward_config.json (`vision.*`, `mlp_dims`, `max_length`) within the bounds of
    /// [`crate::models::bounds`]; med_config.json's are [`MedConfig::check_bounds`].
    fn check_bounds(&self) -> Result<(), OutOfRange> {
        let v = &self.vision;
        bounds::check("vision.image_size", v.image_size, 1, MAX_IMAGE_SIZE)?;
        bounds::check("vision.patch_size", v.patch_size, 1, v.image_size)?;
        bounds::check("vision.image_size / vision.patch_size", v.grid(), 1, MAX_GRID)?;
        bounds::check("vision.width", v.width, 1, MAX_CHANNELS)?;
        bounds::check("vision.depth", v.depth, 1, MAX_DEPTH)?;
        bounds::check("vision.heads", v.heads, 1, MAX_HEADS)?;
        bounds::check("vision.mlp_ratio", v.mlp_ratio, 1, MAX_MLP_RATIO)?;
        bounds::check_each("mlp_dims", &self.mlp_dims, 1, MAX_CHANNELS, MAX_MLP_LAYERS)?;
        bounds::check("max_length", self.max_length, 2, MAX_TEXT_LENGTH)?;
        Ok(())
    }

    pub fn check(&self) -> Result<(), ImageRewardConfigError> {
        if self.mlp_dims.is_empty() {
            return Err(ImageRewardConfigError::Mlp);
        }
        self.check_bounds()?;
        self.text.check_bounds()?;
        let v = &self.vision;
        if v.heads == 0 || !v.width.is_multiple_of(v.heads) {
            return Err(ImageRewardConfigError::Heads { what: "vision", width: v.width, heads: v.heads });
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ImageRewardConfigError::Patch { image: v.image_size, patch: v.patch_size });
        }
        let t = &self.text;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(ImageRewardConfigError::Heads {
                what: "text",
                width: t.hidden_size,
                heads: t.num_attention_heads,
            });
        }
        if t.hidden_act != "gelu" {
            return Err(ImageRewardConfigError::Activation(t.hidden_act.clone()));
        }
        if t.max_position_embeddings < self.max_length {
            return Err(ImageRewardConfigError::Positions {
                positions: t.max_position_embeddings,
                max_length: self.max_length,
            });
        }
        if self.mlp_dims.is_empty() {
            return Err(ImageRewardConfigError::Mlp);
        }
        Ok(())
    }

    /// A zero-initialised model of this shape, ready to receive weights. The text encoder's
    /// `encoder_width` is the vision width, as BLIP_Pretrain sets it.
    pub fn init(&self, device: &Device) -> Result<ImageRewardModel, ImageRewardConfigError> {
        self.check()?;
        let text = MedConfig { encoder_width: self.vision.width, ..self.text.clone() };
        let mut layers = Vec::new();
        let mut prev = text.hidden_size;
        for (i, &d) in self.mlp_dims.iter().enumerate() {
            layers.push(MlpLayer::Linear(LinearConfig::new(prev, d).init(device)));
            if i + 1 < self.mlp_dims.len() {
                layers.push(MlpLayer::Dropout(DropoutConfig::new(0.0).init()));
            }
            prev = d;
        }
        layers.push(MlpLayer::Linear(LinearConfig::new(prev, 1).init(device)));
        Ok(ImageRewardModel {
            blip: Blip { visual_encoder: self.vision.init(device), text_encoder: text.init(device) },
            mlp: RewardMlp { layers },
            mean: self.mean,
            std: self.std,
        })
    }
}

/// softmax(q k^T / sqrt(d) + mask) v over `heads` heads; q [N, L, H*d], k and v [N, S, H*d], mask
/// additive [N, 1, 1, S] -> [N, L, H*d].
pub(crate) fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, mask: Option<Tensor<4>>) -> Tensor<3> {
    let d = q.dims()[2] / heads.max(1);
    crate::models::attention::attention_packed(q, k, v, heads, Some((d as f64).sqrt()), mask)
}

/// BLIP's towers as ImageReward uses them.
#[derive(Module, Debug)]
pub struct Blip {
    pub visual_encoder: VisionTransformer,
    pub text_encoder: BertModel,
}

/// One entry of the MLP head's `nn.Sequential` (Linear, Dropout, ..., Linear, Linear).
#[derive(Module, Debug)]
pub enum MlpLayer {
    Linear(Linear),
    Dropout(Dropout),
}

/// ImageReward's `MLP`: linear layers without activations.
#[derive(Module, Debug)]
pub struct RewardMlp {
    pub layers: Vec<MlpLayer>,
}

impl RewardMlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.layers.iter().fold(x, |x, layer| match layer {
            MlpLayer::Linear(l) => l.forward(x),
            MlpLayer::Dropout(_) => x,
        })
    }
}

/// The ImageReward network (module tree of `ImageReward.pt`).
#[derive(Module, Debug)]
pub struct ImageRewardModel {
    pub blip: Blip,
    pub mlp: RewardMlp,
    #[module(skip)]
    pub mean: f64,
    #[module(skip)]
    pub std: f64,
}

impl ImageRewardModel {
    /// Image tokens [N, 1 + patches, vision width] of preprocessed pixels [N, 3, size, size].
    pub fn image_embeds(&self, pixels: Tensor<4>) -> Tensor<3> {
        self.blip.visual_encoder.forward(pixels)
    }

    /// The `[CLS]` state [N, hidden] of one tokenized prompt against each image's tokens.
    pub fn cls_states(&self, prompt: &BertEncoding, image_embeds: Tensor<3>) -> Tensor<2> {
        let device = image_embeds.device();
        let n = image_embeds.dims()[0];
        let l = prompt.ids.len();
        let ids: Vec<i64> = prompt.ids.iter().map(|&i| i64::from(i)).collect();
        let mask: Vec<f32> = prompt.attention_mask.iter().map(|&m| m as f32).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, l]), &device).repeat_dim(0, n);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [1, l]), &device).repeat_dim(0, n);
        let states = self.blip.text_encoder.forward(ids, mask, image_embeds);
        let [_, _, h] = states.dims();
        states.slice([0..n, 0..1, 0..h]).reshape([n, h])
    }

    /// Normalised rewards [N] from `[CLS]` states [N, hidden].
    pub fn rewards(&self, cls: Tensor<2>) -> Tensor<1> {
        let n = cls.dims()[0];
        self.mlp.forward(cls).sub_scalar(self.mean).div_scalar(self.std).reshape([n])
    }

    /// Rewards [N] of one tokenized prompt for preprocessed pixels [N, 3, size, size].
    pub fn forward(&self, prompt: &BertEncoding, pixels: Tensor<4>) -> Tensor<1> {
        let embeds = self.image_embeds(pixels);
        self.rewards(self.cls_states(prompt, embeds))
    }
}

/// Errors of loading or running ImageReward.
#[derive(Debug, thiserror::Error)]
pub enum ImageRewardError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{dir}: no ImageReward weights (looked for ImageReward.safetensors and ImageReward.pt)")]
    NoWeights { dir: PathBuf },
    #[error(transparent)]
    Tokenizer(#[from] BertTokenizerError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Input(String),
}

/// ImageReward ready to score: network, tokenizer, configuration.
#[derive(Debug)]
pub struct ImageReward {
    pub model: ImageRewardModel,
    pub tokenizer: BertTokenizer,
    pub config: ImageRewardConfig,
    pub device: Device,
}

impl ImageReward {
    /// Rewards of `images` for `prompt`, as the package's `score` / `inference_rank` compute them (higher is
    /// better).
    pub fn score(&self, prompt: &str, images: &[RgbImage]) -> Result<Vec<f32>, ImageRewardError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        if let Some((i, im)) = images.iter().enumerate().find(|(_, im)| im.width() == 0 || im.height() == 0) {
            return Err(ImageRewardError::Input(format!("image {i} is empty ({}x{})", im.width(), im.height())));
        }
        let size = self.config.vision.image_size as u32;
        let pixels = preprocess::preprocess(images, size, &self.device);
        self.score_pixels(prompt, pixels)
    }

    /// Rewards of decoded frames [3, H, W] with values in [0, 1] (converted to 8-bit RGB first, see
    /// [`preprocess::frame_to_image`]).
    pub fn score_frames(&self, prompt: &str, frames: &[Tensor<3>]) -> Result<Vec<f32>, ImageRewardError> {
        let images: Vec<RgbImage> = frames.iter().map(preprocess::frame_to_image).collect();
        self.score(prompt, &images)
    }

    /// Rewards of already preprocessed pixels [N, 3, size, size].
    pub fn score_pixels(&self, prompt: &str, pixels: Tensor<4>) -> Result<Vec<f32>, ImageRewardError> {
        let size = self.config.vision.image_size;
        let [_, c, h, w] = pixels.dims();
        if (c, h, w) != (3, size, size) {
            return Err(ImageRewardError::Input(format!(
                "ImageReward expects pixels [N, 3, {size}, {size}], got [N, {c}, {h}, {w}]"
            )));
        }
        let encoding = self.tokenizer.encode(prompt)?;
        let rewards = self.model.forward(&encoding, pixels);
        rewards.to_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| ImageRewardError::Input(format!("{e:?}")))
    }

    /// Index of the best-scoring image (the first of equals), with all scores; `None` for no images.
    pub fn best(&self, prompt: &str, images: &[RgbImage]) -> Result<Option<(usize, Vec<f32>)>, ImageRewardError> {
        let scores = self.score(prompt, images)?;
        Ok(argmax(&scores).map(|i| (i, scores)))
    }
}

/// Index of the largest value (the first of equals); `None` for an empty slice.
pub fn argmax(values: &[f32]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageRewardError> {
    let text = bounds::read_text(path, MAX_CONFIG_BYTES)
        .map_err(|message| ImageRewardError::Config { path: path.to_path_buf(), message })?;
    serde_json::from_str(&text).map_err(|e| ImageRewardError::Config {
        path: path.to_path_buf(),
        message: format!("line {} column {}: {e}", e.line(), e.column()),
    })
}

/// The configuration of an ImageReward folder: `med_config.json` (required) and the optional
/// `image_reward_config.json` (vision tower, MLP widths, mean/std; the released model's values when absent).
pub fn read_config(config_dir: &Path) -> Result<ImageRewardConfig, ImageRewardError> {
    let extra = config_dir.join("image_reward_config.json");
    let bound =
        |path: &Path, e: OutOfRange| ImageRewardError::Config { path: path.to_path_buf(), message: e.to_string() };
    let mut config: ImageRewardConfig = if extra.is_file() { read_json(&extra)? } else { ImageRewardConfig::large() };
    config.check_bounds().map_err(|e| bound(&extra, e))?;
    let med = config_dir.join("med_config.json");
    config.text = read_json(&med)?;
    config.text.check_bounds().map_err(|e| bound(&med, e))?;
    config.text.encoder_width = config.vision.width;
    Ok(config)
}

/// Loads ImageReward weights (`ImageReward.pt` or a safetensors conversion) into `model`, checked: missing
/// keys and shape mismatches are errors naming the file and keys; a file of another kind says what it
/// looks like; unused keys other than [`IGNORED_KEYS`] are in the report.
pub fn load_image_reward_weights(model: &mut ImageRewardModel, weights: &Path) -> Result<LoadReport, LoadError> {
    load::load_into(model, weights, &LOAD_OPTIONS)
}

/// Loads ImageReward from a weight file and a folder holding `med_config.json`, `vocab.txt` (BERT
/// `bert-base-uncased`) and optionally `image_reward_config.json`.
pub fn load_image_reward(
    weights: &Path,
    config_dir: &Path,
    device: &Device,
) -> Result<(ImageReward, LoadReport), ImageRewardError> {
    let config = read_config(config_dir)?;
    let mut tokenizer = BertTokenizer::from_file(&config_dir.join("vocab.txt"))?;
    let mut model = config
        .init(device)
        .map_err(|e| ImageRewardError::Config { path: config_dir.join("med_config.json"), message: e.to_string() })?;
    if tokenizer.vocab_size != config.text.vocab_size {
        return Err(ImageRewardError::Config {
            path: config_dir.join("vocab.txt"),
            message: format!(
                "{} tokens with [DEC] and [ENC], but med_config.json says vocab_size {}",
                tokenizer.vocab_size, config.text.vocab_size
            ),
        });
    }
    let report = load_image_reward_weights(&mut model, weights)?;
    tokenizer.max_length = config.max_length;
    Ok((ImageReward { model, tokenizer, config, device: device.clone() }, report))
}

/// Loads an ImageReward folder (`ImageReward.safetensors`, else `ImageReward.pt`, with the files of
/// [`load_image_reward`]).
pub fn load_image_reward_dir(dir: &Path, device: &Device) -> Result<(ImageReward, LoadReport), ImageRewardError> {
    let weights = ["ImageReward.safetensors", "ImageReward.pt"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageRewardError::NoWeights { dir: dir.to_path_buf() })?;
    load_image_reward(&weights, dir, device)
}
