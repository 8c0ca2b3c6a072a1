//! Single-file SD 1.x checkpoints (original LDM key names) against diffusers / transformers, the rename
//! tables against the full-size SD 1.5 single-file layout, and files of the wrong kind
//! (fixtures from tools/fixtures/single_file.py).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::store::{BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, bridge};
use burn::tensor::{DType, Int, Shape, Tensor, TensorData};
use common::{Fixture, assert_close, cpu, to_vec};
use stepstone::models::LoadError;
use stepstone::models::clip::ClipTextConfig;
use stepstone::models::single_file::{
    SingleFileConfig, SingleFileError, TEXT_ENCODER_RENAMES, load_single_file, load_single_file_with, unet_renames,
    vae_renames,
};
use stepstone::models::unet::UnetConfig;
use stepstone::models::vae::VaeConfig;

fn tiny_config() -> SingleFileConfig {
    let path = common::fixtures().join("single_file/config.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn float_dtypes<M: ModuleSnapshot>(module: &M) -> Vec<(String, DType)> {
    module.collect(None, None, true).into_iter().map(|t| (t.name.clone(), t.dtype)).collect()
}

#[test]
fn all_three_networks_match_the_reference_in_every_file_format() {
    let device = cpu();
    let fx = Fixture::load("single_file/single_file_io.safetensors");
    let timesteps: Vec<f64> = fx.values("timesteps").iter().map(|&t| f64::from(t)).collect();
    let (ids_shape, ids) = fx.get("input_ids");
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let config = tiny_config();
    for (file, suffix) in [("sd15_tiny.safetensors", ""), ("sd15_tiny.ckpt", ""), ("sd15_tiny_fp16.ckpt", "_from_f16")]
    {
        let path = common::fixtures().join("single_file").join(file);
        let models = load_single_file_with(&path, &config, &device).unwrap_or_else(|e| panic!("{e}"));
        let r = &models.reports;
        for (what, report) in [("UNet", &r.unet), ("VAE", &r.vae), ("text encoder", &r.text_encoder)] {
            assert!(report.unused.is_empty(), "{file}: {what} unused keys {:?}", report.unused);
            assert!(report.applied > 0, "{file}: {what} loaded nothing");
        }
        // fp16 files are widened to f32 on load, pickles included.
        let mut dtypes = float_dtypes(&models.unet);
        dtypes.extend(float_dtypes(&models.vae));
        dtypes.extend(float_dtypes(&models.text_encoder));
        let not_f32: Vec<_> = dtypes.iter().filter(|(_, d)| *d != DType::F32).take(5).collect();
        assert!(not_f32.is_empty(), "{file}: weights not converted to f32: {not_f32:?}");

        let eps =
            models.unet.forward(fx.tensor::<4>("sample", &device), &timesteps, fx.tensor::<3>("context", &device));
        let e_unet =
            assert_close(&format!("UNet eps ({file})"), &to_vec(&eps), fx.values(&format!("eps{suffix}")), 1e-4);
        let post = models.vae.encode(fx.tensor::<4>("x", &device));
        let e_mean =
            assert_close(&format!("VAE mean ({file})"), &to_vec(&post.mean), fx.values(&format!("mean{suffix}")), 1e-4);
        let e_logvar = assert_close(
            &format!("VAE logvar ({file})"),
            &to_vec(&post.logvar),
            fx.values(&format!("logvar{suffix}")),
            1e-4,
        );
        let decoded = models.vae.decode(fx.tensor::<4>("z", &device));
        let e_dec = assert_close(
            &format!("VAE decode ({file})"),
            &to_vec(&decoded),
            fx.values(&format!("decoded{suffix}")),
            1e-4,
        );
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), ids_shape.clone()), &device);
        let hidden = models.text_encoder.forward(input);
        let e_clip = assert_close(
            &format!("text encoder ({file})"),
            &to_vec(&hidden),
            fx.values(&format!("last_hidden_state{suffix}")),
            1e-4,
        );
        eprintln!(
            "{file}: max abs error UNet {e_unet:e}, VAE mean {e_mean:e} logvar {e_logvar:e} decode {e_dec:e}, \
             text encoder {e_clip:e}"
        );
    }
}

