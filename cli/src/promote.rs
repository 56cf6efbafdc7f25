//! `alces promote`: asks a metalogger to become the master.

use alces_proto::auth::{load_secret, ClientAuth};
use alces_proto::pb::{metalogger_client::MetaloggerClient, PromoteRequest};
use serde_json::json;

use crate::args::{Global, PromoteArgs};
use crate::connect::{local_dir_from_env, read_env_file};

/// The metalogger's address: `host:port` as given, or the `address` file of a
/// metalogger named in the `alces local` directory of `$ALCES_LOCAL_DIR`.
pub fn resolve(name: &str) -> anyhow::Result<String> {
    if name.contains(':') {
        return Ok(name.to_string());
    }
    let dir = local_dir_from_env().ok_or_else(|| {
        anyhow::anyhow!(
            "'{name}' is not a host:port address; give the metalogger's address, or set ALCES_LOCAL_DIR to use names of an `alces local` cluster"
        )
    })?;
    let p = dir.join(name).join("address");
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            anyhow::anyhow!(
                "no metalogger '{name}' in {} ({}: {e})",
                dir.display(),
                p.display()
            )
        })
}

/// `alces promote`.
pub async fn run(global: &Global, a: &PromoteArgs) -> anyhow::Result<()> {
    let addr = resolve(&a.metalogger)?;
    let secret_file = global.secret_file.clone().or_else(|| {
        if std::env::var_os(alces_proto::auth::SECRET_ENV).is_some() {
            return None;
        }
        local_dir_from_env().and_then(|d| {
            read_env_file(&d)
                .into_iter()
                .find(|(k, _)| k == "ALCES_SECRET_FILE")
                .map(|(_, v)| v.into())
        })
    });
    let secret = load_secret(secret_file.as_deref())?;
    let auth = ClientAuth::new(&secret)?.with_tls(&crate::connect::tls(global)?);
    let ch = alces_proto::net::channel(&addr, &auth)
        .map_err(|e| anyhow::anyhow!("metalogger address {addr}: {e}"))?;
    let reply = MetaloggerClient::new(ch)
        .promote(PromoteRequest {
            switchover: a.switchover,
            force: a.force,
            ..Default::default()
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "metalogger {addr} refused the promotion: {}",
                alces_proto::net::status_text(&s)
            )
        })?
        .into_inner();
    if global.json {
        println!(
            "{}",
            json!({
                "epoch": reply.epoch,
                "version": reply.version,
                "listen": reply.listen,
                "pause_ms": reply.pause_ms,
            })
        );
    } else {
        println!(
            "metalogger {addr} is now the master on {} (epoch {}, metadata version {}{})",
            reply.listen,
            reply.epoch,
            reply.version,
            if a.switchover {
                format!(", mutations paused {} ms", reply.pause_ms)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
