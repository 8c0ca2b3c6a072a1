//! I4VGen's claims, checked on the trained demo world (assets/demo-models: sd15-tiny, mm_tiny_v2.ckpt and
//! ImageReward-tiny, trained by tools/demo_world/train.py on the procedural scenes of tools/demo_world/world.py).
//! Functional tests, not parity: a pixel-statistics checker below reads which of the world's object colours an
//! image shows (and where), and the tests compare what the method does against what it claims:
//! - the reward-selected anchor fits the prompt more often than a candidate taken at random;
//! - NI-VSDS turns the static video into one that moves, the regenerated clip keeps the anchor's subject;
//! - the named object is in the final frames, for I4VGen and for plain text-to-video (the toy version of the
//!   paper's fidelity comparison; the table is printed and recorded in docs/DEMO-WORLD.md).
//!
//! Every run is seeded, so the numbers are the same on every run of the same weights and device. The whole
//! procedure runs once per test binary (shared by the tests), at the demo preset's settings (~46 s a prompt on
//! 2 CPU threads). `DEMO_WORLD_DUMP=dir` writes each prompt's candidates and final frames as PNG strips;
//! `DEMO_WORLD_PROMPTS=n` runs only the first n prompts (for looking, not for the assertions).
//!
//! On the weights of commit 73d0529 (VAE fine-tuned towards the objects, UNet with cross-attention at both levels)
//! the NI-VSDS and final-frame tests hold; the reward test is ignored: 5 prompts get 16/16 fitting candidates and 3
//! get 0/16, so no pick can beat a random candidate on this prompt set (see its reason).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};
use common::demo::{DemoI4vgen, demo};
use common::{cpu, to_vec};
use stepstone::pipelines::denoiser::VideoDenoiser;
use stepstone::pipelines::i4vgen::{self, GuidanceConditioning, Guided, StageProgress};
use stepstone::pipelines::noise::SeededNoise;
use stepstone::schedulers::{Ddim, DdimConfig};

// ---------------------------------------------------------------------------------------------------------
// The checker: which of the world's object colours a frame shows, how much of each, and where.

/// The world's object colours (tools/demo_world/world.py COLOURS), 0-255.
const COLOURS: [(&str, [f32; 3]); 7] = [
    ("red", [220.0, 30.0, 30.0]),
    ("yellow", [245.0, 220.0, 30.0]),
    ("purple", [150.0, 50.0, 200.0]),
    ("white", [250.0, 250.0, 250.0]),
    ("black", [15.0, 15.0, 15.0]),
    ("orange", [250.0, 140.0, 20.0]),
    ("pink", [250.0, 120.0, 190.0]),
];
/// Largest RGB distance (0-255) from a colour's shaded tone for a pixel to count as that colour.
const TOLERANCE: f32 = 45.0;
/// Fewest pixels (of 64 x 64) for a colour to count as present: a quarter of the smallest object the world
/// draws (a ball 12 pixels wide covers about 113).
const MIN_PIXELS: usize = 28;

fn colour_index(name: &str) -> usize {
    COLOURS.iter().position(|(n, _)| *n == name).unwrap_or_else(|| panic!("no world colour '{name}'"))
}

/// The world colour a pixel (RGB in [0, 1]) shows, if any: the nearest of the colours' shaded tones (the world
/// lights objects from above: 0.8 to 1 of the colour), within [`TOLERANCE`].
fn classify(px: [f32; 3]) -> Option<usize> {
    let p = px.map(|v| v * 255.0);
    let mut best: Option<(usize, f32)> = None;
    for (i, (_, c)) in COLOURS.iter().enumerate() {
        let dot = p[0] * c[0] + p[1] * c[1] + p[2] * c[2];
        let norm = c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
        let s = (dot / norm).clamp(0.75, 1.05);
        let d = ((p[0] - s * c[0]).powi(2) + (p[1] - s * c[1]).powi(2) + (p[2] - s * c[2]).powi(2)).sqrt();
        if d < TOLERANCE && best.is_none_or(|(_, bd)| d < bd) {
            best = Some((i, d));
        }
    }
    best.map(|(i, _)| i)
}

/// One frame as planar RGB in [0, 1]: `[3, h, w]` values.
struct Frame<'a> {
    rgb: &'a [f32],
    h: usize,
    w: usize,
}

