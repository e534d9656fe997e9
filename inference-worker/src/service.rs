//! The engine on a thread of its own, taking requests from any thread or task: what the HTTP
//! API ([`crate::http_api`]) serves through.
//!
//! [`EngineService::start`] builds an [`Engine`] on a new thread and runs it there: it takes
//! the requests sent with [`EngineService::generate`] between steps (blocking only while it has
//! nothing to do), steps while anything waits or runs, and answers each request when it
//! finishes. A request whose caller has gone (the future of [`EngineService::generate`]
//! dropped: an HTTP client that disconnected) is cancelled before the next step, so its KV
//! blocks go back to the others at once. A bad request is answered at once with the engine's
//! error and costs nothing.
//!
//! [`EngineService::generate_stream`] serves a request whose text is wanted as it is generated:
//! after every step the engine thread sends each streaming request its new tokens with their
//! log-probabilities and the text they add ([`TextStream`]: only text that can no longer
//! change), then the finished generation.

use std::{
	collections::HashMap,
	path::{Path, PathBuf},
	sync::{
		atomic::{AtomicBool, Ordering},
		mpsc, Arc, Mutex,
	},
	time::{Duration, Instant},
};

use tokio::sync::{mpsc as channel, oneshot};

use crate::{
	adapter_cache::CacheFigures,
	decoder::Decoder,
	engine::{Engine, EngineConfig, EngineStats, RequestId},
	error::{Error, Result},
	generate::{Generation, GenerationRequest, TokenScores},
	lora::{AdapterFiles, AdapterSource},
	metrics::{Histogram, INTER_TOKEN_BOUNDS, REQUEST_BOUNDS, TTFT_BOUNDS},
	text_stream::TextStream,
	tokenizer::Tokenizer,
};

/// What a streaming request receives, in order: that the engine took it, pieces of its
/// output, then its generation.
#[derive(Debug)]
pub enum StreamEvent {
	/// The engine took the request (it was not refused); its output follows as it is generated.
	Queued,
	/// More of the text, and the tokens generated since the last piece with their scores
	/// (never both empty; the text is empty while new tokens release none yet). The pieces add
	/// up to the generation's text and tokens.
	Text(String, TokenScores),
	/// The request finished: its generation, whose text was all sent.
	Done(Generation),
}

/// The events of a streaming request ([`EngineService::generate_stream`]). Dropping it cancels
/// the request.
#[derive(Debug)]
pub struct EventStream(channel::UnboundedReceiver<Result<StreamEvent>>);

impl EventStream {
	/// The next event: an error ends the stream (so does [`StreamEvent::Done`]); `None` after
	/// the end.
	pub async fn next(&mut self) -> Option<Result<StreamEvent>> {
		self.0.recv().await
	}
}

/// Where a request's answer goes.
enum Reply {
	/// The whole generation, once finished.
	Whole(oneshot::Sender<Result<Generation>>),
	/// Its text as it grows, then the generation; and how many of its tokens were sent.
	Stream(channel::UnboundedSender<Result<StreamEvent>>, TextStream, usize),
}

impl Reply {
	/// Whether the receiver has gone (the request should be cancelled).
	fn is_closed(&self) -> bool {
		match self {
			Reply::Whole(reply) => reply.is_closed(),
			Reply::Stream(events, ..) => events.is_closed(),
		}
	}

	/// Answers with the request's `result`: for a stream, the rest of the text and tokens
	/// first.
	fn send(self, result: Result<Generation>) {
		match self {
			Reply::Whole(reply) => {
				let _ = reply.send(result);
			}
			Reply::Stream(events, text, sent) => {
				let result = result.and_then(|generation| match text.finish(&generation) {
					Some(rest) => {
						let scores = generation.scores_from(sent);
						if !rest.is_empty() || !scores.tokens.is_empty() {
							let _ = events.send(Ok(StreamEvent::Text(rest.to_string(), scores)));
						}
						Ok(generation)
					}
					None => Err(Error::Batch(format!(
						"the text streamed so far ({:?}) does not begin the final text ({:?})",
						text.sent(),
						generation.text
					))),
				});
				let _ = events.send(result.map(StreamEvent::Done));
			}
		}
	}
}

/// One request on its way to the engine thread.
struct Job {
	request: GenerationRequest,
	adapter: Option<String>,
	reply: Reply,
	/// When it was sent (its latencies count from here).
	sent: Instant,
}

