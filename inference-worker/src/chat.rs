//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`, or
//! `chat_template` in a Hugging Face `tokenizer_config.json`), rendered with minijinja the way
//! transformers' `apply_chat_template` renders it (Python string methods included), with the
//! turns of tool calling (an assistant's `tool_calls`, a `tool`'s answer) and the `tools` given
//! to the template as vLLM gives them.

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
	/// `system`, `user`, `assistant` or `tool`.
	pub role: String,
	/// What was said: a string, or OpenAI's list of text parts (joined by new lines); empty
	/// for none (`null`: an assistant's turn that only called tools).
	#[serde(default, deserialize_with = "content_text")]
	pub content: String,
	/// An assistant's calls of tools (OpenAI's: `id`, `type`, `function` with `name` and
	/// `arguments`), given to the template with each call's arguments as an object.
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub tool_calls: Option<Vec<Value>>,
	/// A tool's answer: the id of the call it answers.
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub tool_call_id: Option<String>,
	/// The name of the participant or tool that speaks.
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub name: Option<String>,
}

/// A message's `content`: a string, `null`, or a list of parts of which only text is served.
fn content_text<'de, D: Deserializer<'de>>(
	deserializer: D,
) -> std::result::Result<String, D::Error> {
	use serde::de::Error as _;
	match Value::deserialize(deserializer)? {
		Value::Null => Ok(String::new()),
		Value::String(text) => Ok(text),
		Value::Array(parts) => {
			let texts = parts
				.iter()
				.map(|part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
					(Some("text"), Some(Value::String(text))) => Ok(text.as_str()),
					_ => Err(D::Error::custom(format!(
						"content: only text parts are served, not {part}"
					))),
				})
				.collect::<std::result::Result<Vec<_>, _>>()?;
			Ok(texts.join("\n"))
		}
		other => {
			Err(D::Error::custom(format!("content: {other} is not a string or a list of parts")))
		}
	}
}

impl Message {
	/// A turn of `role`.
	pub fn new(role: &str, content: &str) -> Self {
		Self {
			role: role.into(),
			content: content.into(),
			tool_calls: None,
			tool_call_id: None,
			name: None,
		}
	}

	/// The message as the template sees it: a tool call's `arguments`, a string of JSON in
	/// OpenAI's messages, as the object it holds (templates write `arguments | tojson`).
	fn for_template(&self) -> minijinja::Value {
		let mut map = std::collections::BTreeMap::<String, minijinja::Value>::new();
		map.insert("role".into(), minijinja::Value::from(self.role.as_str()));
		map.insert("content".into(), minijinja::Value::from(self.content.as_str()));
		if let Some(calls) = &self.tool_calls {
			let calls = calls.iter().map(|call| {
				let mut call = call.clone();
				let arguments = call.pointer("/function/arguments").and_then(Value::as_str);
				let parsed = arguments.and_then(|a| serde_json::from_str::<Value>(a).ok());
				if let (Some(parsed), Some(slot)) =
					(parsed, call.pointer_mut("/function/arguments"))
				{
					*slot = parsed;
				}
				template_value(&call)
			});
			map.insert("tool_calls".into(), minijinja::Value::from(calls.collect::<Vec<_>>()));
		}
		if let Some(id) = &self.tool_call_id {
			map.insert("tool_call_id".into(), minijinja::Value::from(id.as_str()));
		}
		if let Some(name) = &self.name {
			map.insert("name".into(), minijinja::Value::from(name.as_str()));
		}
		minijinja::Value::from(map)
	}
}

/// `value` as a template value. (Built by hand: serde_json's `arbitrary_precision`, on in this
/// workspace, serializes numbers as a private map that a template would print.)
pub fn template_value(value: &Value) -> minijinja::Value {
	match value {
		Value::Null => minijinja::Value::from(()),
		Value::Bool(b) => minijinja::Value::from(*b),
		Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
			(Some(i), ..) => minijinja::Value::from(i),
			(None, Some(u), _) => minijinja::Value::from(u),
			(.., Some(f)) => minijinja::Value::from(f),
			_ => minijinja::Value::from(n.to_string()),
		},
		Value::String(s) => minijinja::Value::from(s.as_str()),
		Value::Array(items) => {
			minijinja::Value::from(items.iter().map(template_value).collect::<Vec<_>>())
		}
		Value::Object(map) => minijinja::Value::from(
			map.iter()
				.map(|(k, v)| (k.clone(), template_value(v)))
				.collect::<std::collections::BTreeMap<_, _>>(),
		),
	}
}

