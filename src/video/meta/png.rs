//! The payload in PNG files: an uncompressed `iTXt` chunk right after `IHDR`.

use super::MetaError;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Largest chunk length PNG allows (2^31 - 1).
const PNG_MAX_CHUNK: usize = 0x7fff_ffff;

/// CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF), as PNG uses.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32 of `bytes` (the PNG / zlib / Ethernet CRC).
fn crc32(bytes: &[u8]) -> u32 {
    crc32_update(0xffff_ffff, bytes) ^ 0xffff_ffff
}

/// One chunk of a PNG file, as byte ranges into the file.
struct PngChunk {
    /// Offset of the chunk's length field (the start of the whole chunk).
    start: usize,
    kind: [u8; 4],
    /// The chunk's data, without length, type and CRC.
    data: std::ops::Range<usize>,
    /// Offset just past the CRC.
    end: usize,
}

fn kind_name(kind: &[u8; 4]) -> String {
    kind.iter().map(|&b| if b.is_ascii_graphic() { b as char } else { '?' }).collect()
}

/// Walks all chunks up to and including `IEND`, checking lengths and CRCs, and that `IHDR` comes first.
fn png_chunks(png: &[u8]) -> Result<Vec<PngChunk>, MetaError> {
    if png.len() < PNG_SIGNATURE.len() || png[..PNG_SIGNATURE.len()] != PNG_SIGNATURE {
        return Err(MetaError::NotPng);
    }
    let mut chunks = Vec::new();
    let mut pos = PNG_SIGNATURE.len();
    loop {
        let start = pos;
        let Some(header) = png.get(pos..pos + 8) else {
            let what = if chunks.is_empty() { "the IHDR chunk" } else { "the next chunk (or IEND)" };
            return Err(MetaError::PngTruncated { what: what.into(), offset: start });
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = [header[4], header[5], header[6], header[7]];
        if len > PNG_MAX_CHUNK {
            return Err(MetaError::PngMalformed {
                what: format!("the {} chunk claims a length of {len} bytes", kind_name(&kind)),
                offset: start,
            });
        }
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(MetaError::PngMalformed {
                what: format!("invalid chunk type {:?}", kind_name(&kind)),
                offset: start + 4,
            });
        }
        let data = pos + 8..(pos + 8).saturating_add(len);
        let end = data.end.saturating_add(4);
        let Some(crc_bytes) = png.get(data.end..end) else {
            return Err(MetaError::PngTruncated {
                what: format!("the {} chunk ({len} bytes of data)", kind_name(&kind)),
                offset: start,
            });
        };
        let stored = u32::from_be_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32(&png[pos + 4..data.end]);
        if stored != computed {
            return Err(MetaError::PngBadCrc { chunk: kind_name(&kind), offset: start, stored, computed });
        }
        if chunks.is_empty() && &kind != b"IHDR" {
            return Err(MetaError::PngMalformed {
                what: format!("the first chunk is {}, not IHDR", kind_name(&kind)),
                offset: start,
            });
        }
        chunks.push(PngChunk { start, kind, data, end });
        pos = end;
        if &kind == b"IEND" {
            return Ok(chunks);
        }
    }
}

/// The keyword's bytes in a PNG text chunk (Latin-1), checked against the PNG rules: 1 to 79 printable
/// characters, no leading, trailing or consecutive spaces.
fn png_keyword(keyword: &str) -> Result<Vec<u8>, MetaError> {
    let bad = |why| MetaError::BadKeyword { keyword: keyword.to_string(), why };
    let mut bytes = Vec::with_capacity(keyword.len());
    for c in keyword.chars() {
        let code = c as u32;
        if !((0x20..=0x7e).contains(&code) || (0xa1..=0xff).contains(&code)) {
            return Err(bad("only printable Latin-1 characters are allowed"));
        }
        bytes.push(code as u8);
    }
    if bytes.is_empty() || bytes.len() > 79 {
        return Err(bad("it must be 1 to 79 characters long"));
    }
    if bytes.first() == Some(&b' ') || bytes.last() == Some(&b' ') || bytes.windows(2).any(|w| w == b"  ") {
        return Err(bad("leading, trailing and consecutive spaces are not allowed"));
    }
    Ok(bytes)
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The keyword of a `tEXt`, `zTXt` or `iTXt` chunk, and where its data continues after the null separator.
fn text_chunk_keyword<'a>(png: &'a [u8], chunk: &PngChunk) -> Result<(&'a [u8], usize), MetaError> {
    let data = &png[chunk.data.clone()];
    match data.iter().position(|&b| b == 0) {
        Some(n) => Ok((&data[..n], chunk.data.start + n + 1)),
        None => Err(MetaError::PngMalformed {
            what: format!("the {} chunk has no null byte after its keyword", kind_name(&chunk.kind)),
            offset: chunk.start,
        }),
    }
}

