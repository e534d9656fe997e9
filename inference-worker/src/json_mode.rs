//! JSON mode (OpenAI's `response_format: {"type": "json_object"}`): the output is held to one
//! JSON object (RFC 8259), token by token.
//!
//! [`JsonState`] is a pushdown automaton over the output's bytes. Before each token is picked,
//! every token of the vocabulary whose bytes would take the output off the grammar is masked
//! (see [`JsonState::accepts`]), so whatever is sampled keeps the output a prefix of a JSON
//! object; once the object is closed only the end-of-sequence token is left. The state is
//! `Copy` (the nesting is a bit stack), so trying a token costs no allocation: a step over a
//! 49,152-token vocabulary is a few hundred thousand byte transitions, most tokens failing on
//! their first byte.
//!
//! Two limits keep a model that the mask steers from running away: nesting deeper than
//! [`MAX_DEPTH`], and more than [`MAX_WHITESPACE_RUN`] whitespace bytes in a row between tokens
//! of the grammar (a model kept off everything else can otherwise pad forever). An output cut
//! by `max_tokens` is a prefix of an object, not an object, as with OpenAI.

/// The deepest nesting of objects and arrays.
pub const MAX_DEPTH: u8 = 64;
/// The most whitespace bytes in a row outside strings.
pub const MAX_WHITESPACE_RUN: u8 = 32;

/// The three literals, by [`Mode::Literal`]'s `which`.
const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

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
	/// Whether the number may end here.
	fn complete(self) -> bool {
		matches!(self, Self::Zero | Self::Int | Self::Frac | Self::Exp)
	}

	/// The state after `b`, if `b` continues the number.
	fn step(self, b: u8) -> Option<Self> {
		let digit = b.is_ascii_digit();
		Some(match (self, b) {
			(Self::Minus, b'0') => Self::Zero,
			(Self::Minus, _) if digit => Self::Int,
			(Self::Int, _) if digit => Self::Int,
			(Self::Zero | Self::Int, b'.') => Self::Dot,
			(Self::Dot | Self::Frac, _) if digit => Self::Frac,
			(Self::Zero | Self::Int | Self::Frac, b'e' | b'E') => Self::E,
			(Self::E, b'+' | b'-') => Self::ESign,
			(Self::E | Self::ESign | Self::Exp, _) if digit => Self::Exp,
			_ => return None,
		})
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
}

/// What the output expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
	/// Before the object: whitespace or `{`.
	Start,
	/// A value (after `:`, or after `,` in an array).
	Value,
	/// After `[`: a value or `]`.
	ArrayFirst,
	/// After `{`: a key or `}`.
	ObjectFirst,
	/// After `,` in an object: a key.
	Key,
	/// In a string, an object's key if `key`.
	String { key: bool, at: InString },
	/// After a key: `:`.
	Colon,
	/// In a number.
	Number(Number),
	/// In literal `which` of [`LITERALS`], `at` bytes in.
	Literal { which: u8, at: u8 },
	/// After a value: `,` or the innermost container's closing bracket.
	After,
	/// The object is closed.
	Done,
}

/// How far into a JSON object the output is (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonState {
	mode: Mode,
	/// Bit `i` set when the container at depth `i + 1` is an object (clear: an array).
	objects: u64,
	/// How many containers are open.
	depth: u8,
	/// Whitespace bytes in a row just before.
	whitespace: u8,
}

impl Default for JsonState {
	fn default() -> Self {
		Self::new()
	}
}

impl JsonState {
	/// Before the output's first byte.
	pub fn new() -> Self {
		Self { mode: Mode::Start, objects: 0, depth: 0, whitespace: 0 }
	}

	/// Whether the object is closed (only the end of the output may follow).
	pub fn is_complete(&self) -> bool {
		self.mode == Mode::Done
	}

