//! Output grammars compiled for earlier requests, kept by what they were compiled from (as
//! vLLM's xgrammar backend keeps its compiled grammars): a request that gives the same JSON
//! schema, choices, regular expression or GBNF grammar as one before reuses the compiled
//! automaton, and the masks that grammar keeps (an expression's, a GBNF grammar's, those of a
//! schema's strings and bounds), rather than compiling it again and finding them anew.
//!
//! The most recently used are kept, at most [`MAX_CACHED_GRAMMARS`] of them and
//! [`MAX_CACHED_BYTES`] counted as the most each may come to hold ([`worst_case_bytes`]: its
//! automaton, and the states and masks it may keep as it is used; a grammar dropped while
//! requests still use it lives on with them, uncounted). A grammar that failed to compile is
//! not kept: the same request is refused the same way again. Requests that miss the same
//! grammar at once each compile it (the last is kept).

use std::sync::{
	atomic::{AtomicU64, Ordering},
	Mutex, MutexGuard,
};

use lru::LruCache;

use crate::{ebnf_grammar, generate::ResponseFormat, regex_grammar};

/// The most grammars kept.
pub const MAX_CACHED_GRAMMARS: usize = 64;
/// The most memory the grammars kept may come to hold, together.
pub const MAX_CACHED_BYTES: usize = 256 << 20;

/// What a grammar is compiled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrammarKind {
	/// A JSON schema (its compact JSON text is the key).
	Schema,
	/// `guided_choice`'s texts (their JSON list is the key).
	Choice,
	/// A regular expression.
	Regex,
	/// A GBNF grammar.
	Ebnf,
}

/// The grammars kept, and how often a request found its grammar there.
pub struct GrammarCache {
	kept: Mutex<Kept>,
	/// The bytes of one token mask of the vocabulary served (a bit a token).
	mask_bytes: usize,
	hits: AtomicU64,
	misses: AtomicU64,
}

struct Kept {
	entries: LruCache<(GrammarKind, String), (ResponseFormat, usize)>,
	/// Their [`worst_case_bytes`] and their keys' lengths, together.
	bytes: usize,
}

/// What the cache holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrammarCacheStats {
	/// Grammars kept now.
	pub grammars: usize,
	/// The most memory they may come to hold.
	pub bytes: usize,
	/// Requests whose grammar was kept.
	pub hits: u64,
	/// Requests whose grammar was not kept: compiled (and kept, if it fit), or refused.
	pub misses: u64,
}

impl GrammarCache {
	/// A cache for a vocabulary of `vocab_size` tokens.
	pub fn new(vocab_size: usize) -> Self {
		Self {
			kept: Mutex::new(Kept { entries: LruCache::unbounded(), bytes: 0 }),
			mask_bytes: vocab_size.div_ceil(8),
			hits: AtomicU64::new(0),
			misses: AtomicU64::new(0),
		}
	}

	fn kept(&self) -> MutexGuard<'_, Kept> {
		self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// The grammar of `kind` compiled from `text`: kept, or compiled by `compile` (outside
	/// the lock, so that requests with other grammars do not wait) and kept if it fits, the
	/// least recently used dropped for room.
	pub fn get_or_compile<E>(
		&self,
		kind: GrammarKind,
		text: &str,
		compile: impl FnOnce() -> Result<ResponseFormat, E>,
	) -> Result<ResponseFormat, E> {
		let key = (kind, text.to_owned());
		if let Some((format, _)) = self.kept().entries.get(&key) {
			self.hits.fetch_add(1, Ordering::Relaxed);
			return Ok(format.clone());
		}
		self.misses.fetch_add(1, Ordering::Relaxed);
		let format = compile()?;
		let bytes = worst_case_bytes(&format, self.mask_bytes).saturating_add(text.len());
		if bytes <= MAX_CACHED_BYTES {
			let mut kept = self.kept();
			// Another request may have compiled it meanwhile: this one replaces it.
			if let Some((_, before)) = kept.entries.put(key, (format.clone(), bytes)) {
				kept.bytes -= before;
			}
			kept.bytes += bytes;
			while kept.bytes > MAX_CACHED_BYTES || kept.entries.len() > MAX_CACHED_GRAMMARS {
				let Some((_, (_, dropped))) = kept.entries.pop_lru() else { break };
				kept.bytes -= dropped;
			}
		}
		Ok(format)
	}

	/// What the cache holds and has done.
	pub fn stats(&self) -> GrammarCacheStats {
		let kept = self.kept();
		GrammarCacheStats {
			grammars: kept.entries.len(),
			bytes: kept.bytes,
			hits: self.hits.load(Ordering::Relaxed),
			misses: self.misses.load(Ordering::Relaxed),
		}
	}
}

/// The most memory `format`'s grammar may come to hold, its masks `mask_bytes` each: what it
/// is compiled to, and what it may keep as it is used (each regular expression's masks, a GBNF
/// grammar's states, transitions and masks, each within its limits).
pub fn worst_case_bytes(format: &ResponseFormat, mask_bytes: usize) -> usize {
	let regex_masks = regex_grammar::MAX_CACHED_MASKS.saturating_mul(mask_bytes);
	match format {
		ResponseFormat::Text | ResponseFormat::Lazy(_) => 0,
		ResponseFormat::Json(grammar) => grammar.memory_usage(regex_masks),
		ResponseFormat::Regex(grammar) => grammar.memory_usage().saturating_add(regex_masks),
		ResponseFormat::Grammar(grammar) => grammar
			.memory_usage()
			.saturating_add(ebnf_grammar::MAX_CACHED_MASKS.saturating_mul(mask_bytes)),
	}
}

