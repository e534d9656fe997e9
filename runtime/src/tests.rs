//! Runtime tests: genesis presets, token properties, fee payment and the treasury share.
//!
//! Blocks are initialised through `Executive` with an Aura pre-digest, and transfers are real
//! signed extrinsics applied with `Executive::apply_extrinsic`, so the whole transaction
//! pipeline (signature, nonce, fee withdrawal and distribution) runs as on chain.

use codec::Encode;
use frame_support::traits::{
	fungible::{Inspect, Mutate},
	BuildGenesisConfig, Get, UnfilteredDispatchable,
};
use pallet_transaction_payment::Multiplier;
use serde_json::Value;
use sp_consensus_aura::{Slot, AURA_ENGINE_ID};
use sp_keyring::Sr25519Keyring;
use sp_runtime::{
	generic::Era,
	traits::{Convert, Header as _, One},
	transaction_validity::{InvalidTransaction, TransactionValidityError},
	Digest, DigestItem, FixedPointNumber,
};

use crate::{
	configs::{RuntimeBlockWeights, SlowAdjustingFeeUpdate},
	fees::{treasury_account, FeeTreasuryShare},
	genesis_config_presets::{
		development_config_genesis, local_config_genesis, preset_names, DEV_SENDER_ACCOUNTS,
		DEV_SENDER_ENDOWMENT, ENDOWMENT,
	},
	token, AccountId, Balance, Balances, BalancesCall, Executive, Header, Perbill, Runtime,
	RuntimeCall, RuntimeEvent, RuntimeGenesisConfig, RuntimeOrigin, SignedPayload, System,
	SystemCall, TransactionPayment, TxExtension, UncheckedExtrinsic, VERSION,
};

/// Merges the JSON `patch` into `base`, as the node does with a genesis preset.
fn merge(base: &mut Value, patch: Value) {
	match (base, patch) {
		(Value::Object(base), Value::Object(patch)) => {
			for (key, value) in patch {
				merge(base.entry(key).or_insert(Value::Null), value);
			}
		}
		(base, patch) => *base = patch,
	}
}

/// Externalities holding the genesis state of `preset`, built the way the node builds it.
fn ext_from_preset(preset: Value) -> sp_io::TestExternalities {
	let mut config = serde_json::to_value(RuntimeGenesisConfig::default()).unwrap();
	merge(&mut config, preset);
	let config: RuntimeGenesisConfig = serde_json::from_value(config).unwrap();
	let mut ext = sp_io::TestExternalities::default();
	ext.execute_with(|| config.build());
	ext
}

fn dev_ext() -> sp_io::TestExternalities {
	ext_from_preset(development_config_genesis())
}

/// Starts block `number`, sealed (in its pre-digest) by the Aura authority of `slot`, or by no
/// one if `slot` is `None`.
fn start_block(number: u32, slot: Option<u64>) {
	let digest = Digest {
		logs: slot
			.map(|slot| DigestItem::PreRuntime(AURA_ENGINE_ID, Slot::from(slot).encode()))
			.into_iter()
			.collect(),
	};
	let parent = System::parent_hash();
	Executive::initialize_block(&Header::new(
		number,
		Default::default(),
		Default::default(),
		parent,
		digest,
	));
}

fn tx_extension(nonce: u32, tip: Balance) -> TxExtension {
	(
		frame_system::CheckNonZeroSender::new(),
		frame_system::CheckSpecVersion::new(),
		frame_system::CheckTxVersion::new(),
		frame_system::CheckGenesis::new(),
		frame_system::CheckEra::from(Era::Immortal),
		frame_system::CheckNonce::from(nonce),
		frame_system::CheckWeight::new(),
		pallet_transaction_payment::ChargeTransactionPayment::from(tip),
		frame_metadata_hash_extension::CheckMetadataHash::new(false),
		frame_system::WeightReclaim::new(),
	)
}

/// A signed extrinsic of `call` from `signer`, as a wallet would build it.
fn signed(
	signer: Sr25519Keyring,
	call: RuntimeCall,
	nonce: u32,
	tip: Balance,
) -> UncheckedExtrinsic {
	let extension = tx_extension(nonce, tip);
	let payload = SignedPayload::new(call.clone(), extension.clone()).unwrap();
	let signature = payload.using_encoded(|bytes| signer.sign(bytes));
	UncheckedExtrinsic::new_signed(call, signer.to_account_id().into(), signature.into(), extension)
}

