//! The shape of a Llama-family model, read from GGUF metadata (`llama.*` keys, or the same keys
//! under the model's own architecture name, e.g. `qwen2.*`).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::error::{Error, Result};

/// How rotary position embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
	/// Pairs `(2i, 2i+1)`: GGUF Llama and Mistral, whose Q/K rows llama.cpp permuted on
	/// conversion.
	Interleaved,
	/// Pairs `(i, i + d/2)`: Hugging Face checkpoints, and GGUF Qwen2.
	Halves,
}

/// The hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
	/// The architecture name in the file (`llama`, `qwen2`, `mistral`).
	pub architecture: String,
	/// Tokens in the vocabulary (rows of the embedding).
	pub vocab_size: usize,
	/// Width of the residual stream.
	pub hidden_size: usize,
	/// Width of the SwiGLU MLP.
	pub intermediate_size: usize,
	/// Transformer blocks.
	pub num_layers: usize,
	/// Query heads.
	pub num_heads: usize,
	/// Key/value heads (grouped-query attention when fewer than `num_heads`).
	pub num_kv_heads: usize,
	/// Width of one head.
	pub head_dim: usize,
	/// RoPE base frequency.
	pub rope_theta: f32,
	/// Linear RoPE scaling factor (positions are divided by it); 1 for none.
	pub rope_scale: f32,
	/// How RoPE pairs dimensions.
	pub rope_layout: RopeLayout,
	/// RMSNorm epsilon.
	pub rms_norm_eps: f64,
	/// The longest context the model was trained for.
	pub context_length: usize,
}

impl LlamaConfig {
	/// Reads the configuration from GGUF metadata.
	pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Self> {
		let architecture = metadata
			.get("general.architecture")
			.and_then(|v| v.to_string().ok())
			.cloned()
			.ok_or_else(|| Error::Format("GGUF metadata has no general.architecture".into()))?;
		let rope_layout = match architecture.as_str() {
			"llama" | "mistral" => RopeLayout::Interleaved,
			"qwen2" => RopeLayout::Halves,
			other => return Err(Error::Unsupported(format!("GGUF architecture {other:?}"))),
		};
		let key = |name: &str| format!("{architecture}.{name}");
		let get = |name: &str| {
			metadata.get(&key(name)).ok_or_else(|| Error::Format(format!("missing {}", key(name))))
		};
		let usize_of = |name: &str| -> Result<usize> {
			let value = get(name)?;
			value
				.to_u32()
				.map(|v| v as usize)
				.or_else(|_| value.to_u64().map(|v| v as usize))
				.map_err(|e| Error::Format(format!("{}: {e}", key(name))))
		};
		let hidden_size = usize_of("embedding_length")?;
		let num_heads = usize_of("attention.head_count")?;
		let num_kv_heads = usize_of("attention.head_count_kv").unwrap_or(num_heads);
		if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
			return Err(Error::Format(format!(
				"{num_heads} query heads cannot share {num_kv_heads} key/value heads"
			)));
		}
		if hidden_size % num_heads != 0 {
			return Err(Error::Format(format!("{hidden_size} is not a multiple of {num_heads}")));
		}
		let head_dim = usize_of("attention.key_length").unwrap_or(hidden_size / num_heads);
		let vocab_size = match usize_of("vocab_size") {
			Ok(v) => v,
			Err(_) => metadata
				.get("tokenizer.ggml.tokens")
				.and_then(|v| v.to_vec().ok())
				.map(Vec::len)
				.ok_or_else(|| Error::Format("no vocabulary size".into()))?,
		};
		let f32_of = |name: &str| get(name).ok().and_then(|v| v.to_f32().ok());
		let rope_scale =
			match metadata.get(&key("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
				Some(kind) if kind == "linear" => f32_of("rope.scaling.factor").unwrap_or(1.0),
				Some(kind) if kind != "none" => {
					return Err(Error::Unsupported(format!("RoPE scaling {kind:?}")))
				}
				_ => 1.0,
			};
		Ok(Self {
			vocab_size,
			hidden_size,
			intermediate_size: usize_of("feed_forward_length")?,
			num_layers: usize_of("block_count")?,
			num_heads,
			num_kv_heads,
			head_dim,
			rope_theta: f32_of("rope.freq_base").unwrap_or(10_000.0),
			rope_scale,
			rope_layout,
			rms_norm_eps: f32_of("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f64,
			context_length: usize_of("context_length").unwrap_or(2048),
			architecture,
		})
	}

	/// Query heads that share one key/value head.
	pub fn group_size(&self) -> usize {
		self.num_heads / self.num_kv_heads
	}
}

#[cfg(test)]
impl LlamaConfig {
	/// A tiny Llama (2 layers, width 16, 4 query and 2 key/value heads) for unit tests.
	pub(crate) fn tiny(rope_layout: RopeLayout) -> Self {
		Self {
			architecture: "llama".into(),
			vocab_size: 32,
			hidden_size: 16,
			intermediate_size: 24,
			num_layers: 2,
			num_heads: 4,
			num_kv_heads: 2,
			head_dim: 4,
			rope_theta: 10_000.0,
			rope_scale: 1.0,
			rope_layout,
			rms_norm_eps: 1e-5,
			context_length: 64,
		}
	}
}
