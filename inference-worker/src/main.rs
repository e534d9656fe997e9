//! `openledger-worker`: the inference worker's command line.
//!
//! ```sh
//! openledger-worker generate --model SmolLM2-135M-Instruct.Q4_1.gguf \
//!     [--adapter ./my-peft-adapter] --prompt "The capital of France is" \
//!     --max-tokens 16 --temperature 0 --json
//! ```

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use openledger_inference_worker::{
	chat::Message,
	generate::{generate, generate_with_kernels, Generation, GenerationRequest},
	kernel_model::KernelLlama,
	lora::LoraAdapter,
	model::{Llama, WeightFormat},
	sampling::SamplingParams,
	tokenizer::Tokenizer,
};
use openledger_kernels::{
	backend::{Backend, Cpu, Cuda},
	gpu::Gpu,
};
use tracing_subscriber::EnvFilter;

/// The OpenLedger inference worker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
	#[command(subcommand)]
	command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
	/// Generate a completion of one prompt and print it (as one JSON object with `--json`).
	Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
	/// The model: a GGUF file, or a Hugging Face folder (config.json, safetensors,
	/// tokenizer.json).
	#[arg(long)]
	model: PathBuf,
	/// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
	#[arg(long)]
	adapter: Option<PathBuf>,
	/// The prompt text, used as is; with `--chat`, the user's message.
	#[arg(long)]
	prompt: String,
	/// Wrap the prompt in the model's chat template as a user turn (after `--system`), ready
	/// for the assistant's answer.
	#[arg(long)]
	chat: bool,
	/// With `--chat`: a system turn first (otherwise the template's default, if any).
	#[arg(long, requires = "chat")]
	system: Option<String>,
	/// The most tokens to generate.
	#[arg(long, default_value_t = 64)]
	max_tokens: usize,
	/// 0 for greedy decoding.
	#[arg(long, default_value_t = 0.0)]
	temperature: f32,
	/// Sample among the k most likely tokens only (0: all).
	#[arg(long, default_value_t = 0)]
	top_k: usize,
	/// Sample among the most likely tokens that together reach this probability.
	#[arg(long, default_value_t = 1.0)]
	top_p: f32,
	/// Penalty for tokens already seen (1: none).
	#[arg(long, default_value_t = 1.0)]
	repetition_penalty: f32,
	/// Seed of the sampler.
	#[arg(long, default_value_t = 0)]
	seed: u64,
	/// Stop when the output contains this text (repeatable).
	#[arg(long)]
	stop: Vec<String>,
	/// Dequantize the weights to f32 at load time.
	#[arg(long, conflicts_with = "quantize")]
	dequantize: bool,
	/// Quantize the weights at load time.
	#[arg(long, value_enum)]
	quantize: Option<Quantize>,
	/// Run the decoder composed of the compute kernels (`kernels/`) on the GGUF file's own
	/// quantized blocks, instead of candle's: on their CPU references, or with `--gpu` on the
	/// first CUDA device (weights, KV cache and adapter on the device).
	#[arg(long, conflicts_with_all = ["dequantize", "quantize"])]
	kernels: bool,
	/// With `--kernels`: on the GPU.
	#[arg(long, requires = "kernels")]
	gpu: bool,
	/// Print one JSON object: prompt_tokens, tokens, logprobs, text, finish_reason.
	#[arg(long)]
	json: bool,
}

/// Load-time quantization.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Quantize {
	/// 8-bit blocks (Q8_0).
	Int8,
	/// 4-bit blocks (Q4_1; the output projection in Q8_0).
	Int4,
}

fn main() -> Result<()> {
	// SAFETY: first thing in `main`, before any other thread exists.
	unsafe { openledger_inference_worker::threads::settle_cpu_threads() };
	tracing_subscriber::fmt()
		.with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
		.with_writer(std::io::stderr)
		.init();
	match Cli::parse().command {
		Command::Generate(args) => run_generate(args),
	}
}

fn run_generate(args: GenerateArgs) -> Result<()> {
	if args.prompt.is_empty() {
		bail!("--prompt is empty");
	}
	if args.kernels {
		return if args.gpu {
			let gpu = Gpu::first()?.ok_or_else(|| {
				anyhow!("--gpu: there is no CUDA driver or device on this machine")
			})?;
			run_with_kernels(args, Cuda::new(gpu))
		} else {
			run_with_kernels(args, Cpu)
		};
	}
	let device = Device::Cpu;
	let format = match (args.dequantize, args.quantize) {
		(true, _) => WeightFormat::F32,
		(false, Some(Quantize::Int8)) => WeightFormat::Int8,
		(false, Some(Quantize::Int4)) => WeightFormat::Int4,
		(false, None) => WeightFormat::AsStored,
	};
	let (model, tokenizer) = Llama::load(&args.model, &device, format)
		.with_context(|| format!("loading {}", args.model.display()))?;
	let adapter = load_adapter(&args, |dir| model.load_adapter(dir, None))?;
	let request = request(&args, &tokenizer)?;
	print(&generate(&model, &tokenizer, adapter.as_ref(), &request)?, args.json)
}

/// `generate` on the kernel decoder over `backend`.
fn run_with_kernels<B: Backend>(args: GenerateArgs, backend: B) -> Result<()> {
	let (model, tokenizer) = KernelLlama::from_gguf(&args.model, backend, None)
		.with_context(|| format!("loading {} onto the kernels", args.model.display()))?;
	let adapter = load_adapter(&args, |dir| model.load_adapter(dir, None))?;
	let request = request(&args, &tokenizer)?;
	print(&generate_with_kernels(&model, &tokenizer, adapter.as_ref(), &request)?, args.json)
}

/// The `--adapter`, loaded by `load` (which checks it against the model), if one was given.
fn load_adapter(
	args: &GenerateArgs,
	load: impl FnOnce(&std::path::Path) -> openledger_inference_worker::Result<LoraAdapter>,
) -> Result<Option<LoraAdapter>> {
	args.adapter
		.as_deref()
		.map(|dir| load(dir).with_context(|| format!("loading the adapter {}", dir.display())))
		.transpose()
}

/// The request the arguments ask for: the prompt (in the chat template with `--chat`) and the
/// sampling settings.
fn request(args: &GenerateArgs, tokenizer: &Tokenizer) -> Result<GenerationRequest> {
	let prompt = if args.chat {
		let mut messages = Vec::with_capacity(2);
		if let Some(system) = &args.system {
			messages.push(Message::new("system", system));
		}
		messages.push(Message::new("user", &args.prompt));
		tokenizer.chat_template()?.render(&messages, true)?
	} else {
		args.prompt.clone()
	};
	Ok(GenerationRequest {
		prompt,
		max_tokens: args.max_tokens,
		sampling: SamplingParams {
			temperature: args.temperature,
			top_k: args.top_k,
			top_p: args.top_p,
			repetition_penalty: args.repetition_penalty,
			seed: args.seed,
		},
		stop: args.stop.clone(),
	})
}

/// Prints a generation: one JSON object, or its text.
fn print(generation: &Generation, json: bool) -> Result<()> {
	if json {
		println!("{}", serde_json::to_string(generation)?);
	} else {
		println!("{}", generation.text);
	}
	Ok(())
}