/// What the engine thread is asked to do.
enum Message {
	/// Serve a request.
	Generate(Box<Job>),
	/// Serve the adapter in a folder (its files of a hash, if given) under a name from now on.
	Register(String, AdapterSource),
	/// Stop serving the adapter of a name to new requests.
	Unregister(String),
}

/// Builds an adapter from its files for the served model, to check it (see
/// [`EngineService::check_files`]).
type AdapterCheck = dyn Fn(&str, &AdapterFiles) -> Result<()> + Send + Sync;

/// How long requests took, as vLLM measures it (for `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latencies {
	/// From taking a request to its first token.
	pub first_token: Histogram,
	/// Between a request's consecutive tokens.
	pub inter_token: Histogram,
	/// From taking a request to its answer (requests that finished well).
	pub request: Histogram,
}

impl Default for Latencies {
	fn default() -> Self {
		Self {
			first_token: Histogram::new(TTFT_BOUNDS),
			inter_token: Histogram::new(INTER_TOKEN_BOUNDS),
			request: Histogram::new(REQUEST_BOUNDS),
		}
	}
}

/// What the engine thread has done and holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServiceStats {
	/// The engine's counters.
	pub engine: EngineStats,
	/// Requests waiting to start.
	pub waiting: usize,
	/// Requests running.
	pub running: usize,
	/// Tokens generated for requests that finished successfully.
	pub generated_tokens: u64,
	/// Prompt tokens of requests that finished successfully.
	pub prompt_tokens: u64,
	/// How long requests took.
	pub latencies: Latencies,
	/// What the adapter cache has done and holds.
	pub adapters: CacheFigures,
}

/// A request the engine thread holds: where its answer goes, and when it was taken and last
/// gave a token.
struct Pending {
	reply: Reply,
	taken: Instant,
	last_token: Option<Instant>,
	/// Its tokens seen so far.
	tokens: usize,
}

impl Pending {
	/// Notes that the request has `tokens` tokens at `now`: a new one is timed.
	fn saw(&mut self, tokens: usize, now: Instant, latencies: &mut Latencies) {
		if tokens <= self.tokens {
			return;
		}
		match self.last_token {
			None => latencies.first_token.observe(now - self.taken),
			Some(last) => latencies.inter_token.observe(now - last),
		}
		self.tokens = tokens;
		self.last_token = Some(now);
	}
}

/// A handle to the engine thread; cloning it is cheap, and the thread stops when the last
/// handle is dropped (after answering what it holds).
#[derive(Clone)]
pub struct EngineService {
	jobs: mpsc::Sender<Message>,
	stats: Arc<Mutex<ServiceStats>>,
	alive: Arc<AtomicBool>,
	/// The model's end-of-sequence token (not part of streamed text).
	eos: Option<u32>,
	check: Arc<AdapterCheck>,
	/// [`Engine::max_sequence`].
	max_sequence: usize,
	/// [`EngineConfig::max_waiting`].
	max_waiting: usize,
}

/// Marks the engine thread stopped when it ends, however it ends (a panic included).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
	fn drop(&mut self) {
		self.0.store(false, Ordering::SeqCst);
	}
}

impl EngineService {
	/// Starts the engine thread: an [`Engine`] over `model` with `config`, and `adapters`
	/// (name, PEFT folder) registered. Fails if the engine cannot be built (a KV cache budget
	/// too small for one block, say).
	pub fn start<D: Decoder>(
		model: Arc<D>,
		tokenizer: Arc<Tokenizer>,
		config: EngineConfig,
		adapters: Vec<(String, PathBuf)>,
	) -> Result<Self> {
		let (jobs, rx) = mpsc::channel::<Message>();
		let stats = Arc::new(Mutex::new(ServiceStats::default()));
		let (ready_tx, ready) = mpsc::channel::<Result<usize>>();
		let shared = stats.clone();
		let alive = Arc::new(AtomicBool::new(true));
		let guard = Alive(alive.clone());
		let eos = tokenizer.eos;
		let max_waiting = config.max_waiting;
		let checked = model.clone();
		let check: Arc<AdapterCheck> = Arc::new(move |name: &str, files: &AdapterFiles| {
			checked.adapter_from_files(name, files).map(drop)
		});
		std::thread::Builder::new()
			.name("engine".into())
			.spawn(move || {
				let _alive = guard;
				let mut engine = match Engine::new(model, tokenizer.clone(), config) {
					Ok(engine) => engine,
					Err(e) => {
						let _ = ready_tx.send(Err(e));
						return;
					}
				};
				for (name, dir) in adapters {
					engine.register_adapter(name, dir);
				}
				let _ = ready_tx.send(Ok(engine.max_sequence()));
				run(engine, &tokenizer, rx, &shared);
			})
			.map_err(Error::Io)?;
		let max_sequence =
			ready.recv().map_err(|_| Error::Stopped("before it was ready".into()))??;
		Ok(Self { jobs, stats, alive, eos, check, max_sequence, max_waiting })
	}

