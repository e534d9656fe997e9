//! The worker's HTTP API, in the shape of OpenAI's (what vLLM and LoRAX serve, so their
//! clients work unchanged): the base model and every registered LoRA adapter are "models".
//!
//! - `POST /v1/completions`: `model` (the base model's name, or an adapter's; absent: the
//!   base), `prompt` (a string, a list of strings, a list of token ids, or a list of lists of
//!   token ids: up to [`MAX_PROMPTS`], choice `p * n + i` being choice `i` of prompt `p`),
//!   `max_tokens` (16), `presence_penalty` and `frequency_penalty` (OpenAI's, over the output),
//!   vLLM's `stop_token_ids`, `ignore_eos` and `skip_special_tokens` (true: special tokens
//!   such as `<|im_end|>` are left out of the text), `temperature` (1),
//!   `top_p` (1), `top_k` (a vLLM extension; 0 or -1: all), `min_p` (a vLLM extension: only
//!   tokens at least this many times as likely as the most likely, before top-k and top-p; 0:
//!   all), `repetition_penalty` (1), `seed`
//!   (random when absent; choice `i` of `n` is seeded with `seed + i`), `stop` (a string or up
//!   to 4), `n` (choices, 1 to 16), `stream` and `stream_options.include_usage`, `logprobs`
//!   (the sampled tokens' log-probabilities and this many most likely tokens' at each step, up
//!   to 20: OpenAI's `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`), `echo` (the
//!   prompt before the answer's text; with `logprobs`, the prompt's tokens first in them, each
//!   scored given the ones before it and the first `null`: how lm-evaluation-harness scores
//!   continuations; `max_tokens` 0 then scores the prompt only). Prompts times `n` may not
//!   exceed what the engine queues at once (a 400, not a 503 to retry forever). `logit_bias`,
//!   `min_tokens`, `response_format` (JSON mode and JSON schemas) and vLLM's `guided_json`,
//!   `guided_choice`, `guided_regex` and `guided_grammar` (GBNF, [`crate::ebnf_grammar`]), or
//!   the same as vLLM names them from 0.12 on, in `structured_outputs` (`json`, `choice`,
//!   `regex`, `grammar`, `json_object`), are served, and so are vLLM's
//!   `include_stop_str_in_output` (the text keeps the stop sequence, and ends right after it,
//!   or the stop token's text), `allowed_token_ids` (only these tokens are generated),
//!   `bad_words` (up to 300 words, each as vLLM spells it: its tokens alone and, when that is
//!   a word-start token as long, after a space; the last token of a spelling is never
//!   generated right after the rest of it), `truncate_prompt_tokens` (only the prompt's last
//!   this many tokens, a text's beginning of sequence kept first; -1: as many as the model
//!   takes; not on a chat with sources, which it would cut) and `cache_salt` (the prompt's
//!   cached blocks are shared only with requests of the same salt: vLLM's guard against
//!   learning another user's prompt from the cache's timing), `add_special_tokens` (false on
//!   completions, and on `/tokenize` with a prompt: a text prompt without the beginning of
//!   sequence the tokenizer adds; on chat, where the template writes the special tokens, true
//!   is refused). What is not served is refused, not ignored: `best_of` above 1, `suffix`,
//!   `tools` (on completions), vLLM's `use_beam_search` and `length_penalty`, `priority`
//!   other than 0, `return_tokens_as_token_ids`, `guided_whitespace_pattern`, `logits_processors`,
//!   `prompt_embeds`, a request's own `chat_template` and
//!   `stream_options.continuous_usage_stats`. Fields unknown to the worker are ignored and
//!   logged by name, on every route (see [`crate::request_body`]).
//! - `POST /v1/chat/completions`: the same, with `messages` (`role`, `content`) rendered in the
//!   model's own chat template instead of `prompt` and `max_tokens` (or `max_completion_tokens`)
//!   the rest of the context when absent (the model's, or the KV cache's if smaller: vLLM's);
//!   vLLM's `add_generation_prompt` (false: the conversation ends where its last message ends),
//!   `continue_final_message` (with `add_generation_prompt` false: the last message is left open
//!   and the answer goes on with it, a "prefill", cut after its text as transformers cuts it) and
//!   `chat_template_kwargs` (more variables for the template, such as Qwen3's `enable_thinking`;
//!   not the template's own, which the request sets), on `/tokenize` too (a chat with sources
//!   always ends with the assistant's turn opened; the answer's role is `assistant` even without a
//!   generation prompt, where vLLM names the last message's); vLLM's `echo` (the answer's content
//!   begins with the last message's when the answer is in its role: the assistant's, or any with
//!   `add_generation_prompt` false; a continued message comes back whole; streamed, in the first
//!   chunk with the role); `logprobs` (true or false) and `top_logprobs` (0 to 20) give OpenAI's
//!   `logprobs.content` (each token's text, bytes, log-probability and most likely alternatives).
//!   Log-probabilities are the model's own (before temperature, penalty or truncation), as vLLM
//!   reports them. Streamed, each chunk carries the log-probabilities of the tokens generated since
//!   the last (a chunk may bring them with no text yet); they add up to the whole answer's. A
//!   completion's prompt's are not streamed (its `echo` with `logprobs` and `stream` is refused).
//!   `tools` with `tool_choice` (a named function, `"required"`, `"none"` or `"auto"`) and
//!   `parallel_tool_calls`: OpenAI's tool calls, held to the tools' parameter schemas
//!   ([`crate::tool_calls`]); the message then has `content` (`""`; `"auto"`'s text before its
//!   first call, or `null`) and `tool_calls`, and `"required"` and `"auto"` calls the reason
//!   `tool_calls` when they are whole (a named tool's keeps the output's, as OpenAI's). Streamed,
//!   `"auto"`'s text before its first call comes as `content`; each call begins (index, id, type,
//!   name) once its name is known and its arguments follow as they are generated. `documents`
//!   (source documents, put in the system message), `retrieval` (DataNet records as more documents)
//!   and `prompt` (a prompt registered on chain, `{"id", "version", "variables"}`,
//!   [`crate::prompt_registry`]: its text opens the system message, and the answer names it in
//!   `prompt`) with `attribution` (`leave_one_out`, or `context_cite` with `ablations`, `seed` and
//!   `penalty`): each choice's `attribution` scores the contribution of each document, of the
//!   registered prompt, of each tool's answer in the conversation and of the adapter
//!   ([`crate::attribution`]); streamed, with the choice's last chunk, once it is whole.
//! - With `stream`, the answer is server-sent events as OpenAI sends them: `data:` chunks
//!   (`text_completion`, or `chat.completion.chunk` whose first delta per choice carries the
//!   role) with each choice's new text as it is generated, a chunk with its `finish_reason`
//!   when it ends, a chunk with `usage` (and no choices) if asked for, then `data: [DONE]`.
//!   The text sent adds up to exactly the whole answer's (text that a stop sequence could still
//!   cut is held back). A request the engine refuses at once (a bad request, a full queue)
//!   gets its error status before any event; the events begin once the engine has taken it,
//!   and a later error (an adapter that cannot be loaded, a failed step) is sent as an
//!   `{"error": …}` event before `[DONE]`.
//! - `POST /v1/responses`: OpenAI's Responses API, read as a chat and answered as a response,
//!   whole or as the response's streamed events (see [`crate::responses`]).
//! - `POST /tokenize` (`prompt` and `add_special_tokens`, or `messages`, `tools`,
//!   `tool_choice`, `documents`, a registered `prompt`, `add_generation_prompt`,
//!   `continue_final_message` and `chat_template_kwargs`, placed as a chat places them) and
//!   `POST /detokenize` (`tokens`), vLLM's: the token ids serving would give (`tokens`, `count`,
//!   `max_model_len`), and the text of token ids (`prompt`).
//! - `POST /v1/embeddings`, with a sentence-embedding model served
//!   ([`ApiState::with_embeddings`]), OpenAI's: `input` (a string, a list of strings, a list of
//!   token ids or a list of lists of them, up to [`MAX_EMBEDDING_INPUTS`]), `encoding_format`
//!   (`float`, or `base64` of the little-endian `f32`s) and `dimensions` (only the model's own);
//!   vLLM's `truncate_prompt_tokens`: an input longer than the model takes is refused unless it
//!   is given (each input cut to its first that many tokens; -1: the model's most). The answer's
//!   `data` (`index`, `embedding`) is in the inputs' order, with `usage`. The requests waiting
//!   are embedded together ([`crate::embedding_service`]); naming the embedding model at the
//!   generation endpoints is a 400.
//! - `POST /score` (and `/v1/score`) and `POST /rerank` (and `/v1/rerank`, `/v2/rerank`),
//!   vLLM's for an embedding model, whose scores are the cosine of the embeddings' angle (-1
//!   to 1, not a cross-encoder's 0 to 1): `/score`'s `text_1` and `text_2` (each a text or a
//!   list of texts: one `text_1` against each `text_2`, or lists as long, pair by pair;
//!   [`MAX_EMBEDDING_INPUTS`] texts in all) give `data` (`index`, `score`) in order;
//!   `/rerank`'s `query` and `documents` (texts, or Cohere's objects with a `text`; up to
//!   [`MAX_EMBEDDING_INPUTS`] - 1) give `results` (`index`, `document` unless
//!   `return_documents` is false, `relevance_score`), most alike first, the `top_n` first (all
//!   when absent or 0). Both take `truncate_prompt_tokens` as `/v1/embeddings` does: without
//!   it, a text longer than the model takes is refused, named (`documents[3]`); `usage`
//!   counts each text's tokens once. `priority` other than 0, an activation (`activation`,
//!   `use_activation`, `softmax`) and Cohere's `rank_fields` and `max_tokens_per_doc` are
//!   refused (when not null).
//! - `POST /v1/retrieve` (`query`, `top_k`, `datanets`): the DataNet records most similar to the
//!   query ([`crate::retrieval`]), from `--records` and, when allowed ([`ApiState::with_records`]),
//!   `POST /v1/records` and `POST /v1/records/delete`. A chat's `retrieval` adds the records found
//!   as documents (`retrieved` in the answer, or in a stream's first chunk).
//! - `GET /v1/datanets`: with records from the chain ([`ApiState::with_datanet_sync`]), how far
//!   each DataNet is synced: accepted records on chain, verified, indexed, those waiting for
//!   their content or skipped and why ([`crate::datanet_sync`]).
//! - `GET /v1/models`: the base model and the adapters (`parent`: the base; `max_model_len`:
//!   the most tokens a request may reach), and the embedding model.
//! - Adapters registered on chain ([`ApiState::with_chain_adapters`],
//!   [`crate::adapter_registry`]): `"model": "chain:<id>"` names adapter `<id>` of the chain's
//!   model registry, served once checked (not retired, this base model, its files in the
//!   content folder hashed as on chain and as declared); the answer (streamed: its first
//!   chunk, for a completion not echoed one of empty text) names it in `adapter` (`id`,
//!   `owner`, `name`, `content_hash`, `price_per_1k_tokens`, `datanets`, `block`), and an
//!   attributed chat's `attribution.adapter` has its `id` and `owner`.
//! - Adapters without a restart: with an adapters folder ([`ApiState::with_adapters_dir`]), a
//!   model name not served yet that names an adapter folder there is served from then on (as
//!   LoRAX does). With runtime adapters allowed ([`ApiState::with_runtime_adapters`]; 403
//!   otherwise), vLLM's `POST /v1/load_lora_adapter` (`lora_name`, `lora_path`) builds the
//!   adapter for the model first (a corrupt or mismatched one is a 422 and is not served) and
//!   serves it; `POST /v1/unload_lora_adapter` (`lora_name`) stops serving it to new requests
//!   (those taken finish with it). An unloaded adapter that is in the adapters folder comes
//!   back when next named: remove its folder to withdraw it.
//! - `GET /v1/models/{model}`: one model of the list (OpenAI's), 404 for another.
//! - `GET /health` (and SageMaker's `GET`/`POST /ping`): 200 while the engine serves, 503
//!   once its thread has stopped. `GET /version`: the worker's version (vLLM's).
//! - `POST /invocations` (SageMaker's, vLLM's): a chat, completion, embeddings, score or rerank
//!   request, served as its endpoint serves it (told by its fields).
//! - `GET /metrics`: the engine's counters and gauges in Prometheus' text format, and vLLM's
//!   latency histograms: time to the first token, between tokens, and of the whole request.
//!
//! Every error is a JSON object `{"error": {"message", "type", "code"}}` with a status that
//! says whose fault it is: 400 for a malformed or impossible request (bad JSON, an empty or too
//! long prompt, a bad sampling value, an adapter on chain for another base model), 404 for an
//! unknown model (an adapter on chain unknown or retired included) or registered prompt, 413
//! for a body over
//! the limit, 422 for an adapter that cannot be loaded (its files are corrupt or do not fit the
//! base; on chain: not as declared) or a registered prompt no worker can serve, 503 when the
//! queue is full (try again) or a registered prompt or adapter cannot be read now (the node,
//! the content folder; an adapter's files changed since they were checked), 500
//! otherwise (a failed batch step, a stopped engine). A
//! client that disconnects cancels its request (every choice of it, streamed or not): its KV
//! blocks go back to the others before the next step.

use std::{
	collections::BTreeMap,
	convert::Infallible,
	path::{Component, Path, PathBuf},
	sync::{atomic::Ordering, Arc, RwLock},
	time::{SystemTime, UNIX_EPOCH},
};

use axum::{
	extract::{self, DefaultBodyLimit, State},
	http::{header, StatusCode},
	response::{
		sse::{Event, KeepAlive, Sse},
		IntoResponse, Response,
	},
	routing::{get, post},
	Json, Router,
};
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use futures::{
	future::{BoxFuture, Either, FutureExt},
	stream::{BoxStream, FuturesUnordered, SelectAll, Stream, StreamExt},
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
	adapter_registry::{self, AdapterError, AdapterRegistry, RegisteredAdapter, Settled},
	attribution::{
		answer_logprob, Ablations, Method, Source, SourcedPrompt, Sources, DEFAULT_ABLATIONS,
		DEFAULT_LASSO_PENALTY, MAX_SOURCES,
	},
	chat::{ChatTemplate, Message},
	datanet_sync::SyncStatus,
	ebnf_grammar::EbnfGrammar,
	embedding_service::EmbeddingService,
	embeddings::cosine,
	error::Error,
	generate::{
		check_token_ids, FinishReason, Generation, GenerationRequest, Prompt, ResponseFormat,
		TokenScores,
	},
	grammar_cache::{GrammarCache, GrammarKind},
	json_mode::JsonGrammar,
	lora::AdapterSource,
	prompt_registry::{fill, PromptError, PromptRef, PromptRegistry, RegisteredPrompt},
	regex_grammar::RegexGrammar,
	request_body::{self, BodyRejection, Lenient},
	responses::{self as responses_api, Head, ResponseEvents},
	retrieval::{self, Record, VectorIndex, MAX_TOP_K},
	sampling::{SamplingParams, MAX_TOP_LOGPROBS},
	service::{EngineService, EventStream, StreamEvent},
	tokenizer::Tokenizer,
	tool_calls::{CallStream, Showing, ToolCall, ToolCalling, Tools, CALL_START},
};

/// The largest request body taken, in bytes (a prompt beyond the model's context is refused
/// anyway; this bounds what a client can make the worker read).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The most stop sequences a request may give (OpenAI's limit).
const MAX_STOP: usize = 4;
/// `max_tokens` when a completions request does not say (OpenAI's default; a chat's is the
/// rest of the context, as vLLM's).
const DEFAULT_MAX_TOKENS: usize = 16;

/// What the API serves.
pub struct ApiState {
	/// The engine thread.
	engine: EngineService,
	/// The base model's name in requests and in `/v1/models`.
	model_name: String,
	/// The adapters, each servable as a model: their folders by name.
	adapters: RwLock<BTreeMap<String, PathBuf>>,
	/// A folder of adapter folders where a model name not served yet is looked for.
	adapters_dir: Option<PathBuf>,
	/// Whether clients may load and unload adapters (`/v1/load_lora_adapter`).
	runtime_adapters: bool,
	/// The model's tokenizer (the tokens' text in log-probabilities).
	tokenizer: Arc<Tokenizer>,
	/// The model's chat template, if it has one (`/v1/chat/completions` needs it).
	chat_template: Option<ChatTemplate>,
	/// When the worker started (seconds since the epoch), the models' `created`.
	started: u64,
	/// The sentence-embedding model (`/v1/embeddings`), if one is served, and its name.
	embeddings: Option<(String, Arc<EmbeddingService>)>,
	/// The DataNet records retrieval searches (with an embedding model).
	records: Option<Arc<RwLock<VectorIndex>>>,
	/// The sync of DataNet records from the chain, if records come from there.
	datanet_sync: Option<Arc<SyncStatus>>,
	/// Whether clients may add and delete records (`/v1/records`).
	runtime_records: bool,
	/// The prompts registered on chain that chats may name, if the worker follows a chain.
	prompts: Option<Arc<PromptRegistry>>,
	/// The adapters registered on chain that requests may name (`chain:<id>`), if the worker
	/// follows a chain.
	chain_adapters: Option<Arc<AdapterRegistry>>,
	/// The output grammars compiled for earlier requests (schemas, choices, expressions,
	/// GBNF grammars).
	grammars: GrammarCache,
}

/// The model a request is served with: the name answers report, the adapter's name in the
/// engine (`None` for the base model), and the adapter's record on chain if it is registered
/// there.
#[derive(Clone, Debug)]
struct Served {
	name: String,
	adapter: Option<String>,
	registered: Option<RegisteredAdapter>,
}

impl Served {
	/// What the answer says of the adapter registered on chain it was served with (streamed,
	/// the first chunk): `adapter`, what a proof of use names.
	fn fields(&self) -> serde_json::Map<String, Value> {
		let mut fields = serde_json::Map::new();
		if let Some(adapter) = &self.registered {
			let datanets: Vec<Value> = adapter
				.datanets
				.iter()
				.map(|(datanet, weight)| json!({"datanet": datanet, "weight": weight}))
				.collect();
			fields.insert(
				"adapter".into(),
				json!({
					"id": adapter.id,
					"owner": adapter.owner,
					"name": adapter.name,
					"content_hash": format!("0x{}", hex::encode(adapter.content_hash)),
					"price_per_1k_tokens": adapter.price_per_1k_tokens,
					"datanets": datanets,
					"block": adapter.block,
				}),
			);
		}
		fields
	}
}

impl ApiState {
	/// The API over `engine`, serving the base model as `model_name` and `adapters` (name,
	/// PEFT folder; registered with the engine already), with `tokenizer`'s chat template.
	pub fn new(
		engine: EngineService,
		model_name: impl Into<String>,
		tokenizer: Arc<Tokenizer>,
		adapters: impl IntoIterator<Item = (String, PathBuf)>,
	) -> Self {
		let chat_template = match tokenizer.chat_template() {
			Ok(template) => Some(template),
			Err(e) => {
				tracing::warn!(error = %e, "no chat template: /v1/chat/completions is refused");
				None
			}
		};
		Self {
			engine,
			model_name: model_name.into(),
			adapters: RwLock::new(adapters.into_iter().collect()),
			adapters_dir: None,
			runtime_adapters: false,
			chat_template,
			started: now(),
			embeddings: None,
			records: None,
			datanet_sync: None,
			runtime_records: false,
			prompts: None,
			chain_adapters: None,
			grammars: GrammarCache::new(tokenizer.vocab_size()),
			tokenizer,
		}
	}

	/// Serves retrieval over `index` (its vectors the embedding model's), letting clients add
	/// and delete records if `runtime` (`/v1/records`; 403 otherwise).
	pub fn with_records(mut self, index: VectorIndex, runtime: bool) -> Self {
		self.records = Some(Arc::new(RwLock::new(index)));
		self.runtime_records = runtime;
		self
	}

