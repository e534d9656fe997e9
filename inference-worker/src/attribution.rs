//! How much each source given to a chat (its documents, the prompt registered on chain it
//! names, the answers of tools in its conversation) contributed to its answer, by ablation: the
//! answer's tokens are scored (teacher-forced, no new generation) under prompts that leave some
//! sources out, and each source's contribution is read off how the answer's log-probability
//! moves.
//!
//! - [`Method::LeaveOneOut`]: one prompt per source, without it; a source's score is the drop of
//!   the answer's log-probability when it is left out (`n + 1` passes). Two sources that say the
//!   same thing each get little: either makes up for the other.
//! - [`Method::ContextCite`] (Cohen-Wang et al., 2024, arXiv 2409.00729): `k` prompts, each
//!   keeping every source with probability 1/2 (seeded), and a sparse linear model (LASSO) from
//!   which sources were kept to the answer's log-probability; a source's score is its weight,
//!   the log-probability it adds when present.
//!
//! The sources are placed in the system message (after the request's own system message, if
//! any) as numbered blocks, each tokenized on its own ([`SourcedPrompt`]), so leaving one out
//! removes exactly its tokens and every prompt shares the tokens before the first source left
//! out; special tokens written in a source are tokenized as text (a record cannot open or close
//! a chat's turns). The answer is generated from the prompt with every source, the same tokens,
//! and scored as generated (a stop token, or the token that completed a stop sequence, included).
//! The answers of tools in the conversation (its `tool` messages) may be sources too, after
//! the documents ([`SourcedPrompt::build`]): each is tokenized on its own where the template
//! writes it, and left out as an empty answer (the call still made and answered, with
//! nothing), so what each tool contributed is measured as a document's is. So may a registered
//! prompt's text (instructions at the start of the system message): its owner's part.
//! An adapter that served the answer is scored alike (by the HTTP API): the answer's
//! log-probability with it, less that under the whole prompt without it.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Deserialize;

use crate::{
	chat::{ChatTemplate, Message},
	error::{Error, Result},
	generate::{Generation, GenerationRequest, Prompt},
	tokenizer::Tokenizer,
};

/// The most sources a prompt may have.
pub const MAX_SOURCES: usize = 64;
/// The most ablations ContextCite may ask for.
pub const MAX_ABLATIONS: usize = 256;
/// ContextCite's default number of ablations (the paper's: it matches leave-one-out by then).
pub const DEFAULT_ABLATIONS: usize = 32;
/// ContextCite's default LASSO penalty (the paper's), in nats of log-probability.
pub const DEFAULT_LASSO_PENALTY: f64 = 0.01;

/// What the system message says before the sources.
const PREAMBLE: &str = "Answer using the following sources.";

/// A source document (the `documents` of a chat request).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Source {
	/// The caller's id for it (a DataNet record's, say), given back with its score.
	#[serde(default)]
	pub id: Option<String>,
	/// A title, written before the text.
	#[serde(default)]
	pub title: Option<String>,
	/// What it says.
	pub text: String,
}

impl Source {
	/// Its block in the prompt: its number (from 1), its title, its text.
	fn block(&self, index: usize) -> String {
		match &self.title {
			Some(title) => format!("\n[{}] {title}\n{}\n", index + 1, self.text),
			None => format!("\n[{}] {}\n", index + 1, self.text),
		}
	}
}

/// The answer of a tool in a conversation, a source of a [`SourcedPrompt`] after its documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolAnswer {
	/// Its message's index in the conversation.
	pub message: usize,
	/// The id of the call it answers (its message's `tool_call_id`).
	pub tool_call_id: Option<String>,
	/// The tool's name: its message's `name`, or that of the call it answers.
	pub name: Option<String>,
}

impl ToolAnswer {
	/// The answers of tools in `messages`, in order, each named by its message or by the
	/// assistant's call that it answers.
	pub fn of(messages: &[Message]) -> Vec<Self> {
		messages
			.iter()
			.enumerate()
			.filter(|(_, m)| m.role == "tool")
			.map(|(i, m)| {
				let call =
					|id: &str| {
						messages[..i].iter().rev().flat_map(|m| m.tool_calls.iter().flatten()).find(
							|call| call.get("id").and_then(serde_json::Value::as_str) == Some(id),
						)
					};
				let name = m.name.clone().or_else(|| {
					let call = call(m.tool_call_id.as_deref()?)?;
					Some(call.pointer("/function/name")?.as_str()?.to_string())
				});
				Self { message: i, tool_call_id: m.tool_call_id.clone(), name }
			})
			.collect()
	}
}

