//! `stepstone bench`: the SD 1.5 + AnimateDiff v2 networks at full size with random weights (no files
//! needed), timed per case, printed as JSON. tools/bench/torch_bench.py runs the same cases in diffusers and
//! tools/bench/compare.sh puts the two side by side (docs/PERFORMANCE.md).

use std::time::Instant;

use anyhow::Context;
use burn::tensor::{Distribution, Int, Tensor};

use super::{DeviceChoice, Precision};
use crate::models::attention::Kernel;
use crate::models::clip::ClipTextConfig;
use crate::models::unet::motion::MotionVersion;
use crate::models::unet::{Motion, UnetConfig, VideoUnet};
use crate::models::vae::VaeConfig;
use crate::pipelines::i4vgen::{self, GuidanceConditioning, Guided};
use crate::pipelines::memory::{self, CfgBatch, StageShape};
use crate::pipelines::noise::{NoiseSource, SeededNoise};
use crate::schedulers::{Ddim, DdimConfig};

/// What `stepstone bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchCase {
    /// One UNet call of batch 2 (classifier-free guidance) at `--size` x `--size` latents.
    Unet,
    /// One video-UNet call (the UNet with AnimateDiff v2 motion modules) of 2 clips (CFG) x `--frames`
    /// frames at `--size` x `--size` latents: batch 32 at the reference 16 frames.
    VideoUnet,
    /// One VAE decode of a `--size` x `--size` latent (8x that in pixels).
    VaeDecode,
    /// The whole I4VGen run: `--frames` candidates, NI-VSDS (p 0.6) and regeneration (strength 1) over
    /// `--steps` DDIM steps each, CFG 7.5, every frame decoded at each stage (the candidate is picked by
    /// index: ImageReward's scoring is not in this case).
    I4vgen,
    /// One CLIP text encode of 77 tokens.
    Clip,
    /// One live preview of a sampling step: 1 x `--frames` latents of `--size` x `--size` read back from the
    /// device and projected to RGB (no VAE), what each step of a node pays while previews are on.
    LatentPreview,
    /// One 3x3 convolution, 320 -> 320 channels, batch 2 at `--size` x `--size` (a first-level resnet
    /// convolution of the UNet step), the way the models run it; reports `gflops`.
    Conv,
    /// The same arithmetic as `conv` as one matrix product, [2 * size^2, 2880] x [2880, 320]: the device's
    /// matmul rate at SD 1.5's shapes; reports `gflops`.
    Matmul,
    /// One first-level self-attention of the UNet step: q, k, v [2, 8, size^2, 40] (batch 2 x 8 heads, head
    /// size 40) on the kernel `--attention` picks; reports `gflops` (both products, 4 x size^4 x 40 per head).
    Attention,
}

/// The first-level convolution the `conv` and `matmul` cases time: channels in and out, kernel side.
const CONV_CASE: (usize, usize, usize) = (320, 320, 3);

/// The first-level self-attention the `attention` case times: batch (CFG), heads, head size.
const ATTENTION_CASE: (usize, usize, usize) = (2, 8, 40);

