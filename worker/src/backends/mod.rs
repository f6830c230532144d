//! Built-in backends: `identity`, `add_sub` and `tritium_repeat`, useful for testing clients,
//! measuring the server's own overhead, and as examples of [`Backend`](tritium_backend_api::Backend);
//! `dense` (a layer that gains from dynamic batching) and `accumulate` (a stateful model for the
//! sequence batcher). `identity`, `repeat` and `square` are Triton's backends of those names, with
//! Triton's configs and meaning (ours differ only where they are named `tritium_*`). Language, embedding, ONNX Runtime and Python models come from the backend
//! crates, which the server registers beside these.

mod accumulate;
mod add_sub;
mod dense;
mod identity;
mod repeat;
mod tritium_repeat;

pub use accumulate::Accumulate;
pub use add_sub::AddSub;
pub use dense::{Dense, weight as dense_weight};
pub use identity::Identity;
pub use repeat::{Repeat, Square};
pub use tritium_repeat::TritiumRepeat;

use tritium_backend_api::BackendRegistry;

/// A registry holding the built-in backends, to which the server adds the backend crates'.
pub fn builtin_backends() -> BackendRegistry {
    let mut registry = BackendRegistry::default();
    register_builtins(&mut registry);
    registry
}

/// Adds the built-in backends to `registry`.
pub fn register_builtins(registry: &mut BackendRegistry) {
    registry.register("identity", Identity::from_context);
    registry.register("add_sub", AddSub::from_context);
    registry.register("tritium_repeat", TritiumRepeat::from_context);
    registry.register("repeat", Repeat::from_context);
    registry.register("square", Square::from_context);
    registry.register("dense", Dense::from_context);
    registry.register("accumulate", Accumulate::from_context);
}
