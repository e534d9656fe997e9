//! The HTTP API on the real model: what it answers equals what the library generates alone,
//! many clients at once included; every bad request gets its status and a JSON error; a client
//! that hangs up cancels its request; and `openledger-worker serve` serves a folder of adapters.

use std::{
	io::{BufRead, BufReader, Read, Write},
	net::{SocketAddr, TcpStream},
	path::{Path, PathBuf},
	process::{Child, Command, Stdio},
	sync::Arc,
	time::{Duration, Instant},
};

use openledger_inference_worker::{
	adapter_registry::AdapterRegistry,
	attribution::{answer_logprob, Ablations, Method, Source, SourcedPrompt, Sources},
	chain_rpc::{Node, LOOKUP_TIMEOUT},
	chat::Message,
	decoder::Decoder,
	ebnf_grammar::EbnfGrammar,
	embedding_service::EmbeddingService,
	embeddings::{cosine, EmbeddingModel},
	engine::EngineConfig,
	generate::{
		generate, FinishReason, Generation, GenerationRequest, Progress, Prompt, ResponseFormat,
	},
	http_api::{self, ApiState},
	json_mode::{JsonGrammar, JsonState},
	kv_cache::KvCacheConfig,
	lazy_grammar::LazyGrammar,
	lora::{LoraAdapter, Projection},
	model::{Llama, WeightFormat},
	models,
	prompt_registry::PromptRegistry,
	regex_grammar::RegexGrammar,
	retrieval::VectorIndex,
	sampling::SamplingParams,
	service::EngineService,
	tokenizer::Tokenizer,
	tool_calls,
};
use serde_json::{json, Value};

mod common;
use common::{called_tools, greedy, leave_one_out, load, write_adapter, Flaky};

const MODEL: &str = "smollm2";

/// The adapters' projections.
const TARGETS: [Projection; 3] = [Projection::Q, Projection::V, Projection::Down];

/// The API on an ephemeral port of this machine, with `adapters` registered; its address.
fn start<D: Decoder>(
	model: Arc<D>,
	tokenizer: Arc<Tokenizer>,
	adapters: Vec<(String, PathBuf)>,
	config: EngineConfig,
) -> SocketAddr {
	let engine = EngineService::start(model, tokenizer.clone(), config, adapters.clone()).unwrap();
	serve_state(ApiState::new(engine, MODEL, tokenizer, adapters))
}

/// Serves `state` on an ephemeral port of this machine; its address.
fn serve_state(state: ApiState) -> SocketAddr {
	let state = Arc::new(state);
	let runtime =
		tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
	let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0))).unwrap();
	let address = listener.local_addr().unwrap();
	std::thread::spawn(move || {
		runtime.block_on(async { axum::serve(listener, http_api::router(state)).await.unwrap() })
	});
	address
}

/// The real model served with one adapter, `tuned`, written under `root`: the model, its
/// tokenizer, the adapter as the library loads it, and the API's address.
fn serve_tuned(root: &Path) -> (Arc<Llama>, Arc<Tokenizer>, LoraAdapter, SocketAddr) {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let dir = root.join("tuned");
	write_adapter(&model, &dir, 7, 8, &TARGETS);
	let adapter = model.load_adapter(&dir, Some("tuned")).unwrap();
	let adapters = vec![("tuned".into(), dir)];
	let address = start(model.clone(), tokenizer.clone(), adapters, EngineConfig::default());
	(model, tokenizer, adapter, address)
}

/// POSTs `body` to `path` and returns the connection without reading the answer.
fn send(address: SocketAddr, path: &str, body: &str) -> TcpStream {
	let mut stream = TcpStream::connect(address).unwrap();
	write!(
		stream,
		"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
		 Content-Length: {}\r\n\r\n{body}",
		body.len()
	)
	.unwrap();
	stream
}

/// Sends `method path` with `body` (as JSON) and returns the status and the body.
fn call(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
	let (status, _, body) = exchange(address, method, path, body);
	(status, body)
}

/// Sends `method path` with `body` (as JSON) and returns the status, the head and the body.
fn exchange(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String, String) {
	let mut stream = TcpStream::connect(address).unwrap();
	stream.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
	write!(
		stream,
		"{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: \
		 application/json\r\nContent-Length: {}\r\n\r\n",
		body.len()
	)
	.unwrap();
	// A body over the limit may be answered (and the connection closed) before it is all sent.
	let _ = stream.write_all(body);
	let mut answer = String::new();
	stream.read_to_string(&mut answer).unwrap();
	let (head, body) = answer.split_once("\r\n\r\n").unwrap();
	let status = head.split(' ').nth(1).unwrap().parse().unwrap();
	(status, head.to_ascii_lowercase(), body.to_string())
}

/// The body of a chunked HTTP answer.
fn dechunk(mut raw: &str) -> String {
	let mut body = String::new();
	loop {
		let (size, rest) = raw.split_once("\r\n").unwrap_or_else(|| panic!("cut: {raw:?}"));
		let size = usize::from_str_radix(size.trim(), 16).unwrap();
		if size == 0 {
			return body;
		}
		body.push_str(&rest[..size]);
		raw = rest[size..].strip_prefix("\r\n").unwrap();
	}
}

/// POSTs `body` with `stream` set: the status, and each event's data (`"[DONE]"` as a string),
/// or the error object when the status is not 200.
fn stream(address: SocketAddr, path: &str, body: &Value) -> (u16, Vec<Value>) {
	let mut body = body.clone();
	body["stream"] = json!(true);
	let (status, head, text) = exchange(address, "POST", path, body.to_string().as_bytes());
	if status != 200 {
		return (
			status,
			vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))],
		);
	}
	assert!(head.contains("content-type: text/event-stream"), "{head}");
	let text = if head.contains("transfer-encoding: chunked") { dechunk(&text) } else { text };
	let events = text
		.split("\n\n")
		.filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
		.map(|data| match data {
			"[DONE]" => json!("[DONE]"),
			data => serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}")),
		})
		.collect();
	(status, events)
}

/// A streamed answer put together.
#[derive(Debug, Default)]
struct Streamed {
	/// Each choice's text, and how many chunks brought it.
	texts: Vec<(String, usize)>,
	/// Each choice's finish reason.
	reasons: Vec<Option<String>>,
	/// The usage chunk's, if there was one.
	usage: Option<Value>,
	/// An error event's object.
	error: Option<Value>,
}

/// Puts `events` (of one answer, ending with `[DONE]`) together, each choice's text at
/// `text_at`, checking that the chunks belong together and that nothing follows a choice's
/// end or the usage.
fn gather(events: &[Value], object: &str, text_at: &str) -> Streamed {
	assert_eq!(events.last(), Some(&json!("[DONE]")), "{events:?}");
	let mut streamed = Streamed::default();
	let id = events[0]["id"].clone();
	for event in &events[..events.len() - 1] {
		if event.get("error").is_some() {
			assert!(streamed.error.is_none(), "two errors");
			streamed.error = Some(event["error"].clone());
			continue;
		}
		assert!(streamed.error.is_none() && streamed.usage.is_none(), "{event} after the end");
		assert_eq!((&event["id"], event["object"].as_str()), (&id, Some(object)), "{event}");
		assert_eq!(event["model"], MODEL, "{event}");
		if let Some(usage) = event.get("usage").filter(|u| !u.is_null()) {
			assert_eq!(event["choices"], json!([]), "{event}");
			streamed.usage = Some(usage.clone());
			continue;
		}
		for choice in event["choices"].as_array().unwrap() {
			let i = choice["index"].as_u64().unwrap() as usize;
			if streamed.texts.len() <= i {
				streamed.texts.resize(i + 1, Default::default());
				streamed.reasons.resize(i + 1, None);
			}
			assert!(streamed.reasons[i].is_none(), "choice {i} went on after its end: {event}");
			if let Some(text) = choice.pointer(text_at).and_then(Value::as_str) {
				streamed.texts[i].0.push_str(text);
				streamed.texts[i].1 += usize::from(!text.is_empty());
			}
			streamed.reasons[i] = choice["finish_reason"].as_str().map(String::from);
		}
	}
	streamed
}

/// OpenAI's finish reason for `generation`.
fn reason(generation: &Generation) -> &'static str {
	match generation.finish_reason {
		FinishReason::Length => "length",
		FinishReason::Eos | FinishReason::Stop => "stop",
	}
}

fn post(address: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
	let (status, body) = call(address, "POST", path, body.to_string().as_bytes());
	(status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

fn get(address: SocketAddr, path: &str) -> (u16, String) {
	call(address, "GET", path, b"")
}

/// Asserts that POSTing `body` to `path` is a 400 whose message says `says`.
fn refused_at(address: SocketAddr, path: &str, body: Value, says: &str) {
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 400, "{answer}");
	let message = answer["error"]["message"].as_str().unwrap();
	assert!(message.contains(says), "{message:?} does not say {says:?}");
}

/// A metric's value in `/metrics`.
fn metric(address: SocketAddr, name: &str) -> u64 {
	let (status, text) = get(address, "/metrics");
	assert_eq!(status, 200);
	let line = text
		.lines()
		.find(|l| l.starts_with(&format!("openledger_worker_{name} ")))
		.unwrap_or_else(|| panic!("no {name} in {text}"));
	line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Asserts that `answer` (a completion's JSON) carries `want`'s text, reason and counts.
fn assert_answers(answer: &Value, want: &Generation, text_at: &str) {
	let choice = &answer["choices"][0];
	assert_eq!(choice.pointer(text_at).and_then(Value::as_str), Some(want.text.as_str()));
	assert_eq!(choice["finish_reason"], reason(want), "{answer}");
	assert_eq!(answer["usage"]["prompt_tokens"], want.prompt_tokens.len());
	assert_eq!(answer["usage"]["completion_tokens"], want.tokens.len());
	assert_eq!(answer["usage"]["total_tokens"], want.prompt_tokens.len() + want.tokens.len());
}

#[test]
fn completions_answer_what_the_model_generates_alone_for_many_clients_at_once() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, adapter, address) = serve_tuned(root.path());

	let (status, health) = get(address, "/health");
	assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
	let (status, list) = get(address, "/v1/models");
	assert_eq!(status, 200);
	let list: Value = serde_json::from_str(&list).unwrap();
	let ids: Vec<&str> =
		list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
	assert_eq!(ids, [MODEL, "tuned"]);
	assert_eq!(list["data"][1]["parent"], MODEL);

	// Six clients at once, three on the base model and three on the adapter: each gets what
	// the model generates for it alone (greedy, the quantized weights: to the bit).
	let prompts = ["The capital of France is", "def add(a, b):", "Data attribution pays"];
	let cases: Vec<(&str, Option<&str>)> =
		prompts.iter().flat_map(|&p| [(p, None), (p, Some("tuned"))]).collect();
	let answers: Vec<Value> = std::thread::scope(|s| {
		let handles: Vec<_> = cases
			.iter()
			.map(|&(prompt, adapter)| {
				s.spawn(move || {
					let mut body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0});
					if let Some(name) = adapter {
						body["model"] = json!(name);
					}
					let (status, answer) = post(address, "/v1/completions", &body);
					assert_eq!(status, 200, "{answer}");
					answer
				})
			})
			.collect();
		handles.into_iter().map(|h| h.join().unwrap()).collect()
	});
	for ((prompt, name), answer) in cases.iter().zip(&answers) {
		let lora = name.map(|_| &adapter);
		let want = generate(&model, &tokenizer, lora, &greedy(prompt, 16)).unwrap();
		assert_answers(answer, &want, "/text");
		assert_eq!(answer["object"], "text_completion");
		assert_eq!(answer["model"], name.unwrap_or(MODEL));
	}
	assert_ne!(answers[0]["choices"][0]["text"], answers[1]["choices"][0]["text"]);

	// A chat: the messages in the model's template, then the same generation.
	let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]);
	let (status, answer) = post(
		address,
		"/v1/chat/completions",
		&json!({"messages": messages, "max_tokens": 16, "temperature": 0, "model": "tuned"}),
	);
	assert_eq!(status, 200, "{answer}");
	let rendered = render(&tokenizer, &messages);
	let want = generate(&model, &tokenizer, Some(&adapter), &greedy(&rendered, 16)).unwrap();
	assert_answers(&answer, &want, "/message/content");
	assert_eq!(answer["choices"][0]["message"]["role"], "assistant");

	// Stop sequences and seeded sampling are the library's.
	let mut request = greedy("The capital of France is", 16);
	request.stop = vec!["\n".into()];
	request.sampling = SamplingParams {
		temperature: 0.8,
		top_k: 40,
		top_p: 0.9,
		min_p: 0.05,
		seed: 11,
		..SamplingParams::default()
	};
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	let (status, answer) = post(
		address,
		"/v1/completions",
		&json!({"prompt": ["The capital of France is"], "max_tokens": 16, "stop": "\n",
			"logprobs": null, "echo": false, "n": 1, "stream": false,
			"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "seed": 11}),
	);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["text"], want.text.as_str());
	// min_p 1 keeps only the most likely token: sampled hot, the answer is the greedy one.
	let greedy_text = generate(&model, &tokenizer, None, &greedy("The capital of France is", 16));
	let body = json!({"prompt": "The capital of France is", "max_tokens": 16, "temperature": 5.0,
		"min_p": 1.0, "seed": 3});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["text"], greedy_text.unwrap().text.as_str());
	let body = json!({"prompt": "Hi", "max_tokens": 1, "temperature": 1.0, "min_p": 1.5});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 400, "{answer}");
	assert!(answer["error"]["message"].as_str().unwrap().contains("min_p 1.5"), "{answer}");

	assert_eq!(metric(address, "requests_finished_total"), 9);
	assert_eq!(metric(address, "requests_running"), 0);
	// Latencies: every request's first token and answer timed, and each later token.
	assert_eq!(metric(address, "time_to_first_token_seconds_count"), 9);
	assert_eq!(metric(address, "e2e_request_latency_seconds_count"), 9);
	let tokens = metric(address, "generation_tokens_total");
	assert_eq!(metric(address, "inter_token_latency_seconds_count"), tokens - 9);
	let (_, text) = get(address, "/metrics");
	let buckets: Vec<u64> = text
		.lines()
		.filter(|l| l.starts_with("openledger_worker_time_to_first_token_seconds_bucket"))
		.map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
		.collect();
	assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "not cumulative: {buckets:?}");
	assert_eq!(buckets.last(), Some(&9), "{text}");
	assert!(text.contains("le=\"+Inf\""), "{text}");
	let generated: usize =
		answers.iter().map(|a| a["usage"]["completion_tokens"].as_u64().unwrap() as usize).sum();
	assert!(metric(address, "generation_tokens_total") as usize > generated);
}

