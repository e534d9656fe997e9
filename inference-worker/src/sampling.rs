//! Choosing the next token: greedy, or sampled with temperature, min-p, top-k and top-p, after the
//! penalties, a bias on chosen tokens and a mask of the tokens allowed, from a seeded generator
//! so that a request with a seed is reproducible.

use std::collections::HashMap;

use openledger_kernels::sampling as kernel;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};

/// How a request samples.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
	/// 0 for greedy decoding; otherwise logits are divided by it before sampling.
	pub temperature: f32,
	/// Keep only the `k` most likely tokens (0 for all).
	pub top_k: usize,
	/// Keep the smallest set of most likely tokens whose probability reaches `p` (1 for all).
	pub top_p: f32,
	/// Keep only tokens at least this many times as likely as the most likely one (vLLM's
	/// `min_p`, applied before top-k and top-p; 0 for all).
	pub min_p: f32,
	/// CTRL-style penalty on tokens already in the prompt or the output (1 for none).
	pub repetition_penalty: f32,
	/// OpenAI's presence penalty: subtracted once from the logit of every token already in
	/// the output (0 for none; -2 to 2).
	pub presence_penalty: f32,
	/// OpenAI's frequency penalty: subtracted from a token's logit once per time it is already
	/// in the output (0 for none; -2 to 2).
	pub frequency_penalty: f32,
	/// OpenAI's `logit_bias`: added to these tokens' logits (-100 to 100: -100 all but bans a
	/// token, 100 all but forces it).
	pub logit_bias: Vec<(u32, f32)>,
	/// vLLM's `allowed_token_ids`: only these tokens may be picked (all when empty).
	pub allowed_token_ids: Vec<u32>,
	/// vLLM's `bad_words`, as token sequences: the last token of each is never picked right
	/// after the rest of it (a sequence of one token: never picked), looked for at the end of
	/// the output.
	pub bad_words: Vec<Vec<u32>>,
	/// Seed of the sampler's generator.
	pub seed: u64,
	/// How many of the most likely tokens to report with their log-probabilities at each step
	/// (vLLM's `logprobs`; 0 for none, at most [`MAX_TOP_LOGPROBS`]). The sampled token's own
	/// log-probability is always reported.
	pub top_logprobs: usize,
}

/// The most alternatives [`SamplingParams::top_logprobs`] may ask for (vLLM's default limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The largest bias [`SamplingParams::logit_bias`] may add or take away (OpenAI's).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

impl Default for SamplingParams {
	fn default() -> Self {
		Self {
			temperature: 0.0,
			top_k: 0,
			top_p: 1.0,
			min_p: 0.0,
			repetition_penalty: 1.0,
			presence_penalty: 0.0,
			frequency_penalty: 0.0,
			logit_bias: Vec::new(),
			allowed_token_ids: Vec::new(),
			bad_words: Vec::new(),
			seed: 0,
			top_logprobs: 0,
		}
	}
}

impl SamplingParams {
	/// Rejects values that make no sense.
	pub fn validate(&self) -> Result<()> {
		if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
			return Err(Error::Request(format!("temperature {} is not >= 0", self.temperature)));
		}
		if !(self.top_p > 0.0 && self.top_p <= 1.0) {
			return Err(Error::Request(format!("top_p {} is not in (0, 1]", self.top_p)));
		}
		if !(0.0..=1.0).contains(&self.min_p) {
			return Err(Error::Request(format!("min_p {} is not in [0, 1]", self.min_p)));
		}
		if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
			return Err(Error::Request(format!(
				"repetition_penalty {} is not > 0",
				self.repetition_penalty
			)));
		}
		for (name, value) in [
			("presence_penalty", self.presence_penalty),
			("frequency_penalty", self.frequency_penalty),
		] {
			if !(-2.0..=2.0).contains(&value) {
				return Err(Error::Request(format!("{name} {value} is not in [-2, 2]")));
			}
		}
		if let Some((token, bias)) =
			self.logit_bias.iter().find(|(_, b)| !(-MAX_LOGIT_BIAS..=MAX_LOGIT_BIAS).contains(b))
		{
			return Err(Error::Request(format!(
				"logit_bias {bias} for token {token} is not in [-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}]"
			)));
		}
		if self.bad_words.iter().any(Vec::is_empty) {
			return Err(Error::Request("bad_words: a word of no tokens".into()));
		}
		if self.top_logprobs > MAX_TOP_LOGPROBS {
			return Err(Error::Request(format!(
				"{} top log-probabilities asked for, at most {MAX_TOP_LOGPROBS}",
				self.top_logprobs
			)));
		}
		Ok(())
	}
}