fn transfer(to: &AccountId, value: Balance) -> RuntimeCall {
	RuntimeCall::Balances(BalancesCall::transfer_keep_alive { dest: to.clone().into(), value })
}

fn free(who: &AccountId) -> Balance {
	<Balances as Inspect<AccountId>>::balance(who)
}

/// The `(actual_fee, tip)` of the last `TransactionFeePaid` event for `who`.
fn fee_paid(who: &AccountId) -> (Balance, Balance) {
	System::events()
		.into_iter()
		.rev()
		.find_map(|record| match record.event {
			RuntimeEvent::TransactionPayment(
				pallet_transaction_payment::Event::TransactionFeePaid {
					who: payer,
					actual_fee,
					tip,
				},
			) if &payer == who => Some((actual_fee, tip)),
			_ => None,
		})
		.expect("a TransactionFeePaid event")
}

#[test]
fn token_properties() {
	assert_eq!(token::SYMBOL, "OPEN");
	assert_eq!(token::DECIMALS, 18);
	assert_eq!(token::OPEN, 10u128.pow(18));
	assert_eq!(token::SS58_FORMAT, 42);
	assert_eq!(<Runtime as frame_system::Config>::SS58Prefix::get(), 42);
	assert_eq!(
		<<Runtime as pallet_balances::Config>::ExistentialDeposit as Get<Balance>>::get(),
		token::EXISTENTIAL_DEPOSIT
	);
	assert_eq!(VERSION.spec_name, "openledger");
}

#[test]
fn metadata_v15_and_v16_are_served_with_the_metadata_hash_extension() {
	let versions = Runtime::metadata_versions();
	assert!(versions.contains(&15), "{versions:?}");
	assert!(versions.contains(&16), "{versions:?}");
	for version in [15, 16] {
		let metadata = Runtime::metadata_at_version(version).expect("metadata is served");
		let bytes: &[u8] = &metadata;
		let needle = b"CheckMetadataHash";
		assert!(bytes.windows(needle.len()).any(|w| w == needle), "V{version} lacks the extension");
	}
}

#[test]
fn presets_are_listed_and_unknown_ones_rejected() {
	assert_eq!(preset_names(), vec!["development".to_string(), "local_testnet".to_string()]);
	assert!(crate::genesis_config_presets::get_preset(&"mainnet".to_string()).is_none());
	let dev = crate::genesis_config_presets::get_preset(&"development".to_string()).unwrap();
	let dev: Value = serde_json::from_slice(&dev).unwrap();
	assert_eq!(dev, development_config_genesis());
}

#[test]
fn development_genesis_builds() {
	dev_ext().execute_with(|| {
		let alice = Sr25519Keyring::Alice.to_account_id();
		assert_eq!(pallet_aura::Authorities::<Runtime>::get().len(), 1);
		assert_eq!(pallet_grandpa::Pallet::<Runtime>::grandpa_authorities().len(), 1);
		assert_eq!(pallet_sudo::Key::<Runtime>::get(), Some(alice.clone()));
		for account in Sr25519Keyring::well_known() {
			assert_eq!(free(&account.to_account_id()), ENDOWMENT);
		}
		assert_eq!(free(&treasury_account()), token::EXISTENTIAL_DEPOSIT);
		let well_known = Sr25519Keyring::well_known().count() as Balance;
		// The `//Sender//{i}` accounts for load tests are endowed too.
		let sender = |i: u32| {
			use sp_core::Pair as _;
			let pair =
				sp_core::sr25519::Pair::from_string(&format!("//Sender//{i}"), None).unwrap();
			AccountId::from(pair.public())
		};
		for i in [0, DEV_SENDER_ACCOUNTS - 1] {
			assert_eq!(free(&sender(i)), DEV_SENDER_ENDOWMENT);
		}
		assert_eq!(free(&sender(DEV_SENDER_ACCOUNTS)), 0);
		// pallet-balances 51.0.2 does not count its `dev_accounts` into the total issuance; the
		// issuance covers the explicitly endowed accounts only.
		// The DataNets reward account is created with the existential deposit.
		assert_eq!(
			free(&pallet_datanets::Pallet::<Runtime>::account_id()),
			token::EXISTENTIAL_DEPOSIT
		);
		let expected_issuance = well_known * ENDOWMENT + 2 * token::EXISTENTIAL_DEPOSIT;
		assert_eq!(Balances::total_issuance(), expected_issuance);
	});
}