	/// The embedding service and the records' index (to fill them from elsewhere: the chain's
	/// DataNets, [`crate::datanet_sync`]), when retrieval is served.
	pub fn record_index(&self) -> Option<(Arc<EmbeddingService>, Arc<RwLock<VectorIndex>>)> {
		match (&self.embeddings, &self.records) {
			(Some((_, service)), Some(index)) => Some((service.clone(), index.clone())),
			_ => None,
		}
	}

	/// Shows `status` at `GET /v1/datanets`: the records come from the chain's DataNets.
	pub fn with_datanet_sync(mut self, status: Arc<SyncStatus>) -> Self {
		self.datanet_sync = Some(status);
		self
	}

	/// Lets chats name the prompts registered on the chain `registry` reads
	/// (`"prompt": {"id", "version", "variables"}`).
	pub fn with_prompts(mut self, registry: Arc<PromptRegistry>) -> Self {
		self.prompts = Some(registry);
		self
	}

	/// Lets requests name the adapters registered on the chain `registry` reads, as their
	/// model (`"model": "chain:<id>"`).
	pub fn with_chain_adapters(mut self, registry: Arc<AdapterRegistry>) -> Self {
		self.chain_adapters = Some(registry);
		self
	}

	/// Serves `service`'s sentence-embedding model as `name` (`/v1/embeddings`).
	pub fn with_embeddings(mut self, name: impl Into<String>, service: EmbeddingService) -> Self {
		self.embeddings = Some((name.into(), Arc::new(service)));
		self
	}

	/// Serves, on demand, each adapter folder of `dir` that a request names (the folder's
	/// name): adapters added there later are served without a restart (as LoRAX does).
	pub fn with_adapters_dir(mut self, dir: Option<PathBuf>) -> Self {
		self.adapters_dir = dir;
		self
	}

	/// Lets clients load and unload adapters (vLLM's `/v1/load_lora_adapter` and
	/// `/v1/unload_lora_adapter`, which vLLM gates the same way).
	pub fn with_runtime_adapters(mut self, allowed: bool) -> Self {
		self.runtime_adapters = allowed;
		self
	}

	/// The base model's name.
	pub fn model_name(&self) -> &str {
		&self.model_name
	}

	/// The adapters served now, by name.
	pub fn adapter_names(&self) -> Vec<String> {
		self.read_adapters().keys().cloned().collect()
	}

	fn read_adapters(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, PathBuf>> {
		// Every change is one insert or remove: a poisoned lock still holds a consistent map.
		self.adapters.read().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	fn write_adapters(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, PathBuf>> {
		self.adapters.write().unwrap_or_else(|poisoned| poisoned.into_inner())
	}
}

/// The routes of the API over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
	Router::new()
		.route("/health", get(health))
		.route("/ping", get(health).post(health))
		.route("/version", get(version))
		.route("/invocations", post(invocations))
		.route("/v1/models/{*model}", get(model))
		.route("/metrics", get(metrics))
		.route("/v1/models", get(models))
		.route("/v1/completions", post(completions))
		.route("/v1/chat/completions", post(chat_completions))
		.route("/v1/load_lora_adapter", post(load_adapter))
		.route("/v1/unload_lora_adapter", post(unload_adapter))
		.route("/v1/responses", post(responses))
		.route("/v1/embeddings", post(embeddings))
		.route("/score", post(score))
		.route("/v1/score", post(score))
		.route("/rerank", post(rerank))
		.route("/v1/rerank", post(rerank))
		.route("/v2/rerank", post(rerank))
		.route("/v1/records", post(add_records))
		.route("/v1/records/delete", post(delete_records))
		.route("/v1/retrieve", post(retrieve))
		.route("/v1/datanets", get(datanets))
		.route("/tokenize", post(tokenize))
		.route("/detokenize", post(detokenize))
		.layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
		.with_state(state)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
	SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An error answer: a status and OpenAI's error object.
#[derive(Debug)]
pub struct ApiError {
	status: StatusCode,
	kind: &'static str,
	code: &'static str,
	message: String,
}

impl ApiError {
	fn bad_request(message: impl Into<String>) -> Self {
		Self {
			status: StatusCode::BAD_REQUEST,
			kind: "invalid_request_error",
			code: "invalid_request",
			message: message.into(),
		}
	}

	/// A 403 for `what`, a change the worker was not started to allow (with `serve FLAG`),
	/// unless `allowed`.
	fn unless_allowed(
		allowed: bool,
		code: &'static str,
		what: &str,
		flag: &str,
	) -> Result<(), Self> {
		match allowed {
			true => Ok(()),
			false => Err(Self {
				status: StatusCode::FORBIDDEN,
				kind: "invalid_request_error",
				code,
				message: format!("{what} is off: start the worker with serve {flag}"),
			}),
		}
	}

	/// A 404 for a model (or adapter) that is not served.
	fn model_not_found(message: impl Into<String>) -> Self {
		Self {
			status: StatusCode::NOT_FOUND,
			kind: "invalid_request_error",
			code: "model_not_found",
			message: message.into(),
		}
	}
}

impl From<Error> for ApiError {
	fn from(e: Error) -> Self {
		let (status, kind, code) = match &e {
			Error::Request(_) => {
				(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request")
			}
			Error::Overloaded { .. } => {
				(StatusCode::SERVICE_UNAVAILABLE, "server_error", "overloaded")
			}
			Error::Adapter { .. } => {
				(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", "adapter_unavailable")
			}
			// Files changed under the worker since it checked them: another may serve it.
			Error::AdapterChanged { .. } => {
				(StatusCode::SERVICE_UNAVAILABLE, "server_error", "adapter_unavailable")
			}
			_ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
		};
		Self { status, kind, code, message: e.to_string() }
	}
}

impl From<PromptError> for ApiError {
	fn from(e: PromptError) -> Self {
		let (status, kind, code) = match &e {
			PromptError::NotFound(_) => {
				(StatusCode::NOT_FOUND, "invalid_request_error", "prompt_not_found")
			}
			PromptError::Unservable(_) => {
				(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", "prompt_unservable")
			}
			_ if e.is_request_error() => {
				(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request")
			}
			// The chain or the content folder failed the worker: another may serve it.
			_ => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "prompt_unavailable"),
		};
		Self { status, kind, code, message: e.to_string() }
	}
}

impl From<AdapterError> for ApiError {
	fn from(e: AdapterError) -> Self {
		let (status, kind, code) = match &e {
			AdapterError::NotFound(_) | AdapterError::Retired(_) => {
				(StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found")
			}
			AdapterError::Unservable { .. } => {
				(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", "adapter_unservable")
			}
			_ if e.is_request_error() => {
				(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request")
			}
			// The chain or the content folder failed the worker: another may serve it.
			_ => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "adapter_unavailable"),
		};
		Self { status, kind, code, message: e.to_string() }
	}
}

impl From<BodyRejection> for ApiError {
	fn from(rejection: BodyRejection) -> Self {
		let status = rejection.status();
		let code =
			if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_json" };
		// Axum answers a body it could not parse with 422 or 415; OpenAI's clients expect 400
		// for anything wrong with the request itself.
		let status =
			if status == StatusCode::PAYLOAD_TOO_LARGE { status } else { StatusCode::BAD_REQUEST };
		Self { status, kind: "invalid_request_error", code, message: rejection.to_string() }
	}
}

impl ApiError {
	/// OpenAI's error object.
	fn body(&self) -> Value {
		json!({ "error": { "message": self.message, "type": self.kind, "code": self.code } })
	}
}

impl IntoResponse for ApiError {
	fn into_response(self) -> Response {
		if self.status.is_server_error() {
			tracing::warn!(status = %self.status, error = %self.message, "request failed");
		}
		(self.status, Json(self.body())).into_response()
	}
}

/// A string or a list of strings (`stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
	One(String),
	Many(Vec<String>),
}

/// A request to either endpoint: `prompt` for completions, `messages` for chat. (One flat
/// struct rather than a shared part with `#[serde(flatten)]`: flattening buffers numbers,
/// which fails under serde_json's `arbitrary_precision`, enabled in this workspace.)
#[derive(Debug, Deserialize)]
struct Body {
	model: Option<String>,
	/// A string, a list of strings, a list of token ids, or a list of lists of token ids (read
	/// from a [`Value`]: untagged enums buffer numbers, which `arbitrary_precision` breaks).
	prompt: Option<Value>,
	messages: Option<Vec<Message>>,
	max_tokens: Option<usize>,
	/// The chat endpoint's newer name for `max_tokens`.
	max_completion_tokens: Option<usize>,
	temperature: Option<f32>,
	top_p: Option<f32>,
	top_k: Option<i64>,
	min_p: Option<f32>,
	repetition_penalty: Option<f32>,
	presence_penalty: Option<f32>,
	frequency_penalty: Option<f32>,
	seed: Option<u64>,
	stop: Option<OneOrMany>,
	n: Option<usize>,
	stream: Option<bool>,
	stream_options: Option<StreamOptions>,
	/// Completions: how many top tokens' log-probabilities; chat: whether to return them.
	logprobs: Option<Value>,
	/// Chat: how many top tokens' log-probabilities.
	top_logprobs: Option<usize>,
	/// Completions: whether to put the prompt before the answer.
	echo: Option<bool>,
	/// vLLM's: stop at any of these tokens.
	stop_token_ids: Option<Vec<u32>>,
	/// vLLM's: go on past the end-of-sequence token.
	ignore_eos: Option<bool>,
	/// vLLM's: leave special tokens out of the text (true when absent).
	skip_special_tokens: Option<bool>,
	/// vLLM's: the fewest tokens before the output may end.
	min_tokens: Option<usize>,
	/// Token ids (as strings) to a bias added to their logits, -100 to 100.
	logit_bias: Option<Value>,
	/// `{"type": "text"}`, `{"type": "json_object"}` (with LoRAX's `schema`, or without) or
	/// `{"type": "json_schema", "json_schema": {"schema": ...}}`.
	response_format: Option<Value>,
	/// vLLM's: a JSON schema the output must follow.
	guided_json: Option<Value>,
	/// vLLM's: the output is one of these strings exactly.
	guided_choice: Option<Value>,
	/// vLLM's: a regular expression the whole output matches.
	guided_regex: Option<Value>,
	/// vLLM's: a context-free grammar in GBNF that takes the whole output.
	guided_grammar: Option<Value>,
	/// vLLM's (0.12 on) for the four above: `json`, `choice`, `regex`, `grammar` (and
	/// `json_object`), see [`Guided::of`].
	structured_outputs: Option<Value>,
	/// Chat: OpenAI's tool definitions, how they are to be called, and whether calls may be
	/// several (see [`crate::tool_calls`]); refused on completions.
	tools: Option<Value>,
	tool_choice: Option<Value>,
	parallel_tool_calls: Option<bool>,
	/// vLLM's: the text keeps what ended it (a stop sequence, a stop token's text).
	include_stop_str_in_output: Option<bool>,
	/// vLLM's: only these tokens may be generated.
	allowed_token_ids: Option<Vec<u32>>,
	/// vLLM's: words whose tokens are never generated one after the other (each as the
	/// tokenizer spells it alone and after a space).
	bad_words: Option<Vec<String>>,
	/// vLLM's: only the prompt's last this many tokens are served (-1: as many as the model
	/// takes).
	truncate_prompt_tokens: Option<i64>,
	/// vLLM's: whether a text prompt gets the special tokens the tokenizer adds (its
	/// beginning of sequence, when the model asks for one): true on completions when absent; on
	/// chat, the template writes them (only false, the default, is taken).
	add_special_tokens: Option<bool>,
	/// Chat (vLLM's): end with the assistant's turn opened (true when absent).
	add_generation_prompt: Option<bool>,
	/// Chat (vLLM's): leave the last message open for the answer to go on with it.
	continue_final_message: Option<bool>,
	/// Chat (vLLM's): more variables for the chat template.
	chat_template_kwargs: Option<serde_json::Map<String, Value>>,
	/// vLLM's: the prompt's cached blocks are shared only with requests of this salt.
	cache_salt: Option<String>,
	/// Asked for but not served: refused rather than ignored (see [`refuse_unserved`]).
	best_of: Option<Value>,
	suffix: Option<Value>,
	/// vLLM's, not served: beam search, priority scheduling, token ids as the logprobs'
	/// tokens, a whitespace pattern for JSON, logits processors, prompt embeddings, a chat
	/// template of the request's own.
	use_beam_search: Option<bool>,
	length_penalty: Option<f64>,
	priority: Option<i64>,
	return_tokens_as_token_ids: Option<bool>,
	guided_whitespace_pattern: Option<Value>,
	logits_processors: Option<Value>,
	prompt_embeds: Option<Value>,
	chat_template: Option<Value>,
	/// OpenAI's deprecated function calling (`tools` and `tool_choice` serve it).
	functions: Option<Value>,
	function_call: Option<Value>,
	/// vLLM's: the prompt's log-probabilities, with this many most likely tokens at each
	/// position, by token id (OpenAI's `echo` with `logprobs` gives them too).
	prompt_logprobs: Option<Value>,
	/// Chat: source documents, put in the system message (see [`crate::attribution`]).
	documents: Option<Vec<Source>>,
	/// Chat, with `documents`, a registered `prompt` or tool messages: measure how much each
	/// document, the registered prompt and each tool's answer contributed to each choice.
	attribution: Option<AttributionBody>,
	/// Chat: DataNet records retrieved as more documents.
	retrieval: Option<RetrievalBody>,
}

/// A search of the records (`/v1/retrieve`, or a chat's `retrieval`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrievalBody {
	/// What to look for (a chat's: its last user message when absent).
	query: Option<String>,
	/// How many records (4, up to [`MAX_TOP_K`]).
	top_k: Option<usize>,
	/// Only records of these DataNets (all when absent or empty).
	#[serde(default)]
	datanets: Vec<String>,
}

/// A chat's `attribution`: the method and its settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributionBody {
	/// `context_cite` (the default) or `leave_one_out`.
	method: Option<String>,
	/// ContextCite's random ablations (32).
	ablations: Option<usize>,
	/// The seed of ContextCite's ablations (0).
	seed: Option<u64>,
	/// ContextCite's LASSO penalty (0.01).
	penalty: Option<f64>,
}

impl AttributionBody {
	/// The method asked for.
	fn method(&self) -> Result<Method, ApiError> {
		match self.method.as_deref() {
			None | Some("context_cite") => Ok(Method::ContextCite {
				ablations: self.ablations.unwrap_or(DEFAULT_ABLATIONS),
				seed: self.seed.unwrap_or(0),
				penalty: self.penalty.unwrap_or(DEFAULT_LASSO_PENALTY),
			}),
			Some("leave_one_out") => match (self.ablations, self.seed, self.penalty) {
				(None, None, None) => Ok(Method::LeaveOneOut),
				_ => Err(ApiError::bad_request(
					"attribution: ablations, seed and penalty are ContextCite's, not \
						 leave_one_out's",
				)),
			},
			Some(other) => Err(ApiError::bad_request(format!(
				"attribution.method: {other:?} is neither \"context_cite\" nor \"leave_one_out\""
			))),
		}
	}
}

/// A chat's sources: the prompt built around them (the documents, and with attribution the
/// answers of tools), the documents (given, then retrieved), and what retrieval found
/// (`retrieved` in the answer).
struct Grounding {
	prompt: SourcedPrompt,
	sources: Vec<Source>,
	retrieved: Vec<Value>,
	/// The registered prompt whose text opens the system message, if the chat named one.
	registered: Option<RegisteredPrompt>,
	/// The chat's `cache_salt`, which its attribution's scoring requests share (so that they
	/// take its prompt from the cache).
	cache_salt: Option<String>,
}

impl Grounding {
	/// What the answer says of its sources (streamed, the first chunk): the records retrieved
	/// (`retrieved`, if any) and the registered prompt used (`prompt`, if one was named).
	fn fields(&self) -> serde_json::Map<String, Value> {
		let mut fields = serde_json::Map::new();
		if !self.retrieved.is_empty() {
			fields.insert("retrieved".into(), json!(self.retrieved));
		}
		if let Some(prompt) = &self.registered {
			fields.insert(
				"prompt".into(),
				json!({
					"id": prompt.id,
					"version": prompt.version,
					"owner": prompt.owner,
					"content_hash": format!("0x{}", hex::encode(prompt.content_hash)),
					"price_per_use": prompt.price_per_use,
					"block": prompt.block,
				}),
			);
		}
		fields
	}
}

/// Refuses what `body` asks for at `endpoint` that is not served, rather than answer as if it
/// had not asked: best-of sampling, a suffix, tools on completions, a chat's options on
/// completions, vLLM's beam search, priorities, token ids as the logprobs' tokens, a
/// whitespace pattern, logits processors, prompt embeddings, a request's own chat template,
/// `add_special_tokens` true on chat. (Fields left at what means "none" pass. What needs the
/// tokenizer or the model's limits, such as token ids in the vocabulary, or
/// `stream_options.continuous_usage_stats`, is refused later, in [`serve`] and
/// [`generation_requests`].)
fn refuse_unserved(endpoint: Endpoint, body: &Body) -> Result<(), ApiError> {
	let chat = matches!(endpoint, Endpoint::Chat);
	let none = |value: &Option<Value>, means_none: &[Value]| match value {
		None | Some(Value::Null) => true,
		Some(v) => means_none.contains(v),
	};
	let unserved = [
		("best_of", none(&body.best_of, &[json!(1)])),
		("suffix", none(&body.suffix, &[json!("")])),
		("tools", chat || none(&body.tools, &[json!([])])),
		("tool_choice", chat || none(&body.tool_choice, &[json!("none")])),
		("functions (use tools)", none(&body.functions, &[json!([])])),
		("function_call (use tool_choice)", none(&body.function_call, &[json!("none")])),
		("documents (on chat only)", chat || body.documents.is_none()),
		("attribution (on chat only)", chat || body.attribution.is_none()),
		("retrieval (on chat only)", chat || body.retrieval.is_none()),
		("add_generation_prompt (on chat only)", chat || body.add_generation_prompt.is_none()),
		("continue_final_message (on chat only)", chat || body.continue_final_message.is_none()),
		("chat_template_kwargs (on chat only)", chat || body.chat_template_kwargs.is_none()),
		(
			"add_special_tokens (true on chat: the chat template writes them)",
			!chat || body.add_special_tokens != Some(true),
		),
		("use_beam_search", body.use_beam_search != Some(true)),
		("length_penalty (beam search's)", body.length_penalty.is_none_or(|p| p == 1.0)),
		("priority (requests are served in arrival order)", body.priority.is_none_or(|p| p == 0)),
		("return_tokens_as_token_ids", body.return_tokens_as_token_ids != Some(true)),
		("guided_whitespace_pattern", none(&body.guided_whitespace_pattern, &[])),
		("logits_processors", none(&body.logits_processors, &[json!([])])),
		("prompt_embeds", none(&body.prompt_embeds, &[])),
		("chat_template (the model's own is used)", none(&body.chat_template, &[])),
	];
	match unserved.iter().find(|(_, fine)| !fine) {
		Some((field, _)) => {
			Err(ApiError::bad_request(format!("{field}: not served by this worker")))
		}
		None => Ok(()),
	}
}

/// The most tokens `logit_bias` may name (OpenAI's limit).
const MAX_LOGIT_BIAS_TOKENS: usize = 300;

/// `logit_bias`: an object of token ids, as strings, to numbers (each id in a vocabulary of
/// `vocab_size`; the sampler checks the numbers' range).
fn logit_bias(value: Option<&Value>, vocab_size: usize) -> Result<Vec<(u32, f32)>, ApiError> {
	let map = match value {
		None | Some(Value::Null) => return Ok(Vec::new()),
		Some(Value::Object(map)) => map,
		Some(_) => {
			return Err(ApiError::bad_request("logit_bias: an object of token ids to numbers"))
		}
	};
	if map.len() > MAX_LOGIT_BIAS_TOKENS {
		return Err(ApiError::bad_request(format!(
			"logit_bias: at most {MAX_LOGIT_BIAS_TOKENS} tokens, not {}",
			map.len()
		)));
	}
	let mut bias = Vec::with_capacity(map.len());
	for (key, value) in map {
		let digits = !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit());
		let token = key.parse::<u32>().ok().filter(|_| digits).ok_or_else(|| {
			ApiError::bad_request(format!("logit_bias: {key:?} is not a token id"))
		})?;
		let value = value.as_f64().ok_or_else(|| {
			ApiError::bad_request(format!("logit_bias: token {key}'s bias is not a number"))
		})?;
		bias.push((token, value as f32));
	}
	let ids: Vec<u32> = bias.iter().map(|(t, _)| *t).collect();
	check_token_ids("logit_bias", &ids, vocab_size)?;
	Ok(bias)
}

/// vLLM's structured output: its `guided_*` fields, or (as vLLM names them from 0.12 on) the
/// same in `structured_outputs`.
#[derive(Default)]
struct Guided<'a> {
	/// Whether they came in `structured_outputs` (for the names in errors).
	structured: bool,
	json: Option<&'a Value>,
	choice: Option<&'a Value>,
	regex: Option<&'a Value>,
	grammar: Option<&'a Value>,
	/// `structured_outputs.json_object`: any JSON object.
	json_object: bool,
}

impl<'a> Guided<'a> {
	/// The fields of `body`: `structured_outputs`'s keys `json`, `choice`, `regex`,
	/// `grammar` and `json_object` (true), exactly one of them, as vLLM's; and
	/// `disable_fallback` (no request falls back to another way: each is held to what it asks
	/// for, or refused). What is not served is refused (`whitespace_pattern`,
	/// `structural_tag`, `disable_any_whitespace` or `disable_additional_properties` true), as
	/// are keys vLLM does not know.
	fn of(body: &'a Body) -> Result<Self, ApiError> {
		let given = |v: &'a Option<Value>| v.as_ref().filter(|v| !v.is_null());
		let guided = Self {
			structured: false,
			json: given(&body.guided_json),
			choice: given(&body.guided_choice),
			regex: given(&body.guided_regex),
			grammar: given(&body.guided_grammar),
			json_object: false,
		};
		let Some(outputs) = given(&body.structured_outputs) else { return Ok(guided) };
		if [guided.json, guided.choice, guided.regex, guided.grammar].iter().any(Option::is_some) {
			return Err(ApiError::bad_request(
				"structured_outputs and guided_json, guided_choice, guided_regex or \
				 guided_grammar: one or the other",
			));
		}
		let fields = outputs
			.as_object()
			.ok_or_else(|| ApiError::bad_request("structured_outputs: an object"))?;
		let mut guided = Self { structured: true, ..Self::default() };
		for (key, value) in fields {
			let value = Some(value).filter(|v| !v.is_null());
			let unserved =
				|why: &str| Err(ApiError::bad_request(format!("structured_outputs.{key}: {why}")));
			match key.as_str() {
				"json" => guided.json = value,
				"choice" => guided.choice = value,
				"regex" => guided.regex = value,
				"grammar" => guided.grammar = value,
				"json_object" => match value {
					None => {}
					Some(Value::Bool(true)) => guided.json_object = true,
					Some(_) => return unserved("true, or left out"),
				},
				"disable_fallback" => {
					if !matches!(value, None | Some(Value::Bool(_))) {
						return unserved("true or false");
					}
				}
				"disable_any_whitespace" | "disable_additional_properties" => {
					if value.is_some_and(|v| v != &Value::Bool(false)) {
						return unserved("not served by this worker (false only)");
					}
				}
				"whitespace_pattern" | "structural_tag" if value.is_some() => {
					return unserved("not served by this worker")
				}
				"whitespace_pattern" | "structural_tag" => {}
				_ => {
					return unserved(
						"not a field of structured_outputs (json, choice, regex, grammar, \
						 json_object)",
					)
				}
			}
		}
		let given = [guided.json, guided.choice, guided.regex, guided.grammar]
			.iter()
			.filter(|v| v.is_some())
			.count() + usize::from(guided.json_object);
		if given != 1 {
			return Err(ApiError::bad_request(
				"structured_outputs: exactly one of json, choice, regex, grammar and json_object",
			));
		}
		Ok(guided)
	}

	/// The name of field `what` (`guided_regex`, or `structured_outputs.regex`).
	fn name(&self, what: &str) -> String {
		match self.structured {
			true => format!("structured_outputs.{what}"),
			false => format!("guided_{what}"),
		}
	}
}

/// What the output must be: `response_format` is text (also when absent), any JSON object
/// (`json_object`), or what a JSON schema allows (OpenAI's `json_schema` with
/// `json_schema.schema`, LoRAX's `json_object` with `schema`); vLLM's `guided_json` is a
/// schema too (an object, or its text), its `guided_choice` a list of texts, one of which the
/// output is exactly, its `guided_regex` a regular expression the whole output matches, and
/// its `guided_grammar` a context-free grammar in GBNF that takes the whole output
/// ([`Guided`]: or the same in `structured_outputs`).
///
/// Grammars are compiled once per text and kept ([`GrammarCache`]).
fn response_format<'a>(
	format: Option<&Value>,
	guided: &Guided<'a>,
	cache: &GrammarCache,
) -> Result<ResponseFormat, ApiError> {
	let text = |f: &Value| f.is_null() || f.get("type").and_then(Value::as_str) == Some("text");
	let asked = [
		!format.is_none_or(text),
		guided.json.is_some(),
		guided.choice.is_some(),
		guided.regex.is_some(),
		guided.grammar.is_some(),
		guided.json_object,
	];
	if asked.iter().filter(|&&a| a).count() > 1 {
		return Err(ApiError::bad_request(if guided.structured {
			"structured_outputs' json, choice, regex, grammar and json_object, and \
			 response_format: one at most"
		} else {
			"guided_choice, guided_json, guided_regex, guided_grammar and response_format: one \
			 at most"
		}));
	}
	// The grammar of `kind` compiled from `key` by `compile`, kept or compiled now; its
	// errors are the request's, named by `field`.
	let kept =
		|kind, key: &str, field: &str, compile: &dyn Fn() -> Result<ResponseFormat, String>| {
			cache.get_or_compile(kind, key, || {
				compile().map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
			})
		};
	// A guided field's text, or why it is not one.
	let text_of = |value: &'a Value, field: &str, what: &str| {
		value.as_str().ok_or_else(|| ApiError::bad_request(format!("{field}: {what} (a string)")))
	};
	if let Some(grammar) = guided.grammar {
		let field = guided.name("grammar");
		let grammar = text_of(grammar, &field, "a grammar in GBNF")?;
		return kept(GrammarKind::Ebnf, grammar, &field, &|| {
			EbnfGrammar::new(grammar).map(|grammar| ResponseFormat::Grammar(Arc::new(grammar)))
		});
	}
	if let Some(pattern) = guided.regex {
		let field = guided.name("regex");
		let pattern = text_of(pattern, &field, "a regular expression")?;
		return kept(GrammarKind::Regex, pattern, &field, &|| {
			RegexGrammar::new(pattern).map(|grammar| ResponseFormat::Regex(Arc::new(grammar)))
		});
	}
	if let Some(choices) = guided.choice {
		let field = guided.name("choice");
		let texts = choices
			.as_array()
			.and_then(|list| {
				list.iter().map(|c| c.as_str().map(String::from)).collect::<Option<Vec<_>>>()
			})
			.ok_or_else(|| ApiError::bad_request(format!("{field}: a list of strings")))?;
		let key = Value::from(texts.clone()).to_string();
		return kept(GrammarKind::Choice, &key, &field, &|| {
			JsonGrammar::choice(&texts).map(|grammar| ResponseFormat::Json(Arc::new(grammar)))
		});
	}
	if guided.json_object {
		return Ok(ResponseFormat::json_object());
	}
	let schema = |schema: &Value, field: &str| {
		let parsed;
		let schema = match schema {
			Value::String(text) => {
				parsed = serde_json::from_str::<Value>(text).map_err(|e| {
					ApiError::bad_request(format!("{field}: the schema is not JSON: {e}"))
				})?;
				&parsed
			}
			schema => schema,
		};
		kept(GrammarKind::Schema, &schema.to_string(), field, &|| {
			JsonGrammar::from_schema(schema).map(|grammar| ResponseFormat::Json(Arc::new(grammar)))
		})
	};
	let format = format.filter(|f| !f.is_null());
	match (format, guided.json) {
		(_, Some(given)) => return schema(given, &guided.name("json")),
		(None, None) => return Ok(ResponseFormat::Text),
		(Some(_), None) => {}
	}
	let format = format.unwrap_or(&Value::Null);
	match format.get("type").and_then(Value::as_str) {
		Some("text") => Ok(ResponseFormat::Text),
		Some("json_object") => match format.get("schema") {
			None | Some(Value::Null) => Ok(ResponseFormat::json_object()),
			Some(given) => schema(given, "response_format.schema"),
		},
		Some("json_schema") => match format.pointer("/json_schema/schema") {
			Some(given) => schema(given, "response_format.json_schema.schema"),
			None => Err(ApiError::bad_request("response_format: json_schema.schema is missing")),
		},
		_ => Err(ApiError::bad_request(
			"response_format: its type is text, json_object or json_schema",
		)),
	}
}

/// Runs `work`, which may take milliseconds of CPU, as a blocking section where the runtime
/// allows one (a multi-threaded runtime hands this thread's other tasks to its other threads
/// meanwhile), or as it is.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
	use tokio::runtime::{Handle, RuntimeFlavor};
	match Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
		Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
		_ => work(),
	}
}

