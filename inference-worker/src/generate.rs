//! Generating a completion for one request: prefill the prompt, then decode token by token
//! until the end-of-sequence token, a stop sequence or the token limit.

use std::sync::Arc;

use openledger_kernels::{backend::Backend, sampling::SamplingParams as KernelSampling};
use serde::Serialize;

use crate::{
	ebnf_grammar::{EbnfGrammar, EbnfState, MAX_REQUEST_WORK},
	error::{Error, Result},
	json_mode::{JsonGrammar, JsonState},
	kernel_model::{DecodeInput, KernelLlama},
	kv_cache::KvCacheConfig,
	lazy_grammar::{LazyGrammar, LazyState},
	lora::LoraAdapter,
	model::{KvCache, Llama},
	regex_grammar::{RegexGrammar, RegexState},
	sampling::{
		logprob_of, top_logprobs, History, Sampled, Sampler, SamplingParams, MAX_TOP_LOGPROBS,
	},
	tokenizer::Tokenizer,
};

/// A request's prompt: text, or token ids as a client's own tokenizer made them (serialized as
/// a string or a list of ids).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Prompt {
	/// Text (special tokens such as `<|im_start|>` are recognised).
	Text(String),
	/// Token ids, served as they are.
	Tokens(Vec<u32>),
}

impl Prompt {
	/// The prompt's token ids; token ids must be in the model's vocabulary of `vocab_size`.
	pub fn tokens(&self, tokenizer: &Tokenizer, vocab_size: usize) -> Result<Vec<u32>> {
		match self {
			Prompt::Text(text) => tokenizer.encode(text),
			Prompt::Tokens(ids) => {
				check_token_ids("prompt", ids, vocab_size)?;
				Ok(ids.clone())
			}
		}
	}
}

/// Refuses token ids (of what a request calls `field`) outside a vocabulary of `vocab_size`.
pub fn check_token_ids(field: &str, ids: &[u32], vocab_size: usize) -> Result<()> {
	match ids.iter().find(|&&id| id as usize >= vocab_size) {
		Some(id) => Err(Error::Request(format!(
			"{field}: token {id} is not in the model's vocabulary of {vocab_size}"
		))),
		None => Ok(()),
	}
}

impl From<&str> for Prompt {
	fn from(text: &str) -> Self {
		Prompt::Text(text.to_string())
	}
}

impl From<String> for Prompt {
	fn from(text: String) -> Self {
		Prompt::Text(text)
	}
}

impl From<Vec<u32>> for Prompt {
	fn from(ids: Vec<u32>) -> Self {
		Prompt::Tokens(ids)
	}
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
	/// The prompt.
	pub prompt: Prompt,
	/// The most tokens to generate.
	pub max_tokens: usize,
	/// How to pick tokens.
	pub sampling: SamplingParams,
	/// Generation stops when the output contains one of these (it is cut before it, or after
	/// it with [`Self::include_stop_str_in_output`]).
	pub stop: Vec<String>,
	/// Generation stops at any of these tokens (vLLM's `stop_token_ids`; the text ends before
	/// it, the reason is [`FinishReason::Stop`]).
	pub stop_token_ids: Vec<u32>,
	/// Whether to go on past the end-of-sequence token, to `max_tokens` (vLLM's `ignore_eos`,
	/// as benchmarks ask for a fixed output length).
	pub ignore_eos: bool,
	/// The log-probability of each prompt token after the first, given the ones before it,
	/// with this many most likely tokens at each position (vLLM's `prompt_logprobs`; OpenAI's
	/// `echo` with `logprobs`); `None` for none. At most [`MAX_TOP_LOGPROBS`]. The prompt
	/// from [`Self::prompt_logprobs_from`] on is computed for it (no cached block of it is
	/// reused).
	pub prompt_logprobs: Option<usize>,
	/// With `prompt_logprobs`, the first position whose log-probability is recorded (that of
	/// the token after it; 0, the default: every position). The prompt before it is not
	/// scored, so the engine takes what it can of it from the prefix cache and runs the rest
	/// without logits: scoring an answer after a long prompt (attribution's ablations) costs
	/// the answer, not the prompt. From the prompt's last position on (which predicts
	/// nothing) it records nothing.
	pub prompt_logprobs_from: usize,
	/// The fewest tokens to generate before the end-of-sequence token, a stop token or a stop
	/// sequence may end the output (vLLM's `min_tokens`; at most `max_tokens`): until then
	/// those tokens are not picked and stop sequences are not looked for.
	pub min_tokens: usize,
	/// What the output must be.
	pub response_format: ResponseFormat,
	/// Whether special tokens (`<|im_end|>`, ...) are left out of the text (vLLM's
	/// `skip_special_tokens`, true by default); they stay among the tokens. Stop sequences
	/// are looked for in the text.
	pub skip_special_tokens: bool,
	/// Whether the text keeps what ended it (vLLM's `include_stop_str_in_output`): a stop
	/// sequence (the text then ends right after it), a stop token's or the end-of-sequence
	/// token's text (none for a special token left out).
	pub include_stop_str_in_output: bool,
	/// vLLM's `cache_salt`: the prompt's cached blocks are shared only with requests of the
	/// same salt (so that one user cannot learn from the cache's timing what another's prompt
	/// began with); `None` shares them with every request without one.
	pub cache_salt: Option<String>,
}

