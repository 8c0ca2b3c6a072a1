//! `stepstone bench`: the SD 1.5 + AnimateDiff v2 networks at full size with random weights (no files
//! needed), timed per case, printed as JSON. tools/bench/torch_bench.py runs the same cases in diffusers and
//! tools/bench/compare.sh puts the two side by side (docs/PERFORMANCE.md).

use std::time::Instant;

use anyhow::Context;
use burn::tensor::{Distribution, Int, Tensor};

use super::DeviceChoice;
use crate::models::attention::Kernel;
use crate::models::clip::ClipTextConfig;
use crate::models::unet::motion::MotionVersion;
use crate::models::unet::{Motion, UnetConfig, VideoUnet};
use crate::models::vae::VaeConfig;

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
    /// One CLIP text encode of 77 tokens.
    Clip,
}

impl BenchCase {
    fn name(self) -> &'static str {
        match self {
            BenchCase::Unet => "unet",
            BenchCase::VideoUnet => "video-unet",
            BenchCase::VaeDecode => "vae-decode",
            BenchCase::Clip => "clip",
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
    /// Frames per clip for the video-UNet case.
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Timed runs per case, after one untimed warm-up run (which also initialises the random weights).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where the networks run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Float precision of weights and activations. The CPU back-end computes in f32 only.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// The attention kernel: burn's fused one where the device has it, or the reference three-kernel
    /// product in chunks.
    #[arg(long, value_enum, default_value_t = AttentionArg::Fused)]
    pub attention: AttentionArg,
    /// The attention score budget in MiB (larger score tensors are computed in chunks).
    #[arg(long, value_name = "MIB", default_value_t = crate::models::attention::DEFAULT_SCORE_BUDGET >> 20)]
    pub score_budget_mb: usize,
}

/// `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// `--attention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttentionArg {
    Fused,
    Reference,
}

impl AttentionArg {
    fn kernel(self) -> Kernel {
        match self {
            AttentionArg::Fused => Kernel::Fused,
            AttentionArg::Reference => Kernel::Reference,
        }
    }
}

/// Runs the cases and prints one JSON object.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.size < 8 || args.size % 8 != 0 {
        anyhow::bail!("--size {}: the latent side must be a multiple of 8 (the UNet halves it three times)", args.size);
    }
    if args.frames == 0 || args.frames > MotionVersion::V2.config().motion_max_seq_length {
        anyhow::bail!("--frames {}: AnimateDiff v2 takes 1 to 32 frames", args.frames);
    }
    if args.dtype != Precision::F32 {
        anyhow::bail!(
            "--dtype {}: this build computes in f32 only (half precision on the GPU back-ends is not done yet)",
            args.dtype.name()
        );
    }
    let cases = if args.cases.is_empty() {
        vec![BenchCase::Unet, BenchCase::VaeDecode, BenchCase::Clip]
    } else {
        args.cases.clone()
    };
    let device = args.device.device();
    let mut results = Vec::new();
    for case in cases {
        let budget = args.score_budget_mb.saturating_mul(1 << 20);
        let times = crate::models::attention::with_kernel(args.attention.kernel(), || {
            crate::models::attention::with_score_budget(budget, || run_case(case, &args, &device))
        })
        .with_context(|| format!("bench case {}", case.name()))?;
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let mut entry = serde_json::json!({
            "case": case.name(),
            "size": args.size,
            "runs_ms": times,
            "min_ms": sorted[0],
            "median_ms": median,
        });
        if case == BenchCase::VideoUnet {
            entry["frames"] = args.frames.into();
        }
        results.push(entry);
    }
    let report = serde_json::json!({
        "device": format!("{:?}", args.device).to_lowercase(),
        "implementation": "stepstone",
        "dtype": args.dtype.name(),
        "attention": match args.attention { AttentionArg::Fused => "fused", AttentionArg::Reference => "reference" },
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

/// Milliseconds of each timed run; every run ends by reading the output back, so the device has finished.
fn run_case(case: BenchCase, args: &BenchArgs, device: &burn::tensor::Device) -> anyhow::Result<Vec<f64>> {
    let (size, repeat) = (args.size, args.repeat.max(1));
    let normal = Distribution::Normal(0.0, 1.0);
    let time = |f: &dyn Fn() -> anyhow::Result<usize>| -> anyhow::Result<Vec<f64>> {
        f()?; // warm-up: weights are initialised on first use
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
            time(&|| Ok(read_back(unet.forward(sample.clone(), &[500.0, 500.0], context.clone()))))?
        }
        BenchCase::VideoUnet => {
            let unet = UnetConfig::default().init(device)?;
            let motion = MotionVersion::V2.config().init(device)?;
            let width = unet.cross_attention_dim().unwrap_or(UnetConfig::default().cross_attention_dim);
            let video = VideoUnet::new(unet, Some(motion))?;
            let sample = Tensor::<5>::random([2, 4, args.frames, size, size], normal, device);
            let context = Tensor::<3>::random([2, 77, width], normal, device);
            time(&|| Ok(read_back(video.forward(sample.clone(), &[500.0, 500.0], context.clone(), Motion::On)?)))?
        }
        BenchCase::VaeDecode => {
            let vae = VaeConfig::default().init(device)?;
            let z = Tensor::<4>::random([1, 4, size, size], normal, device);
            time(&|| Ok(read_back(vae.decode(z.clone()))))?
        }
        BenchCase::Clip => {
            let clip = ClipTextConfig::default().init(device)?;
            let ids = Tensor::<2, Int>::from_ints([[49406i64; 77]], device);
            time(&|| Ok(read_back(clip.forward(ids.clone()))))?
        }
    })
}

fn read_back<const D: usize>(t: Tensor<D>) -> usize {
    t.to_data().num_elements()
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
