//! The payload in GIF files: a Comment Extension right after the Logical Screen Descriptor (and the Global
//! Color Table).

use super::MetaError;

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
    use std::collections::HashMap;

    use super::super::test_support::{next_random, payload};
    use super::*;

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
