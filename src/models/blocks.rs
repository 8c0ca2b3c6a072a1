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

/// Output pixels up to which [`conv_forward`] takes the im2col + one matmul path on the CPU. Measured on
/// 2 cores at SD 1.5 shapes (docs/PERFORMANCE.md): burn flex's own tiled convolution re-flattens the
/// weight on one thread for every call, which dominates where the image is small and the channels many
/// (1280 channels at 8x8: 62 ms flex, 21 ms im2col; 4x4: 69 / 11 ms; 640 at 16x16: 26 / 20 ms); from
/// 32x32 up flex's tiles are as fast or faster (320 at 64x64: 101 / 152 ms).
pub const CPU_IM2COL_MAX_PIXELS: usize = 256;

/// The most bytes of im2col columns [`conv_forward`] holds at once; larger batches go in chunks.
pub const CPU_IM2COL_BUDGET: usize = 64 << 20;

/// `conv.forward(x)`, on the CPU through im2col and a single matrix product where that is faster (see
/// [`CPU_IM2COL_MAX_PIXELS`]); the same convolution everywhere else.
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_forward_within(conv, x, CPU_IM2COL_BUDGET)
}

/// How [`conv_forward`] runs a convolution on the CPU by im2col: the zero padding (left, right, top,
/// bottom), the output size, and how many images' columns at a time.
struct Im2colPlan {
    pad: (usize, usize, usize, usize),
    out: [usize; 2],
    chunk: usize,
    column_bytes: usize,
}

/// The im2col plan for `conv` over `n` images of `h` x `w` within `budget` bytes of columns, or `None`
/// where burn's own kernel runs (grouped, dilated, 1x1, "same"-padded, or more than
/// [`CPU_IM2COL_MAX_PIXELS`] output pixels).
fn im2col_plan(conv: &Conv2d, [n, h, w]: [usize; 3], budget: usize) -> Option<Im2colPlan> {
    let [kh, kw] = conv.kernel_size;
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return None,
    };
    let [sh, sw] = conv.stride;
    let (padded_h, padded_w) = (h + top + bottom, w + left + right);
    if conv.groups != 1 || conv.dilation != [1, 1] || kh * kw == 1 || padded_h < kh || padded_w < kw {
        return None;
    }
    let (oh, ow) = ((padded_h - kh) / sh + 1, (padded_w - kw) / sw + 1);
    if oh * ow > CPU_IM2COL_MAX_PIXELS {
        return None;
    }
    let cin = conv.weight.dims()[1];
    let per_image = cin * kh * kw * oh * ow * std::mem::size_of::<f32>();
    let chunk = (budget / per_image.max(1)).clamp(1, n.max(1));
    Some(Im2colPlan { pad: (left, right, top, bottom), out: [oh, ow], chunk, column_bytes: chunk * per_image })
}

/// The scratch bytes [`conv_forward`] adds for `conv` over `n` images of `h` x `w` on the CPU (its im2col
/// columns; nothing where burn's kernel runs), for memory planning.
pub fn cpu_conv_scratch_bytes(conv: &Conv2d, n: usize, h: usize, w: usize) -> u64 {
    im2col_plan(conv, [n, h, w], CPU_IM2COL_BUDGET).map_or(0, |plan| plan.column_bytes as u64)
}

fn conv_forward_within(conv: &Conv2d, x: Tensor<4>, budget: usize) -> Tensor<4> {
    let [n, _, h, w] = x.dims();
    let plan = match im2col_plan(conv, [n, h, w], budget) {
        Some(plan) if super::is_cpu(&x.device()) => plan,
        _ => return conv.forward(x),
    };
    let ([kh, kw], [sh, sw], [oh, ow], chunk) = (conv.kernel_size, conv.stride, plan.out, plan.chunk);
    let (left, right, top, bottom) = plan.pad;
    let x = if left + right + top + bottom > 0 { x.pad(plan.pad, PadMode::Constant(0.0)) } else { x };
    let weight = conv.weight.val();
    let [cout, cin, _, _] = weight.dims();
    let weight = weight.reshape([1, cout, cin * kh * kw]);
    let product = |part: Tensor<4>| {
        let images = part.dims()[0];
        weight.clone().matmul(im2col(part, [kh, kw], [sh, sw], [oh, ow])).reshape([images, cout, oh, ow])
    };
    let y = if chunk >= n {
        product(x)
    } else {
        Tensor::cat(
            (0..n).step_by(chunk).map(|start| product(x.clone().slice([start..(start + chunk).min(n)]))).collect(),
            0,
        )
    };
    match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, cout, 1, 1]),
        None => y,
    }
}

