//! JSON mode and JSON schemas (OpenAI's `response_format` `json_object` and `json_schema`,
//! LoRAX's `json_object` with a `schema`, vLLM's `guided_json`): the output is held to a
//! [`JsonGrammar`], token by token.
//!
//! A grammar is any JSON object (JSON mode), or what a JSON schema allows, compiled into a
//! small graph of nodes ([`JsonGrammar::from_schema`]: objects with their declared properties,
//! keys in any order, the required ones before the object may close; arrays with their items
//! and `minItems`/`maxItems`; strings; numbers and integers; booleans; null; `enum` and
//! `const`; strings with `minLength`, `maxLength` or a `pattern` (matched by the whole value),
//! integers between bounds and numbers between bounds that are integers, each held to a
//! regular expression over its JSON text ([`crate::json_text`]);
//! `anyOf`/`oneOf` and lists of types whose alternatives start with different bytes,
//! or are objects told apart by a discriminator (a property each requires, whose value is a
//! constant string of its own: written first, it says which object follows); local `$ref`s,
//! recursive ones included). [`JsonGrammar::choice`] is one of several texts exactly, not
//! JSON (vLLM's `guided_choice`). [`JsonGrammar::tool_calls`] is the grammar of OpenAI tool calls
//! (a list of `{"name": ..., "parameters": ...}`, each tool's parameters its own schema).
//! Keywords that would constrain what it does not enforce (`multipleOf`, `uniqueItems`, a
//! bound that is not an integer on a number, ...) are refused rather than ignored; annotations
//! (`title`, `description`, `format`, `default`, ...) are ignored. An object with declared properties is generated with those
//! keys only.
//!
//! [`JsonState`] is a pushdown automaton over the output's bytes. Before each token is picked,
//! every token of the vocabulary whose bytes would take the output off the grammar is masked
//! ([`JsonState::allowed_tokens`]), so whatever is sampled keeps the output a prefix of a
//! document the grammar takes; once the document is whole only the end-of-sequence token is
//! left. The mask walks a byte trie over the vocabulary ([`TokenBytes::trie`]): a prefix that
//! many tokens share is stepped once, a refused byte prunes every token below it, and inside a
//! string only the string's own state is carried. From inside a string, or a value held to a
//! regular expression, where nearly every token goes on, the tokens are checked one by one on
//! rayon's threads instead. The state is
//! `Copy` (at most [`MAX_DEPTH`] open containers), so trying a byte costs no allocation.
//!
//! Two limits keep a model that the mask steers from running away: nesting deeper than
//! [`MAX_DEPTH`], and more than [`MAX_WHITESPACE_RUN`] whitespace bytes in a row between tokens
//! of the grammar (a model kept off everything else can otherwise pad forever). An output cut
//! by `max_tokens` is a prefix of a document, not a document, as with OpenAI.

use std::{collections::HashMap, sync::Arc};

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::{
	json_text,
	regex_grammar::{RegexGrammar, RegexState},
	tokenizer::{allow_end, TokenBytes},
};

/// The deepest nesting of objects and arrays.
pub const MAX_DEPTH: usize = 16;
/// The most whitespace bytes in a row outside strings.
pub const MAX_WHITESPACE_RUN: u8 = 64;
/// The most properties of one object, and values of one `enum`.
pub const MAX_CHOICES: usize = 64;
/// The most nodes a schema compiles into.
const MAX_NODES: usize = 4096;

/// The keywords a schema may use that the grammar enforces.
const ENFORCED: [&str; 22] = [
	"type",
	"minLength",
	"maxLength",
	"pattern",
	"minimum",
	"maximum",
	"exclusiveMinimum",
	"exclusiveMaximum",
	"properties",
	"required",
	"additionalProperties",
	"items",
	"minItems",
	"maxItems",
	"enum",
	"const",
	"anyOf",
	"oneOf",
	"allOf",
	"$ref",
	"$defs",
	"definitions",
];
/// The keywords that bound a number.
const BOUNDS: [&str; 4] = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
/// The most memory the automata of one schema's lengths, patterns and bounds may take.
const MAX_AUTOMATA_BYTES: usize = 64 * 1024 * 1024;
/// The largest bound of an integer taken (either sign).
const MAX_BOUND: f64 = 1e38;

/// A bound's value as a schema gives it: an integer, exactly, or another number.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BoundValue {
	Integer(i128),
	Number(f64),
}

impl BoundValue {
	/// The value, as near as an f64 holds it (for messages).
	fn approx(self) -> f64 {
		match self {
			Self::Integer(n) => n as f64,
			Self::Number(x) => x,
		}
	}

	/// The greatest integer at most the value.
	fn floor(self) -> i128 {
		match self {
			Self::Integer(n) => n,
			Self::Number(x) => x.floor() as i128,
		}
	}

	/// The least integer at least the value.
	fn ceil(self) -> i128 {
		match self {
			Self::Integer(n) => n,
			Self::Number(x) => x.ceil() as i128,
		}
	}

	/// The value, if it is an integer.
	fn integer(self) -> Option<i128> {
		match self {
			Self::Integer(n) => Some(n),
			Self::Number(x) => (x.fract() == 0.0).then_some(x as i128),
		}
	}
}

/// A number's bound as a schema gives it: its value, and whether the value itself is within.
type GivenBound = (BoundValue, bool);

/// The lower and upper bounds of `map`'s numbers, as given (none to two a side), from
/// `minimum`, `maximum` and the exclusive ones (numbers, or draft 4's booleans beside
/// `minimum` and `maximum`). Integers are read exactly (not through an f64, which holds them
/// only to 2^53).
fn bounds(
	map: &serde_json::Map<String, Value>,
	at: &str,
) -> Result<(Vec<GivenBound>, Vec<GivenBound>), String> {
	let number = |key: &str| match map.get(key) {
		None => Ok(None),
		// Draft 4's: whether `minimum` or `maximum` beside it is exclusive.
		Some(Value::Bool(_)) if key.starts_with("exclusive") => Ok(None),
		Some(value) => {
			let integer = value.as_i64().map(i128::from).or(value.as_u64().map(i128::from));
			match (integer, value.as_f64()) {
				(Some(n), _) => Ok(Some(BoundValue::Integer(n))),
				(None, Some(x)) if x.abs() <= MAX_BOUND => Ok(Some(BoundValue::Number(x))),
				(None, Some(_)) => Err(format!("{at}: {key} beyond ±{MAX_BOUND:e} is not served")),
				(None, None) => Err(format!("{at}: {key} is a number")),
			}
		}
	};
	let within = |key: &str| map.get(key) != Some(&Value::Bool(true));
	let side = |inclusive: &str, exclusive: &str| -> Result<Vec<GivenBound>, String> {
		let given = number(inclusive)?.map(|x| (x, within(exclusive)));
		Ok(given.into_iter().chain(number(exclusive)?.map(|x| (x, false))).collect())
	};
	Ok((side("minimum", "exclusiveMinimum")?, side("maximum", "exclusiveMaximum")?))
}

/// The least and the most an integer of `map` may be (none: no bound that side): its
/// [`bounds`], each rounded inwards, the tighter of two on a side.
fn integer_bounds(
	map: &serde_json::Map<String, Value>,
	at: &str,
) -> Result<(Option<i128>, Option<i128>), String> {
	let (lo, hi) = bounds(map, at)?;
	let lo = lo.into_iter().map(|(x, within)| if within { x.ceil() } else { x.floor() + 1 });
	let hi = hi.into_iter().map(|(x, within)| if within { x.floor() } else { x.ceil() - 1 });
	Ok((lo.max(), hi.min()))
}

/// The bounds of a number of `map` (none: no bound that side), which must be integers; of two
/// on a side, the tighter (the nearer the other side, and exclusive at the same value).
fn number_bounds(
	map: &serde_json::Map<String, Value>,
	at: &str,
) -> Result<(Option<json_text::Bound>, Option<json_text::Bound>), String> {
	let (lo, hi) = bounds(map, at)?;
	let whole = |given: Vec<GivenBound>| {
		given
			.into_iter()
			.map(|(x, within)| match x.integer() {
				Some(n) => Ok((n, within)),
				None => Err(format!(
					"{at}: a bound of {} on a number is not served (bounds that are integers are)",
					x.approx()
				)),
			})
			.collect::<Result<Vec<json_text::Bound>, String>>()
	};
	// Exclusive is tighter than inclusive at the same value: `false` orders first.
	let lo = whole(lo)?.into_iter().max_by_key(|&(n, within)| (n, !within));
	let hi = whole(hi)?.into_iter().min_by_key(|&(n, within)| (n, within));
	Ok((lo, hi))
}

/// Annotations: taken and ignored (they do not constrain the value, or, as `format`, are not
/// checked).
const ANNOTATIONS: [&str; 14] = [
	"title",
	"description",
	"default",
	"examples",
	"$schema",
	"$id",
	"$comment",
	"format",
	"deprecated",
	"readOnly",
	"writeOnly",
	"contentMediaType",
	"contentEncoding",
	// Pydantic's, beside the `oneOf` it describes (told apart by the grammar itself).
	"discriminator",
];
/// The longest `enum` or `const` value, as compact JSON.
const MAX_LITERAL: usize = 1024;
/// The deepest nesting of schemas (through `$ref`s too) compiled.
const MAX_SCHEMA_DEPTH: usize = 64;

/// A node of a grammar, by index.
type NodeId = u16;
/// Any JSON value.
const ANY: NodeId = 0;
/// `true` or `false`.
const BOOLEAN: NodeId = 1;
/// `null`.
const NULL: NodeId = 2;

/// What a value must be.
#[derive(Clone, Debug, PartialEq)]
enum Node {
	/// Any JSON value.
	Any,
	/// An object with these properties only (in any order), `required` (a bit per property)
	/// before it may close.
	Object { properties: Vec<Property>, required: u64 },
	/// An object with any keys, each value of node `values`.
	AnyObject { values: NodeId },
	/// An array of `items`, from `min` to `max` of them.
	Array { items: NodeId, min: u32, max: u32 },
	/// A string.
	String,
	/// A value whose JSON text the expression matches whole (a string with a length or a
	/// pattern: [`crate::json_text`]).
	Text(Arc<RegexGrammar>),
	/// A number; an integer (no fraction, no exponent) if `integer`.
	Number { integer: bool },
	/// One of these texts (`enum`, `const`, `true`/`false`, `null`), compact JSON.
	Literals(Vec<Box<[u8]>>),
	/// One of these, told apart by their first byte.
	Union(Vec<NodeId>),
	/// One of several objects, told apart by the value of the property `tag`, which comes
	/// first: the `i`th of `tag`'s literals chooses `variants[i]`, an object node and the
	/// index of its property that `tag` was.
	Tagged { tag: Property, variants: Vec<(NodeId, u8)> },
	/// What another node is (a `$ref`).
	Ref(NodeId),
}

/// A declared property of an object.
#[derive(Clone, Debug, PartialEq)]
struct Property {
	/// The key as it is written between the quotes (escaped as JSON escapes it).
	key: Box<[u8]>,
	/// What its value must be.
	value: NodeId,
}

/// What a JSON output must be (see the module documentation).
#[derive(Clone, PartialEq)]
pub struct JsonGrammar {
	nodes: Vec<Node>,
	root: NodeId,
	/// For each node, the bytes a value of it may start with.
	starts: Vec<[bool; 256]>,
	/// Texts as they are, not JSON ([`JsonGrammar::choice`]): no whitespace around them.
	raw: bool,
}

impl JsonGrammar {
	/// About the most memory the grammar may come to hold: its nodes, and the automata of its
	/// strings with a length or a pattern and of its bounded numbers, each with the masks it
	/// may keep (`regex_masks` bytes each).
	pub fn memory_usage(&self, regex_masks: usize) -> usize {
		let node = std::mem::size_of::<Node>() + std::mem::size_of::<[bool; 256]>();
		self.nodes.iter().fold(self.nodes.len().saturating_mul(node), |bytes, n| {
			let held = match n {
				Node::Text(grammar) => grammar.memory_usage().saturating_add(regex_masks),
				Node::Literals(texts) => texts.iter().map(|t| t.len() + 16).sum(),
				Node::Object { properties, .. } => {
					properties.iter().map(|p| p.key.len() + 24).sum()
				}
				Node::Union(ids) => ids.len() * 8,
				Node::Tagged { variants, .. } => variants.len() * 16,
				_ => 0,
			};
			bytes.saturating_add(held)
		})
	}
}

