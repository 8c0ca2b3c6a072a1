//! The clip readers against damaged and hostile files. Artists share clips, so `embedded_graph` and the
//! PNG/GIF readers see untrusted bytes.
//!
//! A fixed corpus (a PNG with the graph, a PNG folder's first frame, an APNG, a GIF, an MP4 and a WebM, all
//! made by the exporters) and mutations of it from a fixed-seed PRNG: bit flips, byte overwrites, inserted
//! bytes, truncation at every chunk/block/box boundary and at random points, length fields set to 0,
//! 0x7fffffff, 0xffffffff and off by one, chunks/blocks/boxes duplicated, dropped and swapped, and inputs with
//! huge sub-block and chunk counts. Every input goes to `embedded_graph` (as a file with its seed's extension)
//! and to `png_text` and `gif_comment` directly. Each must return (a graph or a typed error whose message
//! names the file) without panicking, and no single allocation may ask for more than 64 MiB: this binary's
//! global allocator (tests/fuzz_support) records the largest request per thread, and refuses any above
//! 512 MiB so that a runaway request aborts the test visibly instead of swapping. FFmpeg's own allocations
//! (MP4/WebM) are C `malloc`s, which it cannot see.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::Layout;
use std::ops::{ControlFlow, Range};
use std::path::Path;
use std::time::Instant;

use image::{Rgb, RgbImage};
use stepstone::video::Video;
use stepstone::video::encode::{EncodeOptions, embedded_graph, export};
use stepstone::video::meta::{self, GRAPH_KEY, MAX_TEXT};

/// The most one input may ask for in a single allocation.
const CAP: usize = 64 << 20;

mod fuzz_support;
use fuzz_support::{REFUSE_ABOVE, Rng, guarded};

#[global_allocator]
static ALLOCATOR: fuzz_support::Tracker = fuzz_support::Tracker;

/// The problems with one input's run: a panic, an allocation over the cap, an over-long text, an error
/// message that does not name the file.
fn verdict<T: Verdict>(label: &str, outcome: &std::thread::Result<T>, largest: usize) -> Vec<String> {
    let mut problems = Vec::new();
    match outcome {
        Err(_) => problems.push(format!("{label}: panicked")),
        Ok(result) => problems.extend(result.problem().map(|p| format!("{label}: {p}"))),
    }
    if largest > CAP {
        problems.push(format!("{label}: one allocation asked for {largest} bytes (cap {CAP})"));
    }
    problems
}

trait Verdict {
    fn problem(&self) -> Option<String>;
}

/// The three readers' results for one input, errors as their messages.
struct Results {
    file: Result<Option<String>, String>,
    png: Result<Option<String>, String>,
    gif: Result<Option<String>, String>,
    file_name: String,
}

impl Verdict for Results {
    fn problem(&self) -> Option<String> {
        for (reader, result) in [("embedded_graph", &self.file), ("png_text", &self.png), ("gif_comment", &self.gif)] {
            match result {
                Ok(Some(text)) if text.len() > MAX_TEXT => {
                    return Some(format!("{reader}: {} bytes of text", text.len()));
                }
                Err(message) if message.trim().is_empty() => return Some(format!("{reader}: an empty error message")),
                _ => {}
            }
        }
        match &self.file {
            Err(message) if !message.contains(&self.file_name) => Some(format!("error without the file: {message}")),
            _ => None,
        }
    }
}

impl Verdict for () {
    fn problem(&self) -> Option<String> {
        None
    }
}

