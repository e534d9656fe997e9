//! Tokenizers: from `tokenizer.json`, or rebuilt from GGUF metadata (`tokenizer.ggml.*`), which
//! is all a GGUF file such as SmolLM2's carries.

use std::{
	collections::HashMap,
	sync::{Arc, OnceLock},
};

use candle_core::quantized::gguf_file::Value;
use tokenizers::{
	decoders::{byte_level::ByteLevel as ByteLevelDecoder, DecoderWrapper},
	models::bpe::{Vocab, BPE},
	pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence},
	AddedToken, PreTokenizerWrapper,
};

use crate::{
	chat::ChatTemplate,
	error::{Error, Result},
};

/// GGUF's token types (`tokenizer.ggml.token_type`): control tokens such as `<|im_start|>` are
/// special and never split.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// A tokenizer with the model's special tokens.
#[derive(Clone)]
pub struct Tokenizer {
	inner: tokenizers::Tokenizer,
	/// The beginning-of-sequence token, if the model has one.
	pub bos: Option<u32>,
	/// The end-of-sequence token: generation stops when it is produced.
	pub eos: Option<u32>,
	/// Whether the model expects BOS before every prompt.
	pub add_bos: bool,
	/// The model's chat template (Jinja), if its metadata has one.
	pub chat_template: Option<String>,
	/// Each token's bytes, worked out when first asked for (see [`Tokenizer::token_bytes`]).
	token_bytes: Arc<OnceLock<TokenBytes>>,
	/// The same tokenizer with special tokens' text not recognised, made when first asked for
	/// (see [`Tokenizer::encode_literal`]).
	literal: Arc<OnceLock<tokenizers::Tokenizer>>,
}

/// Each token's bytes, by id, in one buffer, and a byte trie over them (structured output
/// walks it at each step, so that tokens sharing a prefix have it checked once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBytes {
	bytes: Vec<u8>,
	/// Where each token's bytes end in `bytes`.
	ends: Vec<usize>,
	trie: TokenTrie,
}

/// A byte trie over a vocabulary's tokens, its nodes' edges and tokens each in one stretch of
/// one array (walked for every step of structured output: scattered nodes would miss the
/// cache). Node 0 is the root (no bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenTrie {
	/// Per node: where its edges start in `edges`, then where its tokens start in `tokens`
	/// (the next node's starts end them).
	starts: Vec<(u32, u32)>,
	/// Each edge: the next byte and the node it leads to.
	edges: Vec<(u8, u32)>,
	/// The tokens whose bytes are the path to each node.
	tokens: Vec<u32>,
}

impl TokenTrie {
	/// The trie of `tokens` (by id; those without bytes are in no node).
	fn new<'a>(tokens: impl IntoIterator<Item = &'a [u8]>) -> Self {
		// Built with a list per node, then laid out flat.
		let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
		let mut ends: Vec<Vec<u32>> = vec![Vec::new()];
		for (id, token) in tokens.into_iter().enumerate() {
			if token.is_empty() {
				continue;
			}
			let mut node = 0;
			for &b in token {
				node = match children[node].iter().find(|(c, _)| *c == b) {
					Some(&(_, child)) => child as usize,
					None => {
						children.push(Vec::new());
						ends.push(Vec::new());
						let child = children.len() - 1;
						children[node].push((b, child as u32));
						child
					}
				};
			}
			ends[node].push(id as u32);
		}
		let mut trie = Self::default();
		for (edges, tokens) in children.into_iter().zip(ends) {
			trie.starts.push((trie.edges.len() as u32, trie.tokens.len() as u32));
			trie.edges.extend(edges);
			trie.tokens.extend(tokens);
		}
		trie.starts.push((trie.edges.len() as u32, trie.tokens.len() as u32));
		trie
	}

	/// The edges out of `node`: the next byte and the node it leads to.
	pub fn children(&self, node: u32) -> &[(u8, u32)] {
		let node = node as usize;
		match (self.starts.get(node), self.starts.get(node + 1)) {
			(Some(&(from, _)), Some(&(to, _))) => &self.edges[from as usize..to as usize],
			_ => &[],
		}
	}

	/// The tokens whose bytes lead from the root to `node`.
	pub fn tokens(&self, node: u32) -> &[u32] {
		let node = node as usize;
		match (self.starts.get(node), self.starts.get(node + 1)) {
			(Some(&(_, from)), Some(&(_, to))) => &self.tokens[from as usize..to as usize],
			_ => &[],
		}
	}
}

