//! `prompts_*` RPC methods: the prompts registry, through the runtime's `PromptsApi`.
//!
//! - `prompts_getPrompt(id, at?)`: a prompt (`owner`, `name`, `latest` version, ...), or `null`.
//! - `prompts_getVersion(id, version, at?)`: one version: its `template` (`{"inline": text}`
//!   or `{"external": {"uri", "hash"}}`), `contentHash`, `pricePerUse`, `deprecated`, or
//!   `null`.

use std::sync::Arc;

use jsonrpsee::{types::Params, RpcModule};
use openledger_primitives::{PromptId, PromptVersion, PromptsApi};
use openledger_runtime::{opaque::Block, Runtime};
use pallet_prompts::{Prompt, PromptVersionInfo, Template};
use serde_json::{json, Value};
use sp_api::ProvideRuntimeApi;
use sp_blockchain::HeaderBackend;

use super::{block, hex32, runtime_error, ss58, text, RpcResult};

/// The runtime API as this runtime instantiates it.
pub trait RuntimePromptsApi:
	PromptsApi<Block, Prompt<Runtime>, PromptVersionInfo<Runtime>>
{
}
impl<T: PromptsApi<Block, Prompt<Runtime>, PromptVersionInfo<Runtime>>> RuntimePromptsApi for T {}

/// A prompt as JSON.
pub fn prompt_json(id: PromptId, prompt: &Prompt<Runtime>) -> Value {
	json!({
		"id": id,
		"owner": ss58(&prompt.owner),
		"name": text(&prompt.name),
		"latest": prompt.latest,
		"pendingOwner": prompt.pending_owner.as_ref().map(ss58),
		"deposit": prompt.deposit.to_string(),
	})
}

/// A prompt's version as JSON (an inline template's text as UTF-8, invalid bytes replaced:
/// its `contentHash` is that of the bytes stored).
pub fn version_json(
	id: PromptId,
	version: PromptVersion,
	info: &PromptVersionInfo<Runtime>,
) -> Value {
	let template = match &info.template {
		Template::Inline(bytes) => json!({ "inline": text(bytes) }),
		Template::External { uri, hash } => {
			json!({ "external": { "uri": text(uri), "hash": hex32(hash) } })
		}
	};
	json!({
		"prompt": id,
		"version": version,
		"template": template,
		"contentHash": hex32(&info.content_hash),
		"pricePerUse": info.price_per_use.to_string(),
		"deprecated": info.deprecated,
		"deposit": info.deposit.to_string(),
	})
}

/// Builds the `prompts_*` methods over `client`.
pub fn module<C>(
	client: Arc<C>,
) -> Result<RpcModule<Arc<C>>, Box<dyn std::error::Error + Send + Sync>>
where
	C: ProvideRuntimeApi<Block> + HeaderBackend<Block> + Send + Sync + 'static,
	C::Api: RuntimePromptsApi,
{
	let mut module = RpcModule::new(client);

	module.register_method("prompts_getPrompt", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: PromptId = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let prompt = client.runtime_api().prompt(at, id).map_err(runtime_error)?;
		Ok(prompt.map_or(Value::Null, |p| prompt_json(id, &p)))
	})?;

	module.register_method("prompts_getVersion", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: PromptId = seq.next()?;
		let version: PromptVersion = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let info = client.runtime_api().prompt_version(at, id, version).map_err(runtime_error)?;
		Ok(info.map_or(Value::Null, |v| version_json(id, version, &v)))
	})?;

	Ok(module)
}
