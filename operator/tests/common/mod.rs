//! A stand-in Kubernetes API server for the controller tests: a
//! `tower-test` mock service answered by an in-memory store of objects of one
//! namespace (get, list by label, server-side apply, JSON and merge patches,
//! create, status replacement with a resourceVersion precondition, delete,
//! discovery of `policy/v1`), recording every request. Faults can be armed:
//! the server "going away" (every request fails) and a conflict on the next
//! status write.
//!
//! Also stand-in metadata pods: the Metalogger gRPC service (Status,
//! Promote) with a chosen answer, so the failover flow runs without daemons.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use alces_operator::controller::target::Resolver;
use alces_proto::pb::{self, metalogger_server::Metalogger};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Namespace of every test object.
pub const NS: &str = "ns";

/// One request the controller made.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// Content type of the body (patches).
    pub content_type: String,
    /// The body as JSON (Null when empty).
    pub body: Value,
}

impl Call {
    /// True for requests that change something.
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// `METHOD kind/name[/status]`, e.g. `PATCH statefulsets/c-cs-a`.
    pub fn short(&self) -> String {
        let parts: Vec<&str> = self.path.split('/').collect();
        let i = parts.iter().position(|p| *p == "namespaces");
        let tail = match i {
            Some(i) => parts[i + 2..].join("/"),
            None => parts[parts.len().saturating_sub(1)..].join("/"),
        };
        format!("{} {tail}", self.method)
    }
}

/// What the stand-in API server holds and has seen.
#[derive(Default)]
pub struct State {
    /// Objects by `plural/name`.
    pub objects: BTreeMap<String, Value>,
    /// Every request, in order.
    pub calls: Vec<Call>,
    /// Events created, as (reason, note).
    pub events: Vec<(String, String)>,
    /// Every request fails (connection-level 503) while true.
    pub down: bool,
    /// The next status write is refused with 409 Conflict.
    pub conflict_next_status: bool,
    /// Every status write is refused with 409 Conflict while true.
    pub conflict_status: bool,
    /// A shared journal (API writes and gRPC calls in order).
    pub journal: Vec<String>,
    /// While set, a StatefulSet whose spec an apply changes is observed at
    /// once, as a StatefulSet controller quicker than the operator would:
    /// its status gets the new generation and this update revision.
    pub instant_statefulset_revision: Option<String>,
    rv: u64,
}

/// The stand-in API server.
#[derive(Clone, Default)]
pub struct Api {
    /// Its state.
    pub state: Arc<Mutex<State>>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 300 { "Success" } else { "Failure" },
        "message": message, "reason": reason, "code": code,
    })
}

