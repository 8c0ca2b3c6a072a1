//! A bounded fuzz test of the weight-file readers (issue 11): mutated copies of the real-format demo files
//! (safetensors headers, the AnimateDiff zip/pickle checkpoint, the ImageReward pickle) and of generated
//! tiny safetensors go through `read_shapes` and, where cheap, through the real loaders. No input may let a
//! panic escape, and no input may cause a single allocation above [`CAP`]: a tracking global allocator
//! records the largest request of each call (tests/fuzz_support; it refuses any above 512 MiB, so that a
//! runaway aborts the test instead of swapping the machine).
//!
//! The seed is fixed, so a failure names the target, the case number and the mutation, and reproduces.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use common::crafted::{ZipEntry, checkpoint, crc32, deflate_zeros, state_dict_pickle};
use stepstone::models::image_reward::load_image_reward;
use stepstone::models::load::identify::read_shapes;
use stepstone::models::{MotionLoadOptions, load_clip_text_encoder, load_motion_module, load_vae};

/// The largest single allocation one input may cause. Measured on the unmutated corpus (the first step of
/// [`fuzz_weight_file_readers`] prints it and asserts it stays below a quarter of the cap): 397,328 bytes, a
/// tensor buffer of the demo motion module; the largest corpus file is the 2.1 MB UNet, and a crafted header
/// may make the pre-check read at most the file itself. 16 MiB leaves a wide margin above both and still
/// catches any allocation sized from a declared number rather than from the file (the deflate bomb below
/// asks for 161 MB, the broadcast view for 1 GiB, without the pre-checks).
const CAP: usize = 16 << 20;

mod fuzz_support;
use fuzz_support::{Rng, guarded, panic_text};

#[global_allocator]
static GLOBAL: fuzz_support::Tracker = fuzz_support::Tracker;

/// What one call did: the panic that escaped (if any), the largest allocation, the error text.
struct Outcome {
    panic: Option<String>,
    largest: usize,
    error: Option<String>,
}

/// Runs `call` with the tracker reset, catching any panic.
fn run(call: impl FnOnce() -> Result<(), String>) -> Outcome {
    let (result, largest) = guarded(call);
    match result {
        Ok(r) => Outcome { panic: None, largest, error: r.err() },
        Err(payload) => Outcome { panic: Some(panic_text(&*payload)), largest, error: None },
    }
}

#[test]
fn the_tracker_sees_an_allocation_over_the_cap_and_refuses_a_runaway() {
    fuzz_support::assert_tracker_works(CAP);
}

/// Values that break size arithmetic, for a field of `width` bytes.
fn special(rng: &mut Rng, width: usize, file_len: usize) -> u64 {
    let max = if width >= 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
    let choices = [0, 1, max, max / 2, max / 2 + 1, file_len as u64, file_len as u64 + 1, rng.next()];
    *rng.pick(&choices) & max
}

fn put(bytes: &mut [u8], at: usize, width: usize, value: u64) {
    for i in 0..width {
        if let Some(b) = bytes.get_mut(at + i) {
            *b = (value >> (8 * i)) as u8;
        }
    }
}

fn get(bytes: &[u8], at: usize, width: usize) -> u64 {
    (0..width).map(|i| u64::from(bytes.get(at + i).copied().unwrap_or(0)) << (8 * i)).sum()
}

/// Mutations any file gets: bit flips, byte overwrites, truncation. `hot` is the structural region
/// (a header) that half of the mutations aim at.
fn generic(rng: &mut Rng, bytes: &mut Vec<u8>, hot: std::ops::Range<usize>) -> String {
    let len = bytes.len();
    let at = if rng.below(2) == 0 && !hot.is_empty() { hot.start + rng.below(hot.len()) } else { rng.below(len) };
    match rng.below(3) {
        0 => {
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            format!("flip bit {bit} of byte {at}")
        }
        1 => {
            let random = rng.next() as u8;
            let value = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'9', b'-', b'.', random]);
            let n = 1 + rng.below(8);
            for b in bytes.iter_mut().skip(at).take(n) {
                *b = value;
            }
            format!("overwrite {n} bytes at {at} with {value:#x}")
        }
        _ => {
            bytes.truncate(at);
            format!("truncate to {at} bytes")
        }
    }
}

