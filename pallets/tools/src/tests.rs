//! Tests of every call of the tools pallet: each success and each failure. Every test ends by
//! checking the pallet's invariants (`do_try_state`).

use crate::{mock::*, *};
use frame_support::{
	assert_noop, assert_ok,
	traits::{
		fungible::{Inspect as _, InspectHold as _, Mutate as _},
		Get,
	},
};
use sp_runtime::{DispatchError, TokenError};

const NAME: &[u8] = b"web-search";
const ENDPOINT: &[u8] = b"https://tools.example/mcp";
const DESCRIPTOR: ContentHash = [7u8; 32];

fn bv<S: Get<u32>>(bytes: &[u8]) -> BoundedVec<u8, S> {
	bytes.to_vec().try_into().expect("test data fits its bound")
}

fn register(owner: u64, price: u64) -> ToolId {
	let id = NextToolId::<Test>::get();
	assert_ok!(ToolsPallet::register_tool(
		RuntimeOrigin::signed(owner),
		bv(NAME),
		bv(ENDPOINT),
		DESCRIPTOR,
		price
	));
	id
}

fn held(who: u64) -> u64 {
	Balances::balance_on_hold(&HoldReason::ToolDeposit.into(), &who)
}

fn deposit(endpoint_len: usize) -> u64 {
	TOOL_DEPOSIT + BYTE_DEPOSIT * (NAME.len() + endpoint_len) as u64
}

fn last_event() -> RuntimeEvent {
	System::events().pop().expect("an event was deposited").event
}

fn offer(tool: ToolId, from: u64, to: u64) {
	assert_ok!(ToolsPallet::transfer_ownership(RuntimeOrigin::signed(from), tool, to));
}

// ---- register_tool ----

#[test]
fn register_tool_stores_it_and_holds_the_deposit() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_eq!(id, 0);
		let tool = Tools::<Test>::get(id).unwrap();
		assert_eq!(tool.owner, ALICE);
		assert_eq!(
			(tool.name.to_vec(), tool.endpoint.to_vec()),
			(NAME.to_vec(), ENDPOINT.to_vec())
		);
		assert_eq!((tool.descriptor_hash, tool.price_per_call), (DESCRIPTOR, 3));
		assert_eq!((tool.paused, tool.pending_owner), (false, None));
		assert_eq!(tool.deposit, deposit(ENDPOINT.len()));
		assert_eq!(held(ALICE), deposit(ENDPOINT.len()));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - held(ALICE));
		assert_eq!(
			last_event(),
			Event::ToolRegistered { tool: id, owner: ALICE, descriptor_hash: DESCRIPTOR }.into()
		);
		assert_eq!(NextToolId::<Test>::get(), 1);
		assert_eq!(register(BOB, 0), 1);
		assert_eq!(ToolsPallet::callable(0), Some((ALICE, 3, DESCRIPTOR)));
	});
}

#[test]
fn register_tool_needs_a_signed_origin() {
	run_test(|| {
		assert_noop!(
			ToolsPallet::register_tool(
				RuntimeOrigin::root(),
				bv(NAME),
				bv(ENDPOINT),
				DESCRIPTOR,
				0
			),
			DispatchError::BadOrigin
		);
	});
}

#[test]
fn register_tool_rejects_an_empty_name_or_endpoint() {
	run_test(|| {
		let signed = RuntimeOrigin::signed(ALICE);
		assert_noop!(
			ToolsPallet::register_tool(signed.clone(), bv(b""), bv(ENDPOINT), DESCRIPTOR, 0),
			Error::<Test>::EmptyField
		);
		assert_noop!(
			ToolsPallet::register_tool(signed, bv(NAME), bv(b""), DESCRIPTOR, 0),
			Error::<Test>::EmptyField
		);
	});
}

#[test]
fn register_tool_needs_funds_for_the_deposit() {
	run_test(|| {
		assert_noop!(
			ToolsPallet::register_tool(
				RuntimeOrigin::signed(PAUPER),
				bv(NAME),
				bv(ENDPOINT),
				DESCRIPTOR,
				0
			),
			TokenError::FundsUnavailable
		);
	});
}

#[test]
fn register_tool_fails_when_ids_run_out() {
	run_test(|| {
		NextToolId::<Test>::put(ToolId::MAX);
		assert_noop!(
			ToolsPallet::register_tool(
				RuntimeOrigin::signed(ALICE),
				bv(NAME),
				bv(ENDPOINT),
				DESCRIPTOR,
				0
			),
			Error::<Test>::IdsExhausted
		);
	});
}

