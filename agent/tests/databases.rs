//! Real databases: a dump piped through the agent restores to identical tables.

use std::process::{Command, Stdio};

use kanister_testkit::agent::Agent;
use kanister_testkit::infra;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} did not run: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Pipes `pull SNAPSHOT -` into `restore`.
fn pull_into(agent: &Agent, snapshot: &str, restore: &mut Command) {
    let mut pull = agent.cmd(&["pull", snapshot, "-"]).stdout(Stdio::piped()).spawn().unwrap();
    let out = pull.stdout.take().unwrap();
    let r = restore.stdin(out).output().unwrap();
    assert!(pull.wait().unwrap().success(), "pull failed");
    assert!(r.status.success(), "restore failed: {}", String::from_utf8_lossy(&r.stderr));
}

fn mysql(db: &str) -> Command {
    let mut c = Command::new("mysql");
    c.args(["--no-defaults", "-uroot", "-S", &infra::var("KANISTER_TEST_MYSQL_SOCKET"), "-N", "-B"]);
    if !db.is_empty() {
        c.arg(db);
    }
    c
}

#[test]
fn mariadb_dump_round_trip() {
    let db = infra::unique("shop").replace('-', "_");
    sh(mysql("").arg("-e").arg(format!(
        "CREATE DATABASE {db}; USE {db};
         CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT, created DATETIME);
         INSERT INTO orders SELECT seq, CONCAT('customer-', seq % 997), seq * 1.25, REPEAT(MD5(seq), 1 + seq % 5),
                                   '2026-01-01' + INTERVAL seq MINUTE FROM seq_1_to_5000;"
    )));
    let fingerprint = |db: &str| {
        sh(mysql(db)
            .arg("-e")
            .arg("SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, customer, amount, note, created))) FROM orders"))
    };
    let before = fingerprint(&db);
    assert!(before.starts_with("5000\t"), "{before}");

    let dir = tempfile::tempdir().unwrap();
    let (url, opts) = infra::s3(&infra::unique("maria"));
    let _ = dir;
    let agent = Agent::new(BIN, url).with_options(&opts);
    agent.init();
    let sock = infra::var("KANISTER_TEST_MYSQL_SOCKET");
    let push = agent.json(&[
        "push",
        "--tag",
        "db=mariadb",
        "--exec",
        "mysqldump",
        "--no-defaults",
        "-uroot",
        "-S",
        &sock,
        "--single-transaction",
        "--databases",
        &db,
    ]);
    assert!(push["bytes_read"].as_u64().unwrap() > 100_000, "{push}");

    sh(mysql("").arg("-e").arg(format!("DROP DATABASE {db}")));
    pull_into(&agent, push["snapshot_id"].as_str().unwrap(), &mut mysql(""));
    assert_eq!(fingerprint(&db), before, "restored table differs");
    sh(mysql("").arg("-e").arg(format!("DROP DATABASE {db}")));
}

fn pg(args: &[&str]) -> Command {
    let mut c = Command::new(args[0]);
    c.args(["-h", &infra::var("KANISTER_TEST_PG_HOST"), "-p", &infra::var("KANISTER_TEST_PG_PORT"), "-U", "postgres"]);
    c.args(&args[1..]);
    c
}

#[test]
fn postgresql_dump_round_trip() {
    let db = infra::unique("shop").replace('-', "_");
    sh(&mut pg(&["createdb", &db]));
    sh(&mut pg(&["psql", "-v", "ON_ERROR_STOP=1", "-d", &db, "-c",
        "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount numeric(10,2), note text, created timestamptz);
         INSERT INTO orders SELECT g, 'customer-' || g % 997, g * 1.25, repeat(md5(g::text), 1 + g % 5),
                                   '2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 5000) g;"]));
    let fingerprint = |db: &str| {
        sh(&mut pg(&[
            "psql",
            "-At",
            "-d",
            db,
            "-c",
            "SELECT count(*), md5(string_agg(concat_ws('|', id, customer, amount, note, created), ',' ORDER BY id)) FROM orders",
        ]))
    };
    let before = fingerprint(&db);
    assert!(before.starts_with("5000|"), "{before}");

    let (url, opts) = infra::azure(&infra::unique("pg"));
    let agent = Agent::new(BIN, url).with_options(&opts);
    agent.init();
    let host = infra::var("KANISTER_TEST_PG_HOST");
    let port = infra::var("KANISTER_TEST_PG_PORT");
    let push = agent.json(&[
        "push",
        "--tag",
        "db=postgres",
        "--exec",
        "pg_dump",
        "-h",
        &host,
        "-p",
        &port,
        "-U",
        "postgres",
        "-Fc",
        &db,
    ]);
    assert!(push["bytes_read"].as_u64().unwrap() > 10_000, "{push}");

    sh(&mut pg(&["dropdb", &db]));
    sh(&mut pg(&["createdb", &db]));
    pull_into(&agent, push["snapshot_id"].as_str().unwrap(), &mut pg(&["pg_restore", "--exit-on-error", "-d", &db]));
    assert_eq!(fingerprint(&db), before, "restored table differs");
    sh(&mut pg(&["dropdb", &db]));
}
