//! What structured output costs on the real model (SmolLM2-135M-Instruct Q4_1 GGUF), side by
//! side in one run: a greedy answer held to a JSON schema, one held to any JSON object, one
//! held to a schema with a string length, a string pattern and integer bounds, one
//! held to a regular expression (`guided_regex`), one held to llama.cpp's JSON grammar in GBNF
//! (`guided_grammar`), and one free until a tool call
//! (`tool_choice: "auto"`'s lazy grammar, answered in text), against the same number of tokens
//! generated unconstrained from the same prompt; and the vocabulary mask alone
//! ([`JsonState::allowed_tokens`]: a walk of the tokens' byte trie, or inside a string each
//! token on rayon's threads) against trying each token's bytes whole
//! ([`JsonState::allowed_tokens_each`]), at points of two documents (one with a length, a
//! pattern and bounds); and for regular expressions, the compile, the mask's first finding
//! from a state and the mask kept ([`RegexGrammar::allowed_tokens`]) against trying each token
//! ([`RegexGrammar::allowed_tokens_each`]); and the same for context-free grammars
//! ([`EbnfGrammar::allowed_tokens`] against [`EbnfGrammar::allowed_tokens_each`]); and what
//! keeping a request's compiled grammar for the next saves (a greedy answer with its grammar
//! compiled for it, against one with the grammar an earlier request compiled and used).
//!
//!     cargo bench --release -p openledger-inference-worker --bench structured_output
//!
//! (`scripts/bench-worker.sh` runs it with the workspace's settings.) Prints a Markdown table.

use std::{sync::Arc, time::Instant};

use candle_core::Device;
use openledger_inference_worker::{
	chat::Message,
	ebnf_grammar::EbnfGrammar,
	generate::{generate, GenerationRequest, ResponseFormat},
	json_mode::{JsonGrammar, JsonState},
	lazy_grammar::{LazyGrammar, LazyState},
	model::{Llama, WeightFormat},
	models,
	regex_grammar::RegexGrammar,
	tool_calls::CALL_START,
};

/// JSON in GBNF, as llama.cpp's `grammars/json.gbnf` writes it: a recursive grammar.
const JSON_GBNF: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}"#;

/// Arithmetic in GBNF: sums of products of numbers or parenthesised sums.
const SUMS_GBNF: &str = r#"root ::= expr
expr ::= term ("+" term)*
term ::= factor ("*" factor)*
factor ::= [0-9]{1,3} | "(" expr ")""#;

const RUNS: usize = 7;
const MAX_TOKENS: usize = 96;

/// A request budget that never runs out.
fn no_limit() -> usize {
	usize::MAX
}

fn median(mut values: Vec<f64>) -> f64 {
	values.sort_by(f64::total_cmp);
	values[values.len() / 2]
}

/// The median of 20 computations of `mask`, in µs.
fn time_mask(mask: &dyn Fn() -> Vec<bool>) -> f64 {
	median(
		(0..20)
			.map(|_| {
				let clock = Instant::now();
				std::hint::black_box(mask());
				clock.elapsed().as_secs_f64() * 1e6
			})
			.collect(),
	)
}