// ---- update_endpoint ----

#[test]
fn update_endpoint_moves_the_tool_and_the_deposit_follows() {
	run_test(|| {
		let id = register(ALICE, 3);
		let longer = b"https://tools.example/v2/mcp-server";
		assert_ok!(ToolsPallet::update_endpoint(
			RuntimeOrigin::signed(ALICE),
			id,
			bv(longer),
			[8; 32]
		));
		let tool = Tools::<Test>::get(id).unwrap();
		assert_eq!((tool.endpoint.to_vec(), tool.descriptor_hash), (longer.to_vec(), [8; 32]));
		assert_eq!(held(ALICE), deposit(longer.len()));
		assert_eq!(
			last_event(),
			Event::EndpointUpdated { tool: id, descriptor_hash: [8; 32] }.into()
		);
		// A shorter endpoint releases the difference.
		assert_ok!(ToolsPallet::update_endpoint(
			RuntimeOrigin::signed(ALICE),
			id,
			bv(b"x"),
			[9; 32]
		));
		assert_eq!(held(ALICE), deposit(1));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - deposit(1));
	});
}

#[test]
fn update_endpoint_failures() {
	run_test(|| {
		let id = register(ALICE, 3);
		let update = |who: u64, tool: ToolId, endpoint: &[u8]| {
			ToolsPallet::update_endpoint(RuntimeOrigin::signed(who), tool, bv(endpoint), [1; 32])
		};
		assert_noop!(update(ALICE, id, b""), Error::<Test>::EmptyField);
		assert_noop!(update(ALICE, 9, ENDPOINT), Error::<Test>::UnknownTool);
		assert_noop!(update(BOB, id, ENDPOINT), Error::<Test>::NotOwner);
		// The owner spent everything else: a longer endpoint's extra deposit cannot be held.
		Balances::set_balance(&ALICE, 1);
		let longest = [b'u'; 64];
		assert_noop!(update(ALICE, id, &longest), TokenError::FundsUnavailable);
	});
}

// ---- set_price ----

#[test]
fn set_price_changes_the_price() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_ok!(ToolsPallet::set_price(RuntimeOrigin::signed(ALICE), id, 11));
		assert_eq!(Tools::<Test>::get(id).unwrap().price_per_call, 11);
		assert_eq!(last_event(), Event::PriceSet { tool: id, price_per_call: 11 }.into());
	});
}

#[test]
fn set_price_failures() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_noop!(
			ToolsPallet::set_price(RuntimeOrigin::signed(ALICE), 9, 1),
			Error::<Test>::UnknownTool
		);
		assert_noop!(
			ToolsPallet::set_price(RuntimeOrigin::signed(BOB), id, 1),
			Error::<Test>::NotOwner
		);
		assert_noop!(
			ToolsPallet::set_price(RuntimeOrigin::none(), id, 1),
			DispatchError::BadOrigin
		);
	});
}

// ---- set_paused ----

#[test]
fn set_paused_pauses_and_resumes() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_ok!(ToolsPallet::set_paused(RuntimeOrigin::signed(ALICE), id, true));
		assert!(Tools::<Test>::get(id).unwrap().paused);
		assert_eq!(ToolsPallet::callable(id), None);
		assert_eq!(last_event(), Event::PausedSet { tool: id, paused: true }.into());
		assert_ok!(ToolsPallet::set_paused(RuntimeOrigin::signed(ALICE), id, false));
		assert_eq!(ToolsPallet::callable(id), Some((ALICE, 3, DESCRIPTOR)));
		assert_eq!(last_event(), Event::PausedSet { tool: id, paused: false }.into());
	});
}

#[test]
fn set_paused_failures() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_noop!(
			ToolsPallet::set_paused(RuntimeOrigin::signed(ALICE), id, false),
			Error::<Test>::AlreadySet
		);
		assert_noop!(
			ToolsPallet::set_paused(RuntimeOrigin::signed(ALICE), 9, true),
			Error::<Test>::UnknownTool
		);
		assert_noop!(
			ToolsPallet::set_paused(RuntimeOrigin::signed(BOB), id, true),
			Error::<Test>::NotOwner
		);
	});
}