impl std::fmt::Debug for JsonGrammar {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("JsonGrammar")
			.field("nodes", &self.nodes)
			.field("root", &self.root)
			.finish_non_exhaustive()
	}
}

/// The nodes every grammar starts with: [`ANY`], [`BOOLEAN`], [`NULL`].
fn base_nodes() -> Vec<Node> {
	vec![
		Node::Any,
		Node::Literals(vec![b"true".as_slice().into(), b"false".as_slice().into()]),
		Node::Literals(vec![b"null".as_slice().into()]),
	]
}

impl JsonGrammar {
	/// Any JSON object (JSON mode).
	pub fn any_object() -> Self {
		let mut nodes = base_nodes();
		nodes.push(Node::AnyObject { values: ANY });
		Self::new(nodes, 3)
	}

	fn new(nodes: Vec<Node>, root: NodeId) -> Self {
		let mut grammar = Self { nodes, root, starts: Vec::new(), raw: false };
		grammar.starts =
			(0..grammar.nodes.len()).map(|id| grammar.first_bytes(id as NodeId)).collect();
		grammar
	}

	/// One of `texts` exactly, as they are (vLLM's `guided_choice`): not JSON, so nothing
	/// before or after the text, whitespace included. One text may begin another (`yes` and
	/// `yes!`): the output may end after the shorter.
	pub fn choice(texts: &[String]) -> Result<Self, String> {
		if texts.is_empty() || texts.len() > MAX_CHOICES {
			return Err(format!("1 to {MAX_CHOICES} choices, not {}", texts.len()));
		}
		if let Some(bad) = texts.iter().find(|t| t.is_empty() || t.len() > MAX_LITERAL) {
			return Err(format!("each choice is 1 to {MAX_LITERAL} bytes, not {bad:?}"));
		}
		let mut nodes = base_nodes();
		nodes.push(Node::Literals(texts.iter().map(|t| t.as_bytes().into()).collect()));
		let mut grammar = Self::new(nodes, 3);
		grammar.raw = true;
		Ok(grammar)
	}

	/// What `schema` (a JSON schema) allows, or why it cannot be served.
	pub fn from_schema(schema: &Value) -> Result<Self, String> {
		let mut compiler = Compiler::new(schema);
		let root = compiler.compile(schema, "#")?;
		Self::checked(compiler.nodes, root)
	}

	/// OpenAI tool calls to `tools` (each a name and its parameters' schema, `None` for no
	/// parameters: `{}`), as vLLM generates them for `tool_choice: "required"`: a list of 1 to
	/// `max` objects `{"name": ..., "parameters": ...}`, the name first and the parameters
	/// those of the tool named.
	pub fn tool_calls(tools: &[(&str, Option<&Value>)], max: u32) -> Result<Self, String> {
		let none = no_parameters();
		let mut compiler = Compiler::new(&none);
		let items = compiler.calls(tools, &none, b"parameters")?;
		let root = compiler.add(Node::Array { items, min: 1, max: max.max(1) })?;
		Self::checked(compiler.nodes, root)
	}

	/// One call of one of `tools` as Hermes-style models write it after `<tool_call>`
	/// (`tool_choice: "auto"`, [`crate::tool_calls`]): an object `{"name": ..., "arguments":
	/// ...}`, the name first and the arguments those of the tool named.
	pub fn tool_call(tools: &[(&str, Option<&Value>)]) -> Result<Self, String> {
		let none = no_parameters();
		let mut compiler = Compiler::new(&none);
		let root = compiler.calls(tools, &none, b"arguments")?;
		Self::checked(compiler.nodes, root)
	}

	/// The grammar of `nodes` from `root`, if the automaton can follow it.
	fn checked(nodes: Vec<Node>, root: NodeId) -> Result<Self, String> {
		let grammar = Self::new(nodes, root);
		// A `$ref` that leads only to `$ref`s would never start a value.
		for id in 0..grammar.nodes.len() {
			grammar.resolve(id as NodeId).ok_or("a $ref cycle that never reaches a schema")?;
		}
		// Alternatives must start apart (the automaton follows one).
		for node in &grammar.nodes {
			if let Node::Union(members) = node {
				let mut seen = [false; 256];
				for &member in members {
					for (b, starts) in grammar.starts[member as usize].iter().enumerate() {
						if *starts && std::mem::replace(&mut seen[b], true) {
							let byte = match b as u8 {
								b @ 0x20..=0x7e => format!("{:?}", b as char),
								b => format!("byte 0x{b:02x}"),
							};
							let objects = match b as u8 {
								b'{' => {
									" (objects are, when each requires a property whose value \
									 is a constant string of its own)"
								}
								_ => "",
							};
							return Err(format!(
								"alternatives (anyOf, oneOf or a list of types) that can both \
								 start with {byte} are not served{objects}"
							));
						}
					}
				}
			}
		}
		Ok(grammar)
	}

	/// The node `id` stands for, through `$ref`s; `None` for a cycle of them.
	fn resolve(&self, id: NodeId) -> Option<NodeId> {
		resolve(&self.nodes, id)
	}

	/// The bytes a value of `id` may start with.
	fn first_bytes(&self, id: NodeId) -> [bool; 256] {
		let mut bytes = [false; 256];
		let mut todo = vec![id];
		let mut visited = vec![false; self.nodes.len()];
		while let Some(id) = todo.pop() {
			if std::mem::replace(&mut visited[id as usize], true) {
				continue;
			}
			let mut set = |list: &[u8]| list.iter().for_each(|&b| bytes[b as usize] = true);
			match &self.nodes[id as usize] {
				Node::Any => set(b"{[\"-0123456789tfn"),
				Node::Object { .. } | Node::AnyObject { .. } | Node::Tagged { .. } => set(b"{"),
				Node::Array { .. } => set(b"["),
				Node::String => set(b"\""),
				Node::Text(regex) => (0..=255u8)
					.filter(|&b| regex.accepts(regex.start(), &[b]).is_some())
					.for_each(|b| bytes[b as usize] = true),
				Node::Number { .. } => set(b"-0123456789"),
				Node::Literals(texts) => texts.iter().for_each(|t| set(&t[..t.len().min(1)])),
				Node::Union(members) => todo.extend(members),
				Node::Ref(target) => todo.push(*target),
			}
		}
		bytes
	}
}

/// An object of a union as [`Compiler::tag_objects`] finds it: its node, the index of its
/// discriminator among its properties, and the discriminator's strings.
type Variant = (NodeId, u8, Vec<Box<[u8]>>);

/// Compiles a schema into nodes.
struct Compiler<'a> {
	/// The whole schema (`$ref`s point into it).
	document: &'a Value,
	nodes: Vec<Node>,
	/// The node of each `$ref` seen, compiled or being compiled.
	refs: HashMap<String, NodeId>,
	/// How deep in the schema (through `$ref`s) the compiler is.
	depth: usize,
	/// The [`Node::Text`] node of each expression compiled, by what it holds the value to.
	texts: HashMap<String, NodeId>,
	/// The memory the automata of those nodes take together.
	automata: usize,
}

/// Whether `value` is of the JSON schema type (or one of the types) `kind`.
fn has_type(value: &Value, kind: &Value) -> bool {
	let one = |kind: &str| match kind {
		"object" => value.is_object(),
		"array" => value.is_array(),
		"string" => value.is_string(),
		"number" => value.is_number(),
		"integer" => value.is_i64() || value.is_u64(),
		"boolean" => value.is_boolean(),
		"null" => value.is_null(),
		_ => false,
	};
	match kind {
		Value::String(kind) => one(kind),
		Value::Array(kinds) => kinds.iter().any(|k| k.as_str().is_some_and(one)),
		_ => false,
	}
}

/// A value as compact JSON.
fn compact(value: &Value) -> Box<[u8]> {
	serde_json::to_vec(value).unwrap_or_default().into()
}

impl<'a> Compiler<'a> {
	fn new(document: &'a Value) -> Self {
		Self {
			document,
			nodes: base_nodes(),
			refs: HashMap::new(),
			depth: 0,
			texts: HashMap::new(),
			automata: 0,
		}
	}

	fn add(&mut self, node: Node) -> Result<NodeId, String> {
		if self.nodes.len() >= MAX_NODES {
			return Err(format!("the schema takes more than {MAX_NODES} nodes"));
		}
		self.nodes.push(node);
		Ok((self.nodes.len() - 1) as NodeId)
	}

	/// The node of `schema`, found at `at` (a JSON pointer, for messages).
	fn compile(&mut self, schema: &Value, at: &str) -> Result<NodeId, String> {
		if self.depth >= MAX_SCHEMA_DEPTH {
			return Err(format!("{at}: the schema nests more than {MAX_SCHEMA_DEPTH} levels"));
		}
		self.depth += 1;
		let compiled = self.compile_map(schema, at);
		self.depth -= 1;
		compiled
	}