/// What a request's output must be (OpenAI's `response_format`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ResponseFormat {
	/// Any text.
	#[default]
	Text,
	/// JSON that `grammar` takes (any object, or what a schema allows), the output held to it
	/// token by token ([`crate::json_mode`]); it ends at the end-of-sequence token once the
	/// document is whole (or at `max_tokens`).
	Json(Arc<JsonGrammar>),
	/// Text that `grammar` holds from a trigger on ([`crate::lazy_grammar`]: the model's own
	/// tool calls, `tool_choice: "auto"`).
	Lazy(Arc<LazyGrammar>),
	/// Text that matches a regular expression whole ([`crate::regex_grammar`], vLLM's
	/// `guided_regex`), the output held to it token by token; it ends at the end-of-sequence
	/// token once it matches (or at `max_tokens`).
	Regex(Arc<RegexGrammar>),
	/// Text that a context-free grammar takes whole ([`crate::ebnf_grammar`], vLLM's
	/// `guided_grammar` in GBNF), the output held to it token by token; it ends at the
	/// end-of-sequence token once it is a whole sentence of the grammar (or at `max_tokens`).
	Grammar(Arc<EbnfGrammar>),
}

/// What the output is held to, and how far into it the output is.
#[derive(Clone, Debug)]
enum Constraint {
	Json(Arc<JsonGrammar>, JsonState),
	Lazy(Arc<LazyGrammar>, LazyState),
	Regex(Arc<RegexGrammar>, RegexState),
	/// With the work its masks may still take ([`crate::ebnf_grammar::MAX_REQUEST_WORK`] to
	/// begin with).
	Grammar(Arc<EbnfGrammar>, EbnfState, usize),
}

impl Constraint {
	/// Whether the output may end here.
	fn can_end(&self) -> bool {
		match self {
			Self::Json(grammar, state) => state.can_end(grammar),
			Self::Lazy(lazy, state) => state.can_end(lazy),
			Self::Regex(grammar, state) => grammar.can_end(*state),
			Self::Grammar(grammar, state, _) => grammar.can_end(state),
		}
	}

	/// What the output is held to, for an error.
	fn describe(&self) -> String {
		match self {
			Self::Json(..) => format!(
				"the JSON output (the automaton nests at most {} levels)",
				crate::json_mode::MAX_DEPTH
			),
			Self::Lazy(..) => "the tool call".into(),
			Self::Regex(grammar, _) => {
				format!("the output's regular expression {:?}", grammar.pattern())
			}
			Self::Grammar(..) => "the output's grammar".into(),
		}
	}

	/// For each token, whether it may come next (`eos` when the output may end); an error
	/// when a grammar cannot find them within its limits.
	fn allowed_tokens(&mut self, tokenizer: &Tokenizer, eos: Option<u32>) -> Result<Vec<bool>> {
		Ok(match self {
			Self::Json(grammar, state) => {
				state.allowed_tokens(grammar, tokenizer.token_bytes(), eos)
			}
			Self::Lazy(lazy, state) => {
				let trigger = lazy.special_trigger(tokenizer);
				state.allowed_tokens(lazy, tokenizer.token_bytes(), eos, trigger)
			}
			Self::Regex(grammar, state) => {
				grammar.allowed_tokens(*state, tokenizer.token_bytes(), eos)
			}
			Self::Grammar(grammar, state, budget) => grammar
				.allowed_tokens(state, tokenizer.token_bytes(), eos, budget)
				.map_err(|e| Error::Request(format!("the output's grammar: {e}")))?,
		})
	}

