//! Context-free grammars as output grammars (vLLM's `guided_grammar`): the whole output is
//! held, token by token, to a grammar in GBNF, the EBNF of llama.cpp that vLLM's default
//! backend (xgrammar) takes too:
//!
//! ```text
//! root   ::= answer ("," answer)*      # the output is held to `root`
//! answer ::= "yes" | "no" | [0-9]{1,3}
//! ```
//!
//! Rules are `name ::= alternatives` (names of letters, digits, `-` and `_`). A rule ends
//! where the next `name ::=` begins, so it may go on over several lines (llama.cpp ends one at
//! a line's end, but inside parentheses or after `|`: what it reads is read the same here).
//! An alternative is a sequence of string literals (`"..."`), character classes (`[a-z_]`,
//! `[^"\\]`), `.` (any character), rule names and groups (`( ... )`), each maybe repeated
//! (`*`, `+`, `?`, `{m}`, `{m,}`, `{,n}`, `{m,n}`, after spaces or not, one after another);
//! `#` begins a comment. Escapes: `\n`, `\r`, `\t`, `\\`, `\"`, `\'`, `\[`, `\]`, `\-`, `\^`,
//! `\/`, `\xHH`, `\uHHHH` and `\UHHHHHHHH`. The grammar is over characters and is followed
//! over bytes (a class is its characters' UTF-8 sequences), so a character split over tokens
//! is followed byte by byte. What cannot be served is refused with where and why when the
//! grammar is read: syntax errors, groups and repetitions nested deeper than
//! [`MAX_NESTING`], rules used but not defined or defined twice, no `root`, a `root` that
//! matches no text, left recursion (a rule that may come back to itself before any byte:
//! `expr ::= expr "+" term`, to be written `expr ::= term ("+" term)*`), a repetition without
//! bound of what may match no text (`("a"?)*`), a start that takes more than the limits
//! below, and grammars larger than [`MAX_GRAMMAR_BYTES`] or [`MAX_ELEMENTS`] once repetitions
//! are written out. Lark grammars (vLLM's other syntax) are refused with that reason.
//! Alternatives that can never end (they call a rule that never does) are dropped, so every
//! output the grammar holds can still be finished (within the depth followed, below); calls
//! of rules that match only the empty text are dropped too.
//!
//! The output is followed as llama.cpp follows it: the state is the set of the parser's
//! stacks (each the rule positions it is in, the innermost a byte range to read next), the
//! empty stack meaning the output may end. A call in the last place of an alternative returns
//! nowhere (a tail call), so a repetition (`x*`, `list ::= item ("," list)?`) keeps its stack
//! as it goes. A stack deeper than [`MAX_DEPTH`] is not followed (as JSON mode's nesting: the
//! output stays within the grammar, without that way on; if no way is left, the request ends
//! with an error); a state of more than [`MAX_STATE_WORDS`] positions (its ways times their
//! depth), or more than [`MAX_WORK`] steps to find a token's mask (stacks looked at,
//! positions copied, sorted and hashed) or [`MAX_REQUEST_WORK`] for all of one choice's, is
//! an error for the request, never a smaller grammar followed quietly. The work counted is
//! what the automaton had not kept: a grammar near the limits may pass when another request
//! has just followed it and fail when it has not. (A grammar nested some 300 rules deep,
//! llama.cpp's JSON at that depth, reaches the work limit before the depth one.)
//!
//! States are kept as they are met, with the state each byte leads to from them, as a lazy
//! automaton (at most [`MAX_STATES`] states and [`MAX_KEPT_WORDS`] positions, then they are
//! all dropped and found again); the tokens allowed from a state are found by walking the
//! vocabulary's byte trie ([`crate::tokenizer::TokenTrie`]) through it, and kept
//! ([`MAX_CACHED_MASKS`] states per grammar, then dropped): a prefix many tokens share is
//! stepped once, and a grammar that comes back to a state (`[0-9]+`, a list's separator) finds
//! its tokens at once.

use std::{
	collections::{HashMap, HashSet},
	fmt,
	sync::{Arc, Mutex},
};

use regex_syntax::{
	hir::{ClassUnicode, ClassUnicodeRange},
	utf8::Utf8Sequences,
};

use crate::tokenizer::{allow_end, TokenBytes, TokenMask};

/// The longest grammar taken, in bytes of text.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;
/// The deepest groups and repetitions may nest in a grammar's text.
pub const MAX_NESTING: usize = 64;
/// The most elements (byte ranges, rule calls, alternatives' ends) a grammar may compile to,
/// its repetitions written out and its classes as UTF-8 sequences.
pub const MAX_ELEMENTS: usize = 256 * 1024;
/// The largest bound of a repetition (`x{m,n}`).
pub const MAX_REPETITION: u32 = 1024;
/// The deepest stack followed: rules within rules that have not ended.
pub const MAX_DEPTH: usize = 1024;
/// The most positions in one state, over all its stacks (8 more each, for its pointer and
/// its allocation): the ways the output so far can be read at once (an enumeration of many
/// names is as many), times how deep they are.
pub const MAX_STATE_WORDS: usize = 1 << 18;
/// The most work (stacks looked at, positions copied, sorted and hashed) to find one mask, or
/// the state after one byte.
pub const MAX_WORK: usize = 1 << 24;
/// The most work to find the masks of one request's choice, over all its tokens.
pub const MAX_REQUEST_WORK: usize = 1 << 26;
/// The most states a grammar keeps, with the states each byte leads to.
pub const MAX_STATES: usize = 4096;
/// The most positions, over all the states a grammar keeps.
pub const MAX_KEPT_WORDS: usize = 1 << 21;
/// The most states whose allowed tokens one grammar keeps.
pub const MAX_CACHED_MASKS: usize = 256;

/// One element of an alternative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Element {
	/// A byte from this range, inclusive.
	Bytes(u8, u8),
	/// A rule, by index.
	Rule(u32),
	/// The end of an alternative.
	End,
}

/// A stack of the parser: positions (indices into the elements), the outermost first; the
/// last is a byte range to read next. Empty: the grammar is whole.
type Stack = Box<[u32]>;

/// A state of the parser: its stacks, sorted, without repeats.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Stacks(Box<[Stack]>);

impl Stacks {
	/// Whether the output may end here.
	fn is_whole(&self) -> bool {
		self.0.first().is_some_and(|s| s.is_empty())
	}

	/// Its positions, over all its stacks, with 8 more a stack for its pointer and its
	/// allocation (so that four bytes a position bound the memory it takes).
	fn words(&self) -> usize {
		self.0.iter().map(|s| s.len() + 8).sum()
	}
}

/// Where the output is in the grammar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbnfState(Arc<Stacks>);

/// A GBNF grammar the whole output must be, compiled.
pub struct EbnfGrammar {
	/// The grammar as given.
	text: String,
	/// Every alternative's elements, one after the other, each alternative ending in
	/// [`Element::End`].
	elements: Vec<Element>,
	/// By rule, where each of its alternatives begins in `elements`.
	alternatives: Vec<Vec<u32>>,
	/// The state before any output.
	start: EbnfState,
	/// The states met, the bytes' transitions from them and the tokens allowed from them.
	automaton: Mutex<Automaton>,
}

impl fmt::Debug for EbnfGrammar {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("EbnfGrammar").field("text", &self.text).finish_non_exhaustive()
	}
}

impl PartialEq for EbnfGrammar {
	/// Grammars are the same if their texts are.
	fn eq(&self, other: &Self) -> bool {
		self.text == other.text
	}
}

/// A transition not found yet.
const UNKNOWN: u32 = u32::MAX;
/// A byte that takes the output off the grammar.
const DEAD: u32 = u32::MAX - 1;

/// The states met so far, each with the state each byte leads to.
#[derive(Default)]
struct Automaton {
	states: Vec<Arc<Stacks>>,
	ids: HashMap<Arc<Stacks>, u32>,
	/// By state, by byte: the next state's id, [`UNKNOWN`] or [`DEAD`].
	next: Vec<[u32; 256]>,
	/// The positions of the states kept, over all of them.
	words: usize,
	/// By state, the tokens that may come next (a bit per token id); one vocabulary per
	/// grammar (the first one it is asked about).
	masks: HashMap<u32, Arc<TokenMask>>,
}

