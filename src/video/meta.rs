//! A text payload (the graph preset that made a clip) embedded in PNG and GIF files, and read back.
//!
//! PNG: an uncompressed `iTXt` chunk placed right after `IHDR`. GIF: a Comment Extension placed right after
//! the Logical Screen Descriptor (and Global Color Table). Both readers walk the whole file and check its
//! structure (PNG CRCs included), so a damaged file is reported as such instead of yielding a payload.

/// The keyword under which stepstone stores its graph preset in PNG files.
pub const GRAPH_KEY: &str = "stepstone-graph";

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Largest chunk length PNG allows (2^31 - 1).
const PNG_MAX_CHUNK: usize = 0x7fff_ffff;

/// What is wrong with a file whose payload is read or written. Offsets are byte positions in the file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("not a PNG file: the 8-byte PNG signature is missing")]
    NotPng,
    #[error("PNG file is truncated at byte {offset}: {what} is missing or incomplete")]
    PngTruncated { what: String, offset: usize },
    #[error("PNG file is damaged: {what} at byte {offset}")]
    PngMalformed { what: String, offset: usize },
    #[error(
        "PNG file is damaged: CRC mismatch in the {chunk} chunk at byte {offset} (stored {stored:08x}, computed {computed:08x})"
    )]
    PngBadCrc { chunk: String, offset: usize, stored: u32, computed: u32 },
    #[error("PNG iTXt chunk {keyword:?} at byte {offset} is compressed, which is not supported")]
    PngCompressedText { keyword: String, offset: usize },
    #[error("invalid PNG text keyword {keyword:?}: {why}")]
    BadKeyword { keyword: String, why: &'static str },
    #[error("PNG text for {keyword:?} is too large for one chunk ({len} bytes)")]
    PngTextTooLarge { keyword: String, len: usize },
    #[error("not a GIF file: the header is {found:?}, expected \"GIF87a\" or \"GIF89a\"")]
    NotGif { found: String },
    #[error("GIF file is truncated at byte {offset}: {what} is missing or incomplete")]
    GifTruncated { what: &'static str, offset: usize },
    #[error(
        "GIF file is damaged: unexpected byte 0x{byte:02x} at byte {offset} (expected an extension, an image or the trailer)"
    )]
    GifBadBlock { byte: u8, offset: usize },
    #[error("{format} text at byte {offset} is not valid UTF-8")]
    NotUtf8 { format: &'static str, offset: usize },
}

// ---------------------------------------------------------------------------------------------------------
// CRC-32 (ISO-HDLC: reflected polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF), as PNG uses.

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

// ---------------------------------------------------------------------------------------------------------
// PNG

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

// ---------------------------------------------------------------------------------------------------------
// GIF

/// A block of a GIF file after the screen descriptor: its kind and its byte range in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GifBlock {
    /// An extension (0x21) with its label; the range covers introducer, label and all sub-blocks.
    Extension { label: u8, range: std::ops::Range<usize> },
    /// An image (0x2C): descriptor, local color table, LZW minimum code size and data sub-blocks.
    Image { range: std::ops::Range<usize> },
}

/// The structure of a GIF file.
#[derive(Debug)]
struct GifLayout {
    /// Offset just past the Logical Screen Descriptor and the Global Color Table.
    screen_end: usize,
    blocks: Vec<GifBlock>,
}

const GIF_COMMENT: u8 = 0xfe;

fn gif_byte(gif: &[u8], pos: usize, what: &'static str) -> Result<u8, MetaError> {
    gif.get(pos).copied().ok_or(MetaError::GifTruncated { what, offset: pos })
}

/// Skips a sequence of data sub-blocks starting at `pos` (size byte, data, ..., zero-size terminator) and
/// returns the offset past the terminator.
fn gif_skip_sub_blocks(gif: &[u8], mut pos: usize, what: &'static str) -> Result<usize, MetaError> {
    loop {
        let size = gif_byte(gif, pos, what)? as usize;
        pos += 1;
        if size == 0 {
            return Ok(pos);
        }
        if pos + size > gif.len() {
            return Err(MetaError::GifTruncated { what, offset: pos - 1 });
        }
        pos += size;
    }
}

/// Size in bytes of a color table given the packed field's low three bits.
fn gif_table_len(packed: u8) -> usize {
    3 << ((packed & 0x07) + 1)
}

