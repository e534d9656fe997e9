//! A request's JSON body for the HTTP API ([`Lenient`]): read as axum's [`Json`] reads it, into
//! a type that ignores the fields it does not know, as OpenAI's and vLLM's servers ignore them
//! (clients send the fields of newer API versions, and of other servers), with those fields
//! logged by name, as vLLM logs them, so that a misspelt field is seen rather than silently
//! without effect.

use axum::{
	extract::{rejection::JsonRejection, FromRequest, Request},
	http::StatusCode,
	response::{IntoResponse, Response},
	Json,
};
use serde::{
	de::{self, DeserializeOwned, Visitor},
	forward_to_deserialize_any, Deserializer,
};
use serde_json::Value;

/// A body of type `T`; the fields `T` does not know are logged (a `warn` naming them and the
/// request's path) and otherwise ignored.
#[derive(Debug)]
pub struct Lenient<T>(pub T);

/// Why a body was not taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyRejection {
	/// Not JSON, not sent as JSON, or too large: axum's rejection.
	#[error("{}", .0.body_text())]
	Json(#[from] JsonRejection),
	/// JSON, but not of the type: where (`messages[0].role`) and what is wrong, worded as axum
	/// words it (without its line and column, as it is read from the parsed JSON).
	#[error("Failed to deserialize the JSON body into the target type: {0}")]
	Data(#[from] serde_path_to_error::Error<serde_json::Error>),
}

impl BodyRejection {
	/// The status axum answers it with: 413 for a body too large, 415 for one not sent as
	/// JSON, 400 for bad JSON, 422 for JSON not of the type.
	pub fn status(&self) -> StatusCode {
		match self {
			Self::Json(rejection) => rejection.status(),
			Self::Data(_) => StatusCode::UNPROCESSABLE_ENTITY,
		}
	}
}

/// As axum answers its own rejections: the status and the message as text. (The API's
/// handlers take the rejection and answer OpenAI's error object instead.)
impl IntoResponse for BodyRejection {
	fn into_response(self) -> Response {
		(self.status(), self.to_string()).into_response()
	}
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Lenient<T> {
	type Rejection = BodyRejection;

	async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
		let path = request.uri().path().to_string();
		let Json(value) = Json::<Value>::from_request(request, state).await?;
		Self::from_value(&path, value)
	}
}

impl<T: DeserializeOwned> Lenient<T> {
	/// `value`, a request's body to `path`, as a `T`, the fields `T` does not know logged.
	pub fn from_value(path: &str, value: Value) -> Result<Self, BodyRejection> {
		if let Some(known) = field_names::<T>() {
			warn_ignored(path, &ignored_fields(&value, known));
		}
		Ok(Self(serde_path_to_error::deserialize(value)?))
	}
}

/// The most ignored fields one log line names (a body may have any number).
pub const MAX_NAMED: usize = 16;

/// Logs the fields of a request to `path` that were `ignored` (a `warn` naming the first
/// [`MAX_NAMED`] and counting the rest), if there are any.
pub fn warn_ignored(path: &str, ignored: &[impl std::fmt::Debug]) {
	if ignored.is_empty() {
		return;
	}
	let named = &ignored[..ignored.len().min(MAX_NAMED)];
	let more = match ignored.len() - named.len() {
		0 => String::new(),
		more => format!(" and {more} more"),
	};
	tracing::warn!(
		path,
		fields = ?named,
		"the request's fields {named:?}{more} are not known to this worker and were ignored"
	);
}

/// The top-level fields of `body` (an object) that are not in `known`, by name.
pub fn ignored_fields<'v>(body: &'v Value, known: &[&str]) -> Vec<&'v str> {
	match body {
		Value::Object(fields) => {
			fields.keys().map(String::as_str).filter(|key| !known.contains(key)).collect()
		}
		_ => Vec::new(),
	}
}

/// The names `T` takes as a struct's fields (its own, renamed and aliases, as serde's derive
/// lists them), or `None` when `T` is not read as a struct with a list of fields (a map, or a
/// struct with a flattened field).
pub fn field_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
	let mut names = None;
	// The derive hands its field names to `deserialize_struct`; reading stops there.
	let _ = T::deserialize(FieldNames(&mut names));
	names
}

/// A deserializer that only records the field names a struct asks it for.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldNames<'_> {
	type Error = de::value::Error;

	fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
		Err(de::Error::custom("not a struct"))
	}

	fn deserialize_struct<V: Visitor<'de>>(
		self,
		_: &'static str,
		fields: &'static [&'static str],
		_: V,
	) -> Result<V::Value, Self::Error> {
		*self.0 = Some(fields);
		Err(de::Error::custom("only the field names were asked for"))
	}

	forward_to_deserialize_any! {
		bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
		option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
		ignored_any
	}
}

#[cfg(test)]
mod tests {
	use std::{
		io::Write,
		sync::{Arc, Mutex},
	};

	use axum::body::Body;
	use serde::Deserialize;
	use serde_json::json;

