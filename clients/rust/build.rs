//! Generates the ananke.v1 client stubs (tonic + prost), their proto3 JSON
//! (serde) impls (pbjson) and, with the `ffi` feature, the C header.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so no system protoc is
//! needed.

use std::env;
use std::error::Error;
use std::path::PathBuf;

/// The .proto files of the contract, relative to the proto root.
const PROTOS: &[&str] = &[
    "ananke/v1/constraints.proto",
    "ananke/v1/errors.proto",
    "ananke/v1/generation.proto",
    "ananke/v1/inference_service.proto",
    "ananke/v1/provenance.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    let includes = [proto_root.clone(), protoc_bin_vendored::include_path()?];
    let descriptor_path = out_dir.join("ananke_descriptor.bin");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .file_descriptor_set_path(&descriptor_path)
        // Well-known types with serde support, so Provenance renders as JSON
        // (compile_well_known_types drops the default ::prost_types mapping).
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_with_config(config, &protos, &includes)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".ananke"])?;

    #[cfg(feature = "ffi")]
    generate_header(&manifest_dir)?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}

/// Writes include/ananke.h from src/ffi.rs (only when its content changes).
#[cfg(feature = "ffi")]
fn generate_header(manifest_dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let config = cbindgen::Config::from_file(manifest_dir.join("cbindgen.toml"))?;
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(manifest_dir.join("src/ffi.rs"))
        .generate()?
        .write_to_file(manifest_dir.join("include/ananke.h"));
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    Ok(())
}
