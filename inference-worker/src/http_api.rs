//! The worker's HTTP API, in the shape of OpenAI's (what vLLM and LoRAX serve, so their
//! clients work unchanged): the base model and every registered LoRA adapter are "models".
//!
//! - `POST /v1/completions`: `model` (the base model's name, or an adapter's; absent: the
//!   base), `prompt` (a string, or an array of one), `max_tokens` (16), `temperature` (1),
//!   `top_p` (1), `top_k` (a vLLM extension; 0 or -1: all), `repetition_penalty` (1), `seed`
//!   (random when absent), `stop` (a string or up to 4), `n` (1 only), `stream`, `logprobs`
//!   and `echo` (refused when asked for: not served yet).
//! - `POST /v1/chat/completions`: the same, with `messages` (`role`, `content`) rendered in the
//!   model's own chat template instead of `prompt`.
//! - `GET /v1/models`: the base model and the adapters (`parent`: the base).
//! - `GET /health`: 200 while the engine serves, 503 once its thread has stopped.
//! - `GET /metrics`: the engine's counters and gauges in Prometheus' text format.
//!
//! Every error is a JSON object `{"error": {"message", "type", "code"}}` with a status that
//! says whose fault it is: 400 for a malformed or impossible request (bad JSON, an empty or too
//! long prompt, a bad sampling value), 404 for an unknown model, 413 for a body over the limit,
//! 422 for an adapter that cannot be loaded (its files are corrupt or do not fit the base), 503
//! when the queue is full (try again), 500 otherwise. A client that disconnects cancels its
//! request: its KV blocks go back to the others before the next step.

use std::{
	sync::Arc,
	time::{SystemTime, UNIX_EPOCH},
};

use axum::{
	extract::{rejection::JsonRejection, DefaultBodyLimit, State},
	http::{header, StatusCode},
	response::{IntoResponse, Response},
	routing::{get, post},
	Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
	chat::{ChatTemplate, Message},
	error::Error,
	generate::{FinishReason, Generation, GenerationRequest},
	sampling::SamplingParams,
	service::EngineService,
};

/// The largest request body taken, in bytes (a prompt beyond the model's context is refused
/// anyway; this bounds what a client can make the worker read).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The most stop sequences a request may give (OpenAI's limit).
const MAX_STOP: usize = 4;
/// `max_tokens` when a request does not say (OpenAI's default for completions).
const DEFAULT_MAX_TOKENS: usize = 16;

/// What the API serves.
pub struct ApiState {
	/// The engine thread.
	pub engine: EngineService,
	/// The base model's name in requests and in `/v1/models`.
	pub model_name: String,
	/// The adapters' names, each servable as a model.
	pub adapters: Vec<String>,
	/// The model's chat template, if it has one (`/v1/chat/completions` needs it).
	pub chat_template: Option<ChatTemplate>,
	/// When the worker started (seconds since the epoch), the models' `created`.
	pub started: u64,
}

/// The routes of the API over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
	Router::new()
		.route("/health", get(health))
		.route("/metrics", get(metrics))
		.route("/v1/models", get(models))
		.route("/v1/completions", post(completions))
		.route("/v1/chat/completions", post(chat_completions))
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
			_ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
		};
		Self { status, kind, code, message: e.to_string() }
	}
}

impl From<JsonRejection> for ApiError {
	fn from(rejection: JsonRejection) -> Self {
		let status = rejection.status();
		let code =
			if status == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_json" };
		// Axum answers a body it could not parse with 422 or 415; OpenAI's clients expect 400
		// for anything wrong with the request itself.
		let status =
			if status == StatusCode::PAYLOAD_TOO_LARGE { status } else { StatusCode::BAD_REQUEST };
		Self { status, kind: "invalid_request_error", code, message: rejection.body_text() }
	}
}

impl IntoResponse for ApiError {
	fn into_response(self) -> Response {
		if self.status.is_server_error() {
			tracing::warn!(status = %self.status, error = %self.message, "request failed");
		}
		let body = json!({
			"error": { "message": self.message, "type": self.kind, "code": self.code }
		});
		(self.status, Json(body)).into_response()
	}
}

