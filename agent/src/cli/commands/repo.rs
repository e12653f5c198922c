use super::super::*;

#[derive(Debug, Subcommand)]
pub(in crate::cli) enum RepoCommand {
    /// Create a repository: a random master key, wrapped by the passphrase or key file
    Init(InitArgs),
    /// Make the index agree with the packs in the store: index packs no index names, drop
    /// entries of packs that are gone, re-index packs whose size changed. Deletes no pack
    RepairIndex {
        /// How long to wait for a running prune to finish
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        wait_lock: Duration,
    },
}

#[derive(Debug, Args)]
pub(in crate::cli) struct InitArgs {
    /// Average chunk size (min is a quarter, max four times). Fixed for the repository's life
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub(in crate::cli) chunk_size: u64,
    /// Target pack object size
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub(in crate::cli) pack_size: u64,
    /// zstd compression level (1 fastest .. 19 smallest)
    #[arg(long, default_value_t = kanister_repo::config::DEFAULT_COMPRESSION_LEVEL, allow_negative_numbers = true)]
    pub(in crate::cli) compression: i32,
}

pub(in crate::cli) async fn run(g: &Global, command: &RepoCommand) -> Result<ExitCode> {
    match command {
        RepoCommand::Init(a) => {
            let key = repo_key(g)?;
            let opts = InitOptions {
                chunker: ChunkerParams::with_average(u32::try_from(a.chunk_size).unwrap_or(u32::MAX)),
                pack_size: u32::try_from(a.pack_size).unwrap_or(u32::MAX),
                compression_level: a.compression,
                ..InitOptions::default()
            };
            let repo = Repository::at(store(g)?).init(&key, &opts).await?;
            let c = repo.config();
            if g.json {
                print_json(&json!({"repository_id": c.id, "store": repo.store().to_string(), "config": c}), false);
            } else {
                println!("created repository {} at {}", c.id, repo.store());
                println!(
                    "  chunks {} average ({} .. {}), packs {}, zstd level {}",
                    human_bytes(c.chunker.avg_size.into()),
                    human_bytes(c.chunker.min_size.into()),
                    human_bytes(c.chunker.max_size.into()),
                    human_bytes(c.pack_size.into()),
                    c.compression_level
                );
                println!("Keep the passphrase or key file safe: without it no backup in this repository can be read.");
            }
        }
        RepoCommand::RepairIndex { wait_lock } => {
            let repo = open(g).await?;
            let r = crate::repair::repair_index(&repo, *wait_lock).await?;
            if g.json {
                print_json(&serde_json::to_value(&r).expect("report serializes"), false);
            } else {
                println!("indexed {} pack(s) that were in no index", r.packs_indexed);
                for p in &r.missing_packs_dropped {
                    println!("dropped the entries of {p}: the store does not hold it");
                }
                for p in &r.packs_reindexed {
                    println!("re-indexed {p} from its trailer: its size differed from the index");
                }
                for p in &r.unreadable_packs {
                    println!("warning: {p} has an unreadable trailer: run `kanister-agent check --read-data`");
                }
                if r.damaged_indexes_replaced > 0 {
                    println!("replaced {} damaged index object(s)", r.damaged_indexes_replaced);
                }
                if !r.changed() {
                    println!("the index already agrees with the store: nothing changed");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
