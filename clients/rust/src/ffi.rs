//! C ABI for Zig and C callers (cargo feature `ffi`).
//!
//! The types mirror Maze's FFI types (`ConstraintIR`, `Intent`,
//! `GenerationResult`) with an `Ananke` prefix. cbindgen turns this file into
//! `include/ananke.h`; the doc comments here are the header's comments.
//!
//! Memory ownership:
//! - The caller owns every pointer it passes in (intent, constraints,
//!   strings, arrays); they are read during the call only and never freed or
//!   kept by the library.
//! - The library owns what it returns: free an `AnankeClient*` with
//!   `ananke_client_free`, an `AnankeGenerationResult*` (with all its
//!   strings) with `ananke_generation_result_free` and an
//!   `AnankeTokenizeResult*` with `ananke_tokenize_result_free`, exactly once
//!   each. Never free a result's strings or arrays yourself.

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::time::{Duration, Instant};

use tonic::Code;

use crate::pb::{ChatMessage, ConstraintIr, GenerationContext, GenerationRequest, GrammarSyntax};
use crate::{Client, ClientOptions, Error, GenerationResult, RetryPolicy, constraint};

/// `AnankeConstraintIR.grammar_syntax`: GBNF when the grammar text contains
/// `::=`, else Lark.
pub const ANANKE_GRAMMAR_SYNTAX_AUTO: u32 = 0;
/// `AnankeConstraintIR.grammar_syntax`: Lark, as llguidance reads it.
pub const ANANKE_GRAMMAR_SYNTAX_LARK: u32 = 1;
/// `AnankeConstraintIR.grammar_syntax`: GBNF (`root ::= ...`).
pub const ANANKE_GRAMMAR_SYNTAX_GBNF: u32 = 2;

/// Token ids a constraint allows or forbids. Arrays are owned by the caller;
/// a NULL array must have length 0.
#[repr(C)]
pub struct AnankeTokenMaskRules {
    /// When non-empty, only these token ids may be generated.
    pub allowed_tokens: *const u32,
    /// Length of `allowed_tokens`.
    pub allowed_tokens_len: usize,
    /// These token ids are never generated.
    pub forbidden_tokens: *const u32,
    /// Length of `forbidden_tokens`.
    pub forbidden_tokens_len: usize,
}

/// One constraint, as Maze's ConstraintIR. Every field set (non-NULL,
/// non-empty array) adds a part; several parts, including several regex
/// patterns, combine into one composite ALL_OF (the output satisfies each).
/// A struct with nothing set is sent without a kind and the server answers
/// CONSTRAINT_EMPTY. All strings are NUL-terminated UTF-8 owned by the caller.
#[repr(C)]
pub struct AnankeConstraintIR {
    /// Nullable. A JSON Schema, as JSON text.
    pub json_schema: *const c_char,
    /// Nullable. A grammar; its syntax is `grammar_syntax`.
    pub grammar: *const c_char,
    /// Nullable when `regex_patterns_len` is 0. Patterns (Rust regex syntax,
    /// each matching the whole output); no element may be NULL.
    pub regex_patterns: *const *const c_char,
    /// Length of `regex_patterns`.
    pub regex_patterns_len: usize,
    /// Nullable. Token ids to allow or forbid.
    pub token_masks: *const AnankeTokenMaskRules,
    /// Larger is more important; orders the request's constraints.
    pub priority: u32,
    /// Nullable. A label echoed in provenance and error field paths.
    pub name: *const c_char,
    /// One of the ANANKE_GRAMMAR_SYNTAX_* values; used only with `grammar`.
    pub grammar_syntax: u32,
}

/// What to generate, as Maze's Intent. Strings are NUL-terminated UTF-8
/// owned by the caller.
#[repr(C)]
pub struct AnankeIntent {
    /// Nullable. The user's original words; used as the prompt when `prompt`
    /// is NULL, otherwise not sent.
    pub raw_input: *const c_char,
    /// Nullable. The prompt, continued as is. With both `prompt` and
    /// `raw_input` NULL the server answers PROMPT_EMPTY.
    pub prompt: *const c_char,
    /// Nullable. Path of the file the output goes to (kept in provenance).
    pub current_file: *const c_char,
    /// Nullable. Language of the output, lower case (kept in provenance).
    pub language: *const c_char,
}