/// What a streamed answer also sends.
#[derive(Debug, Deserialize)]
struct StreamOptions {
	/// A last chunk with the token counts.
	include_usage: Option<bool>,
	/// vLLM's: the counts so far in every chunk (not served: refused when true).
	continuous_usage_stats: Option<bool>,
}

/// Token counts of an answer.
#[derive(Debug, Default, Serialize)]
struct Usage {
	prompt_tokens: usize,
	completion_tokens: usize,
	total_tokens: usize,
	/// OpenAI's: how many of the prompt tokens came from the prefix cache.
	prompt_tokens_details: PromptTokensDetails,
}

/// [`Usage::prompt_tokens_details`].
#[derive(Debug, Default, Serialize)]
struct PromptTokensDetails {
	cached_tokens: usize,
}

/// OpenAI's name for why generation ended.
fn finish_reason(reason: FinishReason) -> &'static str {
	match reason {
		FinishReason::Length => "length",
		FinishReason::Eos | FinishReason::Stop => "stop",
	}
}

impl ApiState {
	/// Whether the adapters folder has an adapter folder named `name` (a single plain path
	/// component); if so it is served from now on.
	fn discover(&self, name: &str) -> bool {
		let Some(root) = &self.adapters_dir else { return false };
		let mut parts = Path::new(name).components();
		let plain = matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None));
		let dir = root.join(name);
		if !plain || !dir.join("adapter_config.json").is_file() {
			return false;
		}
		// Under the lock, in the order the engine sees: an adapter loaded by path meanwhile
		// under this name stays.
		let mut adapters = self.write_adapters();
		if adapters.contains_key(name) {
			return true;
		}
		if self.engine.register_adapter(name, &dir).is_err() {
			return false;
		}
		tracing::info!(adapter = %name, "found in the adapters folder");
		adapters.insert(name.to_string(), dir);
		true
	}

	/// The model a request's `model` names: [`Self::resolve`]'s, or an adapter registered on
	/// chain (`chain:<id>`), checked ([`AdapterRegistry::adapter`], on every request: built
	/// for the model once its files are, one that cannot be is a 422) and registered with the
	/// engine.
	async fn served(&self, model: Option<&str>) -> Result<Served, ApiError> {
		let Some(id) = model.and_then(adapter_registry::chain_id) else {
			let (name, adapter) = self.resolve(model)?;
			return Ok(Served { name, adapter, registered: None });
		};
		let registry = self.chain_adapters.as_ref().ok_or(AdapterError::NoChain)?;
		let id = id?;
		let name = format!("{}{id}", adapter_registry::PREFIX);
		let engine = self.engine.clone();
		let build: adapter_registry::Build =
			Arc::new(move |name, files| engine.check_files(name, files).map_err(|e| e.to_string()));
		let mut lookup = registry.verdicts().begin(id);
		let found = registry.adapter(&mut lookup, build).await;
		// Listed or unlisted under the lock, in the order the engine sees, as the lookup of the
		// latest block found.
		let mut adapters = self.write_adapters();
		let registered = match found {
			Err(e) if !e.is_gone() => return Err(e.into()),
			Err(e) => {
				// Not to be served now (retired, say): not listed either.
				if let Settled::Latest = lookup.settle(Some(&e)) {
					if adapters.remove(&name).is_some() {
						let _ = self.engine.unregister_adapter(name.as_str());
						tracing::info!(adapter = %name, reason = %e, "no longer served");
					}
				}
				return Err(e.into());
			}
			Ok(registered) => registered,
		};
		match lookup.settle(None) {
			Settled::Gone(e) => return Err(e.into()),
			Settled::Overtaken => {}
			Settled::Latest => {
				if adapters.get(&name) != Some(&registered.dir) {
					let source = AdapterSource::hashed(&registered.dir, registered.content_hash);
					self.engine.register_adapter(name.clone(), source)?;
					tracing::info!(adapter = %name, owner = %registered.owner, "registered on chain");
					adapters.insert(name.clone(), registered.dir.clone());
				}
			}
		}
		drop(adapters);
		Ok(Served { name: name.clone(), adapter: Some(name), registered: Some(registered) })
	}

	/// The model a request's `model` names: the name answers report, and the adapter (`None`
	/// for the base model, which no name or an empty one also means); an error if it is
	/// neither the base nor a registered adapter.
	fn resolve(&self, model: Option<&str>) -> Result<(String, Option<String>), ApiError> {
		match model {
			None => Ok((self.model_name.clone(), None)),
			Some(name) if name.is_empty() || name == self.model_name => {
				Ok((self.model_name.clone(), None))
			}
			Some(name) if self.read_adapters().contains_key(name) || self.discover(name) => {
				Ok((name.to_string(), Some(name.to_string())))
			}
			Some(name) if self.embeddings.as_ref().is_some_and(|(served, _)| served == name) => {
				Err(ApiError::bad_request(format!(
					"{name:?} is an embedding model: it is served at /v1/embeddings"
				)))
			}
			Some(name) => Err(ApiError::model_not_found(format!(
				"the model {name:?} does not exist: this worker serves {:?} and its adapters \
				 (GET /v1/models)",
				self.model_name
			))),
		}
	}
}

/// The most choices (`n`) one request may ask for: each is a request of its own in the engine.
pub const MAX_CHOICES: usize = 16;
/// The most prompts one completions request may give (each `n` choices).
pub const MAX_PROMPTS: usize = 256;

/// The prompts of a completions request's `prompt` (or an embeddings request's `input`:
/// `field`, at most `max`): a string, a list of strings, a list of token ids (one prompt), or a
/// list of lists of token ids.
fn prompts(field: &str, prompt: Value, max: usize) -> Result<Vec<Prompt>, ApiError> {
	let token = |value: &Value| -> Result<u32, ApiError> {
		value
			.as_u64()
			.and_then(|id| u32::try_from(id).ok())
			.ok_or_else(|| ApiError::bad_request(format!("{field}: {value} is not a token id")))
	};
	let tokens = |values: &[Value]| -> Result<Prompt, ApiError> {
		Ok(Prompt::Tokens(values.iter().map(token).collect::<Result<_, _>>()?))
	};
	let prompts = match prompt {
		Value::String(text) => vec![Prompt::Text(text)],
		Value::Array(items) if items.first().is_some_and(Value::is_number) => {
			vec![tokens(&items)?]
		}
		Value::Array(items) => items
			.into_iter()
			.map(|item| match item {
				Value::String(text) => Ok(Prompt::Text(text)),
				Value::Array(ids) => tokens(&ids),
				other => Err(ApiError::bad_request(format!(
					"{field}: {other} is neither a string nor a list of token ids"
				))),
			})
			.collect::<Result<_, _>>()?,
		other => {
			return Err(ApiError::bad_request(format!(
				"{field}: {other} is neither a string nor a list of strings or token ids"
			)))
		}
	};
	if prompts.is_empty() {
		return Err(ApiError::bad_request(format!("{field}: an empty list")));
	}
	if prompts.len() > max {
		return Err(ApiError::bad_request(format!(
			"{field}: at most {max} per request, not {}",
			prompts.len()
		)));
	}
	Ok(prompts)
}

/// How many most likely tokens' log-probabilities `body` asks for at `endpoint`: `None` for no
/// log-probabilities at all.
fn logprobs_asked(endpoint: Endpoint, body: &Body) -> Result<Option<usize>, ApiError> {
	let asked = match (endpoint, &body.logprobs) {
		(_, None | Some(Value::Null | Value::Bool(false))) => None,
		(Endpoint::Completions, Some(k)) => Some(k.as_u64().ok_or_else(|| {
			ApiError::bad_request(format!("logprobs: {k} is not a count of tokens"))
		})?),
		(Endpoint::Chat, Some(Value::Bool(true))) => Some(body.top_logprobs.unwrap_or(0) as u64),
		(Endpoint::Chat, Some(other)) => {
			return Err(ApiError::bad_request(format!("logprobs: {other} is not true or false")))
		}
	};
	match endpoint {
		Endpoint::Chat if asked.is_none() && body.top_logprobs.is_some_and(|k| k > 0) => {
			return Err(ApiError::bad_request("top_logprobs: only with logprobs: true"))
		}
		Endpoint::Completions if body.top_logprobs.is_some() => {
			return Err(ApiError::bad_request("top_logprobs: use logprobs on /v1/completions"))
		}
		_ => {}
	}
	let Some(k) = asked else { return Ok(None) };
	check_top_count("logprobs", k)?;
	let completions = matches!(endpoint, Endpoint::Completions);
	if completions && body.stream == Some(true) && body.echo == Some(true) {
		return Err(ApiError::bad_request(
			"logprobs with echo: the prompt's log-probabilities are not streamed",
		));
	}
	Ok(Some(k as usize))
}

/// Refuses more than [`MAX_TOP_LOGPROBS`] most likely tokens asked for in `field`.
fn check_top_count(field: &str, k: u64) -> Result<(), ApiError> {
	match k > MAX_TOP_LOGPROBS as u64 {
		true => Err(ApiError::bad_request(format!(
			"{field}: at most {MAX_TOP_LOGPROBS} most likely tokens, not {k}"
		))),
		false => Ok(()),
	}
}

/// vLLM's `prompt_logprobs`: how many most likely tokens to report at each prompt position
/// with the prompt token's own log-probability and rank (0 for the token's alone), or `None`.
fn prompt_logprobs_asked(body: &Body) -> Result<Option<usize>, ApiError> {
	let k = match &body.prompt_logprobs {
		None | Some(Value::Null) => return Ok(None),
		Some(k) => k.as_u64().ok_or_else(|| {
			ApiError::bad_request(format!("prompt_logprobs: {k} is not a count of tokens"))
		})?,
	};
	check_top_count("prompt_logprobs", k)?;
	if body.stream == Some(true) {
		return Err(ApiError::bad_request("prompt_logprobs: not streamed"));
	}
	Ok(Some(k as usize))
}

