//! Test trees for benchmarks:
//!   gen-tree write DIR FILES TOTAL_MIB [SEED]   a tree of FILES files, about TOTAL_MIB MiB
//!   gen-tree mutate DIR PERCENT [SEED]          change about PERCENT% of its files in place

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: gen-tree write DIR FILES TOTAL_MIB [SEED] | gen-tree mutate DIR PERCENT [SEED]");
        std::process::exit(2)
    };
    let dir = std::path::PathBuf::from(a.get(2).unwrap_or_else(|| usage()));
    let num = |i: usize| -> f64 { a.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()) };
    let r = match a.get(1).map(String::as_str) {
        Some("write") => {
            let seed = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(7);
            kanister_testkit::data::write_tree(&dir, num(3) as u64, (num(4) as u64) << 20, seed).map(|_| 0)
        }
        Some("mutate") => {
            let seed = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(8);
            kanister_testkit::data::mutate_tree(&dir, num(3) / 100.0, seed)
        }
        _ => usage(),
    };
    match r {
        Ok(n) if n > 0 => println!("changed {n} files"),
        Ok(_) => {}
        Err(e) => {
            eprintln!("gen-tree: {e}");
            std::process::exit(1);
        }
    }
}
