//! Builds the runtime to wasm. The metadata hash is embedded so that the
//! `CheckMetadataHash` transaction extension can be used by offline signers.

#[cfg(feature = "std")]
fn main() {
	substrate_wasm_builder::WasmBuilder::init_with_defaults()
		.enable_metadata_hash("OPEN", 18)
		.build();
}

/// The wasm builder is deactivated when compiling this crate for wasm itself.
#[cfg(not(feature = "std"))]
fn main() {}
