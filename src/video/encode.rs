//! Writing clips with FFmpeg (through ffmpeg-next, against the system libraries) and reading them back.
//!
//! Formats, picked from the output path's extension:
//! - `.mp4` / `.m4v`: H.264 (libx264), yuv420p, CRF and preset; odd sizes are padded to even by repeating
//!   the last row/column (yuv420p needs even sizes);
//! - `.webm`: VP9 (libvpx-vp9), constant quality (CRF);
//! - `.gif`: a palette generated from all frames ([`super::palette`]), loop forever / N times / once;
//! - `.png` / `.apng`: animated PNG (lossless);
//! - no extension: a folder of PNG frames.
//!
//! Every format carries the graph preset that made the clip: a `comment` tag (MP4, WebM), an `iTXt` chunk
//! (APNG, and the first PNG of a sequence) or a GIF comment extension ([`super::meta`]). Files are written
//! to a temporary name in the same directory and renamed at the end, so a cancelled or failed export leaves
//! nothing behind.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ffmpeg_next as ffmpeg;
use image::RgbImage;

use super::{ExportError, Video};

/// A clip file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Mp4,
    WebM,
    Gif,
    Apng,
    PngSequence,
}

impl Format {
    /// The format of an output path, from its extension (none: a PNG frame sequence folder).
    pub fn from_path(path: &Path) -> Result<Format, ExportError> {
        let Some(ext) = path.extension() else { return Ok(Format::PngSequence) };
        match ext.to_string_lossy().to_lowercase().as_str() {
            "mp4" | "m4v" => Ok(Format::Mp4),
            "webm" => Ok(Format::WebM),
            "gif" => Ok(Format::Gif),
            "png" | "apng" => Ok(Format::Apng),
            other => Err(ExportError::UnknownFormat { path: path.to_path_buf(), extension: other.to_string() }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Mp4 => "MP4 (H.264)",
            Format::WebM => "WebM (VP9)",
            Format::Gif => "GIF",
            Format::Apng => "animated PNG",
            Format::PngSequence => "PNG frame sequence",
        }
    }

    /// FFmpeg's muxer and encoder names.
    fn ffmpeg_names(self) -> Option<(&'static str, &'static str)> {
        match self {
            Format::Mp4 => Some(("mp4", "libx264")),
            Format::WebM => Some(("webm", "libvpx-vp9")),
            Format::Gif => Some(("gif", "gif")),
            Format::Apng => Some(("apng", "apng")),
            Format::PngSequence => None,
        }
    }
}

/// How a GIF plays in a viewer (separate from [`EncodeOptions::repeat`], which repeats frames in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GifLoop {
    Forever,
    /// Plays this many extra times after the first.
    Times(u16),
    Once,
}

/// Settings of one export.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    pub fps: f64,
    /// H.264 / VP9 constant-quality level (lower is better; 0 is lossless for both).
    pub crf: u32,
    /// x264 speed preset (ultrafast ... veryslow).
    pub preset: String,
    /// Appends the frames in reverse (without repeating the ends), for a seamless back-and-forth.
    pub pingpong: bool,
    /// How many times the sequence is written into the file (1 = once).
    pub repeat: u32,
    pub gif_loop: GifLoop,
    pub overwrite: bool,
    /// The graph preset to embed (JSON text).
    pub graph: Option<String>,
    /// Overrides the encoder (tests; a build with another H.264 encoder).
    pub encoder: Option<String>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            fps: 8.0,
            crf: 18,
            preset: "medium".to_string(),
            pingpong: false,
            repeat: 1,
            gif_loop: GifLoop::Forever,
            overwrite: false,
            graph: None,
            encoder: None,
        }
    }
}

/// The frames as they go into the file: ping-pong, then `repeat` copies.
pub fn sequence(frames: &[RgbImage], pingpong: bool, repeat: u32) -> Vec<&RgbImage> {
    let mut once: Vec<&RgbImage> = frames.iter().collect();
    if pingpong && frames.len() > 2 {
        once.extend(frames[1..frames.len() - 1].iter().rev());
    }
    let mut out = Vec::with_capacity(once.len() * repeat.max(1) as usize);
    for _ in 0..repeat.max(1) {
        out.extend(once.iter().copied());
    }
    out
}

fn init() -> Result<(), ExportError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init().map_err(|e| e.to_string())?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
        Ok(())
    })
    .clone()
    .map_err(|message| ExportError::Ffmpeg { path: PathBuf::new(), message: format!("cannot start FFmpeg: {message}") })
}

