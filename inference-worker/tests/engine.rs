//! Continuous batching on the real model: requests joining and leaving at every step, chunked
//! prefill, preemption when the KV cache runs out, the "overloaded" error, and a thousand
//! distinct adapters in one run — each request getting what it gets when served alone. The
//! same scheduler over the decoder composed of kernel calls (CPU references), with an adapter
//! pool too small for every adapter at once.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use openledger_inference_worker::{
	config::LlamaConfig,
	decoder::{Decoder, Want},
	engine::{Completion, Engine, EngineConfig, PROMPT_LOGITS_CHUNK},
	error::Error,
	generate::{generate, generate_with_kernels, Generation, GenerationRequest},
	kernel_model::KernelLlama,
	kv_cache::{BlockTable, KvCacheConfig},
	lora::{AdapterFiles, AdapterSource, Projection},
	model::{Llama, WeightFormat},
	models,
	sampling::SamplingParams,
	tokenizer::Tokenizer,
};
use openledger_kernels::backend::Cpu;
use openledger_primitives::adapter_content_hash;

mod common;
use common::{greedy, load, write_adapter};

/// Adapters a, b and c: (name, seed, rank, targets).
const ADAPTERS: [(&str, u64, usize, &[Projection]); 3] = [
	("a", 1, 8, &[Projection::Q, Projection::V, Projection::Down]),
	("b", 2, 4, &Projection::ALL),
	("c", 3, 8, &[Projection::K, Projection::O, Projection::Up]),
];

