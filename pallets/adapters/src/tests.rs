//! Tests of every call of the adapters pallet: each success and each failure. Every test ends
//! by checking the pallet's invariants (`do_try_state`).

use crate::{mock::*, *};
use frame_support::{
	assert_noop, assert_ok,
	traits::{
		fungible::{Inspect as _, InspectHold as _},
		Get,
	},
};
use sp_runtime::{DispatchError, DispatchResult, Perbill, TokenError};
use TargetModule::*;

const NAME: &[u8] = b"medical-lora";
const URI: &[u8] = b"ipfs://adapter";

fn bv<T: Clone + core::fmt::Debug, S: Get<u32>>(items: &[T]) -> BoundedVec<T, S> {
	items.to_vec().try_into().expect("test data fits its bound")
}

fn base_model() -> BaseModelId {
	let id = NextBaseModelId::<Test>::get();
	assert_ok!(AdaptersPallet::register_base_model(
		RuntimeOrigin::root(),
		bv(b"SmolLM2-135M-Instruct"),
		bv(b"llama"),
		[1u8; 32],
		bv(b"Q4_1"),
		8192,
		bv(b"Apache-2.0"),
	));
	id
}

fn training(
	list: &[(u32, u32)],
) -> BoundedVec<(DataNetId, Perbill), <Test as Config>::MaxTrainingDataNets> {
	bv(&list.iter().map(|(d, p)| (*d, Perbill::from_percent(*p))).collect::<Vec<_>>())
}

fn register_call(
	who: u64,
	model: BaseModelId,
	hash: u8,
	rank: u32,
	modules: &[TargetModule],
	datanets: &[(u32, u32)],
) -> DispatchResult {
	AdaptersPallet::register_adapter(
		RuntimeOrigin::signed(who),
		bv(NAME),
		model,
		[hash; 32],
		rank,
		bv(modules),
		bv(URI),
		50,
		training(datanets),
	)
}

fn register(who: u64, model: BaseModelId, hash: u8) -> AdapterId {
	let id = NextAdapterId::<Test>::get();
	assert_ok!(register_call(who, model, hash, 8, &[Q, V], &[(0, 60), (1, 40)]));
	id
}

fn held(who: u64) -> u64 {
	Balances::balance_on_hold(&HoldReason::AdapterDeposit.into(), &who)
}

fn last_event() -> RuntimeEvent {
	System::events().pop().expect("an event was deposited").event
}

fn deposit(uri_len: usize) -> u64 {
	ADAPTER_DEPOSIT + BYTE_DEPOSIT * (NAME.len() + uri_len) as u64
}

// ---- base models ----

#[test]
fn root_registers_and_disables_base_models() {
	run_test(|| {
		let id = base_model();
		let model = BaseModels::<Test>::get(id).unwrap();
		assert_eq!(model.architecture.to_vec(), b"llama".to_vec());
		assert_eq!(
			(model.weights_hash, model.context_length, model.enabled),
			([1u8; 32], 8192, true)
		);
		assert_eq!(
			last_event(),
			Event::BaseModelRegistered { base_model: id, weights_hash: [1u8; 32] }.into()
		);
		assert_ok!(AdaptersPallet::set_base_model_enabled(RuntimeOrigin::root(), id, false));
		assert_eq!(last_event(), Event::BaseModelEnabled { base_model: id, enabled: false }.into());
		assert!(!BaseModels::<Test>::get(id).unwrap().enabled);
		assert_noop!(register_call(ALICE, id, 1, 8, &[Q], &[]), Error::<Test>::BaseModelDisabled);
	});
}

#[test]
fn base_model_calls_fail_for_non_root_and_bad_input() {
	run_test(|| {
		let call = |origin, name: &[u8], context| {
			AdaptersPallet::register_base_model(
				origin,
				bv(name),
				bv(b"llama"),
				[0u8; 32],
				bv(b"F16"),
				context,
				bv(b""),
			)
		};
		assert_noop!(call(RuntimeOrigin::signed(ALICE), b"m", 1), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::root(), b"", 1), Error::<Test>::EmptyField);
		assert_noop!(call(RuntimeOrigin::root(), b"m", 0), Error::<Test>::ZeroContextLength);
		NextBaseModelId::<Test>::put(BaseModelId::MAX);
		assert_noop!(call(RuntimeOrigin::root(), b"m", 1), Error::<Test>::IdsExhausted);
		assert_noop!(
			AdaptersPallet::set_base_model_enabled(RuntimeOrigin::signed(ALICE), 0, false),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::set_base_model_enabled(RuntimeOrigin::root(), 7, false),
			Error::<Test>::UnknownBaseModel
		);
	});
}

// ---- register_adapter ----

