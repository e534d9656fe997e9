//! Registered prompts from the chain: a chat may name a prompt template registered on chain
//! (`pallet-prompts`) by id and version, with values for its variables, as OpenAI's reusable
//! prompts are named (`"prompt": {"id", "version", "variables"}`). The worker reads the version
//! through the node's `prompts_*` RPC at the node's last finalized block, takes its text from
//! the chain (an inline template) or from the content folder (an external one, under its
//! content hash), checks the text against the content hash on chain, and fills in the
//! variables (`{{name}}`). The text becomes the start of the chat's system message, and a chat
//! with `attribution` reports the prompt's part of the answer.
//!
//! Each chat reads the version again (one or two RPC calls), so a version deprecated on chain
//! is refused from the next chat on; a dropped connection is made again on the next chat.

use std::{collections::BTreeMap, io::Read, path::PathBuf, sync::Arc};

use jsonrpsee::rpc_params;
use openledger_primitives::{content_hash_of, ContentHash, PromptId, PromptVersion};
use serde::Deserialize;

use crate::chain_rpc::{call, finalized_head, hash_field, parse_hash, Node, RpcError};

/// The most bytes of a prompt template read from the content folder.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// A chat's `prompt`: the registered prompt to use and its variables' values.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PromptRef {
	/// The prompt's id on chain.
	pub id: PromptId,
	/// Its version (the latest when absent).
	#[serde(default)]
	pub version: Option<PromptVersion>,
	/// The value of each variable the template names (`{{name}}`).
	#[serde(default)]
	pub variables: BTreeMap<String, String>,
}

/// A version of a registered prompt, its text checked against the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredPrompt {
	/// The prompt's id.
	pub id: PromptId,
	/// The version.
	pub version: PromptVersion,
	/// The prompt's owner (SS58), paid for its use.
	pub owner: String,
	/// The template's text.
	pub text: String,
	/// Its content hash on chain.
	pub content_hash: ContentHash,
	/// What one use costs, in the smallest unit of OPEN (a decimal string).
	pub price_per_use: String,
	/// The finalized block it was read at.
	pub block: String,
}

/// Why a registered prompt cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
	/// The worker does not follow a chain (`serve --chain`).
	#[error("prompt: this worker does not follow a chain (serve --chain), so it has no registered prompts")]
	NoChain,
	/// The node could not be reached, refused a call or answered something malformed.
	#[error("prompt: the chain could not be read: {0}")]
	Chain(#[from] RpcError),
	/// No such prompt or version at the finalized block.
	#[error("prompt: {0} is not registered (at the chain's last finalized block)")]
	NotFound(String),
	/// The version is deprecated.
	#[error("prompt: {0} is deprecated by its owner")]
	Deprecated(String),
	/// The template's text is not in the content folder, or is not the text hashed on chain.
	#[error("prompt: the template of {0}")]
	Content(String),
	/// The template stored on chain cannot be served (it is not UTF-8 text, or not the text
	/// hashed): no worker can serve it.
	#[error("prompt: the template of {0}")]
	Unservable(String),
	/// The variables do not fit the template.
	#[error("prompt.variables: {0}")]
	Variables(String),
}

impl PromptError {
	/// Whether the request is at fault (a client error) rather than the chain or the worker.
	pub fn is_request_error(&self) -> bool {
		matches!(self, Self::NoChain | Self::NotFound(_) | Self::Deprecated(_) | Self::Variables(_))
	}
}

/// A prompt as `prompts_getPrompt` answers it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptInfo {
	owner: String,
	latest: PromptVersion,
}

/// A version as `prompts_getVersion` answers it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionInfo {
	template: Template,
	content_hash: String,
	price_per_use: String,
	deprecated: bool,
}

/// Where a version's text lives.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Template {
	/// On chain.
	Inline(String),
	/// Off chain, at `uri`, hashed to `hash`.
	External {
		#[allow(dead_code)]
		uri: String,
		hash: String,
	},
}

/// The registered prompts of the chain a node follows.
pub struct PromptRegistry {
	/// The node.
	node: Arc<Node>,
	/// The folder holding external templates, each named by its content hash in hex.
	content_dir: PathBuf,
}

impl PromptRegistry {
	/// The prompts registered on the chain `node` follows, external templates read from
	/// `content_dir`.
	pub fn new(node: Arc<Node>, content_dir: impl Into<PathBuf>) -> Self {
		Self { node, content_dir: content_dir.into() }
	}

	/// The version `version` of prompt `id` (its latest when `None`), at the chain's last
	/// finalized block, its text checked against its content hash; refused if deprecated.
	pub async fn version(
		&self,
		id: PromptId,
		version: Option<PromptVersion>,
	) -> Result<RegisteredPrompt, PromptError> {
		let methods = "connect, chain_getFinalizedHead, prompts_getPrompt, prompts_getVersion";
		self.node.within(methods, self.look_up(id, version)).await
	}

