//! `adapters_*` RPC methods: the model registry, through the runtime's `AdaptersApi`.
//!
//! - `adapters_getAdapter(id, at?)`: an adapter's full record (retired ones included), or
//!   `null`.
//! - `adapters_getBaseModel(id, at?)`: a base model, or `null`.

use std::sync::Arc;

use jsonrpsee::{types::Params, RpcModule};
use openledger_primitives::{AdapterId, AdaptersApi, BaseModelId};
use openledger_runtime::{opaque::Block, Runtime};
use pallet_adapters::{Adapter, BaseModel};
use serde_json::{json, Value};
use sp_api::ProvideRuntimeApi;
use sp_blockchain::HeaderBackend;

use super::{block, hex32, runtime_error, ss58, text, RpcResult};

/// The runtime API as this runtime instantiates it.
pub trait RuntimeAdaptersApi: AdaptersApi<Block, Adapter<Runtime>, BaseModel<Runtime>> {}
impl<T: AdaptersApi<Block, Adapter<Runtime>, BaseModel<Runtime>>> RuntimeAdaptersApi for T {}

/// An adapter as JSON. Training weights are in parts per billion (1,000,000,000 is 100%).
pub fn adapter_json(id: AdapterId, adapter: &Adapter<Runtime>) -> Value {
	json!({
		"id": id,
		"owner": ss58(&adapter.owner),
		"baseModel": adapter.base_model,
		"name": text(&adapter.name),
		"contentHash": hex32(&adapter.content_hash),
		"rank": adapter.rank,
		"targetModules": adapter
			.target_modules
			.iter()
			.map(|m| format!("{m:?}"))
			.collect::<Vec<_>>(),
		"uri": text(&adapter.uri),
		"pricePer1kTokens": adapter.price_per_1k_tokens.to_string(),
		"datanets": adapter
			.datanets
			.iter()
			.map(|(datanet, weight)| json!({ "datanet": datanet, "weight": weight.deconstruct() }))
			.collect::<Vec<_>>(),
		"retired": adapter.retired,
		"pendingOwner": adapter.pending_owner.as_ref().map(ss58),
		"deposit": adapter.deposit.to_string(),
	})
}

/// A base model as JSON.
pub fn base_model_json(id: BaseModelId, model: &BaseModel<Runtime>) -> Value {
	json!({
		"id": id,
		"name": text(&model.name),
		"architecture": text(&model.architecture),
		"weightsHash": hex32(&model.weights_hash),
		"quantization": text(&model.quantization),
		"contextLength": model.context_length,
		"license": text(&model.license),
		"enabled": model.enabled,
	})
}

/// Builds the `adapters_*` methods over `client`.
pub fn module<C>(
	client: Arc<C>,
) -> Result<RpcModule<Arc<C>>, Box<dyn std::error::Error + Send + Sync>>
where
	C: ProvideRuntimeApi<Block> + HeaderBackend<Block> + Send + Sync + 'static,
	C::Api: RuntimeAdaptersApi,
{
	let mut module = RpcModule::new(client);

	module.register_method("adapters_getAdapter", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: AdapterId = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let adapter = client.runtime_api().adapter(at, id).map_err(runtime_error)?;
		Ok(adapter.map_or(Value::Null, |a| adapter_json(id, &a)))
	})?;

	module.register_method("adapters_getBaseModel", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: BaseModelId = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let model = client.runtime_api().base_model(at, id).map_err(runtime_error)?;
		Ok(model.map_or(Value::Null, |m| base_model_json(id, &m)))
	})?;

	Ok(module)
}
