//! Generates the Rust code of the `.proto` files with the vendored `protoc`: no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Messages that carry secrets get a hand-written, redacting `Debug` (src/lib.rs).
        .skip_debug([
            ".kanister.agent.v1.RepositoryRef",
            ".kanister.agent.v1.CommandSpec",
            ".kanister.coordinator.v1.CreateProfileRequest",
        ])
        .compile_with_config(
            config,
            &["kanister/agent/v1/agent.proto", "kanister/coordinator/v1/coordinator.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=kanister/agent/v1/agent.proto");
    println!("cargo:rerun-if-changed=kanister/coordinator/v1/coordinator.proto");
    Ok(())
}
