//! Regular expressions as output grammars (vLLM's `guided_regex`): the whole output is held to
//! a regular expression, token by token, as [`crate::json_mode`] holds it to a JSON schema.
//!
//! The expression (Rust's `regex` syntax, which Python's `re` and vLLM's shares for the usual
//! cases: classes, repetitions with bounds, alternations, groups, `\d`, `\w`, Unicode classes)
//! is compiled into a deterministic automaton over bytes ([`regex_automata`]'s dense DFA),
//! anchored at the start of the output and matching all it can (so `a|ab` takes both). The
//! output is a match of the whole expression, as vLLM's (a full match, not a search): it may
//! end only where the automaton accepts, and a token whose bytes would take it where nothing
//! can match any more is masked. Multi-byte characters split over tokens are followed byte by
//! byte. What the automaton cannot do is refused when the expression is compiled, not
//! ignored: look-around, backreferences, Unicode word boundaries (`(?-u:\b)` is served),
//! expressions that match no text, and expressions whose automaton would be larger than
//! [`MAX_DFA_BYTES`].
//!
//! The tokens allowed from a state are found by walking the vocabulary's byte trie
//! ([`crate::tokenizer::TokenTrie`]) with the automaton, or token by token from a state that
//! many bytes may follow, and kept per state ([`MAX_CACHED_MASKS`] of them per grammar, then
//! dropped for those met next): the
//! choices of one request, and the steps that come back to a state (`[0-9]+`), reuse them.

use std::{
	collections::HashMap,
	sync::{Arc, Mutex},
};

use regex_automata::{
	dfa::{dense, Automaton, StartKind},
	nfa::thompson,
	util::{primitives::StateID, start},
	Anchored, MatchKind,
};
use regex_syntax::hir::Hir;

use crate::tokenizer::{allow_end, TokenBytes, TokenMask};

/// The longest expression taken, in bytes (a parsed expression's classes take memory before
/// any limit of the automaton applies: `\pL` is some 700 ranges).
pub const MAX_PATTERN_BYTES: usize = 4 * 1024;
/// The most memory each stage of an expression's compiling may take: its NFA, the making of
/// its DFA, and the DFA.
pub const MAX_DFA_BYTES: usize = 16 * 1024 * 1024;
/// How many of the 256 bytes may follow a state before its mask is found token by token
/// rather than by walking the vocabulary's trie.
const WIDE_STATE_BYTES: usize = 64;
/// The most states whose allowed tokens one grammar keeps.
pub const MAX_CACHED_MASKS: usize = 256;

/// A regular expression the whole output must match, compiled.
pub struct RegexGrammar {
	/// The expression as given.
	pattern: String,
	dfa: dense::DFA<Vec<u32>>,
	/// The state before any byte.
	start: StateID,
	/// By state (its id's index, see [`RegexGrammar::live`]), whether some continuation of the
	/// output, maybe none, matches the whole expression.
	live: Vec<bool>,
	/// Per state, the tokens that may come next (a bit per token id); one vocabulary per
	/// grammar (the first one it is asked about).
	masks: Mutex<HashMap<StateID, Arc<TokenMask>>>,
}

impl std::fmt::Debug for RegexGrammar {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("RegexGrammar").field("pattern", &self.pattern).finish_non_exhaustive()
	}
}

impl PartialEq for RegexGrammar {
	fn eq(&self, other: &Self) -> bool {
		self.pattern == other.pattern
	}
}

/// How far into a [`RegexGrammar`] the output is: the automaton's state after its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegexState(StateID);

impl RegexGrammar {
	/// Compiles `pattern`; an error says why it cannot be served (its syntax, what the
	/// automaton cannot do, or its size).
	pub fn new(pattern: &str) -> Result<Self, String> {
		if pattern.len() > MAX_PATTERN_BYTES {
			return Err(format!(
				"the expression is {} bytes; at most {MAX_PATTERN_BYTES} are taken",
				pattern.len()
			));
		}
		let hir = regex_syntax::parse(pattern).map_err(|e| e.to_string())?;
		Self::from_hir(pattern, &hir)
	}

