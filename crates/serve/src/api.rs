//! The OpenAI chat-completions wire format: what a request may say, what
//! the replies look like, and errors in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`).
//!
//! Fields we do not know are ignored, as OpenAI's own server does, so
//! clients that send more (`n: 1`, `presence_penalty`, …) still work;
//! fields we know with the wrong type are a 400 that names them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use data::chat::{Message, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Accepted and echoed back; this server has one model.
    pub model: Option<String>,
    pub messages: Vec<MessageIn>,
    /// Most tokens to generate (`max_completion_tokens` is its newer name).
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    /// 0 = greedy. OpenAI's range is [0, 2].
    pub temperature: Option<f64>,
    /// Nucleus sampling: the likeliest tokens whose probabilities sum to p.
    pub top_p: Option<f64>,
    /// Not OpenAI's (an extension, as in vLLM): only the k likeliest tokens.
    pub top_k: Option<usize>,
    /// Text that ends the reply where it appears (not included).
    pub stop: Option<Stop>,
    /// The sampler's seed: the same seed and request give the same reply.
    pub seed: Option<u64>,
    /// Server-sent events, one chunk per piece of text.
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// A last chunk with the token counts, before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: Role,
    pub content: Content,
}

/// A message's content: a string, or OpenAI's list of parts (text only).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl MessageIn {
    pub fn into_message(self, index: usize) -> Result<Message, ApiError> {
        let content = match self.content {
            Content::Text(text) => text,
            Content::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(piece)) => text.push_str(&piece),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{index}].content: only text parts are supported, not {kind:?}"),
                                "messages",
                            ));
                        }
                    }
                }
                text
            }
        };
        Ok(Message { role: self.role, content })
    }
}

/// Why a reply ended: `stop` (the model ended its turn, or a stop text
/// appeared) or `length` (it reached `max_tokens` or the context).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// The parts every reply to one request shares.
pub struct ReplyHeader {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ReplyHeader {
    /// The whole reply, without streaming.
    pub fn completion(&self, text: &str, finish: FinishReason, usage: Usage) -> Value {
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish }],
            "usage": usage,
        })
    }

    /// One streamed chunk: `delta` is `{"role": …}` first, then `{"content": …}`, then `{}` with the reason.
    pub fn chunk(&self, delta: Value, finish: Option<FinishReason>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    }

    /// The last chunk when the client asked for usage: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [], "usage": usage,
        })
    }
}

/// An error as OpenAI sends it, with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    /// Seconds a client should wait before trying again (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request is malformed or asks for what cannot be done.
    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        let param = (!param.is_empty()).then_some(param);
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            retry_after: None,
        }
    }

    pub fn new(status: StatusCode, message: impl Into<String>, kind: &'static str) -> Self {
        Self { status, message: message.into(), kind, param: None, retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": null } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