	/// The most tokens (prompt and output) one request may reach ([`Engine::max_sequence`]).
	pub fn max_sequence(&self) -> usize {
		self.max_sequence
	}

	/// The most requests that may wait at once ([`EngineConfig::max_waiting`]): an answer
	/// needing more (prompts times choices) could never be queued whole.
	pub fn max_waiting(&self) -> usize {
		self.max_waiting
	}

	/// Serves `request` with the registered adapter `adapter` (or the base model) and waits for
	/// its generation. Dropping the future cancels the request.
	pub async fn generate(
		&self,
		request: GenerationRequest,
		adapter: Option<String>,
	) -> Result<Generation> {
		let (reply, answer) = oneshot::channel();
		self.submit(Job { request, adapter, reply: Reply::Whole(reply), sent: Instant::now() })?;
		answer.await.map_err(|_| Error::Stopped("before answering".into()))?
	}

	/// Serves `request` like [`EngineService::generate`], sending its text as it is generated
	/// (see [`EventStream`]). The first event is [`StreamEvent::Queued`], or the error of a
	/// request the engine refuses (bad, unknown adapter, queue full).
	pub fn generate_stream(
		&self,
		request: GenerationRequest,
		adapter: Option<String>,
	) -> Result<EventStream> {
		let (events, receiver) = channel::unbounded_channel();
		let text = TextStream::new(&request, self.eos);
		let reply = Reply::Stream(events, text, 0);
		self.submit(Job { request, adapter, reply, sent: Instant::now() })?;
		Ok(EventStream(receiver))
	}

	fn submit(&self, job: Job) -> Result<()> {
		self.send(Message::Generate(Box::new(job)))
	}

	fn send(&self, message: Message) -> Result<()> {
		self.jobs.send(message).map_err(|_| Error::Stopped("the request was not taken".into()))
	}

	/// Serves the adapter in `source` (a PEFT folder, with the hash its files must have if
	/// given: [`AdapterSource`]) under `name` from the next request on (replacing one of that
	/// name for new requests).
	pub fn register_adapter(
		&self,
		name: impl Into<String>,
		source: impl Into<AdapterSource>,
	) -> Result<()> {
		self.send(Message::Register(name.into(), source.into()))
	}

	/// Stops serving the adapter `name` to new requests (those already taken finish with it).
	pub fn unregister_adapter(&self, name: impl Into<String>) -> Result<()> {
		self.send(Message::Unregister(name.into()))
	}

	/// Builds the adapter in `dir` for the served model, as serving it would, and drops it:
	/// whether its files can be served (this blocks while it reads and builds them).
	pub fn check_adapter(&self, name: &str, dir: &Path) -> Result<()> {
		self.check_files(name, &AdapterFiles::read(dir, name)?)
	}

	/// Builds the adapter `name` from `files` (already read) for the served model, as serving
	/// it would, and drops it.
	pub fn check_files(&self, name: &str, files: &AdapterFiles) -> Result<()> {
		(self.check)(name, files)
	}

	/// Whether the engine thread is still serving.
	pub fn is_alive(&self) -> bool {
		self.alive.load(Ordering::SeqCst)
	}

	/// What the engine has done so far and holds now.
	pub fn stats(&self) -> ServiceStats {
		*self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
	}
}

