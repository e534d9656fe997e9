//! JSON schema strings with `minLength`, `maxLength` or `pattern`, and integers and numbers
//! with bounds (`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`; a number's bounds
//! integers), as regular expressions over the value's JSON text, a string's quotes included
//! ([`RegexGrammar`]s that [`crate::json_mode`] holds such a value to).
//!
//! - A length counts the value's characters (code points), each written as it is or as a
//!   short JSON escape (`\n`, `\"`, ...); `\u` escapes are not written (a length of n makes an
//!   automaton of some 1.2 KB per character: 1,000 characters take about 1.2 MB and 20 ms to
//!   compile, and past about 14,000 the automaton's 16 MiB limit refuses it).
//! - A `pattern` is matched by the whole value, as vLLM's structured output matches it: `^` and
//!   `$` at its ends are the value's ends; `\d` and `\w` are ASCII's, as JSON Schema's
//!   (ECMA-262's) are, but `.` and `\s` are Rust's (`.` takes `\r`, U+2028 and U+2029, and
//!   `\s` U+0085, which ECMA-262's do not). JSON Schema's `pattern` searches the value, so a
//!   value made matches it there too, but for those (one that only contains a match is not
//!   made). Characters are written as they are, but those JSON must escape (`"`, `\`, control
//!   characters), which are written as JSON escapes them (`\"`, `\n`, `\u0001`). Anchors
//!   elsewhere than at the ends and word boundaries are refused, as is `pattern` beside a
//!   `maxLength` or a `minLength` above 0 (the automaton cannot hold both).
//! - An integer between bounds is written as JSON writes integers (no leading zeros, no `-0`),
//!   digit by digit within them: the expression is the classic one of a range of numbers, a
//!   branch per count of digits and per leading digit.
//! - A number between bounds that are integers is written without an exponent: its integer
//!   part within them, and at a bound, a fraction that keeps it within (none or zeros at an
//!   upper bound, one that is not zero past an exclusive lower bound).

use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Look, Repetition};

use crate::regex_grammar::RegexGrammar;

/// The characters JSON writes only escaped: `"`, `\` and the control characters.
fn escaped_only() -> ClassUnicode {
	ClassUnicode::new([
		ClassUnicodeRange::new('\0', '\u{1f}'),
		ClassUnicodeRange::new('"', '"'),
		ClassUnicodeRange::new('\\', '\\'),
	])
}

/// `c` as JSON writes it in a string.
fn escape(c: char) -> String {
	match c {
		'"' => "\\\"".into(),
		'\\' => "\\\\".into(),
		'\n' => "\\n".into(),
		'\r' => "\\r".into(),
		'\t' => "\\t".into(),
		'\u{8}' => "\\b".into(),
		'\u{c}' => "\\f".into(),
		c if c < ' ' => format!("\\u{:04x}", c as u32),
		c => c.into(),
	}
}

/// One character of a JSON string's text: written as it is, or as a short escape (`\"`, `\\`,
/// `\/`, `\b`, `\f`, `\n`, `\r`, `\t`). A `\u` escape is not written: its six bytes would make
/// the automaton of a string of `maxLength` n several times larger (it grows with n), and
/// every character but the control ones without a short escape can be written as it is.
fn any_character() -> Hir {
	let mut plain = ClassUnicode::new([ClassUnicodeRange::new('\0', char::MAX)]);
	plain.difference(&escaped_only());
	let short = "\"\\/bfnrt".chars().map(|c| ClassUnicodeRange::new(c, c));
	Hir::alternation(vec![
		Hir::class(Class::Unicode(plain)),
		Hir::concat(vec![
			Hir::literal(*b"\\"),
			Hir::class(Class::Unicode(ClassUnicode::new(short))),
		]),
	])
}

/// `inner` between quotes.
fn quoted(inner: Hir) -> Hir {
	Hir::concat(vec![Hir::literal(*b"\""), inner, Hir::literal(*b"\"")])
}

/// A JSON string of `min` to `max` characters (any number from `min` without `max`).
pub fn with_length(min: u32, max: Option<u32>) -> Result<RegexGrammar, String> {
	let hir = quoted(repeat(any_character(), min, max));
	RegexGrammar::from_hir(&hir.to_string(), &hir)
}