/// A state met during a walk: kept, or (once the automaton is full) not.
enum At {
	Kept(u32),
	Loose(Arc<Stacks>),
}

impl Automaton {
	/// Forgets everything if full, so that a walk can begin.
	fn make_room(&mut self) {
		if self.states.len() >= MAX_STATES || self.words >= MAX_KEPT_WORDS {
			*self = Self::default();
		}
	}

	fn intern(&mut self, stacks: Arc<Stacks>) -> At {
		if let Some(&id) = self.ids.get(&stacks) {
			return At::Kept(id);
		}
		let words = stacks.words();
		if self.states.len() >= MAX_STATES || self.words.saturating_add(words) > MAX_KEPT_WORDS {
			return At::Loose(stacks);
		}
		let id = self.states.len() as u32;
		self.states.push(stacks.clone());
		self.ids.insert(stacks, id);
		self.next.push([UNKNOWN; 256]);
		self.words += words;
		At::Kept(id)
	}

	fn stacks(&self, at: &At) -> Arc<Stacks> {
		match at {
			At::Kept(id) => self.states[*id as usize].clone(),
			At::Loose(stacks) => stacks.clone(),
		}
	}

	/// The state after `byte` from `at`, unless it takes the output off the grammar; an error
	/// if finding it takes more than `work` has left.
	fn step(
		&mut self,
		grammar: &EbnfGrammar,
		at: &At,
		byte: u8,
		work: &mut usize,
	) -> Result<Option<At>, String> {
		match at {
			At::Kept(id) => {
				let next = self.next[*id as usize][byte as usize];
				if next == DEAD {
					return Ok(None);
				}
				if next != UNKNOWN {
					return Ok(Some(At::Kept(next)));
				}
				let after = grammar.step(&self.states[*id as usize], byte, work)?;
				let after = after.map(|stacks| self.intern(Arc::new(stacks)));
				self.next[*id as usize][byte as usize] = match &after {
					None => DEAD,
					Some(At::Kept(next)) => *next,
					Some(At::Loose(_)) => UNKNOWN,
				};
				Ok(after)
			}
			At::Loose(stacks) => {
				Ok(grammar.step(stacks, byte, work)?.map(|stacks| self.intern(Arc::new(stacks))))
			}
		}
	}
}

impl EbnfGrammar {
	/// Reads and compiles a GBNF grammar (see the module's documentation), or says where and
	/// why it cannot be served.
	pub fn new(text: &str) -> Result<Self, String> {
		if text.len() > MAX_GRAMMAR_BYTES {
			return Err(format!(
				"the grammar is {} bytes, more than the {MAX_GRAMMAR_BYTES} taken",
				text.len()
			));
		}
		let rules = Parser::new(text).grammar()?;
		let compiled = Compiler::compile(text, &rules)?;
		let mut grammar = Self {
			text: text.to_owned(),
			elements: compiled.elements,
			alternatives: compiled.alternatives,
			start: EbnfState(Arc::new(Stacks(Box::new([])))),
			automaton: Mutex::default(),
		};
		let mut stacks = Vec::new();
		let mut work = MAX_WORK;
		grammar.close(vec![vec![compiled.root_call]], &mut stacks, &mut work)?;
		let start = Self::sorted(stacks)?.ok_or("the grammar's root cannot be begun")?;
		grammar.start = EbnfState(Arc::new(start));
		Ok(grammar)
	}

	/// About the most memory the grammar may come to hold, but for its masks (a bit a token,
	/// at most [`MAX_CACHED_MASKS`]): what it is compiled to, and the states its automaton
	/// may keep ([`MAX_KEPT_WORDS`] positions of four bytes) with their transitions
	/// ([`MAX_STATES`] tables of 256).
	pub fn memory_usage(&self) -> usize {
		let compiled = self.text.len()
			+ self.elements.len() * std::mem::size_of::<Element>()
			+ self.alternatives.iter().map(|a| a.len() * 4 + 24).sum::<usize>()
			+ self.start.0.words() * 4;
		compiled + MAX_KEPT_WORDS * 4 + MAX_STATES * (256 * 4 + 64)
	}

	/// The state before any output.
	pub fn start(&self) -> EbnfState {
		self.start.clone()
	}

	/// Whether the output so far is a whole sentence of the grammar (so it may end here).
	pub fn can_end(&self, state: &EbnfState) -> bool {
		state.0.is_whole()
	}

	/// The state after `bytes` from `state`, unless they take the output off the grammar (or
	/// following a byte takes more than the limits).
	pub fn accepts(&self, state: &EbnfState, bytes: &[u8]) -> Option<EbnfState> {
		let mut automaton = self.automaton();
		automaton.make_room();
		let mut at = automaton.intern(state.0.clone());
		for &b in bytes {
			let mut work = MAX_WORK;
			at = automaton.step(self, &at, b, &mut work).ok()??;
		}
		Some(EbnfState(automaton.stacks(&at)))
	}

	/// Whether `text` is a whole sentence of the grammar.
	pub fn matches(&self, text: &str) -> bool {
		self.accepts(&self.start, text.as_bytes()).is_some_and(|s| self.can_end(&s))
	}

	/// For each token (by id, its bytes in `token_bytes`), whether it may come next from
	/// `state`; the end of the output (`eos`) when the output is whole. Tokens without bytes
	/// (special tokens) never may. The work it takes (none for a mask kept) is taken from
	/// `budget`, the output's (each choice's; [`MAX_REQUEST_WORK`] to begin with); an error if
	/// it takes more than that, or than [`MAX_WORK`], or a state more than it may hold.
	pub fn allowed_tokens(
		&self,
		state: &EbnfState,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
		budget: &mut usize,
	) -> Result<Vec<bool>, String> {
		let mut work = (*budget).min(MAX_WORK);
		let before = work;
		let mask = self.mask(state, token_bytes, &mut work);
		*budget -= before - work;
		let mask = mask.map_err(|e| match e == WORK_SPENT {
			true if before < MAX_WORK => format!(
				"following the grammar took more than {MAX_REQUEST_WORK} steps for this output"
			),
			true => format!("following the grammar takes more than {MAX_WORK} steps for a token"),
			false => e,
		})?;
		debug_assert_eq!(mask.len(), token_bytes.len(), "one vocabulary per grammar");
		Ok(mask.allowed(eos, self.can_end(state)))
	}

	/// [`EbnfGrammar::allowed_tokens`] computed token by token, stepping the parser's stacks
	/// themselves and keeping nothing: the reference the kept masks are tested and measured
	/// against (a token whose stepping passes the limits counts as refused).
	pub fn allowed_tokens_each(
		&self,
		state: &EbnfState,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
	) -> Vec<bool> {
		let mut allowed = token_bytes.each_fitting(|bytes| {
			bytes
				.iter()
				.try_fold((*state.0).clone(), |stacks, &b| {
					let mut work = MAX_WORK;
					self.step(&stacks, b, &mut work).ok().flatten()
				})
				.is_some()
		});
		allow_end(&mut allowed, eos, self.can_end(state));
		allowed
	}

