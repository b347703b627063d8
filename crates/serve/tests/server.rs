//! The server on 127.0.0.1 with a tiny random model, driven over plain TCP
//! (so that malformed requests and a client vanishing mid-reply are
//! exactly what the test sends).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::module::Param;
use burn::tensor::Tensor;
use data::Tokenizer;
use data::chat::{Message, Role, prompt_ids};
use data::tokenizer::IM_END;
use kernels::Cpu;
use model::{Gpt, GptConfig};
use serde_json::{Value, json};
use serve::routes::{Limits, Server, router};
use serve::worker::{self, Stats};

fn tokenizer() -> Tokenizer {
    let docs = ["The river Tesk runs past Varnel.", "米拉每天早上在奥斯克烤面包。", "What is 7 plus 5? It is 12."];
    Tokenizer::train((0..30).map(|i| docs[i % 3].to_string()), 300).unwrap()
}

/// A tiny random model, the same in every test, that never ends its turn
/// by itself and writes only whole characters: the rows of `<|im_end|>`,
/// `<|endoftext|>` and of every token that is part of a character (a lone
/// byte of a multi-byte one) are zero, so with the tied head their logits
/// are 0 and greedy decoding finds a larger one. Replies then run to
/// `max_tokens`, long enough to be interrupted, and are valid text.
fn endless_model(tokenizer: &Tokenizer) -> Gpt<Cpu> {
    static SEEDED: Mutex<()> = Mutex::new(());
    let config = GptConfig::tiny(tokenizer.vocab_size()).with_d_model(32).with_n_layers(1).with_context_length(128);
    let device = Default::default();
    let mut model = {
        let _one_at_a_time = SEEDED.lock().unwrap(); // the seed is global to the backend
        <Cpu as burn::tensor::backend::Backend>::seed(&device, 3);
        Gpt::<Cpu>::new(&config, &device)
    };
    let mut table = model.token_emb.weight.val();
    let end_of_turn = [tokenizer.eot_id, tokenizer.token_id(IM_END).unwrap()];
    let silent = (0..tokenizer.vocab_size() as u32)
        .filter(|&id| end_of_turn.contains(&id) || tokenizer.decode(&[id]).contains('\u{FFFD}'));
    for id in silent {
        let id = id as usize;
        table = table.slice_assign([id..id + 1, 0..32], Tensor::zeros([1, 32], &device));
    }
    model.token_emb.weight = Param::from_tensor(table);
    model
}

fn limits() -> Limits {
    Limits { max_tokens: 4000, body_bytes: 4096, queue: 16 }
}

/// Serves `server` on a free port of 127.0.0.1, on a thread of its own.
fn serve(server: Server) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router(Arc::new(server))).await.unwrap();
        });
    });
    address
}

fn start() -> (SocketAddr, Arc<Stats>, Tokenizer) {
    let tokenizer = tokenizer();
    let stats = Arc::new(Stats::default());
    let jobs = worker::start(endless_model(&tokenizer), tokenizer.clone(), limits().queue, stats.clone());
    let server = Server::new(jobs, tokenizer.clone(), 128, "tiny".into(), limits(), stats.clone());
    (serve(server), stats, tokenizer)
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request; the whole response, chunked encoding undone.
fn http(address: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let body =
        if head.to_lowercase().contains("transfer-encoding: chunked") { unchunk(rest) } else { rest.to_string() };
    Reply { status, headers: head.to_string(), body }
}

fn unchunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

fn post(address: SocketAddr, request: &Value) -> (u16, Value) {
    let reply = http(address, "POST", "/v1/chat/completions", &request.to_string());
    (reply.status, serde_json::from_str(&reply.body).unwrap_or(Value::Null))
}

/// The `data:` payloads of a streamed reply.
fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

/// Waits up to a minute for `condition`.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn question(text: &str) -> Value {
    json!([{ "role": "system", "content": "Answer briefly." }, { "role": "user", "content": text }])
}

