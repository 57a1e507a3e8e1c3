//! Integration tests against a live Ananke server whose address is in
//! `ANANKE_ADDR` (for example `http://127.0.0.1:50051`). Without it every test
//! prints why and returns: the Python harness (tests/test_rust_client.py)
//! starts the real server and sets the variable.

use std::io::Write;
use std::time::Duration;

use ananke_client::pb::{
    ChatMessage, CheckVerdict, ConstraintKind, FinishReason, GenerationRequest,
    GetModelInfoResponse,
};
use ananke_client::{
    Client, ClientOptions, Code, GenerationEvent, GenerationResult, ServingStatus, constraint,
};
use tokio::sync::{Mutex, MutexGuard};
use tokio_stream::StreamExt;

/// Calls run one test at a time so a small CPU server is not overloaded.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The server's address, or `None` (with a message) when the test must skip.
fn live_addr() -> Option<String> {
    match std::env::var("ANANKE_ADDR") {
        Ok(addr) if !addr.trim().is_empty() => Some(addr),
        _ => {
            // Written to the real stderr, past libtest's output capture, so the
            // skip shows even though the test passes.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: ANANKE_ADDR is not set; this test needs a live Ananke server \
                 (tests/test_rust_client.py starts one and sets it)"
            );
            None
        }
    }
}

/// A connected client plus the serialisation guard, or `None` to skip.
async fn live_client() -> Option<(Client, MutexGuard<'static, ()>)> {
    let addr = live_addr()?;
    let guard = SERIAL.lock().await;
    let options = ClientOptions::new()
        .timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(20));
    let client = Client::connect_with(addr.clone(), options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    Some((client, guard))
}

async fn model_info(client: &Client) -> GetModelInfoResponse {
    client.model_info().await.expect("GetModelInfo")
}

/// `wanted` capped at the server's max_tokens limit.
fn capped(info: &GetModelInfoResponse, wanted: u32) -> u32 {
    if info.max_tokens_limit == 0 {
        wanted
    } else {
        wanted.min(info.max_tokens_limit)
    }
}

const PERSON_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 20},
    "age": {"type": "integer", "minimum": 0, "maximum": 120}
  },
  "required": ["name", "age"],
  "additionalProperties": false
}"#;

#[tokio::test]
async fn health_and_model_info() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    assert_eq!(client.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        client.health("ananke.v1.InferenceService").await.unwrap(),
        ServingStatus::Serving
    );
    let stats = client.server_stats().await.expect("GetServerStats");
    assert!(stats.uptime.expect("uptime").seconds >= 0);
    let info = model_info(&client).await;
    assert!(!info.model_id.is_empty(), "model_id is empty");
    assert!(info.vocab_size > 0, "vocab_size is 0");
    assert!(!info.eos_token_ids.is_empty(), "no eos_token_ids");
    assert!(
        info.supported_constraint_kinds()
            .any(|k| k == ConstraintKind::JsonSchema),
        "JSON Schema not supported: {:?}",
        info.supported_constraint_kinds
    );
}

#[tokio::test]
async fn json_schema_output_is_a_valid_object() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    let request = GenerationRequest::from_prompt("A person described as JSON:\n")
        .with_constraint(constraint::json_schema(PERSON_SCHEMA).named("person"))
        .with_max_tokens(capped(&info, 96))
        .with_request_id("rust-json-1")
        .with_context("person.json", "json");
    let response = client.generate(request).await.expect("Generate");

    let value: serde_json::Value = response
        .json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", response.text));
    let object = value.as_object().expect("a JSON object");
    let name = object["name"].as_str().expect("name is a string");
    assert!((1..=20).contains(&name.chars().count()), "name {name:?}");
    let age = object["age"].as_i64().expect("age is an integer");
    assert!((0..=120).contains(&age), "age {age}");
    assert!(
        object.keys().all(|k| k == "name" || k == "age"),
        "{object:?}"
    );

    assert_eq!(response.request_id, "rust-json-1");
    assert_ne!(response.finish_reason, FinishReason::MaxTokens);
    assert_eq!(response.check_verdict(), "SATISFIED");
    let provenance = response.provenance;
    assert_eq!(
        provenance.check.as_ref().expect("check").verdict(),
        CheckVerdict::Satisfied
    );
    assert_eq!(provenance.request_id, "rust-json-1");
    // Provenance renders as proto3 JSON (camelCase names, enum value names).
    let json = serde_json::to_value(&provenance).expect("provenance JSON");
    assert_eq!(json["requestId"], "rust-json-1");
    assert_eq!(
        json["constraints"]["items"][0]["kind"],
        "CONSTRAINT_KIND_JSON_SCHEMA"
    );
}

