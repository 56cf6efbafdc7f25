//! `alces tls generate`: a CA and a certificate it signs, written as a
//! Kubernetes TLS Secret holds them (`ca.crt`, `tls.crt`, `tls.key`), for
//! clusters without cert-manager. The CA's key is not kept: a new run makes
//! a new CA, and `--also-trust` keeps the previous one trusted while a
//! rotation reaches every pod.

use std::path::Path;

use anyhow::Context;

use alces_proto::tls::certgen::{write_file, Ca, Validity};

use crate::args::TlsGenerateArgs;

/// The names an AlcesCluster `cluster` in `namespace` needs in its server
/// certificate (the operator's `builders::tls_dns_names`): the master
/// Service, every metadata pod and every chunkserver pod.
pub fn cluster_names(cluster: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{cluster}-master.{namespace}.svc"),
        format!("*.{cluster}-metadata.{namespace}.svc"),
        format!("*.{cluster}-chunkservers.{namespace}.svc"),
    ]
}

fn dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Checks one certificate name: an IP address, or a DNS name whose first
/// label may be `*`.
pub fn check_name(n: &str) -> Result<(), String> {
    if n.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let rest = n.strip_prefix("*.").unwrap_or(n);
    if n.len() > 253 || !rest.split('.').all(dns_label) {
        let shown: String = n.chars().take(80).collect();
        return Err(format!(
            "'{}' is not a DNS name or an IP address (letters, digits and '-' in labels of at most 63 characters separated by '.', at most 253 in all; '*.' only as the first label)",
            shown.escape_default()
        ));
    }
    Ok(())
}

/// Runs `alces tls generate`.
pub fn generate(a: &TlsGenerateArgs) -> anyhow::Result<()> {
    let mut names: Vec<String> = a
        .names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if let (Some(c), Some(ns)) = (&a.cluster, &a.namespace) {
        for (what, v) in [("--cluster", c), ("--namespace", ns)] {
            if !dns_label(v) || v.bytes().any(|b| b.is_ascii_uppercase()) {
                anyhow::bail!(
                    "{what} '{}' is not a Kubernetes name (a lowercase DNS label)",
                    v.escape_default()
                );
            }
        }
        names.extend(cluster_names(c, ns));
    }
    if names.is_empty() {
        anyhow::bail!(
            "no name for the certificate: give --names (the DNS names or addresses clients connect to) or --cluster NAME --namespace NS"
        );
    }
    for n in &names {
        check_name(n).map_err(|e| anyhow::anyhow!("--names: {e}"))?;
    }
    names.dedup();
    let extra = match &a.also_trust {
        Some(f) => {
            let bytes = std::fs::read(f)
                .with_context(|| format!("--also-trust: cannot read {}", f.display()))?;
            match String::from_utf8(bytes) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => pem,
                _ => anyhow::bail!(
                    "--also-trust: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    f.display()
                ),
            }
        }
        None => String::new(),
    };
    prepare_dir(&a.out, a.force)?;
    let ca = Ca::new("Alces CA (alces tls generate)")?;
    let pair = ca.issue(&names, Validity::Current, rand::random::<u64>() >> 1)?;
    let mut bundle = ca.cert_pem().to_string();
    if !extra.is_empty() {
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&extra);
    }
    write_file(&a.out.join("ca.crt"), bundle.as_bytes(), 0o644)?;
    write_file(&a.out.join("tls.crt"), pair.cert_pem.as_bytes(), 0o644)?;
    write_file(&a.out.join("tls.key"), pair.key_pem.as_bytes(), 0o600)?;
    let d = a.out.display();
    println!("wrote {d}/ca.crt, {d}/tls.crt and {d}/tls.key (0600) for:");
    for n in &names {
        println!("  {n}");
    }
    println!("valid for two years, with the server and client usages (mutual TLS). As a Secret:");
    println!(
        "  kubectl create secret generic {} --from-file=tls.crt={d}/tls.crt --from-file=tls.key={d}/tls.key --from-file=ca.crt={d}/ca.crt",
        a.secret_name
    );
    Ok(())
}

/// Creates `dir` 0700 when missing; refuses one that holds the files
/// already, unless `force`.
fn prepare_dir(dir: &Path, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("--out {} exists and is not a directory", dir.display());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("--out: cannot create {}", dir.display()))?;
    if !force {
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            if dir.join(f).exists() {
                anyhow::bail!(
                    "{} exists already; give another --out, or --force to replace it",
                    dir.join(f).display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_names_or_addresses() {
        for ok in [
            "localhost",
            "demo-master.store.svc",
            "*.demo-metadata.store.svc",
            "10.0.0.1",
            "::1",
            "A.example",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(64);
        let huge = format!("{}.x", "a.".repeat(200));
        for bad in [
            "",
            "a b",
            "a..b",
            "-a.b",
            "a.*.b",
            "**.b",
            "é.example",
            "a/b",
            "a\0b",
            long.as_str(),
            huge.as_str(),
        ] {
            let e = check_name(bad).expect_err(bad);
            assert!(e.contains("is not a DNS name"), "{e}");
        }
    }

    #[test]
    fn cluster_names_follow_the_services() {
        assert_eq!(
            cluster_names("demo", "store"),
            [
                "demo-master.store.svc",
                "*.demo-metadata.store.svc",
                "*.demo-chunkservers.store.svc"
            ]
        );
    }
}