impl Frame<'_> {
    fn pixel(&self, y: usize, x: usize) -> [f32; 3] {
        let n = self.h * self.w;
        [0, 1, 2].map(|c| self.rgb[c * n + y * self.w + x])
    }

    /// Pixels per world colour.
    fn coverage(&self) -> [usize; 7] {
        let mut counts = [0; 7];
        for y in 0..self.h {
            for x in 0..self.w {
                if let Some(i) = classify(self.pixel(y, x)) {
                    counts[i] += 1;
                }
            }
        }
        counts
    }

    /// The centre (x, y) of the pixels of colour `i`, when there are enough of them.
    fn centroid(&self, i: usize) -> Option<(f32, f32)> {
        let (mut sx, mut sy, mut n) = (0.0f32, 0.0f32, 0usize);
        for y in 0..self.h {
            for x in 0..self.w {
                if classify(self.pixel(y, x)) == Some(i) {
                    sx += x as f32;
                    sy += y as f32;
                    n += 1;
                }
            }
        }
        (n >= MIN_PIXELS).then(|| (sx / n as f32, sy / n as f32))
    }

    /// Does the frame show the prompt's objects? Every named colour is present, and none of the other colours
    /// covers more than the least of the named ones.
    fn fits(&self, named: &[usize]) -> bool {
        let counts = self.coverage();
        let least = named.iter().map(|&i| counts[i]).min().unwrap_or(0);
        least >= MIN_PIXELS && (0..COLOURS.len()).filter(|i| !named.contains(i)).all(|i| counts[i] <= least)
    }

    /// The colours the frame shows, largest first.
    fn shown(&self) -> Vec<usize> {
        let counts = self.coverage();
        let mut shown: Vec<usize> = (0..COLOURS.len()).filter(|&i| counts[i] >= MIN_PIXELS).collect();
        shown.sort_by_key(|&i| std::cmp::Reverse(counts[i]));
        shown
    }
}

/// A decoded clip [1, 3, F, H, W] in [0, 1], frame by frame.
struct Clip {
    values: Vec<f32>,
    frames: usize,
    h: usize,
    w: usize,
}

impl Clip {
    fn of(video: &Tensor<5>) -> Clip {
        let [b, c, frames, h, w] = video.dims();
        assert_eq!((b, c), (1, 3));
        // [1, 3, F, H, W] -> [F, 3, H, W] so that a frame is contiguous.
        let values = to_vec(&video.clone().permute([0, 2, 1, 3, 4]));
        Clip { values, frames, h, w }
    }

    fn frame(&self, f: usize) -> Frame<'_> {
        let n = 3 * self.h * self.w;
        Frame { rgb: &self.values[f * n..(f + 1) * n], h: self.h, w: self.w }
    }

    /// How far the centre of colour `i` travels from where it is in the first frame (the largest distance, in
    /// pixels); 0 when it cannot be found in the first frame.
    fn travel(&self, i: usize) -> f32 {
        let Some((x0, y0)) = self.frame(0).centroid(i) else {
            return 0.0;
        };
        (1..self.frames)
            .filter_map(|f| self.frame(f).centroid(i))
            .map(|(x, y)| ((x - x0).powi(2) + (y - y0).powi(2)).sqrt())
            .fold(0.0, f32::max)
    }

    /// The share of frames that show the named colours (as [`Frame::fits`]).
    fn fit_share(&self, named: &[usize]) -> f32 {
        (0..self.frames).filter(|&f| self.frame(f).fits(named)).count() as f32 / self.frames as f32
    }
}

#[test]
fn the_checker_reads_colours_and_positions_from_pixels() {
    // A 64 x 64 frame: green grass, a red square at x 10..20, y 30..40, shaded as the world shades it.
    let (h, w) = (64, 64);
    let mut rgb = vec![0.0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let inside = (10..20).contains(&x) && (30..40).contains(&y);
            let px = if inside { [0.9 * 220.0, 0.9 * 30.0, 0.9 * 30.0] } else { [60.0, 150.0, 60.0] };
            for c in 0..3 {
                rgb[c * h * w + y * w + x] = px[c] / 255.0;
            }
        }
    }
    let frame = Frame { rgb: &rgb, h, w };
    let red = colour_index("red");
    assert_eq!(frame.coverage()[red], 100);
    assert_eq!(frame.coverage().iter().sum::<usize>(), 100, "grass is no object colour");
    assert_eq!(frame.centroid(red), Some((14.5, 34.5)));
    assert!(frame.fits(&[red]));
    assert!(!frame.fits(&[colour_index("yellow")]));
    assert!(!frame.fits(&[red, colour_index("yellow")]), "a named colour is missing");
    assert_eq!(frame.shown(), vec![red]);
    // Shades of the world's colours are told apart (orange from red and yellow, pink from purple).
    for (name, c) in COLOURS {
        for s in [0.8, 1.0] {
            assert_eq!(classify(c.map(|v| v * s / 255.0)), Some(colour_index(name)), "{name} at {s}");
        }
    }
    assert_eq!(classify([110.0 / 255.0, 160.0 / 255.0, 235.0 / 255.0]), None, "blue sky");
    assert_eq!(classify([225.0 / 255.0, 200.0 / 255.0, 140.0 / 255.0]), None, "sand");
}