	/// [`Self::version`], however long the node takes.
	async fn look_up(
		&self,
		id: PromptId,
		version: Option<PromptVersion>,
	) -> Result<RegisteredPrompt, PromptError> {
		let client = self.node.client().await?;
		let client = &*client;
		let block = finalized_head(client).await?;
		let prompt: Option<PromptInfo> =
			call(client, "prompts_getPrompt", rpc_params![id, &block]).await?;
		let prompt = prompt.ok_or_else(|| PromptError::NotFound(format!("prompt {id}")))?;
		let version = version.unwrap_or(prompt.latest);
		let name = format!("prompt {id} version {version}");
		let info: Option<VersionInfo> =
			call(client, "prompts_getVersion", rpc_params![id, version, &block]).await?;
		let info = info.ok_or_else(|| PromptError::NotFound(name.clone()))?;
		if info.deprecated {
			return Err(PromptError::Deprecated(name));
		}
		let content_hash = hash_field("prompts_getVersion", "contentHash", &info.content_hash)?;
		let inline = matches!(info.template, Template::Inline(_));
		let text = match info.template {
			Template::Inline(text) => text,
			Template::External { hash, .. } => {
				if parse_hash(&hash) != Some(content_hash) {
					return Err(RpcError::malformed(
						"prompts_getVersion",
						format!("the template's hash {hash} is not its contentHash"),
					)
					.into());
				}
				self.read_content(&name, &content_hash)?
			}
		};
		if content_hash_of(text.as_bytes()) != content_hash {
			let why = format!("{name} is not the text hashed on chain (its BLAKE2b-256 differs)");
			return Err(match inline {
				// The node gives stored bytes that are not UTF-8 as text with U+FFFD.
				true => PromptError::Unservable(format!(
					"{why}: the bytes stored are not UTF-8 text, or the node does not give what \
					 the chain holds"
				)),
				false => PromptError::Content(why),
			});
		}
		Ok(RegisteredPrompt {
			id,
			version,
			owner: prompt.owner,
			text,
			content_hash,
			price_per_use: info.price_per_use,
			block,
		})
	}

	/// An external template's text from the content folder.
	fn read_content(&self, name: &str, hash: &ContentHash) -> Result<String, PromptError> {
		let path = self.content_dir.join(hex::encode(hash));
		let mut bytes = Vec::new();
		std::fs::File::open(&path)
			.and_then(|file| file.take(MAX_TEMPLATE_BYTES as u64 + 1).read_to_end(&mut bytes))
			.map_err(|e| {
				PromptError::Content(format!(
					"{name} is not in the content folder: {}: {e}",
					path.display()
				))
			})?;
		if bytes.len() > MAX_TEMPLATE_BYTES {
			return Err(PromptError::Content(format!(
				"{name} ({}) has more than {MAX_TEMPLATE_BYTES} bytes",
				path.display()
			)));
		}
		String::from_utf8(bytes)
			.map_err(|_| PromptError::Content(format!("{name} ({}) is not UTF-8", path.display())))
	}
}

/// `template` with each `{{name}}` (spaces inside the braces allowed) replaced by the value of
/// `name` in `variables`. A name the template uses that has no value, and a value the template
/// does not use, are errors; braces around anything but a name are text.
pub fn fill(template: &str, variables: &BTreeMap<String, String>) -> Result<String, PromptError> {
	let mut out = String::with_capacity(template.len());
	let mut used = vec![false; variables.len()];
	let mut rest = template;
	while let Some(start) = rest.find("{{") {
		let after = &rest[start + 2..];
		let Some(end) = after.find("}}") else { break };
		let name = after[..end].trim();
		let is_name = !name.is_empty()
			&& name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
		if !is_name {
			// One brace is text: `{{{x}}}` is a brace, then `{{x}}`.
			out.push_str(&rest[..start + 1]);
			rest = &rest[start + 1..];
			continue;
		}
		let (i, value) = variables
			.iter()
			.enumerate()
			.find_map(|(i, (key, value))| (key == name).then_some((i, value)))
			.ok_or_else(|| {
				PromptError::Variables(format!("the template uses {name:?}, not given"))
			})?;
		used[i] = true;
		out.push_str(&rest[..start]);
		out.push_str(value);
		rest = &after[end + 2..];
	}
	out.push_str(rest);
	if let Some((name, _)) = variables.keys().zip(&used).find(|(_, &used)| !used) {
		return Err(PromptError::Variables(format!("{name:?} is not used by the template")));
	}
	Ok(out)
}

#[cfg(test)]
mod tests {
	use super::*;

	fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
		pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
	}

	#[test]
	fn variables_are_filled_in_and_must_fit() {
		let template = "You help {{ customer }} with {{topic}}; {{topic}} only. {\"json\": {}}";
		let filled = fill(template, &vars(&[("customer", "Jane"), ("topic", "billing")])).unwrap();
		assert_eq!(filled, "You help Jane with billing; billing only. {\"json\": {}}");
		// Values are not templates themselves.
		let filled = fill("Hi {{name}}", &vars(&[("name", "{{name}}")])).unwrap();
		assert_eq!(filled, "Hi {{name}}");
		// Braces around what is not a name, or not closed, are text.
		assert_eq!(fill("{{ a b }} {{", &vars(&[])).unwrap(), "{{ a b }} {{");
		assert_eq!(fill("{{{x}}}, {{{{x}}}}", &vars(&[("x", "1")])).unwrap(), "{1}, {{1}}");
		assert_eq!(fill("héllo {{ x }} ✓", &vars(&[("x", "wörld")])).unwrap(), "héllo wörld ✓");
		let missing = fill(template, &vars(&[("customer", "Jane")])).unwrap_err().to_string();
		assert!(missing.contains("\"topic\", not given"), "{missing}");
		let unused = fill("Hi", &vars(&[("name", "Jane")])).unwrap_err().to_string();
		assert!(unused.contains("\"name\" is not used"), "{unused}");
	}
}
