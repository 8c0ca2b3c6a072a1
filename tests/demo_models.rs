//! The bundled demo models (assets/demo-models: the demo world's SD 1.5 folder, motion module and ImageReward,
//! trained by tools/demo_world/train.py; ModelScope and I2VGen-XL folders with random weights, made by
//! tools/fixtures/demo.py): every one loads with our loaders without unused keys, they fit together, the
//! tokenizer agrees with transformers, and the folder stays under its size limit.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use common::{cpu, to_vec};
use stepstone::models::clip::ClipTokenizer;
use stepstone::models::image_reward::load_image_reward_dir;
use stepstone::models::unet::motion::MotionVersion;
use stepstone::models::unet::{Motion, VideoUnet};
use stepstone::models::{MotionLoadOptions, load_clip_text_encoder, load_motion_module, load_unet, load_vae};
use stepstone::pipelines::noise::SeededNoise;
use stepstone::schedulers::{Ddim, DdimConfig};

/// The hard limit on everything under assets/demo-models (issue 16: "the whole set under ~12 MB in git").
const SIZE_LIMIT: u64 = 12_000_000;

fn demo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models").join(rel)
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            let size = path.metadata().unwrap().len();
            out.push((path, size));
        }
    }
    out
}

/// Standard-normal values of the stream `name` (seeded: the same every run).
fn normal<const D: usize>(name: &str, shape: [usize; D], device: &Device) -> Tensor<D> {
    let values = SeededNoise::new(42).values(name, shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn all_finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

#[test]
fn sd15_tiny_loads_without_unused_keys_and_its_parts_fit_together() {
    let device = cpu();
    let index = json(&demo("sd15-tiny/model_index.json"));
    assert_eq!(index["_class_name"], "StableDiffusionPipeline");
    assert_eq!(index["requires_safety_checker"], false);
    assert_eq!(index["safety_checker"], serde_json::json!([null, null]));
    assert_eq!(index["unet"], serde_json::json!(["diffusers", "UNet2DConditionModel"]));

    // Weights: one safetensors file per part (no .bin, no .fp16 variants; the trained world stores f16).
    for (path, _) in files(&demo("sd15-tiny")) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".bin") && !name.contains("fp16"), "unexpected weight file {}", path.display());
    }

    let (unet, report) = load_unet(&demo("sd15-tiny/unet"), &device).unwrap();
    assert!(report.unused.is_empty(), "unet: unused keys {:?}", report.unused);
    assert_eq!(report.path.file_name().unwrap(), "diffusion_pytorch_model.safetensors");
    let unet_report = report;
    let (vae, report) = load_vae(&demo("sd15-tiny/vae"), &device).unwrap();
    assert!(report.unused.is_empty(), "vae: unused keys {:?}", report.unused);
    let (text, report) = load_clip_text_encoder(&demo("sd15-tiny/text_encoder"), &device).unwrap();
    assert!(report.unused.is_empty(), "text encoder: unused keys {:?}", report.unused);
    assert_eq!(report.path.file_name().unwrap(), "model.safetensors");
    eprintln!("unet {} tensors, text encoder {} tensors", unet_report.applied, report.applied);

    // Text encoder width = the UNet's cross-attention width, in the configs and in the loaded weights.
    let text_config = json(&demo("sd15-tiny/text_encoder/config.json"));
    let unet_config = json(&demo("sd15-tiny/unet/config.json"));
    let [vocab, hidden] = text.text_model.embeddings.token_embedding.weight.dims();
    assert_eq!(hidden as u64, text_config["hidden_size"].as_u64().unwrap());
    assert_eq!(hidden as u64, unet_config["cross_attention_dim"].as_u64().unwrap());
    let attn2 = &unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2;
    assert_eq!(attn2.to_k.weight.dims()[0], hidden, "UNet cross-attention input width");
    let channels: Vec<usize> = serde_json::from_value(unet_config["block_out_channels"].clone()).unwrap();
    assert_eq!(unet.level_channels(), channels);

    // Text encoder vocabulary = the tokenizer's, special ids included.
    let tok = ClipTokenizer::from_dir(&demo("sd15-tiny/tokenizer")).unwrap();
    assert_eq!(vocab as u64, text_config["vocab_size"].as_u64().unwrap());
    assert_eq!((tok.bos as usize, tok.eos as usize, tok.pad as usize), (vocab - 2, vocab - 1, vocab - 1));
    assert_eq!(text_config["bos_token_id"].as_u64(), Some(tok.bos as u64));
    assert_eq!(text_config["eos_token_id"].as_u64(), Some(tok.eos as u64));
    assert_eq!(text_config["pad_token_id"].as_u64(), Some(tok.pad as u64));

    // The scheduler is AnimateDiff's DDIM.
    let scheduler: DdimConfig =
        serde_json::from_value(json(&demo("sd15-tiny/scheduler/scheduler_config.json"))).unwrap();
    assert_eq!(scheduler, DdimConfig::animatediff());

    // A prompt through the text encoder, a latent through UNet and VAE: finite, and the VAE scales by 8.
    let ids = tok.encode("a panda playing the guitar").unwrap().ids;
    let context = text.encode_ids(&[ids], &device);
    assert_eq!(context.dims(), [1, 77, hidden]);
    let latents = normal("latents", [1, 4, 8, 8], &device);
    let eps = unet.forward(latents.clone(), &[961.0], context.clone());
    assert_eq!(eps.dims(), [1, 4, 8, 8]);
    let image = vae.decode_scaled(latents);
    assert_eq!(image.dims(), [1, 3, 64, 64]);
    for (what, values) in [("context", to_vec(&context)), ("eps", to_vec(&eps)), ("image", to_vec(&image))] {
        assert!(all_finite(&values), "{what} is not finite");
    }
}