/// Where a source goes in the rendered template, found and cut out after rendering: `what`
/// (lower case, which a filter such as `upper` changes) with a number of this prompt's own
/// (`nonce`), so that no text given can pass for one.
fn marker(what: &str, nonce: u64) -> String {
	format!("\u{1}{what}.{nonce:016x}\u{1}")
}

/// Refuses a document with no text.
fn check_documents(sources: &[Source]) -> Result<()> {
	match sources.iter().position(|s| s.text.trim().is_empty()) {
		Some(i) => Err(Error::Request(format!("documents: source {i} has no text"))),
		None => Ok(()),
	}
}

/// `messages` with `text` at the start of the system message (one made if there is none).
fn with_instructions(mut messages: Vec<Message>, text: &str) -> Vec<Message> {
	match messages.first_mut() {
		Some(first) if first.role == "system" => {
			first.content = format!("{text}{}", first.content);
		}
		_ => messages.insert(0, Message::new("system", text)),
	}
	messages
}

/// `messages` with `text` at the end of the system message (one made if there is none).
fn with_documents(mut messages: Vec<Message>, text: &str) -> Vec<Message> {
	match messages.first_mut() {
		Some(first) if first.role == "system" => {
			first.content = format!("{}\n\n{PREAMBLE}{text}", first.content);
		}
		_ => messages.insert(0, Message::new("system", &format!("{PREAMBLE}{text}"))),
	}
	messages
}

/// The text of `messages` rendered in `template` (with `tools`, ready for the answer), cut at
/// each of `markers` (one piece more than markers); `None` if the template does not write each
/// marker once, in order.
fn render(
	template: &ChatTemplate,
	messages: &[Message],
	tools: &[serde_json::Value],
	markers: &[String],
) -> Result<Option<Vec<String>>> {
	let text = template.render_with_tools(messages, tools, true)?;
	if markers.iter().any(|m| text.matches(m.as_str()).count() != 1) {
		return Ok(None);
	}
	let mut pieces = Vec::with_capacity(markers.len() + 1);
	let mut rest = text.as_str();
	for marker in markers {
		let Some((before, after)) = rest.split_once(marker.as_str()) else {
			return Ok(None);
		};
		pieces.push(before.to_string());
		rest = after;
	}
	pieces.push(rest.to_string());
	Ok(Some(pieces))
}

/// What a [`SourcedPrompt`]'s sources are, in the order the prompt writes them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sources<'a> {
	/// Instructions at the start of the system message (a registered prompt's text).
	pub instructions: Option<&'a str>,
	/// Documents at the end of the system message.
	pub documents: &'a [Source],
	/// Whether the answer is to be attributed: only then are the instructions and the
	/// answers of tools in the conversation (after the documents) cut out as sources. Without,
	/// they are written in with the rest: the tokens are the same either way.
	pub attributed: bool,
}

/// How the template is given a conversation: the messages and tools to render (see
/// [`crate::tool_calls::Tools::messages`]).
pub type Show<'a> = &'a dyn Fn(&[Message]) -> Result<(Vec<Message>, Vec<serde_json::Value>)>;

/// A chat prompt with sources, tokenized so that any of them can be left out: instructions at
/// the start of the system message (a registered prompt), documents at its end, then (when
/// asked for) the answers of tools in the conversation, each left out as an empty answer (the
/// call still made and answered, with nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedPrompt {
	/// The tokens before each source, and (last) those after the last one, to where the
	/// answer begins.
	fixed: Vec<Vec<u32>>,
	/// Each source's tokens: the instructions', the documents', then the tools' answers'.
	sources: Vec<Vec<u32>>,
	/// Whether the first source is the instructions.
	instructions: bool,
	/// The tools' answers among the sources (the last ones).
	tool_answers: Vec<ToolAnswer>,
	/// Why the instructions are not a source, if they are not.
	instructions_refused: Option<String>,
	/// Why the answers of tools asked for are not sources, if they are not.
	tool_answers_refused: Option<String>,
}

