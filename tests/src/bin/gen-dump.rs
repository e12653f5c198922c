//! Writes a synthetic SQL dump to stdout: `gen-dump SIZE_MIB VERSION [SEED] [CHANGED]`.
//! Version 2 has CHANGED (default 0.03) of the rows changed in clusters, plus 0.5% new rows.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen-dump SIZE_MIB VERSION [SEED] [CHANGED_FRACTION]");
        std::process::exit(2);
    }
    let mib: u64 = args[1].parse().expect("SIZE_MIB is a number");
    let version: u32 = args[2].parse().expect("VERSION is 1 or 2");
    let seed: u64 = args.get(3).map_or(42, |s| s.parse().expect("SEED is a number"));
    let changed: f64 = args.get(4).map_or(0.03, |s| s.parse().expect("CHANGED is a fraction"));
    let dump = kanister_testkit::data::SqlDump::of_size(seed, mib << 20, changed);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    if let Err(e) = dump.write(version, &mut out).and_then(|_| std::io::Write::flush(&mut out))
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("gen-dump: {e}");
        std::process::exit(1);
    }
}