#[test]
fn motion_module_is_v2_and_fits_the_demo_unet() {
    let device = cpu();
    let (unet, _) = load_unet(&demo("sd15-tiny/unet"), &device).unwrap();
    let (motion, report) =
        load_motion_module(&demo("mm_tiny_v2.ckpt"), &device, &MotionLoadOptions::default()).unwrap();
    assert!(report.unused.is_empty(), "motion module: unused keys {:?}", report.unused);
    assert_eq!(motion.version, MotionVersion::V2);
    assert_eq!(motion.max_seq_length, 32);
    assert_eq!(motion.mid_block.as_ref().map(|m| m.motion_modules.len()), Some(1));
    let per_level = |levels: &[stepstone::models::unet::motion::MotionModules]| {
        levels.iter().map(|l| l.motion_modules.len()).collect::<Vec<_>>()
    };
    // One module per UNet resnet: layers_per_block per down level, one more per up level.
    let layers = json(&demo("sd15-tiny/unet/config.json"))["layers_per_block"].as_u64().unwrap() as usize;
    let levels = unet.level_channels().len();
    assert_eq!(per_level(&motion.down_blocks), vec![layers; levels]);
    assert_eq!(per_level(&motion.up_blocks), vec![layers + 1; levels]);
    // Built for 8 heads (our default for files without a config).
    assert_eq!(motion.down_blocks[0].motion_modules[0].transformer_blocks[0].attn1.heads, 8);

    let model = VideoUnet::new(unet, Some(motion)).unwrap();
    // One guided video call as the demo makes them: [uncond; cond] x 16 frames of 8 x 8 latents.
    let x = normal("video", [2, 4, 16, 8, 8], &device);
    let width = json(&demo("sd15-tiny/unet/config.json"))["cross_attention_dim"].as_u64().unwrap() as usize;
    let context = normal("context", [2, 77, width], &device);
    let start = Instant::now();
    let eps = model.forward(x, &[961.0, 961.0], context, Motion::On).unwrap();
    let values = to_vec(&eps);
    eprintln!("video UNet call [2, 4, 16, 8, 8]: {:.2} s", start.elapsed().as_secs_f64());
    assert_eq!(eps.dims(), [2, 4, 16, 8, 8]);
    assert!(all_finite(&values));
}

#[test]
fn image_reward_tiny_loads_without_unused_keys_and_scores() {
    let device = cpu();
    let (reward, report) = load_image_reward_dir(&demo("ImageReward-tiny"), &device).unwrap();
    assert!(report.unused.is_empty(), "ImageReward: unused keys {:?}", report.unused);
    assert_eq!(report.path.file_name().unwrap(), "ImageReward.pt");
    // The demo world's images are 64 x 64: the reward reads them at that size (no resampling).
    assert_eq!(reward.config.vision.image_size, 64);
    assert_eq!(reward.config.text.vocab_size, reward.tokenizer.vocab_size);
    let images: Vec<image::RgbImage> = (0..3u32)
        .map(|k| image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, (k * 90) as u8])))
        .collect();
    let scores = reward.score("a panda playing the guitar", &images).unwrap();
    assert_eq!(scores.len(), 3);
    assert!(all_finite(&scores), "{scores:?}");
    assert!(scores[0] != scores[2], "different images score differently: {scores:?}");
}

#[test]
fn tokenizer_ids_match_transformers() {
    let tok = ClipTokenizer::from_dir(&demo("sd15-tiny/tokenizer")).unwrap();
    let fixture = json(&common::fixtures().join("demo/tokenizer_ids.json"));
    let vocab = fixture["vocab_size"].as_u64().unwrap();
    assert_eq!(tok.eos as u64, vocab - 1);
    common::assert_clip_ids(&tok, &fixture, 8);
    assert!(
        fixture["cases"].as_array().unwrap().iter().any(|c| c["prompt"] == ""),
        "an empty prompt is among the cases"
    );
    // Common words are whole tokens of the small vocabulary ("the</w>" is CLIP's id 518).
    assert_eq!(tok.tokenize("the").unwrap(), vec![518]);
}