	/// Compiles `hir` (an expression parsed, or built: [`crate::json_mode`]'s strings), known
	/// as `pattern`; an error says why it cannot be served.
	pub fn from_hir(pattern: &str, hir: &Hir) -> Result<Self, String> {
		let nfa = thompson::Compiler::new()
			.configure(thompson::Config::new().nfa_size_limit(Some(MAX_DFA_BYTES)))
			.build_from_hir(hir)
			.map_err(|e| match e.size_limit() {
				Some(_) => too_large(),
				None => deepest_cause(&e),
			})?;
		let dfa = dense::Builder::new()
			.configure(
				dense::Config::new()
					.match_kind(MatchKind::All)
					.start_kind(StartKind::Anchored)
					.dfa_size_limit(Some(MAX_DFA_BYTES))
					.determinize_size_limit(Some(MAX_DFA_BYTES)),
			)
			.build_from_nfa(&nfa)
			.map_err(|e| match e.is_size_limit_exceeded() {
				true => too_large(),
				false => deepest_cause(&e),
			})?;
		let start = dfa
			.start_state(&start::Config::new().anchored(Anchored::Yes))
			.map_err(|e| e.to_string())?;
		let live = live_states(&dfa, start);
		let grammar =
			Self { pattern: pattern.into(), dfa, start, live, masks: Mutex::new(HashMap::new()) };
		if !grammar.live(start) {
			return Err("the expression matches no text".into());
		}
		Ok(grammar)
	}

	/// Whether some continuation of the output at `state`, maybe none, matches.
	fn live(&self, state: StateID) -> bool {
		self.live.get(state.as_usize() >> self.dfa.stride2()).copied().unwrap_or(false)
	}

	/// The memory the automaton and its marks of live states take (not the masks kept, which
	/// grow as it is used, to at most [`MAX_CACHED_MASKS`]).
	pub fn memory_usage(&self) -> usize {
		self.dfa.memory_usage() + self.live.len()
	}

	/// The expression as given.
	pub fn pattern(&self) -> &str {
		&self.pattern
	}

	/// The state before any output.
	pub fn start(&self) -> RegexState {
		RegexState(self.start)
	}

	/// The state after `byte` from `state`, unless no match can follow. (The automaton's own
	/// dead state comes a byte late: a match is reported one byte after it ends, so the byte
	/// after a match that nothing may follow is not dead yet.)
	fn step(&self, state: StateID, byte: u8) -> Option<StateID> {
		let next = self.dfa.next_state(state, byte);
		self.live(next).then_some(next)
	}

	/// The state after `bytes` from `state`, unless they take the output off the expression.
	pub fn accepts(&self, state: RegexState, bytes: &[u8]) -> Option<RegexState> {
		bytes.iter().try_fold(state.0, |s, &b| self.step(s, b)).map(RegexState)
	}

	/// Whether the output so far matches the whole expression (so it may end here).
	pub fn can_end(&self, state: RegexState) -> bool {
		self.dfa.is_match_state(self.dfa.next_eoi_state(state.0))
	}

	/// For each token (by id, its bytes in `token_bytes`), whether it may come next from
	/// `state`; the end of the output (`eos`) when the output matches. Tokens without bytes
	/// (special tokens) never may.
	pub fn allowed_tokens(
		&self,
		state: RegexState,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
	) -> Vec<bool> {
		let mask = self.mask(state.0, token_bytes);
		debug_assert_eq!(mask.len(), token_bytes.len(), "one vocabulary per grammar");
		mask.allowed(eos, self.can_end(state))
	}

