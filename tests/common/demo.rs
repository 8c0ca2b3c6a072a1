//! The trained I4VGen demo models (assets/demo-models: sd15-tiny, mm_tiny_v2.ckpt, ImageReward-tiny), loaded
//! once for a test that runs the method on them.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use stepstone::models::clip::{ClipTextModel, ClipTokenizer};
use stepstone::models::image_reward::{ImageReward, load_image_reward_dir};
use stepstone::models::unet::VideoUnet;
use stepstone::models::vae::AutoencoderKl;
use stepstone::models::{MotionLoadOptions, load_clip_text_encoder, load_motion_module, load_unet, load_vae};

/// A path under assets/demo-models.
pub fn demo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models").join(rel)
}

pub struct DemoI4vgen {
    /// The SD 1.5 UNet with the motion module.
    pub model: VideoUnet,
    pub vae: AutoencoderKl,
    pub text: ClipTextModel,
    pub tokenizer: ClipTokenizer,
    pub reward: ImageReward,
}

impl DemoI4vgen {
    pub fn load(device: &Device) -> DemoI4vgen {
        let (unet, _) = load_unet(&demo("sd15-tiny/unet"), device).unwrap();
        let (vae, _) = load_vae(&demo("sd15-tiny/vae"), device).unwrap();
        let (text, _) = load_clip_text_encoder(&demo("sd15-tiny/text_encoder"), device).unwrap();
        let (motion, _) = load_motion_module(&demo("mm_tiny_v2.ckpt"), device, &MotionLoadOptions::default()).unwrap();
        let (reward, _) = load_image_reward_dir(&demo("ImageReward-tiny"), device).unwrap();
        let tokenizer = ClipTokenizer::from_dir(&demo("sd15-tiny/tokenizer")).unwrap();
        let model = VideoUnet::new(unet, Some(motion)).unwrap();
        DemoI4vgen { model, vae, text, tokenizer, reward }
    }

    /// The text encoder's hidden states for `prompt`.
    pub fn encode(&self, prompt: &str, device: &Device) -> Tensor<3> {
        self.text.encode_ids(&[self.tokenizer.encode(prompt).unwrap().ids], device)
    }
}
