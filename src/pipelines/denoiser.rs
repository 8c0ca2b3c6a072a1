//! The interface between the pipelines and a model family: a [`VideoDenoiser`] predicts from noisy video
//! latents under a [`Conditioning`]. The I4VGen stages, plain text-to-video and (next) TI2V-Zero run on any
//! family that implements it; each family supplies its own scheduler configuration and its own
//! conditioning (text now; image tokens, concatenated image latents and frame rate for the image-to-video
//! families).

use burn::tensor::Tensor;

use super::PipelineError;
use crate::models::unet::{Motion, VideoUnet};

/// What a denoiser is conditioned on, for one branch of classifier-free guidance. Every tensor has a batch
/// of 1 (shared by all clips) or of the clips' count.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Text encoder hidden states [1 or B, S, D].
    pub text: Tensor<3>,
    /// Image tokens beside the text (the image-to-video families' CLIP image embeddings), [1 or B, T, D].
    pub image_tokens: Option<Tensor<3>>,
    /// Image latents concatenated to the noisy input along the channels, [1 or B, C, F, h, w].
    pub concat_latents: Option<Tensor<5>>,
    /// The frame rate (or frame stride) the clip is conditioned on.
    pub fps: Option<f64>,
}

impl Conditioning {
    /// Text conditioning only.
    pub fn text(text: Tensor<3>) -> Self {
        Conditioning { text, image_tokens: None, concat_latents: None, fps: None }
    }

    /// The same conditioning for `clips` clips: every batch-1 tensor repeated.
    pub fn for_clips(&self, clips: usize) -> Self {
        fn repeat<const D: usize>(t: &Tensor<D>, clips: usize) -> Tensor<D> {
            if t.dims()[0] == 1 { t.clone().repeat_dim(0, clips) } else { t.clone() }
        }
        Conditioning {
            text: repeat(&self.text, clips),
            image_tokens: self.image_tokens.as_ref().map(|t| repeat(t, clips)),
            concat_latents: self.concat_latents.as_ref().map(|t| repeat(t, clips)),
            fps: self.fps,
        }
    }

    /// Two conditionings batched as one (`first`'s clips, then `second`'s), for one call over both guidance
    /// branches. Both must carry the same kinds of conditioning.
    pub fn batched(first: &Conditioning, second: &Conditioning) -> Result<Self, PipelineError> {
        fn both<const D: usize>(
            what: &str,
            a: &Option<Tensor<D>>,
            b: &Option<Tensor<D>>,
        ) -> Result<Option<Tensor<D>>, PipelineError> {
            match (a, b) {
                (Some(a), Some(b)) => Ok(Some(Tensor::cat(vec![a.clone(), b.clone()], 0))),
                (None, None) => Ok(None),
                _ => Err(PipelineError::Data(format!("{what}: one guidance branch has it and the other has not"))),
            }
        }
        if first.fps != second.fps {
            return Err(PipelineError::Data("the guidance branches are conditioned on different frame rates".into()));
        }
        Ok(Conditioning {
            text: Tensor::cat(vec![first.text.clone(), second.text.clone()], 0),
            image_tokens: both("image tokens", &first.image_tokens, &second.image_tokens)?,
            concat_latents: both("concatenated image latents", &first.concat_latents, &second.concat_latents)?,
            fps: first.fps,
        })
    }
}

/// The conditioning of both branches of classifier-free guidance: the prompt's and the unconditional
/// (negative prompt, zero image embedding, ...).
#[derive(Clone, Debug)]
pub struct GuidanceConditioning {
    pub cond: Conditioning,
    pub uncond: Conditioning,
}

impl GuidanceConditioning {
    /// Text conditioning of a prompt and its negative prompt (CLIP hidden states [1, S, D] each).
    pub fn text(cond: Tensor<3>, uncond: Tensor<3>) -> Self {
        GuidanceConditioning { cond: Conditioning::text(cond), uncond: Conditioning::text(uncond) }
    }
}

/// A video model that predicts noise (or velocity: the family's scheduler says which) for noisy latents.
pub trait VideoDenoiser {
    /// The prediction for `x` [B, C, F, h, w] at `timesteps` (one per clip) under `cond` (batch B). With
    /// [`Motion::Bypass`] every frame is an independent image (I4VGen's candidates).
    fn predict(
        &self,
        x: Tensor<5>,
        timesteps: &[f64],
        cond: &Conditioning,
        motion: Motion,
    ) -> Result<Tensor<5>, PipelineError>;

    /// Channels of the latents it denoises.
    fn latent_channels(&self) -> usize;
}

/// A model family's text-to-video model as the family-independent nodes use it (TI2V-Zero, the text-to-video
/// sampler): its denoiser, its VAE, its text side and its scheduler configuration.
pub trait VideoModel: Send + Sync + std::fmt::Debug {
    /// The family, for messages ("SD 1.5 + AnimateDiff", "ModelScope T2V").
    fn family(&self) -> &'static str;
    fn denoiser(&self) -> &dyn VideoDenoiser;
    fn vae(&self) -> &crate::models::vae::AutoencoderKl;
    /// The prompt and negative prompt encoded for guidance.
    fn encode_prompt(
        &self,
        prompt: &str,
        negative: &str,
        device: &burn::tensor::Device,
    ) -> Result<crate::models::stable_diffusion::EncodedPrompt, crate::models::clip::TokenizerError>;
    /// Tokens of text that fit the text encoder's window (for truncation notes).
    fn prompt_room(&self) -> usize;
    /// The family's scheduler configuration (its trained noise schedule).
    fn scheduler(&self) -> crate::schedulers::DdimConfig;
    /// The most frames a clip may have, if the model has a limit.
    fn max_frames(&self) -> Option<usize>;
    /// The memory a guided sampling stage of `shape` takes (weights and activations; see
    /// [`super::memory::stage_estimate`]).
    fn estimate(&self, shape: super::memory::StageShape, cpu: bool) -> super::memory::Estimate;
}

