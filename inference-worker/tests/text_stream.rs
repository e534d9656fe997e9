//! Streamed text on the real model's tokenizer: whatever the tokens (characters split across
//! byte tokens, special tokens, stop sequences anywhere), the pieces released add up to exactly
//! the final text of the generation, and each is released as soon as it can no longer change.

use openledger_inference_worker::{
	generate::{FinishReason, GenerationRequest, Progress},
	sampling::{Sampled, SamplingParams},
	text_stream::TextStream,
	tokenizer::Tokenizer,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

mod common;

/// Feeds `tokens` one by one to a generation with `stop` and to a stream; returns the pieces
/// released after each token, what [`TextStream::finish`] adds, and the final text.
fn stream(
	tokenizer: &Tokenizer,
	tokens: &[u32],
	stop: &[String],
) -> (Vec<String>, String, String, FinishReason) {
	let request = GenerationRequest { stop: stop.to_vec(), ..Default::default() };
	stream_request(tokenizer, tokens, request)
}

/// [`stream`] for `request` (its prompt and length set here).
fn stream_request(
	tokenizer: &Tokenizer,
	tokens: &[u32],
	request: GenerationRequest,
) -> (Vec<String>, String, String, FinishReason) {
	let request = GenerationRequest {
		prompt: "".into(),
		max_tokens: tokens.len() + 1,
		sampling: SamplingParams::default(),
		..request
	};
	let mut progress = Progress::new(&request, vec![1]).unwrap();
	let mut text = TextStream::new(&request, tokenizer.eos);
	let mut pieces = Vec::new();
	for &token in tokens {
		progress.record(Sampled { token, logprob: 0.0 }, tokenizer).unwrap();
		if progress.is_finished() {
			break;
		}
		pieces.push(text.advance(&progress.tokens, tokenizer).unwrap());
		assert_eq!(text.sent(), pieces.concat());
	}
	let generation = progress.finish(tokenizer).unwrap();
	let rest = text.finish(&generation).unwrap_or_else(|| {
		panic!("sent {:?}, final {:?} ({tokens:?})", text.sent(), generation.text)
	});
	(pieces, rest.to_string(), generation.text.clone(), generation.finish_reason)
}

/// Whatever the tokens, stop sequences and stop tokens, kept in the text or not
/// (`include_stop_str_in_output`), with special tokens left out or not.
#[test]
fn pieces_add_up_to_the_final_text_for_any_tokens_and_stops() {
	let (_, tokenizer) = common::load(openledger_inference_worker::model::WeightFormat::AsStored);
	let vocab = tokenizer.vocab_size() as u32;
	let mut rng = StdRng::seed_from_u64(5);
	let words = "naïve café 東京 données 🚀🦀 ünïcödé — 数据集 αβγ".to_string();
	let spelled = tokenizer.encode(&words).unwrap();
	let mut stopped = 0;
	for case in 0..400 {
		// Random tokens (special and byte tokens included), or runs of a text full of
		// multi-byte characters.
		let tokens: Vec<u32> = if case % 2 == 0 {
			(0..rng.random_range(1..40)).map(|_| rng.random_range(0..vocab)).collect()
		} else {
			let start = rng.random_range(0..spelled.len());
			spelled[start..].iter().take(rng.random_range(1..30)).copied().collect()
		};
		let text = tokenizer.decode(&tokens).unwrap();
		// A stop sequence cut from the text (it stops the generation), or one not in it.
		let chars: Vec<char> = text.chars().collect();
		let stop: Vec<String> = match case % 3 {
			0 if !chars.is_empty() => {
				let at = rng.random_range(0..chars.len());
				let len = rng.random_range(1..=6).min(chars.len() - at);
				vec![chars[at..at + len].iter().collect(), "\u{0}never".into()]
			}
			1 => vec!["zzzzzzzzq".into()],
			_ => vec![],
		};
		// A stop token among the tokens (any of them: special, or the end-of-sequence token),
		// now and then.
		let stop_token_ids = match case % 5 {
			0 | 1 => vec![tokens[rng.random_range(0..tokens.len())]],
			_ => vec![],
		};
		let request = GenerationRequest {
			stop: stop.clone(),
			stop_token_ids,
			include_stop_str_in_output: case % 4 < 2,
			skip_special_tokens: case % 7 != 0,
			..Default::default()
		};
		let (pieces, rest, text, reason) = stream_request(&tokenizer, &tokens, request.clone());
		assert_eq!(pieces.concat() + &rest, text, "case {case}: {tokens:?} {request:?}");
		stopped += usize::from(reason == FinishReason::Stop);
	}
	assert!(stopped > 100, "only {stopped} cases stopped at a stop sequence or token");
}

/// A stop sequence or token is cut from the text, or kept with `include_stop_str_in_output`
/// (the text then ends right after the stop sequence), streamed and whole.
#[test]
fn what_ends_the_text_is_cut_or_kept() {
	let (_, tokenizer) = common::load(openledger_inference_worker::model::WeightFormat::AsStored);
	let tokens = tokenizer.encode("Hello world, and END then more").unwrap();
	let ask = |stop: &[&str], stop_token_ids: Vec<u32>, keep: bool| {
		let request = GenerationRequest {
			stop: stop.iter().map(|s| s.to_string()).collect(),
			stop_token_ids,
			include_stop_str_in_output: keep,
			..Default::default()
		};
		let (pieces, rest, text, reason) = stream_request(&tokenizer, &tokens, request);
		assert_eq!(pieces.concat() + &rest, text);
		(text, reason)
	};
	let stopped = |text: &str| (text.to_string(), FinishReason::Stop);
	assert_eq!(ask(&["EN"], vec![], false), stopped("Hello world, and "));
	assert_eq!(ask(&["EN"], vec![], true), stopped("Hello world, and EN"));
	// The first stop sequence to be whole counts (the first to end, of two ending together the
	// first to begin), however the text came in tokens: " world" is one token, and "or" ends
	// inside it before "world" does.
	assert_eq!(tokenizer.encode_continuation(" world").unwrap().len(), 1);
	assert_eq!(ask(&["world", "or"], vec![], true), stopped("Hello wor"));
	assert_eq!(ask(&["world", "or"], vec![], false), stopped("Hello w"));
	assert_eq!(ask(&["ld", "world"], vec![], false), stopped("Hello "));
	assert_eq!(ask(&["and END", "ld"], vec![], true), stopped("Hello world"));
	assert_eq!(ask(&["and END", "and E"], vec![], true), stopped("Hello world, and E"));
	assert_eq!(ask(&["D then", "END"], vec![], true), stopped("Hello world, and END"));
	// A kept stop token's text may hold a stop sequence: the text ends after that.
	let world = tokenizer.encode_continuation(" world").unwrap()[0];
	assert_eq!(ask(&["wo"], vec![world], true), stopped("Hello wo"));
	assert_eq!(ask(&[], vec![world], true), stopped("Hello world"));
	// Kept in the text, a stop sequence cannot cut what was released: nothing is held back.
	let unstopped = tokenizer.encode("Hello world, and EN").unwrap();
	let request = GenerationRequest {
		stop: vec!["END".into()],
		include_stop_str_in_output: true,
		..Default::default()
	};
	let (pieces, rest, text, _) = stream_request(&tokenizer, &unstopped, request);
	assert_eq!((pieces.concat(), rest.as_str()), (text, ""));
	// A stop token: the text of the tokens before it, or with it.
	let at = tokens.iter().position(|&t| tokenizer.decode(&[t]).unwrap() == ",").unwrap();
	assert_eq!(ask(&[], vec![tokens[at]], false), stopped("Hello world"));
	assert_eq!(ask(&[], vec![tokens[at]], true), stopped("Hello world,"));
}

#[test]
fn a_split_character_waits_for_its_last_byte_and_a_stop_holds_back_no_more_than_it_must() {
	let (_, tokenizer) = common::load(openledger_inference_worker::model::WeightFormat::AsStored);
	// Find a character that takes several tokens.
	let (character, tokens) = ["🦀", "🚀", "数", "東", "ü"]
		.iter()
		.map(|c| (c.to_string(), tokenizer.encode(&format!("a{c}")).unwrap()))
		.find(|(_, t)| t.len() > 2)
		.expect("every test character is one token");
	let (pieces, rest, text, _) = stream(&tokenizer, &tokens, &[]);
	assert_eq!(text, format!("a{character}"));
	assert_eq!(pieces[0], "a");
	// Nothing while the character is incomplete; all of it with its last token.
	assert!(pieces[1..pieces.len() - 1].iter().all(String::is_empty), "{pieces:?}");
	assert_eq!(pieces.last().unwrap(), &character);
	assert_eq!(rest, "");

	// With the three-byte stop sequence "END", the last two bytes wait: they could begin it.
	let tokens = tokenizer.encode("Hello world, and EN then more").unwrap();
	let stop = ["END".to_string()];
	let (pieces, rest, text, reason) = stream(&tokenizer, &tokens, &stop);
	assert_eq!(reason, FinishReason::Length);
	let sent = pieces.concat();
	assert_eq!(sent.len(), text.len() - 2, "{sent:?}");
	assert_eq!(sent + &rest, text);
	let tokens = tokenizer.encode("Hello world, and END then more").unwrap();
	let (pieces, rest, text, reason) = stream(&tokenizer, &tokens, &stop);
	assert_eq!((reason, text.as_str()), (FinishReason::Stop, "Hello world, and "));
	assert_eq!(pieces.concat() + &rest, text);
}

/// Each token's bytes (what JSON mode checks against the grammar) put back together are the
/// text's bytes, characters split across byte tokens included; special tokens have none.
#[test]
fn token_bytes_spell_the_text_and_special_tokens_have_none() {
	let (_, tokenizer) = common::load(openledger_inference_worker::model::WeightFormat::AsStored);
	let bytes = tokenizer.token_bytes();
	assert_eq!(bytes.len(), tokenizer.vocab_size());
	for text in ["{\"a\": [1, 2.5e3, null]}", "  tabs\tand\nlines", "数 🦀 ü é", "x\\u00e9\""]
	{
		let tokens = tokenizer.encode(text).unwrap();
		let spelled: Vec<u8> =
			tokens.iter().flat_map(|&t| bytes.get(t as usize).unwrap().iter().copied()).collect();
		assert_eq!(spelled, text.as_bytes(), "{text:?} as {tokens:?}");
	}
	for special in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
		let [token] = tokenizer.encode(special).unwrap()[..] else { panic!("{special}") };
		assert_eq!(bytes.get(token as usize), Some(&[][..]), "{special}");
	}
	assert_eq!(bytes.get(tokenizer.eos.unwrap() as usize), Some(&[][..]));
	assert_eq!(bytes.get(bytes.len()), None);
}