/// A sampled token and its log-probability under the model (before any penalty, temperature
/// or truncation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
	/// The token id.
	pub token: u32,
	/// `log p(token)` from the model's logits.
	pub logprob: f32,
}

impl From<kernel::Sampled> for Sampled {
	fn from(s: kernel::Sampled) -> Self {
		Self { token: s.token, logprob: s.logprob }
	}
}

/// What a token is picked after: the tokens so far, for the penalties.
#[derive(Clone, Copy, Debug, Default)]
pub struct History<'a> {
	/// The prompt (the repetition penalty counts it).
	pub prompt: &'a [u32],
	/// The output so far (every penalty counts it).
	pub output: &'a [u32],
}

/// Samples tokens for one request.
#[derive(Debug)]
pub struct Sampler {
	params: SamplingParams,
	rng: StdRng,
}

/// `max(logits)` and `ln Σ exp(logits - max)`: `log_softmax(logits)[t]` is
/// `logits[t] - max - ln_sum`.
fn softmax_norm(logits: &[f32]) -> (f32, f32) {
	let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
	let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
	(max, sum.ln() as f32)
}

/// `log_softmax(logits)[token]`, computed stably.
pub fn logprob_of(logits: &[f32], token: usize) -> f32 {
	let (max, ln_sum) = softmax_norm(logits);
	(logits[token] - max) - ln_sum
}

/// The `k` most likely tokens under `logits` with their log-probabilities, most likely first
/// (the lower id first on ties).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
	let k = k.min(logits.len());
	if k == 0 {
		return Vec::new();
	}
	let by_rank = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
	let mut order: Vec<usize> = (0..logits.len()).collect();
	order.select_nth_unstable_by(k - 1, by_rank);
	order.truncate(k);
	order.sort_unstable_by(by_rank);
	let (max, ln_sum) = softmax_norm(logits);
	order.into_iter().map(|t| (t as u32, (logits[t] - max) - ln_sum)).collect()
}

impl Sampler {
	/// A sampler for `params` (validated).
	pub fn new(params: SamplingParams) -> Result<Self> {
		params.validate()?;
		let rng = StdRng::seed_from_u64(params.seed);
		Ok(Self { params, rng })
	}

	/// Whether [`Sampler::sample`] changes the model's logits before it picks (a penalty or bad
	/// words, which need the tokens so far, a bias, or a list of allowed tokens).
	pub fn adjusts_logits(&self) -> bool {
		let p = &self.params;
		p.repetition_penalty != 1.0
			|| p.presence_penalty != 0.0
			|| p.frequency_penalty != 0.0
			|| !p.logit_bias.is_empty()
			|| !p.allowed_token_ids.is_empty()
			|| !p.bad_words.is_empty()
	}