#[test]
fn bad_requests_get_their_status_and_a_json_error_and_a_hang_up_cancels() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let corrupt = root.path().join("corrupt");
	write_adapter(&model, &corrupt, 3, 8, &TARGETS);
	std::fs::write(corrupt.join("adapter_model.safetensors"), b"not a safetensors file").unwrap();
	let config = EngineConfig { max_running: 1, max_waiting: 1, ..EngineConfig::default() };
	let address = start(model, tokenizer, vec![("corrupt".into(), corrupt)], config);

	let error = |status: u16, body: &[u8], code: &str, says: &str| {
		let (got, text) = call(address, "POST", "/v1/completions", body);
		let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
		assert_eq!(got, status, "{answer}");
		assert_eq!(answer["error"]["code"], code, "{answer}");
		let message = answer["error"]["message"].as_str().unwrap();
		assert!(message.contains(says), "{message:?} does not say {says:?}");
	};
	error(400, br#"{"prompt": "x","#, "invalid_json", "EOF");
	error(400, br#"{"max_tokens": 3}"#, "invalid_request", "missing field `prompt`");
	error(400, br#"{"prompt": 5}"#, "invalid_request", "prompt: 5 is neither");
	error(404, br#"{"prompt": "x", "model": "nope"}"#, "model_not_found", "nope");
	error(400, br#"{"prompt": ""}"#, "invalid_request", "the prompt is empty");
	error(400, br#"{"prompt": "x", "max_tokens": 0}"#, "invalid_request", "max_tokens is 0");
	error(400, br#"{"prompt": "x", "max_tokens": 100000}"#, "invalid_request", "context of 8192");
	error(400, br#"{"prompt": "x", "temperature": -1}"#, "invalid_request", "temperature");
	error(400, br#"{"prompt": "x", "top_p": 0}"#, "invalid_request", "top_p");
	error(400, br#"{"prompt": "x", "top_k": -2}"#, "invalid_request", "top_k");
	error(400, br#"{"prompt": "x", "n": 0}"#, "invalid_request", "n: from 1 to 16");
	error(400, br#"{"prompt": "x", "n": 17}"#, "invalid_request", "n: from 1 to 16");
	// Two requests could never wait at once here (max_waiting 1): refused, not "try again".
	error(400, br#"{"prompt": ["x", "y"]}"#, "invalid_request", "more than this worker queues");
	let options = br#"{"prompt": "x", "stream_options": {"include_usage": true}}"#;
	error(400, options, "invalid_request", "stream_options");
	let streamed = br#"{"prompt": "x", "stream": true, "model": "nope"}"#;
	error(404, streamed, "model_not_found", "nope");
	let streamed = br#"{"prompt": "", "stream": true}"#;
	error(400, streamed, "invalid_request", "the prompt is empty");
	error(400, br#"{"prompt": "x", "stop": ["a","b","c","d","e"]}"#, "invalid_request", "stop");
	error(422, br#"{"prompt": "x", "model": "corrupt"}"#, "adapter_unavailable", "corrupt");
	// Streamed, the events begin once the engine takes the request: the adapter's failure to
	// load comes as an error event.
	let (status, events) =
		stream(address, "/v1/completions", &json!({"prompt": "x", "model": "corrupt"}));
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "text_completion", "/text");
	assert_eq!(got.error.unwrap()["code"], "adapter_unavailable");
	let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(http_api::MAX_BODY_BYTES));
	error(413, big.as_bytes(), "body_too_large", "length limit");
	let (status, text) = call(address, "POST", "/v1/chat/completions", br#"{"prompt": "x"}"#);
	assert_eq!(status, 400, "{text}");
	assert!(text.contains("missing field `messages`"), "{text}");
	let (status, text) = call(address, "POST", "/v1/chat/completions", br#"{"messages": []}"#);
	assert_eq!(status, 400, "{text}");
	assert!(text.contains("at least one message"), "{text}");

	// A client that hangs up: its request is cancelled and its blocks freed, and the next
	// request is served.
	let body =
		json!({"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 4000, "temperature": 0}).to_string();
	let stream = send(address, "/v1/completions", &body);
	let since = Instant::now();
	while metric(address, "requests_running") == 0 {
		assert!(since.elapsed() < Duration::from_secs(60), "the request never started");
		std::thread::sleep(Duration::from_millis(20));
	}
	// With one running and one waiting, the queue is full: a third is told to come back.
	let waiting = send(address, "/v1/completions", &body);
	while metric(address, "requests_waiting") == 0 {
		assert!(since.elapsed() < Duration::from_secs(60), "the second request never queued");
		std::thread::sleep(Duration::from_millis(20));
	}
	error(503, body.as_bytes(), "overloaded", "overloaded");
	drop(stream);
	drop(waiting);
	while metric(address, "requests_cancelled_total") < 2 || metric(address, "requests_running") > 0
	{
		assert!(since.elapsed() < Duration::from_secs(60), "the requests were not cancelled");
		std::thread::sleep(Duration::from_millis(20));
	}
	assert_eq!(metric(address, "requests_waiting"), 0);
	assert_eq!(metric(address, "requests_rejected_total"), 1);
	let (status, answer) =
		post(address, "/v1/completions", &json!({"prompt": "Hello", "max_tokens": 2}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["usage"]["completion_tokens"], 2);
}

const PARIS: &str = "The capital of France is";

/// `messages` (OpenAI's JSON) in the model's chat template, ready for the assistant's answer.
fn render(tokenizer: &Tokenizer, messages: &Value) -> String {
	let messages = serde_json::from_value::<Vec<_>>(messages.clone()).unwrap();
	tokenizer.chat_template().unwrap().render(&messages, true).unwrap()
}

/// The `logprobs` of a streamed answer's chunks that carry some, in order (of choice 0).
fn chunk_logprobs(events: &[Value]) -> impl Iterator<Item = &Value> {
	events
		.iter()
		.filter_map(|e| e.get("choices")?.as_array()?.first())
		.map(|choice| &choice["logprobs"])
		.filter(|logprobs| !logprobs.is_null())
}

/// Asserts that the JSON number `got` is the log-probability `want` (within float printing).
fn close(got: &Value, want: f32) {
	let got = got.as_f64().unwrap_or_else(|| panic!("{got} is not a number")) as f32;
	assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{got} vs {want}");
}

/// Streamed answers add up to what the library generates alone (greedy, with an adapter, with
/// a stop sequence that has to be held back, several seeded choices), in OpenAI's chunks; `n`
/// choices of a whole answer are each the library's with its own seed; a client that hangs up
/// on a stream cancels its request.
#[test]
fn streamed_answers_add_up_to_the_whole_answers() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, adapter, address) = serve_tuned(root.path());
	let alone = |lora: Option<&LoraAdapter>, request: &GenerationRequest| {
		generate(&model, &tokenizer, lora, request).unwrap()
	};

	// Greedy on the base model, with the usage at the end.
	let want = alone(None, &greedy(PARIS, 24));
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0,
		"stream_options": {"include_usage": true}});
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "text_completion", "/text");
	assert!(got.error.is_none(), "{got:?}");
	assert_eq!(got.texts.len(), 1);
	assert_eq!(got.texts[0].0, want.text);
	assert!(got.texts[0].1 > 2, "the text came in {} pieces", got.texts[0].1);
	assert_eq!(got.reasons, [Some(reason(&want).to_string())]);
	let usage = got.usage.expect("no usage chunk");
	assert_eq!(usage["prompt_tokens"], want.prompt_tokens.len());
	assert_eq!(usage["completion_tokens"], want.tokens.len());
	assert!(events.iter().all(|e| e == "[DONE]" || e.get("usage").is_some()));

	// A chat on the adapter: the role first, then the content; no usage unless asked.
	let messages = json!([{"role": "user", "content": "Name three colours."}]);
	let rendered = render(&tokenizer, &messages);
	let want = alone(Some(&adapter), &greedy(&rendered, 20));
	let body = json!({"messages": messages, "max_tokens": 20, "temperature": 0, "model": "tuned"});
	let (status, mut events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(events[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
	for event in &mut events {
		assert!(event.get("usage").is_none(), "{event}");
		// The answer names the adapter it was asked for.
		if let Some(model) = event.get_mut("model") {
			assert_eq!(model, "tuned");
			*model = json!(MODEL);
		}
	}
	let got = gather(&events, "chat.completion.chunk", "/delta/content");
	assert!(got.error.is_none(), "{got:?}");
	assert_eq!(got.texts[0].0, want.text);
	assert_eq!(got.reasons, [Some(reason(&want).to_string())]);

	// A four-character stop sequence from the middle of the greedy text: the text streamed
	// stops before it (what could become the stop sequence is held back until it cannot).
	let full = alone(None, &greedy(PARIS, 32)).text;
	let stop: String = full.chars().skip(full.chars().count() / 2).take(4).collect();
	let mut request = greedy(PARIS, 32);
	request.stop = vec![stop.clone(), "never seen".into()];
	let want = alone(None, &request);
	assert_eq!(want.finish_reason, FinishReason::Stop);
	let body = json!({"prompt": PARIS, "max_tokens": 32, "temperature": 0,
		"stop": [stop, "never seen"]});
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "text_completion", "/text");
	assert!(got.error.is_none(), "{got:?}");
	assert_eq!(got.texts[0].0, want.text);
	assert_eq!(got.reasons, [Some("stop".to_string())]);

	// Three seeded choices streamed together, and two in a whole answer: choice i is the
	// library's generation with seed + i.
	let seeded = |seed: u64, max_tokens: usize| {
		let mut request = greedy(PARIS, max_tokens);
		request.sampling = SamplingParams { temperature: 0.9, seed, ..SamplingParams::default() };
		alone(None, &request)
	};
	let body = json!({"prompt": PARIS, "max_tokens": 12, "temperature": 0.9, "seed": 40, "n": 3,
		"stream_options": {"include_usage": true}});
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "text_completion", "/text");
	assert!(got.error.is_none(), "{got:?}");
	let wants: Vec<Generation> = (40..43).map(|seed| seeded(seed, 12)).collect();
	let texts: Vec<&str> = got.texts.iter().map(|(t, _)| t.as_str()).collect();
	let want_texts: Vec<&str> = wants.iter().map(|g| g.text.as_str()).collect();
	assert_eq!(texts, want_texts);
	assert_ne!(texts[0], texts[1]);
	let usage = got.usage.unwrap();
	assert_eq!(usage["completion_tokens"], wants.iter().map(|g| g.tokens.len()).sum::<usize>());
	assert_eq!(usage["prompt_tokens"], wants[0].prompt_tokens.len());
	let (status, answer) = post(
		address,
		"/v1/completions",
		&json!({"prompt": PARIS, "max_tokens": 12, "temperature": 0.9, "seed": 41, "n": 2}),
	);
	assert_eq!(status, 200, "{answer}");
	for (i, choice) in answer["choices"].as_array().unwrap().iter().enumerate() {
		assert_eq!(choice["index"], i);
		assert_eq!(choice["text"], wants[i + 1].text.as_str());
	}

	// A client that hangs up on a stream: its request is cancelled.
	let body = json!({"prompt": "1, 2, 3,", "max_tokens": 4000, "temperature": 0, "stream": true});
	let connection = send(address, "/v1/completions", &body.to_string());
	let mut lines = BufReader::new(connection.try_clone().unwrap()).lines();
	assert!(lines.any(|l| l.unwrap().starts_with("data: ")), "no event came");
	drop(lines);
	drop(connection);
	let since = Instant::now();
	while metric(address, "requests_cancelled_total") < 1 {
		assert!(since.elapsed() < Duration::from_secs(60), "the stream was not cancelled");
		std::thread::sleep(Duration::from_millis(20));
	}
	assert_eq!(metric(address, "requests_running"), 0);
}

/// Log-probabilities are the library's (the sampled tokens' and the most likely ones at each
/// step, in OpenAI's shape for each endpoint) and `echo` puts the prompt first, whole or
/// streamed; what cannot be served together is refused.
#[test]
fn logprobs_and_echo_are_the_librarys() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, adapter, address) = serve_tuned(root.path());
	let text_of = |t: u32| tokenizer.decode(&[t]).unwrap();

	// Completions: tokens, token_logprobs, top_logprobs (3 each) and text offsets.
	let mut request = greedy(PARIS, 8);
	request.sampling.top_logprobs = 3;
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	assert!(want.top_logprobs.iter().all(|top| top.len() == 3));
	let body = json!({"prompt": PARIS, "max_tokens": 8, "temperature": 0, "logprobs": 3});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/text");
	let logprobs = &answer["choices"][0]["logprobs"];
	let tokens: Vec<String> = want.tokens.iter().map(|&t| text_of(t)).collect();
	assert_eq!(logprobs["tokens"], json!(tokens));
	let mut offset = 0;
	for (i, token) in tokens.iter().enumerate() {
		close(&logprobs["token_logprobs"][i], want.logprobs[i]);
		assert_eq!(logprobs["text_offset"][i], offset);
		offset += token.chars().count();
		let top = logprobs["top_logprobs"][i].as_object().unwrap();
		assert_eq!(top.len(), 3, "{top:?}");
		for &(t, logprob) in &want.top_logprobs[i] {
			close(&top[&text_of(t)], logprob);
		}
		// Greedy: the sampled token is the most likely one.
		assert_eq!(want.top_logprobs[i][0], (want.tokens[i], want.logprobs[i]));
	}

	// Chat on the adapter: logprobs.content with bytes and two alternatives per token.
	let messages = json!([{"role": "user", "content": "Name a colour."}]);
	let rendered = render(&tokenizer, &messages);
	let mut request = greedy(&rendered, 6);
	request.sampling.top_logprobs = 2;
	let want = generate(&model, &tokenizer, Some(&adapter), &request).unwrap();
	let body = json!({"messages": messages, "max_tokens": 6, "temperature": 0, "model": "tuned",
		"logprobs": true, "top_logprobs": 2});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/message/content");
	let content = answer["choices"][0]["logprobs"]["content"].as_array().unwrap();
	assert_eq!(content.len(), want.tokens.len());
	for (i, entry) in content.iter().enumerate() {
		let text = text_of(want.tokens[i]);
		assert_eq!(entry["token"], text.as_str());
		assert_eq!(entry["bytes"], json!(text.as_bytes()));
		close(&entry["logprob"], want.logprobs[i]);
		let top = entry["top_logprobs"].as_array().unwrap();
		assert_eq!(top.len(), 2);
		for (alternative, &(t, logprob)) in top.iter().zip(&want.top_logprobs[i]) {
			assert_eq!(alternative["token"], text_of(t).as_str());
			close(&alternative["logprob"], logprob);
		}
	}
	// Without logprobs, none are computed or sent.
	let body = json!({"messages": messages, "max_tokens": 2, "logprobs": false});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["logprobs"], Value::Null);

	// Echo: the prompt, then the completion; streamed, the prompt is the first piece.
	let want = generate(&model, &tokenizer, None, &greedy(PARIS, 6)).unwrap();
	let body = json!({"prompt": PARIS, "max_tokens": 6, "temperature": 0, "echo": true});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["text"], format!("{PARIS}{}", want.text));
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(events[0]["choices"][0]["text"], PARIS);
	let got = gather(&events, "text_completion", "/text");
	assert!(got.error.is_none(), "{got:?}");
	assert_eq!(got.texts[0].0, format!("{PARIS}{}", want.text));

	// Streamed, the chunks' log-probabilities add up to the whole answer's: completions with a
	// stop sequence (text held back while its tokens' scores go out) and chat on the adapter.
	let full = generate(&model, &tokenizer, None, &greedy(PARIS, 16)).unwrap().text;
	let stop: String = full.chars().skip(full.chars().count() / 2).take(5).collect();
	let body = json!({"prompt": PARIS, "max_tokens": 16, "temperature": 0, "logprobs": 2,
		"stop": stop});
	let (status, whole) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{whole}");
	assert_eq!(whole["choices"][0]["finish_reason"], "stop");
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "text_completion", "/text");
	assert_eq!(got.texts[0].0, whole["choices"][0]["text"].as_str().unwrap());
	let mut joined = json!({"tokens": [], "token_logprobs": [], "top_logprobs": [],
		"text_offset": []});
	for logprobs in chunk_logprobs(&events) {
		for (key, values) in joined.as_object_mut().unwrap() {
			let more = logprobs[key.as_str()].as_array().unwrap_or_else(|| panic!("{logprobs}"));
			values.as_array_mut().unwrap().extend(more.iter().cloned());
		}
	}
	assert_eq!(joined, whole["choices"][0]["logprobs"]);
	let body = json!({"messages": messages, "max_tokens": 6, "temperature": 0, "model": "tuned",
		"logprobs": true, "top_logprobs": 2});
	let (status, whole) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{whole}");
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let content: Vec<Value> =
		chunk_logprobs(&events).flat_map(|l| l["content"].as_array().unwrap().clone()).collect();
	assert_eq!(json!(content), whole["choices"][0]["logprobs"]["content"]);
	assert_eq!(content.len(), 6);

	let refused = |path: &str, body: Value, says: &str| refused_at(address, path, body, says);
	let completions = "/v1/completions";
	let chat = "/v1/chat/completions";
	refused(completions, json!({"prompt": "x", "logprobs": 21}), "at most 20");
	refused(completions, json!({"prompt": "x", "logprobs": true}), "not a count");
	let streamed_echo = json!({"prompt": "x", "logprobs": 1, "stream": true, "echo": true});
	refused(completions, streamed_echo, "not streamed");
	refused(completions, json!({"prompt": "x", "top_logprobs": 1}), "use logprobs");
	refused(chat, json!({"messages": messages, "top_logprobs": 2}), "only with logprobs");
	refused(chat, json!({"messages": messages, "logprobs": 3}), "not true or false");
	refused(chat, json!({"messages": messages, "logprobs": true, "top_logprobs": 21}), "at most");
}

/// A chat that does not say `max_tokens` may use the rest of the context (here the KV cache's
/// 96 tokens, fewer than the model's 8192, which `/v1/models` reports); completions keep
/// OpenAI's 16.
#[test]
fn a_chat_without_max_tokens_may_take_the_rest_of_the_context() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let blocks = 6;
	let block_size = KvCacheConfig::DEFAULT_BLOCK_SIZE;
	let config = EngineConfig {
		kv_cache_bytes: blocks * KvCacheConfig::bytes_per_block(&model.config, block_size),
		..EngineConfig::default()
	};
	let capacity = blocks * block_size;
	let address = start(model, tokenizer.clone(), Vec::new(), config);
	let (status, text) = get(address, "/v1/models");
	assert_eq!(status, 200, "{text}");
	let models: Value = serde_json::from_str(&text).unwrap();
	assert_eq!(models["data"][0]["max_model_len"], capacity);

	let messages = json!([{"role": "user", "content": "Write a long story about a dragon."}]);
	let (status, answer) =
		post(address, "/v1/chat/completions", &json!({"messages": messages, "temperature": 0}));
	assert_eq!(status, 200, "{answer}");
	let usage = &answer["usage"];
	let (prompt, completion) =
		(usage["prompt_tokens"].as_u64().unwrap(), usage["completion_tokens"].as_u64().unwrap());
	assert!(completion > 16, "{answer}");
	match answer["choices"][0]["finish_reason"].as_str() {
		Some("length") => assert_eq!(prompt + completion, capacity as u64, "{answer}"),
		_ => assert!(prompt + completion <= capacity as u64, "{answer}"),
	}
	let body = json!({"messages": messages, "temperature": 0, "max_completion_tokens": 5});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["usage"]["completion_tokens"], 5);
	let body = json!({"prompt": "Once upon a time, a dragon", "temperature": 0});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["usage"]["completion_tokens"], 16, "{answer}");
	// A conversation that fills the context is refused as too long, not answered with nothing.
	let long = "dragon ".repeat(capacity);
	let body = json!({"messages": [{"role": "user", "content": long}]});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 400, "{answer}");
}

/// OpenAI's presence and frequency penalties and vLLM's `ignore_eos` and `stop_token_ids` are
/// the library's; what is not served (a logit bias, tools, ...) is refused, not ignored.
#[test]
fn penalties_ignore_eos_and_stop_tokens_are_the_librarys_and_the_rest_is_refused() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let alone = |request: &GenerationRequest| generate(&model, &tokenizer, None, request).unwrap();
	let plain = alone(&greedy(PARIS, 24));

	// Penalties change the greedy answer, as the library's do.
	let mut request = greedy(PARIS, 24);
	request.sampling.frequency_penalty = 1.5;
	request.sampling.presence_penalty = 0.5;
	let want = alone(&request);
	assert_ne!(want.tokens, plain.tokens, "the penalties change the greedy answer");
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0,
		"frequency_penalty": 1.5, "presence_penalty": 0.5});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/text");

	// An answer that ends early goes on to max_tokens with ignore_eos.
	let messages = json!([{"role": "user", "content": "Say hi."}]);
	let chat = render(&tokenizer, &messages);
	assert_eq!(alone(&greedy(&chat, 48)).finish_reason, FinishReason::Eos);
	let want = alone(&GenerationRequest { ignore_eos: true, ..greedy(&chat, 48) });
	assert_eq!((want.tokens.len(), want.finish_reason), (48, FinishReason::Length));
	let body = json!({"messages": messages, "max_tokens": 48, "temperature": 0,
		"ignore_eos": true});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/message/content");
	// The end-of-sequence token generated on the way is left out of the text (vLLM's
	// skip_special_tokens), whole and streamed, or kept when asked.
	let marker = "<|im_end|>";
	assert!(!want.text.contains(marker), "{:?}", want.text);
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(gather(&events, "chat.completion.chunk", "/delta/content").texts[0].0, want.text);
	let keep =
		GenerationRequest { ignore_eos: true, skip_special_tokens: false, ..greedy(&chat, 48) };
	let kept = alone(&keep);
	assert_eq!(kept.tokens, want.tokens);
	assert!(kept.text.contains(marker), "{:?}", kept.text);
	let mut body = body;
	body["skip_special_tokens"] = json!(false);
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &kept, "/message/content");
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(gather(&events, "chat.completion.chunk", "/delta/content").texts[0].0, kept.text);

	// A stop token: the text ends before its first occurrence.
	let stop = plain.tokens[3];
	let at = plain.tokens.iter().position(|&t| t == stop).unwrap();
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0,
		"stop_token_ids": [stop]});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	assert_eq!(choice["text"], tokenizer.decode(&plain.tokens[..at]).unwrap());
	assert_eq!(choice["finish_reason"], "stop");
	assert_eq!(answer["usage"]["completion_tokens"], at + 1);

	let refused = |body: Value, says: &str| refused_at(address, "/v1/completions", body, says);
	refused(json!({"prompt": "x", "presence_penalty": 2.5}), "presence_penalty");
	refused(json!({"prompt": "x", "frequency_penalty": -3}), "frequency_penalty");
	refused(json!({"prompt": "x", "stop_token_ids": [model.config.vocab_size]}), "vocabulary");
	refused(json!({"prompt": "x", "best_of": 3}), "best_of: not served");
	refused(json!({"prompt": "x", "suffix": "end"}), "suffix: not served");
	// What means "none" passes.
	let body = json!({"prompt": "x", "max_tokens": 1, "logit_bias": {}, "best_of": 1,
		"min_tokens": 0, "suffix": null, "tools": []});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
}

/// Asserts that `body` at `path` answers `want`, whole (its text at `whole_at`) and streamed
/// (at `streamed_at`).
fn assert_whole_and_streamed(
	address: SocketAddr,
	path: &str,
	body: &Value,
	want: &Generation,
	(whole_at, streamed_at): (&str, &str),
) {
	let (status, answer) = post(address, path, body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, want, whole_at);
	let (status, events) = stream(address, path, body);
	assert_eq!(status, 200, "{events:?}");
	let object = match path {
		"/v1/completions" => "text_completion",
		_ => "chat.completion.chunk",
	};
	let streamed = gather(&events, object, streamed_at);
	assert_eq!(streamed.error, None);
	assert_eq!(streamed.texts[0].0, want.text, "{body}");
	assert_eq!(streamed.reasons[0].as_deref(), Some(reason(want)));
}

/// A chat template of this test's own: ChatML after the beginning of sequence, with Qwen3's
/// `enable_thinking` (false: an empty thought opens the answer).
const THINKING_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role \
	}}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n\
	{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}\
	{% endif %}";

/// The real model served with a tokenizer that adds a beginning of sequence (SmolLM2's adds
/// none, so there these cannot fail) and a template that reads a variable of its own: over
/// HTTP, whole and streamed, against the library on token ids written here, a completion's
/// prompt has the BOS, or not with `add_special_tokens: false`, on `/tokenize` too;
/// `truncate_prompt_tokens` keeps it first; `chat_template_kwargs` reaches the template; a
/// chat's prompt has one BOS, the template's; `echo` repeats the continued message in each of
/// `n` choices, streamed too.
#[test]
fn a_bos_and_template_keywords_are_served_as_asked() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let mut own = (*tokenizer).clone();
	let bos = tokenizer.special_token("<|endoftext|>").unwrap();
	(own.bos, own.add_bos, own.chat_template) = (Some(bos), true, Some(THINKING_TEMPLATE.into()));
	let tokenizer = Arc::new(own);
	let address = start(model.clone(), tokenizer.clone(), Vec::new(), EngineConfig::default());
	let alone = |prompt: Vec<u32>| {
		let request = GenerationRequest { prompt: Prompt::Tokens(prompt), ..greedy("", 8) };
		generate(&model, &tokenizer, None, &request).unwrap()
	};
	let (completion, chat) = (("/text", "/text"), ("/message/content", "/delta/content"));
	let tokens = |body: Value| -> Vec<u32> {
		let (status, answer) = post(address, "/tokenize", &body);
		assert_eq!(status, 200, "{answer}");
		serde_json::from_value(answer["tokens"].clone()).unwrap()
	};

	// A completion's text gets the BOS unless asked not to.
	let text = tokenizer.encode_continuation(PARIS).unwrap();
	assert_ne!(text[0], bos);
	let with_bos: Vec<u32> = [bos].into_iter().chain(text.iter().copied()).collect();
	assert_eq!(tokens(json!({"prompt": PARIS})), with_bos);
	assert_eq!(tokens(json!({"prompt": PARIS, "add_special_tokens": false})), text);
	let mut body = json!({"prompt": PARIS, "max_tokens": 8, "temperature": 0});
	let want = alone(with_bos.clone());
	assert_whole_and_streamed(address, "/v1/completions", &body, &want, completion);
	body["add_special_tokens"] = json!(false);
	let without = alone(text.clone());
	assert_eq!(without.prompt_tokens, text);
	assert_whole_and_streamed(address, "/v1/completions", &body, &without, completion);
	// Cut to its last 3 tokens: the BOS and the text's last 2; without the BOS, the last 3.
	let mut body = json!({"prompt": PARIS, "max_tokens": 8, "temperature": 0,
		"truncate_prompt_tokens": 3});
	let last = |n: usize| text[text.len() - n..].to_vec();
	let want = alone([bos].into_iter().chain(last(2)).collect());
	assert_whole_and_streamed(address, "/v1/completions", &body, &want, completion);
	body["add_special_tokens"] = json!(false);
	assert_whole_and_streamed(address, "/v1/completions", &body, &alone(last(3)), completion);

	// A chat: the template's BOS only; the keyword reaches it.
	let question = "What is the capital of France?";
	let messages = json!([{"role": "user", "content": question}]);
	let opened =
		format!("<|endoftext|><|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
	let thoughtless = format!("{opened}<think>\n\n</think>\n\n");
	let (opened, thoughtless) =
		(tokenizer.encode(&opened).unwrap(), tokenizer.encode(&thoughtless).unwrap());
	assert_eq!(opened.iter().filter(|&&t| t == bos).count(), 1);
	assert_eq!(tokens(json!({"messages": messages})), opened);
	let keywords = json!({"enable_thinking": false});
	let body = json!({"messages": messages, "chat_template_kwargs": keywords});
	assert_eq!(tokens(body), thoughtless);
	let thinking = json!({"messages": messages, "chat_template_kwargs": {"enable_thinking": true}});
	assert_eq!(tokens(thinking), opened);
	let mut body = json!({"messages": messages, "max_tokens": 8, "temperature": 0});
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &alone(opened), chat);
	body["chat_template_kwargs"] = keywords.clone();
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &alone(thoughtless), chat);

	// Echo of a continued message, in each of two choices, whole and streamed.
	let messages = json!([{"role": "user", "content": question},
		{"role": "assistant", "content": PARIS}]);
	let head = format!(
		"<|endoftext|><|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{PARIS}"
	);
	let want = alone(tokenizer.encode(&head).unwrap());
	let body = json!({"messages": messages, "max_tokens": 8, "temperature": 0, "n": 2,
		"echo": true, "add_generation_prompt": false, "continue_final_message": true});
	let echoed = format!("{PARIS}{}", want.text);
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let streamed = gather(&events, "chat.completion.chunk", "/delta/content");
	assert_eq!(streamed.texts.len(), 2);
	for i in 0..2 {
		assert_eq!(answer["choices"][i]["message"]["content"], echoed.as_str(), "{answer}");
		assert_eq!(streamed.texts[i].0, echoed);
	}
}

/// vLLM's request extras are the library's, whole and streamed: `include_stop_str_in_output`
/// (a stop sequence or token kept in the text), `allowed_token_ids`, `bad_words` (spelled as
/// vLLM spells them), `truncate_prompt_tokens` (the prompt's last tokens), and a chat's
/// `add_generation_prompt`, `continue_final_message` (the prompt is the conversation in
/// ChatML, written here by hand, cut after the last message's text) and
/// `chat_template_kwargs`; a stream that ends at a stop token is the whole answer's text;
/// `cache_salt` keeps a prompt's cached blocks to requests of the same salt. What vLLM has and
/// this worker does not serve is refused, not ignored.
#[test]
fn vllm_request_extras_are_the_librarys_or_refused() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let alone = |request: &GenerationRequest| generate(&model, &tokenizer, None, request).unwrap();
	let completion = ("/text", "/text");
	let plain = alone(&greedy(PARIS, 24));

	// A stop sequence (a word of the answer) cut from the text, or kept in it.
	let stop = tokenizer.decode(&plain.tokens[3..4]).unwrap();
	let cut = alone(&GenerationRequest { stop: vec![stop.clone()], ..greedy(PARIS, 24) });
	let kept = alone(&GenerationRequest {
		stop: vec![stop.clone()],
		include_stop_str_in_output: true,
		..greedy(PARIS, 24)
	});
	assert_eq!((cut.finish_reason, kept.finish_reason), (FinishReason::Stop, FinishReason::Stop));
	assert_eq!(format!("{}{stop}", cut.text), kept.text);
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0, "stop": [stop]});
	assert_whole_and_streamed(address, "/v1/completions", &body, &cut, completion);
	let mut body = body;
	body["include_stop_str_in_output"] = json!(true);
	assert_whole_and_streamed(address, "/v1/completions", &body, &kept, completion);

	// A stop token that is not special: its text is left out, streamed too, or kept.
	let token = plain.tokens[3];
	let at = plain.tokens.iter().position(|&t| t == token).unwrap();
	let request = GenerationRequest { stop_token_ids: vec![token], ..greedy(PARIS, 24) };
	let cut = alone(&request);
	assert_eq!(cut.text, tokenizer.decode(&plain.tokens[..at]).unwrap());
	let kept = alone(&GenerationRequest { include_stop_str_in_output: true, ..request });
	assert_eq!(kept.text, tokenizer.decode(&plain.tokens[..=at]).unwrap());
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0,
		"stop_token_ids": [token]});
	assert_whole_and_streamed(address, "/v1/completions", &body, &cut, completion);
	let mut body = body;
	body["include_stop_str_in_output"] = json!(true);
	assert_whole_and_streamed(address, "/v1/completions", &body, &kept, completion);

	// allowed_token_ids: the greedy answer without its third token, greedy and sampled.
	let eos = tokenizer.eos.unwrap();
	let allowed: Vec<u32> = plain
		.tokens
		.iter()
		.copied()
		.filter(|&t| t != plain.tokens[2])
		.chain([eos, tokenizer.encode_continuation(" Lyon").unwrap()[0]])
		.collect();
	let mut request = greedy(PARIS, 24);
	request.sampling.allowed_token_ids = allowed.clone();
	let want = alone(&request);
	assert!(want.tokens.iter().all(|t| allowed.contains(t)), "{:?}", want.tokens);
	assert_ne!(want.tokens, plain.tokens);
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0,
		"allowed_token_ids": allowed});
	assert_whole_and_streamed(address, "/v1/completions", &body, &want, completion);
	let sampled = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 1.5, "seed": 4,
		"n": 3, "allowed_token_ids": allowed, "logprobs": 0});
	let (status, answer) = post(address, "/v1/completions", &sampled);
	assert_eq!(status, 200, "{answer}");
	for choice in answer["choices"].as_array().unwrap() {
		let texts = choice["logprobs"]["tokens"].as_array().unwrap();
		let spelled: Vec<String> =
			allowed.iter().map(|&t| tokenizer.decode(&[t]).unwrap()).collect();
		assert!(texts.iter().all(|t| spelled.iter().any(|s| s == t.as_str().unwrap())), "{choice}");
	}

	// bad_words: a word of the answer, alone and after a space, as vLLM spells it.
	let word = tokenizer.decode(&plain.tokens[..1]).unwrap().trim().to_string();
	let (alone_word, spaced) = (
		tokenizer.encode_continuation(&word).unwrap(),
		tokenizer.encode_continuation(&format!(" {word}")).unwrap(),
	);
	// One token each, two tokens: vLLM bans both spellings.
	assert_eq!(spaced, plain.tokens[..1], "the answer's first token is a word after a space");
	assert_eq!(alone_word.len(), 1, "{word:?} alone is one token");
	assert_ne!(alone_word, spaced);
	let mut request = greedy(PARIS, 24);
	request.sampling.bad_words = vec![alone_word, spaced.clone()];
	let want = alone(&request);
	assert_ne!(want.tokens[0], plain.tokens[0]);
	assert!(!want.tokens.windows(spaced.len()).any(|w| w == spaced), "{:?}", want.tokens);
	let body = json!({"prompt": PARIS, "max_tokens": 24, "temperature": 0, "bad_words": [word]});
	assert_whole_and_streamed(address, "/v1/completions", &body, &want, completion);

	// truncate_prompt_tokens: the prompt's last tokens.
	let prompt = tokenizer.encode(PARIS).unwrap();
	let last = prompt[prompt.len() - 3..].to_vec();
	let want = alone(&GenerationRequest { prompt: Prompt::Tokens(last), ..greedy("", 8) });
	let body = json!({"prompt": PARIS, "max_tokens": 8, "temperature": 0,
		"truncate_prompt_tokens": 3});
	assert_whole_and_streamed(address, "/v1/completions", &body, &want, completion);
	let body = json!({"prompt": PARIS, "max_tokens": 8, "temperature": 0,
		"truncate_prompt_tokens": 100});
	assert_whole_and_streamed(
		address,
		"/v1/completions",
		&body,
		&alone(&greedy(PARIS, 8)),
		completion,
	);

	// A chat that goes on with its last message, or ends where it ends.
	let chat = ("/message/content", "/delta/content");
	let messages = json!([{"role": "user", "content": "What is the capital of France?"},
		{"role": "assistant", "content": "The capital of France is"}]);
	let head = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
	            Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of \
	            France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is";
	let want = alone(&greedy(head, 12));
	let body = json!({"messages": messages, "max_tokens": 12, "temperature": 0,
		"add_generation_prompt": false, "continue_final_message": true});
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &want, chat);
	let tokens = |body: Value| {
		let (status, answer) = post(address, "/tokenize", &body);
		assert_eq!(status, 200, "{answer}");
		serde_json::from_value::<Vec<u32>>(answer["tokens"].clone()).unwrap()
	};
	// With echo, the message continued comes back whole, streamed too (in the role's chunk).
	let mut echoed = want.clone();
	echoed.text = format!("The capital of France is{}", want.text);
	let mut body = body;
	body["echo"] = json!(true);
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &echoed, chat);
	// Its log-probabilities are the answer's tokens' only.
	body["logprobs"] = json!(true);
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let scored = answer["choices"][0]["logprobs"]["content"].as_array().unwrap();
	assert_eq!(scored.len(), want.tokens.len());
	let tokenize = json!({"messages": messages, "add_generation_prompt": false,
		"continue_final_message": true});
	assert_eq!(tokens(tokenize), tokenizer.encode(head).unwrap());
	let closed = format!("{head}<|im_end|>\n");
	let want = alone(&greedy(&closed, 12));
	let body = json!({"messages": messages, "max_tokens": 12, "temperature": 0,
		"add_generation_prompt": false});
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &want, chat);
	assert_eq!(
		tokens(json!({"messages": messages, "add_generation_prompt": false})),
		tokenizer.encode(&closed).unwrap()
	);
	// Keywords reach the template (`chat::tests`); SmolLM2's reads none, so they change
	// nothing here.
	let want = alone(&greedy(&format!("{closed}<|im_start|>assistant\n"), 12));
	let body = json!({"messages": messages, "max_tokens": 12, "temperature": 0,
		"chat_template_kwargs": {"enable_thinking": false}});
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &want, chat);
	// Echo repeats only the assistant's message: after a user's, nothing.
	let asked = json!([{"role": "user", "content": "What is the capital of France?"}]);
	let opened = format!(
		"{}<|im_start|>assistant\n",
		&closed[..closed.find("<|im_start|>assistant").unwrap()]
	);
	let want = alone(&greedy(&opened, 12));
	let body = json!({"messages": asked, "max_tokens": 12, "temperature": 0, "echo": true});
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &want, chat);
	// Without an assistant's turn opened the answer is in the last message's role: echoed.
	let user_closed = &closed[..closed.find("<|im_start|>assistant").unwrap()];
	let mut want = alone(&greedy(user_closed, 12));
	want.text = format!("What is the capital of France?{}", want.text);
	let body = json!({"messages": asked, "max_tokens": 12, "temperature": 0, "echo": true,
		"add_generation_prompt": false});
	assert_whole_and_streamed(address, "/v1/chat/completions", &body, &want, chat);

	// cache_salt: a prompt's cached blocks are shared only with requests of the same salt, or
	// of none.
	let long = "Salted prompts: ".repeat(12);
	assert!(tokenizer.encode(&long).unwrap().len() >= 48);
	let reused_by = |salt: Value| {
		let before = metric(address, "tokens_reused_total");
		let body = json!({"prompt": long, "max_tokens": 1, "cache_salt": salt});
		let (status, answer) = post(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{answer}");
		let reused = metric(address, "tokens_reused_total") - before;
		// The answer says how much of its prompt came from the cache.
		assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], reused);
		reused
	};
	assert_eq!(reused_by(json!("a")), 0);
	assert_eq!(reused_by(json!("b")), 0, "another salt shares nothing");
	assert_eq!(reused_by(Value::Null), 0, "nor does none");
	assert!(reused_by(json!("a")) >= 32, "the same salt shares the prompt's blocks");
	assert!(reused_by(Value::Null) >= 32);

	let refused = |body: Value, says: &str| refused_at(address, "/v1/completions", body, says);
	let refused_chat =
		|body: Value, says: &str| refused_at(address, "/v1/chat/completions", body, says);
	refused(json!({"prompt": "x", "allowed_token_ids": []}), "allows nothing");
	let outside = model.config.vocab_size;
	refused(json!({"prompt": "x", "allowed_token_ids": [outside]}), "vocabulary");
	refused(json!({"prompt": "x", "bad_words": [""]}), "no tokens");
	for k in [0, -2, 1_000_000] {
		refused(json!({"prompt": "x", "truncate_prompt_tokens": k}), "truncate_prompt_tokens");
	}
	refused(json!({"prompt": "x", "continue_final_message": true}), "on chat only");
	refused(json!({"prompt": "x", "add_generation_prompt": false}), "on chat only");
	refused(json!({"prompt": "x", "chat_template_kwargs": {}}), "on chat only");
	refused_chat(json!({"messages": messages, "continue_final_message": true}), "not both");
	refused(json!({"prompt": "x", "cache_salt": ""}), "empty salt");
	refused_chat(json!({"messages": messages, "add_special_tokens": true}), "add_special_tokens");
	let body = json!({"messages": messages, "add_special_tokens": true});
	refused_at(address, "/tokenize", body, "add_special_tokens");
	let body = json!({"messages": messages, "chat_template": "{{ messages }}"});
	refused_at(address, "/tokenize", body, "chat_template: not served");
	assert_eq!(
		tokens(json!({"prompt": PARIS, "add_special_tokens": false})),
		tokenizer.encode_continuation(PARIS).unwrap()
	);
	for field in ["add_generation_prompt", "continue_final_message", "chat_template_kwargs"] {
		let mut body = json!({"prompt": "x"});
		body[field] = if field == "chat_template_kwargs" { json!({}) } else { json!(false) };
		refused_at(address, "/tokenize", body, "only with messages");
	}
	let empty = json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]);
	refused_chat(
		json!({"messages": empty, "add_generation_prompt": false, "continue_final_message": true}),
		"no text",
	);
	refused_chat(
		json!({"messages": messages, "chat_template_kwargs": {"messages": []}}),
		"set by the request",
	);
	let documents = json!([{"text": "Paris is the capital of France."}]);
	refused_chat(
		json!({"messages": messages, "documents": documents, "truncate_prompt_tokens": 8}),
		"sources would be cut",
	);
	refused_chat(
		json!({"messages": messages, "documents": documents, "add_generation_prompt": false}),
		"assistant's turn opened",
	);
	for (field, value) in [
		("use_beam_search", json!(true)),
		("length_penalty", json!(2.0)),
		("priority", json!(1)),
		("return_tokens_as_token_ids", json!(true)),
		("guided_whitespace_pattern", json!(" ?")),
		("logits_processors", json!(["a.b"])),
		("prompt_embeds", json!("AAAA")),
		("chat_template", json!("{{ messages }}")),
	] {
		let mut body = json!({"prompt": "x"});
		body[field] = value;
		refused(body, field);
	}
	let (status, answer) = stream(
		address,
		"/v1/completions",
		&json!({"prompt": "x", "stream_options": {"continuous_usage_stats": true}}),
	);
	assert_eq!(status, 400, "{answer:?}");
	assert!(answer[0]["error"]["message"].as_str().unwrap().contains("continuous_usage_stats"));
	// What means "none" passes.
	let body = json!({"prompt": "x", "max_tokens": 1, "use_beam_search": false,
		"length_penalty": 1.0, "priority": 0, "return_tokens_as_token_ids": false,
		"logits_processors": [], "include_stop_str_in_output": false, "add_special_tokens": false});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
}

