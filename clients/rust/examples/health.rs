//! Prints the server's `grpc.health.v1` status and its model id; exits 0
//! when it is SERVING.
//!
//! ```text
//! cargo run --features tls --example health -- https://127.0.0.1:50051
//! ```
//!
//! The address comes from the first argument, else `ANANKE_ADDR`, else
//! `http://127.0.0.1:50051`. From the environment: `ANANKE_API_KEY` (bearer
//! token), `ANANKE_ROOT_CERTIFICATES` (CA PEM file), `ANANKE_CLIENT_CERTIFICATE`
//! and `ANANKE_CLIENT_KEY` (PEM files, for mutual TLS), `ANANKE_SERVER_NAME`.

use std::process::ExitCode;
use std::time::Duration;

use ananke_client::{Client, ClientOptions, ServingStatus};

const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(4),
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn pem(variable: &str) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
    match std::env::var_os(variable) {
        Some(path) => Ok(Some(std::fs::read(path)?)),
        None => Ok(None),
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("ANANKE_ADDR").ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let mut options = ClientOptions::new()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10));
    if let Ok(key) = std::env::var("ANANKE_API_KEY") {
        options = options.api_key(key);
    }
    if let Some(ca) = pem("ANANKE_ROOT_CERTIFICATES")? {
        options = options.root_certificates(ca);
    }
    if let (Some(cert), Some(key)) = (pem("ANANKE_CLIENT_CERTIFICATE")?, pem("ANANKE_CLIENT_KEY")?)
    {
        options = options.client_certificate(cert, key);
    }
    if let Ok(name) = std::env::var("ANANKE_SERVER_NAME") {
        options = options.server_name(name);
    }
    let client = Client::connect_with(addr, options).await?;
    let status = client.health("").await?;
    println!("health: {}", status.as_str_name());
    match client.model_info().await {
        Ok(info) => println!("model: {}", info.model_id),
        Err(err) => println!("model info: {err}"),
    }
    Ok(status == ServingStatus::Serving)
}
