//! The values that travel along links: [`Value`], one variant per port type, and the types they carry.
//!
//! Data values (text, images, candidates, rankings, latents, clips) serialise with serde so that results can
//! be stored and read back; model handles live in memory only (serialising one is an error). Tensors travel
//! as host-side [`Latents`]: values are shared between threads (the worker sends them to the front end in
//! events), are kept in the result cache, and are small next to the models; a node moves them to the
//! engine's device when it needs them. Every variant is cheap to clone (shared behind `Arc`s).

use std::sync::Arc;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::graph::PortType;
use crate::models::image_reward::ImageReward;
use crate::models::stable_diffusion::StableDiffusion;
use crate::models::unet::motion::MotionAdapter;
use crate::pipelines::Latents;
use crate::video::Video;

/// A value on a link (or a preview a node shows while it runs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Value {
    Prompt(Arc<PromptValue>),
    #[serde(skip)]
    Checkpoint(CheckpointValue),
    #[serde(skip)]
    MotionModule(MotionValue),
    #[serde(skip)]
    RewardModel(RewardValue),
    #[serde(skip)]
    VideoModel(VideoModelValue),
    #[serde(skip)]
    I2vModel(I2vModelValue),
    Candidates(Arc<Candidates>),
    Image(Arc<StillImage>),
    Ranking(Arc<Ranking>),
    Video(Arc<Video>),
    Int(i64),
    /// Images without latents: a preview (the candidates while they are made), not a port type.
    Images(#[serde(with = "rgb::shared_vec")] Arc<Vec<Arc<RgbImage>>>),
}

impl Value {
    /// The port type this value travels on (`None` for a preview-only value).
    pub fn port_type(&self) -> Option<PortType> {
        Some(match self {
            Value::Prompt(_) => PortType::Prompt,
            Value::Checkpoint(_) => PortType::Checkpoint,
            Value::MotionModule(_) => PortType::MotionModule,
            Value::RewardModel(_) => PortType::RewardModel,
            Value::VideoModel(_) => PortType::VideoModel,
            Value::I2vModel(_) => PortType::I2vModel,
            Value::Candidates(_) => PortType::Candidates,
            Value::Image(_) => PortType::Image,
            Value::Ranking(_) => PortType::Ranking,
            Value::Video(_) => PortType::Video,
            Value::Int(_) => PortType::Int,
            Value::Images(_) => return None,
        })
    }

    /// What the value is, in words (for messages).
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Images(_) => "images",
            other => other.port_type().map_or("value", PortType::name),
        }
    }

    /// Whether the value is data that serialises (everything but model handles).
    pub fn is_data(&self) -> bool {
        !matches!(
            self,
            Value::Checkpoint(_)
                | Value::MotionModule(_)
                | Value::RewardModel(_)
                | Value::VideoModel(_)
                | Value::I2vModel(_)
        )
    }
}

/// A Rust type carried by one [`Value`] variant: what nodes read from inputs and write to outputs.
pub trait PortValue: Sized {
    /// The variant's name in messages ("candidates", "video", ...).
    const NAME: &'static str;
    /// The value, if it is this type's variant.
    fn from_value(value: &Value) -> Option<&Self>;
    fn into_value(self) -> Value;
}

macro_rules! shared_port_value {
    ($ty:ty, $variant:ident, $name:literal) => {
        impl PortValue for $ty {
            const NAME: &'static str = $name;
            fn from_value(value: &Value) -> Option<&Self> {
                match value {
                    Value::$variant(v) => Some(v.as_ref()),
                    _ => None,
                }
            }
            fn into_value(self) -> Value {
                Value::$variant(Arc::new(self))
            }
        }
    };
}

