//! Cache keys, the node-result cache and the model-handle cache.
//!
//! A node's key is a hash of its kind, the kind's version, its resolved parameters, fingerprints of the
//! files its path parameters name, and the keys of the nodes feeding its inputs. An edit therefore changes
//! the key of the edited node and of everything downstream of it, and nothing else.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde_json::Value as Json;

use super::{NodeError, NodeOutputs};
use crate::graph::{KindSpec, ParamType, PathRole, ResolvedParams};

/// A 256-bit content key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// Where path parameters are resolved when keys are computed: the node and the engine's access policy.
pub struct PathContext<'a> {
    pub node: &'a str,
    pub access: &'a crate::graph::AccessPolicy,
}

/// Computes a node's key. `inputs` lists, for each connected input port, the upstream key and output port.
pub fn node_key(
    kind: &KindSpec,
    params: &ResolvedParams,
    inputs: &BTreeMap<String, (CacheKey, String)>,
    paths: &PathContext<'_>,
) -> CacheKey {
    let mut h = blake3::Hasher::new();
    h.update(b"stepstone node key v1\0");
    field(&mut h, kind.id.as_bytes());
    h.update(&kind.version.to_le_bytes());
    // Resolved parameters are a BTreeMap, so their JSON is in sorted order.
    let params_json = serde_json::to_vec(&params.values).unwrap_or_default();
    field(&mut h, &params_json);
    for spec in kind.params {
        let ParamType::Path { role, .. } = spec.ty else { continue };
        let Some(value) = params.str(spec.name) else { continue };
        if role == PathRole::Output {
            continue;
        }
        let path = paths.access.resolve(paths.node, spec.name, role, value).path;
        field(&mut h, spec.name.as_bytes());
        field(&mut h, &fingerprint(&path));
    }
    for port in kind.inputs {
        field(&mut h, port.name.as_bytes());
        match inputs.get(port.name) {
            Some((key, from_port)) => {
                h.update(&key.0);
                field(&mut h, from_port.as_bytes());
            }
            None => field(&mut h, b"<unconnected>"),
        }
    }
    CacheKey(*h.finalize().as_bytes())
}

/// Length-prefixed, so that adjacent fields cannot run into each other.
fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// A fingerprint of a file or folder: size and modification time of every file in it, by relative name.
/// Cheap (no reading of contents), and it changes when a file is replaced or edited.
pub fn fingerprint(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    fingerprint_into(path, Path::new(""), &mut out, 0);
    out
}

fn fingerprint_into(path: &Path, rel: &Path, out: &mut Vec<u8>, depth: usize) {
    let Ok(meta) = std::fs::metadata(path) else {
        out.extend_from_slice(b"missing\0");
        return;
    };
    if meta.is_dir() {
        if depth > 4 {
            return;
        }
        let mut entries: Vec<_> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.file_name()).collect(),
            Err(_) => {
                out.extend_from_slice(b"unreadable\0");
                return;
            }
        };
        entries.sort();
        for name in entries {
            fingerprint_into(&path.join(&name), &rel.join(&name), out, depth + 1);
        }
        return;
    }
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    out.extend_from_slice(rel.to_string_lossy().as_bytes());
    out.push(0);
    out.extend_from_slice(&meta.len().to_le_bytes());
    out.extend_from_slice(&mtime.to_le_bytes());
}