	use super::*;

	#[derive(Debug, Deserialize)]
	struct Asked {
		#[allow(dead_code)]
		prompt: String,
		#[serde(rename = "max_tokens", alias = "max_completion_tokens")]
		#[allow(dead_code)]
		most: Option<usize>,
	}

	#[derive(Debug, Deserialize)]
	#[allow(dead_code)]
	struct Flattened {
		#[serde(flatten)]
		rest: serde_json::Map<String, Value>,
	}

	#[test]
	fn a_structs_field_names_are_its_derives() {
		let names = field_names::<Asked>().unwrap();
		for name in ["prompt", "max_tokens", "max_completion_tokens"] {
			assert!(names.contains(&name), "{name} in {names:?}");
		}
		assert!(!names.contains(&"most"));
		// No list of fields to check against: nothing is called ignored.
		assert_eq!(field_names::<Flattened>(), None);
		assert_eq!(field_names::<Value>(), None);
		assert_eq!(field_names::<Vec<Asked>>(), None);
	}

	#[test]
	fn ignored_fields_are_the_bodys_unknown_ones_by_name() {
		let known = field_names::<Asked>().unwrap();
		let body =
			json!({"temprature": 0.5, "prompt": "x", "user": "u", "max_completion_tokens": 3});
		assert_eq!(ignored_fields(&body, known), ["temprature", "user"]);
		assert!(ignored_fields(&json!({"prompt": "x"}), known).is_empty());
		assert!(ignored_fields(&json!(["prompt"]), known).is_empty());
	}

	/// What a subscriber writes, kept for the test to read.
	#[derive(Clone, Default)]
	struct Written(Arc<Mutex<Vec<u8>>>);

	impl Write for Written {
		fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
			self.0.lock().unwrap().extend_from_slice(bytes);
			Ok(bytes.len())
		}

		fn flush(&mut self) -> std::io::Result<()> {
			Ok(())
		}
	}

	/// `body` sent to `/v1/completions` as `content_type`, taken as a [`Lenient<Asked>`]; what
	/// was logged meanwhile.
	fn take(body: &str, content_type: &str) -> (Result<Lenient<Asked>, BodyRejection>, String) {
		let written = Written::default();
		let writer = written.clone();
		let subscriber =
			tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
		let request = Request::builder()
			.method("POST")
			.uri("/v1/completions")
			.header("content-type", content_type)
			.body(Body::from(body.to_string()))
			.unwrap();
		let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
		let taken = tracing::subscriber::with_default(subscriber, || {
			runtime.block_on(Lenient::<Asked>::from_request(request, &()))
		});
		let log = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
		(taken, log)
	}

	#[test]
	fn unknown_fields_are_logged_by_name_and_the_body_taken() {
		let (taken, log) =
			take(r#"{"prompt": "hi", "max_tokens": 2, "temprature": 0}"#, "application/json");
		let Lenient(asked) = taken.unwrap();
		assert_eq!((asked.prompt.as_str(), asked.most), ("hi", Some(2)));
		assert!(log.contains("WARN"), "{log}");
		assert!(log.contains(r#"["temprature"]"#) && log.contains("/v1/completions"), "{log}");

		// Many unknown: the first ones named, the rest counted.
		let many: Vec<String> = (0..20).map(|i| format!("\"x{i:02}\": 0")).collect();
		let (taken, log) =
			take(&format!("{{\"prompt\": \"hi\", {}}}", many.join(", ")), "application/json");
		assert!(taken.is_ok());
		assert!(log.contains("\"x15\"] and 4 more") && !log.contains("\"x16\""), "{log}");

		// Nothing unknown: nothing logged.
		let (taken, log) =
			take(r#"{"prompt": "hi", "max_completion_tokens": 2}"#, "application/json");
		assert_eq!(taken.unwrap().0.most, Some(2));
		assert!(log.is_empty(), "{log}");
	}

	#[test]
	fn bodies_not_of_the_type_are_refused_as_axum_refuses_them() {
		let (taken, _) = take(r#"{"prompt": "hi", "max_tokens": "two"}"#, "application/json");
		let rejection = taken.unwrap_err();
		assert_eq!(rejection.status(), StatusCode::UNPROCESSABLE_ENTITY);
		let message = rejection.to_string();
		assert!(
			message.starts_with("Failed to deserialize the JSON body into the target type: ")
				&& message.contains("max_tokens: invalid type: string \"two\""),
			"{message}"
		);
		let (taken, _) = take(r#"{"max_tokens": 2}"#, "application/json");
		assert!(taken.unwrap_err().to_string().contains("missing field `prompt`"));
		let (taken, _) = take(r#"{"prompt": "hi""#, "application/json");
		let rejection = taken.unwrap_err();
		assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
		assert!(rejection.to_string().contains("EOF"), "{rejection}");
		let (taken, _) = take(r#"{"prompt": "hi"}"#, "text/plain");
		assert_eq!(taken.unwrap_err().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
	}
}