macro_rules! plain_port_value {
    ($ty:ty, $variant:ident, $name:literal) => {
        impl PortValue for $ty {
            const NAME: &'static str = $name;
            fn from_value(value: &Value) -> Option<&Self> {
                match value {
                    Value::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_value(self) -> Value {
                Value::$variant(self)
            }
        }
    };
}

shared_port_value!(PromptValue, Prompt, "prompt");
shared_port_value!(Candidates, Candidates, "candidates");
shared_port_value!(StillImage, Image, "image");
shared_port_value!(Ranking, Ranking, "ranking");
shared_port_value!(Video, Video, "video");
shared_port_value!(Vec<Arc<RgbImage>>, Images, "images");
plain_port_value!(CheckpointValue, Checkpoint, "checkpoint");
plain_port_value!(MotionValue, MotionModule, "motion module");
plain_port_value!(RewardValue, RewardModel, "reward model");
plain_port_value!(VideoModelValue, VideoModel, "video model");
plain_port_value!(I2vModelValue, I2vModel, "image-to-video model");
plain_port_value!(i64, Int, "integer");

/// The value on a prompt port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PromptValue {
    pub positive: String,
    pub negative: String,
}

/// A loaded model on a model port, with the model-cache key it was loaded under (file and fingerprint),
/// which identifies it in other caches.
#[derive(Debug)]
pub struct Loaded<T: ?Sized> {
    pub model: Arc<T>,
    pub key: String,
}

impl<T: ?Sized> Clone for Loaded<T> {
    fn clone(&self) -> Self {
        Loaded { model: self.model.clone(), key: self.key.clone() }
    }
}

/// The value on a checkpoint port.
pub type CheckpointValue = Loaded<StableDiffusion>;
/// The value on a motion-module port.
pub type MotionValue = Loaded<MotionAdapter>;
/// The value on a reward-model port.
pub type RewardValue = Loaded<ImageReward>;
/// The value on a video-model port: any family's text-to-video model.
pub type VideoModelValue = Loaded<dyn crate::pipelines::denoiser::VideoModel>;
/// The value on an image-to-video model port (I2VGen-XL).
pub type I2vModelValue = Loaded<crate::models::i2vgen_xl::I2vgenXl>;

/// The value on an image port.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StillImage {
    #[serde(with = "rgb::shared")]
    pub image: Arc<RgbImage>,
    /// Where it came from (a file path, or "candidate 3"), for messages.
    pub source: String,
    /// Its scaled VAE latent [1, C, 1, h, w] where a model made the image (a candidate); an image from a file
    /// has none and is encoded by the node that needs it.
    pub latent: Option<Latents>,
}

/// The value on a candidates port: N candidate anchor images from one prompt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidates {
    /// Scaled latents [N, C, 1, h, w].
    pub latents: Latents,
    /// The decoded images, one per candidate.
    #[serde(with = "rgb::shared_list")]
    pub images: Vec<Arc<RgbImage>>,
    /// The prompt they were made from (what the reward model scores them against).
    pub prompt: String,
    pub seed: u64,
}

/// How the candidate selector chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectedBy {
    /// The highest ImageReward score.
    Reward,
    /// The artist's pick.
    Hand,
}

/// The value on a ranking port: every candidate with its score and which one was selected (what the
/// editor shows under the candidate selector).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ranking {
    #[serde(with = "rgb::shared_list")]
    pub images: Vec<Arc<RgbImage>>,
    /// ImageReward scores in candidate order (absent when no reward model is connected).
    pub scores: Option<Vec<f32>>,
    pub selected: usize,
    pub by: SelectedBy,
}

impl Ranking {
    /// The candidate the reward model ranks highest, if scored.
    pub fn best(&self) -> Option<usize> {
        self.scores.as_deref().and_then(crate::models::image_reward::argmax)
    }
}

/// serde for 8-bit RGB images: width, height and the pixels row by row; reading checks that the pixels
/// fill the size exactly.
pub(crate) mod rgb {
    use std::sync::Arc;

    use image::RgbImage;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Raw {
        width: u32,
        height: u32,
        #[serde(with = "serde_bytes")]
        pixels: Vec<u8>,
    }

    fn raw(image: &RgbImage) -> Raw {
        Raw { width: image.width(), height: image.height(), pixels: image.as_raw().clone() }
    }

    fn image<E: serde::de::Error>(raw: Raw) -> Result<RgbImage, E> {
        let expected = u64::from(raw.width) * u64::from(raw.height) * 3;
        let found = raw.pixels.len();
        RgbImage::from_raw(raw.width, raw.height, raw.pixels).ok_or_else(|| {
            E::custom(format!(
                "an RGB image of {}x{} needs {expected} bytes of pixels, found {found}",
                raw.width, raw.height
            ))
        })
    }

    pub mod list {
        use super::*;

        pub fn serialize<S: Serializer>(images: &[RgbImage], s: S) -> Result<S::Ok, S::Error> {
            images.iter().map(raw).collect::<Vec<_>>().serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RgbImage>, D::Error> {
            Vec::<Raw>::deserialize(d)?.into_iter().map(image).collect()
        }
    }

    pub mod shared {
        use super::*;

        pub fn serialize<S: Serializer>(image: &Arc<RgbImage>, s: S) -> Result<S::Ok, S::Error> {
            raw(image).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<RgbImage>, D::Error> {
            image(Raw::deserialize(d)?).map(Arc::new)
        }
    }