/// A set of a vocabulary's tokens, a bit each: those a grammar allows from one of its states,
/// kept as it is found (by a walk of the [`TokenTrie`]) and read out as the sampler's mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
	words: Box<[u64]>,
	/// The tokens of the vocabulary.
	len: usize,
}

impl TokenMask {
	/// No token of a vocabulary of `len`.
	pub fn new(len: usize) -> Self {
		Self { words: vec![0; len.div_ceil(64)].into_boxed_slice(), len }
	}

	/// Puts token `id` in the set (an id outside the vocabulary is left out).
	pub fn insert(&mut self, id: usize) {
		if let Some(word) = self.words.get_mut(id / 64).filter(|_| id < self.len) {
			*word |= 1 << (id % 64);
		}
	}

	/// Whether token `id` is in the set.
	pub fn contains(&self, id: usize) -> bool {
		self.words.get(id / 64).is_some_and(|word| word >> (id % 64) & 1 == 1)
	}

	/// The tokens of the vocabulary it is a set of.
	pub fn len(&self) -> usize {
		self.len
	}

	/// Whether the vocabulary has no tokens.
	pub fn is_empty(&self) -> bool {
		self.len == 0
	}

	/// For each token of the vocabulary, whether it may come next: whether it is in the set,
	/// except the end of the output (`eos`), which may come only where it `may_end`.
	pub fn allowed(&self, eos: Option<u32>, may_end: bool) -> Vec<bool> {
		let mut allowed: Vec<bool> = (0..self.len).map(|id| self.contains(id)).collect();
		allow_end(&mut allowed, eos, may_end);
		allowed
	}
}

/// Marks the end of the output (`eos`, if the model has one) in `allowed` as allowed only
/// where the output `may_end`.
pub fn allow_end(allowed: &mut [bool], eos: Option<u32>, may_end: bool) {
	if let Some(slot) = eos.and_then(|eos| allowed.get_mut(eos as usize)) {
		*slot = may_end;
	}
}

impl TokenBytes {
	/// For each token, whether `fits` takes its bytes; tokens without bytes (special tokens)
	/// never fit. Token by token: the reference that the grammars' masks, found by walking the
	/// trie, are tested and measured against.
	pub fn each_fitting(&self, fits: impl Fn(&[u8]) -> bool) -> Vec<bool> {
		(0..self.len())
			.map(|id| {
				let bytes = self.get(id).unwrap_or_default();
				!bytes.is_empty() && fits(bytes)
			})
			.collect()
	}

	/// The bytes of each of `tokens`, in order of id.
	pub fn new<T: AsRef<[u8]>>(tokens: impl IntoIterator<Item = T>) -> Self {
		let mut all = Self::default();
		for token in tokens {
			all.bytes.extend_from_slice(token.as_ref());
			all.ends.push(all.bytes.len());
		}
		all.trie = TokenTrie::new((0..all.len()).map(|id| all.get(id).unwrap_or_default()));
		all
	}

	/// The byte trie over the tokens.
	pub fn trie(&self) -> &TokenTrie {
		&self.trie
	}

	/// How many tokens.
	pub fn len(&self) -> usize {
		self.ends.len()
	}

	/// Whether there are none.
	pub fn is_empty(&self) -> bool {
		self.ends.is_empty()
	}

	/// Token `id`'s bytes, if there is such a token.
	pub fn get(&self, id: usize) -> Option<&[u8]> {
		let end = *self.ends.get(id)?;
		let start = id.checked_sub(1).map_or(0, |before| self.ends[before]);
		self.bytes.get(start..end)
	}
}