/// Optional knobs of one generation.
#[repr(C)]
pub struct AnankeGenerateOptions {
    /// Most tokens to generate; 0 means the server's default.
    pub max_tokens: u32,
    /// Softmax temperature, 0 (greedy) to 2; negative or NaN means the
    /// server's default (greedy).
    pub temperature: f32,
    /// Whether `seed` is set.
    pub has_seed: bool,
    /// Sampling seed, used when `has_seed` is true.
    pub seed: u64,
    /// Deadline of this call in milliseconds; 0 means the client's default
    /// (the `timeout_ms` given to `ananke_client_new`).
    pub timeout_ms: u64,
}

/// The outcome of one generation, as Maze's GenerationResult: Maze's five
/// fields first, in Maze's order (`code`, `success`, `error`,
/// `tokens_generated`, `generation_time_ms`), so a caller bound to Maze's
/// layout reads the right offsets; the extras follow. Allocated by the
/// library; free it with `ananke_generation_result_free` and nothing else.
/// Strings are NUL-terminated UTF-8 (a NUL byte inside the output becomes
/// U+FFFD).
#[repr(C)]
pub struct AnankeGenerationResult {
    /// The generated text; never NULL (empty when `success` is false).
    pub code: *mut c_char,
    /// True when the call succeeded (`status_code` is 0).
    pub success: bool,
    /// The error message; NULL on success.
    pub error: *mut c_char,
    /// Tokens generated.
    pub tokens_generated: usize,
    /// Wall-clock duration of the call as the client measured it.
    pub generation_time_ms: u64,
    /// The server's ErrorInfo reason, an ErrorReason value name such as
    /// "JSON_SCHEMA_INVALID"; NULL on success and for failures with no
    /// reason (arguments refused before sending, transport failures).
    pub error_reason: *mut c_char,
    /// The gRPC status code: 0 OK, 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED,
    /// 14 UNAVAILABLE, ...
    pub status_code: i32,
    /// The generation's provenance as proto3 JSON (see provenance.proto);
    /// NULL on failure.
    pub provenance_json: *mut c_char,
}

/// The token ids of a text, as the served model tokenizes it (from
/// `ananke_client_tokenize`). Allocated by the library; free it with
/// `ananke_tokenize_result_free`.
#[repr(C)]
pub struct AnankeTokenizeResult {
    /// The token ids; NULL when `token_ids_len` is 0.
    pub token_ids: *mut u32,
    /// Length of `token_ids`.
    pub token_ids_len: usize,
    /// True when the call succeeded (`status_code` is 0).
    pub success: bool,
    /// The error message; NULL on success.
    pub error: *mut c_char,
    /// The server's ErrorInfo reason; NULL on success or when there is none.
    pub error_reason: *mut c_char,
    /// The gRPC status code.
    pub status_code: i32,
}

/// A connection to an Ananke server with its own I/O threads. Thread-safe:
/// one client may serve concurrent calls from several threads.
pub struct AnankeClient {
    // Declared before `runtime` so the channel drops while the runtime runs.
    client: Client,
    runtime: tokio::runtime::Runtime,
}

/// How `ananke_client_new_with_options` connects and calls. Zero/NULL
/// fields take the defaults. Strings are NUL-terminated UTF-8 owned by the
/// caller and read only during the call.
#[repr(C)]
pub struct AnankeClientOptions {
    /// Nullable. API key, sent as `authorization: Bearer <key>` on every call.
    pub api_key: *const c_char,
    /// Default deadline of each call in milliseconds (retries included); 0
    /// for none.
    pub timeout_ms: u64,
    /// Nullable. PEM of the CA(s) that signed the server's certificate, in
    /// place of the web PKI roots (`https://` addresses, library built with
    /// the `tls` feature).
    pub root_certificates_pem: *const c_char,
    /// Nullable. PEM of the client certificate for mutual TLS; needs
    /// `client_key_pem` too.
    pub client_certificate_pem: *const c_char,
    /// Nullable. PEM of the client certificate's private key.
    pub client_key_pem: *const c_char,
    /// Nullable. The name the server's certificate must carry, when it
    /// differs from the address's host.
    pub server_name: *const c_char,
    /// Attempts per call under the retry policy of the Rust and Python
    /// clients (UNAVAILABLE before generation, with backoff); 0 for the
    /// default (4), 1 never retries.
    pub max_attempts: u32,
}