/// vLLM's `prompt_logprobs` of `generation`: `null` for the first prompt token, then at each
/// position an object from token ids to `logprob`, `rank` and `decoded_token`, for the prompt
/// token and the `k` most likely.
fn prompt_logprobs_of(
	tokenizer: &Tokenizer,
	generation: &Generation,
	k: usize,
) -> Result<Value, Error> {
	let Some(scores) = &generation.prompt_logprobs else { return Ok(Value::Null) };
	let entry = |token: u32, logprob: f32, rank: u32| -> Result<(String, Value), Error> {
		let decoded = tokenizer.decode(&[token])?;
		let value =
			json!({"logprob": logprob.max(-9999.0), "rank": rank, "decoded_token": decoded});
		Ok((token.to_string(), value))
	};
	let mut positions = vec![Value::Null];
	for (i, &token) in generation.prompt_tokens.iter().skip(1).enumerate() {
		let (Some(&logprob), Some(&rank)) = (scores.logprobs.get(i), scores.ranks.get(i)) else {
			break;
		};
		// The prompt token first; if it is among the k most likely, its place there stands (as
		// vLLM ranks tokens as likely as each other).
		let mut position = serde_json::Map::new();
		let (id, value) = entry(token, logprob, rank)?;
		position.insert(id, value);
		let top = scores.top_logprobs.get(i).map_or(&[][..], Vec::as_slice);
		for (r, &(t, lp)) in top.iter().take(k).enumerate() {
			let (id, value) = entry(t, lp, r as u32 + 1)?;
			position.insert(id, value);
		}
		positions.push(Value::Object(position));
	}
	Ok(Value::Array(positions))
}

/// What `body`'s output must be ([`response_format`], its grammar kept in `grammars`), or the
/// tool calls' grammar of `calling` (one or the other).
fn output_format(
	body: &Body,
	calling: Option<&ToolCalling>,
	grammars: &GrammarCache,
) -> Result<ResponseFormat, ApiError> {
	let format = response_format(body.response_format.as_ref(), &Guided::of(body)?, grammars)?;
	// Tool calls are held to their own grammar.
	match (calling, format) {
		(None, format) => Ok(format),
		(Some(calling), ResponseFormat::Text) => Ok(calling.response_format()),
		(Some(_), _) => Err(ApiError::bad_request(
			"tool_choice and response_format (or guided_json, guided_choice, guided_regex, \
			 guided_grammar, structured_outputs): one or the other",
		)),
	}
}

/// The engine's requests for `prompts` with `body`'s sampling at `endpoint`, each reporting
/// `logprobs` most likely tokens (and the prompt's, when echoed): `n` per prompt, choice
/// `p * n + i` for choice `i` of prompt `p`, seeded with `seed + i` (so a seeded request is
/// repeatable, its choices differ, and a prompt's choices do not depend on the others').
fn generation_requests(
	endpoint: Endpoint,
	prompts: &[Prompt],
	body: &Body,
	logprobs: Option<usize>,
	(logit_bias, bad_words): (Vec<(u32, f32)>, Vec<Vec<u32>>),
	default_max_tokens: usize,
	response_format: impl FnOnce() -> Result<ResponseFormat, ApiError>,
) -> Result<Vec<GenerationRequest>, ApiError> {
	if body.stream_options.is_some() && body.stream != Some(true) {
		return Err(ApiError::bad_request("stream_options: only allowed when stream is true"));
	}
	if body.stream_options.as_ref().and_then(|o| o.continuous_usage_stats) == Some(true) {
		return Err(ApiError::bad_request(
			"stream_options.continuous_usage_stats: not served by this worker (include_usage \
			 sends the counts in a last chunk)",
		));
	}
	let n = body.n.unwrap_or(1);
	if !(1..=MAX_CHOICES).contains(&n) {
		return Err(ApiError::bad_request(format!("n: from 1 to {MAX_CHOICES} choices, not {n}")));
	}
	let stop = match &body.stop {
		None => Vec::new(),
		Some(OneOrMany::One(s)) => vec![s.clone()],
		Some(OneOrMany::Many(list)) => list.clone(),
	};
	if stop.len() > MAX_STOP {
		return Err(ApiError::bad_request(format!("stop: at most {MAX_STOP} sequences")));
	}
	if stop.iter().any(String::is_empty) {
		return Err(ApiError::bad_request("stop: an empty stop sequence"));
	}
	let top_k = match body.top_k {
		None | Some(-1) | Some(0) => 0,
		Some(k) => usize::try_from(k)
			.map_err(|_| ApiError::bad_request(format!("top_k {k} is not -1, 0 or positive")))?,
	};
	let seed = body.seed;
	// A completion's echo with logprobs scores its prompt.
	let echo = body.echo == Some(true) && matches!(endpoint, Endpoint::Completions);
	let prompt_logprobs = prompt_logprobs_asked(body)?;
	// The grammar last: what this function refuses is refused before it is compiled (or
	// kept; the engine's own checks, such as min_tokens beside a grammar, come after).
	let response_format = response_format()?;
	let choices = prompts.iter().flat_map(|prompt| (0..n as u64).map(move |i| (prompt, i)));
	Ok(choices
		.map(|(prompt, i)| GenerationRequest {
			prompt: prompt.clone(),
			max_tokens: body
				.max_tokens
				.or(body.max_completion_tokens)
				.unwrap_or(default_max_tokens),
			sampling: SamplingParams {
				temperature: body.temperature.unwrap_or(1.0),
				top_k,
				top_p: body.top_p.unwrap_or(1.0),
				min_p: body.min_p.unwrap_or(0.0),
				repetition_penalty: body.repetition_penalty.unwrap_or(1.0),
				presence_penalty: body.presence_penalty.unwrap_or(0.0),
				frequency_penalty: body.frequency_penalty.unwrap_or(0.0),
				logit_bias: logit_bias.clone(),
				allowed_token_ids: body.allowed_token_ids.clone().unwrap_or_default(),
				bad_words: bad_words.clone(),
				seed: seed.map_or_else(rand::random, |s| s.wrapping_add(i)),
				top_logprobs: logprobs.unwrap_or(0),
			},
			stop: stop.clone(),
			stop_token_ids: body.stop_token_ids.clone().unwrap_or_default(),
			ignore_eos: body.ignore_eos.unwrap_or(false),
			skip_special_tokens: body.skip_special_tokens.unwrap_or(true),
			include_stop_str_in_output: body.include_stop_str_in_output.unwrap_or(false),
			cache_salt: body.cache_salt.clone(),
			// OpenAI's echo with logprobs, or vLLM's prompt_logprobs: the prompt's tokens' too.
			prompt_logprobs: logprobs.filter(|_| echo).max(prompt_logprobs),
			prompt_logprobs_from: 0,
			min_tokens: body.min_tokens.unwrap_or(0),
			response_format: response_format.clone(),
		})
		.collect())
}

/// Which of the two generating endpoints answers: the shape of its answers.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
	/// `/v1/completions`.
	Completions,
	/// `/v1/chat/completions`.
	Chat,
}

impl Endpoint {
	/// The answer's `object`, whole or a streamed chunk of it.
	fn object(self, chunk: bool) -> &'static str {
		match (self, chunk) {
			(Endpoint::Completions, _) => "text_completion",
			(Endpoint::Chat, false) => "chat.completion",
			(Endpoint::Chat, true) => "chat.completion.chunk",
		}
	}

	/// A new answer id (`prefix-` and 24 hex digits).
	fn answer_id(self) -> String {
		let prefix = match self {
			Endpoint::Completions => "cmpl",
			Endpoint::Chat => "chatcmpl",
		};
		format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
	}

	/// Choice `index` of a whole answer: `text` as a completion or an assistant's message,
	/// with its `logprobs` (`null` when not asked for).
	fn choice(self, index: usize, text: &str, logprobs: Value, reason: FinishReason) -> Value {
		let mut choice = match self {
			Endpoint::Completions => json!({ "text": text }),
			Endpoint::Chat => json!({ "message": { "role": "assistant", "content": text } }),
		};
		choice["index"] = json!(index);
		choice["logprobs"] = logprobs;
		choice["finish_reason"] = json!(finish_reason(reason));
		choice
	}

	/// OpenAI's `logprobs` of a whole choice for `generation`, whose text begins `offset`
	/// characters into the choice's text (after an echoed prompt), with `top` alternatives. An
	/// `echo`ed prompt's tokens come first (completions; the first token's is `null`, as it has
	/// none).
	fn logprobs(
		self,
		tokenizer: &Tokenizer,
		generation: &Generation,
		(offset, echo): (usize, bool),
		top: usize,
	) -> Result<Value, Error> {
		let mut entries = Vec::new();
		let echoed = generation.prompt_logprobs.as_ref().filter(|_| echo);
		if let (Endpoint::Completions, Some(scores)) = (self, echoed) {
			if let Some((&first, rest)) = generation.prompt_tokens.split_first() {
				entries.push(TokenLogprob::first(tokenizer, first)?);
				// As many alternatives as `logprobs` asks for (vLLM's `prompt_logprobs` may
				// have asked the engine for more).
				let rest = TokenScores {
					tokens: rest.to_vec(),
					logprobs: scores.logprobs.clone(),
					top_logprobs: scores
						.top_logprobs
						.iter()
						.map(|t| t[..t.len().min(top)].to_vec())
						.collect(),
				};
				entries.extend(TokenLogprob::all(tokenizer, &rest)?);
			}
		}
		// The prompt's tokens from the start of the text, the generated ones from `offset`.
		let mut offsets = TokenLogprob::offsets(&entries, 0);
		let generated = TokenLogprob::all(tokenizer, &generation.scores_from(0))?;
		offsets.extend(TokenLogprob::offsets(&generated, offset));
		entries.extend(generated);
		Ok(self.logprobs_of(&entries, offsets))
	}

	/// OpenAI's `logprobs` of `entries` (a whole choice's, or a streamed chunk's), which begin
	/// at `offsets` in the choice's text.
	fn logprobs_of(self, entries: &[TokenLogprob], offsets: Vec<usize>) -> Value {
		// JSON has no infinities: vLLM's floor.
		let finite = |logprob: f32| json!(logprob.max(-9999.0));
		match self {
			Endpoint::Completions => {
				let top = |entry: &TokenLogprob| match &entry.top {
					None => Value::Null,
					Some(top) => Value::Object(
						top.iter().map(|(t, _, lp)| (t.clone(), finite(*lp))).collect(),
					),
				};
				let logprobs: Vec<Value> =
					entries.iter().map(|e| e.logprob.map_or(Value::Null, finite)).collect();
				json!({
					"tokens": entries.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
					"token_logprobs": logprobs,
					"top_logprobs": entries.iter().map(top).collect::<Vec<_>>(),
					"text_offset": offsets,
				})
			}
			Endpoint::Chat => {
				let entry = |text: &str, bytes: &[u8], logprob: f32| json!({ "token": text, "logprob": finite(logprob), "bytes": bytes });
				let content: Vec<Value> = entries
					.iter()
					.map(|e| {
						let logprob = e.logprob.unwrap_or(f32::NEG_INFINITY);
						let mut token = entry(&e.text, &e.bytes, logprob);
						let top = e.top.iter().flatten().map(|(t, b, lp)| entry(t, b, *lp));
						token["top_logprobs"] = top.collect::<Vec<_>>().into();
						token
					})
					.collect();
				json!({ "content": content })
			}
		}
	}

	/// Choice `index` of a streamed chunk, with `piece` of it.
	fn delta(self, index: usize, piece: Piece<'_>) -> Value {
		let mut choice = match (self, piece) {
			(Endpoint::Completions, Piece::Start(text) | Piece::Text(text)) => {
				json!({ "text": text })
			}
			// (Tool calls are a chat's only.)
			(Endpoint::Completions, Piece::End(_) | Piece::Calls(..)) => json!({ "text": "" }),
			(Endpoint::Chat, Piece::Start(text)) => {
				json!({ "delta": { "role": "assistant", "content": text } })
			}
			(Endpoint::Chat, Piece::Text(text)) => json!({ "delta": { "content": text } }),
			(Endpoint::Chat, Piece::End(_)) => json!({ "delta": {} }),
			(Endpoint::Chat, Piece::Calls(text, calls)) => {
				let mut delta = json!({});
				if !text.is_empty() {
					delta["content"] = json!(text);
				}
				if !calls.is_empty() {
					delta["tool_calls"] = json!(calls);
				}
				json!({ "delta": delta })
			}
		};
		choice["index"] = json!(index);
		choice["logprobs"] = Value::Null;
		let reason = match piece {
			Piece::End(reason) => json!(finish_reason(reason)),
			_ => Value::Null,
		};
		choice["finish_reason"] = reason;
		choice
	}
}

/// What a streamed chunk brings of one choice.
#[derive(Clone, Copy, Debug)]
enum Piece<'a> {
	/// Its beginning: a chat's role (with what it echoes); a completion's echoed prompt.
	Start(&'a str),
	/// More of its text.
	Text(&'a str),
	/// More of a chat's answer when it may call tools: its text (`content`: `"auto"`'s before
	/// its first call) and its tool calls (`tool_calls` deltas).
	Calls(&'a str, &'a [Value]),
	/// Its end, and why.
	End(FinishReason),
}

/// One token of a choice's `logprobs`: its text (as the tokenizer decodes it alone: U+FFFD
/// for part of a character) and bytes (its own, part of a character included), its
/// log-probability and the most likely tokens at its position (`None` for a prompt's first
/// token, which has none).
struct TokenLogprob {
	text: String,
	bytes: Vec<u8>,
	logprob: Option<f32>,
	top: Option<Vec<(String, Vec<u8>, f32)>>,
}

/// `token`'s text decoded alone, and its bytes (a special token's are its text's).
fn spelled(tokenizer: &Tokenizer, token: u32) -> Result<(String, Vec<u8>), Error> {
	let text = tokenizer.decode(&[token])?;
	let bytes = match tokenizer.token_bytes().get(token as usize) {
		Some(bytes) if !bytes.is_empty() => bytes.to_vec(),
		_ => text.as_bytes().to_vec(),
	};
	Ok((text, bytes))
}

impl TokenLogprob {
	/// The entry of a prompt's first token, which has no log-probability.
	fn first(tokenizer: &Tokenizer, token: u32) -> Result<Self, Error> {
		let (text, bytes) = spelled(tokenizer, token)?;
		Ok(Self { text, bytes, logprob: None, top: None })
	}

	/// The entries of `scores`' tokens.
	fn all(tokenizer: &Tokenizer, scores: &TokenScores) -> Result<Vec<Self>, Error> {
		let empty = Vec::new();
		let mut entries = Vec::with_capacity(scores.tokens.len());
		for (i, (&token, &logprob)) in scores.tokens.iter().zip(&scores.logprobs).enumerate() {
			let top = scores.top_logprobs.get(i).unwrap_or(&empty);
			let top = top
				.iter()
				.map(|&(t, lp)| spelled(tokenizer, t).map(|(text, bytes)| (text, bytes, lp)))
				.collect::<Result<_, Error>>()?;
			let (text, bytes) = spelled(tokenizer, token)?;
			entries.push(Self { text, bytes, logprob: Some(logprob), top: Some(top) });
		}
		Ok(entries)
	}

	/// Where each of `entries` begins in the text, the first at `offset` (in characters).
	fn offsets(entries: &[Self], offset: usize) -> Vec<usize> {
		let mut at = offset;
		entries
			.iter()
			.map(|entry| {
				let here = at;
				at += entry.text.chars().count();
				here
			})
			.collect()
	}
}

/// Token counts of an answer's generations, each with its choice's index, `n` choices per
/// prompt (each prompt counted once).
fn usage_of<'g>(generations: impl IntoIterator<Item = (usize, &'g Generation)>, n: usize) -> Usage {
	let mut usage = Usage::default();
	for (index, generation) in generations {
		if index % n.max(1) == 0 {
			usage.prompt_tokens += generation.prompt_tokens.len();
			usage.prompt_tokens_details.cached_tokens += generation.cached_tokens;
		}
		usage.completion_tokens += generation.tokens.len();
	}
	usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
	usage
}

/// The text echoed before each prompt's choices: the prompt's text (token ids decoded).
fn echoes(tokenizer: &Tokenizer, prompts: &[Prompt]) -> Result<Vec<String>, Error> {
	prompts
		.iter()
		.map(|prompt| match prompt {
			Prompt::Text(text) => Ok(text.clone()),
			Prompt::Tokens(ids) => tokenizer.decode(ids),
		})
		.collect()
}

/// `prompts` with only their last `k` tokens each (vLLM's `truncate_prompt_tokens`: -1 for
/// `max`, the most the model takes), as token ids; those no longer are left as they are. A
/// text's beginning-of-sequence token, which the tokenizer adds, stays first (as Hugging
/// Face's tokenizers cut from the left: the special tokens are added to what is kept).
fn truncated(
	tokenizer: &Tokenizer,
	prompts: Vec<Prompt>,
	k: i64,
	max: usize,
) -> Result<Vec<Prompt>, ApiError> {
	let keep = truncation(k, max)?;
	prompts
		.into_iter()
		.map(|prompt| {
			let tokens = prompt.tokens(tokenizer, tokenizer.vocab_size())?;
			if tokens.len() <= keep {
				return Ok(prompt);
			}
			let bos = match (&prompt, tokens.first()) {
				(Prompt::Text(_), Some(&first)) if tokenizer.add_bos => {
					tokenizer.bos.filter(|&bos| bos == first)
				}
				_ => None,
			};
			let rest = keep - usize::from(bos.is_some());
			let last = &tokens[tokens.len() - rest..];
			Ok(Prompt::Tokens(bos.into_iter().chain(last.iter().copied()).collect()))
		})
		.collect()
}

/// How many tokens `truncate_prompt_tokens` (`k`) keeps of a model that takes `max`: -1 for
/// `max`, else 1 to `max`.
fn truncation(k: i64, max: usize) -> Result<usize, ApiError> {
	match k {
		-1 => Ok(max),
		k if k >= 1 && k as u64 <= max as u64 => Ok(k as usize),
		k => Err(ApiError::bad_request(format!(
			"truncate_prompt_tokens: {k} is neither -1 nor 1 to the model's {max} tokens"
		))),
	}
}

/// `prompts` at `endpoint` as the request asks for them: a completion's texts without the
/// special tokens the tokenizer adds (vLLM's `add_special_tokens: false`), then each cut to
/// its last tokens (`truncate_prompt_tokens`, `k` of the model's `max`; see [`truncated`]).
fn prompts_as_asked(
	tokenizer: &Tokenizer,
	(endpoint, prompts): (Endpoint, Vec<Prompt>),
	(add_special_tokens, truncate): (Option<bool>, Option<i64>),
	max: usize,
) -> Result<Vec<Prompt>, ApiError> {
	let prompts = match (endpoint, add_special_tokens) {
		(Endpoint::Completions, Some(false)) => without_special_tokens(tokenizer, prompts)?,
		_ => prompts,
	};
	match truncate {
		None => Ok(prompts),
		Some(k) => truncated(tokenizer, prompts, k, max),
	}
}

/// `prompts` with no special token added to a text's (vLLM's `add_special_tokens: false`): a
/// text as the tokenizer spells it without its beginning of sequence.
fn without_special_tokens(
	tokenizer: &Tokenizer,
	prompts: Vec<Prompt>,
) -> Result<Vec<Prompt>, ApiError> {
	prompts
		.into_iter()
		.map(|prompt| match prompt {
			Prompt::Text(text) => Ok(Prompt::Tokens(tokenizer.encode_continuation(&text)?)),
			tokens => Ok(tokens),
		})
		.collect()
}

