//! Where an export may write, and replacing outputs without ever deleting what stepstone did not write.
//!
//! - [`preflight`] checks an output before any compute: the format, the parent folder (exists or can be made,
//!   is a folder, is writable) and what is already there.
//! - `overwrite` replaces a **regular file** only. A PNG frame folder is replaced only when it holds nothing
//!   but frames stepstone wrote and the marker file [`FRAMES_MARKER`]; anything else is refused with the
//!   reason. Nothing in this module deletes a folder recursively: files are removed one by one, by the names
//!   stepstone gives them, and then the empty folder.
//! - Temporary outputs (`.NAME.PID.partial`) are registered while they exist, so an interrupted process
//!   can remove them ([`remove_temporaries`]) before it exits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::ExportError;
use super::encode::Format;

/// The marker file in every PNG frame folder stepstone writes.
pub const FRAMES_MARKER: &str = ".stepstone-frames";

/// Whether `name` is a frame file stepstone writes into a frame folder (`frame_0000.png`, ...).
pub fn is_frame_name(name: &str) -> bool {
    name.strip_prefix("frame_")
        .and_then(|rest| rest.strip_suffix(".png"))
        .is_some_and(|digits| digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Why the folder at `dir` is not a frame folder stepstone wrote (`None` when it is one).
fn foreign_content(dir: &Path) -> Option<String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return Some(format!("it cannot be listed ({e})")),
    };
    let mut marker = false;
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => return Some(format!("it cannot be listed ({e})")),
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if name == FRAMES_MARKER && is_file {
            marker = true;
        } else if !(is_file && is_frame_name(&name)) {
            return Some(format!("it holds '{name}', which stepstone did not write"));
        }
    }
    (!marker).then(|| format!("it has no {FRAMES_MARKER} marker, so stepstone did not write it"))
}

/// Checks that `path` may be written as `format` (with `overwrite` as given), before any work: what is there
/// now and the folder it goes in.
pub fn preflight(path: &Path, overwrite: bool) -> Result<Format, ExportError> {
    let format = Format::from_path(path)?;
    preflight_as(path, format, overwrite)?;
    Ok(format)
}

/// [`preflight`] for an output of a known format (a frame folder whose name has a dot in it).
pub fn preflight_as(path: &Path, format: Format, overwrite: bool) -> Result<(), ExportError> {
    if matches!(format, Format::Mp4 | Format::WebM) && path.to_str().is_none() {
        // FFmpeg takes file names as C strings through ffmpeg-next, which needs them in UTF-8.
        return Err(ExportError::Write {
            path: path.to_path_buf(),
            message: "the name is not valid UTF-8, which FFmpeg needs for MP4 and WebM".to_string(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !overwrite {
                return Err(ExportError::Exists { path: path.to_path_buf() });
            }
            check_replaceable(path, format, &meta)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            // "Not a directory" and the like: say which part of the path is in the way, if one is.
            check_parent(path)?;
            return Err(ExportError::Write { path: path.to_path_buf(), message: e.to_string() });
        }
    }
    check_parent(path)
}

/// Whether what is at `path` may be replaced by an export of `format`.
fn check_replaceable(path: &Path, format: Format, meta: &std::fs::Metadata) -> Result<(), ExportError> {
    let refuse = |reason: String| ExportError::NotReplaceable { path: path.to_path_buf(), reason };
    let kind = meta.file_type();
    match format {
        Format::PngSequence if kind.is_dir() => match foreign_content(path) {
            None => Ok(()),
            Some(why) => Err(refuse(format!("a frame folder is replaced only when stepstone wrote it, and {why}"))),
        },
        Format::PngSequence => Err(refuse("it is a file, not a frame folder".to_string())),
        _ if kind.is_file() => Ok(()),
        _ if kind.is_dir() => Err(refuse("it is a folder; overwrite replaces only a regular file".to_string())),
        _ => Err(refuse("it is not a regular file (a link or a device); overwrite replaces only regular files".into())),
    }
}

/// The folder an output goes in: the nearest part of it that exists must be a folder, and writable.
fn check_parent(path: &Path) -> Result<(), ExportError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut existing = parent;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(ExportError::ParentNotFolder { path: path.to_path_buf(), parent: existing.to_path_buf() });
            }
            Err(_) => match existing.parent() {
                Some(up) if !up.as_os_str().is_empty() => existing = up,
                _ => {
                    existing = Path::new(".");
                    break;
                }
            },
        }
    }
    if !writable(existing) {
        return Err(ExportError::NotWritable { path: path.to_path_buf(), dir: existing.to_path_buf() });
    }
    Ok(())
}

#[cfg(unix)]
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(not(unix))]
fn writable(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| !m.permissions().readonly())
}

/// Temporaries that exist right now (files and frame folders being written).
static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A registered temporary output: registered while it lives, so [`remove_temporaries`] can find it.
pub(crate) struct Temporary {
    pub path: PathBuf,
}

impl Temporary {
    pub fn register(path: PathBuf) -> Temporary {
        TEMPORARIES.lock().unwrap_or_else(|p| p.into_inner()).push(path.clone());
        Temporary { path }
    }