/// A stop sequence held back by `min_tokens` is looked for again once they are generated, even
/// where the held text decoded longer than it ends up (a split character's first byte decodes
/// to U+FFFD, three bytes, and with its second to "é", two).
#[test]
fn min_tokens_with_a_stop_after_a_split_character() {
	let (_, tokenizer) = common::load(openledger_inference_worker::model::WeightFormat::AsStored);
	let bytes = tokenizer.token_bytes();
	let token_of = |b: &[u8]| (0..bytes.len()).find(|&t| bytes.get(t) == Some(b)).unwrap() as u32;
	let (first, second, newline) = (token_of(&[0xc3]), token_of(&[0xa9]), token_of(b"\n"));
	let request = GenerationRequest {
		prompt: "".into(),
		max_tokens: 8,
		min_tokens: 2,
		stop: vec!["\n".into()],
		..Default::default()
	};
	let mut progress = Progress::new(&request, vec![1]).unwrap();
	for token in [first, second] {
		progress.record(Sampled { token, logprob: 0.0 }, &tokenizer).unwrap();
		assert!(!progress.is_finished());
	}
	progress.record(Sampled { token: newline, logprob: 0.0 }, &tokenizer).unwrap();
	let generation = progress.finish(&tokenizer).unwrap();
	assert_eq!((generation.text.as_str(), generation.finish_reason), ("é", FinishReason::Stop));
}

