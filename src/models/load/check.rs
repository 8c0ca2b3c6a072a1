//! Pre-checks of weight files, run before burn-store reads one: every size, count and offset a file
//! declares is checked against the file's length with checked arithmetic, so that a crafted or damaged
//! file gets an error naming the file, the tensor and the field instead of a panic, an abort or a huge
//! allocation.
//!
//! - safetensors: the header length (at most [`MAX_HEADER_BYTES`] and within the file), then per tensor a
//!   known `dtype`, a `shape` of at most [`MAX_RANK`] non-negative integers whose element count does not
//!   overflow, and `data_offsets` `[begin, end]` with `begin <= end <= data length` and `end - begin` the
//!   shape's byte size; together the tensors must tile the data section exactly, as the format requires.
//!   `__metadata__` must map strings to strings.
//! - pickle checkpoints (`.ckpt`, `.pt`, `.bin`, `.pth`): a zip container's end records and central
//!   directory are checked first ([`archive`]: every entry within the file, stored entries of consistent
//!   sizes, deflated ones of bounded declared size). Then burn's `PytorchReader` parses the container and
//!   the pickle as data (it bounds the pickle, copies, nesting, and checks every view against its
//!   storage). A panic inside it becomes [`LoadError::Corrupt`] ("the checkpoint's pickle data is
//!   malformed"). On top of it every tensor must fit the file: its byte size (element count times element
//!   size, checked) may not exceed the file's length, which stops a broadcast view (stride 0) of a tiny
//!   storage from declaring gigabytes that a read would materialise.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use serde_json::Value;

use super::{LoadError, archive};

/// The largest safetensors JSON header accepted (the limit of the reference implementation).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// The most dimensions a tensor may have.
pub const MAX_RANK: usize = 16;

/// Tensor names and shapes, in the file's order.
pub type Shapes = Vec<(String, Vec<usize>)>;

/// Bits per element of the safetensors dtypes.
fn dtype_bits(name: &str) -> Option<u64> {
    Some(match name {
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// A JSON value for a message, cut short.
fn brief(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "nothing".to_string();
    };
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// What is wrong with one tensor entry: the field and the message.
type EntryError = (&'static str, String);

/// One checked tensor entry of a safetensors header.
struct Entry {
    shape: Vec<usize>,
    dtype: String,
    begin: u64,
    end: u64,
}

fn parse_entry(value: &Value, data_len: u64) -> Result<Entry, EntryError> {
    let Value::Object(entry) = value else {
        return Err((
            "entry",
            format!("expected an object with dtype, shape and data_offsets, found {}", brief(Some(value))),
        ));
    };
    let dtype = entry
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| ("dtype", format!("expected a string, found {}", brief(entry.get("dtype")))))?;
    let bits = dtype_bits(dtype).ok_or_else(|| {
        ("dtype", format!("unknown dtype {} (expected F32, F16, BF16, F64, I64, ...)", brief(entry.get("dtype"))))
    })?;
    let dims = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| ("shape", format!("expected a list of sizes, found {}", brief(entry.get("shape")))))?;
    if dims.len() > MAX_RANK {
        return Err(("shape", format!("{} dimensions, at most {MAX_RANK} are supported", dims.len())));
    }
    let mut shape = Vec::with_capacity(dims.len());
    let mut elements: u64 = 1;
    for (i, dim) in dims.iter().enumerate() {
        let n = dim
            .as_u64()
            .ok_or_else(|| ("shape", format!("dimension {i} is {}, not a non-negative integer", brief(Some(dim)))))?;
        elements = elements
            .checked_mul(n)
            .ok_or_else(|| ("shape", format!("{} has too many elements to count", brief(entry.get("shape")))))?;
        shape.push(usize::try_from(n).map_err(|_| ("shape", format!("dimension {i} ({n}) is too large")))?);
    }
    let bits = elements
        .checked_mul(bits)
        .filter(|b| b % 8 == 0)
        .ok_or_else(|| ("shape", format!("{elements} elements of {dtype} do not make a whole number of bytes")))?;
    let bytes = bits / 8;
    let (begin, end) = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|o| match o.as_slice() {
            [b, e] => Some((b.as_u64()?, e.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| {
            let found = brief(entry.get("data_offsets"));
            ("data_offsets", format!("expected [begin, end] (two non-negative integers), found {found}"))
        })?;
    if begin > end {
        return Err(("data_offsets", format!("begin {begin} is after end {end}")));
    }
    if end > data_len {
        return Err((
            "data_offsets",
            format!(
                "truncated: the tensor's data ends at byte {end} of the data section, which holds {data_len} bytes"
            ),
        ));
    }
    if end - begin != bytes {
        return Err((
            "data_offsets",
            format!("[{begin}, {end}] holds {} bytes, but shape {shape:?} of {dtype} takes {bytes}", end - begin),
        ));
    }
    Ok(Entry { shape, dtype: dtype.to_string(), begin, end })
}

/// The tensor names and shapes of a safetensors file, with the checks of the module documentation.
pub fn safetensors_shapes(path: &Path) -> Result<Shapes, LoadError> {
    Ok(safetensors_entries(path)?.into_iter().map(|(key, entry)| (key, entry.shape)).collect())
}

/// How many tensors of each dtype a safetensors file holds (checked as [`safetensors_shapes`] checks it).
pub fn safetensors_dtypes(path: &Path) -> Result<std::collections::BTreeMap<String, usize>, LoadError> {
    let mut counts = std::collections::BTreeMap::new();
    for (_, entry) in safetensors_entries(path)? {
        *counts.entry(entry.dtype).or_insert(0) += 1;
    }
    Ok(counts)
}

fn safetensors_entries(path: &Path) -> Result<Vec<(String, Entry)>, LoadError> {
    let read_err = |message: String| LoadError::Read { path: path.to_path_buf(), message };
    let corrupt = |tensor: Option<&str>, field: &'static str, message: String| LoadError::Corrupt {
        path: path.to_path_buf(),
        tensor: tensor.map(str::to_string),
        field,
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let size = file.metadata().map_err(|e| read_err(e.to_string()))?.len();
    let mut len = [0u8; 8];
    if size < 8 || file.read_exact(&mut len).is_err() {
        return Err(read_err(format!("not a safetensors file: {size} bytes, shorter than its 8-byte header length")));
    }
    let header_len = u64::from_le_bytes(len);
    let room = size - 8;
    if header_len > MAX_HEADER_BYTES || header_len > room {
        return Err(corrupt(
            None,
            "header length",
            format!(
                "not a safetensors file, or truncated: a header of {header_len} bytes (at most {MAX_HEADER_BYTES}) \
                 in a file of {size} bytes"
            ),
        ));
    }
    let data_len = room - header_len;
    let header_size = usize::try_from(header_len).map_err(|_| read_err("header too large".into()))?;
    let mut header = vec![0u8; header_size];
    file.read_exact(&mut header).map_err(|e| read_err(e.to_string()))?;
    if header.first() != Some(&b'{') {
        return Err(corrupt(None, "header", "not a safetensors file: the header is not a JSON object".into()));
    }
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|e| corrupt(None, "header", format!("unreadable JSON: {e}")))?;
    drop(file);

    let mut entries: Vec<(&str, Entry)> = Vec::with_capacity(header.len());
    for (key, value) in &header {
        if key == "__metadata__" {
            let strings = value.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !strings {
                let found = brief(Some(value));
                return Err(corrupt(None, "__metadata__", format!("expected an object of strings, found {found}")));
            }
            continue;
        }
        let entry = parse_entry(value, data_len).map_err(|(field, message)| corrupt(Some(key), field, message))?;
        entries.push((key.as_str(), entry));
    }
    // The tensors tile the data section, in the order of their offsets (the format requires it, and the
    // reader behind burn-store refuses anything else).
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].1.begin, entries[i].1.end));
    let mut at = 0u64;
    for &i in &order {
        let (key, entry) = &entries[i];
        if entry.begin != at {
            let message = if entry.begin < at {
                format!("begins at byte {}, inside the data of another tensor (which ends at {at})", entry.begin)
            } else {
                format!(
                    "begins at byte {}, leaving bytes {at}..{} of the data section to no tensor",
                    entry.begin, entry.begin
                )
            };
            return Err(corrupt(Some(key), "data_offsets", message));
        }
        at = entry.end;
    }
    if at != data_len {
        return Err(corrupt(
            None,
            "data_offsets",
            format!("the tensors take {at} bytes of data, but the file holds {data_len} bytes after its header"),
        ));
    }
    Ok(entries.into_iter().map(|(key, entry)| (key.to_string(), entry)).collect())
}