// ---- transfer_ownership / accept_ownership ----

#[test]
fn ownership_moves_with_the_deposit_when_accepted() {
	run_test(|| {
		let id = register(ALICE, 3);
		offer(id, ALICE, BOB);
		assert_eq!(Tools::<Test>::get(id).unwrap().pending_owner, Some(BOB));
		assert_eq!(last_event(), Event::TransferOffered { tool: id, from: ALICE, to: BOB }.into());
		// A later offer replaces the first.
		offer(id, ALICE, CHARLIE);
		assert_noop!(
			ToolsPallet::accept_ownership(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotPendingOwner
		);
		assert_ok!(ToolsPallet::accept_ownership(RuntimeOrigin::signed(CHARLIE), id));
		let tool = Tools::<Test>::get(id).unwrap();
		assert_eq!((tool.owner, tool.pending_owner), (CHARLIE, None));
		assert_eq!((held(ALICE), held(CHARLIE)), (0, deposit(ENDPOINT.len())));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_eq!(
			last_event(),
			Event::OwnershipTransferred { tool: id, from: ALICE, to: CHARLIE }.into()
		);
		// The old owner has no say any more.
		assert_noop!(
			ToolsPallet::set_price(RuntimeOrigin::signed(ALICE), id, 1),
			Error::<Test>::NotOwner
		);
	});
}

#[test]
fn transfer_ownership_failures() {
	run_test(|| {
		let id = register(ALICE, 3);
		let transfer = |who: u64, tool: ToolId, to: u64| {
			ToolsPallet::transfer_ownership(RuntimeOrigin::signed(who), tool, to)
		};
		assert_noop!(transfer(ALICE, id, ALICE), Error::<Test>::AlreadyOwner);
		assert_noop!(transfer(ALICE, 9, BOB), Error::<Test>::UnknownTool);
		assert_noop!(transfer(BOB, id, CHARLIE), Error::<Test>::NotOwner);
	});
}

#[test]
fn accept_ownership_failures() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_noop!(
			ToolsPallet::accept_ownership(RuntimeOrigin::signed(BOB), 9),
			Error::<Test>::UnknownTool
		);
		// Nothing was offered yet.
		assert_noop!(
			ToolsPallet::accept_ownership(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotPendingOwner
		);
		// The new owner must be able to pay the deposit.
		offer(id, ALICE, PAUPER);
		assert_noop!(
			ToolsPallet::accept_ownership(RuntimeOrigin::signed(PAUPER), id),
			TokenError::FundsUnavailable
		);
		assert_eq!(Tools::<Test>::get(id).unwrap().owner, ALICE);
	});
}

// ---- remove_tool ----

#[test]
fn remove_tool_releases_the_deposit() {
	run_test(|| {
		let id = register(ALICE, 3);
		let other = register(ALICE, 4);
		assert_ok!(ToolsPallet::remove_tool(RuntimeOrigin::signed(ALICE), id));
		assert!(Tools::<Test>::get(id).is_none());
		assert_eq!(ToolsPallet::callable(id), None);
		assert_eq!(held(ALICE), deposit(ENDPOINT.len()));
		assert_eq!(last_event(), Event::ToolRemoved { tool: id }.into());
		assert_ok!(ToolsPallet::remove_tool(RuntimeOrigin::signed(ALICE), other));
		assert_eq!((held(ALICE), Balances::balance(&ALICE)), (0, ENDOWMENT));
		// Ids are not reused.
		assert_eq!(register(BOB, 0), 2);
	});
}

#[test]
fn remove_tool_failures() {
	run_test(|| {
		let id = register(ALICE, 3);
		assert_noop!(
			ToolsPallet::remove_tool(RuntimeOrigin::signed(ALICE), 9),
			Error::<Test>::UnknownTool
		);
		assert_noop!(
			ToolsPallet::remove_tool(RuntimeOrigin::signed(BOB), id),
			Error::<Test>::NotOwner
		);
	});
}

// ---- invariants ----

#[test]
fn try_state_catches_a_deposit_that_is_not_held() {
	new_test_ext().execute_with(|| {
		let id = register(ALICE, 3);
		Tools::<Test>::mutate(id, |tool| {
			if let Some(tool) = tool {
				tool.deposit += 1;
			}
		});
		assert!(ToolsPallet::do_try_state().is_err());
	});
}
