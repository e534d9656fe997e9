//! The thread that serves an [`EmbeddingModel`]: requests queue on a bounded channel, and each
//! turn embeds every request waiting (up to [`MAX_TURN_INPUTS`] inputs) together, so many small
//! requests share batches (what Hugging Face's text-embeddings-inference does). A request whose
//! client has gone is dropped before its turn.

use std::{
	sync::{
		atomic::{AtomicU64, Ordering},
		mpsc, Arc,
	},
	thread,
};

use tokio::sync::oneshot;

use crate::{
	embeddings::EmbeddingModel,
	error::{Error, Result},
};

/// The most requests waiting at once; more are refused (503, try again).
pub const MAX_WAITING: usize = 256;
/// The most inputs one turn embeds (a turn takes whole requests: one larger request is
/// embedded alone).
pub const MAX_TURN_INPUTS: usize = 512;

/// A request: token ids to embed, and where the vectors go.
struct Job {
	inputs: Vec<Vec<u32>>,
	reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

/// Counters of what the service has done.
#[derive(Debug, Default)]
pub struct EmbeddingStats {
	/// Requests answered.
	pub requests: AtomicU64,
	/// Inputs embedded.
	pub inputs: AtomicU64,
	/// Tokens run through the model.
	pub tokens: AtomicU64,
	/// Turns (one or more batches each) run.
	pub turns: AtomicU64,
	/// Requests whose client left before their turn.
	pub cancelled: AtomicU64,
}

/// The handle on the embedding thread (cheap to share behind an `Arc`).
pub struct EmbeddingService {
	jobs: mpsc::SyncSender<Job>,
	stats: Arc<EmbeddingStats>,
	model: Arc<EmbeddingModel>,
}

impl EmbeddingService {
	/// Starts the thread serving `model`.
	pub fn start(model: EmbeddingModel) -> Result<Self> {
		let model = Arc::new(model);
		let (jobs, queue) = mpsc::sync_channel::<Job>(MAX_WAITING);
		let stats = Arc::new(EmbeddingStats::default());
		let (served, counters) = (model.clone(), stats.clone());
		thread::Builder::new()
			.name("embeddings".into())
			.spawn(move || serve(&served, &queue, &counters))?;
		Ok(Self { jobs, stats, model })
	}

	/// The model (to tokenize and check inputs before queuing them).
	pub fn model(&self) -> &EmbeddingModel {
		&self.model
	}

	/// The length of the vectors.
	pub fn dimensions(&self) -> usize {
		self.model.dimensions()
	}

	/// The most tokens an input may have.
	pub fn max_tokens(&self) -> usize {
		self.model.max_tokens()
	}

	/// What the service has done so far.
	pub fn stats(&self) -> &EmbeddingStats {
		&self.stats
	}

	/// The embeddings of `inputs` (token ids), in their order. Fails at once with
	/// [`Error::Overloaded`] when [`MAX_WAITING`] requests are waiting, and with
	/// [`Error::Request`] for an input that cannot be embedded.
	pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>> {
		self.embed_named(inputs, |i| format!("input {i}")).await
	}

	/// [`Self::embed`], with the error for a bad input naming it `name(i)`, as the request
	/// named it (`documents[3]`, say).
	pub async fn embed_named(
		&self,
		inputs: Vec<Vec<u32>>,
		name: impl Fn(usize) -> String,
	) -> Result<Vec<Vec<f32>>> {
		for (i, tokens) in inputs.iter().enumerate() {
			self.model.check(&name(i), tokens)?;
		}
		let (reply, answer) = oneshot::channel();
		self.jobs.try_send(Job { inputs, reply }).map_err(|e| match e {
			mpsc::TrySendError::Full(_) => Error::Overloaded { queued: MAX_WAITING },
			mpsc::TrySendError::Disconnected(_) => {
				Error::Stopped("the embedding thread has stopped".into())
			}
		})?;
		answer.await.map_err(|_| Error::Stopped("the embedding thread has stopped".into()))?
	}
}

/// The thread's loop: until every handle is gone, take the requests waiting and embed them.
fn serve(model: &EmbeddingModel, queue: &mpsc::Receiver<Job>, stats: &EmbeddingStats) {
	// A request taken from the queue that did not fit the last turn: the next one's first.
	let mut pending = None;
	loop {
		let first = match pending.take() {
			Some(job) => job,
			None => match queue.recv() {
				Ok(job) => job,
				Err(_) => return,
			},
		};
		let mut inputs = first.inputs.len();
		let mut turn = vec![first];
		// Whole requests while they fit.
		while inputs < MAX_TURN_INPUTS {
			match queue.try_recv() {
				Ok(job) if inputs + job.inputs.len() <= MAX_TURN_INPUTS => {
					inputs += job.inputs.len();
					turn.push(job);
				}
				Ok(job) => {
					pending = Some(job);
					break;
				}
				Err(_) => break,
			}
		}
		run_turn(model, turn, stats);
	}
}

/// Embeds the inputs of `turn`'s requests together and answers each.
fn run_turn(model: &EmbeddingModel, turn: Vec<Job>, stats: &EmbeddingStats) {
	let (live, gone): (Vec<Job>, Vec<Job>) =
		turn.into_iter().partition(|job| !job.reply.is_closed());
	stats.cancelled.fetch_add(gone.len() as u64, Ordering::Relaxed);
	if live.is_empty() {
		return;
	}
	let all: Vec<Vec<u32>> = live.iter().flat_map(|job| job.inputs.iter().cloned()).collect();
	let tokens: usize = all.iter().map(Vec::len).sum();
	stats.turns.fetch_add(1, Ordering::Relaxed);
	match model.embed(&all) {
		Ok(vectors) => {
			stats.inputs.fetch_add(all.len() as u64, Ordering::Relaxed);
			stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
			let mut vectors = vectors.into_iter();
			for job in live {
				let mine = vectors.by_ref().take(job.inputs.len()).collect();
				stats.requests.fetch_add(1, Ordering::Relaxed);
				// A client that left in the meantime no longer wants them.
				let _ = job.reply.send(Ok(mine));
			}
		}
		Err(e) => {
			tracing::warn!(error = %e, inputs = all.len(), "embedding batch failed");
			let message = e.to_string();
			for job in live {
				stats.requests.fetch_add(1, Ordering::Relaxed);
				let _ = job.reply.send(Err(Error::Batch(message.clone())));
			}
		}
	}
}