#[cfg(test)]
mod tests {
	use std::sync::Arc;

	use super::*;
	use crate::{ebnf_grammar::EbnfGrammar, json_mode::JsonGrammar, regex_grammar::RegexGrammar};

	fn regex(pattern: &str) -> Result<ResponseFormat, String> {
		RegexGrammar::new(pattern).map(|g| ResponseFormat::Regex(Arc::new(g)))
	}

	fn same(a: &ResponseFormat, b: &ResponseFormat) -> bool {
		match (a, b) {
			(ResponseFormat::Regex(a), ResponseFormat::Regex(b)) => Arc::ptr_eq(a, b),
			(ResponseFormat::Grammar(a), ResponseFormat::Grammar(b)) => Arc::ptr_eq(a, b),
			(ResponseFormat::Json(a), ResponseFormat::Json(b)) => Arc::ptr_eq(a, b),
			_ => false,
		}
	}

	/// The same text of the same kind is compiled once and shared; another text or kind is
	/// compiled on its own; a failure is not kept.
	#[test]
	fn a_grammar_is_compiled_once_per_text_and_kind() {
		let cache = GrammarCache::new(49_152);
		let mut compiled = 0;
		let mut get = |kind, text: &str| {
			cache
				.get_or_compile(kind, text, || {
					compiled += 1;
					match kind {
						GrammarKind::Ebnf => {
							EbnfGrammar::new(text).map(|g| ResponseFormat::Grammar(Arc::new(g)))
						}
						_ => regex(text),
					}
				})
				.unwrap()
		};
		let a = get(GrammarKind::Regex, "[a-z]+");
		let b = get(GrammarKind::Regex, "[a-z]+");
		assert!(same(&a, &b));
		let c = get(GrammarKind::Regex, "[a-z]*");
		assert!(!same(&a, &c));
		let d = get(GrammarKind::Ebnf, "root ::= [a-z]+");
		let e = get(GrammarKind::Ebnf, "root ::= [a-z]+");
		assert!(same(&d, &e));
		assert_eq!(compiled, 3);
		let refused = cache.get_or_compile(GrammarKind::Regex, "(a", || regex("(a"));
		assert!(refused.is_err());
		let again = cache.get_or_compile(GrammarKind::Regex, "(a", || regex("(a"));
		assert!(again.is_err());
		let stats = cache.stats();
		assert_eq!((stats.grammars, stats.hits, stats.misses), (3, 2, 5));
	}

	/// At most [`MAX_CACHED_GRAMMARS`] are kept, the least recently used dropped first.
	#[test]
	fn the_least_recently_used_are_dropped_for_room() {
		let cache = GrammarCache::new(1_000);
		let get = |i: usize| {
			cache.get_or_compile(GrammarKind::Regex, &format!("a{{{i}}}"), || {
				regex(&format!("a{{{i}}}"))
			})
		};
		let first = get(0).unwrap();
		for i in 1..MAX_CACHED_GRAMMARS {
			get(i).unwrap();
		}
		// Used again: now the most recent.
		assert!(same(&first, &get(0).unwrap()));
		get(MAX_CACHED_GRAMMARS).unwrap();
		let stats = cache.stats();
		assert_eq!(stats.grammars, MAX_CACHED_GRAMMARS);
		assert!(same(&first, &get(0).unwrap()), "the most recently used is kept");
		let misses = cache.stats().misses;
		get(1).unwrap();
		assert_eq!(cache.stats().misses, misses + 1, "the least recently used was dropped");
	}

	/// The grammars kept are counted as the most they may come to hold, within
	/// [`MAX_CACHED_BYTES`]: GBNF grammars (whose lazy automata may grow to some 12 MiB, and
	/// their masks to 1.5 MiB) fill it before the count does.
	#[test]
	fn the_memory_kept_is_bounded() {
		let cache = GrammarCache::new(49_152);
		for i in 0..MAX_CACHED_GRAMMARS {
			let text = format!("root ::= \"{i}\"");
			cache
				.get_or_compile(GrammarKind::Ebnf, &text, || {
					EbnfGrammar::new(&text).map(|g| ResponseFormat::Grammar(Arc::new(g)))
				})
				.unwrap();
		}
		let stats = cache.stats();
		assert!(stats.bytes <= MAX_CACHED_BYTES);
		assert!(stats.grammars < MAX_CACHED_GRAMMARS, "{stats:?}");
		assert!(stats.grammars >= 8, "{stats:?}");
		let schema = serde_json::json!({"type": "string", "maxLength": 50});
		let json = ResponseFormat::Json(Arc::new(JsonGrammar::from_schema(&schema).unwrap()));
		let plain = ResponseFormat::Json(Arc::new(JsonGrammar::any_object()));
		assert!(worst_case_bytes(&json, 6144) > worst_case_bytes(&plain, 6144));
	}
}