	fn automaton(&self) -> std::sync::MutexGuard<'_, Automaton> {
		self.automaton.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}

	/// The tokens that may come next from `state`, a bit each: kept, or found by walking the
	/// vocabulary's byte trie through the automaton.
	fn mask(
		&self,
		state: &EbnfState,
		token_bytes: &TokenBytes,
		work: &mut usize,
	) -> Result<Arc<TokenMask>, String> {
		let mut automaton = self.automaton();
		automaton.make_room();
		let at = automaton.intern(state.0.clone());
		let kept = match &at {
			At::Kept(id) => Some(*id),
			At::Loose(_) => None,
		};
		if let Some(mask) = kept.and_then(|id| automaton.masks.get(&id)) {
			return Ok(mask.clone());
		}
		let mut mask = TokenMask::new(token_bytes.len());
		let trie = token_bytes.trie();
		let mut stack = vec![(0u32, at)];
		while let Some((node, at)) = stack.pop() {
			for &(b, child) in trie.children(node) {
				let Some(next) = automaton.step(self, &at, b, work)? else { continue };
				for &id in trie.tokens(child) {
					mask.insert(id as usize);
				}
				if !trie.children(child).is_empty() {
					stack.push((child, next));
				}
			}
		}
		let mask = Arc::new(mask);
		if let Some(id) = kept {
			if automaton.masks.len() >= MAX_CACHED_MASKS {
				automaton.masks.clear();
			}
			automaton.masks.insert(id, mask.clone());
		}
		Ok(mask)
	}

	/// The state after `byte` from `stacks`, unless no stack may read it; an error if finding
	/// it takes more than `work` has left, or more than a state may hold.
	fn step(&self, stacks: &Stacks, byte: u8, work: &mut usize) -> Result<Option<Stacks>, String> {
		spend(stacks.0.len(), work)?;
		let mut read = Vec::new();
		for stack in stacks.0.iter() {
			let Some(&top) = stack.last() else { continue };
			let Some(Element::Bytes(lo, hi)) = self.elements.get(top as usize) else { continue };
			if (*lo..=*hi).contains(&byte) {
				spend(stack.len() + 1, work)?;
				let mut next = stack.to_vec();
				if let Some(last) = next.last_mut() {
					*last = top + 1;
				}
				read.push(next);
			}
		}
		let mut after = Vec::new();
		self.close(read, &mut after, work)?;
		// Sorting the stacks, and hashing the state to keep it, read its positions again.
		spend(2 * after.iter().map(|s| s.len() + 1).sum::<usize>(), work)?;
		Self::sorted(after)
	}

	/// The stacks, sorted and without repeats (`None` if there are none); an error if they are
	/// more than a state may hold.
	fn sorted(mut stacks: Vec<Stack>) -> Result<Option<Stacks>, String> {
		stacks.sort_unstable();
		stacks.dedup();
		let stacks = Stacks(stacks.into_boxed_slice());
		if stacks.words() > MAX_STATE_WORDS {
			return Err(format!(
				"the grammar's state holds more than {MAX_STATE_WORDS} positions (many ways, \
				 deep)"
			));
		}
		Ok((!stacks.0.is_empty()).then_some(stacks))
	}

	/// Adds to `out` the stacks that `work_list` stand for, each with a byte range last (or
	/// empty): ended alternatives return to their callers, and rules are entered by each
	/// alternative. A stack met twice is followed once (so nullable alternatives side by side
	/// cost their number, not its power); a stack that would be deeper than [`MAX_DEPTH`] is
	/// not followed. An error once the work (stacks looked at, positions copied) passes what
	/// `work` has left.
	fn close(
		&self,
		mut work_list: Vec<Vec<u32>>,
		out: &mut Vec<Stack>,
		work: &mut usize,
	) -> Result<(), String> {
		let mut seen: HashSet<Vec<u32>> = HashSet::new();
		'stacks: while let Some(mut stack) = work_list.pop() {
			loop {
				spend(1, work)?;
				let Some(&top) = stack.last() else {
					out.push(stack.into_boxed_slice());
					continue 'stacks;
				};
				match self.elements.get(top as usize) {
					Some(Element::Bytes(..)) => {
						out.push(stack.into_boxed_slice());
						continue 'stacks;
					}
					Some(Element::Rule(rule)) => {
						stack.pop();
						// A call in an alternative's last place returns nowhere.
						if self.elements.get(top as usize + 1) != Some(&Element::End) {
							stack.push(top + 1);
						}
						if stack.len() >= MAX_DEPTH {
							continue 'stacks;
						}
						let Some(alternatives) = self.alternatives.get(*rule as usize) else {
							continue 'stacks;
						};
						for &begin in alternatives {
							spend(2 * stack.len() + 2, work)?;
							let mut entered = stack.clone();
							entered.push(begin);
							if seen.insert(entered.clone()) {
								work_list.push(entered);
							}
						}
						continue 'stacks;
					}
					Some(Element::End) | None => {
						stack.pop();
					}
				}
			}
		}
		Ok(())
	}
}

/// Takes `n` from the work left, or says the grammar takes too long to follow here.
fn spend(n: usize, work: &mut usize) -> Result<(), String> {
	*work = work.checked_sub(n).ok_or_else(|| WORK_SPENT.to_string())?;
	Ok(())
}

/// The error of [`spend`] (told apart by [`EbnfGrammar::allowed_tokens`]: a token's limit,
/// or the output's).
const WORK_SPENT: &str = "following the grammar takes more steps than it may";

/// What a grammar's text says, before it is compiled.
#[derive(Clone, Debug, PartialEq)]
enum Expr {
	/// These bytes (a literal's UTF-8).
	Literal(Vec<u8>),
	/// A character of these ranges (already negated, if the class was).
	Class(Vec<(char, char)>),
	/// A rule, by name, with where it is named (for an error).
	Call(String, Place),
	/// One of these alternatives.
	Group(Vec<Vec<Expr>>),
	/// `min` to `max` (or any number of) times.
	Repeat(Box<Expr>, u32, Option<u32>),
}

/// A place in the grammar's text: a byte offset, shown as a line and column from 1
/// ([`at`]).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Place(usize);

/// "line L, column C" of `place` in `text`.
fn at(text: &str, place: Place) -> String {
	let before = text.get(..place.0).unwrap_or(text);
	let line = before.matches('\n').count() + 1;
	let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
	format!("line {line}, column {column}")
}

/// A rule as written.
struct RuleText {
	name: String,
	place: Place,
	alternatives: Vec<Vec<Expr>>,
}

/// Reads a grammar's text.
struct Parser<'a> {
	text: &'a str,
	at: usize,
	/// How deep the groups and repetitions being read nest.
	depth: usize,
}

