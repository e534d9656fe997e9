//! Grammars that hold the output only once it writes a trigger (llama.cpp's lazy grammars):
//! how `tool_choice: "auto"` lets a model answer in text or call tools in its own syntax
//! ([`crate::tool_calls`]: `<tool_call>`, then the call's JSON, as Hermes-style models write
//! it).
//!
//! Until the trigger the output is free, except that a token which would complete the trigger
//! and go on with bytes the grammar refuses is not picked. From the trigger on, the output is
//! held to the grammar until its document is whole; then it is free again (a call after
//! another), or may only end. The trigger is written in text, split over tokens or not, or as
//! a special token whose text it is (Hermes 2 Pro's `<tool_call>`): special tokens have no
//! bytes, so that one is named ([`LazyState::accepts_special`]).

use std::sync::{Arc, OnceLock};

use crate::{
	json_mode::{JsonGrammar, JsonState},
	tokenizer::{TokenBytes, Tokenizer},
};

/// A grammar that holds the output from a trigger on.
#[derive(Debug)]
pub struct LazyGrammar {
	/// The text after which the output is held (not empty).
	trigger: Box<[u8]>,
	/// What the output is held to after the trigger.
	grammar: Arc<JsonGrammar>,
	/// Whether the output is free again once a document is whole (otherwise it may only end).
	repeat: bool,
	/// The tokens that may complete the trigger (by id), found once.
	risky: OnceLock<Vec<u32>>,
	/// The special token whose text is the trigger, if the vocabulary has one, found once.
	special: OnceLock<Option<u32>>,
}

impl PartialEq for LazyGrammar {
	fn eq(&self, other: &Self) -> bool {
		self.trigger == other.trigger
			&& Arc::ptr_eq(&self.grammar, &other.grammar)
			&& self.repeat == other.repeat
	}
}

impl LazyGrammar {
	/// The output held to `grammar` after each `trigger` (a non-empty text); once a document is
	/// whole, free again if `repeat`, or only to end.
	pub fn new(trigger: &str, grammar: Arc<JsonGrammar>, repeat: bool) -> Self {
		assert!(!trigger.is_empty(), "a lazy grammar's trigger is not empty");
		Self {
			trigger: trigger.as_bytes().into(),
			grammar,
			repeat,
			risky: OnceLock::new(),
			special: OnceLock::new(),
		}
	}

	/// Whether the output is free again once a document is whole (otherwise it may only end).
	pub fn repeats(&self) -> bool {
		self.repeat
	}

	/// The special token of `tokenizer` whose text is the trigger, if there is one.
	pub fn special_trigger(&self, tokenizer: &Tokenizer) -> Option<u32> {
		*self.special.get_or_init(|| {
			tokenizer.special_token(std::str::from_utf8(&self.trigger).unwrap_or_default())
		})
	}

	/// The tokens whose bytes may complete the trigger: those that hold it, or begin with an
	/// end of it (the rest of it before them).
	fn risky(&self, token_bytes: &TokenBytes) -> &[u32] {
		self.risky.get_or_init(|| {
			let trigger = &self.trigger[..];
			(0..token_bytes.len())
				.filter(|&id| {
					let bytes = token_bytes.get(id).unwrap_or_default();
					(1..=trigger.len()).any(|k| {
						let end = &trigger[trigger.len() - k..];
						bytes.starts_with(end)
					}) || bytes.windows(trigger.len()).any(|w| w == trigger)
				})
				.map(|id| id as u32)
				.collect()
		})
	}
}

/// How far into its output a request held to a [`LazyGrammar`] is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LazyState {
	/// Where in the grammar's document the output is, once the trigger has been written.
	held: Option<JsonState>,
	/// The free output's last bytes (fewer than the trigger's), which a token may complete
	/// the trigger after.
	tail: Vec<u8>,
	/// Documents made whole.
	documents: usize,
}

impl LazyState {
	/// Before the output's first byte: free.
	pub fn new() -> Self {
		Self { held: None, tail: Vec::new(), documents: 0 }
	}

	/// Whether the output is held to the grammar (between a trigger and its document's end).
	pub fn is_held(&self) -> bool {
		self.held.is_some()
	}

	/// The documents the output has made whole.
	pub fn documents(&self) -> usize {
		self.documents
	}