/// Creates a client of the server at `addr` (for example
/// "http://127.0.0.1:50051"). The connection opens on the first call, so
/// an unreachable server shows up as UNAVAILABLE results, not here.
///
/// `api_key` (nullable) is sent as `authorization: Bearer <key>`;
/// `timeout_ms` is the default deadline of each call, 0 for none. The same
/// as `ananke_client_new_with_options` with only those two options set.
///
/// Returns NULL when `addr` is NULL, not UTF-8 or not a valid URI, when
/// `api_key` is not a valid header value, or when the I/O threads cannot
/// start. Free the client with `ananke_client_free`.
///
/// # Safety
///
/// `addr` and `api_key` are NULL or NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_client_new(
    addr: *const c_char,
    api_key: *const c_char,
    timeout_ms: u64,
) -> *mut AnankeClient {
    let options = AnankeClientOptions {
        api_key,
        timeout_ms,
        root_certificates_pem: ptr::null(),
        client_certificate_pem: ptr::null(),
        client_key_pem: ptr::null(),
        server_name: ptr::null(),
        max_attempts: 0,
    };
    // SAFETY: the caller passes NULL or NUL-terminated strings.
    unsafe { ananke_client_new_with_options(addr, &options) }
}

/// Creates a client of the server at `addr` with `options` (nullable: all
/// defaults). TLS options need an `https://` address and a library built with
/// the `tls` feature. The connection opens on the first call.
///
/// Returns NULL when `addr` is NULL, not UTF-8 or not a valid URI, when an
/// option is invalid (not UTF-8, an API key that is not a valid header
/// value, a client certificate without its key, TLS options with an
/// `http://` address or without the `tls` feature), or when the I/O threads
/// cannot start. Free the client with `ananke_client_free`.
///
/// # Safety
///
/// `addr` is NULL or a NUL-terminated string; `options` is NULL or points to
/// an `AnankeClientOptions` whose strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_client_new_with_options(
    addr: *const c_char,
    options: *const AnankeClientOptions,
) -> *mut AnankeClient {
    let made = catch_unwind(AssertUnwindSafe(|| -> Option<AnankeClient> {
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let addr = unsafe { c_str(addr, "addr") }.ok()??;
        let options = match unsafe { options.as_ref() } {
            Some(options) => unsafe { client_options(options) }.ok()?,
            None => ClientOptions::new(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ananke-client")
            .enable_all()
            .build()
            .ok()?;
        let client = {
            let _entered = runtime.enter();
            Client::connect_lazy(addr, options).ok()?
        };
        Some(AnankeClient { client, runtime })
    }));
    match made {
        Ok(Some(client)) => Box::into_raw(Box::new(client)),
        _ => ptr::null_mut(),
    }
}

/// The Rust options for the C ones.
unsafe fn client_options(c: &AnankeClientOptions) -> Result<ClientOptions, Error> {
    // SAFETY (whole function): the options' strings are NULL or NUL-terminated.
    let mut options = ClientOptions::new();
    if c.timeout_ms > 0 {
        options = options.timeout(Duration::from_millis(c.timeout_ms));
    }
    if let Some(key) = unsafe { c_str(c.api_key, "api_key") }? {
        options = options.api_key(key);
    }
    if let Some(pem) = unsafe { c_str(c.root_certificates_pem, "root_certificates_pem") }? {
        options = options.root_certificates(pem);
    }
    let certificate = unsafe { c_str(c.client_certificate_pem, "client_certificate_pem") }?;
    let key = unsafe { c_str(c.client_key_pem, "client_key_pem") }?;
    match (certificate, key) {
        (Some(certificate), Some(key)) => options = options.client_certificate(certificate, key),
        (None, None) => {}
        _ => {
            return Err(Error::invalid_argument(
                "client_certificate_pem and client_key_pem go together",
            ));
        }
    }
    if let Some(name) = unsafe { c_str(c.server_name, "server_name") }? {
        options = options.server_name(name);
    }
    if c.max_attempts > 0 {
        options = options.retry(RetryPolicy {
            max_attempts: c.max_attempts,
            ..RetryPolicy::default()
        });
    }
    Ok(options)
}

/// Frees a client from `ananke_client_new`, closing its connection and
/// stopping its threads. NULL is ignored. Results already returned stay
/// valid.
///
/// # Safety
///
/// `client` is NULL or a pointer from `ananke_client_new` not yet freed, and
/// no call on it is in progress.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_client_free(client: *mut AnankeClient) {
    if !client.is_null() {
        // SAFETY: the pointer came from Box::into_raw in ananke_client_new.
        drop(unsafe { Box::from_raw(client) });
    }
}

/// Generates under `constraints` (all apply together), blocking until the
/// whole output is in or the call fails.
///
/// `intent` must not be NULL; `constraints` may be NULL when
/// `constraints_len` is 0; `options` is nullable (all defaults). Nothing
/// passed in is kept after the call returns.
///
/// Always returns a result (never NULL), which the caller frees with
/// `ananke_generation_result_free`; failures have `success` false and
/// `error` set.
///
/// # Safety
///
/// `client` comes from `ananke_client_new` and is not freed during the call;
/// every pointer is NULL where allowed or valid for reads of the documented
/// length; strings are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_client_generate(
    client: *const AnankeClient,
    intent: *const AnankeIntent,
    constraints: *const AnankeConstraintIR,
    constraints_len: usize,
    options: *const AnankeGenerateOptions,
) -> *mut AnankeGenerationResult {
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's pointers are valid as documented above.
        unsafe { generate(client, intent, constraints, constraints_len, options) }
    }))
    .unwrap_or_else(|_| Err(Error::protocol("panic inside ananke_client_generate")));
    Box::into_raw(Box::new(into_result(outcome, started.elapsed())))
}

