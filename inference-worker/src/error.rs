//! The worker's errors: each says what was wrong with which input.

/// What can go wrong loading models and adapters or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
	/// Reading a file failed.
	#[error("I/O error: {0}")]
	Io(#[from] std::io::Error),
	/// A tensor operation failed.
	#[error("tensor error: {0}")]
	Tensor(#[from] candle_core::Error),
	/// A model or adapter file is malformed.
	#[error("malformed model file: {0}")]
	Format(String),
	/// The model uses something this engine does not implement.
	#[error("unsupported: {0}")]
	Unsupported(String),
	/// The tokenizer could not be built or failed.
	#[error("tokenizer: {0}")]
	Tokenizer(String),
	/// A LoRA adapter is malformed or does not fit the base model.
	#[error("adapter {name}: {reason}")]
	Adapter {
		/// The adapter's name or path.
		name: String,
		/// What is wrong with it.
		reason: String,
	},
	/// An adapter named by content hash (registered on chain) has files that changed after
	/// they were checked: they no longer hash to it, are gone or cannot be read. The worker's
	/// fault, not the request's.
	#[error("adapter {name}: {reason}")]
	AdapterChanged {
		/// The adapter's name.
		name: String,
		/// Which files, and what is wrong with them now.
		reason: String,
	},
	/// The KV cache has too few free blocks for a step (the scheduler preempts a sequence).
	#[error("the KV cache is full: {needed} blocks needed, {available} free")]
	CacheFull {
		/// Blocks the step needs.
		needed: usize,
		/// Blocks free.
		available: usize,
	},
	/// The request queue is full: try again later.
	#[error("overloaded: {queued} requests are already waiting (the limit)")]
	Overloaded {
		/// Requests waiting.
		queued: usize,
	},
	/// A compute kernel refused its inputs or failed on the device.
	#[error("kernel: {0}")]
	Kernel(#[from] openledger_kernels::backend::KernelError),
	/// A request is invalid (empty prompt, too long, bad sampling parameters).
	#[error("bad request: {0}")]
	Request(String),
	/// Running a batch failed (the device, or the decoder's own fault): the requests in it end
	/// with this error, the engine carries on.
	#[error("the batch step failed: {0}")]
	Batch(String),
	/// The engine's serving thread is gone (it failed): nothing more can be served.
	#[error("the engine has stopped: {0}")]
	Stopped(String),
}

/// The worker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
