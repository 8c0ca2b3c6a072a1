//! Video clips as frames, and writing them out: [`encode`] (MP4 and WebM through FFmpeg, GIF and animated PNG
//! through the `gif` and `png` crates in [`animation`], PNG frame sequences), with the graph preset embedded
//! ([`meta`]) and GIF palettes ([`palette`]).

pub mod animation;
pub mod encode;
pub mod meta;
pub mod output;
pub mod palette;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use image::RgbImage;

/// A clip: frames plus what made it (for output names and embedded metadata).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Video {
    #[serde(with = "crate::values::rgb::list")]
    pub frames: Vec<RgbImage>,
    pub fps: f64,
    pub prompt: String,
    pub seed: u64,
    /// The scaled latents [1, C, F, h, w] the frames were decoded from, where a model made the clip (what a
    /// regenerator continues from).
    pub latents: Option<crate::pipelines::Latents>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("nothing to export: the clip has no frames")]
    NoFrames,
    #[error("{path} already exists (set overwrite to replace it)")]
    Exists { path: PathBuf },
    #[error("{path} cannot be replaced: {reason}")]
    NotReplaceable { path: PathBuf, reason: String },
    #[error("cannot write {path}: {parent} is a file, not a folder")]
    ParentNotFolder { path: PathBuf, parent: PathBuf },
    #[error("cannot write {path}: the folder {dir} is not writable")]
    NotWritable { path: PathBuf, dir: PathBuf },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error(
        "{path}: unknown clip format '.{extension}' (use .mp4, .webm, .gif, .png/.apng, or no extension for a folder of PNG frames)"
    )]
    UnknownFormat { path: PathBuf, extension: String },
    #[error(
        "the system FFmpeg has no '{codec}' encoder, which {format} needs: install an FFmpeg with it (Debian/Ubuntu: \
         libavcodec from the distribution, or libavcodec-extra), or export another format"
    )]
    MissingCodec { codec: String, format: &'static str },
    #[error("{path}: {message}")]
    Ffmpeg { path: PathBuf, message: String },
    #[error("{0}")]
    Settings(String),
    #[error("the export was cancelled")]
    Cancelled,
}

impl ExportError {
    /// The same error naming `output` where it named the temporary file `tmp` an output is written under
    /// (what the user knows is the output, not our temporary name).
    pub fn naming_output(self, tmp: &Path, output: &Path) -> ExportError {
        let fix = |path: PathBuf| if path == tmp { output.to_path_buf() } else { path };
        let fix_text = |text: String| text.replace(&tmp.display().to_string(), &output.display().to_string());
        match self {
            ExportError::Write { path, message } => ExportError::Write { path: fix(path), message: fix_text(message) },
            ExportError::Ffmpeg { path, message } => {
                ExportError::Ffmpeg { path: fix(path), message: fix_text(message) }
            }
            other => other,
        }
    }
}

/// Fills `{prompt}`, `{seed}`, `{date}` and `{n}` in an output path template. The prompt is shortened and
/// reduced to characters that are safe in file names.
pub fn fill_template(template: &str, prompt: &str, seed: u64, date: &str, n: u32) -> String {
    let safe: String = prompt
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    let safe: String = safe.chars().take(48).collect();
    let safe = if safe.is_empty() { "untitled".to_string() } else { safe };
    template
        .replace("{prompt}", &safe)
        .replace("{seed}", &seed.to_string())
        .replace("{date}", date)
        .replace("{n}", &format!("{n:04}"))
}

/// The output path of a template: with `{n}`, the first number from 0 whose path does not exist yet (a
/// counter, so repeated exports never collide); without it, the filled template.
pub fn output_path(template: &str, prompt: &str, seed: u64, date: &str) -> PathBuf {
    if !template.contains("{n}") {
        return PathBuf::from(fill_template(template, prompt, seed, date, 0));
    }
    (0..100_000)
        .map(|n| PathBuf::from(fill_template(template, prompt, seed, date, n)))
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from(fill_template(template, prompt, seed, date, 100_000)))
}