/// vLLM's `prompt_logprobs`: at each prompt position after the first, the prompt token's
/// log-probability (the library's) and rank, and the `k` most likely tokens ranked 1 to `k`;
/// on a completion's choices or, for a chat, at the top; beside `echo` with fewer alternatives.
#[test]
fn vllm_prompt_logprobs_carry_ranks_and_the_most_likely_tokens() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let request = GenerationRequest { prompt_logprobs: Some(3), ..greedy(PARIS, 2) };
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	let scores = want.prompt_logprobs.as_ref().unwrap();
	let check = |positions: &Value, prompt: &[u32]| {
		let positions = positions.as_array().unwrap_or_else(|| panic!("{positions}"));
		assert_eq!(positions.len(), prompt.len());
		assert_eq!(positions[0], Value::Null);
		for (i, &token) in prompt.iter().enumerate().skip(1) {
			let position = positions[i].as_object().unwrap();
			let own = &position[&token.to_string()];
			close(&own["logprob"], scores.logprobs[i - 1]);
			assert_eq!(own["decoded_token"], tokenizer.decode(&[token]).unwrap());
			let rank = own["rank"].as_u64().unwrap();
			let top = &scores.top_logprobs[i - 1];
			for (r, (t, logprob)) in top.iter().enumerate() {
				let entry = &position[&t.to_string()];
				close(&entry["logprob"], *logprob);
				assert_eq!(entry["rank"], r + 1);
			}
			// The prompt token's rank says where it stands among the most likely.
			match top.iter().position(|(t, _)| *t == token) {
				Some(r) => assert_eq!(rank, r as u64 + 1),
				None => {
					assert!(rank > 3, "rank {rank} but not among the 3 most likely");
					assert!(scores.logprobs[i - 1] <= top[2].1);
				}
			}
			let extra = usize::from(top.iter().all(|(t, _)| *t != token));
			assert_eq!(position.len(), 3 + extra, "{position:?}");
		}
	};
	let body = json!({"prompt": PARIS, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 3});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/text");
	check(&answer["choices"][0]["prompt_logprobs"], &want.prompt_tokens);
	assert!(scores.ranks.iter().any(|&r| r > 3), "some prompt token is unlikely: {scores:?}");

	// Beside echo with 1 alternative: echo's stay at 1, vLLM's at 3.
	let body = json!({"prompt": PARIS, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 3,
		"echo": true, "logprobs": 1});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	check(&answer["choices"][0]["prompt_logprobs"], &want.prompt_tokens);
	let echoed = answer["choices"][0]["logprobs"]["top_logprobs"].as_array().unwrap();
	assert!(echoed[1..].iter().all(|top| top.as_object().unwrap().len() == 1), "{echoed:?}");

	// Without echo, the choice's logprobs are the generated tokens' alone.
	let body = json!({"prompt": PARIS, "max_tokens": 2, "temperature": 0, "prompt_logprobs": 0,
		"logprobs": 1});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let logprobs = &answer["choices"][0]["logprobs"];
	assert_eq!(logprobs["tokens"].as_array().unwrap().len(), 2, "{logprobs}");
	assert_eq!(logprobs["text_offset"][0], 0);
	close(&logprobs["token_logprobs"][0], want.logprobs[0]);

	// A chat's are the answer's, at the top.
	let messages = json!([{"role": "user", "content": "Say hi."}]);
	let chat = render(&tokenizer, &messages);
	let request = GenerationRequest { prompt_logprobs: Some(3), ..greedy(&chat, 2) };
	let want_chat = generate(&model, &tokenizer, None, &request).unwrap();
	let body = json!({"messages": messages, "max_tokens": 2, "temperature": 0,
		"prompt_logprobs": 0});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let positions = answer["prompt_logprobs"].as_array().unwrap();
	assert_eq!(positions.len(), want_chat.prompt_tokens.len());
	for (i, &token) in want_chat.prompt_tokens.iter().enumerate().skip(1) {
		let position = positions[i].as_object().unwrap();
		assert_eq!(position.len(), 1, "prompt_logprobs 0: the prompt token's alone");
		let own = &position[&token.to_string()];
		close(&own["logprob"], want_chat.prompt_logprobs.as_ref().unwrap().logprobs[i - 1]);
		assert_eq!(own["rank"], want_chat.prompt_logprobs.as_ref().unwrap().ranks[i - 1]);
	}

	let refused = |body: Value, says: &str| refused_at(address, "/v1/completions", body, says);
	refused(json!({"prompt": "x", "prompt_logprobs": 21}), "at most 20");
	refused(json!({"prompt": "x", "prompt_logprobs": -1}), "not a count");
	refused(json!({"prompt": "x", "prompt_logprobs": 1, "stream": true}), "not streamed");
}

/// OpenAI's `logit_bias` and `response_format: json_object`, vLLM's `min_tokens`: each answer is
/// the library's for the same request, and does what the option promises on the real model.
#[test]
fn logit_bias_min_tokens_and_json_mode_do_what_they_promise() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let alone = |request: &GenerationRequest| generate(&model, &tokenizer, None, request).unwrap();
	let plain = alone(&greedy(PARIS, 12));

	// -100 keeps the greedy first token out; +100 puts another first. The log-probabilities
	// reported stay the model's.
	let (first, forced) = (plain.tokens[0], tokenizer.encode(" banana").unwrap()[0]);
	for (token, bias) in [(first, -100.0), (forced, 100.0)] {
		let mut request = greedy(PARIS, 12);
		request.sampling.logit_bias = vec![(token, bias)];
		let want = alone(&request);
		assert_eq!(want.tokens[0] == token, bias > 0.0, "{bias} on {token}: {:?}", want.tokens);
		let body = json!({"prompt": PARIS, "max_tokens": 12, "temperature": 0, "logprobs": 0,
			"logit_bias": {token.to_string(): bias}});
		let (status, answer) = post(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{answer}");
		assert_answers(&answer, &want, "/text");
		let reported = &answer["choices"][0]["logprobs"]["token_logprobs"][0];
		close(reported, want.logprobs[0]);
		if bias > 0.0 {
			assert!(want.logprobs[0] < -5.0, "the model's own log-probability of a forced token");
		}
	}

	// Forced to a byte that is part of a character: chat's logprobs carry the token's own
	// byte (its text alone is U+FFFD).
	let bytes = tokenizer.token_bytes();
	let lead = (0..bytes.len()).find(|&t| bytes.get(t) == Some(&[0xc3][..])).unwrap();
	let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
		"temperature": 0, "logprobs": true, "logit_bias": {lead.to_string(): 100}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let entry = &answer["choices"][0]["logprobs"]["content"][0];
	assert_eq!((&entry["token"], &entry["bytes"]), (&json!("\u{FFFD}"), &json!([0xc3])));

	// An answer that ends at once goes on to min_tokens, then ends as it likes; a stop
	// sequence inside the first min_tokens tokens does not count.
	let messages = json!([{"role": "user", "content": "Say hi."}]);
	let chat = render(&tokenizer, &messages);
	let short = alone(&greedy(&chat, 64));
	assert_eq!(short.finish_reason, FinishReason::Eos);
	let min_tokens = short.tokens.len() + 6;
	let want = alone(&GenerationRequest { min_tokens, ..greedy(&chat, 64) });
	assert!(want.tokens.len() >= min_tokens, "{} tokens", want.tokens.len());
	assert!(!want.tokens[..min_tokens - 1].contains(&tokenizer.eos.unwrap()));
	assert!(want.text.starts_with(&short.text), "{:?} then {:?}", short.text, want.text);
	let body = json!({"messages": messages, "max_tokens": 64, "temperature": 0,
		"min_tokens": min_tokens});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/message/content");
	let early = short.text.chars().take(3).collect::<String>();
	let stopped =
		alone(&GenerationRequest { min_tokens, stop: vec![early.clone()], ..greedy(&chat, 64) });
	assert_ne!(stopped.text, "", "{early:?} in the held text does not stop the output");
	assert!(stopped.text.starts_with(&short.text), "{:?}", stopped.text);

	// JSON mode: whatever is sampled, the answer is one JSON object (or, cut by max_tokens, the
	// start of one); greedy answers are the library's.
	let messages = json!([{"role": "user",
		"content": "Give me a JSON object with a cat's name and age."}]);
	let chat = render(&tokenizer, &messages);
	let json_mode = |seed: u64, temperature: f32| GenerationRequest {
		response_format: ResponseFormat::json_object(),
		sampling: SamplingParams { temperature, seed, ..Default::default() },
		..greedy(&chat, 96)
	};
	let want = alone(&json_mode(0, 0.0));
	assert_eq!(want.finish_reason, FinishReason::Eos, "{:?}", want.text);
	let object: Value = serde_json::from_str(&want.text)
		.unwrap_or_else(|e| panic!("{e}: {:?} is not JSON", want.text));
	assert!(object.is_object(), "{object}");
	let body = json!({"messages": messages, "max_tokens": 96, "temperature": 0,
		"response_format": {"type": "json_object"}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/message/content");
	let any = JsonGrammar::any_object();
	for seed in 0..4 {
		let sampled = alone(&json_mode(seed, 1.2));
		let text = sampled.text.as_str();
		match sampled.finish_reason {
			FinishReason::Eos => {
				let value: Value = serde_json::from_str(text)
					.unwrap_or_else(|e| panic!("seed {seed}: {e}: {text:?} is not JSON"));
				assert!(value.is_object(), "{value}");
			}
			_ => assert!(
				JsonState::new(&any).accepts(&any, text.as_bytes()).is_some(),
				"seed {seed}: {text:?} is not the start of an object"
			),
		}
	}
	// Without JSON mode the same prompt does not answer in JSON: the mask did the work.
	let free = alone(&greedy(&chat, 96));
	assert!(serde_json::from_str::<Value>(&free.text).is_err(), "{:?}", free.text);

	// A JSON schema, in OpenAI's, LoRAX's and vLLM's forms: every answer that ends is what the
	// schema describes.
	let schema = json!({"type": "object", "properties": {
			"name": {"type": "string"},
			"age": {"type": "integer"},
			"colors": {"type": "array", "maxItems": 3,
				"items": {"enum": ["black", "white", "orange", "grey"]}},
			"indoor": {"type": ["boolean", "null"]}},
		"required": ["name", "age"], "additionalProperties": false});
	let follows = |text: &str| {
		let cat: Value =
			serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?} is not JSON"));
		let cat = cat.as_object().unwrap_or_else(|| panic!("{text:?} is not an object"));
		assert!(cat["name"].is_string() && cat["age"].is_i64(), "{text:?}");
		let colors = cat.get("colors").map_or(&[][..], |c| c.as_array().unwrap());
		assert!(colors.len() <= 3, "{text:?}");
		for color in colors {
			assert!(["black", "white", "orange", "grey"].contains(&color.as_str().unwrap()));
		}
		assert!(cat.get("indoor").is_none_or(|v| v.is_boolean() || v.is_null()), "{text:?}");
		assert!(cat.keys().all(|k| ["name", "age", "colors", "indoor"].contains(&k.as_str())));
	};
	let grammar = Arc::new(JsonGrammar::from_schema(&schema).unwrap());
	let schema_mode = |seed: u64, temperature: f32| GenerationRequest {
		response_format: ResponseFormat::Json(grammar.clone()),
		sampling: SamplingParams { temperature, seed, ..Default::default() },
		..greedy(&chat, 96)
	};
	let want = alone(&schema_mode(0, 0.0));
	assert_eq!(want.finish_reason, FinishReason::Eos, "{:?}", want.text);
	follows(&want.text);
	let openai = json!({"type": "json_schema",
		"json_schema": {"name": "cat", "strict": true, "schema": schema}});
	let lorax = json!({"type": "json_object", "schema": schema});
	for (field, format) in
		[("response_format", openai), ("response_format", lorax), ("guided_json", schema.clone())]
	{
		let mut body = json!({"messages": messages, "max_tokens": 96, "temperature": 0});
		body[field] = format;
		let (status, answer) = post(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{answer}");
		assert_answers(&answer, &want, "/message/content");
	}
	let mut ended = 0;
	for seed in 0..6 {
		let sampled = alone(&schema_mode(seed, 1.0));
		if sampled.finish_reason == FinishReason::Eos {
			follows(&sampled.text);
			ended += 1;
		} else {
			let state = JsonState::new(&grammar).accepts(&grammar, sampled.text.as_bytes());
			assert!(state.is_some(), "seed {seed}: {:?} is off the schema", sampled.text);
		}
	}
	assert!(ended >= 3, "{ended} of 6 sampled answers ended within 96 tokens");

	let refused = |path: &str, body: Value, says: &str| refused_at(address, path, body, says);
	let completions = "/v1/completions";
	refused(completions, json!({"prompt": "x", "logit_bias": {"5": 101}}), "logit_bias");
	refused(completions, json!({"prompt": "x", "logit_bias": {"a": 1}}), "not a token id");
	refused(completions, json!({"prompt": "x", "logit_bias": [1]}), "logit_bias");
	let too_far = json!({"prompt": "x", "logit_bias": {model.config.vocab_size.to_string(): 1}});
	refused(completions, too_far, "vocabulary");
	refused(completions, json!({"prompt": "x", "max_tokens": 4, "min_tokens": 5}), "min_tokens");
	let minimum = json!({"type": "json_schema",
		"json_schema": {"name": "x", "schema": {"type": "number", "minimum": 0.5}}});
	refused(
		"/v1/chat/completions",
		json!({"messages": messages, "response_format": minimum}),
		"a bound of 0.5 on a number is not served",
	);
	let both = json!({"messages": messages, "guided_json": {},
		"response_format": {"type": "json_object"}});
	refused("/v1/chat/completions", both, "one at most");
	refused(completions, json!({"prompt": "x", "guided_json": "{not json"}), "not JSON");
	refused(
		completions,
		json!({"prompt": "x", "guided_regex": "(a"}),
		"guided_regex: regex parse error",
	);
	refused(completions, json!({"prompt": "x", "guided_regex": ["a"]}), "a regular expression");
	refused(completions, json!({"prompt": "x", "guided_regex": "a(?=b)"}), "look-around");
	let two = json!({"prompt": "x", "guided_regex": "a", "guided_choice": ["a"]});
	refused(completions, two, "one at most");
	let regex_min = json!({"prompt": "x", "min_tokens": 2, "guided_regex": "a+"});
	refused(completions, regex_min, "min_tokens");
	let regex_tools = json!({"messages": messages, "guided_regex": "a+",
		"tools": weather_tools().1, "tool_choice": "required"});
	refused("/v1/chat/completions", regex_tools, "one or the other");
	refused(
		completions,
		json!({"prompt": "x", "guided_grammar": "root ::= \"a\" |\n  (\"b\""}),
		"guided_grammar: a group not closed at line 2, column 3",
	);
	let left = json!({"prompt": "x", "guided_grammar": "root ::= root \"a\" | \"b\""});
	refused(completions, left, "left-recursive");
	refused(completions, json!({"prompt": "x", "guided_grammar": "?start: \"a\""}), "Lark");
	refused(completions, json!({"prompt": "x", "guided_grammar": 3}), "a grammar in GBNF");
	// A grammar that takes too long to follow at its first token: that request is answered
	// with the reason (the engine goes on serving).
	let mut deep = String::from("root ::= d0\n");
	for i in 0..999 {
		deep.push_str(&format!("d{i} ::= d{} \"!\"\n", i + 1));
	}
	let ways: Vec<String> = (0..250).map(|i| format!("[ -~]{{200}} \"{i}\"")).collect();
	deep.push_str(&format!("d999 ::= {}\n", ways.join(" | ")));
	let slow = json!({"prompt": "x", "max_tokens": 4, "guided_grammar": deep});
	refused(completions, slow, "takes more than 16777216 steps for a token");
	let grammar_min = json!({"prompt": "x", "min_tokens": 2, "guided_grammar": "root ::= \"a\""});
	refused(completions, grammar_min, "min_tokens");
	let outputs = |outputs: Value| json!({"prompt": "x", "structured_outputs": outputs});
	refused(
		completions,
		outputs(json!({"grammar": "root ::= x"})),
		"structured_outputs.grammar: the rule \"x\" (at line 1, column 10) is not defined",
	);
	refused(completions, outputs(json!({"regex": "(a"})), "structured_outputs.regex: regex");
	refused(completions, outputs(json!({"regex": "a", "choice": ["a"]})), "exactly one of");
	refused(completions, outputs(json!({})), "exactly one of");
	refused(completions, outputs(json!({"json_object": false})), "true, or left out");
	let fallback = json!({"regex": "a", "disable_fallback": "x"});
	refused(completions, outputs(fallback), "true or false");
	refused(completions, outputs(json!({"whitespace_pattern": " *"})), "not served");
	refused(completions, outputs(json!({"disable_any_whitespace": true})), "false only");
	refused(completions, outputs(json!({"jsn": {}})), "not a field of structured_outputs");
	refused(completions, outputs(json!(["a"])), "structured_outputs: an object");
	let both = json!({"prompt": "x", "structured_outputs": {"regex": "a"}, "guided_regex": "a"});
	refused(completions, both, "one or the other");
	refused(completions, json!({"prompt": "x", "guided_choice": []}), "1 to 64 choices");
	refused(completions, json!({"prompt": "x", "guided_choice": "a"}), "a list of strings");
	let two = json!({"prompt": "x", "guided_choice": ["a"], "guided_json": {}});
	refused(completions, two, "one at most");
	refused(completions, json!({"prompt": "x", "logit_bias": {"+5": 1}}), "not a token id");
	let json_min =
		json!({"prompt": "x", "min_tokens": 3, "response_format": {"type": "json_object"}});
	refused(completions, json_min, "min_tokens");
	refused(
		completions,
		json!({"prompt": "x", "response_format": {"type": "yaml"}}),
		"response_format",
	);
	refused(
		completions,
		json!({"prompt": "x", "ignore_eos": true,
		"response_format": {"type": "json_object"}}),
		"ignore_eos",
	);
}

/// vLLM's `guided_choice`: the answer is one of the choices exactly, as the library generates
/// it under the same grammar, whole and streamed, greedy and sampled.
#[test]
fn guided_choice_answers_one_of_the_choices_exactly() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let choices = ["London", "Paris", "a city in Europe"].map(String::from);
	let grammar = Arc::new(JsonGrammar::choice(&choices).unwrap());
	let prompt = "Q: What is the capital of France?\nA:";
	for (seed, temperature) in [(0, 0.0), (1, 1.0), (2, 1.0), (3, 1.5)] {
		let request = GenerationRequest {
			response_format: ResponseFormat::Json(grammar.clone()),
			sampling: SamplingParams { temperature, seed, ..Default::default() },
			..greedy(prompt, 16)
		};
		let want = generate(&model, &tokenizer, None, &request).unwrap();
		assert!(choices.contains(&want.text), "{:?}", want.text);
		assert_eq!(want.finish_reason, FinishReason::Eos);
		let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": temperature,
			"seed": seed, "guided_choice": choices});
		let (status, answer) = post(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{answer}");
		assert_answers(&answer, &want, "/text");
		// A text response_format beside it says nothing more.
		let mut body = body;
		body["response_format"] = json!({"type": "text"});
		let (status, events) = stream(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{events:?}");
		assert_eq!(gather(&events, "text_completion", "/text").texts[0].0, want.text);
	}
}

/// JSON schemas with string lengths, a string pattern and integer bounds: every answer, greedy
/// or sampled hot, is what the schema describes (checked by serde_json and the regex crate), as
/// the library generates it under the same grammar.
#[test]
fn schema_strings_keep_their_length_and_pattern_and_integers_their_bounds() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let schema = json!({"type": "object", "properties": {
			"name": {"type": "string", "minLength": 2, "maxLength": 8},
			"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
			"age": {"type": "integer", "minimum": 1, "maximum": 20}},
		"required": ["name", "code", "age"]});
	let code = regex::Regex::new("^[A-Z]{2}-[0-9]{3}$").unwrap();
	let follows = |text: &str| {
		let cat: Value =
			serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?} is not JSON"));
		let name = cat["name"].as_str().unwrap_or_else(|| panic!("{text:?}"));
		assert!((2..=8).contains(&name.chars().count()), "{text:?}");
		assert!(code.is_match(cat["code"].as_str().unwrap()), "{text:?}");
		assert!(cat["age"].as_i64().is_some_and(|age| (1..=20).contains(&age)), "{text:?}");
	};
	let messages = json!([{"role": "user", "content": "Give me a JSON object with a cat's name, a \
		code and its age."}]);
	let chat = render(&tokenizer, &messages);
	let grammar = Arc::new(JsonGrammar::from_schema(&schema).unwrap());
	for (seed, temperature) in [(0, 0.0), (1, 1.0), (2, 1.5), (3, 1.5)] {
		let request = GenerationRequest {
			response_format: ResponseFormat::Json(grammar.clone()),
			sampling: SamplingParams { temperature, seed, ..Default::default() },
			..greedy(&chat, 64)
		};
		let want = generate(&model, &tokenizer, None, &request).unwrap();
		assert_eq!(want.finish_reason, FinishReason::Eos, "{:?}", want.text);
		follows(&want.text);
		let body = json!({"messages": messages, "max_tokens": 64, "temperature": temperature,
			"seed": seed, "response_format": {"type": "json_schema",
				"json_schema": {"name": "cat", "schema": schema}}});
		let (status, answer) = post(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{answer}");
		assert_answers(&answer, &want, "/message/content");
	}
}

