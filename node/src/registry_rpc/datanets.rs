//! `datanets_*` RPC methods: the DataNets registry, through the runtime's `DataNetsApi`.
//!
//! - `datanets_getDataNet(id, at?)`: the DataNet, or `null`.
//! - `datanets_getRecord(id, at?)`: a record, or `null`.
//! - `datanets_acceptedRecords(id, start, limit, at?)`: a page of accepted records in acceptance
//!   order, each with the DataNet's commitment once it was accepted.
//! - `datanets_commitment(id, version?, at?)`: `{version, commitment}`, now or at `version`.
//! - `datanets_contributorRecords(account, startAfter?, limit, at?)`: a page of an account's
//!   records; pass the last id of a page as `startAfter` for the next one.
//! - `datanets_claimable(id, account, at?)`: the rewards the account can claim, as a decimal
//!   string in the smallest unit.

use std::sync::Arc;

use jsonrpsee::{types::Params, RpcModule};
use openledger_primitives::{DataNetId, DataNetsApi, RecordId};
use openledger_runtime::{opaque::Block, AccountId, Balance, Runtime};
use pallet_datanets::{DataNet, Record, RecordStatus};
use serde_json::{json, Value};
use sp_api::ProvideRuntimeApi;
use sp_blockchain::HeaderBackend;

use super::{block, hex32, parse_account, runtime_error, ss58, text, RpcResult};

/// The runtime API as this runtime instantiates it.
pub trait RuntimeDataNetsApi:
	DataNetsApi<Block, AccountId, Balance, DataNet<Runtime>, Record<Runtime>>
{
}
impl<T: DataNetsApi<Block, AccountId, Balance, DataNet<Runtime>, Record<Runtime>>>
	RuntimeDataNetsApi for T
{
}

/// A DataNet as JSON.
pub fn datanet_json(net: &DataNet<Runtime>) -> Value {
	json!({
		"owner": ss58(&net.owner),
		"name": text(&net.name),
		"descriptionUri": text(&net.description_uri),
		"descriptionHash": hex32(&net.description_hash),
		"license": text(&net.license),
		"curation": format!("{:?}", net.curation),
		"curators": net.curators.iter().map(ss58).collect::<Vec<_>>(),
		"rejectionForfeit": net.rejection_forfeit.deconstruct(),
		"deposit": net.deposit.to_string(),
		"version": net.version,
		"commitment": hex32(&net.commitment),
		"pending": net.pending,
		"rewardsPaid": net.rewards_paid.to_string(),
	})
}

/// A record as JSON.
pub fn record_json(id: RecordId, record: &Record<Runtime>) -> Value {
	json!({
		"id": id,
		"datanet": record.datanet,
		"contributor": ss58(&record.contributor),
		"contentHash": hex32(&record.content_hash),
		"uri": text(&record.uri),
		"size": record.size,
		"metadata": record.metadata.as_ref().map(|m| text(m)),
		"deposit": record.deposit.to_string(),
		"status": match record.status {
			RecordStatus::Pending => json!("pending"),
			RecordStatus::Accepted { index } => json!({ "accepted": index }),
		},
	})
}

/// Builds the `datanets_*` methods over `client`.
pub fn module<C>(
	client: Arc<C>,
) -> Result<RpcModule<Arc<C>>, Box<dyn std::error::Error + Send + Sync>>
where
	C: ProvideRuntimeApi<Block> + HeaderBackend<Block> + Send + Sync + 'static,
	C::Api: RuntimeDataNetsApi,
{
	let mut module = RpcModule::new(client);

	module.register_method("datanets_getDataNet", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: DataNetId = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let net = client.runtime_api().datanet(at, id).map_err(runtime_error)?;
		Ok(net.as_ref().map_or(Value::Null, datanet_json))
	})?;

	module.register_method("datanets_getRecord", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: RecordId = seq.next()?;
		let at = block(&**client, seq.optional_next()?);
		let record = client.runtime_api().record(at, id).map_err(runtime_error)?;
		Ok(record.map_or(Value::Null, |r| record_json(id, &r)))
	})?;

	module.register_method(
		"datanets_acceptedRecords",
		|params: Params, client, _| -> RpcResult {
			let mut seq = params.sequence();
			let id: DataNetId = seq.next()?;
			let start: u64 = seq.next()?;
			let limit: u32 = seq.next()?;
			let at = block(&**client, seq.optional_next()?);
			let page = client
				.runtime_api()
				.accepted_records(at, id, start, limit)
				.map_err(runtime_error)?;
			Ok(Value::Array(
				page.iter()
					.map(|(record_id, record, commitment)| {
						let mut value = record_json(*record_id, record);
						value["commitment"] = json!(hex32(commitment));
						value
					})
					.collect(),
			))
		},
	)?;

	module.register_method("datanets_commitment", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: DataNetId = seq.next()?;
		let version: Option<u64> = seq.optional_next()?;
		let at = block(&**client, seq.optional_next()?);
		let found = client.runtime_api().commitment(at, id, version).map_err(runtime_error)?;
		Ok(found.map_or(
			Value::Null,
			|(version, commitment)| json!({ "version": version, "commitment": hex32(&commitment) }),
		))
	})?;

	module.register_method(
		"datanets_contributorRecords",
		|params: Params, client, _| -> RpcResult {
			let mut seq = params.sequence();
			let account = parse_account(&seq.next::<String>()?)?;
			let start_after: Option<RecordId> = seq.optional_next()?;
			let limit: u32 = seq.next()?;
			let at = block(&**client, seq.optional_next()?);
			let page = client
				.runtime_api()
				.contributor_records(at, account, start_after, limit)
				.map_err(runtime_error)?;
			Ok(Value::Array(page.iter().map(|(id, record)| record_json(*id, record)).collect()))
		},
	)?;

	module.register_method("datanets_claimable", |params: Params, client, _| -> RpcResult {
		let mut seq = params.sequence();
		let id: DataNetId = seq.next()?;
		let account = parse_account(&seq.next::<String>()?)?;
		let at = block(&**client, seq.optional_next()?);
		let amount = client.runtime_api().claimable(at, id, account).map_err(runtime_error)?;
		Ok(json!(amount.to_string()))
	})?;

	Ok(module)
}
