//! The generation thread: one model, one request at a time, fed by a
//! bounded queue.
//!
//! Generation is a long, CPU-bound loop; run on the async runtime it would
//! stall every other connection. So it lives on a thread of its own, and
//! the HTTP side only puts jobs in the queue and relays what comes back.
//! The queue is bounded: a full one is a 503 at once rather than a wait
//! without end. A reply goes back piece by piece over a channel; when the
//! client goes away the channel closes, and the next token notices and
//! stops the generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use data::Tokenizer;
use data::tokenizer::{IM_END, TextStream};
use data::util::SplitMix64;
use kernels::Backend;
use model::{GenerateOptions, Gpt, Sampling, generate};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::FinishReason;

/// One request's generation.
pub struct Job {
    /// The chat template's ids: the conversation and an opened assistant turn.
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Texts that end the reply (not included).
    pub stop: Vec<String>,
    /// Where the reply goes, as it is made.
    pub reply: UnboundedSender<Piece>,
}

/// What goes back to the request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Whole characters of the reply.
    Text(String),
    /// The end, with how many tokens were generated.
    Done { finish: FinishReason, completion_tokens: usize },
}

/// Counts for `/health`.
#[derive(Default)]
pub struct Stats {
    /// Jobs waiting in the queue or running.
    pub pending: AtomicUsize,
    pub completed: AtomicUsize,
    /// Jobs stopped (or never started) because their client went away.
    pub cancelled: AtomicUsize,
    pub generated_tokens: AtomicUsize,
}

/// Starts the generation thread; returns the queue's sending end.
pub fn start<B: Backend>(model: Gpt<B>, tokenizer: Tokenizer, queue: usize, stats: Arc<Stats>) -> SyncSender<Job> {
    let (jobs, inbox) = sync_channel(queue);
    std::thread::Builder::new()
        .name("generation".into())
        .spawn(move || serve_jobs(model, tokenizer, inbox, stats))
        .expect("a thread starts");
    jobs
}

fn serve_jobs<B: Backend>(model: Gpt<B>, tokenizer: Tokenizer, inbox: Receiver<Job>, stats: Arc<Stats>) {
    for job in inbox {
        let cancelled = job.reply.is_closed() || !run(&model, &tokenizer, job, &stats);
        let counter = if cancelled { &stats.cancelled } else { &stats.completed };
        counter.fetch_add(1, Ordering::Relaxed);
        stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Generates one reply; false if its client went away first.
fn run<B: Backend>(model: &Gpt<B>, tokenizer: &Tokenizer, job: Job, stats: &Stats) -> bool {
    let end_of_turn = [tokenizer.token_id(IM_END), Some(tokenizer.eot_id)];
    let mut text = TextStream::new(tokenizer);
    let mut stop = StopMatcher::new(job.stop);
    let (mut finish, mut gone) = (FinishReason::Length, false);
    let mut rng = SplitMix64(job.seed);
    let options =
        GenerateOptions { max_new_tokens: job.max_tokens, sampling: job.sampling, stop_token: None, use_cache: true };
    let ids = generate(model, &job.prompt, &options, &mut || rng.next_f64(), &mut |id| {
        if end_of_turn.contains(&Some(id)) {
            finish = FinishReason::Stop;
            return false;
        }
        let (ready, stopped) = stop.feed(&text.push(id));
        if (!ready.is_empty() && job.reply.send(Piece::Text(ready)).is_err()) || job.reply.is_closed() {
            gone = true;
            return false;
        }
        if stopped {
            finish = FinishReason::Stop;
        }
        !stopped
    });
    stats.generated_tokens.fetch_add(ids.len(), Ordering::Relaxed);
    if gone {
        return false;
    }
    // Bytes of a character the reply ended inside go out too (as U+FFFD),
    // through the stop texts like the rest. The end of turn counts as a
    // generated token, as it was one.
    let (mut rest, stopped) = stop.feed(&text.finish());
    if stopped {
        finish = FinishReason::Stop;
    } else {
        rest.push_str(&stop.finish());
    }
    (rest.is_empty() || job.reply.send(Piece::Text(rest)).is_ok())
        && job.reply.send(Piece::Done { finish, completion_tokens: ids.len() }).is_ok()
}

/// Cuts a reply at the first stop text, holding back whatever might be the
/// start of one until the next piece shows whether it is: a client must
/// never receive text that a stop text then takes back.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// The text that is safe to send now, and whether a stop text appeared
    /// (the reply then ends before it).
    pub fn feed(&mut self, piece: &str) -> (String, bool) {
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let ready = self.held[..at].to_string();
            self.held.clear();
            return (ready, true);
        }
        // The longest end of `held` that begins some stop text stays held.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.held[i..])))
            .unwrap_or(self.held.len());
        let ready = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        (ready, false)
    }

    /// What is still held when the reply ends without a stop text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        for piece in pieces {
            let (ready, stopped) = matcher.feed(piece);
            sent.push(ready);
            if stopped {
                return (sent, true);
            }
        }
        sent.push(matcher.finish());
        (sent, false)
    }

    #[test]
    fn a_stop_text_across_pieces_is_never_sent() {
        // "END" arrives as "E", "N", "D": the E and N are held, then dropped.
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            (vec!["ab".into(), "c".into(), "".into(), "".into()], true)
        );
        // A false start is released as soon as it cannot be a stop text.
        assert_eq!(run(&["END"], &["E", "Nx"]), (vec!["".into(), "ENx".into(), "".into()], false));
        // The earliest of several wins; multi-byte text is cut at characters.
        assert_eq!(run(&["。", "x"], &["你好。再见x"]).0, ["你好"]);
        assert_eq!(run(&["好吗"], &["你好", "吗"]).0, ["你", ""]);
        // No stop texts: everything goes at once.
        assert_eq!(run(&[], &["a", "b"]), (vec!["a".into(), "b".into(), "".into()], false));
        assert_eq!(run(&[""], &["a"]), (vec!["a".into(), "".into()], false), "an empty stop text is ignored");
    }
}
