//! `openledger-worker`: the inference worker's command line.
//!
//! ```sh
//! openledger-worker generate --model SmolLM2-135M-Instruct.Q4_1.gguf \
//!     [--adapter ./my-peft-adapter] --prompt "The capital of France is" \
//!     --max-tokens 16 --temperature 0 --json
//! openledger-worker serve --model SmolLM2-135M-Instruct.Q4_1.gguf \
//!     [--adapters ./adapters] [--listen 127.0.0.1:8080]
//! ```

use std::{
	net::SocketAddr,
	path::{Path, PathBuf},
	sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use openledger_inference_worker::{
	adapter_registry::{self, AdapterRegistry},
	chain_rpc::{Node, LOOKUP_TIMEOUT},
	chat::Message,
	datanet_sync::{store_content, DataNetSync, SyncConfig},
	decoder::Decoder,
	ebnf_grammar::EbnfGrammar,
	embedding_service::EmbeddingService,
	embeddings::EmbeddingModel,
	engine::EngineConfig,
	generate::{
		check_token_ids, generate, generate_with_kernels, Generation, GenerationRequest,
		ResponseFormat,
	},
	http_api::{self, ApiState},
	json_mode::JsonGrammar,
	kernel_model::KernelLlama,
	lora::{read_adapter_files, LoraAdapter},
	model::{Llama, WeightFormat},
	prompt_registry::PromptRegistry,
	regex_grammar::RegexGrammar,
	retrieval::{embed_records, read_records, VectorIndex},
	sampling::SamplingParams,
	service::EngineService,
	tokenizer::Tokenizer,
};
use openledger_kernels::{
	backend::{Backend, Cpu, Cuda},
	gpu::Gpu,
};
use openledger_primitives::{
	adapter_content_hash, content_hash_of, DataNetId, ADAPTER_FILES, MAX_PAGE,
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
	/// Serve the model and its LoRA adapters over HTTP (OpenAI's completions and chat
	/// completions API), many requests batched together.
	Serve(ServeArgs),
	/// Print the sentence embeddings of texts: one JSON object a line (`index`, `tokens`,
	/// `embedding`).
	Embed(EmbedArgs),
	/// Print the content hash (BLAKE2b-256, as DataNets name records) and size of files, one
	/// JSON object a line (`file`, `content_hash`, `size`), to contribute them as records, and
	/// of adapter folders (`--adapter`), to register them; with `--store DIR`, also copy each
	/// into DIR under its hash, where `serve --content-dir DIR` reads it.
	ContentHash(ContentHashArgs),
}

#[derive(Debug, clap::Args)]
struct ContentHashArgs {
	/// The files.
	#[arg(required_unless_present = "adapter")]
	files: Vec<PathBuf>,
	/// A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`) whose
	/// content hash to print, as the model registry names adapters (`adapter`, `content_hash`,
	/// `size`); repeat for more. With `--store`, its two files are copied into a folder of the
	/// content folder named by that hash.
	#[arg(long)]
	adapter: Vec<PathBuf>,
	/// A content folder to copy them into, each named by its hash.
	#[arg(long)]
	store: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct EmbedArgs {
	/// A sentence-transformers folder (config.json, model.safetensors, tokenizer.json,
	/// modules.json), such as all-MiniLM-L6-v2.
	#[arg(long)]
	model: PathBuf,
	/// A text to embed (repeatable); without any, each line of standard input is one.
	#[arg(long = "text")]
	texts: Vec<String>,
	/// Cut texts longer than the model takes to their first tokens (otherwise they are refused).
	#[arg(long)]
	truncate: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
	/// The model: a GGUF file, or a Hugging Face folder (config.json, safetensors,
	/// tokenizer.json).
	#[arg(long)]
	model: PathBuf,
	/// The address to listen on.
	#[arg(long, default_value = "127.0.0.1:8080")]
	listen: SocketAddr,
	/// The base model's name in requests (`model`) and in `/v1/models` (default: the file or
	/// folder name without its extension).
	#[arg(long)]
	served_model_name: Option<String>,
	/// A folder of PEFT adapters: each subfolder with an `adapter_config.json` is served under
	/// the subfolder's name (loaded when a request first names it), those added later too.
	#[arg(long)]
	adapters: Option<PathBuf>,
	/// Let clients load and unload adapters by path (`/v1/load_lora_adapter`,
	/// `/v1/unload_lora_adapter`): only where the clients may read the worker's files.
	#[arg(long)]
	allow_runtime_adapters: bool,
	/// One more adapter, as NAME=FOLDER (repeatable).
	#[arg(long = "adapter", value_parser = named_folder)]
	adapter: Vec<(String, PathBuf)>,
	/// The most requests served together in a step.
	#[arg(long, default_value_t = 32)]
	max_running: usize,
	/// The most requests waiting to start; more are answered 503 at once.
	#[arg(long, default_value_t = 256)]
	max_waiting: usize,
	/// The most tokens one step runs (long prompts are prefilled in chunks of it).
	#[arg(long, default_value_t = 512)]
	max_batch_tokens: usize,
	/// MiB of the paged KV cache.
	#[arg(long, default_value_t = 256)]
	kv_cache_mib: usize,
	/// MiB of loaded adapters kept ready (and, with `--kernels`, of the adapter pool).
	#[arg(long, default_value_t = 512)]
	adapter_mib: usize,
	/// A sentence-transformers folder (such as all-MiniLM-L6-v2) to serve at `/v1/embeddings`,
	/// `/score` and `/rerank`.
	#[arg(long)]
	embedding_model: Option<PathBuf>,
	/// The embedding model's name in requests and in `/v1/models` (default: its folder's name).
	#[arg(long, requires = "embedding_model")]
	served_embedding_model_name: Option<String>,
	/// DataNet records to retrieve from (`/v1/retrieve`, a chat's `retrieval`): a JSON-lines
	/// file of `{"id", "datanet", "text"}`, embedded at start-up.
	#[arg(long, requires = "embedding_model")]
	records: Option<PathBuf>,
	/// The most records held for retrieval.
	#[arg(long, default_value_t = 100_000)]
	max_records: usize,
	/// Let clients add and delete records (`/v1/records`, `/v1/records/delete`).
	#[arg(long, requires = "embedding_model")]
	allow_runtime_records: bool,
	/// Follow the chain of this node's WebSocket JSON-RPC (`ws://127.0.0.1:9944`), read at its
	/// finalized blocks: chats may name the prompts registered on it (`"prompt": {"id",
	/// "version", "variables"}`), requests the adapters registered on it for this base model
	/// (`"model": "chain:<id>"`), and the DataNets named by `--datanet` are served.
	#[arg(long, requires = "content_dir")]
	chain: Option<String>,
	/// A DataNet whose accepted records are served, each checked against the DataNet's
	/// commitment and its content hash (`GET /v1/datanets` shows how far); repeat for more.
	/// The records then come from the chain only.
	#[arg(
		long,
		requires_all = ["chain", "embedding_model"],
		conflicts_with_all = ["records", "allow_runtime_records"]
	)]
	datanet: Vec<DataNetId>,
	/// The folder holding the contents the chain names by hash (DataNet records, external
	/// prompt templates), each in a file named by its content hash (64 hex digits, no `0x`),
	/// and adapters' files, in a folder named so (`content-hash --adapter DIR --store` puts
	/// them there), however they were fetched from their URI.
	#[arg(long, requires = "chain")]
	content_dir: Option<PathBuf>,
	/// Seconds between two reads of the chain.
	#[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
	chain_interval_secs: u64,
	#[command(flatten)]
	weights: WeightArgs,
}

