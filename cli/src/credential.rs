//! `alces credential issue|list|revoke`: credentials scoped to a directory.

use std::io::Write;

use alces_proto::pb;
use serde_json::json;

use crate::args::{CredentialCommand, CredentialIssueArgs, Global, SquashArg};
use crate::connect::{admin, explain};

/// Runs one `alces credential` subcommand.
pub async fn run(global: &Global, c: &CredentialCommand) -> anyhow::Result<()> {
    match c {
        CredentialCommand::Issue(a) => issue(global, a).await,
        CredentialCommand::List => list(global).await,
        CredentialCommand::Revoke(r) => revoke(global, r.id).await,
    }
}

fn squash_name(s: i32) -> &'static str {
    match pb::Squash::try_from(s) {
        Ok(pb::Squash::Root) => "root",
        Ok(pb::Squash::All) => "all",
        _ => "none",
    }
}

fn info_json(i: &pb::CredentialInfo) -> serde_json::Value {
    let r = i.rule.clone().unwrap_or_default();
    json!({
        "id": i.id, "name": r.name, "path": r.path, "root_inode": i.root_inode,
        "read_only": r.read_only, "squash": squash_name(r.squash),
        "anon_uid": r.anon_uid, "anon_gid": r.anon_gid, "max_goal": r.max_goal,
        "admin": r.admin, "revoked": i.revoked,
    })
}

fn info_line(i: &pb::CredentialInfo) -> String {
    let r = i.rule.clone().unwrap_or_default();
    let mut flags = vec![if r.read_only { "ro" } else { "rw" }.to_string()];
    if r.squash != pb::Squash::None as i32 {
        flags.push(format!(
            "squash={} ({}:{})",
            squash_name(r.squash),
            r.anon_uid,
            r.anon_gid
        ));
    }
    if r.max_goal != 0 {
        flags.push(format!("max-goal={}", r.max_goal));
    }
    if r.admin {
        flags.push("admin".into());
    }
    if i.revoked {
        flags.push("REVOKED".into());
    }
    format!("{:>5}  {}  {}  {}", i.id, r.path, flags.join(","), r.name)
}

async fn issue(global: &Global, a: &CredentialIssueArgs) -> anyhow::Result<()> {
    if let Some(g) = a.max_goal {
        if !(1..=alces_proto::geometry::MAX_GOAL).contains(&g) {
            anyhow::bail!(
                "--max-goal {g} is not a goal: give 1 to {}",
                alces_proto::geometry::MAX_GOAL
            );
        }
    }
    let squash = match a.squash {
        SquashArg::None => pb::Squash::None,
        SquashArg::Root => pb::Squash::Root,
        SquashArg::All => pb::Squash::All,
    };
    let mut ad = admin(global, None)?;
    let r = ad
        .client
        .issue_credential(pb::IssueCredentialRequest {
            rule: Some(pb::CredentialRule {
                path: a.path.clone(),
                read_only: a.read_only,
                squash: squash as i32,
                anon_uid: a.anon_uid,
                anon_gid: a.anon_gid,
                max_goal: a.max_goal.unwrap_or(0),
                admin: a.admin,
                name: a.name.clone(),
            }),
        })
        .await
        .map_err(|s| explain(&ad.addr, "IssueCredential", &s))?
        .into_inner();
    let info = r.info.unwrap_or_default();
    if let Some(f) = &a.token_file {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(f)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the token file {} (it must not exist yet): {e}; the credential {} was issued: revoke it with `alces credential revoke {}`",
                    f.display(),
                    info.id,
                    info.id
                )
            })?;
        writeln!(file, "{}", r.token)?;
    }
    if global.json {
        let mut v = info_json(&info);
        if a.token_file.is_none() {
            v["token"] = json!(r.token);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("issued credential {}", info_line(&info).trim_start());
        match &a.token_file {
            Some(f) => println!("token written to {}", f.display()),
            None => println!(
                "token (shown once; the master keeps only its hash):\n{}",
                r.token
            ),
        }
    }
    Ok(())
}

async fn list(global: &Global) -> anyhow::Result<()> {
    let mut ad = admin(global, None)?;
    let r = ad
        .client
        .list_credentials(pb::Empty {})
        .await
        .map_err(|s| explain(&ad.addr, "ListCredentials", &s))?
        .into_inner();
    if global.json {
        let v: Vec<_> = r.credentials.iter().map(info_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{:>5}  path  rule  name", "id");
        for i in &r.credentials {
            println!("{}", info_line(i));
        }
    }
    Ok(())
}

async fn revoke(global: &Global, id: u64) -> anyhow::Result<()> {
    let mut ad = admin(global, None)?;
    let r = ad
        .client
        .revoke_credential(pb::RevokeCredentialRequest { id })
        .await
        .map_err(|s| explain(&ad.addr, "RevokeCredential", &s))?
        .into_inner();
    if global.json {
        println!("{}", serde_json::to_string_pretty(&info_json(&r))?);
    } else {
        println!("revoked credential {}", info_line(&r).trim_start());
    }
    Ok(())
}