/// How a prompt's instructions (a registered prompt's text) are written.
#[derive(Clone, Copy, Debug)]
enum Instructions<'a> {
	/// There are none.
	None,
	/// Written in with the rest of the system message.
	Inline(&'a str),
	/// A source, tokenized on its own (with the blank line that sets it apart from the rest
	/// of the system message, if `apart`).
	Source {
		/// The text.
		text: &'a str,
		/// Whether the blank line after it is part of the source.
		apart: bool,
	},
}

impl SourcedPrompt {
	/// `messages` rendered in `template` (with `tools`, ready for the assistant's answer),
	/// `sources` in the system message.
	pub fn new(
		template: &ChatTemplate,
		tokenizer: &Tokenizer,
		messages: &[Message],
		tools: &[serde_json::Value],
		sources: &[Source],
	) -> Result<Self> {
		if sources.is_empty() {
			return Err(Error::Request(format!("documents: 1 to {MAX_SOURCES} sources, not 0")));
		}
		let show = |m: &[Message]| Ok((m.to_vec(), tools.to_vec()));
		let sources = Sources { documents: sources, ..Sources::default() };
		Self::build(template, tokenizer, messages, &show, sources)
	}

	/// `messages` as `show` gives them to `template`, ready for the assistant's answer, with
	/// `sources`. The prompt is always the conversation as the template writes it, the
	/// documents placed in the system message: the instructions (a registered prompt's text)
	/// and the answers of tools are sources only if the answer is attributed and cutting them
	/// out of it leaves its tokens as they are (a template may change them, a tokenizer merge
	/// their edges with the text
	/// around them, the instructions may write special tokens); otherwise they are written in
	/// with the rest and [`Self::instructions_refused`] or [`Self::tool_answers_refused`] says
	/// why. At least one source (but a registered prompt's chat may have none), at most
	/// [`MAX_SOURCES`].
	pub fn build(
		template: &ChatTemplate,
		tokenizer: &Tokenizer,
		messages: &[Message],
		show: Show<'_>,
		sources: Sources<'_>,
	) -> Result<Self> {
		if sources.documents.len() > MAX_SOURCES {
			return Err(Error::Request(format!(
				"documents: 1 to {MAX_SOURCES} sources, not {}",
				sources.documents.len()
			)));
		}
		check_documents(sources.documents)?;
		let nonce = rand::random();
		let assemble = |instructions, answers| {
			let parts = (sources.documents, instructions, answers, nonce);
			Self::assemble(template, tokenizer, messages, show, parts)
		};
		let unwritten = || {
			Error::Request(
				"the chat template does not write the system message as given (documents and \
				 registered prompts go there)"
					.into(),
			)
		};
		// What is served: the documents the only sources.
		let inline = sources.instructions.map(Instructions::Inline).unwrap_or(Instructions::None);
		let mut prompt = assemble(inline, Vec::new())?.ok_or_else(unwritten)?;
		let mut instructions = inline;
		if let Some(text) = sources.instructions.filter(|_| sources.attributed) {
			// Cut out with the blank line after it, or without (tokenizers split whitespace
			// at a text's end differently).
			let mut refused = Some(
				"cutting it out of the prompt changes its tokens (it writes special tokens, or \
				 this model's tokenizer merges its edges with the text around it)"
					.to_string(),
			);
			let room = sources.documents.len() < MAX_SOURCES;
			if !room {
				refused =
					Some(format!("with the documents it would be more than {MAX_SOURCES} sources"));
			}
			for apart in [false, true].into_iter().filter(|_| room) {
				let cut = Instructions::Source { text, apart };
				match assemble(cut, Vec::new())? {
					Some(with) if with.all() == prompt.all() => {
						prompt = with;
						instructions = cut;
						refused = None;
						break;
					}
					Some(_) => {}
					// (A template that leaves the system message out, say.)
					None => {
						refused = Some(
							"the chat template does not write the system message as given".into(),
						);
						break;
					}
				}
			}
			prompt.instructions_refused = refused;
		}
		let answers = if sources.attributed { ToolAnswer::of(messages) } else { Vec::new() };
		if !answers.is_empty() && prompt.sources.len() + answers.len() > MAX_SOURCES {
			prompt.tool_answers_refused =
				Some(format!("with the other sources they would be more than {MAX_SOURCES}"));
		} else if !answers.is_empty() {
			let refused = match assemble(instructions, answers)? {
				Some(with) if with.all() == prompt.all() => {
					let refused = prompt.instructions_refused.take();
					prompt = with;
					prompt.instructions_refused = refused;
					None
				}
				Some(_) => Some(
					"cutting them out of the prompt changes its tokens (the template changes an \
					 answer, or this model's tokenizer merges an answer's edges with the text \
					 around it)",
				),
				None => Some("the chat template does not write each tool's answer once, as given"),
			};
			prompt.tool_answers_refused = refused.map(String::from);
		}
		// A registered prompt is served even when it is no source (nothing is, then).
		let count = prompt.sources.len();
		let served = count == 0 && sources.instructions.is_some();
		if (count == 0 && !served) || count > MAX_SOURCES {
			return Err(Error::Request(format!(
				"sources: 1 to {MAX_SOURCES} sources, not {count} (documents, a registered \
				 prompt and, with attribution, the answers of tools together){}",
				prompt.refusals()
			)));
		}
		Ok(prompt)
	}

