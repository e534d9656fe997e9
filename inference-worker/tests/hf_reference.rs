//! The worker's outputs on the real model (SmolLM2-135M-Instruct, Q4_1 GGUF) against Hugging
//! Face transformers + PEFT on the same file and the same LoRA adapter
//! (`tests/fixtures/hf_smollm2.json`, made by `scripts/reference/hf_reference.py`).
//!
//! Tolerances: transformers dequantizes the GGUF to float32, so the worker with dequantized
//! weights (`WeightFormat::F32`) must match it closely: every greedy token equal, logits and
//! log-probabilities within [`DENSE_TOL`]. With the weights kept in Q4_1/Q8_0 (the serving
//! path, whose matrix products also quantize the activations to 8 bits), the first position's
//! top logits must be within [`QUANTIZED_TOL`], the first greedy token equal, and, fed the
//! reference's tokens one by one (teacher forcing), the reference's token at every step within
//! [`QUANTIZED_TOL`] of the worker's top logit: quantization may flip a near-tie, nothing more.
//!
//! Needs the model: `scripts/fetch-models.sh` (which `scripts/test.sh` runs).

use std::collections::BTreeMap;

use candle_core::Device;
use openledger_inference_worker::{
	generate::{generate, FinishReason, GenerationRequest},
	lora::{
		synthetic::{self, SyntheticAdapter},
		LoraAdapter, Projection,
	},
	model::{KvCache, Llama, WeightFormat},
	models,
	sampling::SamplingParams,
	tokenizer::Tokenizer,
};
use serde::Deserialize;

/// Largest difference allowed between the dense path and transformers (logits and logprobs).
const DENSE_TOL: f32 = 1e-4;
/// Largest difference allowed between the quantized path and transformers (top logits).
const QUANTIZED_TOL: f32 = 0.5;

#[derive(Deserialize)]
struct Fixture {
	adapter: AdapterSpec,
	steps: usize,
	cases: Vec<Case>,
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
	LoraAdapter::load(
		dir,
		Some("fixture"),
		&model.config,
		|l, p| model.projection(l, p).map(|lin| (lin.in_features, lin.out_features)),
		&Device::Cpu,
	)
	.expect("the adapter loads")
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
	let label = format!(
		"{:?} ({}, adapter: {})",
		case.prompt,
		if dense { "f32" } else { "q4_1" },
		adapter.is_some()
	);
	let mut cache = KvCache::new(model, 4096).unwrap();
	let logits = model.forward(&case.prompt_tokens, &mut cache, adapter, false).unwrap();
	let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
	let ours: Vec<f32> = expected.top_logits.iter().map(|(id, _)| logits[*id as usize]).collect();
	let theirs: Vec<f32> = expected.top_logits.iter().map(|(_, l)| *l).collect();
	let logit_diff = max_diff(&ours, &theirs);

	let request = GenerationRequest {
		prompt: case.prompt.clone(),
		max_tokens: steps,
		sampling: SamplingParams::default(),
		stop: vec![],
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
	} else {
		assert!(logit_diff <= QUANTIZED_TOL, "{label}: top logits differ by {logit_diff}");
		assert_eq!(out.tokens[0], expected.tokens[0], "{label}: first greedy token");
		let mut cache = KvCache::new(model, 4096).unwrap();
		let mut input = case.prompt_tokens.clone();
		for (step, &want) in expected.tokens.iter().enumerate() {
			let logits = model.forward(&input, &mut cache, adapter, false).unwrap();
			let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
			let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
			let gap = top - logits[want as usize];
			assert!(
				gap <= QUANTIZED_TOL,
				"{label}, step {step}: the reference's token is {gap} below the top"
			);
			input = vec![want];
		}
	}
	eprintln!("{label}: max top-logit difference {logit_diff:.2e}, tokens {:?}", out.tokens);
	logit_diff
}

fn run(format: WeightFormat) {
	let fixture = fixture();
	let (model, tokenizer) = load(format);
	let dir = tempfile::tempdir().unwrap();
	let lora = adapter(&model, &fixture.adapter, dir.path());
	let dense = format == WeightFormat::F32;
	for case in &fixture.cases {
		check(&model, &tokenizer, None, case, &case.base, fixture.steps, dense);
		check(&model, &tokenizer, Some(&lora), case, &case.adapter, fixture.steps, dense);
		assert_ne!(case.base.tokens, case.adapter.tokens, "the adapter changes the output");
	}
}

#[test]
fn dense_weights_match_transformers_and_peft() {
	run(WeightFormat::F32);
}

#[test]
fn quantized_weights_match_transformers_and_peft_within_tolerance() {
	run(WeightFormat::AsStored);
}