/// `plural`, `name`, `subresource` of a namespaced or cluster-scoped path.
fn parse(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest: &[&str] = match p.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _, rest @ ..] => rest,
        rest => rest,
    };
    match rest {
        [plural] => Some((plural.to_string(), None, None)),
        [plural, name] => Some((plural.to_string(), Some(name.to_string()), None)),
        [plural, name, sub] => Some((
            plural.to_string(),
            Some(name.to_string()),
            Some(sub.to_string()),
        )),
        _ => None,
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
                .replace("%2c", ",")
                .replace("%3d", "=")
                .replace("%2f", "/")
        })
    })
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Applies the JSON patch operations the finalizer helper sends (test, add,
/// remove on `/metadata/finalizers`).
fn json_patch(obj: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        let ptr: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = ptr.split_last().ok_or("empty path")?;
        let mut at = &mut *obj;
        for p in parents {
            at = at
                .get_mut(p.as_str())
                .ok_or_else(|| format!("no {p} in {path}"))?;
        }
        match op["op"].as_str() {
            Some("test") => {
                let cur = at.get(last.as_str()).cloned().unwrap_or(Value::Null);
                let cur = match (&cur, last.parse::<usize>()) {
                    (_, Ok(i)) => at.get(i).cloned().unwrap_or(Value::Null),
                    _ => cur,
                };
                if cur != op["value"] {
                    return Err(format!("test of {path} failed"));
                }
            }
            Some("add") => {
                if last == "-" {
                    at.as_array_mut()
                        .ok_or("not an array")?
                        .push(op["value"].clone());
                } else {
                    at[last.as_str()] = op["value"].clone();
                }
            }
            Some("remove") => {
                if let Ok(i) = last.parse::<usize>() {
                    at.as_array_mut().ok_or("not an array")?.remove(i);
                } else {
                    at.as_object_mut().ok_or("not an object")?.remove(last);
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

impl Api {
    /// A client talking to a new stand-in server (served on the current
    /// tokio runtime).
    pub fn start() -> (Self, kube::Client) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Self::default();
        let me = api.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = me.answer(req).await;
                send.send_response(resp);
            }
        });
        (api, kube::Client::new(svc, NS))
    }

    /// Puts `obj` into the store as the server would (resourceVersion, uid).
    pub fn put(&self, plural: &str, mut obj: Value) {
        let mut s = self.state.lock();
        s.rv += 1;
        let rv = s.rv.to_string();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        obj["metadata"]["resourceVersion"] = json!(rv);
        obj["metadata"]["namespace"] = json!(NS);
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{plural}-{name}"));
        }
        if obj["metadata"]["generation"].is_null() {
            obj["metadata"]["generation"] = json!(1);
        }
        s.objects.insert(format!("{plural}/{name}"), obj);
    }

    /// The stored object `plural/name`.
    pub fn get(&self, plural: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .objects
            .get(&format!("{plural}/{name}"))
            .cloned()
    }

    /// Changes a stored object in place (as another client would), bumping
    /// its resourceVersion (and its generation when `spec` changes).
    pub fn edit(&self, plural: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut s = self.state.lock();
        s.rv += 1;
        let rv = s.rv.to_string();
        let o = s
            .objects
            .get_mut(&format!("{plural}/{name}"))
            .unwrap_or_else(|| panic!("no {plural}/{name}"));
        let spec = o["spec"].clone();
        f(o);
        if o["spec"] != spec {
            let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
            o["metadata"]["generation"] = json!(g + 1);
        }
        o["metadata"]["resourceVersion"] = json!(rv);
    }

    /// Forgets the recorded calls and events.
    pub fn clear(&self) {
        let mut s = self.state.lock();
        s.calls.clear();
        s.events.clear();
        s.journal.clear();
    }

    /// Recorded calls.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    /// Recorded writes as `METHOD kind/name[/status]`.
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|c| c.is_write())
            .map(Call::short)
            .collect()
    }

    /// Reasons of the events created.
    pub fn event_reasons(&self) -> Vec<String> {
        self.state
            .lock()
            .events
            .iter()
            .map(|e| e.0.clone())
            .collect()
    }

    /// The AlcesCluster as stored, typed.
    pub fn cluster(&self, name: &str) -> alces_operator::crd::AlcesCluster {
        serde_json::from_value(self.get("alcesclusters", name).expect("cluster stored"))
            .expect("a valid AlcesCluster")
    }

    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let method = req.method().to_string();
        let uri = req.uri().clone();
        let path = uri.path().to_string();
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        let call = Call {
            method: method.clone(),
            path: path.clone(),
            query: uri.query().unwrap_or_default().to_string(),
            content_type: content_type.clone(),
            body: body.clone(),
        };
        let mut s = self.state.lock();
        if call.is_write() {
            s.journal.push(format!("api {}", call.short()));
        }
        s.calls.push(call);
        if s.down {
            return reply(
                503,
                status_body(503, "ServiceUnavailable", "the API server is down"),
            );
        }
        let (code, v) = Self::handle(&mut s, &method, &uri, &path, &content_type, body);
        reply(code, v)
    }

    fn handle(
        s: &mut State,
        method: &str,
        uri: &http::Uri,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        if method == "GET" && (path == "/apis/policy/v1" || path == "/apis/policy/v1beta1") {
            let gv = path.trim_start_matches("/apis/");
            return (
                200,
                json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                    "resources": [{ "name": "poddisruptionbudgets", "singularName": "poddisruptionbudget",
                        "namespaced": true, "kind": "PodDisruptionBudget",
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"] }]
                }),
            );
        }
        let Some((plural, name, sub)) = parse(path) else {
            return (
                404,
                status_body(404, "NotFound", &format!("no route {path}")),
            );
        };
        let key = |n: &str| format!("{plural}/{n}");
        let not_found = |n: &str| {
            (
                404,
                status_body(404, "NotFound", &format!("{plural} \"{n}\" not found")),
            )
        };
        s.rv += 1;
        let rv = s.rv.to_string();
        match (method, name) {
            ("GET", None) => {
                let sel = query(uri, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("{plural}/")))
                    .map(|(_, v)| v.clone())
                    .filter(|v| labels_match(v, &sel))
                    .collect();
                (
                    200,
                    json!({ "kind": "List", "apiVersion": "v1", "metadata": { "resourceVersion": rv }, "items": items }),
                )
            }
            ("GET", Some(n)) => match s.objects.get(&key(&n)) {
                Some(o) => (200, o.clone()),
                None => not_found(&n),
            },
            ("POST", _) => {
                let mut o = body;
                let n = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if plural == "events" {
                    s.events.push((
                        o["reason"].as_str().unwrap_or_default().to_string(),
                        o["note"].as_str().unwrap_or_default().to_string(),
                    ));
                    return (201, o);
                }
                if s.objects.contains_key(&key(&n)) {
                    return (
                        409,
                        status_body(
                            409,
                            "AlreadyExists",
                            &format!("{plural} \"{n}\" already exists"),
                        ),
                    );
                }
                if let Some(sd) = o.get("stringData").cloned() {
                    let mut data = serde_json::Map::new();
                    for (k, v) in sd.as_object().into_iter().flatten() {
                        let b = k8s_openapi::ByteString(
                            v.as_str().unwrap_or_default().as_bytes().to_vec(),
                        );
                        data.insert(k.clone(), serde_json::to_value(b).unwrap());
                    }
                    o["data"] = Value::Object(data);
                    o.as_object_mut().unwrap().remove("stringData");
                }
                o["metadata"]["resourceVersion"] = json!(rv);
                o["metadata"]["namespace"] = json!(NS);
                o["metadata"]["uid"] = json!(format!("uid-{plural}-{n}"));
                s.objects.insert(key(&n), o.clone());
                (201, o)
            }
            ("PATCH", Some(n)) => {
                let existing = s.objects.get(&key(&n)).cloned();
                let o = if content_type.contains("apply-patch") {
                    let mut o = body;
                    if let Some(old) = &existing {
                        if !old["status"].is_null() {
                            o["status"] = old["status"].clone();
                        }
                        o["metadata"]["uid"] = old["metadata"]["uid"].clone();
                        // As the API server: the generation moves on with the spec.
                        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                        let changed = old["spec"] != o["spec"];
                        o["metadata"]["generation"] = json!(g + i64::from(changed));
                        if let (true, "statefulsets", Some(rev)) =
                            (changed, plural.as_str(), &s.instant_statefulset_revision)
                        {
                            if !o["status"].is_object() {
                                o["status"] = json!({});
                            }
                            o["status"]["observedGeneration"] = json!(g + 1);
                            o["status"]["updateRevision"] = json!(rev);
                        }
                    } else {
                        o["metadata"]["uid"] = json!(format!("uid-{plural}-{n}"));
                        o["metadata"]["generation"] = json!(1);
                    }
                    o
                } else {
                    let Some(mut o) = existing else {
                        return not_found(&n);
                    };
                    if content_type.contains("json-patch") {
                        if let Err(e) = json_patch(&mut o, &body) {
                            return (422, status_body(422, "Invalid", &e));
                        }
                    } else {
                        merge(&mut o, &body);
                    }
                    o
                };
                let mut o = o;
                o["metadata"]["resourceVersion"] = json!(rv);
                o["metadata"]["namespace"] = json!(NS);
                // An object being deleted goes once its last finalizer is gone.
                let gone = !o["metadata"]["deletionTimestamp"].is_null()
                    && o["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(|f| f.is_empty());
                if gone {
                    s.objects.remove(&key(&n));
                } else {
                    s.objects.insert(key(&n), o.clone());
                }
                (200, o)
            }
            ("PUT", Some(n)) if sub.as_deref() == Some("status") => {
                let Some(old) = s.objects.get(&key(&n)).cloned() else {
                    return not_found(&n);
                };
                if std::mem::take(&mut s.conflict_next_status)
                    || s.conflict_status
                    || body["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"]
                {
                    return (
                        409,
                        status_body(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
                    );
                }
                let mut o = old;
                o["status"] = body["status"].clone();
                o["metadata"]["resourceVersion"] = json!(rv);
                s.objects.insert(key(&n), o.clone());
                (200, o)
            }
            ("DELETE", Some(n)) => match s.objects.remove(&key(&n)) {
                Some(_) => (200, status_body(200, "", "deleted")),
                None => not_found(&n),
            },
            _ => (405, status_body(405, "MethodNotAllowed", path)),
        }
    }
}

