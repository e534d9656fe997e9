//! Benchmarks of the adapters pallet (frame-benchmarking v2), each on its worst-case path.

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

fn base_model<T: Config>() -> BaseModelId {
	let id = NextBaseModelId::<T>::get();
	Pallet::<T>::register_base_model(
		RawOrigin::Root.into(),
		bytes(b'n'),
		bytes(b'a'),
		[1u8; 32],
		bytes(b'q'),
		8192,
		bytes(b'l'),
	)
	.expect("root may");
	id
}

fn all_modules() -> BoundedVec<TargetModule, MaxTargetModules> {
	use TargetModule::*;
	alloc::vec![Q, K, V, O, Gate, Up, Down].try_into().expect("seven modules")
}

/// `n` training DataNets sharing 100%.
fn training<T: Config>(n: u32) -> BoundedVec<(DataNetId, Perbill), T::MaxTrainingDataNets> {
	(0..n)
		.map(|i| (T::BenchmarkHelper::datanet(i), Perbill::from_rational(1, n.max(1))))
		.collect::<alloc::vec::Vec<_>>()
		.try_into()
		.expect("at most the bound")
}

fn adapter<T: Config>(owner: &T::AccountId) -> AdapterId {
	let id = NextAdapterId::<T>::get();
	Pallet::<T>::register_adapter(
		RawOrigin::Signed(owner.clone()).into(),
		bytes(b'n'),
		base_model::<T>(),
		[2u8; 32],
		T::MaxRank::get(),
		all_modules(),
		bytes(b'u'),
		1u32.into(),
		training::<T>(T::MaxTrainingDataNets::get()),
	)
	.expect("the owner is funded");
	id
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn register_base_model() {
		#[extrinsic_call]
		_(RawOrigin::Root, bytes(b'n'), bytes(b'a'), [1u8; 32], bytes(b'q'), 8192, bytes(b'l'));
		assert!(BaseModels::<T>::contains_key(0));
	}

	#[benchmark]
	fn set_base_model_enabled() {
		let id = base_model::<T>();
		#[extrinsic_call]
		_(RawOrigin::Root, id, false);
		assert_eq!(BaseModels::<T>::get(id).map(|m| m.enabled), Some(false));
	}

	#[benchmark]
	fn register_adapter(d: Linear<0, { T::MaxTrainingDataNets::get() }>) {
		let owner = funded::<T>("owner");
		let model = base_model::<T>();
		let datanets = training::<T>(d);
		#[extrinsic_call]
		_(
			RawOrigin::Signed(owner),
			bytes(b'n'),
			model,
			[2u8; 32],
			T::MaxRank::get(),
			all_modules(),
			bytes(b'u'),
			1u32.into(),
			datanets,
		);
		assert!(Adapters::<T>::contains_key(0));
	}

	#[benchmark]
	fn set_price() {
		let owner = funded::<T>("owner");
		let id = adapter::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, 7u32.into());
		assert_eq!(Adapters::<T>::get(id).map(|a| a.price_per_1k_tokens), Some(7u32.into()));
	}

	/// A shorter URI: part of the deposit is released.
	#[benchmark]
	fn set_uri() {
		let owner = funded::<T>("owner");
		let id = adapter::<T>(&owner);
		let uri: BoundedVec<u8, T::MaxUriLen> =
			alloc::vec![b'v'; 1].try_into().expect("one byte fits");
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, uri.clone());
		assert_eq!(Adapters::<T>::get(id).map(|a| a.uri), Some(uri));
	}

	#[benchmark]
	fn retire_adapter() {
		let owner = funded::<T>("owner");
		let id = adapter::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id);
		assert_eq!(Adapters::<T>::get(id).map(|a| a.retired), Some(true));
	}

	#[benchmark]
	fn transfer_ownership() {
		let owner = funded::<T>("owner");
		let new_owner = funded::<T>("new-owner");
		let id = adapter::<T>(&owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, T::Lookup::unlookup(new_owner.clone()));
		assert_eq!(Adapters::<T>::get(id).and_then(|a| a.pending_owner), Some(new_owner));
	}

	#[benchmark]
	fn accept_ownership() {
		let owner = funded::<T>("owner");
		let new_owner = funded::<T>("new-owner");
		let id = adapter::<T>(&owner);
		Pallet::<T>::transfer_ownership(
			RawOrigin::Signed(owner).into(),
			id,
			T::Lookup::unlookup(new_owner.clone()),
		)
		.expect("the owner may");
		#[extrinsic_call]
		_(RawOrigin::Signed(new_owner.clone()), id);
		assert_eq!(Adapters::<T>::get(id).map(|a| a.owner), Some(new_owner));
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