fn main() {
	// SAFETY: first thing in `main`, before any other thread exists.
	unsafe { openledger_inference_worker::threads::settle_cpu_threads() };
	let path = models::smollm2_gguf();
	assert!(path.exists(), "{} is missing: run scripts/fetch-models.sh", path.display());
	let (model, tokenizer) = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored).unwrap();
	let question = Message::new("user", "Give me a JSON object with a cat's name and age.");
	let chat = tokenizer.chat_template().unwrap().render(&[question], true).unwrap();
	let schema = serde_json::json!({"type": "object", "properties": {
			"name": {"type": "string"},
			"age": {"type": "integer"},
			"colors": {"type": "array", "maxItems": 3,
				"items": {"enum": ["black", "white", "orange", "grey"]}}},
		"required": ["name", "age"], "additionalProperties": false});
	let grammar = Arc::new(JsonGrammar::from_schema(&schema).unwrap());
	// "auto" with one tool: free text until <tool_call>, then a call held to the tool's schema.
	let call = JsonGrammar::tool_call(&[("save_cat", Some(&schema))]).unwrap();
	let auto = Arc::new(LazyGrammar::new(CALL_START, Arc::new(call), true));
	// A schema whose strings have a length and a pattern, and whose integer has bounds.
	let bounded = Arc::new(
		JsonGrammar::from_schema(&serde_json::json!({"type": "object", "properties": {
			"name": {"type": "string", "maxLength": 20},
			"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
			"age": {"type": "integer", "minimum": 0, "maximum": 30}},
			"required": ["name", "code", "age"]}))
		.unwrap(),
	);
	let cat = r#"\{"name": "[A-Z][a-z]{1,15}", "age": [0-9]{1,2}, "indoor": (true|false)\}"#;
	let regex = Arc::new(RegexGrammar::new(cat).unwrap());
	let gbnf_json = Arc::new(EbnfGrammar::new(JSON_GBNF).unwrap());
	let request = |format: ResponseFormat, max_tokens: usize, ignore_eos: bool| GenerationRequest {
		prompt: chat.clone().into(),
		max_tokens,
		ignore_eos,
		response_format: format,
		..Default::default()
	};
	let seconds = |request: &GenerationRequest| {
		let start = Instant::now();
		generate(&model, &tokenizer, None, request).unwrap();
		start.elapsed().as_secs_f64()
	};

	println!(
		"SmolLM2-135M-Instruct Q4_1, CPU, {} threads, greedy, one request, median of {RUNS} \
		 (each constrained answer against as many tokens unconstrained, same prompt, the runs \
		 taking turns)",
		candle_core::utils::get_num_threads()
	);
	println!();
	println!(
		"| output | tokens | constrained ms | unconstrained ms | constrained / unconstrained |"
	);
	println!("|---|---|---|---|---|");
	for (name, format) in [
		("a JSON schema (3 properties, enum items)", ResponseFormat::Json(grammar.clone())),
		("any JSON object (JSON mode)", ResponseFormat::json_object()),
		(
			"a JSON schema (a maxLength, a pattern, an integer's bounds)",
			ResponseFormat::Json(bounded.clone()),
		),
		(
			"a regular expression (guided_regex, a cat as JSON)",
			ResponseFormat::Regex(regex.clone()),
		),
		(
			"a context-free grammar (guided_grammar, llama.cpp's JSON in GBNF)",
			ResponseFormat::Grammar(gbnf_json.clone()),
		),
		("text, free until a tool call (tool_choice \"auto\")", ResponseFormat::Lazy(auto.clone())),
	] {
		let constrained = request(format, MAX_TOKENS, false);
		let tokens = generate(&model, &tokenizer, None, &constrained).unwrap().tokens.len();
		let free = request(ResponseFormat::Text, tokens, true);
		let (mut held, mut unheld) = (Vec::new(), Vec::new());
		for _ in 0..RUNS {
			held.push(seconds(&constrained));
			unheld.push(seconds(&free));
		}
		let (constrained, free) = (median(held), median(unheld));
		println!(
			"| {name} | {tokens} | {:.1} | {:.1} | {:.2}x |",
			constrained * 1e3,
			free * 1e3,
			constrained / free
		);
	}

	// What keeping a compiled grammar between requests saves (the worker's grammar cache,
	// grammar_cache.rs): a greedy answer whose grammar is compiled for it, its masks found
	// anew, against one whose grammar was compiled and used by an earlier request.
	println!();
	println!(
		"| output, a request's grammar | tokens | compiled for it ms | kept from before ms | \
		 kept / compiled |"
	);
	println!("|---|---|---|---|---|");
	let long_name = serde_json::json!({"type": "object", "properties": {
		"name": {"type": "string", "maxLength": 1000}, "age": {"type": "integer"}},
		"required": ["name", "age"]});
	type Compile<'a> = Box<dyn Fn() -> ResponseFormat + 'a>;
	let compilers: [(&str, Compile); 3] = [
		(
			"llama.cpp's JSON in GBNF (guided_grammar)",
			Box::new(|| ResponseFormat::Grammar(Arc::new(EbnfGrammar::new(JSON_GBNF).unwrap()))),
		),
		(
			"a JSON schema with a maxLength of 1,000",
			Box::new(|| {
				ResponseFormat::Json(Arc::new(JsonGrammar::from_schema(&long_name).unwrap()))
			}),
		),
		(
			"a regular expression (guided_regex, a cat as JSON)",
			Box::new(|| ResponseFormat::Regex(Arc::new(RegexGrammar::new(cat).unwrap()))),
		),
	];
	for (name, compile) in &compilers {
		let kept = request(compile(), MAX_TOKENS, false);
		let tokens = generate(&model, &tokenizer, None, &kept).unwrap().tokens.len();
		let (mut fresh, mut again) = (Vec::new(), Vec::new());
		for _ in 0..RUNS {
			let start = Instant::now();
			generate(&model, &tokenizer, None, &request(compile(), MAX_TOKENS, false)).unwrap();
			fresh.push(start.elapsed().as_secs_f64());
			again.push(seconds(&kept));
		}
		let (fresh, again) = (median(fresh), median(again));
		println!(
			"| {name} | {tokens} | {:.1} | {:.1} | {:.3}x |",
			fresh * 1e3,
			again * 1e3,
			again / fresh
		);
	}

	// The mask alone, over the whole vocabulary.
	let bytes = tokenizer.token_bytes();
	println!();
	println!(
		"| the mask over {} tokens, at | ours µs per step | each token tried whole µs | ours / each |",
		bytes.len()
	);
	println!("|---|---|---|---|");
	for (at, grammar, text) in [
		("the start", &grammar, ""),
		("a key", &grammar, r#"{"name": "Tom", "#),
		("a string value", &grammar, r#"{"name": "To"#),
		("a string value of maxLength 20", &bounded, r#"{"name": "To"#),
		("a string value of a pattern", &bounded, r#"{"code": "AB-1"#),
		("an integer of 0 to 30", &bounded, r#"{"age": 2"#),
	] {
		let state = match text {
			"" => JsonState::new(grammar),
			text => JsonState::new(grammar).accepts(grammar, text.as_bytes()).unwrap(),
		};
		let ours = time_mask(&|| state.allowed_tokens(grammar, bytes, tokenizer.eos));
		let each = time_mask(&|| state.allowed_tokens_each(grammar, bytes, tokenizer.eos));
		assert_eq!(
			state.allowed_tokens(grammar, bytes, tokenizer.eos),
			state.allowed_tokens_each(grammar, bytes, tokenizer.eos)
		);
		println!("| {at} | {ours:.0} | {each:.0} | {:.3}x |", ours / each);
	}
	// "auto"'s mask in free text, after "<tool": only the tokens that may complete the trigger
	// are tried, against trying each.
	let free = LazyState::new().accepts(&auto, b"Let me see <tool").unwrap();
	let ours = || free.allowed_tokens(&auto, bytes, tokenizer.eos, None);
	let each = || -> Vec<bool> {
		(0..bytes.len())
			.map(|id| {
				let token = bytes.get(id).unwrap_or_default();
				token.is_empty() || free.accepts(&auto, token).is_some()
			})
			.collect()
	};
	assert_eq!(ours(), each());
	let (ours, each) = (time_mask(&ours), time_mask(&each));
	println!(
		"| free text after \"<tool\" (tool_choice \"auto\") | {ours:.0} | {each:.0} | {:.3}x |",
		ours / each
	);
	// A request's first step: its grammar finds the tokens that may complete the trigger.
	let first = median(
		(0..20)
			.map(|_| {
				let call = JsonGrammar::tool_call(&[("save_cat", Some(&schema))]).unwrap();
				let fresh = LazyGrammar::new(CALL_START, Arc::new(call), true);
				let clock = Instant::now();
				std::hint::black_box(LazyState::new().allowed_tokens(&fresh, bytes, None, None));
				clock.elapsed().as_secs_f64() * 1e6
			})
			.collect(),
	);
	println!();
	println!("A request's first free step (the tokens that may complete the trigger found): {first:.0} µs");

	// Regular expressions: compiling one, the mask found the first time from a state (a walk
	// of the trie, or token by token from a wide state), and the mask kept, against trying
	// each token whole.
	println!();
	println!(
		"| guided_regex, the mask over {} tokens, at | compile µs | first ask µs | kept µs | \
		 each token tried whole µs | first ask / each |",
		bytes.len()
	);
	println!("|---|---|---|---|---|---|");
	for (at, pattern, text) in [
		("the cat's start", cat, ""),
		("the cat's name", cat, r#"{"name": "To"#),
		("an e-mail address's start", r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}", ""),
		("words (Unicode \\w) and a full stop", r"\w+( \w+)*\.", "Hello wor"),
		("any text of at most 200 characters", r"(?s:.){0,200}", "Once upon a time"),
	] {
		let (mut compile, mut walk) = (Vec::new(), Vec::new());
		for _ in 0..20 {
			let clock = Instant::now();
			let fresh = RegexGrammar::new(pattern).unwrap();
			compile.push(clock.elapsed().as_secs_f64() * 1e6);
			let state = fresh.accepts(fresh.start(), text.as_bytes()).unwrap();
			let clock = Instant::now();
			std::hint::black_box(fresh.allowed_tokens(state, bytes, tokenizer.eos));
			walk.push(clock.elapsed().as_secs_f64() * 1e6);
		}
		let grammar = RegexGrammar::new(pattern).unwrap();
		let state = grammar.accepts(grammar.start(), text.as_bytes()).unwrap();
		let kept = time_mask(&|| grammar.allowed_tokens(state, bytes, tokenizer.eos));
		let each = time_mask(&|| grammar.allowed_tokens_each(state, bytes, tokenizer.eos));
		assert_eq!(
			grammar.allowed_tokens(state, bytes, tokenizer.eos),
			grammar.allowed_tokens_each(state, bytes, tokenizer.eos)
		);
		let (compile, walk) = (median(compile), median(walk));
		println!(
			"| {at} | {compile:.0} | {walk:.0} | {kept:.0} | {each:.0} | {:.3}x |",
			walk / each
		);
	}

	// Context-free grammars: compiling one, the mask found the first time from a state (a
	// walk of the trie through the lazy automaton, each transition found as it is met) and
	// the mask kept, against trying each token on the parser's stacks.
	println!();
	println!(
		"| guided_grammar, the mask over {} tokens, at | compile µs | first ask µs | kept µs | \
		 each token tried whole µs | first ask / each |",
		bytes.len()
	);
	println!("|---|---|---|---|---|---|");
	for (at, text, prefix) in [
		("JSON's start", JSON_GBNF, ""),
		("a JSON key", JSON_GBNF, r#"{"name": "Tom", "#),
		("a JSON string value", JSON_GBNF, r#"{"name": "To"#),
		("a JSON number, in a list in an object", JSON_GBNF, r#"{"a": [{"b": [1, 2"#),
		("a sum, two parentheses deep", SUMS_GBNF, "(1+2*(3"),
	] {
		let (mut compile, mut walk) = (Vec::new(), Vec::new());
		for _ in 0..20 {
			let clock = Instant::now();
			let fresh = EbnfGrammar::new(text).unwrap();
			compile.push(clock.elapsed().as_secs_f64() * 1e6);
			let state = fresh.accepts(&fresh.start(), prefix.as_bytes()).unwrap();
			let clock = Instant::now();
			std::hint::black_box(
				fresh.allowed_tokens(&state, bytes, tokenizer.eos, &mut no_limit()).unwrap(),
			);
			walk.push(clock.elapsed().as_secs_f64() * 1e6);
		}
		let grammar = EbnfGrammar::new(text).unwrap();
		let state = grammar.accepts(&grammar.start(), prefix.as_bytes()).unwrap();
		let kept = time_mask(&|| {
			grammar.allowed_tokens(&state, bytes, tokenizer.eos, &mut no_limit()).unwrap()
		});
		let each = time_mask(&|| grammar.allowed_tokens_each(&state, bytes, tokenizer.eos));
		assert_eq!(
			grammar.allowed_tokens(&state, bytes, tokenizer.eos, &mut no_limit()).unwrap(),
			grammar.allowed_tokens_each(&state, bytes, tokenizer.eos)
		);
		let (compile, walk) = (median(compile), median(walk));
		println!(
			"| {at} | {compile:.0} | {walk:.0} | {kept:.0} | {each:.0} | {:.3}x |",
			walk / each
		);
	}
}