	/// The kernels' sampling parameters and uniform draw for the next token, when the kernels'
	/// sampler (`openledger_kernels::sampling`, which runs where the logits are) can pick it:
	/// without penalties or bad words, which need the tokens so far, without a bias or a list
	/// of allowed tokens, and without top
	/// log-probabilities, which need the logits (see [`Sampler::top_logprobs`]). Draws from the request's
	/// seeded generator (one draw per sampled token, none for greedy), so a seeded request is
	/// reproducible on this path as on the host's; the two paths do not pick the same tokens
	/// from the same seed (they draw and visit the kept tokens differently).
	pub fn kernel_draw(&mut self) -> Option<(kernel::SamplingParams, f32)> {
		if self.adjusts_logits() || self.params.top_logprobs > 0 {
			return None;
		}
		let p = &self.params;
		let params = kernel::SamplingParams {
			temperature: p.temperature,
			top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
			top_p: p.top_p,
			min_p: p.min_p,
		};
		let uniform = if p.temperature == 0.0 { 0.0 } else { self.rng.random::<f32>() };
		Some((params, uniform))
	}

	/// Whether the request asks for the most likely tokens at each step.
	pub fn wants_top_logprobs(&self) -> bool {
		self.params.top_logprobs > 0
	}

	/// The most likely tokens under `logits` that the request asks to see (its
	/// [`SamplingParams::top_logprobs`]), with their log-probabilities.
	pub fn top_logprobs(&self, logits: &[f32]) -> Vec<(u32, f32)> {
		top_logprobs(logits, self.params.top_logprobs)
	}

	/// Picks the next token from `logits` (one row over the vocabulary), given the tokens so far
	/// for the penalties (the repetition penalty over the prompt and the output, then OpenAI's
	/// presence and frequency penalties over the output, as vLLM applies them), then the bias,
	/// among the request's allowed tokens less its bad words' and those that `allowed` says
	/// yes to (by id; all when `None`, none past its end); an error if none is left. The
	/// reported log-probability is the model's, before any of them.
	pub fn sample(
		&mut self,
		logits: &[f32],
		history: History<'_>,
		allowed: Option<&[bool]>,
	) -> Result<Sampled> {
		if logits.is_empty() || logits.iter().any(|l| l.is_nan()) {
			return Err(Error::Batch("the model produced no usable logits".into()));
		}
		let mut adjusted = logits.to_vec();
		let p = &self.params;
		if p.repetition_penalty != 1.0 {
			let penalty = p.repetition_penalty;
			let mut seen = vec![false; adjusted.len()];
			for &t in history.prompt.iter().chain(history.output) {
				if let Some(slot) = seen.get_mut(t as usize) {
					if !*slot {
						*slot = true;
						let l = &mut adjusted[t as usize];
						*l = if *l > 0.0 { *l / penalty } else { *l * penalty };
					}
				}
			}
		}
		if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
			let mut counts: HashMap<u32, u32> = HashMap::new();
			for &t in history.output {
				*counts.entry(t).or_default() += 1;
			}
			for (t, n) in counts {
				if let Some(l) = adjusted.get_mut(t as usize) {
					*l -= p.presence_penalty + p.frequency_penalty * n as f32;
				}
			}
		}
		for &(t, bias) in &p.logit_bias {
			if let Some(l) = adjusted.get_mut(t as usize) {
				*l += bias;
			}
		}
		if !p.allowed_token_ids.is_empty() {
			let mut only = vec![false; adjusted.len()];
			for &t in &p.allowed_token_ids {
				if let Some(slot) = only.get_mut(t as usize) {
					*slot = true;
				}
			}
			for (l, ok) in adjusted.iter_mut().zip(only) {
				if !ok {
					*l = f32::NEG_INFINITY;
				}
			}
		}
		for word in &p.bad_words {
			let Some((&last, before)) = word.split_last() else { continue };
			if history.output.ends_with(before) {
				if let Some(l) = adjusted.get_mut(last as usize) {
					*l = f32::NEG_INFINITY;
				}
			}
		}
		if let Some(allowed) = allowed {
			let allowed = allowed.iter().chain(std::iter::repeat(&false));
			for (l, &ok) in adjusted.iter_mut().zip(allowed) {
				if !ok {
					*l = f32::NEG_INFINITY;
				}
			}
		}
		if !adjusted.iter().any(|&l| l > f32::NEG_INFINITY) {
			return Err(Error::Request(
				"no token may come next (the response format, min_tokens, allowed_token_ids and \
				 bad_words leave none)"
					.into(),
			));
		}
		let token = if self.params.temperature == 0.0 {
			argmax(&adjusted)
		} else {
			self.sample_from(&adjusted)
		};
		Ok(Sampled { token: token as u32, logprob: logprob_of(logits, token) })
	}

	fn sample_from(&mut self, logits: &[f32]) -> usize {
		let t = self.params.temperature;
		// Masked tokens are never kept, even by the rounding of the last draw.
		let mut order: Vec<usize> =
			(0..logits.len()).filter(|&i| logits[i] > f32::NEG_INFINITY).collect();
		order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
		// min-p and top-k each keep a prefix of this order, so either may cut first.
		if self.params.top_k > 0 {
			order.truncate(self.params.top_k);
		}
		let max = logits[order[0]];
		let mut probs: Vec<f64> =
			order.iter().map(|&i| (((logits[i] - max) / t) as f64).exp()).collect();
		if self.params.min_p > 0.0 {
			// The weights relative to the most likely token's (1, so it is kept).
			let min_p = f64::from(self.params.min_p);
			let kept = probs.iter().take_while(|&&w| w >= min_p).count().max(1);
			probs.truncate(kept);
			order.truncate(kept);
		}
		let total: f64 = probs.iter().sum();
		probs.iter_mut().for_each(|p| *p /= total);
		if self.params.top_p < 1.0 {
			let mut cumulative = 0.0;
			let keep = probs
				.iter()
				.position(|p| {
					cumulative += p;
					cumulative >= self.params.top_p as f64
				})
				.map_or(probs.len(), |i| i + 1);
			probs.truncate(keep);
			order.truncate(keep);
			let total: f64 = probs.iter().sum();
			probs.iter_mut().for_each(|p| *p /= total);
		}
		let mut u: f64 = self.rng.random();
		for (i, p) in probs.iter().enumerate() {
			if u < *p {
				return order[i];
			}
			u -= p;
		}
		order[probs.len() - 1]
	}
}