/// The most words `bad_words` may give.
const MAX_BAD_WORDS: usize = 300;

/// vLLM's `bad_words` as token sequences: each word as the tokenizer spells it alone (without
/// its leading spaces), and after a space when that spells it in as many tokens, the first
/// another (a word-start token), as vLLM's `SamplingParams` spells them.
fn bad_words(tokenizer: &Tokenizer, words: &[String]) -> Result<Vec<Vec<u32>>, ApiError> {
	if words.len() > MAX_BAD_WORDS {
		return Err(ApiError::bad_request(format!("bad_words: at most {MAX_BAD_WORDS} words")));
	}
	let mut sequences = Vec::with_capacity(2 * words.len());
	for word in words {
		let alone = tokenizer.encode_continuation(word.trim_start())?;
		if alone.is_empty() {
			return Err(ApiError::bad_request(format!("bad_words: {word:?} has no tokens")));
		}
		let spaced = tokenizer.encode_continuation(&format!(" {}", word.trim_start()))?;
		let word_start = spaced.len() == alone.len() && spaced.first() != alone.first();
		sequences.push(alone);
		if word_start {
			sequences.push(spaced);
		}
	}
	Ok(sequences)
}

/// Serves `prompts` (one, rendered, for chat) with `body`'s options on `adapter`: the whole
/// answer, or a stream of server-sent events when `stream` is asked for.
/// A chat's tool calls, when asked for, are held to their grammar and answered as calls.
async fn serve(
	state: Arc<ApiState>,
	endpoint: Endpoint,
	(prompts, calling, grounding, last): (
		Vec<Prompt>,
		Option<Arc<ToolCalling>>,
		Option<Grounding>,
		Option<String>,
	),
	served: Served,
	body: Body,
) -> Result<Answer, ApiError> {
	let (model, adapter) = (served.name.clone(), served.adapter.clone());
	refuse_unserved(endpoint, &body)?;
	let attribution = match (&body.attribution, &grounding) {
		(None, _) => None,
		(Some(_), None) => return Err(ApiError::bad_request(NOTHING_TO_ATTRIBUTE)),
		(Some(_), Some(grounding)) if grounding.prompt.is_empty() => {
			let refusals = grounding.prompt.refusals();
			return Err(ApiError::bad_request(format!("{NOTHING_TO_ATTRIBUTE}{refusals}")));
		}
		(Some(asked), Some(grounding)) => {
			Some(Ablations::new(asked.method()?, grounding.prompt.len())?)
		}
	};
	let vocab_size = state.tokenizer.vocab_size();
	if let Some(ids) = &body.stop_token_ids {
		check_token_ids("stop_token_ids", ids, vocab_size)?;
	}
	if body.cache_salt.as_deref() == Some("") {
		return Err(ApiError::bad_request("cache_salt: an empty salt (give one, or none)"));
	}
	match &body.allowed_token_ids {
		Some(ids) if ids.is_empty() => {
			return Err(ApiError::bad_request("allowed_token_ids: an empty list allows nothing"))
		}
		Some(ids) => check_token_ids("allowed_token_ids", ids, vocab_size)?,
		None => {}
	}
	if body.truncate_prompt_tokens.is_some() && grounding.is_some() {
		return Err(ApiError::bad_request(
			"truncate_prompt_tokens: not with documents, retrieval, a registered prompt or \
			 attribution (the prompt's sources would be cut)",
		));
	}
	let prompts = prompts_as_asked(
		&state.tokenizer,
		(endpoint, prompts),
		(body.add_special_tokens, body.truncate_prompt_tokens),
		state.engine.max_sequence(),
	)?;
	let logprobs = logprobs_asked(endpoint, &body)?;
	let prompt_logprobs = prompt_logprobs_asked(&body)?;
	let bias = logit_bias(body.logit_bias.as_ref(), vocab_size)?;
	let bad = bad_words(&state.tokenizer, body.bad_words.as_deref().unwrap_or_default())?;
	let limited = body.max_tokens.or(body.max_completion_tokens).is_some();
	let default_max_tokens = match (endpoint, prompts.as_slice()) {
		// A chat's answer may take the rest of the context (at least one token: a prompt that
		// fills it is refused as too long).
		(Endpoint::Chat, [prompt]) if !limited => {
			let prompt = prompt.tokens(&state.tokenizer, state.tokenizer.vocab_size())?.len();
			state.engine.max_sequence().saturating_sub(prompt).max(1)
		}
		_ => DEFAULT_MAX_TOKENS,
	};
	// The request's grammar is compiled here (a regular expression's automaton can take
	// milliseconds), unless an earlier request's is kept: as a blocking section.
	let requests = blocking(|| {
		let format = || output_format(&body, calling.as_deref(), &state.grammars);
		let lists = (bias, bad);
		generation_requests(endpoint, &prompts, &body, logprobs, lists, default_max_tokens, format)
	})?;
	if requests.len() > state.engine.max_waiting() {
		return Err(ApiError::bad_request(format!(
			"{} prompts of {} choices are {} requests, more than this worker queues at once \
			 ({}): send fewer",
			prompts.len(),
			requests.len() / prompts.len().max(1),
			requests.len(),
			state.engine.max_waiting()
		)));
	}
	let n = requests.len() / prompts.len().max(1);
	if let Some(ablations) = &attribution {
		// (With an adapter, one more each: the answer scored without it.)
		let each = ablations.masks().len() + usize::from(adapter.is_some());
		let scoring = requests.len() * each;
		if scoring > state.engine.max_waiting() {
			return Err(ApiError::bad_request(format!(
				"attribution: {} choices of {each} scoring requests each are {scoring} scoring \
				 requests, more than this worker queues at once ({}): ask for fewer",
				requests.len(),
				state.engine.max_waiting()
			)));
		}
	}
	// What `echo` puts first: a completion's prompt; a chat's last message, if it is the
	// assistant's (vLLM's: a message continued is answered whole).
	let echo = match (body.echo == Some(true), endpoint) {
		(false, _) => None,
		(true, Endpoint::Completions) => Some(echoes(&state.tokenizer, &prompts)?),
		(true, Endpoint::Chat) => Some(vec![last.unwrap_or_default()]),
	};
	if body.stream == Some(true) {
		let include_usage = body.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
		let (id, created, logprobs) = (endpoint.answer_id(), now(), logprobs.is_some());
		let head = ChunkHead { id, created, model, endpoint, n, include_usage, logprobs, calling };
		// What the first chunk says: the adapter and prompt registered on chain, the records
		// retrieved.
		let mut first_fields = served.fields();
		first_fields.extend(grounding.as_ref().map(Grounding::fields).unwrap_or_default());
		let attributing = match (attribution, grounding) {
			(Some(ablations), Some(grounding)) => {
				Some(Attributing { state: state.clone(), ablations, grounding, served })
			}
			_ => None,
		};
		let streamed = (head, echo, first_fields, attributing);
		return stream(&state, requests, adapter, streamed).await;
	}
	let generations = futures::future::try_join_all(
		requests.into_iter().map(|request| state.engine.generate(request, adapter.clone())),
	)
	.await?;
	let attributions = match (&attribution, &grounding) {
		(Some(ablations), Some(grounding)) => {
			attribute(&state, ablations, grounding, &generations, &served).await?
		}
		_ => Vec::new(),
	};
	let echoed = echo.unwrap_or_default();
	let mut choices = Vec::with_capacity(generations.len());
	for (i, g) in generations.iter().enumerate() {
		let echoed = echoed.get(i / n).map_or("", String::as_str);
		let logprobs = match logprobs {
			Some(k) => {
				let at = (echoed.chars().count(), body.echo == Some(true));
				endpoint.logprobs(&state.tokenizer, g, at, k)?
			}
			None => Value::Null,
		};
		let text = format!("{echoed}{}", g.text);
		let mut choice = endpoint.choice(i, &text, logprobs, g.finish_reason);
		if let Some(calling) = &calling {
			if let Some(calls) = calling.calls(&g.text) {
				let calls: Vec<Value> = calls.iter().map(ToolCall::to_json).collect();
				let content = match (calling.content(&g.text), echoed) {
					(content, "") => content,
					(Value::String(text), echoed) => json!(format!("{echoed}{text}")),
					(_, echoed) => json!(echoed),
				};
				choice["message"] =
					json!({"role": "assistant", "content": content, "tool_calls": calls});
				// A named tool's call was forced: the output's own reason (as OpenAI's); a list
				// of calls is whole here.
				if !calling.named() {
					choice["finish_reason"] = json!("tool_calls");
				}
			}
		}
		if let (Endpoint::Completions, Some(k)) = (endpoint, prompt_logprobs) {
			choice["prompt_logprobs"] = prompt_logprobs_of(&state.tokenizer, g, k)?;
		}
		if let Some(attribution) = attributions.get(i) {
			choice["attribution"] = attribution.clone();
		}
		choices.push(choice);
	}
	let mut answer = json!({
		"id": endpoint.answer_id(),
		"object": endpoint.object(false),
		"created": now(),
		"model": model,
		"choices": choices,
		"usage": usage_of(generations.iter().enumerate(), n),
	});
	if let Some(answer) = answer.as_object_mut() {
		answer.extend(served.fields());
		answer.extend(grounding.as_ref().map(Grounding::fields).unwrap_or_default());
	}
	// vLLM puts a chat's (one prompt's) at the top.
	if let (Endpoint::Chat, Some(k), Some(g)) = (endpoint, prompt_logprobs, generations.first()) {
		answer["prompt_logprobs"] = prompt_logprobs_of(&state.tokenizer, g, k)?;
	}
	Ok(Answer::Whole(answer))
}

/// Why a chat cannot be attributed.
const NOTHING_TO_ATTRIBUTE: &str = "attribution: needs documents, answers of tools or a \
	registered prompt to attribute to (none given, none retrieved, no tool messages)";

/// Each choice's `attribution`: its tokens scored under every ablation of the grounding's
/// prompt (all choices' at once, with the same adapter), then the registered prompt's, each
/// document's and each tool's answer's score; with an adapter, also under the whole prompt
/// without it: the adapter's score is how much more likely the answer is with it.
async fn attribute(
	state: &ApiState,
	ablations: &Ablations,
	grounding: &Grounding,
	generations: &[Generation],
	served: &Served,
) -> Result<Vec<Value>, ApiError> {
	let adapter = &served.adapter;
	// Each choice's ablations, served with the adapter; with one, the whole prompt again
	// without it (the adapter's own contribution).
	let requests = generations.iter().flat_map(|g| {
		let mut requests = ablations.requests(&grounding.prompt, &g.tokens);
		for request in &mut requests {
			request.cache_salt = grounding.cache_salt.clone();
		}
		let without = adapter.as_ref().and_then(|_| requests.first().cloned());
		requests.into_iter().map(|r| (r, adapter.clone())).chain(without.map(|r| (r, None)))
	});
	let requests = requests.map(|(request, adapter)| state.engine.generate(request, adapter));
	let scored = futures::future::try_join_all(requests).await?;
	let per_choice = ablations.masks().len() + usize::from(adapter.is_some());
	generations
		.iter()
		.zip(scored.chunks(per_choice))
		.map(|(g, scored)| {
			let mut logprobs = scored
				.iter()
				.map(|s| answer_logprob(s, g.tokens.len()))
				.collect::<Result<Vec<_>, _>>()?;
			let without = adapter.as_ref().and_then(|_| logprobs.pop());
			let scores = ablations.scores(&logprobs)?;
			let method = ablations.method();
			// The sources' scores in the prompt's order: the registered prompt's, the
			// documents', the tools' answers'.
			let mut scores = scores.iter();
			let instructions = grounding.prompt.instructions().then(|| scores.next()).flatten();
			let documents: Vec<Value> = grounding
				.sources
				.iter()
				.zip(scores.by_ref())
				.enumerate()
				.map(
					|(index, (source, score))| json!({"index": index, "id": source.id, "score": score}),
				)
				.collect();
			let tools: Vec<Value> = grounding
				.prompt
				.tool_answers()
				.iter()
				.zip(scores)
				.map(|(answer, score)| {
					json!({
						"message": answer.message,
						"tool_call_id": answer.tool_call_id,
						"name": answer.name,
						"score": score,
					})
				})
				.collect();
			let mut attribution = json!({
				"method": method.name(),
				"answer_logprob": logprobs[0],
				"scores": documents,
				"tools": tools,
			});
			if let Some(why) = grounding.prompt.tool_answers_refused() {
				attribution["tools_not_attributed"] = json!(why);
			}
			if let (Some(_), Some(why)) =
				(&grounding.registered, grounding.prompt.instructions_refused())
			{
				attribution["prompt_not_attributed"] = json!(why);
			}
			if let (Some(registered), Some(score)) = (&grounding.registered, instructions) {
				attribution["prompt"] = json!({
					"id": registered.id,
					"version": registered.version,
					"owner": registered.owner,
					"score": score,
				});
			}
			if let Method::ContextCite { ablations, seed, penalty } = method {
				attribution["ablations"] = json!(ablations);
				attribution["seed"] = json!(seed);
				attribution["penalty"] = json!(penalty);
			}
			if let (Some(name), Some(without)) = (adapter, without) {
				attribution["adapter"] = json!({
					"name": name,
					"score": logprobs[0] - without,
					"answer_logprob_without": without,
				});
				if let Some(registered) = &served.registered {
					attribution["adapter"]["id"] = json!(registered.id);
					attribution["adapter"]["owner"] = json!(registered.owner);
				}
			}
			Ok(attribution)
		})
		.collect()
}

/// How each choice of a streamed chat is to be attributed to its sources when it ends.
struct Attributing {
	state: Arc<ApiState>,
	/// The ablations to score each choice under.
	ablations: Ablations,
	grounding: Grounding,
	/// The model served (the adapter's name, and its record on chain if it is registered there).
	served: Served,
}

/// What every chunk of one streamed answer repeats.
struct ChunkHead {
	id: String,
	created: u64,
	model: String,
	endpoint: Endpoint,
	/// Choices per prompt.
	n: usize,
	/// Whether a last chunk has the usage (and every other `"usage": null`).
	include_usage: bool,
	/// Whether chunks carry their tokens' log-probabilities.
	logprobs: bool,
	/// A chat's tool calls, when its output is them.
	calling: Option<Arc<ToolCalling>>,
}

impl ChunkHead {
	/// A chunk with `choices` (and `usage`: `null` on every chunk but the last when the client
	/// asked for it, absent otherwise).
	fn chunk(&self, choices: Vec<Value>, usage: Option<Value>) -> Sent {
		Sent::Chunk(self.chunk_json(choices, usage))
	}

	/// [`ChunkHead::chunk`]'s JSON.
	fn chunk_json(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
		let mut chunk = json!({
			"id": self.id,
			"object": self.endpoint.object(true),
			"created": self.created,
			"model": self.model,
			"choices": choices,
		});
		if let Some(usage) = usage {
			chunk["usage"] = usage;
		}
		chunk
	}
}

/// One choice's events, tagged with its index.
type ChoiceEvents = BoxStream<'static, (usize, Option<Result<StreamEvent, Error>>)>;

/// The events of `stream` (choice `index`), after `first` if one was read already, up to its
/// last ([`StreamEvent::Done`] or an error), or `None` if it closes before that (the engine
/// stopped).
fn choice_events(index: usize, first: Option<StreamEvent>, stream: EventStream) -> ChoiceEvents {
	let open = !matches!(first, Some(StreamEvent::Done(_)));
	let rest = futures::stream::unfold(open.then_some(stream), |stream| async move {
		let mut stream = stream?;
		match stream.next().await {
			Some(Ok(event @ StreamEvent::Text(..))) => Some((Some(Ok(event)), Some(stream))),
			Some(last) => Some((Some(last), None)),
			None => Some((None, None)),
		}
	});
	futures::stream::iter(first.map(|event| Some(Ok(event))))
		.chain(rest)
		.map(move |e| (index, e))
		.boxed()
}

/// Answers with server-sent events: each choice's text as it is generated, a chunk with its
/// finish reason when it ends, the usage when asked for, then `[DONE]`. The engine has taken
/// every choice (or refused one, which is answered with an error status) before the events
/// begin; the events begin before the first token (a queued request is not held up by a
/// proxy's read timeout: keep-alive comments flow meanwhile).
async fn stream(
	state: &ApiState,
	requests: Vec<GenerationRequest>,
	adapter: Option<String>,
	(head, echo, first_fields, attributing): (
		ChunkHead,
		Option<Vec<String>>,
		serde_json::Map<String, Value>,
		Option<Attributing>,
	),
) -> Result<Answer, ApiError> {
	let tokenizer = state.tokenizer.clone();
	let mut choices = Vec::with_capacity(requests.len());
	let mut started = Vec::with_capacity(requests.len());
	for request in requests {
		started.push(state.engine.generate_stream(request, adapter.clone())?);
	}
	for (index, mut events) in started.into_iter().enumerate() {
		match events.next().await {
			Some(Ok(StreamEvent::Queued)) => choices.push(choice_events(index, None, events)),
			Some(Ok(first)) => choices.push(choice_events(index, Some(first), events)),
			Some(Err(e)) => return Err(e.into()),
			None => return Err(Error::Stopped("before answering".into()).into()),
		}
	}
	let open = choices.len();
	let mut start = Vec::new();
	// A chat's choices begin with the role (and what it echoes); echoed completions with
	// their prompt (and their tokens' offsets after it).
	let firsts: Vec<String> = match (head.endpoint, echo) {
		(Endpoint::Chat, echo) => echo.unwrap_or_else(|| vec![String::new()]),
		(Endpoint::Completions, Some(echoed)) => echoed,
		(Endpoint::Completions, None) => Vec::new(),
	};
	let mut offsets = vec![0; open];
	for (index, offset) in offsets.iter_mut().enumerate() {
		let text = match head.endpoint {
			Endpoint::Chat => firsts.first(),
			Endpoint::Completions => firsts.get(index / head.n.max(1)),
		};
		if let Some(text) = text {
			let usage = head.include_usage.then_some(Value::Null);
			let mut chunk =
				head.chunk_json(vec![head.endpoint.delta(index, Piece::Start(text))], usage);
			// The adapter and prompt registered on chain and the records retrieved, with the
			// first chunk.
			if let (true, Some(chunk)) = (start.is_empty(), chunk.as_object_mut()) {
				chunk.extend(first_fields.clone());
			}
			start.push(Sent::Chunk(chunk));
			*offset = text.chars().count();
		}
	}
	// A completion not echoed has no first chunk of its own: what it says comes with one of
	// empty text (choice 0's).
	if start.is_empty() && !first_fields.is_empty() {
		let usage = head.include_usage.then_some(Value::Null);
		let mut chunk = head.chunk_json(vec![head.endpoint.delta(0, Piece::Start(""))], usage);
		if let Some(chunk) = chunk.as_object_mut() {
			chunk.extend(first_fields.clone());
		}
		start.push(Sent::Chunk(chunk));
	}

	let calls = match &head.calling {
		Some(calling) => (0..open).map(|_| calling.stream()).collect(),
		None => Vec::new(),
	};
	let answer = Streamer {
		events: futures::stream::select_all(choices),
		calls,
		head,
		tokenizer,
		attributing: attributing.map(Arc::new),
		scoring: FuturesUnordered::new(),
		start,
		offsets,
		finished: Vec::new(),
		open,
		running: open,
		ended: false,
	};
	let sent = futures::stream::unfold(answer, |mut answer| async move {
		let sent = answer.next_events().await?;
		Some((futures::stream::iter(sent), answer))
	})
	.flatten();
	Ok(Answer::Streamed(sent.boxed()))
}

