//! `crdgen`: writes the CustomResourceDefinitions of the Kanister resources as YAML.
//!
//! `cargo run -p kanister-coordinator --bin crdgen -- --out deploy/crds` regenerates the
//! checked-in files; without `--out` the three documents go to stdout, separated by `---`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use kanister_coordinator::crd;

/// Generate the Kanister CRDs (ActionSet, Blueprint, Profile) from the Rust types.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Directory to write one `<plural>.yaml` per CRD into; stdout when absent.
    #[arg(long, env = "KANISTER_CRD_DIR")]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut docs = Vec::new();
    for crd in crd::crds() {
        let yaml = crd::crd_yaml(&crd).context("serializing a CRD")?;
        match &args.out {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(crd::crd_file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => docs.push(yaml),
        }
    }
    if args.out.is_none() {
        print!("{}", docs.join("---\n"));
    }
    Ok(())
}
