//! The CLIP BPE tokenizer of Stable Diffusion 1.x, as transformers' `CLIPTokenizer` (the slow one that
//! diffusers pipelines use, without the optional `ftfy`) tokenizes prompts.
//!
//! Steps, each matching the reference:
//! 1. text cleanup as BERT's `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`: control
//!    characters dropped, whitespace unified, spaces around CJK ideographs, NFC, lower case
//!    (tokenizers' `BertNormalizer` + NFC);
//! 2. whitespace collapsed, then split with CLIP's pattern (`'s|'t|...|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`);
//! 3. each piece mapped byte-wise to GPT-2's printable alphabet and merged with the BPE merges
//!    (tokenizers' `BPE` model, end-of-word suffix `</w>`);
//! 4. `<|startoftext|>` ids... `<|endoftext|>`, truncated to 77 and padded (diffusers pads with the
//!    tokenizer's pad token, `<|endoftext|>` for SD 1.5).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::{Model, NormalizedString, Normalizer};

use crate::models::bounds::{self, MAX_TOKENIZER_BYTES, MAX_VOCAB};

/// Context length of the CLIP text encoder in SD 1.x.
pub const MAX_LENGTH: usize = 77;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read tokenizer file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("tokenizer files {vocab} / {merges}: {message}")]
    Invalid { vocab: PathBuf, merges: PathBuf, message: String },
    #[error("tokenizer vocabulary has no token '{0}'")]
    MissingSpecial(String),
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// Token ids of one prompt, padded to `MAX_LENGTH`, with what was lost to truncation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    /// How many BPE tokens of the prompt did not fit and were dropped.
    pub truncated: usize,
}

pub struct ClipTokenizer {
    bpe: BPE,
    normalizer: BertNormalizer,
    split: regex::Regex,
    byte_chars: [char; 256],
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub max_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").field("bos", &self.bos).field("eos", &self.eos).finish()
    }
}

/// GPT-2's reversible map from bytes to printable characters (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        out[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + extra).unwrap_or('?');
            extra += 1;
            c
        };
    }
    out
}

impl ClipTokenizer {
    /// Reads `vocab.json` and `merges.txt` (a diffusers `tokenizer/` folder).
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self, TokenizerError> {
        let read = |p: &Path| {
            bounds::read_text(p, MAX_TOKENIZER_BYTES)
                .map_err(|message| TokenizerError::Read { path: p.to_path_buf(), message })
        };
        Self::from_strings(&read(vocab)?, &read(merges)?, vocab, merges)
    }

    /// The SD 1.x tokenizer bundled with stepstone (assets/clip-tokenizer: the vocabulary of
    /// `openai/clip-vit-large-patch14`), for single-file checkpoints, which carry no tokenizer.
    pub fn sd15() -> Result<Self, TokenizerError> {
        Self::from_strings(
            include_str!("../../../assets/clip-tokenizer/vocab.json"),
            include_str!("../../../assets/clip-tokenizer/merges.txt"),
            Path::new("<bundled>/clip-tokenizer/vocab.json"),
            Path::new("<bundled>/clip-tokenizer/merges.txt"),
        )
    }

