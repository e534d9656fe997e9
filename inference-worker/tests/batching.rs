//! A mixed batch — requests for different adapters and for the base model, prefill and decode in
//! the same step, a request joining mid-way, one reusing another's cached prompt — gives each request what it gets when served alone,
//! on the real model with its quantized weights (the serving path).

use std::collections::BTreeMap;

use candle_core::Device;
use openledger_inference_worker::{
	kv_cache::{BlockTable, KvCacheConfig, PagedKvCache},
	lora::{
		synthetic::{self, SyntheticAdapter},
		LoraAdapter, Projection,
	},
	model::{KvCache, Llama, SequenceInput, WeightFormat},
	models,
	sampling::argmax,
};

const STEPS: usize = 6;
/// Largest logit difference between batched and solo serving: none (batch invariance).
const TOL: f32 = 0.0;

fn adapter(
	model: &Llama,
	dir: &std::path::Path,
	seed: u64,
	rank: usize,
	targets: Vec<Projection>,
) -> LoraAdapter {
	let spec = SyntheticAdapter {
		seed,
		rank,
		alpha: 2.0 * rank as f64,
		targets,
		rank_pattern: BTreeMap::new(),
		alpha_pattern: BTreeMap::new(),
	};
	synthetic::write(&spec, &model.config, dir).unwrap();
	model.load_adapter(dir, None).unwrap()
}

/// Greedy decoding of one request alone: the logits of each step.
fn solo(model: &Llama, prompt: &[u32], adapter: Option<&LoraAdapter>) -> Vec<Vec<f32>> {
	let mut cache = KvCache::new(model, prompt.len() + STEPS).unwrap();
	let mut input = prompt.to_vec();
	let mut steps = Vec::new();
	for _ in 0..STEPS {
		let logits: Vec<f32> = model
			.forward(&input, &mut cache, adapter, false)
			.unwrap()
			.squeeze(0)
			.unwrap()
			.to_vec1()
			.unwrap();
		input = vec![argmax(&logits) as u32];
		steps.push(logits);
	}
	steps
}

#[test]
fn a_mixed_batch_matches_serving_each_request_alone() {
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored).unwrap();
	let root = tempfile::tempdir().unwrap();
	let a = adapter(
		&model,
		&root.path().join("a"),
		1,
		8,
		vec![Projection::Q, Projection::V, Projection::Down],
	);
	let b = adapter(&model, &root.path().join("b"), 2, 4, Projection::ALL.to_vec());
	let prompts: Vec<Vec<u32>> = [
		"The capital of France is",
		"<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n",
		"Once upon a time",
		"def fibonacci(n):",
	]
	.iter()
	.map(|p| tokenizer.encode(p).unwrap())
	.collect();
	let mut prompts = prompts;
	prompts.push(prompts[1].clone());
	// Request 3 uses the same adapter as request 1 and joins at step 2; request 4 is request 1
	// again, joining at step 3: it takes the cached blocks of the shared prompt.
	let adapters = [None, Some(&a), Some(&b), Some(&a), Some(&a)];
	let joins = [0, 0, 0, 2, 3];
	let expected: Vec<Vec<Vec<f32>>> =
		prompts.iter().zip(adapters).map(|(p, ad)| solo(&model, p, ad)).collect();

	// One pool for all of them, in small blocks so that prompts span several.
	let config = KvCacheConfig { block_size: 4, num_blocks: 64 };
	let mut pool = PagedKvCache::new(&model.config, config, &Device::Cpu).unwrap();
	let salt = |ad: Option<&LoraAdapter>| ad.map_or(0, |a| a.uid);
	let mut tables: Vec<BlockTable> =
		adapters.iter().map(|ad| BlockTable::new(salt(*ad))).collect();
	let mut next: Vec<Vec<u32>> = prompts.clone();
	let mut done = vec![0usize; prompts.len()];
	for step in 0..STEPS + 4 {
		let active: Vec<usize> =
			(0..prompts.len()).filter(|&i| joins[i] <= step && done[i] < STEPS).collect();
		if active.is_empty() {
			break;
		}
		for &i in &active {
			if tables[i].is_empty() {
				let reused = pool.reuse_prefix(&mut tables[i], &prompts[i]);
				assert_eq!(reused > 0, i == 4, "request {i} reused {reused} tokens");
				next[i] = prompts[i][reused..].to_vec();
			}
		}
		let mut inputs: Vec<SequenceInput<'_>> = Vec::new();
		for (i, table) in tables.iter_mut().enumerate() {
			if active.contains(&i) {
				inputs.push(SequenceInput {
					tokens: &next[i],
					table,
					adapter: adapters[i],
					all_logits: false,
				});
			}
		}
		let outputs = model.forward_batch(&mut pool, &mut inputs).unwrap();
		drop(inputs);
		for (&i, logits) in active.iter().zip(outputs) {
			let logits: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
			let want = &expected[i][done[i]];
			let diff = logits.iter().zip(want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
			assert!(diff <= TOL, "request {i}, step {}: logits differ by {diff}", done[i]);
			assert_eq!(argmax(&logits), argmax(want), "request {i}, step {}", done[i]);
			next[i] = vec![argmax(&logits) as u32];
			done[i] += 1;
		}
	}
	assert!(done.iter().all(|&d| d == STEPS), "every request finished: {done:?}");
	assert!(pool.allocator().prefix_hits >= 3, "the shared prompt's full blocks were reused");
	for table in &mut tables {
		pool.free(table);
	}
	assert_eq!(pool.available_blocks(), config.num_blocks, "every block is back");
	// The adapters matter: without them, requests 1 and 2 would differ.
	let base_1 = solo(&model, &prompts[1], None);
	assert_ne!(base_1[0], expected[1][0]);
}
