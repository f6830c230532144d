//! Built-in backends: `identity`, `add_sub` and `repeat`, useful for testing clients, measuring
//! the server's own overhead, and as examples of [`Backend`](crate::backend::Backend); `dense`
//! (a layer that gains from dynamic batching) and `accumulate` (a stateful model for the
//! sequence batcher); the registry also gets the language and embedding model backends.

mod accumulate;
mod add_sub;
mod dense;
mod identity;
mod repeat;

pub use accumulate::Accumulate;
pub use add_sub::AddSub;
pub use dense::{Dense, weight as dense_weight};
pub use identity::Identity;
pub use repeat::Repeat;

use crate::backend::BackendRegistry;

pub(crate) fn register_builtins(registry: &mut BackendRegistry) {
    registry.register("identity", Identity::from_context);
    registry.register("add_sub", AddSub::from_context);
    registry.register("repeat", Repeat::from_context);
    registry.register("dense", Dense::from_context);
    registry.register("accumulate", Accumulate::from_context);
    registry.register(crate::embed::EMBED_BACKEND, crate::embed::embed_factory());
    registry.register(crate::llm::LLM_BACKEND, crate::llm::LlmFactory::default());
}
