//! GIF and animated PNG files, written with the `gif` and `png` crates, with the graph preset inside (a GIF
//! Comment Extension, a PNG `iTXt` chunk before the image data).
//!
//! - GIF: one global colour table for the whole clip ([`ClipPalette`]); the NETSCAPE2.0 loop block for
//!   "forever" (count 0) and "N extra plays" (count N), none for "once"; frame i starts at
//!   round(i * 100 / fps) centiseconds (the timestamps FFmpeg's GIF muxer wrote).
//! - APNG: 8-bit RGB, every frame a full frame; `num_plays` 0 for forever, N + 1 for N extra plays, 1 for
//!   once; the frame delay is 1/fps as a fraction (exact for rates like 8 or 30000/1001).

use std::borrow::Cow;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use image::RgbImage;

use super::ExportError;
use super::encode::{EncodeOptions, Format, GifLoop};
use super::meta::{GRAPH_KEY, MAX_TEXT, MetaError};
use super::palette::ClipPalette;

/// Writes `frames` as a GIF or APNG (`format`) to the new file `tmp`. `progress(done, total)` is called after
/// each frame; `Break` stops with [`ExportError::Cancelled`] (the caller removes the file).
pub(super) fn write_file(
    frames: &[&RgbImage],
    tmp: &Path,
    format: Format,
    options: &EncodeOptions,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<(), ExportError> {
    let io = |e: std::io::Error| ExportError::Write { path: tmp.to_path_buf(), message: e.to_string() };
    let mut out = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
    let graph = options.graph.as_deref();
    match format {
        Format::Gif => write_gif(&mut out, frames, options.fps, options.gif_loop, graph, tmp, progress)?,
        Format::Apng => write_apng(&mut out, frames, options.fps, options.gif_loop, graph, tmp, progress)?,
        other => return Err(ExportError::Settings(format!("{} is not written here", other.name()))),
    }
    out.flush().map_err(io)
}

/// The size shared by all frames, checked to be non-empty and uniform.
fn frame_size(frames: &[&RgbImage]) -> Result<(u32, u32), ExportError> {
    let (w, h) = frames.first().map(|f| f.dimensions()).ok_or(ExportError::NoFrames)?;
    if frames.iter().any(|f| f.dimensions() != (w, h)) {
        return Err(ExportError::Settings("the frames of the clip differ in size".to_string()));
    }
    if w == 0 || h == 0 {
        return Err(ExportError::Settings(format!("the frames are {w}x{h} pixels")));
    }
    Ok((w, h))
}

fn graph_text<'a>(graph: Option<&'a str>, format: &'static str, path: &Path) -> Result<Option<&'a str>, ExportError> {
    match graph {
        Some(text) if text.len() > MAX_TEXT => Err(ExportError::Write {
            path: path.to_path_buf(),
            message: MetaError::TextTooLarge { format }.to_string(),
        }),
        other => Ok(other),
    }
}

/// GIF frame delays in centiseconds: frame i starts at round(i * 100 / fps) and the last lasts
/// round(100 / fps); every delay at least 1 (a 0 makes viewers pick their own) and at most 65535.
pub fn gif_delays(count: usize, fps: f64) -> Vec<u16> {
    let start = |i: usize| (i as f64 * 100.0 / fps).round();
    (0..count)
        .map(|i| {
            let delay = if i + 1 < count { start(i + 1) - start(i) } else { (100.0 / fps).round() };
            delay.clamp(1.0, f64::from(u16::MAX)) as u16
        })
        .collect()
}

/// Writes a GIF of `frames` to `out`.
pub fn write_gif<W: Write>(
    out: &mut W,
    frames: &[&RgbImage],
    fps: f64,
    gif_loop: GifLoop,
    graph: Option<&str>,
    path: &Path,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<(), ExportError> {
    let (w, h) = frame_size(frames)?;
    let (Ok(width), Ok(height)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(ExportError::Settings(format!("a GIF is at most 65535 pixels on a side; the clip is {w}x{h}")));
    };
    let graph = graph_text(graph, "GIF comment", path)?;
    let fail = |e: gif::EncodingError| ExportError::Write { path: path.to_path_buf(), message: e.to_string() };
    let palette = ClipPalette::new(frames);
    let mut encoder = gif::Encoder::new(out, width, height, &palette.rgb_table()).map_err(fail)?;
    let repeat = match gif_loop {
        GifLoop::Forever => Some(gif::Repeat::Infinite),
        GifLoop::Times(0) | GifLoop::Once => None,
        GifLoop::Times(n) => Some(gif::Repeat::Finite(n)),
    };
    if let Some(repeat) = repeat {
        encoder.set_repeat(repeat).map_err(fail)?;
    }
    if let Some(text) = graph {
        // The crate splits the text into sub-blocks of at most 255 bytes.
        encoder.write_raw_extension(gif::AnyExtension(0xfe), &[text.as_bytes()]).map_err(fail)?;
    }
    let total = frames.len();
    for (i, (image, delay)) in frames.iter().zip(gif_delays(total, fps)).enumerate() {
        let frame =
            gif::Frame { width, height, delay, buffer: Cow::Owned(palette.map_frame(image)), ..gif::Frame::default() };
        encoder.write_frame(&frame).map_err(fail)?;
        if progress(i + 1, total).is_break() {
            return Err(ExportError::Cancelled);
        }
    }
    encoder.into_inner().map_err(fail)?;
    Ok(())
}

/// The best fraction p/q for `x` > 0 with p and q at most `max` (continued fractions), if p > 0.
fn fraction(x: f64, max: u64) -> Option<(u64, u64)> {
    if !(x.is_finite() && x > 0.0) {
        return None;
    }
    // Convergents h/k, starting from h(-2)/k(-2) = 0/1 and h(-1)/k(-1) = 1/0.
    let (mut h0, mut h1, mut k0, mut k1) = (0u64, 1u64, 1u64, 0u64);
    let (mut rest, mut best) = (x, None);
    for _ in 0..64 {
        let whole = rest.floor();
        if whole > max as f64 {
            break;
        }
        let a = whole as u64;
        let (Some(h), Some(k)) =
            (a.checked_mul(h1).and_then(|v| v.checked_add(h0)), a.checked_mul(k1).and_then(|v| v.checked_add(k0)))
        else {
            break;
        };
        if h > max || k > max {
            break;
        }
        best = Some((h, k));
        (h0, h1, k0, k1) = (h1, h, k1, k);
        let frac = rest - whole;
        if frac < 1e-12 {
            break;
        }
        rest = 1.0 / frac;
    }
    best.filter(|&(h, _)| h > 0)
}

/// The APNG frame delay for `fps` as (numerator, denominator) seconds: 1/fps as a fraction.
pub fn apng_delay(fps: f64) -> Option<(u16, u16)> {
    let (num, den) = fraction(fps, u64::from(u16::MAX))?;
    Some((u16::try_from(den).ok()?, u16::try_from(num).ok()?))
}

/// Writes an animated PNG of `frames` to `out`.
pub fn write_apng<W: Write>(
    out: &mut W,
    frames: &[&RgbImage],
    fps: f64,
    gif_loop: GifLoop,
    graph: Option<&str>,
    path: &Path,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<(), ExportError> {
    let (width, height) = frame_size(frames)?;
    let graph = graph_text(graph, "PNG iTXt text", path)?;
    let fail = |e: png::EncodingError| ExportError::Write { path: path.to_path_buf(), message: e.to_string() };
    let (delay_num, delay_den) = apng_delay(fps).ok_or_else(|| {
        ExportError::Settings(format!("frame rate {fps} cannot be an APNG frame delay (1/65535 to 65535 s)"))
    })?;
    let count = u32::try_from(frames.len()).map_err(|_| ExportError::Settings("too many frames".to_string()))?;
    let plays = match gif_loop {
        GifLoop::Forever => 0,
        GifLoop::Times(n) => u32::from(n) + 1,
        GifLoop::Once => 1,
    };
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_animated(count, plays).map_err(fail)?;
    encoder.set_frame_delay(delay_num, delay_den).map_err(fail)?;
    if let Some(text) = graph {
        encoder.add_itxt_chunk(GRAPH_KEY.to_string(), text.to_string()).map_err(fail)?;
    }
    let mut writer = encoder.write_header().map_err(fail)?;
    let total = frames.len();
    for (i, image) in frames.iter().enumerate() {
        writer.write_image_data(image.as_raw()).map_err(fail)?;
        if progress(i + 1, total).is_break() {
            return Err(ExportError::Cancelled);
        }
    }
    writer.finish().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(_: usize, _: usize) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    /// Three 20x15 frames of 4 colours, or with `gradient` the third one of 300 colours.
    fn clip(gradient: bool) -> Vec<RgbImage> {
        let colours = [[255, 0, 0], [0, 0, 255], [10, 200, 30], [250, 250, 250]];
        (0..3u32)
            .map(|f| {
                RgbImage::from_fn(20, 15, |x, y| match (gradient && f == 2, x, y) {
                    (true, ..) => image::Rgb([(x * 12) as u8, (y * 17) as u8, 7]),
                    (false, x, y) => image::Rgb(colours[((x + y + f) % 4) as usize]),
                })
            })
            .collect()
    }

    #[test]
    fn a_gif_holds_the_frames_delays_loop_and_graph() {
        let frames = clip(false);
        let refs: Vec<&RgbImage> = frames.iter().collect();
        let graph = "{\"graph\": \"✓\"}".repeat(100);
        for (gif_loop, want) in [
            (GifLoop::Forever, gif::Repeat::Infinite),
            (GifLoop::Times(2), gif::Repeat::Finite(2)),
            (GifLoop::Once, gif::Repeat::Finite(0)),
        ] {
            let mut out = Vec::new();
            write_gif(&mut out, &refs, 8.0, gif_loop, Some(&graph), Path::new("x.gif"), &mut go).unwrap();
            assert_eq!(out.windows(11).any(|w| w == b"NETSCAPE2.0"), gif_loop != GifLoop::Once, "{gif_loop:?}");
            assert_eq!(super::super::meta::gif_comment(&out).unwrap().as_deref(), Some(graph.as_str()));
            let mut options = gif::DecodeOptions::new();
            options.set_color_output(gif::ColorOutput::RGBA);
            let mut decoder = options.read_info(out.as_slice()).unwrap();
            assert_eq!(decoder.repeat(), want, "{gif_loop:?}");
            let mut delays = Vec::new();
            for want in &frames {
                let frame = decoder.read_next_frame().unwrap().unwrap();
                delays.push(frame.delay);
                let rgb: Vec<u8> = frame.buffer.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                assert_eq!(rgb, want.as_raw().as_slice(), "four colours are kept exactly");
            }
            assert_eq!(delays, [13, 12, 13]);
            assert!(decoder.read_next_frame().unwrap().is_none());
        }
        // Without a graph there is no comment; with more than 256 colours the palette is quantized.
        let frames = clip(true);
        let refs: Vec<&RgbImage> = frames.iter().collect();
        let mut out = Vec::new();
        write_gif(&mut out, &refs, 10.0, GifLoop::Forever, None, Path::new("x.gif"), &mut go).unwrap();
        assert_eq!(super::super::meta::gif_comment(&out).unwrap(), None);
        let decoder = gif::DecodeOptions::new().read_info(out.as_slice()).unwrap();
        assert_eq!(decoder.global_palette().map(<[u8]>::len), Some(256 * 3));
    }

    #[test]
    fn an_apng_holds_the_frames_delay_plays_and_graph() {
        let frames = clip(true);
        let refs: Vec<&RgbImage> = frames.iter().collect();
        for (gif_loop, plays) in [(GifLoop::Forever, 0), (GifLoop::Times(2), 3), (GifLoop::Once, 1)] {
            let mut out = Vec::new();
            write_apng(&mut out, &refs, 8.0, gif_loop, Some("café ✓"), Path::new("x.png"), &mut go).unwrap();
            assert_eq!(super::super::meta::png_text(&out, GRAPH_KEY).unwrap().as_deref(), Some("café ✓"));
            let mut reader = png::Decoder::new(std::io::Cursor::new(&out)).read_info().unwrap();
            let actl = reader.info().animation_control.unwrap();
            assert_eq!((actl.num_frames, actl.num_plays), (3, plays), "{gif_loop:?}");
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            for want in &frames {
                reader.next_frame(&mut buf).unwrap();
                let fctl = reader.info().frame_control.unwrap();
                assert_eq!((fctl.delay_num, fctl.delay_den), (1, 8));
                assert_eq!(&buf[..], want.as_raw().as_slice(), "lossless");
            }
        }
    }

    #[test]
    fn writers_stop_when_cancelled_and_refuse_bad_input() {
        let frames = clip(false);
        let refs: Vec<&RgbImage> = frames.iter().collect();
        let mut seen = Vec::new();
        let mut cancel = |done: usize, total: usize| {
            seen.push((done, total));
            if done == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        };
        let err = write_gif(&mut Vec::new(), &refs, 8.0, GifLoop::Once, None, Path::new("x.gif"), &mut cancel);
        assert!(matches!(err, Err(ExportError::Cancelled)), "{err:?}");
        let err = write_apng(&mut Vec::new(), &refs, 8.0, GifLoop::Once, None, Path::new("x.png"), &mut cancel);
        assert!(matches!(err, Err(ExportError::Cancelled)), "{err:?}");
        assert_eq!(seen, [(1, 3), (2, 3), (1, 3), (2, 3)]);

        let big = "x".repeat(MAX_TEXT + 1);
        let err = write_gif(&mut Vec::new(), &refs, 8.0, GifLoop::Once, Some(&big), Path::new("x.gif"), &mut go);
        assert!(err.unwrap_err().to_string().contains("x.gif: the GIF comment is larger than 8388608 bytes"));
        let err = write_apng(&mut Vec::new(), &refs, 8.0, GifLoop::Once, Some(&big), Path::new("x.png"), &mut go);
        assert!(err.unwrap_err().to_string().contains("x.png: the PNG iTXt text is larger than 8388608 bytes"));
        let wide = [RgbImage::new(70_000, 1)];
        let err = write_gif(&mut Vec::new(), &[&wide[0]], 8.0, GifLoop::Once, None, Path::new("x.gif"), &mut go);
        assert!(err.unwrap_err().to_string().contains("at most 65535 pixels"));
        let mixed = [RgbImage::new(2, 2), RgbImage::new(3, 2)];
        let err =
            write_apng(&mut Vec::new(), &[&mixed[0], &mixed[1]], 8.0, GifLoop::Once, None, Path::new("x"), &mut go);
        assert!(err.unwrap_err().to_string().contains("differ in size"));
        let err = write_apng(&mut Vec::new(), &refs, 1e6, GifLoop::Once, None, Path::new("x.png"), &mut go);
        assert!(err.unwrap_err().to_string().contains("frame rate"));
    }

    #[test]
    fn gif_delays_follow_the_rounded_timestamps() {
        assert_eq!(gif_delays(6, 8.0), [13, 12, 13, 12, 13, 13]);
        assert_eq!(gif_delays(3, 10.0), [10, 10, 10]);
        assert_eq!(gif_delays(4, 400.0), [1, 1, 1, 1], "at least 1 cs");
        assert_eq!(gif_delays(2, 0.001), [u16::MAX, u16::MAX], "at most 65535 cs");
        // The sum of all but the last delay is the last frame's start time.
        let delays = gif_delays(25, 24.0);
        assert_eq!(delays[..24].iter().map(|&d| u32::from(d)).sum::<u32>(), 100);
    }

    #[test]
    fn apng_delays_are_exact_fractions() {
        assert_eq!(apng_delay(8.0), Some((1, 8)));
        assert_eq!(apng_delay(30000.0 / 1001.0), Some((1001, 30000)));
        assert_eq!(apng_delay(0.5), Some((2, 1)));
        assert_eq!(apng_delay(12.5), Some((2, 25)));
        assert_eq!(apng_delay(0.0), None);
        assert_eq!(apng_delay(f64::NAN), None);
        assert_eq!(apng_delay(1e6), None, "faster than 1/65535 s");
        // π: the best fraction with terms up to 65535 is 355/113.
        assert_eq!(apng_delay(std::f64::consts::PI), Some((113, 355)));
    }
}