fn is_text_chunk(kind: &[u8; 4]) -> bool {
    matches!(kind, b"tEXt" | b"zTXt" | b"iTXt")
}

/// Returns `png` with `text` stored under `keyword` in an uncompressed `iTXt` chunk right after `IHDR`.
/// Text chunks (`tEXt`, `zTXt`, `iTXt`) that already carry `keyword` are removed, so the file holds one.
pub fn png_with_text(png: &[u8], keyword: &str, text: &str) -> Result<Vec<u8>, MetaError> {
    let key = png_keyword(keyword)?;
    let chunks = png_chunks(png)?;
    // keyword, null, compression flag 0, compression method 0, empty language tag + null, empty translated
    // keyword + null, then the UTF-8 text.
    let mut data = Vec::with_capacity(key.len() + 5 + text.len());
    data.extend_from_slice(&key);
    data.extend_from_slice(&[0, 0, 0, 0, 0]);
    data.extend_from_slice(text.as_bytes());
    if data.len() > PNG_MAX_CHUNK {
        return Err(MetaError::PngTextTooLarge { keyword: keyword.to_string(), len: text.len() });
    }
    let mut chunk = Vec::with_capacity(data.len() + 12);
    chunk.extend_from_slice(&(data.len() as u32).to_be_bytes());
    chunk.extend_from_slice(b"iTXt");
    chunk.extend_from_slice(&data);
    let crc = crc32(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());

    let mut out = Vec::with_capacity(png.len() + chunk.len());
    out.extend_from_slice(&png[..PNG_SIGNATURE.len()]);
    for (i, c) in chunks.iter().enumerate() {
        if is_text_chunk(&c.kind) && text_chunk_keyword(png, c)?.0 == key.as_slice() {
            continue;
        }
        out.extend_from_slice(&png[c.start..c.end]);
        if i == 0 {
            out.extend_from_slice(&chunk);
        }
    }
    // Whatever follows IEND is kept as it was.
    if let Some(last) = chunks.last() {
        out.extend_from_slice(&png[last.end..]);
    }
    Ok(out)
}