#[tokio::test]
async fn structural_region_inside_free_text() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    // Free text up to the first space (the trigger), then three digits and a
    // full stop; one region at most, so no later space either.
    let region = constraint::region(" ", constraint::regex("[0-9]{3}"), ".").named("number");
    let request = GenerationRequest::from_prompt("The cat sat on the mat. The dog")
        .with_constraint(constraint::structural([region], 1, 1).named("prose"))
        .with_max_tokens(capped(&info, 16));
    let response = client.generate(request).await.expect("Generate");
    let text = &response.text;
    let shape = regex::Regex::new(r"^[^ ]* [0-9]{3}\.[^ ]*$").unwrap();
    assert!(
        shape.is_match(text),
        "{text:?} is not free text, one region, free text"
    );
    let kinds: Vec<i32> = response
        .provenance
        .constraints
        .expect("constraints")
        .items
        .iter()
        .map(|item| item.kind)
        .collect();
    assert_eq!(kinds, [ConstraintKind::Structural as i32]);
}

#[tokio::test]
async fn regex_output_matches_in_full() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    let pattern = r"(get|set)_[a-z]{2,10}\(\)";
    let request = GenerationRequest::from_prompt("A Python accessor call: obj.")
        .with_constraint(constraint::regex(pattern).named("accessor"))
        .with_max_tokens(capped(&info, 32));
    let response = client.generate(request).await.expect("Generate");

    let full = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    assert!(
        full.is_match(&response.text),
        "{:?} does not match {pattern}",
        response.text
    );
    assert!(!response.token_ids.is_empty());
    // The usage may also count an end-of-sequence token that token_ids omit.
    let completion_tokens = response.usage.completion_tokens as usize;
    assert!(
        (response.token_ids.len()..=response.token_ids.len() + 1).contains(&completion_tokens),
        "usage says {completion_tokens} tokens, token_ids has {}",
        response.token_ids.len()
    );
}

#[tokio::test]
async fn stream_events_come_in_order() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let options = ["alpha", "beta", "gamma"];
    let request = GenerationRequest::from_prompt("Pick a Greek letter: ")
        .with_constraint(constraint::choice(options))
        .with_request_id("rust-stream-1");
    let mut stream = client
        .generate_stream(request)
        .await
        .expect("GenerateStream");

    match stream.message().await.expect("first event") {
        Some(GenerationEvent::Started(started)) => {
            assert_eq!(started.request_id, "rust-stream-1");
            assert!(!started.model_id.is_empty());
            assert_eq!(started.constraint_digest.len(), 64, "sha256 hex digest");
        }
        other => panic!("expected Started, got {other:?}"),
    }
    let result = stream.collect().await.expect("rest of the stream");
    assert!(
        options.contains(&result.text.as_str()),
        "{:?} is not an option",
        result.text
    );
    assert!(result.usage.completion_tokens > 0);
    assert_eq!(result.provenance.request_id, "rust-stream-1");
}

#[tokio::test]
async fn bad_schema_is_json_schema_invalid() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let bad = || constraint::json_schema(r#"{"type": "nope"}"#).named("bad");

    let err = client
        .generate(GenerationRequest::from_prompt("x").with_constraint(bad()))
        .await
        .expect_err("a bad schema must fail");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(err.reason(), Some("JSON_SCHEMA_INVALID"), "{err}");
    assert!(
        err.field_violations()
            .iter()
            .any(|v| v.field.contains("constraints[0]")),
        "no field violation names constraints[0]: {err}"
    );

    // The streaming call reports it too, at the call or as its first item.
    let request = GenerationRequest::from_prompt("x").with_constraint(bad());
    let err = match client.generate_stream(request).await {
        Err(err) => err,
        Ok(mut stream) => stream.message().await.expect_err("a bad schema must fail"),
    };
    assert_eq!(err.reason(), Some("JSON_SCHEMA_INVALID"), "{err}");

    let verdicts = client
        .validate_constraints([constraint::regex("[a-z]+"), bad()])
        .await
        .expect("ValidateConstraints");
    assert!(!verdicts.ok);
    assert!(verdicts.digest.is_empty());
    assert!(verdicts.verdicts[0].ok);
    let verdict = &verdicts.verdicts[1];
    assert!(!verdict.ok);
    assert_eq!(verdict.name, "bad");
    assert_eq!(verdict.kind(), ConstraintKind::JsonSchema);
    assert_eq!(
        verdict.error.as_ref().expect("error").reason,
        "JSON_SCHEMA_INVALID"
    );
}