// ---------------------------------------------------------------------------------------------------------
// The method on the demo world, once per test binary.

/// Prompts of the world's vocabulary, with the colours they name. Object colours are chosen to stand apart from
/// the background (white is not asked for in the sky, black not at night: the checker would see them there).
const PROMPTS: [(&str, &[&str]); 8] = [
    ("a red ball on green grass", &["red"]),
    ("a yellow star in the night sky", &["yellow"]),
    ("a purple box on sand", &["purple"]),
    ("an orange triangle in the blue sky", &["orange"]),
    ("a pink ball on the water", &["pink"]),
    ("a black box on sand", &["black"]),
    ("a white star in the night sky", &["white"]),
    ("a red box and a yellow ball on green grass", &["red", "yellow"]),
];

/// The world's image side (tools/demo_world/world.py SIZE), the preset's width and height.
const SIZE: usize = 64;
/// The demo preset's settings (graphs/i4vgen_demo.json).
const FRAMES: usize = 16;
const CANDIDATES: usize = 16;
const STEPS: usize = 25;
const CFG: f64 = 7.5;
const P_NI_VSDS: f64 = 0.6;
const STEP_SIZES: [f64; 4] = [10.0, 10.0, 10.0, 1.0];
const STRENGTH: f64 = 1.0;

struct Record {
    prompt: &'static str,
    /// Does each candidate fit the prompt?
    candidates_fit: Vec<bool>,
    selected: usize,
    /// The anchor's colours, largest first.
    anchor_shows: Vec<usize>,
    /// Travel of the anchor's main colour across frames: static video, after NI-VSDS, after regeneration.
    static_travel: f32,
    animated_travel: f32,
    /// Share of the regenerated frames showing the anchor's main colour.
    regenerated_keeps: f32,
    /// Share of the final frames that fit the prompt: I4VGen, plain text-to-video.
    i4vgen_fit: f32,
    t2v_fit: f32,
}

