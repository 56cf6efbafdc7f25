//! Exactly-once mutations across a failover (the master's reply cache): a
//! client library session talks to the master through a proxy that lets its
//! requests through and loses the replies; once the metalogger holds the
//! mutations, the master is SIGKILLed and the metalogger promoted (or the
//! master restarted from its own metadata), the proxy breaks the
//! connections, and every call, retried by the client against the new
//! master, returns success with the tree exactly as after one execution of
//! each: mkdir, create, rename, unlink, link and rmdir. Without the cache the
//! retries fail with EEXIST or ENOENT although the first runs succeeded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alces_client::{Caller, Client, ClientConfig, FileType, NewNode};
use alces_e2e::proxy::Proxy;
use alces_e2e::{wait_until, Cluster, Options, Proc};

/// One mutation of the table: what exists before it, the call, and what
/// the test directory holds after one execution (name -> kind, nlink).
struct Case {
    name: &'static str,
    setup: &'static [(&'static str, bool)],
}

/// The table: each case works in its own directory `/<case>`; `setup`
/// entries are (name, is_dir) made before the replies are lost.
const CASES: &[Case] = &[
    Case {
        name: "mkdir",
        setup: &[],
    },
    Case {
        name: "create",
        setup: &[],
    },
    Case {
        name: "rename",
        setup: &[("from", false)],
    },
    Case {
        name: "unlink",
        setup: &[("victim", false), ("stays", false)],
    },
    Case {
        name: "link",
        setup: &[("orig", false)],
    },
    Case {
        name: "rmdir",
        setup: &[("gone", true), ("kept", true)],
    },
];

/// What the directory of `case` must hold after one execution.
fn expected(case: &str) -> BTreeMap<String, (bool, u32)> {
    let e: &[(&str, bool, u32)] = match case {
        "mkdir" => &[("new", true, 2)],
        "create" => &[("new", false, 1)],
        "rename" => &[("to", false, 1)],
        "unlink" => &[("stays", false, 1)],
        "link" => &[("orig", false, 2), ("twin", false, 2)],
        "rmdir" => &[("kept", true, 2)],
        _ => unreachable!(),
    };
    e.iter()
        .map(|(n, d, l)| (n.to_string(), (*d, *l)))
        .collect()
}

/// Runs the mutation of `case` in `dir`: one master call, nothing else (a
/// read would wait for its own lost reply); `orig` is the inode to link.
async fn run(c: &Client, case: &str, dir: u64, orig: u64) -> alces_client::Result<()> {
    let who = Caller::new(0, 0, 1);
    match case {
        "mkdir" => c.mkdir(dir, b"new", 0o755, 0o022, &who).await.map(drop),
        "create" => c
            .mknod(dir, b"new", &NewNode::file(0o644), &who)
            .await
            .map(drop),
        "rename" => c.rename(dir, b"from", dir, b"to", 0, &who).await,
        "unlink" => c.unlink(dir, b"victim", &who).await,
        "link" => c.link(orig, dir, b"twin", &who).await.map(drop),
        "rmdir" => c.rmdir(dir, b"gone", &who).await,
        _ => unreachable!(),
    }
}

async fn listing(c: &Client, dir: u64) -> BTreeMap<String, (bool, u32)> {
    let (entries, _) = c.readdir_all(dir, true).await.expect("readdir");
    entries
        .iter()
        .filter(|e| e.name != b"." && e.name != b"..")
        .map(|e| {
            let a = e.attr.expect("readdir plus attributes");
            (
                String::from_utf8_lossy(&e.name).into_owned(),
                (e.kind == FileType::Directory as i32, a.nlink),
            )
        })
        .collect()
}

/// How the master is replaced while the replies are lost.
enum Replace {
    /// SIGKILL, then `alces promote` of the metalogger.
    Promote,
    /// SIGKILL, then the same master restarted on its own data directory.
    Restart,
}

fn lost_replies_are_retried_exactly_once(how: Replace) {
    let c = Cluster::start(Options {
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    })
    .expect("start cluster");
    let proxy = Proxy::start(&c.master).expect("proxy");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Default client settings (the retry window and backoff a mount uses).
    let mut cfg = ClientConfig::new(proxy.addr(), Arc::from(c.secret()));
    cfg.client_name = "reply-cache-e2e".into();
    cfg.tls = c.tls.clone();
    let client = Arc::new(rt.block_on(Client::connect(cfg)).expect("client"));
    let who = Caller::new(0, 0, 1);

    let mut dirs = BTreeMap::new();
    let mut orig = 0;
    rt.block_on(async {
        for case in CASES {
            let d = client
                .mkdir(client.root(), case.name.as_bytes(), 0o755, 0, &who)
                .await
                .expect("case directory");
            for (name, is_dir) in case.setup {
                let a = if *is_dir {
                    client.mkdir(d.inode, name.as_bytes(), 0o755, 0, &who).await
                } else {
                    client
                        .mknod(d.inode, name.as_bytes(), &NewNode::file(0o644), &who)
                        .await
                }
                .expect("setup");
                if *name == "orig" {
                    orig = a.inode;
                }
            }
            dirs.insert(case.name, d.inode);
        }
    });
    c.wait_ml_caught_up(1, Duration::from_secs(30));
    let before = c.status().expect("status").metadata_version;

    // The requests reach the master; their replies are lost.
    proxy.drop_replies(true);
    let calls: Vec<_> = CASES
        .iter()
        .map(|case| {
            let (client, dir) = (client.clone(), dirs[case.name]);
            rt.spawn(async move { (case.name, run(&client, case.name, dir, orig).await) })
        })
        .collect();
    // Every mutation ran (one record each) and the metalogger holds it.
    let n = CASES.len() as u64;
    wait_until(
        "the mutations to reach the metalogger",
        Duration::from_secs(30),
        || {
            c.ml_status(1)
                .is_ok_and(|s| s.durable_version >= before + n)
        },
    );
    assert!(
        calls.iter().all(|h| !h.is_finished()),
        "a call finished although its reply was lost"
    );

    c.kill9(Proc::Master);
    match how {
        Replace::Promote => {
            let out = c.promote(1, &[]);
            assert!(
                out.status.success(),
                "promote failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Replace::Restart => c.restart(Proc::Master),
    }
    proxy.drop_replies(false);
    proxy.cut();

    rt.block_on(async {
        for h in calls {
            let (name, r) = tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .expect("the retried call to finish")
                .expect("task");
            if let Err(e) = r {
                panic!("{name}: the retry after the lost reply failed: {e}");
            }
        }
        for case in CASES {
            assert_eq!(
                listing(&client, dirs[case.name]).await,
                expected(case.name),
                "{}: the tree is not as after one execution",
                case.name
            );
        }
    });
    let st = c.status().expect("status");
    assert!(
        st.reply_cache_entries > 0,
        "the new master's status shows no reply cache: {st:?}"
    );
    println!(
        "reply cache after the retries: {} entries, {} bytes",
        st.reply_cache_entries, st.reply_cache_bytes
    );
}

#[test]
fn lost_replies_around_a_promotion_are_answered_with_the_first_outcome() {
    lost_replies_are_retried_exactly_once(Replace::Promote);
}

#[test]
fn lost_replies_around_a_master_restart_are_answered_with_the_first_outcome() {
    lost_replies_are_retried_exactly_once(Replace::Restart);
}