	/// Goes on with `token`; whether the constraint takes it.
	fn advance(&mut self, token: u32, tokenizer: &Tokenizer) -> bool {
		let bytes = tokenizer.token_bytes().get(token as usize).unwrap_or_default();
		match self {
			Self::Json(grammar, state) => state.accepts(grammar, bytes).map(|next| *state = next),
			// A special token has no bytes: it may be the trigger.
			Self::Lazy(lazy, state) if bytes.is_empty() => {
				let trigger = lazy.special_trigger(tokenizer);
				state.accepts_special(lazy, token, trigger).map(|next| *state = next)
			}
			Self::Lazy(lazy, state) => state.accepts(lazy, bytes).map(|next| *state = next),
			// A special token has no bytes, and no place in a regular expression's output.
			Self::Regex(_, _) if bytes.is_empty() => None,
			Self::Regex(grammar, state) => grammar.accepts(*state, bytes).map(|next| *state = next),
			// Nor in a grammar's.
			Self::Grammar(..) if bytes.is_empty() => None,
			Self::Grammar(grammar, state, _) => {
				grammar.accepts(state, bytes).map(|next| *state = next)
			}
		}
		.is_some()
	}
}

impl ResponseFormat {
	/// Any JSON object (JSON mode).
	pub fn json_object() -> Self {
		Self::Json(Arc::new(JsonGrammar::any_object()))
	}
}

impl Default for GenerationRequest {
	/// An empty text prompt, 16 tokens, greedy, no stops, no prompt log-probabilities.
	fn default() -> Self {
		Self {
			prompt: Prompt::Text(String::new()),
			max_tokens: 16,
			sampling: SamplingParams::default(),
			stop: Vec::new(),
			stop_token_ids: Vec::new(),
			ignore_eos: false,
			prompt_logprobs: None,
			prompt_logprobs_from: 0,
			min_tokens: 0,
			response_format: ResponseFormat::Text,
			skip_special_tokens: true,
			include_stop_str_in_output: false,
			cache_salt: None,
		}
	}
}

/// The log-probabilities of a prompt's tokens after the first, each given the ones before it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PromptLogprobs {
	/// The position of the first entry (the request's
	/// [`GenerationRequest::prompt_logprobs_from`], at most the prompt's last position): entry
	/// `i` is position `first + i`'s.
	#[serde(skip)]
	pub first: usize,
	/// `log p(prompt[p + 1] | prompt[..=p])` at `i`, for position `p = first + i`.
	pub logprobs: Vec<f32>,
	/// At `i`, the most likely tokens at that position with their log-probabilities, most
	/// likely first (as many as the request asked for).
	pub top_logprobs: Vec<Vec<(u32, f32)>>,
	/// At `i`, the rank of `prompt[i + 1]` among the vocabulary at that position (1 for the
	/// most likely; tokens as likely share the better rank), as vLLM reports it.
	pub ranks: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
	/// `max_tokens` were generated.
	Length,
	/// The model produced its end-of-sequence token.
	Eos,
	/// The output reached a stop sequence or a stop token.
	Stop,
}

/// A stretch of a generation's tokens with their log-probabilities and most likely
/// alternatives at each (as many as the request asked for; see [`Generation`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TokenScores {
	/// The token ids.
	pub tokens: Vec<u32>,
	/// The model's log-probability of each.
	pub logprobs: Vec<f32>,
	/// The most likely tokens at each one's step, most likely first (empty when none were
	/// asked for).
	pub top_logprobs: Vec<Vec<(u32, f32)>>,
}

impl TokenScores {
	/// `tokens` from the `from`th on, with their `logprobs` and `top_logprobs`.
	fn of(tokens: &[u32], logprobs: &[f32], top_logprobs: &[Vec<(u32, f32)>], from: usize) -> Self {
		Self {
			tokens: tokens.get(from..).unwrap_or_default().to_vec(),
			logprobs: logprobs.get(from..).unwrap_or_default().to_vec(),
			top_logprobs: top_logprobs.get(from..).unwrap_or_default().to_vec(),
		}
	}
}

