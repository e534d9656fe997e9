//! OpenAI's tool calling on the chat endpoint (`tools`, `tool_choice`, `parallel_tool_calls`),
//! as vLLM serves it without a tool-call parser:
//!
//! - a named tool (`{"type": "function", "function": {"name": ...}}`): the output is the call's
//!   arguments, held to the tool's `parameters` schema;
//! - `"required"`: the output is a JSON list of calls, `[{"name": ..., "parameters": ...}]`
//!   ([`JsonGrammar::tool_calls`]: each call's parameters held to its tool's schema), one call
//!   at least, one at most when `parallel_tool_calls` is false;
//! - `"none"`: text, as without tools;
//! - `"auto"` (OpenAI's default when tools are given): the model chooses between text and
//!   calls, which it writes in Hermes' syntax (Qwen 2.5, Hermes 2 and 3, SmolLM3: vLLM's
//!   `--tool-call-parser hermes`): `<tool_call>`, the call `{"name": ..., "arguments": ...}`,
//!   `</tool_call>`. The text is free until the model writes `<tool_call>`; the call after
//!   it is held to the tools' schemas ([`crate::lazy_grammar`]), then the text is free again
//!   for another call (one at most without `parallel_tool_calls`). The answer's `content` is
//!   the text before the first call (`null` if blank), its `tool_calls` the calls, its reason
//!   `tool_calls`; a call cut short (by `max_tokens`) leaves the whole text as the content,
//!   as vLLM's parser does (streamed, what was sent stays sent). A model whose `<tool_call>`
//!   is a special token is held from that token on.
//!
//! The tools are given to the chat template either way (a template that knows them shows them
//! to the model). For `"auto"`, a template that does not show them (SmolLM2's) gets them in
//! the system message with Hermes' instructions, as Qwen 2.5's template writes them, and the
//! conversation's earlier calls and tools' answers as Hermes' text ([`Tools::messages`]); a
//! template that shows them in another syntax (its source never writes `<tool_call>`) is
//! refused `"auto"`: its calls could not be read.

use std::{collections::HashSet, sync::Arc};

use serde_json::{json, Value};

use crate::{
	chat::{python_json, ChatTemplate, Message},
	error::Result,
	generate::ResponseFormat,
	json_mode::{no_parameters, JsonGrammar, MAX_CHOICES},
	lazy_grammar::LazyGrammar,
};

/// The most tools one request may give (each a choice of the calls' discriminator).
pub const MAX_TOOLS: usize = MAX_CHOICES;
/// The longest tool name (OpenAI's limit).
const MAX_NAME: usize = 64;
/// What begins a call in Hermes' syntax (`tool_choice: "auto"`).
pub const CALL_START: &str = "<tool_call>";
/// What ends it.
pub const CALL_END: &str = "</tool_call>";

/// How the tools of a request are to be used.
#[derive(Clone, Debug)]
pub struct Tools {
	/// The tools' definitions as given (`{"type": "function", "function": {...}}`), for the
	/// chat template.
	pub definitions: Vec<Value>,
	/// What the output is held to when calls are asked for (`None` for `"none"` or no tools).
	pub calling: Option<Arc<ToolCalling>>,
}

/// Calls the output must (or, `"auto"`, may) make.
#[derive(Debug)]
pub struct ToolCalling {
	/// The one tool named, or `None` for `"required"` (any of them, as a list) or `"auto"`.
	named: Option<String>,
	/// What the output must be: the named tool's arguments, the list of calls, or (`"auto"`)
	/// each call after [`CALL_START`].
	grammar: Arc<JsonGrammar>,
	/// `"auto"`: the text, held to `grammar` after each [`CALL_START`].
	auto: Option<Arc<LazyGrammar>>,
}

/// One call of a tool in an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
	/// The tool's name.
	pub name: String,
	/// Its arguments: a JSON object, as text.
	pub arguments: String,
}

/// A new call id, as vLLM makes them (`chatcmpl-tool-` and 32 hex digits).
fn call_id() -> String {
	format!("chatcmpl-tool-{:032x}", rand::random::<u128>())
}

impl ToolCall {
	/// The call in an answer's `tool_calls`, with a new id.
	pub fn to_json(&self) -> Value {
		json!({
			"id": call_id(),
			"type": "function",
			"function": { "name": self.name, "arguments": self.arguments },
		})
	}
}

/// A tool's name and its parameters' schema (`None`: none).
fn definition(tool: &Value) -> Result<(&str, Option<&Value>), String> {
	if tool.get("type").and_then(Value::as_str) != Some("function") {
		return Err(format!("tools: {tool} is not of type \"function\""));
	}
	let function = tool.get("function").filter(|f| f.is_object());
	let function = function.ok_or(format!("tools: {tool} has no function"))?;
	let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
	let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
	if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(fits) {
		return Err(format!(
			"tools: a function's name is 1 to {MAX_NAME} of a-z, A-Z, 0-9, _ and -, not {:?}",
			function.get("name").unwrap_or(&Value::Null)
		));
	}
	// An object's schema (OpenAI's arguments are an object); `{}` or none: no parameters.
	let parameters = match function.get("parameters") {
		None | Some(Value::Null) => None,
		Some(Value::Object(map)) if map.is_empty() => None,
		Some(p @ Value::Object(map))
			if map.get("type") == Some(&json!("object"))
				|| (map.get("type").is_none()
					&& ["properties", "additionalProperties", "required"]
						.iter()
						.any(|k| map.contains_key(*k))) =>
		{
			Some(p)
		}
		Some(other) => {
			return Err(format!(
				"tools: {name}'s parameters {other} are not the schema of an object (\"type\": \
				 \"object\")"
			))
		}
	};
	Ok((name, parameters))
}