/// The index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
	values
		.iter()
		.enumerate()
		.fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
		.0
}

#[cfg(test)]
mod tests {
	use super::*;

	fn sampler(params: SamplingParams) -> Sampler {
		Sampler::new(params).expect("valid parameters")
	}

	#[test]
	fn kernel_draws_only_without_a_repetition_penalty_and_follow_the_seed() {
		let penalised = SamplingParams { repetition_penalty: 1.2, ..Default::default() };
		assert!(sampler(penalised).kernel_draw().is_none());
		let biased = SamplingParams { logit_bias: vec![(3, 1.0)], ..Default::default() };
		assert!(sampler(biased).kernel_draw().is_none(), "the kernels take no bias");
		let (p, u) = sampler(SamplingParams::default()).kernel_draw().unwrap();
		assert_eq!((p.temperature, p.top_k, p.top_p, u), (0.0, 0, 1.0, 0.0));
		let params = SamplingParams {
			temperature: 0.7,
			top_k: 40,
			top_p: 0.9,
			seed: 7,
			..Default::default()
		};
		let draws = |seed: u64| {
			let mut s = sampler(SamplingParams { seed, ..params.clone() });
			(0..5).map(|_| s.kernel_draw().unwrap()).collect::<Vec<_>>()
		};
		let first = draws(7);
		assert_eq!(first, draws(7), "the same seed, the same draws");
		assert_ne!(first, draws(8));
		for (p, u) in &first {
			assert_eq!((p.temperature, p.top_k, p.top_p), (0.7, 40, 0.9));
			assert!((0.0..1.0).contains(u));
		}
	}

