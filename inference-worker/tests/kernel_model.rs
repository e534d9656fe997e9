//! The decoder composed of kernel calls (`kernel_model`, CPU reference backend), on the real
//! model's own Q4_1/Q8_0 blocks, against the candle decoder (`model`) holding the same weights
//! dequantized to f32: the same dequantized values, summed in other orders, so the logits agree
//! to float rounding and greedy decoding picks the same tokens. With an adapter on every
//! projection too. Then the kernel decoder against itself: a prompt prefilled in chunks, and
//! sequences decoded together, give what one-shot and solo runs give.

use std::collections::BTreeMap;

use candle_core::Device;
use openledger_inference_worker::{
	kernel_model::{DecodeInput, KernelLlama},
	lora::{
		synthetic::{self, SyntheticAdapter},
		LoraAdapter, Projection,
	},
	model::{KvCache, Llama, WeightFormat},
	models,
	sampling::argmax,
	tokenizer::Tokenizer,
	Error,
};
use openledger_kernels::{backend::Cpu, sampling::SamplingParams};

/// Largest logit difference from the candle decoder allowed, against logits of magnitude ~20:
/// 30 layers of f32 products summed in different orders (measured: 4.3e-5 at most).
const TOL: f32 = 5e-4;
const STEPS: usize = 3;
const BLOCK: usize = 4;