/// Frees a result from `ananke_client_generate` and all of its strings. NULL
/// is ignored.
///
/// # Safety
///
/// `result` is NULL or a pointer from `ananke_client_generate` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_generation_result_free(result: *mut AnankeGenerationResult) {
    if result.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in ananke_client_generate,
    // and its strings from CString::into_raw (or are NULL).
    unsafe {
        let result = Box::from_raw(result);
        for text in [
            result.code,
            result.error,
            result.error_reason,
            result.provenance_json,
        ] {
            if !text.is_null() {
                drop(CString::from_raw(text));
            }
        }
    }
}

/// Tokenizes `text` as the server tokenizes a prompt (special tokens added as
/// the model's tokenizer adds them), or, when `chat` is true, as one user
/// chat message rendered with the model's chat template. Use the ids to build
/// `AnankeTokenMaskRules` against the served vocabulary.
///
/// Always returns a result (never NULL), which the caller frees with
/// `ananke_tokenize_result_free`.
///
/// # Safety
///
/// `client` comes from `ananke_client_new` and is not freed during the call;
/// `text` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_client_tokenize(
    client: *const AnankeClient,
    text: *const c_char,
    chat: bool,
) -> *mut AnankeTokenizeResult {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<Vec<u32>, Error> {
        // SAFETY: the caller's pointers are valid as documented above.
        let client =
            unsafe { client.as_ref() }.ok_or_else(|| Error::invalid_argument("client is NULL"))?;
        let text = unsafe { c_str(text, "text") }?
            .ok_or_else(|| Error::invalid_argument("text is NULL"))?;
        let call = if chat {
            client.runtime.block_on(
                client
                    .client
                    .tokenize_chat([ChatMessage::user(text)], false),
            )
        } else {
            client.runtime.block_on(client.client.tokenize(text, false))
        };
        Ok(call?.token_ids)
    }))
    .unwrap_or_else(|_| Err(Error::protocol("panic inside ananke_client_tokenize")));
    let result = match outcome {
        Ok(ids) => {
            let token_ids_len = ids.len();
            let token_ids = if ids.is_empty() {
                ptr::null_mut()
            } else {
                Box::into_raw(ids.into_boxed_slice()).cast::<u32>()
            };
            AnankeTokenizeResult {
                token_ids,
                token_ids_len,
                success: true,
                error: ptr::null_mut(),
                error_reason: ptr::null_mut(),
                status_code: Code::Ok as i32,
            }
        }
        Err(error) => AnankeTokenizeResult {
            token_ids: ptr::null_mut(),
            token_ids_len: 0,
            success: false,
            error: into_c_string(&error.to_string()),
            error_reason: error.reason().map_or(ptr::null_mut(), into_c_string),
            status_code: error.code() as i32,
        },
    };
    Box::into_raw(Box::new(result))
}