fn reply(code: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

/// An AlcesCluster `name` with one pool `a` of `replicas` chunkservers.
pub fn cluster(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "alces.io/v1alpha1",
        "kind": "AlcesCluster",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "image": "alces:test",
            "chunkservers": { "pools": [
                { "name": "a", "replicas": replicas, "disks": [{ "name": "d0", "volumeClaim": { "size": "1Gi" } }] }
            ] }
        }
    })
}

/// A Ready pod of the cluster's metadata StatefulSet (labels as the builders
/// make them).
pub fn metadata_pod(c: &alces_operator::crd::AlcesCluster, ordinal: i32) -> Value {
    use alces_operator::builders::{names, selector, METADATA};
    let name = names::pod(&names::metadata(&kube::ResourceExt::name_any(c)), ordinal);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": selector(c, METADATA) },
        "spec": { "containers": [{ "name": "alces", "image": "alces:test" }] },
        "status": { "conditions": [{ "type": "Ready", "status": "True" }] }
    })
}

/// Addresses of the stand-in daemons by (pod, port); anything else is a
/// closed local port (refused at once).
#[derive(Default, Clone)]
pub struct Addresses(pub Arc<Mutex<HashMap<(String, u16), String>>>);

impl Addresses {
    /// Routes `pod:port` to `addr`.
    pub fn set(&self, pod: &str, port: u16, addr: SocketAddr) {
        self.0
            .lock()
            .insert((pod.to_string(), port), addr.to_string());
    }
    /// `pod:port` answers no more.
    pub fn unset(&self, pod: &str, port: u16) {
        self.0.lock().remove(&(pod.to_string(), port));
    }
}