/// The columns of a padded `x` [N, C, H, W] for a `kernel` at `stride` with `out` output pixels:
/// [N, C * kh * kw, oh * ow], rows in the order of a [C, kh, kw] weight.
fn im2col(x: Tensor<4>, kernel: [usize; 2], stride: [usize; 2], out: [usize; 2]) -> Tensor<3> {
    use burn::tensor::Slice;
    let [n, c, _, _] = x.dims();
    let ([kh, kw], [sh, sw], [oh, ow]) = (kernel, stride, out);
    let mut taps = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        for j in 0..kw {
            let rows = Slice::new(i as isize, Some((i + (oh - 1) * sh + 1) as isize), sh as isize);
            let cols = Slice::new(j as isize, Some((j + (ow - 1) * sw + 1) as isize), sw as isize);
            let all = Slice::new(0, None, 1);
            taps.push(x.clone().slice([all, all, rows, cols]).reshape([n, c, 1, oh * ow]));
        }
    }
    Tensor::cat(taps, 2).reshape([n, c * kh * kw, oh * ow])
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

    /// The CPU's im2col path equals burn's convolution on awkward shapes: non-square images, odd sizes,
    /// stride 2, asymmetric and zero padding, 1x3 / 5x5 / 3x3 kernels, with and without bias, and batches
    /// split into chunks by a small budget (the remainder chunk smaller than the rest).
    #[test]
    fn the_cpu_im2col_convolution_equals_burns() {
        let device = Device::flex();
        let cases: [(usize, usize, [usize; 2], [usize; 2], (usize, usize, usize, usize), [usize; 2], bool); 6] = [
            (3, 5, [3, 3], [1, 1], (1, 1, 1, 1), [7, 5], true),
            (4, 6, [3, 3], [2, 2], (1, 1, 1, 1), [9, 6], true),
            (2, 3, [3, 3], [2, 2], (0, 0, 1, 1), [8, 8], false),
            (5, 2, [5, 5], [1, 1], (2, 2, 2, 2), [6, 11], true),
            (3, 4, [1, 3], [1, 1], (0, 1, 0, 1), [4, 13], true),
            (2, 2, [3, 3], [1, 1], (0, 0, 0, 0), [5, 5], true),
        ];
        for (cin, cout, kernel, stride, (top, left, bottom, right), [h, w], bias) in cases {
            let conv = Conv2dConfig::new([cin, cout], kernel)
                .with_stride(stride)
                .with_padding(PaddingConfig2d::Explicit(top, left, bottom, right))
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<4>::random([5, cin, h, w], Distribution::Normal(0.0, 1.0), &device);
            let expected = conv.forward(x.clone());
            let whole = conv_forward(&conv, x.clone());
            // A budget of two images' columns: chunks of 2, 2 and 1.
            let per_image = cin * kernel[0] * kernel[1] * expected.dims()[2] * expected.dims()[3] * 4;
            let chunked = conv_forward_within(&conv, x, 2 * per_image);
            let case = format!("{cin}->{cout} k{kernel:?} s{stride:?} pad {top},{left},{bottom},{right} {h}x{w}");
            assert!(max_difference(expected.clone(), whole) < 1e-5, "{case}: whole batch");
            assert!(max_difference(expected, chunked) < 1e-5, "{case}: chunked");
        }
    }

    /// Larger images than [`CPU_IM2COL_MAX_PIXELS`] keep burn's own kernel; the result is the same either way.
    #[test]
    fn large_images_keep_burns_convolution() {
        let device = Device::flex();
        let conv = conv2d(2, 3, 3, 1, 1, &device);
        let x = Tensor::<4>::random([1, 2, 17, 16], Distribution::Normal(0.0, 1.0), &device);
        assert!(17 * 16 > CPU_IM2COL_MAX_PIXELS);
        assert!(max_difference(conv.forward(x.clone()), conv_forward(&conv, x)) == 0.0);
    }
}