#[test]
fn streamed_and_whole_replies_agree_and_count_their_tokens() {
    let (address, _, tokenizer) = start();
    let request = json!({ "messages": question("What is 7 plus 5?"), "temperature": 0, "max_tokens": 24, "n": 1, "unknown_field": [1, 2] });
    let (status, whole) = post(address, &request);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    let choice = &whole["choices"][0];
    assert_eq!(
        (choice["message"]["role"].as_str(), choice["finish_reason"].as_str()),
        (Some("assistant"), Some("length"))
    );
    let history = [Message::new(Role::System, "Answer briefly."), Message::new(Role::User, "What is 7 plus 5?")];
    let usage = &whole["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_ids(&tokenizer, &history).len());
    assert_eq!(
        (usage["completion_tokens"].as_u64(), usage["total_tokens"].as_u64()),
        (Some(24), Some(usage["prompt_tokens"].as_u64().unwrap() + 24))
    );

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({ "include_usage": true });
    let reply = http(address, "POST", "/v1/chat/completions", &streaming.to_string());
    assert!(reply.headers.contains("text/event-stream"), "{}", reply.headers);
    let events = events(&reply.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, choice["message"]["content"].as_str().unwrap(), "the chunks add up to the whole reply");
    for chunk in &chunks {
        let piece = chunk["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        assert!(!piece.contains('\u{FFFD}'), "a chunk split a character: {piece:?}");
    }
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks.last().unwrap()["usage"], *usage, "the usage chunk");

    // A stop text ends the reply where it first appears (greedy decoding
    // gives the same text again); a seed makes sampling repeatable.
    assert!(text.chars().count() > 8 && !text.contains('\u{FFFD}'), "{text:?}");
    let stop_at: String = text.chars().skip(3).take(2).collect();
    let request =
        json!({ "messages": question("What is 7 plus 5?"), "temperature": 0, "max_tokens": 24, "stop": [stop_at] });
    let (_, stopped) = post(address, &request);
    assert_eq!(stopped["choices"][0]["message"]["content"].as_str(), Some(&text[..text.find(&stop_at).unwrap()]));
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let sampled = json!({ "messages": question("Hi"), "temperature": 1.0, "top_k": 20, "top_p": 0.9, "seed": 7, "max_tokens": 16 });
    assert_eq!(post(address, &sampled).1["choices"], post(address, &sampled).1["choices"]);
}

#[test]
fn bad_requests_get_openais_error_shape_and_the_right_status() {
    let (address, _, _) = start();
    let error = |reply: Reply| -> (u16, String) {
        let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|_| panic!("not JSON: {}", reply.body));
        assert!(body["error"]["type"].is_string(), "{body}");
        (reply.status, body["error"]["message"].as_str().unwrap().to_string())
    };
    let chat = |body: &str| error(http(address, "POST", "/v1/chat/completions", body));
    let (status, message) = chat("{\"messages\": [");
    assert_eq!(status, 400);
    assert!(message.contains("not a valid chat request"), "{message}");
    let (status, message) = chat(&json!({ "messages": question("hi"), "max_tokens": "many" }).to_string());
    assert!(status == 400 && message.contains("invalid type: string \"many\""), "{message}");
    let (status, message) = chat(&json!({ "messages": [{ "role": "tool", "content": "x" }] }).to_string());
    assert!(status == 400 && message.contains("unknown variant `tool`"), "{message}");
    let (_, message) = chat(&json!({ "messages": [] }).to_string());
    assert!(message.contains("messages is empty"), "{message}");
    let (_, message) = chat(&json!({ "messages": [{ "role": "assistant", "content": "x" }] }).to_string());
    assert!(message.contains("messages[0] is a assistant message where a user one belongs"), "{message}");
    let (_, message) = chat(&json!({ "messages": question("hi"), "temperature": 3 }).to_string());
    assert!(message.contains("temperature is 3, expected 0 to 2"), "{message}");
    let (_, message) = chat(&json!({ "messages": question("hi"), "max_tokens": 0 }).to_string());
    assert!(message.contains("max_tokens must be at least 1"), "{message}");
    let (status, message) = chat(&json!({ "messages": question(&"x".repeat(5000)) }).to_string());
    assert!(status == 413 && message.contains("limit of 4096 bytes"), "{status} {message}");
    assert_eq!(error(http(address, "GET", "/v1/nothing", "")).0, 404);
    assert_eq!(error(http(address, "GET", "/v1/chat/completions", "")).0, 405);

    // A prompt longer than the context is trimmed, not refused.
    let long: Vec<Value> = (0..30)
        .flat_map(|i| {
            [
                json!({ "role": "user", "content": format!("q{i}") }),
                json!({ "role": "assistant", "content": "an answer" }),
            ]
        })
        .chain([json!({ "role": "user", "content": "last" })])
        .collect();
    let (status, reply) = post(address, &json!({ "messages": long, "max_tokens": 8, "temperature": 0 }));
    assert_eq!(status, 200, "{reply}");
    assert!(reply["usage"]["prompt_tokens"].as_u64().unwrap() <= 128 - 8);
    let reply = http(address, "GET", "/", "");
    assert!(reply.status == 200 && reply.body.contains("<title>minigpt chat</title>"));
    let models: Value = serde_json::from_str(&http(address, "GET", "/v1/models", "").body).unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
}

#[test]
fn eight_clients_at_once_are_all_answered() {
    let (address, stats, _) = start();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let request =
                    json!({ "messages": question(&format!("client {i}")), "max_tokens": 12, "stream": i % 2 == 0 });
                http(address, "POST", "/v1/chat/completions", &request.to_string())
            })
        })
        .collect();
    for client in clients {
        let reply = client.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.body.contains("[DONE]") || reply.body.contains("\"chat.completion\""), "{}", reply.body);
    }
    // The counters move just after the last reply is sent.
    eventually("8 completed", || stats.completed.load(Ordering::Relaxed) == 8);
}

#[test]
fn a_client_that_leaves_mid_stream_stops_its_generation() {
    let (address, stats, _) = start();
    let request =
        json!({ "messages": question("Tell me everything."), "max_tokens": 4000, "stream": true, "temperature": 0 });
    let body = request.to_string();
    let mut stream = TcpStream::connect(address).unwrap();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("\"content\"").nth(3).is_none() {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream ended before the test left");
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(stream);
    eventually("the generation stopped", || stats.cancelled.load(Ordering::Relaxed) == 1);
    let generated = stats.generated_tokens.load(Ordering::Relaxed);
    assert!(generated < 4000, "stopped early: {generated} of 4000 tokens");
    assert_eq!(stats.completed.load(Ordering::Relaxed), 0);
}

#[test]
fn a_full_queue_is_a_503_with_retry_after() {
    // A queue of one place and no thread emptying it: the first request
    // takes the place and waits; the second finds the queue full.
    let (jobs, _inbox) = sync_channel(1);
    let tokenizer = tokenizer();
    let limits = Limits { queue: 1, ..limits() };
    let server = Server::new(jobs, tokenizer, 128, "tiny".into(), limits, Arc::new(Stats::default()));
    let address = serve(server);
    let waiting = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        let body = json!({ "messages": question("first") }).to_string();
        stream
            .write_all(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
    });
    std::thread::sleep(Duration::from_millis(500));
    let reply = http(address, "POST", "/v1/chat/completions", &json!({ "messages": question("second") }).to_string());
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.headers.to_lowercase().contains("retry-after: 1"), "{}", reply.headers);
    assert!(reply.body.contains("every place in its queue is taken"));
    waiting.join().unwrap();
}