	#[test]
	fn top_logprobs_are_the_most_likely_tokens_in_order_and_need_the_logits() {
		let logits = [0.5, 3.0, -1.0, 3.0, 2.0, f32::NEG_INFINITY];
		let top = top_logprobs(&logits, 3);
		let tokens: Vec<u32> = top.iter().map(|&(t, _)| t).collect();
		assert_eq!(tokens, [1, 3, 4], "ties go to the lower id");
		for &(t, lp) in &top {
			assert!((lp - logprob_of(&logits, t as usize)).abs() < 1e-6);
		}
		let all = top_logprobs(&logits, 10);
		assert_eq!(all.len(), 6);
		let total: f32 = all.iter().map(|&(_, lp)| lp.exp()).sum();
		assert!((total - 1.0).abs() < 1e-5, "{total}");
		assert_eq!(all[5], (5, f32::NEG_INFINITY));
		assert!(top_logprobs(&logits, 0).is_empty());
		let asks = SamplingParams { top_logprobs: 2, ..Default::default() };
		assert!(sampler(asks.clone()).kernel_draw().is_none(), "the kernels give no logits");
		assert_eq!(sampler(asks).top_logprobs(&logits), top[..2]);
		let too_many = SamplingParams { top_logprobs: MAX_TOP_LOGPROBS + 1, ..Default::default() };
		assert!(Sampler::new(too_many).is_err());
	}

	#[test]
	fn greedy_picks_the_largest_logit_and_reports_its_logprob() {
		let mut s = sampler(SamplingParams::default());
		let out = s.sample(&[0.0, 2.0, 1.0], History::default(), None).unwrap();
		assert_eq!(out.token, 1);
		let expected = 2.0 - (1f32.exp() + 2f32.exp() + 1.0).ln() + 0.0;
		assert!((out.logprob - (expected)).abs() < 1e-6, "{} vs {expected}", out.logprob);
	}

	#[test]
	fn repetition_penalty_steers_greedy_away_from_seen_tokens() {
		let mut s = sampler(SamplingParams { repetition_penalty: 3.0, ..Default::default() });
		// Token 1 (3.0) would win, but it was seen: 3.0 / 3 = 1.0 < 2.0.
		let seen = History { prompt: &[1], output: &[1] };
		assert_eq!(s.sample(&[0.0, 3.0, 2.0], seen, None).unwrap().token, 2);
		// In the prompt alone is seen too.
		let in_prompt = History { prompt: &[1], output: &[] };
		assert_eq!(s.sample(&[0.0, 3.0, 2.0], in_prompt, None).unwrap().token, 2);
		// Negative logits are multiplied, pushing them further down.
		let seen = History { prompt: &[], output: &[0] };
		assert_eq!(s.sample(&[-1.0, -1.5, -3.0], seen, None).unwrap().token, 1);
	}

	#[test]
	fn presence_and_frequency_penalties_count_the_output_only() {
		let logits = [0.0, 3.0, 2.0];
		let twice = History { prompt: &[], output: &[1, 1] };
		// Frequency: 3.0 - 2 * 0.6 = 1.8 < 2.0.
		let mut s = sampler(SamplingParams { frequency_penalty: 0.6, ..Default::default() });
		assert_eq!(s.sample(&logits, twice, None).unwrap().token, 2);
		let once = History { prompt: &[], output: &[1] };
		assert_eq!(s.sample(&logits, once, None).unwrap().token, 1, "3.0 - 0.6 > 2.0");
		// Presence: once, however often: 3.0 - 1.1 < 2.0 whether seen once or twice.
		let mut s = sampler(SamplingParams { presence_penalty: 1.1, ..Default::default() });
		assert_eq!(s.sample(&logits, once, None).unwrap().token, 2);
		assert_eq!(s.sample(&logits, twice, None).unwrap().token, 2);
		let mut s = sampler(SamplingParams { presence_penalty: 0.9, ..Default::default() });
		assert_eq!(s.sample(&logits, twice, None).unwrap().token, 1, "3.0 - 0.9 > 2.0");
		// The prompt does not count; a negative penalty favours what was said.
		let in_prompt = History { prompt: &[1, 1, 1], output: &[] };
		let mut s = sampler(SamplingParams { frequency_penalty: 2.0, ..Default::default() });
		assert_eq!(s.sample(&logits, in_prompt, None).unwrap().token, 1);
		let mut s = sampler(SamplingParams { presence_penalty: -1.5, ..Default::default() });
		let said = History { prompt: &[], output: &[2] };
		let out = s.sample(&logits, said, None).unwrap();
		assert_eq!(out.token, 2, "2.0 + 1.5 > 3.0");
		// The reported log-probability is the model's own.
		assert!((out.logprob - logprob_of(&logits, 2)).abs() < 1e-6);
		assert!(sampler(SamplingParams { presence_penalty: 1.0, ..Default::default() })
			.kernel_draw()
			.is_none());
	}