/// A finished generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Generation {
	/// The prompt's token ids.
	pub prompt_tokens: Vec<u32>,
	/// The generated token ids (the end-of-sequence token included when it ended the output).
	pub tokens: Vec<u32>,
	/// The model's log-probability of each generated token.
	pub logprobs: Vec<f32>,
	/// For each generated token, the most likely tokens at its step with their
	/// log-probabilities, most likely first: as many as the request's
	/// [`SamplingParams::top_logprobs`] (empty when it asks for none).
	pub top_logprobs: Vec<Vec<(u32, f32)>>,
	/// The prompt's log-probabilities, when the request asked for them.
	pub prompt_logprobs: Option<PromptLogprobs>,
	/// The generated text, cut before a stop sequence.
	pub text: String,
	/// Why it ended.
	pub finish_reason: FinishReason,
	/// How many of the prompt's tokens came from the prefix cache when it was first scheduled
	/// (vLLM's `num_cached_tokens`; 0 when generated alone).
	pub cached_tokens: usize,
}

impl Generation {
	/// The generated tokens from the `from`th on, with their scores.
	pub fn scores_from(&self, from: usize) -> TokenScores {
		TokenScores::of(&self.tokens, &self.logprobs, &self.top_logprobs, from)
	}
}

/// Checks `request`'s prompt tokens and length against the model's context. `max_tokens` may
/// be 0 only to score the prompt (with its log-probabilities asked for).
pub fn validate(prompt_tokens: &[u32], request: &GenerationRequest, context: usize) -> Result<()> {
	let max_tokens = request.max_tokens;
	if prompt_tokens.is_empty() {
		return Err(Error::Request("the prompt is empty".into()));
	}
	if max_tokens == 0 && request.prompt_logprobs.is_none() {
		return Err(Error::Request(
			"max_tokens is 0 (allowed only to score the prompt: echo with logprobs, or \
			 prompt_logprobs)"
				.into(),
		));
	}
	if request.min_tokens > max_tokens {
		return Err(Error::Request(format!(
			"min_tokens {} is more than max_tokens {max_tokens}",
			request.min_tokens
		)));
	}
	if matches!(
		request.response_format,
		ResponseFormat::Json(_) | ResponseFormat::Regex(_) | ResponseFormat::Grammar(_)
	) && (request.ignore_eos || request.min_tokens > 0)
	{
		return Err(Error::Request(
			"ignore_eos or min_tokens with structured output (a JSON format, guided_choice, \
			 guided_regex, guided_grammar or tool calls): the output ends when it is whole"
				.into(),
		));
	}
	if matches!(&request.response_format, ResponseFormat::Lazy(lazy) if !lazy.repeats())
		&& (request.ignore_eos || request.min_tokens > 0)
	{
		return Err(Error::Request(
			"ignore_eos or min_tokens with tool_choice \"auto\" and parallel_tool_calls false: \
			 the output ends after its call"
				.into(),
		));
	}
	if prompt_tokens.len().saturating_add(max_tokens) > context {
		return Err(Error::Request(format!(
			"{} prompt tokens plus {max_tokens} new tokens exceed the model's context of {context}",
			prompt_tokens.len(),
		)));
	}
	Ok(())
}

/// The output of one request so far, and whether it is finished: the part of generation that
/// is the same whether the request is served alone or in a batch.
#[derive(Debug)]
pub struct Progress {
	sampler: Sampler,
	/// The prompt's token ids.
	pub prompt_tokens: Vec<u32>,
	/// The generated token ids so far.
	pub tokens: Vec<u32>,
	logprobs: Vec<f32>,
	top_logprobs: Vec<Vec<(u32, f32)>>,
	/// The prompt's log-probabilities so far and how many alternatives each, when asked for.
	prompt_logprobs: Option<(usize, PromptLogprobs)>,
	max_tokens: usize,
	stop: Vec<String>,
	stop_token_ids: Vec<u32>,
	ignore_eos: bool,
	/// Tokens before which nothing may end the output.
	min_tokens: usize,
	/// The length of the text of the first `min_tokens - 1` tokens, in which stop sequences are
	/// not looked for (when there are stop sequences).
	held_text: usize,
	/// What the output is held to (JSON, or text with a lazy grammar), and how far into it
	/// the output is.
	constraint: Option<Constraint>,
	/// Whether special tokens are left out of the text.
	skip_special_tokens: bool,
	/// Whether the text keeps the stop sequence or token that ended it.
	include_stop: bool,
	text: String,
	finish_reason: Option<FinishReason>,
	/// How many prompt tokens the prefix cache gave when the request was first scheduled.
	cached_tokens: Option<usize>,
}