/// A JSON string whose value matches `pattern` whole (see the module documentation).
pub fn matching(pattern: &str) -> Result<RegexGrammar, String> {
	if pattern.len() > crate::regex_grammar::MAX_PATTERN_BYTES {
		return Err(format!(
			"the pattern is {} bytes; at most {} are taken",
			pattern.len(),
			crate::regex_grammar::MAX_PATTERN_BYTES
		));
	}
	let hir = regex_syntax::parse(&ascii_classes(pattern)).map_err(|e| e.to_string())?;
	let hir = quoted(as_json_text(&strip_anchors(hir))?);
	RegexGrammar::from_hir(&hir.to_string(), &hir)
}

/// `pattern` with `\d`, `\D`, `\w` and `\W` spelled as ASCII classes, as JSON Schema's regular
/// expressions (ECMA-262's) read them (Rust's and Python's are Unicode's: `\d` takes `٢`).
/// Rust's syntax nests classes, so the same spelling serves inside a class too.
fn ascii_classes(pattern: &str) -> String {
	let mut out = String::with_capacity(pattern.len());
	let mut chars = pattern.chars();
	while let Some(c) = chars.next() {
		if c != '\\' {
			out.push(c);
			continue;
		}
		match chars.next() {
			Some('d') => out.push_str("[0-9]"),
			Some('D') => out.push_str("[^0-9]"),
			Some('w') => out.push_str("[0-9A-Za-z_]"),
			Some('W') => out.push_str("[^0-9A-Za-z_]"),
			Some(next) => {
				out.push('\\');
				out.push(next);
			}
			None => out.push('\\'),
		}
	}
	out
}

/// A digit from `lo` to `hi` (ASCII digits).
fn digits(lo: u8, hi: u8) -> Hir {
	Hir::class(Class::Unicode(ClassUnicode::new([ClassUnicodeRange::new(
		char::from(lo),
		char::from(hi),
	)])))
}

/// `n` digits, each any.
fn any_digits(n: usize) -> Hir {
	let n = u32::try_from(n).unwrap_or(u32::MAX);
	repeat(digits(b'0', b'9'), n, Some(n))
}

/// The numbers from `lo` to `hi`, both written with the same count of digits (ASCII, leading
/// zeros kept: the caller's count says where they go), `lo <= hi`.
fn same_length(lo: &[u8], hi: &[u8]) -> Hir {
	if lo.iter().all(|&d| d == b'0') && hi.iter().all(|&d| d == b'9') {
		return any_digits(lo.len());
	}
	match (lo.split_first(), hi.split_first()) {
		(Some((&l, lo_rest)), Some((&h, hi_rest))) if l == h => {
			Hir::concat(vec![Hir::literal([l]), same_length(lo_rest, hi_rest)])
		}
		(Some((&l, lo_rest)), Some((&h, hi_rest))) => {
			let nines = vec![b'9'; lo_rest.len()];
			let zeros = vec![b'0'; hi_rest.len()];
			let mut branches =
				vec![Hir::concat(vec![Hir::literal([l]), same_length(lo_rest, &nines)])];
			if l + 1 < h {
				branches.push(Hir::concat(vec![digits(l + 1, h - 1), any_digits(lo_rest.len())]));
			}
			branches.push(Hir::concat(vec![Hir::literal([h]), same_length(&zeros, hi_rest)]));
			Hir::alternation(branches)
		}
		_ => Hir::empty(),
	}
}

/// The integers from `lo` (at least 0) to `hi` (none: no end), as JSON writes them.
fn naturals(lo: u128, hi: Option<u128>) -> Hir {
	let lo_text = lo.to_string();
	let mut branches = Vec::new();
	// A branch for each count of digits, from `lo`'s to `hi`'s.
	let mut length = lo_text.len();
	loop {
		let first = if length == 1 { 0 } else { 10u128.pow(length as u32 - 1) };
		let last = 10u128.saturating_pow(length as u32).saturating_sub(1);
		let from = lo.max(first);
		match hi {
			Some(hi) if hi < from => break,
			Some(hi) => {
				let to = hi.min(last);
				branches.push(same_length(from.to_string().as_bytes(), to.to_string().as_bytes()));
				if to == hi {
					break;
				}
			}
			None => {
				branches
					.push(same_length(from.to_string().as_bytes(), last.to_string().as_bytes()));
				// Every longer number: a leading digit other than 0, then as many as any.
				branches.push(Hir::concat(vec![
					digits(b'1', b'9'),
					repeat(digits(b'0', b'9'), length as u32, None),
				]));
				break;
			}
		}
		length += 1;
	}
	Hir::alternation(branches)
}