/// A panic's message, if it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Runs a call into burn's pickle reader: a panic in it becomes an error naming the file. (The panic hook
/// still prints the panic; the process goes on.)
pub fn guard_pickle<T>(path: &Path, call: impl FnOnce() -> T) -> Result<T, LoadError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| LoadError::Corrupt {
        path: path.to_path_buf(),
        tensor: None,
        field: "pickle data",
        message: format!("the checkpoint's pickle data is malformed (the reader failed: {})", panic_message(&*payload)),
    })
}

/// The tensor names and shapes of a pickle checkpoint, with the checks of the module documentation.
pub fn pickle_shapes(path: &Path) -> Result<Shapes, LoadError> {
    let read_err = |message: String| LoadError::Read { path: path.to_path_buf(), message };
    let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let size = file.metadata().map_err(|e| read_err(e.to_string()))?.len();
    let mut magic = [0u8; 4];
    // The reader's own test for a zip container (PyTorch 1.6+).
    if file.read_exact(&mut magic).is_ok() && (&magic == b"PK\x03\x04" || &magic == b"PK\x05\x06") {
        archive::check_zip(&mut file, size).map_err(|(entry, field, message)| LoadError::Corrupt {
            path: path.to_path_buf(),
            tensor: None,
            field,
            message: match entry {
                Some(entry) => format!("zip entry '{entry}': {message}"),
                None => message,
            },
        })?;
    }
    drop(file);
    let reader = guard_pickle(path, || burn::store::pytorch_reader::PytorchReader::new(path))?
        .map_err(|e| read_err(e.to_string()))?;
    let mut shapes = Vec::with_capacity(reader.len());
    for (key, tensor) in reader.tensors() {
        let shape = tensor.shape();
        let element = tensor.dtype().size() as u64;
        let bytes = shape.iter().try_fold(element, |n, &d| n.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > size) {
            let needs = bytes.map_or_else(|| "more bytes than can be counted".to_string(), |b| format!("{b} bytes"));
            return Err(LoadError::Corrupt {
                path: path.to_path_buf(),
                tensor: Some(key.clone()),
                field: "shape",
                message: format!(
                    "shape {shape:?} of {:?} needs {needs}, more than the whole file ({size} bytes)",
                    tensor.dtype()
                ),
            });
        }
        shapes.push((key.clone(), shape.to_vec()));
    }
    Ok(shapes)
}