/// vLLM's `guided_regex`: the whole answer matches the expression (as the regex crate finds),
/// as the library generates it under the same grammar, whole and streamed, greedy and sampled
/// hot; on chat too.
#[test]
fn guided_regex_answers_match_the_expression_whole() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let pattern = r"(Paris|London), [0-9]{4}(-[0-9]{2}){2}";
	let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
	let grammar = Arc::new(RegexGrammar::new(pattern).unwrap());
	let prompt = "Q: Which city, and on which date?\nA:";
	for (seed, temperature) in [(0, 0.0), (1, 1.0), (2, 1.5), (3, 3.0)] {
		let request = GenerationRequest {
			response_format: ResponseFormat::Regex(grammar.clone()),
			sampling: SamplingParams { temperature, seed, ..Default::default() },
			..greedy(prompt, 32)
		};
		let want = generate(&model, &tokenizer, None, &request).unwrap();
		assert!(full.is_match(&want.text), "{:?}", want.text);
		assert_eq!(want.finish_reason, FinishReason::Eos, "{:?}", want.text);
		let body = json!({"prompt": prompt, "max_tokens": 32, "temperature": temperature,
			"seed": seed, "guided_regex": pattern});
		let (status, answer) = post(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{answer}");
		assert_answers(&answer, &want, "/text");
		let (status, events) = stream(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{events:?}");
		assert_eq!(gather(&events, "text_completion", "/text").texts[0].0, want.text);
	}
	// Cut by max_tokens: a start of a match, reason length.
	let body = json!({"prompt": prompt, "max_tokens": 3, "guided_regex": pattern});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["finish_reason"], "length");
	let text = answer["choices"][0]["text"].as_str().unwrap();
	assert!(grammar.accepts(grammar.start(), text.as_bytes()).is_some(), "{text:?}");
	assert!(!full.is_match(text), "{text:?}");
	// Chat: the rendered conversation's answer, held the same way.
	let messages = json!([{"role": "user", "content": "Name a city and a date."}]);
	let request = GenerationRequest {
		response_format: ResponseFormat::Regex(grammar.clone()),
		..greedy(&render(&tokenizer, &messages), 32)
	};
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	assert!(full.is_match(&want.text), "{:?}", want.text);
	let body = json!({"messages": messages, "max_tokens": 32, "temperature": 0,
		"guided_regex": pattern});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
	assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

/// Arithmetic over numbers of 1 to 3 digits, sums of up to 4 terms and products of up to 3
/// factors, parenthesised: a recursive-descent recognizer written by hand, the reference for
/// `guided_grammar`'s answers.
fn arithmetic(text: &str) -> bool {
	/// Up to `most` `item`s separated by `separator`.
	fn separated(s: &[u8], i: &mut usize, separator: u8, most: usize, item: Item) -> bool {
		for read in 1.. {
			if !item(s, i) {
				return false;
			}
			if s.get(*i) != Some(&separator) || read == most {
				break;
			}
			*i += 1;
		}
		true
	}
	type Item = fn(&[u8], &mut usize) -> bool;
	fn expr(s: &[u8], i: &mut usize) -> bool {
		separated(s, i, b'+', 4, term)
	}
	fn term(s: &[u8], i: &mut usize) -> bool {
		separated(s, i, b'*', 3, factor)
	}
	fn factor(s: &[u8], i: &mut usize) -> bool {
		if s.get(*i) == Some(&b'(') {
			*i += 1;
			let inner = expr(s, i);
			let closed = s.get(*i) == Some(&b')');
			*i += 1;
			return inner && closed;
		}
		let digits = s[(*i).min(s.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
		*i += digits;
		(1..=3).contains(&digits)
	}
	let mut i = 0;
	expr(text.as_bytes(), &mut i) && i == text.len()
}

/// vLLM's `guided_grammar` (and `structured_outputs.grammar`, as vLLM names it from 0.12 on):
/// on the real model, each whole answer is a sentence of the grammar (as a recognizer written
/// by hand finds), and is what the library generates under the same grammar, whole and
/// streamed, greedy and sampled hot; an answer cut by `max_tokens` is a start of one. The other
/// `structured_outputs` fields answer as their `guided_` twins.
#[test]
fn guided_grammar_answers_are_sentences_of_the_grammar() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let text = "root ::= expr\n\
	            expr ::= term (\"+\" term){0,3}   # a sum of up to 4 terms\n\
	            term ::= factor (\"*\" factor){0,2}\n\
	            factor ::= [0-9]{1,3} | \"(\" expr \")\"";
	let grammar = Arc::new(EbnfGrammar::new(text).unwrap());
	let prompt = "Q: Write a sum of products, such as (2+3)*4+1.\nA:";
	let mut ended = 0;
	let mut greedy_text = String::new();
	for (seed, temperature) in [(0, 0.0), (1, 1.0), (2, 1.5), (3, 3.0)] {
		let request = GenerationRequest {
			response_format: ResponseFormat::Grammar(grammar.clone()),
			sampling: SamplingParams { temperature, seed, ..Default::default() },
			..greedy(prompt, 40)
		};
		let want = generate(&model, &tokenizer, None, &request).unwrap();
		if want.finish_reason == FinishReason::Eos {
			assert!(arithmetic(&want.text), "{:?}", want.text);
			ended += 1;
			if temperature == 0.0 {
				greedy_text = want.text.clone();
			}
		} else {
			assert_eq!(want.finish_reason, FinishReason::Length);
			assert!(grammar.accepts(&grammar.start(), want.text.as_bytes()).is_some());
		}
		for field in ["guided_grammar", "structured_outputs"] {
			let mut body = json!({"prompt": prompt, "max_tokens": 40,
				"temperature": temperature, "seed": seed});
			body[field] = match field {
				"guided_grammar" => json!(text),
				_ => json!({"grammar": text, "disable_fallback": true}),
			};
			let (status, answer) = post(address, "/v1/completions", &body);
			assert_eq!(status, 200, "{answer}");
			assert_answers(&answer, &want, "/text");
			let (status, events) = stream(address, "/v1/completions", &body);
			assert_eq!(status, 200, "{events:?}");
			assert_eq!(gather(&events, "text_completion", "/text").texts[0].0, want.text);
		}
	}
	assert!(ended >= 2, "too few answers ended to check them whole");
	// Cut by max_tokens, greedy: a start of the whole greedy answer (a sentence, checked
	// above), reason length.
	assert!(greedy_text.len() > 4, "the greedy answer did not end: {greedy_text:?}");
	let body = json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "guided_grammar": text});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["finish_reason"], "length");
	let cut = answer["choices"][0]["text"].as_str().unwrap();
	assert!(greedy_text.starts_with(cut) && cut.len() < greedy_text.len(), "{cut:?}");
	// Chat, through structured_outputs: the rendered conversation's answer, held the same way.
	let messages = json!([{"role": "user", "content": "Write 2 times 3 plus 4."}]);
	let request = GenerationRequest {
		response_format: ResponseFormat::Grammar(grammar.clone()),
		..greedy(&render(&tokenizer, &messages), 40)
	};
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	assert!(arithmetic(&want.text), "{:?}", want.text);
	let body = json!({"messages": messages, "max_tokens": 40, "temperature": 0,
		"structured_outputs": {"grammar": text}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
	assert_eq!(answer["choices"][0]["finish_reason"], "stop");
	// The grammar was compiled once, for the first request, and kept for the others (the
	// same text through guided_grammar or structured_outputs); another text is compiled.
	let (hits, misses) = (
		metric(address, "grammar_cache_hits_total"),
		metric(address, "grammar_cache_misses_total"),
	);
	assert_eq!(misses, 1);
	assert_eq!(hits, 17, "16 requests in the loop, the cut one and the chat, after the first");
	let body = json!({"prompt": prompt, "max_tokens": 4, "guided_grammar": text});
	assert_eq!(post(address, "/v1/completions", &body).0, 200);
	assert_eq!(metric(address, "grammar_cache_hits_total"), hits + 1);
	let body = json!({"prompt": prompt, "max_tokens": 4, "guided_grammar": "root ::= [0-9]+"});
	assert_eq!(post(address, "/v1/completions", &body).0, 200);
	assert_eq!(metric(address, "grammar_cache_misses_total"), misses + 1);
	assert_eq!(metric(address, "grammar_cache_grammars"), 2);
	// Counted as the most two GBNF grammars may come to hold: some 13 MiB each.
	let bytes = metric(address, "grammar_cache_bytes");
	assert!((20 << 20..40 << 20).contains(&bytes), "{bytes}");
	// structured_outputs' regex, choice, json and json_object answer as their guided_ twins.
	for (outputs, guided) in [
		(json!({"regex": "[A-Z][a-z]+"}), json!({"guided_regex": "[A-Z][a-z]+"})),
		(json!({"choice": ["yes", "no"]}), json!({"guided_choice": ["yes", "no"]})),
		(
			json!({"json": {"type": "object", "properties": {"a": {"type": "integer"}}}}),
			json!({"guided_json": {"type": "object", "properties": {"a": {"type": "integer"}}}}),
		),
		(json!({"json_object": true}), json!({"response_format": {"type": "json_object"}})),
	] {
		let mut body = json!({"messages": messages, "max_tokens": 24, "temperature": 0});
		body["structured_outputs"] = outputs.clone();
		let (status, answer) = post(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{answer}");
		let mut twin = json!({"messages": messages, "max_tokens": 24, "temperature": 0});
		for (key, value) in guided.as_object().unwrap() {
			twin[key] = value.clone();
		}
		let (status, expected) = post(address, "/v1/chat/completions", &twin);
		assert_eq!(status, 200, "{expected}");
		assert_eq!(
			answer["choices"][0]["message"]["content"],
			expected["choices"][0]["message"]["content"],
			"{outputs}"
		);
	}
}

/// OpenAI's tool calls: a named tool's call is its arguments, generated under the tool's
/// parameters schema as the library generates them; `"required"` a list of calls, each with
/// its tool's parameters; streamed, the calls add up to the whole answer's; `"none"` answers
/// text; earlier turns with calls and a tool's answer are taken; what is not served is refused.
/// The tools of the tool-calling tests: `get_weather` (a city and a unit) and `get_time` (no
/// parameters); `get_weather`'s parameters, the tools, and a question for them.
fn weather_tools() -> (Value, Value, Value) {
	let parameters = json!({"type": "object", "properties": {"city": {"type": "string"},
		"unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]});
	let weather = json!({"type": "function", "function": {"name": "get_weather",
		"description": "The weather in a city.", "parameters": parameters}});
	let clock = json!({"type": "function", "function": {"name": "get_time"}});
	let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
	(parameters, json!([weather, clock]), messages)
}

/// The events of a response streamed from `/v1/responses`: each event's object, checked to
/// be named on its `event:` line and numbered in order; no `[DONE]` ends them.
fn response_events(address: SocketAddr, body: &Value) -> Vec<Value> {
	let mut body = body.clone();
	body["stream"] = json!(true);
	let (status, head, text) =
		exchange(address, "POST", "/v1/responses", body.to_string().as_bytes());
	assert_eq!(status, 200, "{text}");
	assert!(head.contains("content-type: text/event-stream"), "{head}");
	let text = if head.contains("transfer-encoding: chunked") { dechunk(&text) } else { text };
	let events: Vec<Value> = text
		.split("\n\n")
		.filter(|event| event.lines().any(|l| l.starts_with("data: ")))
		.map(|event| {
			let line = |prefix: &str| event.lines().find_map(|l| l.strip_prefix(prefix)).unwrap();
			let object: Value = serde_json::from_str(line("data: ")).unwrap();
			assert_eq!(object["type"], line("event: "), "{event}");
			object
		})
		.collect();
	for (i, event) in events.iter().enumerate() {
		assert_eq!(event["sequence_number"], i, "{event}");
	}
	events
}

/// The text of a response's output item `i`.
fn output_text(response: &Value, i: usize) -> &str {
	response["output"][i]["content"][0]["text"].as_str().unwrap()
}

/// The `delta`s of a streamed response's events of type `kind`, put together.
fn deltas(events: &[Value], kind: &str) -> String {
	events.iter().filter(|e| e["type"] == kind).map(|e| e["delta"].as_str().unwrap()).collect()
}

/// OpenAI's Responses API over the chat, on the real model against the library: `input` (a
/// text, or items: messages with text parts, a function's call and its output) and
/// `instructions` as the chat's messages, `max_output_tokens` (the status `incomplete` when
/// it cuts), the usage; streamed as the response's events (the text's deltas add up, the
/// last event has the whole response); a forced function call as a `function_call` item, its
/// arguments held to the tool's schema, whole and streamed; what is not served refused.
#[test]
fn responses_are_the_chats_answers_whole_and_streamed() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let alone = |request: &GenerationRequest| generate(&model, &tokenizer, None, request).unwrap();
	let path = "/v1/responses";
	let (system, question) = ("Answer in one sentence.", "What is the capital of France?");
	let messages =
		json!([{"role": "system", "content": system}, {"role": "user", "content": question}]);
	let body = json!({"model": MODEL, "instructions": system, "input": question,
		"max_output_tokens": 6, "temperature": 0, "metadata": {"run": "1"}});
	let want = alone(&greedy(&render(&tokenizer, &messages), 6));
	let status = match want.finish_reason {
		FinishReason::Length => "incomplete",
		_ => "completed",
	};
	let (code, response) = post(address, path, &body);
	assert_eq!(code, 200, "{response}");
	assert_eq!((&response["object"], &response["model"]), (&json!("response"), &json!(MODEL)));
	assert!(response["id"].as_str().unwrap().starts_with("resp_"), "{response}");
	assert_eq!(response["status"], status, "{response}");
	assert_eq!(output_text(&response, 0), want.text);
	assert_eq!(response["output"].as_array().unwrap().len(), 1);
	assert_eq!(response["usage"]["input_tokens"], want.prompt_tokens.len());
	assert_eq!(response["usage"]["output_tokens"], want.tokens.len());
	assert_eq!(response["usage"]["total_tokens"], want.prompt_tokens.len() + want.tokens.len());
	// Nothing cached yet: the first request of the worker.
	assert_eq!(response["usage"]["input_tokens_details"]["cached_tokens"], 0);
	let repeated = json!([system, 6, 0, {"run": "1"}, false]);
	let fields = ["instructions", "max_output_tokens", "temperature", "metadata", "store"];
	assert_eq!(json!(fields.map(|f| response[f].clone())), repeated);
	// Streamed: the deltas add up to the text; the last event is the whole response, whose
	// prompt came from the cache as far as the engine counted.
	let before = metric(address, "tokens_reused_total");
	let events = response_events(address, &body);
	let reused = metric(address, "tokens_reused_total") - before;
	assert!(reused >= 16, "{reused}");
	assert_eq!(events[0]["type"], "response.created");
	assert_eq!(events[0]["response"]["status"], "in_progress");
	assert_eq!(deltas(&events, "response.output_text.delta"), want.text);
	let last = events.last().unwrap();
	assert_eq!(last["type"], format!("response.{status}"));
	assert_eq!(output_text(&last["response"], 0), want.text);
	let usage = &last["response"]["usage"];
	for count in ["input_tokens", "output_tokens", "total_tokens"] {
		assert_eq!(usage[count], response["usage"][count]);
	}
	assert_eq!(usage["input_tokens_details"]["cached_tokens"], reused);
	assert_eq!(last["response"]["id"], events[0]["response"]["id"]);

	// The output's log-probabilities, included: the chat's, whole and streamed.
	let mut body = body;
	body["include"] = json!(["message.output_text.logprobs"]);
	body["top_logprobs"] = json!(2);
	let asked = json!({"messages": messages, "max_tokens": 6, "temperature": 0,
		"logprobs": true, "top_logprobs": 2});
	let (code, chat) = post(address, "/v1/chat/completions", &asked);
	assert_eq!(code, 200, "{chat}");
	let scored = &chat["choices"][0]["logprobs"]["content"];
	assert_eq!(scored.as_array().unwrap().len(), want.tokens.len(), "{chat}");
	assert_eq!(scored[0]["top_logprobs"].as_array().unwrap().len(), 2);
	let (code, response) = post(address, path, &body);
	assert_eq!(code, 200, "{response}");
	assert_eq!(response["output"][0]["content"][0]["logprobs"], *scored);
	let events = response_events(address, &body);
	let streamed: Vec<Value> = events
		.iter()
		.filter(|e| e["type"] == "response.output_text.delta")
		.flat_map(|e| e["logprobs"].as_array().unwrap().clone())
		.collect();
	assert_eq!(json!(streamed), *scored);
	assert_eq!(events.last().unwrap()["response"]["output"][0]["content"][0]["logprobs"], *scored);

	// The same conversation as items: a developer's message, a user's in text parts.
	let part = json!({"type": "input_text", "text": question});
	let items = json!([{"role": "developer", "content": system},
		{"type": "message", "role": "user", "content": [part]}]);
	let body = json!({"input": items, "max_output_tokens": 6, "temperature": 0});
	let (code, response) = post(address, path, &body);
	assert_eq!(code, 200, "{response}");
	assert_eq!(output_text(&response, 0), want.text);

	// A forced function call, its arguments held to the tool's schema.
	let (parameters, tools, messages) = weather_tools();
	let grammar = JsonGrammar::from_schema(&parameters).unwrap();
	let want = alone(&GenerationRequest {
		response_format: ResponseFormat::Json(Arc::new(grammar)),
		..greedy(&render(&tokenizer, &messages), 64)
	});
	let arguments: Value = serde_json::from_str(&want.text).unwrap();
	assert!(arguments["city"].is_string(), "{arguments}");
	// OpenAI's Responses tools: the function's fields beside its type.
	let tools: Vec<Value> = tools
		.as_array()
		.unwrap()
		.iter()
		.map(|tool| {
			let mut function = tool["function"].clone();
			function["type"] = json!("function");
			function
		})
		.collect();
	let question = messages[0]["content"].clone();
	let body = json!({"input": question, "tools": tools, "max_output_tokens": 64,
		"tool_choice": {"type": "function", "name": "get_weather"}, "temperature": 0});
	let (code, response) = post(address, path, &body);
	assert_eq!(code, 200, "{response}");
	let output = response["output"].as_array().unwrap();
	assert_eq!(output.len(), 1, "{response}");
	assert_eq!(
		(&output[0]["type"], &output[0]["name"]),
		(&json!("function_call"), &json!("get_weather"))
	);
	assert_eq!(output[0]["arguments"], want.text);
	assert_eq!(response["tool_choice"], json!({"type": "function", "name": "get_weather"}));
	let events = response_events(address, &body);
	assert_eq!(deltas(&events, "response.function_call_arguments.delta"), want.text);
	let done = events.iter().find(|e| e["type"] == "response.function_call_arguments.done");
	assert_eq!(done.unwrap()["arguments"], want.text);
	let last = events.last().unwrap();
	assert_eq!(last["type"], "response.completed");
	assert_eq!(last["response"]["output"][0]["arguments"], want.text);
	let arguments = want.text;

	// The call and its output given back: the chat's assistant's call and tool's message.
	let call_id = output[0]["call_id"].as_str().unwrap();
	let chat = json!([messages[0],
		{"role": "assistant", "content": null, "tool_calls": [{"id": call_id,
			"type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
		{"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 C"}]);
	let want = alone(&greedy(&render(&tokenizer, &chat), 6));
	let items = json!([messages[0],
		{"type": "function_call", "call_id": call_id, "name": "get_weather",
			"arguments": arguments},
		{"type": "function_call_output", "call_id": call_id, "output": "Sunny, 21 C"}]);
	let body = json!({"input": items, "max_output_tokens": 6, "temperature": 0});
	let (code, response) = post(address, path, &body);
	assert_eq!(code, 200, "{response}");
	assert_eq!(output_text(&response, 0), want.text);

	// Refused: what would need the response kept, what is not served; a chat's field, wrong.
	let refused = |body: Value, says: &str| refused_at(address, path, body, says);
	refused(json!({"input": "x", "store": true}), "store: responses are not kept");
	refused(json!({"input": "x", "previous_response_id": "resp_1"}), "previous_response_id");
	refused(json!({"input": "x", "tools": [{"type": "web_search"}]}), "only functions");
	refused(json!({"input": "x", "temperature": "hot"}), "temperature");
	refused(json!({"input": "x", "max_output_tokens": "two"}), "max_output_tokens: \"two\" is not");
	refused(json!({}), "input: missing field");
}

#[test]
fn tool_calls_are_held_to_their_tools_schemas_whole_and_streamed() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let alone = |request: &GenerationRequest| generate(&model, &tokenizer, None, request).unwrap();
	let (parameters, tools, messages) = weather_tools();
	// SmolLM2's template does not show tools: the prompt is the conversation's alone.
	let chat = render(&tokenizer, &messages);
	let under = |grammar: JsonGrammar, max_tokens: usize| GenerationRequest {
		response_format: ResponseFormat::Json(Arc::new(grammar)),
		..greedy(&chat, max_tokens)
	};
	let path = "/v1/chat/completions";

	// A named tool.
	let want = alone(&under(JsonGrammar::from_schema(&parameters).unwrap(), 64));
	assert_eq!(want.finish_reason, FinishReason::Eos, "{:?}", want.text);
	let arguments: Value = serde_json::from_str(&want.text).unwrap();
	assert!(arguments["city"].is_string(), "{arguments}");
	assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap()));
	let named = json!({"type": "function", "function": {"name": "get_weather"}});
	let body = json!({"messages": messages, "tools": tools, "tool_choice": named,
		"max_tokens": 64, "temperature": 0});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	// A forced call keeps the output's own reason, as OpenAI's.
	assert_eq!(choice["finish_reason"], "stop", "{answer}");
	assert_eq!(choice["message"]["content"], "");
	let calls = choice["message"]["tool_calls"].as_array().unwrap();
	assert_eq!(calls.len(), 1, "{answer}");
	assert_eq!(calls[0]["type"], "function");
	assert!(calls[0]["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
	assert_eq!(calls[0]["function"], json!({"name": "get_weather", "arguments": want.text}));
	assert_eq!(answer["usage"]["completion_tokens"], want.tokens.len());
	let (status, events) = stream(address, path, &body);
	assert_eq!(status, 200, "{events:?}");
	let streamed =
		gather(&events, "chat.completion.chunk", "/delta/tool_calls/0/function/arguments");
	assert_eq!(streamed.texts[0].0, want.text);
	assert_eq!(streamed.reasons[0].as_deref(), Some("stop"));
	let heads: Vec<&Value> =
		events.iter().filter_map(|e| e.pointer("/choices/0/delta/tool_calls/0/id")).collect();
	assert_eq!(heads.len(), 1, "the call's id and name come once");

	// Required: a list of calls.
	let grammar =
		JsonGrammar::tool_calls(&[("get_weather", Some(&parameters)), ("get_time", None)], 8)
			.unwrap();
	let want = alone(&under(grammar, 96));
	assert_eq!(want.finish_reason, FinishReason::Eos, "{:?}", want.text);
	let list: Vec<Value> = serde_json::from_str(&want.text).unwrap();
	let body = json!({"messages": messages, "tools": tools, "tool_choice": "required",
		"max_tokens": 96, "temperature": 0});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
	let calls = choice["message"]["tool_calls"].as_array().unwrap();
	assert_eq!(calls.len(), list.len(), "{answer}");
	for (call, item) in calls.iter().zip(&list) {
		assert_eq!(call["function"]["name"], item["name"]);
		let arguments = call["function"]["arguments"].as_str().unwrap();
		assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), item["parameters"]);
	}
	let (status, events) = stream(address, path, &body);
	assert_eq!(status, 200, "{events:?}");
	let deltas: Vec<&Value> = events
		.iter()
		.filter_map(|e| e.pointer("/choices/0/delta/tool_calls"))
		.flat_map(|calls| calls.as_array().unwrap())
		.collect();
	// Each call's head once (its name), then its arguments, adding up to the whole answer's.
	let mut streamed: Vec<Value> = Vec::new();
	for delta in deltas {
		let index = delta["index"].as_u64().unwrap() as usize;
		if delta["function"].get("name").is_some() {
			assert_eq!(index, streamed.len(), "{delta}");
			streamed.push(delta["function"].clone());
		} else {
			let arguments = delta["function"]["arguments"].as_str().unwrap();
			let so_far = streamed[index]["arguments"].as_str().unwrap().to_string();
			streamed[index]["arguments"] = json!(so_far + arguments);
		}
	}
	let whole: Vec<&Value> = calls.iter().map(|call| &call["function"]).collect();
	assert_eq!(streamed.iter().collect::<Vec<_>>(), whole, "{events:?}");
	assert_eq!(
		gather(&events, "chat.completion.chunk", "/delta/content").reasons[0].as_deref(),
		Some("tool_calls")
	);
	// Cut short, the list is not whole: its text, with the reason.
	let cut = json!({"messages": messages, "tools": tools, "tool_choice": "required",
		"max_tokens": 5, "temperature": 0});
	let (status, answer) = post(address, path, &cut);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	assert_eq!(choice["finish_reason"], "length");
	assert!(choice["message"].get("tool_calls").is_none(), "{answer}");
	assert!(want.text.starts_with(choice["message"]["content"].as_str().unwrap()), "{answer}");

	// "none": text, as without tools; earlier calls and a tool's answer are taken.
	let body = json!({"messages": messages, "tools": tools, "tool_choice": "none",
		"max_tokens": 8, "temperature": 0});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &alone(&greedy(&chat, 8)), "/message/content");
	let turns = json!([{"role": "user", "content": "What is the weather in Paris?"},
		{"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
			"function": {"name": "get_weather",
				"arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
		{"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees."}]);
	let body = json!({"messages": turns, "tools": tools, "tool_choice": "none",
		"max_tokens": 8, "temperature": 0});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &alone(&greedy(&render(&tokenizer, &turns), 8)), "/message/content");

	let refused = |path: &str, body: Value, says: &str| refused_at(address, path, body, says);
	let unknown = json!({"type": "function", "function": {"name": "get_mood"}});
	refused(
		path,
		json!({"messages": messages, "tools": tools, "tool_choice": unknown}),
		"not among the tools",
	);
	let both = json!({"messages": messages, "tools": tools, "tool_choice": "required",
		"response_format": {"type": "json_object"}});
	refused(path, both, "one or the other");
	refused(path, json!({"messages": messages, "tool_choice": "required"}), "no tools");
	refused("/v1/completions", json!({"prompt": "x", "tools": tools}), "tools: not served");
	let legacy = json!({"messages": messages, "functions": [{"name": "get_weather"}]});
	refused(path, legacy, "functions (use tools): not served");
	let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]);
	refused(path, json!({"messages": image}), "only text parts");
}

/// The calls of a chat answer (`message.tool_calls`) as name and arguments.
fn calls_of(answer: &Value) -> Vec<(String, String)> {
	let calls = answer.pointer("/choices/0/message/tool_calls").and_then(Value::as_array);
	let call = |c: &Value| {
		let function = &c["function"];
		(function["name"].as_str().unwrap().into(), function["arguments"].as_str().unwrap().into())
	};
	calls.map(|calls| calls.iter().map(call).collect()).unwrap_or_default()
}

/// The content and calls (name and arguments) of a streamed chat answer, and its reason.
fn streamed_calls(events: &[Value]) -> (String, Vec<(String, String)>, Option<String>) {
	let gathered = gather(events, "chat.completion.chunk", "/delta/content");
	let mut calls: Vec<(String, String)> = Vec::new();
	let deltas = events.iter().filter_map(|e| e.pointer("/choices/0/delta/tool_calls"));
	for delta in deltas.flat_map(|calls| calls.as_array().unwrap()) {
		let index = delta["index"].as_u64().unwrap() as usize;
		let arguments = delta["function"]["arguments"].as_str().unwrap();
		match delta["function"]["name"].as_str() {
			Some(name) => {
				assert_eq!(index, calls.len(), "{delta}");
				assert!(delta["id"].as_str().unwrap().starts_with("chatcmpl-tool-"), "{delta}");
				calls.push((name.into(), arguments.into()));
			}
			None => calls[index].1.push_str(arguments),
		}
	}
	let (content, _) = gathered.texts.into_iter().next().unwrap_or_default();
	(content, calls, gathered.reasons.into_iter().next().flatten())
}

#[test]
fn auto_tool_calls_are_read_out_of_the_text_and_held_to_their_schemas() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let (parameters, tools, messages) = weather_tools();
	let path = "/v1/chat/completions";

	// The model alone: SmolLM2's template does not show tools, so the system message gives them
	// with Hermes' instructions; the text is free until a call, as the library generates it.
	let address = start(model.clone(), tokenizer.clone(), Vec::new(), EngineConfig::default());
	let turns: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
	let definitions = tools.as_array().unwrap().clone();
	let shown = tool_calls::hermes_messages(&turns, &definitions);
	assert!(shown[0].content.contains("<tool_call>"), "{shown:?}");
	let prompt = tokenizer.chat_template().unwrap().render(&shown, true).unwrap();
	let grammar =
		JsonGrammar::tool_call(&[("get_weather", Some(&parameters)), ("get_time", None)]).unwrap();
	let lazy = LazyGrammar::new("<tool_call>", Arc::new(grammar), true);
	let request = GenerationRequest {
		response_format: ResponseFormat::Lazy(Arc::new(lazy)),
		..greedy(&prompt, 24)
	};
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	let body = json!({"messages": messages, "tools": tools, "max_tokens": 24, "temperature": 0});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	let tokens = tokenizer.encode(&prompt).unwrap();
	assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());
	// /tokenize shows the tools as the chat does: "auto" when no choice is given.
	let asked = json!({"messages": messages, "tools": tools});
	assert_eq!(post(address, "/tokenize", &asked).1["tokens"], json!(tokens));
	let none = json!({"messages": messages, "tools": tools, "tool_choice": "none"});
	let plain = tokenizer.encode(&render(&tokenizer, &messages)).unwrap();
	assert_eq!(post(address, "/tokenize", &none).1["tokens"], json!(plain));
	// The answer is read out of the library's text: its calls, or the text itself.
	let plan = tool_calls::Tools::from_request(Some(&tools), None, None).unwrap();
	match plan.calling.unwrap().calls(&want.text) {
		Some(calls) => {
			let calls: Vec<(String, String)> =
				calls.into_iter().map(|c| (c.name, c.arguments)).collect();
			assert_eq!(calls_of(&answer), calls, "{answer}");
		}
		None => {
			assert_answers(&answer, &want, "/message/content");
			assert!(answer["choices"][0]["message"].get("tool_calls").is_none(), "{answer}");
		}
	}

	// Steered toward a text and two calls, the first with arguments its schema refuses.
	let script = |text: &str| {
		let mut script = tokenizer.encode(&format!("<|im_start|>assistant\n{text}")).unwrap();
		script.push(tokenizer.eos.unwrap());
		script
	};
	let refused_arguments =
		"I will check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
	                         {\"city\": 42, \"unit\": \"kelvin\"}}\n</tool_call>";
	let steered = Arc::new(Flaky::new(model.clone()).steered(script(refused_arguments)));
	let address = start(steered, tokenizer.clone(), Vec::new(), EngineConfig::default());
	let body = json!({"messages": messages, "tools": tools, "max_tokens": 64, "temperature": 0,
		"parallel_tool_calls": false});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	assert_eq!(choice["message"]["content"], "I will check.\n", "{answer}");
	assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
	let calls = calls_of(&answer);
	assert_eq!(calls.len(), 1, "{answer}");
	assert_eq!(calls[0].0, "get_weather");
	let arguments: Value = serde_json::from_str(&calls[0].1).unwrap();
	assert!(arguments["city"].is_string(), "held to the schema: {arguments}");
	assert!(["celsius", "fahrenheit"].contains(&arguments["unit"].as_str().unwrap()));
	// Streamed: the same text and call.
	let (status, events) = stream(address, path, &body);
	assert_eq!(status, 200, "{events:?}");
	let (content, streamed, reason) = streamed_calls(&events);
	assert_eq!(
		(content.as_str(), &streamed, reason.as_deref()),
		("I will check.\n", &calls, Some("tool_calls"))
	);

	// Two calls the schemas take, after one another; one at most without parallel calls.
	let two = "Checking.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \
	           \"Oslo\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \
	           \"get_time\", \"arguments\": {}}\n</tool_call>";
	let steered = Arc::new(Flaky::new(model.clone()).steered(script(two)));
	let address = start(steered, tokenizer.clone(), Vec::new(), EngineConfig::default());
	let oslo = ("get_weather".to_string(), r#"{"city": "Oslo", "unit": "celsius"}"#.to_string());
	let time = ("get_time".to_string(), "{}".to_string());
	for (parallel, want) in [(true, vec![oslo.clone(), time]), (false, vec![oslo])] {
		let body = json!({"messages": messages, "tools": tools, "max_tokens": 96,
			"temperature": 0, "parallel_tool_calls": parallel});
		let (status, answer) = post(address, path, &body);
		assert_eq!(status, 200, "{answer}");
		assert_eq!(answer["choices"][0]["message"]["content"], "Checking.", "{answer}");
		assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls", "{answer}");
		assert_eq!(calls_of(&answer), want, "parallel {parallel}: {answer}");
		let (status, events) = stream(address, path, &body);
		assert_eq!(status, 200, "{events:?}");
		let (content, streamed, reason) = streamed_calls(&events);
		assert_eq!(
			(content.as_str(), streamed, reason.as_deref()),
			("Checking.", want, Some("tool_calls"))
		);
	}
	// Cut short mid-call: the whole text, with the reason.
	let body = json!({"messages": messages, "tools": tools, "max_tokens": 12, "temperature": 0});
	let (status, answer) = post(address, path, &body);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	assert_eq!(choice["finish_reason"], "length", "{answer}");
	assert!(choice["message"].get("tool_calls").is_none(), "{answer}");
	let content = choice["message"]["content"].as_str().unwrap();
	assert!(content.starts_with("Checking.<tool_call>"), "{answer}");
	// The answer would end after its one call: nothing may hold it open.
	for held in [json!({"min_tokens": 4}), json!({"ignore_eos": true})] {
		let mut body = json!({"messages": messages, "tools": tools, "parallel_tool_calls": false});
		body.as_object_mut().unwrap().extend(held.as_object().unwrap().clone());
		refused_at(address, path, body, "the output ends after its call");
	}
	// Auto with JSON asked for too: one or the other.
	let both =
		json!({"messages": messages, "tools": tools, "response_format": {"type": "json_object"}});
	refused_at(address, path, both, "one or the other");
}

/// A lazy grammar's trigger may be a special token (Hermes 2 Pro's `<tool_call>`; here
/// SmolLM2's `<file_sep>`), which has no bytes: the output is held to the grammar from it on.
#[test]
fn a_special_token_may_be_the_trigger_of_a_lazy_grammar() {
	let (_, tokenizer) = load(WeightFormat::AsStored);
	let special = tokenizer.special_token("<file_sep>").expect("SmolLM2's <file_sep> is special");
	assert_eq!(tokenizer.special_token("file_sep"), None);
	let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
		"required": ["a"], "additionalProperties": false});
	let grammar = Arc::new(JsonGrammar::from_schema(&schema).unwrap());
	let lazy = LazyGrammar::new("<file_sep>", grammar, false);
	assert_eq!(lazy.special_trigger(&tokenizer), Some(special));
	let request = GenerationRequest {
		response_format: ResponseFormat::Lazy(Arc::new(lazy)),
		skip_special_tokens: false,
		..greedy("", 32)
	};
	let mut progress = Progress::new(&request, vec![1]).unwrap();
	// Logits that want "Hi", the special token, then `{"a": "x"}`, whose string the grammar
	// refuses: "7" and "}" are what it may take instead ("}" first when it may).
	let script = [
		tokenizer.encode("Hi").unwrap(),
		vec![special],
		tokenizer.encode(r#"{"a": "x"}"#).unwrap(),
	]
	.concat();
	let seven = tokenizer.encode("7").unwrap()[0] as usize;
	let close = tokenizer.encode("}").unwrap()[0] as usize;
	let eos = tokenizer.eos.unwrap();
	for &want in script.iter().chain(std::iter::repeat(&eos)) {
		if progress.is_finished() {
			break;
		}
		let mut logits = vec![0.0f32; tokenizer.vocab_size()];
		(logits[seven], logits[close]) = (2.0, 3.0);
		logits[want as usize] = 10.0;
		progress.advance(&logits, &tokenizer).unwrap();
	}
	let generation = progress.finish(&tokenizer).unwrap();
	assert_eq!(generation.finish_reason, FinishReason::Eos, "{:?}", generation.text);
	let call = generation.text.strip_prefix("Hi<file_sep>").expect(&generation.text);
	let call: Value = serde_json::from_str(call).expect(&generation.text);
	assert!(call["a"].is_i64(), "{call}");
}

/// What lm-evaluation-harness's `local-completions` model sends to score a continuation
/// (`loglikelihood`): several prompts as token ids, `echo` with `logprobs: 1`, one greedy
/// token. Each choice carries its prompt's log-probabilities (the first token's `null`), equal
/// to the library's, and the harness's sum over the continuation ranks the right answer first.
/// Then several text prompts with `n` choices each, whole and streamed, and bad prompts.
#[test]
fn prompts_as_token_ids_or_lists_are_scored_as_lm_evaluation_harness_asks() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, _, address) = serve_tuned(root.path());
	let context = tokenizer.encode(PARIS).unwrap();
	let continuations = [" Paris.", " London.", " a city."];
	let prompts: Vec<Vec<u32>> =
		continuations.iter().map(|c| tokenizer.encode(&format!("{PARIS}{c}")).unwrap()).collect();
	for prompt in &prompts {
		assert_eq!(prompt[..context.len()], context[..], "the context's tokens are a prefix");
	}
	let body = json!({"model": MODEL, "prompt": prompts, "temperature": 0, "max_tokens": 1,
		"logprobs": 1, "seed": 1234, "echo": true});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let choices = answer["choices"].as_array().unwrap();
	assert_eq!(choices.len(), prompts.len());
	let mut scores = Vec::new();
	for (i, (choice, prompt)) in choices.iter().zip(&prompts).enumerate() {
		assert_eq!(choice["index"], i);
		let request = GenerationRequest {
			prompt: prompt.clone().into(),
			prompt_logprobs: Some(1),
			sampling: SamplingParams { top_logprobs: 1, ..SamplingParams::default() },
			..greedy("", 1)
		};
		let want = generate(&model, &tokenizer, None, &request).unwrap();
		let scored = want.prompt_logprobs.as_ref().unwrap();
		assert_eq!(scored.logprobs.len(), prompt.len() - 1);
		let echoed = tokenizer.decode(prompt).unwrap();
		assert_eq!(choice["text"], format!("{echoed}{}", want.text));
		let logprobs = &choice["logprobs"];
		let token_logprobs = logprobs["token_logprobs"].as_array().unwrap();
		let top_logprobs = logprobs["top_logprobs"].as_array().unwrap();
		assert_eq!(token_logprobs.len(), prompt.len() + 1, "the prompt's tokens and the new one");
		assert_eq!(logprobs["tokens"].as_array().unwrap().len(), prompt.len() + 1);
		assert_eq!((&token_logprobs[0], &top_logprobs[0]), (&Value::Null, &Value::Null));
		for (k, &logprob) in scored.logprobs.iter().enumerate() {
			close(&token_logprobs[k + 1], logprob);
			let top = top_logprobs[k + 1].as_object().unwrap();
			assert_eq!(top.len(), 1);
			let (t, best) = scored.top_logprobs[k][0];
			close(&top[&tokenizer.decode(&[t]).unwrap()], best);
		}
		close(&token_logprobs[prompt.len()], want.logprobs[0]);
		assert_eq!(logprobs["text_offset"][0], 0);
		// The harness: the continuation's log-likelihood, and whether it is the greedy one.
		let continuation = &token_logprobs[context.len()..prompt.len()];
		let sum: f64 = continuation.iter().map(|v| v.as_f64().unwrap()).sum();
		let greedy =
			continuation.iter().zip(&top_logprobs[context.len()..prompt.len()]).all(|(lp, top)| {
				let best = top.as_object().unwrap().values().map(|v| v.as_f64().unwrap());
				lp.as_f64() == best.reduce(f64::max)
			});
		eprintln!("{:?}: log-likelihood {sum:.3}, greedy {greedy}", continuations[i]);
		scores.push(sum);
	}
	assert!(scores[0] > scores[1], "Paris outscores London: {scores:?}");
	let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
	assert_eq!(answer["usage"]["prompt_tokens"], prompt_tokens);
	assert_eq!(answer["usage"]["completion_tokens"], prompts.len());

	// vLLM's /tokenize gives the ids serving uses, /detokenize their text.
	let (status, answer) = post(address, "/tokenize", &json!({"prompt": PARIS}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!((&answer["tokens"], &answer["count"]), (&json!(context), &json!(context.len())));
	let (_, models) = get(address, "/v1/models");
	let models: Value = serde_json::from_str(&models).unwrap();
	assert_eq!(answer["max_model_len"], models["data"][0]["max_model_len"]);
	let messages = json!([{"role": "user", "content": "Hello"}]);
	let rendered = render(&tokenizer, &messages);
	let (status, answer) = post(address, "/tokenize", &json!({"messages": messages}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["tokens"], json!(tokenizer.encode(&rendered).unwrap()));
	let (status, answer) = post(address, "/detokenize", &json!({"tokens": prompts[1]}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["prompt"], format!("{PARIS}{}", continuations[1]));
	let vocab = model.config.vocab_size;
	for (path, body, status) in [
		("/tokenize", json!({"prompt": "a", "messages": messages}), 400),
		("/tokenize", json!({}), 400),
		("/tokenize", json!({"prompt": "a", "model": "nope"}), 404),
		("/detokenize", json!({"tokens": [1, vocab]}), 400),
		("/detokenize", json!({"tokens": "a"}), 400),
	] {
		let (got, answer) = post(address, path, &body);
		assert_eq!(got, status, "{path} {body}: {answer}");
		assert!(answer["error"]["message"].is_string(), "{answer}");
	}

	// A prompt scored only (max_tokens 0, as HELM-style scorers ask): its tokens, nothing new.
	let body = json!({"prompt": [prompts[0]], "max_tokens": 0, "logprobs": 0, "echo": true});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let choice = &answer["choices"][0];
	assert_eq!(choice["text"], tokenizer.decode(&prompts[0]).unwrap());
	assert_eq!(choice["finish_reason"], "length");
	assert_eq!(choice["logprobs"]["tokens"].as_array().unwrap().len(), prompts[0].len());
	assert_eq!(answer["usage"]["completion_tokens"], 0);

	// A later prompt the engine refuses fails the whole request, and the earlier one taken
	// already is cancelled, not left running.
	let cancelled = metric(address, "requests_cancelled_total");
	let too_long = "a ".repeat(model.config.context_length + 10);
	let body = json!({"prompt": [PARIS, too_long], "max_tokens": 200, "temperature": 0});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 400, "{answer}");
	let since = Instant::now();
	while metric(address, "requests_cancelled_total") == cancelled {
		assert!(since.elapsed() < Duration::from_secs(30), "the first prompt was left running");
		std::thread::sleep(Duration::from_millis(20));
	}
	assert_eq!(metric(address, "requests_cancelled_total"), cancelled + 1);
	assert_eq!(metric(address, "requests_running") + metric(address, "requests_waiting"), 0);

	// One prompt as a flat list of ids is the text prompt's answer.
	let want = generate(&model, &tokenizer, None, &greedy(PARIS, 5)).unwrap();
	let body = json!({"prompt": context, "max_tokens": 5, "temperature": 0});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/text");

	// Two text prompts, two seeded choices each: choice 2p + j is prompt p with seed + j, whole
	// and streamed (each choice echoes its own prompt first).
	let texts = [PARIS, "Once upon a time"];
	let body = json!({"prompt": texts, "n": 2, "max_tokens": 4, "temperature": 0.9, "seed": 5,
		"echo": true, "stream_options": null});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let streamed = gather(&events, "text_completion", "/text");
	assert!(streamed.error.is_none(), "{streamed:?}");
	assert_eq!(answer["choices"].as_array().unwrap().len(), 4);
	let mut prompt_tokens = 0;
	for (p, text) in texts.iter().enumerate() {
		for j in 0..2 {
			let mut request = greedy(text, 4);
			request.sampling =
				SamplingParams { temperature: 0.9, seed: 5 + j as u64, ..request.sampling };
			let want = generate(&model, &tokenizer, None, &request).unwrap();
			let choice = &answer["choices"][2 * p + j];
			assert_eq!(choice["index"], 2 * p + j);
			assert_eq!(choice["text"], format!("{text}{}", want.text), "prompt {p}, choice {j}");
			assert_eq!(streamed.texts[2 * p + j].0, format!("{text}{}", want.text));
			if j == 0 {
				prompt_tokens += want.prompt_tokens.len();
			}
		}
	}
	assert_eq!(answer["usage"]["prompt_tokens"], prompt_tokens, "each prompt counted once");

	let refused = |body: Value, says: &str| refused_at(address, "/v1/completions", body, says);
	let vocab = model.config.vocab_size;
	refused(json!({"prompt": [1, vocab]}), "not in the model's vocabulary");
	refused(json!({"prompt": [[1, 2], [3, vocab + 5]]}), "not in the model's vocabulary");
	refused(json!({"prompt": [1, "a"]}), "is not a token id");
	refused(json!({"prompt": [1, -2]}), "is not a token id");
	refused(json!({"prompt": ["a", 3]}), "neither a string nor a list of token ids");
	refused(json!({"prompt": []}), "an empty list");
	refused(json!({"prompt": [[]]}), "the prompt is empty");
	refused(json!({"prompt": 7}), "neither a string nor a list");
	let many: Vec<&str> = vec!["a"; http_api::MAX_PROMPTS + 1];
	refused(json!({"prompt": many}), "at most");
	// Nothing was left running or waiting by the refused ones.
	assert_eq!(metric(address, "requests_running"), 0);
}

/// Adapters come and go without a restart: one put into the adapters folder later is served
/// when a request first names it; with runtime adapters allowed, clients load one by path
/// (built first: a corrupt one is refused and never served) and unload it; without, both are
/// refused.
#[test]
fn adapters_are_found_loaded_and_unloaded_at_run_time() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let folder = root.path().join("adapters");
	std::fs::create_dir(&folder).unwrap();
	let engine =
		EngineService::start(model.clone(), tokenizer.clone(), EngineConfig::default(), Vec::new())
			.unwrap();
	let state = ApiState::new(engine, MODEL, tokenizer.clone(), Vec::new())
		.with_adapters_dir(Some(folder.clone()))
		.with_runtime_adapters(true);
	let address = serve_state(state);
	let body =
		|name: &str| json!({"model": name, "prompt": PARIS, "max_tokens": 8, "temperature": 0});
	let served = |name: &str, dir: &Path| {
		let (status, answer) = post(address, "/v1/completions", &body(name));
		assert_eq!(status, 200, "{answer}");
		let adapter = model.load_adapter(dir, Some(name)).unwrap();
		let want = generate(&model, &tokenizer, Some(&adapter), &greedy(PARIS, 8)).unwrap();
		assert_answers(&answer, &want, "/text");
		assert_eq!(answer["model"], name);
	};
	let unknown = |name: &str| {
		let (status, answer) = post(address, "/v1/completions", &body(name));
		assert_eq!(
			(status, &answer["error"]["code"]),
			(404, &json!("model_not_found")),
			"{answer}"
		);
	};
	let listed = || {
		let (_, list) = get(address, "/v1/models");
		let list: Value = serde_json::from_str(&list).unwrap();
		list["data"]
			.as_array()
			.unwrap()
			.iter()
			.map(|m| m["id"].as_str().unwrap().to_string())
			.collect::<Vec<_>>()
	};

	// An adapter added to the folder after the start.
	unknown("late");
	write_adapter(&model, &folder.join("late"), 5, 8, &TARGETS);
	served("late", &folder.join("late"));
	assert_eq!(listed(), [MODEL, "late"]);
	// Loaded once, in memory after; served again from there.
	assert_eq!(metric(address, "adapters_served"), 1);
	assert_eq!(metric(address, "adapter_loads_total"), 1);
	assert_eq!(metric(address, "adapters_resident"), 1);
	assert_eq!(metric(address, "adapter_hits_total"), 0);
	let bytes = metric(address, "adapter_bytes");
	assert!(bytes > 0);
	served("late", &folder.join("late"));
	assert_eq!(metric(address, "adapter_hits_total"), 1);
	assert_eq!(metric(address, "adapter_loads_total"), 1);
	// A name is one folder of it, never a path out of it.
	write_adapter(&model, &root.path().join("outside"), 6, 8, &TARGETS);
	unknown("../outside");
	unknown(".");

	// Loaded by path, then unloaded.
	let admin = |path: &str, body: Value| {
		let (status, text) = call(address, "POST", path, body.to_string().as_bytes());
		(status, text)
	};
	let load = |name: &str, dir: &Path| {
		admin("/v1/load_lora_adapter", json!({"lora_name": name, "lora_path": dir}))
	};
	let extra = root.path().join("extra");
	write_adapter(&model, &extra, 9, 4, &Projection::ALL);
	let (status, text) = load("extra", &extra);
	assert_eq!((status, text.as_str()), (200, "Success: LoRA adapter 'extra' added successfully."));
	served("extra", &extra);
	assert_eq!(metric(address, "adapters_served"), 2);
	assert_eq!(metric(address, "adapter_loads_total"), 2);
	assert_eq!(metric(address, "adapters_resident"), 2);
	assert!(metric(address, "adapter_bytes") > bytes);
	assert_eq!(metric(address, "adapter_evictions_total"), 0);
	let refused = |(status, text): (u16, String), want: u16, says: &str| {
		assert_eq!(status, want, "{text}");
		assert!(text.contains(says), "{text:?} does not say {says:?}");
	};
	refused(load("extra", &extra), 400, "already loaded");
	refused(load(MODEL, &extra), 400, "cannot name an adapter");
	refused(load("chain:3", &extra), 400, "are the adapters registered on chain");
	let unload = admin("/v1/unload_lora_adapter", json!({"lora_name": "chain:3"}));
	refused(unload, 400, "are the adapters registered on chain, served while the chain names");
	refused(load("missing", &root.path().join("missing")), 400, "no adapter_config.json");
	refused(admin("/v1/load_lora_adapter", json!({"lora_name": "x"})), 400, "lora_path");
	let corrupt = root.path().join("corrupt");
	write_adapter(&model, &corrupt, 10, 8, &TARGETS);
	std::fs::write(corrupt.join("adapter_model.safetensors"), b"\x08\0\0\0\0\0\0\0{}").unwrap();
	refused(load("corrupt", &corrupt), 422, "adapter corrupt");
	unknown("corrupt");
	assert_eq!(listed(), [MODEL, "extra", "late"]);
	let unload = |name: &str| admin("/v1/unload_lora_adapter", json!({"lora_name": name}));
	let (status, text) = unload("extra");
	assert_eq!(
		(status, text.as_str()),
		(200, "Success: LoRA adapter 'extra' removed successfully.")
	);
	unknown("extra");
	refused(unload("extra"), 404, "no adapter");
	assert_eq!(listed(), [MODEL, "late"]);
	// No longer served, its weights stay in memory until the room is needed.
	assert_eq!(metric(address, "adapters_served"), 1);
	assert_eq!(metric(address, "adapters_resident"), 2);

	// Without runtime adapters allowed, both are refused.
	let engine =
		EngineService::start(model.clone(), tokenizer.clone(), EngineConfig::default(), Vec::new())
			.unwrap();
	let closed = serve_state(ApiState::new(engine, MODEL, tokenizer.clone(), Vec::new()));
	for (path, body) in [
		("/v1/load_lora_adapter", json!({"lora_name": "extra", "lora_path": extra})),
		("/v1/unload_lora_adapter", json!({"lora_name": "late"})),
	] {
		let (status, text) = call(closed, "POST", path, body.to_string().as_bytes());
		assert_eq!(status, 403, "{text}");
		assert!(text.contains("--allow-runtime-adapters"), "{text}");
	}
}

/// With room for one adapter, two served in turn evict each other; the one evicted comes back
/// from the files held in host memory. `/metrics` counts it all, and each answer is the
/// library's.
#[test]
fn adapters_evicted_for_room_come_back_and_the_metrics_count_it() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let mut adapters = Vec::new();
	for (name, seed) in [("a", 21), ("b", 22)] {
		write_adapter(&model, &root.path().join(name), seed, 8, &TARGETS);
		adapters.push((name.to_string(), root.path().join(name)));
	}
	let size = model.load_adapter(&adapters[0].1, Some("a")).unwrap().size_bytes;
	let config = EngineConfig { adapter_bytes: size + size / 2, ..EngineConfig::default() };
	let address = start(model.clone(), tokenizer.clone(), adapters.clone(), config);
	for (name, dir) in [&adapters[0], &adapters[1], &adapters[0]] {
		let body = json!({"model": name, "prompt": PARIS, "max_tokens": 4, "temperature": 0});
		let (status, answer) = post(address, "/v1/completions", &body);
		assert_eq!(status, 200, "{answer}");
		let adapter = model.load_adapter(dir, Some(name)).unwrap();
		let want = generate(&model, &tokenizer, Some(&adapter), &greedy(PARIS, 4)).unwrap();
		assert_answers(&answer, &want, "/text");
	}
	assert_eq!(metric(address, "adapters_served"), 2);
	assert_eq!(metric(address, "adapter_loads_total"), 3);
	assert_eq!(metric(address, "adapter_evictions_total"), 2);
	assert_eq!(metric(address, "adapter_host_hits_total"), 1);
	assert_eq!(metric(address, "adapters_resident"), 1);
	assert_eq!(metric(address, "adapter_bytes"), size as u64);
	assert!(metric(address, "adapter_host_bytes") > 0);
}