fn tokenizer_error(e: impl std::fmt::Display) -> Error {
	Error::Tokenizer(e.to_string())
}

impl Tokenizer {
	/// Loads a Hugging Face `tokenizer.json`, turning off any padding and truncation it forces,
	/// with the special tokens and chat template of the `tokenizer_config.json` beside it, if
	/// there is one.
	pub fn from_file(path: &std::path::Path) -> Result<Self> {
		let mut inner = tokenizers::Tokenizer::from_file(path).map_err(tokenizer_error)?;
		inner.with_padding(None);
		inner.with_truncation(None).map_err(tokenizer_error)?;
		let mut tokenizer = Self {
			inner,
			bos: None,
			eos: None,
			add_bos: false,
			chat_template: None,
			token_bytes: Default::default(),
			literal: Default::default(),
		};
		let config_path = path.with_file_name("tokenizer_config.json");
		if config_path.exists() {
			let text = std::fs::read_to_string(&config_path)?;
			let config: serde_json::Value = serde_json::from_str(&text)
				.map_err(|e| Error::Tokenizer(format!("{}: {e}", config_path.display())))?;
			// A special token is a string, or an object with its `content`.
			let token = |key: &str| {
				let value = config.get(key)?;
				let text = value.as_str().or_else(|| value.get("content")?.as_str())?;
				tokenizer.inner.token_to_id(text)
			};
			tokenizer.bos = token("bos_token");
			tokenizer.eos = token("eos_token");
			tokenizer.add_bos = config.get("add_bos_token").and_then(|v| v.as_bool()) == Some(true);
			// One template, or a list of named ones whose `default` is the chat template.
			tokenizer.chat_template = match config.get("chat_template") {
				Some(serde_json::Value::String(t)) => Some(t.clone()),
				Some(serde_json::Value::Array(named)) => named
					.iter()
					.find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
					.and_then(|t| t.get("template")?.as_str().map(str::to_string)),
				_ => None,
			};
		}
		Ok(tokenizer)
	}