	fn compile_map(&mut self, schema: &Value, at: &str) -> Result<NodeId, String> {
		let map = match schema {
			Value::Bool(true) => return Ok(ANY),
			Value::Object(map) => map,
			_ => return Err(format!("{at}: a schema is an object or true")),
		};
		if let Some(key) = map
			.keys()
			.find(|k| !ENFORCED.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
		{
			return Err(format!("{at}: {key} is not served"));
		}
		// A keyword that selects the value outright takes only annotations beside it (and
		// `type` beside `enum` or `const`, which each value must have).
		let selector = ["$ref", "const", "enum", "anyOf", "oneOf", "allOf"]
			.into_iter()
			.find(|k| map.contains_key(*k));
		if let Some(selector) = selector {
			let fine = |k: &str| {
				k == selector
					|| ANNOTATIONS.contains(&k)
					|| matches!(k, "$defs" | "definitions")
					|| (k == "type" && matches!(selector, "const" | "enum"))
			};
			let beside = map.keys().map(String::as_str).find(|k| !fine(k));
			if let Some(beside) = beside {
				return Err(format!("{at}: {beside} beside {selector} is not served"));
			}
		}
		if let Some(reference) = map.get("$ref") {
			return self.reference(reference, at);
		}
		let values = match (map.get("const"), map.get("enum")) {
			(Some(value), _) => Some(std::slice::from_ref(value)),
			(None, Some(values)) => Some(
				values
					.as_array()
					.filter(|v| (1..=MAX_CHOICES).contains(&v.len()))
					.ok_or(format!("{at}: enum is a list of 1 to {MAX_CHOICES} values"))?
					.as_slice(),
			),
			(None, None) => None,
		};
		if let Some(values) = values {
			let mut texts = Vec::with_capacity(values.len());
			for value in values {
				if let Some(kind) = map.get("type").filter(|kind| !has_type(value, kind)) {
					return Err(format!("{at}: the value {value} is not of type {kind}"));
				}
				let text = compact(value);
				if text.is_empty() || text.len() > MAX_LITERAL {
					return Err(format!("{at}: a value longer than {MAX_LITERAL} bytes"));
				}
				texts.push(text);
			}
			return self.add(Node::Literals(texts));
		}
		for keyword in ["anyOf", "oneOf"] {
			if let Some(list) = map.get(keyword) {
				let list = list.as_array().filter(|l| !l.is_empty());
				let list = list.ok_or(format!("{at}: {keyword} is a list of schemas"))?;
				let members = list
					.iter()
					.enumerate()
					.map(|(i, s)| self.compile(s, &format!("{at}/{keyword}/{i}")))
					.collect::<Result<Vec<_>, _>>()?;
				// Pydantic names the discriminator beside the union.
				let prefer = schema.pointer("/discriminator/propertyName").and_then(Value::as_str);
				let members = self.tag_objects(members, 2, prefer)?;
				return self.union(members);
			}
		}
		if let Some(list) = map.get("allOf") {
			return match list.as_array().map(Vec::as_slice) {
				Some([one]) => self.compile(one, &format!("{at}/allOf/0")),
				_ => Err(format!("{at}: allOf of more than one schema is not served")),
			};
		}
		let types: Vec<&str> = match map.get("type") {
			None if ["properties", "required", "additionalProperties"]
				.iter()
				.any(|k| map.contains_key(*k)) =>
			{
				vec!["object"]
			}
			None if ["items", "minItems", "maxItems"].iter().any(|k| map.contains_key(*k)) => {
				vec!["array"]
			}
			None if ["minLength", "maxLength", "pattern"].iter().any(|k| map.contains_key(*k)) => {
				vec!["string"]
			}
			None if BOUNDS.iter().any(|k| map.contains_key(*k)) => vec!["number"],
			None => return Ok(ANY),
			Some(Value::String(t)) => vec![t.as_str()],
			Some(Value::Array(list)) if !list.is_empty() => list
				.iter()
				.map(|t| t.as_str().ok_or(format!("{at}: type is a name or a list of names")))
				.collect::<Result<_, _>>()?,
			Some(_) => return Err(format!("{at}: type is a name or a list of names")),
		};
		let members =
			types.iter().map(|t| self.typed(map, t, at)).collect::<Result<Vec<_>, _>>()?;
		match members[..] {
			[one] => Ok(one),
			_ => self.union(members),
		}
	}

	/// The calls of `tools` (each a name and its parameters' schema, `None` for none):
	/// objects `{"name": ..., <arguments>: ...}`, the name first, the arguments (under the key
	/// `arguments`) those of the tool named; one node for any of them.
	fn calls(
		&mut self,
		tools: &[(&str, Option<&'a Value>)],
		none: &'a Value,
		arguments: &[u8],
	) -> Result<NodeId, String> {
		let mut calls = Vec::with_capacity(tools.len());
		for &(name, parameters) in tools {
			// Each tool's schema is a document of its own (its `$ref`s point into it).
			let parameters = parameters.unwrap_or(none);
			self.document = parameters;
			self.refs.clear();
			let at = format!("tool {name:?}: parameters");
			let parameters = self.compile(parameters, &at)?;
			let name = self.add(Node::Literals(vec![compact(&Value::from(name))]))?;
			let properties = vec![
				Property { key: b"name".as_slice().into(), value: name },
				Property { key: arguments.into(), value: parameters },
			];
			calls.push(self.add(Node::Object { properties, required: 0b11 })?);
		}
		let calls = self.tag_objects(calls, 1, Some("name"))?;
		self.union(calls)
	}

	fn union(&mut self, members: Vec<NodeId>) -> Result<NodeId, String> {
		match members[..] {
			[one] => Ok(one),
			_ => self.add(Node::Union(members)),
		}
	}

	/// `members` of a union with the objects among them (`least` or more) joined into one
	/// [`Node::Tagged`] where they have a discriminator: a property that each requires, whose
	/// value is one or more constant strings no other has. The property named `prefer` is
	/// taken if it is one, else the first such property (in the first object's order).
	/// Without one, `members` are left as they are.
	fn tag_objects(
		&mut self,
		members: Vec<NodeId>,
		least: usize,
		prefer: Option<&str>,
	) -> Result<Vec<NodeId>, String> {
		// A cycle of `$ref`s is no object (it is refused once the grammar is whole).
		let resolve = |nodes: &[Node], id: NodeId| resolve(nodes, id).unwrap_or(ANY);
		let objects: Vec<(usize, NodeId)> = members
			.iter()
			.enumerate()
			.map(|(at, &m)| (at, resolve(&self.nodes, m)))
			.filter(|&(_, m)| matches!(self.nodes[m as usize], Node::Object { .. }))
			.collect();
		let Some(&(first_at, first)) = objects.first().filter(|_| objects.len() >= least) else {
			return Ok(members);
		};
		let (candidates, _) = object_of(&self.nodes, first);
		// For each object, the index of the tag property and its strings.
		let tagged_by = |key: &[u8]| -> Option<Vec<Variant>> {
			let mut found = Vec::with_capacity(objects.len());
			let mut seen = std::collections::HashSet::new();
			for &(_, object) in &objects {
				let (properties, required) = object_of(&self.nodes, object);
				let i = properties.iter().position(|p| &*p.key == key)?;
				if required >> i & 1 == 0 {
					return None;
				}
				let Node::Literals(texts) =
					&self.nodes[resolve(&self.nodes, properties[i].value) as usize]
				else {
					return None;
				};
				let strings = texts.iter().all(|t| t.first() == Some(&b'"'));
				if !strings || !texts.iter().all(|t| seen.insert(t.clone())) {
					return None;
				}
				found.push((object, i as u8, texts.clone()));
			}
			(seen.len() <= MAX_CHOICES).then_some(found)
		};
		// The property named `prefer` first, if it is one.
		let prefer = prefer.map(|name| {
			let quoted = serde_json::to_vec(name).unwrap_or_default();
			quoted[1..quoted.len().saturating_sub(1).max(1)].to_vec()
		});
		let preferred = candidates.iter().filter(|p| Some(&p.key[..]) == prefer.as_deref());
		let Some((key, found)) = preferred
			.chain(candidates)
			.find_map(|p| tagged_by(&p.key[..]).map(|found| (p.key.clone(), found)))
		else {
			return Ok(members);
		};
		let mut texts = Vec::new();
		let mut variants = Vec::new();
		for (object, at, strings) in found {
			variants.extend(std::iter::repeat_n((object, at), strings.len()));
			texts.extend(strings);
		}
		let value = self.add(Node::Literals(texts))?;
		let tagged = self.add(Node::Tagged { tag: Property { key, value }, variants })?;
		let joined: Vec<usize> = objects.iter().map(|&(at, _)| at).collect();
		Ok(members
			.iter()
			.enumerate()
			.filter_map(|(at, &m)| match at {
				_ if at == first_at => Some(tagged),
				_ if joined.contains(&at) => None,
				_ => Some(m),
			})
			.collect())
	}

	/// The node of `map` as a value of type `kind`.
	fn typed(
		&mut self,
		map: &serde_json::Map<String, Value>,
		kind: &str,
		at: &str,
	) -> Result<NodeId, String> {
		match kind {
			"object" => self.object(map, at),
			"array" => {
				let items = match map.get("items") {
					None => ANY,
					Some(items) => self.compile(items, &format!("{at}/items"))?,
				};
				let count = |key: &str, default: u32| match map.get(key) {
					None => Ok(default),
					Some(v) => v
						.as_u64()
						.and_then(|n| u32::try_from(n).ok())
						.ok_or(format!("{at}: {key} is a count")),
				};
				let (min, max) = (count("minItems", 0)?, count("maxItems", u32::MAX)?);
				if min > max {
					return Err(format!("{at}: minItems {min} is more than maxItems {max}"));
				}
				self.add(Node::Array { items, min, max })
			}
			"string" => self.string(map, at),
			"number" => match number_bounds(map, at)? {
				(None, None) => self.add(Node::Number { integer: false }),
				(lo, hi) => self.text(format!("number {lo:?} {hi:?}"), at, || {
					json_text::number_between(lo, hi)
				}),
			},
			"integer" => match integer_bounds(map, at)? {
				(None, None) => self.add(Node::Number { integer: true }),
				(lo, hi) => self.text(format!("integer {lo:?} {hi:?}"), at, || {
					json_text::integer_between(lo, hi)
				}),
			},
			"boolean" => Ok(BOOLEAN),
			"null" => Ok(NULL),
			other => Err(format!("{at}: unknown type {other:?}")),
		}
	}

	fn object(&mut self, map: &serde_json::Map<String, Value>, at: &str) -> Result<NodeId, String> {
		let declared = match map.get("properties") {
			None => serde_json::Map::new(),
			Some(Value::Object(declared)) => declared.clone(),
			Some(_) => return Err(format!("{at}: properties is an object")),
		};
		if declared.len() > MAX_CHOICES {
			return Err(format!("{at}: more than {MAX_CHOICES} properties"));
		}
		let mut required = 0u64;
		let names: Vec<&String> = declared.keys().collect();
		for name in map.get("required").and_then(Value::as_array).into_iter().flatten() {
			let i = names
				.iter()
				.position(|n| Some(n.as_str()) == name.as_str())
				.ok_or(format!("{at}: required {name} is not among the properties"))?;
			required |= 1 << i;
		}
		if declared.is_empty() {
			// No declared keys: none at all, or any keys with values of one schema.
			return match map.get("additionalProperties") {
				Some(Value::Bool(false)) => {
					self.add(Node::Object { properties: Vec::new(), required: 0 })
				}
				None | Some(Value::Bool(true)) => self.add(Node::AnyObject { values: ANY }),
				Some(values) => {
					let values = self.compile(values, &format!("{at}/additionalProperties"))?;
					self.add(Node::AnyObject { values })
				}
			};
		}
		let mut properties = Vec::with_capacity(declared.len());
		for (name, schema) in &declared {
			let quoted = serde_json::to_vec(name).unwrap_or_default();
			let key: Box<[u8]> = quoted[1..quoted.len().saturating_sub(1).max(1)].into();
			if key.len() > u8::MAX as usize {
				return Err(format!("{at}: a property name longer than 255 bytes"));
			}
			let value = self.compile(schema, &format!("{at}/properties/{name}"))?;
			properties.push(Property { key, value });
		}
		self.add(Node::Object { properties, required })
	}

	/// A string node: any string, or one with a length or a pattern.
	fn string(&mut self, map: &serde_json::Map<String, Value>, at: &str) -> Result<NodeId, String> {
		let length = |key: &str| match map.get(key) {
			None => Ok(None),
			Some(v) => v
				.as_u64()
				.and_then(|n| u32::try_from(n).ok())
				.map(Some)
				.ok_or(format!("{at}: {key} is a count")),
		};
		// A least length of 0 says nothing (and so may stand beside a pattern).
		let (min, max) = (length("minLength")?.filter(|&n| n > 0), length("maxLength")?);
		match (map.get("pattern"), min, max) {
			(None, None, None) => self.add(Node::String),
			(Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(format!(
				"{at}: pattern beside a minLength above 0 or a maxLength is not served"
			)),
			(Some(pattern), None, None) => {
				let pattern = pattern.as_str().ok_or(format!("{at}: pattern is a string"))?;
				self.text(format!("pattern {pattern}"), at, || {
					json_text::matching(pattern).map_err(|e| format!("pattern: {e}"))
				})
			}
			(None, min, max) => {
				let min = min.unwrap_or(0);
				if max.is_some_and(|max| min > max) {
					return Err(format!("{at}: minLength {min} is more than maxLength {max:?}"));
				}
				self.text(format!("length {min} {max:?}"), at, || json_text::with_length(min, max))
			}
		}
	}

	/// The [`Node::Text`] node of the expression `make` compiles, known by `key`: one node per
	/// key, and at most [`MAX_AUTOMATA_BYTES`] of automata for the whole schema.
	fn text(
		&mut self,
		key: String,
		at: &str,
		make: impl FnOnce() -> Result<RegexGrammar, String>,
	) -> Result<NodeId, String> {
		if let Some(&id) = self.texts.get(&key) {
			return Ok(id);
		}
		let text = make().map_err(|e| format!("{at}: {e}"))?;
		self.automata = self.automata.saturating_add(text.memory_usage());
		if self.automata > MAX_AUTOMATA_BYTES {
			return Err(format!(
				"{at}: the schema's lengths, patterns and bounds take more than {} MiB of \
				 automata",
				MAX_AUTOMATA_BYTES >> 20
			));
		}
		let id = self.add(Node::Text(Arc::new(text)))?;
		self.texts.insert(key, id);
		Ok(id)
	}

	/// The node a `$ref` points to: `#` or `#/$defs/NAME` (or `#/definitions/NAME`).
	fn reference(&mut self, reference: &Value, at: &str) -> Result<NodeId, String> {
		let pointer = reference.as_str().ok_or(format!("{at}: $ref is a string"))?;
		if let Some(&id) = self.refs.get(pointer) {
			return Ok(id);
		}
		let target = match pointer.strip_prefix('#') {
			Some(p)
				if p.is_empty() || p.starts_with("/$defs/") || p.starts_with("/definitions/") =>
			{
				self.document.pointer(p)
			}
			_ => None,
		};
		let target = target
			.ok_or(format!("{at}: $ref {pointer:?} (only #, #/$defs/... and #/definitions/...)"))?;
		// Reserved first, so that a schema that refers to itself finds it.
		let id = self.add(Node::Ref(ANY))?;
		self.refs.insert(pointer.to_string(), id);
		let compiled = self.compile(target, pointer)?;
		self.nodes[id as usize] = Node::Ref(compiled);
		Ok(id)
	}
}

/// The schema of a tool's arguments when it has no parameters: `{}` alone.
pub fn no_parameters() -> Value {
	json!({"type": "object", "properties": {}, "additionalProperties": false})
}

/// The node `id` of `nodes` stands for, through `$ref`s; `None` for a cycle of them.
fn resolve(nodes: &[Node], mut id: NodeId) -> Option<NodeId> {
	for _ in 0..=nodes.len() {
		match nodes[id as usize] {
			Node::Ref(target) => id = target,
			_ => return Some(id),
		}
	}
	None
}

/// The properties and required bits of the object node `node` of `nodes` (a tagged one's: its
/// discriminator, required; none for another node).
fn object_of(nodes: &[Node], node: NodeId) -> (&[Property], u64) {
	match &nodes[node as usize] {
		Node::Object { properties, required } => (properties, *required),
		Node::Tagged { tag, .. } => (std::slice::from_ref(tag), 1),
		_ => (&[], 0),
	}
}

/// Where in a number the output is (RFC 8259's `number`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Number {
	/// After `-`.
	Minus,
	/// After a leading `0`.
	Zero,
	/// In the digits of the integer part.
	Int,
	/// After `.`.
	Dot,
	/// In the fraction's digits.
	Frac,
	/// After `e` or `E`.
	E,
	/// After the exponent's sign.
	ESign,
	/// In the exponent's digits.
	Exp,
}

impl Number {
	/// Where a number starting with `b` is.
	fn start(b: u8) -> Option<Self> {
		match b {
			b'-' => Some(Self::Minus),
			b'0' => Some(Self::Zero),
			b'1'..=b'9' => Some(Self::Int),
			_ => None,
		}
	}

	/// Whether the number may end here.
	fn complete(self) -> bool {
		matches!(self, Self::Zero | Self::Int | Self::Frac | Self::Exp)
	}

	/// The state after `b`, if `b` continues the number (an integer has no fraction or
	/// exponent).
	fn step(self, b: u8, integer: bool) -> Option<Self> {
		let digit = b.is_ascii_digit();
		let next = match (self, b) {
			(Self::Minus, b'0') => Self::Zero,
			(Self::Minus, _) if digit => Self::Int,
			(Self::Int, _) if digit => Self::Int,
			(Self::Zero | Self::Int, b'.') => Self::Dot,
			(Self::Dot | Self::Frac, _) if digit => Self::Frac,
			(Self::Zero | Self::Int | Self::Frac, b'e' | b'E') => Self::E,
			(Self::E, b'+' | b'-') => Self::ESign,
			(Self::E | Self::ESign | Self::Exp, _) if digit => Self::Exp,
			_ => return None,
		};
		(!integer || matches!(next, Self::Zero | Self::Int)).then_some(next)
	}
}

/// Where in a string the output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InString {
	/// Plain characters.
	Plain,
	/// After a backslash.
	Escape,
	/// In a `\u` escape, with this many hex digits to go.
	Hex(u8),
	/// In a multi-byte UTF-8 character, with this many continuation bytes to go.
	Utf8(u8),
	/// After a UTF-8 lead byte whose first continuation byte lies in `lo..=hi` (no overlong
	/// forms, surrogates or code points past U+10FFFF), with `left` continuation bytes to go.
	Utf8Lead { left: u8, lo: u8, hi: u8 },
}

/// A string's state after `b`, if `b` may come next in it (other than the closing quote,
/// which the caller takes).
fn string_step(at: InString, b: u8) -> Option<InString> {
	Some(match at {
		InString::Plain => match b {
			b'\\' => InString::Escape,
			0x20..=0x7f => InString::Plain,
			0xc2..=0xdf => InString::Utf8(1),
			0xe0 => InString::Utf8Lead { left: 2, lo: 0xa0, hi: 0xbf },
			0xed => InString::Utf8Lead { left: 2, lo: 0x80, hi: 0x9f },
			0xe1..=0xef => InString::Utf8(2),
			0xf0 => InString::Utf8Lead { left: 3, lo: 0x90, hi: 0xbf },
			0xf4 => InString::Utf8Lead { left: 3, lo: 0x80, hi: 0x8f },
			0xf1..=0xf3 => InString::Utf8(3),
			_ => return None,
		},
		InString::Utf8Lead { left, lo, hi } if (lo..=hi).contains(&b) => match left {
			1 => InString::Plain,
			left => InString::Utf8(left - 1),
		},
		InString::Escape => match b {
			b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => InString::Plain,
			b'u' => InString::Hex(4),
			_ => return None,
		},
		InString::Hex(left) if b.is_ascii_hexdigit() => match left {
			1 => InString::Plain,
			left => InString::Hex(left - 1),
		},
		InString::Utf8(left) if (0x80..=0xbf).contains(&b) => match left {
			1 => InString::Plain,
			left => InString::Utf8(left - 1),
		},
		InString::Hex(_) | InString::Utf8(_) | InString::Utf8Lead { .. } => return None,
	})
}

/// Whether `bytes` keep a string at `at` open (`Some(true)`), close it somewhere (`Some(false)`),
/// or cannot come next in it (`None`).
fn stays_in_string(mut at: InString, bytes: &[u8]) -> Option<bool> {
	for &b in bytes {
		if at == InString::Plain && b == b'"' {
			return Some(false);
		}
		at = string_step(at, b)?;
	}
	Some(true)
}

/// An open container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
	/// An object of node `node`: the properties given so far (a bit each), and the one whose
	/// value comes next.
	Object { node: NodeId, seen: u64, current: u8 },
	/// An object with any keys, each value of node `values`.
	AnyObject { values: NodeId },
	/// An array of node `node`, `count` items begun.
	Array { node: NodeId, count: u32 },
	/// An array of any values.
	AnyArray,
}

/// What the output expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
	/// A value of a node.
	Value(NodeId),
	/// After `[`: an item or `]`.
	ArrayFirst,
	/// After `{`: a key or `}`.
	ObjectFirst,
	/// After `,` in an object: a key.
	Key,
	/// In a key of a declared object: the properties whose keys still match, `at` bytes in.
	DeclaredKey { candidates: u64, at: u8 },
	/// In a string: a value, or any object's key if `key`.
	String { key: bool, at: InString },
	/// After a key: `:`.
	Colon,
	/// In a number.
	Number { at: Number, integer: bool },
	/// In a value of the [`Node::Text`] node `node`, its expression at `at`.
	Text { node: NodeId, at: RegexState },
	/// In one of a node's literals: those that still match, `at` bytes in.
	Literal { node: NodeId, candidates: u64, at: u16 },
	/// After a value: `,` or the innermost container's closing bracket.
	After,
	/// The document is whole.
	Done,
}

