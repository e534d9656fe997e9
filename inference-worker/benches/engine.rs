//! Side-by-side benchmarks on the real model (SmolLM2-135M-Instruct Q4_1 GGUF), in one run:
//!
//! - prefill and decode tokens/s of this engine against candle-transformers' quantized Llama
//!   (`quantized_llama::ModelWeights`) on the same file, same prompt, same thread count;
//! - decode with a LoRA adapter applied (unmerged) against the base model alone;
//! - an adapter's cold load from disk (PEFT folder → ready to serve).
//!
//!     cargo bench --release -p openledger-inference-worker --bench engine
//!
//! (`scripts/bench-worker.sh` runs it with the workspace's settings.) Prints a Markdown table.

use std::{collections::BTreeMap, time::Instant};

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use openledger_inference_worker::{
	lora::{
		synthetic::{self, SyntheticAdapter},
		LoraAdapter, Projection,
	},
	model::{KvCache, Llama, WeightFormat},
	models,
	sampling::argmax,
};

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 64;
const RUNS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
	values.sort_by(f64::total_cmp);
	values[values.len() / 2]
}

/// Prefill then greedy decode with this engine; returns (prefill tok/s, decode tok/s).
fn ours(model: &Llama, prompt: &[u32], adapter: Option<&LoraAdapter>) -> (f64, f64) {
	let mut cache = KvCache::new(model, 4096).unwrap();
	let start = Instant::now();
	let logits = model.forward(prompt, &mut cache, adapter, false).unwrap();
	let prefill = prompt.len() as f64 / start.elapsed().as_secs_f64();
	let mut next = argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()) as u32;
	let start = Instant::now();
	for _ in 0..DECODE_TOKENS {
		let logits = model.forward(&[next], &mut cache, adapter, false).unwrap();
		next = argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()) as u32;
	}
	(prefill, DECODE_TOKENS as f64 / start.elapsed().as_secs_f64())
}

/// The same with candle-transformers' quantized Llama.
fn baseline(model: &mut ModelWeights, prompt: &[u32]) -> (f64, f64) {
	model.clear_kv_cache();
	let device = Device::Cpu;
	let input = Tensor::new(prompt, &device).unwrap().unsqueeze(0).unwrap();
	let start = Instant::now();
	let logits = model.forward(&input, 0).unwrap();
	let prefill = prompt.len() as f64 / start.elapsed().as_secs_f64();
	let mut next = argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()) as u32;
	let start = Instant::now();
	for i in 0..DECODE_TOKENS {
		let input = Tensor::new(&[next], &device).unwrap().unsqueeze(0).unwrap();
		let logits = model.forward(&input, prompt.len() + i).unwrap();
		next = argmax(&logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap()) as u32;
	}
	(prefill, DECODE_TOKENS as f64 / start.elapsed().as_secs_f64())
}

fn main() {
	// SAFETY: first thing in `main`, before any other thread exists. (Both sides of each
	// comparison run in this process and get the same setting.)
	unsafe { openledger_inference_worker::threads::settle_cpu_threads() };
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let device = Device::Cpu;
	let (model, tokenizer) = Llama::from_gguf(&path, &device, WeightFormat::AsStored).unwrap();
	let mut file = std::fs::File::open(&path).unwrap();
	let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
	let mut reference = ModelWeights::from_gguf(content, &mut file, &device).unwrap();

	let text =
		"DataNets are community datasets whose contributors are paid when a model uses them. ";
	let mut prompt = tokenizer.encode(&text.repeat(16)).unwrap();
	prompt.truncate(PROMPT_TOKENS);

	let dir = tempfile::tempdir().unwrap();
	let spec = SyntheticAdapter {
		seed: 1,
		rank: 8,
		alpha: 16.0,
		targets: vec![Projection::Q, Projection::K, Projection::V, Projection::O],
		rank_pattern: BTreeMap::new(),
		alpha_pattern: BTreeMap::new(),
	};
	synthetic::write(&spec, &model.config, dir.path()).unwrap();
	let mut loads = Vec::new();
	let mut adapter = None;
	for _ in 0..5 {
		let start = Instant::now();
		adapter = Some(model.load_adapter(dir.path(), None).unwrap());
		loads.push(start.elapsed().as_secs_f64() * 1e3);
	}
	let adapter = adapter.unwrap();

	let (mut ours_pf, mut ours_dec, mut base_pf, mut base_dec, mut lora_dec) =
		(vec![], vec![], vec![], vec![], vec![]);
	for _ in 0..RUNS {
		let (p, d) = ours(&model, &prompt, None);
		ours_pf.push(p);
		ours_dec.push(d);
		let (p, d) = baseline(&mut reference, &prompt);
		base_pf.push(p);
		base_dec.push(d);
		lora_dec.push(ours(&model, &prompt, Some(&adapter)).1);
	}
	let (op, od, bp, bd, ld) =
		(median(ours_pf), median(ours_dec), median(base_pf), median(base_dec), median(lora_dec));
	println!("SmolLM2-135M-Instruct Q4_1, CPU, {} threads, prompt {PROMPT_TOKENS} tokens, {DECODE_TOKENS} decoded, median of {RUNS}", candle_core::utils::get_num_threads());
	println!();
	println!("| measure | ours | baseline | ours / baseline |");
	println!("|---|---|---|---|");
	println!(
		"| prefill tok/s (vs candle-transformers quantized_llama) | {op:.1} | {bp:.1} | {:.2}x |",
		op / bp
	);
	println!(
		"| decode tok/s (vs candle-transformers quantized_llama) | {od:.1} | {bd:.1} | {:.2}x |",
		od / bd
	);
	println!("| decode tok/s with a rank-8 q/k/v/o adapter (vs base alone) | {ld:.1} | {od:.1} | {:.2}x |", ld / od);
	println!();
	println!(
		"adapter cold load (rank 8, q/k/v/o, {} modules, {:.1} MB): median {:.1} ms",
		adapter.module_count(),
		adapter.size_bytes as f64 / 1e6,
		median(loads)
	);
}
