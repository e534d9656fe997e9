//! Sentence embeddings: a BERT encoder in sentence-transformers' folder layout (for example
//! all-MiniLM-L6-v2, what the worker retrieves DataNet records with), run on the CPU with
//! candle-transformers' BERT.
//!
//! The folder holds `config.json` and `model.safetensors` (the Hugging Face BERT),
//! `tokenizer.json`, and sentence-transformers' own files: `modules.json` (the pipeline:
//! the transformer, a pooling module, optionally a normalization), the pooling module's
//! `config.json` (which pooling) and `sentence_bert_config.json` (`max_seq_length`, the most
//! tokens an input may have). An embedding is what sentence-transformers' `encode` gives for the
//! same text: the token states pooled over the input's tokens, L2-normalized when the pipeline
//! says so. Padding and truncation written into `tokenizer.json` (all-MiniLM-L6-v2's pads every
//! input to 128 tokens and cuts it there) are turned off: inputs are batched with their own
//! padding and masks, and cut only where asked ([`EmbeddingModel::tokenize`]).

use std::{fs, path::Path};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::{PostProcessor, TruncationDirection};

use crate::error::{Error, Result};

/// The most bytes of a batch's largest temporary tensor (its attention scores, `inputs * heads *
/// longest²` floats, or its feed-forward activations, `inputs * longest * intermediate`).
/// Below glibc's 32 MiB ceiling for serving blocks by `mmap`, so that, once freed, they are
/// reused from the heap rather than mapped and page-faulted in (zeroed by the kernel) afresh
/// for every batch: with 8,192-token batches that took a quarter of the time (perf:
/// `clear_page_erms` and page faults).
pub const MAX_TEMPORARY_BYTES: usize = 16 << 20;

/// How token states become one vector (sentence-transformers' pooling modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
	/// The mean of the input's token states.
	Mean,
	/// The first token's state (BERT's `[CLS]`).
	Cls,
	/// Each dimension's largest value over the input's tokens.
	Max,
	/// The sum of the token states over the square root of the input's length.
	MeanSqrtLen,
	/// The last token's state.
	LastToken,
}

impl Pooling {
	/// Pools `states` (one input's token states, `len` rows of `dim`, padding excluded).
	pub fn pool(self, states: &[f32], dim: usize) -> Vec<f32> {
		let rows = || states.chunks_exact(dim);
		let len = states.len() / dim.max(1);
		let sum = || {
			rows().fold(vec![0f32; dim], |mut sum, row| {
				sum.iter_mut().zip(row).for_each(|(s, x)| *s += x);
				sum
			})
		};
		match self {
			Pooling::Mean => sum().into_iter().map(|s| s / (len.max(1) as f32)).collect(),
			Pooling::MeanSqrtLen => {
				sum().into_iter().map(|s| s / (len.max(1) as f32).sqrt()).collect()
			}
			Pooling::Cls => rows().next().map_or_else(|| vec![0.0; dim], <[f32]>::to_vec),
			Pooling::LastToken => rows().last().map_or_else(|| vec![0.0; dim], <[f32]>::to_vec),
			Pooling::Max => rows().fold(vec![f32::NEG_INFINITY; dim], |mut max, row| {
				max.iter_mut().zip(row).for_each(|(m, x)| *m = m.max(*x));
				max
			}),
		}
	}
}

/// Scales `v` to length 1 (as `torch.nn.functional.normalize`: a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
	let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
	v.iter_mut().for_each(|x| *x /= norm);
}

/// The cosine similarity of two vectors of the same length, summed in `f64` (0 if either is
/// zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
	let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
	let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
	match norm(a) * norm(b) {
		0.0 => 0.0,
		norms => dot / norms,
	}
}

/// An entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct ModuleEntry {
	path: String,
	#[serde(rename = "type")]
	kind: String,
}

