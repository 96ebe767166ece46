//! HF `tokenizer.json` tokenization for BERT-style models, through the `tokenizers` crate (the
//! same Rust code the Python `transformers` fast tokenizers run): batches are padded to the
//! longest sentence (or to a fixed length) and truncated at `max_length`, as
//! `tokenizer(sentences, padding=True, truncation=True, max_length=128)`.

use std::path::Path;

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::{ApiError, Result};

/// A batch of token ids with its attention mask and token type ids, each `[batch, seq]`
/// row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// To the longest sentence of the batch (`padding=True`).
    Longest,
    /// To exactly this length (`padding="max_length"`).
    Fixed(usize),
}

/// A loaded `tokenizer.json` with the padding and truncation the models here expect.
pub struct BertTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl std::fmt::Debug for BertTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertTokenizer")
            .field("max_length", &self.max_length)
            .finish()
    }
}

fn tok_err(path: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Tokenizer {
        detail: format!("{path}: {e}"),
    }
}

impl BertTokenizer {
    /// Loads `tokenizer.json`; sequences longer than `max_length` tokens are truncated.
    pub fn from_file(path: impl AsRef<Path>, max_length: usize) -> Result<BertTokenizer> {
        let p = path.as_ref().display().to_string();
        let inner = Tokenizer::from_file(path.as_ref()).map_err(|e| tok_err(&p, e))?;
        Ok(BertTokenizer { inner, max_length })
    }

    /// Tokenizes `sentences` into one padded batch. Errors on an empty batch.
    pub fn encode(&self, sentences: &[&str], padding: Padding) -> Result<Encoded> {
        if sentences.is_empty() {
            return Err(ApiError::Tokenizer {
                detail: "no sentences to encode; give at least one".into(),
            });
        }
        let mut tok = self.inner.clone();
        let pad_id = tok.get_padding().map_or(0, |p| p.pad_id);
        let pad_token = tok.get_padding().map_or("[PAD]".to_string(), |p| p.pad_token.clone());
        tok.with_padding(Some(PaddingParams {
            strategy: match padding {
                Padding::Longest => PaddingStrategy::BatchLongest,
                Padding::Fixed(n) => PaddingStrategy::Fixed(n),
            },
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        tok.with_truncation(Some(TruncationParams {
            max_length: self.max_length,
            ..Default::default()
        }))
        .map_err(|e| tok_err("truncation", e))?;
        let encodings = tok
            .encode_batch(sentences.to_vec(), true)
            .map_err(|e| tok_err("encode", e))?;
        let seq = encodings[0].get_ids().len();
        let mut out = Encoded {
            batch: encodings.len(),
            seq,
            input_ids: Vec::with_capacity(seq * encodings.len()),
            attention_mask: Vec::with_capacity(seq * encodings.len()),
            token_type_ids: Vec::with_capacity(seq * encodings.len()),
        };
        for e in &encodings {
            out.input_ids.extend(e.get_ids().iter().map(|&v| v as i64));
            out.attention_mask
                .extend(e.get_attention_mask().iter().map(|&v| v as i64));
            out.token_type_ids.extend(e.get_type_ids().iter().map(|&v| v as i64));
        }
        Ok(out)
    }
}