	#[test]
	fn top_k_one_is_greedy_and_top_p_keeps_only_the_head() {
		let logits = [1.0, 4.0, 3.9, 0.5];
		for seed in 0..20 {
			let mut s =
				sampler(SamplingParams { temperature: 1.0, top_k: 1, seed, ..Default::default() });
			assert_eq!(s.sample(&logits, History::default(), None).unwrap().token, 1);
			let mut s = sampler(SamplingParams {
				temperature: 1.0,
				top_p: 0.5,
				seed,
				..Default::default()
			});
			assert_eq!(
				s.sample(&logits, History::default(), None).unwrap().token,
				1,
				"p(1) alone exceeds 0.5"
			);
		}
	}

	/// min_p keeps the tokens at least `min_p` times as likely as the most likely, on the host's
	/// path (penalties on) and on the kernels' (which the sampler hands the same parameters),
	/// and is applied before top-p.
	#[test]
	fn min_p_keeps_only_tokens_near_enough_the_most_likely() {
		let logits = [0.5f32, 0.3, 0.15, 0.05].map(f32::ln);
		let params = SamplingParams { temperature: 1.0, min_p: 0.35, ..Default::default() };
		// 0.3 / 0.5 = 0.6 is kept, 0.15 / 0.5 = 0.3 is not: 0.625 and 0.375 of the draws.
		let penalised = SamplingParams { repetition_penalty: 1.0001, ..params.clone() };
		let mut host = sampler(penalised);
		assert!(host.kernel_draw().is_none(), "the penalty keeps it on the host");
		let n = 8000;
		let mut counts = [0usize; 4];
		for _ in 0..n {
			counts[host.sample(&logits, History::default(), None).unwrap().token as usize] += 1;
		}
		assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
		assert!((counts[0] as f64 / n as f64 - 0.625).abs() < 0.02, "{counts:?}");
		let mut on_kernels = sampler(params.clone());
		let mut counts = [0usize; 4];
		for _ in 0..n {
			let (p, u) = on_kernels.kernel_draw().unwrap();
			assert_eq!(p.min_p, 0.35);
			counts[kernel::sample(&logits, 4, &[p], &[u]).unwrap()[0].token as usize] += 1;
		}
		assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
		assert!((counts[0] as f64 / n as f64 - 0.625).abs() < 0.02, "{counts:?}");
		// Before top-p: 0.6 of {0.5, 0.3} is reached by the first alone.
		let mut s = sampler(SamplingParams { top_p: 0.6, repetition_penalty: 1.0001, ..params });
		for _ in 0..200 {
			assert_eq!(s.sample(&logits, History::default(), None).unwrap().token, 0);
		}
		for bad in [-0.1, 1.5, f32::NAN] {
			assert!(Sampler::new(SamplingParams { min_p: bad, ..Default::default() }).is_err());
		}
	}