/// The engine thread's loop (see the module documentation).
fn run<D: Decoder>(
	mut engine: Engine<D>,
	tokenizer: &Tokenizer,
	jobs: mpsc::Receiver<Message>,
	stats: &Mutex<ServiceStats>,
) {
	let mut replies: HashMap<RequestId, Pending> = HashMap::new();
	let mut finished = (0u64, 0u64);
	let mut latencies = Latencies::default();
	loop {
		// Nothing to do: sleep until a request comes (or every handle is gone).
		if !engine.has_work() {
			match jobs.recv() {
				Ok(message) => accept(&mut engine, message, &mut replies),
				Err(_) => return,
			}
		}
		while let Ok(message) = jobs.try_recv() {
			accept(&mut engine, message, &mut replies);
		}
		replies.retain(|&id, pending| {
			if pending.reply.is_closed() {
				engine.cancel(id);
				false
			} else {
				true
			}
		});
		let steps = engine.stats().steps;
		let done = engine.step();
		let idle = done.is_empty() && engine.stats().steps == steps;
		let now = Instant::now();
		for completion in &done {
			if let Ok(generation) = &completion.result {
				finished.0 += generation.prompt_tokens.len() as u64;
				finished.1 += generation.tokens.len() as u64;
				if let Some(pending) = replies.get_mut(&completion.id) {
					pending.saw(generation.tokens.len(), now, &mut latencies);
					latencies.request.observe(now - pending.taken);
				}
			}
		}
		follow_running(&mut engine, tokenizer, &mut replies, now, &mut latencies);
		// The figures first, so that a client answered by this step sees them (one refused as
		// its request is taken may not, until the next step).
		*stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = ServiceStats {
			engine: engine.stats(),
			waiting: engine.waiting(),
			running: engine.running(),
			prompt_tokens: finished.0,
			generated_tokens: finished.1,
			latencies,
			adapters: engine.adapters().figures(),
		};
		for completion in done {
			if let Some(pending) = replies.remove(&completion.id) {
				pending.reply.send(completion.result);
			}
		}
		if idle && engine.has_work() {
			// Nothing could run this step (an adapter is loading): wait a little for it, or for
			// a new request, rather than spin.
			match jobs.recv_timeout(Duration::from_millis(2)) {
				Ok(message) => accept(&mut engine, message, &mut replies),
				Err(mpsc::RecvTimeoutError::Timeout) => {}
				Err(mpsc::RecvTimeoutError::Disconnected) => {
					std::thread::sleep(Duration::from_millis(2))
				}
			}
		}
	}
}

/// Times the running requests' new tokens (at `now`), and sends each streaming one the text
/// they add.
fn follow_running<D: Decoder>(
	engine: &mut Engine<D>,
	tokenizer: &Tokenizer,
	replies: &mut HashMap<RequestId, Pending>,
	now: Instant,
	latencies: &mut Latencies,
) {
	let mut failed = Vec::new();
	for (id, progress) in engine.outputs() {
		let Some(pending) = replies.get_mut(&id) else { continue };
		let tokens = &progress.tokens;
		pending.saw(tokens.len(), now, latencies);
		let Reply::Stream(events, text, sent) = &mut pending.reply else { continue };
		match text.advance(tokens, tokenizer) {
			Ok(piece) if piece.is_empty() && tokens.len() == *sent => {}
			Ok(piece) => {
				let _ = events.send(Ok(StreamEvent::Text(piece, progress.scores_from(*sent))));
				*sent = tokens.len();
			}
			Err(e) => {
				// The text cannot be decoded: the error ends the stream and the request.
				let _ = events.send(Err(e));
				failed.push(id);
			}
		}
	}
	for id in failed {
		replies.remove(&id);
		engine.cancel(id);
	}
}

/// Does what `message` asks of the engine: a request is submitted, or answered at once with
/// why it cannot be served.
fn accept<D: Decoder>(
	engine: &mut Engine<D>,
	message: Message,
	replies: &mut HashMap<RequestId, Pending>,
) {
	match message {
		Message::Generate(job) => match engine.submit(&job.request, job.adapter.as_deref()) {
			Ok(id) => {
				if let Reply::Stream(events, ..) = &job.reply {
					let _ = events.send(Ok(StreamEvent::Queued));
				}
				let pending =
					Pending { reply: job.reply, taken: job.sent, last_token: None, tokens: 0 };
				replies.insert(id, pending);
			}
			Err(e) => job.reply.send(Err(e)),
		},
		Message::Register(name, source) => {
			let dir = source.dir.display();
			tracing::info!(adapter = %name, dir = %dir, hashed = source.content_hash.is_some(), "adapter registered");
			engine.register_adapter(name, source);
		}
		Message::Unregister(name) => {
			if engine.unregister_adapter(&name) {
				tracing::info!(adapter = %name, "adapter unregistered");
			}
		}
	}
}
