//! Our module trees expect exactly the keys and shapes of the real full-size checkpoint layouts
//! (manifests made by tools/fixtures from the reference classes, without weights).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{assert_same, manifest, ours};
use stepstone::models::clip::ClipTextConfig;

#[test]
fn clip_text_encoder_sd15_layout() {
    let reference = manifest("text_encoder_sd15");
    assert_eq!(reference.len(), 196);
    let model = ClipTextConfig::default().init(&common::cpu()).unwrap();
    assert_same("text_encoder_sd15", &ours(&model), &reference);
}

#[test]
fn vae_sd15_layout() {
    let reference = manifest("vae_sd15");
    assert_eq!(reference.len(), 248);
    let model = stepstone::models::vae::VaeConfig::default().init(&common::cpu()).unwrap();
    assert_same("vae_sd15", &ours(&model), &reference);
}

/// The full-size UNets take gigabytes each (burn allocates their weights): one at a time.
static FULL_SIZE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn unet_sd15_layout() {
    let _one = FULL_SIZE.lock().unwrap_or_else(|p| p.into_inner());
    let reference = manifest("unet_sd15");
    assert_eq!(reference.len(), 686);
    let model = stepstone::models::unet::UnetConfig::default().init(&common::cpu()).unwrap();
    assert_same("unet_sd15", &ours(&model), &reference);
}

/// A motion-module manifest with the original names mapped by our table and the stored positional tables
/// (recomputed, never loaded) set aside; returns the renamed keys and the table lengths found.
fn motion_manifest(name: &str) -> (BTreeMap<String, Vec<u64>>, Vec<u64>) {
    use stepstone::models::unet::motion::{IGNORED_KEYS, OriginalNames};
    let rename = OriginalNames::new();
    let ignored: Vec<regex::Regex> = IGNORED_KEYS.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
    let mut keys = BTreeMap::new();
    let mut positions = Vec::new();
    for (key, shape) in manifest(name) {
        let key = rename.to_ours(&key);
        if ignored.iter().any(|r| r.is_match(&key)) {
            positions.push(shape[1]);
        } else {
            keys.insert(key, shape);
        }
    }
    (keys, positions)
}

/// `tables`: stored positional tables (the original has one per temporal attention, diffusers one per block).
fn motion_layout(name: &str, version: stepstone::models::unet::motion::MotionVersion, keys: usize, tables: usize) {
    use stepstone::models::unet::motion::MotionAdapterConfig;
    let reference = manifest(name);
    assert_eq!(reference.len(), keys, "{name}: key count");
    let (renamed, positions) = motion_manifest(name);
    let config = version.config();
    // Each stored table is as long as the version's frame limit.
    assert_eq!(positions.len(), tables, "{name}: positional tables");
    assert!(positions.iter().all(|&p| p as usize == config.motion_max_seq_length), "{name}: {positions:?}");
    let model = config.init(&common::cpu()).unwrap();
    assert_eq!(model.version, version);
    assert_same(name, &ours(&model), &renamed);
    // A lone file's layout is read back from its shapes.
    let shapes: Vec<(String, Vec<usize>)> =
        reference.iter().map(|(k, s)| (k.clone(), s.iter().map(|&d| d as usize).collect())).collect();
    assert_eq!(MotionAdapterConfig::infer(&shapes, 8, 32), Ok(Some(config)), "{name}: inferred config");
}

#[test]
fn animatediff_v1_layout() {
    motion_layout("mm_sd_v15", stepstone::models::unet::motion::MotionVersion::V1, 560, 40);
}

#[test]
fn animatediff_v2_layout() {
    motion_layout("mm_sd_v15_v2", stepstone::models::unet::motion::MotionVersion::V2, 588, 42);
}

#[test]
fn animatediff_v3_layout() {
    motion_layout("v3_sd15_mm", stepstone::models::unet::motion::MotionVersion::V3, 560, 40);
}

#[test]
fn diffusers_motion_adapter_layout() {
    // diffusers' MotionAdapter defaults (v2): the same tree under diffusers' names, one stored table per block.
    motion_layout("motion_adapter_v2", stepstone::models::unet::motion::MotionVersion::V2, 567, 21);
}

#[test]
fn unet3d_modelscope_layout() {
    let _one = FULL_SIZE.lock().unwrap_or_else(|p| p.into_inner());
    let reference = manifest("unet3d_modelscope");
    assert_eq!(reference.len(), 1480);
    let model = stepstone::models::modelscope::Unet3dConfig::default().init(&common::cpu()).unwrap();
    // Spatial and temporal parts together hold every key of the file, nothing more.
    let mut all = ours(&model.unet);
    all.extend(ours(&model.temporal));
    assert_same("unet3d_modelscope", &all, &reference);
}

/// I2VGen-XL's text encoder: OpenCLIP ViT-H/14's text tower as transformers' CLIPTextModel (24 layers, GELU),
/// the SD 1.x encoder's module tree at other sizes.
#[test]
fn text_encoder_openclip_h_layout() {
    let _one = FULL_SIZE.lock().unwrap_or_else(|p| p.into_inner());
    let reference = manifest("text_encoder_openclip_h");
    assert_eq!(reference.len(), 388);
    let config = ClipTextConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_hidden_layers: 24,
        num_attention_heads: 16,
        hidden_act: "gelu".to_string(),
        ..ClipTextConfig::default()
    };
    let model = config.init(&common::cpu()).unwrap();
    assert_same("text_encoder_openclip_h", &ours(&model), &reference);
}

/// I2VGen-XL's (and DynamiCrafter's) image encoder: OpenCLIP ViT-H/14 as CLIPVisionModelWithProjection.
#[test]
fn clip_vision_vit_h_layout() {
    let _one = FULL_SIZE.lock().unwrap_or_else(|p| p.into_inner());
    let reference = manifest("clip_vision_vit_h");
    assert_eq!(reference.len(), 520);
    let model = stepstone::models::clip::vision::ClipVisionConfig::default().init(&common::cpu()).unwrap();
    assert_same("clip_vision_vit_h", &ours(&model), &reference);
}

/// I2VGen-XL's UNet (ali-vilab/i2vgen-xl's layout): the 3-D UNet's spatial and temporal parts and
/// I2VGen-XL's own conditioning modules (file names mapped by our table) hold every key, nothing more.
#[test]
fn unet_i2vgen_xl_layout() {
    let _one = FULL_SIZE.lock().unwrap_or_else(|p| p.into_inner());
    let rules: Vec<(regex::Regex, &str)> =
        stepstone::models::i2vgen_xl::REMAP.iter().map(|(from, to)| (regex::Regex::new(from).unwrap(), *to)).collect();
    let reference: BTreeMap<String, Vec<u64>> = manifest("unet_i2vgen_xl")
        .into_iter()
        .map(|(key, shape)| {
            let key = rules.iter().fold(key, |k, (re, to)| re.replace(&k, *to).into_owned());
            (key, shape)
        })
        .collect();
    assert_eq!(reference.len(), 1511);
    let model = stepstone::models::i2vgen_xl::I2vgenXlUnetConfig::default().init(&common::cpu()).unwrap();
    let mut all = ours(&model.base.unet);
    all.extend(ours(&model.base.temporal));
    all.extend(ours(&model.own));
    assert_same("unet_i2vgen_xl", &all, &reference);
}