/// Writes `video` to `path` in the format its extension names. `progress(done, total)` is called after each
/// encoded frame; `Break` cancels (nothing is left behind). Returns the format written.
pub fn export(
    video: &Video,
    path: &Path,
    options: &EncodeOptions,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<Format, ExportError> {
    if video.frames.is_empty() {
        return Err(ExportError::NoFrames);
    }
    if !(options.fps > 0.0 && options.fps.is_finite()) {
        return Err(ExportError::Settings(format!("frame rate {} is not a positive number", options.fps)));
    }
    // The format, what is there now (overwrite replaces a regular file only) and the folder it goes in.
    let format = super::output::preflight(path, options.overwrite)?;
    let frames = sequence(&video.frames, options.pingpong, options.repeat);
    if format == Format::PngSequence {
        let clip = Video { frames: frames.into_iter().cloned().collect(), ..video.clone() };
        super::write_png_sequence_with(&clip, path, options.overwrite, options.graph.as_deref(), progress)?;
        return Ok(format);
    }
    let tmp = super::output::Temporary::register(super::staging_path(path)?);
    let result = encode(&frames, &tmp.path, format, options, progress).and_then(|()| {
        embed_after(&tmp.path, format, options.graph.as_deref())?;
        // Checked again just before the rename: only a regular file is ever replaced.
        super::output::preflight(path, options.overwrite)?;
        std::fs::rename(&tmp.path, path)
            .map_err(|e| ExportError::Write { path: path.to_path_buf(), message: e.to_string() })
    });
    if result.is_err() {
        tmp.remove();
    }
    result.map(|()| format).map_err(|e| e.naming_output(&tmp.path, path))
}

/// GIF and APNG carry the graph in their own structures, added after FFmpeg has written the file.
fn embed_after(path: &Path, format: Format, graph: Option<&str>) -> Result<(), ExportError> {
    let Some(graph) = graph else { return Ok(()) };
    let io = |e: std::io::Error| ExportError::Write { path: path.to_path_buf(), message: e.to_string() };
    let meta = |e: super::meta::MetaError| ExportError::Ffmpeg { path: path.to_path_buf(), message: e.to_string() };
    let bytes = match format {
        Format::Gif => super::meta::gif_with_comment(&std::fs::read(path).map_err(io)?, graph).map_err(meta)?,
        Format::Apng => super::meta::png_with_text(&std::fs::read(path).map_err(io)?, super::meta::GRAPH_KEY, graph)
            .map_err(meta)?,
        _ => return Ok(()),
    };
    std::fs::write(path, bytes).map_err(io)
}

fn encode(
    frames: &[&RgbImage],
    tmp: &Path,
    format: Format,
    options: &EncodeOptions,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<(), ExportError> {
    use ffmpeg::format::Pixel;
    use ffmpeg::{Dictionary, Packet, Rational, codec, encoder};

    init()?;
    let Some((muxer, default_encoder)) = format.ffmpeg_names() else { return Ok(()) };
    let encoder_name = options.encoder.as_deref().unwrap_or(default_encoder);
    let codec = encoder::find_by_name(encoder_name)
        .ok_or_else(|| ExportError::MissingCodec { codec: encoder_name.to_string(), format: format.name() })?;
    let fail =
        |what: &str, e: ffmpeg::Error| ExportError::Ffmpeg { path: tmp.to_path_buf(), message: format!("{what}: {e}") };
    let (w0, h0) = frames[0].dimensions();
    if frames.iter().any(|f| f.dimensions() != (w0, h0)) {
        return Err(ExportError::Settings("the frames of the clip differ in size".to_string()));
    }
    // yuv420p needs even sizes: pad by repeating the last row/column.
    let (width, height) = match format {
        Format::Mp4 | Format::WebM => (w0 + w0 % 2, h0 + h0 % 2),
        _ => (w0, h0),
    };
    let pixel = match format {
        Format::Mp4 | Format::WebM => Pixel::YUV420P,
        Format::Gif => Pixel::PAL8,
        _ => Pixel::RGB24,
    };
    // Time base: 1/100 s for GIF (its delays are in centiseconds), otherwise the frame rate itself.
    let rate = Rational::from(options.fps).reduce();
    let time_base = if format == Format::Gif { Rational::new(1, 100) } else { rate.invert() };
    let frame_ticks = if format == Format::Gif { (100.0 / options.fps).round().max(1.0) as i64 } else { 1 };

    let mut octx = ffmpeg::format::output_as(tmp, muxer)
        .map_err(|e| ExportError::Write { path: tmp.to_path_buf(), message: format!("cannot create the file: {e}") })?;
    let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let mut stream = octx.add_stream(codec).map_err(|e| fail("cannot add the video stream", e))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| fail("cannot make the encoder", e))?;
    enc.set_width(width);
    enc.set_height(height);
    enc.set_format(pixel);
    enc.set_time_base(time_base);
    enc.set_frame_rate(Some(rate));
    if global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut opts = Dictionary::new();
    match format {
        Format::Mp4 => {
            opts.set("crf", &options.crf.to_string());
            opts.set("preset", &options.preset);
        }
        Format::WebM => {
            opts.set("crf", &options.crf.to_string());
            opts.set("b", "0");
            opts.set("row-mt", "1");
        }
        _ => {}
    }
    let mut enc = enc.open_with(opts).map_err(|e| fail(&format!("cannot open the {encoder_name} encoder"), e))?;
    stream.set_parameters(&enc);
    stream.set_time_base(time_base);
    let stream_index = stream.index();

    if let Some(graph) = &options.graph
        && matches!(format, Format::Mp4 | Format::WebM)
    {
        let mut meta = Dictionary::new();
        meta.set("comment", graph);
        octx.set_metadata(meta);
    }
    let mut header = Dictionary::new();
    match (format, options.gif_loop) {
        (Format::Gif, GifLoop::Forever) => header.set("loop", "0"),
        (Format::Gif, GifLoop::Times(n)) => header.set("loop", &n.to_string()),
        (Format::Gif, GifLoop::Once) => header.set("loop", "-1"),
        (Format::Apng, GifLoop::Forever) => header.set("plays", "0"),
        (Format::Apng, GifLoop::Times(n)) => header.set("plays", &(u32::from(n) + 1).to_string()),
        (Format::Apng, GifLoop::Once) => header.set("plays", "1"),
        _ => {}
    }
    octx.write_header_with(header).map_err(|e| fail("cannot write the header", e))?;
    let stream_time_base = octx.stream(stream_index).map(|s| s.time_base()).unwrap_or(time_base);

    let palette = (format == Format::Gif).then(|| super::palette::palette_for(frames, 256));
    let mut palette_map = palette.as_ref().map(super::palette::PaletteMap::new);
    let mut scaler = None;
    let write_packets = |enc: &mut encoder::video::Encoder, octx: &mut ffmpeg::format::context::Output| {
        let mut packet = Packet::empty();
        while enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(stream_index);
            // Every frame lasts one frame period: muxers derive frame delays (APNG, GIF) and the clip's
            // length (MP4 edit lists: a last frame of duration 0 is dropped by players) from it.
            if packet.duration() <= 0 {
                packet.set_duration(frame_ticks);
            }
            packet.rescale_ts(time_base, stream_time_base);
            packet.write_interleaved(octx).map_err(|e| fail("cannot write a packet", e))?;
        }
        Ok::<(), ExportError>(())
    };
    let total = frames.len();
    for (i, image) in frames.iter().enumerate() {
        let mut frame = match (&palette, &mut palette_map) {
            (Some(palette), Some(map)) => paletted_frame(image, &map.map_frame(image), palette),
            _ if pixel == Pixel::RGB24 => rgb_frame(image, width, height),
            _ => {
                let rgb = rgb_frame(image, width, height);
                let scaler = match &mut scaler {
                    Some(s) => s,
                    None => scaler.insert(
                        converter(Pixel::RGB24, pixel, width, height).map_err(|e| fail("cannot convert to YUV", e))?,
                    ),
                };
                let mut yuv = ffmpeg::frame::Video::empty();
                scaler.run(&rgb, &mut yuv).map_err(|e| fail("cannot convert to YUV", e))?;
                yuv
            }
        };
        let pts = if format == Format::Gif { (i as f64 * 100.0 / options.fps).round() as i64 } else { i as i64 };
        frame.set_pts(Some(pts));
        enc.send_frame(&frame).map_err(|e| fail("cannot encode a frame", e))?;
        write_packets(&mut enc, &mut octx)?;
        if progress(i + 1, total).is_break() {
            return Err(ExportError::Cancelled);
        }
    }
    enc.send_eof().map_err(|e| fail("cannot finish encoding", e))?;
    write_packets(&mut enc, &mut octx)?;
    octx.write_trailer().map_err(|e| fail("cannot finish the file", e))
}

