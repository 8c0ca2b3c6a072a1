//! diffusers' attention stack of the SD UNet: `Attention`, `FeedForward` (GEGLU),
//! `BasicTransformerBlock` and `Transformer2DModel`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, GroupNorm, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::models::blocks::{conv2d, group_norm};

/// Multi-head attention: `to_q`, `to_k`, `to_v` (no bias) and `to_out.0` (with bias).
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Vec<Linear>,
    #[module(skip)]
    pub heads: usize,
}

impl Attention {
    /// `query_dim` -> `heads` x `dim_head`, keys and values from `context_dim`.
    pub fn new(query_dim: usize, context_dim: usize, heads: usize, dim_head: usize, device: &Device) -> Self {
        let inner = heads * dim_head;
        Attention {
            to_q: LinearConfig::new(query_dim, inner).with_bias(false).init(device),
            to_k: LinearConfig::new(context_dim, inner).with_bias(false).init(device),
            to_v: LinearConfig::new(context_dim, inner).with_bias(false).init(device),
            to_out: vec![LinearConfig::new(inner, query_dim).init(device)],
            heads,
        }
    }

    /// `x` [N, L, query_dim]; `context` [N, S, context_dim] (self-attention when `None`).
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        let mut out = scaled_dot_product(q, k, v, self.heads);
        for proj in &self.to_out {
            out = proj.forward(out);
        }
        out
    }
}

/// softmax(q k^T / sqrt(d)) v over `heads` heads; q [N, L, H*d], k and v [N, S, H*d] -> [N, L, H*d]. Scores
/// stay within the thread's budget ([`crate::models::attention`]); q is scaled first, as diffusers does.
pub fn scaled_dot_product(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    let d = q.dims()[2] / heads.max(1);
    crate::models::attention::attention_packed(q.mul_scalar((d as f64).powf(-0.5)), k, v, heads, None, None)
}

/// `GEGLU`: a projection to twice the width, the second half gating the first through GELU.
#[derive(Module, Debug)]
pub struct Geglu {
    pub proj: Linear,
}

impl Geglu {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.proj.forward(x);
        let [n, l, two] = h.dims();
        let half = two / 2;
        let hidden = h.clone().slice([0..n, 0..l, 0..half]);
        let gate = h.slice([0..n, 0..l, half..two]);
        hidden * gelu(gate)
    }
}

/// One entry of `FeedForward.net` (diffusers: [GEGLU, Dropout, Linear]); the enum keeps the indices of
/// the file's keys (`net.0.proj`, `net.2`).
#[derive(Module, Debug)]
pub enum FeedForwardLayer {
    Geglu(Geglu),
    Dropout(Dropout),
    Linear(Linear),
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub net: Vec<FeedForwardLayer>,
}

impl FeedForward {
    pub fn new(dim: usize, mult: usize, device: &Device) -> Self {
        let inner = dim * mult;
        FeedForward {
            net: vec![
                FeedForwardLayer::Geglu(Geglu { proj: LinearConfig::new(dim, inner * 2).init(device) }),
                FeedForwardLayer::Dropout(DropoutConfig::new(0.0).init()),
                FeedForwardLayer::Linear(LinearConfig::new(inner, dim).init(device)),
            ],
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.net.iter().fold(x, |x, layer| match layer {
            FeedForwardLayer::Geglu(g) => g.forward(x),
            FeedForwardLayer::Dropout(_) => x,
            FeedForwardLayer::Linear(l) => l.forward(x),
        })
    }
}

/// `BasicTransformerBlock` with layer norms: self-attention, cross-attention, GEGLU feed-forward.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn new(dim: usize, heads: usize, dim_head: usize, context_dim: usize, device: &Device) -> Self {
        let ln = || LayerNormConfig::new(dim).with_epsilon(1e-5).init(device);
        BasicTransformerBlock {
            norm1: ln(),
            attn1: Attention::new(dim, dim, heads, dim_head, device),
            norm2: ln(),
            attn2: Attention::new(dim, context_dim, heads, dim_head, device),
            norm3: ln(),
            ff: FeedForward::new(dim, 4, device),
        }
    }

    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()), Some(context)) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }

    /// diffusers' `double_self_attention`: the second attention attends over the tokens too (the temporal
    /// transformers of ModelScope T2V, which get no context).
    pub fn forward_double_self(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()), None) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

/// `proj_in`/`proj_out` of a `Transformer2DModel`: 1x1 convolutions (SD 1.x) or linear layers
/// (`use_linear_projection`, SD 2.x).
#[derive(Module, Debug)]
pub enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// `Transformer2DModel` over image features: GroupNorm, projection in, transformer blocks, projection
/// out, residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Projection,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Projection,
}

impl Transformer2DModel {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        heads: usize,
        context_dim: usize,
        layers: usize,
        groups: usize,
        linear_projection: bool,
        device: &Device,
    ) -> Self {
        let dim_head = channels / heads;
        let proj = || {
            if linear_projection {
                Projection::Linear(LinearConfig::new(channels, channels).init(device))
            } else {
                Projection::Conv(conv2d(channels, channels, 1, 1, 0, device))
            }
        };
        Transformer2DModel {
            norm: group_norm(groups, channels, 1e-6, device),
            proj_in: proj(),
            transformer_blocks: (0..layers)
                .map(|_| BasicTransformerBlock::new(channels, heads, dim_head, context_dim, device))
                .collect(),
            proj_out: proj(),
        }
    }

    /// `x` [N, C, H, W], `context` [N, S, context_dim].
    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_tokens = |t: Tensor<4>| t.swap_dims(1, 2).swap_dims(2, 3).reshape([n, h * w, c]);
        let mut t = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
            Projection::Linear(linear) => linear.forward(to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            t = block.forward(t, context.clone());
        }
        let to_image = |t: Tensor<3>| t.reshape([n, h, w, c]).swap_dims(2, 3).swap_dims(1, 2);
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_image(t)),
            Projection::Linear(linear) => to_image(linear.forward(t)),
        };
        out + residual
    }
}