/// The temporary name an output is written under before it is renamed into place: beside it in the same
/// folder (created here), so the rename stays on one file system.
pub(crate) fn staging_path(path: &Path) -> Result<PathBuf, ExportError> {
    staging_name(path, "partial")
}

fn staging_name(path: &Path, what: &str) -> Result<PathBuf, ExportError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Err(e) = std::fs::create_dir_all(&parent) {
        // Name the part of the path that is in the way, not only "File exists".
        let mut up = Some(parent.as_path());
        while let Some(p) = up {
            if p.exists() && !p.is_dir() {
                return Err(ExportError::ParentNotFolder { path: path.to_path_buf(), parent: p.to_path_buf() });
            }
            up = p.parent();
        }
        return Err(ExportError::Write { path: path.to_path_buf(), message: format!("cannot make its folder: {e}") });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "clip".into());
    Ok(parent.join(format!(".{name}.{}.{what}", std::process::id())))
}

/// Writes the frames as `frame_0000.png`, ... into the folder `dir`. The frames go to a temporary folder
/// beside it that is renamed into place at the end, so a failed export leaves nothing half-written.
pub fn write_png_sequence(video: &Video, dir: &Path, overwrite: bool) -> Result<(), ExportError> {
    write_png_sequence_with(video, dir, overwrite, None, &mut |_, _| ControlFlow::Continue(()))
}

/// [`write_png_sequence`] with the graph preset embedded in the first frame (an `iTXt` chunk) and progress per
/// frame (`Break` cancels and removes what was written).
///
/// The folder gets a marker file ([`output::FRAMES_MARKER`]). An existing folder is replaced (with
/// `overwrite`) only when it holds nothing but such frames and the marker; the old frames are then removed
/// one by one, never the folder's other contents (there are none, as checked).
pub fn write_png_sequence_with(
    video: &Video,
    dir: &Path,
    overwrite: bool,
    graph: Option<&str>,
    progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
) -> Result<(), ExportError> {
    if video.frames.is_empty() {
        return Err(ExportError::NoFrames);
    }
    output::preflight_as(dir, encode::Format::PngSequence, overwrite)?;
    let write_err = |e: &dyn std::fmt::Display| ExportError::Write { path: dir.to_path_buf(), message: e.to_string() };
    let tmp = output::Temporary::register(staging_path(dir)?);
    let total = video.frames.len();
    let result = (|| {
        std::fs::create_dir(&tmp.path).map_err(|e| write_err(&e))?;
        std::fs::write(tmp.path.join(output::FRAMES_MARKER), b"PNG frames written by stepstone\n")
            .map_err(|e| write_err(&e))?;
        for (i, frame) in video.frames.iter().enumerate() {
            let name = format!("frame_{i:04}.png");
            let frame_err =
                |e: &dyn std::fmt::Display| ExportError::Write { path: dir.join(&name), message: e.to_string() };
            let mut bytes = Vec::new();
            frame
                .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
                .map_err(|e| frame_err(&e))?;
            if let (0, Some(graph)) = (i, graph) {
                bytes = meta::encode_png_with_text(frame, meta::GRAPH_KEY, graph).map_err(|e| frame_err(&e))?;
            }
            std::fs::write(tmp.path.join(&name), bytes).map_err(|e| frame_err(&e))?;
            if progress(i + 1, total).is_break() {
                return Err(ExportError::Cancelled);
            }
        }
        replace_folder(&tmp.path, dir, overwrite)
    })();
    if result.is_err() {
        tmp.remove();
    }
    result
}

