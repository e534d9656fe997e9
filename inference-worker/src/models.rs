//! Where `scripts/fetch-models.sh` puts the real models: `$OPENLEDGER_MODELS`, or
//! `$HOME/.cache/openledger/models`.

use std::path::PathBuf;

/// The file name of the base model the project serves and tests with.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The folder holding the fetched models.
pub fn models_dir() -> PathBuf {
	if let Some(dir) = std::env::var_os("OPENLEDGER_MODELS") {
		return PathBuf::from(dir);
	}
	let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
	home.join(".cache/openledger/models")
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF file.
pub fn smollm2_gguf() -> PathBuf {
	models_dir().join(SMOLLM2_GGUF)
}

/// The folder name of the sentence-embedding model the worker retrieves with.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

/// The all-MiniLM-L6-v2 sentence-transformers folder.
pub fn minilm_dir() -> PathBuf {
	models_dir().join(MINILM_DIR)
}