/// Frees a result from `ananke_client_tokenize` with its array and strings.
/// NULL is ignored.
///
/// # Safety
///
/// `result` is NULL or a pointer from `ananke_client_tokenize` not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ananke_tokenize_result_free(result: *mut AnankeTokenizeResult) {
    if result.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in ananke_client_tokenize;
    // the array from a boxed slice of `token_ids_len` elements, the strings
    // from CString::into_raw (or are NULL).
    unsafe {
        let result = Box::from_raw(result);
        if !result.token_ids.is_null() {
            let ids = ptr::slice_from_raw_parts_mut(result.token_ids, result.token_ids_len);
            drop(Box::from_raw(ids));
        }
        for text in [result.error, result.error_reason] {
            if !text.is_null() {
                drop(CString::from_raw(text));
            }
        }
    }
}

/// The body of `ananke_client_generate`, with errors as `Error`.
unsafe fn generate(
    client: *const AnankeClient,
    intent: *const AnankeIntent,
    constraints: *const AnankeConstraintIR,
    constraints_len: usize,
    options: *const AnankeGenerateOptions,
) -> Result<GenerationResult, Error> {
    // SAFETY (whole function): the caller's pointers are valid as documented
    // on ananke_client_generate.
    let client =
        unsafe { client.as_ref() }.ok_or_else(|| Error::invalid_argument("client is NULL"))?;
    let intent =
        unsafe { intent.as_ref() }.ok_or_else(|| Error::invalid_argument("intent is NULL"))?;
    let mut request = unsafe { intent_request(intent) }?;
    let constraints = unsafe { slice(constraints, constraints_len, "constraints") }?;
    for (index, constraint) in constraints.iter().enumerate() {
        request
            .constraints
            .push(unsafe { constraint_ir(constraint, index) }?);
    }
    let mut call = client.client.clone();
    if let Some(options) = unsafe { options.as_ref() } {
        request = apply_options(request, options);
        if options.timeout_ms > 0 {
            call = call.with_timeout(Some(Duration::from_millis(options.timeout_ms)));
        }
    }
    client.runtime.block_on(call.generate(request))
}

/// The request for `intent`, without constraints or sampling.
unsafe fn intent_request(intent: &AnankeIntent) -> Result<GenerationRequest, Error> {
    // SAFETY: the intent's strings are NULL or NUL-terminated.
    let (prompt, raw_input, current_file, language) = unsafe {
        (
            c_str(intent.prompt, "intent.prompt")?,
            c_str(intent.raw_input, "intent.raw_input")?,
            c_str(intent.current_file, "intent.current_file")?,
            c_str(intent.language, "intent.language")?,
        )
    };
    let mut request = GenerationRequest::from_prompt(prompt.or(raw_input).unwrap_or_default());
    if current_file.is_some() || language.is_some() {
        request.context = Some(GenerationContext {
            current_file: current_file.unwrap_or_default().to_owned(),
            language: language.unwrap_or_default().to_owned(),
            ..GenerationContext::default()
        });
    }
    Ok(request)
}

fn apply_options(
    mut request: GenerationRequest,
    options: &AnankeGenerateOptions,
) -> GenerationRequest {
    if options.max_tokens > 0 {
        request = request.with_max_tokens(options.max_tokens);
    }
    if options.temperature >= 0.0 {
        request = request.with_temperature(options.temperature);
    }
    if options.has_seed {
        request = request.with_seed(options.seed);
    }
    request
}