/// A generating endpoint's answer: whole, or the chunks of its stream.
enum Answer {
	/// OpenAI's answer object.
	Whole(Value),
	/// What the stream sends, in order.
	Streamed(BoxStream<'static, Sent>),
}

/// What a streamed answer sends: a chunk's object (or an error's), or the end.
#[derive(Debug)]
enum Sent {
	/// A chunk's object, or an error's (`{"error": ...}`).
	Chunk(Value),
	/// `[DONE]`.
	Done,
}

impl IntoResponse for Answer {
	fn into_response(self) -> Response {
		match self {
			Answer::Whole(answer) => Json(answer).into_response(),
			Answer::Streamed(sent) => sse(sent.map(|sent| match sent {
				Sent::Chunk(chunk) => Event::default().data(chunk.to_string()),
				Sent::Done => Event::default().data("[DONE]"),
			})),
		}
	}
}

/// `events` as a server-sent event stream, kept alive while the model is silent.
fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Response {
	let events = events.map(Ok::<_, Infallible>);
	Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// A streamed answer in progress.
struct Streamer {
	events: SelectAll<ChoiceEvents>,
	/// Each choice's tool calls, when its output is them.
	calls: Vec<CallStream>,
	head: ChunkHead,
	/// The tokens' text in log-probabilities.
	tokenizer: Arc<Tokenizer>,
	/// How to attribute each choice to its sources once it ends (when asked for).
	attributing: Option<Arc<Attributing>>,
	/// The attributions being scored, of choices whose text has ended (each choice's
	/// generation, ready to finish with its attribution).
	scoring: FuturesUnordered<Scoring>,
	/// Events to send before any choice's (a chat's role chunks).
	start: Vec<Sent>,
	/// Where each choice's next token begins in its text (in characters).
	offsets: Vec<usize>,
	/// The choices finished, by index.
	finished: Vec<(usize, Generation)>,
	/// Choices not finished (their last chunk not sent).
	open: usize,
	/// Choices still generating.
	running: usize,
	ended: bool,
}

/// A streamed choice's attribution being scored: its index, its generation, the attribution.
type Scoring = BoxFuture<'static, (usize, Generation, Result<Vec<Value>, ApiError>)>;

impl Streamer {
	/// The events that the next thing to happen brings; `None` once the answer has ended
	/// (which drops the choices' streams: any still running are cancelled).
	async fn next_events(&mut self) -> Option<Vec<Sent>> {
		if self.ended {
			return None;
		}
		if !self.start.is_empty() {
			return Some(std::mem::take(&mut self.start));
		}
		let usage = self.head.include_usage.then_some(Value::Null);
		let endpoint = self.head.endpoint;
		// The choices' events, and the attributions of those that have ended as they are
		// scored (in the meantime the others go on).
		let next = if self.scoring.is_empty() {
			self.events.next().await
		} else if self.running == 0 {
			match self.scoring.next().await {
				Some((index, generation, scored)) => {
					return Some(self.scored(index, generation, scored))
				}
				None => None,
			}
		} else {
			match futures::future::select(self.events.next(), self.scoring.next()).await {
				Either::Left((next, _)) => next,
				Either::Right((Some((index, generation, scored)), _)) => {
					return Some(self.scored(index, generation, scored))
				}
				Either::Right((None, _)) => return Some(Vec::new()),
			}
		};
		let error = match next {
			Some((_, Some(Ok(StreamEvent::Queued)))) => return Some(Vec::new()),
			Some((index, Some(Ok(StreamEvent::Text(text, scores))))) => {
				let scored = self.head.logprobs && !scores.tokens.is_empty();
				let calls = self.calls.get_mut(index).map(|calls| calls.push_text(&text));
				let nothing = match &calls {
					Some((content, calls)) => content.is_empty() && calls.is_empty(),
					None => text.is_empty(),
				};
				if nothing && !scored {
					return Some(Vec::new());
				}
				let mut choice = match &calls {
					Some((content, calls)) => endpoint.delta(index, Piece::Calls(content, calls)),
					None => endpoint.delta(index, Piece::Text(&text)),
				};
				if scored {
					match self.logprobs(index, &scores) {
						Ok(logprobs) => choice["logprobs"] = logprobs,
						Err(e) => return Some(self.fail(e.into())),
					}
				}
				return Some(vec![self.head.chunk(vec![choice], usage)]);
			}
			Some((index, Some(Ok(StreamEvent::Done(generation))))) => {
				self.running -= 1;
				let mut events = Vec::new();
				// "auto"'s text held back in case it began a call.
				let held = self.calls.get_mut(index).map(CallStream::finish).unwrap_or_default();
				if !held.is_empty() {
					let choice = endpoint.delta(index, Piece::Calls(&held, &[]));
					events.push(self.head.chunk(vec![choice], usage));
				}
				// Its attribution, scored now that it is whole, while the others go on.
				match self.attributing.clone() {
					Some(attributing) => self.scoring.push(
						async move {
							let Attributing { state, ablations, grounding, served } = &*attributing;
							let generations = std::slice::from_ref(&generation);
							let scored =
								attribute(state, ablations, grounding, generations, served).await;
							(index, generation, scored)
						}
						.boxed(),
					),
					None => events.extend(self.finish_choice(index, generation, None)),
				}
				return Some(events);
			}
			Some((_, Some(Err(e)))) => ApiError::from(e),
			Some((_, None)) | None => ApiError::from(Error::Stopped("mid-answer".into())),
		};
		Some(self.fail(error))
	}

	/// The events of choice `index`'s end once its attribution is `scored`.
	fn scored(
		&mut self,
		index: usize,
		generation: Generation,
		scored: Result<Vec<Value>, ApiError>,
	) -> Vec<Sent> {
		match scored {
			Ok(mut scored) => {
				let attribution = (!scored.is_empty()).then(|| scored.swap_remove(0));
				self.finish_choice(index, generation, attribution)
			}
			Err(e) => self.fail(e),
		}
	}

	/// The last chunk of choice `index` (with its `attribution`, if any), and the answer's
	/// end (usage, `[DONE]`) after the last choice's.
	fn finish_choice(
		&mut self,
		index: usize,
		generation: Generation,
		attribution: Option<Value>,
	) -> Vec<Sent> {
		let usage = self.head.include_usage.then_some(Value::Null);
		let mut choice = self.head.endpoint.delta(index, Piece::End(generation.finish_reason));
		if let Some(attribution) = attribution {
			choice["attribution"] = attribution;
		}
		// As a whole answer's: "tool_calls" for a list of calls that closed.
		let whole = self.calls.get(index).is_some_and(CallStream::whole);
		let chosen = self.head.calling.as_ref().is_some_and(|c| !c.named());
		if whole && chosen {
			choice["finish_reason"] = json!("tool_calls");
		}
		let mut events = vec![self.head.chunk(vec![choice], usage)];
		self.finished.push((index, generation));
		self.open -= 1;
		if self.open == 0 {
			if self.head.include_usage {
				let finished = self.finished.iter().map(|(i, g)| (*i, g));
				let usage = json!(usage_of(finished, self.head.n));
				events.push(self.head.chunk(Vec::new(), Some(usage)));
			}
			events.push(Sent::Done);
			self.ended = true;
		}
		events
	}

	/// Choice `index`'s `logprobs` for its new tokens `scores`.
	fn logprobs(&mut self, index: usize, scores: &TokenScores) -> Result<Value, Error> {
		let entries = TokenLogprob::all(&self.tokenizer, scores)?;
		let offset = self.offsets.get(index).copied().unwrap_or(0);
		let offsets = TokenLogprob::offsets(&entries, offset);
		if let Some(next) = self.offsets.get_mut(index) {
			*next += entries.iter().map(|e| e.text.chars().count()).sum::<usize>();
		}
		Ok(self.head.endpoint.logprobs_of(&entries, offsets))
	}

	/// The events that end the answer with `error`, in the body since the status has gone.
	fn fail(&mut self, error: ApiError) -> Vec<Sent> {
		self.ended = true;
		if error.status.is_server_error() {
			tracing::warn!(status = %error.status, error = %error.message, "streamed request failed");
		}
		vec![Sent::Chunk(error.body()), Sent::Done]
	}
}

async fn completions(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<Body>, BodyRejection>,
) -> Result<Response, ApiError> {
	let Lenient(mut body) = body?;
	let prompts = match body.prompt.take() {
		None => return Err(ApiError::bad_request("prompt: missing field `prompt`")),
		Some(prompt) => prompts("prompt", prompt, MAX_PROMPTS)?,
	};
	// Every prompt is checked before any is served (the engine checks against the model's
	// vocabulary too; an id the tokenizer does not know could not be echoed).
	let vocab_size = state.tokenizer.vocab_size();
	for prompt in &prompts {
		if let Prompt::Tokens(ids) = prompt {
			if ids.is_empty() {
				return Err(ApiError::bad_request("prompt: the prompt is empty"));
			}
			check_token_ids("prompt", ids, vocab_size)?;
		}
	}
	// (What is refused anyway is refused before the model is looked up: on chain, say.)
	refuse_unserved(Endpoint::Completions, &body)?;
	let model = state.served(body.model.as_deref()).await?;
	let answer = serve(state, Endpoint::Completions, (prompts, None, None, None), model, body);
	Ok(answer.await?.into_response())
}

async fn chat_completions(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<Body>, BodyRejection>,
) -> Result<Response, ApiError> {
	let Lenient(body) = body?;
	Ok(chat(state, body).await?.into_response())
}

/// OpenAI's Responses API, read as a chat and answered as a response (see
/// [`crate::responses`]): whole, or streamed as the response's events.
async fn responses(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<serde_json::Map<String, Value>>, BodyRejection>,
) -> Result<Response, ApiError> {
	let Lenient(request) = body?;
	let request = responses_api::chat_request(request).map_err(ApiError::bad_request)?;
	request_body::warn_ignored("/v1/responses", &request.ignored);
	let body: Body = serde_path_to_error::deserialize(request.body)
		.map_err(|e| ApiError::bad_request(format!("{e} (in the request read as a chat's)")))?;
	// (The chat's answer names it too, once the stream has begun.)
	let model = body.model.clone().filter(|m| !m.is_empty());
	let head = Head {
		id: responses_api::new_id("resp"),
		created_at: now(),
		model: model.unwrap_or_else(|| state.model_name.clone()),
		repeated: request.repeated,
	};
	match chat(state, body).await? {
		Answer::Whole(answer) => {
			let head = match answer["model"].as_str() {
				Some(served) => Head { model: served.to_string(), ..head },
				None => head,
			};
			Ok(Json(responses_api::response_of(&head, &answer)).into_response())
		}
		Answer::Streamed(sent) => {
			let mut events = ResponseEvents::new(head);
			let start = events.start();
			let rest = sent.flat_map(move |sent| {
				futures::stream::iter(match sent {
					Sent::Chunk(chunk) => events.chunk(&chunk),
					Sent::Done => events.done(),
				})
			});
			let all = futures::stream::iter(start)
				.chain(rest)
				.map(|(kind, event)| Event::default().event(kind).data(event.to_string()));
			Ok(sse(all))
		}
	}
}

/// A chat's answer (to `/v1/chat/completions`, or to `/v1/responses` read as a chat).
async fn chat(state: Arc<ApiState>, mut body: Body) -> Result<Answer, ApiError> {
	let template = state.chat_template()?;
	let messages = body
		.messages
		.take()
		.ok_or_else(|| ApiError::bad_request("messages: missing field `messages`"))?;
	let kept;
	let template = match &body.chat_template_kwargs {
		Some(kwargs) => {
			kept = template.with_kwargs(kwargs)?;
			&kept
		}
		None => template,
	};
	let opening = Opening::of(body.add_generation_prompt, body.continue_final_message)?;
	let tools = Tools::from_request(
		body.tools.as_ref(),
		body.tool_choice.as_ref(),
		body.parallel_tool_calls,
	)
	.map_err(ApiError::bad_request)?;
	// What would be refused later is refused before the model is looked up (on chain, say) and
	// the query embedded.
	refuse_unserved(Endpoint::Chat, &body)?;
	// How the conversation is given to the template (with "auto" tools it may not show, the
	// tools in Hermes' instructions), decided once.
	let showing = tools.showing(template, &messages)?;
	let model = state.served(body.model.as_deref()).await?;
	// A model whose <tool_call> is a special token writes its calls with it: it stays in the
	// text, to be read (as vLLM's parser asks).
	let auto = tools.calling.as_ref().is_some_and(|c| c.auto());
	if auto && state.tokenizer.special_token(CALL_START).is_some() {
		body.skip_special_tokens = Some(false);
	}
	// A prompt registered on chain, its variables filled in: the system message's start.
	let registered = state.registered_prompt(body.prompt.take()).await?;
	let mut sources = body.documents.take();
	let mut retrieved = Vec::new();
	// With attribution, the answers of tools in the conversation are sources too.
	let tool_answers = body.attribution.is_some() && messages.iter().any(|m| m.role == "tool");
	if let Some(retrieval) = body.retrieval.take() {
		// (The answers of tools and a registered prompt are sources only if there is room.)
		let given = sources.as_ref().map_or(0, Vec::len);
		let top_k = retrieval.top_k.unwrap_or(DEFAULT_TOP_K);
		if given + top_k > MAX_SOURCES {
			return Err(ApiError::bad_request(format!(
				"retrieval.top_k: {given} documents given and {top_k} retrieved would be more \
				 than {MAX_SOURCES}"
			)));
		}
		let query = match retrieval.query.clone() {
			Some(query) => query,
			None => messages
				.iter()
				.rev()
				.find(|m| m.role == "user")
				.map(|m| m.content.clone())
				.ok_or_else(|| ApiError::bad_request("retrieval: no query and no user message"))?,
		};
		retrieved = state.retrieve(&query, &retrieval).await?.0;
		if !retrieved.is_empty() {
			sources.get_or_insert_with(Vec::new).extend(retrieved.iter().map(|(record, _)| {
				Source { id: Some(record.id.clone()), title: None, text: record.text.clone() }
			}));
		}
	}
	let sources = match sources {
		None if tool_answers || registered.is_some() => Some(Vec::new()),
		sources => sources,
	};
	let (prompt, grounding) = match sources {
		Some(_) if opening != Opening::Answer => {
			return Err(ApiError::bad_request(
				"add_generation_prompt, continue_final_message: a chat with documents, retrieval, \
				 a registered prompt or attributed tool answers ends with the assistant's turn \
				 opened",
			))
		}
		Some(sources) => {
			let show = |messages: &[Message]| Ok(tools.show(showing, messages));
			let instructions = registered.as_ref().map(|(_, text)| text.as_str());
			let attributed = body.attribution.is_some();
			let spec = Sources { instructions, documents: &sources, attributed };
			let prompt = SourcedPrompt::build(template, &state.tokenizer, &messages, &show, spec)?;
			// The records retrieved, as the documents after those given.
			let given = sources.len().saturating_sub(retrieved.len());
			let retrieved = retrieved
				.iter()
				.enumerate()
				.map(|(i, (record, score))| {
					json!({"index": given + i, "id": record.id, "datanet": record.datanet, "score": score})
				})
				.collect();
			let registered = registered.map(|(version, _)| version);
			let tokens = prompt.all();
			let cache_salt = body.cache_salt.clone();
			let grounding = Grounding { prompt, sources, retrieved, registered, cache_salt };
			(Prompt::Tokens(tokens), Some(grounding))
		}
		None => {
			let (shown, definitions) = tools.show(showing, &messages);
			(Prompt::Text(opening.render(template, &shown, &definitions)?), None)
		}
	};
	// What `echo` repeats: the last message, if the answer is in its role (vLLM's: the
	// assistant's, or the last message's own when no assistant's turn is opened).
	let last = messages
		.last()
		.filter(|m| m.role == "assistant" || opening != Opening::Answer)
		.map(|m| m.content.clone());
	let prepared = (vec![prompt], tools.calling, grounding, last);
	serve(state, Endpoint::Chat, prepared, model, body).await
}

/// How a chat's rendering ends (vLLM's `add_generation_prompt` and `continue_final_message`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
	/// With the assistant's turn opened (the default).
	Answer,
	/// Where the last message ends (its turn closed).
	Closed,
	/// Inside the last message, for the answer to go on with it.
	Continue,
}

impl Opening {
	/// The ending asked for (`add_generation_prompt` true and `continue_final_message` false
	/// when absent); an error for both, as vLLM's.
	fn of(
		add_generation_prompt: Option<bool>,
		continue_final_message: Option<bool>,
	) -> Result<Self, ApiError> {
		match (add_generation_prompt.unwrap_or(true), continue_final_message.unwrap_or(false)) {
			(true, true) => Err(ApiError::bad_request(
				"continue_final_message and add_generation_prompt: not both (continue_final_message \
				 goes on with the last message, add_generation_prompt starts a new one: set \
				 add_generation_prompt to false)",
			)),
			(true, false) => Ok(Self::Answer),
			(false, false) => Ok(Self::Closed),
			(false, true) => Ok(Self::Continue),
		}
	}

	/// `messages` with `tools` rendered in `template`, ending so.
	fn render(
		self,
		template: &ChatTemplate,
		messages: &[Message],
		tools: &[Value],
	) -> Result<String, Error> {
		match self {
			Self::Answer => template.render_with_tools(messages, tools, true),
			Self::Closed => template.render_with_tools(messages, tools, false),
			Self::Continue => template.render_continuing(messages, tools),
		}
	}
}

impl ApiState {
	/// The registered prompt a chat names (`prompt`: `{"id", "version", "variables"}`) and its
	/// text with the variables filled in, or `None` if it names none.
	async fn registered_prompt(
		&self,
		named: Option<Value>,
	) -> Result<Option<(RegisteredPrompt, String)>, ApiError> {
		let named = match named {
			None | Some(Value::Null) => return Ok(None),
			Some(named) => named,
		};
		let named: PromptRef = serde_json::from_value(named).map_err(|e| {
			ApiError::bad_request(format!(
				"prompt: {e} (a chat's prompt is a registered one: {{\"id\", \"version\", \
				 \"variables\"}})"
			))
		})?;
		let registry = self.prompts.as_ref().ok_or(PromptError::NoChain)?;
		let version = registry.version(named.id, named.version).await?;
		let text = fill(&version.text, &named.variables)?;
		Ok(Some((version, text)))
	}