#[test]
fn register_adapter_stores_it_and_holds_the_deposit() {
	run_test(|| {
		let model = base_model();
		let id = register(ALICE, model, 9);
		let adapter = Adapters::<Test>::get(id).unwrap();
		assert_eq!((adapter.owner, adapter.base_model, adapter.rank), (ALICE, model, 8));
		assert_eq!(adapter.target_modules.to_vec(), vec![Q, V]);
		assert_eq!(adapter.price_per_1k_tokens, 50);
		assert_eq!(adapter.datanets, training(&[(0, 60), (1, 40)]));
		assert!(!adapter.retired);
		assert_eq!(adapter.deposit, deposit(URI.len()));
		assert_eq!(held(ALICE), deposit(URI.len()));
		assert_eq!(AdapterByHash::<Test>::get([9u8; 32]), Some(id));
		assert_eq!(
			last_event(),
			Event::AdapterRegistered {
				adapter: id,
				owner: ALICE,
				base_model: model,
				content_hash: [9u8; 32]
			}
			.into()
		);
		assert!(AdaptersPallet::servable(id).is_some());
		// Rank 1 and 128, every module, and no declared DataNets are all fine.
		assert_ok!(register_call(BOB, model, 10, 1, &[Q, K, V, O, Gate, Up, Down], &[]));
		assert_ok!(register_call(BOB, model, 11, 128, &[Down], &[(3, 100)]));
	});
}

#[test]
fn register_adapter_rejects_bad_input() {
	run_test(|| {
		let model = base_model();
		let ok_modules = &[Q, V];
		assert_noop!(
			AdaptersPallet::register_adapter(
				RuntimeOrigin::none(),
				bv(NAME),
				model,
				[1; 32],
				8,
				bv(ok_modules),
				bv(URI),
				1,
				training(&[])
			),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::register_adapter(
				RuntimeOrigin::signed(ALICE),
				bv(b""),
				model,
				[1; 32],
				8,
				bv(ok_modules),
				bv(URI),
				1,
				training(&[])
			),
			Error::<Test>::EmptyField
		);
		assert_noop!(
			register_call(ALICE, 7, 1, 8, ok_modules, &[]),
			Error::<Test>::UnknownBaseModel
		);
		assert_noop!(register_call(ALICE, model, 1, 0, ok_modules, &[]), Error::<Test>::BadRank);
		assert_noop!(register_call(ALICE, model, 1, 129, ok_modules, &[]), Error::<Test>::BadRank);
		assert_noop!(register_call(ALICE, model, 1, 8, &[], &[]), Error::<Test>::BadTargetModules);
		assert_noop!(
			register_call(ALICE, model, 1, 8, &[V, Q], &[]),
			Error::<Test>::BadTargetModules
		);
		assert_noop!(
			register_call(ALICE, model, 1, 8, &[Q, Q], &[]),
			Error::<Test>::BadTargetModules
		);
		assert_noop!(
			register_call(ALICE, model, 1, 8, ok_modules, &[(0, 10), (42, 10)]),
			Error::<Test>::UnknownDataNet
		);
		assert_noop!(
			register_call(ALICE, model, 1, 8, ok_modules, &[(0, 10), (0, 10)]),
			Error::<Test>::DuplicateDataNet
		);
		assert_noop!(
			register_call(ALICE, model, 1, 8, ok_modules, &[(0, 60), (1, 41)]),
			Error::<Test>::WeightsOverOneHundredPercent
		);
		assert_noop!(
			register_call(PAUPER, model, 1, 8, ok_modules, &[]),
			TokenError::FundsUnavailable
		);
		register(ALICE, model, 1);
		assert_noop!(
			register_call(BOB, model, 1, 8, ok_modules, &[]),
			Error::<Test>::DuplicateAdapter
		);
		NextAdapterId::<Test>::put(AdapterId::MAX);
		assert_noop!(register_call(BOB, model, 2, 8, ok_modules, &[]), Error::<Test>::IdsExhausted);
	});
}

// ---- set_price / set_uri / retire_adapter ----

#[test]
fn owner_updates_price_and_uri_and_retires() {
	run_test(|| {
		let id = register(ALICE, base_model(), 1);
		assert_ok!(AdaptersPallet::set_price(RuntimeOrigin::signed(ALICE), id, 75));
		assert_eq!(last_event(), Event::PriceSet { adapter: id, price_per_1k_tokens: 75 }.into());
		assert_eq!(Adapters::<Test>::get(id).unwrap().price_per_1k_tokens, 75);

		let longer = b"https://models.example/adapters/medical-lora";
		assert_ok!(AdaptersPallet::set_uri(RuntimeOrigin::signed(ALICE), id, bv(longer)));
		assert_eq!(last_event(), Event::UriSet { adapter: id }.into());
		assert_eq!(Adapters::<Test>::get(id).unwrap().uri.to_vec(), longer.to_vec());
		assert_eq!(held(ALICE), deposit(longer.len()));
		assert_ok!(AdaptersPallet::set_uri(RuntimeOrigin::signed(ALICE), id, bv(b"ipfs://x")));
		assert_eq!(held(ALICE), deposit(8));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - deposit(8));

		assert_ok!(AdaptersPallet::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		assert_eq!(last_event(), Event::AdapterRetired { adapter: id }.into());
		assert!(Adapters::<Test>::get(id).unwrap().retired);
		assert!(AdaptersPallet::servable(id).is_none());
		assert_noop!(
			AdaptersPallet::set_price(RuntimeOrigin::signed(ALICE), id, 1),
			Error::<Test>::Retired
		);
	});
}