/// `embedded_graph` on a PNG folder: an error must name the frame it read.
impl Verdict for Result<(), String> {
    fn problem(&self) -> Option<String> {
        match self {
            Err(message) if !message.contains("frame_0000.png") => Some(format!("error without the file: {message}")),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Png,
    Gif,
    Mp4,
    WebM,
}

struct Seed {
    name: &'static str,
    ext: &'static str,
    kind: Kind,
    bytes: Vec<u8>,
}

/// The spans a format is made of (chunks, blocks, boxes, elements) and where their length fields are:
/// (offset, width in bytes).
struct Spans {
    spans: Vec<Range<usize>>,
    lengths: Vec<(usize, usize)>,
}

fn png_layout(b: &[u8]) -> Spans {
    let (mut spans, mut lengths, mut pos) = (vec![0..8], Vec::new(), 8);
    while pos + 12 <= b.len() {
        let len = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        spans.push(pos..pos + 12 + len);
        lengths.push((pos, 4));
        pos += 12 + len;
    }
    Spans { spans, lengths }
}

fn gif_layout(b: &[u8]) -> Spans {
    let (mut spans, mut lengths) = (vec![0..6, 6..13], Vec::new());
    let table = |packed: u8| if packed & 0x80 != 0 { 3 << ((packed & 7) + 1) } else { 0 };
    let mut pos = 13 + table(b[10]);
    spans.push(13..pos);
    let sub_blocks = |mut pos: usize, lengths: &mut Vec<(usize, usize)>| {
        while b[pos] != 0 {
            lengths.push((pos, 1));
            pos += 1 + b[pos] as usize;
        }
        pos + 1
    };
    loop {
        let start = pos;
        match b[pos] {
            0x21 => pos = sub_blocks(pos + 2, &mut lengths),
            0x2c => {
                lengths.push((pos + 5, 2)); // the image width, a length of sorts
                pos = sub_blocks(pos + 11 + table(b[pos + 9]), &mut lengths);
            }
            _ => {
                spans.push(pos..pos + 1);
                return Spans { spans, lengths };
            }
        }
        spans.push(start..pos);
    }
}

fn mp4_layout(b: &[u8]) -> Spans {
    fn walk(b: &[u8], range: Range<usize>, depth: usize, out: &mut Spans) {
        let mut pos = range.start;
        while pos + 8 <= range.end {
            let size = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
            if size < 8 || pos + size > range.end {
                return;
            }
            out.spans.push(pos..pos + size);
            out.lengths.push((pos, 4));
            if depth < 6 && matches!(&b[pos + 4..pos + 8], b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" | b"udta") {
                walk(b, pos + 8..pos + size, depth + 1, out);
            }
            pos += size;
        }
    }
    let mut out = Spans { spans: Vec::new(), lengths: Vec::new() };
    walk(b, 0..b.len(), 0, &mut out);
    out
}

fn webm_layout(b: &[u8]) -> Spans {
    // EBML: an ID (1-4 bytes, marker kept), a size (1-8 bytes, marker removed), the data.
    fn walk(b: &[u8], range: Range<usize>, depth: usize, out: &mut Spans) {
        let mut pos = range.start;
        while pos < range.end {
            let id_len = b[pos].leading_zeros() as usize + 1;
            let size_at = pos + id_len;
            if id_len > 4 || size_at >= range.end {
                return;
            }
            let size_len = b[size_at].leading_zeros() as usize + 1;
            if size_len > 8 || size_at + size_len > range.end {
                return;
            }
            let mut size = u64::from(b[size_at]) & (0xff >> size_len);
            for &byte in &b[size_at + 1..size_at + size_len] {
                size = size << 8 | u64::from(byte);
            }
            let data = size_at + size_len;
            let end = (data as u64 + size).min(range.end as u64) as usize;
            out.spans.push(pos..end);
            out.lengths.push((size_at, size_len));
            let id = &b[pos..size_at];
            let master = [&[0x18, 0x53, 0x80, 0x67][..], &[0x12, 0x54, 0xc3, 0x67], &[0x73, 0x73], &[0x67, 0xc8]];
            if depth < 4 && master.contains(&id) {
                walk(b, data..end, depth + 1, out);
            }
            pos = end;
        }
    }
    let mut out = Spans { spans: Vec::new(), lengths: Vec::new() };
    walk(b, 0..b.len(), 0, &mut out);
    out
}

/// All inputs made from `seed`: (label, bytes). `random` random mutations of each kind.
fn mutations(seed: &Seed, random: usize, rng: &mut Rng) -> Vec<(String, Vec<u8>)> {
    let b = &seed.bytes;
    let layout = match seed.kind {
        Kind::Png => png_layout(b),
        Kind::Gif => gif_layout(b),
        Kind::Mp4 => mp4_layout(b),
        Kind::WebM => webm_layout(b),
    };
    assert!(layout.spans.len() >= 4, "{}: the corpus file has structure", seed.name);
    let mut out = Vec::new();
    let mut push = |what: String, bytes: Vec<u8>| out.push((format!("{}/{what}", seed.name), bytes));
    // Truncation at every boundary (and one byte either side), and at random points.
    for span in &layout.spans {
        for cut in [span.start, span.start + 1, span.end.saturating_sub(1), span.end] {
            push(format!("cut-{cut}"), b[..cut.min(b.len())].to_vec());
        }
    }
    for _ in 0..random / 4 {
        let cut = rng.below(b.len());
        push(format!("cut-{cut}"), b[..cut].to_vec());
    }
    // Length fields: 0, 0x7fffffff, 0xffffffff, one more and one less than they say.
    for &(at, width) in &layout.lengths {
        let old = b[at..at + width].iter().fold(0u64, |v, &x| v << 8 | u64::from(x));
        let max = if width >= 8 { u64::MAX } else { (1u64 << (8 * width)) - 1 };
        for value in [0, 0x7fff_ffff, 0xffff_ffff, old.wrapping_add(1), old.wrapping_sub(1)] {
            let value = value.min(max);
            let mut m = b.clone();
            for (i, byte) in m[at..at + width].iter_mut().enumerate() {
                *byte = (value >> (8 * (width - 1 - i))) as u8;
            }
            push(format!("length-{at}={value:#x}"), m);
        }
    }
    // Spans duplicated and dropped (each), swapped (random pairs).
    for (i, span) in layout.spans.iter().enumerate() {
        let mut dup = b[..span.end].to_vec();
        dup.extend_from_slice(&b[span.clone()]);
        dup.extend_from_slice(&b[span.end..]);
        push(format!("dup-{i}"), dup);
        let mut drop = b[..span.start].to_vec();
        drop.extend_from_slice(&b[span.end..]);
        push(format!("drop-{i}"), drop);
    }
    for _ in 0..random / 4 {
        let (x, y) = (rng.below(layout.spans.len()), rng.below(layout.spans.len()));
        let (first, second) = (&layout.spans[x.min(y)], &layout.spans[x.max(y)]);
        if first.end > second.start {
            continue;
        }
        let mut m = b[..first.start].to_vec();
        m.extend_from_slice(&b[second.clone()]);
        m.extend_from_slice(&b[first.end..second.start]);
        m.extend_from_slice(&b[first.clone()]);
        m.extend_from_slice(&b[second.end..]);
        push(format!("swap-{x}-{y}"), m);
    }
    // Bit flips, byte overwrites (random or boundary values), inserted bytes.
    for n in 0..random {
        let mut m = b.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(m.len());
            m[at] ^= 1 << rng.below(8);
        }
        push(format!("flip-{n}"), m);
        let mut m = b.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(m.len());
            m[at] = [0, 0xff, 0x7f, 0x80, rng.next() as u8][rng.below(5)];
        }
        push(format!("byte-{n}"), m);
    }
    for n in 0..random / 4 {
        let mut m = b.clone();
        let at = rng.below(m.len());
        let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
        m.splice(at..at, extra);
        push(format!("insert-{n}"), m);
    }
    out
}

