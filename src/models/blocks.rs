//! Building blocks shared by diffusers' UNet and VAE: ResnetBlock2D, Downsample2D, Upsample2D, and the
//! spatial self-attention of the VAE mid block. Field names are diffusers' (`norm1`, `conv1`,
//! `time_emb_proj`, `conv_shortcut`, `to_q`, `to_out.0`, ...).

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, PadMode};
use burn::tensor::{Device, Tensor, TensorData};

/// A `k`x`k` convolution with "same" padding for odd `k` and the given stride.
pub fn conv2d(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// `conv.forward(x)`; on the CPU through stepstone-kernels' convolution (im2col in tiles of output rows,
/// each tile's product written in place). Measured on 2 cores at SD 1.5 / VAE shapes (docs/PERFORMANCE.md):
/// burn flex's tiled convolution reaches 100-165 GFLOP/s and re-flattens the weight on one thread per call
/// (1280 channels at 8x8: 62 ms), the kernel 210-285 GFLOP/s, as fast as PyTorch's (512 channels at 64x64:
/// flex 124 ms, kernel 70, PyTorch 61; 128 at 512x512: 730 / 366 / 378). GPU devices, grouped or dilated
/// convolutions and "same" padding keep burn's convolution.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    match cpu_conv_dims(conv, x.dims()) {
        Some(dims) if super::is_cpu(&x.device()) => cpu_conv(conv, x, dims),
        _ => conv.forward(x),
    }
}

/// The kernel's sizes for `conv` over `x` [N, C, H, W], or `None` where burn's convolution runs.
fn cpu_conv_dims(conv: &Conv2d, [n, c, h, w]: [usize; 4]) -> Option<stepstone_kernels::ConvDims> {
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return None,
    };
    let [out_channels, in_channels, _, _] = conv.weight.dims();
    if conv.groups != 1 || conv.dilation != [1, 1] || in_channels != c {
        return None;
    }
    let dims = stepstone_kernels::ConvDims {
        images: n,
        in_channels,
        height: h,
        width: w,
        out_channels,
        kernel: conv.kernel_size,
        stride: conv.stride,
        padding: [top, left, bottom, right],
    };
    dims.output().is_ok().then_some(dims)
}

/// The scratch bytes [`conv_forward`] adds for `conv` over `n` images of `h` x `w` on the CPU, for memory
/// planning: the input read out as one buffer and the kernel's column tiles (nothing where burn's
/// convolution runs).
pub fn cpu_conv_scratch_bytes(conv: &Conv2d, n: usize, h: usize, w: usize) -> u64 {
    let channels = conv.weight.dims()[1];
    cpu_conv_dims(conv, [n, channels, h, w]).map_or(0, |dims| {
        let input = n * channels * h * w * std::mem::size_of::<f32>();
        (input + stepstone_kernels::conv2d_scratch_bytes(&dims, super::attention::cpu_threads())) as u64
    })
}

/// [`conv_forward`] on the CPU: the kernel reads burn flex's buffers in place (the input, the weight and
/// the bias are not copied; copying a 1280-channel weight for every call cost more than the 8x8 convolution
/// itself). Tensors that are not contiguous are made so first; what is not an f32 flex tensor (not
/// expected: the CPU back-end computes in f32) takes burn's convolution.
fn cpu_conv(conv: &Conv2d, x: Tensor<4>, dims: stepstone_kernels::ConvDims) -> Tensor<4> {
    let out = {
        let (input, weight) = (flex_f32(x.clone()), flex_f32(conv.weight.val()));
        let bias = conv.bias.as_ref().map(|b| flex_f32(b.val()));
        let slices = (
            input.as_ref().and_then(FlexTensor::as_slice::<f32>),
            weight.as_ref().and_then(FlexTensor::as_slice::<f32>),
            bias.as_ref().map(|b| b.as_ref().and_then(FlexTensor::as_slice::<f32>)),
        );
        match slices {
            (Some(x), Some(weight), None) => stepstone_kernels::conv2d(x, weight, None, dims).ok(),
            (Some(x), Some(weight), Some(Some(bias))) => stepstone_kernels::conv2d(x, weight, Some(bias), dims).ok(),
            _ => None,
        }
    };
    match (out, dims.output()) {
        (Some(out), Ok([oh, ow])) => {
            Tensor::from_data(TensorData::new(out, [dims.images, dims.out_channels, oh, ow]), &x.device())
        }
        _ => conv.forward(x),
    }
}

