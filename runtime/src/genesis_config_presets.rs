//! Genesis presets: the initial state of the `development` and `local_testnet` chains.
//!
//! The node builds its `--dev` and `--chain local` chain specs from these presets, and
//! `build-spec` prints them (raw or not) for custom chains.

use alloc::{vec, vec::Vec};

use frame_support::build_struct_json_patch;
use serde_json::Value;
use sp_consensus_aura::sr25519::AuthorityId as AuraId;
use sp_consensus_grandpa::AuthorityId as GrandpaId;
use sp_genesis_builder::{self, PresetId};
use sp_keyring::{Ed25519Keyring, Sr25519Keyring};

use crate::{
	fees::treasury_account,
	token::{EXISTENTIAL_DEPOSIT, OPEN},
	AccountId, Balance, BalancesConfig, RuntimeGenesisConfig, SudoConfig,
};

/// What each well-known development account (Alice, Bob, ... and their stashes) holds.
pub const ENDOWMENT: Balance = 1_000_000 * OPEN;
/// How many derived development accounts (`//Sender//0`, `//Sender//1`, ...) the dev chain
/// endows, for load tests that need many independent senders.
pub const DEV_SENDER_ACCOUNTS: u32 = 256;
/// What each derived development account holds.
pub const DEV_SENDER_ENDOWMENT: Balance = 1_000 * OPEN;

/// A genesis state: validators (Aura and GRANDPA keys), endowed accounts and the sudo key.
///
/// The treasury account is always endowed with the existential deposit so that it can receive
/// fee shares of any size from the first block.
pub fn testnet_genesis(
	initial_authorities: Vec<(AuraId, GrandpaId)>,
	endowed_accounts: Vec<AccountId>,
	root: AccountId,
	dev_accounts: Option<(u32, Balance, Option<alloc::string::String>)>,
) -> Value {
	let mut balances: Vec<(AccountId, Balance)> =
		endowed_accounts.into_iter().map(|account| (account, ENDOWMENT)).collect();
	balances.push((treasury_account(), EXISTENTIAL_DEPOSIT));
	build_struct_json_patch!(RuntimeGenesisConfig {
		balances: BalancesConfig { balances, dev_accounts },
		aura: pallet_aura::GenesisConfig {
			authorities: initial_authorities
				.iter()
				.map(|(aura, _)| aura.clone())
				.collect::<Vec<_>>(),
		},
		grandpa: pallet_grandpa::GenesisConfig {
			authorities: initial_authorities
				.iter()
				.map(|(_, grandpa)| (grandpa.clone(), 1))
				.collect::<Vec<_>>(),
		},
		sudo: SudoConfig { key: Some(root) },
	})
}

/// The session keys of a well-known development validator.
fn authority_keys(name: Sr25519Keyring, grandpa: Ed25519Keyring) -> (AuraId, GrandpaId) {
	(name.public().into(), grandpa.public().into())
}

/// The well-known development accounts: Alice, Bob, Charlie, Dave, Eve, Ferdie and their
/// stashes.
fn well_known_accounts() -> Vec<AccountId> {
	Sr25519Keyring::well_known().map(|k| k.to_account_id()).collect()
}

/// The `development` preset: Alice alone validates and is sudo.
pub fn development_config_genesis() -> Value {
	testnet_genesis(
		vec![authority_keys(Sr25519Keyring::Alice, Ed25519Keyring::Alice)],
		well_known_accounts(),
		Sr25519Keyring::Alice.to_account_id(),
		Some((DEV_SENDER_ACCOUNTS, DEV_SENDER_ENDOWMENT, None)),
	)
}

/// The `local_testnet` preset: Alice, Bob, Charlie and Dave validate; Alice is sudo.
///
/// GRANDPA needs more than two thirds of the voters, so four is the smallest set that keeps
/// finalizing with one validator down.
pub fn local_config_genesis() -> Value {
	testnet_genesis(
		vec![
			authority_keys(Sr25519Keyring::Alice, Ed25519Keyring::Alice),
			authority_keys(Sr25519Keyring::Bob, Ed25519Keyring::Bob),
			authority_keys(Sr25519Keyring::Charlie, Ed25519Keyring::Charlie),
			authority_keys(Sr25519Keyring::Dave, Ed25519Keyring::Dave),
		],
		well_known_accounts(),
		Sr25519Keyring::Alice.to_account_id(),
		None,
	)
}

/// The JSON patch of the preset `id`, or `None` if there is no such preset.
pub fn get_preset(id: &PresetId) -> Option<Vec<u8>> {
	let patch = match id.as_ref() {
		sp_genesis_builder::DEV_RUNTIME_PRESET => development_config_genesis(),
		sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET => local_config_genesis(),
		_ => return None,
	};
	serde_json::to_vec(&patch).ok()
}

/// The names of the presets this runtime provides.
pub fn preset_names() -> Vec<PresetId> {
	vec![
		PresetId::from(sp_genesis_builder::DEV_RUNTIME_PRESET),
		PresetId::from(sp_genesis_builder::LOCAL_TESTNET_RUNTIME_PRESET),
	]
}