impl Tools {
	/// The tools of a chat request: `tools` (a list of function definitions), `tool_choice`
	/// (`"none"`, `"auto"`, `"required"`, or a named function) and `parallel_tool_calls` (true
	/// when absent); why not, for a request that cannot be served.
	pub fn from_request(
		tools: Option<&Value>,
		tool_choice: Option<&Value>,
		parallel: Option<bool>,
	) -> Result<Self, String> {
		let tools = match tools {
			None | Some(Value::Null) => &[][..],
			Some(Value::Array(tools)) => tools.as_slice(),
			Some(_) => return Err("tools: a list of functions".into()),
		};
		if tools.len() > MAX_TOOLS {
			return Err(format!("tools: at most {MAX_TOOLS}, not {}", tools.len()));
		}
		let defined = tools.iter().map(definition).collect::<Result<Vec<_>, _>>()?;
		let mut names = HashSet::new();
		if let Some((name, _)) = defined.iter().find(|(name, _)| !names.insert(*name)) {
			return Err(format!("tools: two functions named {name:?}"));
		}
		let choice = tool_choice.filter(|c| !c.is_null());
		// OpenAI's default: "auto" with tools, "none" without.
		let default = if tools.is_empty() { "none" } else { "auto" };
		let named = match choice {
			None | Some(Value::String(_)) => {
				match choice.and_then(Value::as_str).unwrap_or(default) {
					"none" => None,
					"required" => Some(None),
					"auto" if tools.is_empty() => None,
					"auto" => {
						let grammar =
							JsonGrammar::tool_call(&defined).map_err(|e| format!("tools: {e}"))?;
						let grammar = Arc::new(grammar);
						let repeat = parallel.unwrap_or(true);
						let lazy = LazyGrammar::new(CALL_START, grammar.clone(), repeat);
						let calling =
							ToolCalling { named: None, grammar, auto: Some(Arc::new(lazy)) };
						return Ok(Self {
							definitions: tools.to_vec(),
							calling: Some(Arc::new(calling)),
						});
					}
					other => {
						return Err(format!("tool_choice: {other:?} is not none, auto or required"))
					}
				}
			}
			Some(named) => {
				let name = match (
					named.get("type").and_then(Value::as_str),
					named.pointer("/function/name"),
				) {
					(Some("function"), Some(Value::String(name))) => name.as_str(),
					_ => {
						return Err(format!(
							"tool_choice: {named} is not {{\"type\": \"function\", \"function\": \
							 {{\"name\": ...}}}}"
						))
					}
				};
				Some(Some(name))
			}
		};
		let calling = match named {
			None => None,
			Some(_) if tools.is_empty() => {
				return Err("tool_choice: a function is to be called but no tools are given".into())
			}
			Some(Some(name)) => {
				let (_, parameters) = defined
					.iter()
					.find(|(n, _)| *n == name)
					.ok_or(format!("tool_choice: {name:?} is not among the tools"))?;
				let none = no_parameters();
				let grammar = JsonGrammar::from_schema(parameters.unwrap_or(&none))
					.map_err(|e| format!("tools: {name}'s parameters: {e}"))?;
				Some(ToolCalling {
					named: Some(name.to_string()),
					grammar: Arc::new(grammar),
					auto: None,
				})
			}
			Some(None) => {
				let most = if parallel.unwrap_or(true) { u32::MAX } else { 1 };
				let grammar =
					JsonGrammar::tool_calls(&defined, most).map_err(|e| format!("tools: {e}"))?;
				Some(ToolCalling { named: None, grammar: Arc::new(grammar), auto: None })
			}
		};
		Ok(Self { definitions: tools.to_vec(), calling: calling.map(Arc::new) })
	}

	/// The conversation and tools to render with `template`: as given, but for `"auto"` with
	/// a template that does not show the tools, the tools in the system message with Hermes'
	/// instructions and the earlier calls and answers as Hermes' text (no tools given to the
	/// template then); an error for `"auto"` with a template that shows the tools in another
	/// syntax than Hermes'.
	pub fn messages(
		&self,
		template: &ChatTemplate,
		messages: &[Message],
	) -> Result<(Vec<Message>, Vec<Value>)> {
		Ok(self.show(self.showing(template, messages)?, messages))
	}