#[test]
fn local_genesis_has_four_validators() {
	ext_from_preset(local_config_genesis()).execute_with(|| {
		let aura = pallet_aura::Authorities::<Runtime>::get();
		let grandpa = pallet_grandpa::Pallet::<Runtime>::grandpa_authorities();
		assert_eq!(aura.len(), 4);
		assert_eq!(grandpa.len(), 4);
		let expected: Vec<_> = [
			Sr25519Keyring::Alice,
			Sr25519Keyring::Bob,
			Sr25519Keyring::Charlie,
			Sr25519Keyring::Dave,
		]
		.iter()
		.map(|k| sp_consensus_aura::sr25519::AuthorityId::from(k.public()))
		.collect();
		assert_eq!(aura.into_inner(), expected);
		assert!(grandpa.iter().all(|(_, weight)| *weight == 1));
	});
}

#[test]
fn signed_transfer_pays_fee_split_between_author_and_treasury() {
	dev_ext().execute_with(|| {
		start_block(1, Some(1));
		let (alice, bob, charlie) = (
			Sr25519Keyring::Alice.to_account_id(),
			Sr25519Keyring::Bob.to_account_id(),
			Sr25519Keyring::Charlie.to_account_id(),
		);
		let amount = 10 * token::OPEN;
		let tip = token::MILLI_OPEN;
		let xt = signed(Sr25519Keyring::Bob, transfer(&charlie, amount), 0, tip);
		let estimate = TransactionPayment::query_info(xt.clone(), xt.encoded_size() as u32);
		let treasury_before = free(&treasury_account());

		assert_eq!(Executive::apply_extrinsic(xt), Ok(Ok(())));

		let (fee, paid_tip) = fee_paid(&bob);
		assert_eq!(paid_tip, tip);
		assert!(fee > tip, "a fee is charged besides the tip");
		assert_eq!(fee, estimate.partial_fee + tip, "the fee is the one the RPC quotes");
		assert_eq!(free(&bob), ENDOWMENT - amount - fee);
		assert_eq!(free(&charlie), ENDOWMENT + amount);
		let to_treasury = Perbill::from_percent(20).mul_floor(fee - tip);
		assert_eq!(free(&treasury_account()), treasury_before + to_treasury);
		// Alice sealed slot 1 and is paid the rest of the fee and the whole tip.
		assert_eq!(free(&alice), ENDOWMENT + fee - to_treasury);
		assert_eq!(System::account_nonce(&bob), 1);
	});
}

#[test]
fn fee_is_in_the_expected_range_for_a_transfer() {
	dev_ext().execute_with(|| {
		start_block(1, Some(1));
		let xt = signed(
			Sr25519Keyring::Bob,
			transfer(&Sr25519Keyring::Charlie.to_account_id(), token::OPEN),
			0,
			0,
		);
		let fee = TransactionPayment::query_info(xt.clone(), xt.encoded_size() as u32).partial_fee;
		// About two thousandths of an OPEN: cheap for users, costly for spam.
		assert!(fee > token::MILLI_OPEN / 2 && fee < 10 * token::MILLI_OPEN, "fee = {fee}");
	});
}

#[test]
fn treasury_share_is_configurable_by_root() {
	dev_ext().execute_with(|| {
		start_block(1, Some(1));
		assert_eq!(FeeTreasuryShare::get(), Perbill::from_percent(20));
		let set_share = RuntimeCall::System(SystemCall::set_storage {
			items: vec![(FeeTreasuryShare::key().to_vec(), Perbill::from_percent(50).encode())],
		});
		// Only root may change it.
		assert!(set_share
			.clone()
			.dispatch_bypass_filter(RuntimeOrigin::signed(Sr25519Keyring::Bob.to_account_id()))
			.is_err());
		assert!(set_share.dispatch_bypass_filter(RuntimeOrigin::root()).is_ok());
		assert_eq!(FeeTreasuryShare::get(), Perbill::from_percent(50));

		let bob = Sr25519Keyring::Bob.to_account_id();
		let treasury_before = free(&treasury_account());
		let xt = signed(
			Sr25519Keyring::Bob,
			transfer(&Sr25519Keyring::Charlie.to_account_id(), token::OPEN),
			0,
			0,
		);
		assert_eq!(Executive::apply_extrinsic(xt), Ok(Ok(())));
		let (fee, _) = fee_paid(&bob);
		assert_eq!(
			free(&treasury_account()),
			treasury_before + Perbill::from_percent(50).mul_floor(fee)
		);
	});
}