/// A batch step that fails is the server's fault: a whole answer is a 500; a stream that has
/// begun ends with an error event; the worker serves the next request as before.
#[test]
fn a_failed_step_is_a_server_error_whole_or_streamed() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let flaky = Arc::new(common::Flaky::new(model.clone()));
	let address = start(flaky.clone(), tokenizer.clone(), vec![], EngineConfig::default());
	let body = json!({"prompt": PARIS, "max_tokens": 16, "temperature": 0});

	flaky.fail_step(3);
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 500, "{answer}");
	assert_eq!(answer["error"]["code"], "internal_error");
	let message = answer["error"]["message"].as_str().unwrap();
	assert!(message.contains("the batch step failed: unsupported: step"), "{message}");

	flaky.fail_step(8);
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "text_completion", "/text");
	let error = got.error.clone().expect("no error event");
	assert_eq!(error["code"], "internal_error", "{error}");
	assert_eq!(got.reasons, [None]);
	let want = generate(&model, &tokenizer, None, &greedy(PARIS, 16)).unwrap();
	assert!(!got.texts[0].0.is_empty() && want.text.starts_with(&got.texts[0].0), "{got:?}");

	// A scoring step that fails ends a streamed, attributed chat with an error event after the
	// answer's text (and no last chunk).
	let path = "/v1/chat/completions";
	let chat = json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
		"documents": [{"text": "Hello is a greeting."}, {"text": "Bees dance."}],
		"temperature": 0, "stream": true});
	// The answer alone, twice (the second from the prefix cache), counts its steps.
	let (_, first) = stream(address, path, &chat);
	let answer = gather(&first, "chat.completion.chunk", "/delta/content").texts[0].0.clone();
	let before = flaky.steps();
	stream(address, path, &chat);
	let generating = flaky.steps() - before;
	let mut attributed = chat.clone();
	attributed["attribution"] = json!({"method": "leave_one_out"});
	flaky.fail_step(generating + 1);
	let (status, events) = stream(address, path, &attributed);
	assert_eq!(status, 200, "{events:?}");
	let got = gather(&events, "chat.completion.chunk", "/delta/content");
	let error = got.error.clone().expect("no error event");
	assert_eq!(error["code"], "internal_error", "{error}");
	assert_eq!((got.texts[0].0.as_str(), &got.reasons), (answer.as_str(), &vec![None]));

	let (status, health) = get(address, "/health");
	assert_eq!(status, 200, "{health}");
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_answers(&answer, &want, "/text");
}

