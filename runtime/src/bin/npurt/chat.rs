//! `npurt chat`: a conversation on stdin, one line a turn, run the way a frontend runs
//! one. The session keeps the conversation: each turn renders the whole of it and feeds
//! only what the session does not hold yet (`Session::feed_pending_reusing`), so a
//! turn costs its new rows, not the history's. `/image PATH` starts encoding the image
//! at once and prefills the conversation up to it (`render_multimodal_chat_ahead`)
//! before the next line, the question, is read: the BlueLM-V order of work, with the
//! prefill hidden behind the typing too. A reader thread timestamps each line as it
//! arrives, so a turn's first token counts from when its line was there, whatever was
//! still being prefilled then.
//!
//! Lines: `/image PATH` (an image for the next message; repeatable), `/reset` (a new
//! conversation), `/quit` (or the end of input), anything else: the user's message.
//! When a turn's prompt and an answer of `--max-tokens` outgrow the context, the
//! oldest exchanges are dropped until they fit.

use super::anyhow_lite;
use npurt_runtime::{Conversation, GenerateOptions, ImageInput, Model, Session};
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Instant;

pub struct ChatArgs {
    pub system: Option<String>,
    /// One JSON object per turn instead of the streamed answer and a stats line.
    pub json: bool,
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(model: Arc<Model>, a: ChatArgs, gen: GenerateOptions) -> anyhow_lite::Result<()> {
    let (tx, lines) = std::sync::mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    let mut session = Session::new(model.clone())?;
    let mut chat = Conversation::new(a.system.as_deref());
    // Positions prefilled for the message being typed (its images, the history).
    let mut ahead = 0;
    let mut turn = 0;
    let mut stdout = std::io::stdout();
    for (line, at) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" {
            break;
        }
        if line == "/reset" {
            session.reset();
            chat.reset();
            ahead = 0;
            continue;
        }
        if let Some(path) = line.strip_prefix("/image ") {
            // A bad image is reported and left out; the conversation goes on.
            let pending = match model.encode_image(ImageInput::File(path.trim().into())) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    continue;
                }
            };
            chat.attach(pending);
            match chat
                .prompt(&model, "", true)
                .and_then(|parts| session.feed_pending_reusing(&parts))
            {
                Ok(r) => ahead = r.reused + r.fed,
                Err(e) => {
                    eprintln!("error: {e}");
                    chat.detach_last();
                }
            }
            continue;
        }
        turn += 1;
        let t = Instant::now();
        // The oldest exchanges go, one at a time, until the prompt and an answer of
        // --max-tokens fit the context: the chat goes on, its start forgotten.
        let fed = chat.fit(&model, line, gen.max_tokens, |parts| {
            session.feed_pending_reusing(parts)
        });
        let (dropped, reuse) = match fed {
            Ok(r) => r,
            Err(e) => {
                // The turn is not in the conversation; the next one feeds what differs.
                eprintln!("error: {e}");
                continue;
            }
        };
        let prefill_ms = ms(t.elapsed());
        let first_token_ms = ms(at.elapsed());
        let g = session.generate(&[], &gen, |piece, _| {
            if !a.json {
                print!("{piece}");
                let _ = stdout.flush();
            }
            true
        });
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                eprintln!("\nerror: {e}");
                continue;
            }
        };
        let n_images = chat.attached();
        chat.push_exchange(line, &g.text);
        let prompt = reuse.reused + reuse.fed;
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "turn": turn, "text": g.text, "tokens": g.tokens.len(),
                    "images": n_images, "prompt_positions": prompt,
                    "reused": reuse.reused, "fed": reuse.fed, "prefilled_ahead": ahead,
                    "dropped_turns": dropped,
                    "prefill_ms": prefill_ms, "first_token_ms": first_token_ms,
                    "decode_tok_s": g.decode_tok_s(), "context_positions": session.len(),
                    "speculation": g.speculation.to_json(),
                })
            );
        } else {
            println!();
            let typed = match ahead {
                0 => String::new(),
                n => format!(" ({n} of them prefilled while the message was typed)"),
            };
            let forgot = match dropped {
                0 => String::new(),
                1 => ", its oldest exchange dropped to fit the context".to_string(),
                n => format!(", its {n} oldest exchanges dropped to fit the context"),
            };
            eprintln!(
                "[turn {turn}: {prompt}-position prompt{forgot}, {} held already{typed}, {} fed in {prefill_ms:.0} ms | first token {first_token_ms:.0} ms after the message | {} tokens at {:.1} tok/s{} | {} of {} positions used]",
                reuse.reused,
                reuse.fed,
                g.tokens.len(),
                g.decode_tok_s(),
                g.speculation.describe(),
                session.len(),
                model.ctx
            );
        }
        ahead = 0;
    }
    Ok(())
}