/// The integers from `lo` to `hi` (none: no bound that side), as JSON writes them.
pub fn integer_between(lo: Option<i128>, hi: Option<i128>) -> Result<RegexGrammar, String> {
	if let (Some(lo), Some(hi)) = (lo, hi) {
		if lo > hi {
			return Err(format!("no integer is at least {lo} and at most {hi}"));
		}
	}
	let mut branches = Vec::new();
	// Zero and above.
	if hi.is_none_or(|hi| hi >= 0) {
		let from = lo.map_or(0, |lo| lo.max(0).unsigned_abs());
		branches.push(naturals(from, hi.map(i128::unsigned_abs)));
	}
	// Below zero: a minus, then the magnitudes from the bound nearer zero.
	if lo.is_none_or(|lo| lo < 0) {
		let nearest = hi.map_or(1, |hi| hi.min(-1).unsigned_abs());
		let farthest = lo.map(i128::unsigned_abs);
		branches.push(Hir::concat(vec![Hir::literal(*b"-"), naturals(nearest, farthest)]));
	}
	let hir = Hir::alternation(branches);
	RegexGrammar::from_hir(&hir.to_string(), &hir)
}

/// A bound of a number: its value, and whether the value itself is within.
pub type Bound = (i128, bool);

/// `sub` from `min` to `max` times (none: no end).
fn repeat(sub: Hir, min: u32, max: Option<u32>) -> Hir {
	Hir::repetition(Repetition { min, max, greedy: true, sub: Box::new(sub) })
}

/// A fraction, `.` and digits, or none.
fn any_fraction() -> Hir {
	repeat(Hir::concat(vec![Hir::literal(*b"."), repeat(digits(b'0', b'9'), 1, None)]), 0, Some(1))
}

/// A fraction that is not zero: `.`, digits, one of them not `0`.
fn nonzero_fraction() -> Hir {
	let any = || repeat(digits(b'0', b'9'), 0, None);
	Hir::concat(vec![Hir::literal(*b"."), any(), digits(b'1', b'9'), any()])
}

/// A fraction that is zero (`.0`, `.00`, ...), or none.
fn zero_fraction() -> Hir {
	repeat(Hir::concat(vec![Hir::literal(*b"."), repeat(Hir::literal(*b"0"), 1, None)]), 0, Some(1))
}

/// The decimals `m` (digits, maybe a fraction; no sign, no exponent) with `least <= m` (or
/// `<`, by the bound's flag) and `m <= most` (or `<`; none: no end), both at least 0.
fn magnitudes((least, from_in): (u128, bool), most: Option<(u128, bool)>) -> Hir {
	// `least` itself: with any fraction if it is within, else with one that is not zero.
	let at_least = |fraction: Hir| Hir::concat(vec![naturals(least, Some(least)), fraction]);
	let first = || at_least(if from_in { any_fraction() } else { nonzero_fraction() });
	match most {
		Some((most, to_in)) if most == least => match from_in && to_in {
			true => at_least(zero_fraction()),
			false => Hir::fail(),
		},
		Some((most, _)) if most < least => Hir::fail(),
		Some((most, to_in)) => {
			let mut branches = vec![first()];
			if most > least + 1 {
				branches
					.push(Hir::concat(vec![naturals(least + 1, Some(most - 1)), any_fraction()]));
			}
			if to_in {
				branches.push(Hir::concat(vec![naturals(most, Some(most)), zero_fraction()]));
			}
			Hir::alternation(branches)
		}
		None => Hir::alternation(vec![
			first(),
			Hir::concat(vec![naturals(least + 1, None), any_fraction()]),
		]),
	}
}

