//! End to end against Hugging Face transformers + PEFT, side by side in one run: the same
//! model file (SmolLM2-135M-Instruct, Q4_1 GGUF), the same LoRA adapters (PEFT folders written
//! here), the same requests (many adapters in the mix, greedy), the same batch size, on the
//! same device.
//!
//! - transformers + PEFT (`scripts/reference/hf_throughput.py`, run from here): the GGUF
//!   dequantized to f32, every adapter loaded into one `PeftModel`, batches of mixed adapters
//!   (`adapter_names`), left-padded, `generate` greedy;
//! - ours, CPU: the continuous-batching engine over the candle decoder, with the weights as
//!   stored (the serving path) and dequantized to f32 (transformers' precision);
//! - with a CUDA device, both again on it: transformers + PEFT with `device="cuda"`, and the
//!   engine over the decoder composed of the CUDA kernels.
//!
//! `-- --gpu-only` leaves the CPU rows out (for a GPU machine's short lease).
//!
//! Needs python3 with torch, transformers, peft and gguf (`scripts/bench-vs-transformers.sh`
//! installs them when missing); without them the baseline rows say why they are missing.
//! Prints a Markdown table: generated tokens per second and each row's ratio to transformers +
//! PEFT on the same device. `OPENLEDGER_BENCH_DRY_RUN=1` serves 8 requests of 2 tokens, also on
//! the CUDA emulator, to show the whole bench runs before a lent GPU's minutes are spent on it;
//! its numbers mean nothing.

use std::{path::Path, sync::Arc, time::Instant};

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
const REQUESTS: usize = 128;
const ADAPTERS: usize = 32;
const MAX_TOKENS: usize = 16;
const BATCH: usize = 32;
const RANK: usize = 8;
const PROMPTS: [&str; 4] = [
	"The capital of France is",
	"<|im_start|>user\nWhat is a LoRA adapter?<|im_end|>\n<|im_start|>assistant\n",
	"def add(a, b):",
	"Data attribution pays the people whose records",
];

/// One measured configuration: generated tokens and seconds.
struct Run {
	generated: usize,
	seconds: f64,
}

impl Run {
	fn rate(&self) -> f64 {
		self.generated as f64 / self.seconds
	}
}

/// Request `i`: a prompt and an adapter in turn (every request has one).
fn requests(names: &[String]) -> Vec<(GenerationRequest, String)> {
	let (count, max_tokens) = if common::dry_run() { (8, 2) } else { (REQUESTS, MAX_TOKENS) };
	(0..count)
		.map(|i| {
			let request = GenerationRequest {
				prompt: PROMPTS[i % PROMPTS.len()].into(),
				max_tokens,
				sampling: SamplingParams::default(),
				stop: vec![],
				..Default::default()
			};
			(request, names[i % names.len()].clone())
		})
		.collect()
}

/// Serves the requests on `model`'s engine at batch [`BATCH`], adapters loaded beforehand.
fn ours<D: Decoder>(
	model: Arc<D>,
	tokenizer: &Arc<Tokenizer>,
	root: &Path,
	requests: &[(GenerationRequest, String)],
) -> Run {
	let config = EngineConfig {
		max_running: BATCH,
		max_batch_tokens: 1024,
		max_waiting: requests.len(),
		adapter_bytes: 1 << 30,
		adapter_pool_bytes: 1 << 30,
		..EngineConfig::default()
	};
	let mut engine = Engine::new(model, tokenizer.clone(), config).unwrap();
	let names: std::collections::BTreeSet<&String> = requests.iter().map(|(_, n)| n).collect();
	for name in &names {
		engine.register_adapter(name.as_str(), root.join(name));
	}
	// Load (and, on the kernel decoder, upload) every adapter first: serving is measured.
	let mut warm = requests[0].0.clone();
	warm.max_tokens = 1;
	for name in &names {
		engine.submit(&warm, Some(name)).unwrap();
	}
	engine.run_to_completion();
	let start = Instant::now();
	for (request, adapter) in requests {
		engine.submit(request, Some(adapter)).unwrap();
	}
	let done = engine.run_to_completion();
	let seconds = start.elapsed().as_secs_f64();
	let generated = done.iter().map(|c| c.result.as_ref().unwrap().tokens.len()).sum();
	Run { generated, seconds }
}

