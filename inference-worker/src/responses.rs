//! OpenAI's Responses API (`POST /v1/responses`, as vLLM serves it) over the chat: a
//! response's request read as a chat's ([`chat_request`]), the chat's answer written as a
//! response ([`response_of`]), and its streamed chunks as the response's events
//! ([`ResponseEvents`]).
//!
//! Responses are not kept: each request carries its whole conversation, as a chat's does, and
//! `store: true`, `previous_response_id`, `conversation` and `background` are refused (400), as
//! is what the chat does not serve (tools other than functions, parts other than text,
//! reasoning effort, `include` other than the output's log-probabilities, `max_tool_calls`,
//! `truncation: "auto"`). The chat's own fields that OpenAI's Responses lack (vLLM's sampling
//! fields, and this worker's `documents`, `retrieval` and `attribution`) are passed on as they
//! are; OpenAI's `prompt` (`id`, `version`, `variables`) names a prompt registered on chain,
//! as the chat's does.

use serde_json::{json, Map, Value};

/// Fields refused unless they mean none: `(name, why)`.
const REFUSED: [(&str, &str); 2] = [
	("background", "a response is answered while the request waits, or streamed"),
	("max_tool_calls", "the chat's tool calls are not counted against a limit"),
];

/// What `include` may ask for: the output text's log-probabilities.
const LOGPROBS: &str = "message.output_text.logprobs";

/// The chat's fields that a response's request may carry as they are: OpenAI's, vLLM's and
/// this worker's (sources, retrieval, attribution, a registered prompt).
const PASSED: [&str; 23] = [
	"temperature",
	"top_p",
	"parallel_tool_calls",
	"seed",
	"top_k",
	"min_p",
	"repetition_penalty",
	"presence_penalty",
	"frequency_penalty",
	"stop",
	"stop_token_ids",
	"ignore_eos",
	"min_tokens",
	"logit_bias",
	"bad_words",
	"allowed_token_ids",
	"skip_special_tokens",
	"cache_salt",
	"chat_template_kwargs",
	"priority",
	"documents",
	"retrieval",
	"attribution",
];

/// A response's request read as the chat's.
#[derive(Debug)]
pub struct ChatRequest {
	/// The chat's body (`messages`, `max_completion_tokens`, `response_format`, ...).
	pub body: Value,
	/// What every response object of the answer repeats of the request (`instructions`,
	/// `temperature`, `tools`, ...), as OpenAI's repeats it.
	pub repeated: Map<String, Value>,
	/// The request's fields that are neither read nor passed on: ignored, to be logged.
	pub ignored: Vec<String>,
}

/// A 400's message: the field and what is wrong with it.
pub type Refusal = String;

/// `request` (a Responses API body) as a chat's body, or why it cannot be one.
pub fn chat_request(mut request: Map<String, Value>) -> Result<ChatRequest, Refusal> {
	let mut given = |name: &str| request.remove(name).filter(|v| !v.is_null());
	let mut chat = Map::new();
	if let Some(model) = given("model") {
		chat.insert("model".into(), model);
	}
	for (name, why) in REFUSED {
		match given(name) {
			None | Some(Value::Bool(false)) => {}
			Some(_) => return Err(format!("{name}: not served by this worker ({why})")),
		}
	}
	let kept = "responses are not kept by this worker: give the whole conversation as input";
	match given("store") {
		None | Some(Value::Bool(false)) => {}
		Some(_) => return Err(format!("store: {kept}")),
	}
	for name in ["previous_response_id", "conversation"] {
		if given(name).is_some() {
			return Err(format!("{name}: {kept}"));
		}
	}
	match given("truncation") {
		None => {}
		Some(Value::String(disabled)) if disabled == "disabled" => {}
		Some(other) => {
			return Err(format!(
				"truncation: {other} is not served (only \"disabled\": a conversation longer than \
				 the model's context is refused, not cut)"
			))
		}
	}
	let reasoning = given("reasoning");
	if let Some(reasoning) = &reasoning {
		if !reasoning.as_object().is_some_and(|r| r.values().all(Value::is_null)) {
			return Err(format!(
				"reasoning: {reasoning} is not served (the model does not reason)"
			));
		}
	}
	// The output's log-probabilities (with `top_logprobs` alternatives) when included, as
	// vLLM's: `top_logprobs` alone includes nothing.
	let logprobs = match given("include") {
		None => false,
		Some(Value::Array(items)) if items.iter().all(|item| item == LOGPROBS) => !items.is_empty(),
		Some(items) => {
			return Err(format!("include: {items} is not served (only [\"{LOGPROBS}\"])"))
		}
	};
	let top_logprobs = given("top_logprobs");
	if logprobs {
		chat.insert("logprobs".into(), json!(true));
		chat.insert("top_logprobs".into(), top_logprobs.clone().unwrap_or(json!(0)));
	}
	let instructions = given("instructions");
	let mut messages = Vec::new();
	if let Some(instructions) = &instructions {
		let text = instructions.as_str().ok_or("instructions: not a text")?;
		messages.push(json!({"role": "system", "content": text}));
	}
	match given("input") {
		None => return Err("input: missing field `input`".into()),
		Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
		Some(Value::Array(items)) if !items.is_empty() => {
			for (i, item) in items.into_iter().enumerate() {
				add_item(&mut messages, i, item)?;
			}
		}
		Some(other) => return Err(format!("input: {other} is neither a text nor a list of items")),
	}
	chat.insert("messages".into(), Value::Array(messages));
	let most = given("max_output_tokens");
	if let Some(most) = &most {
		if most.as_u64().is_none() {
			return Err(format!("max_output_tokens: {most} is not a number of tokens"));
		}
		chat.insert("max_completion_tokens".into(), most.clone());
	}
	let text = given("text");
	if let Some(format) = text.as_ref().and_then(|t| t.get("format")).filter(|f| !f.is_null()) {
		if let Some(format) = response_format(format)? {
			chat.insert("response_format".into(), format);
		}
	}
	let tools = given("tools");
	if let Some(tools) = &tools {
		let tools = tools.as_array().ok_or("tools: not a list")?;
		let tools: Result<Vec<Value>, _> =
			tools.iter().enumerate().map(|(i, t)| chat_tool(i, t)).collect();
		chat.insert("tools".into(), Value::Array(tools?));
	}
	let tool_choice = given("tool_choice");
	if let Some(choice) = &tool_choice {
		chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
	}
	if given("stream") == Some(Value::Bool(true)) {
		chat.insert("stream".into(), json!(true));
		chat.insert("stream_options".into(), json!({"include_usage": true}));
	}
	let (metadata, user) = (given("metadata"), given("user"));
	let mut repeated = Map::new();
	for name in PASSED {
		if let Some(value) = given(name) {
			if matches!(name, "temperature" | "top_p" | "parallel_tool_calls") {
				repeated.insert(name.into(), value.clone());
			}
			chat.insert(name.into(), value);
		}
	}
	// OpenAI's reusable prompt (`id`, `version`, `variables`) is the chat's registered one.
	if let Some(prompt) = given("prompt") {
		chat.insert("prompt".into(), prompt);
	}
	let defaults = [
		("instructions", instructions),
		("max_output_tokens", most),
		("temperature", Some(json!(1.0))),
		("top_p", Some(json!(1.0))),
		("parallel_tool_calls", Some(json!(true))),
		("tools", Some(tools.unwrap_or_else(|| json!([])))),
		("tool_choice", Some(tool_choice.unwrap_or_else(|| json!("auto")))),
		("text", Some(text.unwrap_or_else(|| json!({"format": {"type": "text"}})))),
		("truncation", Some(json!("disabled"))),
		("reasoning", Some(json!({"effort": null, "summary": null}))),
		("store", Some(json!(false))),
		("previous_response_id", None),
		("metadata", Some(metadata.unwrap_or_else(|| json!({})))),
		("user", user),
		("top_logprobs", Some(top_logprobs.unwrap_or(json!(0)))),
	];
	for (name, value) in defaults {
		repeated.entry(name).or_insert(value.unwrap_or(Value::Null));
	}
	let ignored = request.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k).collect();
	Ok(ChatRequest { body: Value::Object(chat), repeated, ignored })
}