/// The numbers from `lo` to `hi` (none: no bound that side; integers, each within or not by
/// its flag), as JSON writes them without an exponent.
pub fn number_between(lo: Option<Bound>, hi: Option<Bound>) -> Result<RegexGrammar, String> {
	let mut branches = Vec::new();
	// Zero and above, unless the upper bound is below zero.
	if hi.is_none_or(|(hi, _)| hi >= 0) {
		let least = match lo {
			Some((lo, within)) if lo >= 0 => (lo.unsigned_abs(), within),
			_ => (0, true),
		};
		branches.push(magnitudes(least, hi.map(|(hi, within)| (hi.unsigned_abs(), within))));
	}
	// Below zero, unless the lower bound is zero or more: a minus, then a magnitude that is
	// more than zero, at least the upper bound's and at most the lower bound's.
	if lo.is_none_or(|(lo, _)| lo < 0) {
		let least = match hi {
			Some((hi, within)) if hi < 0 => (hi.unsigned_abs(), within),
			_ => (0, false),
		};
		let most = lo.map(|(lo, within)| (lo.unsigned_abs(), within));
		branches.push(Hir::concat(vec![Hir::literal(*b"-"), magnitudes(least, most)]));
	}
	let hir = Hir::alternation(branches);
	RegexGrammar::from_hir(&hir.to_string(), &hir).map_err(|e| {
		match e.contains("matches no text") {
			true => {
				let side = |bound: Option<Bound>, within: &str, past: &str| match bound {
					Some((value, true)) => format!("{within} {value}"),
					Some((value, false)) => format!("{past} {value}"),
					None => "any".into(),
				};
				format!(
					"no number is {} and {}",
					side(lo, "at least", "more than"),
					side(hi, "at most", "less than")
				)
			}
			false => e,
		}
	})
}

/// Whether `hir` is `^` (at the start of a line or of the text: at the start of the value,
/// they are the same).
fn is_start(hir: &Hir) -> bool {
	matches!(hir.kind(), HirKind::Look(Look::Start | Look::StartLF | Look::StartCRLF))
}

/// Whether `hir` is `$` (at the end of a line or of the text).
fn is_end(hir: &Hir) -> bool {
	matches!(hir.kind(), HirKind::Look(Look::End | Look::EndLF | Look::EndCRLF))
}

/// `hir` without the anchors at its ends: the leading `^` and trailing `$` of it, of each of
/// its alternatives, and of a group that is the whole of either.
fn strip_anchors(hir: Hir) -> Hir {
	if is_start(&hir) || is_end(&hir) {
		return Hir::empty();
	}
	match hir.into_kind() {
		HirKind::Concat(mut parts) => {
			while parts.first().is_some_and(is_start) {
				parts.remove(0);
			}
			while parts.last().is_some_and(is_end) {
				parts.pop();
			}
			match parts.len() {
				1 => strip_anchors(parts.remove(0)),
				_ => Hir::concat(parts),
			}
		}
		HirKind::Alternation(branches) => {
			Hir::alternation(branches.into_iter().map(strip_anchors).collect())
		}
		HirKind::Capture(capture) => strip_anchors(*capture.sub),
		kind => rebuild(kind),
	}
}

/// The expression of `kind`, whole again.
fn rebuild(kind: HirKind) -> Hir {
	match kind {
		HirKind::Empty => Hir::empty(),
		HirKind::Literal(literal) => Hir::literal(literal.0),
		HirKind::Class(class) => Hir::class(class),
		HirKind::Look(look) => Hir::look(look),
		HirKind::Repetition(repetition) => Hir::repetition(repetition),
		HirKind::Capture(capture) => Hir::capture(capture),
		HirKind::Concat(parts) => Hir::concat(parts),
		HirKind::Alternation(branches) => Hir::alternation(branches),
	}
}

