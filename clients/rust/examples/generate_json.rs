//! Streams a JSON-schema-constrained generation to stdout.
//!
//! ```text
//! cargo run --example generate_json -- [ADDR]
//! ```
//!
//! The address comes from the first argument, else `ANANKE_ADDR`, else
//! `http://127.0.0.1:50051`. `ANANKE_API_KEY`, when set, is sent as a bearer
//! token.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use ananke_client::pb::GenerationRequest;
use ananke_client::{Client, ClientOptions, GenerationEvent, constraint};

const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "maxLength": 24},
    "language": {"enum": ["rust", "zig", "python"]},
    "stars": {"type": "integer", "minimum": 0, "maximum": 100000}
  },
  "required": ["name", "language", "stars"],
  "additionalProperties": false
}"#;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ANANKE_ADDR").ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let mut options = ClientOptions::new()
        .timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(10));
    if let Ok(key) = std::env::var("ANANKE_API_KEY") {
        options = options.api_key(key);
    }
    let client = Client::connect_with(addr, options).await?;

    let request = GenerationRequest::from_prompt(
        "A popular open source project, described as JSON with its name, \
         language and number of stars:\n",
    )
    .with_constraint(constraint::json_schema(SCHEMA).named("project"))
    .with_max_tokens(128)
    .with_context("project.json", "json");

    let mut stream = client.generate_stream(request).await?;
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = stream.message().await? {
        match event {
            GenerationEvent::Started(started) => {
                eprintln!("request {} on {}", started.request_id, started.model_id);
            }
            GenerationEvent::Chunk(chunk) => {
                stdout.write_all(chunk.text.as_bytes())?;
                stdout.flush()?;
            }
            GenerationEvent::Finished(finished) => {
                writeln!(stdout)?;
                eprintln!(
                    "finished: {:?}, {} tokens",
                    finished.finish_reason(),
                    finished.usage.unwrap_or_default().completion_tokens
                );
            }
        }
    }
    Ok(())
}