    /// Removes the temporary from disk (a file, or a frame folder of ours, file by file).
    pub fn remove(&self) {
        remove_temporary(&self.path);
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        TEMPORARIES.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| p != &self.path);
    }
}

/// Removes every temporary output that is being written now (for an interrupted process, before it exits).
/// A few passes, a few milliseconds apart: an export that was cancelled a moment ago may still be finishing
/// the frame it was writing.
pub fn remove_temporaries() {
    remove_registered(&|_| true);
}

/// [`remove_temporaries`] for the registered temporaries `which` selects (tests remove only their own, as
/// other tests may be exporting at the same time).
fn remove_registered(which: &dyn Fn(&Path) -> bool) {
    for pass in 0..5 {
        let paths: Vec<PathBuf> =
            TEMPORARIES.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|p| which(p)).cloned().collect();
        for path in &paths {
            remove_temporary(path);
        }
        if paths.iter().all(|p| std::fs::symlink_metadata(p).is_err()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5 * (pass + 1)));
    }
}

fn remove_temporary(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => remove_frame_folder(path),
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes a frame folder stepstone wrote: its frames and marker one by one, then the folder if it is then
/// empty (anything else in it stays, and so does the folder).
pub(crate) fn remove_frame_folder(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type().is_ok_and(|t| t.is_file()) && (name == FRAMES_MARKER || is_frame_name(&name)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names() {
        assert!(is_frame_name("frame_0000.png") && is_frame_name("frame_12345.png"));
        assert!(!is_frame_name("frame_1.png") && !is_frame_name("frame_000a.png") && !is_frame_name("me.png"));
    }

    #[test]
    fn preflight_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let e = preflight(&file.join("clip.mp4"), false).unwrap_err();
        assert!(matches!(e, ExportError::ParentNotFolder { .. }), "{e}");
        assert!(e.to_string().contains("a-file") && e.to_string().contains("not a folder"), "{e}");
        let e = preflight(&file.join("deeper/clip.mp4"), false).unwrap_err();
        assert!(matches!(e, ExportError::ParentNotFolder { .. }), "{e}");
        assert!(matches!(preflight(&dir.path().join("x.avi"), false), Err(ExportError::UnknownFormat { .. })));
        // No extension is a frame folder: a file there is not one.
        assert!(matches!(preflight(&file, true), Err(ExportError::NotReplaceable { .. })));
        let clip = dir.path().join("clip.mp4");
        std::fs::write(&clip, b"old").unwrap();
        assert!(matches!(preflight(&clip, false), Err(ExportError::Exists { .. })));
        assert!(preflight(&clip, true).is_ok());
        let folder = dir.path().join("v.mp4");
        std::fs::create_dir(&folder).unwrap();
        assert!(matches!(preflight(&folder, true), Err(ExportError::NotReplaceable { .. })));
        // A frame folder of a user's files is never replaced; one of ours is.
        let frames = dir.path().join("frames");
        std::fs::create_dir(&frames).unwrap();
        std::fs::write(frames.join("frame_0000.png"), b"x").unwrap();
        let e = preflight(&frames, true).unwrap_err();
        assert!(e.to_string().contains("marker"), "{e}");
        std::fs::write(frames.join(FRAMES_MARKER), b"").unwrap();
        assert!(preflight(&frames, true).is_ok());
        std::fs::write(frames.join("notes.txt"), b"mine").unwrap();
        let e = preflight(&frames, true).unwrap_err();
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert!(preflight(&dir.path().join("new/deeper/clip.gif"), false).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9.mp4"));
            assert!(preflight(&odd, false).unwrap_err().to_string().contains("not valid UTF-8"));
        }
    }

    #[test]
    fn registered_temporaries_are_removed_on_an_interrupt() {
        let dir = tempfile::tempdir().unwrap();
        let file = Temporary::register(dir.path().join(".clip.mp4.1.partial"));
        std::fs::write(&file.path, b"half a clip").unwrap();
        let frames = Temporary::register(dir.path().join(".frames.1.partial"));
        std::fs::create_dir(&frames.path).unwrap();
        std::fs::write(frames.path.join("frame_0000.png"), b"x").unwrap();
        std::fs::write(frames.path.join(FRAMES_MARKER), b"").unwrap();
        let finished = dir.path().join("done.mp4");
        std::fs::write(&finished, b"a whole clip").unwrap();
        remove_registered(&|p| p.starts_with(dir.path()));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("done.mp4")], "only what is registered goes");
        drop((file, frames));
        assert!(TEMPORARIES.lock().unwrap().iter().all(|p| !p.starts_with(dir.path())), "dropped = unregistered");
    }

    #[test]
    fn removing_a_frame_folder_keeps_what_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let frames = dir.path().join("f");
        std::fs::create_dir(&frames).unwrap();
        for name in ["frame_0000.png", "frame_0001.png", FRAMES_MARKER, "keep.txt"] {
            std::fs::write(frames.join(name), b"x").unwrap();
        }
        remove_frame_folder(&frames);
        let left: Vec<_> = std::fs::read_dir(&frames).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("keep.txt")]);
    }
}
