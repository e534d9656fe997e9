//! The registries: DataNets, prompts, base models with their LoRA adapters, and tools.

use frame_support::{
	parameter_types,
	traits::{tokens::imbalance::ResolveTo, ConstU128, ConstU32, Contains, TypedGet},
	PalletId,
};
use sp_runtime::Perbill;

use crate::{
	token::{MILLI_OPEN, OPEN},
	AccountId, Balances, Runtime, RuntimeHoldReason,
};

/// The treasury's account, as a type for handlers that pay it.
pub struct TreasuryAccount;
impl TypedGet for TreasuryAccount {
	type Type = AccountId;
	fn get() -> AccountId {
		crate::fees::treasury_account()
	}
}

/// The deposit per byte stored on chain by a registry: 0.001 OPEN.
pub const BYTE_DEPOSIT: u128 = MILLI_OPEN;

parameter_types! {
	/// The DataNets pallet's id; its account holds rewards until contributors claim them.
	pub const DataNetsPalletId: PalletId = PalletId(*b"ol/dnets");
	/// The most a DataNet may take from the deposit of a record its curators reject.
	pub const MaxRejectionForfeit: Perbill = Perbill::from_percent(50);
}

/// DataNets: deposits of 10 OPEN per DataNet and 0.1 OPEN per record, plus 0.001 OPEN per
/// stored byte; forfeits from rejected records go to the treasury.
impl pallet_datanets::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Forfeit = ResolveTo<TreasuryAccount, Balances>;
	type DataNetDeposit = ConstU128<{ 10 * OPEN }>;
	type RecordDeposit = ConstU128<{ 100 * MILLI_OPEN }>;
	type ByteDeposit = ConstU128<BYTE_DEPOSIT>;
	type MaxRejectionForfeit = MaxRejectionForfeit;
	type MinReward = ConstU128<{ 10 * MILLI_OPEN }>;
	type PalletId = DataNetsPalletId;
	type MaxNameLen = ConstU32<64>;
	type MaxUriLen = ConstU32<256>;
	type MaxLicenseLen = ConstU32<64>;
	type MaxMetadataLen = ConstU32<1024>;
	type MaxCurators = ConstU32<16>;
	type WeightInfo = pallet_datanets::weights::SubstrateWeight<Runtime>;
}

/// Prompts: a deposit of 1 OPEN per prompt and 0.1 OPEN per version, plus 0.001 OPEN per
/// stored byte; templates up to 8 KiB inline.
impl pallet_prompts::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type PromptDeposit = ConstU128<OPEN>;
	type VersionDeposit = ConstU128<{ 100 * MILLI_OPEN }>;
	type ByteDeposit = ConstU128<BYTE_DEPOSIT>;
	type MaxNameLen = ConstU32<64>;
	type MaxTextLen = ConstU32<8192>;
	type MaxUriLen = ConstU32<256>;
	type MaxVersions = ConstU32<64>;
	type WeightInfo = pallet_prompts::weights::SubstrateWeight<Runtime>;
}

/// The DataNets that exist, for adapters that declare what they were trained on.
pub struct DataNetExists;
impl Contains<pallet_datanets::DataNetId> for DataNetExists {
	fn contains(datanet: &pallet_datanets::DataNetId) -> bool {
		pallet_datanets::DataNets::<Runtime>::contains_key(datanet)
	}
}

#[cfg(feature = "runtime-benchmarks")]
impl pallet_adapters::BenchmarkHelper for DataNetExists {
	fn datanet(i: u32) -> pallet_datanets::DataNetId {
		use frame_support::traits::fungible::Mutate;
		let owner: AccountId = frame_benchmarking::account("datanet-owner", i, 0);
		let _ = Balances::mint_into(&owner, 1_000 * OPEN);
		let id = pallet_datanets::NextDataNetId::<Runtime>::get();
		pallet_datanets::Pallet::<Runtime>::create_datanet(
			frame_system::RawOrigin::Signed(owner).into(),
			b"benchmark".to_vec().try_into().expect("short"),
			Default::default(),
			[0u8; 32],
			Default::default(),
			pallet_datanets::CurationMode::Open,
			Default::default(),
			Perbill::zero(),
		)
		.expect("funded");
		id
	}
}

/// Base models and LoRA adapters: a deposit of 1 OPEN per adapter plus 0.001 OPEN per stored
/// byte; ranks up to 256; up to 16 training DataNets per adapter.
impl pallet_adapters::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type DataNets = DataNetExists;
	type AdapterDeposit = ConstU128<OPEN>;
	type ByteDeposit = ConstU128<BYTE_DEPOSIT>;
	type MaxNameLen = ConstU32<64>;
	type MaxUriLen = ConstU32<256>;
	type MaxRank = ConstU32<256>;
	type MaxTrainingDataNets = ConstU32<16>;
	type WeightInfo = pallet_adapters::weights::SubstrateWeight<Runtime>;
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = DataNetExists;
}

/// Tools: a deposit of 1 OPEN per tool plus 0.001 OPEN per stored byte of its name and endpoint.
impl pallet_tools::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type ToolDeposit = ConstU128<OPEN>;
	type ByteDeposit = ConstU128<BYTE_DEPOSIT>;
	type MaxNameLen = ConstU32<64>;
	type MaxUriLen = ConstU32<256>;
	type WeightInfo = pallet_tools::weights::SubstrateWeight<Runtime>;
}