#[test]
fn without_a_known_author_the_whole_fee_goes_to_the_treasury() {
	dev_ext().execute_with(|| {
		start_block(1, None);
		let alice = Sr25519Keyring::Alice.to_account_id();
		let treasury_before = free(&treasury_account());
		let xt = signed(
			Sr25519Keyring::Bob,
			transfer(&Sr25519Keyring::Charlie.to_account_id(), token::OPEN),
			0,
			token::MILLI_OPEN,
		);
		assert_eq!(Executive::apply_extrinsic(xt), Ok(Ok(())));
		let (fee, _) = fee_paid(&Sr25519Keyring::Bob.to_account_id());
		assert_eq!(free(&treasury_account()), treasury_before + fee);
		assert_eq!(free(&alice), ENDOWMENT);
	});
}

#[test]
fn an_account_that_cannot_pay_the_fee_is_rejected_and_loses_nothing() {
	dev_ext().execute_with(|| {
		start_block(1, Some(1));
		let poor = Sr25519Keyring::One.to_account_id();
		let small = token::EXISTENTIAL_DEPOSIT + 1;
		Balances::set_balance(&poor, small);
		let xt = signed(
			Sr25519Keyring::One,
			transfer(&Sr25519Keyring::Charlie.to_account_id(), 1),
			0,
			0,
		);
		assert_eq!(
			Executive::apply_extrinsic(xt),
			Err(TransactionValidityError::Invalid(InvalidTransaction::Payment))
		);
		assert_eq!(free(&poor), small);
		assert_eq!(System::account_nonce(&poor), 0);
	});
}

#[test]
fn a_bad_signature_or_nonce_is_rejected() {
	dev_ext().execute_with(|| {
		start_block(1, Some(1));
		let charlie = Sr25519Keyring::Charlie.to_account_id();
		// Signed by Bob, claimed to be from Eve.
		let extension = tx_extension(0, 0);
		let call = transfer(&charlie, token::OPEN);
		let payload = SignedPayload::new(call.clone(), extension.clone()).unwrap();
		let signature = payload.using_encoded(|bytes| Sr25519Keyring::Bob.sign(bytes));
		let forged = UncheckedExtrinsic::new_signed(
			call,
			Sr25519Keyring::Eve.to_account_id().into(),
			signature.into(),
			extension,
		);
		assert_eq!(
			Executive::apply_extrinsic(forged),
			Err(TransactionValidityError::Invalid(InvalidTransaction::BadProof))
		);
		let stale = signed(Sr25519Keyring::Bob, transfer(&charlie, 1), 0, 0);
		assert_eq!(Executive::apply_extrinsic(stale.clone()), Ok(Ok(())));
		assert_eq!(
			Executive::apply_extrinsic(stale),
			Err(TransactionValidityError::Invalid(InvalidTransaction::Stale))
		);
		assert_eq!(free(&Sr25519Keyring::Eve.to_account_id()), ENDOWMENT);
	});
}

#[test]
fn fee_multiplier_rises_in_full_blocks_and_falls_in_empty_ones() {
	dev_ext().execute_with(|| {
		start_block(1, Some(1));
		let max = RuntimeBlockWeights::get().max_block;
		System::set_block_consumed_resources(max, 0);
		let busy = SlowAdjustingFeeUpdate::<Runtime>::convert(Multiplier::one());
		assert!(busy > Multiplier::one(), "{busy:?}");
		System::set_block_consumed_resources(Default::default(), 0);
		let idle = SlowAdjustingFeeUpdate::<Runtime>::convert(Multiplier::one());
		assert!(idle < Multiplier::one(), "{idle:?}");
		// The floor keeps transactions from ever becoming free.
		let floor =
			SlowAdjustingFeeUpdate::<Runtime>::convert(Multiplier::saturating_from_rational(1, 10));
		assert!(floor >= Multiplier::saturating_from_rational(1, 10));
	});
}