/// Writes each of `specs` into a folder of `root` named after it; returns the folders by name.
fn write_adapters(
	model: &Llama,
	root: &Path,
	specs: &[(&str, u64, usize, &[Projection])],
) -> BTreeMap<String, std::path::PathBuf> {
	let mut dirs = BTreeMap::new();
	for &(name, seed, rank, targets) in specs {
		let dir = root.join(name);
		write_adapter(model, &dir, seed, rank, targets);
		dirs.insert(name.to_string(), dir);
	}
	dirs
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

/// Asserts that `result` (a request's, from a run's completions) is the failure of adapter
/// `adapter` with a reason that says `says`.
fn assert_adapter_failed(result: Option<Result<Generation, Error>>, adapter: &str, says: &str) {
	match result {
		Some(Err(Error::Adapter { name, reason })) => {
			assert_eq!(name, adapter);
			assert!(reason.contains(says), "{adapter}: {reason}");
		}
		other => panic!("the request for adapter {adapter} gave {other:?}"),
	}
}

/// Same prompt, tokens, text and log-probabilities, the most likely tokens' included (within
/// `tol`): serving is invariant to what shares the batch, to prefill chunking and to recompute
/// after preemption (see `Llama::attention`).
fn assert_same(got: &Generation, want: &Generation, what: &str, tol: f32) {
	assert_eq!(got.prompt_tokens, want.prompt_tokens, "{what}");
	assert_eq!(got.tokens, want.tokens, "{what}: generated tokens");
	assert_eq!(got.finish_reason, want.finish_reason, "{what}");
	assert_eq!(got.text, want.text, "{what}");
	let diff =
		got.logprobs.iter().zip(&want.logprobs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
	assert!(diff <= tol, "{what}: logprobs differ by {diff}");
	assert_same_top(&got.top_logprobs, &want.top_logprobs, what, tol);
	match (&got.prompt_logprobs, &want.prompt_logprobs) {
		(None, None) => {}
		(Some(got), Some(want)) => {
			assert_eq!(got.logprobs.len(), want.logprobs.len(), "{what}: prompt logprobs");
			let diff = max_diff(&got.logprobs, &want.logprobs);
			assert!(diff <= tol, "{what}: prompt logprobs differ by {diff}");
			let what = format!("{what} (prompt)");
			assert_same_top(&got.top_logprobs, &want.top_logprobs, &what, tol);
		}
		(got, want) => panic!("{what}: prompt logprobs {got:?}, alone {want:?}"),
	}
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
	a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The same most likely tokens at each step, their log-probabilities within `tol`.
fn assert_same_top(got: &[Vec<(u32, f32)>], want: &[Vec<(u32, f32)>], what: &str, tol: f32) {
	assert_eq!(got.len(), want.len(), "{what}: top logprobs");
	for (step, (a, b)) in got.iter().zip(want).enumerate() {
		let tokens = |top: &[(u32, f32)]| top.iter().map(|&(t, _)| t).collect::<Vec<_>>();
		assert_eq!(tokens(a), tokens(b), "{what}: the most likely tokens at step {step}");
		let diff = a.iter().zip(b).map(|(x, y)| (x.1 - y.1).abs()).fold(0.0, f32::max);
		assert!(diff <= tol, "{what}: top logprobs at step {step} differ by {diff}");
	}
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

/// Steps of at most 10 tokens (prompts are prefilled in chunks) and 4 sequences, a KV cache of
/// `blocks` blocks of 4 tokens, an adapter pool of `pool_bytes` (on the kernel decoder) and no
/// host tier.
fn small_config(model: &LlamaConfig, blocks: usize, pool_bytes: usize) -> EngineConfig {
	EngineConfig {
		kv_cache_bytes: blocks * KvCacheConfig::bytes_per_block(model, 4),
		block_size: 4,
		max_batch_tokens: 10,
		max_running: 4,
		max_waiting: 16,
		adapter_pool_bytes: pool_bytes,
		adapter_host_bytes: 0,
		..EngineConfig::default()
	}
}

/// Request `i` of [`PROMPTS`], sampled in turn greedily (the fourth with the 3 most likely
/// tokens' log-probabilities: on the host on every decoder), with a seeded temperature, top-k
/// and top-p (on the kernel decoder: where the logits are), and greedily after a repetition
/// penalty (on the host on every decoder; with 2 most likely tokens). Requests 2 and 4 also
/// ask for their prompt's log-probabilities (with 3 and no alternatives): computed whole, in
/// chunks, while others decode.
fn staggered_request(i: usize) -> GenerationRequest {
	let sampling = match i % 3 {
		0 => SamplingParams { top_logprobs: i, ..Default::default() },
		1 => SamplingParams {
			temperature: 0.8,
			top_k: 40,
			top_p: 0.95,
			seed: i as u64,
			..Default::default()
		},
		_ => SamplingParams { repetition_penalty: 1.3, top_logprobs: 2, ..Default::default() },
	};
	let prompt_logprobs = match i {
		2 => Some(3),
		4 => Some(0),
		_ => None,
	};
	GenerationRequest { sampling, prompt_logprobs, ..greedy(PROMPTS[i], 6 + i % 3) }
}

/// Serves [`PROMPTS`] (request `i` with `adapters[i]`) on `engine`: half of them first, the
/// rest after `steps` steps, while those run. Returns the requests and what each got.
fn serve_staggered<D: Decoder>(
	engine: &mut Engine<D>,
	adapters: &[Option<&str>; 6],
	steps: usize,
) -> Vec<(GenerationRequest, Generation)> {
	let requests: Vec<GenerationRequest> = (0..PROMPTS.len()).map(staggered_request).collect();
	let mut ids = Vec::new();
	for i in 0..3 {
		ids.push(engine.submit(&requests[i], adapters[i]).unwrap());
	}
	let mut completions = Vec::new();
	for _ in 0..steps {
		completions.extend(engine.step());
	}
	assert!(engine.running() > 0, "requests are running when the others arrive");
	for i in 3..PROMPTS.len() {
		ids.push(engine.submit(&requests[i], adapters[i]).unwrap());
	}
	completions.extend(engine.run_to_completion());
	let mut results = by_id(completions);
	assert_eq!(results.len(), PROMPTS.len());
	assert_eq!(engine.stats().finished, PROMPTS.len() as u64);
	let cache = engine.kv_cache();
	assert_eq!(
		cache.available_blocks(),
		cache.config().num_blocks,
		"every block is back (cached or free)"
	);
	requests.into_iter().zip(ids).map(|(r, id)| (r, results.remove(&id).unwrap())).collect()
}

#[test]
fn continuous_batching_with_chunked_prefill_and_preemption_matches_serving_alone() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let dirs = write_adapters(&model, root.path(), &ADAPTERS[..2]);
	let adapters = [None, Some("a"), Some("b"), None, Some("a"), Some("b")];

	// A KV cache of 12 blocks of 4 tokens: the requests cannot all be cached at once, so some
	// are preempted and recomputed.
	let config = small_config(&model.config, 12, 64 << 20);
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	for (name, dir) in &dirs {
		engine.register_adapter(name.clone(), dir.clone());
	}
	// Half the requests arrive first, the rest while those are running.
	let served = serve_staggered(&mut engine, &adapters, 4);
	for (i, (req, got)) in served.iter().enumerate() {
		let want = solo(&model, &tokenizer, adapters[i], req, &dirs);
		assert_same(got, &want, &format!("request {i} ({:?})", adapters[i]), QUANTIZED_TOL);
	}
	let stats = engine.stats();
	assert!(stats.preemptions > 0, "the small cache forced preemptions: {stats:?}");
	assert!(stats.steps < 60, "requests shared steps: {stats:?}");
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
		.map(|q| greedy(&format!("{template}{q}<|im_end|>\n<|im_start|>assistant\n"), 4))
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
		assert_same(&results[id], &want, &format!("{:?}", req.prompt), QUANTIZED_TOL);
	}
}

#[test]
fn bad_requests_and_a_full_queue_get_clear_errors() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let per_block = KvCacheConfig::bytes_per_block(&model.config, 16);
	let config =
		EngineConfig { kv_cache_bytes: 4 * per_block, max_waiting: 2, ..EngineConfig::default() };
	let mut engine = Engine::new(model.clone(), tokenizer, config).unwrap();
	let ok = greedy("Hello", 2);
	let err = engine.submit(&ok, Some("nobody")).unwrap_err();
	assert!(err.to_string().contains("no adapter is registered"), "{err}");
	let err = engine.submit(&greedy("", 2), None).unwrap_err();
	assert!(err.to_string().contains("the prompt is empty"), "{err}");
	let err = engine.submit(&greedy("Hello", 0), None).unwrap_err();
	assert!(err.to_string().contains("max_tokens is 0"), "{err}");
	let err = engine.submit(&greedy("Hello", 100), None).unwrap_err();
	assert!(err.to_string().contains("need 7 KV blocks, the cache has 4"), "{err}");
	let mut bad_sampling = greedy("Hello", 2);
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

/// Cancelling a running and a waiting request frees their blocks at once, leaves the others'
/// outputs as they are alone, and is refused for a request that is gone.
#[test]
fn cancelled_requests_give_their_blocks_back_and_leave_the_others_alone() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let config = EngineConfig { max_running: 2, ..small_config(&model.config, 64, 0) };
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	let free = engine.kv_cache().available_blocks();
	let kept = greedy(PROMPTS[0], 8);
	let running = engine.submit(&greedy(PROMPTS[1], 40), None).unwrap();
	let kept_id = engine.submit(&kept, None).unwrap();
	let waiting = engine.submit(&greedy(PROMPTS[2], 8), None).unwrap();
	let mut done = Vec::new();
	for _ in 0..4 {
		done.extend(engine.step());
	}
	assert!(done.is_empty());
	assert_eq!((engine.running(), engine.waiting()), (2, 1));
	let held = free - engine.kv_cache().available_blocks();
	assert!(engine.cancel(running));
	assert!(engine.cancel(waiting));
	assert!(!engine.cancel(running), "cancelled twice");
	assert_eq!((engine.running(), engine.waiting()), (1, 0));
	assert!(free - engine.kv_cache().available_blocks() < held, "no blocks came back");
	done.extend(engine.run_to_completion());
	assert_eq!(engine.kv_cache().available_blocks(), free);
	let done = by_id(done);
	assert_eq!(done.keys().copied().collect::<Vec<_>>(), [kept_id]);
	assert_same(
		&done[&kept_id],
		&solo(&model, &tokenizer, None, &kept, &BTreeMap::new()),
		"kept",
		0.0,
	);
	assert!(!engine.cancel(kept_id), "cancelled after it finished");
	assert_eq!(engine.stats().cancelled, 2);
	assert_eq!(engine.stats().finished, 1);
}

/// A batch step that fails (a device fault, say) ends the requests of that batch with the
/// error and frees their blocks; a request still waiting then, and the ones after, are served
/// as they would be alone.
#[test]
fn a_failed_step_ends_its_batch_only_and_the_engine_carries_on() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let flaky = Arc::new(common::Flaky::new(model.clone()));
	let config = EngineConfig { max_running: 2, ..small_config(&model.config, 64, 0) };
	let mut engine = Engine::new(flaky.clone(), tokenizer.clone(), config).unwrap();
	let free = engine.kv_cache().available_blocks();
	let first = engine.submit(&greedy(PROMPTS[0], 8), None).unwrap();
	let second = engine.submit(&greedy(PROMPTS[1], 8), None).unwrap();
	let later = greedy(PROMPTS[2], 8);
	let waiting = engine.submit(&later, None).unwrap();
	let mut done = Vec::new();
	for _ in 0..3 {
		done.extend(engine.step());
	}
	assert!(done.is_empty());
	assert_eq!((engine.running(), engine.waiting()), (2, 1));
	flaky.fail_step(1);
	let failed = engine.step();
	let ids: Vec<u64> = failed.iter().map(|c| c.id).collect();
	assert_eq!(ids, [first, second]);
	for completion in failed {
		let error = completion.result.unwrap_err();
		assert!(matches!(error, Error::Batch(_)), "{error:?}");
		assert!(error.to_string().contains("step 4 failed on purpose"), "{error}");
	}
	assert_eq!((engine.running(), engine.waiting()), (0, 1));
	assert_eq!(engine.kv_cache().available_blocks(), free, "the failed batch kept blocks");
	let again = greedy(PROMPTS[0], 8);
	let resubmitted = engine.submit(&again, None).unwrap();
	let done = by_id(engine.run_to_completion());
	let alone = |request| solo(&model, &tokenizer, None, request, &BTreeMap::new());
	assert_same(&done[&waiting], &alone(&later), "waiting", 0.0);
	assert_same(&done[&resubmitted], &alone(&again), "resubmitted", 0.0);
	assert_eq!(engine.kv_cache().available_blocks(), free);
	assert_eq!(engine.stats().finished, 4);
}