	/// The state after `bytes`, if they keep the output a prefix of a JSON object; `None` for
	/// no bytes (a special token, which has no text).
	pub fn accepts(self, bytes: &[u8]) -> Option<Self> {
		if bytes.is_empty() {
			return None;
		}
		bytes.iter().try_fold(self, |state, &b| state.step(b))
	}

	/// Whether the innermost open container is an object.
	fn in_object(&self) -> bool {
		self.depth > 0 && self.objects >> (self.depth - 1) & 1 == 1
	}

	/// The state after the byte `b`, if it may come next.
	fn step(mut self, b: u8) -> Option<Self> {
		let whitespace = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
		match self.mode {
			Mode::String { key, at: InString::Plain } if b == b'"' => {
				self.mode = if key { Mode::Colon } else { self.value_end() };
				return Some(self);
			}
			Mode::String { key, at } => {
				self.mode = Mode::String { key, at: string_step(at, b)? };
				return Some(self);
			}
			Mode::Number(n) => match n.step(b) {
				Some(next) => {
					self.mode = Mode::Number(next);
					return Some(self);
				}
				// The byte after a number belongs to what follows it.
				None if n.complete() => self.mode = self.value_end(),
				None => return None,
			},
			Mode::Literal { which, at } => {
				let literal = LITERALS[which as usize];
				if literal.get(at as usize) != Some(&b) {
					return None;
				}
				self.mode = match at as usize + 1 == literal.len() {
					true => self.value_end(),
					false => Mode::Literal { which, at: at + 1 },
				};
				return Some(self);
			}
			_ => {}
		}
		if whitespace {
			if self.mode == Mode::Done || self.whitespace >= MAX_WHITESPACE_RUN {
				return None;
			}
			self.whitespace += 1;
			return Some(self);
		}
		self.whitespace = 0;
		self.mode = match (self.mode, b) {
			(Mode::Start, b'{') => return self.open(true),
			(Mode::Value | Mode::ArrayFirst, _) => match b {
				b']' if self.mode == Mode::ArrayFirst => return Some(self.close()),
				b'{' => return self.open(true),
				b'[' => return self.open(false),
				b'"' => Mode::String { key: false, at: InString::Plain },
				b'-' => Mode::Number(Number::Minus),
				b'0' => Mode::Number(Number::Zero),
				b'1'..=b'9' => Mode::Number(Number::Int),
				b't' => Mode::Literal { which: 0, at: 1 },
				b'f' => Mode::Literal { which: 1, at: 1 },
				b'n' => Mode::Literal { which: 2, at: 1 },
				_ => return None,
			},
			(Mode::ObjectFirst, b'}') => return Some(self.close()),
			(Mode::ObjectFirst | Mode::Key, b'"') => {
				Mode::String { key: true, at: InString::Plain }
			}
			(Mode::Colon, b':') => Mode::Value,
			(Mode::After, b',') if self.in_object() => Mode::Key,
			(Mode::After, b',') => Mode::Value,
			(Mode::After, b'}') if self.in_object() => return Some(self.close()),
			(Mode::After, b']') if !self.in_object() => return Some(self.close()),
			_ => return None,
		};
		Some(self)
	}

	/// Opens an object (or an array), if the nesting allows one more.
	fn open(mut self, object: bool) -> Option<Self> {
		if self.depth >= MAX_DEPTH {
			return None;
		}
		if object {
			self.objects |= 1 << self.depth;
		} else {
			self.objects &= !(1 << self.depth);
		}
		self.depth += 1;
		self.mode = if object { Mode::ObjectFirst } else { Mode::ArrayFirst };
		Some(self)
	}

	/// Closes the innermost container (the caller checked its kind).
	fn close(mut self) -> Self {
		self.depth -= 1;
		self.mode = self.value_end();
		self
	}

	/// What follows a finished value.
	fn value_end(&self) -> Mode {
		if self.depth == 0 {
			Mode::Done
		} else {
			Mode::After
		}
	}
}

