//! Memory planning: how much memory a generation step needs, estimated from the networks' own sizes (read
//! from the loaded weights: channels, levels, resnets, heads) and the node's settings, so that a setting
//! that cannot fit is refused before any work with the estimate and what to lower.
//!
//! The model of one network call is the largest live set of its walk: the skip connections the UNet keeps
//! for its up path, plus the working set of the largest block (a resnet's input and two temporaries, a
//! transformer's projections and its 4x GEGLU feed-forward) and the attention scores that block holds at
//! once (none on the CPU's flash kernel, one chunk within the score budget on the others, twice that for
//! the reference kernel's softmax copy). docs/PERFORMANCE.md compares these estimates with measured peaks.

use crate::models::attention::{self, Kernel};
use crate::models::blocks::{ResnetBlock2D, cpu_conv_scratch_bytes};
use crate::models::unet::attention::Transformer2DModel;
use crate::models::unet::{Unet2DConditionModel, VideoUnet};
use crate::models::vae::AutoencoderKl;

/// Bytes per activation and weight element at f32 (the sizes below are f32's; [`stage_estimate`] scales
/// them to the device's float type).
pub const ELEMENT_BYTES: u64 = 4;

/// How classifier-free guidance runs its two branches (also `stepstone bench --cfg-batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CfgBatch {
    /// Unconditional and conditional in one UNet call of twice the batch (the reference's way; fastest).
    #[default]
    Together,
    /// One call per branch: half the activation memory, a little slower.
    Sequential,
}

impl CfgBatch {
    pub fn parse(value: &str) -> Option<CfgBatch> {
        match value {
            "together" => Some(CfgBatch::Together),
            "sequential" => Some(CfgBatch::Sequential),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CfgBatch::Together => "together",
            CfgBatch::Sequential => "sequential",
        }
    }

    /// Images per UNet call for `clips` clips of `frames` frames under guidance.
    pub fn batch(self, clips: usize, frames: usize) -> usize {
        let per_branch = clips.saturating_mul(frames);
        match self {
            CfgBatch::Together => per_branch.saturating_mul(2),
            CfgBatch::Sequential => per_branch,
        }
    }
}

/// The attention-score bytes one product holds at once on this thread's kernel and budget.
fn score_bytes(batch_heads: usize, rows: usize, keys: usize, cpu: bool) -> u64 {
    let full = (batch_heads as u64).saturating_mul(rows as u64).saturating_mul(keys as u64) * ELEMENT_BYTES;
    match attention::kernel() {
        // The CPU flash kernel keeps a tile of scores per thread: nothing next to the activations.
        Kernel::Fused if cpu && attention::cpu_takes_fused(batch_heads) => 0,
        Kernel::Fused if cpu => 2 * full.min(attention::score_budget() as u64),
        // One chunk (burn's fallback, when no flash kernel fits, materialises the chunk it is given).
        Kernel::Fused => full.min(attention::score_budget() as u64),
        // Scores and their softmax.
        Kernel::Reference => 2 * full.min(attention::score_budget() as u64),
    }
}

fn map_bytes(n: usize, channels: usize, h: usize, w: usize) -> u64 {
    (n as u64).saturating_mul(channels as u64).saturating_mul(h as u64).saturating_mul(w as u64) * ELEMENT_BYTES
}

/// A resnet's live set: its input, and two temporaries at its output width.
fn resnet_bytes(resnet: &ResnetBlock2D, n: usize, h: usize, w: usize, cpu: bool) -> u64 {
    let [out, input, _, _] = resnet.conv1.weight.dims();
    // On the CPU the convolutions read their input out and gather im2col columns (models::blocks::conv_forward).
    let scratch = if cpu {
        cpu_conv_scratch_bytes(&resnet.conv1, n, h, w).max(cpu_conv_scratch_bytes(&resnet.conv2, n, h, w))
    } else {
        0
    };
    map_bytes(n, input, h, w) * 2 + map_bytes(n, out, h, w) * 3 + scratch
}