	/// How [`Self::messages`] shows a conversation like `messages` to `template`: decided once
	/// for a chat (under `"auto"` it renders the template twice), then applied by
	/// [`Self::show`] to the conversation and to each of its variants (its sources left out).
	pub fn showing(&self, template: &ChatTemplate, messages: &[Message]) -> Result<Showing> {
		let auto = self.calling.as_ref().is_some_and(|c| c.auto.is_some());
		if !auto {
			return Ok(Showing::AsGiven);
		}
		let shown = template.render_with_tools(messages, &self.definitions, true)?
			!= template.render(messages, true)?;
		if shown && !template.writes(CALL_START) {
			return Err(crate::Error::Request(format!(
				"tool_choice: \"auto\" is not served with this model's chat template: it shows \
				 the tools but never writes {CALL_START} (Hermes' syntax, the one read): name a \
				 function, or give \"required\" or \"none\""
			)));
		}
		Ok(if shown { Showing::AsGiven } else { Showing::Hermes })
	}

	/// The conversation and tools to render, shown as `showing` says.
	pub fn show(&self, showing: Showing, messages: &[Message]) -> (Vec<Message>, Vec<Value>) {
		match showing {
			Showing::AsGiven => (messages.to_vec(), self.definitions.clone()),
			Showing::Hermes => (hermes_messages(messages, &self.definitions), Vec::new()),
		}
	}
}

/// How a chat's conversation and tools are given to the template ([`Tools::showing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Showing {
	/// As given: the messages, and the tools for the template to show.
	AsGiven,
	/// The tools (`"auto"`, with a template that does not show them) in the system message
	/// with Hermes' instructions, and the earlier calls and answers as Hermes' text
	/// ([`hermes_messages`]); no tools given to the template.
	Hermes,
}

/// `messages` as Qwen 2.5's template shows a conversation with tools to a model: the tools and
/// Hermes' instructions at the end of the system message (one made if there is none), each
/// assistant's calls after its text between [`CALL_START`] and [`CALL_END`], and the answers
/// of tools between `<tool_response>` and `</tool_response>`, in a user's turn (one for the
/// answers that follow one another). JSON as the template's `tojson` writes it.
pub fn hermes_messages(messages: &[Message], tools: &[Value]) -> Vec<Message> {
	let listed: Vec<String> = tools.iter().map(python_json).collect();
	let instructions = format!(
		"# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou \
		 are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n\
		 </tools>\n\nFor each function call, return a json object with function name and \
		 arguments within {CALL_START}{CALL_END} XML tags:\n{CALL_START}\n{{\"name\": \
		 <function-name>, \"arguments\": <args-json-object>}}\n{CALL_END}",
		listed.join("\n")
	);
	let mut out = Vec::with_capacity(messages.len() + 1);
	match messages.first() {
		Some(first) if first.role == "system" => {}
		_ => out.push(Message::new("system", &instructions)),
	}
	for (i, message) in messages.iter().enumerate() {
		let mut message = message.clone();
		if i == 0 && message.role == "system" {
			message.content = format!("{}\n\n{instructions}", message.content);
		}
		if let Some(calls) = message.tool_calls.take() {
			for call in calls {
				let name = call.pointer("/function/name").cloned().unwrap_or(Value::Null);
				// OpenAI's arguments are a string of JSON: the object it holds.
				let arguments = match call.pointer("/function/arguments") {
					Some(Value::String(text)) => {
						serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
					}
					Some(other) => other.clone(),
					None => json!({}),
				};
				// As Qwen 2.5's template writes it: the name first.
				let (name, arguments) = (python_json(&name), python_json(&arguments));
				let call = format!("{{\"name\": {name}, \"arguments\": {arguments}}}");
				if !message.content.is_empty() {
					message.content.push('\n');
				}
				message.content.push_str(&format!("{CALL_START}\n{call}\n{CALL_END}"));
			}
		}
		if message.role == "tool" {
			let response = format!("<tool_response>\n{}\n</tool_response>", message.content);
			// The answers of calls made together are one user's turn.
			match out.last_mut() {
				Some(last) if i > 0 && messages[i - 1].role == "tool" => {
					last.content.push('\n');
					last.content.push_str(&response);
				}
				_ => out.push(Message::new("user", &response)),
			}
			continue;
		}
		out.push(message);
	}
	out
}

impl ToolCalling {
	/// What the output must be (`"auto"`: each call after [`CALL_START`]).
	pub fn grammar(&self) -> Arc<JsonGrammar> {
		self.grammar.clone()
	}

	/// What the output is held to.
	pub fn response_format(&self) -> ResponseFormat {
		match &self.auto {
			Some(lazy) => ResponseFormat::Lazy(lazy.clone()),
			None => ResponseFormat::Json(self.grammar.clone()),
		}
	}

	/// Whether the model chooses between text and calls (`"auto"`).
	pub fn auto(&self) -> bool {
		self.auto.is_some()
	}

	/// The `content` of an answer whose whole output `text` made calls: `""` (the output is
	/// the calls), or for `"auto"` the text before the first call (`null` if blank).
	pub fn content(&self, text: &str) -> Value {
		if self.auto.is_none() {
			return json!("");
		}
		let before = text.split(CALL_START).next().unwrap_or_default();
		match before.trim() {
			"" => Value::Null,
			_ => json!(before),
		}
	}

	/// Whether the calls were forced by naming one tool (OpenAI then reports the output's own
	/// finish reason, not `tool_calls`).
	pub fn named(&self) -> bool {
		self.named.is_some()
	}