/// A same-size pixel-format converter with accurate rounding and full chroma interpolation (RGB <-> YUV).
fn converter(
    from: ffmpeg::format::Pixel,
    to: ffmpeg::format::Pixel,
    width: u32,
    height: u32,
) -> Result<ffmpeg::software::scaling::Context, ffmpeg::Error> {
    use ffmpeg::software::scaling::{Context, Flags};
    Context::get(from, width, height, to, width, height, Flags::BICUBIC | Flags::ACCURATE_RND | Flags::FULL_CHR_H_INT)
}

/// An RGB24 frame of `width` x `height`, the image in its top-left corner and its last row/column repeated
/// into any padding.
fn rgb_frame(image: &RgbImage, width: u32, height: u32) -> ffmpeg::frame::Video {
    let mut frame = ffmpeg::frame::Video::new(ffmpeg::format::Pixel::RGB24, width, height);
    let stride = frame.stride(0);
    let (w, h) = image.dimensions();
    let data = frame.data_mut(0);
    for y in 0..height {
        let row = &mut data[y as usize * stride..y as usize * stride + width as usize * 3];
        for x in 0..width {
            let p = image.get_pixel(x.min(w - 1), y.min(h - 1)).0;
            row[x as usize * 3..x as usize * 3 + 3].copy_from_slice(&p);
        }
    }
    frame
}