	/// Why the registered prompt or the answers of tools are not sources, if they are not
	/// (`"; the registered prompt cannot be left out: ..."`), or nothing.
	pub fn refusals(&self) -> String {
		let refused = [
			("the registered prompt", &self.instructions_refused),
			("the answers of tools", &self.tool_answers_refused),
		];
		refused
			.iter()
			.filter_map(|(what, why)| {
				Some(format!("; {what} cannot be left out: {}", why.as_deref()?))
			})
			.collect()
	}

	/// The prompt with the documents, the `instructions` and `answers` (of tools, in
	/// `messages`) as sources, or `None` if the template does not write each source's marker
	/// once, in order.
	fn assemble(
		template: &ChatTemplate,
		tokenizer: &Tokenizer,
		messages: &[Message],
		show: Show<'_>,
		(documents, instructions, answers, nonce): (
			&[Source],
			Instructions<'_>,
			Vec<ToolAnswer>,
			u64,
		),
	) -> Result<Option<Self>> {
		let mut markers = Vec::new();
		let mut marked = messages.to_vec();
		// The answers first (their indices are the request's messages'), then the instructions.
		for (k, answer) in answers.iter().enumerate() {
			marked[answer.message].content = marker(&format!("tool{k}"), nonce);
		}
		// The instructions open the system message, apart from what it says already.
		let apart = match marked.first() {
			Some(first) if first.role == "system" => "\n\n",
			_ => "",
		};
		let instructions = match instructions {
			Instructions::None => None,
			Instructions::Inline(text) => {
				marked = with_instructions(marked, &format!("{text}{apart}"));
				None
			}
			Instructions::Source { text, apart: true } => {
				markers.push(marker("instructions", nonce));
				marked = with_instructions(marked, &markers[0]);
				Some(format!("{text}{apart}"))
			}
			Instructions::Source { text, apart: false } => {
				markers.push(marker("instructions", nonce));
				marked = with_instructions(marked, &format!("{}{apart}", markers[0]));
				Some(text.to_string())
			}
		};
		let (mut shown, tools) = show(&marked)?;
		if !documents.is_empty() {
			markers.push(marker("documents", nonce));
			shown = with_documents(shown, markers.last().map_or("", String::as_str));
		}
		markers.extend((0..answers.len()).map(|k| marker(&format!("tool{k}"), nonce)));
		let Some(pieces) = render(template, &shown, &tools, &markers)? else {
			return Ok(None);
		};
		// Each source's text, and whether a piece of the template's text comes before it (the
		// documents follow one another).
		let mut texts: Vec<(String, bool)> = Vec::new();
		let with_instructions = instructions.is_some();
		texts.extend(instructions.map(|text| (text, true)));
		let blocks = documents.iter().enumerate();
		texts.extend(blocks.map(|(i, source)| (source.block(i), i == 0)));
		let answered = answers.iter().map(|a| (messages[a.message].content.clone(), true));
		texts.extend(answered);
		let mut pieces = pieces.into_iter();
		let mut before: Vec<String> = texts
			.iter()
			.map(|(_, after_text)| match after_text {
				true => pieces.next().unwrap_or_default(),
				false => String::new(),
			})
			.collect();
		before.extend(pieces);
		if before.len() != texts.len() + 1 {
			return Err(Error::Batch(format!(
				"a prompt of {} sources cut into {} pieces",
				texts.len(),
				before.len()
			)));
		}
		let fixed = before
			.iter()
			.enumerate()
			.map(|(i, text)| match i {
				0 => tokenizer.encode(text),
				_ if text.is_empty() => Ok(Vec::new()),
				_ => tokenizer.encode_continuation(text),
			})
			.collect::<Result<Vec<_>>>()?;
		let sources_tokens = texts
			.iter()
			.map(|(text, _)| tokenizer.encode_literal(text))
			.collect::<Result<Vec<_>>>()?;
		Ok(Some(Self {
			fixed,
			sources: sources_tokens,
			instructions: with_instructions,
			tool_answers: answers,
			instructions_refused: None,
			tool_answers_refused: None,
		}))
	}