/// `NAME=FOLDER`.
fn named_folder(value: &str) -> Result<(String, PathBuf), String> {
	match value.split_once('=') {
		Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
			adapter_registry::unreserved(name)?;
			Ok((name.to_string(), PathBuf::from(dir)))
		}
		_ => Err(format!("{value:?} is not NAME=FOLDER")),
	}
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
	/// Sample among the tokens at least this many times as likely as the most likely one
	/// (0: all).
	#[arg(long, default_value_t = 0.0)]
	min_p: f32,
	/// Penalty for tokens already seen (1: none).
	#[arg(long, default_value_t = 1.0)]
	repetition_penalty: f32,
	/// OpenAI's presence penalty on tokens already generated (0: none; -2 to 2).
	#[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
	presence_penalty: f32,
	/// OpenAI's frequency penalty, per time a token was already generated (0: none; -2 to 2).
	#[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
	frequency_penalty: f32,
	/// Go on past the end-of-sequence token, to --max-tokens.
	#[arg(long)]
	ignore_eos: bool,
	/// Keep special tokens (`<|im_end|>`, ...) in the text (left out by default, as vLLM's
	/// `skip_special_tokens`).
	#[arg(long)]
	keep_special_tokens: bool,
	/// Generate at least this many tokens before the output may end (at most --max-tokens).
	#[arg(long, default_value_t = 0)]
	min_tokens: usize,
	/// A bias added to a token's logit, as TOKEN_ID=BIAS (-100 to 100); may be repeated.
	#[arg(long, value_parser = parse_logit_bias, allow_negative_numbers = true)]
	logit_bias: Vec<(u32, f32)>,
	/// JSON mode: hold the output to one JSON object, token by token.
	#[arg(long, conflicts_with_all = ["json_schema", "regex", "grammar", "grammar_file"])]
	json_object: bool,
	/// Hold the output to what the JSON schema in this file allows, token by token.
	#[arg(long, conflicts_with_all = ["regex", "grammar", "grammar_file"])]
	json_schema: Option<PathBuf>,
	/// Hold the output to a regular expression, token by token: the whole output matches it
	/// (vLLM's guided_regex).
	#[arg(long, conflicts_with_all = ["grammar", "grammar_file"])]
	regex: Option<String>,
	/// Hold the output to a context-free grammar in GBNF (llama.cpp's, vLLM's
	/// guided_grammar), token by token: the whole output is a sentence of its `root` rule.
	#[arg(long, conflicts_with = "grammar_file")]
	grammar: Option<String>,
	/// --grammar, read from this file.
	#[arg(long)]
	grammar_file: Option<PathBuf>,
	/// Seed of the sampler.
	#[arg(long, default_value_t = 0)]
	seed: u64,
	/// With --json: the most likely tokens at each step to report with their log-probabilities
	/// (`top_logprobs`; 0: none, at most 20).
	#[arg(long, default_value_t = 0)]
	top_logprobs: usize,
	/// With --json: the log-probability of each prompt token after the first, and this many
	/// most likely tokens at each prompt position (`prompt_logprobs`; at most 20).
	#[arg(long)]
	prompt_logprobs: Option<usize>,
	/// Stop when the output contains this text (repeatable).
	#[arg(long)]
	stop: Vec<String>,
	/// Keep the stop text that ended the output in it (vLLM's include_stop_str_in_output; the
	/// end-of-sequence token's text too, with --keep-special-tokens).
	#[arg(long)]
	include_stop_str_in_output: bool,
	/// Generate only these tokens (vLLM's allowed_token_ids), as ids separated by commas.
	#[arg(long, value_delimiter = ',')]
	allowed_token_ids: Vec<u32>,
	#[command(flatten)]
	weights: WeightArgs,
	/// Print one JSON object: prompt_tokens, tokens, logprobs, top_logprobs, prompt_logprobs,
	/// text, finish_reason.
	#[arg(long)]
	json: bool,
}