	/// Where the trigger ends in the free output's tail followed by `bytes`, if it does
	/// (counted in `bytes`).
	fn trigger_end(&self, lazy: &LazyGrammar, bytes: &[u8]) -> Option<usize> {
		let trigger = &lazy.trigger[..];
		let mut window = Vec::with_capacity(self.tail.len() + bytes.len());
		window.extend_from_slice(&self.tail);
		window.extend_from_slice(bytes);
		let start = window.windows(trigger.len()).position(|w| w == trigger)?;
		Some(start + trigger.len() - self.tail.len())
	}

	/// The state after a token of `bytes`, if the grammar takes them; `None` for a token the
	/// held output cannot take (a special token included: it has no text).
	pub fn accepts(&self, lazy: &LazyGrammar, bytes: &[u8]) -> Option<Self> {
		let mut next = self.clone();
		if let Some(state) = self.held {
			let state = state.accepts(&lazy.grammar, bytes)?;
			next.held = Some(state);
			next.document_may_end(lazy);
			return Some(next);
		}
		if bytes.is_empty() {
			// A special token: no text to complete the trigger with.
			next.tail.clear();
			return Some(next);
		}
		match self.trigger_end(lazy, bytes) {
			Some(end) => {
				let rest = &bytes[end..];
				let start = JsonState::new(&lazy.grammar);
				let state =
					if rest.is_empty() { start } else { start.accepts(&lazy.grammar, rest)? };
				next.held = Some(state);
				next.tail.clear();
				next.document_may_end(lazy);
			}
			None => {
				next.tail.extend_from_slice(bytes);
				let keep = lazy.trigger.len() - 1;
				let cut = next.tail.len().saturating_sub(keep);
				next.tail.drain(..cut);
			}
		}
		Some(next)
	}

	/// The state after `special` (a special token, whose text may be the trigger): held to the
	/// grammar if it is the trigger and the output is free; `None` if the output is held (a
	/// special token has no text to go on with).
	pub fn accepts_special(
		&self,
		lazy: &LazyGrammar,
		special: u32,
		trigger: Option<u32>,
	) -> Option<Self> {
		if self.held.is_some() {
			return None;
		}
		let mut next = self.clone();
		next.tail.clear();
		if Some(special) == trigger {
			next.held = Some(JsonState::new(&lazy.grammar));
		}
		Some(next)
	}

	/// Frees the output once its document is whole, if the grammar repeats.
	fn document_may_end(&mut self, lazy: &LazyGrammar) {
		let whole = self.held.is_some_and(|state| state.is_done());
		if whole {
			self.documents += 1;
			if lazy.repeat {
				self.held = None;
			}
		}
	}

	/// Whether the output may end here: free, or its document whole.
	pub fn can_end(&self, lazy: &LazyGrammar) -> bool {
		self.held.is_none_or(|state| state.can_end(&lazy.grammar))
	}

	/// For each token, whether it may come next; the end of the output (`eos`) when it may
	/// end. Free, every token but those that would complete the trigger and go on with bytes
	/// the grammar refuses (the special token that is the trigger, `trigger`, included).
	pub fn allowed_tokens(
		&self,
		lazy: &LazyGrammar,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
		trigger: Option<u32>,
	) -> Vec<bool> {
		if let Some(state) = &self.held {
			let mut allowed = state.allowed_tokens(&lazy.grammar, token_bytes, eos);
			if let Some(slot) = trigger.and_then(|t| allowed.get_mut(t as usize)) {
				*slot = false;
			}
			return allowed;
		}
		let mut allowed = vec![true; token_bytes.len()];
		for &id in lazy.risky(token_bytes) {
			let bytes = token_bytes.get(id as usize).unwrap_or_default();
			if self.accepts(lazy, bytes).is_none() {
				allowed[id as usize] = false;
			}
		}
		allowed
	}
}