/// The bits of the first `n` of up to 64 choices.
fn all_of(n: usize) -> u64 {
	if n >= 64 {
		u64::MAX
	} else {
		(1 << n) - 1
	}
}

/// The choices among `candidates` for which `keep(i)` holds.
fn filter(candidates: u64, count: usize, keep: impl Fn(usize) -> bool) -> u64 {
	(0..count.min(64)).filter(|&i| candidates >> i & 1 == 1 && keep(i)).fold(0, |m, i| m | 1 << i)
}

/// How far into a document of a [`JsonGrammar`] the output is (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonState {
	frames: [Frame; MAX_DEPTH],
	depth: u8,
	expect: Expect,
	/// Whitespace bytes in a row just before.
	whitespace: u8,
}

impl JsonState {
	/// Before the output's first byte.
	pub fn new(grammar: &JsonGrammar) -> Self {
		Self {
			frames: [Frame::AnyArray; MAX_DEPTH],
			depth: 0,
			expect: Expect::Value(grammar.root),
			whitespace: 0,
		}
	}

	/// Whether the document is whole and nothing may follow (a number or a literal at the top
	/// may go on: see [`JsonState::can_end`]).
	pub fn is_done(&self) -> bool {
		self.expect == Expect::Done
	}

	/// Whether the output may end here: the document is whole (a number or a literal at the
	/// top may also go on).
	pub fn can_end(&self, grammar: &JsonGrammar) -> bool {
		match self.expect {
			Expect::Done => true,
			Expect::Number { at, .. } => self.depth == 0 && at.complete(),
			Expect::Text { node, at } => {
				self.depth == 0 && grammar.text(node).is_some_and(|text| text.can_end(at))
			}
			Expect::Literal { node, candidates, at } => {
				let texts = grammar.literals(node);
				self.depth == 0
					&& filter(candidates, texts.len(), |i| texts[i].len() == at as usize) != 0
			}
			_ => false,
		}
	}

	/// The state after `bytes`, if they keep the output a prefix of a document of `grammar`;
	/// `None` for no bytes (a special token, which has no text).
	pub fn accepts(self, grammar: &JsonGrammar, bytes: &[u8]) -> Option<Self> {
		if bytes.is_empty() {
			return None;
		}
		let mut state = self;
		for &b in bytes {
			match &mut state.expect {
				// Inside a string only the string's own state changes (no copy of the rest).
				Expect::String { at, .. } if !(*at == InString::Plain && b == b'"') => {
					*at = string_step(*at, b)?;
				}
				_ => state = state.step(grammar, b)?,
			}
		}
		Some(state)
	}

	/// For each token (by id, its bytes in `token_bytes`), whether it may come next; the end
	/// of the output (`eos`) when the document may end. Walks the tokens' byte trie: a prefix
	/// shared by many tokens is stepped once, and a refused byte prunes every token below it;
	/// inside a string only the string's own state is carried (the rest is that of the state
	/// the string was entered from).
	pub fn allowed_tokens(
		&self,
		grammar: &JsonGrammar,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
	) -> Vec<bool> {
		/// A trie node to go on from: with the state after its bytes (an index in `states`),
		/// or inside a string, with the string's state alone and the index in `states` of the
		/// state the string was entered from.
		#[derive(Clone, Copy)]
		enum Entry {
			Whole(u32, u32),
			InString(u32, InString, u32),
		}
		if let Expect::String { at, .. } = self.expect {
			return self.allowed_in_string(grammar, token_bytes, eos, at);
		}
		if let Expect::Text { node, at } = self.expect {
			return self.allowed_in_text(grammar, token_bytes, eos, node, at);
		}
		let trie = token_bytes.trie();
		let mut allowed = vec![false; token_bytes.len()];
		// Marks the tokens that end at `node`; whether any go on from it.
		let mut reach = |node: u32| {
			for &id in trie.tokens(node) {
				if let Some(slot) = allowed.get_mut(id as usize) {
					*slot = true;
				}
			}
			!trie.children(node).is_empty()
		};
		let mut states: Vec<JsonState> = vec![*self];
		let mut stack = vec![Entry::Whole(0, 0)];
		while let Some(entry) = stack.pop() {
			let node = match entry {
				Entry::Whole(node, _) | Entry::InString(node, ..) => node,
			};
			for &(b, child) in trie.children(node) {
				let next = match entry {
					Entry::InString(_, at, from) if !(at == InString::Plain && b == b'"') => {
						// Inside the string: only its state changes.
						if let Some(next) = string_step(at, b) {
							if reach(child) {
								stack.push(Entry::InString(child, next, from));
							}
						}
						continue;
					}
					Entry::InString(_, _, from) => {
						// The string closes: the whole state again.
						let mut whole = states[from as usize];
						if let Expect::String { at, .. } = &mut whole.expect {
							*at = InString::Plain;
						}
						whole.step(grammar, b)
					}
					Entry::Whole(_, state) => states[state as usize].step(grammar, b),
				};
				let Some(next) = next else { continue };
				if !reach(child) {
					continue;
				}
				states.push(next);
				let index = (states.len() - 1) as u32;
				stack.push(match next.expect {
					Expect::String { at, .. } => Entry::InString(child, at, index),
					_ => Entry::Whole(child, index),
				});
			}
		}
		allow_end(&mut allowed, eos, self.can_end(grammar));
		allowed
	}