/// A string or a list of strings (`prompt`, `stop`).
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
	prompt: Option<OneOrMany>,
	messages: Option<Vec<Message>>,
	max_tokens: Option<usize>,
	/// The chat endpoint's newer name for `max_tokens`.
	max_completion_tokens: Option<usize>,
	temperature: Option<f32>,
	top_p: Option<f32>,
	top_k: Option<i64>,
	repetition_penalty: Option<f32>,
	seed: Option<u64>,
	stop: Option<OneOrMany>,
	n: Option<usize>,
	stream: Option<bool>,
	/// Completions: how many top tokens' log-probabilities; chat: whether to return them.
	logprobs: Option<Value>,
	/// Completions: whether to put the prompt before the answer.
	echo: Option<bool>,
}

/// Token counts of an answer.
#[derive(Debug, Serialize)]
struct Usage {
	prompt_tokens: usize,
	completion_tokens: usize,
	total_tokens: usize,
}

impl Usage {
	fn of(generation: &Generation) -> Self {
		let (prompt_tokens, completion_tokens) =
			(generation.prompt_tokens.len(), generation.tokens.len());
		Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
	}
}

/// OpenAI's name for why generation ended.
fn finish_reason(reason: FinishReason) -> &'static str {
	match reason {
		FinishReason::Length => "length",
		FinishReason::Eos | FinishReason::Stop => "stop",
	}
}

impl ApiState {
	/// The adapter `model` names: `None` for the base model (or no name), or an error if it is
	/// neither the base nor a registered adapter.
	fn adapter_of(&self, model: Option<&str>) -> Result<Option<String>, ApiError> {
		match model {
			None => Ok(None),
			Some(name) if name.is_empty() || name == self.model_name => Ok(None),
			Some(name) if self.adapters.iter().any(|a| a == name) => Ok(Some(name.to_string())),
			Some(name) => Err(ApiError {
				status: StatusCode::NOT_FOUND,
				kind: "invalid_request_error",
				code: "model_not_found",
				message: format!(
					"the model {name:?} does not exist: this worker serves {:?} and its \
					 adapters (GET /v1/models)",
					self.model_name
				),
			}),
		}
	}
}

/// The engine's request for `prompt` with `sampling`.
fn generation_request(prompt: String, sampling: Body) -> Result<GenerationRequest, ApiError> {
	if sampling.stream == Some(true) {
		return Err(ApiError::bad_request("stream: streaming answers are not served yet"));
	}
	if sampling
		.logprobs
		.as_ref()
		.is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)) && v.as_u64() != Some(0))
	{
		return Err(ApiError::bad_request("logprobs: log-probabilities are not served yet"));
	}
	if sampling.echo == Some(true) {
		return Err(ApiError::bad_request("echo: echoing the prompt is not served"));
	}
	if sampling.n.is_some_and(|n| n != 1) {
		return Err(ApiError::bad_request("n: only one choice per request is served"));
	}
	let stop = match sampling.stop {
		None => Vec::new(),
		Some(OneOrMany::One(s)) => vec![s],
		Some(OneOrMany::Many(list)) => list,
	};
	if stop.len() > MAX_STOP {
		return Err(ApiError::bad_request(format!("stop: at most {MAX_STOP} sequences")));
	}
	if stop.iter().any(String::is_empty) {
		return Err(ApiError::bad_request("stop: an empty stop sequence"));
	}
	let top_k = match sampling.top_k {
		None | Some(-1) | Some(0) => 0,
		Some(k) => usize::try_from(k)
			.map_err(|_| ApiError::bad_request(format!("top_k {k} is not -1, 0 or positive")))?,
	};
	Ok(GenerationRequest {
		prompt,
		max_tokens: sampling
			.max_tokens
			.or(sampling.max_completion_tokens)
			.unwrap_or(DEFAULT_MAX_TOKENS),
		sampling: SamplingParams {
			temperature: sampling.temperature.unwrap_or(1.0),
			top_k,
			top_p: sampling.top_p.unwrap_or(1.0),
			repetition_penalty: sampling.repetition_penalty.unwrap_or(1.0),
			seed: sampling.seed.unwrap_or_else(rand::random),
		},
		stop,
	})
}

