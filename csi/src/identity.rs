//! The CSI Identity service: name, version, capabilities and a probe that
//! reflects whether the parts this plugin needs answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::pb;
use crate::pb::identity_server::Identity;

/// Name of the driver (the StorageClass `provisioner`).
pub const DRIVER_NAME: &str = "csi.alces.io";

/// A readiness check: `Ok` when ready, else why not.
pub type ProbeFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The Identity service.
pub struct IdentityService {
    controller: bool,
    probe: ProbeFn,
}

impl IdentityService {
    /// Identity of a plugin that serves the controller (or not), ready when
    /// `probe` succeeds.
    pub fn new(controller: bool, probe: ProbeFn) -> Self {
        Self { controller, probe }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        use pb::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
        let mut capabilities = vec![pb::PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        }];
        if self.controller {
            capabilities.push(pb::PluginCapability {
                r#type: Some(Type::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            });
        }
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        match (self.probe)().await {
            Ok(()) => Ok(Response::new(pb::ProbeResponse { ready: Some(true) })),
            Err(why) => {
                tracing::warn!(reason = %why, "probe: not ready");
                Err(Status::failed_precondition(format!("not ready: {why}")))
            }
        }
    }
}