/// transformers' `tojson` filter, Python's `json.dumps`: `", "` and `": "` between items (or
/// new lines with `indent`), non-ASCII characters as they are unless `ensure_ascii`, nothing
/// HTML-escaped (minijinja's own writes `'` as `\u0027`, which the model never saw in
/// training). Keys come sorted (`sort_keys` changes nothing).
fn tojson(
	value: &minijinja::Value,
	kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, JinjaError> {
	let indent: Option<usize> = kwargs.get("indent")?;
	let ascii: Option<bool> = kwargs.get("ensure_ascii")?;
	let _: Option<bool> = kwargs.get("sort_keys")?;
	kwargs.assert_all_used()?;
	let value = serde_json::to_value(value)
		.map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
	let mut out = String::new();
	dumps(&value, indent, 0, ascii.unwrap_or(false), &mut out);
	Ok(minijinja::Value::from_safe_string(out))
}

/// `value` as Python's `json.dumps` writes it (`", "` and `": "`), as a template's `tojson`
/// writes it.
pub fn python_json(value: &Value) -> String {
	let mut out = String::new();
	dumps(value, None, 0, false, &mut out);
	out
}

/// `value` as Python's `json.dumps` writes it, `depth` levels in (see [`tojson`]).
fn dumps(value: &Value, indent: Option<usize>, depth: usize, ascii: bool, out: &mut String) {
	let newline = |out: &mut String, depth: usize| {
		if let Some(n) = indent {
			out.push('\n');
			out.extend(std::iter::repeat_n(' ', n * depth));
		}
	};
	let separator = if indent.is_some() { "," } else { ", " };
	match value {
		Value::Array(items) if !items.is_empty() => {
			out.push('[');
			for (i, item) in items.iter().enumerate() {
				if i > 0 {
					out.push_str(separator);
				}
				newline(out, depth + 1);
				dumps(item, indent, depth + 1, ascii, out);
			}
			newline(out, depth);
			out.push(']');
		}
		Value::Object(map) if !map.is_empty() => {
			out.push('{');
			for (i, (key, item)) in map.iter().enumerate() {
				if i > 0 {
					out.push_str(separator);
				}
				newline(out, depth + 1);
				quoted(key, ascii, out);
				out.push_str(": ");
				dumps(item, indent, depth + 1, ascii, out);
			}
			newline(out, depth);
			out.push('}');
		}
		Value::String(text) => quoted(text, ascii, out),
		other => out.push_str(&other.to_string()),
	}
}

/// `text` as a JSON string, as Python writes it (`\uXXXX` for non-ASCII if `ascii`).
fn quoted(text: &str, ascii: bool, out: &mut String) {
	let json = serde_json::to_string(text).unwrap_or_default();
	if !ascii {
		out.push_str(&json);
		return;
	}
	for c in json.chars() {
		if c.is_ascii() {
			out.push(c);
		} else {
			let mut units = [0u16; 2];
			for unit in c.encode_utf16(&mut units) {
				out.push_str(&format!("\\u{unit:04x}"));
			}
		}
	}
}

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
	env: Environment<'static>,
	bos_token: String,
	eos_token: String,
	/// More variables for the template (vLLM's `chat_template_kwargs`; none by default).
	kwargs: minijinja::Value,
}

/// The template's own variables, which `chat_template_kwargs` may not set.
pub const TEMPLATE_VARIABLES: [&str; 5] =
	["messages", "tools", "add_generation_prompt", "bos_token", "eos_token"];

fn template_error(e: impl std::fmt::Display) -> Error {
	Error::Tokenizer(format!("chat template: {e}"))
}

