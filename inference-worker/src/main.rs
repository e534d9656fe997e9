//! `openledger-worker`: the inference worker's command line.
//!
//! ```sh
//! openledger-worker generate --model SmolLM2-135M-Instruct.Q4_1.gguf \
//!     [--adapter ./my-peft-adapter] --prompt "The capital of France is" \
//!     --max-tokens 16 --temperature 0 --json
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use openledger_inference_worker::{
	generate::{generate, GenerationRequest},
	lora::LoraAdapter,
	model::{Llama, WeightFormat},
	sampling::SamplingParams,
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
	/// The model: a GGUF file.
	#[arg(long)]
	model: PathBuf,
	/// A PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
	#[arg(long)]
	adapter: Option<PathBuf>,
	/// The prompt text, used as is (write the chat template's tokens yourself).
	#[arg(long)]
	prompt: String,
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
	#[arg(long)]
	dequantize: bool,
	/// Print one JSON object: prompt_tokens, tokens, logprobs, text, finish_reason.
	#[arg(long)]
	json: bool,
}

fn main() -> Result<()> {
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
	let device = Device::Cpu;
	let format = if args.dequantize { WeightFormat::F32 } else { WeightFormat::AsStored };
	let (model, tokenizer) = Llama::from_gguf(&args.model, &device, format)
		.with_context(|| format!("loading {}", args.model.display()))?;
	let adapter = match &args.adapter {
		Some(dir) => Some(
			LoraAdapter::load(
				dir,
				None,
				&model.config,
				|layer, p| model.projection(layer, p).map(|l| (l.in_features, l.out_features)),
				&device,
			)
			.with_context(|| format!("loading the adapter {}", dir.display()))?,
		),
		None => None,
	};
	let request = GenerationRequest {
		prompt: args.prompt,
		max_tokens: args.max_tokens,
		sampling: SamplingParams {
			temperature: args.temperature,
			top_k: args.top_k,
			top_p: args.top_p,
			repetition_penalty: args.repetition_penalty,
			seed: args.seed,
		},
		stop: args.stop,
	};
	let generation = generate(&model, &tokenizer, adapter.as_ref(), &request)?;
	if args.json {
		println!("{}", serde_json::to_string(&generation)?);
	} else {
		println!("{}", generation.text);
	}
	Ok(())
}
