//! A test runtime with balances and the tools pallet.

use crate as pallet_tools;
use frame_support::{
	derive_impl,
	traits::{ConstU32, ConstU64},
};
use sp_runtime::BuildStorage;

type Block = frame_system::mocking::MockBlock<Test>;

frame_support::construct_runtime!(
	pub enum Test {
		System: frame_system,
		Balances: pallet_balances,
		ToolsPallet: pallet_tools,
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
	type RuntimeHoldReason = RuntimeHoldReason;
}

/// The base deposit of a tool.
pub const TOOL_DEPOSIT: u64 = 100;
/// The deposit per stored byte.
pub const BYTE_DEPOSIT: u64 = 2;
/// Accounts endowed at genesis with [`ENDOWMENT`].
pub const ALICE: u64 = 1;
pub const BOB: u64 = 2;
pub const CHARLIE: u64 = 3;
/// An account with nothing.
pub const PAUPER: u64 = 5;
pub const ENDOWMENT: u64 = 1_000_000;

impl pallet_tools::Config for Test {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type ToolDeposit = ConstU64<TOOL_DEPOSIT>;
	type ByteDeposit = ConstU64<BYTE_DEPOSIT>;
	type MaxNameLen = ConstU32<32>;
	type MaxUriLen = ConstU32<64>;
	type WeightInfo = ();
}

/// Externalities with Alice, Bob and Charlie endowed, at block 1.
pub fn new_test_ext() -> sp_io::TestExternalities {
	let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
	pallet_balances::GenesisConfig::<Test> {
		balances: [ALICE, BOB, CHARLIE].iter().map(|a| (*a, ENDOWMENT)).collect(),
		..Default::default()
	}
	.assimilate_storage(&mut storage)
	.unwrap();
	let mut ext = sp_io::TestExternalities::new(storage);
	ext.execute_with(|| System::set_block_number(1));
	ext
}

/// Runs `test` in fresh externalities, then checks the pallet's invariants.
pub fn run_test(test: impl FnOnce()) {
	new_test_ext().execute_with(|| {
		test();
		ToolsPallet::do_try_state().expect("invariants hold after the test");
	});
}