fn graph_text() -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/i4vgen_demo.json")).unwrap();
    assert!(text.contains("a red ball"), "the demo preset's prompt changed; change this test with it");
    text.replace("a red ball", "a \"red\" ball — café ✓")
}

/// A clip of 4 frames of 32 x 24 with gradients (more than 256 colours: the GIF palette is quantized).
fn clip() -> Video {
    let frames = (0..4u32)
        .map(|i| RgbImage::from_fn(32, 24, |x, y| Rgb([(x * 8) as u8, (y * 10) as u8, (i * 60 + x) as u8])))
        .collect();
    Video { frames, fps: 8.0, prompt: "fuzz".into(), seed: 3, latents: None }
}

fn corpus(dir: &Path, graph: &str) -> Vec<Seed> {
    let options = EncodeOptions { graph: Some(graph.to_string()), preset: "ultrafast".into(), ..Default::default() };
    let made = |name: &str| {
        let path = dir.join(name);
        export(&clip(), &path, &options, &mut |_, _| ControlFlow::Continue(())).unwrap();
        path
    };
    let still = meta::encode_png_with_text(&clip().frames[0], GRAPH_KEY, graph).unwrap();
    let frame = std::fs::read(made("frames").join("frame_0000.png")).unwrap();
    let read = |name: &str| std::fs::read(made(name)).unwrap();
    vec![
        Seed { name: "png", ext: "png", kind: Kind::Png, bytes: still },
        Seed { name: "frame", ext: "png", kind: Kind::Png, bytes: frame },
        Seed { name: "apng", ext: "png", kind: Kind::Png, bytes: read("clip.png") },
        Seed { name: "gif", ext: "gif", kind: Kind::Gif, bytes: read("clip.gif") },
        Seed { name: "mp4", ext: "mp4", kind: Kind::Mp4, bytes: read("clip.mp4") },
        Seed { name: "webm", ext: "webm", kind: Kind::WebM, bytes: read("clip.webm") },
    ]
}