/// The text stored under `keyword` in the first uncompressed `iTXt` or `tEXt` chunk that has it (`tEXt` is
/// Latin-1), or `None` when there is none. The whole file is checked (signature, chunk lengths, CRCs).
/// Compressed `iTXt` chunks are skipped; if only such a chunk carries the keyword, that is an error.
pub fn png_text(png: &[u8], keyword: &str) -> Result<Option<String>, MetaError> {
    let key = png_keyword(keyword)?;
    let chunks = png_chunks(png)?;
    let mut compressed = None;
    for c in &chunks {
        if &c.kind != b"tEXt" && &c.kind != b"iTXt" {
            continue;
        }
        let (chunk_key, rest) = text_chunk_keyword(png, c)?;
        if chunk_key != key.as_slice() {
            continue;
        }
        let rest = &png[rest..c.data.end];
        if &c.kind == b"tEXt" {
            return Ok(Some(latin1(rest)));
        }
        let malformed = |what: &str| MetaError::PngMalformed {
            what: format!("the iTXt chunk {keyword:?} {what}"),
            offset: c.start,
        };
        let [flag, _method, after @ ..] = rest else {
            return Err(malformed("ends before its compression fields"));
        };
        let language_end = after.iter().position(|&b| b == 0).ok_or_else(|| malformed("has no language tag"))?;
        let after = &after[language_end + 1..];
        let translated_end =
            after.iter().position(|&b| b == 0).ok_or_else(|| malformed("has no translated keyword"))?;
        let text = &after[translated_end + 1..];
        match *flag {
            0 => {
                let text_offset = c.data.end - text.len();
                return String::from_utf8(text.to_vec())
                    .map(Some)
                    .map_err(|_| MetaError::NotUtf8 { format: "PNG iTXt", offset: text_offset });
            }
            1 => {
                compressed.get_or_insert(c.start);
            }
            _ => return Err(malformed("has an invalid compression flag")),
        }
    }
    match compressed {
        Some(offset) => Err(MetaError::PngCompressedText { keyword: keyword.to_string(), offset }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::super::GRAPH_KEY;
    use super::super::test_support::{next_random, payload};
    use super::*;

    fn sample_image() -> image::RgbImage {
        image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 36) as u8, (y * 60) as u8, ((x ^ y) * 31) as u8]))
    }

    fn sample_png() -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        sample_image().write_to(&mut bytes, image::ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    /// A chunk with length, type, data and CRC.
    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        let crc = crc32(&c[4..]);
        c.extend_from_slice(&crc.to_be_bytes());
        c
    }

    /// `png` with `extra` inserted just before IEND (the last 12 bytes).
    fn insert_before_iend(png: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut out = png[..png.len() - 12].to_vec();
        out.extend_from_slice(extra);
        out.extend_from_slice(&png[png.len() - 12..]);
        out
    }

    fn chunk_kinds(png: &[u8]) -> Vec<String> {
        png_chunks(png).unwrap().iter().map(|c| kind_name(&c.kind)).collect()
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        // The IEND chunk's CRC, as in every PNG file.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn png_text_round_trips_and_the_image_still_decodes() {
        let png = sample_png();
        assert_eq!(png_text(&png, GRAPH_KEY).unwrap(), None);
        let text = payload();
        assert!(text.len() > 4900 && text.contains('\n') && text.contains('"') && text.contains("café ✓"));
        let with = png_with_text(&png, GRAPH_KEY, &text).unwrap();
        assert_eq!(png_text(&with, GRAPH_KEY).unwrap().as_deref(), Some(text.as_str()));
        assert_eq!(png_text(&with, "other").unwrap(), None);
        let kinds = chunk_kinds(&with);
        assert_eq!(&kinds[..2], ["IHDR", "iTXt"]);
        assert_eq!(kinds.last().map(String::as_str), Some("IEND"));
        assert_eq!(with.len(), png.len() + 12 + GRAPH_KEY.len() + 5 + text.len());
        let decoded = image::load_from_memory(&with).unwrap().to_rgb8();
        assert_eq!(decoded, sample_image());
    }

    #[test]
    fn png_text_replaces_an_earlier_payload_and_keeps_other_keywords() {
        let png = sample_png();
        let once = png_with_text(&png, GRAPH_KEY, "first").unwrap();
        let both = png_with_text(&once, "Comment", "hello").unwrap();
        let twice = png_with_text(&both, GRAPH_KEY, "second").unwrap();
        assert_eq!(png_text(&twice, GRAPH_KEY).unwrap().as_deref(), Some("second"));
        assert_eq!(png_text(&twice, "Comment").unwrap().as_deref(), Some("hello"));
        assert_eq!(chunk_kinds(&twice).iter().filter(|k| *k == "iTXt").count(), 2);
        assert_eq!(image::load_from_memory(&twice).unwrap().to_rgb8(), sample_image());
    }

    #[test]
    fn png_text_reads_latin1_text_chunks_and_refuses_compressed_itxt() {
        let png = sample_png();
        let text = insert_before_iend(&png, &chunk(b"tEXt", b"Author\0caf\xe9"));
        assert_eq!(png_text(&text, "Author").unwrap().as_deref(), Some("café"));
        // A compressed iTXt chunk with the keyword cannot be read ...
        let compressed = chunk(b"iTXt", b"stepstone-graph\0\x01\x00\0\0\x78\x9c\x03\x00\x00\x00\x00\x01");
        let with_compressed = insert_before_iend(&png, &compressed);
        assert!(matches!(png_text(&with_compressed, GRAPH_KEY), Err(MetaError::PngCompressedText { .. })));
        // ... but an uncompressed one after it is found, and writing a payload replaces the compressed one.
        let later = insert_before_iend(&with_compressed, &chunk(b"iTXt", b"stepstone-graph\0\0\0en\0\0{}"));
        assert_eq!(png_text(&later, GRAPH_KEY).unwrap().as_deref(), Some("{}"));
        let rewritten = png_with_text(&with_compressed, GRAPH_KEY, "new").unwrap();
        assert_eq!(png_text(&rewritten, GRAPH_KEY).unwrap().as_deref(), Some("new"));
        assert_eq!(chunk_kinds(&rewritten).iter().filter(|k| *k == "iTXt").count(), 1);
        // Invalid UTF-8 in an iTXt chunk is an error.
        let bad = insert_before_iend(&png, &chunk(b"iTXt", b"stepstone-graph\0\0\0\0\0\xff\xfe"));
        assert!(matches!(png_text(&bad, GRAPH_KEY), Err(MetaError::NotUtf8 { .. })));
    }

    #[test]
    fn png_keywords_follow_the_png_rules() {
        let png = sample_png();
        for bad in ["", " lead", "trail ", "two  spaces", "tab\there", "✓", &"k".repeat(80)] {
            let err = png_with_text(&png, bad, "x").unwrap_err();
            assert!(matches!(err, MetaError::BadKeyword { .. }), "{bad:?}: {err}");
        }
        let with = png_with_text(&png, "Grüße 1", "x").unwrap();
        assert_eq!(png_text(&with, "Grüße 1").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn damaged_png_files_are_errors_that_say_what_is_wrong() {
        let with = png_with_text(&sample_png(), GRAPH_KEY, &payload()).unwrap();
        for len in 0..with.len() {
            let err = png_text(&with[..len], GRAPH_KEY).unwrap_err();
            assert!(matches!(err, MetaError::NotPng | MetaError::PngTruncated { .. }), "{len}: {err}");
            assert!(png_with_text(&with[..len], GRAPH_KEY, "x").is_err());
        }
        assert_eq!(png_text(b"GIF89a not a png", GRAPH_KEY).unwrap_err(), MetaError::NotPng);
        let err = png_text(&with[..with.len() - 1], GRAPH_KEY).unwrap_err().to_string();
        let expected = format!("PNG file is truncated at byte {}: the IEND chunk (0 bytes of data)", with.len() - 12);
        assert!(err.starts_with(&expected), "{err}");
        let mut flipped = with.clone();
        flipped[60] ^= 0x20;
        let err = png_text(&flipped, GRAPH_KEY).unwrap_err();
        assert!(matches!(&err, MetaError::PngBadCrc { chunk, offset: 33, .. } if chunk == "iTXt"), "{err}");
        assert!(err.to_string().contains("CRC mismatch in the iTXt chunk at byte 33"), "{err}");
        let mut huge = with.clone();
        huge[33..37].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(matches!(png_text(&huge, GRAPH_KEY), Err(MetaError::PngMalformed { .. })));
        // A file whose first chunk is not IHDR.
        let mut no_ihdr = PNG_SIGNATURE.to_vec();
        no_ihdr.extend_from_slice(&chunk(b"IEND", b""));
        assert!(matches!(png_text(&no_ihdr, GRAPH_KEY), Err(MetaError::PngMalformed { .. })));
        // Random damage never panics.
        let mut state = 7;
        for _ in 0..2000 {
            let mut bytes = with.clone();
            for _ in 0..1 + next_random(&mut state) % 4 {
                let i = next_random(&mut state) as usize % bytes.len();
                bytes[i] = next_random(&mut state) as u8;
            }
            let _ = png_text(&bytes, GRAPH_KEY);
            let _ = png_with_text(&bytes, GRAPH_KEY, "x");
        }
    }
}