/// An adapter unregistered while a request uses it: that request finishes with it, later ones
/// are refused; registered again, it serves again.
#[test]
fn an_unregistered_adapter_finishes_what_it_took_and_takes_no_more() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let dirs = write_adapters(&model, root.path(), &ADAPTERS[..1]);
	let mut engine =
		Engine::new(model.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	engine.register_adapter("a", dirs["a"].clone());
	let request = greedy(PROMPTS[0], 6);
	let taken = engine.submit(&request, Some("a")).unwrap();
	engine.step();
	assert!(engine.unregister_adapter("a"));
	assert!(!engine.unregister_adapter("a"));
	let err = engine.submit(&request, Some("a")).unwrap_err();
	assert!(err.to_string().contains("no adapter is registered"), "{err}");
	let done = by_id(engine.run_to_completion());
	assert_same(&done[&taken], &solo(&model, &tokenizer, Some("a"), &request, &dirs), "taken", 0.0);
	engine.register_adapter("a", dirs["a"].clone());
	let again = engine.submit(&request, Some("a")).unwrap();
	let done = by_id(engine.run_to_completion());
	assert_same(&done[&again], &solo(&model, &tokenizer, Some("a"), &request, &dirs), "again", 0.0);

	// Registered again from another folder whose files have the same sizes and times (a copy of
	// another adapter of the same shapes): that folder's weights are served, not the cached ones.
	let other = root.path().join("other");
	write_adapter(&model, &other, 77, 8, ADAPTERS[0].3);
	for file in ["adapter_config.json", "adapter_model.safetensors"] {
		let (a, b) = (dirs["a"].join(file), other.join(file));
		assert_eq!(std::fs::metadata(&a).unwrap().len(), std::fs::metadata(&b).unwrap().len());
		let time = std::fs::metadata(&a).unwrap().modified().unwrap();
		std::fs::File::options().write(true).open(&b).unwrap().set_modified(time).unwrap();
	}
	engine.register_adapter("a", other.clone());
	let moved = engine.submit(&request, Some("a")).unwrap();
	let mut moved_dirs = dirs.clone();
	moved_dirs.insert("a".into(), other);
	let want = solo(&model, &tokenizer, Some("a"), &request, &moved_dirs);
	assert_ne!(want.logprobs, done[&again].logprobs, "the two adapters differ");
	let done = by_id(engine.run_to_completion());
	assert_same(&done[&moved], &want, "moved", 0.0);
}

