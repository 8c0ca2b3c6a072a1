//! Building blocks shared by diffusers' UNet and VAE: ResnetBlock2D, Downsample2D, Upsample2D, and the
//! spatial self-attention of the VAE mid block. Field names are diffusers' (`norm1`, `conv1`,
//! `time_emb_proj`, `conv_shortcut`, `to_q`, `to_out.0`, ...).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PadMode};
use burn::tensor::{Device, Tensor};

/// A `k`x`k` convolution with "same" padding for odd `k` and the given stride.
pub fn conv2d(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

pub fn group_norm(groups: usize, channels: usize, eps: f64, device: &Device) -> GroupNorm {
    GroupNormConfig::new(groups, channels).with_epsilon(eps).init(device)
}

/// A GroupNorm over `x` [N, C, H, W]: per image when `across_frames` is `None`; with `Some(f)`, N holds
/// clips of `f` frames (clip-major) and each group's statistics span all frames of a clip.
pub fn group_norm_frames(norm: &GroupNorm, x: Tensor<4>, across_frames: Option<usize>) -> Tensor<4> {
    match across_frames {
        Some(f) if f > 1 => {
            let [n, c, h, w] = x.dims();
            let video = x.reshape([n / f, f, c, h * w]).swap_dims(1, 2);
            norm.forward(video).swap_dims(1, 2).reshape([n, c, h, w])
        }
        _ => norm.forward(x),
    }
}

/// diffusers' `ResnetBlock2D` (default "default" time-embedding norm, output scale 1).
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels`: size of the time embedding, or `None` for the VAE's blocks.
    pub fn new(cin: usize, cout: usize, temb_channels: Option<usize>, groups: usize, eps: f64, device: &Device) -> Self {
        ResnetBlock2D {
            norm1: group_norm(groups, cin, eps, device),
            conv1: conv2d(cin, cout, 3, 1, 1, device),
            time_emb_proj: temb_channels.map(|t| LinearConfig::new(t, cout).init(device)),
            norm2: group_norm(groups, cout, eps, device),
            conv2: conv2d(cout, cout, 3, 1, 1, device),
            conv_shortcut: (cin != cout).then(|| conv2d(cin, cout, 1, 1, 0, device)),
        }
    }

    /// `x` [N, C, H, W]; `temb` [N, T] (already per sample; frames folded into N).
    pub fn forward(&self, x: Tensor<4>, temb: Option<Tensor<2>>) -> Tensor<4> {
        self.forward_frames(x, temb, None)
    }

    /// As [`forward`](Self::forward); with `across_frames = Some(f)` the group norms take their statistics
    /// over all `f` frames of each clip (frames folded into N, clip-major), as the original AnimateDiff v1
    /// UNet does with its non-inflated GroupNorm.
    pub fn forward_frames(&self, x: Tensor<4>, temb: Option<Tensor<2>>, across_frames: Option<usize>) -> Tensor<4> {
        let norm = |n: &GroupNorm, t: Tensor<4>| group_norm_frames(n, t, across_frames);
        let mut h = self.conv1.forward(silu(norm(&self.norm1, x.clone())));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(temb));
            let [n, c] = t.dims();
            h = h + t.reshape([n, c, 1, 1]);
        }
        let h = self.conv2.forward(silu(norm(&self.norm2, h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// diffusers' `Downsample2D` with a convolution. The VAE uses `padding = 0` with an asymmetric zero pad
/// (right and bottom by one); the UNet uses `padding = 1`.
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    #[module(skip)]
    pub asymmetric_pad: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, device: &Device) -> Self {
        Downsample2D { conv: conv2d(channels, channels, 3, 2, padding, device), asymmetric_pad: padding == 0 }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.asymmetric_pad { x.pad((0, 1, 0, 1), PadMode::Constant(0.0)) } else { x };
        self.conv.forward(x)
    }
}

/// diffusers' `Upsample2D`: nearest-neighbour x2, then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, device: &Device) -> Self {
        Upsample2D { conv: conv2d(channels, channels, 3, 1, 1, device) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let up = interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h * 2, w * 2]));
        self.conv.forward(up)
    }
}

/// The VAE mid block's single-head spatial self-attention (diffusers `Attention` with `group_norm`,
/// residual connection, heads = 1).
#[derive(Module, Debug)]
pub struct SpatialSelfAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Vec<Linear>,
}

impl SpatialSelfAttention {
    pub fn new(channels: usize, groups: usize, eps: f64, device: &Device) -> Self {
        let linear = || LinearConfig::new(channels, channels).init(device);
        SpatialSelfAttention {
            group_norm: group_norm(groups, channels, eps, device),
            to_q: linear(),
            to_k: linear(),
            to_v: linear(),
            to_out: vec![linear()],
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let t = self.group_norm.forward(x.clone()).reshape([n, c, h * w]).swap_dims(1, 2);
        let q = self.to_q.forward(t.clone()).mul_scalar((c as f64).powf(-0.5));
        let k = self.to_k.forward(t.clone());
        let v = self.to_v.forward(t);
        // One head over the h*w positions, scores within the thread's budget.
        let mut out = crate::models::attention::attention_packed(q, k, v, 1, None, None);
        for proj in &self.to_out {
            out = proj.forward(out);
        }
        out.swap_dims(1, 2).reshape([n, c, h, w]) + x
    }
}