/// A spatial transformer's live set: its input and projections (~8 maps), the GEGLU feed-forward's 8x and
/// 4x hidden states, and the self-attention scores over its h*w tokens.
fn transformer_bytes(t: &Transformer2DModel, channels: usize, n: usize, h: usize, w: usize, cpu: bool) -> u64 {
    let heads = t.transformer_blocks.first().map_or(1, |b| b.attn1.heads);
    let tokens = h * w;
    map_bytes(n, channels, h, w) * 20 + score_bytes(n * heads, tokens, tokens, cpu)
}

/// The live set of a resnet and the transformer after it (if any) at one resolution.
fn block_bytes(
    resnet: &ResnetBlock2D,
    transformer: Option<&Transformer2DModel>,
    n: usize,
    (h, w): (usize, usize),
    cpu: bool,
) -> u64 {
    let channels = resnet.conv1.weight.dims()[0];
    let working = resnet_bytes(resnet, n, h, w, cpu);
    transformer.map_or(working, |t| working.max(transformer_bytes(t, channels, n, h, w, cpu)))
}

/// Activation bytes of one UNet call on `n` images of `h` x `w` latents (frames of `frames` per clip when
/// motion modules run: their temporal attention is over frames, small next to the spatial one).
pub fn unet_call_bytes(unet: &Unet2DConditionModel, n: usize, h: usize, w: usize, cpu: bool) -> u64 {
    let (mut h, mut w) = (h, w);
    let mut skips = map_bytes(n, unet.conv_in.weight.dims()[0], h, w);
    let mut peak = 0u64;
    let mut resolutions = Vec::new();
    for block in &unet.down_blocks {
        resolutions.push((h, w));
        for (i, resnet) in block.resnets.iter().enumerate() {
            peak = peak.max(skips + block_bytes(resnet, block.attentions.get(i), n, (h, w), cpu));
            skips += map_bytes(n, resnet.conv1.weight.dims()[0], h, w);
        }
        if !block.downsamplers.is_empty() {
            (h, w) = (h.div_ceil(2), w.div_ceil(2));
            let channels = block.resnets.last().map_or(0, |r| r.conv1.weight.dims()[0]);
            skips += map_bytes(n, channels, h, w);
        }
    }
    for (i, resnet) in unet.mid_block.resnets.iter().enumerate() {
        peak = peak.max(skips + block_bytes(resnet, unet.mid_block.attentions.get(i), n, (h, w), cpu));
    }
    // The up path gives the skips back as it goes; its first resnets see the concatenated input.
    for (level, block) in unet.up_blocks.iter().enumerate() {
        let size = resolutions.get(resolutions.len().saturating_sub(level + 1)).copied().unwrap_or((h, w));
        for (i, resnet) in block.resnets.iter().enumerate() {
            peak = peak.max(skips + block_bytes(resnet, block.attentions.get(i), n, size, cpu));
        }
        skips = skips.saturating_sub(skips / (unet.up_blocks.len() - level) as u64);
    }
    peak
}

/// Activation bytes of decoding one `h` x `w` latent frame with the VAE (frames are decoded one at a time).
pub fn vae_decode_bytes(vae: &AutoencoderKl, h: usize, w: usize, cpu: bool) -> u64 {
    let decoder = &vae.decoder;
    let mut peak = 0u64;
    for resnet in &decoder.mid_block.resnets {
        peak = peak.max(resnet_bytes(resnet, 1, h, w, cpu));
    }
    let channels = decoder.conv_in.weight.dims()[0];
    peak = peak.max(map_bytes(1, channels, h, w) * 4 + score_bytes(1, h * w, h * w, cpu));
    let (mut h, mut w) = (h, w);
    for block in &decoder.up_blocks {
        for resnet in &block.resnets {
            peak = peak.max(resnet_bytes(resnet, 1, h, w, cpu));
        }
        if !block.upsamplers.is_empty() {
            let channels = block.resnets.last().map_or(0, |r| r.conv1.weight.dims()[0]);
            // The nearest-neighbour upsampled map and the convolution's output beside it.
            (h, w) = (h * 2, w * 2);
            peak = peak.max(map_bytes(1, channels, h, w) * 3);
        }
    }
    peak
}

