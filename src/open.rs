//! Opening a graph from a file: a preset, or a clip stepstone exported with the graph embedded (MP4/WebM
//! `comment` tag, GIF comment extension, APNG text chunk, or the first frame of a PNG frame folder).
//!
//! The command line (`stepstone run clip.mp4`, `stepstone validate clip.gif`) and the editor (File > Open,
//! and dropping a file on the window) both come here, so a clip opens the same way everywhere.

use std::path::{Path, PathBuf};

use crate::graph::{Graph, PresetError, load_preset, parse_preset};
use crate::video::ExportError;

/// Why a file could not be opened as a graph. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: no such file or folder")]
    Missing { path: PathBuf },
    #[error(transparent)]
    Preset(#[from] PresetError),
    #[error("{path}: cannot read the clip's metadata: {message}")]
    Clip { path: PathBuf, message: String },
    #[error("{path}: this clip carries no stepstone graph (it was not exported by stepstone)")]
    NoGraph { path: PathBuf },
    #[error(
        "{path}: not a graph preset (.json) or a clip stepstone exports (.mp4, .m4v, .webm, .gif, .png, .apng, \
         or a folder of PNG frames)"
    )]
    Unsupported { path: PathBuf },
}

/// The extensions of the clip formats stepstone exports (each carries the graph that made it).
pub const CLIP_EXTENSIONS: &[&str] = &["mp4", "m4v", "webm", "gif", "png", "apng"];

/// What kind of file a path names, judged by its extension (a folder counts as a PNG frame folder when it
/// holds `frame_0000.png`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphSource {
    Preset,
    Clip,
}

impl GraphSource {
    pub fn of(path: &Path) -> Option<GraphSource> {
        if path.is_dir() {
            return path.join("frame_0000.png").is_file().then_some(GraphSource::Clip);
        }
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "json" => Some(GraphSource::Preset),
            e if CLIP_EXTENSIONS.contains(&e) => Some(GraphSource::Clip),
            _ => None,
        }
    }
}

/// Reads a graph from a preset file or from a clip with an embedded graph. Files with another extension are
/// read as presets (a preset may be saved under any name); their JSON errors then say what is wrong.
pub fn open_graph(path: &Path) -> Result<Graph, OpenError> {
    if !path.exists() {
        return Err(OpenError::Missing { path: path.to_path_buf() });
    }
    match GraphSource::of(path) {
        Some(GraphSource::Clip) => {
            let text = crate::video::encode::embedded_graph(path).map_err(|e| clip_error(path, e))?;
            let text = text.ok_or_else(|| OpenError::NoGraph { path: path.to_path_buf() })?;
            Ok(parse_preset(&text, &format!("{} (embedded graph)", path.display()))?)
        }
        Some(GraphSource::Preset) => Ok(load_preset(path)?),
        None if path.is_dir() => Err(OpenError::Unsupported { path: path.to_path_buf() }),
        None => Ok(load_preset(path)?),
    }
}

fn clip_error(path: &Path, e: ExportError) -> OpenError {
    let message = match e {
        ExportError::Write { message, .. } | ExportError::Ffmpeg { message, .. } => message,
        other => other.to_string(),
    };
    OpenError::Clip { path: path.to_path_buf(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_by_extension() {
        assert_eq!(GraphSource::of(Path::new("a/b.JSON")), Some(GraphSource::Preset));
        assert_eq!(GraphSource::of(Path::new("clip.Mp4")), Some(GraphSource::Clip));
        assert_eq!(GraphSource::of(Path::new("clip.apng")), Some(GraphSource::Clip));
        assert_eq!(GraphSource::of(Path::new("notes.txt")), None);
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone.json");
        let e = open_graph(&missing).unwrap_err().to_string();
        assert!(e.contains("gone.json") && e.contains("no such file"), "{e}");

        let gif = dir.path().join("plain.gif");
        // A GIF with no comment extension: header, logical screen, no colour table, trailer.
        std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00\x3b").unwrap();
        let e = open_graph(&gif).unwrap_err().to_string();
        assert!(e.contains("plain.gif") && e.contains("carries no stepstone graph"), "{e}");

        let broken = dir.path().join("broken.mp4");
        std::fs::write(&broken, b"not a video").unwrap();
        let e = open_graph(&broken).unwrap_err().to_string();
        assert!(e.contains("broken.mp4"), "{e}");

        let folder = dir.path().join("frames");
        std::fs::create_dir(&folder).unwrap();
        let e = open_graph(&folder).unwrap_err().to_string();
        assert!(e.contains("frames") && e.contains("not a graph preset"), "{e}");
    }
}