	/// [`JsonState::allowed_tokens`] inside a string (at `at`), where nearly every token goes
	/// on and the trie walk would visit every node: token by token on rayon's threads, a token
	/// that stays inside the string checked without copying the automaton.
	fn allowed_in_string(
		&self,
		grammar: &JsonGrammar,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
		at: InString,
	) -> Vec<bool> {
		let mut allowed: Vec<bool> = (0..token_bytes.len())
			.into_par_iter()
			.map(|id| {
				let bytes = token_bytes.get(id).unwrap_or_default();
				match stays_in_string(at, bytes) {
					_ if bytes.is_empty() => false,
					Some(true) => true,
					None => false,
					Some(false) => self.accepts(grammar, bytes).is_some(),
				}
			})
			.collect();
		allow_end(&mut allowed, eos, self.can_end(grammar));
		allowed
	}

	/// [`JsonState::allowed_tokens`] in a value of a [`Node::Text`] node (`node`, its
	/// expression at `at`), where a token's bytes mostly stay in the value: token by token on
	/// rayon's threads, a token followed by the value's automaton alone while it stays in the
	/// value, and the whole state tried only past the value's end, when the byte there may
	/// follow the value; a token wholly after the value (the value whole already) is looked up
	/// in the mask of the state after it.
	fn allowed_in_text(
		&self,
		grammar: &JsonGrammar,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
		node: NodeId,
		at: RegexState,
	) -> Vec<bool> {
		let Some(text) = grammar.text(node) else { return vec![false; token_bytes.len()] };
		// After the value: the bytes that may follow it once it is whole, and if it is whole
		// now, the tokens that may come next (the trie walk of the state after it).
		let mut ended = *self;
		ended.expect = ended.value_end();
		let follows: Vec<bool> = (0..=255u8).map(|b| ended.step(grammar, b).is_some()).collect();
		let next = text.can_end(at).then(|| ended.allowed_tokens(grammar, token_bytes, None));
		let mut allowed: Vec<bool> = (0..token_bytes.len())
			.into_par_iter()
			.map(|id| {
				let bytes = token_bytes.get(id).unwrap_or_default();
				let mut state = at;
				let mut taken = 0;
				while let Some(next) = bytes.get(taken).and_then(|&b| text.accepts(state, &[b])) {
					state = next;
					taken += 1;
				}
				match taken {
					_ if bytes.is_empty() => false,
					_ if taken == bytes.len() => true,
					// The value is whole already: the token is what comes after it.
					0 => next.as_ref().is_some_and(|next| next[id]),
					_ => {
						text.can_end(state)
							&& follows[bytes[taken] as usize]
							&& self.accepts(grammar, bytes).is_some()
					}
				}
			})
			.collect();
		allow_end(&mut allowed, eos, self.can_end(grammar));
		allowed
	}

	/// [`JsonState::allowed_tokens`] computed token by token, each token's bytes tried whole
	/// (no trie, no shortcut): the reference the mask is tested and measured against.
	pub fn allowed_tokens_each(
		&self,
		grammar: &JsonGrammar,
		token_bytes: &TokenBytes,
		eos: Option<u32>,
	) -> Vec<bool> {
		let mut allowed = token_bytes.each_fitting(|bytes| self.accepts(grammar, bytes).is_some());
		allow_end(&mut allowed, eos, self.can_end(grammar));
		allowed
	}

	fn top(&self) -> Option<Frame> {
		self.frames.get(self.depth.checked_sub(1)? as usize).copied()
	}

	fn set_top(&mut self, frame: Frame) {
		if let Some(top) = self.depth.checked_sub(1).and_then(|d| self.frames.get_mut(d as usize)) {
			*top = frame;
		}
	}

	/// What follows a finished value.
	fn value_end(&self) -> Expect {
		if self.depth == 0 {
			Expect::Done
		} else {
			Expect::After
		}
	}

	/// Opens a container, if the nesting allows one more.
	fn open(mut self, frame: Frame, expect: Expect) -> Option<Self> {
		*self.frames.get_mut(self.depth as usize)? = frame;
		self.depth += 1;
		self.expect = expect;
		Some(self)
	}

	/// After a value of the literal node `node`, one of `which` (a bit each) whole: if it was
	/// the discriminator of a [`Node::Tagged`] object, the object is from now on the variant
	/// it names, with the discriminator given.
	fn literal_ends(mut self, grammar: &JsonGrammar, node: NodeId, which: u64) -> Self {
		self.expect = self.value_end();
		if let Some(Frame::Object { node: object, .. }) = self.top() {
			if let Node::Tagged { tag, variants } = &grammar.nodes[object as usize] {
				let chosen = variants.get(which.trailing_zeros() as usize);
				if let (true, Some(&(variant, at))) = (tag.value == node, chosen) {
					self.set_top(Frame::Object { node: variant, seen: 1 << at, current: at });
				}
			}
		}
		self
	}

	/// Closes the innermost container.
	fn close(mut self) -> Self {
		self.depth -= 1;
		self.expect = self.value_end();
		self
	}

	/// Closes the innermost object, if every required property was given.
	fn close_object(self, grammar: &JsonGrammar) -> Option<Self> {
		match self.top()? {
			Frame::AnyObject { .. } => Some(self.close()),
			Frame::Object { node, seen, .. } => {
				let (_, required) = grammar.object(node);
				(required & !seen == 0).then(|| self.close())
			}
			_ => None,
		}
	}

	/// The state after the byte `b`, if it may come next.
	fn step(mut self, grammar: &JsonGrammar, b: u8) -> Option<Self> {
		match self.expect {
			Expect::String { key, at: InString::Plain } if b == b'"' => {
				self.expect = if key { Expect::Colon } else { self.value_end() };
				return Some(self);
			}
			Expect::String { key, at } => {
				self.expect = Expect::String { key, at: string_step(at, b)? };
				return Some(self);
			}
			Expect::DeclaredKey { candidates, at } => {
				let Frame::Object { node, seen, .. } = self.top()? else { return None };
				let (properties, _) = grammar.object(node);
				let key = |i: usize| &properties[i].key;
				let goes_on =
					filter(candidates, properties.len(), |i| key(i).get(at as usize) == Some(&b));
				// A quote closes the key unless a key goes on with it (escaped: a whole key
				// never ends in an escaping backslash).
				if b == b'"' && goes_on == 0 {
					let i = (0..properties.len())
						.find(|&i| candidates >> i & 1 == 1 && key(i).len() == at as usize)?;
					self.set_top(Frame::Object { node, seen: seen | 1 << i, current: i as u8 });
					self.expect = Expect::Colon;
				} else {
					if goes_on == 0 {
						return None;
					}
					self.expect = Expect::DeclaredKey { candidates: goes_on, at: at + 1 };
				}
				return Some(self);
			}
			Expect::Text { node, at } => {
				let text = grammar.text(node)?;
				match text.accepts(at, &[b]) {
					Some(next) => {
						self.expect = Expect::Text { node, at: next };
						return Some(self);
					}
					// The byte after the value belongs to what follows it.
					None if text.can_end(at) => self.expect = self.value_end(),
					None => return None,
				}
			}
			Expect::Number { at, integer } => match at.step(b, integer) {
				Some(next) => {
					self.expect = Expect::Number { at: next, integer };
					return Some(self);
				}
				// The byte after a number belongs to what follows it.
				None if at.complete() => self.expect = self.value_end(),
				None => return None,
			},
			Expect::Literal { node, candidates, at } => {
				let texts = grammar.literals(node);
				let at = at as usize;
				let next = filter(candidates, texts.len(), |i| texts[i].get(at) == Some(&b));
				if next != 0 {
					let longer = filter(next, texts.len(), |i| texts[i].len() > at + 1);
					return Some(match longer {
						0 => self.literal_ends(grammar, node, next),
						_ => {
							self.expect =
								Expect::Literal { node, candidates: next, at: at as u16 + 1 };
							self
						}
					});
				}
				// A literal that is whole may end here (one of `1` and `10`, say).
				let whole = filter(candidates, texts.len(), |i| texts[i].len() == at);
				if whole == 0 {
					return None;
				}
				self = self.literal_ends(grammar, node, whole);
			}
			_ => {}
		}
		if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
			let none = self.expect == Expect::Done || grammar.raw;
			if none || self.whitespace >= MAX_WHITESPACE_RUN {
				return None;
			}
			self.whitespace += 1;
			return Some(self);
		}
		self.whitespace = 0;
		match self.expect {
			Expect::Value(node) => self.start_value(grammar, node, b),
			Expect::ArrayFirst => {
				let (items, min, max) = match self.top()? {
					Frame::Array { node, .. } => grammar.array(node),
					_ => (ANY, 0, u32::MAX),
				};
				if b == b']' {
					return (min == 0).then(|| self.close());
				}
				if max == 0 {
					return None;
				}
				if let Frame::Array { node, .. } = self.top()? {
					self.set_top(Frame::Array { node, count: 1 });
				}
				self.start_value(grammar, items, b)
			}
			Expect::ObjectFirst | Expect::Key => match (self.top()?, b) {
				(_, b'}') if self.expect == Expect::ObjectFirst => self.close_object(grammar),
				(Frame::Object { node, seen, .. }, b'"') => {
					let (properties, _) = grammar.object(node);
					let unseen = all_of(properties.len()) & !seen;
					if unseen == 0 {
						return None;
					}
					self.expect = Expect::DeclaredKey { candidates: unseen, at: 0 };
					Some(self)
				}
				(Frame::AnyObject { .. }, b'"') => {
					self.expect = Expect::String { key: true, at: InString::Plain };
					Some(self)
				}
				_ => None,
			},
			Expect::Colon if b == b':' => {
				self.expect = Expect::Value(match self.top()? {
					Frame::Object { node, current, .. } => {
						grammar.object(node).0.get(current as usize)?.value
					}
					Frame::AnyObject { values } => values,
					_ => return None,
				});
				Some(self)
			}
			Expect::After => match (self.top()?, b) {
				(Frame::Object { node, seen, .. }, b',') => {
					let (properties, _) = grammar.object(node);
					if all_of(properties.len()) & !seen == 0 {
						return None;
					}
					self.expect = Expect::Key;
					Some(self)
				}
				(Frame::AnyObject { .. }, b',') => {
					self.expect = Expect::Key;
					Some(self)
				}
				(Frame::Object { .. } | Frame::AnyObject { .. }, b'}') => {
					self.close_object(grammar)
				}
				(Frame::Array { node, count }, b',') => {
					let (items, _, max) = grammar.array(node);
					if count >= max {
						return None;
					}
					self.set_top(Frame::Array { node, count: count + 1 });
					self.expect = Expect::Value(items);
					Some(self)
				}
				(Frame::AnyArray, b',') => {
					self.expect = Expect::Value(ANY);
					Some(self)
				}
				(Frame::Array { node, count }, b']') => {
					let (_, min, _) = grammar.array(node);
					(count >= min).then(|| self.close())
				}
				(Frame::AnyArray, b']') => Some(self.close()),
				_ => None,
			},
			_ => None,
		}
	}

	/// The state after `b`, the first byte of a value of `node`, if a value of `node` may
	/// start with it.
	fn start_value(mut self, grammar: &JsonGrammar, node: NodeId, b: u8) -> Option<Self> {
		let node = grammar.resolve(node)?;
		match &grammar.nodes[node as usize] {
			Node::Any => match b {
				b'{' => self.open(Frame::AnyObject { values: ANY }, Expect::ObjectFirst),
				b'[' => self.open(Frame::AnyArray, Expect::ArrayFirst),
				b'"' => {
					self.expect = Expect::String { key: false, at: InString::Plain };
					Some(self)
				}
				b't' | b'f' => self.start_value(grammar, BOOLEAN, b),
				b'n' => self.start_value(grammar, NULL, b),
				_ => {
					self.expect = Expect::Number { at: Number::start(b)?, integer: false };
					Some(self)
				}
			},
			Node::Object { .. } if b == b'{' => {
				self.open(Frame::Object { node, seen: 0, current: 0 }, Expect::ObjectFirst)
			}
			Node::Tagged { .. } if b == b'{' => {
				self.open(Frame::Object { node, seen: 0, current: 0 }, Expect::ObjectFirst)
			}
			Node::AnyObject { values } if b == b'{' => {
				self.open(Frame::AnyObject { values: *values }, Expect::ObjectFirst)
			}
			Node::Array { .. } if b == b'[' => {
				self.open(Frame::Array { node, count: 0 }, Expect::ArrayFirst)
			}
			Node::String if b == b'"' => {
				self.expect = Expect::String { key: false, at: InString::Plain };
				Some(self)
			}
			Node::Number { integer } => {
				self.expect = Expect::Number { at: Number::start(b)?, integer: *integer };
				Some(self)
			}
			Node::Text(text) => {
				self.expect = Expect::Text { node, at: text.accepts(text.start(), &[b])? };
				Some(self)
			}
			Node::Literals(texts) => {
				let all = all_of(texts.len());
				let next = filter(all, texts.len(), |i| texts[i].first() == Some(&b));
				match (next, filter(next, texts.len(), |i| texts[i].len() > 1)) {
					(0, _) => None,
					(_, 0) => Some(self.literal_ends(grammar, node, next)),
					_ => {
						self.expect = Expect::Literal { node, candidates: next, at: 1 };
						Some(self)
					}
				}
			}
			Node::Union(members) => {
				let member = members.iter().find(|&&m| grammar.starts[m as usize][b as usize])?;
				self.start_value(grammar, *member, b)
			}
			_ => None,
		}
	}
}