#[tokio::test]
async fn dropping_a_stream_cancels_it() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    let request = GenerationRequest::from_prompt("Once upon a time")
        .with_max_tokens(capped(&info, 512))
        .with_request_id("rust-cancel-1");
    let before = client.server_stats().await.expect("GetServerStats");
    let mut stream = client
        .generate_stream(request)
        .await
        .expect("GenerateStream");
    let mut chunks = 0;
    // Read through the `Stream` impl this time.
    while let Some(event) = stream.next().await {
        match event.expect("event") {
            GenerationEvent::Started(_) => {}
            GenerationEvent::Chunk(_) => {
                chunks += 1;
                break;
            }
            GenerationEvent::Finished(f) => panic!("finished before any chunk: {f:?}"),
        }
    }
    assert_eq!(chunks, 1);
    drop(stream);

    // The engine lets go of the request and the server does not count it as
    // completed. (Which counter it lands in, cancelled or failed, depends on
    // how the server sees the RST_STREAM, so only their sum is checked.)
    let before = before.generations.unwrap_or_default();
    let mut stats = client.server_stats().await.expect("GetServerStats");
    for _ in 0..100 {
        let now = stats.generations.unwrap_or_default();
        let ended = now.cancelled + now.failed > before.cancelled + before.failed;
        if ended && stats.engine_unfinished_requests == 0 && stats.active_generations == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = client.server_stats().await.expect("GetServerStats");
    }
    let now = stats.generations.unwrap_or_default();
    assert!(
        now.cancelled + now.failed > before.cancelled + before.failed,
        "the dropped stream was not counted as ended: {stats:?}"
    );
    assert_eq!(
        now.completed, before.completed,
        "it ran to completion: {stats:?}"
    );
    assert_eq!(stats.engine_unfinished_requests, 0, "{stats:?}");
    assert_eq!(stats.active_generations, 0, "{stats:?}");

    // The server is still fine: a follow-up call completes.
    let follow_up = GenerationRequest::from_prompt("Say yes or no: ")
        .with_constraint(constraint::choice(["yes", "no"]));
    let response = client
        .with_timeout(Some(Duration::from_secs(120)))
        .generate(follow_up)
        .await
        .expect("follow-up Generate after a cancelled stream");
    assert!(
        ["yes", "no"].contains(&response.text.as_str()),
        "{:?}",
        response.text
    );
}

#[tokio::test]
async fn deadline_aborts_the_call() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    let request =
        GenerationRequest::from_prompt("Write a long story:").with_max_tokens(capped(&info, 512));
    let err = client
        .with_timeout(Some(Duration::from_millis(200)))
        .generate(request)
        .await
        .expect_err("512 tokens cannot come in 200 ms");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
}