#[test]
fn older_files_without_text_model_in_the_text_encoder_keys_load_the_same() {
    // The fixture rewritten as files written before transformers nested the tower under `text_model`.
    let device = cpu();
    let bytes = std::fs::read(common::fixtures().join("single_file/sd15_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."), v))
        .collect();
    assert!(renamed.iter().any(|(k, _)| k == "cond_stage_model.transformer.final_layer_norm.weight"));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("old.safetensors");
    safetensors::serialize_to_file(renamed, None, &path).unwrap();
    let models = load_single_file_with(&path, &tiny_config(), &device).unwrap_or_else(|e| panic!("{e}"));
    assert!(models.reports.text_encoder.unused.is_empty(), "{:?}", models.reports.text_encoder.unused);
    let fx = Fixture::load("single_file/single_file_io.safetensors");
    let (shape, ids) = fx.get("input_ids");
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let hidden = models.text_encoder.forward(Tensor::<2, Int>::from_data(TensorData::new(ids, shape.clone()), &device));
    let err = assert_close("text encoder (old key layout)", &to_vec(&hidden), fx.values("last_hidden_state"), 1e-4);
    eprintln!("old text-encoder key layout: max abs error {err:e}");
}

/// Our module tree's keys and shapes (PyTorch layout, as the manifests are written).
fn ours<M: ModuleSnapshot>(module: &M) -> BTreeMap<String, Vec<usize>> {
    module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect()
}

/// The manifest's keys renamed by `table` through burn-store's KeyRemapper (what the loader does), with
/// their file shapes; keys no pattern touched are dropped (they belong to other components).
fn renamed(
    manifest: &BTreeMap<String, Vec<usize>>,
    table: &[(String, String)],
) -> BTreeMap<String, (String, Vec<usize>)> {
    let tensors = manifest
        .iter()
        .map(|(k, shape)| {
            // Metadata only: the data is never read.
            bridge::deferred(k.clone(), DType::F32, Shape::from(shape.clone()), None, || {
                Ok(TensorData::new(Vec::<f32>::new(), [0]))
            })
        })
        .collect();
    let (tensors, names) = KeyRemapper::from_patterns(table.to_vec()).unwrap().remap(tensors);
    tensors
        .into_iter()
        .zip(names)
        .filter(|(t, (_, original))| t.name != *original)
        .map(|(t, (_, original))| (t.name.clone(), (original, t.shape.to_vec())))
        .collect()
}

fn compare(name: &str, renamed: &BTreeMap<String, (String, Vec<usize>)>, ours: &BTreeMap<String, Vec<usize>>) {
    let missing: Vec<_> = ours.keys().filter(|k| !renamed.contains_key(*k)).take(10).collect();
    let extra: Vec<_> = renamed
        .iter()
        .filter(|(k, _)| !ours.contains_key(*k))
        .map(|(k, (o, _))| format!("{o} -> {k}"))
        .take(10)
        .collect();
    let shapes: Vec<_> = renamed
        .iter()
        .filter_map(|(k, (original, file))| {
            let our = ours.get(k)?;
            // The loader's Conv1x1ToLinear: a [out, in, 1, 1] file tensor fills a [out, in] Linear weight.
            let fits =
                file == our || (file.len() == 4 && file[2..] == [1, 1] && our.len() == 2 && file[..2] == our[..]);
            (!fits).then(|| format!("{original} {file:?} -> {k} {our:?}"))
        })
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && shapes.is_empty(),
        "{name}: our keys the file lacks {missing:?}; file keys we lack {extra:?}; shapes that do not fit {shapes:?}"
    );
}