impl Progress {
	/// The start of `request`, whose prompt is `prompt_tokens`.
	pub fn new(request: &GenerationRequest, prompt_tokens: Vec<u32>) -> Result<Self> {
		if let Some(k) = request.prompt_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
			return Err(Error::Request(format!(
				"{k} top log-probabilities asked for the prompt, at most {MAX_TOP_LOGPROBS}"
			)));
		}
		// The last position: past it there is nothing to score.
		let last = prompt_tokens.len().saturating_sub(1);
		Ok(Self {
			sampler: Sampler::new(request.sampling.clone())?,
			prompt_tokens,
			tokens: Vec::with_capacity(request.max_tokens),
			logprobs: Vec::with_capacity(request.max_tokens),
			top_logprobs: Vec::new(),
			prompt_logprobs: request.prompt_logprobs.map(|k| {
				(
					k,
					PromptLogprobs {
						first: request.prompt_logprobs_from.min(last),
						..Default::default()
					},
				)
			}),
			max_tokens: request.max_tokens,
			stop: request.stop.clone(),
			stop_token_ids: request.stop_token_ids.clone(),
			ignore_eos: request.ignore_eos,
			min_tokens: request.min_tokens,
			held_text: 0,
			constraint: match &request.response_format {
				ResponseFormat::Text => None,
				ResponseFormat::Json(grammar) => {
					Some(Constraint::Json(grammar.clone(), JsonState::new(grammar)))
				}
				ResponseFormat::Lazy(lazy) => {
					Some(Constraint::Lazy(lazy.clone(), LazyState::new()))
				}
				ResponseFormat::Regex(grammar) => {
					Some(Constraint::Regex(grammar.clone(), grammar.start()))
				}
				ResponseFormat::Grammar(grammar) => {
					Some(Constraint::Grammar(grammar.clone(), grammar.start(), MAX_REQUEST_WORK))
				}
			},
			skip_special_tokens: request.skip_special_tokens,
			include_stop: request.include_stop_str_in_output,
			text: String::new(),
			// A prompt scored only is finished once its log-probabilities are in.
			finish_reason: (request.max_tokens == 0).then_some(FinishReason::Length),
			cached_tokens: None,
		})
	}

	/// Records that `reused` prompt tokens came from the prefix cache when the request was
	/// scheduled: the first time only (after a preemption its own blocks may come back).
	pub fn record_cached(&mut self, reused: usize) {
		self.cached_tokens.get_or_insert(reused);
	}

	/// Whether the request is finished.
	pub fn is_finished(&self) -> bool {
		self.finish_reason.is_some()
	}

	/// The generated tokens so far from the `from`th on, with their scores.
	pub fn scores_from(&self, from: usize) -> TokenScores {
		TokenScores::of(&self.tokens, &self.logprobs, &self.top_logprobs, from)
	}

	/// Whether the logits of prompt positions are still needed (for the prompt's
	/// log-probabilities).
	pub fn wants_prompt_logits(&self) -> bool {
		self.prompt_logits_from().is_some()
	}

	/// The first prompt position whose logits are still needed (for the prompt's
	/// log-probabilities), if any is.
	pub fn prompt_logits_from(&self) -> Option<usize> {
		let (_, p) = self.prompt_logprobs.as_ref()?;
		let next = p.first + p.logprobs.len();
		(next + 1 < self.prompt_tokens.len()).then_some(next)
	}

	/// Records the prompt's log-probabilities from `rows`, the logits of positions `start..` of
	/// the sequence (each predicting the token after it). Positions before the first wanted,
	/// recorded already (a prompt computed again after a preemption) and past the prompt are
	/// skipped.
	pub fn record_prompt(&mut self, start: usize, rows: &[Vec<f32>]) {
		let Some((k, recorded)) = self.prompt_logprobs.as_mut() else { return };
		for (position, row) in (start..).zip(rows) {
			let Some(&next) = self.prompt_tokens.get(position + 1) else { break };
			if position != recorded.first + recorded.logprobs.len() {
				continue;
			}
			let (logprob, rank) = match row.get(next as usize) {
				Some(&logit) => {
					let above = row.iter().filter(|&&l| l > logit).count();
					(logprob_of(row, next as usize), above + 1)
				}
				None => (f32::NEG_INFINITY, row.len() + 1),
			};
			recorded.logprobs.push(logprob);
			recorded.ranks.push(u32::try_from(rank).unwrap_or(u32::MAX));
			recorded.top_logprobs.push(top_logprobs(row, *k));
		}
	}

	/// Samples the next token from `logits` (the last position's) and records it; returns it.
	/// Generation ends at the end-of-sequence token, a stop sequence or `max_tokens`.
	pub fn advance(&mut self, logits: &[f32], tokenizer: &Tokenizer) -> Result<u32> {
		let history = History { prompt: &self.prompt_tokens, output: &self.tokens };
		// Until `min_tokens`, nothing that would end the output; in JSON mode, only the tokens
		// that keep it on the grammar, and the end once the document is whole.
		let held = self.tokens.len() < self.min_tokens;
		let (eos, stop_token_ids) = (tokenizer.eos, &self.stop_token_ids);
		let fits =
			self.constraint.as_mut().map(|c| c.allowed_tokens(tokenizer, eos)).transpose()?;
		// A whole document may also end at a stop token (a model without an end-of-sequence
		// token, say).
		let whole = self.constraint.as_ref().is_some_and(Constraint::can_end);
		let stops_may_end = whole && !stop_token_ids.is_empty();
		if !stops_may_end && fits.as_ref().is_some_and(|fits| !fits.contains(&true)) {
			let held_to = self.constraint.as_ref().map(Constraint::describe).unwrap_or_default();
			return Err(Error::Request(format!(
				"no token continues {held_to} after {:?}{}",
				tokenizer.decode(&self.tokens)?,
				if eos.is_none() { "; the model has no end-of-sequence token" } else { "" }
			)));
		}
		// The tokens that may come next, as one mask: the grammar's, a stop token (text or
		// not) only once the document is whole, and nothing that ends the output until
		// `min_tokens`.
		let allowed = (held || fits.is_some()).then(|| {
			let mut allowed = match fits {
				Some(mut fits) => {
					fits.resize(logits.len(), false);
					for &t in stop_token_ids {
						if let Some(slot) = fits.get_mut(t as usize) {
							*slot = whole;
						}
					}
					fits
				}
				None => vec![true; logits.len()],
			};
			if held {
				for &t in eos.iter().chain(stop_token_ids) {
					if let Some(slot) = allowed.get_mut(t as usize) {
						*slot = false;
					}
				}
			}
			allowed
		});
		let sampled = self.sampler.sample(logits, history, allowed.as_deref())?;
		if self.sampler.wants_top_logprobs() {
			self.top_logprobs.push(self.sampler.top_logprobs(logits));
		}
		self.record(sampled, tokenizer)
	}

	/// The kernels' sampling of the next token, when they can sample it where the logits are
	/// (see [`Sampler::kernel_draw`]); the token they pick goes to [`Progress::record`].
	/// The first token after a prompt whose log-probabilities were asked for is always sampled
	/// on the host, from the last prompt row's logits, wherever the prompt's chunks ended (so
	/// the token does not depend on what shared the batch).
	pub fn kernel_draw(&mut self) -> Option<(KernelSampling, f32)> {
		if self.prompt_logprobs.is_some() && self.tokens.is_empty() {
			return None;
		}
		// The kernels' sampler takes no mask.
		if self.constraint.is_some() || self.tokens.len() < self.min_tokens {
			return None;
		}
		self.sampler.kernel_draw()
	}

	/// Records `sampled` as the next token (chosen by [`Progress::advance`], or by the kernels'
	/// sampler from [`Progress::kernel_draw`]); returns it.
	pub fn record(&mut self, sampled: Sampled, tokenizer: &Tokenizer) -> Result<u32> {
		if sampled.logprob.is_nan() {
			// The kernels' sampler orders a NaN above every number: NaN logits come out here.
			return Err(Error::Batch("the model produced no usable logits".into()));
		}
		self.tokens.push(sampled.token);
		self.logprobs.push(sampled.logprob);
		let ends =
			Some(sampled.token) == tokenizer.eos || self.stop_token_ids.contains(&sampled.token);
		if let Some(constraint) = self.constraint.as_mut().filter(|_| !ends) {
			if !constraint.advance(sampled.token, tokenizer) {
				return Err(Error::Batch(format!(
					"token {} does not continue {}",
					sampled.token,
					constraint.describe()
				)));
			}
		}
		if self.tokens.len() < self.min_tokens {
			// Nothing ends the output yet; stop sequences in this text will not count.
			if !self.stop.is_empty() {
				// Without a split character's first bytes, which decode to U+FFFD for now.
				let text = self.decode(tokenizer, &self.tokens)?;
				self.held_text = text.trim_end_matches('\u{FFFD}').len();
			}
		} else if Some(sampled.token) == tokenizer.eos && !self.ignore_eos {
			self.finish_reason = Some(FinishReason::Eos);
			if self.include_stop {
				// Its text kept (none when special tokens are left out), stop sequences are
				// looked for in it too.
				self.text = self.decode(tokenizer, &self.tokens)?;
				self.cut_at_stop_sequence();
			}
		} else if self.stop_token_ids.contains(&sampled.token) {
			self.text = self.decode(tokenizer, self.text_tokens())?;
			self.finish_reason = Some(FinishReason::Stop);
			// (The stop token's text, when kept, may hold a stop sequence.)
			self.cut_at_stop_sequence();
		} else if !self.stop.is_empty() {
			// The output is decoded at each step only when stop sequences must be looked for:
			// those that end past the text held by `min_tokens`.
			self.text = self.decode(tokenizer, &self.tokens)?;
			self.cut_at_stop_sequence();
		}
		if self.finish_reason.is_none() && self.tokens.len() >= self.max_tokens {
			self.finish_reason = Some(FinishReason::Length);
		}
		Ok(sampled.token)
	}

	/// Ends the output at the first stop sequence to be whole in its text, if any (past the
	/// text held by `min_tokens`): the text is cut before it, or after it with
	/// `include_stop_str_in_output`. The first to be whole is the one that ends first (of two
	/// ending together, the one that begins first), whatever the tokens the text came in.
	fn cut_at_stop_sequence(&mut self) {
		let (text, held) = (&self.text, self.held_text);
		let found = |stop: &String| {
			// (Never past the text, whatever the held text decoded to.)
			let mut from = (held + 1).saturating_sub(stop.len()).min(text.len());
			while !text.is_char_boundary(from) {
				from += 1;
			}
			let at = from + text.get(from..)?.find(stop.as_str())?;
			Some((at + stop.len(), at))
		};
		if let Some((end, at)) = self.stop.iter().filter_map(found).min() {
			self.text.truncate(if self.include_stop { end } else { at });
			self.finish_reason = Some(FinishReason::Stop);
		}
	}

	/// The tokens whose text is the output's once a token has ended it: all of them with
	/// `include_stop_str_in_output`, else all but that last one.
	fn text_tokens(&self) -> &[u32] {
		match self.include_stop {
			true => &self.tokens,
			false => &self.tokens[..self.tokens.len().saturating_sub(1)],
		}
	}

	/// The text of `tokens` as the output's (special tokens left out if the request says so).
	fn decode(&self, tokenizer: &Tokenizer, tokens: &[u32]) -> Result<String> {
		tokenizer.decode_output(tokens, self.skip_special_tokens)
	}

	/// The finished generation (as it stands, if it is not finished).
	pub fn finish(mut self, tokenizer: &Tokenizer) -> Result<Generation> {
		let finish_reason = self.finish_reason.unwrap_or(FinishReason::Length);
		let text = match finish_reason {
			FinishReason::Stop => std::mem::take(&mut self.text),
			FinishReason::Eos if self.include_stop => std::mem::take(&mut self.text),
			FinishReason::Eos => self.decode(tokenizer, self.text_tokens())?,
			FinishReason::Length => self.decode(tokenizer, &self.tokens)?,
		};
		Ok(Generation {
			prompt_tokens: self.prompt_tokens,
			tokens: self.tokens,
			logprobs: self.logprobs,
			top_logprobs: self.top_logprobs,
			prompt_logprobs: self.prompt_logprobs.map(|(_, p)| p),
			text,
			finish_reason,
			cached_tokens: self.cached_tokens.unwrap_or(0),
		})
	}
}

