//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`, or
//! `chat_template` in a Hugging Face `tokenizer_config.json`), rendered with minijinja the way
//! transformers' `apply_chat_template` renders it (Python string methods included).

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
	/// `system`, `user` or `assistant`.
	pub role: String,
	/// What was said.
	pub content: String,
}

impl Message {
	/// A turn of `role`.
	pub fn new(role: &str, content: &str) -> Self {
		Self { role: role.into(), content: content.into() }
	}
}

/// A compiled chat template.
pub struct ChatTemplate {
	env: Environment<'static>,
	bos_token: String,
	eos_token: String,
}

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
		env.add_template_owned("chat", source.to_string()).map_err(template_error)?;
		Ok(Self { env, bos_token: bos_token.into(), eos_token: eos_token.into() })
	}

	/// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
	/// answer begins.
	pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
		if messages.is_empty() {
			return Err(Error::Request("a chat needs at least one message".into()));
		}
		let template = self.env.get_template("chat").map_err(template_error)?;
		template
			.render(minijinja::context! {
				messages => minijinja::Value::from(minijinja::value::Serde(messages)),
				add_generation_prompt => add_generation_prompt,
				bos_token => &self.bos_token,
				eos_token => &self.eos_token,
			})
			.map_err(template_error)
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
		assert!(t.render(&[], true).is_err());
		assert!(ChatTemplate::new("{% for %}", "", "").is_err(), "a broken template is refused");
	}
}