	#[test]
	fn sampling_follows_the_distribution_and_the_seed() {
		let logits = [0.0, (3f32).ln()]; // p = 0.25, 0.75
		let params = SamplingParams { temperature: 1.0, seed: 7, ..Default::default() };
		let mut s = sampler(params.clone());
		let draws: Vec<u32> =
			(0..4000).map(|_| s.sample(&logits, History::default(), None).unwrap().token).collect();
		let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / draws.len() as f64;
		assert!((ones - 0.75).abs() < 0.03, "{ones}");
		let mut again = sampler(params);
		let replay: Vec<u32> = (0..4000)
			.map(|_| again.sample(&logits, History::default(), None).unwrap().token)
			.collect();
		assert_eq!(draws, replay, "the same seed gives the same tokens");
	}

	#[test]
	fn bad_parameters_and_logits_are_rejected() {
		assert!(Sampler::new(SamplingParams { temperature: -1.0, ..Default::default() }).is_err());
		assert!(Sampler::new(SamplingParams { top_p: 0.0, ..Default::default() }).is_err());
		assert!(
			Sampler::new(SamplingParams { repetition_penalty: 0.0, ..Default::default() }).is_err()
		);
		let mut s = sampler(SamplingParams::default());
		assert!(s.sample(&[], History::default(), None).is_err());
		assert!(s.sample(&[f32::NAN, 1.0], History::default(), None).is_err());
		for bad in [-2.5, 2.5, f32::NAN] {
			let presence = SamplingParams { presence_penalty: bad, ..Default::default() };
			assert!(Sampler::new(presence).is_err());
			let frequency = SamplingParams { frequency_penalty: bad, ..Default::default() };
			assert!(Sampler::new(frequency).is_err());
		}
		for bad in [-100.5, 101.0, f32::NAN, f32::INFINITY] {
			let biased = SamplingParams { logit_bias: vec![(0, bad)], ..Default::default() };
			assert!(Sampler::new(biased).is_err(), "{bad}");
		}
	}

	#[test]
	fn a_bias_moves_the_pick_and_not_the_reported_logprob() {
		let logits = [0.0, 3.0, 2.0];
		let mut s = sampler(SamplingParams { logit_bias: vec![(2, 1.5)], ..Default::default() });
		let out = s.sample(&logits, History::default(), None).unwrap();
		assert_eq!(out.token, 2);
		assert!((out.logprob - logprob_of(&logits, 2)).abs() < 1e-6);
		// -100 keeps a token out however likely the model makes it; ids past the vocabulary are
		// left alone.
		let mut s = sampler(SamplingParams {
			logit_bias: vec![(1, -100.0), (7, 100.0)],
			temperature: 1.0,
			seed: 3,
			..Default::default()
		});
		let picks: Vec<u32> = (0..200)
			.map(|_| s.sample(&[0.0, 30.0, 29.0], History::default(), None).unwrap().token)
			.collect();
		assert!(picks.iter().all(|&t| t == 2), "{picks:?}");
	}

	#[test]
	fn only_allowed_tokens_are_picked_and_none_allowed_is_an_error() {
		let logits = [0.0, 3.0, 2.0, -1.0];
		let odd = [false, true, false, true];
		let even = [true, false, true, false];
		let mut s = sampler(SamplingParams::default());
		assert_eq!(s.sample(&logits, History::default(), Some(&even)).unwrap().token, 2);
		let mut s = sampler(SamplingParams { temperature: 2.0, seed: 9, ..Default::default() });
		for _ in 0..500 {
			let token = s.sample(&logits, History::default(), Some(&odd)).unwrap().token;
			assert!(odd[token as usize], "{token}");
		}
		// The reported log-probability is the model's, over every token.
		let out = s.sample(&logits, History::default(), Some(&even)).unwrap();
		assert!((out.logprob - logprob_of(&logits, out.token as usize)).abs() < 1e-6);
		assert!(matches!(
			s.sample(&logits, History::default(), Some(&[false; 4])),
			Err(Error::Request(_))
		));
		// A mask shorter than the logits allows none past its end.
		assert_eq!(s.sample(&logits, History::default(), Some(&[false, true])).unwrap().token, 1);
		// A token allowed but impossible under the model does not count as a choice.
		let impossible = [f32::NEG_INFINITY, 1.0];
		assert!(s.sample(&impossible, History::default(), Some(&even[..2])).is_err());
	}