	/// The tokens that may come next from `state`, a bit each: kept, or found by walking the
	/// vocabulary's byte trie with the automaton (a prefix many tokens share is stepped once, a
	/// byte off the expression prunes every token below it) when few bytes may follow the
	/// state, or by running the automaton over each token's bytes when many may (most tokens
	/// then go on, and the trie's scattered nodes cost more than the tokens' bytes read in
	/// order: `benches/structured_output.rs`).
	fn mask(&self, state: StateID, token_bytes: &TokenBytes) -> Arc<TokenMask> {
		let masks = || self.masks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
		if let Some(mask) = masks().get(&state) {
			return mask.clone();
		}
		let following = (0..=255u8).filter(|&b| self.step(state, b).is_some()).count();
		let mask = Arc::new(self.find_mask(state, token_bytes, following <= WIDE_STATE_BYTES));
		let mut masks = masks();
		// A grammar kept for later requests (crate::grammar_cache) meets other states: the
		// masks of earlier ones are dropped for them.
		if masks.len() >= MAX_CACHED_MASKS {
			masks.clear();
		}
		masks.insert(state, mask.clone());
		mask
	}

	/// The tokens that may come next from `state`, a bit each: found by a walk of the
	/// vocabulary's trie if `by_trie`, or token by token.
	fn find_mask(&self, state: StateID, token_bytes: &TokenBytes, by_trie: bool) -> TokenMask {
		let len = token_bytes.len();
		let mut mask = TokenMask::new(len);
		if !by_trie {
			for id in 0..len {
				let bytes = token_bytes.get(id).unwrap_or_default();
				if !bytes.is_empty() && self.accepts(RegexState(state), bytes).is_some() {
					mask.insert(id);
				}
			}
		} else {
			let trie = token_bytes.trie();
			let mut stack = vec![(0u32, state)];
			while let Some((node, at)) = stack.pop() {
				for &(b, child) in trie.children(node) {
					let Some(next) = self.step(at, b) else { continue };
					for &id in trie.tokens(child) {
						mask.insert(id as usize);
					}
					if !trie.children(child).is_empty() {
						stack.push((child, next));
					}
				}
			}
		}
		mask
	}

	/// [`RegexGrammar::allowed_tokens`] computed token by token on this thread, nothing kept:
	/// the reference the kept masks are tested and measured against.
	pub fn allowed_tokens_each(
		&self,
		state: RegexState,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
	) -> Vec<bool> {
		let mut allowed = token_bytes.each_fitting(|bytes| self.accepts(state, bytes).is_some());
		allow_end(&mut allowed, eos, self.can_end(state));
		allowed
	}
}

/// By state (its id shifted right by the automaton's `stride2`), whether some continuation of
/// the output from it, maybe none, matches the whole expression: the states reached from
/// `start`, walked once with a byte of each class, then marked back from those where the
/// output may end. Flat arrays only (the edges back in one list, by state), so that the marks
/// take memory of the order of the automaton's own.
fn live_states(dfa: &dense::DFA<Vec<u32>>, start: StateID) -> Vec<bool> {
	let stride2 = dfa.stride2();
	let index = |state: StateID| state.as_usize() >> stride2;
	let bytes: Vec<u8> =
		dfa.byte_classes().representatives(0..=255).filter_map(|unit| unit.as_u8()).collect();
	// The states reached, in order, and each one's place in that order (by index).
	let mut states = vec![start];
	let mut order = vec![u32::MAX; index(start) + 1];
	order[index(start)] = 0;
	// Each edge between states reached, as (from, to) places.
	let mut edges: Vec<(u32, u32)> = Vec::new();
	let mut at = 0;
	while let Some(&state) = states.get(at) {
		for &b in &bytes {
			let next = dfa.next_state(state, b);
			if dfa.is_dead_state(next) || dfa.is_quit_state(next) {
				continue;
			}
			let i = index(next);
			if i >= order.len() {
				order.resize(i + 1, u32::MAX);
			}
			if order[i] == u32::MAX {
				order[i] = states.len() as u32;
				states.push(next);
			}
			edges.push((at as u32, order[i]));
		}
		at += 1;
	}
	// The edges into each state, by its place: `into[starts[p]..starts[p + 1]]`.
	let mut starts = vec![0u32; states.len() + 1];
	for &(_, to) in &edges {
		starts[to as usize + 1] += 1;
	}
	for p in 0..states.len() {
		starts[p + 1] += starts[p];
	}
	let mut filled = starts.clone();
	let mut into = vec![0u32; edges.len()];
	for &(from, to) in &edges {
		into[filled[to as usize] as usize] = from;
		filled[to as usize] += 1;
	}
	drop(edges);
	let mut live = vec![false; states.len()];
	let mut queue: Vec<u32> = (0..states.len() as u32)
		.filter(|&p| dfa.is_match_state(dfa.next_eoi_state(states[p as usize])))
		.collect();
	for &p in &queue {
		live[p as usize] = true;
	}
	while let Some(p) = queue.pop() {
		let (from, to) = (starts[p as usize] as usize, starts[p as usize + 1] as usize);
		for &before in &into[from..to] {
			if !std::mem::replace(&mut live[before as usize], true) {
				queue.push(before);
			}
		}
	}
	order.iter().map(|&p| p != u32::MAX && live[p as usize]).collect()
}

