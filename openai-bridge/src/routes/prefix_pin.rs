//! Explicit prompt caching at the doors: the pin of a chat's cache breakpoint (see
//! [`CacheBreakpoint`]).

use std::sync::Arc;

use tritium_backend_api::llm::PrefixPin;

use super::{AppState, ChatPrompt};
use crate::BridgeError;
use crate::preprocess::Preprocessor;
use crate::protocol::CacheBreakpoint;

impl AppState {
    /// The pin of a chat's cache breakpoint: the tokens `prompt` shares with the rendering of the
    /// messages through the breakpoint (what the template writes after the last of them, such as
    /// the generation prompt, is not part of it). That rendering's ids mostly come from the
    /// tokenizer's prefix cache.
    pub(super) async fn prefix_pin(
        &self,
        pre: &Arc<Preprocessor>,
        chat: &ChatPrompt<'_>,
        breakpoint: CacheBreakpoint,
        prompt: &[u32],
    ) -> Result<PrefixPin, BridgeError> {
        let through = &chat.messages[..breakpoint.messages.min(chat.messages.len())];
        let text = pre.render_chat_bounded(through, false, chat.extra).await?;
        let ids = pre.encode_off_runtime(text, false).await?;
        let shared = ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        Ok(PrefixPin { tokens: u32::try_from(shared).unwrap_or(u32::MAX), ttl: breakpoint.ttl })
    }
}
