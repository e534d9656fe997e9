//! `openledger-node`: the OpenLedger chain's node.

#![warn(missing_docs)]

mod chain_spec;
mod cli;
mod command;
mod registry_rpc;
mod rpc;
mod service;

fn main() -> sc_cli::Result<()> {
	command::run()
}