/// Safetensors mutations: the header length field, JSON numbers, dtypes and digits in keys.
fn mutate_safetensors(rng: &mut Rng, original: &[u8]) -> (Vec<u8>, String) {
    let header_len = get(original, 0, 8) as usize;
    let header = String::from_utf8_lossy(&original[8..8 + header_len]).into_owned();
    let data = &original[8 + header_len..];
    let rebuild = |header: &str| {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    };
    let numbers: Vec<regex::Match<'_>> = regex::Regex::new(r"-?\d+").unwrap().find_iter(&header).collect();
    match rng.below(5) {
        0 => {
            let mut bytes = original.to_vec();
            let value = special(rng, 8, original.len());
            put(&mut bytes, 0, 8, value);
            (bytes, format!("header length {value}"))
        }
        1 | 2 if !numbers.is_empty() => {
            let m = rng.pick(&numbers);
            let by = *rng.pick(&[
                "18446744073709551615",
                "18446744073709551616",
                "9223372036854775808",
                "4294967296",
                "99999999999",
                "-1",
                "0",
                "1.5",
                "1e30",
                "null",
            ]);
            let header = format!("{}{by}{}", &header[..m.start()], &header[m.end()..]);
            (rebuild(&header), format!("number '{}' at {} -> {by}", m.as_str(), m.start()))
        }
        3 => {
            let (from, to) = *rng.pick(&[
                ("F32", "I32"),
                ("F32", "U32"),
                ("F32", "F64"),
                ("F32", "U8"),
                ("F32", "Q8"),
                ("F32", "F4"),
                ("shape", "shope"),
            ]);
            (rebuild(&header.replacen(from, to, 1 + rng.below(3))), format!("'{from}' -> '{to}'"))
        }
        _ => {
            let mut bytes = original.to_vec();
            let what = generic(rng, &mut bytes, 0..8 + header_len);
            (bytes, what)
        }
    }
}

fn find_all(bytes: &[u8], pattern: &[u8]) -> Vec<usize> {
    bytes.windows(pattern.len()).enumerate().filter(|(_, w)| *w == pattern).map(|(i, _)| i).collect()
}

/// Zip/pickle mutations: size, count and offset fields of the local headers, the central directory and the
/// (zip64) end records; opcode arguments and bytes of `data.pkl` (its CRC fixed up so that the pickle parser
/// sees them); plus the generic ones.
fn mutate_zip(rng: &mut Rng, original: &[u8]) -> (Vec<u8>, String) {
    let mut bytes = original.to_vec();
    let len = bytes.len();
    // (signature, field offset, width) of the fields that size or locate something.
    let fields: &[(&[u8], usize, usize)] = &[
        (b"PK\x03\x04", 18, 4),
        (b"PK\x03\x04", 22, 4),
        (b"PK\x03\x04", 26, 2),
        (b"PK\x03\x04", 28, 2),
        (b"PK\x01\x02", 20, 4),
        (b"PK\x01\x02", 24, 4),
        (b"PK\x01\x02", 28, 2),
        (b"PK\x01\x02", 30, 2),
        (b"PK\x01\x02", 42, 4),
        (b"PK\x05\x06", 10, 2),
        (b"PK\x05\x06", 12, 4),
        (b"PK\x05\x06", 16, 4),
        (b"PK\x06\x06", 32, 8),
        (b"PK\x06\x06", 40, 8),
        (b"PK\x06\x06", 48, 8),
        (b"PK\x06\x07", 8, 8),
    ];
    // The pickle: from the central entry whose name ends in data.pkl.
    let pickle = find_all(original, b"PK\x01\x02").into_iter().find_map(|c| {
        let name_len = get(original, c + 28, 2) as usize;
        let name = original.get(c + 46..c + 46 + name_len)?;
        if !name.ends_with(b"data.pkl") {
            return None;
        }
        let local = get(original, c + 42, 4) as usize;
        let start = local + 30 + get(original, local + 26, 2) as usize + get(original, local + 28, 2) as usize;
        Some((c, local, start..start + get(original, c + 20, 4) as usize))
    });
    match (rng.below(4), pickle) {
        (0, _) => {
            let (sig, offset, width) = *rng.pick(fields);
            let at = find_all(original, sig);
            if at.is_empty() {
                return (bytes, "no such header".into());
            }
            let header = *rng.pick(&at);
            let value = special(rng, width, len);
            put(&mut bytes, header + offset, width, value);
            (bytes, format!("{:?} header at {header}: field +{offset} = {value}", String::from_utf8_lossy(sig)))
        }
        (1 | 2, Some((central, local, range))) if range.end <= len => {
            let what = if rng.below(2) == 0 {
                // An opcode's argument: BININT, BININT1, BININT2, LONG1, BINUNICODE, SHORT_BINUNICODE, BINPUT,
                // LONG_BINPUT, BINGET, BINBYTES.
                let (op, width) = *rng.pick(&[
                    (b'J', 4),
                    (b'K', 1),
                    (b'M', 2),
                    (0x8a, 1),
                    (b'X', 4),
                    (0x8c, 1),
                    (b'q', 1),
                    (b'r', 4),
                    (b'h', 1),
                    (b'B', 4),
                ]);
                let at: Vec<usize> = find_all(&original[range.clone()], &[op]);
                if at.is_empty() {
                    return (bytes, "no such opcode".into());
                }
                let pos = range.start + *rng.pick(&at) + 1;
                let value = special(rng, width, len);
                put(&mut bytes, pos, width, value);
                format!("pickle opcode {op:#x} at {}: argument = {value}", pos - 1)
            } else {
                let pos = range.start + rng.below(range.len());
                let value = rng.next() as u8;
                bytes[pos] = value;
                format!("pickle byte {} = {value:#x}", pos - range.start)
            };
            let crc = crc32(&bytes[range]);
            put(&mut bytes, local + 14, 4, u64::from(crc));
            put(&mut bytes, central + 16, 4, u64::from(crc));
            (bytes, what)
        }
        _ => {
            let tail = len.saturating_sub(4096)..len;
            let hot = if rng.below(2) == 0 { tail } else { 0..4096 };
            let what = generic(rng, &mut bytes, hot);
            (bytes, what)
        }
    }
}