	/// The calls in a whole output `text`: a named tool's, its arguments the text; those of a
	/// list (`"required"`), each call's arguments its `parameters` as generated, or `None` if
	/// the list is not whole (cut by `max_tokens`); `"auto"`'s, each call's arguments its
	/// `arguments` as generated, or `None` if there are none or the last is cut short. The
	/// same calls as [`CallStream`] sends.
	pub fn calls(&self, text: &str) -> Option<Vec<ToolCall>> {
		if let Some(name) = &self.named {
			return Some(vec![ToolCall { name: name.clone(), arguments: text.to_string() }]);
		}
		if self.auto.is_none() {
			serde_json::from_str::<Vec<Value>>(text).ok()?;
		}
		let mut stream = self.stream();
		let (_, deltas) = stream.push_text(text);
		if !stream.whole() {
			return None;
		}
		let mut calls: Vec<ToolCall> = Vec::new();
		for delta in deltas {
			let arguments = delta.pointer("/function/arguments").and_then(Value::as_str);
			match delta.pointer("/function/name").and_then(Value::as_str) {
				Some(name) => calls.push(ToolCall {
					name: name.to_string(),
					arguments: arguments.unwrap_or_default().to_string(),
				}),
				None => calls.last_mut()?.arguments.push_str(arguments?),
			}
		}
		Some(calls)
	}

	/// A stream of the calls in an output given piece by piece.
	pub fn stream(&self) -> CallStream {
		CallStream {
			named: self.named.clone(),
			auto: self.auto.is_some().then(Hermes::default),
			arguments_key: if self.auto.is_some() { "arguments" } else { "parameters" },
			id: None,
			depth: 0,
			in_string: false,
			escaped: false,
			at_key: false,
			key: String::new(),
			string: String::new(),
			in_name: false,
			in_arguments: false,
			count: 0,
			closed: false,
		}
	}
}

/// The tool calls of a streamed output: each piece of text in, OpenAI's `tool_calls` deltas
/// out. A call begins with its index, id, type and name, and its arguments follow as they are
/// generated (a named tool's at once, its arguments the whole text; a list's as each item's
/// name is read, its arguments the text of its `parameters`, which the grammar puts after the
/// name).
pub struct CallStream {
	/// The named tool, or `None` for a list of calls or `"auto"`.
	named: Option<String>,
	/// `"auto"`: where the text is among the calls.
	auto: Option<Hermes>,
	/// The key of a call's arguments: `parameters` in a list, `arguments` in Hermes' calls.
	arguments_key: &'static str,
	/// The call id of the call being sent.
	id: Option<String>,
	/// How deep in brackets the text is (1: in the list, 2: in an item, 3 and on: in its
	/// parameters).
	depth: u32,
	in_string: bool,
	escaped: bool,
	/// Whether a string opened at the item's level is a key.
	at_key: bool,
	/// The item's last key.
	key: String,
	/// The text of a string being read at the item's level.
	string: String,
	/// Whether the string being read is the item's name.
	in_name: bool,
	/// Whether the text is the item's parameters.
	in_arguments: bool,
	/// Calls begun.
	count: usize,
	/// Whether the list has closed.
	closed: bool,
}

/// Where a streamed `"auto"` output is: text, or a call after [`CALL_START`].
#[derive(Default)]
struct Hermes {
	/// Text not yet sent: the end of the text that may begin [`CALL_START`].
	held: String,
	/// Whether the text is a call's (from [`CALL_START`] to its object's end).
	in_call: bool,
	/// Blank text before anything else, held until text that is not follows (blank text
	/// before a call is no content).
	blank: String,
	/// Whether any content was sent.
	sent: bool,
}

/// How many bytes at the end of `text` begin `word` (fewer than all of it).
fn partial_suffix(text: &str, word: &str) -> usize {
	(1..word.len().min(text.len() + 1))
		.rev()
		.find(|&k| {
			text.is_char_boundary(text.len() - k) && word.starts_with(&text[text.len() - k..])
		})
		.unwrap_or(0)
}

impl CallStream {
	/// Whether the calls are whole: a named tool's once begun, a list once it has closed (the
	/// text was not cut by `max_tokens` or a stop sequence), `"auto"`'s once one is and none is
	/// cut short.
	pub fn whole(&self) -> bool {
		match (&self.named, &self.auto) {
			(Some(_), _) => self.id.is_some(),
			(None, Some(hermes)) => self.count > 0 && !hermes.in_call,
			(None, None) => self.closed,
		}
	}