impl BenchCase {
    fn name(self) -> &'static str {
        match self {
            BenchCase::Unet => "unet",
            BenchCase::VideoUnet => "video-unet",
            BenchCase::VaeDecode => "vae-decode",
            BenchCase::I4vgen => "i4vgen",
            BenchCase::Clip => "clip",
            BenchCase::LatentPreview => "latent-preview",
            BenchCase::Conv => "conv",
            BenchCase::Matmul => "matmul",
            BenchCase::Attention => "attention",
        }
    }

    /// Floating-point operations of one run, for the cases that report a rate.
    fn flops(self, size: usize) -> Option<f64> {
        let (cin, cout, k) = CONV_CASE;
        match self {
            BenchCase::Conv | BenchCase::Matmul => Some(2.0 * (2 * size * size * cin * k * k * cout) as f64),
            BenchCase::Attention => {
                let (batch_heads, tokens, dim) = (ATTENTION_CASE.0 * ATTENTION_CASE.1, size * size, ATTENTION_CASE.2);
                Some(4.0 * (batch_heads * tokens * tokens * dim) as f64)
            }
            _ => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The cases to run (repeatable; all when none is given).
    #[arg(long = "case", value_enum)]
    pub cases: Vec<BenchCase>,
    /// Latent side (pixels / 8) for the UNet and VAE cases.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Frames per clip for the video-UNet and I4VGen cases.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// DDIM steps of each I4VGen stage.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// How guidance runs its branches: `together` (one UNet call of twice the batch) or `sequential`.
    #[arg(long, value_enum, default_value_t = CfgBatch::Together)]
    pub cfg_batch: CfgBatch,
    /// Print memory planning's estimate of each case (`estimated_peak_mb`) without running anything.
    #[arg(long)]
    pub estimate_only: bool,
    /// Untimed runs per case before the timed ones (the first also initialises the random weights).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs per case, after the warm-up runs.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where the networks run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Float precision of weights and activations (the device's default float type; weights are cast at
    /// load). The CPU back-end computes in f32 only. f16 is parity-tested on wgpu (tests/half_precision.rs);
    /// bf16 is not tested.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// The attention kernel: burn's fused one where the device has it, or the reference three-kernel
    /// product in chunks.
    #[arg(long, value_enum, default_value_t = Kernel::Fused)]
    pub attention: Kernel,
    /// The attention score budget in MiB (larger score tensors are computed in chunks).
    #[arg(long, value_name = "MIB", default_value_t = crate::models::attention::DEFAULT_SCORE_BUDGET >> 20)]
    pub score_budget_mb: usize,
}

/// Runs the cases and prints one JSON object.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.size < 8 || !args.size.is_multiple_of(8) {
        anyhow::bail!("--size {}: the latent side must be a multiple of 8 (the UNet halves it three times)", args.size);
    }
    if args.frames == 0 || args.frames > MotionVersion::V2.config().motion_max_seq_length {
        anyhow::bail!("--frames {}: AnimateDiff v2 takes 1 to 32 frames", args.frames);
    }
    let cases = if args.cases.is_empty() {
        vec![BenchCase::Unet, BenchCase::VaeDecode, BenchCase::Clip]
    } else {
        args.cases.clone()
    };
    let device = super::open_device(args.device, args.dtype)?;
    let mut results = Vec::new();
    for case in cases {
        let budget = args.score_budget_mb.saturating_mul(1 << 20);
        let (times, estimate) = crate::models::attention::with_kernel(args.attention, || {
            crate::models::attention::with_score_budget(budget, || run_case(case, &args, &device))
        })
        .with_context(|| format!("bench case {}", case.name()))?;
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        // No runs with --estimate-only.
        let median = sorted.get(sorted.len() / 2).copied();
        let mut entry = serde_json::json!({
            "case": case.name(),
            "size": args.size,
            "runs_ms": times,
            "min_ms": sorted.first().copied(),
            "median_ms": median,
        });
        if let (Some(flops), Some(min)) = (case.flops(args.size), sorted.first()) {
            entry["gflops"] = ((flops / (min / 1000.0) / 1e9 * 10.0).round() / 10.0).into();
        }
        if matches!(case, BenchCase::VideoUnet | BenchCase::I4vgen) {
            entry["frames"] = args.frames.into();
        }
        if case == BenchCase::I4vgen {
            entry["steps"] = args.steps.into();
        }
        // burn's pools keep their pages for reuse, so what is reserved after the runs is about the peak.
        if let Some(usage) = device.memory_pool_usage() {
            entry["device_reserved_mb"] = (usage.bytes_reserved as f64 / 1e6).round().into();
        }
        if let Some(e) = estimate {
            entry["estimated_peak_mb"] = (e.total() as f64 / 1e6).round().into();
            entry["estimated_weights_mb"] = (e.weights as f64 / 1e6).round().into();
        }
        results.push(entry);
    }
    let report = serde_json::json!({
        "device": args.device.name(),
        "adapter": adapter_name(&device),
        "implementation": "stepstone",
        "dtype": args.dtype.name(),
        "cfg_batch": args.cfg_batch.name(),
        "attention": args.attention.name(),
        "score_budget_mb": args.score_budget_mb,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "weights": "random (full-size SD 1.5 configurations)",
        "peak_rss_kb": peak_rss_kb(),
        "version": env!("CARGO_PKG_VERSION"),
        "commit": commit(),
        "cases": results,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Milliseconds of each timed run (every run ends by reading the output back, so the device has finished),
/// and memory planning's estimate of the case's peak (weights + activations) where it has one.
fn run_case(
    case: BenchCase,
    args: &BenchArgs,
    device: &burn::tensor::Device,
) -> anyhow::Result<(Vec<f64>, Option<memory::Estimate>)> {
    use burn::module::Module;
    let (size, repeat) = (args.size, args.repeat.max(1));
    let cpu = crate::models::is_cpu(device);
    let weights = |params: usize| params as u64 * memory::ELEMENT_BYTES;
    let cfg_batch = args.cfg_batch;
    let normal = Distribution::Normal(0.0, 1.0);
    let time = |f: &dyn Fn() -> anyhow::Result<usize>| -> anyhow::Result<Vec<f64>> {
        if args.estimate_only {
            return Ok(Vec::new());
        }
        for _ in 0..args.warmup {
            f()?; // weights are initialised on first use
        }
        (0..repeat)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f()?);
                Ok(start.elapsed().as_secs_f64() * 1000.0)
            })
            .collect()
    };
    Ok(match case {
        BenchCase::Unet => {
            let unet = UnetConfig::default().init(device)?;
            let sample = Tensor::<4>::random([2, 4, size, size], normal, device);
            let width = unet.cross_attention_dim().unwrap_or(UnetConfig::default().cross_attention_dim);
            let context = Tensor::<3>::random([2, 77, width], normal, device);
            let estimate = memory::Estimate {
                weights: weights(unet.num_params()),
                activations: memory::unet_call_bytes(&unet, 2, size, size, cpu),
            };
            let times = time(&|| Ok(read_back(unet.forward(sample.clone(), &[500.0, 500.0], context.clone()))))?;
            (times, Some(estimate))
        }
        BenchCase::VideoUnet => {
            let unet = UnetConfig::default().init(device)?;
            let motion = MotionVersion::V2.config().init(device)?;
            let width = unet.cross_attention_dim().unwrap_or(UnetConfig::default().cross_attention_dim);
            let video = VideoUnet::new(unet, Some(motion))?;
            let sample = Tensor::<5>::random([2, 4, args.frames, size, size], normal, device);
            let context = Tensor::<3>::random([2, 77, width], normal, device);
            let estimate = memory::Estimate {
                weights: weights(video.num_params()),
                activations: memory::unet_call_bytes(&video.unet, 2 * args.frames, size, size, cpu),
            };
            let run = || Ok(read_back(video.forward(sample.clone(), &[500.0, 500.0], context.clone(), Motion::On)?));
            (time(&run)?, Some(estimate))
        }
        BenchCase::VaeDecode => {
            let vae = VaeConfig::default().init(device)?;
            let z = Tensor::<4>::random([1, 4, size, size], normal, device);
            let estimate = memory::Estimate {
                weights: weights(vae.num_params()),
                activations: memory::vae_decode_bytes(&vae, size, size, cpu),
            };
            (time(&|| Ok(read_back(vae.decode(z.clone()))))?, Some(estimate))
        }
        BenchCase::LatentPreview => {
            let z = Tensor::<5>::random([1, 4, args.frames, size, size], normal, device);
            let run = || {
                let images = crate::pipelines::preview::latent_rgb(&z).context("4-channel latents")?;
                Ok(images.len())
            };
            (time(&run)?, None)
        }
        BenchCase::Clip => {
            let clip = ClipTextConfig::default().init(device)?;
            let ids = Tensor::<2, Int>::from_ints([[49406i64; 77]], device);
            (time(&|| Ok(read_back(clip.forward(ids.clone()))))?, None)
        }
        BenchCase::Conv => {
            let (cin, cout, k) = CONV_CASE;
            let conv = crate::models::blocks::conv2d(cin, cout, k, 1, k / 2, device);
            let x = Tensor::<4>::random([2, cin, size, size], normal, device);
            (time(&|| Ok(read_back(crate::models::blocks::conv_forward(&conv, x.clone()))))?, None)
        }
        BenchCase::Matmul => {
            let (cin, cout, k) = CONV_CASE;
            let a = Tensor::<2>::random([2 * size * size, cin * k * k], normal, device);
            let b = Tensor::<2>::random([cin * k * k, cout], normal, device);
            (time(&|| Ok(read_back(a.clone().matmul(b.clone()))))?, None)
        }
        BenchCase::Attention => {
            let (batch, heads, dim) = ATTENTION_CASE;
            let qkv = || Tensor::<4>::random([batch, heads, size * size, dim], normal, device);
            let (q, k, v) = (qkv(), qkv(), qkv());
            let divisor = Some((dim as f64).sqrt());
            let run =
                || Ok(read_back(crate::models::attention::attention(q.clone(), k.clone(), v.clone(), divisor, None)));
            (time(&run)?, None)
        }
        BenchCase::I4vgen => {
            let unet = UnetConfig::default().init(device)?;
            let width = unet.cross_attention_dim().unwrap_or(UnetConfig::default().cross_attention_dim);
            let video = VideoUnet::new(unet, Some(MotionVersion::V2.config().init(device)?))?;
            let image_unet = VideoUnet::new(video.unet.clone(), None)?;
            let vae = VaeConfig::default().init(device)?;
            let text = GuidanceConditioning::text(
                Tensor::<3>::random([1, 77, width], normal, device),
                Tensor::<3>::random([1, 77, width], normal, device),
            );
            let mut ddim = Ddim::new(DdimConfig::animatediff())?;
            ddim.set_timesteps(args.steps)?;
            let shape = StageShape { clips: 1, frames: args.frames, height: size, width: size, cfg_batch };
            let estimate = memory::stage_estimate(&video, &vae, shape, cpu);
            let run = || -> anyhow::Result<usize> {
                let f = args.frames;
                let mut noise = SeededNoise::new(0);
                let mut go = |_: crate::pipelines::i4vgen::StageProgress<'_>| std::ops::ControlFlow::Continue(());
                let images = Guided::new(&image_unet, &text, 7.5).with_cfg_batch(cfg_batch);
                let first = noise.normal("candidates", [1, 4, f, size, size], device)?;
                let candidates = i4vgen::candidates(&images, &ddim, first, &mut go)?;
                read_back(i4vgen::decode(&vae, candidates.clone()));
                let still = i4vgen::static_video(&candidates, 0, f)?;
                let model = Guided::new(&video, &text, 7.5).with_cfg_batch(cfg_batch);
                let eps = noise.normal("ni_vsds", still.dims(), device)?;
                let z = i4vgen::ni_vsds(&model, &ddim, still, eps, 0.6, &[10.0, 10.0, 10.0, 1.0], &mut go)?;
                read_back(i4vgen::decode(&vae, z.clone()));
                let eps = noise.normal("regenerate", z.dims(), device)?;
                let z = i4vgen::regenerate(&model, &ddim, z, eps, 1.0, &mut go)?;
                Ok(read_back(i4vgen::decode(&vae, z)))
            };
            (time(&run)?, Some(estimate))
        }
    })
}

fn read_back<const D: usize>(t: Tensor<D>) -> usize {
    t.to_data().num_elements()
}

/// The GPU's name as its back-end reports it (`None` on the CPU).
fn adapter_name(device: &burn::tensor::Device) -> Option<String> {
    if crate::models::is_cpu(device) {
        return None;
    }
    device.identity().map(|id| id.name.to_string())
}

/// The process's peak resident set (Linux), in KiB.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The git commit of the working directory, when it is a checkout.
fn commit() -> Option<String> {
    let out = std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