impl Default for LazyState {
	fn default() -> Self {
		Self::new()
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use serde_json::json;

	fn grammar() -> Arc<JsonGrammar> {
		let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}},
			"required": ["a"], "additionalProperties": false});
		Arc::new(JsonGrammar::from_schema(&schema).unwrap())
	}

	/// Feeds `pieces` one token each; the state after them, or the index of the one refused.
	fn feed(lazy: &LazyGrammar, pieces: &[&str]) -> Result<LazyState, usize> {
		let mut state = LazyState::new();
		for (i, piece) in pieces.iter().enumerate() {
			state = state.accepts(lazy, piece.as_bytes()).ok_or(i)?;
		}
		Ok(state)
	}

	#[test]
	fn the_output_is_free_until_the_trigger_then_held_to_the_grammar() {
		let lazy = LazyGrammar::new("<call>", grammar(), false);
		// Free text, with a "<" that does not begin the trigger, anything at all.
		let free = feed(&lazy, &["Hi <b>", " x}", "<ca"]).unwrap();
		assert!(!free.is_held() && free.can_end(&lazy));
		// The trigger split over tokens, the rest of the last one in the grammar.
		let held = feed(&lazy, &["So ", "<ca", "ll>", "\n{\"a\""]).unwrap();
		assert!(held.is_held() && !held.can_end(&lazy));
		assert_eq!(feed(&lazy, &["<ca", "ll>{\"b\""]).unwrap_err(), 1);
		assert_eq!(feed(&lazy, &["<call>", " {\"a\": 1.5"]).unwrap_err(), 1);
		// Whole, it may only end (not even whitespace follows).
		let whole = feed(&lazy, &["<call>", "{\"a\": 12}"]).unwrap();
		assert!(whole.can_end(&lazy) && whole.documents() == 1);
		assert!(whole.accepts(&lazy, b"\n").is_none());
		assert!(whole.accepts(&lazy, b"").is_none(), "no special token but the end");
		// The trigger and the whole document in one token.
		assert!(feed(&lazy, &["x<call>{\"a\":1}"]).unwrap().can_end(&lazy));
		// A special token between the trigger's pieces breaks it.
		let broken = feed(&lazy, &["<ca", "", "ll>{\"b\""]).unwrap();
		assert!(!broken.is_held());
		// The special token that is the trigger holds the output; others leave it free; none
		// is taken while it is held.
		let free = LazyState::new();
		assert!(!free.accepts_special(&lazy, 7, Some(3)).unwrap().is_held());
		let held = free.accepts_special(&lazy, 3, Some(3)).unwrap();
		assert!(held.is_held());
		assert!(held.accepts(&lazy, b"{\"a\": 1}").unwrap().can_end(&lazy));
		assert!(held.accepts_special(&lazy, 3, Some(3)).is_none());
	}

	#[test]
	fn a_repeating_grammar_is_free_again_after_each_document() {
		let lazy = LazyGrammar::new("<call>", grammar(), true);
		let state = feed(&lazy, &["<call>{\"a\":1}", "</call> and ", "<call>", "{\"a\":2}"]);
		let state = state.unwrap();
		assert!(!state.is_held() && state.can_end(&lazy));
		assert_eq!(state.documents(), 2);
		let again = state.accepts(&lazy, b" free {").unwrap();
		assert!(!again.is_held());
	}

	#[test]
	fn tokens_that_would_complete_the_trigger_into_refused_bytes_are_not_allowed() {
		let lazy = LazyGrammar::new("<call>", grammar(), false);
		let texts = ["<", "call", ">", ">{", "><", "ll>", "ll> [", "x", "<call>{\"a\"", "{"];
		let token_bytes = TokenBytes::new(texts.iter().map(|t| t.as_bytes().to_vec()));
		let allowed = |state: &LazyState| {
			let allowed = state.allowed_tokens(&lazy, &token_bytes, None, None);
			texts.iter().zip(allowed).filter(|(_, a)| *a).map(|(t, _)| *t).collect::<Vec<_>>()
		};
		// Free with no part of the trigger before: every token (">{" completes nothing).
		assert_eq!(allowed(&LazyState::new()), texts);
		// After "<ca": "ll> [" would complete it with " [", which the grammar refuses.
		let state = feed(&lazy, &["<ca"]).unwrap();
		let without: Vec<&str> = texts.iter().copied().filter(|t| *t != "ll> [").collect();
		assert_eq!(allowed(&state), without);
		// After "<call": ">{" goes on into the grammar, "><" does not.
		let state = feed(&lazy, &["<", "call"]).unwrap();
		let without: Vec<&str> = texts.iter().copied().filter(|t| *t != "><").collect();
		assert_eq!(allowed(&state), without);
		// Held: the grammar's tokens only.
		let state = feed(&lazy, &["<call>"]).unwrap();
		assert_eq!(allowed(&state), ["{"]);
	}
}
