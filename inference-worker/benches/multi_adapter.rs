//! Throughput with many adapters in the mix, against the base model alone, side by side in one
//! run on the real model (SmolLM2-135M-Instruct, weights in the GGUF's Q4_1/Q8_0 blocks, as a
//! worker serves them):
//!
//! the same requests (short prompts, a few greedy tokens each) through the continuous-batching
//! engine at the same batch size, served with no adapter, one adapter, 100 and 1,000 distinct
//! adapters (round robin). All adapters fit the adapter cache, as on a worker that holds its
//! adapters in memory; loading is measured separately (`engine` bench).
//!
//! With a CUDA device, the same mixes again through the engine over the decoder composed of the
//! CUDA kernels (`Engine<KernelLlama<Cuda>>`: the GGUF's Q4_1/Q8_0 blocks, KV cache and adapter
//! pool on the device, tokens sampled there); without one that part says it is skipped.
//!
//!     scripts/bench-worker.sh   (or cargo bench --workspace --bench multi_adapter)
//!     cargo bench --workspace --bench multi_adapter -- --gpu-only   (scripts/test-gpu.sh)
//!
//! Prints a Markdown table per decoder. `OPENLEDGER_BENCH_DRY_RUN=1` serves 12 requests (the
//! adapter mixes capped at 12) in a 256 MiB pool, also on the CUDA emulator, to show the whole
//! bench runs before a lent GPU's minutes are spent on it; its numbers mean nothing.

use std::{sync::Arc, time::Instant};

use candle_core::Device;
use openledger_inference_worker::{
	decoder::Decoder,
	engine::{Engine, EngineConfig},
	generate::GenerationRequest,
	kernel_model::KernelLlama,
	model::{Llama, WeightFormat},
	models,
	sampling::SamplingParams,
	tokenizer::Tokenizer,
};
use openledger_kernels::{backend::Cuda, gpu::Gpu};

mod common;
const REQUESTS: usize = 1000;
const MAX_TOKENS: usize = 4;
const BATCH: usize = 64;
const RANK: usize = 8;

fn main() {
	// SAFETY: first thing in `main`, before any other thread exists. (Both sides of each
	// comparison run in this process and get the same setting.)
	unsafe { openledger_inference_worker::threads::settle_cpu_threads() };
	let dry = common::dry_run();
	let count = if dry { 12 } else { REQUESTS };
	if dry {
		println!("DRY RUN (OPENLEDGER_BENCH_DRY_RUN=1): {count} requests; numbers mean nothing.");
	}
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored).unwrap();
	let (model, tokenizer) = (Arc::new(model), Arc::new(tokenizer));
	let root = tempfile::tempdir().unwrap();
	let names = common::write_qv_adapters(&model.config, root.path(), count, RANK);
	let prompts = [
		"The capital of France is",
		"Once upon a time there",
		"def add(a, b):",
		"Data attribution pays",
	];
	let requests: Vec<GenerationRequest> = (0..count)
		.map(|i| GenerationRequest {
			prompt: prompts[i % prompts.len()].into(),
			max_tokens: MAX_TOKENS,
			sampling: SamplingParams::default(),
			stop: vec![],
			..Default::default()
		})
		.collect();

	let gpu_only = std::env::args().any(|a| a == "--gpu-only");
	if !gpu_only {
		let rows = measure(model.clone(), &tokenizer, root.path(), &names, &requests);
		println!(
			"SmolLM2-135M-Instruct (Q4_1/Q8_0 as stored), candle decoder, CPU, {} threads, {count} \
			 requests of {MAX_TOKENS} greedy tokens, batch {BATCH}, adapters rank {RANK} on q/v",
			candle_core::utils::get_num_threads()
		);
		print_table(&rows);
	}
	match Gpu::first() {
		Ok(Some(gpu)) if gpu.is_emulator() && !dry => {
			println!("SKIPPED: the kernel decoder on a GPU (the CUDA emulator is not one)")
		}
		Ok(Some(gpu)) => {
			let name = gpu.name().unwrap_or_else(|e| e.to_string());
			let (kernels, _) = KernelLlama::from_gguf(&path, Cuda::new(gpu), Some(256)).unwrap();
			let rows = measure(Arc::new(kernels), &tokenizer, root.path(), &names, &requests);
			println!(
				"SmolLM2-135M-Instruct (Q4_1/Q8_0 as stored), kernel decoder on {name}, \
				 {count} requests of {MAX_TOKENS} greedy tokens, batch {BATCH}, adapters rank \
				 {RANK} on q/v"
			);
			print_table(&rows);
		}
		Ok(None) => {
			println!("SKIPPED: the kernel decoder on a GPU (no CUDA driver or device here)")
		}
		Err(e) => panic!("the GPU is there but cannot be used: {e}"),
	}
}

/// (label, generated tokens/s, tokens computed/s, seconds) of each mix on `model`.
fn measure<D: Decoder>(
	model: Arc<D>,
	tokenizer: &Arc<Tokenizer>,
	root: &std::path::Path,
	names: &[String],
	requests: &[GenerationRequest],
) -> Vec<(&'static str, f64, f64, f64)> {
	// (label, distinct adapters) — 0 is the base model alone.
	let mixes = [
		("base model alone", 0),
		("1 adapter", 1),
		("100 adapters", 100),
		("1,000 adapters", 1000),
	];
	let mut rows = Vec::new();
	for (label, distinct) in mixes {
		let distinct = distinct.min(requests.len());
		let config = EngineConfig {
			max_running: BATCH,
			max_batch_tokens: 512,
			max_waiting: requests.len(),
			// Room for every adapter (on the kernel decoder, in its pool too).
			adapter_bytes: if common::dry_run() { 256 << 20 } else { 8 << 30 },
			adapter_pool_bytes: if common::dry_run() { 256 << 20 } else { 8 << 30 },
			..EngineConfig::default()
		};
		let mut engine = Engine::new(model.clone(), tokenizer.clone(), config).unwrap();
		for name in names {
			engine.register_adapter(name.clone(), root.join(name));
		}
		// Warm the adapter cache: the mix is measured, not the loads.
		for name in names.iter().take(distinct) {
			engine.submit(&requests[0], Some(name)).unwrap();
		}
		engine.run_to_completion();
		let computed_before = engine.stats().tokens_computed;
		let start = Instant::now();
		for (i, request) in requests.iter().enumerate() {
			let adapter = (distinct > 0).then(|| names[i % distinct].as_str());
			engine.submit(request, adapter).unwrap();
		}
		let done = engine.run_to_completion();
		let seconds = start.elapsed().as_secs_f64();
		let generated: usize = done.iter().map(|c| c.result.as_ref().unwrap().tokens.len()).sum();
		let computed = engine.stats().tokens_computed - computed_before;
		rows.push((label, generated as f64 / seconds, computed as f64 / seconds, seconds));
	}
	rows
}

fn print_table(rows: &[(&str, f64, f64, f64)]) {
	println!();
	println!("| mix | generated tok/s | tokens computed/s | seconds | vs base alone |");
	println!("|---|---|---|---|---|");
	let base = rows[0].1;
	for (label, generated, computed, seconds) in rows {
		println!(
			"| {label} | {generated:.1} | {computed:.1} | {seconds:.1} | {:.2}x |",
			generated / base
		);
	}
	println!();
}