fn normal<const D: usize>(seed: u64, name: &str, shape: [usize; D], device: &Device) -> Tensor<D> {
    let values = SeededNoise::new(seed).values(name, shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn records() -> &'static [Record] {
    static RECORDS: OnceLock<Vec<Record>> = OnceLock::new();
    RECORDS.get_or_init(run_method)
}

fn run_method() -> Vec<Record> {
    let device = cpu();
    let start = std::time::Instant::now();
    let demo_models = DemoI4vgen::load(&device);
    let DemoI4vgen { model, vae, reward, .. } = &demo_models;
    let config: DdimConfig =
        serde_json::from_str(&std::fs::read_to_string(demo("sd15-tiny/scheduler/scheduler_config.json")).unwrap())
            .unwrap();
    let mut scheduler = Ddim::new(config).unwrap();
    scheduler.set_timesteps(STEPS).unwrap();
    // The world's images are SIZE x SIZE; the latent grid follows the VAE's downsampling, its channels the UNet.
    let side = SIZE / vae.downsampling();
    let channels = model.latent_channels();
    let latent = |n: usize| [1, channels, n, side, side];
    let mut observer = |_: StageProgress<'_>| ControlFlow::Continue(());
    let mut out = Vec::new();
    let limit = std::env::var("DEMO_WORLD_PROMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(PROMPTS.len());
    for (k, (prompt, names)) in PROMPTS.iter().enumerate().take(limit) {
        let seed = 1000 + k as u64;
        let conditioning =
            GuidanceConditioning::text(demo_models.encode(prompt, &device), demo_models.encode("", &device));
        let guided = Guided::new(model, &conditioning, CFG);
        let named: Vec<usize> = names.iter().map(|n| colour_index(n)).collect();

        let candidates = i4vgen::candidates(
            &guided,
            &scheduler,
            normal(seed, "candidates", latent(CANDIDATES), &device),
            &mut observer,
        )
        .unwrap();
        let images = i4vgen::decode(vae, candidates.clone());
        let scores = i4vgen::score(reward, prompt, &images).unwrap();
        let selected = i4vgen::select(&scores, None).unwrap();
        let dump = std::env::var_os("DEMO_WORLD_DUMP").map(PathBuf::from);
        // [count, 3, 1, H, W] -> one clip of `count` frames.
        let grid = Clip::of(&images.clone().permute([2, 1, 0, 3, 4]));
        let candidates_fit: Vec<bool> = (0..CANDIDATES).map(|i| grid.frame(i).fits(&named)).collect();
        let anchor_shows = grid.frame(selected).shown();
        let main = anchor_shows.first().copied().unwrap_or(named[0]);

        let still = i4vgen::static_video(&candidates, selected, FRAMES).unwrap();
        let static_travel = Clip::of(&i4vgen::decode(vae, still.clone())).travel(main);
        let noise = normal(seed, "ni_vsds", latent(FRAMES), &device);
        let animated =
            i4vgen::ni_vsds(&guided, &scheduler, still, noise, P_NI_VSDS, &STEP_SIZES, &mut observer).unwrap();
        let animated_travel = Clip::of(&i4vgen::decode(vae, animated.clone())).travel(main);
        let noise = normal(seed, "regeneration", latent(FRAMES), &device);
        let regenerated = i4vgen::regenerate(&guided, &scheduler, animated, noise, STRENGTH, &mut observer).unwrap();
        let final_video = i4vgen::decode(vae, regenerated);
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).unwrap();
            let strip = |t: &Tensor<5>| {
                let imgs = i4vgen::images_of(t);
                let (w, h) = imgs[0].dimensions();
                let mut out = image::RgbImage::new(w * imgs.len() as u32, h);
                for (i, im) in imgs.iter().enumerate() {
                    image::imageops::replace(&mut out, im, i64::from(w) * i as i64, 0);
                }
                out
            };
            strip(&images.clone().permute([2, 1, 0, 3, 4])).save(dir.join(format!("{k}-candidates.png"))).unwrap();
            strip(&final_video).save(dir.join(format!("{k}-final.png"))).unwrap();
        }
        let final_clip = Clip::of(&final_video);
        let regenerated_keeps = final_clip.fit_share(&[main]);
        let i4vgen_fit = final_clip.fit_share(&named);

        let noise = normal(seed, "text_to_video", latent(FRAMES), &device);
        let plain = i4vgen::text_to_video(&guided, &scheduler, noise, &mut observer).unwrap();
        let t2v_fit = Clip::of(&i4vgen::decode(vae, plain)).fit_share(&named);
        let record = Record {
            prompt,
            candidates_fit,
            selected,
            anchor_shows,
            static_travel,
            animated_travel,
            regenerated_keeps,
            i4vgen_fit,
            t2v_fit,
        };
        eprintln!(
            "{:<45} candidates fit {:>2}/{CANDIDATES}, anchor #{:<2} fits {:<5} shows {:?}; travel static {:.2} \
             NI-VSDS {:.2} px; regenerated keeps {:.2}; fit I4VGen {:.2} T2V {:.2} ({:.0} s)",
            record.prompt,
            record.candidates_fit.iter().filter(|&&f| f).count(),
            record.selected,
            record.candidates_fit[record.selected],
            record.anchor_shows.iter().map(|&i| COLOURS[i].0).collect::<Vec<_>>(),
            record.static_travel,
            record.animated_travel,
            record.regenerated_keeps,
            record.i4vgen_fit,
            record.t2v_fit,
            start.elapsed().as_secs_f64()
        );
        out.push(record);
    }
    out
}