impl JsonGrammar {
	/// An object node's properties and required bits (a tagged one's: its discriminator;
	/// none for another node).
	fn object(&self, node: NodeId) -> (&[Property], u64) {
		object_of(&self.nodes, node)
	}

	/// An array node's items, least and most count (any, for another node).
	fn array(&self, node: NodeId) -> (NodeId, u32, u32) {
		match &self.nodes[node as usize] {
			Node::Array { items, min, max } => (*items, *min, *max),
			_ => (ANY, 0, u32::MAX),
		}
	}

	/// A text node's expression (none for another node).
	fn text(&self, node: NodeId) -> Option<&RegexGrammar> {
		match &self.nodes[node as usize] {
			Node::Text(text) => Some(text),
			_ => None,
		}
	}

	/// A literal node's texts (none for another node).
	fn literals(&self, node: NodeId) -> &[Box<[u8]>] {
		match &self.nodes[node as usize] {
			Node::Literals(texts) => texts,
			_ => &[],
		}
	}
}

#[cfg(test)]
mod tests {
	use serde_json::json;

	use super::*;

	fn run(grammar: &JsonGrammar, text: &[u8]) -> Option<JsonState> {
		JsonState::new(grammar).accepts(grammar, text)
	}

	fn complete(grammar: &JsonGrammar, text: &str) -> bool {
		run(grammar, text.as_bytes()).is_some_and(|s| s.can_end(grammar))
	}

	#[test]
	fn json_mode_takes_every_kind_of_value_and_only_an_object_on_top() {
		let any = JsonGrammar::any_object();
		for text in [
			r#"{}"#,
			r#" { "a" : 1 }"#,
			r#"{"a":[1,-0.5,2e10,3E-2,0,-7],"b":{"c":null,"d":true,"e":false},"f":[]}"#,
			r#"{"s":"tab\t \"q\" \\ \/ \u00e9 é 😀"}"#,
			"{\n  \"k\": [\n    {}\n  ]\n}",
		] {
			assert!(complete(&any, text), "{text}");
			assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
		}
		for text in ["[]", "1", "\"s\"", "null", "true"] {
			assert!(run(&any, text.as_bytes()).is_none(), "{text} is not an object");
		}
	}

	#[test]
	fn refuses_what_is_not_json() {
		let any = JsonGrammar::any_object();
		for text in [
			r#"{"a":01}"#,
			r#"{"a":1.}"#,
			r#"{"a":-}"#,
			r#"{"a":1e}"#,
			r#"{"a":+1}"#,
			r#"{a:1}"#,
			r#"{"a" 1}"#,
			r#"{"a":1,}"#,
			r#"{"a":[1,]}"#,
			r#"{"a":[1}"#,
			r#"{"a":{]}"#,
			r#"{"a":tru}"#,
			r#"{"a":nul1}"#,
			"{\"a\":\"line\nbreak\"}",
			r#"{"a":"\x"}"#,
			r#"{"a":"\u12G4"}"#,
			r#"{}{}"#,
			r#"{} x"#,
		] {
			assert!(!complete(&any, text), "{text} was taken");
		}
		assert!(run(&any, b"{\"a\":\"\xff\"}").is_none());
		assert!(run(&any, b"{\"a\":\"\xc3\x28\"}").is_none());
		// Nothing after the document, not even whitespace.
		assert!(run(&any, b"{} ").is_none());
	}

