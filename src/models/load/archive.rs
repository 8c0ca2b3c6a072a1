//! A bounded look at the zip container of a PyTorch 1.6+ checkpoint, before burn's reader opens it.
//!
//! Every size, count and offset the end records and the central directory declare is checked against the
//! file's length with checked arithmetic: the central directory lies inside the file and holds at least
//! 46 bytes per declared entry, and each entry's data lies inside the file. An entry is stored (as
//! `torch.save` writes every entry: its sizes must agree) or deflated to at most [`MAX_INFLATION`] times
//! the file's length, so that no declared size can make a reader hold more than a small multiple of the
//! file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// How much larger than the whole file a deflated entry may declare itself (float weights barely compress;
/// a decompression bomb declares thousands of times its size).
pub const MAX_INFLATION: u64 = 4;

/// What is wrong: the entry (if one), the field, the message.
pub type ZipError = (Option<String>, &'static str, String);

const EOCD: &[u8; 4] = b"PK\x05\x06";
const EOCD64: &[u8; 4] = b"PK\x06\x06";
const LOCATOR64: &[u8; 4] = b"PK\x06\x07";
const CENTRAL: &[u8; 4] = b"PK\x01\x02";
/// The end record's size without its comment, and the most a comment can add.
const EOCD_LEN: usize = 22;
const MAX_COMMENT: usize = 0xffff;

fn le(bytes: &[u8], at: usize, width: usize) -> Option<u64> {
    let field = bytes.get(at..at.checked_add(width)?)?;
    Some(field.iter().rev().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
}

fn read_at(file: &mut File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut buf)).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn err(entry: Option<&str>, field: &'static str, message: String) -> ZipError {
    (entry.map(str::to_string), field, message)
}

/// Where the central directory is and how many entries it declares: (offset, size, entries).
fn directory(file: &mut File, file_len: u64) -> Result<(u64, u64, u64), ZipError> {
    let io = |e: String| err(None, "zip end record", e);
    let tail_len = usize::try_from(file_len.min((EOCD_LEN + MAX_COMMENT + 20) as u64)).unwrap_or(0);
    let tail_start = file_len - tail_len as u64;
    let tail = read_at(file, tail_start, tail_len).map_err(io)?;
    let at = (0..tail_len.saturating_sub(EOCD_LEN - 1))
        .rev()
        .find(|&i| tail.get(i..i + 4) == Some(EOCD.as_slice()))
        .ok_or_else(|| err(None, "zip end record", "not found: the archive is truncated or not a zip file".into()))?;
    let field = |offset: usize, width: usize| le(&tail, at + offset, width).unwrap_or(0);
    let (mut entries, mut size, mut offset) = (field(10, 2), field(12, 4), field(16, 4));
    // A zip64 locator right before the end record points at the zip64 end record, whose fields win.
    if at >= 20 && tail.get(at - 20..at - 16) == Some(LOCATOR64.as_slice()) {
        let record = le(&tail, at - 12, 8).unwrap_or(u64::MAX);
        if record.checked_add(56).is_none_or(|end| end > file_len) {
            return Err(err(
                None,
                "zip64 end record offset",
                format!("{record} lies outside the file of {file_len} bytes"),
            ));
        }
        let eocd64 = read_at(file, record, 56).map_err(io)?;
        if eocd64.get(..4) != Some(EOCD64.as_slice()) {
            return Err(err(None, "zip64 end record offset", format!("no zip64 end record at byte {record}")));
        }
        let field = |offset: usize| le(&eocd64, offset, 8).unwrap_or(0);
        (entries, size, offset) = (field(32), field(40), field(48));
    }
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(err(
            None,
            "central directory offset and size",
            format!("{size} bytes at byte {offset} reach past the end of the file ({file_len} bytes)"),
        ));
    }
    if entries.checked_mul(46).is_none_or(|least| least > size) {
        return Err(err(
            None,
            "zip entry count",
            format!("{entries} entries cannot fit a central directory of {size} bytes (46 bytes each at least)"),
        ));
    }
    Ok((offset, size, entries))
}

/// Checks the end records and every central-directory entry of the zip `file` (see the module
/// documentation).
pub fn check_zip(file: &mut File, file_len: u64) -> Result<(), ZipError> {
    let (offset, size, entries) = directory(file, file_len)?;
    let cd_len = usize::try_from(size).map_err(|_| err(None, "central directory size", format!("{size}")))?;
    let cd = read_at(file, offset, cd_len).map_err(|e| err(None, "central directory", e))?;
    let mut at = 0usize;
    for index in 0..entries {
        let field = |offset: usize, width: usize| le(&cd, at + offset, width);
        let header = |what: String| err(None, "central directory entry", format!("entry {index}: {what}"));
        if cd.get(at..at + 4) != Some(CENTRAL.as_slice()) {
            return Err(header(format!("no central directory header at byte {at} of the directory")));
        }
        let lengths = (field(28, 2), field(30, 2), field(32, 2));
        let (Some(name_len), Some(extra_len), Some(comment_len)) = lengths else {
            return Err(header("cut short".into()));
        };
        let name_end = at + 46 + name_len as usize;
        let extra_end = name_end + extra_len as usize;
        let next = extra_end + comment_len as usize;
        if next > cd.len() {
            return Err(header(format!("its name, extra field and comment ({next} bytes) overrun the directory")));
        }
        let name = String::from_utf8_lossy(&cd[at + 46..name_end]).into_owned();
        let (mut compressed, mut uncompressed, mut local) =
            (field(20, 4).unwrap_or(0), field(24, 4).unwrap_or(0), field(42, 4).unwrap_or(0));
        zip64_sizes(&cd[name_end..extra_end], &mut uncompressed, &mut compressed, &mut local);
        let method = field(10, 2).unwrap_or(0);
        let bad = |field: &'static str, message: String| err(Some(&name), field, message);
        if local.checked_add(30).and_then(|l| l.checked_add(compressed)).is_none_or(|end| end > file_len) {
            return Err(bad(
                "compressed size",
                format!("{compressed} bytes at byte {local} reach past the end of the file ({file_len} bytes)"),
            ));
        }
        match method {
            0 if uncompressed != compressed => {
                return Err(bad(
                    "uncompressed size",
                    format!("a stored entry of {compressed} bytes declares {uncompressed} bytes"),
                ));
            }
            0 => {}
            8 if uncompressed > file_len.saturating_mul(MAX_INFLATION) => {
                return Err(bad(
                    "uncompressed size",
                    format!("{uncompressed} bytes, more than {MAX_INFLATION} times the whole file ({file_len} bytes)"),
                ));
            }
            8 => {}
            other => return Err(bad("compression method", format!("{other} is not supported (stored or deflated)"))),
        }
        at = next;
    }
    Ok(())
}

/// The zip64 extra field (id 1) replaces, in this order, those of the sizes and the local header offset
/// that are 0xffffffff.
fn zip64_sizes(extra: &[u8], uncompressed: &mut u64, compressed: &mut u64, local: &mut u64) {
    let mut at = 0;
    while let (Some(id), Some(len)) = (le(extra, at, 2), le(extra, at + 2, 2)) {
        let body = at + 4;
        if id == 1 {
            let mut pos = body;
            for value in [uncompressed, compressed, local] {
                if *value == 0xffff_ffff
                    && let Some(v) = le(extra, pos, 8).filter(|_| pos + 8 <= body + len as usize)
                {
                    *value = v;
                    pos += 8;
                }
            }
            return;
        }
        at = body + len as usize;
    }
}
