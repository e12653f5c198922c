//! Test certificates made with the `openssl` command line: a CA, a server certificate and a
//! client certificate signed by it, valid for two days, in a directory of the caller's.

use std::path::Path;
use std::process::Command;

/// What the server certificate names.
#[derive(Debug, Clone, Copy)]
pub struct ServerNames<'a> {
    /// The subject's common name.
    pub cn: &'a str,
    /// The subjectAltName value, e.g. `DNS:localhost,IP:127.0.0.1`.
    pub san: &'a str,
}

/// Writes `ca.pem`/`ca.key`, `server.pem`/`server.key` (for `server`) and
/// `client.pem`/`client.key` (common name `client_cn`) into `dir`. Panics with openssl's
/// message when a step fails.
pub fn make_certs(dir: &Path, server: ServerNames<'_>, client_cn: &str) {
    let p = |n: &str| dir.join(n).display().to_string();
    let write = |n: &str, text: &str| std::fs::write(p(n), text).unwrap_or_else(|e| panic!("writing {n}: {e}"));
    write(
        "ca.cnf",
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n[dn]\nCN = kanister-test-ca\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    );
    let leaf = "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n";
    write("server.ext", &format!("{leaf}extendedKeyUsage = serverAuth\nsubjectAltName = {}\n", server.san));
    write("client.ext", &format!("{leaf}extendedKeyUsage = clientAuth\n"));

    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = ["req", "-x509", "-config", &p("ca.cnf"), "-keyout", &p("ca.key"), "-out", &p("ca.pem"), "-days", "2"];
    openssl(Command::new("openssl").args(ca).args(ec));
    for (name, cn) in [("server", server.cn), ("client", client_cn)] {
        let (key, csr, pem, ext) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
            p(&format!("{name}.ext")),
        );
        let subject = format!("/CN={cn}");
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-config", &p("ca.cnf"), "-subj", &subject])
                .args(ec)
                .args(["-keyout", &key, "-out", &csr]),
        );
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-in", &csr, "-CA", &p("ca.pem"), "-CAkey", &p("ca.key")])
                .args(["-CAcreateserial", "-days", "2", "-extfile", &ext, "-out", &pem]),
        );
    }
}

fn openssl(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running openssl: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}