/// The pooling module's `config.json`.
#[derive(Debug, Default, Deserialize)]
struct PoolingConfig {
	#[serde(default)]
	pooling_mode_cls_token: bool,
	#[serde(default)]
	pooling_mode_mean_tokens: bool,
	#[serde(default)]
	pooling_mode_max_tokens: bool,
	#[serde(default)]
	pooling_mode_mean_sqrt_len_tokens: bool,
	#[serde(default)]
	pooling_mode_weightedmean_tokens: bool,
	#[serde(default)]
	pooling_mode_lasttoken: bool,
}

impl PoolingConfig {
	/// The one pooling mode it turns on (several at once concatenate their vectors in
	/// sentence-transformers, which no common model uses and this does not serve).
	fn pooling(&self) -> Result<Pooling> {
		if self.pooling_mode_weightedmean_tokens {
			return Err(Error::Unsupported("weighted-mean pooling".into()));
		}
		let modes = [
			(self.pooling_mode_mean_tokens, Pooling::Mean),
			(self.pooling_mode_cls_token, Pooling::Cls),
			(self.pooling_mode_max_tokens, Pooling::Max),
			(self.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
			(self.pooling_mode_lasttoken, Pooling::LastToken),
		];
		let mut on = modes.iter().filter(|(on, _)| *on).map(|(_, mode)| *mode);
		match (on.next(), on.next()) {
			(Some(mode), None) => Ok(mode),
			(None, _) => Err(Error::Format("the pooling config turns no pooling mode on".into())),
			(Some(_), Some(_)) => {
				Err(Error::Unsupported("several pooling modes at once (concatenated)".into()))
			}
		}
	}
}

/// `sentence_bert_config.json`.
#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
	max_seq_length: Option<usize>,
}

/// A sentence-embedding model.
pub struct EmbeddingModel {
	model: BertModel,
	tokenizer: tokenizers::Tokenizer,
	/// Special tokens the tokenizer adds around one input (`[CLS]`, `[SEP]`).
	added_tokens: usize,
	pooling: Pooling,
	normalize: bool,
	max_tokens: usize,
	dimensions: usize,
	vocab_size: usize,
	/// Attention heads, and the feed-forward width (what bounds a batch).
	heads: usize,
	intermediate: usize,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
	let text =
		fs::read_to_string(path).map_err(|e| Error::Format(format!("{}: {e}", path.display())))?;
	serde_json::from_str(&text).map_err(|e| Error::Format(format!("{}: {e}", path.display())))
}

