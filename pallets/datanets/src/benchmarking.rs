//! Benchmarks of the DataNets pallet (frame-benchmarking v2), each on its worst-case path.

use super::*;
use frame_benchmarking::v2::*;
use frame_support::traits::{fungible::Mutate, Get};
use frame_system::RawOrigin;
use sp_runtime::{
	traits::{Bounded, Zero},
	Perbill,
};

fn funded<T: Config>(name: &'static str, index: u32) -> T::AccountId {
	let who: T::AccountId = account(name, index, 0);
	T::Currency::set_balance(&who, BalanceOf::<T>::max_value() / 1_000u32.into());
	who
}

fn bytes<S: Get<u32>>(fill: u8) -> BoundedVec<u8, S> {
	alloc::vec![fill; S::get() as usize].try_into().expect("exactly the bound")
}

fn curators<T: Config>(n: u32) -> BoundedVec<T::AccountId, T::MaxCurators> {
	(0..n)
		.map(|i| account::<T::AccountId>("curator", i, 0))
		.collect::<alloc::vec::Vec<_>>()
		.try_into()
		.expect("at most the bound")
}

/// Creates a DataNet with the longest name, URI and license and the most curators.
fn datanet<T: Config>(owner: &T::AccountId, curation: CurationMode) -> DataNetId {
	let id = NextDataNetId::<T>::get();
	Pallet::<T>::create_datanet(
		RawOrigin::Signed(owner.clone()).into(),
		bytes(b'n'),
		bytes(b'u'),
		[1u8; 32],
		bytes(b'l'),
		curation,
		curators::<T>(T::MaxCurators::get()),
		T::MaxRejectionForfeit::get(),
	)
	.expect("the owner is funded");
	id
}

/// Contributes a record with the longest URI and metadata.
fn record<T: Config>(who: &T::AccountId, datanet: DataNetId, content: u32) -> RecordId {
	let id = NextRecordId::<T>::get();
	Pallet::<T>::contribute(
		RawOrigin::Signed(who.clone()).into(),
		datanet,
		content_hash(content),
		bytes(b'r'),
		1 << 20,
		Some(bytes(b'm')),
	)
	.expect("the contributor is funded");
	id
}

fn content_hash(n: u32) -> ContentHash {
	let mut hash = [0xabu8; 32];
	hash[..4].copy_from_slice(&n.to_le_bytes());
	hash
}