/// `openledger-worker serve` until dropped.
struct Served(Child);

impl Drop for Served {
	fn drop(&mut self) {
		let _ = self.0.kill();
		let _ = self.0.wait();
	}
}

#[test]
fn the_serve_command_serves_a_folder_of_adapters() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	write_adapter(&model, &root.path().join("alpha"), 1, 8, &TARGETS);
	write_adapter(&model, &root.path().join("beta"), 2, 8, &TARGETS);
	std::fs::create_dir(root.path().join("not-an-adapter")).unwrap();
	let elsewhere = tempfile::tempdir().unwrap();
	let extra = elsewhere.path().join("gamma");
	write_adapter(&model, &extra, 3, 8, &TARGETS);
	let records = elsewhere.path().join("records.jsonl");
	let lines: Vec<String> =
		records_json().as_array().unwrap().iter().map(Value::to_string).collect();
	std::fs::write(&records, lines.join("\n")).unwrap();
	let mut child = Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
		.arg("serve")
		.arg("--model")
		.arg(models::smollm2_gguf())
		.args(["--listen", "127.0.0.1:0", "--served-model-name", "base", "--adapters"])
		.arg(root.path())
		.arg("--adapter")
		.arg(format!("gamma={}", extra.display()))
		.arg("--allow-runtime-adapters")
		.arg("--embedding-model")
		.arg(models::minilm_dir())
		.arg("--records")
		.arg(&records)
		.stderr(Stdio::piped())
		.spawn()
		.unwrap();
	let stderr = child.stderr.take().unwrap();
	let served = Served(child);
	// "openledger-worker: serving base and 3 adapters on http://ADDRESS"
	let line = BufReader::new(stderr)
		.lines()
		.map(Result::unwrap)
		.find(|l| l.starts_with("openledger-worker: serving"))
		.expect("the worker stopped before serving");
	assert!(line.contains("serving base and 3 adapters"), "{line}");
	let address: SocketAddr = line.rsplit("http://").next().unwrap().parse().unwrap();
	let (status, list) = get(address, "/v1/models");
	assert_eq!(status, 200);
	let list: Value = serde_json::from_str(&list).unwrap();
	let ids: Vec<&str> =
		list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
	assert_eq!(ids, ["base", "alpha", "beta", "gamma", models::MINILM_DIR]);
	let (status, answer) = post(
		address,
		"/v1/embeddings",
		&json!({"model": models::MINILM_DIR, "input": ["a record", "another"]}),
	);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(vectors(&answer).iter().map(Vec::len).collect::<Vec<_>>(), [384, 384]);
	let (status, found) =
		post(address, "/v1/retrieve", &json!({"query": "the access code of DataNet Alpha"}));
	assert_eq!(status, 200, "{found}");
	assert_eq!(found["data"].as_array().unwrap().len(), 3);
	assert_eq!(found["data"][0]["id"], "rec-2");
	let (status, answer) = post(
		address,
		"/v1/completions",
		&json!({"model": "gamma", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}),
	);
	assert_eq!(status, 200, "{answer}");
	let adapter = model.load_adapter(&extra, Some("gamma")).unwrap();
	let want =
		generate(&model, &tokenizer, Some(&adapter), &greedy("The capital of France is", 16))
			.unwrap();
	assert_answers(&answer, &want, "/text");
	// An adapter folder added now is served when named; one elsewhere is loaded by path.
	write_adapter(&model, &root.path().join("delta"), 4, 8, &TARGETS);
	let (status, answer) = post(
		address,
		"/v1/completions",
		&json!({"model": "delta", "prompt": "Hi", "max_tokens": 2}),
	);
	assert_eq!(status, 200, "{answer}");
	let body = json!({"lora_name": "epsilon", "lora_path": extra}).to_string();
	let (status, text) = call(address, "POST", "/v1/load_lora_adapter", body.as_bytes());
	assert_eq!(status, 200, "{text}");
	let (_, list) = get(address, "/v1/models");
	for name in ["delta", "epsilon"] {
		assert!(list.contains(&format!(r#""id":"{name}""#)), "{list}");
	}
	// SIGTERM: the worker stops taking connections and exits cleanly.
	let mut served = served;
	let pid = served.0.id().to_string();
	assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
	let since = Instant::now();
	let status = loop {
		if let Some(status) = served.0.try_wait().unwrap() {
			break status;
		}
		assert!(since.elapsed() < Duration::from_secs(30), "the worker ignored SIGTERM");
		std::thread::sleep(Duration::from_millis(50));
	};
	assert!(status.success(), "the worker exited with {status}");
	drop(served);

	// Two adapters of one name are refused before anything is served.
	let output = Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
		.arg("serve")
		.arg("--model")
		.arg(models::smollm2_gguf())
		.arg("--adapters")
		.arg(root.path())
		.arg("--adapter")
		.arg(format!("alpha={}", extra.display()))
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(stderr.contains(r#"two adapters are named "alpha""#), "{stderr}");

	// A malformed records file is refused, naming its line, before anything is served.
	std::fs::write(&records, format!("{}\n\n{{\"id\": \"x\"}}\n", lines[0])).unwrap();
	let output = Command::new(env!("CARGO_BIN_EXE_openledger-worker"))
		.arg("serve")
		.arg("--model")
		.arg(models::smollm2_gguf())
		.arg("--embedding-model")
		.arg(models::minilm_dir())
		.arg("--records")
		.arg(&records)
		.output()
		.unwrap();
	assert!(!output.status.success());
	let stderr = String::from_utf8_lossy(&output.stderr);
	assert!(stderr.contains("records.jsonl line 3: missing field `datanet`"), "{stderr}");
}

/// The embedding model's name in the embedding tests.
const EMBEDDER: &str = "minilm";

/// The API over the real model with all-MiniLM-L6-v2 served beside it, and the embedding model
/// loaded again for the test's own vectors.
fn start_with_embeddings() -> (SocketAddr, EmbeddingModel) {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let engine =
		EngineService::start(model, tokenizer.clone(), EngineConfig::default(), Vec::new())
			.unwrap();
	let embedder = EmbeddingService::start(EmbeddingModel::load(&models::minilm_dir()).unwrap());
	let state = ApiState::new(engine, MODEL, tokenizer, Vec::new())
		.with_embeddings(EMBEDDER, embedder.unwrap());
	(serve_state(state), EmbeddingModel::load(&models::minilm_dir()).unwrap())
}

/// The smaller routes of vLLM and OpenAI: `/ping` (SageMaker's health check, GET or POST),
/// `/version`, OpenAI's `GET /v1/models/{model}` (each model of the list, 404 for another),
/// and SageMaker's `/invocations`, which answers each request as the endpoint whose request
/// it is (a chat, a completion, embeddings, scores, a reranking) and refuses one it cannot
/// tell.
#[test]
fn ping_version_a_models_card_and_invocations() {
	let (address, _) = start_with_embeddings();
	for method in ["GET", "POST"] {
		let (status, health) = call(address, method, "/ping", b"");
		assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#), "{method}");
	}
	let (status, version) = get(address, "/version");
	assert_eq!(status, 200, "{version}");
	let version: Value = serde_json::from_str(&version).unwrap();
	assert_eq!(version, json!({"version": env!("CARGO_PKG_VERSION")}));

	let (_, list) = get(address, "/v1/models");
	let list: Value = serde_json::from_str(&list).unwrap();
	let cards = list["data"].as_array().unwrap();
	assert_eq!(cards.len(), 2, "{list}");
	for card in cards {
		let (status, one) = get(address, &format!("/v1/models/{}", card["id"].as_str().unwrap()));
		assert_eq!(status, 200, "{one}");
		assert_eq!(serde_json::from_str::<Value>(&one).unwrap(), *card);
	}
	let (status, missing) = get(address, "/v1/models/org/missing");
	assert_eq!(status, 404, "{missing}");
	let missing: Value = serde_json::from_str(&missing).unwrap();
	assert_eq!(missing["error"]["code"], "model_not_found");
	assert!(missing["error"]["message"].as_str().unwrap().contains("\"org/missing\""));

	// Each request invoked is its own endpoint's answer.
	let invoked = |body: Value, path: &str, answer_at: &str| {
		let (status, direct) = post(address, path, &body);
		assert_eq!(status, 200, "{direct}");
		let (status, invoked) = post(address, "/invocations", &body);
		assert_eq!(status, 200, "{invoked}");
		let keys = |answer: &Value| answer.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
		assert_eq!(keys(&invoked), keys(&direct), "{invoked}");
		assert!(direct.pointer(answer_at).is_some(), "{direct}");
		assert_eq!(invoked.pointer(answer_at), direct.pointer(answer_at), "{body}");
	};
	let messages = json!([{"role": "user", "content": "What is the capital of France?"}]);
	let chat = json!({"messages": messages, "max_tokens": 6, "temperature": 0});
	invoked(chat, "/v1/chat/completions", "/choices");
	let completion = json!({"prompt": PARIS, "max_tokens": 6, "temperature": 0});
	invoked(completion, "/v1/completions", "/choices");
	let embedding = json!({"model": EMBEDDER, "input": ["Bees dance.", "Paris is in France."]});
	invoked(embedding, "/v1/embeddings", "/data");
	let scores = json!({"model": EMBEDDER, "text_1": "Paris", "text_2": ["France", "Bees"]});
	invoked(scores, "/score", "/data");
	let documents = json!(["Bees dance.", "Paris is in France."]);
	let reranking = json!({"model": EMBEDDER, "query": "Paris", "documents": documents});
	invoked(reranking, "/rerank", "/results");
	// An input with a response's fields, items, or the generation model's name: a response.
	let question = "What is the capital of France?";
	let asked = [
		json!({"input": question, "max_output_tokens": 4, "temperature": 0}),
		json!({"input": [{"role": "user", "content": question}], "temperature": 0}),
		json!({"model": MODEL, "input": question, "temperature": 0}),
	];
	for mut response in asked {
		response["max_output_tokens"] = json!(4);
		invoked(response, "/v1/responses", "/output/0/content/0/text");
	}
	// With OpenAI's prompt reference beside its input, still a response (this worker follows
	// no chain here, so the registered prompt is refused as the response's endpoint refuses
	// it).
	let referenced = json!({"input": question, "prompt": {"id": 1}, "max_output_tokens": 4});
	let (direct, invoked) =
		(post(address, "/v1/responses", &referenced), post(address, "/invocations", &referenced));
	assert_ne!(direct.0, 200, "{}", direct.1);
	assert_eq!(invoked, direct);
	let refused = |body: Value, says: &str| refused_at(address, "/invocations", body, says);
	refused(json!({"text": "x"}), "none the worker serves");
	refused(json!({"text_1": "x"}), "none the worker serves");
	refused(json!({"messages": "x"}), "messages");
	refused(json!({"prompt": "x", "max_tokens": "six"}), "max_tokens");
}

/// The `embedding` of each `data` entry of an answer, as floats, checking `index` is its place.
fn vectors(answer: &Value) -> Vec<Vec<f32>> {
	let data = answer["data"].as_array().unwrap_or_else(|| panic!("{answer}"));
	data.iter()
		.enumerate()
		.map(|(i, entry)| {
			assert_eq!(entry["index"], i, "{entry}");
			assert_eq!(entry["object"], "embedding");
			serde_json::from_value(entry["embedding"].clone()).unwrap()
		})
		.collect()
}

#[test]
fn embeddings_are_served_as_openai_serves_them() {
	let (address, model) = start_with_embeddings();
	let texts = ["The capital of France is Paris.", "Curators accept records.", ""];
	let tokens: Vec<Vec<u32>> = texts.iter().map(|t| model.tokenize(t, None).unwrap()).collect();
	let want = model.embed(&tokens).unwrap();
	let (status, answer) =
		post(address, "/v1/embeddings", &json!({"model": EMBEDDER, "input": texts}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["object"], "list");
	assert_eq!(answer["model"], EMBEDDER);
	assert!(answer["id"].as_str().unwrap().starts_with("embd-"));
	let count: usize = tokens.iter().map(Vec::len).sum();
	assert_eq!(answer["usage"], json!({"prompt_tokens": count, "total_tokens": count}));
	assert_eq!(vectors(&answer), want);

	// One string, token ids, no model named: the same vectors.
	let (_, one) = post(address, "/v1/embeddings", &json!({"input": texts[0]}));
	assert_eq!(vectors(&one), want[..1]);
	let (_, ids) = post(address, "/v1/embeddings", &json!({"input": tokens[1]}));
	assert_eq!(vectors(&ids), want[1..2]);
	let (_, lists) = post(address, "/v1/embeddings", &json!({"input": [tokens[1], tokens[0]]}));
	assert_eq!(vectors(&lists), [want[1].clone(), want[0].clone()]);

	// base64: the little-endian bytes of the same floats (OpenAI's Python client asks for it).
	let (status, encoded) = post(
		address,
		"/v1/embeddings",
		&json!({"input": texts, "encoding_format": "base64", "dimensions": 384}),
	);
	assert_eq!(status, 200, "{encoded}");
	for (entry, want) in encoded["data"].as_array().unwrap().iter().zip(&want) {
		use base64::Engine;
		let bytes = base64::engine::general_purpose::STANDARD
			.decode(entry["embedding"].as_str().unwrap())
			.unwrap();
		let floats: Vec<f32> =
			bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
		assert_eq!(&floats, want);
	}

	// Longer than the model's 256 tokens: refused, or cut to the first tokens when asked.
	let long = "Accepted contributions earn a share of the DataNet's rewards. ".repeat(30);
	refused_at(
		address,
		"/v1/embeddings",
		json!({"input": ["short", long]}),
		&format!(
			"input 1: {} tokens, more than the embedding model's 256",
			model.tokenize(&long, None).unwrap().len()
		),
	);
	for (truncate, keep) in [(-1, 256), (16, 16)] {
		let (status, cut) = post(
			address,
			"/v1/embeddings",
			&json!({"input": long, "truncate_prompt_tokens": truncate}),
		);
		assert_eq!(status, 200, "{cut}");
		let tokens = model.tokenize(&long, Some(keep)).unwrap();
		assert_eq!(tokens.len(), keep);
		assert_eq!(cut["usage"]["prompt_tokens"], keep);
		assert_eq!(vectors(&cut), model.embed(&[tokens]).unwrap());
	}

	// /v1/models lists the embedding model with its most tokens.
	let (_, list) = get(address, "/v1/models");
	let list: Value = serde_json::from_str(&list).unwrap();
	let entry = list["data"].as_array().unwrap().iter().find(|m| m["id"] == EMBEDDER).unwrap();
	assert_eq!(entry["max_model_len"], 256);
	// Seven answered (the refused one never reached the model).
	assert_eq!(metric(address, "embedding_requests_total"), 7);
	assert!(metric(address, "embedding_tokens_total") >= 256 + 16);
}

/// vLLM's `/score` and `/rerank` over the embedding model: the cosine of the texts' vectors
/// (the library's, which match sentence-transformers'), one against many or pair by pair, and
/// the documents ordered by it, most alike first, `top_n` of them; bad requests refused.
#[test]
fn score_and_rerank_order_texts_by_their_embeddings() {
	let (address, model) = start_with_embeddings();
	let query = "Where is the Eiffel Tower?";
	let documents = [
		"Curators accept records.",
		"The Eiffel Tower stands in Paris.",
		"Bees dance to show where flowers are.",
		"Paris is the capital of France.",
	];
	let tokens = |texts: &[&str]| -> Vec<Vec<u32>> {
		texts.iter().map(|t| model.tokenize(t, None).unwrap()).collect()
	};
	let embed = |texts: &[&str]| model.embed(&tokens(texts)).unwrap();
	let cosine = |a: &[f32], b: &[f32]| {
		let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
		let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
		dot / (norm(a) * norm(b))
	};
	let (q, d) = (embed(&[query]).remove(0), embed(&documents));
	let want: Vec<f64> = d.iter().map(|v| cosine(&q, v)).collect();
	let count = |texts: &[&str]| tokens(texts).iter().map(Vec::len).sum::<usize>();
	let close = |got: &Value, want: f64| {
		assert!((got.as_f64().unwrap() - want).abs() < 1e-5, "{got} against {want}");
	};

	// One against many.
	let body = json!({"model": EMBEDDER, "text_1": query, "text_2": documents});
	let (status, answer) = post(address, "/score", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(
		(answer["object"].as_str(), answer["model"].as_str()),
		(Some("list"), Some(EMBEDDER))
	);
	assert!(answer["id"].as_str().unwrap().starts_with("score-"));
	let all: Vec<&str> = std::iter::once(query).chain(documents).collect();
	assert_eq!(answer["usage"]["prompt_tokens"], count(&all));
	let data = answer["data"].as_array().unwrap();
	assert_eq!(data.len(), documents.len());
	for (i, (entry, want)) in data.iter().zip(&want).enumerate() {
		assert_eq!((&entry["index"], entry["object"].as_str()), (&json!(i), Some("score")));
		close(&entry["score"], *want);
	}
	// Pair by pair.
	let body = json!({"text_1": [query, documents[0]], "text_2": [documents[1], documents[2]]});
	let (status, answer) = post(address, "/v1/score", &body);
	assert_eq!(status, 200, "{answer}");
	close(&answer["data"][0]["score"], want[1]);
	close(&answer["data"][1]["score"], cosine(&d[0], &d[2]));

	// Reranked: most alike first, the Eiffel Tower's sentence at the top.
	let mut order: Vec<usize> = (0..documents.len()).collect();
	order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
	assert_eq!(order[0], 1, "{want:?}");
	let body = json!({"model": EMBEDDER, "query": query, "documents": documents, "top_n": 2});
	let (status, answer) = post(address, "/rerank", &body);
	assert_eq!(status, 200, "{answer}");
	assert!(answer["id"].as_str().unwrap().starts_with("rerank-"));
	assert_eq!(answer["usage"]["total_tokens"], count(&all));
	assert_eq!(answer["usage"]["prompt_tokens"], count(&all));
	let results = answer["results"].as_array().unwrap();
	assert_eq!(results.len(), 2);
	for (result, &index) in results.iter().zip(&order) {
		assert_eq!(result["index"], index);
		assert_eq!(result["document"]["text"], documents[index]);
		close(&result["relevance_score"], want[index]);
	}
	// Cohere's documents as objects, all of them, without their texts; the other routes.
	let objects: Vec<Value> = documents.iter().map(|t| json!({"text": t})).collect();
	for path in ["/v1/rerank", "/v2/rerank"] {
		let body = json!({"query": query, "documents": objects, "return_documents": false});
		let (status, answer) = post(address, path, &body);
		assert_eq!(status, 200, "{answer}");
		let indices: Vec<usize> = answer["results"]
			.as_array()
			.unwrap()
			.iter()
			.map(|r| {
				assert!(r.get("document").is_none(), "{r}");
				r["index"].as_u64().unwrap() as usize
			})
			.collect();
		assert_eq!(indices, order);
	}
	// top_n 0 or past the documents: all of them. One text against one.
	for top_n in [0, 10] {
		let body = json!({"query": query, "documents": documents, "top_n": top_n});
		let (status, answer) = post(address, "/rerank", &body);
		assert_eq!(status, 200, "{answer}");
		assert_eq!(answer["results"].as_array().unwrap().len(), documents.len());
	}
	let (status, answer) =
		post(address, "/score", &json!({"text_1": query, "text_2": documents[3]}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["data"].as_array().unwrap().len(), 1);
	close(&answer["data"][0]["score"], want[3]);
	// A document longer than the model takes: refused by its name, or cut when asked.
	let long = "Accepted contributions earn a share of the DataNet's rewards. ".repeat(30);
	let body = json!({"query": query, "documents": [documents[0], long]});
	refused_at(address, "/rerank", body.clone(), "documents[1]: ");
	let mut body = body;
	body["truncate_prompt_tokens"] = json!(-1);
	let (status, answer) = post(address, "/rerank", &body);
	assert_eq!(status, 200, "{answer}");
	let cut = model.tokenize(&long, Some(256)).unwrap();
	assert_eq!(answer["usage"]["prompt_tokens"], count(&[query, documents[0]]) + cut.len());
	let cut_score = cosine(&q, &model.embed(&[cut]).unwrap()[0]);
	let results = answer["results"].as_array().unwrap();
	let long_result = results.iter().find(|r| r["index"] == 1).unwrap();
	close(&long_result["relevance_score"], cut_score);
	refused_at(address, "/score", json!({"text_1": query, "text_2": [long]}), "text_2[0]: ");

	let refused = |path: &str, body: Value, says: &str| refused_at(address, path, body, says);
	refused("/rerank", json!({"documents": documents}), "query");
	refused("/rerank", json!({"query": query, "documents": []}), "documents: 1 to");
	refused("/rerank", json!({"query": query, "documents": [{"title": "x"}]}), "without a text");
	refused("/score", json!({"text_1": query}), "text_2");
	refused("/score", json!({"text_1": [query, query], "text_2": documents}), "2 texts against 4");
	refused("/score", json!({"text_1": [], "text_2": documents}), "no texts");
	refused("/score", json!({"text_1": query, "text_2": [1]}), "not a text");
	refused(
		"/score",
		json!({"text_1": query, "text_2": "x", "truncate_prompt_tokens": 0}),
		"truncate",
	);
	refused("/score", json!({"text_1": documents, "text_2": query}), "4 texts against 1");
	let many = vec!["x"; 2048];
	refused("/score", json!({"text_1": query, "text_2": many}), "2048 texts together");
	refused("/score", json!({"text_1": query, "text_2": "x", "priority": 1}), "priority");
	refused("/score", json!({"text_1": query, "text_2": "x", "activation": true}), "activation");
	let body = json!({"query": query, "documents": documents, "rank_fields": ["text"]});
	refused("/rerank", body, "rank_fields");
	refused("/v1/embeddings", json!({"input": "x", "priority": 2}), "priority");
	let (status, answer) =
		post(address, "/score", &json!({"model": MODEL, "text_1": query, "text_2": query}));
	assert_eq!(status, 404, "{answer}");
	let (status, answer) =
		post(address, "/rerank", &json!({"model": MODEL, "query": query, "documents": documents}));
	assert_eq!(status, 404, "{answer}");
}

#[test]
fn bad_embedding_requests_are_refused_with_a_reason() {
	let (address, _) = start_with_embeddings();
	let refused = |body: Value, says: &str| refused_at(address, "/v1/embeddings", body, says);
	refused(json!({"model": EMBEDDER}), "input: missing field `input`");
	refused(json!({"input": []}), "input: an empty list");
	refused(json!({"input": [[]]}), "input 0: no tokens");
	refused(json!({"input": [101, 40000, 102]}), "40000");
	refused(json!({"input": [1.5]}), "input: 1.5 is not a token id");
	refused(json!({"input": {"text": "hi"}}), "neither a string nor a list");
	refused(json!({"input": vec!["a"; 2049]}), "input: at most 2048 per request, not 2049");
	refused(json!({"input": "hi", "encoding_format": "int8"}), "encoding_format");
	refused(json!({"input": "hi", "dimensions": 128}), "not a Matryoshka model");
	for k in [0, -2, 257] {
		refused(json!({"input": "hi", "truncate_prompt_tokens": k}), "truncate_prompt_tokens");
	}
	refused(json!({"input": "hi", "truncate_prompt_tokens": 2}), "leaves none for the text");
	refused(json!({"input": "hi", "encoding_format": 1}), "encoding_format");
	// The base model does not embed, and the embedding model does not generate.
	let (status, answer) = post(address, "/v1/embeddings", &json!({"model": MODEL, "input": "hi"}));
	assert_eq!(status, 404, "{answer}");
	assert_eq!(answer["error"]["code"], "model_not_found");
	refused_at(
		address,
		"/v1/completions",
		json!({"model": EMBEDDER, "prompt": "hi"}),
		"is an embedding model",
	);
	// Without an embedding model served, the endpoint says so.
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let plain = start(model, tokenizer, Vec::new(), EngineConfig::default());
	let (status, answer) = post(plain, "/v1/embeddings", &json!({"input": "hi"}));
	assert_eq!(status, 404, "{answer}");
	assert!(answer["error"]["message"].as_str().unwrap().contains("no embedding model"));
}

#[test]
fn concurrent_embedding_requests_get_their_own_vectors() {
	let (address, model) = start_with_embeddings();
	let clients: Vec<_> = (0..12)
		.map(|i| {
			std::thread::spawn(move || {
				let texts: Vec<String> = (0..1 + i % 4)
					.map(|j| {
						format!("client {i} asks about record {j} {}", "of a datanet ".repeat(i))
					})
					.collect();
				let (status, answer) = post(address, "/v1/embeddings", &json!({"input": texts}));
				assert_eq!(status, 200, "{answer}");
				(texts, vectors(&answer))
			})
		})
		.collect();
	for client in clients {
		let (texts, got) = client.join().unwrap();
		let tokens: Vec<Vec<u32>> =
			texts.iter().map(|t| model.tokenize(t, None).unwrap()).collect();
		// Batched with other clients' inputs (other padding), the same vectors to float32 noise.
		for (got, want) in got.iter().zip(model.embed(&tokens).unwrap()) {
			let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
			assert!(diff < 2e-6, "{texts:?}: {diff}");
		}
	}
	assert_eq!(metric(address, "embedding_requests_total"), 12);
	assert_eq!(metric(address, "embedding_inputs_total"), (0..12).map(|i| 1 + i % 4).sum::<u64>());
}

#[test]
fn the_answers_of_tools_are_attributed_their_part_of_the_answer() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let address = start(model.clone(), tokenizer.clone(), Vec::new(), EngineConfig::default());
	let template = tokenizer.chat_template().unwrap();
	let messages = called_tools();
	let documents = json!([{"id": "rec-1", "text": "Paris is the capital of France."}]);
	let weather = json!({"type": "function", "function": {"name": "get_weather",
		"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
	let parsed: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
	let sources: Vec<Source> = serde_json::from_value(documents.clone()).unwrap();
	// Without tools given, and with "auto" (the answers in Hermes' <tool_response> text).
	for tools in [None, Some(json!([weather]))] {
		let auto = tools.as_ref().map(|_| json!("auto"));
		let shown = tool_calls::Tools::from_request(tools.as_ref(), auto.as_ref(), None).unwrap();
		let mut body = json!({"messages": messages, "documents": documents, "max_tokens": 16,
			"temperature": 0});
		if let Some(tools) = &tools {
			body["tools"] = tools.clone();
		}
		// The library's answer and leave-one-out scores: the document, then each answer.
		let show = |m: &[Message]| shown.messages(&template, m);
		let spec = Sources { instructions: None, documents: &sources, attributed: true };
		let prompt = SourcedPrompt::build(&template, &tokenizer, &parsed, &show, spec).unwrap();
		assert_eq!(prompt.tool_answers().len(), 2);
		let (want, _, want_scores) = leave_one_out(&model, &tokenizer, &prompt, 16);

		// Attribution serves the answer it would without it.
		let (status, plain) = post(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{plain}");
		assert!(plain["choices"][0].get("attribution").is_none());
		body["attribution"] = json!({"method": "leave_one_out"});
		let (status, answer) = post(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{answer}");
		assert_eq!(answer["choices"][0]["message"], plain["choices"][0]["message"]);
		for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
			assert_eq!(answer["usage"][count], plain["usage"][count]);
		}
		// (The plain answer's prompt, asked again, came from the cache.)
		assert!(answer["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0));
		assert_eq!(answer["usage"]["prompt_tokens"], prompt.all().len());
		let attribution = &answer["choices"][0]["attribution"];
		assert_eq!(attribution["scores"].as_array().unwrap().len(), 1, "{attribution}");
		let close = |got: &Value, want: f64| (got.as_f64().unwrap() - want).abs() < 1e-3;
		assert!(close(&attribution["scores"][0]["score"], want_scores[0]), "{attribution}");
		let named = [(2, "call_t", "clock"), (3, "call_w", "get_weather")];
		let scored = attribution["tools"].as_array().unwrap();
		assert_eq!(scored.len(), 2, "{attribution}");
		for ((answer, (message, id, name)), want) in scored.iter().zip(named).zip(&want_scores[1..])
		{
			assert_eq!(
				(&answer["message"], &answer["tool_call_id"], &answer["name"]),
				(&json!(message), &json!(id), &json!(name))
			);
			assert!(close(&answer["score"], *want), "{answer} against {want}");
		}
		if tools.is_none() {
			// The weather's answer made this one.
			assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
			assert!(want_scores[2] > 5.0 && want_scores[1].abs() < 1.0, "{want_scores:?}");
		}
		// Streamed: the whole answer's attribution with the last chunk.
		body["stream"] = json!(true);
		let (status, events) = stream(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{events:?}");
		let last = events.iter().find_map(|e| e.pointer("/choices/0/attribution"));
		assert_eq!(last, Some(attribution), "{events:?}");
	}
	// Without documents: the answers alone; with neither, nothing to attribute to.
	let body = json!({"messages": messages, "max_tokens": 4, "temperature": 0,
		"attribution": {"method": "leave_one_out"}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let attribution = &answer["choices"][0]["attribution"];
	assert_eq!(attribution["scores"], json!([]));
	assert_eq!(attribution["tools"].as_array().unwrap().len(), 2, "{attribution}");
	refused_at(
		address,
		"/v1/chat/completions",
		json!({"messages": [messages[0]], "attribution": {}}),
		"needs documents, answers of tools or a registered prompt",
	);
}

/// A registered prompt's text that writes special tokens (a turn of its own).
const SPECIAL: &str = "Be brief.<|im_end|>\n<|im_start|>system\nAnswer in French.";

/// The registered prompts of a mock node (`prompts_*` answered as
/// `node/src/registry_rpc/prompts.rs` answers them): prompt 0 has version 1 on chain and
/// version 2 off chain (its text in `content_dir`); prompt 1's only version is deprecated;
/// prompt 2's text is not the one its hash names; prompt 3's external text is nowhere; prompt
/// 4's text writes special tokens.
/// Returns the node's address and the version 2 text; the node runs as long as the process.
fn mock_prompts_node(content_dir: &Path) -> (SocketAddr, String) {
	use jsonrpsee::{types::ErrorObjectOwned, RpcModule};
	use openledger_primitives::content_hash_of;
	fn hex(bytes: &[u8]) -> String {
		format!("0x{}", hex::encode(bytes))
	}
	let inline = "You are {{persona}}. Answer in one short sentence.";
	let external = "You are a terse assistant for {{city}}.".to_string();
	openledger_inference_worker::datanet_sync::store_content(content_dir, external.as_bytes())
		.unwrap();
	let version = |template: Value, hash: [u8; 32], deprecated: bool| {
		json!({"template": template, "contentHash": hex(&hash), "pricePerUse": "10000",
			"deprecated": deprecated, "deposit": "1000"})
	};
	let external_hash = content_hash_of(external.as_bytes());
	let nowhere = content_hash_of(b"lost");
	let versions: Vec<((u64, u32), Value)> = vec![
		((0, 1), version(json!({"inline": inline}), content_hash_of(inline.as_bytes()), false)),
		(
			(0, 2),
			version(
				json!({"external": {"uri": "ipfs://v2", "hash": hex(&external_hash)}}),
				external_hash,
				false,
			),
		),
		((1, 1), version(json!({"inline": inline}), content_hash_of(inline.as_bytes()), true)),
		((2, 1), version(json!({"inline": "Forged."}), content_hash_of(b"Real."), false)),
		((4, 1), version(json!({"inline": SPECIAL}), content_hash_of(SPECIAL.as_bytes()), false)),
		(
			(3, 1),
			version(
				json!({"external": {"uri": "ipfs://lost", "hash": hex(&nowhere)}}),
				nowhere,
				false,
			),
		),
	];
	let latest =
		|id: u64| versions.iter().filter(|((p, _), _)| *p == id).map(|((_, v), _)| *v).max();
	let prompts: Vec<(u64, Value)> = (0..5)
		.map(|id| {
			(
				id,
				json!({"id": id, "owner": "5Alice", "name": "p", "latest": latest(id),
			"pendingOwner": null, "deposit": "1000"}),
			)
		})
		.collect();
	let mut module = RpcModule::new((prompts, versions));
	type Answer = Result<Value, ErrorObjectOwned>;
	module
		.register_method("chain_getFinalizedHead", |_, _, _| -> Answer {
			Ok(json!(hex(&[0x11; 32])))
		})
		.unwrap();
	module
		.register_method("prompts_getPrompt", |params, state, _| -> Answer {
			let mut seq = params.sequence();
			let (id, at): (u64, String) = (seq.next()?, seq.next()?);
			assert_eq!(at, hex(&[0x11; 32]), "read at the finalized block");
			Ok(state.0.iter().find(|(p, _)| *p == id).map_or(Value::Null, |(_, v)| v.clone()))
		})
		.unwrap();
	module
		.register_method("prompts_getVersion", |params, state, _| -> Answer {
			let mut seq = params.sequence();
			let (id, version, at): (u64, u32, String) = (seq.next()?, seq.next()?, seq.next()?);
			assert_eq!(at, hex(&[0x11; 32]), "read at the finalized block");
			let found = state.1.iter().find(|(key, _)| *key == (id, version));
			Ok(found.map_or(Value::Null, |(_, v)| v.clone()))
		})
		.unwrap();
	(serve_rpc(module), external)
}

#[test]
fn chats_may_name_a_registered_prompt_and_it_is_attributed_its_part() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let content = tempfile::tempdir().unwrap();
	let (node, external) = mock_prompts_node(content.path());
	let engine =
		EngineService::start(model.clone(), tokenizer.clone(), EngineConfig::default(), Vec::new())
			.unwrap();
	let node = Arc::new(Node::new(format!("ws://{node}"), LOOKUP_TIMEOUT));
	let registry = PromptRegistry::new(node, content.path());
	let state = ApiState::new(engine, MODEL, tokenizer.clone(), Vec::new())
		.with_prompts(Arc::new(registry));
	let address = serve_state(state);
	let template = tokenizer.chat_template().unwrap();
	let question = json!({"role": "user", "content": "What is the weather like in Paris?"});
	let named = json!({"id": 0, "version": 1, "variables": {"persona": "a weather assistant"}});
	let filled = "You are a weather assistant. Answer in one short sentence.";

	// The template's text, filled in, opens the system message: the tokens and the answer of
	// that conversation rendered as a whole.
	let conversation = vec![
		Message::new("system", filled),
		Message::new("user", question["content"].as_str().unwrap()),
	];
	let tokens = tokenizer.encode(&template.render(&conversation, true).unwrap()).unwrap();
	let mut request = greedy("", 16);
	request.prompt = tokens.clone().into();
	let want = generate(&model, &tokenizer, None, &request).unwrap();
	let body = json!({"messages": [question], "prompt": named, "max_tokens": 16, "temperature": 0});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
	assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());
	let content_hash = format!(
		"0x{}",
		hex::encode(openledger_primitives::content_hash_of(
			b"You are {{persona}}. Answer in one short sentence."
		))
	);
	assert_eq!(
		answer["prompt"],
		json!({"id": 0, "version": 1, "owner": "5Alice", "content_hash": content_hash,
			"price_per_use": "10000", "block": format!("0x{}", "11".repeat(32))})
	);
	// /tokenize gives the same tokens.
	let (status, tokenized) =
		post(address, "/tokenize", &json!({"messages": [question], "prompt": named}));
	assert_eq!(status, 200, "{tokenized}");
	assert_eq!(tokenized["tokens"], json!(tokens));
	refused_at(address, "/tokenize", json!({"prompt": named}), "a text, or with `messages`");
	// The request's own system message follows the prompt's text.
	let own = json!([{"role": "system", "content": "Use Celsius."}, question]);
	let body = json!({"messages": own, "prompt": named, "max_tokens": 4, "temperature": 0});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let both =
		vec![Message::new("system", &format!("{filled}\n\nUse Celsius.")), conversation[1].clone()];
	let tokens = tokenizer.encode(&template.render(&both, true).unwrap()).unwrap();
	assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());

	// Attributed: the prompt's part beside a document's, as the library scores them.
	let documents = json!([{"id": "rec-1", "text": "Paris is the capital of France."}]);
	let sources: Vec<Source> = serde_json::from_value(documents.clone()).unwrap();
	let show = |m: &[Message]| Ok((m.to_vec(), Vec::new()));
	let spec = Sources { instructions: Some(filled), documents: &sources, attributed: true };
	let prompt =
		SourcedPrompt::build(&template, &tokenizer, &conversation[1..], &show, spec).unwrap();
	let alone = SourcedPrompt::new(&template, &tokenizer, &conversation, &[], &sources).unwrap();
	assert_eq!(prompt.all(), alone.all(), "the prompt's text cut out where it is written");
	let (want, _, scores) = leave_one_out(&model, &tokenizer, &prompt, 16);
	let body = json!({"messages": [question], "prompt": named, "documents": documents, "max_tokens": 16,
		"temperature": 0, "attribution": {"method": "leave_one_out"}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
	let attribution = &answer["choices"][0]["attribution"];
	assert_eq!(
		(&attribution["prompt"]["id"], &attribution["prompt"]["version"]),
		(&json!(0), &json!(1))
	);
	assert_eq!(attribution["prompt"]["owner"], "5Alice");
	let close = |got: &Value, want: f64| (got.as_f64().unwrap() - want).abs() < 1e-3;
	assert!(close(&attribution["prompt"]["score"], scores[0]), "{attribution} against {scores:?}");
	assert!(
		close(&attribution["scores"][0]["score"], scores[1]),
		"{attribution} against {scores:?}"
	);
	// With the answers of tools too: the prompt's text, the document, then each answer, in
	// the order the prompt writes them; the prompt is the conversation rendered whole.
	let mut called: Vec<Message> = serde_json::from_value(called_tools()).unwrap();
	let combined = json!({"messages": called_tools(), "prompt": named, "documents": documents,
		"max_tokens": 16, "temperature": 0, "attribution": {"method": "leave_one_out"}});
	let (status, together) = post(address, "/v1/chat/completions", &combined);
	assert_eq!(status, 200, "{together}");
	let spec = Sources { instructions: Some(filled), documents: &sources, attributed: true };
	let everything = SourcedPrompt::build(&template, &tokenizer, &called, &show, spec).unwrap();
	called.insert(0, Message::new("system", filled));
	let whole = SourcedPrompt::new(&template, &tokenizer, &called, &[], &sources).unwrap();
	assert_eq!(everything.all(), whole.all());
	assert_eq!(together["usage"]["prompt_tokens"], whole.all().len());
	let (_, _, all_scores) = leave_one_out(&model, &tokenizer, &everything, 16);
	let attributed = &together["choices"][0]["attribution"];
	assert!(close(&attributed["prompt"]["score"], all_scores[0]), "{attributed} {all_scores:?}");
	assert!(close(&attributed["scores"][0]["score"], all_scores[1]), "{attributed}");
	for (k, tool) in attributed["tools"].as_array().unwrap().iter().enumerate() {
		assert!(close(&tool["score"], all_scores[2 + k]), "{attributed} {all_scores:?}");
	}
	assert_eq!(attributed["tools"].as_array().unwrap().len(), 2, "{attributed}");
	// Streamed: the prompt with the first chunk, the attribution with the last.
	let mut streamed = body.clone();
	streamed["stream"] = json!(true);
	let (status, events) = stream(address, "/v1/chat/completions", &streamed);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(events[0]["prompt"], answer["prompt"], "{events:?}");
	let last = events.iter().find_map(|e| e.pointer("/choices/0/attribution"));
	assert_eq!(last, Some(attribution), "{events:?}");
	// Alone, with nothing else to attribute to.
	let body = json!({"messages": [question], "prompt": named, "max_tokens": 4, "temperature": 0,
		"attribution": {"method": "leave_one_out"}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert!(answer["choices"][0]["attribution"]["prompt"]["score"].is_number(), "{answer}");

	// A text that writes special tokens is served as written (they are special tokens), but
	// cannot be cut out: with attribution, the document alone is attributed.
	let special = json!({"id": 4});
	let body = json!({"messages": [question], "prompt": special, "max_tokens": 2});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let written = [Message::new("system", SPECIAL), conversation[1].clone()];
	let tokens = tokenizer.encode(&template.render(&written, true).unwrap()).unwrap();
	assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());
	let body = json!({"messages": [question], "prompt": special, "documents": documents,
		"max_tokens": 2, "attribution": {"method": "leave_one_out"}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	let attribution = &answer["choices"][0]["attribution"];
	assert!(attribution.get("prompt").is_none(), "{attribution}");
	assert!(attribution["prompt_not_attributed"].as_str().unwrap().contains("special tokens"));
	assert_eq!(attribution["scores"].as_array().unwrap().len(), 1, "{attribution}");
	let body = json!({"messages": [question], "prompt": special, "attribution": {}});
	refused_at(address, "/v1/chat/completions", body, "the registered prompt cannot be left out");

	// The latest version (off chain, from the content folder) when none is named.
	let body = json!({"messages": [question], "prompt": {"id": 0, "variables": {"city": "Paris"}},
		"max_tokens": 2});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["prompt"]["version"], 2);
	let system = external.replace("{{city}}", "Paris");
	let latest = vec![Message::new("system", &system), conversation[1].clone()];
	let tokens = tokenizer.encode(&template.render(&latest, true).unwrap()).unwrap();
	assert_eq!(answer["usage"]["prompt_tokens"], tokens.len());

	// Refused, each with its status and reason.
	let refused = |prompt: Value, status: u16, says: &str| {
		let body = json!({"messages": [question], "prompt": prompt, "max_tokens": 2});
		let (got, answer) = post(address, "/v1/chat/completions", &body);
		assert_eq!(got, status, "{answer}");
		let message = answer["error"]["message"].as_str().unwrap();
		assert!(message.contains(says), "{message:?} does not say {says:?}");
	};
	refused(json!({"id": 9}), 404, "prompt 9 is not registered");
	refused(
		json!({"id": 0, "version": 7, "variables": {}}),
		404,
		"prompt 0 version 7 is not registered",
	);
	refused(
		json!({"id": 1, "variables": {"persona": "x"}}),
		400,
		"prompt 1 version 1 is deprecated",
	);
	refused(json!({"id": 0, "version": 1}), 400, "\"persona\", not given");
	refused(
		json!({"id": 0, "version": 1, "variables": {"persona": "x", "tone": "y"}}),
		400,
		"\"tone\" is not used",
	);
	refused(json!({"id": 2}), 422, "not the text hashed on chain");
	refused(json!({"id": 3}), 503, "not in the content folder");
	refused(json!("You are a pirate."), 400, "a registered one");
	refused(json!({"id": 0, "template": "x"}), 400, "unknown field");
	// A worker that follows no chain has no registered prompts.
	let plain = start(model.clone(), tokenizer.clone(), Vec::new(), EngineConfig::default());
	refused_at(
		plain,
		"/v1/chat/completions",
		json!({"messages": [question], "prompt": named}),
		"does not follow a chain",
	);
	// A node that cannot be reached.
	let engine =
		EngineService::start(model, tokenizer.clone(), EngineConfig::default(), Vec::new())
			.unwrap();
	let node = Arc::new(Node::new("ws://127.0.0.1:9", LOOKUP_TIMEOUT));
	let registry = PromptRegistry::new(node, content.path());
	let down = serve_state(
		ApiState::new(engine, MODEL, tokenizer, Vec::new()).with_prompts(Arc::new(registry)),
	);
	let (status, answer) =
		post(down, "/v1/chat/completions", &json!({"messages": [question], "prompt": named}));
	assert_eq!(status, 503, "{answer}");
	assert!(
		answer["error"]["message"].as_str().unwrap().contains("could not be read: RPC connect:"),
		"{answer}"
	);
}

#[test]
fn chats_with_documents_are_attributed_to_them() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let address = start(model.clone(), tokenizer.clone(), Vec::new(), EngineConfig::default());
	let documents = json!([
		{"id": "rec-1", "text": "DataNet Beta collects weather readings from 40 stations."},
		{"id": "rec-2", "title": "Alpha", "text": "The access code of DataNet Alpha is BLUE-HERON-42."},
		{"id": "rec-3", "text": "Curators review every record within two days."},
	]);
	let messages =
		json!([{"role": "user", "content": "What is the access code of DataNet Alpha?"}]);
	let chat = |extra: Value| {
		let mut body = json!({"messages": messages, "documents": documents, "max_tokens": 24, "temperature": 0});
		body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
		post(address, "/v1/chat/completions", &body)
	};
	// The library's answer and leave-one-out scores for the same chat.
	let sources: Vec<Source> = serde_json::from_value(documents.clone()).unwrap();
	let parsed: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
	let template = tokenizer.chat_template().unwrap();
	let prompt = SourcedPrompt::new(&template, &tokenizer, &parsed, &[], &sources).unwrap();
	let (want, logprobs, want_scores) = leave_one_out(&model, &tokenizer, &prompt, 24);

	let (status, answer) = chat(json!({"attribution": {"method": "leave_one_out"}}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
	assert_eq!(answer["usage"]["prompt_tokens"], prompt.all().len());
	let attribution = &answer["choices"][0]["attribution"];
	assert_eq!(attribution["method"], "leave_one_out");
	assert!(attribution.get("adapter").is_none(), "no adapter served it: {attribution}");
	assert!((attribution["answer_logprob"].as_f64().unwrap() - logprobs[0]).abs() < 1e-3);
	let scores = attribution["scores"].as_array().unwrap();
	for (i, (score, want)) in scores.iter().zip(&want_scores).enumerate() {
		assert_eq!(score["index"], i);
		assert_eq!(score["id"], documents[i]["id"]);
		assert!((score["score"].as_f64().unwrap() - want).abs() < 1e-3, "{score} against {want}");
	}

	// ContextCite by default, seeded: the same scores twice; rec-2 gets the credit.
	let (status, first) = chat(json!({"attribution": {}}));
	assert_eq!(status, 200, "{first}");
	let cc = &first["choices"][0]["attribution"];
	assert_eq!(
		(cc["method"].as_str(), cc["ablations"].as_u64(), cc["seed"].as_u64()),
		(Some("context_cite"), Some(32), Some(0))
	);
	let weights: Vec<f64> =
		cc["scores"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).collect();
	assert!(weights[1] > 10.0 && weights[0].abs() < 1.0 && weights[2].abs() < 1.0, "{weights:?}");
	let (_, again) = chat(json!({"attribution": {"method": "context_cite"}}));
	assert_eq!(again["choices"][0]["attribution"], *cc);
	// Streamed: each choice's attribution with its last chunk, the whole answer's.
	for (method, whole) in [("leave_one_out", attribution), ("context_cite", cc)] {
		let body = json!({"messages": messages, "documents": documents, "max_tokens": 24,
			"temperature": 0, "stream": true, "n": 2, "attribution": {"method": method}});
		let (status, events) = stream(address, "/v1/chat/completions", &body);
		assert_eq!(status, 200, "{events:?}");
		let streamed = gather(&events, "chat.completion.chunk", "/delta/content");
		let texts: Vec<&str> = streamed.texts.iter().map(|(text, _)| text.as_str()).collect();
		assert_eq!(texts, [want.text.as_str(); 2]);
		let last: Vec<&Value> = events
			.iter()
			.flat_map(|e| e["choices"].as_array().into_iter().flatten())
			.filter(|choice| !choice["finish_reason"].is_null())
			.collect();
		assert_eq!(last.len(), 2, "{events:?}");
		for choice in last {
			assert_eq!(choice["attribution"], *whole, "{method}: {choice}");
		}
		let scored = events.iter().filter(|e| e.pointer("/choices/0/attribution").is_some());
		assert_eq!(scored.count(), 2, "only the last chunks carry it");
	}
	// Sampled choices that differ: each streamed choice gets its own answer's attribution.
	let sampled = json!({"messages": messages, "documents": documents, "max_tokens": 12,
		"temperature": 1.0, "seed": 7, "n": 3, "attribution": {"method": "leave_one_out"}});
	let (status, whole) = post(address, "/v1/chat/completions", &sampled);
	assert_eq!(status, 200, "{whole}");
	let texts: Vec<&Value> = (0..3).map(|i| &whole["choices"][i]["message"]["content"]).collect();
	assert!(texts[0] != texts[1] || texts[1] != texts[2], "the choices differ: {texts:?}");
	let mut body = sampled.clone();
	body["stream"] = json!(true);
	body["stream_options"] = json!({"include_usage": true});
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	// Whole: each choice's text and reason, nothing after a choice's end, the usage last.
	let streamed = gather(&events, "chat.completion.chunk", "/delta/content");
	for (i, (text, _)) in streamed.texts.iter().enumerate() {
		assert_eq!(json!(text), whole["choices"][i]["message"]["content"], "choice {i}");
	}
	assert_eq!(streamed.usage.as_ref(), Some(&whole["usage"]), "{events:?}");
	let mut by_index = [Value::Null, Value::Null, Value::Null];
	for choice in events.iter().flat_map(|e| e["choices"].as_array().into_iter().flatten()) {
		if let Some(attribution) = choice.get("attribution") {
			let slot = &mut by_index[choice["index"].as_u64().unwrap() as usize];
			assert!(slot.is_null(), "one attribution a choice: {choice}");
			*slot = attribution.clone();
		}
	}
	for (i, streamed) in by_index.iter().enumerate() {
		assert_eq!(*streamed, whole["choices"][i]["attribution"], "choice {i}");
	}

	// /tokenize gives the prompt's tokens; streamed, the chat's text is the whole answer's.
	let (status, tokens) =
		post(address, "/tokenize", &json!({"messages": messages, "documents": documents}));
	assert_eq!(status, 200, "{tokens}");
	assert_eq!(tokens["tokens"], json!(prompt.all()));
	let body =
		json!({"messages": messages, "documents": documents, "max_tokens": 24, "temperature": 0});
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let streamed = gather(&events, "chat.completion.chunk", "/delta/content");
	assert_eq!(streamed.texts[0].0, want.text);

	// Refused, each with its reason.
	let refused = |extra: Value, says: &str| {
		let (status, answer) = chat(extra);
		assert_eq!(status, 400, "{answer}");
		let message = answer["error"]["message"].as_str().unwrap();
		assert!(message.contains(says), "{message:?} does not say {says:?}");
	};
	refused(json!({"attribution": {"method": "shapley"}}), "neither \"context_cite\" nor");
	refused(json!({"attribution": {"method": "leave_one_out", "ablations": 8}}), "ContextCite's");
	refused(json!({"attribution": {"ablations": 1}}), "2 to 256, not 1");
	refused(json!({"attribution": {"penalty": -1}}), "at least 0");
	refused(json!({"attribution": {"samples": 4}}), "unknown field");
	refused(json!({"attribution": {"ablations": 256}, "n": 16}), "4112 scoring requests");
	refused(json!({"documents": []}), "1 to 64 sources, not 0");
	refused(json!({"documents": [{"text": " "}]}), "source 0 has no text");
	refused_at(
		address,
		"/v1/chat/completions",
		json!({"messages": messages, "attribution": {}}),
		"needs documents",
	);
	refused_at(
		address,
		"/v1/completions",
		json!({"prompt": "Hi", "documents": documents}),
		"documents (on chat only)",
	);
}

/// The records of the retrieval tests: (id, DataNet, text).
const RECORDS: [(&str, &str, &str); 3] = [
	("rec-1", "weather", "DataNet Beta collects weather readings from 40 stations."),
	("rec-2", "alpha", "The access code of DataNet Alpha is BLUE-HERON-42."),
	("rec-3", "ops", "Curators review every record within two days."),
];

#[test]
fn an_adapter_served_is_attributed_its_part_of_the_answer() {
	let root = tempfile::tempdir().unwrap();
	let (model, tokenizer, adapter, address) = serve_tuned(root.path());
	let documents = json!([
		{"id": "rec-1", "text": "The access code of DataNet Alpha is BLUE-HERON-42."},
		{"id": "rec-2", "text": "Curators review every record within two days."},
	]);
	let messages =
		json!([{"role": "user", "content": "What is the access code of DataNet Alpha?"}]);
	// The library's answer with the adapter, and its log-probability with and without it.
	let sources: Vec<Source> = serde_json::from_value(documents.clone()).unwrap();
	let parsed: Vec<Message> = serde_json::from_value(messages.clone()).unwrap();
	let template = tokenizer.chat_template().unwrap();
	let prompt = SourcedPrompt::new(&template, &tokenizer, &parsed, &[], &sources).unwrap();
	let mut request = greedy("", 16);
	request.prompt = prompt.all().into();
	let want = generate(&model, &tokenizer, Some(&adapter), &request).unwrap();
	let loo = Ablations::new(Method::LeaveOneOut, 2).unwrap();
	let whole = &loo.requests(&prompt, &want.tokens)[0];
	let logprob = |lora: Option<&LoraAdapter>| {
		let scored = generate(&model, &tokenizer, lora, whole).unwrap();
		answer_logprob(&scored, want.tokens.len()).unwrap()
	};
	let (with, without) = (logprob(Some(&adapter)), logprob(None));
	assert!((with - without).abs() > 1e-2, "the adapter changes the answer's likelihood");

	let body = json!({"model": "tuned", "messages": messages, "documents": documents,
		"max_tokens": 16, "temperature": 0, "attribution": {"method": "leave_one_out"}});
	let (status, answer) = post(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["message"]["content"], want.text.as_str());
	let attribution = &answer["choices"][0]["attribution"];
	let close = |at: &str, want: f64| {
		let got = attribution.pointer(at).and_then(Value::as_f64).expect(at);
		assert!((got - want).abs() < 1e-3, "{at}: {got} against {want}: {attribution}");
	};
	close("/answer_logprob", with);
	close("/adapter/answer_logprob_without", without);
	close("/adapter/score", with - without);
	assert_eq!(attribution["adapter"]["name"], "tuned");
	assert_eq!(attribution["scores"].as_array().unwrap().len(), 2);
	// Streamed, the same.
	let mut body = body;
	body["stream"] = json!(true);
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	let last = events.iter().find_map(|e| e.pointer("/choices/0/attribution"));
	assert_eq!(last, Some(attribution), "{events:?}");
}

/// A node whose model registry holds `adapters` (as `adapters_getAdapter` answers them, by id)
/// and two base models: 0, the real model (its weights' SHA-256, as published), and 1, another.
fn mock_adapters_node(
	adapters: Arc<std::sync::Mutex<Vec<Value>>>,
	headers_read: Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
	use jsonrpsee::{types::ErrorObjectOwned, RpcModule};
	let block = format!("0x{}", "22".repeat(32));
	let models = vec![
		json!({"id": 0, "name": "SmolLM2-135M-Instruct", "architecture": "llama",
			"weightsHash": "0xb179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
			"quantization": "Q4_1", "contextLength": 8192, "license": "Apache-2.0", "enabled": true}),
		json!({"id": 1, "name": "Other-7B", "architecture": "llama",
			"weightsHash": format!("0x{}", "33".repeat(32)), "quantization": "F16",
			"contextLength": 4096, "license": "MIT", "enabled": true}),
	];
	let mut module = RpcModule::new((adapters, models, block, headers_read));
	type Answer = Result<Value, ErrorObjectOwned>;
	module
		.register_method("chain_getFinalizedHead", |_, state, _| -> Answer { Ok(json!(state.2)) })
		.unwrap();
	module
		.register_method("chain_getHeader", |params, state, _| -> Answer {
			let block: String = params.one()?;
			assert_eq!(block, state.2, "the finalized block's header");
			state.3.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
			Ok(json!({"number": "0x2a", "parentHash": format!("0x{}", "21".repeat(32))}))
		})
		.unwrap();
	for (method, at) in [("adapters_getAdapter", 0), ("adapters_getBaseModel", 1)] {
		module
			.register_method(method, move |params, state, _| -> Answer {
				let mut seq = params.sequence();
				let (id, block): (u64, String) = (seq.next()?, seq.next()?);
				assert_eq!(block, state.2, "read at the finalized block");
				let adapters = state.0.lock().unwrap().clone();
				let listed = if at == 0 { &adapters } else { &state.1 };
				Ok(listed.iter().find(|a| a["id"] == id).cloned().unwrap_or(Value::Null))
			})
			.unwrap();
	}
	serve_rpc(module)
}

/// Serves `module` (a mock node's JSON-RPC) on an ephemeral port, on a thread of its own.
fn serve_rpc<T: Send + Sync + 'static>(module: jsonrpsee::RpcModule<T>) -> SocketAddr {
	let runtime =
		tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
	let (tx, rx) = std::sync::mpsc::channel();
	std::thread::spawn(move || {
		runtime.block_on(async move {
			let server = jsonrpsee::server::Server::builder().build("127.0.0.1:0").await.unwrap();
			tx.send(server.local_addr().unwrap()).unwrap();
			server.start(module).stopped().await;
		})
	});
	rx.recv().unwrap()
}

#[test]
fn requests_may_name_an_adapter_registered_on_chain_and_it_is_checked_first() {
	use openledger_primitives::{adapter_content_hash, ADAPTER_FILES};
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let root = tempfile::tempdir().unwrap();
	let content = root.path().join("content");
	// The owner's adapter, its two files stored under its content hash.
	let made = root.path().join("made");
	write_adapter(&model, &made, 7, 8, &TARGETS);
	let files: Vec<Vec<u8>> =
		ADAPTER_FILES.iter().map(|f| std::fs::read(made.join(f)).unwrap()).collect();
	let hash = adapter_content_hash(&files[0], &files[1]);
	let store = |hash: &[u8; 32], files: &[Vec<u8>]| {
		let dir = content.join(hex::encode(hash));
		std::fs::create_dir_all(&dir).unwrap();
		for (name, bytes) in ADAPTER_FILES.iter().zip(files) {
			std::fs::write(dir.join(name), bytes).unwrap();
		}
	};
	store(&hash, &files);
	// Another, not stored yet.
	let later = root.path().join("later");
	write_adapter(&model, &later, 8, 8, &TARGETS);
	let later: Vec<Vec<u8>> =
		ADAPTER_FILES.iter().map(|f| std::fs::read(later.join(f)).unwrap()).collect();
	let later_hash = adapter_content_hash(&later[0], &later[1]);
	// Files stored under a hash that is not theirs.
	let forged = [9u8; 32];
	store(&forged, &[files[0].clone(), files[1][..files[1].len() - 4].to_vec()]);
	let adapter = |id: u64, base: u32, hash: &[u8; 32], rank: u32, retired: bool| {
		json!({"id": id, "owner": "5Bob", "baseModel": base, "name": format!("lora-{id}"),
			"contentHash": format!("0x{}", hex::encode(hash)), "rank": rank,
			"targetModules": ["Q", "V", "Down"], "uri": "ipfs://lora",
			"pricePer1kTokens": "1000000000",
			"datanets": [{"datanet": 0, "weight": 600_000_000}, {"datanet": 3, "weight": 400_000_000}],
			"retired": retired, "pendingOwner": null, "deposit": "5000"})
	};
	let on_chain = Arc::new(std::sync::Mutex::new(vec![
		adapter(0, 0, &hash, 8, false),
		adapter(1, 0, &hash, 8, true),
		adapter(2, 1, &hash, 8, false),
		adapter(3, 0, &hash, 4, false),
		adapter(4, 0, &later_hash, 8, false),
		adapter(5, 0, &forged, 8, false),
	]));
	let headers_read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
	let node = mock_adapters_node(on_chain.clone(), headers_read.clone());
	let gguf = models::smollm2_gguf();
	let registry = |url: String| {
		let node = Arc::new(Node::new(url, LOOKUP_TIMEOUT));
		Arc::new(AdapterRegistry::new(node, &content, AdapterRegistry::weights_file(&gguf)))
	};
	let serve_with = |registry: Option<Arc<AdapterRegistry>>| {
		let config = EngineConfig::default();
		let engine =
			EngineService::start(model.clone(), tokenizer.clone(), config, Vec::new()).unwrap();
		let state = ApiState::new(engine, MODEL, tokenizer.clone(), Vec::new());
		serve_state(match registry {
			Some(registry) => state.with_chain_adapters(registry),
			None => state,
		})
	};
	let address = serve_with(Some(registry(format!("ws://{node}"))));

	// Served as the same files are by folder: the same answer.
	let lora = model.load_adapter(&made, Some("made")).unwrap();
	let want =
		generate(&model, &tokenizer, Some(&lora), &greedy("The capital of France is", 12)).unwrap();
	let body = json!({"model": "chain:0", "prompt": "The capital of France is", "max_tokens": 12,
		"temperature": 0});
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["choices"][0]["text"], want.text.as_str());
	assert_eq!(answer["model"], "chain:0");
	let record = json!({"id": 0, "owner": "5Bob", "name": "lora-0",
		"content_hash": format!("0x{}", hex::encode(hash)), "price_per_1k_tokens": "1000000000",
		"datanets": [{"datanet": 0, "weight": 600_000_000}, {"datanet": 3, "weight": 400_000_000}],
		"block": format!("0x{}", "22".repeat(32))});
	assert_eq!(answer["adapter"], record);
	// Streamed, the record comes first (a completion: with a chunk of no text), and the text
	// adds up.
	let (status, events) = stream(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(events[0]["adapter"], record, "{events:?}");
	assert_eq!(events[0]["choices"][0]["text"], "");
	assert_eq!(events.iter().filter(|e| e.get("adapter").is_some()).count(), 1);
	let text: String =
		events.iter().filter_map(|e| e.pointer("/choices/0/text")?.as_str()).collect();
	assert_eq!(text, want.text);
	// A chat: the record, and with attribution the adapter's part names its id and owner.
	let documents = json!([{"id": "rec-1", "text": "Paris is the capital of France."}]);
	let chat = json!({"model": "chain:0", "documents": documents, "max_tokens": 8,
		"temperature": 0, "attribution": {"method": "leave_one_out"},
		"messages": [{"role": "user", "content": "What is the capital of France?"}]});
	let (status, answer) = post(address, "/v1/chat/completions", &chat);
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["adapter"], record);
	let part = &answer["choices"][0]["attribution"]["adapter"];
	assert_eq!(
		(&part["id"], &part["owner"], &part["name"]),
		(&json!(0), &json!("5Bob"), &json!("chain:0"))
	);
	assert!(part["score"].as_f64().unwrap().is_finite(), "{part}");
	let (status, events) = stream(address, "/v1/chat/completions", &chat);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(events[0]["adapter"], record, "{events:?}");
	// Once checked, it is one of the models served.
	let (_, models) = get(address, "/v1/models");
	assert!(models.contains("\"chain:0\""), "{models}");

	// Refused, each with its reason.
	let refused = |model: &str, status: u16, says: &str| {
		let body = json!({"model": model, "prompt": "Hi", "max_tokens": 1});
		let (got, answer) = post(address, "/v1/completions", &body);
		assert_eq!(got, status, "{model}: {answer}");
		let message = answer["error"]["message"].as_str().unwrap();
		assert!(message.contains(says), "{model}: {message:?} does not say {says:?}");
	};
	refused("chain:9", 404, "no adapter 9 is registered on chain");
	refused("chain:1", 404, "adapter 1 is retired");
	refused("chain:2", 400, "adapts base model 1 (Other-7B");
	refused("chain:3", 422, "have rank [8], the chain declares 4");
	refused("chain:4", 503, "adapter_config.json");
	refused("chain:5", 503, "not to the content hash on chain");
	refused("chain:x", 400, "followed by an adapter's id");
	refused("chain:007", 400, "in decimal");
	let (status, answer) =
		post(address, "/v1/completions", &json!({"model": "chain:9", "prompt": "Hi"}));
	assert_eq!((status, &answer["error"]["code"]), (404, &json!("model_not_found")));
	// Its files stored, the adapter missing them is served (files that are not there are
	// looked for again).
	store(&later_hash, &later);
	let (status, answer) =
		post(address, "/v1/completions", &json!({"model": "chain:4", "prompt": "Hi"}));
	assert_eq!(status, 200, "{answer}");
	assert_eq!(answer["adapter"]["id"], 4);
	// Its weights changed once served: examined again, refused and no longer listed; put back,
	// served again. A byte flipped where the last tensor's values end: the file still parses.
	let weights = content.join(hex::encode(hash)).join(ADAPTER_FILES[1]);
	let mut changed = files[1].clone();
	*changed.last_mut().unwrap() ^= 1;
	std::fs::write(&weights, &changed).unwrap();
	refused("chain:0", 503, "not to the content hash on chain");
	let (_, models) = get(address, "/v1/models");
	assert!(!models.contains("\"chain:0\""), "{models}");
	std::fs::write(&weights, &files[1]).unwrap();
	let (status, answer) = post(address, "/v1/completions", &body);
	assert_eq!(status, 200, "{answer}");
	// Retired once served: no longer served, nor listed.
	on_chain.lock().unwrap()[0]["retired"] = json!(true);
	refused("chain:0", 404, "adapter 0 is retired");
	let (_, models) = get(address, "/v1/models");
	assert!(!models.contains("\"chain:0\"") && models.contains("\"chain:4\""), "{models}");
	// The finalized head never moved: its number was asked for once, not once a request.
	assert_eq!(headers_read.load(std::sync::atomic::Ordering::Relaxed), 1);
	// A worker that follows no chain, and one whose node is down.
	let alone = serve_with(None);
	let (status, answer) = post(alone, "/v1/completions", &body);
	assert_eq!(status, 400, "{answer}");
	assert!(answer["error"]["message"].as_str().unwrap().contains("does not follow a chain"));
	// A model with no single weights file (shards) serves none: the worker's fault, a 503.
	let node_url = format!("ws://{node}");
	let sharded = Arc::new(AdapterRegistry::new(
		Arc::new(Node::new(node_url, LOOKUP_TIMEOUT)),
		&content,
		None,
	));
	let served = json!({"model": "chain:4", "prompt": "Hi"});
	let (status, answer) = post(serve_with(Some(sharded)), "/v1/completions", &served);
	assert_eq!(status, 503, "{answer}");
	assert!(answer["error"]["message"].as_str().unwrap().contains("shards"), "{answer}");
	let down = serve_with(Some(registry("ws://127.0.0.1:9".into())));
	let (status, answer) = post(down, "/v1/completions", &body);
	assert_eq!(status, 503, "{answer}");
	assert!(answer["error"]["message"].as_str().unwrap().contains("RPC connect"), "{answer}");
}

fn records_json() -> Value {
	json!(RECORDS
		.iter()
		.map(|(id, datanet, text)| json!({"id": id, "datanet": datanet, "text": text}))
		.collect::<Vec<_>>())
}

#[test]
fn records_are_retrieved_into_chats_and_attributed() {
	let (model, tokenizer) = load(WeightFormat::AsStored);
	let serve_with = |index: VectorIndex, runtime: bool| {
		let engine = EngineService::start(
			model.clone(),
			tokenizer.clone(),
			EngineConfig::default(),
			Vec::new(),
		)
		.unwrap();
		let embedder =
			EmbeddingService::start(EmbeddingModel::load(&models::minilm_dir()).unwrap());
		serve_state(
			ApiState::new(engine, MODEL, tokenizer.clone(), Vec::new())
				.with_embeddings(EMBEDDER, embedder.unwrap())
				.with_records(index, runtime),
		)
	};
	let address = serve_with(VectorIndex::new(384, 4), true);
	let (status, added) = post(address, "/v1/records", &json!({"records": records_json()}));
	assert_eq!(status, 200, "{added}");
	assert_eq!(added, json!({"added": 3, "total": 3}));

	// The most similar first, with the library's cosine similarities.
	let embedder = EmbeddingModel::load(&models::minilm_dir()).unwrap();
	let vector =
		|text: &str| embedder.embed(&[embedder.tokenize(text, None).unwrap()]).unwrap().remove(0);
	let question = "What is the access code of DataNet Alpha?";
	let (status, found) = post(address, "/v1/retrieve", &json!({"query": question, "top_k": 2}));
	assert_eq!(status, 200, "{found}");
	let data = found["data"].as_array().unwrap();
	assert_eq!(data.len(), 2);
	assert_eq!(data[0]["id"], "rec-2");
	assert_eq!(data[0]["text"], RECORDS[1].2);
	let q = vector(question);
	for hit in data {
		let text = hit["text"].as_str().unwrap();
		let want = cosine(&q, &vector(text));
		assert!((hit["score"].as_f64().unwrap() - want).abs() < 1e-5, "{hit}");
	}
	assert!(data[0]["score"].as_f64() > data[1]["score"].as_f64());
	let (_, filtered) = post(
		address,
		"/v1/retrieve",
		&json!({"query": question, "datanets": ["weather", "ops"], "top_k": 5}),
	);
	let ids: Vec<&str> =
		filtered["data"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
	assert_eq!(ids.len(), 2);
	assert!(!ids.contains(&"rec-2"), "{filtered}");

	// A chat that retrieves its documents, attributed to the records by id.
	let chat = |extra: Value| {
		let mut body = json!({"messages": [{"role": "user", "content": question}], "max_tokens": 24, "temperature": 0});
		body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
		post(address, "/v1/chat/completions", &body)
	};
	let (status, answer) =
		chat(json!({"retrieval": {"top_k": 1}, "attribution": {"method": "leave_one_out"}}));
	assert_eq!(status, 200, "{answer}");
	assert!(
		answer["choices"][0]["message"]["content"].as_str().unwrap().contains("BLUE-HERON-42"),
		"{answer}"
	);
	assert_eq!(answer["retrieved"][0]["id"], "rec-2");
	assert_eq!(answer["retrieved"][0]["datanet"], "alpha");
	let scores = &answer["choices"][0]["attribution"]["scores"];
	assert_eq!(scores[0]["id"], "rec-2");
	assert!(scores[0]["score"].as_f64().unwrap() > 10.0, "{scores}");
	// Given documents first, the records retrieved after them.
	let (status, answer) = chat(json!({
		"documents": [{"id": "given", "text": "Rewards are paid in OPEN."}],
		"retrieval": {"top_k": 2, "datanets": ["alpha", "ops"]},
	}));
	assert_eq!(status, 200, "{answer}");
	let retrieved: Vec<(u64, &str)> = answer["retrieved"]
		.as_array()
		.unwrap()
		.iter()
		.map(|r| (r["index"].as_u64().unwrap(), r["id"].as_str().unwrap()))
		.collect();
	assert_eq!(retrieved, [(1, "rec-2"), (2, "rec-3")]);
	// Streamed, the records retrieved come with the first chunk.
	let body = json!({"messages": [{"role": "user", "content": question}], "max_tokens": 4,
		"stream": true, "documents": [{"id": "given", "text": "Rewards are paid in OPEN."}],
		"retrieval": {"top_k": 2, "datanets": ["alpha", "ops"]}});
	let (status, events) = stream(address, "/v1/chat/completions", &body);
	assert_eq!(status, 200, "{events:?}");
	assert_eq!(events[0]["retrieved"], answer["retrieved"], "{events:?}");
	assert!(events[1..].iter().all(|e| e.get("retrieved").is_none()), "{events:?}");
	// A search that finds nothing leaves the chat without documents.
	let (status, answer) = chat(json!({"retrieval": {"datanets": ["none"]}}));
	assert_eq!(status, 200, "{answer}");
	assert!(answer.get("retrieved").is_none(), "{answer}");
	let (status, _) = chat(json!({"retrieval": {"datanets": ["none"]}, "attribution": {}}));
	assert_eq!(status, 400);

	// Full at 4: two new records are refused (nothing added), a replacement is taken.
	let more = json!({"records": [
		{"id": "rec-4", "datanet": "ops", "text": "Four."},
		{"id": "rec-5", "datanet": "ops", "text": "Five."},
	]});
	refused_at(address, "/v1/records", more, "would make 5, more than the index holds (4)");
	let replace = json!({"records": [{"id": "rec-3", "datanet": "ops", "text": "Curators answer within a day."}]});
	let (status, replaced) = post(address, "/v1/records", &replace);
	assert_eq!((status, replaced), (200, json!({"added": 0, "total": 3})));
	let (status, deleted) = post(address, "/v1/records/delete", &json!({"ids": ["rec-1", "nope"]}));
	assert_eq!((status, deleted), (200, json!({"deleted": 1, "total": 2})));

	// Refused, each with its reason.
	refused_at(
		address,
		"/v1/retrieve",
		json!({"query": question, "top_k": 0}),
		"top_k: 1 to 64, not 0",
	);
	refused_at(address, "/v1/retrieve", json!({"query": question, "top_k": 65}), "not 65");
	let (status, answer) = chat(json!({
		"documents": vec![json!({"text": "x"}); 62],
		"retrieval": {"top_k": 3},
	}));
	assert_eq!(status, 400, "{answer}");
	let message = answer["error"]["message"].as_str().unwrap();
	assert!(message.contains("62 documents given and 3 retrieved"), "{message}");
	refused_at(address, "/v1/retrieve", json!({"query": " "}), "query: empty");
	refused_at(address, "/v1/retrieve", json!({}), "missing field `query`");
	refused_at(address, "/v1/retrieve", json!({"query": "x", "k": 2}), "unknown field");
	refused_at(address, "/v1/records", json!({"records": []}), "records: 1 to 2048");
	refused_at(
		address,
		"/v1/records",
		json!({"records": [{"id": "a", "datanet": "d", "text": ""}]}),
		"record 0: its text has 0 bytes",
	);
	refused_at(
		address,
		"/v1/completions",
		json!({"prompt": "Hi", "retrieval": {}}),
		"retrieval (on chat only)",
	);
	// Without --allow-runtime-records, records cannot be changed; without an embedding
	// model, nothing is retrieved.
	let locked = serve_with(VectorIndex::new(384, 4), false);
	let (status, answer) = post(locked, "/v1/records", &json!({"records": records_json()}));
	assert_eq!(status, 403, "{answer}");
	let (status, answer) = post(locked, "/v1/records/delete", &json!({"ids": ["rec-1"]}));
	assert_eq!(status, 403, "{answer}");
	let plain = start(model.clone(), tokenizer.clone(), Vec::new(), EngineConfig::default());
	refused_at(plain, "/v1/retrieve", json!({"query": question}), "serves no records");
}