	/// Whether the first source is the instructions (a registered prompt's text).
	pub fn instructions(&self) -> bool {
		self.instructions
	}

	/// How many of the sources are documents (after the instructions, if any).
	pub fn documents(&self) -> usize {
		self.sources.len() - self.tool_answers.len() - usize::from(self.instructions)
	}

	/// The answers of tools among the sources (the last ones).
	pub fn tool_answers(&self) -> &[ToolAnswer] {
		&self.tool_answers
	}

	/// Why the answers of tools asked for are not sources, if they are not.
	pub fn tool_answers_refused(&self) -> Option<&str> {
		self.tool_answers_refused.as_deref()
	}

	/// Why the instructions are not a source (they are written in with the rest of the system
	/// message), if they are not.
	pub fn instructions_refused(&self) -> Option<&str> {
		self.instructions_refused.as_deref()
	}

	/// The number of sources.
	pub fn len(&self) -> usize {
		self.sources.len()
	}

	/// Whether there are none (only a registered prompt's chat whose text cannot be cut out).
	pub fn is_empty(&self) -> bool {
		self.sources.is_empty()
	}

	/// The prompt's tokens with the sources `keep` says (one flag per source).
	pub fn tokens(&self, keep: &[bool]) -> Vec<u32> {
		let mut tokens = Vec::new();
		for (i, fixed) in self.fixed.iter().enumerate() {
			tokens.extend_from_slice(fixed);
			if let (Some(source), Some(true)) = (self.sources.get(i), keep.get(i)) {
				tokens.extend_from_slice(source);
			}
		}
		tokens
	}

	/// The prompt's tokens with every source.
	pub fn all(&self) -> Vec<u32> {
		self.tokens(&vec![true; self.len()])
	}
}

/// How contributions are measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
	/// Each source left out once.
	LeaveOneOut,
	/// Random halves of the sources, and a LASSO fit.
	ContextCite {
		/// How many random ablations.
		ablations: usize,
		/// The seed of the ablations' choices.
		seed: u64,
		/// The LASSO penalty.
		penalty: f64,
	},
}

impl Method {
	/// Its name in answers.
	pub fn name(&self) -> &'static str {
		match self {
			Method::LeaveOneOut => "leave_one_out",
			Method::ContextCite { .. } => "context_cite",
		}
	}
}

/// The prompts an attribution scores the answer under: which sources each keeps. The first
/// keeps them all.
#[derive(Clone, Debug, PartialEq)]
pub struct Ablations {
	method: Method,
	masks: Vec<Vec<bool>>,
}