/// Input item `i` added to the chat's `messages`: a message (its role's, `developer` as the
/// system's; its content a text or text parts), a function's call (an assistant's tool call,
/// with the calls right after it in the same message) or a call's output (a tool's message).
fn add_item(messages: &mut Vec<Value>, i: usize, item: Value) -> Result<(), Refusal> {
	let at = |field: &str| format!("input[{i}]{field}");
	let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
	match kind {
		"message" => {
			let role = match item.get("role").and_then(Value::as_str) {
				Some("developer") => "system",
				Some(role @ ("system" | "user" | "assistant")) => role,
				Some(other) => {
					return Err(format!("{}: the role {other:?} is not served", at(".role")))
				}
				None => return Err(format!("{}: missing", at(".role"))),
			};
			let content = content_text(item.get("content"), &at(".content"))?;
			messages.push(json!({"role": role, "content": content}));
		}
		"function_call" => {
			let field = |name: &str| {
				item.get(name)
					.and_then(Value::as_str)
					.ok_or_else(|| format!("{}: missing, or not a text", at(&format!(".{name}"))))
			};
			let call = json!({
				"id": field("call_id")?,
				"type": "function",
				"function": {"name": field("name")?, "arguments": field("arguments")?},
			});
			// Calls one after the other are one assistant's turn, after its text if it has one.
			let last = messages.last_mut().filter(|m| m["role"] == "assistant");
			match last {
				Some(message) => match message["tool_calls"].as_array_mut() {
					Some(calls) => calls.push(call),
					None => message["tool_calls"] = json!([call]),
				},
				None => messages
					.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
			}
		}
		"function_call_output" => {
			let id = item
				.get("call_id")
				.and_then(Value::as_str)
				.ok_or_else(|| format!("{}: missing, or not a text", at(".call_id")))?;
			let output = content_text(item.get("output"), &at(".output"))?;
			messages.push(json!({"role": "tool", "tool_call_id": id, "content": output}));
		}
		other => {
			return Err(format!(
				"{}: {other:?} items are not served (messages, function_call and \
				 function_call_output are)",
				at(".type")
			))
		}
	}
	Ok(())
}

/// A message's or a call output's content as a text: a text, or a list of text parts
/// (`input_text`, `output_text`) joined as the chat joins them.
fn content_text(content: Option<&Value>, at: &str) -> Result<Value, Refusal> {
	match content {
		Some(Value::String(text)) => Ok(json!(text)),
		Some(Value::Array(parts)) => parts
			.iter()
			.enumerate()
			.map(|(j, part)| match (part.get("type").and_then(Value::as_str), part.get("text")) {
				(Some("input_text" | "output_text" | "text"), Some(Value::String(text))) => {
					Ok(json!({"type": "text", "text": text}))
				}
				(kind, _) => {
					Err(format!("{at}[{j}]: {} parts are not served (only text)", kind_name(kind)))
				}
			})
			.collect::<Result<Vec<_>, _>>()
			.map(Value::Array),
		Some(other) => Err(format!("{at}: {other} is neither a text nor a list of parts")),
		None => Err(format!("{at}: missing")),
	}
}

/// A part's or a tool's `type` as an error names it: quoted, or `untyped`.
fn kind_name(kind: Option<&str>) -> String {
	kind.map_or_else(|| "untyped".to_string(), |k| format!("{k:?}"))
}