/// SD 1.5 + AnimateDiff as a [`VideoModel`]: a checkpoint and its motion modules.
#[derive(Debug)]
pub struct AnimateDiffModel {
    pub sd: std::sync::Arc<crate::models::stable_diffusion::StableDiffusion>,
    pub unet: VideoUnet,
}

impl VideoModel for AnimateDiffModel {
    fn family(&self) -> &'static str {
        "SD 1.5 + AnimateDiff"
    }
    fn denoiser(&self) -> &dyn VideoDenoiser {
        &self.unet
    }
    fn vae(&self) -> &crate::models::vae::AutoencoderKl {
        &self.sd.vae
    }
    fn encode_prompt(
        &self,
        prompt: &str,
        negative: &str,
        device: &burn::tensor::Device,
    ) -> Result<crate::models::stable_diffusion::EncodedPrompt, crate::models::clip::TokenizerError> {
        self.sd.encode_prompt(prompt, negative, device)
    }
    fn prompt_room(&self) -> usize {
        self.sd.tokenizer.max_length.saturating_sub(2)
    }
    fn scheduler(&self) -> crate::schedulers::DdimConfig {
        crate::schedulers::DdimConfig::animatediff()
    }
    fn max_frames(&self) -> Option<usize> {
        self.unet.max_frames()
    }
    fn estimate(&self, shape: super::memory::StageShape, cpu: bool) -> super::memory::Estimate {
        super::memory::stage_estimate(&self.unet, &self.sd.vae, shape, cpu)
    }
}

impl VideoModel for crate::models::modelscope::ModelScopeT2v {
    fn family(&self) -> &'static str {
        "ModelScope T2V"
    }
    fn denoiser(&self) -> &dyn VideoDenoiser {
        &self.unet
    }
    fn vae(&self) -> &crate::models::vae::AutoencoderKl {
        &self.vae
    }
    fn encode_prompt(
        &self,
        prompt: &str,
        negative: &str,
        device: &burn::tensor::Device,
    ) -> Result<crate::models::stable_diffusion::EncodedPrompt, crate::models::clip::TokenizerError> {
        crate::models::stable_diffusion::encode_prompt(&self.text_encoder, &self.tokenizer, prompt, negative, device)
    }
    fn prompt_room(&self) -> usize {
        self.tokenizer.max_length.saturating_sub(2)
    }
    fn scheduler(&self) -> crate::schedulers::DdimConfig {
        self.scheduler.clone()
    }
    fn max_frames(&self) -> Option<usize> {
        None
    }
    fn estimate(&self, shape: super::memory::StageShape, cpu: bool) -> super::memory::Estimate {
        use burn::module::Module;
        let temporal = self.unet.temporal.num_params() as u64;
        super::memory::walk_estimate(&self.unet.unet, temporal, &self.vae, shape, cpu)
    }
}

/// SD 1.5 + AnimateDiff: text conditioning only.
impl VideoDenoiser for VideoUnet {
    fn predict(
        &self,
        x: Tensor<5>,
        timesteps: &[f64],
        cond: &Conditioning,
        motion: Motion,
    ) -> Result<Tensor<5>, PipelineError> {
        if cond.image_tokens.is_some() || cond.concat_latents.is_some() || cond.fps.is_some() {
            return Err(PipelineError::Data(
                "SD 1.5 + AnimateDiff is conditioned on text only (image or frame-rate conditioning was given)".into(),
            ));
        }
        Ok(self.forward(x, timesteps, cond.text.clone(), motion)?)
    }

    fn latent_channels(&self) -> usize {
        self.unet.in_channels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn filled<const D: usize>(shape: [usize; D], value: f32) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(vec![value; n], shape), &Device::flex())
    }

    #[test]
    fn conditioning_is_repeated_per_clip_and_batched_per_branch() {
        let mut a = Conditioning::text(filled([1, 3, 4], 1.0));
        a.concat_latents = Some(filled([1, 2, 1, 2, 2], 5.0));
        let a = a.for_clips(3);
        assert_eq!(a.text.dims(), [3, 3, 4]);
        assert_eq!(a.concat_latents.as_ref().map(|t| t.dims()), Some([3, 2, 1, 2, 2]));
        // A tensor that already has the clips' batch is kept as it is.
        let kept = Conditioning::text(filled([3, 3, 4], 2.0)).for_clips(3);
        assert_eq!(kept.text.dims(), [3, 3, 4]);

        let mut b = Conditioning::text(filled([3, 3, 4], 2.0));
        b.concat_latents = Some(filled([3, 2, 1, 2, 2], 6.0));
        let both = Conditioning::batched(&a, &b).unwrap();
        assert_eq!(both.text.dims(), [6, 3, 4]);
        let values = both.text.into_data().try_to_vec::<f32>().unwrap();
        assert!(values[..36].iter().all(|&v| v == 1.0) && values[36..].iter().all(|&v| v == 2.0));

        // One branch with image latents and one without cannot be batched.
        let err = Conditioning::batched(&a, &Conditioning::text(filled([3, 3, 4], 0.0))).unwrap_err();
        assert!(err.to_string().contains("concatenated image latents"), "{err}");
    }
}