impl EmbeddingModel {
	/// Loads the sentence-transformers folder `dir`.
	pub fn load(dir: &Path) -> Result<Self> {
		let config: Config = read_json(&dir.join("config.json"))?;
		let (pooling, normalize) = Self::pipeline(dir)?;
		let max_tokens = match dir.join("sentence_bert_config.json") {
			path if path.exists() => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
			_ => None,
		}
		.unwrap_or(config.max_position_embeddings)
		.min(config.max_position_embeddings);
		let weights = dir.join("model.safetensors");
		let bytes =
			fs::read(&weights).map_err(|e| Error::Format(format!("{}: {e}", weights.display())))?;
		let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
			.map_err(|e| Error::Format(format!("{}: {e}", weights.display())))?;
		let model = BertModel::load(vb, &config)
			.map_err(|e| Error::Format(format!("{}: {e}", weights.display())))?;
		let mut tokenizer =
			tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
				Error::Tokenizer(format!("{}: {e}", dir.join("tokenizer.json").display()))
			})?;
		tokenizer.with_padding(None);
		tokenizer.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
		let added_tokens = tokenizer.get_post_processor().map_or(0, |p| p.added_tokens(false));
		let vocab_size = config.vocab_size;
		Ok(Self {
			model,
			tokenizer,
			added_tokens,
			pooling,
			normalize,
			max_tokens,
			dimensions: config.hidden_size,
			vocab_size,
			heads: config.num_attention_heads,
			intermediate: config.intermediate_size,
		})
	}

	/// The pooling and whether vectors are normalized, from `modules.json` (without one:
	/// mean pooling, not normalized, as sentence-transformers does for a bare transformer).
	fn pipeline(dir: &Path) -> Result<(Pooling, bool)> {
		let path = dir.join("modules.json");
		if !path.exists() {
			return Ok((Pooling::Mean, false));
		}
		let modules: Vec<ModuleEntry> = read_json(&path)?;
		let mut pooling = None;
		let mut normalize = false;
		for (i, module) in modules.iter().enumerate() {
			let kind = module.kind.rsplit('.').next().unwrap_or_default();
			match (i, kind) {
				(0, "Transformer") => {}
				(1, "Pooling") => {
					let config: PoolingConfig =
						read_json(&dir.join(&module.path).join("config.json"))?;
					pooling = Some(config.pooling()?);
				}
				(2, "Normalize") => normalize = true,
				_ => {
					return Err(Error::Unsupported(format!(
						"{}: module {i} is a {}; served: a Transformer, a Pooling, then optionally \
						 a Normalize",
						path.display(),
						module.kind
					)))
				}
			}
		}
		let pooling = pooling
			.ok_or_else(|| Error::Format(format!("{}: no Pooling module", path.display())))?;
		Ok((pooling, normalize))
	}

	/// The length of the vectors.
	pub fn dimensions(&self) -> usize {
		self.dimensions
	}

	/// The most tokens an input may have (special tokens included).
	pub fn max_tokens(&self) -> usize {
		self.max_tokens
	}

	/// The number of token ids.
	pub fn vocab_size(&self) -> usize {
		self.vocab_size
	}

	/// The pooling.
	pub fn pooling(&self) -> Pooling {
		self.pooling
	}

	/// Whether vectors are L2-normalized.
	pub fn normalizes(&self) -> bool {
		self.normalize
	}

	/// The token ids of `text` with the model's special tokens (`[CLS] … [SEP]`), cut to the
	/// first `truncate` tokens (special tokens kept, as sentence-transformers cuts) when given;
	/// `truncate` must leave room for at least one token of text.
	pub fn tokenize(&self, text: &str, truncate: Option<usize>) -> Result<Vec<u32>> {
		let encode = |special| {
			self.tokenizer.encode(text, special).map_err(|e| Error::Tokenizer(e.to_string()))
		};
		if truncate.is_some_and(|max| max <= self.added_tokens) {
			return Err(Error::Request(format!(
				"truncation to {} tokens leaves none for the text beside the model's {} special \
				 tokens",
				truncate.unwrap_or_default(),
				self.added_tokens
			)));
		}
		let encoding = encode(true)?;
		match truncate {
			Some(max) if encoding.len() > max => {
				let mut encoding = encode(false)?;
				encoding.truncate(
					max.saturating_sub(self.added_tokens).max(1),
					0,
					TruncationDirection::Right,
				);
				let encoding = self
					.tokenizer
					.post_process(encoding, None, true)
					.map_err(|e| Error::Tokenizer(e.to_string()))?;
				Ok(encoding.get_ids().to_vec())
			}
			_ => Ok(encoding.get_ids().to_vec()),
		}
	}

	/// Checks that `tokens` can be embedded: not empty, within [`Self::max_tokens`], every id in
	/// the vocabulary. `what` names the input in the error.
	pub fn check(&self, what: &str, tokens: &[u32]) -> Result<()> {
		if tokens.is_empty() {
			return Err(Error::Request(format!("{what}: no tokens")));
		}
		if tokens.len() > self.max_tokens {
			return Err(Error::Request(format!(
				"{what}: {} tokens, more than the embedding model's {} (ask for truncation: \
				 truncate_prompt_tokens over HTTP, embed --truncate)",
				tokens.len(),
				self.max_tokens
			)));
		}
		crate::generate::check_token_ids(what, tokens, self.vocab_size)
	}

	/// The embeddings of `inputs` (token ids, each checked by [`Self::check`]), in their order.
	/// Inputs of similar lengths are batched together, as many as keep the batch's temporaries
	/// within [`MAX_TEMPORARY_BYTES`].
	pub fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
		for (i, tokens) in inputs.iter().enumerate() {
			self.check(&format!("input {i}"), tokens)?;
		}
		let mut order: Vec<usize> = (0..inputs.len()).collect();
		order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
		let mut out = vec![Vec::new(); inputs.len()];
		let mut start = 0;
		while start < order.len() {
			// Sorted longest first: the batch's first input sets its padded length.
			let longest = inputs[order[start]].len();
			let floats =
				longest * (self.heads * longest).max(self.intermediate).max(self.dimensions);
			let count = (MAX_TEMPORARY_BYTES / (4 * floats)).clamp(1, order.len() - start);
			let batch = &order[start..start + count];
			let vectors = self.embed_batch(batch.iter().map(|&i| inputs[i].as_slice()), longest)?;
			for (&i, vector) in batch.iter().zip(vectors) {
				out[i] = vector;
			}
			start += count;
		}
		Ok(out)
	}

	/// One batch, padded to `longest` tokens.
	fn embed_batch<'a>(
		&self,
		inputs: impl ExactSizeIterator<Item = &'a [u32]> + Clone,
		longest: usize,
	) -> Result<Vec<Vec<f32>>> {
		let count = inputs.len();
		let mut ids = vec![0u32; count * longest];
		let mut mask = vec![0u32; count * longest];
		for (row, tokens) in inputs.clone().enumerate() {
			ids[row * longest..][..tokens.len()].copy_from_slice(tokens);
			mask[row * longest..][..tokens.len()].fill(1);
		}
		let device = Device::Cpu;
		let ids = Tensor::from_vec(ids, (count, longest), &device)?;
		let mask = Tensor::from_vec(mask, (count, longest), &device)?;
		let types = ids.zeros_like()?;
		let states = self.model.forward(&ids, &types, Some(&mask))?;
		let states = states.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
		let dim = self.dimensions;
		Ok(inputs
			.enumerate()
			.map(|(row, tokens)| {
				let rows = &states[row * longest * dim..][..tokens.len() * dim];
				let mut vector = self.pooling.pool(rows, dim);
				if self.normalize {
					normalize(&mut vector);
				}
				vector
			})
			.collect())
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	/// Two tokens of three dimensions.
	const STATES: [f32; 6] = [1.0, -2.0, 3.0, 3.0, 4.0, -1.0];

	#[test]
	fn pools_each_mode() {
		assert_eq!(Pooling::Mean.pool(&STATES, 3), vec![2.0, 1.0, 1.0]);
		let sqrt2 = 2f32.sqrt();
		assert_eq!(
			Pooling::MeanSqrtLen.pool(&STATES, 3),
			vec![4.0 / sqrt2, 2.0 / sqrt2, 2.0 / sqrt2]
		);
		assert_eq!(Pooling::Cls.pool(&STATES, 3), vec![1.0, -2.0, 3.0]);
		assert_eq!(Pooling::LastToken.pool(&STATES, 3), vec![3.0, 4.0, -1.0]);
		assert_eq!(Pooling::Max.pool(&STATES, 3), vec![3.0, 4.0, 3.0]);
	}

	#[test]
	fn normalizes_to_unit_length_and_leaves_zero_alone() {
		let mut v = vec![3.0, 4.0];
		normalize(&mut v);
		assert_eq!(v, vec![0.6, 0.8]);
		let mut zero = vec![0.0; 3];
		normalize(&mut zero);
		assert_eq!(zero, vec![0.0; 3]);
		assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
		assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
	}

	#[test]
	fn reads_the_pooling_mode() {
		let mean = PoolingConfig { pooling_mode_mean_tokens: true, ..Default::default() };
		assert_eq!(mean.pooling().unwrap(), Pooling::Mean);
		let cls = PoolingConfig { pooling_mode_cls_token: true, ..Default::default() };
		assert_eq!(cls.pooling().unwrap(), Pooling::Cls);
		assert!(matches!(PoolingConfig::default().pooling(), Err(Error::Format(_))));
		let two = PoolingConfig {
			pooling_mode_mean_tokens: true,
			pooling_mode_max_tokens: true,
			..Default::default()
		};
		assert!(matches!(two.pooling(), Err(Error::Unsupported(_))));
		let weighted =
			PoolingConfig { pooling_mode_weightedmean_tokens: true, ..Default::default() };
		assert!(matches!(weighted.pooling(), Err(Error::Unsupported(_))));
	}
}