impl ChatTemplate {
	/// Compiles `source`; `bos_token` and `eos_token` are the strings the template may use.
	pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
		let mut env = Environment::new();
		env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
		// Templates call `raise_exception('…')` to reject conversations they cannot render.
		env.add_function(
			"raise_exception",
			|message: String| -> std::result::Result<String, JinjaError> {
				Err(JinjaError::new(ErrorKind::InvalidOperation, message))
			},
		);
		env.add_filter("tojson", tojson);
		env.add_template_owned("chat", source.to_string()).map_err(template_error)?;
		Ok(Self {
			env,
			bos_token: bos_token.into(),
			eos_token: eos_token.into(),
			kwargs: minijinja::Value::from(std::collections::BTreeMap::<String, ()>::new()),
		})
	}

	/// The template with `kwargs` as more variables (vLLM's `chat_template_kwargs`, such as
	/// Qwen3's `enable_thinking`) in every rendering; an error naming one of the template's
	/// own variables ([`TEMPLATE_VARIABLES`]), which the request sets otherwise.
	pub fn with_kwargs(&self, kwargs: &serde_json::Map<String, Value>) -> Result<Self> {
		if let Some(name) = kwargs.keys().find(|k| TEMPLATE_VARIABLES.contains(&k.as_str())) {
			return Err(Error::Request(format!(
				"chat_template_kwargs: {name:?} is set by the request itself, not by a keyword"
			)));
		}
		let kwargs = template_value(&Value::Object(kwargs.clone()));
		Ok(Self { kwargs, ..self.clone() })
	}

	/// Whether the template's source holds `text` (a syntax it writes).
	pub fn writes(&self, text: &str) -> bool {
		self.env.get_template("chat").is_ok_and(|t| t.source().contains(text))
	}

	/// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
	/// answer begins.
	pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
		self.render_with_tools(messages, &[], add_generation_prompt)
	}

	/// Renders `messages` with the last one left open, for the answer to go on with it (vLLM's
	/// `continue_final_message`, a "prefill" of the answer): rendered without the generation
	/// prompt and cut where transformers' `apply_chat_template` cuts it, after the last
	/// occurrence of the last message's text stripped of spaces, and after its spaces at the
	/// end too where the rendering keeps them. An error if the last message has no text, or
	/// the rendering does not hold it.
	pub fn render_continuing(&self, messages: &[Message], tools: &[Value]) -> Result<String> {
		let last = messages.last().map(|m| m.content.as_str()).unwrap_or_default();
		let stripped = last.trim();
		if stripped.is_empty() {
			return Err(Error::Request(
				"continue_final_message: the last message has no text to go on with".into(),
			));
		}
		let mut text = self.render_with_tools(messages, tools, false)?;
		let at = text.rfind(stripped).ok_or_else(|| {
			Error::Request(
				"continue_final_message: the chat template does not write the last message's \
				 text"
					.into(),
			)
		})?;
		// The template kept the text as it is (or it has no spaces at its end).
		let kept = text[at..].starts_with(last);
		text.truncate(at + if kept { last.trim_start().len() } else { stripped.len() });
		Ok(text)
	}

	/// Renders `messages` with `tools` (OpenAI's tool definitions, as given: the template's
	/// `tools`, `none` when there are none, as transformers gives it).
	pub fn render_with_tools(
		&self,
		messages: &[Message],
		tools: &[Value],
		add_generation_prompt: bool,
	) -> Result<String> {
		if messages.is_empty() {
			return Err(Error::Request("a chat needs at least one message".into()));
		}
		let template = self.env.get_template("chat").map_err(template_error)?;
		let messages: Vec<minijinja::Value> = messages.iter().map(Message::for_template).collect();
		let tools = (!tools.is_empty())
			.then(|| minijinja::Value::from(tools.iter().map(template_value).collect::<Vec<_>>()));
		template
			.render(minijinja::context! {
				messages => messages,
				tools => tools,
				add_generation_prompt => add_generation_prompt,
				bos_token => &self.bos_token,
				eos_token => &self.eos_token,
				..self.kwargs.clone()
			})
			.map_err(|e| match e.kind() {
				// The template refuses the conversation (`raise_exception`): the request's fault.
				ErrorKind::InvalidOperation => Error::Request(format!("chat template: {e}")),
				// The request's keywords may break it too.
				_ if self.kwargs.len().is_some_and(|n| n > 0) => Error::Request(format!(
					"chat template (with the request's chat_template_kwargs): {e}"
				)),
				_ => template_error(e),
			})
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	/// SmolLM2-Instruct's template (ChatML with a default system turn), as in its GGUF.
	const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] \
	                       != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant \
	                       named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif \
	                       %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + \
	                       '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ \
	                       '<|im_start|>assistant\n' }}{% endif %}";

	#[test]
	fn chatml_turns_with_a_default_system_turn() {
		let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
		let text = t.render(&[Message::new("user", "Hi")], true).unwrap();
		assert_eq!(
			text,
			"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
			 Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
		);
		let text = t
			.render(&[Message::new("system", "Be brief."), Message::new("user", "Hi")], false)
			.unwrap();
		assert_eq!(
			text,
			"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
		);
	}

	/// vLLM's `continue_final_message`: the last message left open, cut after its text (or
	/// its text stripped, for a template that strips it); `chat_template_kwargs` reach the
	/// template, but not over its own variables.
	#[test]
	fn the_last_message_may_be_left_open_and_keywords_reach_the_template() {
		let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
		let chat = [Message::new("user", "Hi"), Message::new("assistant", "Hello, I am")];
		assert_eq!(
			t.render_continuing(&chat, &[]).unwrap(),
			"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
			 Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello, I am"
		);
		let strips = ChatTemplate::new(
			"{% for m in messages %}[{{ m.role }}] {{ m.content.strip() }}</s>{% endfor %}",
			"",
			"",
		)
		.unwrap();
		let chat = [Message::new("user", "Hi"), Message::new("assistant", " Well,  ")];
		assert_eq!(strips.render_continuing(&chat, &[]).unwrap(), "[user] Hi</s>[assistant] Well,");
		// The last occurrence of the text stripped: not an earlier message's, which holds it
		// with its spaces.
		let chat = [Message::new("user", "Hello there"), Message::new("assistant", "Hello ")];
		assert_eq!(
			strips.render_continuing(&chat, &[]).unwrap(),
			"[user] Hello there</s>[assistant] Hello"
		);
		// A template that keeps the spaces: the cut is after them.
		let keeps = ChatTemplate::new(
			"{% for m in messages %}[{{ m.role }}] {{ m.content }}</s>{% endfor %}",
			"",
			"",
		)
		.unwrap();
		assert_eq!(
			keeps.render_continuing(&chat, &[]).unwrap(),
			"[user] Hello there</s>[assistant] Hello "
		);
		let empty = [Message::new("user", "Hi"), Message::new("assistant", " ")];
		let err = strips.render_continuing(&empty, &[]).unwrap_err();
		assert!(matches!(err, Error::Request(_)), "{err:?}");
		let hides =
			ChatTemplate::new("{% for m in messages %}[{{ m.role }}]{% endfor %}", "", "").unwrap();
		assert!(hides.render_continuing(&chat, &[]).is_err());

		let thinks = ChatTemplate::new(
			"{{ messages[0].content }}{% if enable_thinking is defined and not enable_thinking \
			 %}/no_think{% endif %}{{ bos_token }}",
			"<s>",
			"",
		)
		.unwrap();
		let chat = [Message::new("user", "Hi")];
		assert_eq!(thinks.render(&chat, true).unwrap(), "Hi<s>");
		let kwargs = serde_json::json!({"enable_thinking": false});
		let kwargs = kwargs.as_object().unwrap();
		assert_eq!(
			thinks.with_kwargs(kwargs).unwrap().render(&chat, true).unwrap(),
			"Hi/no_think<s>"
		);
		let kwargs = serde_json::json!({"bos_token": "x"});
		let err = thinks.with_kwargs(kwargs.as_object().unwrap()).err().unwrap();
		assert!(err.to_string().contains("bos_token"), "{err}");
	}

	#[test]
	fn python_methods_tokens_and_raised_errors() {
		let source = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', \
		              'assistant'] %}{{ raise_exception('roles must be user/assistant') }}{% \
		              endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}{{ eos_token }}{% \
		              endfor %}";
		let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
		let text = t.render(&[Message::new("user", "  hello  ")], false).unwrap();
		assert_eq!(text, "<s>[USER] hello</s>");
		let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
		assert!(err.to_string().contains("roles must be user/assistant"), "{err}");
		// The template refused the conversation: the request's fault (a 400), not the server's.
		assert!(matches!(err, Error::Request(_)), "{err:?}");
		let broken = ChatTemplate::new("{{ messages | no_such_filter }}", "", "").unwrap();
		let err = broken.render(&[Message::new("user", "x")], false).unwrap_err();
		assert!(matches!(err, Error::Tokenizer(_)), "a broken template is the server's: {err:?}");
		assert!(t.render(&[], true).is_err());
		assert!(ChatTemplate::new("{% for %}", "", "").is_err(), "a broken template is refused");
	}

	/// A template in the shape of Hermes/Qwen 2.5's: the tools in the system turn, an
	/// assistant's calls as JSON with their arguments as objects, a tool's answer.
	const TOOLS: &str = "{% if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor \
	                     %}</tools>\n{% endif %}{% for m in messages %}[{{ m.role }}]{% if \
	                     m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} \
	                     {{ c.function.arguments | tojson }}</call>{% endfor %}{% elif m.role == \
	                     'tool' %}({{ m.tool_call_id }}) \
	                     {{ m.content }}{% else %}{{ m.content }}{% endif %}\n{% endfor %}";

	#[test]
	fn tool_calls_and_answers_reach_the_template() {
		let t = ChatTemplate::new(TOOLS, "", "").unwrap();
		let messages: Vec<Message> = serde_json::from_value(serde_json::json!([
			{"role": "user", "content": [{"type": "text", "text": "Weather"},
				{"type": "text", "text": "in Paris?"}]},
			{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
				"function": {"name": "weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
			{"role": "tool", "tool_call_id": "c1", "content": "sunny"}
		]))
		.unwrap();
		let tools = [serde_json::json!({"type": "function", "function": {"name": "weather",
			"description": "It's the <weather> & more.",
			"parameters": {"type": "object", "properties": {"days": {"maximum": 7}}}}})];
		let text = t.render_with_tools(&messages, &tools, false).unwrap();
		assert_eq!(
			text,
			"<tools>{\"function\": {\"description\": \"It's the <weather> & more.\", \"name\": \
			 \"weather\", \"parameters\": {\"properties\": {\"days\": {\"maximum\": 7}}, \"type\": \
			 \"object\"}}, \"type\": \"function\"}</tools>\n[user]Weather\nin Paris?\n[assistant]<call>\
			 weather {\"city\": \"Paris\", \"days\": 2}</call>\n[tool](c1) sunny\n"
		);
		// transformers' `tojson` arguments: indent, ensure_ascii.
		let dumps = ChatTemplate::new(
			"{{ messages[0].tool_calls[0].function.arguments | tojson(indent=2) }}|{{ 'é' | \
			 tojson(ensure_ascii=true) }}|{{ [] | tojson }}",
			"",
			"",
		)
		.unwrap();
		let text = dumps.render(&messages[1..2], false).unwrap();
		assert_eq!(text, "{\n  \"city\": \"Paris\",\n  \"days\": 2\n}|\"\\u00e9\"|[]");
		// No tools: the template's `tools` is none.
		let text = t.render(&messages[..1], false).unwrap();
		assert_eq!(text, "[user]Weather\nin Paris?\n");
		let image = serde_json::json!([{"role": "user", "content": [{"type": "image_url"}]}]);
		let error = serde_json::from_value::<Vec<Message>>(image).unwrap_err();
		assert!(error.to_string().contains("only text parts"), "{error}");
	}
}
