//! Continuous batching on the real model: requests joining and leaving at every step, chunked
//! prefill, preemption when the KV cache runs out, the "overloaded" error, and a thousand
//! distinct adapters in one run — each request getting what it gets when served alone.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use candle_core::Device;
use openledger_inference_worker::{
	engine::{Completion, Engine, EngineConfig},
	error::Error,
	generate::{generate, Generation, GenerationRequest},
	kv_cache::KvCacheConfig,
	lora::{
		synthetic::{self, SyntheticAdapter},
		Projection,
	},
	model::{Llama, WeightFormat},
	models,
	sampling::SamplingParams,
	tokenizer::Tokenizer,
};

fn load(format: WeightFormat) -> (Arc<Llama>, Arc<Tokenizer>) {
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = Llama::from_gguf(&path, &Device::Cpu, format).unwrap();
	(Arc::new(model), Arc::new(tokenizer))
}

/// Writes a synthetic adapter into `dir`.
fn write_adapter(model: &Llama, dir: &Path, seed: u64, rank: usize, targets: &[Projection]) {
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

fn request(prompt: &str, max_tokens: usize) -> GenerationRequest {
	GenerationRequest {
		prompt: prompt.into(),
		max_tokens,
		sampling: SamplingParams::default(),
		stop: vec![],
	}
}

/// The request served alone by [`generate`].
fn solo(
	model: &Llama,
	tokenizer: &Tokenizer,
	adapter: Option<&str>,
	req: &GenerationRequest,
	dirs: &BTreeMap<String, std::path::PathBuf>,
) -> Generation {
	let adapter = adapter.map(|name| model.load_adapter(&dirs[name], Some(name)).unwrap());
	generate(model, tokenizer, adapter.as_ref(), req).unwrap()
}

/// The completions by request id.
fn by_id(completions: Vec<Completion>) -> BTreeMap<u64, Generation> {
	completions
		.into_iter()
		.map(|c| (c.id, c.result.unwrap_or_else(|e| panic!("request {} failed: {e}", c.id))))
		.collect()
}

/// Same prompt, tokens, text and log-probabilities (within `tol`): serving is invariant to what
/// shares the batch, to prefill chunking and to recompute after preemption (see
/// `Llama::attention`).
fn assert_same(got: &Generation, want: &Generation, what: &str, tol: f32) {
	assert_eq!(got.prompt_tokens, want.prompt_tokens, "{what}");
	assert_eq!(got.tokens, want.tokens, "{what}: generated tokens");
	assert_eq!(got.finish_reason, want.finish_reason, "{what}");
	assert_eq!(got.text, want.text, "{what}");
	let diff =
		got.logprobs.iter().zip(&want.logprobs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
	assert!(diff <= tol, "{what}: logprobs differ by {diff}");
}

/// Largest log-probability difference allowed against serving alone with the quantized weights
/// (the serving path, whose matrix products go row by row): none.
const QUANTIZED_TOL: f32 = 0.0;
/// With f32 weights: the dense matrix product's blocking depends on how many rows it has, which
/// changes the float summation order; the tokens must still be the same.
const DENSE_TOL: f32 = 1e-5;

const PROMPTS: [&str; 6] = [
	"The capital of France is",
	"<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
	"Once upon a time, in a land far away, there lived a",
	"def fibonacci(n):",
	"<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
	"1, 2, 3, 4, 5,",
];

#[test]
fn continuous_batching_with_chunked_prefill_and_preemption_matches_serving_alone() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let mut dirs = BTreeMap::new();
	for (name, seed, rank, targets) in [
		("a", 1, 8, vec![Projection::Q, Projection::V, Projection::Down]),
		("b", 2, 4, Projection::ALL.to_vec()),
	] {
		let dir = root.path().join(name);
		write_adapter(&model, &dir, seed, rank, &targets);
		dirs.insert(name.to_string(), dir);
	}
	let adapters = [None, Some("a"), Some("b"), None, Some("a"), Some("b")];

	// Small steps (prompts are prefilled in chunks) and a KV cache of 12 blocks of 4 tokens:
	// the requests cannot all be cached at once, so some are preempted and recomputed.
	let per_block = KvCacheConfig::bytes_per_block(&model.config, 4);
	let config = EngineConfig {
		kv_cache_bytes: 12 * per_block,
		block_size: 4,
		max_batch_tokens: 10,
		max_running: 4,
		max_waiting: 16,
		adapter_bytes: 64 << 20,
		adapter_host_bytes: 0,
	};
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	for (name, dir) in &dirs {
		engine.register_adapter(name.clone(), dir.clone());
	}
	let requests: Vec<GenerationRequest> =
		PROMPTS.iter().enumerate().map(|(i, p)| request(p, 6 + i % 3)).collect();
	// Half the requests arrive first, the rest while those are running.
	let mut ids = Vec::new();
	for i in 0..3 {
		ids.push(engine.submit(&requests[i], adapters[i]).unwrap());
	}
	let mut completions = Vec::new();
	for _ in 0..4 {
		completions.extend(engine.step());
	}
	assert!(engine.running() > 0, "requests are running when the others arrive");
	for i in 3..PROMPTS.len() {
		ids.push(engine.submit(&requests[i], adapters[i]).unwrap());
	}
	completions.extend(engine.run_to_completion());
	let results = by_id(completions);
	assert_eq!(results.len(), PROMPTS.len());
	for (i, id) in ids.iter().enumerate() {
		let want = solo(&model, &tokenizer, adapters[i], &requests[i], &dirs);
		assert_same(
			&results[id],
			&want,
			&format!("request {i} ({:?})", adapters[i]),
			QUANTIZED_TOL,
		);
	}
	let stats = engine.stats();
	assert!(stats.preemptions > 0, "the small cache forced preemptions: {stats:?}");
	assert!(stats.steps < 60, "requests shared steps: {stats:?}");
	assert_eq!(stats.finished, PROMPTS.len() as u64);
	let cache = engine.kv_cache();
	assert_eq!(
		cache.available_blocks(),
		cache.config().num_blocks,
		"every block is back (cached or free)"
	);
}

#[test]
fn a_shared_prompt_template_is_computed_once() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let mut engine =
		Engine::new(model.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	let template = "<|im_start|>system\nYou are a helpful assistant that answers in one short \
	                sentence, citing the records you were given.<|im_end|>\n<|im_start|>user\n";
	let questions = ["What is 2+2?", "Name a colour.", "Where is Paris?"];
	let requests: Vec<GenerationRequest> = questions
		.iter()
		.map(|q| request(&format!("{template}{q}<|im_end|>\n<|im_start|>assistant\n"), 4))
		.collect();
	let first = engine.submit(&requests[0], None).unwrap();
	let mut results = by_id(engine.run_to_completion());
	let computed_alone = engine.stats().tokens_computed;
	let ids: Vec<u64> = requests[1..].iter().map(|r| engine.submit(r, None).unwrap()).collect();
	results.extend(by_id(engine.run_to_completion()));
	let stats = engine.stats();
	let template_tokens = tokenizer.encode(template).unwrap().len() as u64;
	let reusable = template_tokens / KvCacheConfig::DEFAULT_BLOCK_SIZE as u64
		* KvCacheConfig::DEFAULT_BLOCK_SIZE as u64;
	assert!(reusable > 0);
	assert!(
		stats.tokens_reused >= 2 * reusable,
		"each later request reused the template's full blocks: {stats:?}, {reusable} per request"
	);
	assert!(stats.tokens_computed - computed_alone < 2 * computed_alone - 2 * reusable + 8);
	let dirs = BTreeMap::new();
	for (req, id) in requests.iter().zip(std::iter::once(&first).chain(&ids)) {
		let want = solo(&model, &tokenizer, None, req, &dirs);
		assert_same(&results[id], &want, &req.prompt, QUANTIZED_TOL);
	}
}

#[test]
fn bad_requests_and_a_full_queue_get_clear_errors() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let per_block = KvCacheConfig::bytes_per_block(&model.config, 16);
	let config =
		EngineConfig { kv_cache_bytes: 4 * per_block, max_waiting: 2, ..EngineConfig::default() };
	let mut engine = Engine::new(model.clone(), tokenizer, config).unwrap();
	let ok = request("Hello", 2);
	let err = engine.submit(&ok, Some("nobody")).unwrap_err();
	assert!(err.to_string().contains("no adapter is registered"), "{err}");
	let err = engine.submit(&request("", 2), None).unwrap_err();
	assert!(err.to_string().contains("the prompt is empty"), "{err}");
	let err = engine.submit(&request("Hello", 0), None).unwrap_err();
	assert!(err.to_string().contains("max_tokens is 0"), "{err}");
	let err = engine.submit(&request("Hello", 100), None).unwrap_err();
	assert!(err.to_string().contains("need 7 KV blocks, the cache has 4"), "{err}");
	let mut bad_sampling = request("Hello", 2);
	bad_sampling.sampling.top_p = 0.0;
	assert!(engine.submit(&bad_sampling, None).is_err());
	// A broken adapter fails its own request only.
	let root = tempfile::tempdir().unwrap();
	std::fs::create_dir_all(root.path().join("broken")).unwrap();
	std::fs::write(root.path().join("broken/adapter_config.json"), b"{not json").unwrap();
	std::fs::write(root.path().join("broken/adapter_model.safetensors"), b"").unwrap();
	engine.register_adapter("broken", root.path().join("broken"));
	let broken = engine.submit(&ok, Some("broken")).unwrap();
	let fine = engine.submit(&ok, None).unwrap();
	let err = engine.submit(&ok, None).unwrap_err();
	assert!(matches!(err, Error::Overloaded { queued: 2 }), "{err}");
	assert!(err.to_string().contains("overloaded"));
	let done: BTreeMap<u64, _> =
		engine.run_to_completion().into_iter().map(|c| (c.id, c.result)).collect();
	let broken_err = done[&broken].as_ref().unwrap_err().to_string();
	assert!(broken_err.contains("bad adapter_config.json"), "{broken_err}");
	assert_eq!(done[&fine].as_ref().unwrap().tokens.len(), 2);
	assert_eq!(engine.stats().rejected, 1);
	// With the queue drained, requests are accepted again.
	engine.submit(&ok, None).unwrap();
}