    pub mod shared_vec {
        use super::*;

        pub fn serialize<S: Serializer>(images: &Arc<Vec<Arc<RgbImage>>>, s: S) -> Result<S::Ok, S::Error> {
            super::shared_list::serialize(images, s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Vec<Arc<RgbImage>>>, D::Error> {
            super::shared_list::deserialize(d).map(Arc::new)
        }
    }

    pub mod shared_list {
        use super::*;

        pub fn serialize<S: Serializer>(images: &[Arc<RgbImage>], s: S) -> Result<S::Ok, S::Error> {
            images.iter().map(|i| raw(i)).collect::<Vec<_>>().serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<RgbImage>>, D::Error> {
            Vec::<Raw>::deserialize(d)?.into_iter().map(|r| image(r).map(Arc::new)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: u32, h: u32, seed: u8) -> Arc<RgbImage> {
        Arc::new(RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 ^ seed, y as u8, seed.wrapping_mul(3)])))
    }

    fn roundtrip(value: &Value) -> Value {
        let text = serde_json::to_string(value).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every data variant reads back as it was written: images (non-square, pixel for pixel), latents,
    /// scores, the selection, clips with their latents.
    #[test]
    fn data_values_round_trip() {
        let latents = Latents { shape: [1, 2, 1, 2, 3], data: Arc::new((0..12).map(|i| i as f32 * 0.25).collect()) };
        let candidates = Candidates {
            latents: latents.clone(),
            images: vec![picture(3, 2, 1), picture(3, 2, 9)],
            prompt: "a red ball".into(),
            seed: 7,
        };
        let Value::Candidates(back) = roundtrip(&candidates.clone().into_value()) else { panic!("variant changed") };
        assert_eq!(back.latents, latents);
        assert_eq!(
            back.images.iter().map(|i| i.as_raw().clone()).collect::<Vec<_>>(),
            vec![candidates.images[0].as_raw().clone(), candidates.images[1].as_raw().clone()]
        );
        assert_eq!((back.prompt.as_str(), back.seed), ("a red ball", 7));

        let ranking = Ranking {
            images: vec![picture(2, 5, 4)],
            scores: Some(vec![0.5, -1.25]),
            selected: 1,
            by: SelectedBy::Hand,
        };
        let Value::Ranking(back) = roundtrip(&ranking.into_value()) else { panic!("variant changed") };
        assert_eq!((back.scores.clone(), back.selected, back.by), (Some(vec![0.5, -1.25]), 1, SelectedBy::Hand));
        assert_eq!(back.images[0].dimensions(), (2, 5));

        let video = Video {
            frames: vec![picture(4, 3, 2).as_ref().clone(), picture(4, 3, 5).as_ref().clone()],
            fps: 8.0,
            prompt: "p".into(),
            seed: 3,
            latents: Some(latents.clone()),
        };
        let Value::Video(back) = roundtrip(&video.clone().into_value()) else { panic!("variant changed") };
        assert_eq!(back.frames, video.frames);
        assert_eq!(back.latents, Some(latents));

        let still = StillImage { image: picture(5, 1, 8), source: "candidate 3".into(), latent: None };
        let Value::Image(back) = roundtrip(&still.clone().into_value()) else { panic!("variant changed") };
        assert_eq!(back.image.as_raw(), still.image.as_raw());
        let prompt = PromptValue { positive: "a".into(), negative: "b".into() };
        let Value::Prompt(back) = roundtrip(&prompt.clone().into_value()) else { panic!("variant changed") };
        assert_eq!(*back, prompt);
        assert!(matches!(roundtrip(&Value::Int(-4)), Value::Int(-4)));
    }

    /// An image whose pixels do not fill its size is refused with both numbers, never read as an image.
    #[test]
    fn damaged_images_are_refused() {
        let text = r#"{"Image":{"image":{"width":4,"height":4,"pixels":[1,2,3]},"source":"x","latent":null}}"#;
        let err = serde_json::from_str::<Value>(text).unwrap_err().to_string();
        assert!(err.contains("4x4") && err.contains("48") && err.contains("found 3"), "{err}");
    }

    #[test]
    fn typed_access_reads_only_its_own_variant() {
        let value = 5i64.into_value();
        assert_eq!(i64::from_value(&value), Some(&5));
        assert!(Candidates::from_value(&value).is_none());
        assert_eq!(value.port_type(), Some(PortType::Int));
        assert_eq!(Value::Images(Arc::new(vec![])).port_type(), None);
        assert!(value.is_data());
    }
}