	/// Rebuilds the tokenizer from GGUF metadata. Supports byte-level BPE (`gpt2`, as in Llama
	/// 3, SmolLM2, Qwen2).
	pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Self> {
		let get = |key: &str| metadata.get(key);
		let model = get("tokenizer.ggml.model")
			.and_then(|v| v.to_string().ok())
			.ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.model".into()))?;
		if model != "gpt2" {
			return Err(Error::Unsupported(format!("GGUF tokenizer model {model:?}")));
		}
		let tokens: Vec<String> = get("tokenizer.ggml.tokens")
			.and_then(|v| v.to_vec().ok())
			.ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?
			.iter()
			.map(|t| t.to_string().cloned().map_err(tokenizer_error))
			.collect::<Result<_>>()?;
		let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")
			.and_then(|v| v.to_vec().ok())
			.ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.merges".into()))?
			.iter()
			.map(|m| {
				let m = m.to_string().map_err(tokenizer_error)?;
				let (a, b) = m
					.split_once(' ')
					.ok_or_else(|| Error::Tokenizer(format!("bad merge {m:?}")))?;
				Ok((a.to_string(), b.to_string()))
			})
			.collect::<Result<_>>()?;
		let types: Vec<i32> = match get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()) {
			Some(types) => types.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
			None => vec![1; tokens.len()],
		};
		let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
		let bpe =
			BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tokenizer_error)?;
		let mut inner = tokenizers::Tokenizer::new(bpe);
		// The pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`: SmolLM2 ("smollm") splits
		// every digit, then applies GPT-2's byte-level split.
		let pre = get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();
		let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
		let pre_tokenizer: PreTokenizerWrapper = match pre.as_deref() {
			Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level]).into(),
			Some("gpt2") | Some("default") | None => byte_level,
			Some(other) => {
				return Err(Error::Unsupported(format!("GGUF pre-tokenizer {other:?}")));
			}
		};
		inner.with_pre_tokenizer(Some(pre_tokenizer));
		inner.with_decoder(Some(ByteLevelDecoder::default()));
		let special: Vec<AddedToken> = tokens
			.iter()
			.zip(&types)
			.filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
			.map(|(token, t)| AddedToken::from(token.clone(), *t == TOKEN_TYPE_CONTROL))
			.collect();
		inner.add_special_tokens(&special);

		let id = |key: &str| get(key).and_then(|v| v.to_u32().ok());
		Ok(Self {
			inner,
			bos: id("tokenizer.ggml.bos_token_id"),
			eos: id("tokenizer.ggml.eos_token_id"),
			add_bos: get("tokenizer.ggml.add_bos_token")
				.and_then(|v| v.to_bool().ok())
				.unwrap_or(false),
			chat_template: get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
			token_bytes: Default::default(),
			literal: Default::default(),
		})
	}

	/// The ids of `text`, with BOS first when the model asks for it (and the text, say a
	/// rendered chat template, does not start with it already). Special tokens written in the
	/// text (such as `<|im_start|>`) are recognised.
	pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
		let encoding = self.inner.encode(text, false).map_err(tokenizer_error)?;
		let mut ids = Vec::with_capacity(encoding.len() + 1);
		if self.add_bos && encoding.get_ids().first() != self.bos.as_ref() {
			ids.extend(self.bos);
		}
		ids.extend_from_slice(encoding.get_ids());
		Ok(ids)
	}

	/// The ids of `text` that follows other tokens: no BOS, whatever the model asks for.
	pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
		let encoding = self.inner.encode(text, false).map_err(tokenizer_error)?;
		Ok(encoding.get_ids().to_vec())
	}

	/// The ids of `text` as [`Tokenizer::encode_continuation`] gives them, except that special
	/// tokens written in it (`<|im_end|>`, ...) are text like any other: what a third party
	/// wrote cannot open or close a chat's turns.
	pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
		let literal = self.literal.get_or_init(|| {
			let mut literal = self.inner.clone();
			literal.set_encode_special_tokens(true);
			literal
		});
		let encoding = literal.encode(text, false).map_err(tokenizer_error)?;
		Ok(encoding.get_ids().to_vec())
	}

	/// The text of `ids`, special tokens included.
	pub fn decode(&self, ids: &[u32]) -> Result<String> {
		self.decode_output(ids, false)
	}

	/// The text of `ids` as an output's: special tokens (`<|im_end|>`, ...) left out if
	/// `skip_special_tokens`.
	pub fn decode_output(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
		self.inner.decode(ids, skip_special_tokens).map_err(tokenizer_error)
	}

	/// Writes the tokenizer as a Hugging Face `tokenizer.json`.
	pub fn save(&self, path: &std::path::Path) -> Result<()> {
		self.inner.save(path, false).map_err(tokenizer_error)
	}

	/// The model's chat template, compiled; an error if the model has none.
	pub fn chat_template(&self) -> Result<ChatTemplate> {
		let source = self.chat_template.as_deref().ok_or_else(|| {
			Error::Tokenizer("the model has no chat template in its metadata".into())
		})?;
		let token =
			|id: Option<u32>| id.and_then(|id| self.inner.id_to_token(id)).unwrap_or_default();
		ChatTemplate::new(source, &token(self.bos), &token(self.eos))
	}

	/// Tokens in the vocabulary, special tokens included.
	pub fn vocab_size(&self) -> usize {
		self.inner.get_vocab_size(true)
	}

	/// The special token whose text is `text`, if the vocabulary has one (Hermes 2 Pro's
	/// `<tool_call>`, say).
	pub fn special_token(&self, text: &str) -> Option<u32> {
		let added = self.inner.get_added_tokens_decoder();
		let mut ids = added.iter().filter(|(_, t)| t.special && t.content == text);
		ids.next().map(|(&id, _)| id)
	}

	/// The bytes each token adds to the text, by id ([`Tokenizer::vocab_size`] of them): empty
	/// for special tokens (which add nothing unless asked to). A byte-level BPE token's are its
	/// raw bytes, part of a character included; a SentencePiece token's are its piece with `▁`
	/// as a space, or the byte a `<0xNN>` piece stands for. Worked out once, on first use.
	pub fn token_bytes(&self) -> &TokenBytes {
		self.token_bytes.get_or_init(|| {
			let added = self.inner.get_added_tokens_decoder();
			// Byte-level BPE, alone or in a sequence of decoders.
			let byte_level = self.inner.get_decoder().is_some_and(|decoder| {
				matches!(decoder, DecoderWrapper::ByteLevel(_))
					|| serde_json::to_string(decoder).is_ok_and(|d| d.contains("\"ByteLevel\""))
			});
			let alphabet = byte_level_bytes();
			TokenBytes::new((0..self.vocab_size() as u32).map(|id| {
				match (added.get(&id), self.inner.id_to_token(id)) {
					(Some(token), _) if token.special => Vec::new(),
					(Some(token), _) => token.content.as_bytes().to_vec(),
					(None, Some(token)) if byte_level => {
						token.chars().filter_map(|c| alphabet.get(&c).copied()).collect()
					}
					(None, Some(token)) => piece_bytes(&token),
					(None, None) => Vec::new(),
				}
			}))
		})
	}
}

