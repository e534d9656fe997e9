//! A generation's text as it grows, for streaming answers: each new token's text is released
//! once it can no longer change, so that the pieces sent add up to exactly the final text.
//!
//! Two things can still change the end of the text decoded so far:
//! - **A character split across tokens**: byte-level BPE spells a multi-byte character with
//!   several byte tokens, and the text of only some of them ends in U+FFFD. Following vLLM's
//!   incremental detokenizer, only the tokens after a window that is already released are
//!   decoded each time (so a step costs a few tokens' decoding, not the whole output's), and
//!   text ending in U+FFFD waits for the next token.
//! - **A stop sequence**: the final text is cut before the first stop sequence, which may have
//!   begun in text that would otherwise be released. The last `longest stop - 1` bytes are
//!   held back: a stop sequence that is not yet whole in the text starts within them.
//!
//! With `include_stop_str_in_output` (vLLM's) the final text keeps the stop sequence and ends
//! right after it, so nothing released can be cut and nothing is held back.
//!
//! [`TextStream::finish`] gives what is left of the final text once the generation is over.

use crate::{
	error::Result,
	generate::{Generation, GenerationRequest},
	tokenizer::Tokenizer,
};

/// Releases a generation's text as it grows (see the module documentation).
#[derive(Debug)]
pub struct TextStream {
	/// Bytes held back at the end: one less than the longest stop sequence.
	hold: usize,
	/// The end-of-sequence token, which is not part of the text.
	eos: Option<u32>,
	/// Tokens before this index are decoded into `text` and only serve as the left context.
	prefix_offset: usize,
	/// Tokens before this index are decoded into `text`.
	read_offset: usize,
	/// The text of the tokens decoded so far.
	text: String,
	/// How many bytes of `text` have been released.
	sent: usize,
	/// Whether special tokens are left out of the text (as the request's).
	skip_special_tokens: bool,
}

impl TextStream {
	/// A stream for `request`'s text (its stop sequences, whether the text keeps them and
	/// whether special tokens are left out), on a model whose end-of-sequence token is `eos`.
	pub fn new(request: &GenerationRequest, eos: Option<u32>) -> Self {
		let hold = match request.include_stop_str_in_output {
			true => 0,
			false => request.stop.iter().map(String::len).max().unwrap_or(0).saturating_sub(1),
		};
		Self {
			hold,
			eos,
			prefix_offset: 0,
			read_offset: 0,
			text: String::new(),
			sent: 0,
			skip_special_tokens: request.skip_special_tokens,
		}
	}

	/// The text released so far.
	pub fn sent(&self) -> &str {
		&self.text[..self.sent]
	}

	/// The text that the generated `tokens` (all of them so far) add to what was released
	/// before, as much of it as can no longer change; empty if none can be released yet.
	pub fn advance(&mut self, tokens: &[u32], tokenizer: &Tokenizer) -> Result<String> {
		let end = match tokens.last() {
			Some(&last) if Some(last) == self.eos => tokens.len() - 1,
			_ => tokens.len(),
		};
		if end > self.read_offset {
			let window = &tokens[self.prefix_offset..end];
			let skip = self.skip_special_tokens;
			let prefix =
				tokenizer.decode_output(&tokens[self.prefix_offset..self.read_offset], skip)?;
			let decoded = tokenizer.decode_output(window, skip)?;
			// Text that ends in a split character waits for the rest of it.
			if decoded.len() > prefix.len() && !decoded.ends_with('\u{FFFD}') {
				if let Some(new) = decoded.get(prefix.len()..) {
					self.text.push_str(new);
					self.prefix_offset = self.read_offset;
					self.read_offset = end;
				}
			}
		}
		let mut until = self.text.len().saturating_sub(self.hold).max(self.sent);
		while !self.text.is_char_boundary(until) {
			until -= 1;
		}
		let released = self.text[self.sent..until].to_string();
		self.sent = until;
		Ok(released)
	}

	/// What is left to send of `generation`'s final text, or `None` if what was released is not
	/// its beginning (which the holding back rules out).
	pub fn finish<'g>(&self, generation: &'g Generation) -> Option<&'g str> {
		generation.text.strip_prefix(self.sent())
	}
}