impl Resolver for Addresses {
    fn metadata_pod(&self, _ns: &str, _cluster: &str, pod: &str, port: u16) -> String {
        self.0
            .lock()
            .get(&(pod.to_string(), port))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:1".to_string())
    }
}

/// A stand-in metadata pod's Metalogger service: answers `info`, and takes a
/// Promote by becoming master at the requested epoch (recorded in `journal`).
#[derive(Clone)]
pub struct FakeMetalogger {
    /// What Status answers.
    pub info: Arc<Mutex<pb::MetaloggerInfo>>,
    /// Promote requests received.
    pub promotes: Arc<Mutex<Vec<pb::PromoteRequest>>>,
    /// The API server's state, whose journal records the calls.
    pub api: Api,
    /// The pod's name.
    pub pod: String,
}

#[tonic::async_trait]
impl Metalogger for FakeMetalogger {
    async fn status(
        &self,
        _r: tonic::Request<pb::Empty>,
    ) -> Result<tonic::Response<pb::MetaloggerInfo>, tonic::Status> {
        Ok(tonic::Response::new(self.info.lock().clone()))
    }

    async fn promote(
        &self,
        r: tonic::Request<pb::PromoteRequest>,
    ) -> Result<tonic::Response<pb::PromoteReply>, tonic::Status> {
        let r = r.into_inner();
        self.api
            .state
            .lock()
            .journal
            .push(format!("grpc Promote {} epoch {}", self.pod, r.epoch));
        self.promotes.lock().push(r);
        let mut i = self.info.lock();
        i.role = "master".into();
        i.seen_epoch = r.epoch;
        Ok(tonic::Response::new(pb::PromoteReply {
            epoch: r.epoch,
            ..Default::default()
        }))
    }
}

impl FakeMetalogger {
    /// Serves a stand-in metadata pod on 127.0.0.1; returns its address and
    /// the task serving it (abort it to make the pod unreachable).
    pub async fn serve(
        api: &Api,
        pod: &str,
        info: pb::MetaloggerInfo,
    ) -> (Self, SocketAddr, tokio::task::JoinHandle<()>) {
        let me = Self {
            info: Arc::new(Mutex::new(info)),
            promotes: Arc::default(),
            api: api.clone(),
            pod: pod.to_string(),
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let svc = pb::metalogger_server::MetaloggerServer::new(me.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        (me, addr, task)
    }
}
