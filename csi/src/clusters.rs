//! Connections to the Alces clusters volumes live in, one client session per
//! (master address, secret), made on first use and kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alces_client::{Client, ClientConfig};
use tonic::Status;

use crate::ids::ClusterRef;

/// Key of the cluster secret in the CSI `secrets` of a call.
pub const SECRET_KEY: &str = "secret";

/// How long a call waits for an unreachable master before it fails with
/// UNAVAILABLE (the CO retries).
const MASTER_TIMEOUT: Duration = Duration::from_secs(15);

/// The clusters this controller talks to.
pub struct Clusters {
    default: Option<ClusterRef>,
    default_secret: Option<Arc<str>>,
    clients: tokio::sync::Mutex<HashMap<(String, Arc<str>), Client>>,
    tls: alces_proto::tls::Tls,
}

impl Clusters {
    /// Clusters with a default (for StorageClasses that name none) and a
    /// default secret (for calls that carry none).
    pub fn new(default: Option<ClusterRef>, default_secret: Option<Arc<str>>) -> Self {
        Self {
            default,
            default_secret,
            clients: tokio::sync::Mutex::new(HashMap::new()),
            tls: alces_proto::tls::Tls::plain(),
        }
    }

    /// The same, connecting to masters and chunkservers with `tls`.
    pub fn with_tls(mut self, tls: alces_proto::tls::Tls) -> Self {
        self.tls = tls;
        self
    }

    /// The cluster a StorageClass names, or the default one.
    pub fn resolve(&self, named: Option<&ClusterRef>) -> Result<ClusterRef, Status> {
        named.cloned().or_else(|| self.default.clone()).ok_or_else(|| {
            Status::invalid_argument(
                "the StorageClass names no cluster and the driver has no default: set the parameter cluster (AlcesCluster namespace/name) or master (host:port), or start alces-csi with --master",
            )
        })
    }

    /// The default cluster, if any.
    pub fn default_cluster(&self) -> Option<&ClusterRef> {
        self.default.as_ref()
    }

    /// A client of `cluster`, authenticated with the call's secret (or the
    /// default one).
    pub async fn client(
        &self,
        cluster: &ClusterRef,
        secrets: &HashMap<String, String>,
    ) -> Result<Client, Status> {
        let secret: Arc<str> = match secrets.get(SECRET_KEY) {
            Some(s) if !s.trim().is_empty() => Arc::from(s.trim()),
            Some(_) => {
                return Err(Status::invalid_argument(format!(
                    "the secret key '{SECRET_KEY}' of the call's secrets is empty"
                )))
            }
            None => self.default_secret.clone().ok_or_else(|| {
                Status::invalid_argument(format!(
                    "no cluster secret: reference a Secret with the key '{SECRET_KEY}' in the StorageClass (csi.storage.k8s.io/*-secret-name) or start alces-csi with --secret-file"
                ))
            })?,
        };
        let master = cluster.master_address();
        let key = (master.clone(), secret.clone());
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut config = ClientConfig::new(master.clone(), secret);
        config.client_name = "alces-csi".into();
        config.tls = self.tls.clone();
        config.reconnect_timeout = MASTER_TIMEOUT;
        let client = Client::connect(config).await.map_err(|e| {
            let msg = format!("cannot reach the master of cluster {cluster} at {master}: {e}");
            if e.errno() == libc::EACCES || e.errno() == libc::EPERM {
                Status::unauthenticated(msg)
            } else {
                Status::unavailable(msg)
            }
        })?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}
