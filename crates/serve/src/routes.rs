//! The HTTP side: routes, request checks, and relaying the generation
//! thread's pieces as one JSON reply or as server-sent events.
//!
//! ```text
//! GET  /                      the web chat (chat.html, built into the binary)
//! GET  /health                queue and counters
//! GET  /v1/models             the one model
//! POST /v1/chat/completions   OpenAI's chat completions, streaming or not
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use data::Tokenizer;
use data::chat::{Message, Role, fit_prompt};
use futures_util::stream::{self, Stream, StreamExt};
use model::Sampling;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::api::{ApiError, ChatRequest, FinishReason, ReplyHeader, Usage};
use crate::worker::{Job, Piece, Stats};

/// What a request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The most tokens one reply may have (`max_tokens` above it is lowered to it).
    pub max_tokens: usize,
    /// The largest request body, in bytes.
    pub body_bytes: usize,
    /// Jobs the queue holds (the one running not counted).
    pub queue: usize,
}

/// Everything a handler needs, shared.
pub struct Server {
    pub jobs: SyncSender<Job>,
    pub tokenizer: Tokenizer,
    pub context_length: usize,
    pub model_name: String,
    pub limits: Limits,
    pub stats: Arc<Stats>,
    pub started: u64,
    next_id: AtomicU64,
}

impl Server {
    pub fn new(
        jobs: SyncSender<Job>,
        tokenizer: Tokenizer,
        context_length: usize,
        model_name: String,
        limits: Limits,
        stats: Arc<Stats>,
    ) -> Self {
        Self { jobs, tokenizer, context_length, model_name, limits, stats, started: now(), next_id: AtomicU64::new(1) }
    }
}

pub fn router(server: Arc<Server>) -> Router {
    let body_bytes = server.limits.body_bytes;
    Router::new()
        .route("/", get(|| async { Html(include_str!("chat.html")) }))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes))
        .with_state(server)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn health(State(server): State<Arc<Server>>) -> axum::Json<Value> {
    let stats = &server.stats;
    axum::Json(json!({
        "status": "ok",
        "model": server.model_name,
        "pending": stats.pending.load(Ordering::Relaxed),
        "queue_capacity": server.limits.queue,
        "completed": stats.completed.load(Ordering::Relaxed),
        "cancelled": stats.cancelled.load(Ordering::Relaxed),
        "generated_tokens": stats.generated_tokens.load(Ordering::Relaxed),
    }))
}

async fn models(State(server): State<Arc<Server>>) -> axum::Json<Value> {
    let model = json!({ "id": server.model_name, "object": "model", "created": server.started, "owned_by": "minigpt" });
    axum::Json(json!({ "object": "list", "data": [model] }))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {method} {}", uri.path()), "invalid_request_error")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    let message = format!("{} does not take {method}", uri.path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message, "invalid_request_error")
}

async fn chat_completions(
    State(server): State<Arc<Server>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than this server's limit of {} bytes", server.limits.body_bytes),
            "invalid_request_error",
        ),
        status => ApiError::new(status, rejection.body_text(), "invalid_request_error"),
    })?;
    let request: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid chat request: {e}"), ""))?;
    let (stream, include_usage) = (request.stream, request.stream_options.as_ref().is_some_and(|o| o.include_usage));
    let (job, prompt_tokens, receiver) = prepare(&server, request)?;
    enqueue(&server, job)?;
    let header = Arc::new(ReplyHeader {
        id: format!("chatcmpl-{}-{}", server.started, server.next_id.fetch_add(1, Ordering::Relaxed)),
        created: now(),
        model: server.model_name.clone(),
    });
    if stream {
        let events = sse_events(receiver, header, prompt_tokens, include_usage);
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let (text, finish, completion_tokens) = collect(receiver).await?;
    Ok(axum::Json(header.completion(&text, finish, Usage::new(prompt_tokens, completion_tokens))).into_response())
}