	/// The model's chat template, or why a chat cannot be served.
	fn chat_template(&self) -> Result<&ChatTemplate, ApiError> {
		self.chat_template.as_ref().ok_or_else(|| {
			ApiError::bad_request("this model has no chat template: use /v1/completions")
		})
	}
}

/// `/tokenize`'s body (vLLM's): a prompt, or a conversation rendered in the chat template.
#[derive(Debug, Deserialize)]
struct TokenizeBody {
	model: Option<String>,
	/// A text; or, with `messages`, a registered prompt as a chat names it (`{"id", "version",
	/// "variables"}`).
	prompt: Option<Value>,
	messages: Option<Vec<Message>>,
	/// With `messages`: end with the assistant's turn opened (true by default).
	add_generation_prompt: Option<bool>,
	/// With `messages`: leave the last message open, as a chat with it leaves it.
	continue_final_message: Option<bool>,
	/// With `messages`: more variables for the chat template, as a chat's.
	chat_template_kwargs: Option<serde_json::Map<String, Value>>,
	/// A text prompt's special tokens, as a completion's `add_special_tokens` (true when
	/// absent); with `messages`, only false (the template writes them).
	add_special_tokens: Option<bool>,
	/// Not served: a template of the request's own (refused, as on chat).
	chat_template: Option<Value>,
	/// With `messages`: the tools given to the template (OpenAI's definitions).
	tools: Option<Vec<Value>>,
	/// With `tools`: how they are to be called, as a chat's (`"auto"` when absent): the tools
	/// are shown as the chat shows them ([`Tools::messages`]).
	tool_choice: Option<Value>,
	/// With `messages`: source documents, placed as a chat with them places them.
	documents: Option<Vec<Source>>,
}

/// The token ids serving would give a prompt (or a conversation in the chat template), their
/// count and the most tokens a request may reach.
async fn tokenize(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<TokenizeBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	state.served(body.model.as_deref()).await?;
	let opening = Opening::of(body.add_generation_prompt, body.continue_final_message)?;
	let chat_only = [
		("add_generation_prompt", body.add_generation_prompt.is_some()),
		("continue_final_message", body.continue_final_message.is_some()),
		("chat_template_kwargs", body.chat_template_kwargs.is_some()),
	];
	if let (None, Some((field, _))) = (&body.messages, chat_only.iter().find(|(_, given)| *given)) {
		return Err(ApiError::bad_request(format!("{field}: only with messages")));
	}
	if body.chat_template.as_ref().is_some_and(|t| !t.is_null()) {
		return Err(ApiError::bad_request(
			"chat_template: not served by this worker (the model's own is used)",
		));
	}
	if body.messages.is_some() && body.add_special_tokens == Some(true) {
		return Err(ApiError::bad_request(
			"add_special_tokens: true only with a prompt (the chat template writes them)",
		));
	}
	let with_kwargs = match &body.chat_template_kwargs {
		Some(kwargs) => Some(state.chat_template()?.with_kwargs(kwargs)?),
		None => None,
	};
	let template = || match &with_kwargs {
		Some(template) => Ok(template),
		None => state.chat_template(),
	};
	let tools = body.tools.map(Value::Array);
	let tools = Tools::from_request(tools.as_ref(), body.tool_choice.as_ref(), None)
		.map_err(ApiError::bad_request)?;
	// The conversation as a chat with these tools shows it to the template (decided once, on
	// the request's messages, as a chat decides).
	let showing = match &body.messages {
		Some(messages) => Some(tools.showing(template()?, messages)?),
		None => None,
	};
	let shown = |messages: &[Message]| tools.show(showing.unwrap_or(Showing::AsGiven), messages);
	let (text, registered) = match (body.prompt, &body.messages) {
		(Some(Value::String(text)), None) => (Some(text), None),
		(named, Some(_)) => (None, state.registered_prompt(named).await?),
		(Some(_), None) => {
			return Err(ApiError::bad_request(
				"prompt: a text, or with `messages` a registered prompt",
			))
		}
		(None, None) => (None, None),
	};
	// A registered prompt is placed as a chat places it.
	let documents = match body.documents {
		None if registered.is_some() => Some(Vec::new()),
		documents => documents,
	};
	let tokens = match (text, body.messages, documents) {
		(Some(prompt), None, None) if body.add_special_tokens == Some(false) => {
			state.tokenizer.encode_continuation(&prompt)?
		}
		(Some(prompt), None, None) => state.tokenizer.encode(&prompt)?,
		(None, Some(messages), None) => {
			let (messages, definitions) = shown(&messages);
			state.tokenizer.encode(&opening.render(template()?, &messages, &definitions)?)?
		}
		(None, Some(messages), Some(documents)) if opening == Opening::Answer => {
			let template = template()?;
			let show = |messages: &[Message]| Ok(shown(messages));
			let instructions = registered.as_ref().map(|(_, text)| text.as_str());
			let sources = Sources { instructions, documents: &documents, attributed: false };
			SourcedPrompt::build(template, &state.tokenizer, &messages, &show, sources)?.all()
		}
		(None, Some(_), Some(_)) => {
			return Err(ApiError::bad_request(
				"add_generation_prompt, continue_final_message: a chat with documents or a \
				 registered prompt ends with the assistant's turn opened",
			))
		}
		_ => {
			return Err(ApiError::bad_request(
				"give either `prompt` or `messages` (and `documents`)",
			))
		}
	};
	Ok(Json(json!({
		"count": tokens.len(),
		"max_model_len": state.engine.max_sequence(),
		"tokens": tokens,
	})))
}

/// The most inputs one embeddings request may give (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// `/v1/embeddings`' body (OpenAI's, with vLLM's `truncate_prompt_tokens`).
#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
	model: Option<String>,
	/// A string, a list of strings, a list of token ids, or a list of lists of token ids.
	input: Option<Value>,
	/// `float` (the default) or `base64` (each vector's little-endian `f32` bytes, what
	/// OpenAI's Python client asks for).
	encoding_format: Option<String>,
	/// The vectors' length: only the model's own (it is not a Matryoshka model).
	dimensions: Option<usize>,
	/// Cut each input to its first this many tokens (-1: the model's most); absent, a longer
	/// input is refused.
	truncate_prompt_tokens: Option<i64>,
	/// vLLM's; only 0 is taken (requests are served in arrival order).
	priority: Option<i64>,
}

/// One vector of an embeddings answer.
#[derive(Debug, Serialize)]
struct EmbeddingData {
	object: &'static str,
	index: usize,
	embedding: EmbeddingVector,
}

/// A vector as floats or as base64 of its little-endian bytes.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum EmbeddingVector {
	Float(Vec<f32>),
	Base64(String),
}

/// An embeddings answer (OpenAI's, with vLLM's `id` and `created`).
#[derive(Debug, Serialize)]
struct EmbeddingsAnswer {
	id: String,
	object: &'static str,
	created: u64,
	model: String,
	data: Vec<EmbeddingData>,
	usage: Value,
}

/// Sentence embeddings of the inputs (OpenAI's `/v1/embeddings`).
async fn embeddings(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<EmbeddingsBody>, BodyRejection>,
) -> Result<Json<EmbeddingsAnswer>, ApiError> {
	let Lenient(body) = body?;
	refuse_priority(body.priority)?;
	let (name, service) = state.embedding_model(body.model.as_deref())?;
	let base64 = match body.encoding_format.as_deref() {
		None | Some("float") => false,
		Some("base64") => true,
		Some(other) => {
			return Err(ApiError::bad_request(format!(
				"encoding_format: {other:?} is neither \"float\" nor \"base64\""
			)))
		}
	};
	let dimensions = service.dimensions();
	if body.dimensions.is_some_and(|d| d != dimensions) {
		return Err(ApiError::bad_request(format!(
			"dimensions: {name:?} gives vectors of {dimensions} and cannot shorten them (it is \
			 not a Matryoshka model)"
		)));
	}
	let truncate = embedding_truncation(service, body.truncate_prompt_tokens)?;
	let input = body.input.ok_or_else(|| ApiError::bad_request("input: missing field `input`"))?;
	let inputs =
		embedding_inputs(service, prompts("input", input, MAX_EMBEDDING_INPUTS)?, truncate)?;
	let tokens: usize = inputs.iter().map(Vec::len).sum();
	let vectors = service.embed(inputs).await?;
	let data = vectors
		.into_iter()
		.enumerate()
		.map(|(index, vector)| EmbeddingData {
			object: "embedding",
			index,
			embedding: match base64 {
				false => EmbeddingVector::Float(vector),
				true => EmbeddingVector::Base64(
					BASE64.encode(vector.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
				),
			},
		})
		.collect();
	Ok(Json(EmbeddingsAnswer {
		id: format!("embd-{:024x}", rand::random::<u128>() >> 32),
		object: "list",
		created: now(),
		model: name.to_string(),
		data,
		usage: json!({ "prompt_tokens": tokens, "total_tokens": tokens }),
	}))
}

/// How many tokens of each input an embedding request keeps (vLLM's `truncate_prompt_tokens`:
/// -1 for the model's most; absent, a longer input is refused).
fn embedding_truncation(
	service: &EmbeddingService,
	truncate_prompt_tokens: Option<i64>,
) -> Result<Option<usize>, ApiError> {
	truncate_prompt_tokens.map(|k| truncation(k, service.max_tokens())).transpose()
}

/// The token ids of the embedding model's `inputs`, each cut to `truncate` tokens if given.
fn embedding_inputs(
	service: &EmbeddingService,
	inputs: Vec<Prompt>,
	truncate: Option<usize>,
) -> Result<Vec<Vec<u32>>, ApiError> {
	inputs
		.into_iter()
		.map(|input| match input {
			Prompt::Text(text) => Ok(service.model().tokenize(&text, truncate)?),
			Prompt::Tokens(mut ids) => {
				ids.truncate(truncate.unwrap_or(usize::MAX));
				Ok(ids)
			}
		})
		.collect()
}

/// The embeddings of `texts`, each cut to `truncate` tokens if given, and their tokens in all.
/// Each is checked under its own name (`documents[3]`, say), as the request names it.
async fn embed_texts(
	service: &EmbeddingService,
	texts: Vec<(String, &String)>,
	truncate: Option<usize>,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
	let inputs = texts.iter().map(|(_, t)| Prompt::Text(t.to_string())).collect();
	let inputs = embedding_inputs(service, inputs, truncate)?;
	let tokens = inputs.iter().map(Vec::len).sum();
	Ok((service.embed_named(inputs, |i| texts[i].0.clone()).await?, tokens))
}

/// `texts` named `field[i]` (or `field` alone, for one given as a text).
fn named<'t>(field: &str, texts: &'t [String], one: bool) -> Vec<(String, &'t String)> {
	match one {
		true => texts.iter().map(|t| (field.to_string(), t)).collect(),
		false => texts.iter().enumerate().map(|(i, t)| (format!("{field}[{i}]"), t)).collect(),
	}
}

/// A text, or a list of texts (`/score`'s `text_1` and `text_2`), at most `max`; and whether
/// it was a text alone.
fn texts(field: &str, value: Option<Value>, max: usize) -> Result<(Vec<String>, bool), ApiError> {
	let one = matches!(value, Some(Value::String(_)));
	let texts = match value {
		None | Some(Value::Null) => {
			return Err(ApiError::bad_request(format!("{field}: missing field `{field}`")))
		}
		Some(Value::String(text)) => vec![text],
		Some(Value::Array(items)) => items
			.into_iter()
			.map(|item| match item {
				Value::String(text) => Ok(text),
				other => Err(ApiError::bad_request(format!("{field}: {other} is not a text"))),
			})
			.collect::<Result<_, _>>()?,
		Some(other) => {
			return Err(ApiError::bad_request(format!(
				"{field}: {other} is neither a text nor a list of texts"
			)))
		}
	};
	match texts.len() {
		0 => Err(ApiError::bad_request(format!("{field}: no texts"))),
		n if n > max => Err(ApiError::bad_request(format!("{field}: at most {max} texts"))),
		_ => Ok((texts, one)),
	}
}

/// `/score`'s body (vLLM's): `text_1` and `text_2`, each a text or a list of texts: one
/// `text_1` against each of `text_2`, or lists as long, pair by pair.
#[derive(Debug, Deserialize)]
struct ScoreBody {
	model: Option<String>,
	text_1: Option<Value>,
	text_2: Option<Value>,
	/// Each text cut to its first this many tokens (-1: the model's most); absent, a longer
	/// text is refused.
	truncate_prompt_tokens: Option<i64>,
	/// Not served (refused unless they mean none): see [`refuse_priority`] and
	/// [`refuse_pooling_options`].
	priority: Option<i64>,
	activation: Option<Value>,
	use_activation: Option<Value>,
	softmax: Option<Value>,
}

/// Refuses an embedding model's request's `priority` other than 0: requests are served in
/// arrival order.
fn refuse_priority(priority: Option<i64>) -> Result<(), ApiError> {
	match priority {
		Some(p) if p != 0 => Err(ApiError::bad_request(
			"priority: not served by this worker (requests are served in arrival order)",
		)),
		_ => Ok(()),
	}
}

/// Refuses what a `/score` or `/rerank` request asks for that is not served: an activation
/// over the scores (cross-encoders'; these are cosines), Cohere's `rank_fields` and
/// `max_tokens_per_doc`.
fn refuse_pooling_options(options: [(&str, &Option<Value>); 5]) -> Result<(), ApiError> {
	match options.iter().find(|(_, value)| value.as_ref().is_some_and(|v| !v.is_null())) {
		Some((field, _)) => Err(ApiError::bad_request(format!(
			"{field}: not served by this worker (scores are the cosines of embeddings)"
		))),
		None => Ok(()),
	}
}