    /// Builds the tokenizer from the contents of `vocab.json` and `merges.txt`; the paths are for messages.
    pub fn from_strings(
        vocab_json: &str,
        merges_txt: &str,
        vocab: &Path,
        merges: &Path,
    ) -> Result<Self, TokenizerError> {
        let invalid = |message: String| TokenizerError::Invalid {
            vocab: vocab.to_path_buf(),
            merges: merges.to_path_buf(),
            message,
        };
        let entries: std::collections::HashMap<String, u32> =
            serde_json::from_str(vocab_json).map_err(|e| invalid(format!("vocab.json: {e}")))?;
        bounds::check("vocab.json: the number of tokens", entries.len(), 1, MAX_VOCAB)
            .map_err(|e| invalid(e.to_string()))?;
        // Every id the tokenizer can produce must index the text encoder's embedding table, whose size is
        // checked against the vocabulary's: ids are 0..count, as in every real vocabulary.
        if let Some((token, &id)) = entries.iter().find(|&(_, &id)| id as usize >= entries.len()) {
            return Err(invalid(format!(
                "vocab.json: token {:?} has id {id}, but the vocabulary has {} tokens (ids 0..{})",
                token.chars().take(40).collect::<String>(),
                entries.len(),
                entries.len()
            )));
        }
        let v: Vocab = entries.into_iter().collect();
        let mut m: Merges = Vec::new();
        for (line_no, line) in merges_txt.lines().enumerate() {
            if line.starts_with("#version") || line.is_empty() {
                continue;
            }
            match line.split(' ').collect::<Vec<_>>().as_slice() {
                [a, b] => m.push((a.to_string(), b.to_string())),
                _ => {
                    return Err(invalid(format!(
                        "merges.txt line {}: expected two tokens, found '{line}'",
                        line_no + 1
                    )));
                }
            }
        }
        let bpe = BPE::builder()
            .vocab_and_merges(v, m)
            .end_of_word_suffix("</w>".to_string())
            .unk_token("<|endoftext|>".to_string())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let special = |t: &str| bpe.token_to_id(t).ok_or_else(|| TokenizerError::MissingSpecial(t.to_string()));
        let (bos, eos) = (special("<|startoftext|>")?, special("<|endoftext|>")?);
        let split = regex::Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| invalid(e.to_string()))?;
        Ok(ClipTokenizer {
            bpe,
            normalizer: BertNormalizer::new(true, true, Some(false), true),
            split,
            byte_chars: byte_chars(),
            bos,
            eos,
            pad: eos,
            max_length: MAX_LENGTH,
        })
    }

    /// The number of tokens in the vocabulary (ids are below this).
    pub fn vocab_size(&self) -> usize {
        self.bpe.get_vocab_size()
    }

    /// Reads a diffusers `tokenizer/` folder.
    /// The pad token is the folder's (`special_tokens_map.json`'s `pad_token`): `<|endoftext|>` in SD 1.5's,
    /// `!` in OpenCLIP-H's as ModelScope T2V and SD 2.x ship it; without the file, `<|endoftext|>`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let mut tokenizer = Self::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))?;
        let map = dir.join("special_tokens_map.json");
        if map.is_file() {
            let invalid = |message: String| TokenizerError::Read { path: map.clone(), message };
            let text =
                crate::models::bounds::read_text(&map, crate::models::bounds::MAX_CONFIG_BYTES).map_err(invalid)?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            let pad = value.get("pad_token").and_then(|p| p.as_str().or_else(|| p.get("content")?.as_str()));
            if let Some(pad) = pad {
                tokenizer.pad = tokenizer
                    .bpe
                    .token_to_id(pad)
                    .ok_or_else(|| invalid(format!("the pad token {pad:?} is not in vocab.json")))?;
            }
        }
        Ok(tokenizer)
    }

    /// BPE ids of a prompt, without start/end tokens or padding.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut normalized = NormalizedString::from(text);
        self.normalizer.normalize(&mut normalized).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        normalized.nfc();
        let cleaned = normalized.get().split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        let mut ids = Vec::new();
        for piece in self.split.find_iter(&cleaned) {
            if let Some(id) = [("<|startoftext|>", self.bos), ("<|endoftext|>", self.eos)]
                .iter()
                .find(|(t, _)| *t == piece.as_str())
                .map(|(_, id)| *id)
            {
                ids.push(id);
                continue;
            }
            let mapped: String = piece.as_str().bytes().map(|b| self.byte_chars[b as usize]).collect();
            let tokens = self.bpe.tokenize(&mapped).map_err(|e| TokenizerError::Encode(e.to_string()))?;
            ids.extend(tokens.into_iter().map(|t| t.id));
        }
        Ok(ids)
    }

    /// `<|startoftext|>` + ids + `<|endoftext|>`, truncated to `max_length` and padded with `pad`, as
    /// `tokenizer(prompt, padding="max_length", truncation=True)` does.
    pub fn encode(&self, text: &str) -> Result<Encoding, TokenizerError> {
        let body = self.tokenize(text)?;
        let room = self.max_length.saturating_sub(2);
        let truncated = body.len().saturating_sub(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend(body.into_iter().take(room));
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(Encoding { ids, truncated })
    }
}