#[test]
fn rename_tables_cover_the_sd15_single_file_layout_exactly() {
    let path = common::fixtures().join("manifests/sd15_single_file.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let manifest: BTreeMap<String, Vec<usize>> = text
        .lines()
        .map(|line| {
            let (key, shape) = line.split_once(' ').unwrap();
            let dims = shape.trim_matches(|c| c == '[' || c == ']');
            (key.to_string(), dims.split(',').filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect())
        })
        .collect();
    assert_eq!(manifest.len(), 686 + 248 + 196);
    let device = cpu();
    let config = SingleFileConfig::sd15();

    let unet = renamed(&manifest, &unet_renames(&config.unet));
    assert!(unet.values().all(|(o, _)| o.starts_with("model.diffusion_model.")), "the UNet table renamed other keys");
    compare("UNet", &unet, &ours(&config.unet.init(&device).unwrap()));

    let vae = renamed(&manifest, &vae_renames(&config.vae));
    assert!(vae.values().all(|(o, _)| o.starts_with("first_stage_model.")), "the VAE table renamed other keys");
    compare("VAE", &vae, &ours(&config.vae.init(&device).unwrap()));

    let table: Vec<(String, String)> =
        TEXT_ENCODER_RENAMES.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let text_encoder = renamed(&manifest, &table);
    assert!(
        text_encoder.values().all(|(o, _)| o.starts_with("cond_stage_model.")),
        "the CLIP table renamed other keys"
    );
    compare("text encoder", &text_encoder, &ours(&config.text_encoder.init(&device).unwrap()));

    assert_eq!(unet.len() + vae.len() + text_encoder.len(), manifest.len(), "every key of the file has one owner");
}

#[test]
fn sd15_defaults_are_the_sd15_configs() {
    let config = SingleFileConfig::sd15();
    assert_eq!(config.unet, UnetConfig::default());
    assert_eq!(config.vae, VaeConfig::default());
    assert_eq!(config.text_encoder, ClipTextConfig::default());
}

fn write_safetensors(path: &Path, names: &[&str]) {
    let data = vec![0u8; 16];
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = names
        .iter()
        .map(|n| {
            (n.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn files_of_another_kind_are_named() {
    let device = cpu();
    let not = "not a Stable Diffusion 1.x single-file checkpoint";
    // A diffusers UNet file given as a single file.
    let unet = common::fixtures().join("unet/unet/diffusion_pytorch_model.safetensors");
    let err = load_single_file(&unet, &device).unwrap_err();
    assert!(matches!(err, SingleFileError::Load(LoadError::WrongKind { .. })), "{err}");
    assert!(err.to_string().contains(&format!("looks like a diffusers UNet, {not}")), "{err}");
    // The same as a pickle.
    let bin = common::fixtures().join("unet/unet/diffusion_pytorch_model.bin");
    let err = load_single_file(&bin, &device).unwrap_err().to_string();
    assert!(err.contains(&format!("looks like a diffusers UNet, {not}")), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    for (names, expected) in [
        (
            vec![
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
            ],
            "looks like a LoRA",
        ),
        (
            vec![
                "conditioner.embedders.1.model.ln_final.weight",
                "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.conv_out.weight",
            ],
            "looks like an SDXL checkpoint",
        ),
        (
            vec!["cond_stage_model.model.transformer.resblocks.0.ln_1.weight", "model.diffusion_model.out.2.weight"],
            "looks like a Stable Diffusion 2.x single-file checkpoint",
        ),
        (
            vec!["down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"],
            "looks like an AnimateDiff motion module",
        ),
    ] {
        let path = tmp.path().join(format!("{}.safetensors", expected.replace(' ', "_")));
        write_safetensors(&path, &names);
        let err = load_single_file(&path, &device).unwrap_err().to_string();
        assert!(err.contains(expected) && err.contains(not) && err.contains(&path.display().to_string()), "{err}");
    }

    // An SD 1.x file without its VAE says so.
    let path = tmp.path().join("no_vae.safetensors");
    write_safetensors(
        &path,
        &["model.diffusion_model.out.2.weight", "cond_stage_model.transformer.text_model.final_layer_norm.weight"],
    );
    let err = load_single_file(&path, &device).unwrap_err().to_string();
    assert!(err.contains("no VAE in this checkpoint") && err.contains("first_stage_model."), "{err}");
}

#[test]
fn a_checkpoint_of_another_layout_is_named() {
    let device = cpu();
    // The tiny checkpoint with SD 1.5's configurations: almost every weight is missing.
    let path = common::fixtures().join("single_file/sd15_tiny.safetensors");
    for file in ["sd15_tiny.safetensors", "sd15_tiny.ckpt"] {
        let err =
            load_single_file(&common::fixtures().join("single_file").join(file), &device).unwrap_err().to_string();
        assert!(
            err.contains(
                "looks like a Stable Diffusion 1.x single-file checkpoint, not one whose UNet has the configured layout"
            ),
            "{err}"
        );
    }
    // Same blocks, another cross-attention width: the weights that do not fit are listed, with both shapes.
    let mut config = tiny_config();
    config.unet.cross_attention_dim = 12;
    let err = load_single_file_with(&path, &config, &device).unwrap_err().to_string();
    assert!(err.contains("do not fit") && err.contains("attn2.to_k.weight: expected shape"), "{err}");
}