/// Moves the finished frame folder `tmp` to `dir`. An old frame folder there (checked again: stepstone's
/// frames and marker only) is first moved aside, then emptied file by file and removed.
fn replace_folder(tmp: &Path, dir: &Path, overwrite: bool) -> Result<(), ExportError> {
    let write_err = |e: &dyn std::fmt::Display| ExportError::Write { path: dir.to_path_buf(), message: e.to_string() };
    if std::fs::symlink_metadata(dir).is_err() {
        return std::fs::rename(tmp, dir).map_err(|e| write_err(&e));
    }
    output::preflight_as(dir, encode::Format::PngSequence, overwrite)?;
    let old = output::Temporary::register(staging_name(dir, "old")?);
    std::fs::rename(dir, &old.path).map_err(|e| write_err(&e))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        // Put the old folder back; the new frames are removed by the caller.
        if let Err(back) = std::fs::rename(&old.path, dir) {
            let kept = old.path.display();
            return Err(write_err(&format!(
                "{e}; the previous frames could not be moved back ({back}): they are in {kept}"
            )));
        }
        return Err(write_err(&e));
    }
    output::remove_frame_folder(&old.path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(n: usize) -> Video {
        let frames = (0..n).map(|i| RgbImage::from_pixel(4, 2, image::Rgb([i as u8 * 40, 7, 200]))).collect();
        Video { frames, fps: 8.0, prompt: "a cat".into(), seed: 1, latents: None }
    }

    #[test]
    fn template_fills_placeholders_safely() {
        assert_eq!(
            fill_template("out/{prompt}-{seed}-{n}", "A cat, on/the moon!", 7, "d", 3),
            "out/A_cat_on_the_moon-7-0003"
        );
        assert_eq!(fill_template("{prompt}", "", 0, "", 0), "untitled");
        // A prompt cannot lead the path anywhere: separators and dots become '_'.
        assert_eq!(fill_template("out/{prompt}.mp4", "../../etc/x", 0, "", 0), "out/etc_x.mp4");
        assert_eq!(fill_template("{date}", "x", 0, "2026-11-21", 0), "2026-11-21");
    }

    #[test]
    fn errors_name_the_output_not_the_temporary_file() {
        let (tmp, out) = (Path::new("out/.clip.mp4.7.partial"), Path::new("out/clip.mp4"));
        let e = ExportError::Ffmpeg { path: tmp.to_path_buf(), message: "cannot write a packet: disk full".into() };
        assert_eq!(e.naming_output(tmp, out).to_string(), "out/clip.mp4: cannot write a packet: disk full");
        let e = ExportError::Write { path: tmp.to_path_buf(), message: format!("{} is gone", tmp.display()) };
        assert_eq!(e.naming_output(tmp, out).to_string(), "cannot write out/clip.mp4: out/clip.mp4 is gone");
    }

    #[test]
    fn n_counts_up_to_the_first_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let t = format!("{}/clip-{{seed}}-{{n}}.gif", dir.path().display());
        let first = output_path(&t, "p", 3, "d");
        assert_eq!(first, dir.path().join("clip-3-0000.gif"));
        std::fs::write(&first, b"x").unwrap();
        assert_eq!(output_path(&t, "p", 3, "d"), dir.path().join("clip-3-0001.gif"));
        let fixed = format!("{}/clip.gif", dir.path().display());
        assert_eq!(output_path(&fixed, "p", 3, "d"), dir.path().join("clip.gif"));
    }

    #[test]
    fn png_sequence_round_trips_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip");
        write_png_sequence(&clip(3), &out, false).unwrap();
        let back = image::open(out.join("frame_0002.png")).unwrap().to_rgb8();
        assert_eq!(back, clip(3).frames[2]);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 4, "three frames and the marker");
        assert!(out.join(output::FRAMES_MARKER).is_file());
        assert!(matches!(write_png_sequence(&clip(1), &out, false), Err(ExportError::Exists { .. })));
        write_png_sequence(&clip(1), &out, true).unwrap();
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "one frame and the marker");
        assert!(matches!(write_png_sequence(&clip(0), &dir.path().join("e"), false), Err(ExportError::NoFrames)));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary folder may remain");
    }
}