/// Checks the request and turns it into a job: the chat template's prompt,
/// fitted to the context as `chat` fits it.
fn prepare(server: &Server, request: ChatRequest) -> Result<(Job, usize, UnboundedReceiver<Piece>), ApiError> {
    let mut history = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.into_iter().enumerate() {
        history.push(message.into_message(i)?);
    }
    check_turns(&history)?;
    let limit = server.limits.max_tokens;
    let max_tokens = request.max_completion_tokens.or(request.max_tokens).unwrap_or(limit);
    if max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens must be at least 1", "max_tokens"));
    }
    let temperature = request.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(format!("temperature is {temperature}, expected 0 to 2"), "temperature"));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!("top_p is {top_p}, expected more than 0 and at most 1"), "top_p"));
    }
    let stop = request.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > 4 {
        return Err(ApiError::invalid(format!("stop has {} texts, at most 4 are allowed", stop.len()), "stop"));
    }
    let max_tokens = max_tokens.min(limit);
    // Room for the reply, as `chat` leaves it: the oldest exchanges go first.
    let context = server.context_length;
    let room = context.saturating_sub(max_tokens.min(context / 2));
    let prompt = fit_prompt(&server.tokenizer, &mut history, room);
    let sampling = Sampling {
        temperature,
        top_k: request.top_k.filter(|&k| k > 0),
        top_p: (top_p < 1.0).then_some(top_p),
        repetition_penalty: 1.0,
    };
    let seed =
        request.seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let (reply, receiver) = unbounded_channel();
    let prompt_tokens = prompt.len();
    Ok((Job { prompt, max_tokens, sampling, seed, stop, reply }, prompt_tokens, receiver))
}

/// A conversation the model can answer: an optional system prompt, then
/// user and assistant turns in turn, ending with the user's; none empty.
fn check_turns(history: &[Message]) -> Result<(), ApiError> {
    if history.is_empty() {
        return Err(ApiError::invalid("messages is empty: send at least one user message", "messages"));
    }
    let start = usize::from(history[0].role == Role::System);
    for (i, message) in history.iter().enumerate() {
        if message.content.trim().is_empty() && message.role != Role::System {
            return Err(ApiError::invalid(format!("messages[{i}].content is empty"), "messages"));
        }
        let expected = if i < start {
            Role::System
        } else if (i - start) % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if message.role != expected {
            return Err(ApiError::invalid(
                format!(
                    "messages[{i}] is a {} message where a {} one belongs (system first, then user and assistant in turn)",
                    message.role.as_str(),
                    expected.as_str()
                ),
                "messages",
            ));
        }
    }
    if history.last().is_some_and(|m| m.role != Role::User) {
        return Err(ApiError::invalid("the last message must be the user's", "messages"));
    }
    Ok(())
}

/// Queues the job, or says at once that the queue is full.
fn enqueue(server: &Server, job: Job) -> Result<(), ApiError> {
    server.stats.pending.fetch_add(1, Ordering::Relaxed);
    server.jobs.try_send(job).map_err(|e| {
        server.stats.pending.fetch_sub(1, Ordering::Relaxed);
        let (status, message) = match e {
            TrySendError::Full(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy: every place in its queue is taken; retry shortly",
            ),
            TrySendError::Disconnected(_) => (StatusCode::SERVICE_UNAVAILABLE, "the generation thread has stopped"),
        };
        ApiError { retry_after: Some(1), ..ApiError::new(status, message, "server_error") }
    })
}

/// The whole reply, for a request without `stream`.
async fn collect(mut receiver: UnboundedReceiver<Piece>) -> Result<(String, FinishReason, usize), ApiError> {
    let mut text = String::new();
    while let Some(piece) = receiver.recv().await {
        match piece {
            Piece::Text(more) => text.push_str(&more),
            Piece::Done { finish, completion_tokens } => return Ok((text, finish, completion_tokens)),
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the generation stopped without finishing", "server_error"))
}

/// The streamed reply: a chunk opening the assistant's message, one per
/// piece of text, one with the finish reason, the usage if asked, then
/// `[DONE]`. Dropped when the client goes away, which closes the channel
/// and stops the generation.
fn sse_events(
    receiver: UnboundedReceiver<Piece>,
    header: Arc<ReplyHeader>,
    prompt_tokens: usize,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let data = |value: Value| Ok(Event::default().data(value.to_string()));
    let opening = data(header.chunk(json!({ "role": "assistant", "content": "" }), None));
    let pieces = stream::unfold((receiver, false), move |(mut receiver, done)| {
        let header = header.clone();
        async move {
            if done {
                return None;
            }
            let events = match receiver.recv().await? {
                Piece::Text(text) => vec![data(header.chunk(json!({ "content": text }), None))],
                Piece::Done { finish, completion_tokens } => {
                    let mut events = vec![data(header.chunk(json!({}), Some(finish)))];
                    if include_usage {
                        events.push(data(header.usage_chunk(Usage::new(prompt_tokens, completion_tokens))));
                    }
                    events.push(Ok(Event::default().data("[DONE]")));
                    return Some((stream::iter(events), (receiver, true)));
                }
            };
            Some((stream::iter(events), (receiver, false)))
        }
    });
    stream::once(async move { opening }).chain(pieces.flatten())
}