/// The `ConstraintIr` for the C constraint at `index`.
unsafe fn constraint_ir(c: &AnankeConstraintIR, index: usize) -> Result<ConstraintIr, Error> {
    let field = |name: &str| format!("constraints[{index}].{name}");
    let mut parts = Vec::new();
    // SAFETY (whole function): the constraint's pointers are valid as
    // documented on AnankeConstraintIR.
    if let Some(schema) = unsafe { c_str(c.json_schema, &field("json_schema")) }? {
        parts.push(constraint::json_schema(schema));
    }
    if let Some(text) = unsafe { c_str(c.grammar, &field("grammar")) }? {
        let syntax = match c.grammar_syntax {
            ANANKE_GRAMMAR_SYNTAX_AUTO => None,
            ANANKE_GRAMMAR_SYNTAX_LARK => Some(GrammarSyntax::Lark),
            ANANKE_GRAMMAR_SYNTAX_GBNF => Some(GrammarSyntax::Gbnf),
            other => {
                return Err(Error::invalid_argument(format!(
                    "{}: unknown grammar syntax {other}",
                    field("grammar_syntax")
                )));
            }
        };
        parts.push(constraint::grammar(text, syntax));
    }
    let patterns = unsafe {
        slice(
            c.regex_patterns,
            c.regex_patterns_len,
            &field("regex_patterns"),
        )
    }?;
    for (i, &pattern) in patterns.iter().enumerate() {
        let name = field(&format!("regex_patterns[{i}]"));
        let pattern = unsafe { c_str(pattern, &name) }?
            .ok_or_else(|| Error::invalid_argument(format!("{name} is NULL")))?;
        parts.push(constraint::regex(pattern));
    }
    if let Some(mask) = unsafe { c.token_masks.as_ref() } {
        let allowed = unsafe {
            slice(
                mask.allowed_tokens,
                mask.allowed_tokens_len,
                &field("token_masks.allowed_tokens"),
            )
        }?;
        let forbidden = unsafe {
            slice(
                mask.forbidden_tokens,
                mask.forbidden_tokens_len,
                &field("token_masks.forbidden_tokens"),
            )
        }?;
        parts.push(constraint::token_mask(
            allowed.iter().copied(),
            forbidden.iter().copied(),
        ));
    }
    let ir = match parts.len() {
        0 => ConstraintIr::default(),
        1 => parts.swap_remove(0),
        _ => constraint::all_of(parts),
    };
    let name = unsafe { c_str(c.name, &field("name")) }?.unwrap_or_default();
    Ok(ir.named(name).with_priority(c.priority))
}

/// Reads a nullable C string; `field` names it in the error.
///
/// # Safety
///
/// `ptr` is NULL or a NUL-terminated string valid for `'a`.
unsafe fn c_str<'a>(ptr: *const c_char, field: &str) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map(Some)
        .map_err(|_| Error::invalid_argument(format!("{field} is not UTF-8")))
}

/// Reads a C array; NULL is allowed only with `len` 0.
///
/// # Safety
///
/// `ptr` is NULL or valid for reads of `len` elements for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize, field: &str) -> Result<&'a [T], Error> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(Error::invalid_argument(format!(
            "{field} is NULL with length {len}"
        )))
    } else {
        // SAFETY: non-NULL and valid for `len` reads per the contract.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

/// An owned C string for the caller (NUL bytes become U+FFFD).
fn into_c_string(text: &str) -> *mut c_char {
    let text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    };
    CString::new(text)
        .expect("NUL bytes were replaced")
        .into_raw()
}

