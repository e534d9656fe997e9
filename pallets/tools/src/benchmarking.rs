//! Benchmarks of the tools pallet (frame-benchmarking v2), each on its worst-case path.

use super::*;
use frame_benchmarking::v2::*;
use frame_support::traits::{fungible::Mutate, Get};
use frame_system::RawOrigin;
use sp_runtime::traits::{Bounded, StaticLookup};

fn funded<T: Config>(name: &'static str) -> T::AccountId {
	let who: T::AccountId = account(name, 0, 0);
	T::Currency::set_balance(&who, BalanceOf::<T>::max_value() / 1_000u32.into());
	who
}

fn bytes<S: Get<u32>>(fill: u8) -> BoundedVec<u8, S> {
	alloc::vec![fill; S::get() as usize].try_into().expect("exactly the bound")
}

/// A tool with the longest name and endpoint.
fn tool<T: Config>(owner: &T::AccountId) -> ToolId {
	let id = NextToolId::<T>::get();
	Pallet::<T>::register_tool(
		RawOrigin::Signed(owner.clone()).into(),
		bytes(b'n'),
		bytes(b'e'),
		[1; 32],
		1u32.into(),
	)
	.expect("the owner is funded");
	id
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn register_tool() {
		let owner = funded::<T>("owner");
		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), bytes(b'n'), bytes(b'e'), [1; 32], 1u32.into());
		assert_eq!(Tools::<T>::get(0).map(|t| t.owner), Some(owner));
	}

	/// The endpoint changes length, so the deposit changes too.
	#[benchmark]
	fn update_endpoint() {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner);
		let shorter: BoundedVec<u8, T::MaxUriLen> = alloc::vec![b'f'].try_into().expect("fits");
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, shorter.clone(), [2; 32]);
		assert_eq!(Tools::<T>::get(id).map(|t| t.endpoint), Some(shorter));
	}

	#[benchmark]
	fn set_price() {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, 7u32.into());
		assert_eq!(Tools::<T>::get(id).map(|t| t.price_per_call), Some(7u32.into()));
	}

	#[benchmark]
	fn set_paused() {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, true);
		assert_eq!(Tools::<T>::get(id).map(|t| t.paused), Some(true));
	}

	#[benchmark]
	fn transfer_ownership() {
		let owner = funded::<T>("owner");
		let new_owner = funded::<T>("new-owner");
		let id = tool::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, T::Lookup::unlookup(new_owner.clone()));
		assert_eq!(Tools::<T>::get(id).and_then(|t| t.pending_owner), Some(new_owner));
	}

	#[benchmark]
	fn accept_ownership() {
		let owner = funded::<T>("owner");
		let new_owner = funded::<T>("new-owner");
		let id = tool::<T>(&owner);
		Pallet::<T>::transfer_ownership(
			RawOrigin::Signed(owner).into(),
			id,
			T::Lookup::unlookup(new_owner.clone()),
		)
		.expect("the owner may");
		#[extrinsic_call]
		_(RawOrigin::Signed(new_owner.clone()), id);
		assert_eq!(Tools::<T>::get(id).map(|t| t.owner), Some(new_owner));
	}

	#[benchmark]
	fn remove_tool() {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id);
		assert!(Tools::<T>::get(id).is_none());
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