	/// The text (`content`) and the `tool_calls` deltas that `text`, the output's next piece,
	/// brings: the calls' alone but for `"auto"`, whose text before its first call is sent
	/// (but for an end that may begin [`CALL_START`], held until it does not), and whose text
	/// between calls is not.
	pub fn push_text(&mut self, text: &str) -> (String, Vec<Value>) {
		let Some(mut hermes) = self.auto.take() else { return (String::new(), self.push(text)) };
		let (mut content, mut deltas) = (String::new(), Vec::new());
		let mut rest = text.to_string();
		loop {
			if hermes.in_call {
				let (more, used, closed) = self.scan(&rest, true);
				deltas.extend(more);
				rest.drain(..used);
				if !closed {
					break;
				}
				hermes.in_call = false;
				continue;
			}
			hermes.held.push_str(&rest);
			rest.clear();
			if let Some(at) = hermes.held.find(CALL_START) {
				if self.count == 0 {
					content.push_str(&hermes.held[..at]);
				}
				rest = hermes.held.split_off(at + CALL_START.len());
				hermes.held.clear();
				// The call's object, as an item of a list.
				hermes.in_call = true;
				self.depth = 1;
				continue;
			}
			let keep = partial_suffix(&hermes.held, CALL_START);
			let sent = hermes.held.len() - keep;
			if self.count == 0 {
				content.push_str(&hermes.held[..sent]);
			}
			hermes.held.drain(..sent);
			break;
		}
		if !hermes.sent {
			if content.trim().is_empty() {
				hermes.blank.push_str(&content);
				content.clear();
			} else {
				content.insert_str(0, &std::mem::take(&mut hermes.blank));
				hermes.sent = true;
			}
		}
		self.auto = Some(hermes);
		(content, deltas)
	}

	/// The text held back at the end of an `"auto"` output (blank text, an end that might
	/// have begun [`CALL_START`]): its content if no call came before.
	pub fn finish(&mut self) -> String {
		match &mut self.auto {
			Some(hermes) if !hermes.in_call && self.count == 0 => {
				std::mem::take(&mut hermes.blank) + &std::mem::take(&mut hermes.held)
			}
			_ => String::new(),
		}
	}

	/// The `tool_calls` deltas that `text`, the output's next piece, brings (a named tool's or
	/// a list's).
	pub fn push(&mut self, text: &str) -> Vec<Value> {
		if let Some(name) = &self.named {
			return match &self.id {
				None => {
					let id = call_id();
					let delta = json!({"index": 0, "id": id, "type": "function",
						"function": {"name": name, "arguments": text}});
					self.id = Some(id);
					vec![delta]
				}
				Some(_) if text.is_empty() => Vec::new(),
				Some(_) => vec![json!({"index": 0, "function": {"arguments": text}})],
			};
		}
		self.scan(text, false).0
	}

	/// The `tool_calls` deltas that `text` brings in a list of calls, how many of its bytes
	/// were read, and whether an item closed: with `one_call`, the reading stops there.
	fn scan(&mut self, text: &str, one_call: bool) -> (Vec<Value>, usize, bool) {
		let mut deltas = Vec::new();
		let mut arguments = String::new();
		for (at, c) in text.char_indices() {
			if self.in_arguments {
				arguments.push(c);
			}
			if self.in_string {
				match c {
					_ if self.escaped => self.escaped = false,
					'\\' => self.escaped = true,
					'"' => self.in_string = false,
					_ => {}
				}
				if self.depth == 2 {
					if self.in_string {
						self.string.push(c);
						continue;
					}
					// A string of the item's closes: a key, or the name.
					let string: String =
						serde_json::from_str(&format!("\"{}\"", self.string)).unwrap_or_default();
					if std::mem::take(&mut self.at_key) {
						self.key = string;
					} else if std::mem::take(&mut self.in_name) {
						let id = call_id();
						deltas.push(json!({"index": self.count, "id": id, "type": "function",
							"function": {"name": string, "arguments": ""}}));
						self.id = Some(id);
					}
				}
				continue;
			}
			match c {
				'"' => {
					self.in_string = true;
					self.string.clear();
					self.in_name = self.depth == 2 && !self.at_key && self.key == "name";
				}
				'{' | '[' => {
					self.depth += 1;
					if self.depth == 2 {
						self.at_key = true;
						self.key.clear();
					} else if self.depth == 3
						&& self.key == self.arguments_key
						&& !self.in_arguments
					{
						self.in_arguments = true;
						arguments.push(c);
					}
				}
				'}' | ']' => {
					self.depth = self.depth.saturating_sub(1);
					if self.depth == 2 && self.in_arguments {
						self.in_arguments = false;
						self.key.clear();
					}
					if self.depth == 1 && c == '}' {
						self.count += 1;
						if one_call {
							return (deltas, at + 1, true);
						}
					}
					self.closed |= self.depth == 0 && c == ']';
				}
				',' if self.depth == 2 => self.at_key = true,
				_ => {}
			}
			// The arguments end with the delta of the piece that carries them.
			if !self.in_arguments && !arguments.is_empty() {
				deltas.push(self.arguments(std::mem::take(&mut arguments)));
			}
		}
		if !arguments.is_empty() {
			deltas.push(self.arguments(arguments));
		}
		(deltas, text.len(), false)
	}