/// A response's (and its last item's) status after the chat's `finish_reason`: `incomplete`
/// when `max_output_tokens` cut it.
fn status_after(finish_reason: Option<&str>) -> &'static str {
	match finish_reason {
		Some("length") => "incomplete",
		_ => "completed",
	}
}

/// `text.format` as the chat's `response_format` (none for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, Refusal> {
	match format.get("type").and_then(Value::as_str) {
		Some("text") => Ok(None),
		Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
		Some("json_schema") => {
			let mut schema = Map::new();
			for name in ["name", "description", "schema", "strict"] {
				if let Some(value) = format.get(name) {
					schema.insert(name.into(), value.clone());
				}
			}
			Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
		}
		_ => Err(format!("text.format: {format} is not served (text, json_object or json_schema)")),
	}
}

/// Tool `i` of a response's request (`type`, `name`, `description`, `parameters`, `strict`
/// side by side) as the chat's (the function's under `function`).
fn chat_tool(i: usize, tool: &Value) -> Result<Value, Refusal> {
	match tool.get("type").and_then(Value::as_str) {
		Some("function") => {
			let mut function = tool.as_object().cloned().unwrap_or_default();
			// (OpenAI's Agents SDK sends `"description": null`.)
			function.retain(|name, value| name != "type" && !value.is_null());
			Ok(json!({"type": "function", "function": function}))
		}
		other => {
			Err(format!("tools[{i}]: {} tools are not served (only functions)", kind_name(other)))
		}
	}
}

/// `tool_choice` as the chat's: `auto`, `none`, `required`, or a function by its name.
fn chat_tool_choice(choice: &Value) -> Result<Value, Refusal> {
	match choice {
		Value::String(_) => Ok(choice.clone()),
		Value::Object(fields) if fields.get("type") == Some(&json!("function")) => {
			match fields.get("name") {
				Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
				None => Err("tool_choice.name: missing".into()),
			}
		}
		other => {
			Err(format!("tool_choice: {other} is not served (auto, none, required or a function)"))
		}
	}
}

/// A new id: `prefix_` and 32 hex digits (`resp_`, `msg_`, `fc_`).
pub fn new_id(prefix: &str) -> String {
	format!("{prefix}_{:032x}", rand::random::<u128>())
}

/// The response object that every answer to one request shares the start of: its `id`,
/// `created_at`, `model` and what it repeats of the request.
#[derive(Clone, Debug)]
pub struct Head {
	/// `resp_...`.
	pub id: String,
	/// Seconds since the epoch.
	pub created_at: u64,
	/// The model (or adapter) that answers.
	pub model: String,
	/// See [`ChatRequest::repeated`].
	pub repeated: Map<String, Value>,
}

impl Head {
	/// The response object with `status`, `output`, `usage` and what the chat's answer adds
	/// (`extra`: the adapter and prompt registered on chain, the records retrieved, the
	/// attribution).
	fn response(
		&self,
		status: &str,
		output: Vec<Value>,
		usage: Value,
		extra: &Map<String, Value>,
	) -> Value {
		let incomplete = match status {
			"incomplete" => json!({"reason": "max_output_tokens"}),
			_ => Value::Null,
		};
		let mut response = json!({
			"id": self.id,
			"object": "response",
			"created_at": self.created_at,
			"status": status,
			"error": null,
			"incomplete_details": incomplete,
			"model": self.model,
			"output": output,
			"usage": usage,
		});
		if let Some(fields) = response.as_object_mut() {
			fields.extend(self.repeated.clone());
			fields.extend(extra.clone());
		}
		response
	}
}

/// The chat's `usage` as a response's (`input_tokens`, `output_tokens`, their details).
fn usage_of(chat: &Value) -> Value {
	let count = |name: &str| chat.get(name).and_then(Value::as_u64).unwrap_or(0);
	let cached = chat.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64);
	json!({
		"input_tokens": count("prompt_tokens"),
		"input_tokens_details": {"cached_tokens": cached.unwrap_or(0)},
		"output_tokens": count("completion_tokens"),
		"output_tokens_details": {"reasoning_tokens": 0},
		"total_tokens": count("total_tokens"),
	})
}

/// A message item of the output, with its text and its tokens' log-probabilities (none when
/// not included).
fn message_item(id: &str, status: &str, text: &str, logprobs: &[Value]) -> Value {
	json!({
		"type": "message",
		"id": id,
		"status": status,
		"role": "assistant",
		"content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}],
	})
}