	/// vLLM's `allowed_token_ids`: only those are picked, greedy or sampled, beside a mask
	/// too; ids past the vocabulary allow nothing.
	#[test]
	fn allowed_token_ids_are_the_only_picks() {
		let logits = [0.0, 3.0, 2.0, -1.0, 1.0];
		let only = |ids: Vec<u32>, temperature| SamplingParams {
			allowed_token_ids: ids,
			temperature,
			seed: 5,
			..Default::default()
		};
		let mut s = sampler(only(vec![0, 3, 4], 0.0));
		assert!(s.kernel_draw().is_none(), "the kernels' sampler takes no list");
		assert_eq!(s.sample(&logits, History::default(), None).unwrap().token, 4);
		let mut s = sampler(only(vec![0, 3], 3.0));
		let mut seen = [0; 5];
		for _ in 0..400 {
			seen[s.sample(&logits, History::default(), None).unwrap().token as usize] += 1;
		}
		assert_eq!((seen[1], seen[2], seen[4]), (0, 0, 0), "{seen:?}");
		assert!(seen[0] > 0 && seen[3] > 0, "{seen:?}");
		// The reported log-probability is the model's, over every token.
		let out = s.sample(&logits, History::default(), None).unwrap();
		assert!((out.logprob - logprob_of(&logits, out.token as usize)).abs() < 1e-6);
		// With a mask, what both allow; nothing left is an error.
		let mask = [true, true, true, false, false];
		assert_eq!(s.sample(&logits, History::default(), Some(&mask)).unwrap().token, 0);
		let mask = [false, true, true, true, false];
		let mut s = sampler(only(vec![0, 4], 0.0));
		let err = s.sample(&logits, History::default(), Some(&mask)).unwrap_err();
		assert!(err.to_string().contains("allowed_token_ids"), "{err}");
		let mut s = sampler(only(vec![9], 0.0));
		assert!(s.sample(&logits, History::default(), None).is_err());
	}

	/// vLLM's `bad_words`: a word's last token is kept out right after the rest of it, at the
	/// end of the output (not the prompt's); a word of one token always.
	#[test]
	fn bad_words_keep_their_last_token_out_after_the_rest() {
		let logits = [0.0, 1.0, 5.0, 4.0, 3.0];
		let mut s =
			sampler(SamplingParams { bad_words: vec![vec![1, 2], vec![3]], ..Default::default() });
		assert!(s.kernel_draw().is_none(), "the kernels' sampler does not know the output");
		let pick = |s: &mut Sampler, output: &[u32]| {
			s.sample(&logits, History { prompt: &[1], output }, None).unwrap().token
		};
		// Token 2 is bad only right after token 1; token 3 never.
		assert_eq!(pick(&mut s, &[]), 2, "the prompt's last token does not count");
		assert_eq!(pick(&mut s, &[1, 0]), 2);
		assert_eq!(pick(&mut s, &[0, 1]), 4);
		let mut s = sampler(SamplingParams {
			bad_words: vec![vec![0, 1, 2]],
			temperature: 1.5,
			seed: 1,
			..Default::default()
		});
		for _ in 0..300 {
			assert_ne!(pick(&mut s, &[4, 0, 1]), 2);
		}
		assert!((0..300).any(|_| pick(&mut s, &[4, 1]) == 2));
		let empty = SamplingParams { bad_words: vec![vec![]], ..Default::default() };
		assert!(Sampler::new(empty).is_err());
	}
}
