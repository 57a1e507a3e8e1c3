//! Sends one JSON-schema constraint through the Rust client and through the C
//! ABI (feature `ffi`) and prints, per path, the constraint digest and the
//! compile-cache outcome from the response's provenance:
//!
//! ```text
//! cargo run --features ffi --example constraint_digest -- ADDR SCHEMA
//! rust <digest> CACHE_OUTCOME_HIT
//! c <digest> CACHE_OUTCOME_HIT
//! ```
//!
//! tests/test_rust_client.py compares them with the Python client's.

use std::ffi::{CStr, CString};
use std::process::ExitCode;
use std::ptr;

use ananke_client::ffi::{
    ANANKE_GRAMMAR_SYNTAX_AUTO, AnankeConstraintIR, AnankeGenerateOptions, AnankeIntent,
    ananke_client_free, ananke_client_generate, ananke_client_new, ananke_generation_result_free,
};
use ananke_client::pb::GenerationRequest;
use ananke_client::{Client, constraint};

const PROMPT: &str = "A JSON object: ";
const MAX_TOKENS: u32 = 8;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(schema)) = (args.next(), args.next()) else {
        eprintln!("usage: constraint_digest ADDR SCHEMA");
        return ExitCode::from(2);
    };
    match run(&addr, &schema) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(addr: &str, schema: &str) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let client = Client::connect(addr.to_owned()).await?;
        let request = GenerationRequest::from_prompt(PROMPT)
            .with_constraint(constraint::json_schema(schema))
            .with_max_tokens(MAX_TOKENS);
        client.generate(request).await
    })?;
    let constraints = result.provenance.constraints.unwrap_or_default();
    println!(
        "rust {} {}",
        constraints.digest,
        constraints.cache().as_str_name()
    );
    drop(runtime);

    let (digest, cache) = through_c_abi(addr, schema)?;
    println!("c {digest} {cache}");
    Ok(())
}

/// The digest and cache outcome of the same generation through the C ABI, as
/// a C or Zig caller makes it.
fn through_c_abi(addr: &str, schema: &str) -> Result<(String, String), Box<dyn std::error::Error>> {
    let addr = CString::new(addr)?;
    let schema = CString::new(schema)?;
    let prompt = CString::new(PROMPT)?;
    let intent = AnankeIntent {
        raw_input: ptr::null(),
        prompt: prompt.as_ptr(),
        current_file: ptr::null(),
        language: ptr::null(),
    };
    let ir = AnankeConstraintIR {
        json_schema: schema.as_ptr(),
        grammar: ptr::null(),
        regex_patterns: ptr::null(),
        regex_patterns_len: 0,
        token_masks: ptr::null(),
        priority: 0,
        name: ptr::null(),
        grammar_syntax: ANANKE_GRAMMAR_SYNTAX_AUTO,
    };
    let options = AnankeGenerateOptions {
        max_tokens: MAX_TOKENS,
        temperature: -1.0,
        has_seed: false,
        seed: 0,
        timeout_ms: 0,
    };
    // SAFETY: every pointer is valid for the call; the result is freed once.
    unsafe {
        let client = ananke_client_new(addr.as_ptr(), ptr::null(), 300_000);
        if client.is_null() {
            return Err("ananke_client_new failed".into());
        }
        let result = ananke_client_generate(client, &intent, &ir, 1, &options);
        let outcome = if (*result).success {
            let json = CStr::from_ptr((*result).provenance_json).to_str()?;
            let provenance: serde_json::Value = serde_json::from_str(json)?;
            let constraints = &provenance["constraints"];
            Ok((
                constraints["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                constraints["cache"]
                    .as_str()
                    .unwrap_or("CACHE_OUTCOME_UNSPECIFIED")
                    .to_owned(),
            ))
        } else {
            Err(CStr::from_ptr((*result).error)
                .to_string_lossy()
                .into_owned()
                .into())
        };
        ananke_generation_result_free(result);
        ananke_client_free(client);
        outcome
    }
}