/// Serves the requests with transformers + PEFT on `device`, or says why it cannot.
fn transformers(
	gguf: &Path,
	root: &Path,
	requests: &[(GenerationRequest, String)],
	device: &str,
) -> Result<(Run, String), String> {
	let spec = serde_json::json!({
		"gguf": gguf,
		"adapters_dir": root,
		"batch": BATCH,
		"device": device,
		"dtype": "float32",
		"requests": requests.iter().map(|(r, a)| serde_json::json!({
			"prompt": r.prompt, "adapter": a, "max_tokens": r.max_tokens,
		})).collect::<Vec<_>>(),
	});
	let input = root.join("requests.json");
	std::fs::write(&input, spec.to_string()).map_err(|e| e.to_string())?;
	let out = common::run_reference("hf_throughput.py", &input)?;
	let run = Run {
		generated: out["generated"].as_u64().unwrap_or(0) as usize,
		seconds: out["seconds"].as_f64().unwrap_or(f64::NAN),
	};
	let versions = format!(
		"torch {}, transformers {}, peft {}, {} threads",
		out["torch"], out["transformers"], out["peft"], out["threads"]
	);
	Ok((run, versions.replace('"', "")))
}

/// Prints transformers + PEFT's row on `device` (with its versions), or why it is missing;
/// returns its run, the baseline of the rows after it.
fn baseline_row<'a>(device: &str, hf: &'a Result<(Run, String), String>) -> Option<&'a Run> {
	match hf {
		Ok((run, versions)) => {
			row(&format!("transformers + PEFT, {device}, f32 ({versions})"), run, Some(run));
			Some(run)
		}
		Err(why) => {
			println!("| transformers + PEFT, {device} | SKIPPED: {why} | | | |");
			None
		}
	}
}

fn row(label: &str, run: &Run, baseline: Option<&Run>) {
	let ratio = baseline.map_or("—".to_string(), |b| format!("{:.2}x", run.rate() / b.rate()));
	println!("| {label} | {} | {:.2} | {:.1} | {ratio} |", run.generated, run.seconds, run.rate());
}

fn main() {
	// SAFETY: first thing in `main`, before any other thread exists. (Both sides of each
	// comparison run in this process and get the same setting.)
	unsafe { openledger_inference_worker::threads::settle_cpu_threads() };
	let gguf = models::smollm2_gguf();
	assert!(gguf.exists(), "{} is missing: run scripts/fetch-models.sh", gguf.display());
	let (quantized, tokenizer) =
		Llama::from_gguf(&gguf, &Device::Cpu, WeightFormat::AsStored).unwrap();
	let tokenizer = Arc::new(tokenizer);
	let root = tempfile::tempdir().unwrap();
	let names = common::write_qv_adapters(&quantized.config, root.path(), ADAPTERS, RANK);
	let requests = requests(&names);
	if common::dry_run() {
		println!(
			"DRY RUN (OPENLEDGER_BENCH_DRY_RUN=1): {} requests; numbers mean nothing.",
			requests.len()
		);
	}
	println!(
		"SmolLM2-135M-Instruct, {} requests of up to {} greedy tokens, {ADAPTERS} distinct \
		 rank-{RANK} q/v adapters in the mix (every request has one), batch {BATCH}",
		requests.len(),
		requests[0].0.max_tokens
	);
	println!();
	println!("| system | generated tokens | seconds | generated tok/s | vs transformers + PEFT |");
	println!("|---|---|---|---|---|");
	if !std::env::args().any(|a| a == "--gpu-only") {
		let hf = transformers(&gguf, root.path(), &requests, "cpu");
		let baseline = baseline_row("CPU", &hf);
		let run = ours(Arc::new(quantized), &tokenizer, root.path(), &requests);
		row(
			&format!(
				"ours, CPU, Q4_1/Q8_0 as stored, {} threads",
				candle_core::utils::get_num_threads()
			),
			&run,
			baseline,
		);
		let (dense, _) = Llama::from_gguf(&gguf, &Device::Cpu, WeightFormat::F32).unwrap();
		row("ours, CPU, f32", &ours(Arc::new(dense), &tokenizer, root.path(), &requests), baseline);
	}
	match Gpu::first() {
		Ok(Some(gpu)) if gpu.is_emulator() && !common::dry_run() => {
			println!("\nSKIPPED: the GPU rows (the CUDA emulator is not a GPU)")
		}
		Ok(Some(gpu)) => {
			let name = gpu.name().unwrap_or_else(|e| e.to_string());
			let hf = transformers(&gguf, root.path(), &requests, "cuda");
			let baseline = baseline_row(&name, &hf);
			let (kernels, _) = KernelLlama::from_gguf(&gguf, Cuda::new(gpu), Some(256)).unwrap();
			let run = ours(Arc::new(kernels), &tokenizer, root.path(), &requests);
			row(&format!("ours, {name}, kernel decoder, Q4_1/Q8_0 as stored"), &run, baseline);
		}
		Ok(None) => println!("\nSKIPPED: the GPU rows (no CUDA driver or device here)"),
		Err(e) => panic!("the GPU is there but cannot be used: {e}"),
	}
}