#[test]
fn demo_models_stay_under_the_size_limit_and_say_what_is_trained_and_what_is_random() {
    let all = files(&demo(""));
    let total: u64 = all.iter().map(|(_, size)| size).sum();
    eprintln!("assets/demo-models: {} files, {total} bytes", all.len());
    assert!(total < SIZE_LIMIT, "assets/demo-models holds {total} bytes, over the {SIZE_LIMIT}-byte limit");
    let readme = std::fs::read_to_string(demo("README.md")).unwrap();
    assert!(readme.contains("RANDOM WEIGHTS") && readme.contains("tools/fixtures/demo.py"));
    assert!(readme.contains("TRAINED") && readme.contains("tools/demo_world/train.py"));
    for name in ["sd15-tiny", "mm_tiny_v2.ckpt", "ImageReward-tiny", "modelscope-tiny", "i2vgen-xl-tiny"] {
        assert!(readme.contains(name), "README.md does not list {name}");
    }
}

/// The I2VGen-XL demo folder: every part loads with every weight used, f32 safetensors only, in the released
/// layout (224-pixel feature extractor, the released scheduler settings).
#[test]
fn i2vgen_xl_tiny_loads_without_unused_keys_in_the_released_layout() {
    let (model, reports) =
        stepstone::models::i2vgen_xl::load_i2vgen_xl(&demo("i2vgen-xl-tiny"), &Device::flex()).unwrap();
    for report in &reports {
        assert!(report.unused.is_empty(), "{}: unused {:?}", report.path.display(), report.unused);
        let name = report.path.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.ends_with(".safetensors") && !name.contains("fp16"), "{name}");
    }
    assert_eq!(model.feature_extractor.crop, Some((224, 224)));
    assert_eq!(model.scheduler.prediction_type, stepstone::schedulers::Prediction::VPrediction);
    assert!(model.scheduler.rescale_betas_zero_snr);
    assert_eq!(model.size_step(), 16, "the VAE's 8 and one UNet downsampler");
}

/// The whole I4VGen procedure at the demo settings (64 x 64, 16 candidates, 16 frames, 25 steps, CFG 7.5),
/// timed. Slow in the test profile: `cargo test --test demo_models -- --ignored`.
#[test]
#[ignore]
fn whole_pipeline_runs_on_the_demo_models() {
    use stepstone::pipelines::i4vgen::{self, GuidanceConditioning, Guided, StageProgress};

    let device = cpu();
    let start = Instant::now();
    let demo_models = common::demo::DemoI4vgen::load(&device);
    let common::demo::DemoI4vgen { model, vae, reward, .. } = &demo_models;
    let prompt = "a panda playing the guitar on a boat, ocean waves, golden sunset";
    let conditioning = GuidanceConditioning::text(demo_models.encode(prompt, &device), demo_models.encode("", &device));
    let guided = Guided::new(model, &conditioning, 7.5);
    let mut scheduler = Ddim::new(DdimConfig::animatediff()).unwrap();
    scheduler.set_timesteps(25).unwrap();
    eprintln!("loaded in {:.2} s", start.elapsed().as_secs_f64());
    let mut observer = |_: StageProgress<'_>| ControlFlow::Continue(());

    let t = Instant::now();
    let candidates =
        i4vgen::candidates(&guided, &scheduler, normal("candidates", [1, 4, 16, 8, 8], &device), &mut observer)
            .unwrap();
    eprintln!("candidates: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let images = i4vgen::decode(vae, candidates.clone());
    let scores = i4vgen::score(reward, prompt, &images).unwrap();
    let index = i4vgen::select(&scores, None).unwrap();
    eprintln!("decode + score: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let still = i4vgen::static_video(&candidates, index, 16).unwrap();
    let step_sizes = [10.0, 10.0, 10.0, 1.0];
    let z = i4vgen::ni_vsds(
        &guided,
        &scheduler,
        still,
        normal("ni_vsds", [1, 4, 16, 8, 8], &device),
        0.6,
        &step_sizes,
        &mut observer,
    )
    .unwrap();
    eprintln!("NI-VSDS: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let z = i4vgen::regenerate(
        &guided,
        &scheduler,
        z,
        normal("regeneration", [1, 4, 16, 8, 8], &device),
        1.0,
        &mut observer,
    )
    .unwrap();
    eprintln!("regeneration: {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let video = i4vgen::decode(vae, z);
    let values = to_vec(&video);
    eprintln!("decode: {:.2} s; whole pipeline {:.2} s", t.elapsed().as_secs_f64(), start.elapsed().as_secs_f64());
    assert_eq!(video.dims(), [1, 3, 16, 64, 64]);
    assert!(all_finite(&values) && all_finite(&scores));
}