fn is_name_char(c: char) -> bool {
	c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl<'a> Parser<'a> {
	fn new(text: &'a str) -> Self {
		Self { text, at: 0, depth: 0 }
	}

	fn place(&self) -> Place {
		Place(self.at)
	}

	/// `what`, at `place`.
	fn error_at(&self, what: impl fmt::Display, place: Place) -> String {
		format!("{what} at {}", at(self.text, place))
	}

	/// `what`, here.
	fn error(&self, what: impl fmt::Display) -> String {
		self.error_at(what, self.place())
	}

	fn rest(&self) -> &'a str {
		&self.text[self.at..]
	}

	fn peek(&self) -> Option<char> {
		self.rest().chars().next()
	}

	fn bump(&mut self) -> Option<char> {
		let c = self.peek()?;
		self.at += c.len_utf8();
		Some(c)
	}

	/// Skips spaces, line ends and comments.
	fn skip_space(&mut self) {
		while let Some(c) = self.peek() {
			if c == '#' {
				let line = self.rest().find('\n').unwrap_or(self.rest().len());
				self.at += line;
			} else if c.is_whitespace() {
				self.bump();
			} else {
				break;
			}
		}
	}

	/// A rule name here, if one is.
	fn name(&mut self) -> Option<String> {
		let len = self.rest().find(|c: char| !is_name_char(c)).unwrap_or(self.rest().len());
		(len > 0).then(|| {
			let name = self.rest()[..len].to_owned();
			self.at += len;
			name
		})
	}

	/// Whether a rule's definition (`name ::=`) begins here.
	fn at_definition(&self) -> bool {
		let mut ahead = Parser { text: self.text, at: self.at, depth: 0 };
		ahead.name().is_some() && {
			ahead.skip_space();
			ahead.rest().starts_with("::=")
		}
	}

	fn grammar(mut self) -> Result<Vec<RuleText>, String> {
		let mut rules = Vec::new();
		self.skip_space();
		if self.text.lines().any(|l| {
			let l = l.trim_start();
			l.starts_with("start:") || l.starts_with("?start:") || l.starts_with("%import")
		}) && !self.text.contains("::=")
		{
			return Err("a Lark grammar: only GBNF grammars (`root ::= ...`) are served".into());
		}
		while self.peek().is_some() {
			let place = self.place();
			let name = self
				.name()
				.ok_or_else(|| self.error("a rule name (letters, digits, - and _) expected"))?;
			self.skip_space();
			if !self.rest().starts_with("::=") {
				return Err(self.error(format!("`::=` expected after the rule name {name:?}")));
			}
			self.at += 3;
			let alternatives = self.alternatives(false)?;
			rules.push(RuleText { name, place, alternatives });
			self.skip_space();
		}
		if rules.is_empty() {
			return Err("the grammar has no rules".into());
		}
		Ok(rules)
	}

	/// Alternatives separated by `|`, up to a `)` if `nested`, or else the next rule's
	/// definition or the end.
	fn alternatives(&mut self, nested: bool) -> Result<Vec<Vec<Expr>>, String> {
		let mut alternatives = vec![self.sequence(nested)?];
		while self.peek() == Some('|') {
			self.bump();
			alternatives.push(self.sequence(nested)?);
		}
		Ok(alternatives)
	}

	fn sequence(&mut self, nested: bool) -> Result<Vec<Expr>, String> {
		let mut sequence = Vec::new();
		loop {
			self.skip_space();
			match self.peek() {
				None | Some('|') => break,
				Some(')') if nested => break,
				_ if !nested && self.at_definition() => break,
				_ => {}
			}
			let item = self.primary()?;
			let item = self.repetitions(item)?;
			sequence.push(item);
		}
		Ok(sequence)
	}

	/// One more level of nesting, unless that is too deep.
	fn nest(&mut self, place: Place) -> Result<(), String> {
		self.depth += 1;
		if self.depth > MAX_NESTING {
			return Err(self.error_at(
				format!("groups and repetitions nest deeper than {MAX_NESTING}"),
				place,
			));
		}
		Ok(())
	}

	fn primary(&mut self) -> Result<Expr, String> {
		let place = self.place();
		match self.peek() {
			Some('"') => {
				self.bump();
				let mut text = String::new();
				loop {
					match self.bump() {
						None => return Err(self.error_at("a literal not closed", place)),
						Some('"') => break,
						Some('\\') => text.push(self.escape()?),
						Some(c) => text.push(c),
					}
				}
				Ok(Expr::Literal(text.into_bytes()))
			}
			Some('[') => {
				self.bump();
				let negated = self.peek() == Some('^');
				if negated {
					self.bump();
				}
				let not_closed =
					|parser: &Self| parser.error_at("a character class not closed", place);
				let mut ranges = Vec::new();
				loop {
					let first = match self.bump() {
						None => return Err(not_closed(self)),
						Some(']') => break,
						Some('\\') => self.escape()?,
						Some(c) => c,
					};
					let last = if self.peek() == Some('-') && !self.rest().starts_with("-]") {
						self.bump();
						match self.bump() {
							None => return Err(not_closed(self)),
							Some('\\') => self.escape()?,
							Some(c) => c,
						}
					} else {
						first
					};
					if last < first {
						return Err(self.error_at(
							format!("the range {first:?}-{last:?} is backwards in the class"),
							place,
						));
					}
					ranges.push((first, last));
				}
				let mut class = ClassUnicode::new(
					ranges.iter().map(|&(lo, hi)| ClassUnicodeRange::new(lo, hi)),
				);
				if negated {
					class.negate();
				}
				if class.ranges().is_empty() {
					return Err(self.error_at("a class that matches no character", place));
				}
				Ok(Expr::Class(class.ranges().iter().map(|r| (r.start(), r.end())).collect()))
			}
			Some('.') => {
				self.bump();
				Ok(Expr::Class(vec![('\0', char::MAX)]))
			}
			Some('(') => {
				self.bump();
				self.nest(place)?;
				let alternatives = self.alternatives(true)?;
				if self.bump() != Some(')') {
					return Err(self.error_at("a group not closed", place));
				}
				self.depth -= 1;
				Ok(Expr::Group(alternatives))
			}
			Some(c) if is_name_char(c) => {
				let name = self.name().unwrap_or_default();
				Ok(Expr::Call(name, place))
			}
			Some(c) => Err(self.error(format!("unexpected {c:?}"))),
			None => Err(self.error("unexpected end")),
		}
	}

	/// `item` with the `*`, `+`, `?` or `{...}` after it, if any (spaces before each, and one
	/// after another, as llama.cpp reads them).
	fn repetitions(&mut self, mut item: Expr) -> Result<Expr, String> {
		let depth = self.depth;
		loop {
			let before = self.at;
			self.skip_space();
			let place = self.place();
			let (min, max) = match self.peek() {
				Some('*') => (0, None),
				Some('+') => (1, None),
				Some('?') => (0, Some(1)),
				Some('{') => self.bounds(place)?,
				_ => {
					self.at = before;
					self.depth = depth;
					return Ok(item);
				}
			};
			self.bump();
			self.nest(place)?;
			item = Expr::Repeat(Box::new(item), min, max);
		}
	}

	/// A repetition's bounds in braces (`{m}`, `{m,}`, `{,n}`, `{m,n}`), read up to its `}`.
	fn bounds(&mut self, place: Place) -> Result<(u32, Option<u32>), String> {
		self.bump();
		let close = self
			.rest()
			.find('}')
			.ok_or_else(|| self.error_at("a repetition's braces not closed", place))?;
		let inside = &self.rest()[..close];
		self.at += close;
		let bound = |digits: &str| {
			let digits = digits.trim();
			Some(digits)
				.filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
				.and_then(|d| d.parse::<u32>().ok())
				.filter(|&n| n <= MAX_REPETITION)
				.ok_or_else(|| {
					self.error_at(
						format!("a repetition's bounds are numbers up to {MAX_REPETITION}"),
						place,
					)
				})
		};
		let bounds = match inside.split_once(',') {
			None => {
				let n = bound(inside)?;
				(n, Some(n))
			}
			Some((min, max)) if max.trim().is_empty() => (bound(min)?, None),
			Some((min, max)) if min.trim().is_empty() => (0, Some(bound(max)?)),
			Some((min, max)) => (bound(min)?, Some(bound(max)?)),
		};
		if bounds.1.is_some_and(|max| max < bounds.0) {
			return Err(self.error_at("a repetition whose bounds are backwards", place));
		}
		Ok(bounds)
	}

	/// The character an escape (after its `\`) stands for.
	fn escape(&mut self) -> Result<char, String> {
		let place = Place(self.at.saturating_sub(1));
		let hex = |parser: &mut Self, digits: usize| {
			let text = parser.rest().get(..digits).unwrap_or_default();
			let c = (text.len() == digits && text.bytes().all(|b| b.is_ascii_hexdigit()))
				.then(|| u32::from_str_radix(text, 16).ok())
				.flatten()
				.and_then(char::from_u32)
				.ok_or_else(|| {
					parser.error_at(
						format!("a bad escape ({digits} hex digits of a character expected)"),
						place,
					)
				})?;
			parser.at += digits;
			Ok(c)
		};
		match self.bump() {
			Some('n') => Ok('\n'),
			Some('r') => Ok('\r'),
			Some('t') => Ok('\t'),
			Some(c @ ('\\' | '"' | '\'' | '[' | ']' | '-' | '^' | '/')) => Ok(c),
			Some('x') => hex(self, 2),
			Some('u') => hex(self, 4),
			Some('U') => hex(self, 8),
			Some(c) => Err(self.error_at(format!("an unknown escape \\{c}"), place)),
			None => Err(self.error_at("an escape not finished", place)),
		}
	}
}

/// A grammar compiled to elements.
struct Compiled {
	elements: Vec<Element>,
	alternatives: Vec<Vec<u32>>,
	/// A one-element alternative calling the root, with its end: where parsing begins.
	root_call: u32,
}

/// Compiles rules as written into elements.
struct Compiler<'a> {
	text: &'a str,
	rules: &'a [RuleText],
	ids: HashMap<&'a str, u32>,
	/// By rule (those written, then those made for groups, classes and repetitions), its
	/// alternatives, each a list of elements without its end.
	bodies: Vec<Vec<Vec<Element>>>,
	/// By rule, the rule written that it was made for (itself if written).
	owner: Vec<u32>,
	/// The elements so far, to keep them within [`MAX_ELEMENTS`].
	count: usize,
	/// What is repeated any number of times, with the rule written that it is in: none may
	/// match the empty text.
	repeated: Vec<(Element, u32)>,
}