/// `hir`, which matches values, as the expression that matches their JSON text (between the
/// quotes): the characters JSON must escape are matched escaped.
fn as_json_text(hir: &Hir) -> Result<Hir, String> {
	Ok(match hir.kind() {
		HirKind::Empty => Hir::empty(),
		HirKind::Literal(literal) => {
			// The parser refuses such patterns already (its UTF-8 mode); kept for any Hir.
			let text = std::str::from_utf8(&literal.0)
				.map_err(|_| "a pattern that matches bytes that are not UTF-8 is not served")?;
			Hir::literal(text.chars().map(escape).collect::<String>().into_bytes())
		}
		HirKind::Class(Class::Unicode(class)) => escaped_class(class),
		// An ASCII byte class (`(?-u:[a-z])`); the parser refuses those beyond ASCII already.
		HirKind::Class(Class::Bytes(class)) => escaped_class(
			&class
				.to_unicode_class()
				.ok_or("a pattern's byte class beyond ASCII ((?-u:...)) is not served")?,
		),
		HirKind::Look(_) if is_start(hir) || is_end(hir) => {
			return Err(format!(
				"{} is served only at the pattern's ends (the value's ends)",
				if is_start(hir) { "^" } else { "$" }
			));
		}
		HirKind::Look(_) => return Err("word boundaries in a pattern are not served".into()),
		HirKind::Repetition(repetition) => Hir::repetition(Repetition {
			sub: Box::new(as_json_text(&repetition.sub)?),
			..repetition.clone()
		}),
		HirKind::Capture(capture) => as_json_text(&capture.sub)?,
		HirKind::Concat(parts) => {
			Hir::concat(parts.iter().map(as_json_text).collect::<Result<_, _>>()?)
		}
		HirKind::Alternation(branches) => {
			Hir::alternation(branches.iter().map(as_json_text).collect::<Result<_, _>>()?)
		}
	})
}

/// The characters of `class` as JSON writes them: the plain ones as a class, each of those it
/// escapes as its escape.
fn escaped_class(class: &ClassUnicode) -> Hir {
	let mut plain = class.clone();
	plain.difference(&escaped_only());
	let mut special = class.clone();
	special.intersect(&escaped_only());
	let mut branches = vec![Hir::class(Class::Unicode(plain))];
	for range in special.ranges() {
		for c in range.start()..=range.end() {
			branches.push(Hir::literal(escape(c).into_bytes()));
		}
	}
	Hir::alternation(branches)
}

#[cfg(test)]
mod tests {
	use super::*;

	/// Whether `grammar` takes `text` whole.
	fn takes(grammar: &RegexGrammar, text: &str) -> bool {
		grammar.accepts(grammar.start(), text.as_bytes()).is_some_and(|s| grammar.can_end(s))
	}

	/// The JSON text of the string `value`, as serde_json writes it.
	fn json(value: &str) -> String {
		serde_json::to_string(value).unwrap()
	}

