//! A Stable Diffusion 1.x model as artists have it: a diffusers folder (`unet/`, `vae/`, `text_encoder/`,
//! `tokenizer/`) or one single-file checkpoint (`.safetensors`/`.ckpt`, which carries no tokenizer: the SD 1.x
//! tokenizer bundled with stepstone is used). The parts are checked against each other when loading: the
//! text encoder's width must be the UNet's cross-attention width, and every token id the tokenizer can
//! produce must have an embedding.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use super::single_file::{SingleFileError, load_single_file};
use super::unet::Unet2DConditionModel;
use crate::models::clip::{ClipTextModel, ClipTokenizer, Encoding, TokenizerError};
use crate::models::vae::AutoencoderKl;
use crate::models::{ComponentError, LoadReport, load_clip_text_encoder, load_unet, load_vae};

/// The networks and tokenizer of one SD 1.x model.
#[derive(Debug)]
pub struct StableDiffusion {
    pub unet: Unet2DConditionModel,
    pub vae: AutoencoderKl,
    pub text_encoder: ClipTextModel,
    pub tokenizer: ClipTokenizer,
    /// The folder or file it came from.
    pub source: PathBuf,
}

/// What loading did, per component ("unet", "vae", "text_encoder").
pub type StableDiffusionReports = Vec<(&'static str, LoadReport)>;

#[derive(Debug, thiserror::Error)]
pub enum StableDiffusionError {
    #[error("{path}: {component}: {source}")]
    Component {
        path: PathBuf,
        component: &'static str,
        #[source]
        source: Box<ComponentError>,
    },
    #[error(transparent)]
    SingleFile(#[from] SingleFileError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    #[error("{path}: the parts do not fit together: {message}")]
    Mismatch { path: PathBuf, message: String },
}

/// The prompt and negative prompt encoded for classifier-free guidance, with what truncation dropped.
#[derive(Clone, Debug)]
pub struct EncodedPrompt {
    /// CLIP last hidden state of the prompt [1, 77, D].
    pub cond: Tensor<3>,
    /// CLIP last hidden state of the negative prompt [1, 77, D] (the unconditional branch).
    pub uncond: Tensor<3>,
    /// BPE tokens of the prompt / negative prompt past the 77-token window, dropped as diffusers drops them.
    pub truncated: usize,
    pub truncated_negative: usize,
}

/// Loads a diffusers folder or a single-file checkpoint.
pub fn load_stable_diffusion(
    path: &Path,
    device: &Device,
) -> Result<(StableDiffusion, StableDiffusionReports), StableDiffusionError> {
    let layout = |message: String| StableDiffusionError::Layout { path: path.to_path_buf(), message };
    if path.is_dir()
        && let Some(class) = crate::models::pipeline_class(path)
        && class != "StableDiffusionPipeline"
        && let Some((what, node)) = crate::models::describe_pipeline(&class)
    {
        return Err(layout(format!(
            "this is {what} ({class} in model_index.json), not Stable Diffusion 1.5: use {node}"
        )));
    }
    let (unet, vae, text_encoder, tokenizer, reports) = if path.is_dir() {
        let missing: Vec<&str> =
            ["unet", "vae", "text_encoder", "tokenizer"].into_iter().filter(|c| !path.join(c).is_dir()).collect();
        if !missing.is_empty() {
            return Err(layout(format!(
                "not a Stable Diffusion diffusers folder: missing {} (expected unet/, vae/, text_encoder/ and \
                 tokenizer/ folders, or choose a single-file .safetensors/.ckpt checkpoint)",
                missing.iter().map(|c| format!("{c}/")).collect::<Vec<_>>().join(", ")
            )));
        }
        let component = |component: &'static str| {
            move |source: ComponentError| StableDiffusionError::Component {
                path: path.to_path_buf(),
                component,
                source: Box::new(source),
            }
        };
        let (unet, r_unet) = load_unet(&path.join("unet"), device).map_err(component("unet"))?;
        let (vae, r_vae) = load_vae(&path.join("vae"), device).map_err(component("vae"))?;
        let (text_encoder, r_text) =
            load_clip_text_encoder(&path.join("text_encoder"), device).map_err(component("text_encoder"))?;
        let tokenizer = ClipTokenizer::from_dir(&path.join("tokenizer"))?;
        (unet, vae, text_encoder, tokenizer, vec![("unet", r_unet), ("vae", r_vae), ("text_encoder", r_text)])
    } else if path.is_file() {
        let m = load_single_file(path, device)?;
        let r = m.reports;
        let reports = vec![("unet", r.unet), ("vae", r.vae), ("text_encoder", r.text_encoder)];
        (m.unet, m.vae, m.text_encoder, ClipTokenizer::sd15()?, reports)
    } else {
        return Err(layout("not found".to_string()));
    };
    let model = StableDiffusion { unet, vae, text_encoder, tokenizer, source: path.to_path_buf() };
    model.check()?;
    Ok((model, reports))
}

impl StableDiffusion {
    /// The text encoder's vocabulary size and width.
    pub fn text_dims(&self) -> (usize, usize) {
        let [vocab, width] = self.text_encoder.text_model.embeddings.token_embedding.weight.dims();
        (vocab, width)
    }

    fn check(&self) -> Result<(), StableDiffusionError> {
        let mismatch = |message: String| StableDiffusionError::Mismatch { path: self.source.clone(), message };
        let (vocab, width) = self.text_dims();
        if let Some(cross) = self.unet.cross_attention_dim()
            && cross != width
        {
            return Err(mismatch(format!(
                "the text encoder produces {width}-wide states, the UNet attends to {cross}-wide ones (a text \
                 encoder of another model family?)"
            )));
        }
        if self.tokenizer.vocab_size() > vocab {
            return Err(mismatch(format!(
                "the tokenizer has {} tokens, the text encoder embeds only {vocab}",
                self.tokenizer.vocab_size()
            )));
        }
        let positions = self.text_encoder.text_model.embeddings.position_embedding.weight.dims()[0];
        if positions < self.tokenizer.max_length {
            return Err(mismatch(format!(
                "the text encoder has {positions} positions, the tokenizer pads to {}",
                self.tokenizer.max_length
            )));
        }
        Ok(())
    }

    /// Token ids of one prompt (start, tokens, end, padding to 77) and how many tokens did not fit.
    pub fn tokenize(&self, text: &str) -> Result<Encoding, TokenizerError> {
        self.tokenizer.encode(text)
    }

    /// CLIP last hidden states [1, 77, D] of one prompt.
    pub fn encode_text(&self, text: &str, device: &Device) -> Result<(Tensor<3>, Encoding), TokenizerError> {
        let encoding = self.tokenize(text)?;
        let states = self.text_encoder.encode_ids(std::slice::from_ref(&encoding.ids), device);
        Ok((states, encoding))
    }

    /// The prompt and negative prompt encoded for guidance (an empty negative prompt encodes "", as diffusers).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        negative: &str,
        device: &Device,
    ) -> Result<EncodedPrompt, TokenizerError> {
        encode_prompt(&self.text_encoder, &self.tokenizer, prompt, negative, device)
    }
}

/// A prompt and its negative prompt through a CLIP tokenizer and text encoder (last hidden states), with what
/// truncation dropped: the text side of every family with a CLIP text encoder.
pub fn encode_prompt(
    text_encoder: &ClipTextModel,
    tokenizer: &ClipTokenizer,
    prompt: &str,
    negative: &str,
    device: &Device,
) -> Result<EncodedPrompt, TokenizerError> {
    let encode = |text: &str| -> Result<(Tensor<3>, usize), TokenizerError> {
        let encoding = tokenizer.encode(text)?;
        Ok((text_encoder.encode_ids(std::slice::from_ref(&encoding.ids), device), encoding.truncated))
    };
    let (cond, truncated) = encode(prompt)?;
    let (uncond, truncated_negative) = encode(negative)?;
    Ok(EncodedPrompt { cond, uncond, truncated, truncated_negative })
}
