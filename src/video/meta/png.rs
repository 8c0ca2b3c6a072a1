//! The payload in PNG files: an `iTXt` chunk, written with `png::Encoder` (before the image data) and read
//! with `png::Decoder` up to the first image data chunk.

use std::io::{BufRead, Read, Seek, SeekFrom};

use image::RgbImage;
use png::text_metadata::{ITXtChunk, ZTXtChunk};

use super::{MAX_TEXT, MetaError};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The memory the PNG decoder may use for the chunks before the image data. The decoder's chunk buffer grows
/// by doubling and it keeps a parsed copy of each text chunk, so a text chunk of [`MAX_TEXT`] bytes needs
/// about three times that; the rest is room for other metadata.
pub const PNG_MEMORY_LIMIT: usize = 3 * MAX_TEXT + (8 << 20);

/// How many of the bytes the decoder reads are kept, to explain a text chunk it dropped.
const KEPT_BYTES: usize = MAX_TEXT + (64 << 10);

/// `image` as an 8-bit RGB PNG with `text` under `keyword` in an uncompressed `iTXt` chunk, which comes before
/// the image data. The keyword must be 1 to 79 Latin-1 characters; the text at most [`MAX_TEXT`] bytes.
pub fn encode_png_with_text(image: &RgbImage, keyword: &str, text: &str) -> Result<Vec<u8>, MetaError> {
    if text.len() > MAX_TEXT {
        return Err(MetaError::TextTooLarge { format: "PNG iTXt text" });
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.add_itxt_chunk(keyword.to_string(), text.to_string()).map_err(MetaError::PngEncode)?;
    let mut writer = encoder.write_header().map_err(MetaError::PngEncode)?;
    writer.write_image_data(image.as_raw()).map_err(MetaError::PngEncode)?;
    writer.finish().map_err(MetaError::PngEncode)?;
    Ok(out)
}

/// [`png_text_from`] over bytes in memory.
pub fn png_text(png: &[u8], keyword: &str) -> Result<Option<String>, MetaError> {
    png_text_from(std::io::Cursor::new(png), keyword)
}

/// The text stored under `keyword` in a PNG file's text chunks before the image data, or `None` when there
/// is none. `iTXt` (UTF-8, maybe compressed) is looked at first, then `tEXt` and `zTXt` (Latin-1). Everything
/// up to the first image data chunk is checked (signature, chunk order, lengths and CRCs); the image data
/// itself is not read. Memory is limited to [`PNG_MEMORY_LIMIT`], the text to [`MAX_TEXT`] bytes.
pub fn png_text_from<R: BufRead + Seek>(mut reader: R, keyword: &str) -> Result<Option<String>, MetaError> {
    let head = reader.fill_buf().map_err(MetaError::Io)?;
    let start = head.get(..PNG_SIGNATURE.len()).unwrap_or(head);
    if start.is_empty() || !PNG_SIGNATURE.starts_with(start) {
        return Err(MetaError::NotPng);
    }
    let mut kept = Vec::new();
    let found = read_text(Recorder { inner: reader, kept: &mut kept, recording: true }, keyword)?;
    match found {
        Some(text) => Ok(Some(text)),
        // The decoder drops a text chunk it cannot parse (an `iTXt` whose text is not UTF-8, say) as a benign
        // error, without telling; look for one with the keyword among the chunks it read and checked.
        None => rejected_itxt(&kept, keyword).map_or(Ok(None), Err),
    }
}

fn read_text<R: BufRead + Seek>(reader: R, keyword: &str) -> Result<Option<String>, MetaError> {
    let mut options = png::DecodeOptions::default();
    // A damaged text chunk is a damaged file, not a chunk to skip.
    options.set_skip_ancillary_crc_failures(false);
    let mut decoder = png::Decoder::new_with_options(reader, options);
    decoder.set_limits(png::Limits { bytes: PNG_MEMORY_LIMIT });
    let reader = decoder.read_info().map_err(decoding_error)?;
    let info = reader.info();
    let text = if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == keyword) {
        itxt_text(chunk.clone(), keyword)?
    } else if let Some(chunk) = info.uncompressed_latin1_text.iter().find(|c| c.keyword == keyword) {
        chunk.text.clone()
    } else if let Some(chunk) = info.compressed_latin1_text.iter().find(|c| c.keyword == keyword) {
        ztxt_text(chunk.clone(), keyword)?
    } else {
        return Ok(None);
    };
    if text.len() > MAX_TEXT {
        return Err(MetaError::TextTooLarge { format: "PNG text chunk's text" });
    }
    Ok(Some(text))
}

