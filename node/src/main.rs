//! `openledger-node`: the OpenLedger chain's node.

#![warn(missing_docs)]
// The node's functions return `sc_cli::Error`, the polkadot-sdk CLI's error type, which is large;
// boxing it would only differ from every other Substrate node.
#![allow(clippy::result_large_err)]

mod chain_spec;
mod cli;
mod command;
mod registry_rpc;
mod rpc;
mod service;

fn main() -> sc_cli::Result<()> {
	command::run()
}