/// How alike the texts of each pair are (vLLM's `/score` for an embedding model): the cosine
/// of their embeddings' angle, by pair in order.
async fn score(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<ScoreBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	let none = &None;
	let options = [
		("activation", &body.activation),
		("use_activation", &body.use_activation),
		("softmax", &body.softmax),
		("rank_fields", none),
		("max_tokens_per_doc", none),
	];
	refuse_priority(body.priority)?;
	refuse_pooling_options(options)?;
	let (name, service) = state.embedding_model(body.model.as_deref())?;
	let truncate = embedding_truncation(service, body.truncate_prompt_tokens)?;
	let most = MAX_EMBEDDING_INPUTS;
	let ((first, one_1), (second, one_2)) =
		(texts("text_1", body.text_1, most)?, texts("text_2", body.text_2, most)?);
	if first.len() + second.len() > most {
		return Err(ApiError::bad_request(format!(
			"text_1 and text_2: at most {most} texts together"
		)));
	}
	if first.len() != 1 && first.len() != second.len() {
		return Err(ApiError::bad_request(format!(
			"text_1 and text_2: {} texts against {}: one against any number, or as many as \
			 each other",
			first.len(),
			second.len()
		)));
	}
	let mut all = named("text_1", &first, one_1);
	all.extend(named("text_2", &second, one_2));
	let (vectors, tokens) = embed_texts(service, all, truncate).await?;
	let (left, right) = vectors.split_at(first.len());
	let data: Vec<Value> = right
		.iter()
		.enumerate()
		.map(|(index, b)| {
			let a = &left[if left.len() == 1 { 0 } else { index }];
			json!({"index": index, "object": "score", "score": cosine(a, b)})
		})
		.collect();
	Ok(Json(json!({
		"id": format!("score-{:024x}", rand::random::<u128>() >> 32),
		"object": "list",
		"created": now(),
		"model": name,
		"data": data,
		"usage": { "prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0 },
	})))
}

/// `/rerank`'s body (vLLM's, as Jina's and Cohere's): a `query` and the `documents` (texts,
/// or objects with a `text`) to order by how alike each is to it; the `top_n` most alike (all
/// when absent or 0).
#[derive(Debug, Deserialize)]
struct RerankBody {
	model: Option<String>,
	query: Option<String>,
	documents: Option<Vec<Value>>,
	top_n: Option<usize>,
	/// Cohere's: whether each result carries its document (true when absent, as vLLM's).
	return_documents: Option<bool>,
	truncate_prompt_tokens: Option<i64>,
	/// Not served (refused unless they mean none): see [`refuse_priority`] and
	/// [`refuse_pooling_options`].
	priority: Option<i64>,
	activation: Option<Value>,
	use_activation: Option<Value>,
	softmax: Option<Value>,
	rank_fields: Option<Value>,
	max_tokens_per_doc: Option<Value>,
}

/// The documents ordered by how alike each is to the query, most alike first (vLLM's
/// `/rerank` for an embedding model: the cosine of the embeddings' angle as the relevance
/// score; ties keep the documents' order).
async fn rerank(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<RerankBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	let options = [
		("activation", &body.activation),
		("use_activation", &body.use_activation),
		("softmax", &body.softmax),
		("rank_fields", &body.rank_fields),
		("max_tokens_per_doc", &body.max_tokens_per_doc),
	];
	refuse_priority(body.priority)?;
	refuse_pooling_options(options)?;
	let (name, service) = state.embedding_model(body.model.as_deref())?;
	let truncate = embedding_truncation(service, body.truncate_prompt_tokens)?;
	let query = body.query.ok_or_else(|| ApiError::bad_request("query: missing field `query`"))?;
	let documents = body
		.documents
		.ok_or_else(|| ApiError::bad_request("documents: missing field `documents`"))?
		.into_iter()
		.map(|document| match document {
			Value::String(text) => Ok(text),
			Value::Object(mut fields) => match fields.remove("text") {
				Some(Value::String(text)) => Ok(text),
				_ => Err(ApiError::bad_request("documents: an object without a text")),
			},
			other => Err(ApiError::bad_request(format!("documents: {other} is not a text"))),
		})
		.collect::<Result<Vec<_>, _>>()?;
	if documents.is_empty() || documents.len() >= MAX_EMBEDDING_INPUTS {
		return Err(ApiError::bad_request(format!(
			"documents: 1 to {} documents",
			MAX_EMBEDDING_INPUTS - 1
		)));
	}
	let mut texts = vec![("query".to_string(), &query)];
	texts.extend(named("documents", &documents, false));
	let (vectors, tokens) = embed_texts(service, texts, truncate).await?;
	let (query_vector, document_vectors) = vectors.split_at(1);
	let mut scored: Vec<(usize, f64)> =
		document_vectors.iter().map(|v| cosine(&query_vector[0], v)).enumerate().collect();
	scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
	let top_n = match body.top_n {
		None | Some(0) => documents.len(),
		Some(n) => n.min(documents.len()),
	};
	let with_documents = body.return_documents != Some(false);
	let results: Vec<Value> = scored[..top_n]
		.iter()
		.map(|&(index, score)| {
			let mut result = json!({"index": index, "relevance_score": score});
			if with_documents {
				result["document"] = json!({"text": documents[index]});
			}
			result
		})
		.collect();
	Ok(Json(json!({
		"id": format!("rerank-{:024x}", rand::random::<u128>() >> 32),
		"model": name,
		"usage": { "prompt_tokens": tokens, "total_tokens": tokens },
		"results": results,
	})))
}

impl ApiState {
	/// The embedding model that `asked` names (absent or empty: the one served) and its
	/// service, or why there is none (a 404).
	fn embedding_model(&self, asked: Option<&str>) -> Result<(&str, &EmbeddingService), ApiError> {
		let Some((name, service)) = &self.embeddings else {
			return Err(ApiError::model_not_found(
				"this worker serves no embedding model (serve --embedding-model DIR)",
			));
		};
		match asked {
			None | Some("") => Ok((name, service)),
			Some(asked) if asked == name => Ok((name, service)),
			Some(asked) => Err(ApiError::model_not_found(format!(
				"the embedding model {asked:?} does not exist: this worker serves {name:?}"
			))),
		}
	}

	/// The embedding service and the records, or why retrieval is not served.
	fn retrieval(&self) -> Result<(Arc<EmbeddingService>, Arc<RwLock<VectorIndex>>), ApiError> {
		self.record_index().ok_or_else(|| {
			ApiError::bad_request(
				"this worker serves no records to retrieve (serve --embedding-model DIR)",
			)
		})
	}

	/// The records most similar to `query` that `search` asks for, and the query's tokens.
	async fn retrieve(
		&self,
		query: &str,
		search: &RetrievalBody,
	) -> Result<(Vec<(Record, f32)>, usize), ApiError> {
		let (service, records) = self.retrieval()?;
		let top_k = search.top_k.unwrap_or(DEFAULT_TOP_K);
		if !(1..=MAX_TOP_K).contains(&top_k) {
			return Err(ApiError::bad_request(format!("top_k: 1 to {MAX_TOP_K}, not {top_k}")));
		}
		if query.trim().is_empty() {
			return Err(ApiError::bad_request("query: empty"));
		}
		let tokens = service.model().tokenize(query, Some(service.max_tokens()))?;
		let count = tokens.len();
		let vector = service.embed(vec![tokens]).await?.pop().unwrap_or_default();
		let index = records.read().unwrap_or_else(|poisoned| poisoned.into_inner());
		let hits = index.search(&vector, top_k, &search.datanets);
		Ok((hits.into_iter().map(|(r, score)| (r.clone(), score)).collect(), count))
	}
}

/// How many records a search returns when it does not say.
const DEFAULT_TOP_K: usize = 4;

/// The records most similar to a query (`{"query", "top_k", "datanets"}`), most similar first.
async fn retrieve(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<RetrievalBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	let query =
		body.query.clone().ok_or_else(|| ApiError::bad_request("query: missing field `query`"))?;
	let (hits, tokens) = state.retrieve(&query, &body).await?;
	let data: Vec<Value> = hits
		.iter()
		.map(|(r, score)| json!({"id": r.id, "datanet": r.datanet, "text": r.text, "score": score}))
		.collect();
	Ok(Json(json!({
		"object": "list",
		"data": data,
		"usage": {"prompt_tokens": tokens, "total_tokens": tokens},
	})))
}

/// How far the DataNets served are synced from the chain ([`crate::datanet_sync`]).
async fn datanets(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
	let status = state.datanet_sync.as_ref().ok_or_else(|| {
		ApiError::bad_request(
			"this worker follows no DataNets on chain (serve --chain URL --datanet ID)",
		)
	})?;
	Ok(Json(status.to_json()))
}

/// `/v1/records`' body.
#[derive(Debug, Deserialize)]
struct RecordsBody {
	records: Vec<Record>,
}

/// `/v1/records/delete`'s body.
#[derive(Debug, Deserialize)]
struct DeleteRecordsBody {
	ids: Vec<String>,
}

impl ApiState {
	/// Refuses record changes unless they are allowed.
	fn runtime_records_allowed(&self) -> Result<(), ApiError> {
		ApiError::unless_allowed(
			self.runtime_records,
			"runtime_records_disabled",
			"adding and deleting records",
			"--allow-runtime-records",
		)
	}
}

/// Adds records (or replaces those of the same ids), each embedded on its first tokens: all or
/// none. Answers how many were new (`added`) and how many are held (`total`).
async fn add_records(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<RecordsBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	let (service, records) = state.retrieval()?;
	state.runtime_records_allowed()?;
	if body.records.is_empty() || body.records.len() > MAX_EMBEDDING_INPUTS {
		return Err(ApiError::bad_request(format!(
			"records: 1 to {MAX_EMBEDDING_INPUTS} a request, not {}",
			body.records.len()
		)));
	}
	let added = retrieval::add_records(&service, &records, body.records).await?;
	let total = records.read().unwrap_or_else(|poisoned| poisoned.into_inner()).len();
	Ok(Json(json!({ "added": added, "total": total })))
}

/// Deletes the records of the ids given (those not held are counted out).
async fn delete_records(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<DeleteRecordsBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	let (_, records) = state.retrieval()?;
	state.runtime_records_allowed()?;
	let mut index = records.write().unwrap_or_else(|poisoned| poisoned.into_inner());
	let deleted = body.ids.iter().filter(|id| index.remove(id)).count();
	Ok(Json(json!({ "deleted": deleted, "total": index.len() })))
}

/// `/detokenize`'s body (vLLM's).
#[derive(Debug, Deserialize)]
struct DetokenizeBody {
	model: Option<String>,
	tokens: Vec<u32>,
}

/// The text of token ids.
async fn detokenize(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<DetokenizeBody>, BodyRejection>,
) -> Result<Json<Value>, ApiError> {
	let Lenient(body) = body?;
	state.served(body.model.as_deref()).await?;
	check_token_ids("tokens", &body.tokens, state.tokenizer.vocab_size())?;
	Ok(Json(json!({ "prompt": state.tokenizer.decode(&body.tokens)? })))
}

/// `/v1/load_lora_adapter`'s body (vLLM's).
#[derive(Debug, Deserialize)]
struct LoadAdapter {
	lora_name: String,
	lora_path: Option<PathBuf>,
}

impl ApiState {
	/// Refuses runtime adapter changes unless they are allowed.
	fn runtime_adapters_allowed(&self) -> Result<(), ApiError> {
		ApiError::unless_allowed(
			self.runtime_adapters,
			"runtime_adapters_disabled",
			"loading and unloading adapters",
			"--allow-runtime-adapters",
		)
	}
}

/// Loads the adapter in `lora_path` (a PEFT folder on the worker's machine) and serves it as
/// the model `lora_name` from the next request on: built once for the served model first, so
/// a corrupt or mismatched adapter is refused here (422) rather than at its first request.
async fn load_adapter(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<LoadAdapter>, BodyRejection>,
) -> Result<String, ApiError> {
	state.runtime_adapters_allowed()?;
	let Lenient(LoadAdapter { lora_name: name, lora_path }) = body?;
	let dir = lora_path.ok_or_else(|| ApiError::bad_request("lora_path: missing"))?;
	if name.is_empty() || name == state.model_name {
		return Err(ApiError::bad_request(format!("lora_name: {name:?} cannot name an adapter")));
	}
	adapter_registry::unreserved(&name)
		.map_err(|e| ApiError::bad_request(format!("lora_name: {e}")))?;
	if state.read_adapters().contains_key(&name) {
		return Err(ApiError::bad_request(format!(
			"the adapter {name:?} is already loaded (unload it first)"
		)));
	}
	if !dir.join("adapter_config.json").is_file() {
		return Err(ApiError::bad_request(format!(
			"lora_path: {} holds no adapter_config.json",
			dir.display()
		)));
	}
	let checked = state.clone();
	let (check_name, check_dir) = (name.clone(), dir.clone());
	tokio::task::spawn_blocking(move || checked.engine.check_adapter(&check_name, &check_dir))
		.await
		.map_err(|e| Error::Stopped(format!("checking the adapter: {e}")))??;
	let mut adapters = state.write_adapters();
	if adapters.contains_key(&name) {
		return Err(ApiError::bad_request(format!("the adapter {name:?} is already loaded")));
	}
	state.engine.register_adapter(name.clone(), dir.clone())?;
	adapters.insert(name.clone(), dir);
	Ok(format!("Success: LoRA adapter '{name}' added successfully."))
}

/// `/v1/unload_lora_adapter`'s body (vLLM's).
#[derive(Debug, Deserialize)]
struct UnloadAdapter {
	lora_name: String,
}

/// Stops serving the adapter `lora_name` to new requests (those already taken finish with it;
/// its weights leave memory as the caches need room).
async fn unload_adapter(
	State(state): State<Arc<ApiState>>,
	body: Result<Lenient<UnloadAdapter>, BodyRejection>,
) -> Result<String, ApiError> {
	state.runtime_adapters_allowed()?;
	let Lenient(UnloadAdapter { lora_name: name }) = body?;
	adapter_registry::unreserved(&name).map_err(|e| {
		ApiError::bad_request(format!(
			"lora_name: {e}, served while the chain names them (their owners retire them there)"
		))
	})?;
	// The engine is told under the lock, so that its registry changes in the map's order.
	let mut adapters = state.write_adapters();
	if adapters.remove(&name).is_none() {
		return Err(ApiError::model_not_found(format!("no adapter {name:?} is loaded")));
	}
	state.engine.unregister_adapter(name.clone())?;
	Ok(format!("Success: LoRA adapter '{name}' removed successfully."))
}

async fn models(State(state): State<Arc<ApiState>>) -> Json<Value> {
	Json(json!({ "object": "list", "data": model_cards(&state) }))
}

/// One model of [`models`]' list, by its id (OpenAI's `GET /v1/models/{model}`); 404 for one
/// not served.
async fn model(
	State(state): State<Arc<ApiState>>,
	extract::Path(id): extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
	model_cards(&state)
		.into_iter()
		.find(|card| card["id"] == id.as_str())
		.map(Json)
		.ok_or_else(|| ApiError::model_not_found(format!("the model {id:?} is not served")))
}

/// The worker's version (vLLM's `/version`).
async fn version() -> Json<Value> {
	Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// SageMaker's one route (vLLM's `/invocations`): the body is served by the endpoint whose
/// request it is, told by its fields: `messages`, a chat; `prompt`, a completion; `input`,
/// embeddings or a response (see [`asks_a_response`]); `text_1` and `text_2`, scores; `query`
/// and `documents`, a reranking.
async fn invocations(
	state: State<Arc<ApiState>>,
	body: Result<Lenient<serde_json::Map<String, Value>>, BodyRejection>,
) -> Result<Response, ApiError> {
	let Lenient(fields) = body?;
	let has = |name: &str| fields.get(name).is_some_and(|v| !v.is_null());
	let asks = [has("messages"), has("prompt"), has("input"), has("text_1") && has("text_2")];
	let [chat, completion, input, scores] = asks;
	let reranking = has("query") && has("documents");
	let response = input && asks_a_response(&state, &fields);
	let embedding = input && !response;
	// (A completion never has an input: a response's may have OpenAI's `prompt` reference.)
	if response && !chat {
		return responses(state, Ok(Lenient(fields))).await;
	}
	let path = "/invocations";
	let body = Value::Object(fields);
	if chat {
		chat_completions(state, Lenient::from_value(path, body)).await
	} else if completion {
		completions(state, Lenient::from_value(path, body)).await
	} else if embedding {
		Ok(embeddings(state, Lenient::from_value(path, body)).await?.into_response())
	} else if scores {
		Ok(score(state, Lenient::from_value(path, body)).await?.into_response())
	} else if reranking {
		Ok(rerank(state, Lenient::from_value(path, body)).await?.into_response())
	} else {
		Err(ApiError::bad_request(
			"the request is none the worker serves: a chat has messages, a completion a \
			 prompt, embeddings and a response an input, scores text_1 and text_2, a \
			 reranking a query and documents",
		))
	}
}

/// Whether a request with an `input` (`fields`) asks for a response (OpenAI's Responses API)
/// rather than embeddings: it has a field only a response's request has, an item of its input
/// is an object (a message), it names a model other than the embedding model, or the worker
/// serves no embedding model.
fn asks_a_response(state: &ApiState, fields: &serde_json::Map<String, Value>) -> bool {
	const RESPONSES: [&str; 10] = [
		"instructions",
		"max_output_tokens",
		"tools",
		"tool_choice",
		"text",
		"reasoning",
		"store",
		"stream",
		"include",
		"previous_response_id",
	];
	let messages =
		fields["input"].as_array().is_some_and(|items| items.iter().any(Value::is_object));
	let model = fields.get("model").and_then(Value::as_str).filter(|m| !m.is_empty());
	let embedder = state.embeddings.as_ref().map(|(name, _)| name.as_str());
	RESPONSES.iter().any(|name| fields.get(*name).is_some_and(|v| !v.is_null()))
		|| messages
		|| embedder.is_none()
		|| model.is_some_and(|model| Some(model) != embedder)
}

/// OpenAI's model objects of what is served: the base model, the adapters (`parent`: the
/// base), the embedding model; with vLLM's `root` and `max_model_len`.
fn model_cards(state: &ApiState) -> Vec<Value> {
	let model = |id: &str, parent: Option<&str>| {
		json!({
			"id": id,
			"object": "model",
			"created": state.started,
			"owned_by": "openledger",
			"root": state.model_name,
			"parent": parent,
			"max_model_len": state.engine.max_sequence(),
		})
	};
	let mut data = vec![model(&state.model_name, None)];
	data.extend(state.adapter_names().iter().map(|a| model(a, Some(&state.model_name))));
	if let Some((name, service)) = &state.embeddings {
		data.push(json!({
			"id": name,
			"object": "model",
			"created": state.started,
			"owned_by": "openledger",
			"root": name,
			"parent": null,
			"max_model_len": service.max_tokens(),
		}));
	}
	data
}

async fn health(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Value>) {
	if state.engine.is_alive() {
		(StatusCode::OK, Json(json!({ "status": "ok" })))
	} else {
		(StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "the engine has stopped" })))
	}
}

async fn metrics(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
	let s = state.engine.stats();
	let e = s.engine;
	let g = state.grammars.stats();
	let lines = [
		("requests_running", "gauge", "Requests being served.", s.running as u64),
		("requests_waiting", "gauge", "Requests waiting to start.", s.waiting as u64),
		("requests_finished_total", "counter", "Requests finished, well or not.", e.finished),
		("requests_cancelled_total", "counter", "Requests whose client went away.", e.cancelled),
		("requests_rejected_total", "counter", "Requests refused: queue full.", e.rejected),
		("steps_total", "counter", "Batches run through the model.", e.steps),
		("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", s.prompt_tokens),
		("generation_tokens_total", "counter", "Tokens generated.", s.generated_tokens),
		("tokens_computed_total", "counter", "Tokens run through the model.", e.tokens_computed),
		("tokens_reused_total", "counter", "Prompt tokens taken from cache.", e.tokens_reused),
		("preemptions_total", "counter", "Sequences preempted for KV blocks.", e.preemptions),
		("grammar_cache_hits_total", "counter", "Output grammars found compiled.", g.hits),
		("grammar_cache_misses_total", "counter", "Output grammars not kept.", g.misses),
		("grammar_cache_bytes", "gauge", "Most memory kept grammars may hold.", g.bytes as u64),
		("grammar_cache_grammars", "gauge", "Output grammars kept compiled.", g.grammars as u64),
	];
	let a = s.adapters;
	let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
	let adapter_lines = [
		("adapters_served", "gauge", "Adapters served now.", as_u64(state.read_adapters().len())),
		("adapters_resident", "gauge", "Adapters in memory.", as_u64(a.resident)),
		("adapter_bytes", "gauge", "Bytes of adapter weights in memory.", as_u64(a.used_bytes)),
		("adapter_host_bytes", "gauge", "Bytes of adapter files held.", as_u64(a.host_bytes)),
		("adapter_hits_total", "counter", "Adapters found in memory.", a.stats.hits),
		("adapter_loads_total", "counter", "Adapters loaded, first or again.", a.stats.loads),
		("adapter_reloads_total", "counter", "Adapters loaded anew.", a.stats.reloads),
		("adapter_evictions_total", "counter", "Adapters evicted for room.", a.stats.evictions),
		(
			"adapter_host_hits_total",
			"counter",
			"Adapters built from held files.",
			a.stats.host_hits,
		),
	];
	let embedding_lines = state.embeddings.as_ref().map(|(_, service)| {
		let s = service.stats();
		let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
		[
			(
				"embedding_requests_total",
				"counter",
				"Embedding requests answered.",
				read(&s.requests),
			),
			("embedding_inputs_total", "counter", "Inputs embedded.", read(&s.inputs)),
			("embedding_tokens_total", "counter", "Tokens embedded.", read(&s.tokens)),
			("embedding_batches_total", "counter", "Embedding turns run.", read(&s.turns)),
			(
				"embedding_requests_cancelled_total",
				"counter",
				"Embedding requests whose client went away.",
				read(&s.cancelled),
			),
		]
	});
	let mut text = String::new();
	let all = lines.into_iter().chain(adapter_lines).chain(embedding_lines.into_iter().flatten());
	for (name, kind, help, value) in all {
		text.push_str(&format!(
			"# HELP openledger_worker_{name} {help}\n# TYPE openledger_worker_{name} {kind}\n\
			 openledger_worker_{name} {value}\n"
		));
	}
	let l = &s.latencies;
	for (name, histogram, help) in [
		(
			"time_to_first_token_seconds",
			&l.first_token,
			"From taking a request to its first token.",
		),
		("inter_token_latency_seconds", &l.inter_token, "Between a request's consecutive tokens."),
		("e2e_request_latency_seconds", &l.request, "From taking a request to its answer."),
	] {
		histogram.render(&format!("openledger_worker_{name}"), help, &mut text);
	}
	if let Some(sync) = &state.datanet_sync {
		sync.render_metrics(&mut text);
	}
	([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
	use super::*;

	/// vLLM's `truncate_prompt_tokens`: a prompt's last `k` tokens, a text's beginning of
	/// sequence (added by the tokenizer) first; prompts no longer are left as they are; `k` is
	/// -1 (the model's most) or 1 to the most. vLLM's `add_special_tokens` false: a text
	/// without the beginning of sequence.
	#[test]
	fn truncated_prompts_keep_their_last_tokens_and_a_texts_bos() {
		let dir = tempfile::tempdir().unwrap();
		let vocab: serde_json::Map<String, Value> = ["<s>", "a", "b", "c", "d", "e"]
			.iter()
			.zip(0..)
			.map(|(w, i)| (w.to_string(), json!(i)))
			.collect();
		let tokenizer = json!({
			"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
			"normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
			"decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "a"},
		});
		std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
		let config = json!({"bos_token": "<s>", "add_bos_token": true});
		std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
		let tokenizer = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
		assert_eq!(tokenizer.encode("a b c d e").unwrap(), [0, 1, 2, 3, 4, 5]);
		let cut =
			|prompt: Prompt, k| truncated(&tokenizer, vec![prompt], k, 8).map(|mut p| p.remove(0));
		assert_eq!(cut("a b c d e".into(), 3).unwrap(), Prompt::Tokens(vec![0, 4, 5]));
		assert_eq!(cut("a b c d e".into(), 1).unwrap(), Prompt::Tokens(vec![0]));
		assert_eq!(cut(vec![0, 1, 2, 3].into(), 2).unwrap(), Prompt::Tokens(vec![2, 3]));
		assert_eq!(cut("a b".into(), 3).unwrap(), Prompt::Text("a b".into()));
		assert_eq!(cut("a b c d e".into(), -1).unwrap(), Prompt::Text("a b c d e".into()));
		for k in [0, -2, 9] {
			assert!(cut("a".into(), k).is_err(), "{k}");
		}
		// add_special_tokens false: no beginning of sequence added to a completion's text,
		// before it is cut; a chat's is left as it is.
		let asked = |endpoint, prompt: Prompt, special, k| {
			prompts_as_asked(&tokenizer, (endpoint, vec![prompt]), (special, k), 8).unwrap()
		};
		let (completions, chat, text) = (Endpoint::Completions, Endpoint::Chat, "a b c d e");
		assert_eq!(
			asked(completions, text.into(), Some(false), None),
			[Prompt::Tokens(vec![1, 2, 3, 4, 5])]
		);
		assert_eq!(
			asked(completions, text.into(), Some(false), Some(2)),
			[Prompt::Tokens(vec![4, 5])]
		);
		assert_eq!(
			asked(completions, text.into(), Some(true), Some(2)),
			[Prompt::Tokens(vec![0, 5])]
		);
		assert_eq!(asked(completions, text.into(), None, None), [Prompt::Text(text.into())]);
		assert_eq!(
			asked(completions, vec![0, 2].into(), Some(false), None),
			[Prompt::Tokens(vec![0, 2])]
		);
		assert_eq!(asked(chat, text.into(), Some(false), None), [Prompt::Text(text.into())]);
		assert_eq!(asked(chat, text.into(), None, Some(2)), [Prompt::Tokens(vec![0, 5])]);
	}

	/// An adapter that cannot be built is the request's to mend (422); files changed under the
	/// worker since they were checked, and a full queue, are the worker's (503: try again, or
	/// another worker).
	#[test]
	fn engine_errors_are_answered_with_whose_fault_they_are() {
		let answer = |e: Error| {
			let e = ApiError::from(e);
			(e.status.as_u16(), e.kind, e.code)
		};
		let (name, reason) = ("chain:0".to_string(), "why".to_string());
		assert_eq!(
			answer(Error::Adapter { name: name.clone(), reason: reason.clone() }),
			(422, "invalid_request_error", "adapter_unavailable")
		);
		assert_eq!(
			answer(Error::AdapterChanged { name, reason }),
			(503, "server_error", "adapter_unavailable")
		);
		assert_eq!(answer(Error::Overloaded { queued: 3 }), (503, "server_error", "overloaded"));
		assert_eq!(
			answer(Error::Request("x".into())),
			(400, "invalid_request_error", "invalid_request")
		);
	}
}
