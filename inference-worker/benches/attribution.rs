//! Attribution's scoring on the real model (SmolLM2-135M-Instruct Q4_1 GGUF), in one run: the
//! requests that score an answer under each ablation of its sources, as the engine serves them
//! after the answer (its prompt cached), scored from the answer's first token
//! (`prompt_logprobs_from`: the prompt before it taken from the prefix cache where shared, run
//! without logits elsewhere) against the whole prompt scored (every position's logits, no
//! cached block reused: what the worker did before). Both give the same scores; the table
//! says how long each took and how many tokens each computed.
//!
//!     cargo bench --release -p openledger-inference-worker --bench attribution
//!
//! (`OPENLEDGER_BENCH_DRY_RUN=1`: two documents, one run.)

use std::{sync::Arc, time::Instant};

use candle_core::Device;
use openledger_inference_worker::{
	attribution::{
		answer_logprob, Ablations, Method, Source, SourcedPrompt, DEFAULT_ABLATIONS,
		DEFAULT_LASSO_PENALTY,
	},
	chat::Message,
	engine::{Engine, EngineConfig},
	generate::{GenerationRequest, Prompt},
	model::{Llama, WeightFormat},
	models,
	tokenizer::Tokenizer,
};

mod common;

const FACTS: [&str; 8] = [
	"The Eiffel Tower in Paris was finished in 1889 for the World's Fair and is 330 metres tall.",
	"Photosynthesis in plants turns light, water and carbon dioxide into glucose and oxygen.",
	"The Nile flows north through eleven countries before it reaches the Mediterranean Sea.",
	"Sourdough bread rises with wild yeast and lactic acid bacteria instead of baker's yeast.",
	"Jupiter, the largest planet of the Solar System, has at least 95 known moons.",
	"The Rust programming language checks ownership and borrowing when a program compiles.",
	"Mount Everest, on the border of Nepal and China, rises 8,849 metres above sea level.",
	"Honey bees communicate where flowers are with a waggle dance inside the hive.",
];

/// Serves the answer's prompt (so it is cached, as after a chat), then `requests`; returns
/// their scores, the seconds they took and the tokens they computed.
fn score(
	model: &Arc<Llama>,
	tokenizer: &Arc<Tokenizer>,
	prompt: &[u32],
	requests: &[GenerationRequest],
	answer: usize,
) -> (Vec<f64>, f64, u64) {
	let mut engine =
		Engine::new(model.clone(), tokenizer.clone(), EngineConfig::default()).unwrap();
	let chat = GenerationRequest {
		prompt: Prompt::Tokens(prompt.to_vec()),
		max_tokens: 1,
		..GenerationRequest::default()
	};
	engine.submit(&chat, None).unwrap();
	engine.run_to_completion();
	let before = engine.stats().tokens_computed;
	let start = Instant::now();
	let ids: Vec<u64> = requests.iter().map(|r| engine.submit(r, None).unwrap()).collect();
	let mut done: Vec<_> = engine.run_to_completion();
	let seconds = start.elapsed().as_secs_f64();
	done.sort_by_key(|c| ids.iter().position(|&id| id == c.id));
	let scores =
		done.into_iter().map(|c| answer_logprob(&c.result.unwrap(), answer).unwrap()).collect();
	(scores, seconds, engine.stats().tokens_computed - before)
}

fn main() {
	let dry = common::dry_run();
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored).unwrap();
	let (model, tokenizer) = (Arc::new(model), Arc::new(tokenizer));
	let template = tokenizer.chat_template().unwrap();
	let documents = if dry { 2 } else { FACTS.len() };
	let sources: Vec<Source> = FACTS[..documents]
		.iter()
		.enumerate()
		.map(|(i, text)| Source {
			id: Some(format!("record-{i}")),
			title: None,
			text: text.to_string(),
		})
		.collect();
	let messages =
		[Message::new("user", "How tall is the Eiffel Tower, and when was it finished?")];
	let prompt = SourcedPrompt::new(&template, &tokenizer, &messages, &[], &sources).unwrap();
	let all = vec![true; documents];
	let answer = tokenizer
		.encode_continuation("The Eiffel Tower is 330 metres tall and was finished in 1889.")
		.unwrap();
	let threads = rayon::current_num_threads();
	println!(
		"| method | ablations | prompt tokens | answer tokens | whole prompt scored: s (tokens) \
		 | answer scored: s (tokens) | speed-up |"
	);
	println!("|---|---|---|---|---|---|---|");
	let context_cite = if dry { 4 } else { DEFAULT_ABLATIONS };
	let methods = [
		("leave-one-out".to_string(), Method::LeaveOneOut),
		(
			format!("ContextCite ({context_cite} halves)"),
			Method::ContextCite {
				ablations: context_cite,
				seed: 0,
				penalty: DEFAULT_LASSO_PENALTY,
			},
		),
	];
	for (name, method) in methods {
		let ablations = Ablations::new(method, documents).unwrap();
		let fast = ablations.requests(&prompt, &answer);
		let whole: Vec<GenerationRequest> = fast
			.iter()
			.map(|r| GenerationRequest { prompt_logprobs_from: 0, ..r.clone() })
			.collect();
		let runs = if dry { 1 } else { 3 };
		let mut best = (f64::MAX, f64::MAX);
		let (mut tokens, mut scores) = ((0, 0), (Vec::new(), Vec::new()));
		for _ in 0..runs {
			let (s_whole, t_whole, n_whole) =
				score(&model, &tokenizer, &prompt.tokens(&all), &whole, answer.len());
			let (s_fast, t_fast, n_fast) =
				score(&model, &tokenizer, &prompt.tokens(&all), &fast, answer.len());
			best = (best.0.min(t_whole), best.1.min(t_fast));
			tokens = (n_whole, n_fast);
			scores = (s_whole, s_fast);
		}
		let worst = scores.0.iter().zip(&scores.1).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
		assert!(worst < 1e-3, "{name}: the scores differ by {worst}");
		println!(
			"| {name} | {} | {} | {} | {:.2} ({}) | {:.2} ({}) | {:.2}x |",
			ablations.masks().len(),
			prompt.tokens(&all).len(),
			answer.len(),
			best.0,
			tokens.0,
			best.1,
			tokens.1,
			best.0 / best.1
		);
	}
	println!(
		"\n{threads} threads; best of {} runs each; the answer's log-probabilities under every \
		 ablation agree within 1e-3 between the two.",
		if dry { 1 } else { 3 }
	);
}
