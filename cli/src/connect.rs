//! Reaching the master's admin service with the cluster secret.

use std::path::{Path, PathBuf};

use alces_proto::auth::{load_client_token, load_secret, ClientAuth};
use alces_proto::net::AuthChannel;
use alces_proto::pb::admin_client::AdminClient;
use tonic::{Code, Status};

use crate::args::Global;

/// An admin client bound to one master address.
pub struct Admin {
    /// The master address it talks to.
    pub addr: String,
    /// The gRPC client.
    pub client: AdminClient<AuthChannel>,
}

/// The `alces local` directory named by `$ALCES_LOCAL_DIR`, if any.
pub fn local_dir_from_env() -> Option<PathBuf> {
    std::env::var_os("ALCES_LOCAL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Reads `KEY=VALUE` lines of an `alces local` env file.
pub fn read_env_file(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("env"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The TLS settings of the CLI: from the --tls-* options, else from the env
/// file of `$ALCES_LOCAL_DIR` (a cluster made by `alces local up --tls`).
pub fn tls(global: &Global) -> anyhow::Result<alces_proto::tls::Tls> {
    let mut a = global.tls.clone();
    if !a.enabled() {
        if let Some(d) = local_dir_from_env() {
            for (k, v) in read_env_file(&d) {
                match k.as_str() {
                    "ALCES_TLS_CA" => a.tls_ca = Some(v.into()),
                    "ALCES_TLS_CERT" => a.tls_cert = Some(v.into()),
                    "ALCES_TLS_KEY" => a.tls_key = Some(v.into()),
                    _ => {}
                }
            }
        }
    }
    a.load(alces_proto::tls::Role::Client)
}

/// Resolves the master address and secret from the global options (falling back to
/// the env file of `$ALCES_LOCAL_DIR`) and builds an admin client.
pub fn admin(global: &Global, fallback_master: Option<&str>) -> anyhow::Result<Admin> {
    let local_env = local_dir_from_env()
        .map(|d| read_env_file(&d))
        .unwrap_or_default();
    let from_env = |k: &str| {
        local_env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    let addr = global
        .master
        .clone()
        .or_else(|| fallback_master.map(str::to_string))
        .or_else(|| from_env("ALCES_MASTER"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no master address: pass --master HOST:PORT or set ALCES_MASTER (for a local cluster: `source DIR/env`)"
            )
        })?;
    let secret_file = global.secret_file.clone().or_else(|| {
        if std::env::var_os(alces_proto::auth::SECRET_ENV).is_some() {
            None
        } else {
            from_env("ALCES_SECRET_FILE").map(PathBuf::from)
        }
    });
    let presented = if global.credential_file.is_some()
        || std::env::var_os(alces_proto::auth::CREDENTIAL_ENV).is_some()
    {
        load_client_token(global.credential_file.as_deref(), None)?
    } else {
        load_secret(secret_file.as_deref())?
    };
    admin_at(&addr, &presented, &tls(global)?)
}

/// Builds an admin client for `addr` presenting `secret`.
pub fn admin_at(addr: &str, secret: &str, tls: &alces_proto::tls::Tls) -> anyhow::Result<Admin> {
    let auth = ClientAuth::new(secret)?.with_tls(tls);
    let ch = alces_proto::net::channel(addr, &auth)
        .map_err(|e| anyhow::anyhow!("{e} (check --master / ALCES_MASTER)"))?;
    let client = AdminClient::new(ch)
        .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES);
    Ok(Admin {
        addr: addr.to_string(),
        client,
    })
}

/// Turns a failed admin call into an error that says what to check.
pub fn explain(addr: &str, what: &str, s: &Status) -> anyhow::Error {
    match s.code() {
        _ if alces_proto::net::status_text(s).contains("TLS: ") => anyhow::anyhow!(
            "cannot reach master at {addr}: {}",
            alces_proto::net::status_text(s)
        ),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            anyhow::anyhow!(
                "cannot reach master at {addr}: {}; is it running? (ALCES_MASTER)",
                alces_proto::net::status_text(s)
            )
        }
        Code::Unauthenticated => anyhow::anyhow!(
            "the master at {addr} refused the cluster secret or credential: {} (check --secret-file / ALCES_SECRET_FILE / ALCES_SECRET, or --credential-file / ALCES_CREDENTIAL)",
            s.message()
        ),
        _ => anyhow::anyhow!("{what} failed at master {addr}: {}", s.message()),
    }
}
