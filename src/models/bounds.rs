//! Sane bounds for the sizes that model files declare (configurations, tokenizer files, inferred layouts).
//!
//! Artists share model files, so every size read from one is checked before a module is built, a table is
//! allocated or a whole file is read into memory. The bounds are far above every released model this
//! studio targets (SD 1.x/2.x and SDXL widths, AnimateDiff v1/v2/v3, BLIP ViT-L/BERT-base, CLIP up to
//! ViT-bigG), so that a real model never meets them, and low enough that a crafted number cannot make one
//! allocation or one loop run away.

use std::io::Read;
use std::path::Path;

/// Channels of a UNet/VAE level, a transformer width, a cross-attention width (SDXL: 2048).
pub const MAX_CHANNELS: usize = 16_384;
/// Hidden width of a feed-forward block (ViT-bigG: 8192).
pub const MAX_FEED_FORWARD: usize = 65_536;
/// Resolution levels of a UNet, VAE or motion adapter (SD: 4).
pub const MAX_LEVELS: usize = 8;
/// ResNets (or motion modules) per level (SD: 2, 3 on the way up).
pub const MAX_LAYERS_PER_BLOCK: usize = 32;
/// Transformer blocks per attention or layers of an encoder (SDXL: 10 per block; ViT-bigG text: 32).
pub const MAX_DEPTH: usize = 128;
/// Attention heads.
pub const MAX_HEADS: usize = 1024;
/// Latent or image channels entering or leaving a network (SD: 3 and 4).
pub const MAX_IO_CHANNELS: usize = 256;
/// Learned or sinusoidal positions: text positions (CLIP: 77, BERT: 512) and motion-module frames (32).
pub const MAX_POSITIONS: usize = 4096;
/// Tokens of a vocabulary (CLIP: 49408; large multilingual vocabularies stay below 300k).
pub const MAX_VOCAB: usize = 1_000_000;
/// Tokens of a prompt window (CLIP: 77, ImageReward: 35).
pub const MAX_TEXT_LENGTH: usize = 4096;
/// Image side in pixels of a configuration (ViT input 224, VAE sample size 512-1024).
pub const MAX_IMAGE_SIZE: usize = 16_384;
/// Convolution padding of a downsampler (SD: 1).
pub const MAX_PADDING: usize = 8;
/// Widths of an MLP head (ImageReward: 4).
pub const MAX_MLP_LAYERS: usize = 64;
/// A `config.json`, `med_config.json` or similar (real ones are a few kB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// A tokenizer file (`vocab.json`: 1.6 MB, `merges.txt`: 0.5 MB, BERT `vocab.txt`: 0.2 MB for the real ones).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// A size outside its supported range. The caller's error names the file; this names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {found}, outside the supported range {min}..={max}")]
pub struct OutOfRange {
    pub field: String,
    pub found: usize,
    pub min: usize,
    pub max: usize,
}

/// `found` if it lies in `min..=max`.
pub fn check(field: impl std::fmt::Display, found: usize, min: usize, max: usize) -> Result<usize, OutOfRange> {
    if (min..=max).contains(&found) { Ok(found) } else { Err(OutOfRange { field: field.to_string(), found, min, max }) }
}

/// Every entry of `values` (named `field[i]`) in `min..=max`, and their count in `1..=max_count`.
pub fn check_each(field: &str, values: &[usize], min: usize, max: usize, max_count: usize) -> Result<(), OutOfRange> {
    check(format_args!("the number of {field} entries"), values.len(), 1, max_count)?;
    for (i, &v) in values.iter().enumerate() {
        check(format_args!("{field}[{i}]"), v, min, max)?;
    }
    Ok(())
}

/// A whole text file, refused (before anything is read) when it is longer than `max_bytes`; the message is
/// for the caller to prefix with the path.
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String, String> {
    let file =
        std::fs::File::open(path).map_err(|e| if path.exists() { e.to_string() } else { "not found".to_string() })?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > max_bytes {
        return Err(format!("the file is {len} bytes, more than the {max_bytes} bytes such a file may have"));
    }
    let mut text = String::new();
    // The length was checked above; `take` also bounds a file that grows while it is read.
    file.take(max_bytes).read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_the_field_and_both_ends() {
        assert_eq!(check("layers", 3, 1, 4), Ok(3));
        let err = check("block_out_channels[1]", 99_999_999, 1, MAX_CHANNELS).unwrap_err();
        assert_eq!(err.to_string(), "block_out_channels[1] is 99999999, outside the supported range 1..=16384");
        assert!(check_each("dims", &[], 1, 2, 3).is_err());
        assert!(check_each("dims", &[1, 0], 1, 2, 3).unwrap_err().to_string().starts_with("dims[1] is 0"));
    }

    #[test]
    fn long_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "x".repeat(100)).unwrap();
        assert_eq!(read_text(&path, 100).unwrap().len(), 100);
        assert!(read_text(&path, 99).unwrap_err().contains("100 bytes"));
        assert_eq!(read_text(&dir.path().join("absent.json"), 99).unwrap_err(), "not found");
    }
}