fn mean(values: impl Iterator<Item = f32>) -> f32 {
    let v: Vec<f32> = values.collect();
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

#[test]
#[ignore = "not shown on the weights of 73d0529: every candidate fits (5 prompts) or none does (3), so the pick ties a random candidate, 0.625 each (issue 16)"]
fn the_reward_selected_anchor_fits_the_prompt_more_often_than_a_random_candidate() {
    let records = records();
    let selected = mean(records.iter().map(|r| f32::from(u8::from(r.candidates_fit[r.selected]))));
    let random = mean(records.iter().map(|r| mean(r.candidates_fit.iter().map(|&f| f32::from(u8::from(f))))));
    eprintln!("anchor fits the prompt: reward-selected {selected:.3}, random candidate {random:.3}");
    assert!(selected > random, "the reward's pick fits {selected:.3} of the prompts, a random candidate {random:.3}");
    assert!(selected >= 0.5, "the reward's pick fits only {selected:.3} of the prompts");
}

#[test]
fn ni_vsds_moves_the_static_video_and_regeneration_keeps_the_anchor() {
    let records = records();
    for r in records {
        assert!(r.static_travel < 0.01, "{}: the static video moves ({} px)", r.prompt, r.static_travel);
    }
    let moving = records.iter().filter(|r| r.animated_travel >= MIN_TRAVEL).count();
    let travel = mean(records.iter().map(|r| r.animated_travel));
    let keeps = mean(records.iter().filter(|r| !r.anchor_shows.is_empty()).map(|r| r.regenerated_keeps));
    eprintln!(
        "NI-VSDS: {moving}/{} clips move >= {MIN_TRAVEL} px, mean travel {travel:.2} px; regenerated frames keep \
               the anchor's colour: {keeps:.3}",
        records.len()
    );
    assert!(2 * moving > records.len(), "only {moving} of {} NI-VSDS clips move", records.len());
    assert!(keeps >= 0.75, "regenerated frames show the anchor's main colour only {keeps:.3} of the time");
}

/// Smallest travel (pixels) of an object's centre that counts as motion.
const MIN_TRAVEL: f32 = 1.5;

#[test]
fn the_named_object_is_in_the_final_frames_for_i4vgen_and_text_to_video() {
    let records = records();
    let i4vgen = mean(records.iter().map(|r| r.i4vgen_fit));
    let t2v = mean(records.iter().map(|r| r.t2v_fit));
    eprintln!("| prompt | I4VGen | AnimateDiff T2V |\n| --- | --- | --- |");
    for r in records {
        eprintln!("| {} | {:.2} | {:.2} |", r.prompt, r.i4vgen_fit, r.t2v_fit);
    }
    eprintln!("| mean share of frames showing the named colours | {i4vgen:.3} | {t2v:.3} |");
    assert!(i4vgen >= 0.5, "I4VGen's final frames fit the prompt only {i4vgen:.3} of the time");
    assert!(t2v >= 0.25, "plain text-to-video's frames fit the prompt only {t2v:.3} of the time");
}

// ---------------------------------------------------------------------------------------------------------
// The README's frames: what the main command makes, drawn from the preset's own run.

/// Runs graphs/i4vgen_demo.json through the engine (as `stepstone run` does) and writes
/// docs/demo-world/i4vgen-demo.png: the 16 candidates (the reward's pick framed), the anchor, and the
/// NI-VSDS and regenerated clips, every other frame, each picture at 2x. Regenerate with
/// `cargo test --test demo_world -- --ignored writes_the_readme_frames`.
#[test]
#[ignore]
fn writes_the_readme_frames() {
    use image::{Rgb, RgbImage, imageops};
    use stepstone::values::{Ranking, StillImage};
    use stepstone::video::Video;

    let graph = stepstone::graph::preset::load_preset(&common::engine::repo("graphs/i4vgen_demo.json")).unwrap();
    let mut engine = common::engine::engine();
    let ran = common::engine::run(&mut engine, &graph, &["preview"]);
    assert!(ran.completed(), "{:?}", ran.failures);
    let ranking = ran.output::<Ranking>("selector", "ranking");
    let anchor = ran.output::<StillImage>("selector", "anchor");
    let animated = ran.output::<Video>("animator", "video");
    let regenerated = ran.output::<Video>("regenerator", "video");
    let (w, h) = anchor.image.dimensions();
    let scale = 2;
    let (cw, ch) = (w * scale, h * scale);
    let gap = 4;
    let per_row = 8u32;
    let rows_of = |n: usize| (n as u32).div_ceil(per_row);
    let candidate_rows = rows_of(ranking.images.len());
    let height = (candidate_rows + 2) * (ch + gap) + gap;
    let width = (per_row + 1) * (cw + gap) + gap;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([32, 32, 36]));
    let put = |sheet: &mut RgbImage, img: &RgbImage, col: u32, row: u32, frame: bool| {
        let big = imageops::resize(img, cw, ch, imageops::FilterType::Nearest);
        let (x, y) = (gap + col * (cw + gap), gap + row * (ch + gap));
        if frame {
            for dy in 0..ch + 4 {
                for dx in 0..cw + 4 {
                    sheet.put_pixel(x + dx - 2, y + dy - 2, Rgb([255, 210, 0]));
                }
            }
        }
        imageops::replace(sheet, &big, i64::from(x), i64::from(y));
    };
    for (i, img) in ranking.images.iter().enumerate() {
        let i = i as u32;
        put(&mut sheet, img, i % per_row, i / per_row, i as usize == ranking.selected);
    }
    put(&mut sheet, &anchor.image, per_row, 0, false);
    for (row, clip) in [animated, regenerated].iter().enumerate() {
        for (k, frame) in clip.frames.iter().step_by(2).take(per_row as usize).enumerate() {
            put(&mut sheet, frame, k as u32, candidate_rows + row as u32, false);
        }
    }
    let out = common::engine::repo("docs/demo-world/i4vgen-demo.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    sheet.save(&out).unwrap();
    eprintln!("wrote {} ({width} x {height})", out.display());
}