/// Runs the three readers on `bytes`, written to `path` for `embedded_graph`.
fn run(path: &Path, bytes: &[u8]) -> (std::thread::Result<Results>, usize) {
    std::fs::write(path, bytes).unwrap();
    let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
    guarded(|| Results {
        file: embedded_graph(path).map_err(|e| e.to_string()),
        png: meta::png_text(bytes, GRAPH_KEY).map_err(|e| e.to_string()),
        gif: meta::gif_comment(bytes).map_err(|e| e.to_string()),
        file_name,
    })
}

/// `gif` with an extension (`label`) of `count` sub-blocks of `size` bytes right after the colour table (so it
/// is the first comment, when it is one).
fn gif_with_sub_blocks(gif: &[u8], label: u8, count: usize, size: u8) -> Vec<u8> {
    let at = gif_layout(gif).spans[3].start;
    let mut out = gif[..at].to_vec();
    out.extend_from_slice(&[0x21, label]);
    for i in 0..count {
        out.push(size);
        out.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, usize::from(size)));
    }
    out.push(0);
    out.extend_from_slice(&gif[at..]);
    out
}

#[test]
fn clip_readers_survive_damaged_and_hostile_files() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let graph = graph_text();
    let seeds = corpus(dir.path(), &graph);
    // FFmpeg logs every damaged MP4/WebM it is given; the results are checked here instead.
    ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Quiet);
    let frames_dir = dir.path().join("frames-in");
    std::fs::create_dir(&frames_dir).unwrap();

    // The corpus itself reads back exactly, through every reader that applies.
    for seed in &seeds {
        let (outcome, _) = run(&dir.path().join(format!("seed.{}", seed.ext)), &seed.bytes);
        let results = outcome.unwrap();
        assert_eq!(results.file, Ok(Some(graph.clone())), "{}: embedded_graph", seed.name);
        match seed.kind {
            Kind::Png => assert_eq!(results.png, Ok(Some(graph.clone())), "{}", seed.name),
            Kind::Gif => assert_eq!(results.gif, Ok(Some(graph.clone())), "{}", seed.name),
            Kind::Mp4 | Kind::WebM => {}
        }
    }

    let mut rng = Rng(0x5eed_c11b);
    let (mut problems, mut inputs) = (Vec::new(), 0usize);
    let (mut found, mut none, mut errors) = (0usize, 0usize, 0usize);
    for seed in &seeds {
        let random = if matches!(seed.kind, Kind::Mp4 | Kind::WebM) { 80 } else { 600 };
        let path = dir.path().join(format!("input.{}", seed.ext));
        let seed_started = (Instant::now(), inputs);
        for (label, bytes) in mutations(seed, random, &mut rng) {
            let (outcome, largest) = run(&path, &bytes);
            problems.extend(verdict(&label, &outcome, largest));
            if let Ok(results) = &outcome {
                match &results.file {
                    Ok(Some(_)) => found += 1,
                    Ok(None) => none += 1,
                    Err(_) => errors += 1,
                }
            }
            if seed.name == "frame" {
                // The same bytes as the first frame of a PNG folder.
                std::fs::write(frames_dir.join("frame_0000.png"), &bytes).unwrap();
                let (outcome, largest) = guarded(|| embedded_graph(&frames_dir).map(|_| ()).map_err(|e| e.to_string()));
                problems.extend(verdict(&format!("{label} (folder)"), &outcome, largest));
            }
            inputs += 1;
        }
        eprintln!("{}: {} inputs in {:.1?}", seed.name, inputs - seed_started.1, seed_started.0.elapsed());
    }

    // Hostile sizes: huge sub-block counts and chunks over the caps.
    let gif = &seeds[3].bytes;
    let over = gif_with_sub_blocks(gif, 0xfe, MAX_TEXT / 255 + 2, 255);
    let many_app = gif_with_sub_blocks(gif, 0xff, 100_000, 1);
    // A 2x2 PNG with `texts` tEXt chunks and an iTXt chunk of `len` bytes (the graph when `len` is 0).
    let png_with = |texts: usize, len: usize| {
        let image = RgbImage::new(2, 2);
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        for _ in 0..texts {
            encoder.add_text_chunk("a".into(), "bcd".into()).unwrap();
        }
        let text = if len == 0 { graph.clone() } else { "x".repeat(len) };
        encoder.add_itxt_chunk(GRAPH_KEY.into(), text).unwrap();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(image.as_raw()).unwrap();
        writer.finish().unwrap();
        out
    };
    let hostile: [(&str, &str, Vec<u8>); 5] = [
        ("gif-comment-over-cap", "gif", over),
        ("gif-100000-app-sub-blocks", "gif", many_app),
        ("png-50000-text-chunks", "png", png_with(50_000, 0)),
        ("png-itxt-12MiB", "png", png_with(0, 12 << 20)),
        ("png-itxt-40MiB", "png", png_with(0, 40 << 20)),
    ];
    for (label, ext, bytes) in &hostile {
        let (outcome, largest) = run(&dir.path().join(format!("hostile.{ext}")), bytes);
        problems.extend(verdict(label, &outcome, largest));
        let Ok(results) = outcome else { continue };
        eprintln!(
            "{label}: largest allocation {largest} bytes, embedded_graph {:?}",
            results.file.as_ref().map(|t| t.as_ref().map(String::len))
        );
        let file = results.file;
        match *label {
            "gif-comment-over-cap" => assert!(file.unwrap_err().contains("larger than 8388608 bytes"), "{label}"),
            "gif-100000-app-sub-blocks" => assert_eq!(file, Ok(Some(graph.clone())), "{label}"),
            "png-50000-text-chunks" => assert_eq!(file, Ok(Some(graph.clone())), "{label}"),
            "png-itxt-12MiB" => assert!(file.unwrap_err().contains("larger than 8388608 bytes"), "{label}"),
            _ => assert!(file.unwrap_err().contains("more than"), "{label}"),
        }
        inputs += 1;
    }

    let elapsed = started.elapsed();
    eprintln!(
        "{} seeds, {inputs} inputs in {elapsed:.1?}: embedded_graph found a graph {found} times, none {none}, \
         errors {errors}",
        seeds.len()
    );
    assert!(problems.is_empty(), "{} problems, the first: {:#?}", problems.len(), &problems[..problems.len().min(8)]);
    // The mutations reach both sides: damage that is refused and damage (in image data) that is not.
    assert!(found > 100 && errors > 100, "found {found}, none {none}, errors {errors}");
    assert!(elapsed.as_secs() < 120, "{elapsed:?}");
}

