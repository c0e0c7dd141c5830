//! A chat conversation as a frontend holds one: the messages so far, the images they
//! refer to, and the images attached to the message being typed. It renders itself
//! into the prompt parts a [`crate::Session`] feeds (the whole conversation each turn;
//! `Session::feed_pending_reusing` then feeds only what the session does not hold),
//! and drops its oldest exchanges when a turn would outgrow the context. `npurt chat`
//! and the C API (`npurt-capi`) are both built on it.

use crate::{Model, PendingImage, PromptPart, Result};
use npurt_models::ChatMessage;
use std::ops::Range;

/// The conversation: every image given so far (a message refers to them by index),
/// the messages with their images, and the images for the message being typed.
#[derive(Default)]
pub struct Conversation {
    images: Vec<PendingImage>,
    messages: Vec<(ChatMessage, Vec<usize>)>,
    attached: Vec<usize>,
}

impl Conversation {
    /// A conversation that starts with `system` as its system message, if given.
    pub fn new(system: Option<&str>) -> Self {
        Conversation {
            messages: system
                .iter()
                .map(|s| (ChatMessage::new("system", *s), vec![]))
                .collect(),
            ..Default::default()
        }
    }

    /// The messages so far (role and text).
    pub fn messages(&self) -> impl Iterator<Item = &ChatMessage> {
        self.messages.iter().map(|(m, _)| m)
    }

    /// Attaches an image (encoding, or encoded) to the message being typed.
    pub fn attach(&mut self, image: PendingImage) {
        self.images.push(image);
        self.attached.push(self.images.len() - 1);
    }

    /// Takes back the last attached image (e.g. one the session refused).
    pub fn detach_last(&mut self) -> Option<PendingImage> {
        self.attached.pop()?;
        self.images.pop()
    }

    /// Images attached to the message being typed.
    pub fn attached(&self) -> usize {
        self.attached.len()
    }

    /// The prompt of the messages so far plus `user` (with the attached images), cut
    /// before `user`'s text when `ahead` (what can be prefilled while it is typed), as
    /// parts for a session.
    pub fn prompt(
        &self,
        model: &Model,
        user: &str,
        ahead: bool,
    ) -> Result<Vec<PromptPart<&PendingImage>>> {
        let mut turns: Vec<(ChatMessage, Vec<&PendingImage>)> = self
            .messages
            .iter()
            .map(|(m, imgs)| (m.clone(), imgs.iter().map(|&i| &self.images[i]).collect()))
            .collect();
        let attached = self.attached.iter().map(|&i| &self.images[i]).collect();
        turns.push((ChatMessage::new("user", user), attached));
        if model.vision.is_none() {
            let messages: Vec<ChatMessage> = turns.into_iter().map(|(m, _)| m).collect();
            return Ok(vec![PromptPart::Text(
                model.encode(&model.render_chat(&messages)?)?,
            )]);
        }
        let (text, images) = if ahead {
            model.render_multimodal_chat_ahead(&turns)?
        } else {
            model.render_multimodal_chat(&turns)?
        };
        model.split_prompt(&text, &images)
    }

    /// The prompt for `user` ([`Conversation::prompt`]) handed to `feed`, after dropping
    /// the oldest exchanges (a user message and the answers after it), one at a time,
    /// until it and `answer_room` more positions fit the model's context, or none is
    /// left to drop. Returns how many were dropped and what `feed` returned.
    pub fn fit<R>(
        &mut self,
        model: &Model,
        user: &str,
        answer_room: usize,
        feed: impl FnOnce(&[PromptPart<&PendingImage>]) -> Result<R>,
    ) -> Result<(usize, R)> {
        let mut dropped = 0;
        loop {
            let parts = self.prompt(model, user, false)?;
            let positions: usize = parts.iter().map(PromptPart::positions).sum();
            match self.oldest_turn() {
                Some(turn) if positions + answer_room > model.ctx => {
                    drop(parts);
                    self.messages.drain(turn);
                    dropped += 1;
                }
                _ => return Ok((dropped, feed(&parts)?)),
            }
        }
    }

    /// Records a finished exchange: `user` with the attached images, then `answer`.
    pub fn push_exchange(&mut self, user: &str, answer: &str) {
        let images = std::mem::take(&mut self.attached);
        self.messages.push((ChatMessage::new("user", user), images));
        self.messages
            .push((ChatMessage::new("assistant", answer), vec![]));
    }

    /// Forgets everything but the system message.
    pub fn reset(&mut self) {
        self.messages.retain(|(m, _)| m.role == "system");
        self.images.clear();
        self.attached.clear();
    }

    /// Where the oldest exchange is, if any.
    fn oldest_turn(&self) -> Option<Range<usize>> {
        let first = self.messages.iter().position(|(m, _)| m.role == "user")?;
        let end = self.messages[first + 1..]
            .iter()
            .position(|(m, _)| m.role == "user")
            .map_or(self.messages.len(), |i| first + 1 + i);
        Some(first..end)
    }
}
