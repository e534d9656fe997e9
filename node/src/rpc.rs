//! The node's RPC methods beyond the standard set (system, chain, state, author and offchain,
//! which `sc_service::spawn_tasks` adds): account nonces (`system_accountNextIndex`,
//! `system_dryRun`), fee queries (`payment_queryInfo`, `payment_queryFeeDetails`) and GRANDPA
//! (`grandpa_roundState`, `grandpa_proveFinality`, `grandpa_subscribeJustifications`), and the
//! registries (`datanets_*`, `adapters_*`, `tools_*`, see [`crate::registry_rpc`]).

use std::sync::Arc;

use jsonrpsee::RpcModule;
use openledger_runtime::{opaque::Block, AccountId, Balance, Nonce};
use sc_consensus_grandpa::{
	FinalityProofProvider, GrandpaJustificationStream, SharedAuthoritySet, SharedVoterState,
};
use sc_consensus_grandpa_rpc::{Grandpa, GrandpaApiServer};
use sc_rpc::SubscriptionTaskExecutor;
use sc_transaction_pool_api::TransactionPool;
use sp_api::ProvideRuntimeApi;
use sp_block_builder::BlockBuilder;
use sp_blockchain::{Error as BlockChainError, HeaderBackend, HeaderMetadata};

/// What the GRANDPA RPC needs.
pub struct GrandpaDeps<B> {
	/// The voter's state, for `grandpa_roundState`.
	pub shared_voter_state: SharedVoterState,
	/// The current authority set.
	pub shared_authority_set: SharedAuthoritySet<openledger_runtime::Hash, u32>,
	/// Justifications as they are produced, for `grandpa_subscribeJustifications`.
	pub justification_stream: GrandpaJustificationStream<Block>,
	/// Executes subscriptions.
	pub subscription_executor: SubscriptionTaskExecutor,
	/// Builds finality proofs, for `grandpa_proveFinality`.
	pub finality_provider: Arc<FinalityProofProvider<B, Block>>,
}

/// What the full node's RPC needs.
pub struct FullDeps<C, P, B> {
	/// The client.
	pub client: Arc<C>,
	/// The transaction pool.
	pub pool: Arc<P>,
	/// GRANDPA.
	pub grandpa: GrandpaDeps<B>,
}

/// Builds the RPC methods of a full node.
pub fn create_full<C, P, B>(
	deps: FullDeps<C, P, B>,
) -> Result<RpcModule<()>, Box<dyn std::error::Error + Send + Sync>>
where
	C: ProvideRuntimeApi<Block>
		+ HeaderBackend<Block>
		+ HeaderMetadata<Block, Error = BlockChainError>
		+ Send
		+ Sync
		+ 'static,
	C::Api: substrate_frame_rpc_system::AccountNonceApi<Block, AccountId, Nonce>,
	C::Api: pallet_transaction_payment_rpc::TransactionPaymentRuntimeApi<Block, Balance>,
	C::Api: BlockBuilder<Block>,
	C::Api: crate::registry_rpc::datanets::RuntimeDataNetsApi,
	C::Api: crate::registry_rpc::adapters::RuntimeAdaptersApi,
	C::Api: crate::registry_rpc::prompts::RuntimePromptsApi,
	C::Api: crate::registry_rpc::tools::RuntimeToolsApi,
	P: TransactionPool + 'static,
	B: sc_client_api::Backend<Block> + Send + Sync + 'static,
	B::State: sc_client_api::StateBackend<sp_runtime::traits::HashingFor<Block>>,
{
	use pallet_transaction_payment_rpc::{TransactionPayment, TransactionPaymentApiServer};
	use substrate_frame_rpc_system::{System, SystemApiServer};

	let mut module = RpcModule::new(());
	let FullDeps { client, pool, grandpa } = deps;
	let GrandpaDeps {
		shared_voter_state,
		shared_authority_set,
		justification_stream,
		subscription_executor,
		finality_provider,
	} = grandpa;

	module.merge(crate::registry_rpc::datanets::module(client.clone())?)?;
	module.merge(crate::registry_rpc::adapters::module(client.clone())?)?;
	module.merge(crate::registry_rpc::prompts::module(client.clone())?)?;
	module.merge(crate::registry_rpc::tools::module(client.clone())?)?;
	module.merge(System::new(client.clone(), pool).into_rpc())?;
	module.merge(TransactionPayment::new(client).into_rpc())?;
	module.merge(
		Grandpa::new(
			subscription_executor,
			shared_authority_set,
			shared_voter_state,
			justification_stream,
			finality_provider,
		)
		.into_rpc(),
	)?;

	Ok(module)
}