impl Ablations {
	/// The ablations of `method` over `sources` sources.
	pub fn new(method: Method, sources: usize) -> Result<Self> {
		let all = vec![true; sources];
		let masks = match method {
			Method::LeaveOneOut => std::iter::once(all)
				.chain((0..sources).map(|i| (0..sources).map(|j| j != i).collect()))
				.collect(),
			Method::ContextCite { ablations, seed, penalty } => {
				if !(2..=MAX_ABLATIONS).contains(&ablations) {
					return Err(Error::Request(format!(
						"attribution.ablations: 2 to {MAX_ABLATIONS}, not {ablations}"
					)));
				}
				if !(penalty.is_finite() && penalty >= 0.0) {
					return Err(Error::Request(format!(
						"attribution.penalty: {penalty} is not a finite number at least 0"
					)));
				}
				let mut rng = StdRng::seed_from_u64(seed);
				std::iter::once(all)
					.chain((0..ablations).map(|_| (0..sources).map(|_| rng.random()).collect()))
					.collect()
			}
		};
		Ok(Self { method, masks })
	}

	/// The method.
	pub fn method(&self) -> Method {
		self.method
	}

	/// Which sources each scoring prompt keeps (the first: all).
	pub fn masks(&self) -> &[Vec<bool>] {
		&self.masks
	}

	/// The requests that score `answer` after each ablation of `prompt`: teacher-forced, the
	/// log-probability of each answer token given the ones before it, nothing generated. Only
	/// the answer is scored, so each request takes the part of its prompt that it shares with
	/// one computed before (the answer's own prompt, the ablations before it) from the
	/// engine's prefix cache.
	pub fn requests(&self, prompt: &SourcedPrompt, answer: &[u32]) -> Vec<GenerationRequest> {
		self.masks
			.iter()
			.map(|keep| {
				let mut tokens = prompt.tokens(keep);
				let from = tokens.len().saturating_sub(1);
				tokens.extend_from_slice(answer);
				GenerationRequest {
					prompt: Prompt::Tokens(tokens),
					max_tokens: 0,
					prompt_logprobs: Some(0),
					prompt_logprobs_from: from,
					..GenerationRequest::default()
				}
			})
			.collect()
	}

	/// Each source's score from the answer's log-probability under each ablation (in the
	/// order of [`Self::masks`]).
	pub fn scores(&self, logprobs: &[f64]) -> Result<Vec<f64>> {
		if logprobs.len() != self.masks.len() {
			return Err(Error::Batch(format!(
				"{} log-probabilities for {} ablations",
				logprobs.len(),
				self.masks.len()
			)));
		}
		Ok(match self.method {
			Method::LeaveOneOut => {
				logprobs[1..].iter().map(|without| logprobs[0] - without).collect()
			}
			Method::ContextCite { penalty, .. } => lasso(&self.masks, logprobs, penalty),
		})
	}
}

/// The log-probability of the last `answer` tokens of a scored prompt (a generation of one of
/// [`Ablations::requests`]).
pub fn answer_logprob(scored: &Generation, answer: usize) -> Result<f64> {
	let logprobs = scored.prompt_logprobs.as_ref().map(|p| &p.logprobs).ok_or_else(|| {
		Error::Batch("the scoring request has no prompt log-probabilities".into())
	})?;
	let from = logprobs.len().checked_sub(answer).ok_or_else(|| {
		Error::Batch(format!("{answer} answer tokens, {} scored", logprobs.len()))
	})?;
	Ok(logprobs[from..].iter().map(|&l| f64::from(l)).sum())
}

/// The weights of the LASSO fit (with an intercept) of `y` on the 0/1 columns of `masks`:
/// minimizes `|y - b - X w|² / (2 m) + penalty |w|₁` by coordinate descent. A source kept in
/// every ablation or in none cannot be told apart from the intercept: its weight is 0.
pub fn lasso(masks: &[Vec<bool>], y: &[f64], penalty: f64) -> Vec<f64> {
	let m = masks.len().min(y.len());
	let n = masks.first().map_or(0, Vec::len);
	if m == 0 {
		return vec![0.0; n];
	}
	let mf = m as f64;
	let y_mean = y[..m].iter().sum::<f64>() / mf;
	// Centered columns and target: the intercept drops out.
	let columns: Vec<Vec<f64>> = (0..n)
		.map(|j| {
			let mean = masks[..m].iter().filter(|row| row[j]).count() as f64 / mf;
			masks[..m].iter().map(|row| f64::from(u8::from(row[j])) - mean).collect()
		})
		.collect();
	let squares: Vec<f64> =
		columns.iter().map(|c| c.iter().map(|x| x * x).sum::<f64>() / mf).collect();
	let mut residual: Vec<f64> = y[..m].iter().map(|v| v - y_mean).collect();
	let mut w = vec![0.0; n];
	for _ in 0..10_000 {
		let mut largest_step = 0f64;
		for j in 0..n {
			if squares[j] == 0.0 {
				continue;
			}
			let column = &columns[j];
			let rho = column.iter().zip(&residual).map(|(x, r)| x * r).sum::<f64>() / mf
				+ squares[j] * w[j];
			let updated = soft_threshold(rho, penalty) / squares[j];
			let step = updated - w[j];
			if step != 0.0 {
				residual.iter_mut().zip(column).for_each(|(r, x)| *r -= step * x);
				w[j] = updated;
				largest_step = largest_step.max(step.abs());
			}
		}
		if largest_step < 1e-10 {
			break;
		}
	}
	w
}