	/// The delta of more of the current call's arguments.
	fn arguments(&self, text: String) -> Value {
		json!({"index": self.count, "function": {"arguments": text}})
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::json_mode::JsonState;

	fn weather() -> Value {
		json!({"type": "function", "function": {"name": "get_weather", "description": "Now.",
			"parameters": {"type": "object", "properties": {"city": {"type": "string"},
				"unit": {"enum": ["C", "F"]}}, "required": ["city"]}}})
	}

	fn clock() -> Value {
		json!({"type": "function", "function": {"name": "now"}})
	}

	fn takes(grammar: &JsonGrammar, text: &str) -> bool {
		JsonState::new(grammar)
			.accepts(grammar, text.as_bytes())
			.is_some_and(|s| s.can_end(grammar))
	}

	#[test]
	fn a_named_tool_is_called_with_arguments_of_its_schema() {
		let tools = json!([weather(), clock()]);
		let choice = json!({"type": "function", "function": {"name": "get_weather"}});
		let plan = Tools::from_request(Some(&tools), Some(&choice), None).unwrap();
		assert_eq!(plan.definitions.len(), 2);
		let calling = plan.calling.unwrap();
		assert!(calling.named());
		let grammar = calling.grammar();
		assert!(takes(&grammar, r#"{"city": "Paris", "unit": "C"}"#));
		assert!(!takes(&grammar, r#"{"unit": "C"}"#));
		let calls = calling.calls(r#"{"city": "Paris"}"#).unwrap();
		assert_eq!(
			calls,
			[ToolCall { name: "get_weather".into(), arguments: r#"{"city": "Paris"}"#.into() }]
		);
		// A tool without parameters (none, or `{}`) takes `{}` alone.
		let tools = json!([weather(), clock(), {"type": "function",
			"function": {"name": "later", "parameters": {}}}]);
		let named = |name: &str| {
			let choice = json!({"type": "function", "function": {"name": name}});
			Tools::from_request(Some(&tools), Some(&choice), None)
				.unwrap()
				.calling
				.unwrap()
				.grammar()
		};
		let grammar = named("later");
		assert!(takes(&grammar, "{}") && !takes(&grammar, "1"));
		let grammar = named("now");
		assert!(takes(&grammar, "{}") && !takes(&grammar, r#"{"a": 1}"#));
		// Streamed: the call's head first, then its arguments as they come.
		let mut stream = calling.stream();
		let first = stream.push("{\"ci");
		assert_eq!(first.len(), 1);
		assert_eq!(first[0]["function"], json!({"name": "get_weather", "arguments": "{\"ci"}));
		assert!(first[0]["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
		assert_eq!(stream.push(""), Vec::<Value>::new());
		assert_eq!(
			stream.push("ty\": 1}"),
			[json!({"index": 0, "function": {"arguments": "ty\": 1}"}})]
		);
	}

	#[test]
	fn required_calls_are_a_list_of_any_tools_each_with_its_parameters() {
		let tools = json!([weather(), clock()]);
		let plan = Tools::from_request(Some(&tools), Some(&json!("required")), None).unwrap();
		let calling = plan.calling.unwrap();
		assert!(!calling.named());
		let grammar = calling.grammar();
		let two = r#"[{"name": "get_weather", "parameters": {"city": "Oslo, \"}{\""}},
			{"name":"now",  "parameters":{}}]"#;
		assert!(takes(&grammar, two));
		for wrong in [
			"[]",
			r#"[{"name": "now", "parameters": {"city": "Oslo"}}]"#,
			r#"[{"name": "get_weather", "parameters": {}}]"#,
			r#"[{"parameters": {}, "name": "now"}]"#,
			r#"[{"name": "later", "parameters": {}}]"#,
			r#"[{"name": "now"}]"#,
		] {
			assert!(!takes(&grammar, wrong), "{wrong}");
		}
		// Each call's arguments are its parameters as generated.
		let calls = calling.calls(two).unwrap();
		let oslo = r#"{"city": "Oslo, \"}{\""}"#;
		assert_eq!(calls[0], ToolCall { name: "get_weather".into(), arguments: oslo.into() });
		assert_eq!(calls[1], ToolCall { name: "now".into(), arguments: "{}".into() });
		assert_eq!(calling.calls(&two[..30]), None, "a list cut short has no calls");
		let mut cut = calling.stream();
		cut.push(&two[..two.len() - 1]);
		assert!(!cut.whole(), "a list without its closing bracket is not whole");
		// Streamed, whatever the pieces: each call's head (index, id, type, name) once, then its
		// arguments as they come, adding up to the whole answer's.
		for size in [1, 3, 7, two.len()] {
			let mut stream = calling.stream();
			let chars: Vec<char> = two.chars().collect();
			let mut streamed: Vec<(String, String)> = Vec::new();
			for piece in chars.chunks(size) {
				for delta in stream.push(&piece.iter().collect::<String>()) {
					let index = delta["index"].as_u64().unwrap() as usize;
					let arguments = delta["function"]["arguments"].as_str().unwrap();
					if let Some(name) = delta["function"]["name"].as_str() {
						assert_eq!(index, streamed.len(), "{delta}");
						assert!(delta["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
						assert_eq!(delta["type"], "function");
						streamed.push((name.to_string(), arguments.to_string()));
					} else {
						assert_eq!(index + 1, streamed.len(), "{delta}");
						streamed[index].1.push_str(arguments);
					}
				}
			}
			let whole: Vec<(String, String)> =
				calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect();
			assert_eq!(streamed, whole, "pieces of {size}");
			assert!(stream.whole());
		}
		// One call at most without parallel calls.
		let plan =
			Tools::from_request(Some(&tools), Some(&json!("required")), Some(false)).unwrap();
		let grammar = plan.calling.unwrap().grammar();
		assert!(!takes(&grammar, two));
		assert!(takes(&grammar, r#"[{"name": "now", "parameters": {}}]"#));
	}

	/// An `"auto"` answer of `text` streamed in pieces of `size` characters: its content, and
	/// its calls (name and arguments) as the deltas add up.
	fn streamed(calling: &ToolCalling, text: &str, size: usize) -> (String, Vec<(String, String)>) {
		let mut stream = calling.stream();
		let chars: Vec<char> = text.chars().collect();
		let (mut content, mut calls) = (String::new(), Vec::<(String, String)>::new());
		for piece in chars.chunks(size) {
			let (text, deltas) = stream.push_text(&piece.iter().collect::<String>());
			content.push_str(&text);
			for delta in deltas {
				let index = delta["index"].as_u64().unwrap() as usize;
				let arguments = delta["function"]["arguments"].as_str().unwrap();
				if let Some(name) = delta["function"]["name"].as_str() {
					assert_eq!(index, calls.len(), "{delta}");
					calls.push((name.to_string(), arguments.to_string()));
				} else {
					calls[index].1.push_str(arguments);
				}
			}
		}
		content.push_str(&stream.finish());
		(content, calls)
	}

	#[test]
	fn auto_reads_hermes_calls_out_of_the_text_and_holds_each_to_its_schema() {
		let tools = json!([weather(), clock()]);
		for choice in [Value::Null, json!("auto")] {
			let plan = Tools::from_request(Some(&tools), Some(&choice), None).unwrap();
			let calling = plan.calling.unwrap();
			assert!(calling.auto() && !calling.named());
			assert!(matches!(calling.response_format(), ResponseFormat::Lazy(_)));
		}
		// No tools: text.
		assert!(Tools::from_request(Some(&json!([])), None, None).unwrap().calling.is_none());
		let plan = Tools::from_request(Some(&tools), Some(&json!("auto")), None).unwrap();
		let calling = plan.calling.unwrap();
		// Each call: the name first, the arguments of the tool named.
		let grammar = calling.grammar();
		assert!(takes(&grammar, r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#));
		assert!(takes(&grammar, r#"{"name": "now", "arguments": {}}"#));
		for wrong in [
			r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#,
			r#"{"name": "get_weather", "arguments": {}}"#,
			r#"{"arguments": {}, "name": "now"}"#,
			r#"[{"name": "now", "arguments": {}}]"#,
		] {
			assert!(!takes(&grammar, wrong), "{wrong}");
		}
		let oslo = r#"{"city": "Oslo, \"}{\" <tool_call>"}"#;
		let two = format!(
			"Let me look <that> up.\n<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": \
			 {oslo}}}\n</tool_call>\nthen <tool_call>{{\"name\":\"now\",\"arguments\":{{}}}}"
		);
		let expected = vec![
			ToolCall { name: "get_weather".into(), arguments: oslo.into() },
			ToolCall { name: "now".into(), arguments: "{}".into() },
		];
		assert_eq!(calling.calls(&two).unwrap(), expected);
		assert_eq!(calling.content(&two), json!("Let me look <that> up.\n"));
		let bare = "\n<tool_call>{\"name\":\"now\",\"arguments\":{}}";
		assert_eq!(calling.calls(bare).unwrap(), expected[1..]);
		assert_eq!(calling.content(bare), Value::Null, "blank text before the call");
		// No call, or one cut short: text.
		let text = "No calls, only <tool_ and <tool_cal";
		assert_eq!(calling.calls(text), None);
		assert_eq!(calling.calls(&two[..two.len() - 3]), None);
		// Streamed, whatever the pieces: the text before the first call and the same calls.
		let whole: Vec<(String, String)> =
			expected.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect();
		for size in [1, 2, 5, 11, two.len()] {
			let (content, calls) = streamed(&calling, &two, size);
			assert_eq!(content, "Let me look <that> up.\n", "pieces of {size}");
			assert_eq!(calls, whole, "pieces of {size}");
			// Text that only looks like the start of a call is sent at the end.
			let (content, calls) = streamed(&calling, text, size);
			assert_eq!((content.as_str(), calls.len()), (text, 0), "pieces of {size}");
			// Blank text before a call is no content (as in the whole answer); blank text
			// alone is.
			let (content, calls) = streamed(&calling, bare, size);
			assert_eq!((content.as_str(), calls.len()), ("", 1), "pieces of {size}");
			let (content, calls) = streamed(&calling, " \n ", size);
			assert_eq!((content.as_str(), calls.len()), (" \n ", 0), "pieces of {size}");
		}
		let mut stream = calling.stream();
		stream.push_text(&two[..two.len() - 3]);
		assert!(!stream.whole(), "a call cut short is not whole");
		stream.push_text(&two[two.len() - 3..]);
		assert!(stream.whole());
	}

	#[test]
	fn auto_shows_the_tools_in_hermes_instructions_to_a_template_that_does_not() {
		let tools = json!([weather()]);
		let plan = Tools::from_request(Some(&tools), None, None).unwrap();
		let call = json!({"id": "c1", "type": "function",
			"function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}});
		let mut asked = Message::new("assistant", "");
		asked.tool_calls = Some(vec![call]);
		let mut answer = Message::new("tool", "12 C");
		answer.tool_call_id = Some("c1".into());
		let messages = vec![Message::new("user", "Weather in Oslo?"), asked, answer];
		// ChatML that never shows tools.
		let chatml = ChatTemplate::new(
			"{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor \
			 %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
			"",
			"",
		)
		.unwrap();
		let (shown, definitions) = plan.messages(&chatml, &messages).unwrap();
		assert!(definitions.is_empty(), "the tools are in the system message");
		let roles: Vec<&str> = shown.iter().map(|m| m.role.as_str()).collect();
		assert_eq!(roles, ["system", "user", "assistant", "user"]);
		assert!(shown[0].content.starts_with("# Tools\n"));
		let listed = python_json(&tools[0]);
		assert!(shown[0].content.contains(&format!("<tools>\n{listed}\n</tools>")), "{listed}");
		assert!(listed.starts_with(r#"{"function": {"description": "Now.", "name""#), "{listed}");
		assert!(shown[0].content.ends_with("<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"));
		assert_eq!(
			shown[2].content,
			"<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
		);
		assert!(shown[2].tool_calls.is_none());
		assert_eq!(shown[3].content, "<tool_response>\n12 C\n</tool_response>");
		// The answers of calls made together are one user's turn.
		let mut both = messages.clone();
		let mut second = Message::new("tool", "Clear.");
		second.tool_call_id = Some("c2".into());
		both.push(second);
		let (shown, _) = plan.messages(&chatml, &both).unwrap();
		assert_eq!(shown.len(), 4);
		assert_eq!(
			shown[3].content,
			"<tool_response>\n12 C\n</tool_response>\n<tool_response>\nClear.\n</tool_response>"
		);
		// A system message of the conversation's own keeps its text first.
		let mut with_system = vec![Message::new("system", "Be brief.")];
		with_system.extend(messages.iter().cloned());
		let (shown, _) = plan.messages(&chatml, &with_system).unwrap();
		assert_eq!(shown.len(), 4);
		assert!(shown[0].content.starts_with("Be brief.\n\n# Tools\n"));
		// A template that shows the tools in Hermes' syntax gets them as given.
		let hermes = ChatTemplate::new(
			"{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools> \
			 (<tool_call>){% endif %}{% for m in messages %}{{ m.content }}{% endfor %}",
			"",
			"",
		)
		.unwrap();
		let (shown, definitions) = plan.messages(&hermes, &messages).unwrap();
		assert_eq!((shown, definitions.len()), (messages.clone(), 1));
		// One that shows them in another syntax is refused "auto".
		let other = ChatTemplate::new(
			"{% if tools %}[TOOLS]{{ tools | tojson }}{% endif %}{% for m in messages %}{{ \
			 m.content }}{% endfor %}",
			"",
			"",
		)
		.unwrap();
		let error = plan.messages(&other, &messages).unwrap_err().to_string();
		assert!(error.contains("never writes <tool_call>"), "{error}");
		// "required" and named calls render as given, whatever the template.
		let required = Tools::from_request(Some(&tools), Some(&json!("required")), None).unwrap();
		let (shown, definitions) = required.messages(&chatml, &messages).unwrap();
		assert_eq!((shown, definitions.len()), (messages, 1));
	}

	#[test]
	fn none_and_no_tools_generate_text_and_the_rest_is_refused_with_the_reason() {
		let tools = json!([weather()]);
		let plan = Tools::from_request(Some(&tools), Some(&json!("none")), None).unwrap();
		assert!(plan.calling.is_none() && plan.definitions.len() == 1);
		let plan = Tools::from_request(None, None, None).unwrap();
		assert!(plan.calling.is_none() && plan.definitions.is_empty());
		let plan = Tools::from_request(Some(&json!([])), Some(&json!("none")), None).unwrap();
		assert!(plan.calling.is_none());
		let named = |name: &str| json!({"type": "function", "function": {"name": name}});
		let many: Vec<Value> = (0..=MAX_TOOLS)
			.map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
			.collect();
		for (tools, choice, says) in [
			(json!([weather()]), json!("sometimes"), "not none, auto or required"),
			(json!([weather()]), named("get_time"), "not among the tools"),
			(json!([]), json!("required"), "no tools are given"),
			(Value::Null, named("get_weather"), "no tools are given"),
			(json!([weather()]), json!({"type": "function"}), "is not {\"type\""),
			(json!({"a": 1}), Value::Null, "a list of functions"),
			(json!([{"type": "retrieval"}]), Value::Null, "not of type \"function\""),
			(
				json!([{"type": "function", "function": {"name": "a b"}}]),
				Value::Null,
				"name is 1 to 64",
			),
			(json!([weather(), weather()]), json!("required"), "two functions named"),
			(
				json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
				named("f"),
				"not the schema of an object",
			),
			(Value::Array(many), json!("required"), "at most 64"),
			(
				json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string", "pattern": "a"}}}]),
				named("f"),
				"f's parameters",
			),
		] {
			let error = Tools::from_request(Some(&tools), Some(&choice), None).unwrap_err();
			assert!(error.contains(says), "{tools} {choice}: {error:?} does not say {says:?}");
		}
	}
}
