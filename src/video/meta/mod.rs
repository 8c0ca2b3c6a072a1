//! A text payload (the graph preset that made a clip) embedded in PNG and GIF files, and read back.
//!
//! PNG: an uncompressed `iTXt` chunk placed right after `IHDR`. GIF: a Comment Extension placed right after
//! the Logical Screen Descriptor (and Global Color Table). Both readers walk the whole file and check its
//! structure (PNG CRCs included), so a damaged file is reported as such instead of yielding a payload.

/// The keyword under which stepstone stores its graph preset in PNG files.
pub const GRAPH_KEY: &str = "stepstone-graph";

mod gif;
mod png;

pub use gif::{gif_comment, gif_with_comment};
pub use png::{png_text, png_with_text};

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