/// Generates a completion of `request` with `model`, and `adapter` on top when given, alone
/// (the [`crate::engine::Engine`] serves many requests together).
pub fn generate(
	model: &Llama,
	tokenizer: &Tokenizer,
	adapter: Option<&LoraAdapter>,
	request: &GenerationRequest,
) -> Result<Generation> {
	let prompt_tokens = request.prompt.tokens(tokenizer, model.config.vocab_size)?;
	validate(&prompt_tokens, request, model.config.context_length)?;
	let mut cache = KvCache::new(model, prompt_tokens.len() + request.max_tokens)?;
	let mut progress = Progress::new(request, prompt_tokens.clone())?;
	// The prompt's every position when its log-probabilities are asked for.
	let rows =
		model.forward(&prompt_tokens, &mut cache, adapter, progress.wants_prompt_logits())?;
	let rows: Vec<Vec<f32>> = rows.to_vec2()?;
	progress.record_prompt(0, &rows);
	if progress.is_finished() {
		// The prompt scored only.
		return progress.finish(tokenizer);
	}
	let last = rows.last().ok_or_else(|| Error::Batch("the model gave no logits".into()))?;
	let mut next_input = vec![progress.advance(last, tokenizer)?];
	while !progress.is_finished() {
		let logits = model.forward(&next_input, &mut cache, adapter, false)?;
		let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
		next_input = vec![progress.advance(&logits, tokenizer)?];
	}
	progress.finish(tokenizer)
}

