//! The end-to-end suite as one test binary: a real server on an ephemeral listener, driven
//! through grpc-clients. One binary rather than one per file, because each links the whole
//! server, and eleven of them cost gigabytes of disk and minutes of linking on a CI machine.

mod auto_complete;
mod bad_input;
mod datatypes;
mod health_reflection;
mod large_messages;
mod llm;
mod metadata;
mod mock_llm;
mod repository;
mod settings;
mod shared_memory;
mod statistics;
mod streaming;
mod transport;
mod trust_boundary;
mod trust_http;
mod trust_limits;