impl<'a> Compiler<'a> {
	fn compile(text: &'a str, rules: &'a [RuleText]) -> Result<Compiled, String> {
		let mut ids = HashMap::new();
		for (i, rule) in rules.iter().enumerate() {
			if ids.insert(rule.name.as_str(), i as u32).is_some() {
				return Err(format!(
					"the rule {:?} is defined twice (at {})",
					rule.name,
					at(text, rule.place)
				));
			}
		}
		let root = *ids.get("root").ok_or("no rule `root` (the output is held to it)")?;
		let mut compiler = Compiler {
			text,
			rules,
			ids,
			bodies: vec![Vec::new(); rules.len()],
			owner: (0..rules.len() as u32).collect(),
			count: 0,
			repeated: Vec::new(),
		};
		for (i, rule) in rules.iter().enumerate() {
			let body = rule
				.alternatives
				.iter()
				.map(|alternative| compiler.sequence(alternative, i as u32))
				.collect::<Result<Vec<_>, _>>()?;
			compiler.bodies[i] = body;
		}
		compiler.prune(root)?;
		compiler.refuse_left_recursion()?;
		// Lay the alternatives out, each followed by its end; then the call of the root.
		let mut elements = Vec::with_capacity(compiler.count + 2);
		let mut alternatives = Vec::with_capacity(compiler.bodies.len());
		for body in &compiler.bodies {
			let mut begins = Vec::with_capacity(body.len());
			for alternative in body {
				begins.push(elements.len() as u32);
				elements.extend_from_slice(alternative);
				elements.push(Element::End);
			}
			alternatives.push(begins);
		}
		let root_call = elements.len() as u32;
		elements.extend([Element::Rule(root), Element::End]);
		Ok(Compiled { elements, alternatives, root_call })
	}

	fn count(&mut self, n: usize) -> Result<(), String> {
		self.count = self.count.saturating_add(n);
		if self.count > MAX_ELEMENTS {
			return Err(format!(
				"the grammar is larger than {MAX_ELEMENTS} elements once its repetitions are \
				 written out and its classes as UTF-8 sequences"
			));
		}
		Ok(())
	}

	/// A new rule with these alternatives, made for rule `owner`.
	fn made_rule(&mut self, body: Vec<Vec<Element>>, owner: u32) -> Result<u32, String> {
		self.count(body.len())?;
		self.bodies.push(body);
		self.owner.push(owner);
		Ok((self.bodies.len() - 1) as u32)
	}

	fn sequence(&mut self, items: &[Expr], owner: u32) -> Result<Vec<Element>, String> {
		let mut out = Vec::new();
		for item in items {
			self.item(item, owner, &mut out)?;
		}
		self.count(out.len() + 1)?;
		Ok(out)
	}

	/// Adds `item`'s elements to `out`.
	fn item(&mut self, item: &Expr, owner: u32, out: &mut Vec<Element>) -> Result<(), String> {
		match item {
			Expr::Literal(bytes) => out.extend(bytes.iter().map(|&b| Element::Bytes(b, b))),
			Expr::Class(ranges) => {
				let sequences: Vec<Vec<Element>> = ranges
					.iter()
					.flat_map(|&(lo, hi)| Utf8Sequences::new(lo, hi))
					.map(|seq| {
						seq.as_slice().iter().map(|r| Element::Bytes(r.start, r.end)).collect()
					})
					.collect();
				match sequences.as_slice() {
					[one] if one.len() == 1 => out.push(one[0]),
					_ => {
						self.count(sequences.iter().map(|s| s.len() + 1).sum())?;
						out.push(Element::Rule(self.made_rule(sequences, owner)?));
					}
				}
			}
			Expr::Call(name, place) => {
				let id = self.ids.get(name.as_str()).ok_or_else(|| {
					format!("the rule {name:?} (at {}) is not defined", at(self.text, *place))
				})?;
				out.push(Element::Rule(*id));
			}
			Expr::Group(alternatives) => match alternatives.as_slice() {
				[one] => {
					for item in one {
						self.item(item, owner, out)?;
					}
				}
				_ => {
					let body = alternatives
						.iter()
						.map(|alternative| self.sequence(alternative, owner))
						.collect::<Result<Vec<_>, _>>()?;
					out.push(Element::Rule(self.made_rule(body, owner)?));
				}
			},
			Expr::Repeat(inner, min, max) => {
				// The item once, as one element: a rule made for it unless it is one.
				let mut once = Vec::new();
				self.item(inner, owner, &mut once)?;
				let once = match once.as_slice() {
					[one] => *one,
					_ => {
						self.count(once.len() + 1)?;
						Element::Rule(self.made_rule(vec![once], owner)?)
					}
				};
				if max.is_none() {
					self.repeated.push((once, owner));
				}
				self.count(*min as usize)?;
				out.extend(std::iter::repeat_n(once, *min as usize));
				match max {
					// any ::= once any | (nothing)
					None => {
						let any = self.made_rule(Vec::new(), owner)?;
						self.count(3)?;
						self.bodies[any as usize] =
							vec![vec![once, Element::Rule(any)], Vec::new()];
						out.push(Element::Rule(any));
					}
					// up_to_k ::= once up_to_(k-1) | (nothing), up_to_1 ::= once | (nothing)
					Some(max) if max > min => {
						let mut up_to = None;
						for _ in *min..*max {
							let mut first = vec![once];
							first.extend(up_to.map(Element::Rule));
							self.count(first.len() + 2)?;
							up_to = Some(self.made_rule(vec![first, Vec::new()], owner)?);
						}
						out.extend(up_to.map(Element::Rule));
					}
					Some(_) => {}
				}
			}
		}
		Ok(())
	}

	/// The rule written that rule `rule` was made for, by name.
	fn name(&self, rule: u32) -> &str {
		let owner = self.owner.get(rule as usize).copied().unwrap_or(rule);
		self.rules.get(owner as usize).map_or("?", |r| r.name.as_str())
	}

	/// Refuses a root that never ends; drops the alternatives that can never end (they call a
	/// rule that never does), so that every output held to the grammar can still be finished,
	/// and the calls of rules that match only the empty text.
	fn prune(&mut self, root: u32) -> Result<(), String> {
		let ends = every_element_of_an_alternative(&self.bodies, true);
		if !ends[root as usize] {
			return Err("the grammar matches no text: `root` never ends".into());
		}
		let ending = |e: &Element| match e {
			Element::Rule(r) => ends[*r as usize],
			_ => true,
		};
		for (rule, body) in self.bodies.iter_mut().enumerate() {
			match ends[rule] {
				true => body.retain(|alternative| alternative.iter().all(ending)),
				false => body.clear(),
			}
		}
		let reads = reads_a_byte(&self.bodies);
		for body in &mut self.bodies {
			for alternative in body {
				alternative.retain(|e| !matches!(e, Element::Rule(r) if !reads[*r as usize]));
			}
		}
		Ok(())
	}

	/// Refuses a repetition without bound of what may match no text (`("a"?)*`: it could be
	/// read in any number of ways), and left recursion: a rule that may call itself again
	/// before any byte.
	fn refuse_left_recursion(&self) -> Result<(), String> {
		let n = self.bodies.len();
		let empty = every_element_of_an_alternative(&self.bodies, false);
		for (once, owner) in &self.repeated {
			if matches!(once, Element::Rule(r) if empty[*r as usize]) {
				return Err(format!(
					"the rule {:?} repeats without bound what may match no text (as \
					 (\"a\"?)*): repeat what matches at least a character",
					self.name(*owner)
				));
			}
		}
		// The rules each rule may call before any byte.
		let first: Vec<Vec<u32>> = self
			.bodies
			.iter()
			.map(|body| {
				let mut calls = Vec::new();
				for alt in body {
					for e in alt {
						match e {
							Element::Rule(r) => {
								calls.push(*r);
								if !empty[*r as usize] {
									break;
								}
							}
							_ => break,
						}
					}
				}
				calls
			})
			.collect();
		// A cycle among those calls is left recursion: depth-first, iteratively.
		let (unseen, open, done) = (0u8, 1u8, 2u8);
		let mut mark = vec![unseen; n];
		for begin in 0..n {
			if mark[begin] != unseen {
				continue;
			}
			let mut path: Vec<(usize, usize)> = vec![(begin, 0)];
			mark[begin] = open;
			while let Some((rule, next)) = path.last_mut() {
				let rule = *rule;
				match first[rule].get(*next) {
					Some(&callee) => {
						*next += 1;
						let callee = callee as usize;
						if mark[callee] == open {
							return Err(format!(
								"the rule {:?} is left-recursive (it may come back to {:?} \
								 before any text): write `a ::= a \"+\" b | b` as \
								 `a ::= b (\"+\" b)*`",
								self.name(rule as u32),
								self.name(callee as u32),
							));
						}
						if mark[callee] == unseen {
							mark[callee] = open;
							path.push((callee, 0));
						}
					}
					None => {
						mark[rule] = done;
						path.pop();
					}
				}
			}
		}
		Ok(())
	}
}

