//! Chain specifications: `dev`, `local` and specs loaded from JSON files.

use openledger_runtime::{token, WASM_BINARY};
use sc_service::{ChainType, Properties};

/// A chain specification of this node; no extensions.
pub type ChainSpec = sc_service::GenericChainSpec;

/// The token properties wallets read (polkadot.js Apps shows balances in OPEN with them).
pub fn properties() -> Properties {
	let mut properties = Properties::new();
	properties.insert("tokenSymbol".into(), token::SYMBOL.into());
	properties.insert("tokenDecimals".into(), token::DECIMALS.into());
	properties.insert("ss58Format".into(), token::SS58_FORMAT.into());
	properties
}

fn wasm_binary() -> Result<&'static [u8], String> {
	WASM_BINARY.ok_or_else(|| {
		"The runtime wasm was not built; build without SKIP_WASM_BUILD to run a chain".to_string()
	})
}

/// The development chain: Alice alone authors and finalizes, ready in seconds.
pub fn development_chain_spec() -> Result<ChainSpec, String> {
	Ok(ChainSpec::builder(wasm_binary()?, None)
		.with_name("OpenLedger Development")
		.with_id("openledger_dev")
		.with_protocol_id("openledger")
		.with_chain_type(ChainType::Development)
		.with_genesis_config_preset_name(sp_genesis_builder::DEV_RUNTIME_PRESET)
		.with_properties(properties())
		.build())
}

/// The local testnet: Alice, Bob, Charlie and Dave author and finalize on one machine.
pub fn local_chain_spec() -> Result<ChainSpec, String> {
	Ok(ChainSpec::builder(wasm_binary()?, None)
		.with_name("OpenLedger Local Testnet")
		.with_id("openledger_local")
		.with_protocol_id("openledger")
		.with_chain_type(ChainType::Local)
		.with_genesis_config_preset_name(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET)
		.with_properties(properties())
		.build())
}
