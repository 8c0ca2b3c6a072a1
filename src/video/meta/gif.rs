//! The payload in GIF files: the first Comment Extension, read with the `gif` crate's streaming decoder.
//!
//! `gif::Decoder` (the frame reader) skips comments, so the streaming decoder it is built on is used
//! directly: it reports every extension sub-block, and with no output buffer it skips image data without
//! decompressing it. The GIF writer is `super::super::animation`.

use std::io::BufRead;

use gif::streaming_decoder::{Block, Decoded, OutputBuffer, StreamingDecoder};

use super::{MAX_TEXT, MetaError};

/// The Comment Extension's label.
const COMMENT: gif::AnyExtension = gif::AnyExtension(0xfe);

/// [`gif_comment_from`] over bytes in memory.
pub fn gif_comment(gif: &[u8]) -> Result<Option<String>, MetaError> {
    gif_comment_from(gif)
}

/// The text of the first Comment Extension of a GIF file, or `None` when it has none. The whole block
/// structure is checked, up to the trailer; the comment may have at most [`MAX_TEXT`] bytes. Memory use is
/// bounded: sub-blocks are at most 255 bytes, colour tables 768, and image data is skipped.
pub fn gif_comment_from<R: BufRead>(mut reader: R) -> Result<Option<String>, MetaError> {
    let mut decoder = StreamingDecoder::new();
    let mut offset = 0u64;
    let mut comment: Option<Vec<u8>> = None;
    let mut comment_done = false;
    // Whether the decoder has just taken the trailer right after the screen descriptor and colour table:
    // it then waits for one more byte before it reports the trailer (gif 0.14.2).
    let mut trailer_after_header = false;
    loop {
        let buf = reader.fill_buf().map_err(MetaError::Io)?;
        if offset == 0 {
            let head = buf.get(..6).unwrap_or(buf);
            if head.is_empty() || !(b"GIF87a".starts_with(head) || b"GIF89a".starts_with(head)) {
                return Err(MetaError::NotGif { found: String::from_utf8_lossy(head).into_owned() });
            }
        }
        if buf.is_empty() {
            if trailer_after_header {
                // A file of no blocks at all: nothing to read, and complete.
                break;
            }
            return Err(MetaError::GifTruncated { offset });
        }
        let (consumed, event) =
            decoder.update(buf, &mut OutputBuffer::None).map_err(|source| MetaError::GifDamaged { offset, source })?;
        let last = consumed.checked_sub(1).and_then(|i| buf.get(i)).copied();
        trailer_after_header = matches!(event, Decoded::GlobalPalette(_)) && last == Some(0x3b);
        reader.consume(consumed);
        offset += consumed as u64;
        match event {
            Decoded::BlockStart(Block::Trailer) => break,
            Decoded::SubBlock { ext: COMMENT, is_last } if !comment_done => {
                let text = comment.get_or_insert_with(Vec::new);
                let data = decoder.last_ext_sub_block();
                if text.len() + data.len() > MAX_TEXT {
                    return Err(MetaError::TextTooLarge { format: "GIF comment" });
                }
                if text.capacity() - text.len() < data.len() {
                    // Doubling, but never past the cap: the largest buffer is MAX_TEXT bytes.
                    let wanted = (text.len() * 2).clamp(4096, MAX_TEXT);
                    text.reserve_exact(wanted.saturating_sub(text.len()).max(data.len()));
                }
                text.extend_from_slice(data);
                comment_done = is_last;
            }
            _ => {}
        }
    }
    comment.map(|bytes| super::utf8(bytes, "GIF comment")).transpose()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::super::test_support::{next_random, payload};
    use super::*;

    const W: u16 = 8;
    const H: u16 = 6;

    /// A two-frame 8x6 GIF written with the `gif` crate: a 4-colour global table, a loop block, the comments
    /// in `before` ahead of the frames and those in `after` behind them.
    fn test_gif(before: &[&[u8]], after: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let palette: [u8; 12] = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255];
            let mut encoder = gif::Encoder::new(&mut out, W, H, &palette).unwrap();
            encoder.set_repeat(gif::Repeat::Infinite).unwrap();
            for &text in before {
                encoder.write_raw_extension(COMMENT, &[text]).unwrap();
            }
            for f in 0..2 {
                let pixels: Vec<u8> = (0..W as usize * H as usize).map(|i| ((i / 3 + f * (i % 5)) % 4) as u8).collect();
                let frame =
                    gif::Frame { width: W, height: H, delay: 10, buffer: Cow::Owned(pixels), ..Default::default() };
                encoder.write_frame(&frame).unwrap();
            }
            for &text in after {
                encoder.write_raw_extension(COMMENT, &[text]).unwrap();
            }
            encoder.into_inner().unwrap();
        }
        out
    }

    #[test]
    fn gif_comment_round_trips_in_sub_blocks_and_the_images_still_decode() {
        assert_eq!(gif_comment(&test_gif(&[], &[])).unwrap(), None);
        let text = payload();
        let gif = test_gif(&[text.as_bytes()], &[]);
        assert_eq!(gif_comment(&gif).unwrap().as_deref(), Some(text.as_str()));
        // The comment follows the screen descriptor, colour table and loop block, in 255-byte sub-blocks.
        let at = 13 + 12 + 19;
        assert_eq!(&gif[at..at + 3], [0x21, 0xfe, 255]);
        let mut decoder = gif::DecodeOptions::new().read_info(gif.as_slice()).unwrap();
        let mut frames = 0;
        while let Some(frame) = decoder.read_next_frame().unwrap() {
            assert_eq!((frame.width, frame.height), (W, H));
            frames += 1;
        }
        assert_eq!(frames, 2);
    }

    #[test]
    fn a_gif_of_no_blocks_has_no_comment() {
        assert_eq!(gif_comment(b"GIF89a\x01\x00\x01\x00\x00\x00\x00\x3b").unwrap(), None);
        let with_table = b"GIF87a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x3b";
        assert_eq!(gif_comment(with_table).unwrap(), None);
        // Without the trailer it is cut short.
        let err = gif_comment(&with_table[..with_table.len() - 1]).unwrap_err();
        assert!(matches!(err, MetaError::GifTruncated { offset: 19 }), "{err}");
    }

    #[test]
    fn the_first_comment_wins_wherever_it_is() {
        let gif = test_gif(&["first ✓".as_bytes(), b"second"], &["third".as_bytes()]);
        assert_eq!(gif_comment(&gif).unwrap().as_deref(), Some("first ✓"));
        assert_eq!(gif_comment(&test_gif(&[], &["at the end".as_bytes()])).unwrap().as_deref(), Some("at the end"));
        assert_eq!(gif_comment(&test_gif(&["".as_bytes()], &["later".as_bytes()])).unwrap().as_deref(), Some(""));
    }

    #[test]
    fn invalid_utf8_and_oversized_comments_are_errors() {
        let err = gif_comment(&test_gif(&[&b"ok \xc3\x28"[..]], &[])).unwrap_err();
        assert!(matches!(err, MetaError::NotUtf8 { at: 3, .. }), "{err:?}");
        assert!(err.to_string().contains("byte 3 of the text"), "{err}");
        let big = vec![b'x'; MAX_TEXT + 1];
        let err = gif_comment(&test_gif(&[big.as_slice()], &[])).unwrap_err();
        assert!(matches!(err, MetaError::TextTooLarge { .. }), "{err}");
        let exact = vec![b'x'; MAX_TEXT];
        assert_eq!(gif_comment(&test_gif(&[exact.as_slice()], &[])).unwrap().map(|t| t.len()), Some(MAX_TEXT));
    }

    #[test]
    fn damaged_gif_files_are_errors_and_never_panic() {
        let gif = test_gif(&[payload().as_bytes()], &["old".as_bytes()]);
        for len in 0..gif.len() {
            let err = gif_comment(&gif[..len]).unwrap_err();
            assert!(matches!(err, MetaError::NotGif { .. } | MetaError::GifTruncated { .. }), "{len}: {err}");
        }
        let err = gif_comment(&gif[..gif.len() - 1]).unwrap_err().to_string();
        assert_eq!(err, format!("GIF file is truncated at byte {}: it ends before the trailer", gif.len() - 1));
        let err = gif_comment(b"\x89PNG\r\n\x1a\n").unwrap_err();
        assert!(err.to_string().contains("not a GIF file") && err.to_string().contains("PNG"), "{err}");
        // An unknown block where the trailer should be.
        let mut bad_block = gif.clone();
        let trailer = bad_block.len() - 1;
        bad_block[trailer] = 0x00;
        bad_block.push(0x3b);
        let err = gif_comment(&bad_block).unwrap_err();
        assert!(matches!(err, MetaError::GifDamaged { .. }), "{err}");

        let mut state = 11;
        for _ in 0..3000 {
            let mut bytes = gif.clone();
            for _ in 0..1 + next_random(&mut state) % 4 {
                let i = next_random(&mut state) as usize % bytes.len();
                bytes[i] = next_random(&mut state) as u8;
            }
            let _ = gif_comment(&bytes);
        }
        for len in 0..64 {
            let garbage: Vec<u8> = (0..len).map(|_| next_random(&mut state) as u8).collect();
            let mut headed = b"GIF89a".to_vec();
            headed.extend_from_slice(&garbage);
            let _ = gif_comment(&headed);
        }
    }
}