/// A request id for an answer (`prefix-` and 24 hex digits).
fn answer_id(prefix: &str) -> String {
	format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// The model name an answer reports: the one asked for, or the base.
fn answered_model(state: &ApiState, model: Option<String>) -> String {
	model.filter(|m| !m.is_empty()).unwrap_or_else(|| state.model_name.clone())
}

/// An answer of kind `object` for `generation`: its one choice is `choice` (its text, as a
/// completion or a chat message) with OpenAI's index, log-probabilities (not served) and finish
/// reason added.
fn answer(
	state: &ApiState,
	id_prefix: &str,
	object: &str,
	model: Option<String>,
	mut choice: Value,
	generation: &Generation,
) -> Json<Value> {
	choice["index"] = json!(0);
	choice["logprobs"] = Value::Null;
	choice["finish_reason"] = json!(finish_reason(generation.finish_reason));
	Json(json!({
		"id": answer_id(id_prefix),
		"object": object,
		"created": now(),
		"model": answered_model(state, model),
		"choices": [choice],
		"usage": Usage::of(generation),
	}))
}

async fn completions(
	State(state): State<Arc<ApiState>>,
	body: Result<Json<Body>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
	let Json(mut body) = body?;
	let adapter = state.adapter_of(body.model.as_deref())?;
	let prompt = match body.prompt.take() {
		None => return Err(ApiError::bad_request("prompt: missing field `prompt`")),
		Some(OneOrMany::One(prompt)) => prompt,
		Some(OneOrMany::Many(mut prompts)) if prompts.len() == 1 => prompts.remove(0),
		Some(OneOrMany::Many(_)) => {
			return Err(ApiError::bad_request("prompt: one prompt per request is served"))
		}
	};
	let model = body.model.take();
	let request = generation_request(prompt, body)?;
	let generation = state.engine.generate(request, adapter).await?;
	let choice = json!({ "text": generation.text });
	Ok(answer(&state, "cmpl", "text_completion", model, choice, &generation))
}

async fn chat_completions(
	State(state): State<Arc<ApiState>>,
	body: Result<Json<Body>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
	let Json(mut body) = body?;
	let adapter = state.adapter_of(body.model.as_deref())?;
	let template = state.chat_template.as_ref().ok_or_else(|| {
		ApiError::bad_request("this model has no chat template: use /v1/completions")
	})?;
	let messages = body
		.messages
		.take()
		.ok_or_else(|| ApiError::bad_request("messages: missing field `messages`"))?;
	let prompt = template.render(&messages, true)?;
	let model = body.model.take();
	let request = generation_request(prompt, body)?;
	let generation = state.engine.generate(request, adapter).await?;
	let choice = json!({ "message": { "role": "assistant", "content": generation.text } });
	Ok(answer(&state, "chatcmpl", "chat.completion", model, choice, &generation))
}

async fn models(State(state): State<Arc<ApiState>>) -> Json<Value> {
	let model = |id: &str, parent: Option<&str>| {
		json!({
			"id": id,
			"object": "model",
			"created": state.started,
			"owned_by": "openledger",
			"root": state.model_name,
			"parent": parent,
		})
	};
	let mut data = vec![model(&state.model_name, None)];
	data.extend(state.adapters.iter().map(|a| model(a, Some(&state.model_name))));
	Json(json!({ "object": "list", "data": data }))
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
	];
	let mut text = String::new();
	for (name, kind, help, value) in lines {
		text.push_str(&format!(
			"# HELP openledger_worker_{name} {help}\n# TYPE openledger_worker_{name} {kind}\n\
			 openledger_worker_{name} {value}\n"
		));
	}
	([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
