//! What the worker's integration tests share: the real model, synthetic adapters, greedy
//! requests, and a decoder whose steps can be made to fail and whose answers can be steered.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::{
	collections::BTreeMap,
	path::Path,
	sync::{
		atomic::{AtomicU64, Ordering},
		Arc, Mutex,
	},
};

use candle_core::Device;
use openledger_inference_worker::{
	attribution::{answer_logprob, Ablations, Method, SourcedPrompt},
	config::LlamaConfig,
	decoder::{Decoder, Next, Want},
	error::{Error, Result},
	generate::GenerationRequest,
	generate::{generate, Generation},
	kv_cache::{KvCacheConfig, PagedKvCache},
	lora::{
		synthetic::{self, SyntheticAdapter},
		AdapterFiles, LoraAdapter, Projection,
	},
	model::{KvCache, Llama, SequenceInput, WeightFormat},
	models,
	sampling::SamplingParams,
	tokenizer::Tokenizer,
};

/// The real model (SmolLM2-135M-Instruct) with its weights in `format`, and its tokenizer.
pub fn load(format: WeightFormat) -> (Arc<Llama>, Arc<Tokenizer>) {
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = Llama::from_gguf(&path, &Device::Cpu, format).unwrap();
	(Arc::new(model), Arc::new(tokenizer))
}

