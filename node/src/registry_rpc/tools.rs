//! `tools_*` RPC methods: the tools registry, through the runtime's `ToolsApi`.
//!
//! - `tools_getTool(id, at?)`: a tool's full record, or `null`.

use std::sync::Arc;

use jsonrpsee::{types::Params, RpcModule};
use openledger_primitives::{ToolId, ToolsApi};
use openledger_runtime::{opaque::Block, Runtime};
use pallet_tools::Tool;
use serde_json::{json, Value};
use sp_api::ProvideRuntimeApi;
use sp_blockchain::HeaderBackend;

use super::{block, hex32, runtime_error, ss58, text, RpcResult};

/// The runtime API as this runtime instantiates it.
pub trait RuntimeToolsApi: ToolsApi<Block, Tool<Runtime>> {}
impl<T: ToolsApi<Block, Tool<Runtime>>> RuntimeToolsApi for T {}

/// A tool as JSON.
pub fn tool_json(id: ToolId, tool: &Tool<Runtime>) -> Value {
	json!({
		"id": id,
		"owner": ss58(&tool.owner),
		"name": text(&tool.name),
		"endpoint": text(&tool.endpoint),
		"descriptorHash": hex32(&tool.descriptor_hash),
		"pricePerCall": tool.price_per_call.to_string(),
		"paused": tool.paused,
		"pendingOwner": tool.pending_owner.as_ref().map(ss58),
		"deposit": tool.deposit.to_string(),
	})
}

/// Builds the `tools_*` methods over `client`.
pub fn module<C>(
	client: Arc<C>,
) -> Result<RpcModule<Arc<C>>, Box<dyn std::error::Error + Send + Sync>>
where
	C: ProvideRuntimeApi<Block> + HeaderBackend<Block> + Send + Sync + 'static,
	C::Api: RuntimeToolsApi,
{
	let mut module = RpcModule::new(client);

	module.register_method("tools_getTool", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: ToolId = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let tool = client.runtime_api().tool(at, id).map_err(runtime_error)?;
		Ok(tool.map_or(Value::Null, |t| tool_json(id, &t)))
	})?;

	Ok(module)
}
