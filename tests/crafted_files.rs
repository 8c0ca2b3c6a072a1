//! Crafted model files (issue 11, "shared graphs are untrusted input"): every size, count, offset and
//! index a file declares is checked before it sizes anything, and the error names the file and the field.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::cpu;
use common::crafted::{ZipEntry, checkpoint, crc32, deflate_zeros, state_dict_pickle};
use stepstone::models::load::identify::read_shapes;
use stepstone::models::{LoadError, MotionLoadOptions, load_clip_text_encoder, load_motion_module, load_vae};

/// A safetensors file from a hand-written header (so that any field can be crafted) and `data_len` zero
/// bytes of tensor data.
fn write_raw_safetensors(path: &Path, header: &str, data_len: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data_len, 0);
    std::fs::write(path, bytes).unwrap();
}

/// A well-formed f32 safetensors file of the given tensors (zeros).
fn write_safetensors(path: &Path, tensors: &[(&str, Vec<u64>)]) {
    let mut entries = Vec::new();
    let mut at = 0u64;
    for (name, shape) in tensors {
        let bytes = 4 * shape.iter().product::<u64>();
        entries.push(format!(r#""{name}":{{"dtype":"F32","shape":{shape:?},"data_offsets":[{at},{}]}}"#, at + bytes));
        at += bytes;
    }
    write_raw_safetensors(path, &format!("{{{}}}", entries.join(",")), at as usize);
}

fn message(err: &dyn std::fmt::Display) -> String {
    err.to_string()
}

/// Defect 1 (commit 3189878): `MotionAdapterConfig::infer` resized its level table to an index read from a
/// key, so this file made the loader ask for ~1.6 TB and abort. Now the index is bounded first and the
/// error names the file and the key.
#[test]
fn a_motion_module_with_a_huge_level_index_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for level in ["99999999999", "99999999999999999999999"] {
        let path = tmp.path().join(format!("mm_{}.safetensors", level.len()));
        let key = format!("down_blocks.{level}.motion_modules.0.temporal_transformer.proj_in.weight");
        write_safetensors(
            &path,
            &[
                ("down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight", vec![32, 32]),
                (&key, vec![32, 32]),
            ],
        );
        let err = load_motion_module(&path, &cpu(), &MotionLoadOptions::default()).unwrap_err();
        let text = message(&err);
        assert!(text.contains(&path.display().to_string()), "names the file: {text}");
        assert!(text.contains(&key), "names the key: {text}");
        assert!(text.contains(&format!("level index {level} is out of range")), "names the field: {text}");
    }
}

/// Further indices and sizes of a motion-module file: module index, channels from a shape, the stored
/// positional table's length, a level missing between others.
#[test]
fn motion_module_indices_and_sizes_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = "temporal_transformer.proj_in.weight";
    let module = |level: &str, index: &str, shape: Vec<u64>| (format!("{level}.motion_modules.{index}.{proj}"), shape);
    let table =
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe";
    type Tensors = Vec<(String, Vec<u64>)>;
    let cases: Vec<(Tensors, &str)> = vec![
        (vec![module("down_blocks.0", "18446744073709551615", vec![8, 8])], "motion module index"),
        (vec![module("mid_block", "4000000000", vec![8, 8])], "motion module index"),
        (vec![module("down_blocks.0", "0", vec![1 << 20, 0])], "channels) is 1048576"),
        (
            vec![module("down_blocks.0", "0", vec![8, 8]), (table.to_string(), vec![1, 0, 8])],
            "positional table's length (shape[1]) is 0",
        ),
        (
            vec![module("down_blocks.0", "0", vec![8, 8]), module("down_blocks.2", "0", vec![8, 8])],
            "down_blocks.1 has no motion modules",
        ),
    ];
    for (i, (tensors, expected)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("case{i}.safetensors"));
        let tensors: Vec<(&str, Vec<u64>)> = tensors.iter().map(|(k, s)| (k.as_str(), s.clone())).collect();
        write_safetensors(&path, &tensors);
        let text = message(&load_motion_module(&path, &cpu(), &MotionLoadOptions::default()).unwrap_err());
        assert!(text.contains(&path.display().to_string()) && text.contains(expected), "case {i}: {text}");
    }
}

/// Defect 2 (commit 3189878): `read_shapes` added the largest `data_offsets` end to the header length
/// unchecked; an end of 2^64 - 1 panicked with "attempt to add with overflow". Now it is an error naming the
/// file, the tensor and the field.
#[test]
fn a_data_offsets_end_of_u64_max_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write_raw_safetensors(&path, r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}"#, 8);
    let err = read_shapes(&path).unwrap_err();
    let text = message(&err);
    assert!(matches!(err, LoadError::Corrupt { field: "data_offsets", .. }), "{text}");
    assert!(text.contains(&path.display().to_string()) && text.contains("tensor 'w'"), "{text}");
    assert!(text.contains("data_offsets") && text.contains("18446744073709551615"), "{text}");
}