fn soft_threshold(x: f64, penalty: f64) -> f64 {
	if x > penalty {
		x - penalty
	} else if x < -penalty {
		x + penalty
	} else {
		0.0
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn leave_one_out_masks_and_scores() {
		let ablations = Ablations::new(Method::LeaveOneOut, 3).unwrap();
		assert_eq!(
			ablations.masks(),
			[
				vec![true, true, true],
				vec![false, true, true],
				vec![true, false, true],
				vec![true, true, false]
			]
		);
		assert_eq!(ablations.scores(&[-2.0, -7.0, -2.5, -2.0]).unwrap(), [5.0, 0.5, 0.0]);
		assert!(ablations.scores(&[-2.0]).is_err());
	}

	#[test]
	fn context_cite_masks_are_seeded_halves() {
		let method = Method::ContextCite { ablations: 200, seed: 7, penalty: 0.0 };
		let a = Ablations::new(method, 10).unwrap();
		assert_eq!(a, Ablations::new(method, 10).unwrap());
		let reseeded = Method::ContextCite { ablations: 200, seed: 8, penalty: 0.0 };
		assert_ne!(a.masks(), Ablations::new(reseeded, 10).unwrap().masks());
		assert_eq!(a.masks().len(), 201);
		assert!(a.masks()[0].iter().all(|&k| k));
		let kept = a.masks()[1..].iter().flatten().filter(|&&k| k).count() as f64 / 2000.0;
		assert!((0.45..0.55).contains(&kept), "{kept}");
		for bad in [0, 1, MAX_ABLATIONS + 1] {
			let method = Method::ContextCite { ablations: bad, seed: 0, penalty: 0.01 };
			assert!(Ablations::new(method, 3).is_err());
		}
		let negative = Method::ContextCite { ablations: 8, seed: 0, penalty: -1.0 };
		assert!(Ablations::new(negative, 3).is_err());
	}

	#[test]
	fn lasso_recovers_a_sparse_linear_model() {
		// y = 1 + 3 x0 - 2 x2 over every subset of 4 sources (x1, x3 do nothing).
		let masks: Vec<Vec<bool>> =
			(0..16u32).map(|bits| (0..4).map(|j| bits >> j & 1 == 1).collect()).collect();
		let y: Vec<f64> = masks
			.iter()
			.map(|m| 1.0 + 3.0 * f64::from(u8::from(m[0])) - 2.0 * f64::from(u8::from(m[2])))
			.collect();
		let exact = lasso(&masks, &y, 0.0);
		for (w, want) in exact.iter().zip([3.0, 0.0, -2.0, 0.0]) {
			assert!((w - want).abs() < 1e-8, "{exact:?}");
		}
		// A penalty shrinks each weight by penalty / variance (1/4 here) and zeroes the small.
		let shrunk = lasso(&masks, &y, 0.25);
		for (w, want) in shrunk.iter().zip([2.0, 0.0, -1.0, 0.0]) {
			assert!((w - want).abs() < 1e-8, "{shrunk:?}");
		}
		// A source present everywhere cannot be told apart from the intercept.
		let always: Vec<Vec<bool>> = masks.iter().map(|m| vec![m[0], true]).collect();
		assert_eq!(lasso(&always, &y, 0.0)[1], 0.0);
	}
}