/// By rule, whether one of its alternatives has every element a byte range (when `bytes_do`)
/// or a rule so marked: the least such marking, found with a count per alternative of the
/// elements not known to do yet (each rule marked lowers the counts of the alternatives that
/// call it, so the work is the grammar's size).
fn every_element_of_an_alternative(bodies: &[Vec<Vec<Element>>], bytes_do: bool) -> Vec<bool> {
	let mut marked = vec![false; bodies.len()];
	// Per alternative, its rule and how many of its elements are not known to do.
	let mut alternatives: Vec<(usize, usize)> = Vec::new();
	// Per rule, the alternatives that call it (once per call).
	let mut callers: Vec<Vec<usize>> = vec![Vec::new(); bodies.len()];
	let mut ready = Vec::new();
	for (rule, body) in bodies.iter().enumerate() {
		for alternative in body {
			let index = alternatives.len();
			let mut unknown = 0;
			for e in alternative {
				match e {
					Element::Rule(r) => {
						unknown += 1;
						if let Some(callers) = callers.get_mut(*r as usize) {
							callers.push(index);
						}
					}
					// A byte range never matches the empty text.
					Element::Bytes(..) if !bytes_do => unknown += 1,
					_ => {}
				}
			}
			alternatives.push((rule, unknown));
			if unknown == 0 {
				ready.push(rule);
			}
		}
	}
	while let Some(rule) = ready.pop() {
		if std::mem::replace(&mut marked[rule], true) {
			continue;
		}
		for &index in &callers[rule] {
			let (caller, unknown) = &mut alternatives[index];
			*unknown -= 1;
			if *unknown == 0 {
				ready.push(*caller);
			}
		}
	}
	marked
}

/// By rule, whether it may read a byte: one of its alternatives has a byte range, or calls a
/// rule that may.
fn reads_a_byte(bodies: &[Vec<Vec<Element>>]) -> Vec<bool> {
	let mut marked = vec![false; bodies.len()];
	let mut callers: Vec<Vec<usize>> = vec![Vec::new(); bodies.len()];
	let mut ready = Vec::new();
	for (rule, body) in bodies.iter().enumerate() {
		for e in body.iter().flatten() {
			match e {
				Element::Bytes(..) => ready.push(rule),
				Element::Rule(r) => {
					if let Some(callers) = callers.get_mut(*r as usize) {
						callers.push(rule);
					}
				}
				Element::End => {}
			}
		}
	}
	while let Some(rule) = ready.pop() {
		if !std::mem::replace(&mut marked[rule], true) {
			ready.extend(&callers[rule]);
		}
	}
	marked
}

#[cfg(test)]
mod tests {
	use super::*;

	/// A request budget that never runs out.
	fn no_limit() -> usize {
		usize::MAX
	}