/// Every other field of a safetensors header: each crafted value is an error naming the field.
#[test]
fn safetensors_header_fields_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    let entry = |dtype: &str, shape: &str, offsets: &str| {
        format!(r#"{{"w":{{"dtype":{dtype},"shape":{shape},"data_offsets":{offsets}}}}}"#)
    };
    let cases = [
        (entry(r#""F32""#, "[2]", "[0,8]"), 8, None),
        (entry(r#""Q8""#, "[2]", "[0,8]"), 8, Some(("dtype", "unknown dtype"))),
        (entry("7", "[2]", "[0,8]"), 8, Some(("dtype", "expected a string"))),
        (entry(r#""F32""#, "[2.5]", "[0,8]"), 8, Some(("shape", "not a non-negative integer"))),
        (entry(r#""F32""#, "[-2]", "[0,8]"), 8, Some(("shape", "not a non-negative integer"))),
        (entry(r#""F32""#, "[4294967296,4294967296,4294967296]", "[0,8]"), 8, Some(("shape", "too many elements"))),
        (entry(r#""F32""#, "[2]", "[8,0]"), 8, Some(("data_offsets", "after end"))),
        (entry(r#""F32""#, "[2]", "[0,8,16]"), 8, Some(("data_offsets", "expected [begin, end]"))),
        (entry(r#""F32""#, "[2]", "[0,-8]"), 8, Some(("data_offsets", "expected [begin, end]"))),
        (entry(r#""F32""#, "[2]", "[0,16]"), 8, Some(("data_offsets", "truncated"))),
        (entry(r#""F32""#, "[3]", "[0,8]"), 8, Some(("data_offsets", "takes 12"))),
        (entry(r#""F32""#, "[2]", "[0,8]"), 12, Some(("data_offsets", "the file holds 12 bytes"))),
        (entry(r#""F32""#, "[1]", "[4,8]"), 8, Some(("data_offsets", "leaving bytes 0..4"))),
        (r#"{"w":[1,2]}"#.to_string(), 0, Some(("entry", "expected an object"))),
        (r#"{"__metadata__":{"format":7}}"#.to_string(), 0, Some(("__metadata__", "object of strings"))),
        (r#"{"__metadata__":{"format":"pt"}}"#.to_string(), 0, None),
        (r#"[1]"#.to_string(), 0, Some(("header", "not a JSON object"))),
        (r#"{"w":"#.to_string(), 0, Some(("header", "unreadable JSON"))),
    ];
    for (header, data, expected) in &cases {
        write_raw_safetensors(&path, header, *data);
        match (read_shapes(&path), expected) {
            (Ok(_), None) => {}
            (Err(LoadError::Corrupt { field, message, .. }), Some((want_field, want))) => {
                assert_eq!(field, *want_field, "{header}: {message}");
                assert!(message.contains(want), "{header}: {message}");
            }
            (other, _) => panic!("{header}: unexpected {other:?}"),
        }
    }
    // Two tensors sharing bytes.
    write_raw_safetensors(
        &path,
        concat!(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
            r#""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        ),
        12,
    );
    let text = message(&read_shapes(&path).unwrap_err());
    assert!(text.contains("tensor 'b'") && text.contains("inside the data of another tensor"), "{text}");
    // Header lengths beyond the file or the format's limit.
    for len in [u64::MAX, 1 << 63, 200_000_000, 9] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let err = read_shapes(&path).unwrap_err();
        assert!(matches!(err, LoadError::Corrupt { field: "header length", .. }), "{len}: {err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}

fn demo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models").join(rel)
}

/// A copy of a demo component folder with one field of its config.json replaced.
fn with_config(tmp: &Path, component: &str, field: &str, value: serde_json::Value) -> PathBuf {
    let dir = tmp.join(format!("{component}-{field}"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(demo(component)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// Sizes in a component's config.json are bounded before any module is built; the message names the file,
/// the field, the value found and the range expected.
#[test]
fn config_sizes_are_bounded_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let huge = serde_json::json!(1u64 << 40);
    for (component, field, found) in [
        ("sd15-tiny/text_encoder", "num_hidden_layers", "1099511627776"),
        ("sd15-tiny/text_encoder", "vocab_size", "1099511627776"),
        ("sd15-tiny/vae", "layers_per_block", "1099511627776"),
        ("sd15-tiny/vae", "norm_num_groups", "1099511627776"),
    ] {
        let dir = with_config(tmp.path(), component, field, huge.clone());
        let text = if component.ends_with("vae") {
            message(&load_vae(&dir, &cpu()).unwrap_err())
        } else {
            message(&load_clip_text_encoder(&dir, &cpu()).unwrap_err())
        };
        let config = dir.join("config.json").display().to_string();
        assert!(text.contains(&config) && text.contains(&format!("{field} is {found}, outside")), "{text}");
    }
    let dir = with_config(tmp.path(), "sd15-tiny/vae", "block_out_channels", serde_json::json!([16, 16, 0, 32]));
    let text = message(&load_vae(&dir, &cpu()).unwrap_err());
    assert!(text.contains("block_out_channels[2] is 0, outside the supported range 1..=16384"), "{text}");
    // A config.json far larger than any real one is not read.
    let dir = with_config(tmp.path(), "sd15-tiny/vae", "padding", serde_json::json!("x".repeat(2 << 20)));
    let text = message(&load_vae(&dir, &cpu()).unwrap_err());
    assert!(text.contains("config.json") && text.contains("more than the 1048576 bytes"), "{text}");
}

/// ImageReward's image_reward_config.json: the prompt length sizes every encoding, so it is bounded.
#[test]
fn image_reward_prompt_length_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo("ImageReward-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    let path = tmp.path().join("image_reward_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_length"] = serde_json::json!(1u64 << 50);
    std::fs::write(&path, config.to_string()).unwrap();
    let err = stepstone::models::image_reward::load_image_reward_dir(tmp.path(), &cpu()).unwrap_err();
    let text = message(&err);
    assert!(text.contains(&path.display().to_string()) && text.contains("max_length is 1125899906842624"), "{text}");
}

/// Found by reading burn's pickle reader (not by the mutation fuzzer, which never combined a zero stride
/// with a large shape): a broadcast view (stride 0) of a one-element storage may declare up to the reader's
/// 10 GiB tensor limit, which a load into a parameter of that shape would materialise. Every tensor must
/// fit the file.
#[test]
fn a_broadcast_view_larger_than_the_file_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("broadcast.ckpt");
    // The reader takes a well-formed small tensor, so the checkpoint itself is sound.
    let small = state_dict_pickle("w", 4, &[2, 2], &[2, 1]);
    std::fs::write(&path, checkpoint(ZipEntry::stored("archive/data.pkl", &small), &[0; 16])).unwrap();
    assert_eq!(read_shapes(&path).unwrap(), vec![("w".to_string(), vec![2, 2])]);
    let broadcast = state_dict_pickle("w", 1, &[1 << 20, 1 << 10], &[0, 0]);
    std::fs::write(&path, checkpoint(ZipEntry::stored("archive/data.pkl", &broadcast), &[0; 4])).unwrap();
    let err = read_shapes(&path).unwrap_err();
    let text = message(&err);
    assert!(matches!(err, LoadError::Corrupt { field: "shape", .. }), "{text}");
    assert!(text.contains(&path.display().to_string()) && text.contains("tensor 'w'"), "{text}");
    assert!(text.contains("needs 4294967296 bytes, more than the whole file"), "{text}");
}

/// Found by reading burn's pickle reader: a deflated `data.pkl` may declare up to its 100 MiB pickle limit
/// whatever the file's size, and the reader holds that much before parsing. A deflated entry may declare at
/// most four times the file.
#[test]
fn a_deflate_bomb_is_refused_before_it_is_inflated() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bomb.pt");
    let size = 100_000_000;
    let bomb = ZipEntry { name: "archive/data.pkl", method: 8, data: deflate_zeros(size), size: size as u32, crc: 0 };
    std::fs::write(&path, checkpoint(bomb, &[0; 4])).unwrap();
    let err = read_shapes(&path).unwrap_err();
    let text = message(&err);
    assert!(matches!(err, LoadError::Corrupt { field: "uncompressed size", .. }), "{text}");
    assert!(text.contains("zip entry 'archive/data.pkl'") && text.contains("100000000 bytes"), "{text}");
    // A small deflated pickle is fine.
    let small = state_dict_pickle("w", 4, &[2, 2], &[2, 1]);
    let stored_as_deflate = {
        // A stored (uncompressed) deflate block: BFINAL=1, BTYPE=00, LEN, NLEN, bytes.
        let mut d = vec![1];
        d.extend_from_slice(&(small.len() as u16).to_le_bytes());
        d.extend_from_slice(&(!(small.len() as u16)).to_le_bytes());
        d.extend_from_slice(&small);
        d
    };
    let entry = ZipEntry {
        name: "archive/data.pkl",
        method: 8,
        data: stored_as_deflate,
        size: small.len() as u32,
        crc: crc32(&small),
    };
    std::fs::write(&path, checkpoint(entry, &[0; 16])).unwrap();
    assert_eq!(read_shapes(&path).unwrap(), vec![("w".to_string(), vec![2, 2])]);
}