fn load() -> (KernelLlama<Cpu>, Llama, Tokenizer) {
	let path = models::smollm2_gguf();
	let (kernels, _) =
		KernelLlama::from_gguf(&path, Cpu, Some(256)).expect("the GGUF loads on the kernels");
	let (dense, tokenizer) =
		Llama::from_gguf(&path, &Device::Cpu, WeightFormat::F32).expect("the GGUF loads");
	(kernels, dense, tokenizer)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
	assert_eq!(a.len(), b.len());
	a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Greedy decoding with the candle decoder: the logits of each step.
fn dense_steps(model: &Llama, prompt: &[u32], adapter: Option<&LoraAdapter>) -> Vec<Vec<f32>> {
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

/// The same with the kernel decoder, its cache in 4-token blocks given out in reverse order.
fn kernel_steps(
	model: &KernelLlama<Cpu>,
	prompt: &[u32],
	adapter: Option<&LoraAdapter>,
) -> Vec<Vec<f32>> {
	let blocks = (prompt.len() + STEPS).div_ceil(BLOCK);
	let mut cache = model.new_cache(blocks, BLOCK).unwrap();
	let table: Vec<u32> = (0..blocks as u32).rev().collect();
	let mut pool = adapter.map(|a| model.pool_for(&[a]).unwrap());
	let resident = adapter.map(|a| model.upload_adapter(pool.as_mut().unwrap(), a).unwrap());
	let with = pool.as_ref().zip(resident.as_ref());
	let mut logits = model.prefill(&mut cache, prompt, 0, &table, with).unwrap();
	let mut steps = vec![logits.clone()];
	for step in 1..STEPS {
		let input = DecodeInput {
			token: argmax(&logits) as u32,
			position: prompt.len() + step - 1,
			table: &table,
			adapter: resident.as_ref(),
		};
		logits = model.decode(&mut cache, &[input], pool.as_ref()).unwrap();
		steps.push(logits.clone());
	}
	steps
}

fn compare(kernel: &[Vec<f32>], dense: &[Vec<f32>], what: &str) {
	for (step, (k, d)) in kernel.iter().zip(dense).enumerate() {
		let diff = max_diff(k, d);
		eprintln!("{what}, step {step}: max logit difference {diff:e}");
		assert!(diff <= TOL, "{what}, step {step}: logits differ by {diff}");
		assert_eq!(argmax(k), argmax(d), "{what}, step {step}: greedy token");
	}
}

#[test]
fn the_kernel_decoder_matches_the_candle_decoder_with_and_without_an_adapter() {
	let (kernels, dense, tokenizer) = load();
	let prompt = tokenizer.encode("The capital of France is").unwrap();
	compare(&kernel_steps(&kernels, &prompt, None), &dense_steps(&dense, &prompt, None), "base");

	let dir = tempfile::tempdir().unwrap();
	let spec = SyntheticAdapter {
		seed: 5,
		rank: 8,
		alpha: 16.0,
		targets: Projection::ALL.to_vec(),
		rank_pattern: BTreeMap::from([(Projection::Down, 4)]),
		alpha_pattern: BTreeMap::new(),
	};
	synthetic::write(&spec, &dense.config, dir.path()).unwrap();
	let adapter = dense.load_adapter(dir.path(), None).unwrap();
	let with = kernel_steps(&kernels, &prompt, Some(&adapter));
	compare(&with, &dense_steps(&dense, &prompt, Some(&adapter)), "adapter");
	let without = kernel_steps(&kernels, &prompt, None);
	assert!(max_diff(&with[0], &without[0]) > 0.1, "the adapter changes the logits");
}

#[test]
fn chunked_prefill_and_batched_decode_give_what_one_shot_and_solo_runs_give() {
	let (kernels, _, tokenizer) = load();
	let a = tokenizer.encode("Paged attention keeps keys and values in blocks").unwrap();
	let b = tokenizer.encode("A short one").unwrap();
	let mut cache = kernels.new_cache(16, BLOCK).unwrap();
	// Sequence a in blocks 0..6 (one shot), b in 8..11, a again in 12..15 prefilled in chunks
	// of 3, 4 and the rest, each chunk reading what the earlier ones cached.
	let table_a: Vec<u32> = vec![5, 0, 3, 1, 4, 2];
	let table_b: Vec<u32> = vec![9, 8, 10, 11];
	let table_c: Vec<u32> = vec![15, 12, 14, 13];
	let one_shot = kernels.prefill(&mut cache, &a, 0, &table_a, None).unwrap();
	kernels.prefill(&mut cache, &a[..3], 0, &table_c, None).unwrap();
	kernels.prefill(&mut cache, &a[3..7], 3, &table_c, None).unwrap();
	let chunked = kernels.prefill(&mut cache, &a[7..], 7, &table_c, None).unwrap();
	assert!(max_diff(&one_shot, &chunked) <= 1e-4, "chunked prefill");
	assert_eq!(argmax(&one_shot), argmax(&chunked));

	let solo_b = kernels.prefill(&mut cache, &b, 0, &table_b, None).unwrap();
	let next_a = argmax(&one_shot) as u32;
	let next_b = argmax(&solo_b) as u32;
	let batch = [
		DecodeInput { token: next_a, position: a.len(), table: &table_a, adapter: None },
		DecodeInput { token: next_b, position: b.len(), table: &table_b, adapter: None },
	];
	let both = kernels.decode(&mut cache, &batch, None).unwrap();
	let vocab = kernels.config.vocab_size;
	// Alone, on the chunked copy of a (the same cached keys up to float rounding) and on b
	// again (its step is recomputed over the same cache: the same bits).
	let alone_b = kernels.decode(&mut cache, &batch[1..], None).unwrap();
	assert_eq!(both[vocab..], alone_b[..], "a row of a decode batch is what it is alone");
	let alone_a = kernels
		.decode(
			&mut cache,
			&[DecodeInput { token: next_a, position: a.len(), table: &table_c, adapter: None }],
			None,
		)
		.unwrap();
	assert!(max_diff(&both[..vocab], &alone_a) <= 1e-4, "batched vs solo decode of a");

	// On-backend sampling of the batch: greedy picks the argmax of each row.
	let sampled = kernels
		.sample(&both, &[SamplingParams::GREEDY, SamplingParams::GREEDY], &[0.5, 0.5])
		.unwrap();
	assert_eq!(sampled[0].token as usize, argmax(&both[..vocab]));
	assert_eq!(sampled[1].token as usize, argmax(&both[vocab..]));
}

#[test]
fn bad_steps_get_clear_errors() {
	let (kernels, _, _) = load();
	let mut cache = kernels.new_cache(2, BLOCK).unwrap();
	let past = kernels.prefill(&mut cache, &[1, 2, 3, 4, 5], 0, &[0], None);
	assert!(matches!(past, Err(Error::Request(ref m)) if m.contains("past")), "{past:?}");
	let vocab = kernels.config.vocab_size as u32;
	let unknown = kernels.prefill(&mut cache, &[vocab], 0, &[0], None);
	assert!(matches!(unknown, Err(Error::Request(ref m)) if m.contains("vocabulary")));
	let foreign = kernels.prefill(&mut cache, &[1], 0, &[7], None);
	assert!(matches!(foreign, Err(Error::Request(ref m)) if m.contains("block 7")));
	assert!(kernels.prefill(&mut cache, &[], 0, &[0], None).is_err());
	assert!(kernels.decode(&mut cache, &[], None).is_err());
	// A block the attention would read before the new position, not only the one written.
	let prefix = kernels.prefill(&mut cache, &[1], 4, &[9, 0], None);
	assert!(matches!(prefix, Err(Error::Request(ref m)) if m.contains("block 9")), "{prefix:?}");
	assert!(kernels.new_cache(0, BLOCK).is_err() && kernels.new_cache(2, 0).is_err());
	let far = kernels.prefill(&mut cache, &[1], 300, &[0; 100], None);
	assert!(matches!(far, Err(Error::Request(ref m)) if m.contains("loaded for")), "{far:?}");
}
