//! A test runtime with balances and the DataNets pallet.

use crate as pallet_datanets;
use frame_support::{
	derive_impl, parameter_types,
	traits::{tokens::imbalance::ResolveTo, ConstU32, ConstU64},
	PalletId,
};
use sp_runtime::{BuildStorage, Perbill};

type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
	pub enum Test {
		System: frame_system,
		Balances: pallet_balances,
		DataNetsPallet: pallet_datanets,
	}
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
	type Block = Block;
	type AccountData = pallet_balances::AccountData<u64>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
	type AccountStore = System;
	type ExistentialDeposit = ConstU64<EXISTENTIAL_DEPOSIT>;
	type RuntimeHoldReason = RuntimeHoldReason;
}

/// The existential deposit of the test runtime.
pub const EXISTENTIAL_DEPOSIT: u64 = 1;
/// The base deposit of a DataNet.
pub const DATANET_DEPOSIT: u64 = 100;
/// The base deposit of a record.
pub const RECORD_DEPOSIT: u64 = 10;
/// The deposit per stored byte.
pub const BYTE_DEPOSIT: u64 = 1;
/// The account forfeits go to.
pub const TREASURY: u64 = 99;
/// Accounts endowed at genesis, each with [`ENDOWMENT`].
pub const ALICE: u64 = 1;
pub const BOB: u64 = 2;
pub const CHARLIE: u64 = 3;
pub const DAVE: u64 = 4;
/// An account with nothing.
pub const PAUPER: u64 = 5;
pub const ENDOWMENT: u64 = 1_000_000;

parameter_types! {
	pub const DataNetsPalletId: PalletId = PalletId(*b"ol/dnets");
	pub const MaxRejectionForfeit: Perbill = Perbill::from_percent(50);
}

impl pallet_datanets::Config for Test {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Forfeit = ResolveTo<ConstU64<TREASURY>, Balances>;
	type DataNetDeposit = ConstU64<DATANET_DEPOSIT>;
	type RecordDeposit = ConstU64<RECORD_DEPOSIT>;
	type ByteDeposit = ConstU64<BYTE_DEPOSIT>;
	type MaxRejectionForfeit = MaxRejectionForfeit;
	type MinReward = ConstU64<10>;
	type PalletId = DataNetsPalletId;
	type MaxNameLen = ConstU32<32>;
	type MaxUriLen = ConstU32<64>;
	type MaxLicenseLen = ConstU32<16>;
	type MaxMetadataLen = ConstU32<64>;
	type MaxCurators = ConstU32<4>;
	type WeightInfo = ();
}

/// Externalities with Alice, Bob, Charlie, Dave and the treasury endowed, at block 1.
pub fn new_test_ext() -> sp_io::TestExternalities {
	let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
	pallet_balances::GenesisConfig::<Test> {
		balances: [ALICE, BOB, CHARLIE, DAVE, TREASURY].iter().map(|a| (*a, ENDOWMENT)).collect(),
		..Default::default()
	}
	.assimilate_storage(&mut storage)
	.unwrap();
	pallet_datanets::GenesisConfig::<Test>::default().assimilate_storage(&mut storage).unwrap();
	let mut ext = sp_io::TestExternalities::new(storage);
	ext.execute_with(|| System::set_block_number(1));
	ext
}

/// Runs `test` in fresh externalities, then checks the pallet's invariants.
pub fn run_test(test: impl FnOnce()) {
	new_test_ext().execute_with(|| {
		test();
		DataNetsPallet::do_try_state().expect("invariants hold after the test");
	});
}
