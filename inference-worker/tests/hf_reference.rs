//! The worker's outputs on the real model (SmolLM2-135M-Instruct, Q4_1 GGUF) against Hugging
//! Face transformers + PEFT on the same file and the same LoRA adapter
//! (`tests/fixtures/hf_smollm2.json`, made by `scripts/reference/hf_reference.py`).
//!
//! Tolerances: transformers dequantizes the GGUF to float32, so the worker with dequantized
//! weights (`WeightFormat::F32`) must match it closely: every greedy token equal, logits and
//! log-probabilities within [`DENSE_TOL`]. So must the serving path, the weights kept in the
//! GGUF's Q4_1/Q8_0 blocks (`WeightFormat::AsStored`): its CPU product
//! (`openledger_kernels::cpu_matmul`) multiplies by exactly the values transformers dequantizes
//! to, in f32. With the weights quantized again at load time (8 or 4 bits, so no longer the
//! file's values), the first position's top logits must be within [`quantized_tol`], the first
//! greedy token equal, and, fed the reference's tokens one by one (teacher forcing), the
//! reference's token at every step within [`quantized_tol`] of the worker's top logit:
//! quantization may flip a near-tie, nothing more.
//!
//! Needs the model: `scripts/fetch-models.sh` (which `scripts/test.sh` runs).

use std::{
	collections::{BTreeMap, HashMap},
	path::Path,
};

use candle_core::{quantized::gguf_file, Device, Tensor};
use openledger_inference_worker::{
	chat::Message,
	generate::{generate, FinishReason, GenerationRequest},
	lora::{
		synthetic::{self, SyntheticAdapter},
		LoraAdapter, Projection,
	},
	model::{KvCache, Llama, WeightFormat},
	models,
	sampling::{argmax, SamplingParams},
	tokenizer::Tokenizer,
};
use serde::Deserialize;

/// Largest difference allowed between the dense path and transformers (logits and logprobs).
const DENSE_TOL: f32 = 1e-4;
/// Largest difference allowed between transformers and the weights quantized again at load
/// time (top logits, and the reference token's gap to the top when teacher-forced).
fn quantized_tol(format: WeightFormat) -> f32 {
	match format {
		WeightFormat::Int4 => 1.0,
		_ => 0.5,
	}
}

#[derive(Deserialize)]
struct Fixture {
	adapter: AdapterSpec,
	steps: usize,
	cases: Vec<Case>,
	chats: Vec<Chat>,
	tiny_prompt: Vec<u32>,
	tiny_models: BTreeMap<String, TinyModel>,
}

/// A tiny model of another supported shape, weights from [`tiny_value`], and what transformers
/// computes with it.
#[derive(Deserialize)]
struct TinyModel {
	config: serde_json::Value,
	tensors: Vec<String>,
	logits: Vec<f32>,
	tokens: Vec<u32>,
}