/// An error as its deepest cause says it: the syntax error's own (with the expression and a
/// caret), or what the automaton cannot do (the causes above it only say which step of the
/// building failed).
fn deepest_cause(error: &(dyn std::error::Error + 'static)) -> String {
	let mut deepest = error;
	while let Some(cause) = deepest.source() {
		deepest = cause;
	}
	deepest.to_string()
}

/// An automaton past [`MAX_DFA_BYTES`], with what makes it smaller.
fn too_large() -> String {
	format!(
		"its automaton would take more than {} MiB (narrower classes, such as [a-z] for \\w, or \
		 fewer repetitions make it smaller)",
		MAX_DFA_BYTES >> 20
	)
}

#[cfg(test)]
mod tests {
	use super::*;

	/// A vocabulary of single bytes, some words and pieces of multi-byte characters, and a
	/// special token (no bytes).
	fn vocabulary() -> TokenBytes {
		let mut tokens: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
		for word in ["12", "123", "-", "-4", "ab", "abc", "a", "b", "é", "éa", "日本", "\u{e9}1"]
		{
			tokens.push(word.as_bytes().to_vec());
		}
		tokens.push("日".as_bytes()[..2].to_vec());
		tokens.push(Vec::new());
		TokenBytes::new(tokens)
	}

	/// The shortest text (of characters of a small alphabet) that takes `state` to a match,
	/// found breadth first; panics if there is none within 40 characters.
	fn shortest_way_to_a_match(grammar: &RegexGrammar, state: RegexState) -> String {
		let alphabet: Vec<char> = "0123456789-.@abcdegimoqrsyzéYESNon日本\n ".chars().collect();
		let mut seen = std::collections::HashSet::from([state]);
		let mut layer = vec![(state, String::new())];
		for _ in 0..40 {
			let mut next = Vec::new();
			for (state, text) in layer {
				if grammar.can_end(state) {
					return text;
				}
				for &c in &alphabet {
					let mut buffer = [0; 4];
					let bytes = c.encode_utf8(&mut buffer).as_bytes();
					if let Some(after) = grammar.accepts(state, bytes) {
						if seen.insert(after) {
							next.push((after, format!("{text}{c}")));
						}
					}
				}
			}
			layer = next;
		}
		panic!("no match within 40 characters of {:?}", grammar.pattern());
	}

	/// The state after `text`, which must be on the expression.
	fn after(grammar: &RegexGrammar, text: &str) -> RegexState {
		grammar.accepts(grammar.start(), text.as_bytes()).unwrap()
	}

	#[test]
	fn the_whole_output_must_match_and_every_alternative_is_taken() {
		let phone = RegexGrammar::new(r"[0-9]{3}-[0-9]{4}").unwrap();
		assert!(!phone.can_end(after(&phone, "123")));
		assert!(!phone.can_end(after(&phone, "123-456")));
		assert!(phone.can_end(after(&phone, "123-4567")));
		assert_eq!(phone.accepts(phone.start(), b"12a"), None);
		// Not one byte past the end either (the automaton reports a match a byte late).
		assert_eq!(phone.accepts(phone.start(), b"123-45678"), None);
		assert_eq!(phone.accepts(after(&phone, "123-4567"), b"8"), None);
		// A branch that can never match is not taken.
		let never = RegexGrammar::new(r"a[^\s\S]|b").unwrap();
		assert_eq!(never.accepts(never.start(), b"a"), None);
		assert!(never.can_end(after(&never, "b")));
		// All matches, not the leftmost-first one: `a` then `ab` both match.
		let either = RegexGrammar::new("a|ab|abc(d|e)").unwrap();
		assert!(either.can_end(after(&either, "a")));
		assert!(either.can_end(after(&either, "ab")));
		assert!(!either.can_end(after(&either, "abc")));
		assert!(either.can_end(after(&either, "abce")));
		// Anchored at the start: no match later in the text counts.
		assert_eq!(either.accepts(either.start(), b"xa"), None);
		// `^` and `$` mean the output's start and end.
		let anchored = RegexGrammar::new("^(yes|no)$").unwrap();
		assert!(anchored.can_end(after(&anchored, "no")));
		assert_eq!(anchored.accepts(anchored.start(), b"no "), None);
		// The empty expression: only the empty output.
		let empty = RegexGrammar::new("").unwrap();
		assert!(empty.can_end(empty.start()));
		assert_eq!(empty.accepts(empty.start(), b"a"), None);
	}

	/// Outputs near matches of each expression (matches with a character inserted, removed or
	/// replaced, cut anywhere): each is on the expression, and may end, as the regex crate's
	/// full match says.
	#[test]
	fn outputs_may_end_where_the_regex_crate_finds_a_full_match() {
		use rand::{rngs::StdRng, Rng, SeedableRng};
		let cases: [(&str, &[&str]); 7] = [
			(r"[0-9]{3}-[0-9]{4}", &["555-1234", "000-0000"]),
			(r"(a|ab)(c|bcd)(d*)", &["abcd", "acd", "abcdddd", "ac"]),
			(r"\d+(\.\d{1,2})?", &["3.14", "42", "0.5"]),
			(r"(é|日本)+[0-9]?", &["éé日本1", "日本"]),
			(r"[a-z]+@[a-z]+\.(com|org)", &["ab@cd.com", "x@y.org"]),
			(r"(?i)yes|no", &["YES", "No", "yEs"]),
			(r"(?s:.){0,3}z", &["z", "é日z", "\nz"]),
		];
		let alphabet: Vec<char> = "0123456789-.@abcdzéxy日本 YESno\n".chars().collect();
		let mut rng = StdRng::seed_from_u64(7);
		for (pattern, samples) in cases {
			let grammar = RegexGrammar::new(pattern).unwrap();
			let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
			let (mut matched, mut refused) = (0, 0);
			for sample in samples.iter().cycle().take(400) {
				let mut text: Vec<char> = sample.chars().collect();
				let at = rng.random_range(0..=text.len());
				match rng.random_range(0..4) {
					0 => text.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
					1 if at < text.len() => drop(text.remove(at)),
					2 if at < text.len() => {
						text[at] = alphabet[rng.random_range(0..alphabet.len())]
					}
					_ => {}
				}
				text.truncate(rng.random_range(text.len() / 2..=text.len()));
				let text: String = text.into_iter().collect();
				let whole = full.is_match(&text);
				match grammar.accepts(grammar.start(), text.as_bytes()) {
					Some(state) => {
						assert_eq!(grammar.can_end(state), whole, "{pattern:?} {text:?}");
						// A match can still be reached from there: the shortest way on that
						// the automaton finds is one by the regex crate too.
						let rest = shortest_way_to_a_match(&grammar, state);
						let completed = format!("{text}{rest}");
						assert!(full.is_match(&completed), "{pattern:?}: {completed:?}");
					}
					None => assert!(!whole, "{pattern:?} refused {text:?}, a match"),
				}
				matched += usize::from(whole);
				refused += usize::from(grammar.accepts(grammar.start(), text.as_bytes()).is_none());
			}
			// The cases meet both sides of each question.
			assert!(
				matched > 20 && refused > 0,
				"{pattern:?}: {matched} matches, {refused} refused"
			);
		}
	}

	#[test]
	fn characters_split_over_tokens_are_followed_byte_by_byte() {
		let grammar = RegexGrammar::new("[é日]+").unwrap();
		let first = &"日".as_bytes()[..2];
		let halfway = grammar.accepts(grammar.start(), first).unwrap();
		assert!(!grammar.can_end(halfway), "half a character is not a match");
		let whole = grammar.accepts(halfway, &"日".as_bytes()[2..]).unwrap();
		assert!(grammar.can_end(whole));
		// Bytes that are not UTF-8, and characters outside the class, are refused.
		assert_eq!(grammar.accepts(grammar.start(), &[0xff]), None);
		assert_eq!(grammar.accepts(grammar.start(), "本".as_bytes()), None);
		// `.` is a whole character too.
		let any = RegexGrammar::new(".{2}").unwrap();
		assert!(any.can_end(after(&any, "日é")));
		assert!(!any.can_end(after(&any, "日")));
	}

	#[test]
	fn the_mask_allows_what_trying_each_token_allows() {
		let vocabulary = vocabulary();
		let end = vocabulary.len() as u32 - 1;
		let eos = Some(end);
		for pattern in [
			r"[0-9]{3}-[0-9]{4}",
			"a|ab|abc(d|e)",
			"(é|日本)+[0-9]?",
			r"\w+",
			r"(?s:.){0,3}",
			"",
			"[a-c]*-?[0-9]+",
		] {
			let grammar = RegexGrammar::new(pattern).unwrap();
			// Each state reached by a few outputs, some twice (kept masks). `\w+` and `.` make
			// states that many bytes may follow (found token by token), the others trie walks.
			for text in ["", "1", "12", "123", "123-", "a", "ab", "abc", "é", "日本", "aa", "-4"]
				.iter()
				.chain(["", "123", "a"].iter())
			{
				let Some(state) = grammar.accepts(grammar.start(), text.as_bytes()) else {
					continue;
				};
				let walked = grammar.allowed_tokens(state, &vocabulary, eos);
				let each = grammar.allowed_tokens_each(state, &vocabulary, eos);
				assert_eq!(walked, each, "{pattern:?} after {text:?}");
				// Both ways of finding a mask, whichever the state would take.
				assert_eq!(
					grammar.find_mask(state.0, &vocabulary, true),
					grammar.find_mask(state.0, &vocabulary, false),
					"{pattern:?} after {text:?}"
				);
				assert_eq!(walked[end as usize], grammar.can_end(state));
			}
		}
		// The phone number after "123": only "-" and "-4" of the words, the end not yet.
		let phone = RegexGrammar::new(r"[0-9]{3}-[0-9]{4}").unwrap();
		let allowed = phone.allowed_tokens(after(&phone, "123"), &vocabulary, eos);
		let ids: Vec<usize> = (0..allowed.len()).filter(|&id| allowed[id]).collect();
		assert_eq!(ids, [b'-' as usize, 258, 259]);
	}

	#[test]
	fn what_the_automaton_cannot_serve_is_refused_with_why() {
		let error = RegexGrammar::new("(a").unwrap_err();
		assert!(error.contains("unclosed group"), "{error}");
		let error = RegexGrammar::new(r"a(?=b)").unwrap_err();
		assert!(error.contains("look-around"), "{error}");
		let error = RegexGrammar::new(r"(a)\1").unwrap_err();
		assert!(error.contains("backreferences"), "{error}");
		let error = RegexGrammar::new(r"\bword\b").unwrap_err();
		assert!(error.contains("Unicode word boundaries"), "{error}");
		assert!(RegexGrammar::new(r"(?-u:\b)word(?-u:\b)").is_ok());
		for never in [r"[^\s\S]", r"a$b", r"x(?-u:\b)y"] {
			let error = RegexGrammar::new(never).unwrap_err();
			assert!(error.contains("matches no text"), "{never:?}: {error}");
		}
		let error = RegexGrammar::new(&"a".repeat(MAX_PATTERN_BYTES + 1)).unwrap_err();
		assert!(error.contains("at most"), "{error}");
		// An automaton past the size limit: a class of all characters, many times over.
		let error = RegexGrammar::new(r"(\w|\W){20}[0-9]{1000}(\w|a){500}").unwrap_err();
		assert!(error.contains("more than 16 MiB"), "{error}");
	}
}
