//! The editor's own state on disk: the recovery file the graph being edited is autosaved to (offered back
//! after a crash), and the recent files list. Both live in one folder of stepstone's
//! (`$STEPSTONE_STATE_DIR`, else the per-user state folder) and are written atomically; only these two files
//! are ever removed or replaced there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::graph::{Graph, parse_preset, to_preset_string};

/// The environment variable that overrides the state folder.
pub const STATE_ENV: &str = "STEPSTONE_STATE_DIR";
const RECOVERY_FILE: &str = "recovery.json";
const RECENT_FILE: &str = "recent.json";
/// How many recent files are remembered.
pub const RECENT_FILES: usize = 10;
/// The largest state file read back (a recovery file holds one preset).
const MAX_STATE_BYTES: u64 = 64 << 20;

/// What an autosave keeps: the graph and where it belongs.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovery {
    pub graph: Graph,
    /// The preset file the graph saves to.
    pub path: Option<PathBuf>,
    /// The file the graph was opened from (a preset or a clip).
    pub opened_from: Option<PathBuf>,
    /// When it was written (seconds since the Unix epoch).
    pub written_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct RecoveryFile {
    format: String,
    preset: String,
    path: Option<PathBuf>,
    opened_from: Option<PathBuf>,
    written_unix: u64,
}

const RECOVERY_FORMAT: &str = "stepstone-recovery-1";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a stepstone recovery file ({reason})")]
    Damaged { path: PathBuf, reason: String },
}

/// The folder of the editor's own state.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir { dir: dir.into() }
    }

    /// `$STEPSTONE_STATE_DIR`, else `<state or local data folder>/stepstone`.
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os(STATE_ENV) {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => dirs::state_dir().or_else(dirs::data_local_dir).map(|d| d.join("stepstone")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name` through a temporary file and a rename: a crash mid-write leaves the old file.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let target = self.file(name);
        let temp = self.file(&format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&temp, bytes).map_err(io(&temp))?;
        std::fs::rename(&temp, &target).map_err(|source| {
            let _ = std::fs::remove_file(&temp); // our own temporary file
            StateError::Io { path: target.clone(), source }
        })
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.file(name);
        let io = |source| StateError::Io { path: path.clone(), source };
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
            Ok(m) if m.len() > MAX_STATE_BYTES => {
                return Err(StateError::Damaged {
                    path: path.clone(),
                    reason: format!("{} bytes, more than the {MAX_STATE_BYTES} a state file may have", m.len()),
                });
            }
            Ok(_) => {}
        }
        std::fs::read_to_string(&path).map(Some).map_err(io)
    }

    /// Autosaves the graph being edited.
    pub fn write_recovery(
        &self,
        graph: &Graph,
        path: Option<&Path>,
        opened_from: Option<&Path>,
    ) -> Result<(), StateError> {
        let written_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let file = RecoveryFile {
            format: RECOVERY_FORMAT.to_string(),
            preset: to_preset_string(graph),
            path: path.map(Path::to_path_buf),
            opened_from: opened_from.map(Path::to_path_buf),
            written_unix,
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| StateError::Damaged { path: self.file(RECOVERY_FILE), reason: e.to_string() })?;
        self.write_atomic(RECOVERY_FILE, text.as_bytes())
    }

    /// The autosaved graph a crash left behind, if any.
    pub fn read_recovery(&self) -> Result<Option<Recovery>, StateError> {
        let Some(text) = self.read(RECOVERY_FILE)? else { return Ok(None) };
        let path = self.file(RECOVERY_FILE);
        let damaged = |reason: String| StateError::Damaged { path: path.clone(), reason };
        let file: RecoveryFile = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        if file.format != RECOVERY_FORMAT {
            return Err(damaged(format!("format '{}', expected '{RECOVERY_FORMAT}'", file.format)));
        }
        let graph = parse_preset(&file.preset, &path.display().to_string()).map_err(|e| damaged(e.to_string()))?;
        Ok(Some(Recovery { graph, path: file.path, opened_from: file.opened_from, written_unix: file.written_unix }))
    }

    /// Removes the recovery file (after a clean exit, a restore or a discard). Only that file.
    pub fn discard_recovery(&self) -> Result<(), StateError> {
        let path = self.file(RECOVERY_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// The recent files, newest first (a damaged list reads as empty).
    pub fn recent(&self) -> Vec<PathBuf> {
        match self.read(RECENT_FILE) {
            Ok(Some(text)) => serde_json::from_str::<Vec<PathBuf>>(&text).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Puts `path` first in the recent files.
    pub fn add_recent(&self, path: &Path) -> Result<Vec<PathBuf>, StateError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut list = self.recent();
        list.retain(|p| *p != path);
        list.insert(0, path);
        list.truncate(RECENT_FILES);
        let text = serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".to_string());
        self.write_atomic(RECENT_FILE, text.as_bytes())?;
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_round_trips_and_a_damaged_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert!(state.read_recovery().unwrap().is_none());
        let mut graph = Graph::default();
        graph.nodes.insert("p".into(), crate::graph::Node::new("prompt"));
        state.write_recovery(&graph, Some(Path::new("/a/b.json")), None).unwrap();
        let back = state.read_recovery().unwrap().unwrap();
        assert_eq!(back.graph, graph);
        assert_eq!(back.path.as_deref(), Some(Path::new("/a/b.json")));
        std::fs::write(dir.path().join("state").join(RECOVERY_FILE), "{\"format\": 3}").unwrap();
        let err = state.read_recovery().unwrap_err().to_string();
        assert!(err.contains("recovery.json") && err.contains("not a stepstone recovery file"), "{err}");
        state.discard_recovery().unwrap();
        assert!(state.read_recovery().unwrap().is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state")).unwrap().collect();
        assert!(names.is_empty(), "no temporary files left: {names:?}");
    }

    #[test]
    fn recent_files_are_newest_first_without_duplicates_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        for i in 0..(RECENT_FILES + 3) {
            state.add_recent(&dir.path().join(format!("{i}.json"))).unwrap();
        }
        state.add_recent(&dir.path().join("5.json")).unwrap();
        let recent = state.recent();
        assert_eq!(recent.len(), RECENT_FILES);
        assert_eq!(recent[0], dir.path().join("5.json"));
        assert_eq!(recent[1], dir.path().join(format!("{}.json", RECENT_FILES + 2)));
        assert_eq!(recent.iter().filter(|p| p.ends_with("5.json")).count(), 1);
    }
}