/// A chat choice's (or chunk's) tokens' log-probabilities: OpenAI's entries, the same in a
/// response (`token`, `logprob`, `bytes`, `top_logprobs`).
fn logprobs_of(choice: &Value) -> &[Value] {
	choice.pointer("/logprobs/content").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A function call item of the output.
fn call_item(id: &str, status: &str, (call_id, name, arguments): (&str, &str, &str)) -> Value {
	json!({
		"type": "function_call",
		"id": id,
		"call_id": call_id,
		"name": name,
		"arguments": arguments,
		"status": status,
	})
}

/// The fields of a chat's answer that are neither OpenAI's nor a choice's: what this worker
/// adds (`adapter`, `prompt`, `retrieved`), kept on the response; the prompt registered on
/// chain as `registered_prompt` (a response's `prompt` is OpenAI's reference to one, of
/// another shape).
fn added_fields(answer: &Map<String, Value>) -> Map<String, Value> {
	const CHATS: [&str; 8] = [
		"id",
		"object",
		"created",
		"model",
		"choices",
		"usage",
		"system_fingerprint",
		"prompt_logprobs",
	];
	answer
		.iter()
		.filter(|(k, _)| !CHATS.contains(&k.as_str()))
		.map(|(k, v)| match k.as_str() {
			"prompt" => ("registered_prompt".to_string(), v.clone()),
			_ => (k.clone(), v.clone()),
		})
		.collect()
}

/// The chat's whole answer (`chat.completion`, one choice) as a response.
pub fn response_of(head: &Head, answer: &Value) -> Value {
	let choice = &answer["choices"][0];
	let message = &choice["message"];
	let status = status_after(choice["finish_reason"].as_str());
	let text = message["content"].as_str().unwrap_or_default();
	let calls = message["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default();
	let mut output = Vec::new();
	if !text.is_empty() || calls.is_empty() {
		// Before calls, the text is whole: only the last item can have been cut.
		let status = if calls.is_empty() { status } else { "completed" };
		output.push(message_item(&new_id("msg"), status, text, logprobs_of(choice)));
	}
	for (i, call) in calls.iter().enumerate() {
		let field = |path: &str| call.pointer(path).and_then(Value::as_str).unwrap_or_default();
		let fields = (field("/id"), field("/function/name"), field("/function/arguments"));
		// Only the last call can have been cut.
		let status = if i + 1 == calls.len() { status } else { "completed" };
		output.push(call_item(&new_id("fc"), status, fields));
	}
	let mut extra = answer.as_object().map(added_fields).unwrap_or_default();
	if let Some(attribution) = choice.get("attribution") {
		extra.insert("attribution".into(), attribution.clone());
	}
	head.response(status, output, usage_of(&answer["usage"]), &extra)
}

/// One event of a streamed response: its `type` and its object (with the type and sequence
/// number in it).
pub type Event = (&'static str, Value);

/// An output item being streamed.
#[derive(Debug)]
enum Open {
	/// A message: its id, text and tokens' log-probabilities so far.
	Message { id: String, text: String, logprobs: Vec<Value> },
	/// A function call: its item id, call id, name and arguments so far.
	Call { id: String, call_id: String, name: String, arguments: String },
}

/// The events of a streamed response, from the chat's streamed chunks (one choice, with its
/// usage at the end): `response.created` and `response.in_progress`; for each output item,
/// `response.output_item.added`, its text's or arguments' deltas and their `done`, then
/// `response.output_item.done`; at the end `response.completed` (or `response.incomplete`,
/// cut at `max_output_tokens`) with the whole response; `error` for a chunk that is one.
#[derive(Debug)]
pub struct ResponseEvents {
	head: Head,
	/// The next event's `sequence_number`.
	sequence: u64,
	/// The item being streamed, and the chat's tool call index it is (for a call).
	open: Option<(Open, Option<u64>)>,
	/// The items streamed whole.
	output: Vec<Value>,
	/// The chat's finish reason, once it came.
	finish: Option<String>,
	/// The response's usage, once the chat's came.
	usage: Value,
	/// What the chat's chunks add (see [`added_fields`]) and the answer's attribution.
	extra: Map<String, Value>,
	/// Whether the response has ended (completed, or with an error): nothing more is sent.
	ended: bool,
}

impl ResponseEvents {
	/// The events of an answer to `head`'s request.
	pub fn new(head: Head) -> Self {
		Self {
			head,
			sequence: 0,
			open: None,
			output: Vec::new(),
			finish: None,
			usage: Value::Null,
			extra: Map::new(),
			ended: false,
		}
	}

	/// An event of type `kind` with `fields`, numbered.
	fn event(&mut self, kind: &'static str, fields: Value) -> Event {
		let mut event = json!({"type": kind, "sequence_number": self.sequence});
		if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
			event.extend(fields);
		}
		self.sequence += 1;
		(kind, event)
	}

	/// The events before the first chunk: the response created, in progress.
	pub fn start(&mut self) -> Vec<Event> {
		let response = self.head.response("in_progress", Vec::new(), Value::Null, &Map::new());
		vec![
			self.event("response.created", json!({"response": response})),
			self.event("response.in_progress", json!({"response": response})),
		]
	}

	/// The events of the chat's chunk `chunk` (an `error` event for an error's object).
	pub fn chunk(&mut self, chunk: &Value) -> Vec<Event> {
		let mut events = Vec::new();
		if self.ended {
			return events;
		}
		if let Some(error) = chunk.get("error") {
			self.ended = true;
			let field = |name: &str| error.get(name).cloned().unwrap_or(Value::Null);
			// OpenAI's documented fields, and the same under `error` as its API sends them
			// (what openai-python raises an error for).
			let fields = json!({
				"code": field("code"),
				"message": field("message"),
				"param": null,
				"error": {"type": field("type"), "code": field("code"),
					"message": field("message"), "param": null},
			});
			events.push(self.event("error", fields));
			return events;
		}
		if let Some(fields) = chunk.as_object() {
			self.extra.extend(added_fields(fields));
		}
		if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
			self.usage = usage_of(usage);
		}
		let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) else {
			return events;
		};
		let delta = &choice["delta"];
		let text = delta["content"].as_str().unwrap_or_default();
		// The tokens' log-probabilities go with the text: those of a call's tokens (or of text
		// held back, as a call may begin there) have no text of their own to go with.
		let calling =
			!delta["tool_calls"].is_null() || matches!(self.open, Some((Open::Call { .. }, _)));
		let scored = if calling && text.is_empty() { &[] } else { logprobs_of(choice) };
		if !text.is_empty() || !scored.is_empty() {
			if !matches!(self.open, Some((Open::Message { .. }, _))) {
				events.extend(self.close("completed"));
				events.extend(self.open_message());
			}
			if let Some((Open::Message { id, text: all, logprobs }, _)) = &mut self.open {
				all.push_str(text);
				logprobs.extend_from_slice(scored);
				let id = id.clone();
				let fields = json!({"item_id": id, "output_index": self.output.len(),
					"content_index": 0, "delta": text, "logprobs": scored});
				events.push(self.event("response.output_text.delta", fields));
			}
		}
		for call in delta["tool_calls"].as_array().map(Vec::as_slice).unwrap_or_default() {
			let index = call["index"].as_u64();
			if !matches!(&self.open, Some((Open::Call { .. }, open)) if *open == index) {
				events.extend(self.close("completed"));
				let field = |path: &str| {
					call.pointer(path).and_then(Value::as_str).unwrap_or_default().to_string()
				};
				let (call_id, name) = (field("/id"), field("/function/name"));
				events.extend(self.open_call(index, call_id, name));
			}
			// An id or a name that comes after the call's first delta.
			if let Some((Open::Call { call_id, name, .. }, _)) = &mut self.open {
				let later = |path: &str| call.pointer(path).and_then(Value::as_str);
				for (field, path) in [(call_id, "/id"), (name, "/function/name")] {
					if let Some(value) = later(path).filter(|_| field.is_empty()) {
						*field = value.to_string();
					}
				}
			}
			let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
			if let (Some(delta), Some((Open::Call { id, arguments: all, .. }, _))) =
				(arguments.filter(|a| !a.is_empty()), &mut self.open)
			{
				all.push_str(delta);
				let id = id.clone();
				let fields =
					json!({"item_id": id, "output_index": self.output.len(), "delta": delta});
				events.push(self.event("response.function_call_arguments.delta", fields));
			}
		}
		if let Some(reason) = choice["finish_reason"].as_str() {
			self.finish = Some(reason.into());
		}
		if let Some(attribution) = choice.get("attribution").filter(|a| !a.is_null()) {
			self.extra.insert("attribution".into(), attribution.clone());
		}
		events
	}

	/// The events that open a message item.
	fn open_message(&mut self) -> Vec<Event> {
		let id = new_id("msg");
		let index = self.output.len();
		let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant",
			"content": []});
		let part = json!({"type": "output_text", "text": "", "annotations": []});
		let events = vec![
			self.event("response.output_item.added", json!({"output_index": index, "item": item})),
			self.event(
				"response.content_part.added",
				json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
			),
		];
		self.open = Some((Open::Message { id, text: String::new(), logprobs: Vec::new() }, None));
		events
	}

	/// The event that opens a function call item, the chat's call `index`.
	fn open_call(&mut self, index: Option<u64>, call_id: String, name: String) -> Vec<Event> {
		let id = new_id("fc");
		let item = call_item(&id, "in_progress", (&call_id, &name, ""));
		let output_index = self.output.len();
		let event = self.event(
			"response.output_item.added",
			json!({"output_index": output_index, "item": item}),
		);
		self.open = Some((Open::Call { id, call_id, name, arguments: String::new() }, index));
		vec![event]
	}

	/// The events that close the item being streamed (if one is), with `status`.
	fn close(&mut self, status: &str) -> Vec<Event> {
		let Some((open, _)) = self.open.take() else {
			return Vec::new();
		};
		let index = self.output.len();
		let mut events = Vec::new();
		let item = match open {
			Open::Message { id, text, logprobs } => {
				let item = message_item(&id, status, &text, &logprobs);
				let at = json!({"item_id": id, "output_index": index, "content_index": 0});
				let mut done = at.clone();
				done["text"] = json!(text);
				done["logprobs"] = json!(logprobs);
				events.push(self.event("response.output_text.done", done));
				let mut done = at;
				done["part"] = item["content"][0].clone();
				events.push(self.event("response.content_part.done", done));
				item
			}
			Open::Call { id, call_id, name, arguments } => {
				let done = json!({"item_id": id, "output_index": index, "name": name,
					"arguments": arguments});
				events.push(self.event("response.function_call_arguments.done", done));
				call_item(&id, status, (&call_id, &name, &arguments))
			}
		};
		events.push(
			self.event("response.output_item.done", json!({"output_index": index, "item": item})),
		);
		self.output.push(item);
		events
	}

	/// The events at the chat's end: the item being streamed closed (an empty message if
	/// nothing was), then the whole response.
	pub fn done(&mut self) -> Vec<Event> {
		if self.ended {
			return Vec::new();
		}
		self.ended = true;
		let status = status_after(self.finish.as_deref());
		let mut events = Vec::new();
		if self.open.is_none() && self.output.is_empty() {
			events.extend(self.open_message());
		}
		events.extend(self.close(status));
		let output = self.output.clone();
		let response = self.head.response(status, output, self.usage.clone(), &self.extra);
		let kind = match status {
			"incomplete" => "response.incomplete",
			_ => "response.completed",
		};
		events.push(self.event(kind, json!({"response": response})));
		events
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn read(request: Value) -> Result<ChatRequest, Refusal> {
		chat_request(request.as_object().unwrap().clone())
	}

	#[test]
	fn a_request_is_the_chats() {
		let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
		let request = read(json!({
			"model": "smollm2",
			"instructions": "Answer briefly.",
			"input": "Where is Paris?",
			"max_output_tokens": 12,
			"temperature": 0,
			"seed": 7,
			"documents": [{"text": "Paris is in France."}],
			"text": {"format": {"type": "json_schema", "name": "city", "schema": schema,
				"strict": true}},
			"tools": [{"type": "function", "name": "find", "parameters": schema,
				"description": null}],
			"tool_choice": {"type": "function", "name": "find"},
			"stream": true,
			"store": false,
			"metadata": {"k": "v"},
			"service_tier": "auto",
			"reasoning": null,
			"prompt_cache_key": null,
		}))
		.unwrap();
		assert_eq!(
			request.body,
			json!({
				"model": "smollm2",
				"messages": [{"role": "system", "content": "Answer briefly."},
					{"role": "user", "content": "Where is Paris?"}],
				"max_completion_tokens": 12,
				"temperature": 0,
				"seed": 7,
				"documents": [{"text": "Paris is in France."}],
				"response_format": {"type": "json_schema", "json_schema": {"name": "city",
					"schema": schema, "strict": true}},
				"tools": [{"type": "function", "function": {"name": "find", "parameters": schema}}],
				"tool_choice": {"type": "function", "function": {"name": "find"}},
				"stream": true,
				"stream_options": {"include_usage": true},
			})
		);
		// What is neither read nor passed on is ignored (and logged by the caller); nulls are
		// as absent.
		assert_eq!(request.ignored, ["service_tier"]);
		let repeated = &request.repeated;
		assert_eq!(repeated["instructions"], "Answer briefly.");
		assert_eq!((&repeated["temperature"], &repeated["top_p"]), (&json!(0), &json!(1.0)));
		assert_eq!(repeated["max_output_tokens"], 12);
		assert_eq!(repeated["metadata"], json!({"k": "v"}));
		assert_eq!(repeated["store"], false);
		assert_eq!(repeated["tool_choice"], json!({"type": "function", "name": "find"}));
		assert_eq!(repeated["user"], Value::Null);
		assert!(!repeated.contains_key("seed"));
	}

	#[test]
	fn input_items_are_the_chats_messages() {
		let request = read(json!({"input": [
			{"role": "developer", "content": "Be brief."},
			{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"},
				{"type": "input_text", "text": "there"}]},
			{"role": "assistant", "content": [{"type": "output_text", "text": "Let me look."}]},
			{"type": "function_call", "call_id": "c1", "name": "find", "arguments": "{}"},
			{"type": "function_call", "call_id": "c2", "name": "look", "arguments": "{\"a\":1}"},
			{"type": "function_call_output", "call_id": "c1", "output": "found"},
			{"type": "function_call", "call_id": "c3", "name": "find", "arguments": "{}"},
		]}))
		.unwrap();
		let call = |id: &str, name: &str, arguments: &str| {
			let function = json!({"name": name, "arguments": arguments});
			json!({"id": id, "type": "function", "function": function})
		};
		assert_eq!(
			request.body["messages"],
			json!([
				{"role": "system", "content": "Be brief."},
				{"role": "user", "content": [{"type": "text", "text": "Hi"},
					{"type": "text", "text": "there"}]},
				{"role": "assistant", "content": [{"type": "text", "text": "Let me look."}],
					"tool_calls": [call("c1", "find", "{}"), call("c2", "look", "{\"a\":1}")]},
				{"role": "tool", "tool_call_id": "c1", "content": "found"},
				{"role": "assistant", "content": null, "tool_calls": [call("c3", "find", "{}")]},
			])
		);
		assert!(request.ignored.is_empty());
	}

	#[test]
	fn included_logprobs_are_the_chats() {
		let asked = json!({"input": "x", "include": [LOGPROBS], "top_logprobs": 2});
		let request = read(asked).unwrap();
		assert_eq!(
			(&request.body["logprobs"], &request.body["top_logprobs"]),
			(&json!(true), &json!(2))
		);
		assert_eq!(request.repeated["top_logprobs"], 2);
		// Without the include, as vLLM: no log-probabilities.
		let request = read(json!({"input": "x", "top_logprobs": 2})).unwrap();
		assert!(
			request.body.get("logprobs").is_none() && request.body.get("top_logprobs").is_none()
		);
		let request = read(json!({"input": "x", "include": [LOGPROBS]})).unwrap();
		assert_eq!(request.body["top_logprobs"], 0);

		let entry = |token: &str| {
			json!({"token": token, "logprob": -0.5, "bytes": [65],
			"top_logprobs": []})
		};
		let answer = json!({"choices": [{"finish_reason": "stop", "logprobs": {"content":
			[entry("A"), entry("B")]}, "message": {"role": "assistant", "content": "AB"}}]});
		let response = response_of(&head(), &answer);
		assert_eq!(
			response["output"][0]["content"][0]["logprobs"],
			json!([entry("A"), entry("B")])
		);

		let mut streamed = ResponseEvents::new(head());
		let mut events = streamed.start();
		for token in ["A", "B"] {
			let chunk = json!({"choices": [{"index": 0, "delta": {"content": token},
				"logprobs": {"content": [entry(token)]}, "finish_reason": null}]});
			events.extend(streamed.chunk(&chunk));
		}
		events.extend(streamed.done());
		let deltas: Vec<&Value> = events
			.iter()
			.filter(|(kind, _)| *kind == "response.output_text.delta")
			.map(|(_, e)| &e["logprobs"])
			.collect();
		assert_eq!(deltas, [&json!([entry("A")]), &json!([entry("B")])]);
		let done = events.iter().find(|(kind, _)| *kind == "response.output_text.done").unwrap();
		assert_eq!(done.1["logprobs"], json!([entry("A"), entry("B")]));
		let output = &events.last().unwrap().1["response"]["output"][0]["content"][0];
		assert_eq!(output["logprobs"], json!([entry("A"), entry("B")]));
	}

	#[test]
	fn what_is_not_served_is_refused() {
		let refused = |fields: Value, says: &str| {
			let mut request = json!({"input": "x"});
			for (name, value) in fields.as_object().unwrap() {
				request[name] = value.clone();
			}
			let refusal = read(request).unwrap_err();
			assert!(refusal.contains(says), "{refusal:?} does not say {says:?}");
		};
		refused(json!({"store": true}), "store: responses are not kept");
		refused(json!({"previous_response_id": "resp_1"}), "previous_response_id: responses");
		refused(json!({"conversation": "conv_1"}), "conversation: responses are not kept");
		refused(json!({"background": true}), "background: not served");
		refused(json!({"max_tool_calls": 1}), "max_tool_calls: not served");
		refused(json!({"truncation": "auto"}), "truncation: \"auto\" is not served");
		refused(json!({"reasoning": {"effort": "high"}}), "the model does not reason");
		refused(json!({"include": ["reasoning.encrypted_content"]}), "include: [\"reasoning");
		refused(json!({"input": []}), "input: [] is neither");
		refused(json!({"input": 3}), "input: 3 is neither");
		refused(json!({"max_output_tokens": -1}), "max_output_tokens: -1 is not a number");
		refused(json!({"instructions": 3}), "instructions: not a text");
		refused(
			json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
			"input[0].content[0]: \"input_image\" parts are not served",
		);
		refused(json!({"input": [{"role": "tool", "content": "x"}]}), "input[0].role: the role");
		refused(json!({"input": [{"content": "x"}]}), "input[0].role: missing");
		refused(json!({"input": [{"type": "reasoning"}]}), "input[0].type: \"reasoning\" items");
		refused(
			json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}),
			"input[0].call_id: missing",
		);
		refused(json!({"tools": [{"type": "web_search"}]}), "tools[0]: \"web_search\" tools");
		refused(json!({"tool_choice": {"type": "file_search"}}), "tool_choice: ");
		refused(json!({"text": {"format": {"type": "grammar"}}}), "text.format: ");
		let none = json!({"input": "x", "store": false, "background": false, "top_logprobs": 0,
			"truncation": "disabled", "reasoning": {"effort": null}, "include": [],
			"previous_response_id": null});
		assert!(read(none).is_ok());
		assert!(read(json!({})).unwrap_err().contains("input: missing field"));
	}

	fn head() -> Head {
		let repeated = read(json!({"input": "x", "max_output_tokens": 4})).unwrap().repeated;
		Head { id: "resp_1".into(), created_at: 5, model: "smollm2".into(), repeated }
	}

	#[test]
	fn a_chats_answer_is_a_response() {
		let usage = json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13});
		let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 5,
			"model": "smollm2", "usage": usage, "retrieved": [{"id": "rec-1"}],
			"prompt": {"id": 3, "version": 1},
			"choices": [{"index": 0, "finish_reason": "length", "logprobs": null,
				"attribution": {"method": "leave_one_out"},
				"message": {"role": "assistant", "content": "Paris is"}}]});
		let response = response_of(&head(), &answer);
		assert_eq!((&response["id"], &response["object"]), (&json!("resp_1"), &json!("response")));
		assert_eq!(response["status"], "incomplete");
		assert_eq!(response["incomplete_details"], json!({"reason": "max_output_tokens"}));
		assert_eq!(response["output"][0]["type"], "message");
		assert_eq!(response["output"][0]["status"], "incomplete");
		assert_eq!(response["output"][0]["content"][0]["text"], "Paris is");
		assert_eq!(response["output"].as_array().unwrap().len(), 1);
		assert_eq!(
			response["usage"],
			json!({"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0},
				"output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
				"total_tokens": 13})
		);
		assert_eq!(response["retrieved"], json!([{"id": "rec-1"}]));
		assert_eq!(response["registered_prompt"], json!({"id": 3, "version": 1}));
		assert!(response.get("prompt").is_none());
		assert_eq!(response["attribution"], json!({"method": "leave_one_out"}));
		assert_eq!(response["max_output_tokens"], 4);
		assert!(response.get("choices").is_none() && response.get("created").is_none());

		// Calls, without text: only the calls, the answer complete.
		let calls = json!([{"id": "call_1", "type": "function",
			"function": {"name": "find", "arguments": "{\"city\":\"Paris\"}"}}]);
		let answer = json!({"usage": usage, "choices": [{"finish_reason": "tool_calls",
			"message": {"role": "assistant", "content": null, "tool_calls": calls}}]});
		let response = response_of(&head(), &answer);
		assert_eq!(response["status"], "completed");
		assert_eq!(response["incomplete_details"], Value::Null);
		let output = response["output"].as_array().unwrap();
		assert_eq!(output.len(), 1);
		assert_eq!(output[0]["type"], "function_call");
		assert_eq!(
			(&output[0]["call_id"], &output[0]["name"], &output[0]["arguments"]),
			(&json!("call_1"), &json!("find"), &json!("{\"city\":\"Paris\"}"))
		);
		assert!(output[0]["id"].as_str().unwrap().starts_with("fc_"));
		assert_eq!(output[0]["status"], "completed");

		// Cut at max_output_tokens: the last call is incomplete, the text and the call before it
		// whole.
		let two = json!([calls[0], calls[0]]);
		let answer = json!({"usage": usage, "choices": [{"finish_reason": "length",
			"message": {"role": "assistant", "content": "Let me look.", "tool_calls": two}}]});
		let response = response_of(&head(), &answer);
		assert_eq!(response["status"], "incomplete");
		let statuses: Vec<&Value> =
			response["output"].as_array().unwrap().iter().map(|o| &o["status"]).collect();
		assert_eq!(statuses, [&json!("completed"), &json!("completed"), &json!("incomplete")]);
	}

	/// The events' types in order, and checks their sequence numbers count from 0.
	fn kinds(events: &[Event]) -> Vec<&'static str> {
		for (i, (kind, event)) in events.iter().enumerate() {
			assert_eq!((&event["type"], &event["sequence_number"]), (&json!(kind), &json!(i)));
		}
		events.iter().map(|(kind, _)| *kind).collect()
	}

	#[test]
	fn a_chats_chunks_are_a_responses_events() {
		let mut streamed = ResponseEvents::new(head());
		let mut events = streamed.start();
		let chunk = |delta: Value, finish: Value| {
			json!({"id": "c", "object": "chat.completion.chunk", "created": 5, "model": "m",
				"usage": null, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
		};
		let mut first = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
		first["adapter"] = json!({"id": 3});
		events.extend(streamed.chunk(&first));
		events.extend(streamed.chunk(&chunk(json!({"content": "Paris"}), Value::Null)));
		events.extend(streamed.chunk(&chunk(json!({"content": " is"}), Value::Null)));
		events.extend(streamed.chunk(&chunk(json!({}), json!("stop"))));
		let usage = json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11});
		events.extend(streamed.chunk(&json!({"choices": [], "usage": usage})));
		events.extend(streamed.done());
		assert!(streamed.done().is_empty());
		assert_eq!(
			kinds(&events),
			[
				"response.created",
				"response.in_progress",
				"response.output_item.added",
				"response.content_part.added",
				"response.output_text.delta",
				"response.output_text.delta",
				"response.output_text.done",
				"response.content_part.done",
				"response.output_item.done",
				"response.completed",
			]
		);
		assert_eq!(events[0].1["response"]["status"], "in_progress");
		assert_eq!(events[0].1["response"]["output"], json!([]));
		let item = events[2].1["item"]["id"].clone();
		assert!(events[3..9].iter().all(|(_, e)| e["item_id"] == item || e["item"]["id"] == item));
		assert_eq!(events[6].1["text"], "Paris is");
		let response = &events[9].1["response"];
		assert_eq!(response["status"], "completed");
		assert_eq!(response["output"], json!([events[8].1["item"]]));
		assert_eq!(response["output"][0]["content"][0]["text"], "Paris is");
		assert_eq!(response["usage"]["output_tokens"], 2);
		assert_eq!(response["adapter"], json!({"id": 3}));
	}

	#[test]
	fn streamed_calls_are_function_call_items() {
		let mut streamed = ResponseEvents::new(head());
		// Each chunk with its tokens' log-probabilities: a call's go with no text.
		let chunk = |delta: Value, finish: Value| {
			let logprobs = json!({"content": [{"token": "x", "logprob": -1.0}]});
			let choice =
				json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs});
			json!({"choices": [choice]})
		};
		let call = |index: u64, head: bool, arguments: &str| {
			let mut call = json!({"index": index, "function": {"arguments": arguments}});
			if head {
				call["id"] = json!(format!("call_{index}"));
				call["type"] = json!("function");
				call["function"]["name"] = json!(format!("f{index}"));
			}
			json!({"tool_calls": [call]})
		};
		let mut events = streamed.start();
		events.extend(streamed.chunk(&json!({"choices": [{"index": 0, "finish_reason": null,
				"delta": {"role": "assistant", "content": ""}}]})));
		events.extend(streamed.chunk(&chunk(call(0, true, ""), json!(null))));
		events.extend(streamed.chunk(&chunk(call(0, false, "{\"a\":"), json!(null))));
		events.extend(streamed.chunk(&chunk(call(0, false, "1}"), json!(null))));
		events.extend(streamed.chunk(&chunk(call(1, true, "{}"), json!("tool_calls"))));
		events.extend(streamed.done());
		assert_eq!(
			kinds(&events),
			[
				"response.created",
				"response.in_progress",
				"response.output_item.added",
				"response.function_call_arguments.delta",
				"response.function_call_arguments.delta",
				"response.function_call_arguments.done",
				"response.output_item.done",
				"response.output_item.added",
				"response.function_call_arguments.delta",
				"response.function_call_arguments.done",
				"response.output_item.done",
				"response.completed",
			]
		);
		assert_eq!(events[5].1["arguments"], "{\"a\":1}");
		assert_eq!(events[6].1["output_index"], 0);
		assert_eq!(events[7].1["output_index"], 1);
		let output = &events[11].1["response"]["output"];
		assert_eq!(output[0]["call_id"], "call_0");
		assert_eq!(output[0]["name"], "f0");
		assert_eq!(output[1]["arguments"], "{}");
		assert_eq!(output.as_array().unwrap().len(), 2);
	}

	#[test]
	fn a_calls_id_and_name_may_come_after_its_first_delta() {
		let mut streamed = ResponseEvents::new(head());
		let chunk = |call: Value, finish: Value| {
			json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]},
				"finish_reason": finish}]})
		};
		let mut events = streamed.start();
		let arguments = json!({"index": 0, "function": {"arguments": "{"}});
		events.extend(streamed.chunk(&chunk(arguments, Value::Null)));
		let named =
			json!({"index": 0, "id": "call_9", "function": {"name": "f", "arguments": "}"}});
		events.extend(streamed.chunk(&chunk(named, json!("length"))));
		events.extend(streamed.done());
		let done = events.iter().find(|(kind, _)| *kind == "response.output_item.done").unwrap();
		assert_eq!(done.1["item"]["call_id"], "call_9");
		assert_eq!(done.1["item"]["name"], "f");
		assert_eq!(done.1["item"]["arguments"], "{}");
		assert_eq!(done.1["item"]["status"], "incomplete");
		assert_eq!(events.last().unwrap().0, "response.incomplete");
	}

	#[test]
	fn an_error_chunk_ends_the_events_and_an_empty_answer_is_an_empty_message() {
		let mut streamed = ResponseEvents::new(head());
		let error = json!({"error": {"message": "the engine stopped", "type": "server_error",
			"code": "internal_error"}});
		let events = streamed.chunk(&error);
		assert_eq!(kinds(&events), ["error"]);
		assert_eq!(events[0].1["message"], "the engine stopped");
		assert_eq!(events[0].1["code"], "internal_error");
		let nested = json!({"type": "server_error", "code": "internal_error",
			"message": "the engine stopped", "param": null});
		assert_eq!(events[0].1["error"], nested);
		assert!(streamed.done().is_empty());

		let mut streamed = ResponseEvents::new(head());
		let mut events = streamed.start();
		let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]});
		events.extend(streamed.chunk(&finish));
		events.extend(streamed.done());
		assert_eq!(events.last().unwrap().0, "response.incomplete");
		let response = &events.last().unwrap().1["response"];
		assert_eq!(response["output"][0]["content"][0]["text"], "");
		assert_eq!(response["output"][0]["status"], "incomplete");
	}
}
