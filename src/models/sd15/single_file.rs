//! Single-file Stable Diffusion 1.x checkpoints, as community models ship them: one `.safetensors` or
//! `.ckpt` (a pickled `{"state_dict": ...}`) in f32 or fp16, holding the UNet, the VAE and the CLIP text
//! encoder under the original LDM (CompVis) key names.
//!
//! # The rename table
//!
//! Our module trees carry diffusers' names, so loading a single file is one rename table per component
//! ([`unet_renames`], [`vae_renames`], [`TEXT_ENCODER_RENAMES`]), regex pairs applied to every key of the
//! file in order (each pattern to the result of the previous ones, as burn-store's `KeyRemapper` does).
//! Block patterns are anchored at the component's prefix and strip it, so a key is moved by at most one
//! of them; the part patterns after them are anchored at our names.
//!
//! UNet (`model.diffusion_model.`), for `layers_per_block` = n (2 in SD 1.x), level `l`, layer `j`:
//!
//! | LDM | ours (diffusers) |
//! | --- | --- |
//! | `time_embed.0`, `time_embed.2` | `time_embedding.linear_1`, `time_embedding.linear_2` |
//! | `input_blocks.0.0` | `conv_in` |
//! | `input_blocks.{1 + l(n+1) + j}.0` / `.1` (j < n) | `down_blocks.l.resnets.j` / `down_blocks.l.attentions.j` |
//! | `input_blocks.{1 + l(n+1) + n}.0.op` (not at the last level) | `down_blocks.l.downsamplers.0.conv` |
//! | `middle_block.0`, `.1`, `.2` | `mid_block.resnets.0`, `mid_block.attentions.0`, `mid_block.resnets.1` |
//! | `output_blocks.{l(n+1) + j}.0` / `.1` (j <= n) | `up_blocks.l.resnets.j` / `up_blocks.l.attentions.j` |
//! | `output_blocks.{l(n+1) + n}.1.conv`, or `.2.conv` where the level has attentions | `up_blocks.l.upsamplers.0.conv` |
//! | `out.0`, `out.2` | `conv_norm_out`, `conv_out` |
//! | in a resnet: `in_layers.0`, `in_layers.2`, `emb_layers.1`, `out_layers.0`, `out_layers.3`, `skip_connection` | `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut` |
//!
//! Whether a level has attentions comes from `down_block_types` / `up_block_types` (`CrossAttn*`), so the
//! table is a function of the [`UnetConfig`]. Inside a transformer (`norm`, `proj_in`,
//! `transformer_blocks.N.attn1.to_q`, ..., `proj_out`) the names are already diffusers'.
//!
//! VAE (`first_stage_model.`), with L levels:
//!
//! | LDM | ours (diffusers) |
//! | --- | --- |
//! | `encoder.down.l.block.j`, `encoder.down.l.downsample` | `encoder.down_blocks.l.resnets.j`, `encoder.down_blocks.l.downsamplers.0` |
//! | `decoder.up.l.block.j`, `decoder.up.l.upsample` | `decoder.up_blocks.{L-1-l}.resnets.j`, `decoder.up_blocks.{L-1-l}.upsamplers.0` (LDM counts decoder levels from the lowest resolution up) |
//! | `{encoder,decoder}.mid.block_1`, `.mid.attn_1`, `.mid.block_2` | `mid_block.resnets.0`, `mid_block.attentions.0`, `mid_block.resnets.1` |
//! | `{encoder,decoder}.norm_out` | `conv_norm_out` |
//! | in a resnet: `nin_shortcut` | `conv_shortcut` |
//! | in the attention: `norm`, `q`, `k`, `v`, `proj_out` | `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` |
//! | `conv_in`, `conv_out`, `quant_conv`, `post_quant_conv` | the same |
//!
//! The attention projections are 1x1 convolutions `[C, C, 1, 1]` in LDM files and linear layers `[C, C]`
//! in ours; the loader's `Conv1x1ToLinear` adapter (src/models/load) reshapes them.
//!
//! Text encoder: `cond_stage_model.transformer.text_model.*` -> `text_model.*`; older files, written before
//! transformers nested the tower under `text_model`, have `cond_stage_model.transformer.*` -> `text_model.*`.
//!
//! Entries real files carry that no network uses are ignored ([`HARMLESS`]): the DDPM schedule buffers
//! (`betas`, `alphas_cumprod`, ..., `posterior_*`, `lvlb_weights`), `model_ema.*` (EMA bookkeeping; in
//! full training checkpoints also EMA copies of the UNet, whose weights the non-EMA keys duplicate) and the
//! text encoder's `position_ids` buffer. Any other key that no module takes is reported in the
//! [`LoadReport`] of its component (keys under no component's prefix in the UNet's report).

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::unet::{Unet2DConditionModel, UnetConfig};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::load::identify::{FileKind, classify, read_keys};
use crate::models::load::{LoadError, LoadOptions, LoadReport, WeightFormat, load_into};
use crate::models::vae::{AutoencoderKl, VaeConfig};

