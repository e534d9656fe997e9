//! OpenAI's tool calling on the chat endpoint (`tools`, `tool_choice`, `parallel_tool_calls`),
//! as vLLM serves it without a tool-call parser:
//!
//! - a named tool (`{"type": "function", "function": {"name": ...}}`): the output is the call's
//!   arguments, held to the tool's `parameters` schema;
//! - `"required"`: the output is a JSON list of calls, `[{"name": ..., "parameters": ...}]`
//!   ([`JsonGrammar::tool_calls`]: each call's parameters held to its tool's schema), one call
//!   at least, one at most when `parallel_tool_calls` is false;
//! - `"none"`: text, as without tools.
//!
//! The tools are given to the chat template either way (a template that knows them shows them
//! to the model). `"auto"` (OpenAI's default when tools are given), where the model chooses
//! between text and calls in its own syntax, would need that syntax parsed out of free text:
//! it is refused, as vLLM refuses it without `--tool-call-parser`.

use std::{collections::HashSet, sync::Arc};

use serde_json::{json, Value};

use crate::json_mode::{no_parameters, JsonGrammar, MAX_CHOICES};

/// The most tools one request may give (each a choice of the calls' discriminator).
pub const MAX_TOOLS: usize = MAX_CHOICES;
/// The longest tool name (OpenAI's limit).
const MAX_NAME: usize = 64;

/// How the tools of a request are to be used.
#[derive(Clone, Debug)]
pub struct Tools {
	/// The tools' definitions as given (`{"type": "function", "function": {...}}`), for the
	/// chat template.
	pub definitions: Vec<Value>,
	/// What the output is held to when calls are asked for (`None` for `"none"` or no tools).
	pub calling: Option<Arc<ToolCalling>>,
}

/// Calls the output must make.
#[derive(Debug)]
pub struct ToolCalling {
	/// The one tool named, or `None` for `"required"` (any of them, as a list).
	named: Option<String>,
	/// What the output must be.
	grammar: Arc<JsonGrammar>,
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
	/// (`"none"`, `"required"`, or a named function; `"auto"` is refused) and
	/// `parallel_tool_calls` (true when absent); why not, for a request that cannot be served.
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
					"auto" => {
						return Err("tool_choice: \"auto\" is not served (the model's own call \
						            syntax is not parsed): name a function, or give \
						            \"required\" or \"none\""
							.into())
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
				Some(ToolCalling { named: Some(name.to_string()), grammar: Arc::new(grammar) })
			}
			Some(None) => {
				let most = if parallel.unwrap_or(true) { u32::MAX } else { 1 };
				let grammar =
					JsonGrammar::tool_calls(&defined, most).map_err(|e| format!("tools: {e}"))?;
				Some(ToolCalling { named: None, grammar: Arc::new(grammar) })
			}
		};
		Ok(Self { definitions: tools.to_vec(), calling: calling.map(Arc::new) })
	}
}

impl ToolCalling {
	/// What the output must be.
	pub fn grammar(&self) -> Arc<JsonGrammar> {
		self.grammar.clone()
	}

	/// Whether the calls were forced by naming one tool (OpenAI then reports the output's own
	/// finish reason, not `tool_calls`).
	pub fn named(&self) -> bool {
		self.named.is_some()
	}

	/// The calls in a whole output `text`: a named tool's, its arguments the text; those of a
	/// list (`"required"`), each call's arguments its `parameters` as generated, or `None` if
	/// the list is not whole (cut by `max_tokens`). The same calls as [`CallStream`] sends.
	pub fn calls(&self, text: &str) -> Option<Vec<ToolCall>> {
		if let Some(name) = &self.named {
			return Some(vec![ToolCall { name: name.clone(), arguments: text.to_string() }]);
		}
		serde_json::from_str::<Vec<Value>>(text).ok()?;
		let mut calls: Vec<ToolCall> = Vec::new();
		for delta in self.stream().push(text) {
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
	/// The named tool, or `None` for a list of calls.
	named: Option<String>,
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

impl CallStream {
	/// Whether the calls are whole: a named tool's once begun, a list once it has closed (the
	/// text was not cut by `max_tokens` or a stop sequence).
	pub fn whole(&self) -> bool {
		match self.named {
			Some(_) => self.id.is_some(),
			None => self.closed,
		}
	}

	/// The `tool_calls` deltas that `text`, the output's next piece, brings.
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
		let mut deltas = Vec::new();
		let mut arguments = String::new();
		for c in text.chars() {
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
					} else if self.depth == 3 && self.key == "parameters" && !self.in_arguments {
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
		deltas
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
			(json!([weather()]), Value::Null, "\"auto\" is not served"),
			(json!([weather()]), json!("auto"), "\"auto\" is not served"),
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