/// How the model's weights are held and which decoder runs them.
#[derive(Debug, clap::Args)]
struct WeightArgs {
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
}

impl WeightArgs {
	/// The candle decoder's weight format these arguments ask for.
	fn format(&self) -> WeightFormat {
		match (self.dequantize, self.quantize) {
			(true, _) => WeightFormat::F32,
			(false, Some(Quantize::Int8)) => WeightFormat::Int8,
			(false, Some(Quantize::Int4)) => WeightFormat::Int4,
			(false, None) => WeightFormat::AsStored,
		}
	}
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
	openledger_inference_worker::allocator::keep_freed_memory();
	tracing_subscriber::fmt()
		.with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
		.with_writer(std::io::stderr)
		.init();
	match Cli::parse().command {
		Command::Generate(args) => run_generate(args),
		Command::Serve(args) => run_serve(args),
		Command::Embed(args) => run_embed(args),
		Command::ContentHash(args) => run_content_hash(args),
	}
}

fn run_generate(args: GenerateArgs) -> Result<()> {
	if args.prompt.is_empty() {
		bail!("--prompt is empty");
	}
	if args.weights.kernels {
		return if args.weights.gpu {
			let gpu = Gpu::first()?.ok_or_else(|| {
				anyhow!("--gpu: there is no CUDA driver or device on this machine")
			})?;
			run_with_kernels(args, Cuda::new(gpu))
		} else {
			run_with_kernels(args, Cpu)
		};
	}
	let (model, tokenizer) = Llama::load(&args.model, &Device::Cpu, args.weights.format())
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
	let biased: Vec<u32> = args.logit_bias.iter().map(|(t, _)| *t).collect();
	check_token_ids("--logit-bias", &biased, tokenizer.vocab_size())?;
	check_token_ids("--allowed-token-ids", &args.allowed_token_ids, tokenizer.vocab_size())?;
	// The grammar's text, and where it came from (for an error).
	let grammar = match (&args.grammar, &args.grammar_file) {
		(Some(text), _) => Some((text.clone(), "--grammar".to_string())),
		(None, Some(path)) => Some((
			std::fs::read_to_string(path)
				.with_context(|| format!("reading the grammar {}", path.display()))?,
			path.display().to_string(),
		)),
		(None, None) => None,
	};
	Ok(GenerationRequest {
		prompt: prompt.into(),
		max_tokens: args.max_tokens,
		sampling: SamplingParams {
			temperature: args.temperature,
			top_k: args.top_k,
			top_p: args.top_p,
			min_p: args.min_p,
			repetition_penalty: args.repetition_penalty,
			presence_penalty: args.presence_penalty,
			frequency_penalty: args.frequency_penalty,
			logit_bias: args.logit_bias.clone(),
			allowed_token_ids: args.allowed_token_ids.clone(),
			bad_words: Vec::new(),
			seed: args.seed,
			top_logprobs: args.top_logprobs,
		},
		stop: args.stop.clone(),
		stop_token_ids: Vec::new(),
		ignore_eos: args.ignore_eos,
		prompt_logprobs: args.prompt_logprobs,
		prompt_logprobs_from: 0,
		min_tokens: args.min_tokens,
		skip_special_tokens: !args.keep_special_tokens,
		include_stop_str_in_output: args.include_stop_str_in_output,
		cache_salt: None,
		response_format: match (grammar, &args.regex, &args.json_schema, args.json_object) {
			(Some((text, source)), ..) => {
				let grammar = EbnfGrammar::new(&text).map_err(|e| anyhow!("{source}: {e}"))?;
				ResponseFormat::Grammar(Arc::new(grammar))
			}
			(None, Some(pattern), ..) => {
				let grammar =
					RegexGrammar::new(pattern).map_err(|e| anyhow!("--regex {pattern:?}: {e}"))?;
				ResponseFormat::Regex(Arc::new(grammar))
			}
			(None, None, Some(path), _) => {
				let text = std::fs::read_to_string(path)
					.with_context(|| format!("reading the JSON schema {}", path.display()))?;
				let schema = serde_json::from_str(&text)
					.with_context(|| format!("{} is not JSON", path.display()))?;
				let grammar = JsonGrammar::from_schema(&schema)
					.map_err(|e| anyhow!("{}: {e}", path.display()))?;
				ResponseFormat::Json(Arc::new(grammar))
			}
			(None, None, None, true) => ResponseFormat::json_object(),
			(None, None, None, false) => ResponseFormat::Text,
		},
	})
}

