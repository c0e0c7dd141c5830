//! Chat templates (Jinja, rendered with minijinja), as HF `apply_chat_template` does.

use crate::{ModelError, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>, bos_token: impl Into<String>, eos_token: impl Into<String>) -> Result<Self> {
        Ok(ChatTemplate { source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let _ = (messages, add_generation_prompt, &self.source);
        Err(ModelError::ChatTemplate("not implemented yet".into()))
    }
}
