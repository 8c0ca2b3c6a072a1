//! Our module trees expect exactly the keys and shapes of the real full-size checkpoint layouts
//! (manifests made by tools/fixtures from the reference classes, without weights).

mod common;

use std::collections::BTreeMap;

use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use stepstone::models::clip::ClipTextConfig;

fn manifest(name: &str) -> BTreeMap<String, Vec<u64>> {
    let path = common::fixtures().join("manifests").join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let (key, shape) = line.split_once(' ').unwrap();
            let dims = shape.trim_matches(|c| c == '[' || c == ']');
            let dims = if dims.is_empty() { vec![] } else { dims.split(',').map(|d| d.parse().unwrap()).collect() };
            (key.to_string(), dims)
        })
        .collect()
}

fn ours<M: ModuleSnapshot>(module: &M) -> BTreeMap<String, Vec<u64>> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.iter().map(|&d| d as u64).collect()))
        .collect()
}

/// Compares key sets and shapes, listing every difference.
fn assert_same(name: &str, ours: &BTreeMap<String, Vec<u64>>, reference: &BTreeMap<String, Vec<u64>>) {
    let missing: Vec<_> = reference.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !reference.contains_key(*k)).collect();
    let shapes: Vec<_> = reference
        .iter()
        .filter_map(|(k, v)| ours.get(k).filter(|o| *o != v).map(|o| format!("{k}: ours {o:?}, reference {v:?}")))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && shapes.is_empty(),
        "{name}: {} keys missing from our tree {:?}; {} keys ours only {:?}; shape differences {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(10).collect::<Vec<_>>(),
        shapes
    );
}

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

#[test]
fn unet_sd15_layout() {
    let reference = manifest("unet_sd15");
    assert_eq!(reference.len(), 686);
    let model = stepstone::models::unet::UnetConfig::default().init(&common::cpu()).unwrap();
    assert_same("unet_sd15", &ours(&model), &reference);
}