/// A conversation rendered by transformers' `apply_chat_template` with the GGUF's template.
#[derive(Deserialize)]
struct Chat {
	messages: Vec<Message>,
	text: String,
	prompt_tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct AdapterSpec {
	r: usize,
	lora_alpha: f64,
	target_modules: Vec<String>,
	rank_pattern: BTreeMap<String, usize>,
	alpha_pattern: BTreeMap<String, f64>,
	seed: u64,
}

#[derive(Deserialize)]
struct Case {
	prompt: String,
	prompt_tokens: Vec<u32>,
	base: Expected,
	adapter: Expected,
}

#[derive(Deserialize)]
struct Expected {
	top_logits: Vec<(u32, f32)>,
	tokens: Vec<u32>,
	logprobs: Vec<f32>,
	prompt_logprobs: PromptScores,
}

/// Each prompt token's log-probability after the first, and the 5 most likely tokens at each
/// prompt position, from transformers' `log_softmax` over the whole prompt's logits.
#[derive(Deserialize)]
struct PromptScores {
	logprobs: Vec<f32>,
	top_logprobs: Vec<Vec<(u32, f32)>>,
}

fn fixture() -> Fixture {
	let text = include_str!("fixtures/hf_smollm2.json");
	serde_json::from_str(text).expect("the fixture parses")
}

fn projection(name: &str) -> Projection {
	*Projection::ALL.iter().find(|p| p.hf_name() == name).expect("a Llama projection")
}

fn load(format: WeightFormat) -> (Llama, Tokenizer) {
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	Llama::from_gguf(&path, &Device::Cpu, format).expect("the real model loads")
}

/// The fixture's adapter, written as a PEFT folder and loaded.
fn adapter(model: &Llama, spec: &AdapterSpec, dir: &std::path::Path) -> LoraAdapter {
	let synthetic = SyntheticAdapter {
		seed: spec.seed,
		rank: spec.r,
		alpha: spec.lora_alpha,
		targets: spec.target_modules.iter().map(|m| projection(m)).collect(),
		rank_pattern: spec.rank_pattern.iter().map(|(m, r)| (projection(m), *r)).collect(),
		alpha_pattern: spec.alpha_pattern.iter().map(|(m, a)| (projection(m), *a)).collect(),
	};
	synthetic::write(&synthetic, &model.config, dir).expect("the adapter is written");
	model.load_adapter(dir, Some("fixture")).expect("the adapter loads")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
	a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Compares one case; returns the largest top-logit difference.
fn check(
	model: &Llama,
	tokenizer: &Tokenizer,
	adapter: Option<&LoraAdapter>,
	case: &Case,
	expected: &Expected,
	steps: usize,
	dense: bool,
) -> f32 {
	let label = format!("{:?} ({:?}, adapter: {})", case.prompt, model.format, adapter.is_some());
	let mut cache = KvCache::new(model, 4096).unwrap();
	let logits = model.forward(&case.prompt_tokens, &mut cache, adapter, false).unwrap();
	let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
	let ours: Vec<f32> = expected.top_logits.iter().map(|(id, _)| logits[*id as usize]).collect();
	let theirs: Vec<f32> = expected.top_logits.iter().map(|(_, l)| *l).collect();
	let logit_diff = max_diff(&ours, &theirs);

	let request = GenerationRequest {
		prompt: case.prompt.as_str().into(),
		max_tokens: steps,
		sampling: SamplingParams { top_logprobs: 5, ..SamplingParams::default() },
		stop: vec![],
		prompt_logprobs: Some(5),
		..Default::default()
	};
	let out = generate(model, tokenizer, adapter, &request).unwrap();
	assert_eq!(out.prompt_tokens, case.prompt_tokens, "{label}: prompt tokens");
	if out.finish_reason == FinishReason::Eos {
		assert_eq!(out.tokens.last(), tokenizer.eos.as_ref(), "{label}");
	}
	let n = out.tokens.len();
	if dense {
		assert!(logit_diff <= DENSE_TOL, "{label}: top logits differ by {logit_diff}");
		assert_eq!(out.tokens[..], expected.tokens[..n], "{label}: greedy tokens");
		let lp = max_diff(&out.logprobs, &expected.logprobs[..n]);
		assert!(lp <= DENSE_TOL, "{label}: logprobs differ by {lp}");
		// The five most likely first tokens: transformers' top logits less its log-normaliser
		// (its top token's logit less that token's log-probability).
		assert_eq!(expected.top_logits[0].0, expected.tokens[0], "{label}");
		let norm = expected.top_logits[0].1 - expected.logprobs[0];
		let theirs: Vec<(u32, f32)> =
			expected.top_logits[..5].iter().map(|&(id, logit)| (id, logit - norm)).collect();
		let ours = &out.top_logprobs[0];
		let ids = |top: &[(u32, f32)]| top.iter().map(|&(id, _)| id).collect::<Vec<_>>();
		assert_eq!(ids(ours), ids(&theirs), "{label}: the five most likely first tokens");
		let values = |top: &[(u32, f32)]| top.iter().map(|&(_, lp)| lp).collect::<Vec<_>>();
		let top_diff = max_diff(&values(ours), &values(&theirs));
		assert!(top_diff <= DENSE_TOL, "{label}: top log-probabilities differ by {top_diff}");
		assert!(out.top_logprobs.iter().all(|top| top.len() == 5), "{label}");
		// The prompt's log-probabilities (echo with logprobs): every position's logits.
		let prompt = out.prompt_logprobs.as_ref().expect("asked for");
		let theirs = &expected.prompt_logprobs;
		assert_eq!(prompt.logprobs.len(), case.prompt_tokens.len() - 1, "{label}");
		let diff = max_diff(&prompt.logprobs, &theirs.logprobs);
		assert!(diff <= DENSE_TOL, "{label}: prompt logprobs differ by {diff}");
		for (i, (ours, theirs)) in prompt.top_logprobs.iter().zip(&theirs.top_logprobs).enumerate()
		{
			assert_eq!(
				ids(ours),
				ids(theirs),
				"{label}: most likely tokens at prompt position {i}"
			);
			let diff = max_diff(&values(ours), &values(theirs));
			assert!(diff <= DENSE_TOL, "{label}: prompt position {i}'s top differ by {diff}");
		}
		eprintln!("{label}: prompt logprobs within {diff:.2e} of transformers");
	} else {
		assert!(
			logit_diff <= quantized_tol(model.format),
			"{label}: top logits differ by {logit_diff}"
		);
		assert_eq!(out.tokens[0], expected.tokens[0], "{label}: first greedy token");
		let mut cache = KvCache::new(model, 4096).unwrap();
		let mut input = case.prompt_tokens.clone();
		let mut max_gap = 0f32;
		for (step, &want) in expected.tokens.iter().enumerate() {
			let logits = model.forward(&input, &mut cache, adapter, false).unwrap();
			let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
			let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
			let gap = top - logits[want as usize];
			max_gap = max_gap.max(gap);
			assert!(
				gap <= quantized_tol(model.format),
				"{label}, step {step}: the reference's token is {gap} below the top"
			);
			input = vec![want];
		}
		eprintln!("{label}: the reference's tokens at most {max_gap:.2e} below the top");
	}
	eprintln!("{label}: max top-logit difference {logit_diff:.2e}, tokens {:?}", out.tokens);
	logit_diff
}

fn run(path: &Path, format: WeightFormat) {
	let fixture = fixture();
	let (model, tokenizer) = Llama::load(path, &Device::Cpu, format).expect("the model loads");
	let dir = tempfile::tempdir().unwrap();
	let lora = adapter(&model, &fixture.adapter, dir.path());
	// The file's own values, dequantized or kept in their blocks: as close as f32 gets.
	let dense = matches!(format, WeightFormat::F32 | WeightFormat::AsStored);
	for case in &fixture.cases {
		check(&model, &tokenizer, None, case, &case.base, fixture.steps, dense);
		check(&model, &tokenizer, Some(&lora), case, &case.adapter, fixture.steps, dense);
		assert_ne!(case.base.tokens, case.adapter.tokens, "the adapter changes the output");
	}
}

#[test]
fn dense_weights_match_transformers_and_peft() {
	run(&models::smollm2_gguf(), WeightFormat::F32);
}

#[test]
fn weights_kept_in_their_gguf_blocks_match_transformers_and_peft_as_closely_as_dense_ones() {
	run(&models::smollm2_gguf(), WeightFormat::AsStored);
}

/// The same model as a Hugging Face folder (`config.json`, `model.safetensors` in Hugging
/// Face's tensor names and row order, `tokenizer.json`), written from the GGUF's weights.
fn hf_folder(dir: &Path) {
	let path = models::smollm2_gguf();
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let cfg = &model.config;
	let mut file = std::fs::File::open(&path).unwrap();
	let content = gguf_file::Content::read(&mut file).unwrap();
	let mut tensors = HashMap::new();
	let mut dense = |name: &str| -> Tensor {
		content.tensor(&mut file, name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap()
	};
	// llama.cpp interleaved the rows of Q and K for its RoPE; Hugging Face rotates halves.
	let unpermute = |w: Tensor, heads: usize| -> Tensor {
		let (out, input) = w.dims2().unwrap();
		w.reshape((heads, out / heads / 2, 2, input))
			.unwrap()
			.transpose(1, 2)
			.unwrap()
			.contiguous()
			.unwrap()
			.reshape((out, input))
			.unwrap()
	};
	tensors.insert("model.embed_tokens.weight".to_string(), dense("token_embd.weight"));
	tensors.insert("model.norm.weight".to_string(), dense("output_norm.weight"));
	for l in 0..cfg.num_layers {
		let hf = |p: &str| format!("model.layers.{l}.{p}.weight");
		let gg = |p: &str| format!("blk.{l}.{p}.weight");
		tensors.insert(hf("input_layernorm"), dense(&gg("attn_norm")));
		tensors.insert(hf("post_attention_layernorm"), dense(&gg("ffn_norm")));
		tensors.insert(hf("self_attn.q_proj"), unpermute(dense(&gg("attn_q")), cfg.num_heads));
		tensors.insert(hf("self_attn.k_proj"), unpermute(dense(&gg("attn_k")), cfg.num_kv_heads));
		for (h, g) in [
			("self_attn.v_proj", "attn_v"),
			("self_attn.o_proj", "attn_output"),
			("mlp.gate_proj", "ffn_gate"),
			("mlp.up_proj", "ffn_up"),
			("mlp.down_proj", "ffn_down"),
		] {
			tensors.insert(hf(h), dense(&gg(g)));
		}
	}
	candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
	let config = serde_json::json!({
		"model_type": "llama",
		"vocab_size": cfg.vocab_size,
		"hidden_size": cfg.hidden_size,
		"intermediate_size": cfg.intermediate_size,
		"num_hidden_layers": cfg.num_layers,
		"num_attention_heads": cfg.num_heads,
		"num_key_value_heads": cfg.num_kv_heads,
		"rope_theta": cfg.rope_theta,
		"rms_norm_eps": cfg.rms_norm_eps,
		"max_position_embeddings": cfg.context_length,
		"tie_word_embeddings": true,
	});
	std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
	tokenizer.save(&dir.join("tokenizer.json")).unwrap();
	let token = |id: Option<u32>| id.map(|id| tokenizer.decode(&[id]).unwrap());
	let tokenizer_config = serde_json::json!({
		"bos_token": token(tokenizer.bos),
		"eos_token": token(tokenizer.eos),
		"add_bos_token": tokenizer.add_bos,
		"chat_template": tokenizer.chat_template,
	});
	std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
	let (_, reloaded) = Llama::load(dir, &Device::Cpu, WeightFormat::F32).unwrap();
	assert_eq!((reloaded.bos, reloaded.eos), (tokenizer.bos, tokenizer.eos));
	assert_eq!(reloaded.chat_template, tokenizer.chat_template);
}

#[test]
fn a_safetensors_folder_matches_transformers_and_peft() {
	let dir = tempfile::tempdir().unwrap();
	hf_folder(dir.path());
	run(dir.path(), WeightFormat::F32);
}

#[test]
fn int8_and_int4_quantized_at_load_time_within_tolerance() {
	let dir = tempfile::tempdir().unwrap();
	hf_folder(dir.path());
	run(dir.path(), WeightFormat::Int8);
	run(dir.path(), WeightFormat::Int4);
}

#[test]
fn the_chat_template_renders_as_transformers_does() {
	let fixture = fixture();
	let (_, tokenizer) = load(WeightFormat::AsStored);
	let template = tokenizer.chat_template().expect("the GGUF has a chat template");
	assert!(!fixture.chats.is_empty());
	for chat in &fixture.chats {
		let text = template.render(&chat.messages, true).unwrap();
		assert_eq!(text, chat.text);
		assert_eq!(tokenizer.encode(&text).unwrap(), chat.prompt_tokens);
	}
}

/// The same values as `tiny_value` in `scripts/reference/hf_reference.py`.
fn tiny_value(name: &str, shape: &[usize]) -> Vec<f32> {
	let sum: usize = name.bytes().enumerate().map(|(k, b)| (k + 1) * b as usize).sum();
	let phase = (sum % 997) as f64 * 0.01;
	let (base, amplitude) = if name.ends_with("norm.weight") {
		(1.0, 0.1)
	} else if name.ends_with(".bias") {
		(0.0, 0.05)
	} else {
		(0.0, 1.0 / (shape[shape.len() - 1] as f64).sqrt())
	};
	let (rows, cols) = (shape[0], if shape.len() > 1 { shape[1] } else { 1 });
	let mut values = Vec::with_capacity(rows * cols);
	for i in 0..rows {
		for j in 0..cols {
			let (i, j) = (i as f64, j as f64);
			values.push(
				(base + amplitude * (phase + i * 0.37 + j * 0.11 + i * j * 0.013).sin()) as f32,
			);
		}
	}
	values
}

/// The shape of a Hugging Face Llama/Qwen2 tensor, from the model's `config.json`.
fn tiny_shape(name: &str, config: &serde_json::Value) -> Vec<usize> {
	let get = |key: &str| config[key].as_u64().unwrap() as usize;
	let (vocab, hidden, inter) = (get("vocab_size"), get("hidden_size"), get("intermediate_size"));
	let head_dim = hidden / get("num_attention_heads");
	let q = get("num_attention_heads") * head_dim;
	let kv = get("num_key_value_heads") * head_dim;
	let bias = name.ends_with(".bias");
	let matrix = |out: usize, input: usize| if bias { vec![out] } else { vec![out, input] };
	match name {
		_ if name.contains("embed_tokens") || name.starts_with("lm_head") => vec![vocab, hidden],
		_ if name.ends_with("norm.weight") => vec![hidden],
		_ if name.contains("q_proj") => matrix(q, hidden),
		_ if name.contains("k_proj") || name.contains("v_proj") => matrix(kv, hidden),
		_ if name.contains("o_proj") => matrix(hidden, q),
		_ if name.contains("gate_proj") || name.contains("up_proj") => matrix(inter, hidden),
		_ if name.contains("down_proj") => matrix(hidden, inter),
		other => panic!("unexpected tensor {other}"),
	}
}

#[test]
fn tiny_qwen2_scaled_llama_and_sliding_mistral_folders_match_transformers() {
	let fixture = fixture();
	assert_eq!(fixture.tiny_models.len(), 3);
	for (name, tiny) in &fixture.tiny_models {
		let dir = tempfile::tempdir().unwrap();
		let mut tensors = HashMap::new();
		for tensor in &tiny.tensors {
			let shape = tiny_shape(tensor, &tiny.config);
			let values = Tensor::from_vec(tiny_value(tensor, &shape), shape, &Device::Cpu).unwrap();
			tensors.insert(tensor.clone(), values);
		}
		if name == "llama_scaled" {
			// Two shards and their index, as large checkpoints come.
			let mut names: Vec<&String> = tensors.keys().collect();
			names.sort();
			let (first, second) = names.split_at(names.len() / 2);
			let mut weight_map = serde_json::Map::new();
			for (file, part) in [
				("model-00001-of-00002.safetensors", first),
				("model-00002-of-00002.safetensors", second),
			] {
				let shard: HashMap<&String, Tensor> =
					part.iter().map(|n| (*n, tensors[*n].clone())).collect();
				candle_core::safetensors::save(&shard, dir.path().join(file)).unwrap();
				for n in part {
					weight_map.insert((*n).clone(), serde_json::Value::from(file));
				}
			}
			let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
			std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string())
				.unwrap();
		} else {
			candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
		}
		std::fs::write(dir.path().join("config.json"), tiny.config.to_string()).unwrap();
		let vocab: serde_json::Map<String, serde_json::Value> =
			(0..tiny.logits.len()).map(|i| (format!("t{i}"), serde_json::Value::from(i))).collect();
		let tokenizer = serde_json::json!({
			"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
			"normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
			"decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
		});
		std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
		let (model, _) = Llama::load(dir.path(), &Device::Cpu, WeightFormat::F32)
			.unwrap_or_else(|e| panic!("{name}: {e}"));
		let mut cache = KvCache::new(&model, 64).unwrap();
		let mut input = fixture.tiny_prompt.clone();
		let mut tokens = Vec::new();
		for step in 0..tiny.tokens.len() {
			let logits = model.forward(&input, &mut cache, None, false).unwrap();
			let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
			if step == 0 {
				let diff = max_diff(&logits, &tiny.logits);
				eprintln!("tiny {name}: logits within {diff:.2e} of transformers");
				assert!(diff <= 1e-5, "{name}: logits differ by {diff}");
			}
			let token = argmax(&logits) as u32;
			tokens.push(token);
			input = vec![token];
		}
		assert_eq!(tokens, tiny.tokens, "{name}: greedy tokens");
		if tiny.config.get("sliding_window").is_some() {
			// The window matters: without it the logits are not transformers'.
			let mut config = tiny.config.clone();
			config.as_object_mut().unwrap().remove("sliding_window");
			std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
			let (full, _) = Llama::load(dir.path(), &Device::Cpu, WeightFormat::F32).unwrap();
			let mut cache = KvCache::new(&full, 64).unwrap();
			let logits = full.forward(&fixture.tiny_prompt, &mut cache, None, false).unwrap();
			let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
			assert!(max_diff(&logits, &tiny.logits) > 1e-3, "{name}: the window changed nothing");
		}
	}
}
