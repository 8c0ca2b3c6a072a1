//! Fuzzing the preset reader (and what runs on every graph it returns: validation, the planner, the editor's
//! document) with a fixed seed corpus and generated mutations: nothing may panic and no single allocation may
//! exceed a cap. Bounded in time (a few seconds in the dev profile).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stepstone::graph::preset::{parse_preset, preset_text};
use stepstone::graph::{KindRegistry, ValidateOptions, validate};

mod fuzz_support;
use fuzz_support::{Rng, guarded};

#[global_allocator]
static ALLOCATOR: fuzz_support::Tracker = fuzz_support::Tracker;

/// No single allocation of one input may exceed this (the corpus itself needs well under 1 MiB).
const CAP: usize = 32 << 20;

fn corpus() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs");
    let mut files: Vec<Vec<u8>> =
        std::fs::read_dir(root).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    files.push(br#"{"format": "stepstone-graph", "version": 1, "nodes": [{"id": "p", "kind": "prompt", "pos": [1e308, -1e308], "params": {"positive": "a cat"}}], "links": [{"from": "p.prompt", "to": "p.prompt"}], "view": {"zoom": 1e300}}"#.to_vec());
    files
}

/// One mutation of `input`, chosen by the random state.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    match rng.below(8) {
        0 => {
            // Flip a few bits.
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(out.len());
                if let Some(b) = out.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        1 => out.truncate(rng.below(out.len())),
        2 => {
            // Replace a number with an extreme one.
            let extremes: [&[u8]; 6] = [b"1e308", b"-1e309", b"18446744073709551616", b"-1", b"0.5", b"NaN"];
            let digits: Vec<usize> =
                out.iter().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
            if !digits.is_empty() {
                let at = digits[rng.below(digits.len())];
                let e = extremes[rng.below(extremes.len())];
                out.splice(at..at + 1, e.iter().copied());
            }
        }
        3 => {
            // Deep nesting at a random point.
            let at = rng.below(out.len());
            let depth = 1 + rng.below(2_000);
            let mut nest = vec![b'['; depth];
            nest.extend(std::iter::repeat_n(b']', depth));
            out.splice(at..at, nest);
        }
        4 => {
            // Duplicate a slice (duplicate nodes, links, keys).
            let a = rng.below(out.len());
            let b = (a + rng.below(400)).min(out.len());
            let copy = out[a..b].to_vec();
            out.splice(b..b, copy);
        }
        5 => {
            // Invalid UTF-8 and control bytes.
            let at = rng.below(out.len());
            let junk: [&[u8]; 4] = [b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf"];
            out.splice(at..at, junk[rng.below(junk.len())].iter().copied());
        }
        6 => {
            // A long string where a short one was.
            if let Some(at) = out.iter().position(|&b| b == b'"') {
                let long = vec![b'x'; 20_000 + rng.below(40_000)];
                out.splice(at + 1..at + 1, long);
            }
        }
        _ => {
            // Swap two bytes far apart.
            let (a, b) = (rng.below(out.len()), rng.below(out.len()));
            if a < out.len() && b < out.len() {
                out.swap(a, b);
            }
        }
    }
    out
}

/// Everything that reads a preset: text decoding, parsing, validation, planning, the editor's document.
fn exercise(bytes: &[u8], registry: &KindRegistry, engine: &stepstone::runtime::Engine) {
    let Ok(text) = preset_text(bytes, "fuzz") else { return };
    let Ok(graph) = parse_preset(text, "fuzz") else { return };
    let report = validate(&graph, registry, &ValidateOptions::default());
    let _ = report.to_string();
    let _ = engine.plan(&graph, &[]);
    let doc = stepstone::ui::document::Document::from_graph(&graph, registry);
    let _ = doc.to_graph();
}

/// Opens the graph in the editor and draws two frames (headless egui, debug assertions on).
fn draw(bytes: &[u8], dir: &std::path::Path, ctx: &egui::Context) {
    let path = dir.join("fuzzed.json");
    std::fs::write(&path, bytes).unwrap();
    let mut studio = stepstone::ui::Studio::new(stepstone::nodes::registry(), dir.to_path_buf());
    if !studio.open(&path) {
        return;
    }
    for frame in 0..2 {
        let raw = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1280.0, 800.0))),
            time: Some(f64::from(frame) * 0.1),
            ..Default::default()
        };
        let mut output = ctx.run_ui(raw, |ui| studio.ui(ui));
        output.textures_delta.clear();
    }
}

#[test]
fn mutated_presets_never_panic_or_allocate_without_bound() {
    // The cap check can fail: an allocation above the cap is recorded, a runaway refused.
    fuzz_support::assert_tracker_works(CAP);

    let registry = stepstone::nodes::registry();
    let engine = stepstone::builtin_engine(std::path::PathBuf::from("no-models"));
    let corpus = corpus();
    let mut rng = Rng(0x5EED);
    let mut panics = Vec::new();
    let mut over_cap = Vec::new();
    let mut inputs = 0usize;
    let dir = tempfile::tempdir().unwrap();
    let ctx = egui::Context::default();
    let mut drawn = 0usize;
    let mut parsed = 0usize;
    let start = std::time::Instant::now();
    for round in 0..1500 {
        for (i, seed) in corpus.iter().enumerate() {
            // Stack a few mutations on each other.
            let mut input = seed.clone();
            for _ in 0..1 + rng.below(3) {
                input = mutate(&input, &mut rng);
            }
            let (result, largest) = guarded(|| exercise(&input, &registry, &engine));
            inputs += 1;
            if result.is_err() {
                panics.push((round, i));
            }
            // Every 4th input that is still a graph is also drawn in the editor.
            let parses = preset_text(&input, "fuzz").ok().and_then(|t| parse_preset(t, "fuzz").ok()).is_some();
            parsed += usize::from(parses);
            if result.is_ok() && parses && parsed.is_multiple_of(4) {
                drawn += 1;
                let (drew, _) = guarded(|| draw(&input, dir.path(), &ctx));
                if drew.is_err() {
                    panics.push((round, i));
                }
            }
            if largest > CAP {
                over_cap.push((round, i, largest));
            }
        }
    }
    println!(
        "{inputs} mutated presets, {parsed} still graphs ({drawn} drawn in the editor) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(drawn > 20, "too few mutated presets parsed to exercise the editor ({drawn})");
    assert!(
        panics.is_empty(),
        "{} inputs panicked (round, corpus entry): {:?}",
        panics.len(),
        &panics[..panics.len().min(5)]
    );
    assert!(over_cap.is_empty(), "allocations above {CAP} bytes: {:?}", &over_cap[..over_cap.len().min(5)]);
}