fn decoding_error(e: png::DecodingError) -> MetaError {
    match e {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => MetaError::PngTruncated,
        png::DecodingError::IoError(io) => MetaError::Io(io),
        png::DecodingError::LimitsExceeded => MetaError::PngTooLarge,
        other => MetaError::PngDamaged(other),
    }
}

fn bad_text(keyword: &str, why: String) -> MetaError {
    MetaError::PngBadText { keyword: keyword.to_string(), why }
}

fn inflate_failed(keyword: &str, e: png::DecodingError) -> MetaError {
    bad_text(keyword, format!("its compressed text cannot be inflated to at most {MAX_TEXT} bytes: {e}"))
}

/// The text of an `iTXt` chunk, decompressed (to at most [`MAX_TEXT`] bytes) when it is compressed.
fn itxt_text(mut chunk: ITXtChunk, keyword: &str) -> Result<String, MetaError> {
    chunk.decompress_text_with_limit(MAX_TEXT).map_err(|e| inflate_failed(keyword, e))?;
    chunk.get_text().map_err(|e| bad_text(keyword, e.to_string()))
}

/// The text of a `zTXt` chunk (always compressed), decompressed to at most [`MAX_TEXT`] bytes.
fn ztxt_text(mut chunk: ZTXtChunk, keyword: &str) -> Result<String, MetaError> {
    chunk.decompress_text_with_limit(MAX_TEXT).map_err(|e| inflate_failed(keyword, e))?;
    chunk.get_text().map_err(|e| bad_text(keyword, e.to_string()))
}

/// Why the decoder dropped the `iTXt` chunk with `keyword`, if `head` (the start of the bytes the decoder read,
/// lengths and CRCs checked by it) holds one.
fn rejected_itxt(head: &[u8], keyword: &str) -> Option<MetaError> {
    let key: Vec<u8> = keyword.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<_>>()?;
    let mut pos = PNG_SIGNATURE.len();
    while let Some(header) = head.get(pos..pos.checked_add(8)?) {
        let (length, kind) = header.split_at_checked(4)?;
        let length = usize::try_from(u32::from_be_bytes(length.try_into().ok()?)).ok()?;
        let data_start = pos.checked_add(8)?;
        let data_end = data_start.checked_add(length)?;
        let data = head.get(data_start..data_end)?;
        if kind == b"iTXt"
            && let Some(fields) = data.strip_prefix(key.as_slice()).and_then(|rest| rest.strip_prefix(&[0]))
        {
            return Some(itxt_problem(fields, keyword));
        }
        pos = data_end.checked_add(4)?;
    }
    None
}

/// `bytes` before and after their first null byte.
fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == 0)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
}

/// What is wrong with the fields of an `iTXt` chunk after its keyword.
fn itxt_problem(fields: &[u8], keyword: &str) -> MetaError {
    let bad = |why: &str| bad_text(keyword, why.to_string());
    let [flag, method, rest @ ..] = fields else { return bad("it ends before its compression fields") };
    let Some((language, rest)) = split(rest) else { return bad("it has no language tag") };
    let Some((translated, text)) = split(rest) else { return bad("it has no translated keyword") };
    if *flag > 1 {
        return bad("its compression flag is neither 0 nor 1");
    }
    if *flag == 1 && *method != 0 {
        return bad("its compression method is unknown");
    }
    if !language.is_ascii() {
        return bad("its language tag is not ASCII");
    }
    if std::str::from_utf8(translated).is_err() {
        return bad("its translated keyword is not UTF-8");
    }
    match std::str::from_utf8(text) {
        Err(e) if *flag == 0 => MetaError::NotUtf8 { format: "PNG iTXt", at: e.valid_up_to() },
        _ => bad("the PNG decoder rejected it"),
    }
}

/// Passes a reader through, keeping the first [`KEPT_BYTES`] bytes its user consumes.
struct Recorder<'a, R> {
    inner: R,
    kept: &'a mut Vec<u8>,
    /// Off once the user seeks (the kept bytes would no longer be the file's start).
    recording: bool,
}