/// A PAL8 frame: palette indices and the palette (256 entries, 0xAARRGGBB in native byte order).
fn paletted_frame(image: &RgbImage, indices: &[u8], palette: &super::palette::Palette) -> ffmpeg::frame::Video {
    let (w, h) = image.dimensions();
    let mut frame = ffmpeg::frame::Video::new(ffmpeg::format::Pixel::PAL8, w, h);
    let stride = frame.stride(0);
    let data = frame.data_mut(0);
    for y in 0..h as usize {
        data[y * stride..y * stride + w as usize].copy_from_slice(&indices[y * w as usize..(y + 1) * w as usize]);
    }
    let mut table = [0u8; 1024];
    for (i, c) in palette.colors.iter().take(256).enumerate() {
        let argb = 0xFF00_0000u32 | (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        table[i * 4..i * 4 + 4].copy_from_slice(&argb.to_ne_bytes());
    }
    // SAFETY: av_frame_get_buffer allocates data[1] as the 1024-byte palette of a PAL8 frame.
    unsafe {
        let raw = frame.as_mut_ptr();
        let pal = (*raw).data[1];
        if !pal.is_null() {
            std::ptr::copy_nonoverlapping(table.as_ptr(), pal, table.len());
        }
    }
    frame
}

/// A clip decoded back from a file.
#[derive(Clone, Debug)]
pub struct DecodedClip {
    pub frames: Vec<RgbImage>,
    pub width: u32,
    pub height: u32,
    /// The frame rate as played: from the frames' timestamps, else the stream's declared average rate.
    pub fps: f64,
    /// The stream's codec name.
    pub codec: String,
}

/// Decodes every frame of a video file with FFmpeg (as RGB).
pub fn decode(path: &Path) -> Result<DecodedClip, ExportError> {
    use ffmpeg::format::Pixel;
    init()?;
    let fail = |what: &str, e: ffmpeg::Error| ExportError::Ffmpeg {
        path: path.to_path_buf(),
        message: format!("{what}: {e}"),
    };
    let mut ictx = open_input(path).map_err(|e| fail("cannot open", e))?;
    let stream = ictx
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| ExportError::Ffmpeg { path: path.to_path_buf(), message: "no video stream".into() })?;
    let index = stream.index();
    let rate = stream.avg_frame_rate();
    let time_base = f64::from(stream.time_base());
    let mut stamps: Vec<i64> = Vec::new();
    let context =
        ffmpeg::codec::context::Context::from_parameters(stream.parameters()).map_err(|e| fail("bad stream", e))?;
    let mut decoder = context.decoder().video().map_err(|e| fail("no decoder", e))?;
    let codec = decoder.codec().map(|c| c.name().to_string()).unwrap_or_default();
    let (width, height) = (decoder.width(), decoder.height());
    let mut scaler: Option<ffmpeg::software::scaling::Context> = None;
    let mut frames = Vec::new();
    let mut receive = |decoder: &mut ffmpeg::decoder::Video, frames: &mut Vec<RgbImage>| {
        let mut frame = ffmpeg::frame::Video::empty();
        while decoder.receive_frame(&mut frame).is_ok() {
            if let Some(t) = frame.timestamp() {
                stamps.push(t);
            }
            let scaler = match &mut scaler {
                Some(s) => s,
                None => scaler.insert(
                    converter(frame.format(), Pixel::RGB24, frame.width(), frame.height())
                        .map_err(|e| fail("cannot convert to RGB", e))?,
                ),
            };
            let mut rgb = ffmpeg::frame::Video::empty();
            scaler.run(&frame, &mut rgb).map_err(|e| fail("cannot convert to RGB", e))?;
            let (w, h, stride) = (rgb.width(), rgb.height(), rgb.stride(0));
            let data = rgb.data(0);
            let mut img = RgbImage::new(w, h);
            for y in 0..h as usize {
                let row = &data[y * stride..y * stride + w as usize * 3];
                img.as_mut()[y * w as usize * 3..(y + 1) * w as usize * 3].copy_from_slice(row);
            }
            frames.push(img);
        }
        Ok::<(), ExportError>(())
    };
    for (stream, packet) in ictx.packets() {
        if stream.index() == index {
            decoder.send_packet(&packet).map_err(|e| fail("cannot decode", e))?;
            receive(&mut decoder, &mut frames)?;
        }
    }
    decoder.send_eof().map_err(|e| fail("cannot decode", e))?;
    receive(&mut decoder, &mut frames)?;
    drop(receive);
    // The frame rate as played: from the frames' timestamps (what every muxer stores), else the stream's
    // declared average rate.
    let fps = match (stamps.first(), stamps.last()) {
        (Some(&a), Some(&b)) if stamps.len() == frames.len() && frames.len() > 1 && b > a => {
            (frames.len() - 1) as f64 / ((b - a) as f64 * time_base)
        }
        _ if rate.denominator() != 0 => f64::from(rate),
        _ => 0.0,
    };
    Ok(DecodedClip { frames, width, height, fps, codec })
}