/// A tiny safetensors file of a few tensors (one fp16, one with metadata), written by hand.
fn generated(rng: &mut Rng) -> Vec<u8> {
    let count = 1 + rng.below(4);
    let mut entries = vec![r#""__metadata__":{"format":"pt"}"#.to_string()];
    let mut at = 0usize;
    for i in 0..count {
        let (dtype, size) = *rng.pick(&[("F32", 4), ("F16", 2), ("BF16", 2), ("I64", 8)]);
        let shape: Vec<usize> = (0..rng.below(4)).map(|_| 1 + rng.below(5)).collect();
        let bytes = size * shape.iter().product::<usize>();
        entries.push(format!(
            r#""t{i}.weight":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{at},{}]}}"#,
            at + bytes
        ));
        at += bytes;
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + at, 0x3c);
    out
}

fn demo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo-models").join(rel)
}

/// One fuzz target: the file, where a mutated copy goes, and the loader to feed it to (if cheap).
struct Target {
    name: &'static str,
    original: Vec<u8>,
    /// The mutated file's path inside the scratch folder.
    file: PathBuf,
    load: Option<Box<dyn Fn() -> Result<(), String>>>,
    zip: bool,
    cases: usize,
}

#[test]
fn fuzz_weight_file_readers() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let component = |name: &str, src: &str, file: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(demo(src).join("config.json"), dir.join("config.json")).unwrap();
        (dir.clone(), dir.join(file))
    };
    let (clip_dir, clip_file) = component("clip", "sd15-tiny/text_encoder", "model.safetensors");
    let (vae_dir, vae_file) = component("vae", "sd15-tiny/vae", "diffusion_pytorch_model.safetensors");
    let (_, unet_file) = component("unet", "sd15-tiny/unet", "diffusion_pytorch_model.safetensors");
    let motion_file = tmp.path().join("mm_tiny_v2.ckpt");
    let reward_file = tmp.path().join("ImageReward.pt");
    let generated_file = tmp.path().join("generated.safetensors");
    let reward_dir = demo("ImageReward-tiny");
    let read = |p: &str| std::fs::read(demo(p)).unwrap();
    let (d1, d2, d3) = (device.clone(), device.clone(), device.clone());
    let (f1, f2) = (motion_file.clone(), reward_file.clone());
    let mut targets = vec![
        Target {
            name: "text_encoder",
            original: read("sd15-tiny/text_encoder/model.safetensors"),
            file: clip_file,
            load: Some(Box::new(move || load_clip_text_encoder(&clip_dir, &d1).map(|_| ()).map_err(|e| e.to_string()))),
            zip: false,
            cases: 80,
        },
        Target {
            name: "vae",
            original: read("sd15-tiny/vae/diffusion_pytorch_model.safetensors"),
            file: vae_file,
            load: Some(Box::new(move || load_vae(&vae_dir, &d2).map(|_| ()).map_err(|e| e.to_string()))),
            zip: false,
            cases: 60,
        },
        Target {
            name: "unet",
            original: read("sd15-tiny/unet/diffusion_pytorch_model.safetensors"),
            file: unet_file,
            load: None,
            zip: false,
            cases: 80,
        },
        Target {
            name: "motion",
            original: read("mm_tiny_v2.ckpt"),
            file: motion_file,
            load: Some(Box::new(move || {
                load_motion_module(&f1, &d3, &MotionLoadOptions::default()).map(|_| ()).map_err(|e| e.to_string())
            })),
            zip: true,
            cases: 160,
        },
        Target {
            name: "image_reward",
            original: read("ImageReward-tiny/ImageReward.pt"),
            file: reward_file,
            load: Some(Box::new(move || {
                load_image_reward(&f2, &reward_dir, &device).map(|_| ()).map_err(|e| e.to_string())
            })),
            zip: true,
            cases: 120,
        },
    ];
    let mut rng = Rng(0x5eed_0011);
    let generated_original = generated(&mut rng);
    targets.push(Target {
        name: "generated",
        original: generated_original,
        file: generated_file,
        load: None,
        zip: false,
        cases: 80,
    });

    // 1. The unmutated corpus loads, and its largest allocation sets what the cap must stay above.
    let mut legit_peak = 0;
    for t in &targets {
        std::fs::write(&t.file, &t.original).unwrap();
        let shapes = run(|| read_shapes(&t.file).map(|_| ()).map_err(|e| e.to_string()));
        assert!(shapes.panic.is_none() && shapes.error.is_none(), "{}: {:?}", t.name, shapes.error);
        legit_peak = legit_peak.max(shapes.largest);
        if let Some(load) = &t.load {
            let loaded = run(load);
            assert!(loaded.panic.is_none() && loaded.error.is_none(), "{}: {:?}", t.name, loaded.error);
            legit_peak = legit_peak.max(loaded.largest);
        }
    }
    eprintln!("largest single allocation on the unmutated corpus: {legit_peak} bytes (cap {CAP})");
    assert!(legit_peak < CAP / 4, "the cap must stay well above the legitimate peak ({legit_peak} bytes)");

    // 2. Crafted checkpoints that a reader without the pre-checks would turn into huge allocations: a
    // deflate bomb (a 100 MB pickle from 0.6 MB) and a broadcast view (stride 0) of one float declaring a
    // 16384 x 16384 motion-module projection, which the loader would build and fill (1 GiB).
    let bomb =
        ZipEntry { name: "archive/data.pkl", method: 8, data: deflate_zeros(100_000_000), size: 100_000_000, crc: 0 };
    let key = "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight";
    let broadcast = state_dict_pickle(key, 1, &[16384, 16384], &[0, 0]);
    for (name, bytes) in [
        ("bomb", checkpoint(bomb, &[0; 4])),
        ("broadcast", checkpoint(ZipEntry::stored("archive/data.pkl", &broadcast), &[0; 4])),
    ] {
        let file = tmp.path().join(format!("{name}.ckpt"));
        std::fs::write(&file, bytes).unwrap();
        let options = MotionLoadOptions::default();
        let outcome =
            run(|| load_motion_module(&file, &Device::flex(), &options).map(|_| ()).map_err(|e| e.to_string()));
        assert!(outcome.panic.is_none(), "{name}: {:?}", outcome.panic);
        assert!(outcome.largest <= CAP, "{name}: allocated {} bytes at once", outcome.largest);
        let error = outcome.error.unwrap_or_default();
        assert!(error.contains("malformed weight file"), "{name}: {error}");
    }

    // 3. Mutated copies.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let (mut inputs, mut calls, mut refused, mut pickle_panics) = (0, 0, 0, 0);
    let mut worst = 0;
    let mut failures = Vec::new();
    for t in &targets {
        for case in 0..t.cases {
            let (bytes, what) = if t.zip {
                mutate_zip(&mut rng, &t.original)
            } else if t.name == "generated" && case % 2 == 0 {
                let fresh = generated(&mut rng);
                mutate_safetensors(&mut rng, &fresh)
            } else {
                mutate_safetensors(&mut rng, &t.original)
            };
            std::fs::write(&t.file, &bytes).unwrap();
            inputs += 1;
            let mut outcomes =
                vec![("read_shapes", run(|| read_shapes(&t.file).map(|_| ()).map_err(|e| e.to_string())))];
            if let Some(load) = &t.load {
                outcomes.push(("loader", run(load)));
            }
            for (call, outcome) in outcomes {
                calls += 1;
                worst = worst.max(outcome.largest);
                if let Some(error) = &outcome.error {
                    refused += 1;
                    pickle_panics += usize::from(error.contains("pickle data is malformed"));
                }
                let label = format!("{} case {case} ({what}), {call}", t.name);
                if let Some(panic) = outcome.panic {
                    failures.push(format!("{label}: panic escaped: {panic}"));
                } else if outcome.largest > CAP {
                    failures.push(format!("{label}: allocated {} bytes at once (cap {CAP})", outcome.largest));
                }
            }
        }
    }
    std::panic::set_hook(quiet);
    let elapsed = started.elapsed();
    eprintln!(
        "fuzzed {inputs} inputs ({calls} calls, {refused} refused with an error, {pickle_panics} reader panics \
         turned into errors) in {:.1} s; largest single allocation {worst} bytes",
        elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed; the first:\n{}",
        failures.len(),
        failures.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
    // The mutations reach the checks: most inputs are refused, not loaded.
    assert!(refused > inputs / 2, "only {refused} of {calls} calls were refused");
}