	#[test]
	fn a_prefix_is_taken_and_ends_only_when_whole() {
		let any = JsonGrammar::any_object();
		let state = run(&any, br#"{"key": [1.5, "va"#).unwrap();
		assert!(!state.can_end(&any));
		// A number ends with the byte after it, which must fit what follows.
		let state = run(&any, br#"{"n": 12"#).unwrap();
		assert!(state.accepts(&any, b"}").unwrap().can_end(&any));
		assert!(state.accepts(&any, b"3, \"m\": 0}").unwrap().can_end(&any));
		assert!(state.accepts(&any, b"]").is_none());
		// A multi-byte character split across tokens.
		let state = run(&any, b"{\"e\": \"\xf0\x9f").unwrap();
		assert!(state.accepts(&any, b"\x98\x80\"}").unwrap().can_end(&any));
		assert!(state.accepts(&any, b"\"}").is_none());
		// Special tokens have no bytes.
		assert!(JsonState::new(&any).accepts(&any, b"").is_none());
	}

	#[test]
	fn limits_the_nesting_and_the_whitespace() {
		let any = JsonGrammar::any_object();
		let deep = "[".repeat(MAX_DEPTH - 1);
		let state = run(&any, format!("{{\"a\":{deep}").as_bytes()).unwrap();
		assert!(state.accepts(&any, b"[").is_none());
		assert!(state.accepts(&any, b"1").is_some());
		let closed = format!("{{\"a\":{deep}{}}}", "]".repeat(MAX_DEPTH - 1));
		assert!(complete(&any, &closed));
		let spaces = " ".repeat(MAX_WHITESPACE_RUN as usize);
		let state = run(&any, format!("{{{spaces}").as_bytes()).unwrap();
		assert!(state.accepts(&any, b" ").is_none());
		assert!(state.accepts(&any, b"\"k\":").unwrap().accepts(&any, spaces.as_bytes()).is_some());
	}

	fn person() -> JsonGrammar {
		JsonGrammar::from_schema(&json!({
			"title": "Person",
			"type": "object",
			"properties": {
				"name": {"type": "string", "description": "their name"},
				"age": {"type": "integer"},
				"height": {"type": ["number", "null"]},
				"pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "maxItems": 2},
				"role": {"enum": ["admin", "user", 1, 10]},
				"active": {"type": "boolean"}
			},
			"required": ["name", "age"],
			"$defs": {"Pet": {"type": "object",
				"properties": {"kind": {"const": "cat"}, "friends": {"type": "array",
					"items": {"$ref": "#/$defs/Pet"}}},
				"required": ["kind"], "additionalProperties": false}}
		}))
		.unwrap()
	}

	#[test]
	fn a_schema_takes_what_it_describes_in_any_key_order() {
		let g = person();
		for text in [
			r#"{"name":"Ada","age":36}"#,
			r#"{"age": -3, "name": "B", "height": null, "active": false}"#,
			r#"{"name":"C","age":1,"height":1.75e0,"role":"admin","pets":[]}"#,
			r#"{"name":"D","age":2,"role":10,"pets":[{"kind":"cat"},{"kind":"cat","friends":[{"kind":"cat"}]}]}"#,
			r#"{"role":1,"name":"E","age":0}"#,
		] {
			assert!(complete(&g, text), "{text}");
		}
		for text in [
			r#"{"name":"Ada"}"#,
			r#"{"age":36}"#,
			r#"{"name":"Ada","age":36.5}"#,
			r#"{"name":"Ada","age":1e3}"#,
			r#"{"name":1,"age":36}"#,
			r#"{"name":"A","age":3,"name":"B"}"#,
			r#"{"name":"A","age":3,"other":1}"#,
			r#"{"name":"A","age":3,"role":"guest"}"#,
			r#"{"name":"A","age":3,"role":100}"#,
			r#"{"name":"A","age":3,"height":"tall"}"#,
			r#"{"name":"A","age":3,"pets":[{"kind":"dog"}]}"#,
			r#"{"name":"A","age":3,"pets":[{}]}"#,
			r#"{"name":"A","age":3,"pets":[{"kind":"cat"},{"kind":"cat"},{"kind":"cat"}]}"#,
			r#"{"name":"A","age":3,"active":"yes"}"#,
			r#"["name"]"#,
		] {
			assert!(!complete(&g, text), "{text} was taken");
		}
		// A key is matched byte by byte against the ones not given yet.
		let state = run(&g, br#"{"name":"A","#).unwrap();
		assert!(state.accepts(&g, b"\"na").is_none());
		assert!(state.accepts(&g, b"\"ag").is_some());
		assert!(run(&g, br#"{"a"#).unwrap().accepts(&g, b"ge\":").is_some());
		// An enum's 1 ends where 10 does not go on.
		assert!(run(&g, br#"{"name":"x","age":1,"role":1"#).unwrap().accepts(&g, b"}").is_some());
	}

	#[test]
	fn top_level_scalars_may_end_the_output() {
		let g = JsonGrammar::from_schema(&json!({"type": "integer"})).unwrap();
		let state = run(&g, b"12").unwrap();
		assert!(state.can_end(&g) && state.accepts(&g, b"3").is_some());
		assert!(run(&g, b"-").is_some_and(|s| !s.can_end(&g)));
		let g = JsonGrammar::from_schema(&json!({"enum": [1, 10, "x"]})).unwrap();
		assert!(run(&g, b"1").unwrap().can_end(&g));
		assert!(run(&g, b"10").unwrap().can_end(&g));
		assert!(run(&g, b"\"x\"").unwrap().can_end(&g));
		assert!(run(&g, b"2").is_none());
		let anything = JsonGrammar::from_schema(&json!({})).unwrap();
		assert!(complete(&anything, "[1, {\"a\": null}]") && complete(&anything, "\"s\""));
	}

	/// Strings with a length or a pattern, in an object (the value followed by what comes
	/// after it), alone at the top, and beside other types.
	#[test]
	fn strings_keep_their_length_and_pattern() {
		let schema = json!({"type": "object", "properties": {
				"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
				"name": {"type": "string", "minLength": 2, "maxLength": 4},
				"note": {"type": ["string", "null"], "maxLength": 1}},
			"required": ["code", "name", "note"]});
		let g = JsonGrammar::from_schema(&schema).unwrap();
		let doc = |code: &str, name: &str, note: &str| {
			format!(r#"{{"code": {code}, "name": {name} , "note":{note}}}"#)
		};
		for (code, name, note) in [
			(r#""ABC-12""#, r#""Tom""#, "null"),
			(r#""XYZ-00""#, r#""é\"日😀""#, r#""x""#),
			(r#""ABC-12""#, r#""ab""#, r#""\n""#),
		] {
			let text = doc(code, name, note);
			assert!(complete(&g, &text), "{text}");
			assert!(serde_json::from_str::<Value>(&text).is_ok());
		}
		for (code, name, note) in [
			(r#""AB-12""#, r#""Tom""#, "null"),
			(r#""ABC-12 ""#, r#""Tom""#, "null"),
			(r#""ABC-12""#, r#""T""#, "null"),
			(r#""ABC-12""#, r#""Tommy""#, "null"),
			(r#""ABC-12""#, r#""Tom""#, r#""xy""#),
			(r#""ABC-12""#, r#""Tom""#, "1"),
		] {
			let text = doc(code, name, note);
			assert!(run(&g, text.as_bytes()).is_none(), "{text}");
		}
		// At the top: the document may end once the value is whole.
		let top = JsonGrammar::from_schema(&json!({"maxLength": 2})).unwrap();
		assert!(run(&top, br#""ab"#).is_some_and(|s| !s.can_end(&top)));
		assert!(complete(&top, r#""ab""#) && complete(&top, r#" "ab""#));
		assert!(run(&top, br#""abc"#).is_none());
		// The mask, walked or not, allows what trying each token allows, inside the value
		// and across its end.
		let bytes = TokenBytes::new(
			[
				r#"""#,
				r#""A"#,
				"AB",
				"C-",
				"-1",
				"12",
				r#"2""#,
				r#"2","#,
				r#"", "name"#,
				"a",
				"é",
				" ",
			]
			.iter()
			.map(|t| t.as_bytes()),
		);
		for text in [
			r#"{"code": "#,
			r#"{"code": "AB"#,
			r#"{"code": "ABC-1"#,
			r#"{"code": "ABC-12"#,
			r#"{"code": "ABC-12""#,
		] {
			let state = run(&g, text.as_bytes()).unwrap();
			assert_eq!(
				state.allowed_tokens(&g, &bytes, None),
				state.allowed_tokens_each(&g, &bytes, None),
				"{text}"
			);
		}
		let state = run(&g, br#"{"code": "ABC-1"#).unwrap();
		let allowed = state.allowed_tokens(&g, &bytes, None);
		let ids: Vec<usize> = (0..allowed.len()).filter(|&i| allowed[i]).collect();
		assert_eq!(ids, [6, 7], "12 is a digit too many; 2\" and 2\", close the value");
	}

	/// Integers between bounds (inclusive, exclusive, draft 4's booleans, bounds that are not
	/// integers), in an object and alone.
	#[test]
	fn integers_keep_their_bounds() {
		let schema = json!({"type": "object", "properties": {
				"age": {"type": "integer", "minimum": 0, "maximum": 120},
				"above": {"type": "integer", "exclusiveMinimum": 0.5},
				"below": {"type": ["integer", "null"], "maximum": -10, "exclusiveMaximum": true}},
			"required": ["age", "above", "below"]});
		let g = JsonGrammar::from_schema(&schema).unwrap();
		let doc = |age: &str, above: &str, below: &str| {
			format!(r#"{{"age": {age}, "above": {above}, "below":{below} }}"#)
		};
		for (age, above, below) in
			[("0", "1", "-11"), ("120", "99999999999", "null"), ("7", "2", "-100")]
		{
			assert!(complete(&g, &doc(age, above, below)), "{age} {above} {below}");
		}
		for (age, above, below) in [
			("121", "1", "-11"),
			("-1", "1", "-11"),
			("007", "1", "-11"),
			("1.5", "1", "-11"),
			("1", "0", "-11"),
			("1", "1", "-10"),
			("1", "1", "-9"),
		] {
			let text = doc(age, above, below);
			assert!(run(&g, text.as_bytes()).is_none(), "{text}");
		}
		// The mask, from inside a value and from a whole one, against trying each token.
		let bytes = TokenBytes::new(
			["0", "00", "1", "12", ",", ", ", " ", "}", "0,", "5}", r#""above""#, "0 ", "x"]
				.iter()
				.map(|t| t.as_bytes()),
		);
		for text in [r#"{"age": "#, r#"{"age": 1"#, r#"{"age": 12"#, r#"{"age": 120"#] {
			let state = run(&g, text.as_bytes()).unwrap();
			let allowed = state.allowed_tokens(&g, &bytes, None);
			assert_eq!(allowed, state.allowed_tokens_each(&g, &bytes, None), "{text}");
			assert!(allowed.contains(&true), "{text}");
		}
		// Numbers between bounds that are integers, and a bound given twice (the tighter wins).
		let numbers = JsonGrammar::from_schema(&json!({"type": "array", "items": {
			"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": 1}}))
		.unwrap();
		assert!(complete(&numbers, "[0, 0.5, 0.999, 0.0]"));
		let above_two = JsonGrammar::from_schema(&json!({"type": "number", "minimum": 2,
			"exclusiveMinimum": 2}))
		.unwrap();
		assert!(complete(&above_two, "2.5") && !complete(&above_two, "2"));
		for text in ["[1]", "[1.0]", "[-0.5]", "[1.5]", "[-0]", "[0.5e1]"] {
			assert!(run(&numbers, text.as_bytes()).is_none_or(|s| !s.can_end(&numbers)), "{text}");
		}
		// Integers past 2^53 are bounds exactly (an f64 would round them).
		for (schema, within, past) in [
			(json!({"maximum": 9_007_199_254_740_995_i64}), "9007199254740995", "9007199254740996"),
			(json!({"minimum": u64::MAX}), "18446744073709551615", "18446744073709551614"),
			(
				json!({"exclusiveMaximum": i64::MIN + 1}),
				"-9223372036854775808",
				"-9223372036854775807",
			),
			// Of two bounds on a side, the tighter, compared exactly.
			(
				json!({"maximum": 1_i64 << 60, "exclusiveMaximum": (1_i64 << 60) + 10}),
				"1152921504606846976",
				"1152921504606846977",
			),
			(
				json!({"minimum": (1_i64 << 60) + 100, "exclusiveMinimum": 1_i64 << 60}),
				"1152921504606847076",
				"1152921504606847075",
			),
		] {
			let mut schema = schema;
			schema["type"] = json!("integer");
			let g = JsonGrammar::from_schema(&schema).unwrap();
			assert!(complete(&g, within) && !complete(&g, past), "{schema}");
		}
		let top = JsonGrammar::from_schema(&json!({"type": "integer", "minimum": 10})).unwrap();
		assert!(run(&top, b"1").is_some_and(|s| !s.can_end(&top)), "10 or more may follow");
		assert!(complete(&top, "10") && complete(&top, " 12345") && !complete(&top, "9"));
		// At the top the end of the output (a token of no bytes here) comes once it is whole.
		let bytes = TokenBytes::new(["0", "1", "12", " ", "5,", ""].iter().map(|t| t.as_bytes()));
		let eos = Some(5);
		for (text, whole) in [("1", false), ("12", true), (" 100", true)] {
			let state = run(&top, text.as_bytes()).unwrap();
			let allowed = state.allowed_tokens(&top, &bytes, eos);
			assert_eq!(allowed, state.allowed_tokens_each(&top, &bytes, eos), "{text}");
			assert_eq!(allowed[5], whole, "{text}");
		}
	}

	/// Values held to the same expression share one automaton; a schema's automata together
	/// may take at most [`MAX_AUTOMATA_BYTES`].
	#[test]
	fn automata_are_shared_and_bounded_per_schema() {
		let same = json!({"type": "object", "properties": {
			"a": {"type": "string", "maxLength": 40}, "b": {"type": "string", "maxLength": 40},
			"c": {"type": "integer", "minimum": 1}, "d": {"type": "integer", "minimum": 1},
			"e": {"type": "string", "pattern": "x", "minLength": 0}}});
		let g = JsonGrammar::from_schema(&same).unwrap();
		let texts = g.nodes.iter().filter(|n| matches!(n, Node::Text(_))).count();
		assert_eq!(texts, 3, "one automaton per expression");
		assert!(complete(&g, r#"{"e": "x", "a": "y"}"#));
		// Many long strings of different lengths: past the budget, refused whole.
		let each = json_text::with_length(0, Some(3000)).unwrap().memory_usage();
		let needed = MAX_AUTOMATA_BYTES / each + 2;
		let objects: Vec<Value> = (0..needed.div_ceil(MAX_CHOICES))
			.map(|o| {
				let properties: serde_json::Map<String, Value> = (0..MAX_CHOICES)
					.map(|p| {
						let n = 3000 + o * MAX_CHOICES + p;
						(format!("p{p}"), json!({"type": "string", "maxLength": n}))
					})
					.collect();
				json!({"type": "object", "properties": properties})
			})
			.collect();
		let many = json!({"type": "array", "items": {"anyOf": objects}});
		let error = JsonGrammar::from_schema(&many).unwrap_err();
		assert!(error.contains("more than 64 MiB of automata"), "{error}");
	}

	#[test]
	fn schemas_it_cannot_hold_to_are_refused_with_the_reason() {
		for (schema, says) in [
			(
				json!({"type": "string", "pattern": "a", "maxLength": 3}),
				"pattern beside a minLength above 0 or a maxLength",
			),
			(json!({"type": "string", "pattern": "a^b"}), "#: pattern: ^ is served only"),
			(json!({"type": "string", "pattern": 3}), "pattern is a string"),
			(json!({"type": "string", "minLength": 3, "maxLength": 2}), "minLength 3 is more"),
			(json!({"type": "string", "minLength": -1}), "minLength is a count"),
			(json!({"type": "number", "minimum": 0.5}), "a bound of 0.5 on a number is not served"),
			(json!({"exclusiveMaximum": 1.5}), "a bound of 1.5 on a number"),
			(
				json!({"type": "number", "minimum": 2, "exclusiveMaximum": 2}),
				"no number is at least 2",
			),
			(json!({"type": "integer", "minimum": "0"}), "minimum is a number"),
			(json!({"type": "integer", "maximum": true}), "maximum is a number"),
			(json!({"type": "integer", "maximum": 1e40}), "beyond"),
			(json!({"type": "integer", "minimum": 3, "maximum": 2}), "no integer"),
			(json!({"type": "integer", "exclusiveMinimum": 2, "maximum": 2}), "no integer"),
			(json!({"type": "integer", "multipleOf": 2}), "multipleOf is not served"),
			(json!({"anyOf": [{"type": "object"}, {"type": "object"}]}), "'{'"),
			(json!({"type": ["integer", "number"]}), "start with"),
			(json!({"type": "date"}), "unknown type"),
			(json!({"$ref": "https://example.com/s.json"}), "$ref"),
			(json!({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}}), "cycle"),
			(json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}), "required"),
			(json!({"type": "array", "minItems": 3, "maxItems": 2}), "minItems"),
			(json!({"allOf": [{}, {}]}), "allOf"),
			(json!(3), "a schema is"),
			(json!({"$recursiveRef": "#"}), "$recursiveRef is not served"),
			(json!({"type": "array", "additionalItems": false}), "additionalItems is not served"),
			(json!({"$ref": "#/$defs/A", "type": "object", "$defs": {"A": {}}}), "beside $ref"),
			(json!({"anyOf": [{}], "properties": {}}), "beside anyOf"),
			(json!({"type": "string", "enum": ["a", 1]}), "not of type"),
			(json!({"const": "x".repeat(MAX_LITERAL)}), "longer than"),
			(json!({"type": "object", "required": ["a"]}), "required"),
			(json!({"additionalProperties": false, "required": ["a"]}), "required"),
		] {
			let error = JsonGrammar::from_schema(&schema).unwrap_err();
			assert!(error.contains(says), "{schema}: {error:?} does not say {says:?}");
		}
		// A chain of $refs deeper than the compiler goes.
		let defs: serde_json::Map<String, Value> = (0..100)
			.map(|i| (format!("D{i}"), json!({"$ref": format!("#/$defs/D{}", i + 1)})))
			.chain([("D100".to_string(), json!({"type": "integer"}))])
			.collect();
		let chain = json!({"$ref": "#/$defs/D0", "$defs": defs});
		let error = JsonGrammar::from_schema(&chain).unwrap_err();
		assert!(error.contains("nests more than"), "{error}");
	}

	#[test]
	fn what_the_review_found_is_held_to() {
		// A key with an escaped quote in it.
		let g = JsonGrammar::from_schema(&json!({"type": "object",
			"properties": {"say \"hi\"": {"type": "integer"}, "say": {"type": "integer"}},
			"required": ["say \"hi\""]}))
		.unwrap();
		assert!(complete(&g, r#"{"say \"hi\"": 1}"#));
		assert!(complete(&g, r#"{"say": 2, "say \"hi\"": 1}"#));
		assert!(!complete(&g, r#"{"say": 2}"#));
		// A long constant.
		let long = "y".repeat(300);
		let g = JsonGrammar::from_schema(&json!({"const": long})).unwrap();
		assert!(complete(&g, &format!("\"{long}\"")));
		assert!(!complete(&g, &format!("\"{}\"", &long[1..])));
		// Values of one schema under any keys.
		let g = JsonGrammar::from_schema(
			&json!({"type": "object", "additionalProperties": {"type": "integer"}}),
		)
		.unwrap();
		assert!(complete(&g, r#"{"a": 1, "b": -2}"#) && complete(&g, "{}"));
		assert!(!complete(&g, r#"{"a": "x"}"#));
		// UTF-8 as serde_json takes it: no overlong forms, surrogates or past U+10FFFF.
		let any = JsonGrammar::any_object();
		assert!(run(&any, "{\"€\": \"𐍈\"}".as_bytes()).is_some_and(|s| s.can_end(&any)));
		for bad in [&b"\xe0\x80\x80"[..], b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x80\x80\x80"]
		{
			let text = [&b"{\"a\": \""[..], bad].concat();
			assert!(run(&any, &text).is_none(), "{bad:x?}");
		}
	}

	#[test]
	fn schemas_it_takes_beside_annotations() {
		for schema in [
			json!({"title": "T", "description": "d", "type": "string", "format": "date-time"}),
			json!({"anyOf": [{"type": "string"}, {"type": "null"}], "default": null}),
			json!({"type": "string", "enum": ["a", "b"], "title": "E"}),
			json!({"$ref": "#/$defs/A", "$defs": {"A": {"type": "integer"}}, "title": "R"}),
		] {
			assert!(JsonGrammar::from_schema(&schema).is_ok(), "{schema}");
		}
	}

	/// Pydantic's discriminated unions: objects told apart by a constant string property.
	fn pets() -> JsonGrammar {
		JsonGrammar::from_schema(&json!({
			"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}, {"type": "null"}],
			"$defs": {
				"Cat": {"type": "object", "properties": {"meows": {"type": "integer"},
					"kind": {"const": "cat"}}, "required": ["kind", "meows"]},
				"Dog": {"type": "object", "properties": {"kind": {"enum": ["dog", "puppy"]},
					"barks": {"type": "number"}}, "required": ["kind"]}
			}
		}))
		.unwrap()
	}

	#[test]
	fn objects_told_apart_by_a_discriminator_written_first() {
		// As pydantic writes a `Field(discriminator="pet_type")` union.
		let pydantic = JsonGrammar::from_schema(&json!({
			"$defs": {
				"Cat": {"properties": {"pet_type": {"const": "cat", "title": "Pet Type",
					"type": "string"}, "meows": {"title": "Meows", "type": "integer"}},
					"required": ["pet_type", "meows"], "title": "Cat", "type": "object"},
				"Dog": {"properties": {"pet_type": {"const": "dog", "title": "Pet Type",
					"type": "string"}, "barks": {"title": "Barks", "type": "number"}},
					"required": ["pet_type", "barks"], "title": "Dog", "type": "object"}
			},
			"properties": {"pet": {"discriminator": {"mapping": {"cat": "#/$defs/Cat",
				"dog": "#/$defs/Dog"}, "propertyName": "pet_type"},
				"oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}], "title": "Pet"}},
			"required": ["pet"], "title": "Model", "type": "object"
		}))
		.unwrap();
		assert!(complete(&pydantic, r#"{"pet": {"pet_type": "dog", "barks": 2.5}}"#));
		assert!(!complete(&pydantic, r#"{"pet": {"pet_type": "dog", "meows": 2}}"#));
		// The discriminator pydantic names comes first, of two that would do.
		let two = JsonGrammar::from_schema(&json!({"oneOf": [
			{"properties": {"kind": {"const": "a"}, "type": {"const": "x"}},
				"required": ["kind", "type"]},
			{"properties": {"kind": {"const": "b"}, "type": {"const": "y"}},
				"required": ["kind", "type"]}],
			"discriminator": {"propertyName": "type"}}))
		.unwrap();
		assert!(complete(&two, r#"{"type": "x", "kind": "a"}"#));
		assert!(!complete(&two, r#"{"kind": "a", "type": "x"}"#));
		assert!(!complete(&two, r#"{"type": "x", "kind": "b"}"#));
		let g = pets();
		for text in [
			r#"{"kind": "cat", "meows": 3}"#,
			r#"{"kind":"puppy"}"#,
			r#"{"kind": "dog", "barks": 1.5}"#,
			"null",
		] {
			assert!(complete(&g, text), "{text}");
		}
		for text in [
			r#"{"meows": 3, "kind": "cat"}"#,
			r#"{"kind": "cat", "barks": 1}"#,
			r#"{"kind": "cat"}"#,
			r#"{"kind": "bird"}"#,
			r#"{"kind": "dog", "kind": "dog"}"#,
			"{}",
		] {
			assert!(!complete(&g, text), "{text} was taken");
		}
		// Objects without one are refused, saying what would do.
		for schema in [
			json!({"anyOf": [{"properties": {"a": {"const": "x"}}, "required": ["a"]},
				{"properties": {"a": {"const": "x"}}, "required": ["a"]}]}),
			json!({"anyOf": [{"properties": {"a": {"const": "x"}}},
				{"properties": {"a": {"const": "y"}}, "required": ["a"]}]}),
			json!({"anyOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]},
				{"properties": {"a": {"const": 2}}, "required": ["a"]}]}),
		] {
			let error = JsonGrammar::from_schema(&schema).unwrap_err();
			assert!(error.contains("constant string of its own"), "{schema}: {error}");
		}
	}

	#[test]
	fn tool_calls_are_a_list_of_named_calls_each_with_its_tools_parameters() {
		let weather = json!({"type": "object", "properties": {"city": {"$ref": "#/$defs/City"}},
			"required": ["city"], "$defs": {"City": {"type": "string"}}});
		let count = json!({"type": "object", "properties": {"n": {"$ref": "#/$defs/City"}},
			"$defs": {"City": {"type": "integer"}}});
		let g = JsonGrammar::tool_calls(
			&[("weather", Some(&weather)), ("count", Some(&count)), ("now", None)],
			2,
		)
		.unwrap();
		for text in [
			r#"[{"name": "weather", "parameters": {"city": "Oslo"}}]"#,
			r#"[{"name":"now","parameters":{}},{"name":"count","parameters":{"n":2}}]"#,
		] {
			assert!(complete(&g, text), "{text}");
		}
		let three = format!("[{}]", [r#"{"name": "now", "parameters": {}}"#; 3].join(", "));
		for text in [
			"[]",
			r#"[{"name": "count", "parameters": {"n": "2"}}]"#,
			r#"[{"name": "weather", "parameters": {"city": 2}}]"#,
			r#"[{"name": "now", "parameters": {"x": 1}}]"#,
			r#"[{"parameters": {}, "name": "now"}]"#,
			three.as_str(),
		] {
			assert!(!complete(&g, text), "{text} was taken");
		}
		// One tool: its name first too (a stream of calls reads the name before the arguments).
		let g = JsonGrammar::tool_calls(&[("now", None)], u32::MAX).unwrap();
		assert!(complete(&g, r#"[{"name": "now", "parameters": {}}]"#));
		assert!(!complete(&g, r#"[{"parameters": {}, "name": "now"}]"#));
	}

	#[test]
	fn a_choice_is_one_of_its_texts_exactly() {
		let texts = ["yes", "yes!", "no way", "{\"a\": 1}"].map(String::from);
		let g = JsonGrammar::choice(&texts).unwrap();
		for text in &texts {
			assert!(complete(&g, text), "{text}");
		}
		for text in [" yes", "yes ", "ye", "yes!!", "no", "no  way", "{\"a\":1}", "maybe", ""] {
			assert!(!complete(&g, text), "{text:?} was taken");
		}
		// Ends after "yes", or goes on to "yes!".
		let state = run(&g, b"yes").unwrap();
		assert!(state.can_end(&g) && state.accepts(&g, b"!").unwrap().can_end(&g));
		assert!(JsonGrammar::choice(&[]).unwrap_err().contains("1 to 64 choices"));
		let error = JsonGrammar::choice(&[String::new()]).unwrap_err();
		assert!(error.contains("1 to 1024 bytes"), "{error}");
	}

	#[test]
	fn the_trie_walk_allows_what_trying_each_token_allows() {
		// Every string of up to three bytes from a JSON-ish alphabet, and some longer ones.
		let alphabet: Vec<u8> = b"{}[]:, \"\\abnlrtuefs0123456789.-+eE\n".to_vec();
		let mut vocabulary: Vec<Vec<u8>> = vec![Vec::new()];
		for length in 1..=3 {
			let mut words = vec![Vec::new()];
			for _ in 0..length {
				words = words
					.iter()
					.flat_map(|w| alphabet.iter().map(move |&b| [w.clone(), vec![b]].concat()))
					.collect();
			}
			vocabulary.extend(words.into_iter().step_by(length));
		}
		for long in ["{\"name\": \"", "\", \"age\": ", "true}", "null, ", "\\u00e9\"", "é\"}", "]}"]
		{
			vocabulary.push(long.as_bytes().to_vec());
		}
		let tokens = TokenBytes::new(&vocabulary);
		let eos = Some(0);
		let documents = [
			(JsonGrammar::any_object(), r#"{"a": [1, -2.5e3, "x\"y", {"b": null}], "c": true}"#),
			(person(), r#"{"name": "Ada", "age": 36, "role": 10, "pets": [{"kind": "cat"}]}"#),
			(pets(), r#"{"kind": "puppy", "barks": -2}"#),
			(JsonGrammar::choice(&["a b".into(), "a b\"c".into(), "{}".into()]).unwrap(), "a b\"c"),
		];
		for (grammar, document) in &documents {
			for cut in 0..=document.len() {
				let Some(state) = run(grammar, &document.as_bytes()[..cut])
					.or((cut == 0).then(|| JsonState::new(grammar)))
				else {
					continue;
				};
				assert_eq!(
					state.allowed_tokens(grammar, &tokens, eos),
					state.allowed_tokens_each(grammar, &tokens, eos),
					"after {:?}",
					&document[..cut]
				);
			}
		}
	}

	#[test]
	fn allowed_tokens_are_those_that_fit_and_the_end_only_when_whole() {
		let any = JsonGrammar::any_object();
		let bytes = TokenBytes::new(["{", "}", "\"a\"", ":", "1", " ", "", "{\"", "x"]);
		let eos = Some(6);
		let allowed = |state: &JsonState| {
			let mask = state.allowed_tokens(&any, &bytes, eos);
			(0..bytes.len()).filter(|&i| mask[i]).collect::<Vec<_>>()
		};
		let start = JsonState::new(&any);
		assert_eq!(allowed(&start), [0, 5, 7]);
		let state = start.accepts(&any, b"{").unwrap();
		assert_eq!(allowed(&state), [1, 2, 5]);
		let state = state.accepts(&any, b"\"a\":1").unwrap();
		assert_eq!(allowed(&state), [1, 4, 5]);
		let done = state.accepts(&any, b"}").unwrap();
		assert_eq!(allowed(&done), [6]);
	}
}
