//! Exported clips decoded back with FFmpeg: frame count, size, frame rate, pixels, the embedded graph; and bad
//! input, each with a clear error and no file left behind.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::ControlFlow;
use std::path::Path;

use image::{Rgb, RgbImage};
use stepstone::video::encode::{EncodeOptions, Format, GifLoop, decode, embedded_graph, export, sequence};
use stepstone::video::{ExportError, Video};

/// A clip with smooth gradients and a moving square (what lossy codecs must keep).
fn smooth_clip(frames: usize, w: u32, h: u32) -> Video {
    let frames = (0..frames)
        .map(|i| {
            RgbImage::from_fn(w, h, |x, y| {
                let inside = x / 8 == (i as u32 * 2) % (w / 8) && y / 8 == 2;
                if inside {
                    Rgb([250, 240, 30])
                } else {
                    Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (64 + i * 8) as u8])
                }
            })
        })
        .collect();
    Video { frames, fps: 8.0, prompt: "a test".into(), seed: 1, latents: None }
}

/// A clip of a few flat colours (a GIF palette holds them exactly).
fn flat_clip(frames: usize, w: u32, h: u32) -> Video {
    let colours = [[255, 0, 0], [0, 128, 255], [20, 200, 20], [240, 240, 240], [10, 10, 10]];
    let frames = (0..frames)
        .map(|i| RgbImage::from_fn(w, h, |x, y| Rgb(colours[((x / 6 + y / 5) as usize + i) % colours.len()])))
        .collect();
    Video { frames, fps: 8.0, prompt: "flat".into(), seed: 2, latents: None }
}

fn graph_text() -> String {
    // A real preset, with non-ASCII text, newlines and quotes, as an export embeds it.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/i4vgen_demo.json")).unwrap();
    assert!(text.contains("a red ball"), "the demo preset's prompt changed; change this test with it");
    text.replace("a red ball", "a \"red\" ball — café ✓")
}

fn options() -> EncodeOptions {
    EncodeOptions { graph: Some(graph_text()), preset: "veryfast".into(), ..EncodeOptions::default() }
}

fn go(_: usize, _: usize) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn mean_abs_error(a: &[RgbImage], b: &[RgbImage]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.as_raw().iter().zip(y.as_raw()) {
            sum += (f64::from(*p) - f64::from(*q)).abs();
            n += 1;
        }
    }
    sum / n as f64
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn lossy_formats_round_trip_within_bounds_with_the_graph_inside() {
    let dir = tempfile::tempdir().unwrap();
    let clip = smooth_clip(8, 64, 48);
    // (file, codec, bound on the mean absolute error in 8-bit levels; measured 1.56 for H.264 CRF 18 veryfast,
    // 1.30 for VP9 CRF 18 on this clip)
    for (name, codec, bound) in [("clip.mp4", "h264", 2.0), ("clip.webm", "vp9", 1.8)] {
        let path = dir.path().join(name);
        let mut calls = Vec::new();
        let format = export(&clip, &path, &options(), &mut |done, total| {
            calls.push((done, total));
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format, Format::from_path(&path).unwrap());
        assert_eq!(calls.len(), 8, "{name}: one progress report per encoded frame");
        assert_eq!(calls.last(), Some(&(8, 8)));
        let back = decode(&path).unwrap();
        assert_eq!(back.codec, codec);
        assert_eq!((back.frames.len(), back.width, back.height), (8, 64, 48), "{name}");
        assert!((back.fps - 8.0).abs() < 1e-6, "{name}: frame rate {}", back.fps);
        let err = mean_abs_error(&back.frames, &clip.frames);
        eprintln!("{name}: mean absolute error {err:.3} levels");
        assert!(err < bound, "{name}: mean absolute error {err:.3} levels, bound {bound}");
        assert_eq!(embedded_graph(&path).unwrap().as_deref(), Some(graph_text().as_str()), "{name}: embedded graph");
    }
    assert_eq!(files_in(dir.path()), ["clip.mp4", "clip.webm"], "no temporary files remain");
}

#[test]
fn lossless_formats_round_trip_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let clip = flat_clip(6, 40, 30);
    for name in ["clip.gif", "clip.png", "frames"] {
        let path = dir.path().join(name);
        export(&clip, &path, &options(), &mut go).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(embedded_graph(&path).unwrap().as_deref(), Some(graph_text().as_str()), "{name}: embedded graph");
        let frames: Vec<RgbImage> = if name == "frames" {
            (0..6).map(|i| image::open(path.join(format!("frame_{i:04}.png"))).unwrap().to_rgb8()).collect()
        } else {
            let back = decode(&path).unwrap();
            assert_eq!((back.width, back.height), (40, 30), "{name}");
            // GIF delays are whole centiseconds: 8 fps is stored as 12 or 13 cs per frame.
            let tol = if name == "clip.gif" { 0.4 } else { 1e-6 };
            assert!((back.fps - 8.0).abs() < tol, "{name}: frame rate {} ({})", back.fps, back.codec);
            back.frames
        };
        assert_eq!(frames.len(), 6, "{name}: frame count");
        for (i, (got, want)) in frames.iter().zip(&clip.frames).enumerate() {
            assert!(
                got == want,
                "{name}: frame {i} differs (mean abs {})",
                mean_abs_error(std::slice::from_ref(got), std::slice::from_ref(want))
            );
        }
    }
}