/// `--logit-bias`'s TOKEN_ID=BIAS.
fn parse_logit_bias(arg: &str) -> std::result::Result<(u32, f32), String> {
	let (token, bias) = arg.split_once('=').ok_or("expected TOKEN_ID=BIAS")?;
	let token = token.trim().parse().map_err(|e| format!("token id {token:?}: {e}"))?;
	let bias = bias.trim().parse().map_err(|e| format!("bias {bias:?}: {e}"))?;
	Ok((token, bias))
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

/// One line of `embed`'s output (a struct: its `f32`s are written as the shortest decimals that
/// read back the same, and its fields in this order).
#[derive(serde::Serialize)]
struct EmbedLine {
	index: usize,
	tokens: usize,
	embedding: Vec<f32>,
}

/// `embed`: prints each text's embedding as a JSON line.
fn run_embed(args: EmbedArgs) -> Result<()> {
	let model = EmbeddingModel::load(&args.model)
		.with_context(|| format!("loading {}", args.model.display()))?;
	let texts = match args.texts.is_empty() {
		false => args.texts,
		true => {
			std::io::stdin().lines().collect::<Result<_, _>>().context("reading standard input")?
		}
	};
	let truncate = args.truncate.then(|| model.max_tokens());
	let inputs =
		texts.iter().map(|text| model.tokenize(text, truncate)).collect::<Result<Vec<_>, _>>()?;
	for (index, (tokens, embedding)) in inputs.iter().zip(model.embed(&inputs)?).enumerate() {
		let line = EmbedLine { index, tokens: tokens.len(), embedding };
		println!("{}", serde_json::to_string(&line)?);
	}
	Ok(())
}

fn run_content_hash(args: ContentHashArgs) -> Result<()> {
	for file in &args.files {
		let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
		let hash = match &args.store {
			Some(dir) => {
				store_content(dir, &bytes)
					.with_context(|| format!("storing {} in {}", file.display(), dir.display()))?
					.0
			}
			None => content_hash_of(&bytes),
		};
		let line = serde_json::json!({
			"file": file,
			"content_hash": format!("0x{}", hex::encode(hash)),
			"size": bytes.len(),
		});
		println!("{line}");
	}
	for dir in &args.adapter {
		let files = read_adapter_files(dir).map_err(|e| anyhow!("--adapter: {e}"))?;
		let hash = adapter_content_hash(&files[0], &files[1]);
		if let Some(store) = &args.store {
			store_adapter(store, &hash, &files)
				.with_context(|| format!("storing {} in {}", dir.display(), store.display()))?;
		}
		let line = serde_json::json!({
			"adapter": dir,
			"content_hash": format!("0x{}", hex::encode(hash)),
			"size": files.iter().map(Vec::len).sum::<usize>(),
		});
		println!("{line}");
	}
	Ok(())
}

/// Puts an adapter's `files` ([`ADAPTER_FILES`]) in `store`, in a folder named by their content
/// `hash`: written aside, then moved in whole, so a worker reading the folder never sees part
/// of it (one that holds them already is left as it is).
fn store_adapter(store: &std::path::Path, hash: &[u8; 32], files: &[Vec<u8>]) -> Result<()> {
	let name = hex::encode(hash);
	let folder = store.join(&name);
	let holds =
		|file: &str, bytes: &Vec<u8>| std::fs::read(folder.join(file)).ok().as_ref() == Some(bytes);
	if ADAPTER_FILES.iter().zip(files).all(|(file, bytes)| holds(file, bytes)) {
		return Ok(());
	}
	let (partial, old) =
		(store.join(format!(".{name}.partial")), store.join(format!(".{name}.old")));
	for leftover in [&partial, &old] {
		if leftover.exists() {
			std::fs::remove_dir_all(leftover)?;
		}
	}
	std::fs::create_dir_all(&partial)?;
	for (file, bytes) in ADAPTER_FILES.iter().zip(files) {
		std::fs::write(partial.join(file), bytes)?;
	}
	// (A folder there with other files is moved aside first: rename cannot replace it.)
	if folder.exists() {
		std::fs::rename(&folder, &old)?;
	}
	std::fs::rename(&partial, &folder)?;
	if old.exists() {
		std::fs::remove_dir_all(&old)?;
	}
	Ok(())
}

/// `serve`: loads the model, starts the engine thread and serves the HTTP API until Ctrl-C.
fn run_serve(args: ServeArgs) -> Result<()> {
	if let Some(dir) = &args.content_dir {
		if !dir.is_dir() {
			bail!("--content-dir: {} is not a folder", dir.display());
		}
	}
	let name = match &args.served_model_name {
		Some(name) => {
			adapter_registry::unreserved(name).map_err(|e| anyhow!("--served-model-name {e}"))?;
			name.clone()
		}
		None => args
			.model
			.file_stem()
			.and_then(|s| s.to_str())
			.ok_or_else(|| anyhow!("--served-model-name: {} has no name", args.model.display()))?
			.to_string(),
	};
	let mut adapters = match &args.adapters {
		Some(dir) => adapter_folders(dir)?,
		None => Vec::new(),
	};
	adapters.extend(args.adapter.iter().cloned());
	let mut names: Vec<&str> = adapters.iter().map(|(n, _)| n.as_str()).collect();
	names.sort_unstable();
	if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
		bail!("two adapters are named {:?}", twice[0]);
	}
	if names.contains(&name.as_str()) {
		bail!("an adapter has the base model's name {name:?}");
	}
	let embeddings = match &args.embedding_model {
		Some(dir) => {
			let embedding_name = match &args.served_embedding_model_name {
				Some(name) => name.clone(),
				None => dir
					.file_name()
					.and_then(|s| s.to_str())
					.ok_or_else(|| anyhow!("--embedding-model: {} has no name", dir.display()))?
					.to_string(),
			};
			if embedding_name == name || names.contains(&embedding_name.as_str()) {
				bail!("the embedding model's name {embedding_name:?} is taken by another model");
			}
			let model =
				EmbeddingModel::load(dir).with_context(|| format!("loading {}", dir.display()))?;
			let mut index = VectorIndex::new(model.dimensions(), args.max_records);
			if let Some(path) = &args.records {
				let records = read_records(path)?;
				let embedding =
					format!("embedding {} records of {}", records.len(), path.display());
				let progress =
					indicatif::ProgressBar::new_spinner().with_message(embedding.clone());
				progress.enable_steady_tick(std::time::Duration::from_millis(200));
				let entries = embed_records(&model, records).context(embedding)?;
				let added = index
					.insert(entries)
					.with_context(|| format!("indexing {}", path.display()))?;
				progress.finish_with_message(format!(
					"{added} records of {} indexed (a later line of an id replaces the earlier)",
					path.display()
				));
			}
			Some((embedding_name, EmbeddingService::start(model)?, index))
		}
		None => None,
	};
	let config = EngineConfig {
		kv_cache_bytes: args.kv_cache_mib << 20,
		max_batch_tokens: args.max_batch_tokens,
		max_running: args.max_running,
		max_waiting: args.max_waiting,
		adapter_bytes: args.adapter_mib << 20,
		adapter_pool_bytes: args.adapter_mib << 20,
		..EngineConfig::default()
	};
	let loading = || format!("loading {}", args.model.display());
	let (engine, tokenizer) = if args.weights.kernels {
		if args.weights.gpu {
			let gpu = Gpu::first()?.ok_or_else(|| {
				anyhow!("--gpu: there is no CUDA driver or device on this machine")
			})?;
			let (model, tokenizer) =
				KernelLlama::from_gguf(&args.model, Cuda::new(gpu), None).with_context(loading)?;
			start(model, tokenizer, config, adapters.clone())?
		} else {
			let (model, tokenizer) =
				KernelLlama::from_gguf(&args.model, Cpu, None).with_context(loading)?;
			start(model, tokenizer, config, adapters.clone())?
		}
	} else {
		let (model, tokenizer) =
			Llama::load(&args.model, &Device::Cpu, args.weights.format()).with_context(loading)?;
		start(model, tokenizer, config, adapters.clone())?
	};
	let mut state = ApiState::new(engine, name, tokenizer, adapters)
		.with_adapters_dir(args.adapters.clone())
		.with_runtime_adapters(args.allow_runtime_adapters);
	if let Some((name, service, index)) = embeddings {
		state =
			state.with_embeddings(name, service).with_records(index, args.allow_runtime_records);
	}
	let mut chain_adapters = None;
	if let (Some(url), Some(content_dir)) = (&args.chain, &args.content_dir) {
		let node = Arc::new(Node::new(url, LOOKUP_TIMEOUT));
		state = state.with_prompts(Arc::new(PromptRegistry::new(node.clone(), content_dir)));
		let weights = AdapterRegistry::weights_file(&args.model);
		let adapters = Arc::new(AdapterRegistry::new(node, content_dir, weights));
		state = state.with_chain_adapters(adapters.clone());
		chain_adapters = Some(adapters);
	}
	let sync = match (&args.chain, &args.content_dir, state.record_index()) {
		(Some(url), Some(content_dir), Some((service, index))) if !args.datanet.is_empty() => {
			let config = SyncConfig {
				url: url.clone(),
				datanets: args.datanet.clone(),
				content_dir: content_dir.clone(),
				interval: std::time::Duration::from_secs(args.chain_interval_secs),
				page: MAX_PAGE,
			};
			let sync = DataNetSync::new(config, service, index);
			state = state.with_datanet_sync(sync.status());
			Some(sync)
		}
		_ => None,
	};
	let state = Arc::new(state);
	let runtime = tokio::runtime::Builder::new_multi_thread()
		.worker_threads(2)
		.enable_all()
		.build()
		.context("starting the HTTP runtime")?;
	runtime.block_on(async move {
		if let Some(adapters) = chain_adapters {
			// The base model's hashes, ready for the first request naming an adapter on chain.
			tokio::spawn(async move { adapters.hash_weights().await });
		}
		if let Some(sync) = sync {
			tracing::info!(chain = %args.chain.as_deref().unwrap_or_default(), datanets = ?args.datanet, "following DataNets");
			tokio::spawn(sync.run());
		}
		let listener = tokio::net::TcpListener::bind(args.listen)
			.await
			.with_context(|| format!("listening on {}", args.listen))?;
		tracing::info!(
			address = %listener.local_addr()?,
			model = %state.model_name(),
			adapters = state.adapter_names().len(),
			"serving"
		);
		eprintln!(
			"openledger-worker: serving {} and {} adapters on http://{}",
			state.model_name(),
			state.adapter_names().len(),
			listener.local_addr()?
		);
		axum::serve(listener, http_api::router(state))
			.with_graceful_shutdown(stop_signal())
			.await
			.context("serving HTTP")
	})
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM (what service managers and containers send): the
/// server then stops taking connections and finishes the requests it has.
async fn stop_signal() {
	let interrupt = async {
		let _ = tokio::signal::ctrl_c().await;
	};
	#[cfg(unix)]
	{
		use tokio::signal::unix::{signal, SignalKind};
		match signal(SignalKind::terminate()) {
			Ok(mut terminate) => {
				tokio::select! {
					_ = interrupt => {}
					_ = terminate.recv() => {}
				}
			}
			Err(e) => {
				tracing::warn!(error = %e, "SIGTERM cannot be caught; stop with Ctrl-C");
				interrupt.await;
			}
		}
	}
	#[cfg(not(unix))]
	interrupt.await;
	tracing::info!("stopping: finishing the requests taken");
}

/// Starts the engine thread over `model`.
fn start<D: Decoder>(
	model: D,
	tokenizer: Tokenizer,
	config: EngineConfig,
	adapters: Vec<(String, PathBuf)>,
) -> Result<(EngineService, Arc<Tokenizer>)> {
	let tokenizer = Arc::new(tokenizer);
	let service = EngineService::start(Arc::new(model), tokenizer.clone(), config, adapters)
		.context("starting the engine")?;
	Ok((service, tokenizer))
}

/// The adapters in `dir`: each subfolder with an `adapter_config.json`, by its name.
fn adapter_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
	let mut found = Vec::new();
	for entry in std::fs::read_dir(dir).with_context(|| format!("--adapters {}", dir.display()))? {
		let path = entry?.path();
		if !path.join("adapter_config.json").is_file() {
			continue;
		}
		let name = path
			.file_name()
			.and_then(|n| n.to_str())
			.ok_or_else(|| anyhow!("the adapter folder {} has no UTF-8 name", path.display()))?;
		adapter_registry::unreserved(name)
			.map_err(|e| anyhow!("the adapter folder {}: {e} (rename it)", path.display()))?;
		found.push((name.to_string(), path.clone()));
	}
	found.sort();
	Ok(found)
}