#[test]
fn owner_calls_fail_for_others_unknown_and_retired_adapters() {
	run_test(|| {
		let id = register(ALICE, base_model(), 1);
		assert_noop!(
			AdaptersPallet::set_price(RuntimeOrigin::none(), id, 1),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::set_price(RuntimeOrigin::signed(BOB), id, 1),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			AdaptersPallet::set_price(RuntimeOrigin::signed(ALICE), 9, 1),
			Error::<Test>::UnknownAdapter
		);
		assert_noop!(
			AdaptersPallet::set_uri(RuntimeOrigin::none(), id, bv(URI)),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::set_uri(RuntimeOrigin::signed(BOB), id, bv(URI)),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			AdaptersPallet::set_uri(RuntimeOrigin::signed(ALICE), 9, bv(URI)),
			Error::<Test>::UnknownAdapter
		);
		assert_noop!(
			AdaptersPallet::set_uri(RuntimeOrigin::signed(ALICE), id, bv(b"")),
			Error::<Test>::EmptyField
		);
		assert_noop!(
			AdaptersPallet::retire_adapter(RuntimeOrigin::none(), id),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::retire_adapter(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			AdaptersPallet::retire_adapter(RuntimeOrigin::signed(ALICE), 9),
			Error::<Test>::UnknownAdapter
		);
		assert_ok!(AdaptersPallet::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		assert_noop!(
			AdaptersPallet::retire_adapter(RuntimeOrigin::signed(ALICE), id),
			Error::<Test>::Retired
		);
		assert_noop!(
			AdaptersPallet::set_uri(RuntimeOrigin::signed(ALICE), id, bv(URI)),
			Error::<Test>::Retired
		);
	});
}

// ---- transfer_ownership / accept_ownership ----

#[test]
fn ownership_moves_with_the_deposit_once_accepted() {
	run_test(|| {
		let id = register(ALICE, base_model(), 1);
		assert_ok!(AdaptersPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, BOB));
		assert_eq!(
			last_event(),
			Event::TransferOffered { adapter: id, from: ALICE, to: BOB }.into()
		);
		assert_eq!(held(BOB), 0);
		assert_ok!(AdaptersPallet::accept_ownership(RuntimeOrigin::signed(BOB), id));
		assert_eq!(
			last_event(),
			Event::OwnershipTransferred { adapter: id, from: ALICE, to: BOB }.into()
		);
		let adapter = Adapters::<Test>::get(id).unwrap();
		assert_eq!((adapter.owner, adapter.pending_owner), (BOB, None));
		assert_eq!((held(ALICE), held(BOB)), (0, deposit(URI.len())));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
	});
}

#[test]
fn transfer_and_accept_fail_for_the_wrong_accounts() {
	run_test(|| {
		let id = register(ALICE, base_model(), 1);
		assert_noop!(
			AdaptersPallet::transfer_ownership(RuntimeOrigin::none(), id, BOB),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::transfer_ownership(RuntimeOrigin::signed(BOB), id, BOB),
			Error::<Test>::AlreadyOwner
		);
		assert_noop!(
			AdaptersPallet::transfer_ownership(RuntimeOrigin::signed(BOB), id, ALICE),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			AdaptersPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), 9, BOB),
			Error::<Test>::UnknownAdapter
		);
		assert_noop!(
			AdaptersPallet::accept_ownership(RuntimeOrigin::none(), id),
			DispatchError::BadOrigin
		);
		assert_noop!(
			AdaptersPallet::accept_ownership(RuntimeOrigin::signed(BOB), 9),
			Error::<Test>::UnknownAdapter
		);
		assert_noop!(
			AdaptersPallet::accept_ownership(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotPendingOwner
		);
		assert_ok!(AdaptersPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, PAUPER));
		assert_noop!(
			AdaptersPallet::accept_ownership(RuntimeOrigin::signed(PAUPER), id),
			TokenError::FundsUnavailable
		);
		// Retiring withdraws the offer.
		assert_ok!(AdaptersPallet::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		assert_noop!(
			AdaptersPallet::accept_ownership(RuntimeOrigin::signed(PAUPER), id),
			Error::<Test>::NotPendingOwner
		);
		assert_noop!(
			AdaptersPallet::transfer_ownership(RuntimeOrigin::signed(ALICE), id, BOB),
			Error::<Test>::Retired
		);
	});
}

#[test]
fn try_state_detects_a_tampered_deposit_and_index() {
	new_test_ext().execute_with(|| {
		let id = register(ALICE, base_model(), 1);
		assert_ok!(AdaptersPallet::do_try_state());
		Adapters::<Test>::mutate(id, |a| a.as_mut().unwrap().deposit += 1);
		assert!(AdaptersPallet::do_try_state().is_err());
		Adapters::<Test>::mutate(id, |a| a.as_mut().unwrap().deposit -= 1);
		AdapterByHash::<Test>::remove([1u8; 32]);
		assert!(AdaptersPallet::do_try_state().is_err());
	});
}