/// A string's state after `b`, if `b` may come next in it (other than the closing quote,
/// which the caller takes).
fn string_step(at: InString, b: u8) -> Option<InString> {
	Some(match at {
		InString::Plain => match b {
			b'\\' => InString::Escape,
			0x00..=0x1f => return None,
			0x20..=0x7f => InString::Plain,
			0xc2..=0xdf => InString::Utf8(1),
			0xe0..=0xef => InString::Utf8(2),
			0xf0..=0xf4 => InString::Utf8(3),
			_ => return None,
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
		InString::Hex(_) | InString::Utf8(_) => return None,
	})
}

#[cfg(test)]
mod tests {
	use super::*;

	fn run(text: &[u8]) -> Option<JsonState> {
		JsonState::new().accepts(text)
	}

	fn complete(text: &str) -> bool {
		run(text.as_bytes()).is_some_and(|s| s.is_complete())
	}

	#[test]
	fn takes_every_kind_of_value_and_only_an_object_on_top() {
		for text in [
			r#"{}"#,
			r#" { "a" : 1 } "#.trim_end(),
			r#"{"a":[1,-0.5,2e10,3E-2,0,-7],"b":{"c":null,"d":true,"e":false},"f":[]}"#,
			r#"{"s":"tab\t \"q\" \\ \/ \u00e9 é 😀"}"#,
			"{\n  \"k\": [\n    {}\n  ]\n}",
		] {
			assert!(complete(text), "{text}");
			// Every serde_json parses what the automaton completes.
			assert!(serde_json::from_str::<serde_json::Value>(text).unwrap().is_object());
		}
		for text in ["[]", "1", "\"s\"", "null", "true"] {
			assert!(run(text.as_bytes()).is_none(), "{text} is not an object");
		}
	}

	#[test]
	fn refuses_what_is_not_json() {
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
			assert!(!complete(text), "{text} was taken");
		}
		// Invalid UTF-8 in a string.
		assert!(run(b"{\"a\":\"\xff\"}").is_none());
		assert!(run(b"{\"a\":\"\xc3\x28\"}").is_none());
		// Nothing after the object, not even whitespace.
		assert!(run(b"{} ").is_none());
	}

	#[test]
	fn a_prefix_is_taken_and_finishes_only_when_closed() {
		let text = br#"{"key": [1.5, "va"#;
		let state = run(text).unwrap();
		assert!(!state.is_complete());
		// A number may end with the byte after it, which must fit what follows.
		let state = run(br#"{"n": 12"#).unwrap();
		assert!(state.accepts(b"}").unwrap().is_complete());
		assert!(state.accepts(b"3, \"m\": 0}").unwrap().is_complete());
		assert!(state.accepts(b"]").is_none());
		// A multi-byte character split across tokens.
		let state = run(b"{\"e\": \"\xf0\x9f").unwrap();
		assert!(state.accepts(b"\x98\x80\"}").unwrap().is_complete());
		assert!(state.accepts(b"\"}").is_none());
		// Special tokens have no bytes.
		assert!(JsonState::new().accepts(b"").is_none());
	}

	#[test]
	fn limits_the_nesting_and_the_whitespace() {
		let deep = "[".repeat(MAX_DEPTH as usize - 1);
		let state = run(format!("{{\"a\":{deep}").as_bytes()).unwrap();
		assert!(state.accepts(b"[").is_none());
		assert!(state.accepts(b"1").is_some());
		let closed = format!("{{\"a\":{deep}{}}}", "]".repeat(MAX_DEPTH as usize - 1));
		assert!(complete(&closed));
		let spaces = " ".repeat(MAX_WHITESPACE_RUN as usize);
		let state = run(format!("{{{spaces}").as_bytes()).unwrap();
		assert!(state.accepts(b" ").is_none());
		assert!(state.accepts(b"\"k\":").unwrap().accepts(spaces.as_bytes()).is_some());
	}
}
