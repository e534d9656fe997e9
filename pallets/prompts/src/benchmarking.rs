//! Benchmarks of the prompts pallet (frame-benchmarking v2), each on its worst-case path.

use super::*;
use frame_benchmarking::v2::*;
use frame_support::traits::fungible::Mutate;
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

/// The largest template: inline text of the longest length.
fn template<T: Config>(fill: u8) -> TemplateOf<T> {
	Template::Inline(bytes(fill))
}

/// A prompt with `versions` versions of the largest template.
fn prompt<T: Config>(owner: &T::AccountId, versions: u32) -> PromptId {
	let id = NextPromptId::<T>::get();
	let origin = || RawOrigin::Signed(owner.clone()).into();
	Pallet::<T>::register_prompt(origin(), bytes(b'n'), template::<T>(0), 1u32.into())
		.expect("the owner is funded");
	for v in 1..versions {
		Pallet::<T>::publish_version(origin(), id, template::<T>(v as u8), 1u32.into())
			.expect("below the version limit");
	}
	id
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn register_prompt() {
		let owner = funded::<T>("owner");
		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), bytes(b'n'), template::<T>(0), 1u32.into());
		assert_eq!(Prompts::<T>::get(0).map(|p| p.owner), Some(owner));
	}

	#[benchmark]
	fn publish_version() {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner, T::MaxVersions::get() - 1);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, template::<T>(0xff), 1u32.into());
		assert_eq!(Prompts::<T>::get(id).map(|p| p.latest), Some(T::MaxVersions::get()));
	}

	#[benchmark]
	fn set_price() {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner, 1);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, 1, 7u32.into());
		assert_eq!(Versions::<T>::get(id, 1).map(|v| v.price_per_use), Some(7u32.into()));
	}

	#[benchmark]
	fn deprecate_version() {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner, 1);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, 1);
		assert_eq!(Versions::<T>::get(id, 1).map(|v| v.deprecated), Some(true));
	}

	#[benchmark]
	fn transfer_ownership() {
		let owner = funded::<T>("owner");
		let new_owner = funded::<T>("new-owner");
		let id = prompt::<T>(&owner, 1);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, T::Lookup::unlookup(new_owner.clone()));
		assert_eq!(Prompts::<T>::get(id).and_then(|p| p.pending_owner), Some(new_owner));
	}

	/// The deposits of the most versions move.
	#[benchmark]
	fn accept_ownership() {
		let owner = funded::<T>("owner");
		let new_owner = funded::<T>("new-owner");
		let id = prompt::<T>(&owner, T::MaxVersions::get());
		Pallet::<T>::transfer_ownership(
			RawOrigin::Signed(owner).into(),
			id,
			T::Lookup::unlookup(new_owner.clone()),
		)
		.expect("the owner may");
		#[extrinsic_call]
		_(RawOrigin::Signed(new_owner.clone()), id);
		assert_eq!(Prompts::<T>::get(id).map(|p| p.owner), Some(new_owner));
	}

	#[benchmark]
	fn remove_prompt(v: Linear<1, { T::MaxVersions::get() }>) {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner, v);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id);
		assert!(Prompts::<T>::get(id).is_none());
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
