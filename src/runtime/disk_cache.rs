//! Node results on disk, so that they survive restarts: one file per cache key (`<64 hex digits>.result`,
//! CBOR: a header naming the format, its version and the key, then the outputs), written atomically (a
//! temporary file in the same folder, renamed into place: a crash mid-write leaves no file that could be read
//! back), bounded in bytes with the least recently used entries evicted first (use refreshes a file's
//! modification time). Only results made entirely of data values are stored (no model handles), and never
//! those of output nodes (previews, exports), whose work is their side effect.
//!
//! An entry that does not decode, names another format, version or key, or holds something other than data is
//! ignored with a log line, never trusted. Only files with stepstone's own names in the cache folder are ever
//! replaced or deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::cache::CacheKey;
use super::{NodeOutputs, Value};

/// The format name in every entry's header.
const FORMAT: &str = "stepstone-node-result";
/// Bumped when the entry layout or a stored value's layout changes: older entries are then ignored.
const VERSION: u32 = 1;
/// File name suffix of entries.
const SUFFIX: &str = "result";
/// Prefix of the temporary files entries are written through.
const TEMP_PREFIX: &str = ".writing-";
/// The largest entry read back (a bound against crafted files).
const MAX_ENTRY_BYTES: u64 = 4 << 30;

/// The default size bound: 4 GB.
pub const DEFAULT_LIMIT_BYTES: u64 = 4_000_000_000;

#[derive(Serialize, Deserialize)]
struct Entry {
    format: String,
    version: u32,
    key: String,
    node: String,
    outputs: BTreeMap<String, Value>,
}

/// What the cache folder holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCacheInfo {
    pub dir: PathBuf,
    pub entries: usize,
    pub bytes: u64,
    pub limit: u64,
}

/// The on-disk result store of one cache folder.
pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    /// Keys whose entry was found unusable in this process (not read again).
    bad: Mutex<HashSet<CacheKey>>,
    /// Entries decoded by [`DiskCache::load`] and not yet taken.
    loaded: Mutex<HashMap<CacheKey, NodeOutputs>>,
    /// Log lines not yet taken (damaged entries, write failures).
    log: Mutex<Vec<String>>,
}