/// Opens a clip for reading. FFmpeg's probe takes an animated `.png` for a still image, so PNG files are
/// opened with the APNG demuxer named explicitly.
fn open_input(path: &Path) -> Result<ffmpeg::format::context::Input, ffmpeg::Error> {
    if !matches!(Format::from_path(path), Ok(Format::Apng)) {
        return ffmpeg::format::input(path);
    }
    // SAFETY: av_find_input_format returns a pointer to a static demuxer description, or null.
    let demuxer = unsafe { ffmpeg::ffi::av_find_input_format(c"apng".as_ptr()) };
    if demuxer.is_null() {
        return ffmpeg::format::input(path);
    }
    // SAFETY: the pointer is non-null and points at a static AVInputFormat that outlives the context.
    let format =
        ffmpeg::format::format::Format::Input(unsafe { ffmpeg::format::format::Input::wrap(demuxer as *mut _) });
    match ffmpeg::format::open(path, &format)? {
        ffmpeg::format::context::Context::Input(input) => Ok(input),
        ffmpeg::format::context::Context::Output(_) => Err(ffmpeg::Error::InvalidData),
    }
}

/// The graph preset embedded in a clip (any format [`export`] writes), if there is one.
pub fn embedded_graph(path: &Path) -> Result<Option<String>, ExportError> {
    let io = |e: std::io::Error| ExportError::Write { path: path.to_path_buf(), message: e.to_string() };
    let meta = |e: super::meta::MetaError| ExportError::Ffmpeg { path: path.to_path_buf(), message: e.to_string() };
    if path.is_dir() {
        let first = path.join("frame_0000.png");
        return super::meta::png_text(&std::fs::read(&first).map_err(io)?, super::meta::GRAPH_KEY).map_err(meta);
    }
    match Format::from_path(path)? {
        Format::Gif => super::meta::gif_comment(&std::fs::read(path).map_err(io)?).map_err(meta),
        Format::Apng | Format::PngSequence => {
            super::meta::png_text(&std::fs::read(path).map_err(io)?, super::meta::GRAPH_KEY).map_err(meta)
        }
        Format::Mp4 | Format::WebM => {
            init()?;
            let ictx = ffmpeg::format::input(path)
                .map_err(|e| ExportError::Ffmpeg { path: path.to_path_buf(), message: format!("cannot open: {e}") })?;
            Ok(ictx.metadata().get("comment").map(str::to_string))
        }
    }
}
