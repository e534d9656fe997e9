//! Generating a completion for one request: prefill the prompt, then decode token by token
//! until the end-of-sequence token, a stop sequence or the token limit.

use serde::Serialize;

use crate::{
	error::{Error, Result},
	lora::LoraAdapter,
	model::{KvCache, Llama},
	sampling::{Sampler, SamplingParams},
	tokenizer::Tokenizer,
};

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
	/// The prompt text (special tokens such as `<|im_start|>` are recognised).
	pub prompt: String,
	/// The most tokens to generate.
	pub max_tokens: usize,
	/// How to pick tokens.
	pub sampling: SamplingParams,
	/// Generation stops when the output contains one of these (it is cut before it).
	pub stop: Vec<String>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
	/// `max_tokens` were generated.
	Length,
	/// The model produced its end-of-sequence token.
	Eos,
	/// The output reached a stop sequence.
	Stop,
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
	/// The generated text, cut before a stop sequence.
	pub text: String,
	/// Why it ended.
	pub finish_reason: FinishReason,
}

/// Generates a completion of `request` with `model`, and `adapter` on top when given.
pub fn generate(
	model: &Llama,
	tokenizer: &Tokenizer,
	adapter: Option<&LoraAdapter>,
	request: &GenerationRequest,
) -> Result<Generation> {
	let prompt_tokens = tokenizer.encode(&request.prompt)?;
	if prompt_tokens.is_empty() {
		return Err(Error::Request("the prompt is empty".into()));
	}
	let context = model.config.context_length;
	if prompt_tokens.len() + request.max_tokens > context {
		return Err(Error::Request(format!(
			"{} prompt tokens plus {} new tokens exceed the model's context of {context}",
			prompt_tokens.len(),
			request.max_tokens
		)));
	}
	let mut sampler = Sampler::new(request.sampling.clone())?;
	let mut cache = KvCache::new(model, prompt_tokens.len() + request.max_tokens)?;
	let mut history = prompt_tokens.clone();
	let mut tokens = Vec::with_capacity(request.max_tokens);
	let mut logprobs = Vec::with_capacity(request.max_tokens);
	let mut finish_reason = FinishReason::Length;
	let mut text = String::new();
	let mut next_input = prompt_tokens.clone();
	while tokens.len() < request.max_tokens {
		let logits = model.forward(&next_input, &mut cache, adapter, false)?;
		let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
		let sampled = sampler.sample(&logits, &history)?;
		tokens.push(sampled.token);
		logprobs.push(sampled.logprob);
		history.push(sampled.token);
		if Some(sampled.token) == tokenizer.eos {
			finish_reason = FinishReason::Eos;
			break;
		}
		// The output is decoded at each step only when stop sequences must be looked for.
		if !request.stop.is_empty() {
			text = tokenizer.decode(&tokens)?;
			if let Some(cut) = request.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
				text.truncate(cut);
				finish_reason = FinishReason::Stop;
				break;
			}
		}
		next_input = vec![sampled.token];
	}
	match finish_reason {
		FinishReason::Stop => {}
		FinishReason::Eos => text = tokenizer.decode(&tokens[..tokens.len() - 1])?,
		FinishReason::Length => text = tokenizer.decode(&tokens)?,
	}
	Ok(Generation { prompt_tokens, tokens, logprobs, text, finish_reason })
}