fn hex(key: &CacheKey) -> String {
    key.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is one of ours: an entry or a temporary file of one.
fn ours(name: &str) -> bool {
    let entry = |n: &str| {
        n.strip_suffix(&format!(".{SUFFIX}")).is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    entry(name)
        || name.strip_prefix(TEMP_PREFIX).is_some_and(|rest| rest.split('.').next().is_some_and(|h| h.len() == 64))
}

impl DiskCache {
    /// The cache in `dir` (created if missing), bounded to `limit` bytes. Temporary files a crash left behind
    /// are removed (they are ours and were never complete).
    pub fn open(dir: impl Into<PathBuf>, limit: u64) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) && ours(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(DiskCache {
            dir,
            limit,
            bad: Mutex::new(HashSet::new()),
            loaded: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        })
    }

    /// The user's cache folder for results (`$XDG_CACHE_HOME/stepstone/results` or the platform's), or
    /// `STEPSTONE_CACHE_DIR` when set.
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os("STEPSTONE_CACHE_DIR") {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => dirs::cache_dir().map(|d| d.join("stepstone").join("results")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.{SUFFIX}", hex(key)))
    }

    fn note(&self, line: String) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Log lines since the last call (damaged or foreign entries, failed writes).
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether a usable entry exists for `key`: it is read and checked now (and kept for [`Self::take`]), so
    /// that a damaged entry is never planned as cached.
    pub fn load(&self, key: &CacheKey) -> bool {
        if self.loaded.lock().unwrap_or_else(|p| p.into_inner()).contains_key(key) {
            return true;
        }
        if self.bad.lock().unwrap_or_else(|p| p.into_inner()).contains(key) {
            return false;
        }
        let path = self.path(key);
        if !path.is_file() {
            return false;
        }
        match self.read(&path, key) {
            Ok(outputs) => {
                // Recently used: keep it from eviction.
                if let Ok(file) = std::fs::File::options().write(true).open(&path) {
                    let _ = file.set_modified(SystemTime::now());
                }
                self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(*key, outputs);
                true
            }
            Err(why) => {
                self.note(format!("result cache: ignored {}: {why}", path.display()));
                self.bad.lock().unwrap_or_else(|p| p.into_inner()).insert(*key);
                false
            }
        }
    }

    /// The outputs [`Self::load`] read for `key`.
    pub fn take(&self, key: &CacheKey) -> Option<NodeOutputs> {
        if !self.load(key) {
            return None;
        }
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    fn read(&self, path: &Path, key: &CacheKey) -> Result<NodeOutputs, String> {
        let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if size > MAX_ENTRY_BYTES {
            return Err(format!("{size} bytes, more than an entry may hold ({MAX_ENTRY_BYTES})"));
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let entry: Entry =
            ciborium::from_reader(bytes.as_slice()).map_err(|e| format!("not a readable entry: {e:?}"))?;
        if entry.format != FORMAT || entry.version != VERSION {
            return Err(format!(
                "format '{}' version {}, expected '{FORMAT}' version {VERSION}",
                entry.format, entry.version
            ));
        }
        if entry.key != hex(key) {
            return Err("the entry names another key than its file".to_string());
        }
        Ok(NodeOutputs { values: entry.outputs })
    }

    /// Stores `outputs` under `key` if they are all data (returns whether it did), then evicts the least
    /// recently used entries beyond the size bound. A failure to write is logged, never fatal.
    pub fn store(&self, key: &CacheKey, node: &str, outputs: &NodeOutputs) -> bool {
        if outputs.values.is_empty() || !outputs.values.values().all(Value::is_data) {
            return false;
        }
        let entry = Entry {
            format: FORMAT.to_string(),
            version: VERSION,
            key: hex(key),
            node: node.to_string(),
            outputs: outputs.values.clone(),
        };
        let path = self.path(key);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{}.{}", hex(key), std::process::id()));
        let written = (|| -> Result<(), String> {
            let mut bytes = Vec::new();
            ciborium::into_writer(&entry, &mut bytes).map_err(|e| format!("{e:?}"))?;
            let mut file = std::fs::File::create(&temp).map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut file, &bytes).map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            std::fs::rename(&temp, &path).map_err(|e| e.to_string())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            self.note(format!("result cache: could not write {}: {e}", path.display()));
            return false;
        }
        self.bad.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.evict();
        true
    }

    /// Our entries with their sizes and modification times.
    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        dir.flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                ours(&name) && !name.starts_with(TEMP_PREFIX)
            })
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((e.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
            })
            .collect()
    }

    /// Removes the least recently used entries until the rest fit the bound.
    pub fn evict(&self) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
        entries.sort_by_key(|(_, _, modified)| *modified);
        for (path, size, _) in entries {
            if total <= self.limit {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(size);
            }
        }
    }

    pub fn info(&self) -> DiskCacheInfo {
        let entries = self.entries();
        DiskCacheInfo {
            dir: self.dir.clone(),
            entries: entries.len(),
            bytes: entries.iter().map(|(_, size, _)| size).sum(),
            limit: self.limit,
        }
    }

    /// Removes every entry (only stepstone's own files); returns how many.
    pub fn clear(&self) -> usize {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.entries().into_iter().filter(|(path, _, _)| std::fs::remove_file(path).is_ok()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::PromptValue;

    fn prompt(text: &str) -> NodeOutputs {
        NodeOutputs::new().with("prompt", PromptValue { positive: text.into(), negative: String::new() })
    }

    fn positive(outputs: &NodeOutputs) -> String {
        outputs.get::<PromptValue>("prompt").map(|p| p.positive.clone()).unwrap_or_default()
    }

    #[test]
    fn entries_survive_a_new_cache_and_damaged_ones_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
        let cache = DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap();
        assert!(cache.store(&a, "p", &prompt("a red fox")));
        assert!(cache.store(&b, "q", &prompt("a boat")));
        // A new process: read back from the files.
        let again = DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap();
        assert_eq!(again.take(&a).map(|o| positive(&o)), Some("a red fox".to_string()));
        // A damaged entry (truncated) and a foreign one (another key's bytes under this name) are ignored, logged.
        let path_b = again.path(&b);
        let bytes = std::fs::read(&path_b).unwrap();
        std::fs::write(&path_b, &bytes[..bytes.len() / 2]).unwrap();
        assert!(!again.load(&b));
        let c = CacheKey([3; 32]);
        std::fs::copy(again.path(&a), again.path(&c)).unwrap();
        assert!(!again.load(&c));
        let log = again.take_log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log[0].contains("not a readable entry") && log[1].contains("another key"), "{log:?}");
        // A crash mid-write leaves a temporary file: never read, removed at the next open; others' files stay.
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}{}.999", hex(&c))), b"half").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let third = DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap();
        assert_eq!(third.info().entries, 3);
        assert_eq!(third.clear(), 3);
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["notes.txt"], "only stepstone's own files are deleted");
    }

    #[test]
    fn the_least_recently_used_go_first_and_models_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let one = DiskCache::open(dir.path(), DEFAULT_LIMIT_BYTES).unwrap();
        let (a, b, c) = (CacheKey([1; 32]), CacheKey([2; 32]), CacheKey([3; 32]));
        one.store(&a, "a", &prompt("first"));
        let size = one.info().bytes;
        // Room for two entries.
        let cache = DiskCache::open(dir.path(), size * 2 + size / 2).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.store(&b, "b", &prompt("second"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(cache.load(&a), "a is used again: now the most recent");
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.store(&c, "c", &prompt("third"));
        let fresh = DiskCache::open(dir.path(), u64::MAX).unwrap();
        assert!(fresh.load(&a) && fresh.load(&c) && !fresh.load(&b), "b was the least recently used");
        // Nothing that is not data is written; nor empty outputs.
        assert!(!cache.store(&CacheKey([9; 32]), "empty", &NodeOutputs::new()));
    }
}
