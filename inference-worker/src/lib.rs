//! The OpenLedger inference worker: serves Llama-family models with many LoRA adapters.
//!
//! - [`model`]: the decoder, over quantized GGUF or dense weights, with adapters applied
//!   unmerged on top of the shared base weights.
//! - [`engine`]: continuous batching of many requests with different adapters, over any
//!   [`decoder::Decoder`].
//! - [`kernel_model`]: the same decoder composed of `openledger_kernels` calls, on the CPU
//!   references or, with a GPU, the CUDA kernels (weights, KV cache and adapters on the device).
//! - [`kv_cache`]: the paged key/value cache shared by all sequences, with prefix sharing.
//! - [`lora`]: PEFT LoRA adapters; [`adapter_cache`]: which of them are in memory.
//! - [`chat`]: the model's chat template, rendered as transformers renders it.
//! - [`tokenizer`]: tokenizers from `tokenizer.json` or rebuilt from GGUF metadata.
//! - [`sampling`] and [`generate`]: choosing tokens and running a request to completion.
//! - [`service`]: the engine on a thread of its own, answering requests from any thread;
//!   [`http_api`]: the HTTP API over it (OpenAI's completions and chat completions, whole or
//!   streamed); [`text_stream`]: a generation's text released as it grows.
//! - [`json_mode`]: JSON mode and JSON schemas, the output held to a grammar token by token;
//!   [`regex_grammar`]: the output held to a regular expression (vLLM's `guided_regex`);
//!   [`ebnf_grammar`]: the output held to a context-free grammar in GBNF (vLLM's
//!   `guided_grammar`); [`grammar_cache`]: the grammars compiled for earlier requests, kept;
//!   [`json_text`]: schema strings with a length or a pattern, and integers and numbers with
//!   bounds, as regular expressions over their JSON text;
//!   [`tool_calls`]: OpenAI's tool calls, held to the tools' parameter schemas;
//!   [`lazy_grammar`]: a grammar that holds the output once it writes a trigger (the model's
//!   own tool calls, `tool_choice: "auto"`).
//! - [`embeddings`]: sentence embeddings (a BERT encoder in sentence-transformers' layout, such
//!   as all-MiniLM-L6-v2) for retrieval; [`embedding_service`]: its serving thread, batching
//!   the requests waiting together; [`retrieval`]: DataNet records searched by similarity.
//! - [`attribution`]: how much each source document given to a chat contributed to its answer
//!   (leave-one-out, ContextCite), by scoring the answer under ablated prompts.
//! - The chain the worker follows ([`chain_rpc`]): [`datanet_sync`], the accepted records of
//!   DataNets; [`prompt_registry`], registered prompts a chat may name; [`adapter_registry`],
//!   registered adapters a request may name as its model.
//! - [`request_body`]: a request's JSON body, its fields unknown to the worker logged.
//! - [`responses`]: OpenAI's Responses API read as a chat, the chat's answer as a response.
//! - [`metrics`]: latency histograms for `/metrics`.
//! - [`models`]: where the real models live on this machine.
//! - [`threads`]: the CPU thread count, and [`allocator`]: how malloc keeps large blocks,
//!   settled once per process.

pub mod adapter_cache;
pub mod adapter_registry;
pub mod allocator;
pub mod attribution;
pub mod chain_rpc;
pub mod chat;
pub mod config;
pub mod datanet_sync;
pub mod decoder;
pub mod ebnf_grammar;
pub mod embedding_service;
pub mod embeddings;
pub mod engine;
pub mod error;
pub mod generate;
pub mod grammar_cache;
pub mod http_api;
pub mod json_mode;
pub mod json_text;
pub mod kernel_model;
pub mod kv_cache;
pub mod lazy_grammar;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod models;
pub mod prompt_registry;
pub mod regex_grammar;
pub mod request_body;
pub mod responses;
pub mod retrieval;
pub mod sampling;
pub mod service;
pub mod text_stream;
pub mod threads;
pub mod tokenizer;
pub mod tool_calls;

pub use error::{Error, Result};