fn into_result(
    outcome: Result<GenerationResult, Error>,
    elapsed: Duration,
) -> AnankeGenerationResult {
    let generation_time_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(result) => {
            let tokens_generated = match result.usage.completion_tokens {
                0 => result.token_ids.len(),
                n => n as usize,
            };
            let provenance_json = serde_json::to_string(&result.provenance)
                .map_or(ptr::null_mut(), |json| into_c_string(&json));
            AnankeGenerationResult {
                code: into_c_string(&result.text),
                success: true,
                error: ptr::null_mut(),
                tokens_generated,
                generation_time_ms,
                error_reason: ptr::null_mut(),
                status_code: Code::Ok as i32,
                provenance_json,
            }
        }
        Err(error) => AnankeGenerationResult {
            code: into_c_string(""),
            success: false,
            error: into_c_string(&error.to_string()),
            tokens_generated: 0,
            generation_time_ms,
            error_reason: error.reason().map_or(ptr::null_mut(), into_c_string),
            status_code: error.code() as i32,
            provenance_json: ptr::null_mut(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::constraint_ir::Kind;
    use crate::pb::{Combinator, CompositeConstraint};

    fn empty() -> AnankeConstraintIR {
        AnankeConstraintIR {
            json_schema: ptr::null(),
            grammar: ptr::null(),
            regex_patterns: ptr::null(),
            regex_patterns_len: 0,
            token_masks: ptr::null(),
            priority: 0,
            name: ptr::null(),
            grammar_syntax: ANANKE_GRAMMAR_SYNTAX_AUTO,
        }
    }

    #[test]
    fn one_field_is_one_kind() {
        let c = AnankeConstraintIR {
            json_schema: c"{\"type\":\"object\"}".as_ptr(),
            name: c"obj".as_ptr(),
            priority: 5,
            ..empty()
        };
        let ir = unsafe { constraint_ir(&c, 0) }.unwrap();
        assert_eq!(
            ir,
            constraint::json_schema("{\"type\":\"object\"}")
                .named("obj")
                .with_priority(5)
        );

        let c = AnankeConstraintIR {
            grammar: c"root ::= \"a\"".as_ptr(),
            ..empty()
        };
        let ir = unsafe { constraint_ir(&c, 0) }.unwrap();
        assert_eq!(ir, constraint::gbnf("root ::= \"a\""));

        let c = AnankeConstraintIR {
            grammar: c"start: \"a\"".as_ptr(),
            ..empty()
        };
        assert_eq!(
            unsafe { constraint_ir(&c, 0) }.unwrap(),
            constraint::lark("start: \"a\"")
        );
    }

    #[test]
    fn several_fields_are_all_of() {
        let patterns = [c"[a-z]+".as_ptr(), c"a.*".as_ptr()];
        let allowed = [1u32, 2, 3];
        let mask = AnankeTokenMaskRules {
            allowed_tokens: allowed.as_ptr(),
            allowed_tokens_len: allowed.len(),
            forbidden_tokens: ptr::null(),
            forbidden_tokens_len: 0,
        };
        let c = AnankeConstraintIR {
            regex_patterns: patterns.as_ptr(),
            regex_patterns_len: patterns.len(),
            token_masks: &mask,
            ..empty()
        };
        let ir = unsafe { constraint_ir(&c, 0) }.unwrap();
        match ir.kind {
            Some(Kind::Composite(CompositeConstraint { combinator, parts })) => {
                assert_eq!(combinator, Combinator::AllOf as i32);
                assert_eq!(
                    parts,
                    [
                        constraint::regex("[a-z]+"),
                        constraint::regex("a.*"),
                        constraint::token_mask([1, 2, 3], []),
                    ]
                );
            }
            other => panic!("expected a composite, got {other:?}"),
        }
    }

    #[test]
    fn nothing_set_has_no_kind_and_bad_input_is_refused() {
        assert_eq!(unsafe { constraint_ir(&empty(), 0) }.unwrap().kind, None);

        let c = AnankeConstraintIR {
            regex_patterns_len: 2,
            ..empty()
        };
        let err = unsafe { constraint_ir(&c, 3) }.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("constraints[3].regex_patterns"),
            "{err}"
        );

        let c = AnankeConstraintIR {
            grammar: c"start: \"a\"".as_ptr(),
            grammar_syntax: 9,
            ..empty()
        };
        assert!(unsafe { constraint_ir(&c, 0) }.is_err());
    }

    #[test]
    fn intent_fills_prompt_and_context() {
        let intent = AnankeIntent {
            raw_input: c"raw".as_ptr(),
            prompt: ptr::null(),
            current_file: c"a.zig".as_ptr(),
            language: ptr::null(),
        };
        let request = unsafe { intent_request(&intent) }.unwrap();
        assert_eq!(request.prompt, "raw");
        let context = request.context.unwrap();
        assert_eq!(
            (context.current_file.as_str(), context.language.as_str()),
            ("a.zig", "")
        );

        let intent = AnankeIntent {
            prompt: c"p".as_ptr(),
            current_file: ptr::null(),
            ..intent
        };
        let request = unsafe { intent_request(&intent) }.unwrap();
        assert_eq!(request.prompt, "p");
        assert_eq!(request.context, None);
    }

    #[test]
    fn options_map_to_sampling() {
        let options = AnankeGenerateOptions {
            max_tokens: 0,
            temperature: -1.0,
            has_seed: false,
            seed: 9,
            timeout_ms: 0,
        };
        let request = apply_options(GenerationRequest::from_prompt("p"), &options);
        assert_eq!(request.sampling, None);
        let options = AnankeGenerateOptions {
            max_tokens: 8,
            temperature: 0.0,
            has_seed: true,
            ..options
        };
        let sampling = apply_options(GenerationRequest::from_prompt("p"), &options)
            .sampling
            .unwrap();
        assert_eq!(
            (sampling.max_tokens, sampling.temperature, sampling.seed),
            (Some(8), Some(0.0), Some(9))
        );
    }

    #[test]
    fn client_lifecycle_and_failure_results() {
        unsafe {
            assert!(ananke_client_new(ptr::null(), ptr::null(), 0).is_null());
            assert!(ananke_client_new(c"not a uri".as_ptr(), ptr::null(), 0).is_null());

            // Nothing listens on port 1: the call fails with UNAVAILABLE.
            let client = ananke_client_new(c"http://127.0.0.1:1".as_ptr(), c"key".as_ptr(), 5000);
            assert!(!client.is_null());
            let intent = AnankeIntent {
                raw_input: ptr::null(),
                prompt: c"p".as_ptr(),
                current_file: ptr::null(),
                language: ptr::null(),
            };
            let result = ananke_client_generate(client, &intent, ptr::null(), 0, ptr::null());
            let r = &*result;
            assert!(!r.success);
            assert_eq!(r.status_code, Code::Unavailable as i32);
            assert_eq!(CStr::from_ptr(r.code).to_str().unwrap(), "");
            assert!(!r.error.is_null());
            assert!(r.error_reason.is_null());
            assert!(r.provenance_json.is_null());
            ananke_generation_result_free(result);

            // A NULL intent is refused before sending.
            let result = ananke_client_generate(client, ptr::null(), ptr::null(), 0, ptr::null());
            assert_eq!((*result).status_code, Code::InvalidArgument as i32);
            ananke_generation_result_free(result);

            ananke_client_free(client);
            ananke_client_free(ptr::null_mut());
            ananke_generation_result_free(ptr::null_mut());
        }
    }

    #[test]
    fn client_options_from_c() {
        let options = AnankeClientOptions {
            api_key: ptr::null(),
            timeout_ms: 0,
            root_certificates_pem: ptr::null(),
            client_certificate_pem: c"cert".as_ptr(),
            client_key_pem: ptr::null(),
            server_name: ptr::null(),
            max_attempts: 0,
        };
        let err = unsafe { client_options(&options) }.unwrap_err();
        assert!(err.message().contains("go together"), "{err}");
        unsafe {
            // TLS options with a plaintext address are refused.
            assert!(
                ananke_client_new_with_options(c"http://127.0.0.1:1".as_ptr(), &options).is_null()
            );
            let client =
                ananke_client_new_with_options(c"http://127.0.0.1:1".as_ptr(), ptr::null());
            assert!(!client.is_null());
            ananke_client_free(client);
            let options = AnankeClientOptions {
                client_certificate_pem: ptr::null(),
                root_certificates_pem: c"ca".as_ptr(),
                ..options
            };
            let https = ananke_client_new_with_options(c"https://127.0.0.1:1".as_ptr(), &options);
            assert_eq!(https.is_null(), cfg!(not(feature = "tls")));
            ananke_client_free(https);
        }
    }

    #[test]
    fn nul_bytes_in_output_are_replaced() {
        let text = into_c_string("a\0b");
        let owned = unsafe { CString::from_raw(text) };
        assert_eq!(owned.to_str().unwrap(), "a\u{FFFD}b");
    }
}