	fn grammar(text: &str) -> EbnfGrammar {
		EbnfGrammar::new(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
	}

	fn refused(text: &str) -> String {
		EbnfGrammar::new(text).map(|_| ()).expect_err(text)
	}

	/// Near misses of `samples`: each with one character dropped, doubled or changed to each
	/// of `alphabet`, and each cut at every character.
	fn near_misses(samples: &[&str], alphabet: &[char]) -> Vec<String> {
		let mut out = Vec::new();
		for sample in samples {
			let chars: Vec<char> = sample.chars().collect();
			out.push(sample.to_string());
			for i in 0..=chars.len() {
				out.push(chars[..i].iter().collect());
				if i < chars.len() {
					let mut dropped = chars.clone();
					dropped.remove(i);
					out.push(dropped.iter().collect());
					let mut doubled = chars.clone();
					doubled.insert(i, chars[i]);
					out.push(doubled.iter().collect());
				}
				for &c in alphabet {
					let mut inserted = chars.clone();
					inserted.insert(i, c);
					out.push(inserted.iter().collect());
					if i < chars.len() {
						let mut changed = chars.clone();
						changed[i] = c;
						out.push(changed.iter().collect());
					}
				}
			}
		}
		out.sort();
		out.dedup();
		out
	}

	/// Grammars without recursion, each with an expression of the same language written by
	/// hand, compared by the regex crate's full match over near misses of a few sentences.
	#[test]
	fn regular_grammars_match_what_the_regex_crate_matches() {
		let cases: &[(&str, &str, &[&str])] = &[
			(
				r#"root ::= "SELECT " column " from " table " where " cond
				   column ::= "col_1 " | "col_2 "
				   table ::= "table_1 " | "table_2 "
				   cond ::= column "= " number
				   number ::= "1 " | "2 ""#,
				r"SELECT (col_1 |col_2 ) from (table_1 |table_2 ) where (col_1 |col_2 )= (1 |2 )",
				&["SELECT col_1  from table_2  where col_2 = 1 "],
			),
			(
				r#"root ::= [a-z]+ ("-" [a-z0-9]+)* "@" host
				   host ::= ([a-z]{2,5} "."){1,3} ("com" | "org")   # a comment"#,
				r"[a-z]+(-[a-z0-9]+)*@([a-z]{2,5}\.){1,3}(com|org)",
				&["ada-l0vel4ce@mail.ex.org", "b@cd.com"],
			),
			(
				r#"root ::= "\"" ( [^"\\\n] | "\\" ["\\nt] )* "\"""#,
				r#""([^"\\\n]|\\["\\nt])*""#,
				&[r#""a \"b\" é€😀 \\n""#, r#""""#],
			),
			(
				"root ::= item{2} (\",\" item){0,2}\nitem ::= [0-9] | \"x\"?",
				r"([0-9]|x?){2}(,([0-9]|x?)){0,2}",
				&["1x,2,", "x3", ",,"],
			),
			(
				// A class of ranges across UTF-8 lengths, negated, and any character.
				r#"root ::= [^a-zé] . [\u00e0-\u00ff\U0001F600-\U0001F64F]"#,
				r"[^a-zé](?s:.)[\x{e0}-\x{ff}\x{1F600}-\x{1F64F}]",
				&["Aéà", "€\n😀", "😀😀ÿ"],
			),
		];
		let alphabet = ['a', '1', ' ', '-', ',', '"', '\\', 'é', '😀', '\n', 'x', '.'];
		for (text, expression, samples) in cases {
			let g = grammar(text);
			let re = regex::Regex::new(&format!("^(?:{expression})$")).unwrap();
			for sample in samples.iter() {
				assert!(re.is_match(sample), "the reference expression misses {sample:?}");
			}
			let mut matched = 0;
			for text in near_misses(samples, &alphabet) {
				assert_eq!(g.matches(&text), re.is_match(&text), "{expression} on {text:?}");
				matched += usize::from(re.is_match(&text));
			}
			assert!(matched > samples.len(), "{expression}: too few matches to compare");
		}
	}

	/// Balanced brackets of two kinds: the recognizer is a stack, written by hand.
	fn balanced(text: &str) -> bool {
		let mut open = Vec::new();
		for c in text.chars() {
			match c {
				'(' | '[' => open.push(c),
				')' if open.pop() == Some('(') => {}
				']' if open.pop() == Some('[') => {}
				_ => return false,
			}
		}
		open.is_empty()
	}

	/// Arithmetic over one-digit numbers with + and *, parenthesised: a recursive-descent
	/// recognizer written by hand.
	fn arithmetic(text: &str) -> bool {
		/// `item`s separated by `separator`.
		fn separated(s: &[u8], i: &mut usize, separator: u8, item: Item) -> bool {
			item(s, i) && {
				while s.get(*i) == Some(&separator) {
					*i += 1;
					if !item(s, i) {
						return false;
					}
				}
				true
			}
		}
		type Item = fn(&[u8], &mut usize) -> bool;
		fn expr(s: &[u8], i: &mut usize) -> bool {
			separated(s, i, b'+', term)
		}
		fn term(s: &[u8], i: &mut usize) -> bool {
			separated(s, i, b'*', factor)
		}
		fn factor(s: &[u8], i: &mut usize) -> bool {
			match s.get(*i) {
				Some(b'0'..=b'9') => {
					*i += 1;
					true
				}
				Some(b'(') => {
					*i += 1;
					let inner = expr(s, i);
					let closed = s.get(*i) == Some(&b')');
					*i += 1;
					inner && closed
				}
				_ => false,
			}
		}
		let mut i = 0;
		expr(text.as_bytes(), &mut i) && i == text.len()
	}

	/// Every text over `alphabet` of at most `len` characters.
	fn every_text(alphabet: &[char], len: usize) -> Vec<String> {
		let mut texts = vec![String::new()];
		let mut last = vec![String::new()];
		for _ in 0..len {
			last =
				last.iter().flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}"))).collect();
			texts.extend(last.iter().cloned());
		}
		texts
	}

	/// Recursive grammars against recognizers written by hand, over every short text of
	/// their alphabets and near misses of longer sentences.
	#[test]
	fn recursive_grammars_match_hand_written_recognizers() {
		let brackets = grammar("root ::= ( \"(\" root \")\" | \"[\" root \"]\" )*");
		let alphabet = ['(', ')', '[', ']'];
		let samples = ["([()[]])[]", "((((((((([])))))))))", "[]()[(())]"];
		let mut texts = every_text(&alphabet, 8);
		texts.extend(near_misses(&samples, &alphabet));
		let matched = texts.iter().filter(|t| balanced(t)).count();
		assert!(matched > 250, "{matched}");
		for text in &texts {
			assert_eq!(brackets.matches(text), balanced(text), "{text:?}");
		}

		let sums = grammar(
			r#"root ::= expr
			   expr ::= term ("+" term)*
			   term ::= factor ("*" factor)*
			   factor ::= [0-9] | "(" expr ")""#,
		);
		let alphabet = ['1', '+', '*', '(', ')'];
		let samples = ["1+2*(3+4)*5", "((1))", "(1+(2*(3+(4))))*9", "0"];
		let mut texts = every_text(&alphabet, 7);
		texts.extend(near_misses(&samples, &alphabet));
		let matched = texts.iter().filter(|t| arithmetic(t)).count();
		assert!(matched > 60, "{matched}");
		for text in &texts {
			assert_eq!(sums.matches(text), arithmetic(text), "{text:?}");
		}
	}

	/// A repetition keeps its stack as it goes (a call in last place returns nowhere), so a
	/// long list is followed; nesting deeper than the limit is not.
	#[test]
	fn repetitions_keep_their_stack_and_nesting_is_bounded() {
		let list = grammar("root ::= item (\",\" item)*\nitem ::= [a-z]+");
		let long = vec!["abc"; 5000].join(",");
		assert!(list.matches(&long));
		let state = list.accepts(&list.start(), long.as_bytes()).unwrap();
		assert!(state.0 .0.iter().all(|stack| stack.len() <= 2), "{:?}", state.0);

		let nested = grammar("root ::= \"(\" root \")\" | \"x\"");
		let deep = |n: usize| format!("{}x{}", "(".repeat(n), ")".repeat(n));
		assert!(nested.matches(&deep(MAX_DEPTH - 10)));
		assert!(!nested.matches(&deep(MAX_DEPTH + 10)));
	}

	#[test]
	fn refusals_say_where_and_why() {
		let cases = [
			("root ::= \"a\" | \n  ( \"b\" ", "a group not closed at line 2, column 3"),
			("root ::= \"a", "a literal not closed at line 1, column 10"),
			("root ::= [a-", "a character class not closed"),
			("root ::= [z-a]", "backwards"),
			("root ::= [^\\x00-\\U0010FFFF]", "matches no character"),
			("root ::= \"\\q\"", "an unknown escape \\q at line 1, column 11"),
			("root ::= \"\\x4\"", "2 hex digits of a character expected"),
			("root ::= \"\\uD800\"", "4 hex digits of a character expected"),
			("root ::= x", "the rule \"x\" (at line 1, column 10) is not defined"),
			("root ::= \"a\"\nroot ::= \"b\"", "defined twice (at line 2, column 1)"),
			("item ::= \"a\"", "no rule `root`"),
			("root ::= \"a\" root", "matches no text"),
			("root ::= root \"a\" | \"b\"", "left-recursive"),
			(
				"root ::= a\na ::= b? a \"x\" | \"y\"\nb ::= \"z\"",
				"the rule \"a\" is left-recursive",
			),
			("root ::= (\"a\"?)*", "the rule \"root\" repeats without bound what may match no"),
			("root ::= x{2,}\nx ::= \"a\" | \"\"", "repeats without bound what may match no text"),
			("root ::= (\"\")+", "repeats without bound what may match no text"),
			("root ::= \"a\"{2000}", "bounds are numbers up to 1024"),
			("root ::= \"a\"{3,2}", "backwards"),
			("root ::= \"a\"{1", "braces not closed"),
			("root ::= \"a\" ::= \"b\"", "unexpected ':'"),
			("root ::= \"a\" @", "unexpected '@' at line 1, column 14"),
			("?start: \"a\"\n", "a Lark grammar"),
			("# nothing\n", "no rules"),
			("root ::= \"a\"{1 0}", "bounds are numbers"),
			("root ::= \"a\"{+3}", "bounds are numbers"),
			("root ::= \"a\"{,}", "bounds are numbers"),
			("root ::= [a-z]\n  ::= \"b\"", "unexpected ':' at line 2, column 3"),
		];
		for (text, why) in cases {
			let error = refused(text);
			assert!(error.contains(why), "{text:?}: {error:?} lacks {why:?}");
		}
		assert!(refused(&"#".repeat(MAX_GRAMMAR_BYTES + 1)).contains("more than"));
		let large = format!("root ::= {}", "[a-z]{1024} ".repeat(300));
		assert!(refused(&large).contains("larger than"));
		// Nesting in the text is bounded (the parser recurses), closed or not, groups or
		// repetitions one after another.
		let deep = format!("root ::= {}", "(".repeat(30_000));
		assert!(refused(&deep).contains("nest deeper than 64 at line 1, column 74"));
		let deep = format!("root ::= {}\"a\"{}", "(".repeat(64), ")".repeat(64));
		assert!(grammar(&deep).matches("a"));
		let stacked = format!("root ::= \"a\"{}", "?".repeat(30_000));
		assert!(refused(&stacked).contains("nest deeper than 64"));
		// A start larger than a state holds is refused up front.
		assert!(refused(&deep_and_wide("", 300)).contains("more than 262144 positions"));
	}

	/// A grammar whose states are 1,000 rules deep (each call returning to a "!"), then
	/// `ways` alternatives of 200 printable characters and a number, after `prefix`.
	fn deep_and_wide(prefix: &str, ways: usize) -> String {
		let mut text = format!("root ::= {prefix} d0\n");
		for i in 0..999 {
			text.push_str(&format!("d{i} ::= d{} \"!\"\n", i + 1));
		}
		let ways: Vec<String> = (0..ways).map(|i| format!("[ -~]{{200}} \"{i}\"")).collect();
		text.push_str(&format!("d999 ::= {}\n", ways.join(" | ")));
		text
	}

	/// What exceeds the limits while the output is followed is an error for the request (the
	/// mask), never a smaller grammar followed quietly.
	#[test]
	fn limits_passed_while_following_are_errors() {
		let vocab = vocabulary();
		// States too large to hold, after the start.
		let g = grammar(&deep_and_wide("\"s\"", 300));
		let error = g.allowed_tokens(&g.start(), &vocab, None, &mut no_limit()).unwrap_err();
		assert!(error.contains("more than 262144 positions"), "{error}");
		assert!(g.accepts(&g.start(), b"s").is_none());
		// States that fit (250 stacks 1,001 deep) but cost too much to step through: each
		// byte copies, sorts and hashes them, and the work is counted so.
		let g = grammar(&deep_and_wide("", 250));
		let error = g.allowed_tokens(&g.start(), &vocab, None, &mut no_limit()).unwrap_err();
		assert_eq!(error, "following the grammar takes more than 16777216 steps for a token");
		// A request's masks share one budget: a mask kept costs nothing from it.
		let g = grammar("root ::= [a-z]+ (\",\" [a-z]+)*");
		let mut budget = MAX_REQUEST_WORK;
		g.allowed_tokens(&g.start(), &vocab, None, &mut budget).unwrap();
		let spent = MAX_REQUEST_WORK - budget;
		assert!(spent > 0);
		g.allowed_tokens(&g.start(), &vocab, None, &mut budget).unwrap();
		assert_eq!(MAX_REQUEST_WORK - budget, spent);
		let fresh = grammar("root ::= [a-z]+ (\",\" [a-z]+)*");
		let error = fresh.allowed_tokens(&fresh.start(), &vocab, None, &mut (spent - 1));
		let error = error.unwrap_err();
		assert_eq!(error, "following the grammar took more than 67108864 steps for this output");
		// A bounded repetition of what may match no text is served: its ways are bounded.
		let g = grammar("root ::= ws? \"x\" (\"a\"?){0,9}\nws ::= [ \\t]*");
		assert!(g.matches(" \tx") && g.matches("xaaa") && !g.matches("xaaaaaaaaaa"));
	}

	/// A walk that fills the automaton goes on with states it does not keep: the mask is the
	/// same.
	#[test]
	fn a_walk_past_a_full_automaton_goes_on_without_keeping_states() {
		// Each letter a state of its own.
		let g = grammar(&format!("root ::= {}", "[a-z]{1024} ".repeat(5)));
		let vocab = vocabulary();
		let mut state = g.start();
		for _ in 0..MAX_STATES - 3 {
			state = g.accepts(&state, b"x").unwrap();
		}
		assert_eq!(g.automaton().states.len(), MAX_STATES - 2);
		// The walk meets three new states ("a", "ab", "abc"): the last is not kept.
		let kept = g.allowed_tokens(&state, &vocab, None, &mut no_limit()).unwrap();
		assert_eq!(g.automaton().states.len(), MAX_STATES);
		assert_eq!(kept, g.allowed_tokens_each(&state, &vocab, None));
		let abc = (0..vocab.len()).find(|&id| vocab.get(id) == Some(b"abc".as_slice())).unwrap();
		assert!(kept[abc]);
	}

	/// Alternatives that can never end are dropped (an output held to the grammar can always
	/// be finished), and calls of rules that match only the empty text cost nothing.
	#[test]
	fn alternatives_that_never_end_are_dropped_and_empty_rules_cost_nothing() {
		let g = grammar("root ::= \"a\" | \"b\" x\nx ::= \"c\" x");
		assert!(g.matches("a"));
		assert!(g.accepts(&g.start(), b"b").is_none());
		let vocab = vocabulary();
		let allowed = g.allowed_tokens(&g.start(), &vocab, None, &mut no_limit()).unwrap();
		let ids: Vec<usize> = (0..allowed.len()).filter(|&id| allowed[id]).collect();
		assert_eq!(ids, vec![b'a' as usize]);
		let g = grammar("root ::= \"a\" ((\"\"|\"\"){256}){256} \"x\"");
		assert!(g.matches("ax"));
		assert!(!g.matches("a"));
		// The 512 calls of rules that match only the empty text are gone.
		let calls = g.elements.iter().filter(|e| matches!(e, Element::Rule(_))).count();
		assert!(calls <= 2, "{calls} calls left");
	}

	#[test]
	fn syntax_as_llama_cpp_and_xgrammar_write_it() {
		// Rules over several lines, names with - and _, comments, empty alternatives,
		// escapes, and a class with - and ] inside.
		let g = grammar(
			"root ::= greeting-word _sep\n  name # the name\n\
			 greeting-word ::= \"hi\" | \"yo\" |\n  \"\"\n_sep ::= [ \\t]+\n\
			 name ::= [A-Z\\-\\]] [a-z]{0,3} \"\\u00e9\"?",
		);
		// Spaces before quantifiers, quantifiers one after another, bounds with spaces, a raw
		// line end in a literal, Windows line ends, hex and long escapes in literals.
		let spaced = grammar(
			"root ::= \"a\" * \"b\"{1}? [0-9] { 1 , 2 }\r\n  \"\n\" end\r\n\
			 end ::= \"\\x41\\U0001F600\" | \"\"",
		);
		for (text, matches) in [
			("aab1\nA😀", true),
			("1\n", true),
			("b12\n", true),
			("bb1\n", false),
			("123\n", false),
			("1\nA", false),
		] {
			assert_eq!(spaced.matches(text), matches, "{text:?}");
		}
		for (text, matches) in [
			("hi Ab", true),
			(" \tA", true),
			("yo ]abcé", true),
			("hi -", true),
			("hi abc", false),
			("hiA", false),
			("yo Aabcd", false),
		] {
			assert_eq!(g.matches(text), matches, "{text:?}");
		}
	}

	fn vocabulary() -> TokenBytes {
		let mut tokens: Vec<Vec<u8>> = Vec::new();
		for b in 0..=255u8 {
			tokens.push(vec![b]);
		}
		for t in [
			"(", "((", "()", "))", "(()", "[]", "])", "1+", "+2", "*(", "12", "abc", ",", ",a",
			"a,", "\"", "\\\"", "é", "😀", "SELECT", " from", "col_", "1 ", "table_2",
		] {
			tokens.push(t.as_bytes().to_vec());
		}
		// A token of half a character, and a special token (no bytes).
		tokens.push(vec![0xF0, 0x9F]);
		tokens.push(Vec::new());
		TokenBytes::new(tokens)
	}

	/// The kept masks, found by walking the trie through the lazy automaton, are the tokens
	/// the parser's stacks themselves take, at every step of sentences and of near misses.
	#[test]
	fn masks_are_the_tokens_the_parser_takes() {
		let vocab = vocabulary();
		let eos = Some(vocab.len() as u32 - 1);
		let cases: &[(&str, &[&str])] = &[
			("root ::= ( \"(\" root \")\" | \"[\" root \"]\" )*", &["([()[]])[]", "(((", "[(])"]),
			(
				"root ::= expr\nexpr ::= term (\"+\" term)*\nterm ::= factor (\"*\" factor)*\n\
				 factor ::= [0-9] | \"(\" expr \")\"",
				&["1+2*(3+4)", "((1", "12"],
			),
			(
				r#"root ::= "\"" ( [^"\\] | "\\" ["\\] )* "\"" ("," root)?"#,
				&["\"a\\\"é😀\",\"b\"", "\"x"],
			),
		];
		for (text, samples) in cases {
			let g = grammar(text);
			for sample in *samples {
				let mut state = g.start();
				for (i, &b) in sample.as_bytes().iter().enumerate() {
					for _ in 0..2 {
						let kept = g.allowed_tokens(&state, &vocab, eos, &mut no_limit()).unwrap();
						assert_eq!(
							kept,
							g.allowed_tokens_each(&state, &vocab, eos),
							"{text:?} after {:?}",
							&sample.as_bytes()[..i]
						);
					}
					match g.accepts(&state, &[b]) {
						Some(next) => state = next,
						None => break,
					}
				}
			}
		}
	}

	/// Past [`MAX_STATES`] the kept states are dropped and found again (or, within one call,
	/// are not kept): the answers stay those of the parser.
	#[test]
	fn the_kept_states_are_dropped_when_full_and_found_again() {
		// Each of the 5,120 letters is a state of its own.
		let g = grammar(&format!("root ::= {}", "[a-z]{1024} ".repeat(5)));
		let vocab = vocabulary();
		let text = "x".repeat(5 * 1024);
		assert!(g.matches(&text));
		assert!(!g.matches(&text[1..]));
		let mut state = g.start();
		let mut dropped = false;
		for (i, &b) in text.as_bytes().iter().enumerate() {
			if i % 397 == 0 || i + 2 >= text.len() {
				assert_eq!(
					g.allowed_tokens(&state, &vocab, Some(0), &mut no_limit()).unwrap(),
					g.allowed_tokens_each(&state, &vocab, Some(0)),
					"after {i} letters"
				);
			}
			let kept = g.automaton().states.len();
			state = g.accepts(&state, &[b]).unwrap();
			let now = g.automaton().states.len();
			assert!(now <= MAX_STATES);
			dropped |= now < kept;
		}
		assert!(dropped, "the kept states were never dropped");
		assert!(g.can_end(&state));
		assert!(g.accepts(&state, b"x").is_none());
	}

	/// Nullable alternatives side by side are followed once each, not in every combination.
	#[test]
	fn nullable_alternatives_side_by_side_are_followed_once() {
		let g = grammar("root ::= (\"\" | \"\" | \"x\"?){1024} \"a\"");
		assert!(g.matches("a"));
		assert!(g.matches(&format!("{}a", "x".repeat(1024))));
		assert!(!g.matches(&format!("{}a", "x".repeat(1025))));
	}
}