/// On the real vocabulary, structured output's mask (a walk of the tokens' byte trie) allows
/// exactly the tokens whose bytes the JSON automaton takes, at every point of a document.
#[test]
fn the_json_mask_over_the_real_vocabulary_is_each_tokens_own_check() {
	use openledger_inference_worker::json_mode::{JsonGrammar, JsonState};
	let (_, tokenizer) = common::load(openledger_inference_worker::model::WeightFormat::AsStored);
	let bytes = tokenizer.token_bytes();
	let grammar = JsonGrammar::any_object();
	let document = r#"{"name": "Tom é 🦀", "age": 3, "tags": ["a", {"b": null}], "ok": true}"#;
	let mut checked = 0;
	for cut in (0..=document.len()).filter(|c| document.is_char_boundary(*c)) {
		let state = match cut {
			0 => JsonState::new(&grammar),
			cut => JsonState::new(&grammar).accepts(&grammar, &document.as_bytes()[..cut]).unwrap(),
		};
		let mask = state.allowed_tokens(&grammar, bytes, tokenizer.eos);
		for (id, &allowed) in mask.iter().enumerate() {
			let own = match Some(id as u32) == tokenizer.eos {
				true => state.can_end(&grammar),
				false => state.accepts(&grammar, bytes.get(id).unwrap()).is_some(),
			};
			assert_eq!(allowed, own, "token {id} {:?} after {:?}", bytes.get(id), &document[..cut]);
		}
		checked += 1;
	}
	assert!(checked > 60);
}