/// What one generation step needs: the weights it uses (already on the device once loaded) and the largest
/// activation set of its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    pub weights: u64,
    pub activations: u64,
}

impl Estimate {
    pub fn total(self) -> u64 {
        self.weights.saturating_add(self.activations)
    }
}

/// The settings of a guided sampling stage, as memory planning sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageShape {
    /// Clips sampled together (1 for videos; the candidate count for the candidates stage).
    pub clips: usize,
    /// Frames per clip (1 for images).
    pub frames: usize,
    /// Latent height and width (pixels / 8).
    pub height: usize,
    pub width: usize,
    pub cfg_batch: CfgBatch,
}

/// The estimate of a guided sampling stage (UNet calls, then decoding every frame one at a time).
pub fn stage_estimate(unet: &VideoUnet, vae: &AutoencoderKl, shape: StageShape, cpu: bool) -> Estimate {
    use burn::module::Module;
    let extra = unet.motion.as_ref().map_or(0, |m| m.num_params() as u64);
    walk_estimate(&unet.unet, extra, vae, shape, cpu)
}

/// [`stage_estimate`] for a UNet walk with `extra_params` parameters of temporal layers beside the 2-D UNet's
/// (motion modules, ModelScope's temporal layers); the activations are the 2-D walk's (temporal layers add
/// attention over the few frames of each pixel, small next to the spatial maps).
pub fn walk_estimate(
    unet: &crate::models::unet::Unet2DConditionModel,
    extra_params: u64,
    vae: &AutoencoderKl,
    shape: StageShape,
    cpu: bool,
) -> Estimate {
    use burn::module::Module;
    let n = shape.cfg_batch.batch(shape.clips, shape.frames);
    let unet_bytes = unet_call_bytes(unet, n, shape.height, shape.width, cpu);
    let decode = vae_decode_bytes(vae, shape.height, shape.width, cpu);
    // The decoded clip (3 x 8h x 8w per frame) stays while the remaining frames decode.
    let frames_out = map_bytes(shape.clips * shape.frames, 3, shape.height * 8, shape.width * 8);
    let params = unet.num_params() as u64 + extra_params + vae.num_params() as u64;
    // The sizes above are f32's; a half-precision device holds half (its statistics and accumulators are
    // f32, but small next to the maps).
    let element = unet
        .devices()
        .first()
        .map_or(ELEMENT_BYTES, |d| burn::tensor::DType::from(d.settings().float_dtype).size() as u64);
    Estimate { weights: params * element, activations: unet_bytes.max(decode + frames_out) / ELEMENT_BYTES * element }
}

/// Gigabytes with one decimal, for messages.
pub fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// The memory a node may use on this machine: an explicit limit (weights + activations), or, on the CPU,
/// the memory the system has available now (for activations: loaded weights are already resident).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// At most this many bytes in all.
    Limit(u64),
    /// This many bytes are free for activations.
    Available(u64),
}

impl Room {
    /// What is left for activations when `weights` are loaded.
    pub fn for_activations(self, weights: u64) -> u64 {
        match self {
            Room::Limit(limit) => limit.saturating_sub(weights),
            Room::Available(free) => free,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Room::Limit(limit) => format!("the memory limit is {} (--memory-limit)", gb(limit)),
            Room::Available(free) => format!("the system has {} available", gb(free)),
        }
    }
}

/// The memory the system has available (Linux: `MemAvailable` of /proc/meminfo), if it can tell.
pub fn system_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_batch_halves_the_images_per_call() {
        assert_eq!(CfgBatch::Together.batch(1, 16), 32);
        assert_eq!(CfgBatch::Sequential.batch(1, 16), 16);
        assert_eq!(CfgBatch::parse("sequential"), Some(CfgBatch::Sequential));
        assert_eq!(CfgBatch::parse("both"), None);
    }

    #[test]
    fn room_counts_weights_only_against_a_limit() {
        assert_eq!(Room::Limit(10).for_activations(4), 6);
        assert_eq!(Room::Limit(3).for_activations(4), 0);
        assert_eq!(Room::Available(10).for_activations(4), 10);
    }
}