fn gif_layout(gif: &[u8]) -> Result<GifLayout, MetaError> {
    let header = gif.get(..6).unwrap_or(gif);
    if header != b"GIF87a" && header != b"GIF89a" {
        return Err(MetaError::NotGif { found: String::from_utf8_lossy(header).into_owned() });
    }
    // Logical Screen Descriptor: width, height (u16 each), packed, background index, aspect ratio.
    let packed = gif_byte(gif, 10, "the logical screen descriptor")?;
    gif_byte(gif, 12, "the logical screen descriptor")?;
    let mut pos = 13;
    if packed & 0x80 != 0 {
        pos += gif_table_len(packed);
        if pos > gif.len() {
            return Err(MetaError::GifTruncated { what: "the global color table", offset: 13 });
        }
    }
    let screen_end = pos;
    let mut blocks = Vec::new();
    loop {
        let start = pos;
        match gif_byte(gif, pos, "the next block (or the trailer)")? {
            0x21 => {
                let label = gif_byte(gif, pos + 1, "an extension label")?;
                pos = gif_skip_sub_blocks(gif, pos + 2, "an extension's data")?;
                blocks.push(GifBlock::Extension { label, range: start..pos });
            }
            0x2c => {
                // Image descriptor: separator, left, top, width, height (u16 each), packed.
                let packed = gif_byte(gif, pos + 9, "an image descriptor")?;
                pos += 10;
                if packed & 0x80 != 0 {
                    pos += gif_table_len(packed);
                    if pos > gif.len() {
                        return Err(MetaError::GifTruncated { what: "a local color table", offset: start + 10 });
                    }
                }
                gif_byte(gif, pos, "an image's LZW minimum code size")?;
                pos = gif_skip_sub_blocks(gif, pos + 1, "an image's data")?;
                blocks.push(GifBlock::Image { range: start..pos });
            }
            0x3b => return Ok(GifLayout { screen_end, blocks }),
            byte => return Err(MetaError::GifBadBlock { byte, offset: pos }),
        }
    }
}

/// Returns `gif` with `text` in a Comment Extension placed right after the Logical Screen Descriptor and
/// the Global Color Table. A GIF87a file becomes GIF89a (extensions need 89a); other blocks are kept as
/// they are, existing comments included.
pub fn gif_with_comment(gif: &[u8], text: &str) -> Result<Vec<u8>, MetaError> {
    let layout = gif_layout(gif)?;
    let bytes = text.as_bytes();
    let mut comment = Vec::with_capacity(bytes.len() + bytes.len() / 255 + 4);
    comment.extend_from_slice(&[0x21, GIF_COMMENT]);
    for piece in bytes.chunks(255) {
        comment.push(piece.len() as u8);
        comment.extend_from_slice(piece);
    }
    comment.push(0);

    let mut out = Vec::with_capacity(gif.len() + comment.len());
    out.extend_from_slice(b"GIF89a");
    out.extend_from_slice(&gif[6..layout.screen_end]);
    out.extend_from_slice(&comment);
    out.extend_from_slice(&gif[layout.screen_end..]);
    Ok(out)
}