/// A DataNet with one accepted record from `contributor`, and a reward paid to it, so that
/// the contributor has rewards to settle.
fn rewarded<T: Config>(
	owner: &T::AccountId,
	contributor: &T::AccountId,
	curation: CurationMode,
) -> DataNetId {
	let id = datanet::<T>(owner, CurationMode::Open);
	record::<T>(contributor, id, 0);
	Pallet::<T>::do_reward(owner, id, T::MinReward::get().max(1_000_000u32.into()))
		.expect("the owner is funded");
	Pallet::<T>::set_curation(
		RawOrigin::Signed(owner.clone()).into(),
		id,
		curation,
		T::MaxRejectionForfeit::get(),
	)
	.expect("the owner may");
	id
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn create_datanet(c: Linear<0, { T::MaxCurators::get() }>) {
		let owner = funded::<T>("owner", 0);
		#[extrinsic_call]
		_(
			RawOrigin::Signed(owner.clone()),
			bytes(b'n'),
			bytes(b'u'),
			[1u8; 32],
			bytes(b'l'),
			CurationMode::Curated,
			curators::<T>(c),
			T::MaxRejectionForfeit::get(),
		);
		assert_eq!(DataNets::<T>::get(0).map(|net| net.owner), Some(owner));
	}

	#[benchmark]
	fn set_curators(c: Linear<0, { T::MaxCurators::get() }>) {
		let owner = funded::<T>("owner", 0);
		let id = datanet::<T>(&owner, CurationMode::Curated);
		let new: BoundedVec<_, _> = (0..c)
			.map(|i| account::<T::AccountId>("new-curator", i, 0))
			.collect::<alloc::vec::Vec<_>>()
			.try_into()
			.expect("at most the bound");
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, new.clone());
		assert_eq!(DataNets::<T>::get(id).map(|net| net.curators), Some(new));
	}

	#[benchmark]
	fn set_curation() {
		let owner = funded::<T>("owner", 0);
		let id = datanet::<T>(&owner, CurationMode::Curated);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, CurationMode::Open, Perbill::zero());
		assert_eq!(DataNets::<T>::get(id).map(|net| net.curation), Some(CurationMode::Open));
	}

	#[benchmark]
	fn destroy_datanet() {
		let owner = funded::<T>("owner", 0);
		let id = datanet::<T>(&owner, CurationMode::Curated);
		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id);
		assert!(DataNets::<T>::get(id).is_none());
	}

	/// The worst case: an open DataNet, so the record is accepted at once, from a contributor
	/// with rewards to settle.
	#[benchmark]
	fn contribute() {
		let owner = funded::<T>("owner", 0);
		let contributor = funded::<T>("contributor", 0);
		let id = rewarded::<T>(&owner, &contributor, CurationMode::Open);
		let next = NextRecordId::<T>::get();
		#[extrinsic_call]
		_(
			RawOrigin::Signed(contributor),
			id,
			content_hash(1),
			bytes(b'r'),
			1 << 20,
			Some(bytes(b'm')),
		);
		assert!(matches!(
			Records::<T>::get(next).map(|r| r.status),
			Some(RecordStatus::Accepted { index: 1 })
		));
	}

	/// Accepted by the last curator in the list, for a contributor with rewards to settle.
	#[benchmark]
	fn accept_record() {
		let owner = funded::<T>("owner", 0);
		let contributor = funded::<T>("contributor", 0);
		let id = rewarded::<T>(&owner, &contributor, CurationMode::Curated);
		let pending = record::<T>(&contributor, id, 1);
		let curator = curators::<T>(T::MaxCurators::get()).last().cloned().unwrap_or(owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(curator), pending);
		assert_eq!(DataNets::<T>::get(id).map(|net| net.version), Some(2));
	}

	/// Rejected by the last curator, forfeiting the most the runtime allows.
	#[benchmark]
	fn reject_record() {
		let owner = funded::<T>("owner", 0);
		let contributor = funded::<T>("contributor", 0);
		let id = datanet::<T>(&owner, CurationMode::Curated);
		let pending = record::<T>(&contributor, id, 1);
		let curator = curators::<T>(T::MaxCurators::get()).last().cloned().unwrap_or(owner);
		#[extrinsic_call]
		_(RawOrigin::Signed(curator), pending);
		assert!(Records::<T>::get(pending).is_none());
	}

	#[benchmark]
	fn withdraw_record() {
		let owner = funded::<T>("owner", 0);
		let contributor = funded::<T>("contributor", 0);
		let id = datanet::<T>(&owner, CurationMode::Curated);
		let pending = record::<T>(&contributor, id, 1);
		#[extrinsic_call]
		_(RawOrigin::Signed(contributor), pending);
		assert!(Records::<T>::get(pending).is_none());
	}

	#[benchmark]
	fn reward() {
		let owner = funded::<T>("owner", 0);
		let contributor = funded::<T>("contributor", 0);
		let payer = funded::<T>("payer", 0);
		let id = rewarded::<T>(&owner, &contributor, CurationMode::Open);
		let amount = T::MinReward::get().max(1_000_000u32.into());
		#[extrinsic_call]
		_(RawOrigin::Signed(payer), id, amount);
		assert!(Pallet::<T>::claimable(id, &contributor) > Zero::zero());
	}

	#[benchmark]
	fn claim_rewards() {
		let owner = funded::<T>("owner", 0);
		let contributor = funded::<T>("contributor", 0);
		let id = rewarded::<T>(&owner, &contributor, CurationMode::Open);
		#[extrinsic_call]
		_(RawOrigin::Signed(contributor.clone()), id);
		assert!(Pallet::<T>::claimable(id, &contributor).is_zero());
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