#[test]
fn the_checks_can_fail() {
    // An allocation over the cap is seen and reported.
    let (outcome, largest) = guarded(|| std::hint::black_box(Vec::<u8>::with_capacity(CAP + 1)).capacity());
    assert!(largest > CAP, "{largest}");
    let problems = verdict("deliberate", &outcome.map(|_| ()), largest);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("allocation asked for"), "{problems:?}");
    // A request above the refusal limit gets no memory.
    let layout = Layout::from_size_align(REFUSE_ABOVE + 1, 1).unwrap();
    // SAFETY: a non-zero-size layout; the pointer is only compared with null.
    let pointer = unsafe { std::alloc::alloc(layout) };
    assert!(pointer.is_null(), "the tracker must refuse {} bytes", REFUSE_ABOVE + 1);
    // A panic is caught and reported.
    let (outcome, largest) = guarded(|| -> () { panic!("a deliberate panic") });
    assert_eq!(verdict("deliberate", &outcome, largest), ["deliberate: panicked"]);
    // An error that does not name the file, and an over-long text, are reported.
    let results = Results {
        file: Err("PNG file is damaged".into()),
        png: Ok(Some("x".repeat(MAX_TEXT + 1))),
        gif: Ok(None),
        file_name: "input.png".into(),
    };
    assert!(results.problem().unwrap().contains("png_text"), "{:?}", results.problem());
    let results = Results { png: Ok(None), ..results };
    assert!(results.problem().unwrap().contains("without the file"), "{:?}", results.problem());
}