impl<R: BufRead> Read for Recorder<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.inner.fill_buf()?;
        let n = available.len().min(buf.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), available.get(..n)) {
            to.copy_from_slice(from);
        }
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Recorder<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        let room = KEPT_BYTES.saturating_sub(self.kept.len());
        // The bytes being consumed are still in the inner buffer (fill_buf returns them without reading).
        if self.recording
            && room > 0
            && let Ok(buffered) = self.inner.fill_buf()
            && let Some(bytes) = buffered.get(..amount.min(buffered.len()).min(room))
        {
            if self.kept.capacity() - self.kept.len() < bytes.len() {
                // Doubling, but never past KEPT_BYTES.
                let wanted = (self.kept.len() * 2).clamp(64 << 10, KEPT_BYTES);
                self.kept.reserve_exact(wanted.saturating_sub(self.kept.len()).max(bytes.len()));
            }
            self.kept.extend_from_slice(bytes);
        }
        self.inner.consume(amount);
    }
}

impl<R: Seek> Seek for Recorder<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.recording = false;
        self.kept.clear();
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::super::GRAPH_KEY;
    use super::super::test_support::{next_random, payload};
    use super::*;

    fn sample_image() -> RgbImage {
        RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 36) as u8, (y * 60) as u8, ((x ^ y) * 31) as u8]))
    }

    /// A PNG of the sample image with a chunk (`kind`, raw `data`) between the header and the image data.
    fn png_with_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let image = sample_image();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_chunk(png::chunk::ChunkType(*kind), data).unwrap();
        writer.write_image_data(image.as_raw()).unwrap();
        writer.finish().unwrap();
        out
    }

    /// Offsets of every chunk (its length field) with its type.
    fn chunks_of(png: &[u8]) -> Vec<(usize, [u8; 4])> {
        let (mut pos, mut out) = (8, Vec::new());
        while pos + 8 <= png.len() {
            let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
            out.push((pos, png[pos + 4..pos + 8].try_into().unwrap()));
            pos += 12 + len;
        }
        out
    }

    #[test]
    fn png_text_round_trips_before_the_image_data_and_the_image_still_decodes() {
        let text = payload();
        assert!(text.len() > 4900 && text.contains('\n') && text.contains('"') && text.contains("café ✓"));
        let png = encode_png_with_text(&sample_image(), GRAPH_KEY, &text).unwrap();
        assert_eq!(png_text(&png, GRAPH_KEY).unwrap().as_deref(), Some(text.as_str()));
        let kinds: Vec<[u8; 4]> = chunks_of(&png).iter().map(|c| c.1).collect();
        assert_eq!(&kinds[..3], [*b"IHDR", *b"iTXt", *b"IDAT"], "the text comes before the image data");
        assert_eq!(kinds.last(), Some(b"IEND"));
        assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8(), sample_image());
        // Keywords are matched exactly; other text chunks are not the payload.
        assert_eq!(png_text(&png, "stepstone-grap").unwrap(), None);
        let other = png_with_chunk(b"tEXt", b"Comment\0hello");
        assert_eq!(png_text(&other, GRAPH_KEY).unwrap(), None);
        assert_eq!(png_text(&other, "Comment").unwrap().as_deref(), Some("hello"));
    }

    #[test]
    fn latin1_and_compressed_text_chunks_are_read() {
        let latin1 = png_with_chunk(b"tEXt", b"Author\0caf\xe9");
        assert_eq!(png_text(&latin1, "Author").unwrap().as_deref(), Some("café"));
        let mut compressed = ITXtChunk::new(GRAPH_KEY, "zipped ✓ ".repeat(500));
        compressed.compressed = true;
        let mut raw = Vec::new();
        png::text_metadata::EncodableTextChunk::encode(&compressed, &mut raw).unwrap();
        // `raw` is a whole chunk (length, type, data, CRC): keep its data.
        let data = raw[8..raw.len() - 4].to_vec();
        assert!(data.len() < 1000, "the text is compressed: {} bytes", data.len());
        let with = png_with_chunk(b"iTXt", &data);
        assert_eq!(png_text(&with, GRAPH_KEY).unwrap(), Some("zipped ✓ ".repeat(500)));
        // A compressed text that inflates beyond the cap is refused while inflating.
        let mut bomb = ITXtChunk::new(GRAPH_KEY, "a".repeat(MAX_TEXT + 1));
        bomb.compressed = true;
        let mut raw = Vec::new();
        png::text_metadata::EncodableTextChunk::encode(&bomb, &mut raw).unwrap();
        let with = png_with_chunk(b"iTXt", &raw[8..raw.len() - 4]);
        let err = png_text(&with, GRAPH_KEY).unwrap_err();
        assert!(matches!(err, MetaError::PngBadText { .. }) && err.to_string().contains("8388608 bytes"), "{err}");
    }

    #[test]
    fn invalid_utf8_names_the_first_bad_byte() {
        let bad = png_with_chunk(b"iTXt", b"stepstone-graph\0\0\0\0\0{\"a\": \xff\xfe}");
        let err = png_text(&bad, GRAPH_KEY).unwrap_err();
        assert!(matches!(err, MetaError::NotUtf8 { at: 6, .. }), "{err:?}");
        assert!(err.to_string().contains("byte 6 of the text"), "{err}");
        let bad_language = png_with_chunk(b"iTXt", b"stepstone-graph\0\0\0\xe9\0\0{}");
        let err = png_text(&bad_language, GRAPH_KEY).unwrap_err();
        assert!(err.to_string().contains("language tag is not ASCII"), "{err}");
        // A dropped chunk under another keyword is none of our business.
        let other = png_with_chunk(b"iTXt", b"other\0\0\0\0\0\xff");
        assert_eq!(png_text(&other, GRAPH_KEY).unwrap(), None);
    }

    #[test]
    fn too_large_text_is_refused_when_written_and_when_read() {
        let big = "x".repeat(MAX_TEXT + 1);
        let err = encode_png_with_text(&sample_image(), GRAPH_KEY, &big).unwrap_err();
        assert!(matches!(err, MetaError::TextTooLarge { .. }), "{err}");
        assert!(encode_png_with_text(&sample_image(), GRAPH_KEY, &big[..MAX_TEXT]).is_ok());
        // Written by another program: just over the cap (the decoder reads it, the cap refuses it) ...
        let mut data = b"stepstone-graph\0\0\0\0\0".to_vec();
        data.extend_from_slice(big.as_bytes());
        let err = png_text(&png_with_chunk(b"iTXt", &data), GRAPH_KEY).unwrap_err();
        assert!(matches!(err, MetaError::TextTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("8388608"), "{err}");
        // ... and far over it (the decoder's memory limit stops it).
        data.resize(4 * MAX_TEXT, b'x');
        let err = png_text(&png_with_chunk(b"iTXt", &data), GRAPH_KEY).unwrap_err();
        assert!(matches!(err, MetaError::PngTooLarge), "{err}");
    }

    #[test]
    fn damaged_png_files_are_errors_that_say_what_is_wrong() {
        let png = encode_png_with_text(&sample_image(), GRAPH_KEY, &payload()).unwrap();
        assert!(matches!(png_text(b"GIF89a not a png", GRAPH_KEY), Err(MetaError::NotPng)));
        assert!(matches!(png_text(b"", GRAPH_KEY), Err(MetaError::NotPng)));
        // CRC damage inside the text chunk.
        let (itxt, _) = chunks_of(&png)[1];
        let mut flipped = png.clone();
        flipped[itxt + 40] ^= 0x20;
        let err = png_text(&flipped, GRAPH_KEY).unwrap_err();
        assert!(matches!(err, MetaError::PngDamaged(_)) && err.to_string().contains("CRC"), "{err}");
        // A length field claiming more than the file holds (and than PNG allows): the decoder waits for the
        // bytes, buffering only what arrives, and finds the end of the file.
        let mut huge = png.clone();
        huge[itxt..itxt + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        assert!(matches!(png_text(&huge, GRAPH_KEY), Err(MetaError::PngTruncated)));
        // Cut anywhere before the image data: an error; from the image data on, the text is read.
        let (idat, _) = chunks_of(&png)[2];
        for len in 0..png.len() {
            match png_text(&png[..len], GRAPH_KEY) {
                Err(MetaError::NotPng | MetaError::PngTruncated) if len < idat + 8 => {}
                Ok(Some(text)) if len >= idat + 8 => assert_eq!(text, payload()),
                other => panic!("cut at {len} (image data at {idat}): {other:?}"),
            }
        }
        // Random damage never panics.
        let mut state = 7;
        for _ in 0..2000 {
            let mut bytes = png.clone();
            for _ in 0..1 + next_random(&mut state) % 4 {
                let i = next_random(&mut state) as usize % bytes.len();
                bytes[i] = next_random(&mut state) as u8;
            }
            let _ = png_text(&bytes, GRAPH_KEY);
        }
    }
}