/// Key prefixes of the three networks in an LDM single file.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const TEXT_ENCODER_PREFIX: &str = "cond_stage_model.";

/// Entries of real single files that no network uses (regexes on the file's keys).
pub const HARMLESS: &[&str] = &[
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|lvlb_weights|logvar)$",
    r"^model_ema\.",
    r"position_ids$",
];

/// The text encoder's rename table (see the module documentation).
pub const TEXT_ENCODER_RENAMES: &[(&str, &str)] = &[
    (r"^cond_stage_model\.transformer\.text_model\.", "text_model."),
    (r"^cond_stage_model\.transformer\.", "text_model."),
];

/// The configurations of the three networks (a single file carries none).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SingleFileConfig {
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipTextConfig,
}

impl SingleFileConfig {
    /// Stable Diffusion 1.5: its UNet, the kl-f8 VAE and the CLIP ViT-L/14 text tower.
    pub fn sd15() -> Self {
        Self::default()
    }
}

/// The networks of a single file, with what each load did.
#[derive(Debug)]
pub struct SingleFileModels {
    pub unet: Unet2DConditionModel,
    pub vae: AutoencoderKl,
    pub text_encoder: ClipTextModel,
    pub reports: SingleFileReports,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SingleFileReports {
    pub unet: LoadReport,
    pub vae: LoadReport,
    pub text_encoder: LoadReport,
}

#[derive(Debug, thiserror::Error)]
pub enum SingleFileError {
    #[error("{path}: {component} configuration: {message}")]
    Config { path: PathBuf, component: &'static str, message: String },
    #[error("{path}: no {component} in this checkpoint (no weights under '{prefix}')")]
    MissingComponent { path: PathBuf, component: &'static str, prefix: &'static str },
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Loads an SD 1.5 single-file checkpoint (`.safetensors`, `.ckpt`; f32 or fp16; weights become f32).
pub fn load_single_file(path: &Path, device: &Device) -> Result<SingleFileModels, SingleFileError> {
    load_single_file_with(path, &SingleFileConfig::sd15(), device)
}

/// Loads a single-file checkpoint of SD 1.x layout with explicit configurations.
pub fn load_single_file_with(
    path: &Path,
    config: &SingleFileConfig,
    device: &Device,
) -> Result<SingleFileModels, SingleFileError> {
    if !path.is_file() {
        return Err(LoadError::NotFound { path: path.to_path_buf() }.into());
    }
    let format = WeightFormat::of(path).ok_or_else(|| LoadError::UnknownFormat { path: path.to_path_buf() })?;
    let keys = read_keys(path)?;
    // `torch.save({"state_dict": sd})` files (the usual .ckpt) read as `state_dict.<key>`.
    let nested = format == WeightFormat::Pickle && keys.iter().any(|k| k.starts_with("state_dict."));
    let keys: Vec<String> = keys
        .into_iter()
        .map(|k| if nested { k.strip_prefix("state_dict.").map(str::to_string).unwrap_or(k) } else { k })
        .collect();
    let kind = classify(&keys);
    if kind != FileKind::Sd1SingleFile {
        return Err(LoadError::WrongKind {
            path: path.to_path_buf(),
            message: format!("this file looks like {}, not {}", kind.describe(), FileKind::Sd1SingleFile.describe()),
        }
        .into());
    }
    for (component, prefix) in [("VAE", VAE_PREFIX), ("text encoder", TEXT_ENCODER_PREFIX)] {
        if !keys.iter().any(|k| k.starts_with(prefix)) {
            return Err(SingleFileError::MissingComponent { path: path.to_path_buf(), component, prefix });
        }
    }
    let top_level_key = nested.then_some("state_dict");
    let config_err = |component: &'static str, e: &dyn std::fmt::Display| SingleFileError::Config {
        path: path.to_path_buf(),
        component,
        message: e.to_string(),
    };

    let mut unet = config.unet.init(device).map_err(|e| config_err("UNet", &e))?;
    let unet_report = load_component(
        &mut unet,
        path,
        &unet_renames(&config.unet),
        &[VAE_PREFIX, TEXT_ENCODER_PREFIX],
        top_level_key,
        "one whose UNet has the configured layout",
    )?;

    let mut vae = config.vae.init(device).map_err(|e| config_err("VAE", &e))?;
    let mut vae_report = load_component(
        &mut vae,
        path,
        &vae_renames(&config.vae),
        &[UNET_PREFIX, TEXT_ENCODER_PREFIX],
        top_level_key,
        "one whose VAE has the configured layout",
    )?;
    vae_report.unused.retain(|k| {
        [VAE_PREFIX, "encoder.", "decoder.", "quant_conv.", "post_quant_conv."].iter().any(|p| k.starts_with(p))
    });

    let mut text_encoder = config.text_encoder.init(device).map_err(|e| config_err("text encoder", &e))?;
    let text_renames: Vec<(String, String)> =
        TEXT_ENCODER_RENAMES.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let mut text_report = load_component(
        &mut text_encoder,
        path,
        &text_renames,
        &[UNET_PREFIX, VAE_PREFIX],
        top_level_key,
        "one whose text encoder has the configured layout",
    )?;
    text_report.unused.retain(|k| k.starts_with(TEXT_ENCODER_PREFIX) || k.starts_with("text_model."));

    Ok(SingleFileModels {
        unet,
        vae,
        text_encoder,
        reports: SingleFileReports { unet: unet_report, vae: vae_report, text_encoder: text_report },
    })
}

/// One network out of the file: its rename table, the other networks' keys and [`HARMLESS`] ignored.
fn load_component<M: burn::store::ModuleSnapshot>(
    module: &mut M,
    path: &Path,
    renames: &[(String, String)],
    others: &[&str],
    top_level_key: Option<&str>,
    expected: &str,
) -> Result<LoadReport, LoadError> {
    let remap: Vec<(&str, &str)> = renames.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let other_patterns: Vec<String> = others.iter().map(|p| format!("^{}", regex::escape(p))).collect();
    let ignore: Vec<&str> = HARMLESS.iter().copied().chain(other_patterns.iter().map(String::as_str)).collect();
    let options = LoadOptions { remap: &remap, ignore_unused: &ignore, top_level_key, expected: Some(expected) };
    load_into(module, path, &options)
}

/// A pattern matching `prefix` + the LDM block name `ldm` (dots literal), and its replacement.
fn block(prefix: &str, ldm: &str, ours: &str) -> (String, String) {
    (format!("^{}{}\\.", regex::escape(prefix), regex::escape(ldm)), format!("{ours}."))
}

fn has_attention(block_type: &str) -> bool {
    block_type.starts_with("CrossAttn")
}

/// The UNet's rename table for `config` (see the module documentation).
pub fn unet_renames(config: &UnetConfig) -> Vec<(String, String)> {
    let n = config.layers_per_block;
    let levels = config.block_out_channels.len();
    let mut blocks: Vec<(String, String)> = [
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"),
        ("middle_block.0", "mid_block.resnets.0"),
        ("middle_block.1", "mid_block.attentions.0"),
        ("middle_block.2", "mid_block.resnets.1"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for level in 0..levels {
        let attn = config.down_block_types.get(level).is_some_and(|t| has_attention(t));
        for j in 0..n {
            let i = 1 + level * (n + 1) + j;
            blocks.push((format!("input_blocks.{i}.0"), format!("down_blocks.{level}.resnets.{j}")));
            if attn {
                blocks.push((format!("input_blocks.{i}.1"), format!("down_blocks.{level}.attentions.{j}")));
            }
        }
        if level + 1 < levels {
            let i = 1 + level * (n + 1) + n;
            blocks.push((format!("input_blocks.{i}.0.op"), format!("down_blocks.{level}.downsamplers.0.conv")));
        }
    }
    for level in 0..levels {
        let attn = config.up_block_types.get(level).is_some_and(|t| has_attention(t));
        for j in 0..=n {
            let i = level * (n + 1) + j;
            blocks.push((format!("output_blocks.{i}.0"), format!("up_blocks.{level}.resnets.{j}")));
            if attn {
                blocks.push((format!("output_blocks.{i}.1"), format!("up_blocks.{level}.attentions.{j}")));
            }
        }
        if level + 1 < levels {
            let i = level * (n + 1) + n;
            let slot = if attn { 2 } else { 1 };
            blocks.push((format!("output_blocks.{i}.{slot}.conv"), format!("up_blocks.{level}.upsamplers.0.conv")));
        }
    }
    let mut table: Vec<(String, String)> = blocks.iter().map(|(ldm, ours)| block(UNET_PREFIX, ldm, ours)).collect();
    let resnet = r"^((?:down_blocks|up_blocks)\.\d+\.resnets\.\d+|mid_block\.resnets\.\d+)\.";
    for (ldm, ours) in [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ] {
        table.push((format!(r"{resnet}{}\.", regex::escape(ldm)), format!("${{1}}.{ours}.")));
    }
    table
}

/// The VAE's rename table for `config` (see the module documentation).
pub fn vae_renames(config: &VaeConfig) -> Vec<(String, String)> {
    let p = regex::escape(VAE_PREFIX);
    let levels = config.block_out_channels.len();
    let mut table = vec![
        (format!(r"^{p}encoder\.down\.(\d+)\.block\.(\d+)\."), "encoder.down_blocks.${1}.resnets.${2}.".to_string()),
        (format!(r"^{p}encoder\.down\.(\d+)\.downsample\."), "encoder.down_blocks.${1}.downsamplers.0.".to_string()),
    ];
    for level in 0..levels {
        let ours = levels - 1 - level;
        table.push((
            format!(r"^{p}decoder\.up\.{level}\.block\.(\d+)\."),
            format!("decoder.up_blocks.{ours}.resnets.${{1}}."),
        ));
        table.push((
            format!(r"^{p}decoder\.up\.{level}\.upsample\."),
            format!("decoder.up_blocks.{ours}.upsamplers.0."),
        ));
    }
    table.extend([
        (format!(r"^{p}(encoder|decoder)\.mid\.block_1\."), "${1}.mid_block.resnets.0.".to_string()),
        (format!(r"^{p}(encoder|decoder)\.mid\.block_2\."), "${1}.mid_block.resnets.1.".to_string()),
        (format!(r"^{p}(encoder|decoder)\.mid\.attn_1\."), "${1}.mid_block.attentions.0.".to_string()),
        (format!(r"^{p}(encoder|decoder)\.norm_out\."), "${1}.conv_norm_out.".to_string()),
        // conv_in, conv_out, quant_conv, post_quant_conv: the same names.
        (format!(r"^{p}"), String::new()),
        (r"^((?:encoder|decoder)\..*\.resnets\.\d+)\.nin_shortcut\.".to_string(), "${1}.conv_shortcut.".to_string()),
    ]);
    let attention = r"^((?:encoder|decoder)\.mid_block\.attentions\.\d+)\.";
    for (ldm, ours) in [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")] {
        table.push((format!(r"{attention}{ldm}\."), format!("${{1}}.{ours}.")));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(table: &[(String, String)], key: &str) -> String {
        table.iter().fold(key.to_string(), |k, (pattern, replacement)| {
            regex::Regex::new(pattern).unwrap().replace_all(&k, replacement.as_str()).into_owned()
        })
    }

    #[test]
    fn sd15_block_indices() {
        let unet = unet_renames(&UnetConfig::default());
        for (ldm, ours) in [
            ("input_blocks.1.1.proj_in.weight", "down_blocks.0.attentions.0.proj_in.weight"),
            ("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.11.0.out_layers.3.bias", "down_blocks.3.resnets.1.conv2.bias"),
            ("input_blocks.4.0.skip_connection.weight", "down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight"),
            ("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias"),
            (
                "output_blocks.5.1.transformer_blocks.0.attn2.to_k.weight",
                "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("output_blocks.11.0.in_layers.0.weight", "up_blocks.3.resnets.2.norm1.weight"),
            ("out.2.weight", "conv_out.weight"),
        ] {
            assert_eq!(apply(&unet, &format!("{UNET_PREFIX}{ldm}")), ours, "{ldm}");
        }
        let vae = vae_renames(&VaeConfig::default());
        for (ldm, ours) in [
            ("decoder.up.0.block.2.nin_shortcut.weight", "decoder.up_blocks.3.resnets.2.conv_shortcut.weight"),
            ("decoder.up.3.upsample.conv.bias", "decoder.up_blocks.0.upsamplers.0.conv.bias"),
            ("encoder.down.1.block.0.nin_shortcut.bias", "encoder.down_blocks.1.resnets.0.conv_shortcut.bias"),
            ("encoder.mid.attn_1.proj_out.weight", "encoder.mid_block.attentions.0.to_out.0.weight"),
            ("decoder.mid.attn_1.norm.bias", "decoder.mid_block.attentions.0.group_norm.bias"),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
            ("post_quant_conv.weight", "post_quant_conv.weight"),
        ] {
            assert_eq!(apply(&vae, &format!("{VAE_PREFIX}{ldm}")), ours, "{ldm}");
        }
        let text: Vec<(String, String)> =
            TEXT_ENCODER_RENAMES.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        for ldm in [
            "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight",
            "cond_stage_model.transformer.encoder.layers.3.mlp.fc1.weight",
        ] {
            assert_eq!(apply(&text, ldm), "text_model.encoder.layers.3.mlp.fc1.weight");
        }
        // A table never touches another component's keys.
        let foreign = format!("{VAE_PREFIX}encoder.conv_in.weight");
        assert_eq!(apply(&unet, &foreign), foreign);
        assert_eq!(apply(&text, &foreign), foreign);
    }
}
