//! `stepstone bench`: the SD 1.5 networks at full size with random weights (no files needed), timed per case,
//! printed as JSON. A first version of issue 12's benchmark: CPU or wgpu, f32; the cases of the 2D UNet, the
//! VAE decode and the CLIP text encoder.

use std::time::Instant;

use anyhow::Context;
use burn::tensor::{Distribution, Int, Tensor};

use super::DeviceChoice;
use crate::models::clip::ClipTextConfig;
use crate::models::unet::UnetConfig;
use crate::models::vae::VaeConfig;

/// What `stepstone bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchCase {
    /// One UNet call of batch 2 (classifier-free guidance) at `--size` x `--size` latents.
    Unet,
    /// One VAE decode of a `--size` x `--size` latent (8x that in pixels).
    VaeDecode,
    /// One CLIP text encode of 77 tokens.
    Clip,
}

impl BenchCase {
    fn name(self) -> &'static str {
        match self {
            BenchCase::Unet => "unet",
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
    /// Timed runs per case, after one untimed warm-up run (which also initialises the random weights).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Where the networks run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// The attention score budget in MiB (larger score tensors are computed in chunks).
    #[arg(long, value_name = "MIB", default_value_t = crate::models::attention::DEFAULT_SCORE_BUDGET >> 20)]
    pub score_budget_mb: usize,
}

/// Runs the cases and prints one JSON object.
pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.size < 8 || args.size % 8 != 0 {
        anyhow::bail!("--size {}: the latent side must be a multiple of 8 (the UNet halves it three times)", args.size);
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
        let times = crate::models::attention::with_score_budget(budget, || {
            run_case(case, args.size, args.repeat.max(1), &device)
        })
        .with_context(|| format!("bench case {}", case.name()))?;
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        results.push(serde_json::json!({
            "case": case.name(),
            "size": args.size,
            "runs_ms": times,
            "min_ms": sorted[0],
            "median_ms": median,
        }));
    }
    let report = serde_json::json!({
        "device": format!("{:?}", args.device).to_lowercase(),
        "dtype": "f32",
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
fn run_case(case: BenchCase, size: usize, repeat: usize, device: &burn::tensor::Device) -> anyhow::Result<Vec<f64>> {
    let normal = Distribution::Normal(0.0, 1.0);
    let time = |f: &dyn Fn() -> usize| -> Vec<f64> {
        let _ = f(); // warm-up: weights are initialised on first use
        (0..repeat)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect()
    };
    Ok(match case {
        BenchCase::Unet => {
            let unet = UnetConfig::default().init(device)?;
            let sample = Tensor::<4>::random([2, 4, size, size], normal, device);
            let width = unet.cross_attention_dim().unwrap_or(UnetConfig::default().cross_attention_dim);
            let context = Tensor::<3>::random([2, 77, width], normal, device);
            time(&|| read_back(unet.forward(sample.clone(), &[500.0, 500.0], context.clone())))
        }
        BenchCase::VaeDecode => {
            let vae = VaeConfig::default().init(device)?;
            let z = Tensor::<4>::random([1, 4, size, size], normal, device);
            time(&|| read_back(vae.decode(z.clone())))
        }
        BenchCase::Clip => {
            let clip = ClipTextConfig::default().init(device)?;
            let ids = Tensor::<2, Int>::from_ints([[49406i64; 77]], device);
            time(&|| read_back(clip.forward(ids.clone())))
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