/// A SentencePiece token's bytes: the byte a `<0xNN>` piece stands for, or the piece with `▁`
/// as a space.
fn piece_bytes(piece: &str) -> Vec<u8> {
	let hex = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>'));
	match hex.filter(|h| h.len() == 2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
		Some(byte) => vec![byte],
		None => piece.replace('\u{2581}', " ").into_bytes(),
	}
}

/// The byte each character of GPT-2's byte-level alphabet stands for: printable bytes stand
/// for themselves, the others for 256, 257, ... in order.
fn byte_level_bytes() -> HashMap<char, u8> {
	let mut next = 256;
	(0..=255u8)
		.filter_map(|b| {
			let code = match b {
				b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff => u32::from(b),
				_ => {
					next += 1;
					next - 1
				}
			};
			Some((char::from_u32(code)?, b))
		})
		.collect()
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn sentencepiece_pieces_spell_their_bytes() {
		assert_eq!(piece_bytes("\u{2581}name"), b" name");
		assert_eq!(piece_bytes("<0x0A>"), b"\n");
		assert_eq!(piece_bytes("<0xE2>"), [0xe2]);
		assert_eq!(piece_bytes("<0x>"), b"<0x>");
		assert_eq!(piece_bytes("York"), b"York");
	}

	/// A mask holds the ids put in it and no others (none outside the vocabulary), and reads
	/// out with the end of the output allowed only where it may end.
	#[test]
	fn a_token_mask_holds_what_is_put_in_it() {
		let mut mask = TokenMask::new(130);
		for id in [0, 63, 64, 129, 130, 500] {
			mask.insert(id);
		}
		let held: Vec<usize> = (0..200).filter(|&id| mask.contains(id)).collect();
		assert_eq!(held, [0, 63, 64, 129]);
		assert_eq!(mask.len(), 130);
		let allowed = mask.allowed(Some(5), true);
		assert_eq!(allowed.len(), 130);
		let allowed: Vec<usize> = (0..130).filter(|&id| allowed[id]).collect();
		assert_eq!(allowed, [0, 5, 63, 64, 129]);
		let allowed = mask.allowed(Some(64), false);
		assert!(!allowed[64] && allowed[63]);
		assert_eq!(mask.allowed(None, true).iter().filter(|&&a| a).count(), 4);
	}

	#[test]
	fn the_byte_level_alphabet_covers_every_byte_once() {
		let bytes = byte_level_bytes();
		assert_eq!(bytes.len(), 256);
		let mut seen: Vec<u8> = bytes.values().copied().collect();
		seen.sort_unstable();
		assert_eq!(seen, (0..=255).collect::<Vec<u8>>());
		assert_eq!(bytes[&'\u{120}'], b' ', "GPT-2's \u{120} is a space");
		assert_eq!(bytes[&'a'], b'a');
	}
}