/// `t`'s flex tensor (contiguous: copied only if it was not), or `None` for a tensor of another back-end.
fn flex_f32<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    match t.try_into_primitive::<Flex>() {
        Ok(flex) if flex.is_contiguous() => Some(flex),
        Ok(flex) => Some(flex.to_contiguous()),
        Err(_) => None,
    }
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
    pub fn new(
        cin: usize,
        cout: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
        device: &Device,
    ) -> Self {
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
        let mut h = conv_forward(&self.conv1, silu(norm(&self.norm1, x.clone())));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(temb));
            let [n, c] = t.dims();
            h = h + t.reshape([n, c, 1, 1]);
        }
        let h = conv_forward(&self.conv2, silu(norm(&self.norm2, h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv_forward(conv, x),
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
        conv_forward(&self.conv, x)
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
        conv_forward(&self.conv, up)
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_difference(a: Tensor<4>, b: Tensor<4>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let d: Vec<f32> = (a - b).abs().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        d.into_iter().fold(0.0, |m, v| if v.is_nan() || m.is_nan() { f32::NAN } else { m.max(v) })
    }

    /// The CPU kernel equals burn's convolution on awkward shapes: non-square images, odd sizes, stride 2,
    /// asymmetric and zero padding, 1x1 (the resnet shortcut), 1x3 / 5x5 / 3x3 kernels, with and without
    /// bias, and an image large enough for several column tiles.
    #[test]
    fn the_cpu_convolution_equals_burns() {
        let device = Device::flex();
        type Case = (usize, usize, [usize; 2], [usize; 2], (usize, usize, usize, usize), [usize; 2], bool);
        let cases: [Case; 8] = [
            (3, 5, [3, 3], [1, 1], (1, 1, 1, 1), [7, 5], true),
            (4, 6, [3, 3], [2, 2], (1, 1, 1, 1), [9, 6], true),
            (2, 3, [3, 3], [2, 2], (0, 0, 1, 1), [8, 8], false),
            (5, 2, [5, 5], [1, 1], (2, 2, 2, 2), [6, 11], true),
            (3, 4, [1, 3], [1, 1], (0, 1, 0, 1), [4, 13], true),
            (2, 2, [3, 3], [1, 1], (0, 0, 0, 0), [5, 5], true),
            (6, 3, [1, 1], [1, 1], (0, 0, 0, 0), [5, 7], true),
            (40, 3, [3, 3], [1, 1], (1, 1, 1, 1), [45, 61], true),
        ];
        for (cin, cout, kernel, stride, (top, left, bottom, right), [h, w], bias) in cases {
            let conv = Conv2dConfig::new([cin, cout], kernel)
                .with_stride(stride)
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<4>::random([3, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
            let dims = cpu_conv_dims(&conv, x.dims());
            let case = format!("{cin}->{cout} k{kernel:?} s{stride:?} pad {top},{left},{bottom},{right} {h}x{w}");
            assert!(dims.is_some(), "{case}: the kernel must take it");
            assert!(max_difference(conv.forward(x.clone()), conv_forward(&conv, x)) < 1e-4, "{case}");
        }
    }

    /// Grouped convolutions are not the kernel's: burn's runs them, with the same result as always.
    #[test]
    fn grouped_convolutions_keep_burns() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([4, 4], [3, 3]).with_groups(2).init(&device);
        let x = Tensor::<4>::random([1, 4, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        assert!(cpu_conv_dims(&conv, x.dims()).is_none());
        assert!(max_difference(conv.forward(x.clone()), conv_forward(&conv, x)) == 0.0);
    }
}