/// A thousand distinct adapters, more than the adapter cache holds at once, in one run on the
/// real model (dense weights, so that a batch step costs what its rows cost).
#[test]
fn a_thousand_distinct_adapters_in_one_run() {
	const ADAPTERS: usize = 1000;
	let (model, tokenizer) = load(WeightFormat::F32);
	let root = tempfile::tempdir().unwrap();
	let mut dirs = BTreeMap::new();
	for i in 0..ADAPTERS {
		let name = format!("adapter-{i:04}");
		let dir = root.path().join(&name);
		let rank = 1 + i % 4;
		write_adapter(&model, &dir, 1000 + i as u64, rank, &[Projection::Q, Projection::V]);
		dirs.insert(name, dir);
	}
	let one = model.load_adapter(&dirs["adapter-0000"], Some("x")).unwrap().size_bytes;
	let config = EngineConfig {
		max_batch_tokens: 256,
		max_running: 64,
		max_waiting: ADAPTERS,
		// Room for about a quarter of them: the rest are evicted and loaded again as needed.
		adapter_bytes: ADAPTERS / 4 * one * 2,
		..EngineConfig::default()
	};
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	for (name, dir) in &dirs {
		engine.register_adapter(name.clone(), dir.clone());
	}
	let req = request("The capital of France is", 2);
	let mut ids = Vec::with_capacity(ADAPTERS);
	for name in dirs.keys() {
		ids.push((engine.submit(&req, Some(name)).unwrap(), name.clone()));
	}
	let started = std::time::Instant::now();
	let results = by_id(engine.run_to_completion());
	let elapsed = started.elapsed();
	assert_eq!(results.len(), ADAPTERS, "every request finished");
	let stats = engine.adapters().stats();
	assert!(stats.loads >= ADAPTERS as u64, "{stats:?}");
	assert!(stats.evictions > 0, "the cache was smaller than the adapters: {stats:?}");
	assert!(engine.adapters().used_bytes() <= ADAPTERS / 4 * one * 2);
	// The adapters matter: their outputs are not all the base model's.
	let base = generate(&model, &tokenizer, None, &req).unwrap();
	let differing = results.values().filter(|g| g.logprobs != base.logprobs).count();
	assert!(differing > ADAPTERS / 2, "{differing} of {ADAPTERS} differ from the base model");
	// A sample of them, each against serving it alone.
	for &(id, ref name) in ids.iter().step_by(97) {
		let want = solo(&model, &tokenizer, Some(name), &req, &dirs);
		assert_same(&results[&id], &want, name, DENSE_TOL);
	}
	eprintln!(
		"{ADAPTERS} adapters: {:.1} s, {} steps, {:?}",
		elapsed.as_secs_f64(),
		engine.stats().steps,
		stats
	);
}
