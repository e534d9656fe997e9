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
	/// Sliding-window attention (Mistral): each token sees at most this many keys, itself
	/// included. `None`: every earlier token.
	pub sliding_window: Option<usize>,
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
		if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
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
			sliding_window: usize_of("attention.sliding_window").ok().filter(|&w| w > 0),
			architecture,
		})
	}

	/// Reads a Hugging Face `config.json` (`model_type` llama, mistral or qwen2).
	pub fn from_hf_json(text: &str) -> Result<Self> {
		#[derive(serde::Deserialize)]
		struct HfConfig {
			model_type: Option<String>,
			vocab_size: usize,
			hidden_size: usize,
			intermediate_size: usize,
			num_hidden_layers: usize,
			num_attention_heads: usize,
			num_key_value_heads: Option<usize>,
			head_dim: Option<usize>,
			rope_theta: Option<f32>,
			rope_scaling: Option<serde_json::Value>,
			rms_norm_eps: Option<f64>,
			max_position_embeddings: Option<usize>,
			sliding_window: Option<usize>,
			use_sliding_window: Option<bool>,
		}
		let hf: HfConfig =
			serde_json::from_str(text).map_err(|e| Error::Format(format!("config.json: {e}")))?;
		let architecture = hf.model_type.unwrap_or_else(|| "llama".into());
		if !matches!(architecture.as_str(), "llama" | "mistral" | "qwen2") {
			return Err(Error::Unsupported(format!("model_type {architecture:?}")));
		}
		let num_heads = hf.num_attention_heads;
		let num_kv_heads = hf.num_key_value_heads.unwrap_or(num_heads);
		if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
			return Err(Error::Format(format!(
				"{num_heads} query heads cannot share {num_kv_heads} key/value heads"
			)));
		}
		let head_dim = match hf.head_dim {
			Some(d) => d,
			None if hf.hidden_size.is_multiple_of(num_heads) => hf.hidden_size / num_heads,
			None => {
				return Err(Error::Format(format!(
					"{} is not a multiple of {num_heads}",
					hf.hidden_size
				)))
			}
		};
		// Mistral slides its window in every layer; Qwen2 declares a window but uses it only
		// with `use_sliding_window`, and then in some layers only (not supported).
		let sliding_window = match (architecture.as_str(), hf.use_sliding_window) {
			("mistral", _) => hf.sliding_window,
			(_, Some(true)) => {
				return Err(Error::Unsupported("per-layer sliding-window attention".into()))
			}
			_ => None,
		};
		let rope_scale = match &hf.rope_scaling {
			None | Some(serde_json::Value::Null) => 1.0,
			Some(scaling) => {
				let kind = scaling
					.get("rope_type")
					.or_else(|| scaling.get("type"))
					.and_then(|k| k.as_str())
					.unwrap_or("default");
				match kind {
					"default" => 1.0,
					"linear" => {
						scaling.get("factor").and_then(|f| f.as_f64()).unwrap_or(1.0) as f32
					}
					other => return Err(Error::Unsupported(format!("RoPE scaling {other:?}"))),
				}
			}
		};
		Ok(Self {
			architecture,
			vocab_size: hf.vocab_size,
			hidden_size: hf.hidden_size,
			intermediate_size: hf.intermediate_size,
			num_layers: hf.num_hidden_layers,
			num_heads,
			num_kv_heads,
			head_dim,
			rope_theta: hf.rope_theta.unwrap_or(10_000.0),
			rope_scale,
			// Hugging Face checkpoints rotate halves; only llama.cpp's conversion interleaves.
			rope_layout: RopeLayout::Halves,
			rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
			context_length: hf.max_position_embeddings.unwrap_or(2048),
			sliding_window,
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
			sliding_window: None,
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	/// SmolLM2-135M-Instruct's `config.json`, trimmed.
	const SMOLLM2: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
		"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
		"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
		"rope_theta": 100000, "rope_scaling": null, "rms_norm_eps": 1e-05,
		"max_position_embeddings": 8192, "tie_word_embeddings": true, "torch_dtype": "bfloat16"}"#;

	#[test]
	fn a_hugging_face_config_is_read() {
		let cfg = LlamaConfig::from_hf_json(SMOLLM2).unwrap();
		assert_eq!((cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), (30, 9, 3, 64));
		assert_eq!(cfg.group_size(), 3);
		assert_eq!(cfg.rope_theta, 100_000.0);
		assert_eq!(cfg.rope_layout, RopeLayout::Halves);
		assert_eq!(cfg.context_length, 8192);
		assert_eq!(cfg.rms_norm_eps, 1e-5);
		assert_eq!(cfg.sliding_window, None);
		let mistral = SMOLLM2
			.replace("\"model_type\": \"llama\"", "\"model_type\": \"mistral\"")
			.replace("\"rope_scaling\": null", "\"sliding_window\": 4096");
		assert_eq!(LlamaConfig::from_hf_json(&mistral).unwrap().sliding_window, Some(4096));
		let qwen2 =
			SMOLLM2.replace("\"model_type\": \"llama\"", "\"model_type\": \"qwen2\"").replace(
				"\"rope_scaling\": null",
				"\"sliding_window\": 4096, \"use_sliding_window\": false",
			);
		assert_eq!(LlamaConfig::from_hf_json(&qwen2).unwrap().sliding_window, None);
		let sliding =
			qwen2.replace("\"use_sliding_window\": false", "\"use_sliding_window\": true");
		assert!(matches!(LlamaConfig::from_hf_json(&sliding), Err(Error::Unsupported(_))));
	}

	#[test]
	fn rope_scaling_and_bad_configs() {
		let with = |extra: &str| SMOLLM2.replace("\"rope_scaling\": null", extra);
		let linear = with(r#""rope_scaling": {"rope_type": "linear", "factor": 4.0}"#);
		assert_eq!(LlamaConfig::from_hf_json(&linear).unwrap().rope_scale, 4.0);
		let yarn = with(r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#);
		let err = LlamaConfig::from_hf_json(&yarn).unwrap_err();
		assert!(err.to_string().contains("yarn"), "{err}");
		let heads = SMOLLM2.replace("\"num_key_value_heads\": 3", "\"num_key_value_heads\": 4");
		assert!(LlamaConfig::from_hf_json(&heads).is_err(), "9 heads cannot share 4");
		let gpt2 = SMOLLM2.replace("\"model_type\": \"llama\"", "\"model_type\": \"gpt2\"");
		assert!(matches!(LlamaConfig::from_hf_json(&gpt2), Err(Error::Unsupported(_))));
		assert!(LlamaConfig::from_hf_json("{}").is_err());
	}
}
