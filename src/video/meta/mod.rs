//! A text payload (the graph preset that made a clip) embedded in PNG and GIF files, and read back.
//!
//! The files are parsed by the `png` and `gif` crates (the ones `image` builds on), with memory limits:
//! clips are shared, so these readers see untrusted bytes.
//! - PNG: an `iTXt` chunk with keyword [`GRAPH_KEY`], written by `png::Encoder` before the image data and
//!   read with `png::Decoder` up to the first image data chunk (the pixels are never decoded).
//! - GIF: a Comment Extension, read with the `gif` crate's streaming decoder, which reports extension
//!   sub-blocks (its frame decoder skips comments). Image data is skipped, not decompressed.
//!
//! Every payload is capped at [`MAX_TEXT`] bytes, when written and when read.

/// The keyword under which stepstone stores its graph preset in PNG files.
pub const GRAPH_KEY: &str = "stepstone-graph";

/// The largest graph text written or read (8 MiB; a preset is a few KB).
pub const MAX_TEXT: usize = 8 << 20;

mod gif;
mod png;

pub use self::gif::{gif_comment, gif_comment_from};
pub use self::png::{PNG_MEMORY_LIMIT, encode_png_with_text, png_text, png_text_from};

/// What is wrong with a file whose payload is read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("cannot read the file: {0}")]
    Io(#[source] std::io::Error),
    #[error("not a PNG file: the 8-byte PNG signature is missing")]
    NotPng,
    #[error("PNG file is truncated: it ends before its image data")]
    PngTruncated,
    #[error("PNG file is damaged: {0}")]
    PngDamaged(#[source] ::png::DecodingError),
    #[error(
        "PNG file needs more than {limit} bytes of memory for the chunks before its image data (an embedded graph \
         may be at most {cap} bytes)",
        limit = PNG_MEMORY_LIMIT,
        cap = MAX_TEXT
    )]
    PngTooLarge,
    #[error("PNG text chunk {keyword:?} is damaged: {why}")]
    PngBadText { keyword: String, why: String },
    #[error("cannot write the PNG file: {0}")]
    PngEncode(#[source] ::png::EncodingError),
    #[error("not a GIF file: the header is {found:?}, expected \"GIF87a\" or \"GIF89a\"")]
    NotGif { found: String },
    #[error("GIF file is truncated at byte {offset}: it ends before the trailer")]
    GifTruncated { offset: u64 },
    #[error("GIF file is damaged after byte {offset}: {source}")]
    GifDamaged {
        offset: u64,
        #[source]
        source: ::gif::DecodingError,
    },
    #[error("the {format} is larger than {cap} bytes, the most an embedded graph may have", cap = MAX_TEXT)]
    TextTooLarge { format: &'static str },
    #[error("{format} text is not valid UTF-8: byte {at} of the text is the first bad one")]
    NotUtf8 { format: &'static str, at: usize },
}

/// `bytes` as UTF-8 text, or an error naming the first bad byte.
fn utf8(bytes: Vec<u8>, format: &'static str) -> Result<String, MetaError> {
    String::from_utf8(bytes).map_err(|e| MetaError::NotUtf8 { format, at: e.utf8_error().valid_up_to() })
}

/// Shared by the PNG and GIF tests.
#[cfg(test)]
mod test_support {
    /// About 5 KB of preset-like JSON with newlines, quotes, backslashes and non-ASCII text.
    pub(super) fn payload() -> String {
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

    pub(super) fn next_random(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }
}