#[test]
fn pingpong_repeat_odd_sizes_and_loop_settings() {
    let dir = tempfile::tempdir().unwrap();
    let clip = smooth_clip(5, 63, 47);
    let seq = sequence(&clip.frames, true, 2);
    assert_eq!(seq.len(), (5 + 3) * 2, "forward 5, back 3 (ends not repeated), twice");
    assert!(std::ptr::eq(seq[5], &clip.frames[3]) && std::ptr::eq(seq[8], &clip.frames[0]));

    let path = dir.path().join("odd.mp4");
    let opts = EncodeOptions { pingpong: true, repeat: 2, ..options() };
    export(&clip, &path, &opts, &mut go).unwrap();
    let back = decode(&path).unwrap();
    assert_eq!((back.frames.len(), back.width, back.height), (16, 64, 48), "padded to even sides");

    // GIF loop flag: the NETSCAPE2.0 extension's count (0 = forever), absent when played once.
    for (gif_loop, want) in [(GifLoop::Forever, Some(0u16)), (GifLoop::Times(3), Some(3)), (GifLoop::Once, None)] {
        let path = dir.path().join(format!("loop-{gif_loop:?}.gif"));
        export(&flat_clip(3, 16, 16), &path, &EncodeOptions { gif_loop, ..options() }, &mut go).unwrap();
        assert_eq!(netscape_loop(&std::fs::read(&path).unwrap()), want, "{gif_loop:?}");
        assert_eq!(decode(&path).unwrap().frames.len(), 3, "the loop flag does not repeat frames in the file");
    }
}

/// The loop count of a GIF's NETSCAPE2.0 application extension, if it has one.
fn netscape_loop(gif: &[u8]) -> Option<u16> {
    let at = gif.windows(11).position(|w| w == b"NETSCAPE2.0")?;
    let sub = &gif[at + 11..];
    (sub[0] == 3 && sub[1] == 1).then(|| u16::from_le_bytes([sub[2], sub[3]]))
}

#[test]
fn bad_input_is_named_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let clip = smooth_clip(3, 16, 16);

    let err = export(&clip, &dir.path().join("clip.avi"), &options(), &mut go).unwrap_err();
    assert!(matches!(err, ExportError::UnknownFormat { .. }), "{err}");
    assert!(err.to_string().contains("'.avi'") && err.to_string().contains(".mp4"), "{err}");

    let empty = Video { frames: vec![], ..clip.clone() };
    let err = export(&empty, &dir.path().join("empty.mp4"), &options(), &mut go).unwrap_err();
    assert!(err.to_string().contains("no frames"), "{err}");

    let missing = EncodeOptions { encoder: Some("libx265-not-built".into()), ..options() };
    let err = export(&clip, &dir.path().join("clip.mp4"), &missing, &mut go).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("'libx265-not-built'") && text.contains("MP4") && text.contains("install"), "{text}");

    let existing = dir.path().join("keep.gif");
    std::fs::write(&existing, b"precious").unwrap();
    let err = export(&clip, &existing, &options(), &mut go).unwrap_err();
    assert!(err.to_string().contains("already exists") && err.to_string().contains("overwrite"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious", "the existing file is untouched");
    export(&clip, &existing, &EncodeOptions { overwrite: true, ..options() }, &mut go).unwrap();
    assert_eq!(decode(&existing).unwrap().frames.len(), 3, "replaced when asked");

    // A directory that cannot be made (its parent is a file; permissions do not stop root).
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let err = export(&clip, &blocker.join("clip.mp4"), &options(), &mut go).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");

    // Cancelled mid-way: no file, no temporary file.
    let mut seen = 0;
    let err = export(&smooth_clip(6, 16, 16), &dir.path().join("cancel.webm"), &options(), &mut |done, _| {
        seen = done;
        if done == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap_err();
    assert!(matches!(err, ExportError::Cancelled), "{err}");
    assert_eq!(seen, 2, "stopped at the frame that cancelled");
    assert_eq!(files_in(dir.path()), ["keep.gif", "not-a-dir"], "nothing else was left behind");
}
