//! Writing clips (MP4 and WebM with FFmpeg through ffmpeg-next, against the system libraries; GIF and APNG
//! with the `gif` and `png` crates) and reading them back.
//!
//! Formats, picked from the output path's extension:
//! - `.mp4` / `.m4v`: H.264 (libx264), yuv420p, CRF and preset; odd sizes are padded to even by repeating
//!   the last row/column (yuv420p needs even sizes);
//! - `.webm`: VP9 (libvpx-vp9), constant quality (CRF);
//! - `.gif`: one palette for all frames ([`super::palette`]), loop forever / N times / once
//!   ([`super::animation`]);
//! - `.png` / `.apng`: animated PNG (lossless, [`super::animation`]);
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

    /// FFmpeg's muxer and encoder names, for the formats FFmpeg writes.
    fn ffmpeg_names(self) -> Option<(&'static str, &'static str)> {
        match self {
            Format::Mp4 => Some(("mp4", "libx264")),
            Format::WebM => Some(("webm", "libvpx-vp9")),
            Format::Gif | Format::Apng | Format::PngSequence => None,
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
    let written = match format {
        Format::Gif | Format::Apng => super::animation::write_file(&frames, &tmp.path, format, options, progress),
        _ => encode(&frames, &tmp.path, format, options, progress),
    };
    let result = written.and_then(|()| {
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
    let Some((muxer, default_encoder)) = format.ffmpeg_names() else {
        return Err(ExportError::Settings(format!("{} is not written with FFmpeg", format.name())));
    };
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
    let (width, height) = (w0 + w0 % 2, h0 + h0 % 2);
    let pixel = Pixel::YUV420P;
    // Time base: the frame rate itself, so every frame lasts one tick.
    let rate = Rational::from(options.fps).reduce();
    let time_base = rate.invert();

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
    octx.write_header().map_err(|e| fail("cannot write the header", e))?;
    let stream_time_base = octx.stream(stream_index).map(|s| s.time_base()).unwrap_or(time_base);

    let mut scaler = None;
    let write_packets = |enc: &mut encoder::video::Encoder, octx: &mut ffmpeg::format::context::Output| {
        let mut packet = Packet::empty();
        while enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(stream_index);
            // Every frame lasts one frame period: muxers derive the clip's length from it (MP4 edit lists:
            // a last frame of duration 0 is dropped by players).
            if packet.duration() <= 0 {
                packet.set_duration(1);
            }
            packet.rescale_ts(time_base, stream_time_base);
            packet.write_interleaved(octx).map_err(|e| fail("cannot write a packet", e))?;
        }
        Ok::<(), ExportError>(())
    };
    let total = frames.len();
    for (i, image) in frames.iter().enumerate() {
        let rgb = rgb_frame(image, width, height);
        let scaler = match &mut scaler {
            Some(s) => s,
            None => scaler
                .insert(converter(Pixel::RGB24, pixel, width, height).map_err(|e| fail("cannot convert to YUV", e))?),
        };
        let mut frame = ffmpeg::frame::Video::empty();
        scaler.run(&rgb, &mut frame).map_err(|e| fail("cannot convert to YUV", e))?;
        frame.set_pts(Some(i as i64));
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

/// The graph preset embedded in a clip (any format [`export`] writes), if there is one. Clips are shared, so
/// this reads untrusted bytes: GIF and PNG are streamed through bounded readers ([`super::meta`]), which stop
/// at the image data (PNG) or skip it (GIF); MP4/WebM tags come from FFmpeg. Errors name the file and what is
/// wrong in it; an embedded text over [`super::meta::MAX_TEXT`] bytes is an error.
pub fn embedded_graph(path: &Path) -> Result<Option<String>, ExportError> {
    use super::meta::{self, GRAPH_KEY, MetaError};
    let error = |file: &Path, message: String| ExportError::Ffmpeg { path: file.to_path_buf(), message };
    let open = |file: &Path| {
        std::fs::File::open(file).map(std::io::BufReader::new).map_err(|e| error(file, format!("cannot read: {e}")))
    };
    if path.is_dir() {
        // The folder is what the user named; the message says which file in it is at fault.
        let in_first = |message: String| error(path, format!("frame_0000.png: {message}"));
        let first =
            std::fs::File::open(path.join("frame_0000.png")).map_err(|e| in_first(format!("cannot read: {e}")))?;
        return meta::png_text_from(std::io::BufReader::new(first), GRAPH_KEY).map_err(|e| in_first(e.to_string()));
    }
    let damaged = |e: MetaError| error(path, e.to_string());
    match Format::from_path(path)? {
        Format::Gif => meta::gif_comment_from(open(path)?).map_err(damaged),
        Format::Apng | Format::PngSequence => meta::png_text_from(open(path)?, GRAPH_KEY).map_err(damaged),
        Format::Mp4 | Format::WebM => {
            // ffmpeg-next panics on a path that is not UTF-8.
            if path.to_str().is_none() {
                return Err(error(path, "cannot open: the path is not valid UTF-8".to_string()));
            }
            init()?;
            let ictx = ffmpeg::format::input(path).map_err(|e| error(path, format!("cannot open: {e}")))?;
            match ictx.metadata().get("comment") {
                Some(text) if text.len() > meta::MAX_TEXT => {
                    Err(error(path, MetaError::TextTooLarge { format: "comment tag" }.to_string()))
                }
                text => Ok(text.map(str::to_string)),
            }
        }
    }
}