/// An adapter registered with the content hash of its files (as one registered on chain is) is
/// built only from files of that hash, whenever they are read: other files put in its folder
/// fail the requests that would load them, and put back, the adapter serves again.
#[test]
fn an_adapter_registered_by_hash_is_built_only_from_files_of_that_hash() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let dirs = write_adapters(&model, root.path(), &ADAPTERS[..1]);
	let other = root.path().join("other");
	write_adapter(&model, &other, 77, 8, ADAPTERS[0].3);
	let [config, weights] = ["adapter_config.json", "adapter_model.safetensors"]
		.map(|file| std::fs::read(dirs["a"].join(file)).unwrap());
	let hash = adapter_content_hash(&config, &weights);
	assert_eq!(AdapterFiles::read(&dirs["a"], "a").unwrap().content_hash(), hash);
	let mut engine =
		Engine::new(model.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	engine.register_adapter("a", AdapterSource::hashed(&dirs["a"], hash));
	let request = greedy(PROMPTS[0], 4);
	let want = solo(&model, &tokenizer, Some("a"), &request, &dirs);
	let first = engine.submit(&request, Some("a")).unwrap();
	assert_same(&by_id(engine.run_to_completion())[&first], &want, "hashed", 0.0);

	// Files of another hash in a folder registered under this one: refused when loaded.
	engine.register_adapter("b", AdapterSource::hashed(&other, hash));
	let refused = engine.submit(&request, Some("b")).unwrap();
	let mut done: BTreeMap<_, _> =
		engine.run_to_completion().into_iter().map(|c| (c.id, c.result)).collect();
	match done.remove(&refused) {
		Some(Err(Error::AdapterChanged { name, reason })) => {
			assert_eq!(name, "b");
			assert!(reason.contains("no longer hash to 0x"), "{reason}");
		}
		other => panic!("the request for adapter b gave {other:?}"),
	}

	// The weights in the folder of "a" replaced (same size, another time): the next load reads
	// them and refuses them, though the adapter built from the right ones was in memory.
	let in_folder = dirs["a"].join("adapter_model.safetensors");
	let replace = |bytes: &[u8], seconds: u64| {
		std::fs::write(&in_folder, bytes).unwrap();
		let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
		std::fs::File::options().write(true).open(&in_folder).unwrap().set_modified(time).unwrap();
	};
	let forged = std::fs::read(other.join("adapter_model.safetensors")).unwrap();
	assert_eq!(forged.len(), weights.len());
	replace(&forged, 1_000_000_000);
	let err = engine.submit(&request, Some("a")).unwrap_err();
	assert!(matches!(err, Error::AdapterChanged { .. }), "{err:?}");
	assert!(err.to_string().contains("no longer hash to"), "{err}");
	// Put back, they serve again.
	replace(&weights, 1_000_000_100);
	let again = engine.submit(&request, Some("a")).unwrap();
	assert_same(&by_id(engine.run_to_completion())[&again], &want, "put back", 0.0);
	// An adapter registered by its folder alone serves whatever files are there.
	replace(&forged, 1_000_000_200);
	engine.register_adapter("a", dirs["a"].clone());
	let unhashed = engine.submit(&request, Some("a")).unwrap();
	let done = by_id(engine.run_to_completion());
	let moved = BTreeMap::from([("a".to_string(), other.clone())]);
	assert_same(&done[&unhashed], &solo(&model, &tokenizer, Some("a"), &request, &moved), "", 0.0);
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
	let req = greedy("The capital of France is", 2);
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

/// Log-probability difference allowed on the kernel decoder between serving in a batch and
/// alone: a prompt prefilled in chunks, or recomputed after a preemption by prefill where it was
/// decoded, caches keys summed in other orders (measured in `tests/kernel_model.rs`: 1e-4 on
/// the logits at most).
const KERNEL_TOL: f32 = 1e-4;

fn load_kernels() -> (Arc<KernelLlama<Cpu>>, Arc<Tokenizer>) {
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = KernelLlama::from_gguf(&path, Cpu, Some(512)).unwrap();
	(Arc::new(model), Arc::new(tokenizer))
}

/// The engine over the kernel decoder: requests with three adapters and none, a KV cache of 8
/// blocks of 4 tokens (preemptions), prompts prefilled in chunks beside decoding sequences, and
/// an adapter pool that holds two of the adapters but not the three, so adapters are evicted
/// from it and uploaded again — and every request gets what it gets alone.
#[test]
fn the_engine_on_the_kernel_decoder_serves_what_each_request_gets_alone() {
	let (model, tokenizer) = load_kernels();
	let (dense, _) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let dirs = write_adapters(&dense, root.path(), &ADAPTERS);
	let loaded: BTreeMap<&str, _> =
		dirs.iter().map(|(n, d)| (n.as_str(), model.load_adapter(d, Some(n)).unwrap())).collect();
	// Room in the pool for the two largest together, never for all three.
	let mut sizes: Vec<usize> = loaded.values().map(|a| model.pages_of(a)).collect();
	sizes.sort_unstable();
	let pool_pages = sizes[1] + sizes[2];
	assert!(pool_pages < sizes.iter().sum::<usize>());
	let config = small_config(&model.config, 8, pool_pages * model.page_len() * 4);
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	assert_eq!(engine.residency().num_pages(), pool_pages);
	for (name, dir) in &dirs {
		engine.register_adapter(name.clone(), dir.clone());
	}
	let adapters = [None, Some("a"), Some("b"), Some("c"), Some("a"), Some("c")];
	let served = serve_staggered(&mut engine, &adapters, 3);
	for (i, (req, got)) in served.iter().enumerate() {
		let adapter = adapters[i].map(|n| &loaded[n]);
		let want = generate_with_kernels(&model, &tokenizer, adapter, req).unwrap();
		assert_same(got, &want, &format!("request {i} ({:?})", adapters[i]), KERNEL_TOL);
	}
	let stats = engine.stats();
	assert!(stats.preemptions > 0, "the small cache forced preemptions: {stats:?}");
	let pool = engine.residency();
	assert!(pool.evictions() > 0, "three adapters went through a pool for two");
	assert!(pool.uploads() > 3, "evicted adapters were uploaded again");
	assert!(pool.resident() <= 2);
}

/// A request whose adapter is larger than the whole pool fails with the adapter's name; the
/// others are served.
#[test]
fn the_kernel_engine_refuses_an_adapter_larger_than_its_pool() {
	let (model, tokenizer) = load_kernels();
	let (dense, _) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let (small, big) = (root.path().join("small"), root.path().join("big"));
	write_adapter(&dense, &small, 1, 1, &[Projection::Q]);
	write_adapter(&dense, &big, 2, 16, &[Projection::Q]);
	let small_pages = model.pages_of(&model.load_adapter(&small, None).unwrap());
	let big_adapter = model.load_adapter(&big, None).unwrap();
	// Room in host memory for the big one's weights, not in the pool for its pages.
	let config = EngineConfig { adapter_pool_bytes: 1 << 20, ..EngineConfig::default() };
	let page_bytes = model.page_len() * 4;
	let big_pool_bytes = model.pages_of(&big_adapter) * page_bytes;
	assert_eq!(big_pool_bytes, big_adapter.size_bytes, "the pool wastes nothing");
	assert!(big_adapter.size_bytes < config.adapter_bytes);
	assert!(config.adapter_pool_bytes < big_pool_bytes);
	assert!(2 * small_pages * page_bytes < config.adapter_pool_bytes);
	let mut engine = Engine::new(model.clone(), tokenizer, config).unwrap();
	engine.register_adapter("small", &small);
	engine.register_adapter("big", &big);
	let req = greedy("The capital of France is", 2);
	let big_id = engine.submit(&req, Some("big")).unwrap();
	let small_id = engine.submit(&req, Some("small")).unwrap();
	let base_id = engine.submit(&req, None).unwrap();
	let mut results: BTreeMap<u64, _> =
		engine.run_to_completion().into_iter().map(|c| (c.id, c.result)).collect();
	assert_adapter_failed(results.remove(&big_id), "big", "adapter pool");
	assert_eq!(results.remove(&small_id).unwrap().unwrap().tokens.len(), 2);
	assert_eq!(results.remove(&base_id).unwrap().unwrap().tokens.len(), 2);
	assert_eq!(engine.residency().resident(), 1, "the small adapter stays resident");
}

/// A request waiting for room in the adapter pool is not overtaken by a later request whose
/// adapter would fit beside the running ones: it starts first when room comes.
#[test]
fn a_request_waiting_for_pool_room_is_not_overtaken() {
	let (model, tokenizer) = load_kernels();
	let (dense, _) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let mut dirs = write_adapters(&dense, root.path(), &ADAPTERS);
	dirs.extend(write_adapters(&dense, root.path(), &[("d", 4, 1, &[Projection::Q])]));
	let pages = |n: &str| model.pages_of(&model.load_adapter(&dirs[n], None).unwrap());
	// a, b and d fit together; c does not fit beside a and b.
	let pool = pages("a") + pages("b") + pages("d");
	assert!(pages("a") + pages("b") + pages("c") > pool);
	let config =
		EngineConfig { adapter_pool_bytes: pool * model.page_len() * 4, ..EngineConfig::default() };
	let mut engine = Engine::new(model.clone(), tokenizer, config).unwrap();
	for (name, dir) in &dirs {
		engine.register_adapter(name.clone(), dir.clone());
	}
	// Every adapter in the adapter cache first, so that admission does not wait for loads.
	for name in dirs.keys() {
		engine.submit(&greedy("Hi", 1), Some(name)).unwrap();
	}
	engine.run_to_completion();
	let long = greedy("The capital of France is", 10);
	engine.submit(&long, Some("a")).unwrap();
	engine.submit(&long, Some("b")).unwrap();
	engine.step();
	assert_eq!(engine.running(), 2);
	let c = engine.submit(&greedy("1, 2, 3,", 2), Some("c")).unwrap();
	let d = engine.submit(&greedy("1, 2, 3,", 2), Some("d")).unwrap();
	let order: Vec<u64> = engine.run_to_completion().into_iter().map(|done| done.id).collect();
	let at = |id| order.iter().position(|&x| x == id).unwrap();
	assert!(at(c) < at(d), "c waited first and finished first: {order:?}");
}

/// An adapter of a rank the kernels do not take (above 128) fails when it is loaded, with its
/// name, not in a step it would share with other requests; a sampled token whose
/// log-probability is NaN (NaN logits) is refused.
#[test]
fn the_kernel_engine_refuses_a_rank_above_the_kernels_and_nan_logits() {
	let (model, tokenizer) = load_kernels();
	let (dense, _) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let wide = root.path().join("wide");
	write_adapter(&dense, &wide, 3, 130, &[Projection::Q]);
	match model.load_adapter(&wide, None) {
		Err(Error::Adapter { reason, .. }) => assert!(reason.contains("rank 130"), "{reason}"),
		other => panic!("a rank-130 adapter loaded: {other:?}"),
	}
	let config = EngineConfig { adapter_bytes: 64 << 20, ..EngineConfig::default() };
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	engine.register_adapter("wide", &wide);
	let req = greedy("The capital of France is", 2);
	let wide_id = engine.submit(&req, Some("wide")).unwrap();
	let base_id = engine.submit(&req, None).unwrap();
	let mut results: BTreeMap<u64, _> =
		engine.run_to_completion().into_iter().map(|c| (c.id, c.result)).collect();
	assert_adapter_failed(results.remove(&wide_id), "wide", "rank 130");
	assert_eq!(results.remove(&base_id).unwrap().unwrap().tokens.len(), 2);

	let mut progress =
		openledger_inference_worker::generate::Progress::new(&req, vec![1, 2]).unwrap();
	let nan = openledger_inference_worker::sampling::Sampled { token: 0, logprob: f32::NAN };
	assert!(progress.record(nan, &tokenizer).is_err());
	assert!(progress.tokens.is_empty(), "nothing recorded");
}

/// Copy on write in the kernel decoder's cache: a forked sequence that appends to a shared,
/// partly filled block gets its own copy of it (on the backend), and both sequences then run
/// as the original would have alone.
#[test]
fn a_forked_sequence_copies_the_shared_block_it_writes_on_the_kernel_decoder() {
	let (model, tokenizer) = load_kernels();
	let mut cache = model.kv_cache(KvCacheConfig { block_size: 4, num_blocks: 8 }).unwrap();
	let mut residency = model.residency(1 << 20).unwrap();
	let prompt = tokenizer.encode("Copy on write keeps forks apart").unwrap();
	assert!(prompt.len() % 4 != 0, "the prompt ends inside a block");
	let mut step = |cache: &mut _, table: &mut BlockTable, tokens: &[u32]| {
		let mut batch = [openledger_inference_worker::model::SequenceInput {
			tokens,
			table,
			adapter: None,
			all_logits: false,
		}];
		model.step(cache, &mut residency, &mut batch, &[Want::Logits]).unwrap().remove(0)
	};
	let mut original = BlockTable::new(0);
	step(&mut cache, &mut original, &prompt);
	let mut fork = cache.fork(&original);
	let shared = *original.blocks().last().unwrap();
	// The fork writes first: it gets a copy of the shared block, the original keeps its own.
	let forked = step(&mut cache, &mut fork, &[42]);
	assert_ne!(*fork.blocks().last().unwrap(), shared, "the fork writes to a copy");
	assert_eq!(*original.blocks().last().unwrap(), shared);
	let then = step(&mut cache, &mut original, &[42]);
	assert_eq!(forked, then, "the fork read the prompt's keys from its copy");
	// Against a sequence that never shared anything.
	let mut alone = BlockTable::new(0);
	step(&mut cache, &mut alone, &prompt);
	let want = step(&mut cache, &mut alone, &[42]);
	assert_eq!(then, want);
}

/// A prompt whose log-probabilities are asked for has its first token sampled on the host
/// wherever its chunks end (here one token before its end, so that its last token runs alone
/// as a decoding one would, where the kernels would sample): seeded, it is what
/// `generate_with_kernels` gives, whatever the chunking.
#[test]
fn a_scored_prompt_samples_its_first_token_alike_wherever_its_chunks_end() {
	let (model, tokenizer) = load_kernels();
	let prompt = PROMPTS[2];
	let len = tokenizer.encode(prompt).unwrap().len();
	let config =
		EngineConfig { max_batch_tokens: len - 1, ..small_config(&model.config, 32, 1 << 20) };
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	for seed in 0..2 {
		let request = GenerationRequest {
			sampling: SamplingParams { temperature: 1.5, seed, ..Default::default() },
			prompt_logprobs: Some(1),
			..greedy(prompt, 1)
		};
		let want = generate_with_kernels(&model, &tokenizer, None, &request).unwrap();
		let id = engine.submit(&request, None).unwrap();
		let got = by_id(engine.run_to_completion()).remove(&id).unwrap();
		assert_same(&got, &want, &format!("seed {seed}"), KERNEL_TOL);
	}
}

/// Long prompts' log-probabilities come back at most `PROMPT_LOGITS_CHUNK` rows a step for the
/// whole batch (two prompts of about 300 tokens take at least as many steps as their tokens
/// over that), each equal to serving it alone; a prompt may be scored only (`max_tokens` 0),
/// which generates nothing; a request beside them is not held up.
#[test]
fn long_prompts_are_scored_a_bounded_number_of_rows_a_step_and_may_be_scored_only() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let mut engine =
		Engine::new(model.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	let long = |sentence: &str| sentence.repeat(30);
	let requests = [
		GenerationRequest {
			prompt_logprobs: Some(2),
			..greedy(&long("The quick brown fox jumps over the lazy dog. "), 0)
		},
		GenerationRequest {
			prompt_logprobs: Some(0),
			..greedy(&long("Records, curators and adapters earn their share. "), 3)
		},
		greedy(PROMPTS[0], 5),
	];
	let ids: Vec<u64> = requests.iter().map(|r| engine.submit(r, None).unwrap()).collect();
	let mut results = by_id(engine.run_to_completion());
	let scored: usize = requests[..2].iter().map(|r| prompt_len(&tokenizer, r)).sum();
	assert!(scored > 2 * PROMPT_LOGITS_CHUNK, "{scored} prompt tokens to score");
	let steps = engine.stats().steps as usize;
	assert!(steps >= scored.div_ceil(PROMPT_LOGITS_CHUNK), "{steps} steps for {scored} rows");
	let dirs = BTreeMap::new();
	for (request, id) in requests.iter().zip(&ids) {
		let got = results.remove(id).unwrap();
		let want = solo(&model, &tokenizer, None, request, &dirs);
		assert_same(&got, &want, &format!("request {id}"), QUANTIZED_TOL);
	}
	let only = solo(&model, &tokenizer, None, &requests[0], &dirs);
	assert!(only.tokens.is_empty() && only.text.is_empty());
	assert_eq!(
		only.prompt_logprobs.unwrap().logprobs.len(),
		prompt_len(&tokenizer, &requests[0]) - 1
	);
	// max_tokens 0 without the prompt's log-probabilities asks for nothing: refused.
	let error = engine.submit(&greedy(PROMPTS[0], 0), None).unwrap_err();
	assert!(error.to_string().contains("max_tokens is 0"), "{error}");
}

fn prompt_len(tokenizer: &Tokenizer, request: &GenerationRequest) -> usize {
	request.prompt.tokens(tokenizer, usize::MAX).unwrap().len()
}

#[test]
fn an_answer_scored_after_its_prompt_reuses_the_cached_prompt_and_scores_the_same() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let config = EngineConfig::default();
	let block = config.block_size;
	let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	let context = format!(
		"<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\nWhere is the tower?<|im_end|>\n\
		 <|im_start|>assistant\n",
		"Record 1: the Eiffel Tower stands in Paris and was finished in 1889. ".repeat(20)
	);
	let prompt = tokenizer.encode(&context).unwrap();
	let answer = tokenizer.encode_literal("It stands in Paris, France.").unwrap();
	let mut tokens = prompt.clone();
	tokens.extend_from_slice(&answer);
	let from = prompt.len() - 1;
	assert!(tokens.len() > 2 * PROMPT_LOGITS_CHUNK, "{} tokens", tokens.len());
	let scoring = |from: usize| GenerationRequest {
		prompt: openledger_inference_worker::generate::Prompt::Tokens(tokens.clone()),
		max_tokens: 0,
		prompt_logprobs: Some(1),
		prompt_logprobs_from: from,
		..GenerationRequest::default()
	};

	// The answer's prompt generated first (as a chat does), then the answer scored.
	engine.submit(&greedy(&context, 1), None).unwrap();
	engine.run_to_completion();
	let before = engine.stats();
	let id = engine.submit(&scoring(from), None).unwrap();
	let answer_only = by_id(engine.run_to_completion()).remove(&id).unwrap();
	let after = engine.stats();
	let reusable = (from / block * block) as u64;
	assert_eq!(after.tokens_reused - before.tokens_reused, reusable, "{after:?}");
	assert_eq!(after.tokens_computed - before.tokens_computed, tokens.len() as u64 - reusable);
	// What is left of the prompt before the answer, then the answer's rows.
	assert_eq!(after.steps - before.steps, 1 + u64::from(from % block != 0));

	// Scored whole, on an engine with nothing cached: every position, in chunks of rows.
	let counting = Arc::new(common::Flaky::new(model.clone()));
	let mut fresh =
		Engine::new(counting.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	let id = fresh.submit(&scoring(0), None).unwrap();
	let whole = by_id(fresh.run_to_completion()).remove(&id).unwrap();
	assert!(fresh.stats().steps as usize >= tokens.len().div_ceil(PROMPT_LOGITS_CHUNK));
	assert_eq!(counting.max_rows(), PROMPT_LOGITS_CHUNK as u64);
	// Scored from the answer with nothing cached: the prompt without rows (in chunks of the
	// step's budget), then only the answer's rows.
	let counting = Arc::new(common::Flaky::new(model.clone()));
	let mut cold =
		Engine::new(counting.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	let id = cold.submit(&scoring(from), None).unwrap();
	let cold_answer = by_id(cold.run_to_completion()).remove(&id).unwrap();
	// The positions from the prompt's last to the answer's last (which predicts nothing).
	assert_eq!(counting.max_rows(), answer.len() as u64 + 1);
	assert_eq!(
		cold.stats().steps as usize,
		from.div_ceil(EngineConfig::default().max_batch_tokens) + 1
	);
	assert_eq!(cold_answer.prompt_logprobs, answer_only.prompt_logprobs);
	let whole = whole.prompt_logprobs.unwrap();
	let got = answer_only.prompt_logprobs.unwrap();
	assert_eq!((whole.first, got.first), (0, from));
	assert_eq!(got.logprobs.len(), answer.len());
	assert_eq!(got.logprobs[..], whole.logprobs[from..], "the answer's log-probabilities");
	assert_eq!(got.ranks[..], whole.ranks[from..]);
	assert_same_top(&got.top_logprobs, &whole.top_logprobs[from..], "top", QUANTIZED_TOL);
	// Served alone (no engine), the same.
	let dirs = BTreeMap::new();
	let alone = solo(&model, &tokenizer, None, &scoring(from), &dirs).prompt_logprobs.unwrap();
	assert_eq!(alone, got);
	// Past the prompt: nothing recorded, not an error.
	let past = solo(&model, &tokenizer, None, &scoring(tokens.len() + 5), &dirs);
	assert!(past.prompt_logprobs.unwrap().logprobs.is_empty());

	// Three answers to different prompts scored, then continued, at once in a KV cache too
	// small for them: preempted and computed again, each still records exactly its answer's
	// log-probabilities and generates what it generates alone.
	let requests: Vec<GenerationRequest> = ["Record 2", "Record 3", "Record 4"]
		.iter()
		.map(|name| {
			let mut tokens = tokenizer.encode(&context.replace("Record 1", name)).unwrap();
			let from = tokens.len() - 1;
			tokens.extend_from_slice(&answer);
			GenerationRequest {
				prompt: openledger_inference_worker::generate::Prompt::Tokens(tokens),
				prompt_logprobs_from: from,
				max_tokens: 24,
				ignore_eos: true,
				..scoring(0)
			}
		})
		.collect();
	let blocks = tokens.len() / 4 * 2 + 4;
	let config = EngineConfig { max_batch_tokens: 512, ..small_config(&model.config, blocks, 0) };
	let mut small = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
	let ids: Vec<u64> = requests.iter().map(|r| small.submit(r, None).unwrap()).collect();
	let mut results = by_id(small.run_to_completion());
	assert!(small.stats().preemptions > 0, "{:?}", small.stats());
	for (request, id) in requests.iter().zip(ids) {
		let got = results.remove(&id).unwrap();
		let alone = solo(&model, &tokenizer, None, request, &dirs);
		assert_eq!(got.prompt_logprobs.as_ref().unwrap().logprobs.len(), answer.len());
		assert_same(&got, &alone, "a preempted answer", QUANTIZED_TOL);
		assert_eq!(got.prompt_logprobs, alone.prompt_logprobs);
	}
}
