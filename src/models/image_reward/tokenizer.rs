//! BLIP's BERT tokenizer as ImageReward calls it: transformers' `BertTokenizer` of `bert-base-uncased`
//! (lower case, accents stripped, BERT's basic splitting on whitespace, punctuation and CJK ideographs,
//! WordPiece with `##` continuations and `[UNK]` for words over 100 characters) with BLIP's two added special
//! tokens `[DEC]` (bos) and `[ENC]` appended after the vocabulary, then
//! `tokenizer(prompt, padding="max_length", truncation=True, max_length=35)`: `[CLS] ids [SEP]`, truncated to
//! 35 and padded with `[PAD]`. ImageReward's `score` keeps `[CLS]` first (it does not substitute `[ENC]`).
//!
//! Built on the `tokenizers` crate: `BertNormalizer` (clean text, CJK spacing, accent stripping, lower case),
//! `BertPreTokenizer`, `WordPiece`; the special tokens are matched verbatim in the prompt, as the reference
//! does.

use std::path::{Path, PathBuf};

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, Tokenizer};

use crate::models::bounds::{self, MAX_TOKENIZER_BYTES, MAX_VOCAB};

/// ImageReward's prompt length.
pub const MAX_LENGTH: usize = 35;

/// Errors of reading the vocabulary or tokenizing.
#[derive(Debug, thiserror::Error)]
pub enum BertTokenizerError {
    #[error("cannot read BERT vocabulary {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("BERT vocabulary {path} has no token '{token}'")]
    MissingSpecial { path: PathBuf, token: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
}

/// Token ids of one prompt and its attention mask, padded to `max_length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BertEncoding {
    pub ids: Vec<u32>,
    /// 1 for real tokens ([CLS], the prompt, [SEP]), 0 for padding.
    pub attention_mask: Vec<u32>,
    /// How many WordPiece tokens of the prompt did not fit and were dropped.
    pub truncated: usize,
}

/// The BERT WordPiece tokenizer of ImageReward (see the module docs).
pub struct BertTokenizer {
    inner: Tokenizer,
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    /// `[DEC]`, BLIP's decoder bos token (vocabulary size).
    pub dec: u32,
    /// `[ENC]`, BLIP's encoder token (vocabulary size + 1).
    pub enc: u32,
    /// Vocabulary size including `[DEC]` and `[ENC]` (30524 for bert-base-uncased).
    pub vocab_size: usize,
    pub max_length: usize,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("max_length", &self.max_length)
            .finish()
    }
}

impl BertTokenizer {
    /// Reads a BERT `vocab.txt` (one token per line, id = line number).
    pub fn from_file(vocab: &Path) -> Result<Self, BertTokenizerError> {
        let read = |message: String| BertTokenizerError::Read { path: vocab.to_path_buf(), message };
        if !vocab.is_file() {
            return Err(read("not found".into()));
        }
        let len = std::fs::metadata(vocab).map_err(|e| read(e.to_string()))?.len();
        if len > MAX_TOKENIZER_BYTES {
            return Err(read(format!(
                "the file is {len} bytes, more than the {MAX_TOKENIZER_BYTES} bytes a vocabulary may have"
            )));
        }
        let map = WordPiece::read_file(&vocab.to_string_lossy()).map_err(|e| read(e.to_string()))?;
        let n = map.len();
        bounds::check("the number of tokens", n, 1, MAX_VOCAB).map_err(|e| read(e.to_string()))?;
        let special = |token: &str| {
            map.get(token)
                .copied()
                .ok_or_else(|| BertTokenizerError::MissingSpecial { path: vocab.to_path_buf(), token: token.into() })
        };
        let (cls, sep, pad) = (special("[CLS]")?, special("[SEP]")?, special("[PAD]")?);
        special("[UNK]")?;
        let has_mask = special("[MASK]").is_ok();
        let model = WordPiece::builder()
            .vocab(map)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| read(e.to_string()))?;
        let mut inner = Tokenizer::new(model);
        inner.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        // bert-base-uncased's special tokens, then BLIP's [DEC] and [ENC] (new ids n and n + 1).
        let specials: Vec<AddedToken> = ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "[DEC]", "[ENC]"]
            .iter()
            .filter(|t| **t != "[MASK]" || has_mask)
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| read(format!("special token {t} not registered")));
        let (dec, enc) = (id("[DEC]")?, id("[ENC]")?);
        Ok(BertTokenizer { inner, cls, sep, pad, dec, enc, vocab_size: n + 2, max_length: MAX_LENGTH })
    }

    /// WordPiece ids of a prompt, without [CLS]/[SEP] or padding.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, BertTokenizerError> {
        let enc = self.inner.encode(text, false).map_err(|e| BertTokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[CLS] ids [SEP]`, truncated to `max_length` and padded with `[PAD]`, as ImageReward's `score` calls
    /// the tokenizer.
    pub fn encode(&self, text: &str) -> Result<BertEncoding, BertTokenizerError> {
        let body = self.tokenize(text)?;
        let room = self.max_length.saturating_sub(2);
        let truncated = body.len().saturating_sub(room);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.cls);
        ids.extend(body.into_iter().take(room));
        ids.push(self.sep);
        let real = ids.len();
        ids.resize(self.max_length, self.pad);
        let attention_mask = (0..self.max_length).map(|i| u32::from(i < real)).collect();
        Ok(BertEncoding { ids, attention_mask, truncated })
    }
}