	/// Values near samples of each pattern (a character inserted, removed or replaced) are
	/// taken written as JSON exactly when the regex crate finds the whole value a match.
	#[test]
	fn patterns_take_what_the_regex_crate_matches_whole() {
		use rand::{rngs::StdRng, Rng, SeedableRng};
		// Each pattern, the same written with ASCII classes for the regex crate, and samples.
		let cases: [(&str, &str, &[&str]); 5] = [
			(r"^[A-Z]{2}-[0-9]{3}$", r"[A-Z]{2}-[0-9]{3}", &["AB-123", "ZZ-000"]),
			(r#"say "(hi|yo)"\n?"#, r#"say "(hi|yo)"\n?"#, &["say \"hi\"", "say \"yo\"\n"]),
			(r"(?s)[^x]{1,3}", r"(?s)[^x]{1,3}", &["\"\\", "\n", "é日a"]),
			(r"(?i)[a-c]+(\\|/)\d", r"(?i)[a-c]+(\\|/)[0-9]", &["aBc\\1", "C/9"]),
			(r"[\w.]+@[\w.]+", r"[0-9A-Za-z_.]+@[0-9A-Za-z_.]+", &["a.b@c.d", "x@y", "é@日"]),
		];
		let alphabet: Vec<char> = "aABCxyz09-\"\\/\n\té日@.".chars().collect();
		let mut rng = StdRng::seed_from_u64(11);
		for (pattern, reference, samples) in cases {
			let grammar = matching(pattern).unwrap();
			let full = regex::Regex::new(&format!("^(?:{reference})$")).unwrap();
			let (mut matched, mut missed) = (0, 0);
			for sample in samples.iter().cycle().take(300) {
				let mut value: Vec<char> = sample.chars().collect();
				let at = rng.random_range(0..=value.len());
				let c = alphabet[rng.random_range(0..alphabet.len())];
				match rng.random_range(0..4) {
					0 => value.insert(at, c),
					1 if at < value.len() => drop(value.remove(at)),
					2 if at < value.len() => value[at] = c,
					_ => {}
				}
				let value: String = value.into_iter().collect();
				let whole = full.is_match(&value);
				assert_eq!(takes(&grammar, &json(&value)), whole, "{pattern:?} {value:?}");
				matched += usize::from(whole);
				missed += usize::from(!whole);
			}
			assert!(matched > 20 && missed > 20, "{pattern:?}: {matched} and {missed}");
		}
	}

	#[test]
	fn lengths_count_characters_written_plain_or_escaped() {
		let two_to_four = with_length(2, Some(4)).unwrap();
		for value in ["ab", "abcd", "é日", "a\"", "\n\t", "😀😀"] {
			assert!(takes(&two_to_four, &json(value)), "{value:?}");
		}
		for value in ["", "a", "abcde", "日日日日日"] {
			assert!(!takes(&two_to_four, &json(value)), "{value:?}");
		}
		// A short escape is one character; `\u` escapes are not written.
		assert!(takes(&two_to_four, r#""\/\b\f\r""#));
		assert!(!takes(&two_to_four, r#""\u00e9a""#));
		assert!(!takes(&two_to_four, r#""\u00e""#), "four hex digits");
		assert!(!takes(&two_to_four, r#""\x41b""#), "no such escape");
		// Control characters and a lone quote or backslash are not JSON.
		assert!(!takes(&two_to_four, "\"a\nb\""));
		assert!(!takes(&two_to_four, r#""a\""#));
		// Nothing after the closing quote.
		assert_eq!(two_to_four.accepts(two_to_four.start(), br#""ab"x"#), None);
		let at_least_one = with_length(1, None).unwrap();
		assert!(takes(&at_least_one, &json(&"x".repeat(300))));
		assert!(!takes(&at_least_one, "\"\""));
	}

	#[test]
	fn a_pattern_is_matched_by_the_whole_value_written_as_json() {
		let date = matching(r"^\d{4}-\d{2}-\d{2}$").unwrap();
		assert!(takes(&date, r#""2026-12-07""#));
		assert!(!takes(&date, r#""2026-12-7""#));
		assert!(!takes(&date, r#""on 2026-12-07""#), "the whole value, not a search");
		// Without anchors it is matched whole too.
		let word = matching("[a-z]+").unwrap();
		assert!(takes(&word, r#""abc""#));
		assert!(!takes(&word, r#""abc1""#));
		// Characters JSON escapes are matched escaped, and only so.
		let quote = matching(r#"say "(hi|yo)"\n"#).unwrap();
		assert!(takes(&quote, &json("say \"hi\"\n")));
		assert!(!takes(&quote, "\"say \"hi\"\n\""));
		let any = matching(r"(?s).{1,2}").unwrap();
		for value in ["\"", "\\", "\u{1}", "é", "a\n", "\t\t"] {
			assert!(takes(&any, &json(value)), "{value:?}");
		}
		assert!(!takes(&any, "\"\"\"\""), "an unescaped quote is not a character of the value");
		// Alternatives and groups keep their anchors at their ends.
		let either = matching(r"^(yes)$|^no$").unwrap();
		assert!(takes(&either, r#""yes""#) && takes(&either, r#""no""#));
		assert!(!takes(&either, r#""yesno""#));
		// Negated classes and case-insensitive letters; a quote or backslash a negated class
		// takes is written escaped.
		let not_a = matching(r"(?i)x[^a]").unwrap();
		for value in ["xb", "X\"", "x\\", "Xé"] {
			assert!(takes(&not_a, &json(value)), "{value:?}");
		}
		assert!(!takes(&not_a, &json("xa")) && !takes(&not_a, &json("xA")));
		// `\d` and `\w` are ASCII's, inside classes too; `\\d` is a backslash and a d.
		let date = matching(r"\d{2}[\w.]").unwrap();
		assert!(takes(&date, &json("12a")) && takes(&date, &json("12.")));
		assert!(!takes(&date, &json("١٢a")) && !takes(&date, &json("12é")));
		assert!(takes(&matching(r"\\d").unwrap(), &json("\\d")));
	}

	/// Every integer near the bounds (and near each power of ten between), written as JSON
	/// writes it and otherwise, is taken exactly when it lies within them.
	#[test]
	fn integers_are_taken_within_their_bounds_only() {
		let bounds: [(Option<i128>, Option<i128>); 12] = [
			(Some(0), Some(0)),
			(Some(1), Some(5)),
			(Some(-5), Some(5)),
			(Some(7), Some(1234)),
			(Some(-1234), Some(-7)),
			(Some(99), Some(100)),
			(Some(0), None),
			(Some(15), None),
			(None, Some(-3)),
			(None, Some(250)),
			(None, None),
			(Some(-9_223_372_036_854_775_808), Some(9_223_372_036_854_775_807)),
		];
		for (lo, hi) in bounds {
			let grammar = integer_between(lo, hi).unwrap();
			let mut near: Vec<i128> = (-12..=12).collect();
			for edge in [lo, hi].into_iter().flatten() {
				near.extend(edge - 12..=edge + 12);
			}
			for power in 0..19 {
				let p = 10i128.pow(power);
				near.extend([p - 1, p, p + 1, -p - 1, -p, -p + 1]);
			}
			for n in near {
				let within = lo.is_none_or(|lo| n >= lo) && hi.is_none_or(|hi| n <= hi);
				assert_eq!(takes(&grammar, &n.to_string()), within, "{n} in {lo:?}..={hi:?}");
			}
			for text in ["-0", "01", "+1", "1.0", "1e2", "", "-"] {
				assert!(!takes(&grammar, text), "{text:?} in {lo:?}..={hi:?}");
			}
		}
		let error = integer_between(Some(3), Some(2)).unwrap_err();
		assert!(error.contains("no integer"), "{error}");
	}

	/// Numbers near the bounds (integers, halves, tenths, zero fractions, long fractions,
	/// negative zero) are taken exactly when they lie within them, as f64 compares them.
	#[test]
	fn numbers_are_taken_within_their_bounds_only() {
		let cases: [(Option<Bound>, Option<Bound>); 12] = [
			(Some((0, true)), None),
			(Some((0, false)), None),
			(Some((0, true)), Some((1, true))),
			(Some((0, false)), Some((1, false))),
			(Some((-2, true)), Some((3, false))),
			(Some((-10, false)), Some((-3, true))),
			(None, Some((0, true))),
			(None, Some((0, false))),
			(None, Some((-1, true))),
			(Some((5, true)), Some((5, true))),
			(Some((7, true)), Some((120, true))),
			(Some((-1, true)), Some((0, true))),
		];
		for (lo, hi) in cases {
			let grammar = number_between(lo, hi).unwrap();
			let mut near = Vec::new();
			for edge in [lo, hi].into_iter().flatten().map(|(v, _)| v).chain([0, 1, -1, 10]) {
				for n in edge - 3..=edge + 3 {
					for fraction in ["", ".0", ".00", ".5", ".05", ".999", ".0001"] {
						near.push(format!("{n}{fraction}"));
						if n == 0 {
							near.push(format!("-0{fraction}"));
						}
					}
				}
			}
			for text in near {
				let x: f64 = text.parse().unwrap();
				let above =
					lo.is_none_or(|(lo, within)| x > lo as f64 || (within && x == lo as f64));
				let below =
					hi.is_none_or(|(hi, within)| x < hi as f64 || (within && x == hi as f64));
				// "-0" and "-0.0" are zero, but not written that way.
				let written = !(x == 0.0 && text.starts_with('-'));
				assert_eq!(
					takes(&grammar, &text),
					above && below && written,
					"{text} in {lo:?}..{hi:?}"
				);
			}
			for text in ["01", "+1", "1.", ".5", "1e2", "", "-", "1.5.2"] {
				assert!(!takes(&grammar, text), "{text:?} in {lo:?}..{hi:?}");
			}
		}
		for (lo, hi) in [(Some((3, true)), Some((2, true))), (Some((2, false)), Some((2, true)))] {
			let error = number_between(lo, hi).unwrap_err();
			assert!(error.contains("no number"), "{error}");
		}
	}

	#[test]
	fn patterns_the_automaton_cannot_follow_are_refused() {
		for (pattern, says) in [
			(r"a^b", "^ is served only at the pattern's ends"),
			(r"a$b", "$ is served only"),
			(r"\bword", "word boundaries"),
			(r"(?-u:[\x80-\xff])", "invalid UTF-8"),
			(r"(a", "unclosed group"),
			(r"(?=a)", "look-around"),
		] {
			let error = matching(pattern).unwrap_err();
			assert!(error.contains(says), "{pattern:?}: {error}");
		}
		let error = with_length(0, Some(1_000_000)).unwrap_err();
		assert!(error.contains("more than 16 MiB"), "{error}");
	}
}