#[tokio::test]
async fn candidates_logprobs_and_tokenize() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    let prompt = "A person described as JSON:\n";
    let request = GenerationRequest::from_prompt(prompt)
        .with_constraint(constraint::json_schema(PERSON_SCHEMA).named("person"))
        .with_max_tokens(capped(&info, 48))
        .with_n(2)
        .with_temperature(0.8)
        .with_seed(4)
        .with_logprobs(2);
    let result = client.generate(request.clone()).await.expect("Generate");
    assert_eq!(result.candidates.len(), 2);
    for (i, candidate) in result.candidates.iter().enumerate() {
        assert_eq!(candidate.index as usize, i);
        assert_eq!(candidate.logprobs.len(), candidate.token_ids.len());
        let provenance = candidate.provenance.as_ref().expect("provenance");
        assert_eq!(provenance.candidate_index, candidate.index);
        let verdict = provenance.check.as_ref().expect("check").verdict();
        assert!(
            matches!(verdict, CheckVerdict::Satisfied | CheckVerdict::Incomplete),
            "{verdict:?}"
        );
        for position in &candidate.logprobs {
            assert!(position.token.as_ref().expect("token").logprob <= 0.0);
            assert!((1..=2).contains(&position.top.len()), "{position:?}");
        }
    }
    assert_eq!(result.text, result.candidates[0].text);
    assert_eq!(result.logprobs, result.candidates[0].logprobs);

    let streamed = client
        .generate_stream(request)
        .await
        .expect("GenerateStream")
        .collect()
        .await
        .expect("collect");
    let texts = |r: &GenerationResult| {
        r.candidates
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
    };
    // With fast-forward on (the default) multi-token steps draw randomness
    // differently, so a seed does not replay: compare the shape, not the text.
    assert_eq!(texts(&streamed).len(), texts(&result).len());

    let tokens = client.tokenize(prompt, true).await.expect("Tokenize");
    assert_eq!(tokens.count, result.usage.prompt_tokens);
    assert_eq!(tokens.tokens.len(), tokens.token_ids.len());
    let text = client
        .detokenize(tokens.token_ids.clone(), false)
        .await
        .expect("Detokenize");
    assert_eq!(text, prompt);
    let chat = client
        .tokenize_chat([ChatMessage::user("hi")], false)
        .await
        .expect("Tokenize chat");
    assert!(
        chat.rendered_text.contains("hi"),
        "{:?}",
        chat.rendered_text
    );
}

#[tokio::test]
async fn sampling_controls_apply() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    let info = model_info(&client).await;
    let to_eos = |mut request: GenerationRequest, bias: f32| {
        for &eos in &info.eos_token_ids {
            request = request.with_logit_bias(eos, bias);
        }
        request
    };
    let request = GenerationRequest::from_prompt("def main():\n")
        .with_max_tokens(6)
        .with_ignore_eos(true);
    let full = client.generate(request).await.expect("ignore_eos");
    assert_eq!(full.usage.completion_tokens, 6);
    assert_eq!(full.finish_reason, FinishReason::MaxTokens);
    let request = to_eos(
        GenerationRequest::from_prompt("def main():\n")
            .with_max_tokens(12)
            .with_min_tokens(4),
        100.0,
    );
    let held = client.generate(request).await.expect("min_tokens with logit_bias");
    assert_eq!(held.usage.completion_tokens, 5, "four tokens, then EOS");
    assert_eq!(held.finish_reason, FinishReason::EndOfSequence);

    let err = client
        .generate(GenerationRequest::from_prompt("x").with_n(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.reason(), Some("CANDIDATES_OUT_OF_RANGE"));
    let err = client
        .detokenize([info.vocab_size], false)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some("TOKEN_ID_INVALID"));
}

#[tokio::test]
async fn lora_calls_on_a_server_without_lora() {
    let Some((client, _guard)) = live_client().await else {
        return;
    };
    // The shared live server runs without --enable-lora (tests/test_lora_e2e.py
    // covers adapters on a server with LoRA on).
    let listed = client.list_adapters().await.expect("ListAdapters");
    assert!(!listed.lora_enabled);
    assert!(listed.adapters.is_empty());
    assert_eq!(listed.max_adapters, 0);

    let request = GenerationRequest::from_prompt("Hello")
        .with_max_tokens(4)
        .with_adapter("style");
    let err = client
        .generate(request)
        .await
        .expect_err("an adapter on a server without LoRA must fail");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(err.reason(), Some("LORA_DISABLED"), "{err}");

    let err = client
        .load_adapter("style", "/nonexistent")
        .await
        .expect_err("loading on a server without LoRA must fail");
    assert_eq!(err.reason(), Some("LORA_DISABLED"), "{err}");
    let err = client
        .unload_adapter("style")
        .await
        .expect_err("unloading on a server without LoRA must fail");
    assert_eq!(err.reason(), Some("LORA_DISABLED"), "{err}");

    // The base model (no adapter) is unaffected.
    let base = client
        .generate(GenerationRequest::from_prompt("Hello").with_max_tokens(4))
        .await
        .expect("base generation");
    assert_eq!(base.provenance.adapter, "");
}