/// The text of the first Comment Extension of `gif`, or `None` when it has none. The whole block structure
/// is checked, up to the trailer.
pub fn gif_comment(gif: &[u8]) -> Result<Option<String>, MetaError> {
    let layout = gif_layout(gif)?;
    let Some(range) = layout.blocks.iter().find_map(|b| match b {
        GifBlock::Extension { label: GIF_COMMENT, range } => Some(range.clone()),
        _ => None,
    }) else {
        return Ok(None);
    };
    // The walk above has checked every sub-block size against the block's range.
    let mut text = Vec::with_capacity(range.len());
    let mut pos = range.start + 2;
    while pos < range.end {
        let Some(&size) = gif.get(pos) else { break };
        text.extend_from_slice(gif.get(pos + 1..pos + 1 + size as usize).unwrap_or_default());
        pos += 1 + size as usize;
    }
    String::from_utf8(text).map(Some).map_err(|_| MetaError::NotUtf8 { format: "GIF comment", offset: range.start })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// About 5 KB of preset-like JSON with newlines, quotes, backslashes and non-ASCII text.
    fn payload() -> String {
        let mut s = String::from("{\n  \"nodes\": [\n");
        let mut i = 0;
        while s.len() < 5000 {
            s.push_str(&format!(
                "    {{\"id\": {i}, \"prompt\": \"a café ✓ at dusk, \\\"quoted\\\" — 夕暮れ\", \"path\": \"C:\\\\out\\\\{i}\"}},\n"
            ));
            i += 1;
        }
        s.push_str("  ]\n}\n");
        s
    }

    fn next_random(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    // ----- PNG -----

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

    // ----- GIF -----

    /// A minimal GIF LZW encoder: codes grow from min_size + 1 bits to 12; at 4096 codes the table stops
    /// growing (a deferred clear, which decoders accept).
    fn lzw_encode(indices: &[u8], min_size: u8) -> Vec<u8> {
        let clear = 1u32 << min_size;
        let end = clear + 1;
        let mut width = min_size as u32 + 1;
        let mut next = end + 1;
        let mut table: HashMap<(u32, u8), u32> = HashMap::new();
        let (mut out, mut acc, mut nbits) = (Vec::new(), 0u32, 0u32);
        let mut emit = |code: u32, width: u32| {
            acc |= code << nbits;
            nbits += width;
            while nbits >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                nbits -= 8;
            }
        };
        emit(clear, width);
        let mut prefix: Option<u32> = None;
        for &k in indices {
            let Some(p) = prefix else {
                prefix = Some(k as u32);
                continue;
            };
            if let Some(&code) = table.get(&(p, k)) {
                prefix = Some(code);
                continue;
            }
            emit(p, width);
            if next < 4096 {
                table.insert((p, k), next);
                next += 1;
                if next > 1 << width && width < 12 {
                    width += 1;
                }
            }
            prefix = Some(k as u32);
        }
        if let Some(p) = prefix {
            emit(p, width);
        }
        emit(end, width);
        if nbits > 0 {
            out.push(acc as u8);
        }
        out
    }

    /// A GIF LZW decoder, written independently of the encoder's structure, for checking pixels.
    fn lzw_decode(data: &[u8], min_size: u8) -> Vec<u8> {
        let clear = 1usize << min_size;
        let end = clear + 1;
        let reset = |table: &mut Vec<Vec<u8>>| {
            table.clear();
            table.extend((0..clear).map(|i| vec![i as u8]));
            table.extend([vec![], vec![]]);
        };
        let mut table = Vec::new();
        reset(&mut table);
        let mut width = min_size as usize + 1;
        let (mut pos, mut out, mut prev): (usize, Vec<u8>, Option<usize>) = (0, Vec::new(), None);
        loop {
            let mut code = 0;
            for i in 0..width {
                let bit = (data[(pos + i) / 8] >> ((pos + i) % 8)) & 1;
                code |= (bit as usize) << i;
            }
            pos += width;
            if code == clear {
                reset(&mut table);
                width = min_size as usize + 1;
                prev = None;
                continue;
            }
            if code == end {
                return out;
            }
            let entry = match (code < table.len(), prev) {
                (true, _) => table[code].clone(),
                (false, Some(p)) if code == table.len() => {
                    let mut e = table[p].clone();
                    e.push(e[0]);
                    e
                }
                _ => panic!("invalid LZW code {code}"),
            };
            out.extend_from_slice(&entry);
            if let Some(p) = prev
                && table.len() < 4096
            {
                let mut e = table[p].clone();
                e.push(entry[0]);
                table.push(e);
                if table.len() == 1 << width && width < 12 {
                    width += 1;
                }
            }
            prev = Some(code);
        }
    }

    fn sub_blocks(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in data.chunks(255) {
            out.push(piece.len() as u8);
            out.extend_from_slice(piece);
        }
        out.push(0);
        out
    }

    const GLOBAL: [[u8; 3]; 4] = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]];
    const LOCAL: [[u8; 3]; 4] = [[255, 255, 255], [10, 20, 30], [200, 100, 0], [7, 7, 7]];
    const W: u16 = 8;
    const H: u16 = 6;

    fn frame_indices(frame: usize) -> Vec<u8> {
        (0..W as usize * H as usize).map(|i| ((i / 3 + frame * (i % 5)) % 4) as u8).collect()
    }

    /// A two-frame 8x6 GIF: global color table, the second frame with a local one. GIF89a files also carry
    /// a looping application extension, graphic control extensions and, with `comment`, a comment at the end.
    fn test_gif(version89: bool, comment: Option<&str>) -> Vec<u8> {
        let mut g = if version89 { b"GIF89a".to_vec() } else { b"GIF87a".to_vec() };
        g.extend_from_slice(&W.to_le_bytes());
        g.extend_from_slice(&H.to_le_bytes());
        g.extend_from_slice(&[0x80 | 0x10 | 0x01, 0, 0]);
        g.extend(GLOBAL.iter().flatten());
        if version89 {
            g.extend_from_slice(&[0x21, 0xff, 11]);
            g.extend_from_slice(b"NETSCAPE2.0");
            g.extend_from_slice(&[3, 1, 0, 0, 0]);
        }
        for frame in 0..2 {
            if version89 {
                g.extend_from_slice(&[0x21, 0xf9, 4, 0, 10, 0, 0, 0]);
            }
            g.push(0x2c);
            for v in [0, 0, W, H] {
                g.extend_from_slice(&v.to_le_bytes());
            }
            if frame == 1 {
                g.push(0x81);
                g.extend(LOCAL.iter().flatten());
            } else {
                g.push(0);
            }
            g.push(2);
            g.extend_from_slice(&sub_blocks(&lzw_encode(&frame_indices(frame), 2)));
        }
        if let Some(text) = comment {
            g.extend_from_slice(&[0x21, 0xfe]);
            g.extend_from_slice(&sub_blocks(text.as_bytes()));
        }
        g.push(0x3b);
        g
    }

    /// Decodes every image of `gif` (located with the module's walker) to RGB pixels.
    fn decode_images(gif: &[u8]) -> Vec<Vec<[u8; 3]>> {
        let layout = gif_layout(gif).unwrap();
        let global: Vec<[u8; 3]> = gif[13..layout.screen_end].chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        let mut frames = Vec::new();
        for block in &layout.blocks {
            let GifBlock::Image { range } = block else { continue };
            let b = &gif[range.clone()];
            let (w, h) = (u16::from_le_bytes([b[5], b[6]]) as usize, u16::from_le_bytes([b[7], b[8]]) as usize);
            let mut pos = 10;
            let mut palette = global.clone();
            if b[9] & 0x80 != 0 {
                let len = gif_table_len(b[9]);
                palette = b[10..10 + len].chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
                pos += len;
            }
            let min_size = b[pos];
            let mut data = Vec::new();
            pos += 1;
            while b[pos] != 0 {
                data.extend_from_slice(&b[pos + 1..pos + 1 + b[pos] as usize]);
                pos += 1 + b[pos] as usize;
            }
            let indices = lzw_decode(&data, min_size);
            assert_eq!(indices.len(), w * h);
            frames.push(indices.iter().map(|&i| palette[i as usize]).collect());
        }
        frames
    }

    fn image_blocks(gif: &[u8]) -> Vec<&[u8]> {
        gif_layout(gif)
            .unwrap()
            .blocks
            .iter()
            .filter_map(|b| match b {
                GifBlock::Image { range } => Some(&gif[range.clone()]),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn test_lzw_coder_round_trips() {
        let mut state = 3;
        for (len, colors) in [(1, 4), (48, 4), (300, 2), (20_000, 4), (20_000, 256)] {
            let indices: Vec<u8> =
                (0..len).map(|i| ((next_random(&mut state) % colors) as usize ^ (i / 7)) as u8).collect();
            let indices: Vec<u8> = indices.iter().map(|&i| (i as u64 % colors) as u8).collect();
            let min_size = if colors == 256 { 8 } else { 2 };
            assert_eq!(lzw_decode(&lzw_encode(&indices, min_size), min_size), indices, "{len} x {colors}");
        }
    }

    #[test]
    fn gif_comment_round_trips_and_the_images_are_unchanged() {
        let gif = test_gif(true, None);
        let frames = decode_images(&gif);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0][..3], [GLOBAL[0], GLOBAL[0], GLOBAL[0]]);
        assert_eq!(frames[1][0], LOCAL[0]);
        assert_eq!(gif_comment(&gif).unwrap(), None);

        let text = payload();
        let with = gif_with_comment(&gif, &text).unwrap();
        assert_eq!(gif_comment(&with).unwrap().as_deref(), Some(text.as_str()));
        // The comment sits right after the global color table, in sub-blocks of at most 255 bytes.
        let layout = gif_layout(&with).unwrap();
        assert_eq!(layout.screen_end, 13 + 12);
        let GifBlock::Extension { label: 0xfe, range } = &layout.blocks[0] else { panic!("{:?}", layout.blocks) };
        assert_eq!(range.start, 25);
        assert_eq!(range.len(), 2 + text.len() + text.len().div_ceil(255) + 1);
        assert_eq!(with[27], 255);
        assert_eq!(with.len(), gif.len() + range.len());
        // Everything else is byte for byte what it was, and decodes to the same pixels.
        assert_eq!(&with[..25], &gif[..25]);
        assert_eq!(&with[range.end..], &gif[25..]);
        assert_eq!(image_blocks(&with), image_blocks(&gif));
        assert_eq!(decode_images(&with), frames);
    }

    #[test]
    fn gif87a_becomes_gif89a_and_the_first_comment_wins() {
        let gif = test_gif(false, None);
        let with = gif_with_comment(&gif, "café ✓").unwrap();
        assert_eq!(&with[..6], b"GIF89a");
        assert_eq!(gif_comment(&with).unwrap().as_deref(), Some("café ✓"));
        assert_eq!(image_blocks(&with), image_blocks(&gif));
        assert_eq!(decode_images(&with), decode_images(&gif));

        let old = test_gif(true, Some("old comment"));
        assert_eq!(gif_comment(&old).unwrap().as_deref(), Some("old comment"));
        let new = gif_with_comment(&old, "new").unwrap();
        assert_eq!(gif_comment(&new).unwrap().as_deref(), Some("new"));
        let empty = gif_with_comment(&old, "").unwrap();
        assert_eq!(gif_comment(&empty).unwrap().as_deref(), Some(""));
        assert_eq!(empty.len(), old.len() + 3);
    }

    #[test]
    fn a_gif_without_a_global_color_table_gets_the_comment_after_the_screen_descriptor() {
        let mut gif = test_gif(true, None);
        // Drop the global color table; the first frame then needs a local one.
        gif[10] = 0;
        gif.drain(13..25);
        let first = gif.iter().position(|&b| b == 0x2c).unwrap();
        gif[first + 9] = 0x81;
        for (i, c) in GLOBAL.iter().flatten().enumerate() {
            gif.insert(first + 10 + i, *c);
        }
        let frames = decode_images(&gif);
        let with = gif_with_comment(&gif, "x").unwrap();
        assert_eq!(&with[13..18], &[0x21, 0xfe, 1, b'x', 0]);
        assert_eq!(decode_images(&with), frames);
    }

    #[test]
    fn damaged_gif_files_are_errors_and_never_panic() {
        let with = gif_with_comment(&test_gif(true, Some("old")), &payload()).unwrap();
        for len in 0..with.len() {
            let err = gif_comment(&with[..len]).unwrap_err();
            assert!(matches!(err, MetaError::NotGif { .. } | MetaError::GifTruncated { .. }), "{len}: {err}");
            assert!(gif_with_comment(&with[..len], "x").is_err());
        }
        let err = gif_comment(&with[..with.len() - 1]).unwrap_err().to_string();
        let expected = format!("GIF file is truncated at byte {}: the next block (or the trailer)", with.len() - 1);
        assert!(err.starts_with(&expected), "{err}");
        let err = gif_comment(b"\x89PNG\r\n\x1a\n").unwrap_err();
        assert!(err.to_string().contains("not a GIF file"), "{err}");
        let mut bad_block = test_gif(true, None);
        let trailer = bad_block.len() - 1;
        bad_block[trailer] = 0x00;
        bad_block.push(0x3b);
        let err = gif_comment(&bad_block).unwrap_err();
        assert_eq!(err, MetaError::GifBadBlock { byte: 0, offset: trailer });
        let mut not_utf8 = test_gif(true, None);
        not_utf8.splice(25..25, [0x21, 0xfe, 2, 0xc3, 0x28, 0]);
        assert!(matches!(gif_comment(&not_utf8), Err(MetaError::NotUtf8 { offset: 25, .. })));

        let mut state = 11;
        for _ in 0..3000 {
            let mut bytes = with.clone();
            for _ in 0..1 + next_random(&mut state) % 4 {
                let i = next_random(&mut state) as usize % bytes.len();
                bytes[i] = next_random(&mut state) as u8;
            }
            let _ = gif_comment(&bytes);
            let _ = gif_with_comment(&bytes, "x");
        }
        for len in 0..64 {
            let garbage: Vec<u8> = (0..len).map(|_| next_random(&mut state) as u8).collect();
            assert!(gif_comment(&garbage).is_err());
            let mut headed = b"GIF89a".to_vec();
            headed.extend_from_slice(&garbage);
            let _ = gif_comment(&headed);
        }
    }
}