/// Normalises parameter values for hashing and evaluation: numbers of float parameters become floats, so
/// `7` and `7.0` give the same key; a parameter that does not matter in the node's current mode
/// ([`ParamSpec::only_when`](crate::graph::ParamSpec::only_when)) is dropped, so editing it re-runs nothing.
pub fn normalise_params(kind: &KindSpec, params: &mut ResolvedParams) {
    for spec in kind.params {
        if let Some((param, value)) = spec.only_when
            && params.str(param) != Some(value)
        {
            params.values.remove(spec.name);
        }
    }
    for spec in kind.params {
        let Some(v) = params.values.get_mut(spec.name) else { continue };
        match spec.ty {
            ParamType::Float { .. } => {
                if let Some(f) = v.as_f64() {
                    *v = Json::from(f);
                }
            }
            ParamType::FloatList { .. } => {
                if let Some(items) = v.as_array_mut() {
                    for item in items {
                        if let Some(f) = item.as_f64() {
                            *item = Json::from(f);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

struct Entry {
    node: String,
    outputs: NodeOutputs,
    last_used: u64,
}

/// Node results by key, least recently used evicted first once `capacity` entries are held; with a
/// [`DiskCache`](super::disk_cache::DiskCache) behind it, data results also persist across restarts.
pub struct ResultCache {
    entries: HashMap<CacheKey, Entry>,
    capacity: usize,
    clock: u64,
    disk: Option<super::disk_cache::DiskCache>,
}

impl ResultCache {
    pub fn new(capacity: usize) -> Self {
        ResultCache { entries: HashMap::new(), capacity: capacity.max(1), clock: 0, disk: None }
    }

    /// This cache with results also read from and written to `disk`.
    pub fn with_disk(mut self, disk: super::disk_cache::DiskCache) -> Self {
        self.disk = Some(disk);
        self
    }

    pub fn disk(&self) -> Option<&super::disk_cache::DiskCache> {
        self.disk.as_ref()
    }

    pub fn into_disk(self) -> Option<super::disk_cache::DiskCache> {
        self.disk
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a result for `key` is held in memory or, checked and read now, on disk.
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.entries.contains_key(key) || self.disk.as_ref().is_some_and(|d| d.load(key))
    }

    /// The outputs under `key`, marking them recently used (a result read from disk joins the memory cache).
    pub fn get(&mut self, key: &CacheKey) -> Option<NodeOutputs> {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(key) {
            e.last_used = clock;
            return Some(e.outputs.clone());
        }
        let outputs = self.disk.as_ref()?.take(key)?;
        self.remember(*key, "(from disk)", outputs.clone());
        Some(outputs)
    }

    /// Holds `outputs` under `key`; data results of nodes that are not outputs also go to disk.
    pub fn insert(&mut self, key: CacheKey, node: &str, outputs: NodeOutputs) {
        self.insert_with(key, node, outputs, true);
    }

    /// [`Self::insert`], to disk only when `persist` (output nodes' results are their side effects).
    pub fn insert_with(&mut self, key: CacheKey, node: &str, outputs: NodeOutputs, persist: bool) {
        if persist && let Some(disk) = &self.disk {
            disk.store(&key, node, &outputs);
        }
        self.remember(key, node, outputs);
    }

    fn remember(&mut self, key: CacheKey, node: &str, outputs: NodeOutputs) {
        self.clock += 1;
        if !self.entries.contains_key(&key)
            && self.entries.len() >= self.capacity
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, Entry { node: node.to_string(), outputs, last_used: self.clock });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the results held in memory (the disk's entries stay: [`DiskCache::clear`] removes those).
    ///
    /// [`DiskCache::clear`]: super::disk_cache::DiskCache::clear
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Ids of the nodes that produced the cached entries (for diagnostics).
    pub fn nodes(&self) -> Vec<&str> {
        self.entries.values().map(|e| e.node.as_str()).collect()
    }
}

/// Loaded models by a key the loader chooses (file, fingerprint, options), shared by every node that uses
/// them and kept apart from node results: clearing results or changing a sampler parameter never reloads
/// weights.
#[derive(Default)]
pub struct ModelCache {
    models: Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
    loads: AtomicU64,
}

impl ModelCache {
    pub fn new() -> Self {
        ModelCache::default()
    }

    /// The model under `key`, loading it with `load` the first time.
    pub fn get_or_load<T, F>(&self, key: &str, load: F) -> Result<Arc<T>, NodeError>
    where
        T: Any + Send + Sync,
        F: FnOnce() -> Result<T, NodeError>,
    {
        if let Some(found) = self.lock().get(key).cloned() {
            return found
                .downcast::<T>()
                .map_err(|_| NodeError::Failed(format!("model cache entry '{key}' holds another type of model")));
        }
        // Loading happens outside the lock: it can take long, and the worker is the only loader anyway.
        let model = Arc::new(load()?);
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key.to_string(), model.clone());
        Ok(model)
    }

    /// How many loads have happened (for tests and diagnostics).
    pub fn load_count(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn Any + Send + Sync>>> {
        // A panic while holding the lock cannot leave the map half-updated (insert/clear are atomic),
        // so a poisoned lock is safe to keep using.
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(v: i64) -> NodeOutputs {
        NodeOutputs::new().with("out", v)
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut c = ResultCache::new(2);
        let (a, b, d) = (CacheKey([1; 32]), CacheKey([2; 32]), CacheKey([3; 32]));
        c.insert(a, "a", outputs(1));
        c.insert(b, "b", outputs(2));
        assert!(c.get(&a).is_some());
        c.insert(d, "d", outputs(3));
        assert!(c.contains(&a) && c.contains(&d) && !c.contains(&b));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn fingerprint_changes_with_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.bin");
        assert_eq!(fingerprint(&f), b"missing\0".to_vec());
        std::fs::write(&f, b"abc").unwrap();
        let first = fingerprint(&f);
        std::fs::write(&f, b"abcd").unwrap();
        assert_ne!(first, fingerprint(&f));
        let folder = fingerprint(dir.path());
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        assert_ne!(folder, fingerprint(dir.path()));
    }

    #[test]
    fn model_cache_loads_once_and_checks_types() {
        let c = ModelCache::new();
        let a = c.get_or_load("m", || Ok(5_u32)).unwrap();
        let b = c.get_or_load("m", || -> Result<u32, NodeError> { panic!("must not reload") }).unwrap();
        assert_eq!((*a, *b, c.load_count()), (5, 5, 1));
        assert!(c.get_or_load("m", || Ok(1.0_f32)).is_err());
        let err = c.get_or_load("bad", || -> Result<u8, NodeError> { Err(NodeError::Failed("x".into())) });
        assert!(err.is_err());
        assert_eq!(c.len(), 1);
    }
}