/// [`generate`] on the decoder composed of kernel calls ([`KernelLlama`]), on the CPU
/// references or on the GPU: the same request (sampling, penalties, stops, limits); the
/// adapter goes into the backend's adapter pool. Tokens are sampled where the logits are (only
/// the token and its log-probability come back), except with a repetition penalty, where the
/// logits come back for the host's sampler.
pub fn generate_with_kernels<B: Backend>(
	model: &KernelLlama<B>,
	tokenizer: &Tokenizer,
	adapter: Option<&LoraAdapter>,
	request: &GenerationRequest,
) -> Result<Generation> {
	let prompt_tokens = request.prompt.tokens(tokenizer, model.config.vocab_size)?;
	let limit = model.config.context_length.min(model.max_positions());
	validate(&prompt_tokens, request, limit)?;
	let block_size = KvCacheConfig::DEFAULT_BLOCK_SIZE;
	let blocks = (prompt_tokens.len() + request.max_tokens).div_ceil(block_size);
	let mut cache = model.new_cache(blocks, block_size)?;
	let table: Vec<u32> = (0..blocks as u32).collect();
	let (pool, resident) = match adapter {
		Some(adapter) => {
			let mut pool = model.pool_for(&[adapter])?;
			let resident = model.upload_adapter(&mut pool, adapter)?;
			(Some(pool), Some(resident))
		}
		None => (None, None),
	};
	let mut progress = Progress::new(request, prompt_tokens.clone())?;
	let with = pool.as_ref().zip(resident.as_ref());
	// With the prompt's log-probabilities, every position's logits come to the host, and the
	// first token is sampled there (as the engine does).
	let (mut logits, mut on_host) = match progress.wants_prompt_logits() {
		true => {
			let mut rows = model.prefill_rows(&mut cache, &prompt_tokens, 0, &table, with)?;
			progress.record_prompt(0, &rows);
			let last = rows.pop().ok_or_else(|| Error::Batch("the model gave no logits".into()))?;
			(model.backend().floats(&last)?, Some(last))
		}
		false => (model.prefill(&mut cache, &prompt_tokens, 0, &table, with)?, None),
	};
	if progress.is_finished() {
		// The prompt scored only.
		return progress.finish(tokenizer);
	}
	let mut position = prompt_tokens.len();
	loop {
		let token = match on_host.take() {
			Some(row) => progress.advance(&row, tokenizer)?,
			None => match progress.kernel_draw() {
				Some((params, u)) => {
					progress.record(model.sample(&logits, &[params], &[u])?[0].into(), tokenizer)?
				}
				None => progress.advance(&model.backend().read(&logits)?, tokenizer)?,
			},
		};
		if progress.is_finished() {
			break;
		}
		let step = DecodeInput { token, position, table: &table, adapter: resident.as_ref() };
		logits = model.decode(&mut cache, &[step], pool.as_ref())?;
		position += 1;
	}
	progress.finish(tokenizer)
}