/// A conversation that called two tools (OpenAI's messages): the weather's answer (the
/// second) holds what the user asks, the clock's nothing.
pub fn called_tools() -> serde_json::Value {
	serde_json::json!([
		{"role": "user", "content": "What is the temperature in Paris right now?"},
		{"role": "assistant", "content": null, "tool_calls": [
			{"id": "call_t", "type": "function",
				"function": {"name": "get_time", "arguments": "{\"city\": \"Paris\"}"}},
			{"id": "call_w", "type": "function",
				"function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
		]},
		{"role": "tool", "tool_call_id": "call_t", "name": "clock", "content": "It is 14:05."},
		{"role": "tool", "tool_call_id": "call_w", "content": "Paris: 31 degrees Celsius, sunny."}
	])
}

/// The library's greedy answer (`max_tokens`) to `prompt` with every source, the answer's
/// log-probability under each leave-one-out ablation, and each source's score.
pub fn leave_one_out(
	model: &Llama,
	tokenizer: &Tokenizer,
	prompt: &SourcedPrompt,
	max_tokens: usize,
) -> (Generation, Vec<f64>, Vec<f64>) {
	let mut request = greedy("", max_tokens);
	request.prompt = prompt.all().into();
	let answer = generate(model, tokenizer, None, &request).unwrap();
	let loo = Ablations::new(Method::LeaveOneOut, prompt.len()).unwrap();
	let logprobs: Vec<f64> = loo
		.requests(prompt, &answer.tokens)
		.iter()
		.map(|r| {
			let scored = generate(model, tokenizer, None, r).unwrap();
			answer_logprob(&scored, answer.tokens.len()).unwrap()
		})
		.collect();
	let scores = loo.scores(&logprobs).unwrap();
	(answer, logprobs, scores)
}

/// Writes a synthetic PEFT adapter of `rank` (alpha twice the rank) on `targets` into `dir`.
pub fn write_adapter(model: &Llama, dir: &Path, seed: u64, rank: usize, targets: &[Projection]) {
	let spec = SyntheticAdapter {
		seed,
		rank,
		alpha: 2.0 * rank as f64,
		targets: targets.to_vec(),
		rank_pattern: BTreeMap::new(),
		alpha_pattern: BTreeMap::new(),
	};
	synthetic::write(&spec, &model.config, dir).unwrap();
}

/// `model`'s logits at the last position of `prompt`, computed whole in a cache of its own.
pub fn last_logits(model: &Llama, prompt: &[u32]) -> Vec<f32> {
	let mut cache = KvCache::new(model, prompt.len()).unwrap();
	model.forward(prompt, &mut cache, None, false).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

/// A greedy request for `max_tokens` tokens after `prompt`.
pub fn greedy(prompt: &str, max_tokens: usize) -> GenerationRequest {
	GenerationRequest {
		prompt: prompt.into(),
		max_tokens,
		sampling: SamplingParams::default(),
		stop: vec![],
		..Default::default()
	}
}

/// A decoder that is `D` except that the step numbered [`Flaky::fail_step`] fails, as a device
/// fault would; it also counts the rows of prompt logits each step brings back, and may be
/// steered toward a scripted answer ([`Flaky::steered`]).
pub struct Flaky<D> {
	inner: Arc<D>,
	/// The script steered toward (none: not steered), and the last tokens run (as many).
	script: Vec<u32>,
	seen: Mutex<Vec<u32>>,
	/// Steps run (failed ones included).
	steps: AtomicU64,
	/// The most rows of prompt logits one step brought back.
	max_rows: AtomicU64,
	/// The step (counting from 1) that fails; 0 for none.
	fail_at: AtomicU64,
}

impl<D: Decoder> Flaky<D> {
	/// `inner`, not failing until told to.
	pub fn new(inner: Arc<D>) -> Self {
		Self {
			inner,
			script: Vec::new(),
			seen: Mutex::new(Vec::new()),
			steps: AtomicU64::new(0),
			max_rows: AtomicU64::new(0),
			fail_at: AtomicU64::new(0),
		}
	}

	/// How much a scripted token's logit is raised.
	pub const PUSH: f32 = 60.0;

	/// Steered toward `script`: at each step the logit of the script's next token is raised by
	/// [`Flaky::PUSH`], the next token being the one after the longest end of the tokens run
	/// that begins the script. The answer follows the script for as long as its tokens may be
	/// picked (a grammar may refuse them), then is the model's own. The script's first token
	/// should only begin the answers to steer (`<|im_start|>`, say); one sequence at a time.
	pub fn steered(mut self, script: Vec<u32>) -> Self {
		self.script = script;
		self
	}

	/// Raises the logit of the script's next token in `next`, after the tokens of `batch`.
	fn steer(&self, batch: &[SequenceInput<'_>], next: &mut [Next]) {
		if self.script.is_empty() {
			return;
		}
		let mut seen = self.seen.lock().unwrap();
		for input in batch {
			seen.extend_from_slice(input.tokens);
		}
		let keep = seen.len().saturating_sub(self.script.len());
		seen.drain(..keep);
		let matched = (1..self.script.len()).rev().find(|&k| seen.ends_with(&self.script[..k]));
		let Some(token) = matched.map(|k| self.script[k] as usize) else { return };
		for next in next {
			let row = match next {
				Next::Logits(row) => Some(row),
				Next::Rows(rows) => rows.last_mut(),
				_ => None,
			};
			if let Some(logit) = row.and_then(|row| row.get_mut(token)) {
				*logit += Self::PUSH;
			}
		}
	}

	/// The most rows of prompt logits one step has brought back.
	pub fn max_rows(&self) -> u64 {
		self.max_rows.load(Ordering::SeqCst)
	}

	/// Steps run so far.
	pub fn steps(&self) -> u64 {
		self.steps.load(Ordering::SeqCst)
	}

	/// Makes the `after`-th step from now fail (1: the next one).
	pub fn fail_step(&self, after: u64) {
		self.fail_at.store(self.steps() + after, Ordering::SeqCst);
	}
}

impl<D: Decoder> Decoder for Flaky<D> {
	type Store = D::Store;
	type Residency = D::Residency;

	fn config(&self) -> &LlamaConfig {
		self.inner.config()
	}

	fn max_sequence(&self) -> usize {
		self.inner.max_sequence()
	}

	fn kv_cache(&self, kv: KvCacheConfig) -> Result<PagedKvCache<D::Store>> {
		self.inner.kv_cache(kv)
	}

	fn residency(&self, budget_bytes: usize) -> Result<D::Residency> {
		self.inner.residency(budget_bytes)
	}

	fn adapter_from_files(&self, name: &str, files: &AdapterFiles) -> Result<LoraAdapter> {
		self.inner.adapter_from_files(name, files)
	}

	fn adapters_fit(&self, residency: &D::Residency, adapters: &[&LoraAdapter]) -> bool {
		self.inner.adapters_fit(residency, adapters)
	}

	fn samples(&self) -> bool {
		self.inner.samples()
	}

	fn step(
		&self,
		cache: &mut PagedKvCache<D::Store>,
		residency: &mut D::Residency,
		batch: &mut [SequenceInput<'_>],
		wants: &[Want],
	) -> Result<Vec<Next>> {
		let step = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
		if step == self.fail_at.load(Ordering::SeqCst) {
			return Err(Error::Unsupported(format!("step {step} failed on purpose")));
		}
		let mut next = self.inner.step(cache, residency, batch, wants)?;
		self.steer(batch, &mut next);
		let rows: usize =
			next.iter().map(|n| if let Next::Rows(rows) = n { rows.len() } else { 0 }).sum();
		self.max_rows.fetch_max(rows as u64, Ordering::SeqCst);
		Ok(next)
	}
}
