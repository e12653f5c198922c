//! The controller's reconcile against a mock API server (`tower-test`) that asserts each request
//! of one reconcile: method, path and query, and body.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kanister_coordinator::cluster::kube::KubeCluster;
use kanister_coordinator::controller::{self, Context};
use kanister_coordinator::crd::ActionSet;
use kanister_coordinator::engine::{Engine, EngineConfig};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const ACTIONSET: &str = "/apis/cr.kanister.io/v1alpha1/namespaces/kanister/actionsets/backup-1";
const STATUS: &str = "/apis/cr.kanister.io/v1alpha1/namespaces/kanister/actionsets/backup-1/status?";
const BLUEPRINT: &str = "/apis/cr.kanister.io/v1alpha1/namespaces/kanister/blueprints/mysql-bp";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/kanister/events?";

fn setup() -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let cluster = Arc::new(KubeCluster::new(client, "kanister-coordinator"));
    // No watchdog request interleaves with the asserted ones.
    let config = EngineConfig { watch_interval: Duration::from_secs(3600), ..EngineConfig::default() };
    (Arc::new(Context { engine: Engine::new(cluster, config) }), handle)
}

/// Awaits the next request, checks method and path (with query), answers `status` with `body`,
/// and returns the request's JSON body (Null when empty).
async fn expect(handle: &mut Handle, method: &str, path: &str, status: u16, body: Value) -> Value {
    let (request, send) =
        tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.expect("no request").expect("closed");
    assert_eq!(request.method().as_str(), method, "method of {}", request.uri());
    assert_eq!(request.uri().path_and_query().map(|p| p.as_str()), Some(path));
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap(),
    );
    sent
}

fn api_status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{reason} happened"),
           "reason": reason, "code": code})
}

fn actionset(rv: &str, blueprint: &str, status: Option<Value>) -> Value {
    let mut a = json!({
        "apiVersion": "cr.kanister.io/v1alpha1", "kind": "ActionSet",
        "metadata": {"name": "backup-1", "namespace": "kanister", "resourceVersion": rv, "uid": "u-1"},
        "spec": {"actions": [{
            "name": "backup", "blueprint": blueprint,
            "object": {"kind": "StatefulSet", "name": "mysql", "namespace": "db"}
        }]}
    });
    if let Some(s) = status {
        a["status"] = s;
    }
    a
}

fn blueprint() -> Value {
    json!({
        "apiVersion": "cr.kanister.io/v1alpha1", "kind": "Blueprint",
        "metadata": {"name": "mysql-bp", "namespace": "kanister", "resourceVersion": "7"},
        "actions": {"backup": {
            "outputArtifacts": {"cloud": {"keyValue": {"path": "{{ .Phases.dump.Output.path }}"}}},
            "phases": [
                {"func": "KubeExec", "name": "dump",
                 "args": {"namespace": "db", "pod": "mysql-0", "command": ["mysqldump"]}},
                {"func": "KubeTask", "name": "upload",
                 "args": {"image": "alpine:3", "command": ["true"]}}
            ],
            "deferPhase": {"func": "KubeTask", "name": "cleanup", "args": {"image": "alpine:3", "command": ["true"]}}
        }}
    })
}

/// The ActionSet object the controller hands to reconcile (only its name and namespace count).
fn trigger() -> Arc<ActionSet> {
    Arc::new(serde_json::from_value(actionset("1", "mysql-bp", None)).unwrap())
}

#[tokio::test]
async fn reconciling_a_new_actionset_initialises_its_status_through_the_status_subresource_and_starts_it() {
    let (ctx, mut server) = setup();
    let engine = ctx.engine.clone();
    let reconcile = tokio::spawn(controller::reconcile(trigger(), ctx));

    // 1. The ActionSet is read fresh (the watched copy may be stale).
    let sent = expect(&mut server, "GET", ACTIONSET, 200, actionset("1", "mysql-bp", None)).await;
    assert_eq!(sent, Value::Null);
    // 2. Its Blueprint is read to list the phases.
    expect(&mut server, "GET", BLUEPRINT, 200, blueprint()).await;
    // 3. The initial status is written through the status subresource, guarded by the
    //    resource version just read.
    let initial = json!({
        "state": "pending",
        "actions": [{
            "name": "backup", "blueprint": "mysql-bp",
            "object": {"kind": "StatefulSet", "name": "mysql", "namespace": "db"},
            "phases": [{"name": "dump", "state": "pending"}, {"name": "upload", "state": "pending"}],
            "deferPhase": {"name": "cleanup", "state": "pending"},
            "artifacts": {"cloud": {"keyValue": {"path": "{{ .Phases.dump.Output.path }}"}}}
        }]
    });
    let sent = expect(&mut server, "PUT", STATUS, 200, actionset("2", "mysql-bp", Some(initial.clone()))).await;
    assert_eq!(sent["kind"], "ActionSet");
    assert_eq!(sent["metadata"]["name"], "backup-1");
    assert_eq!(sent["metadata"]["resourceVersion"], "1");
    let status = &sent["status"];
    assert_eq!(status["state"], initial["state"]);
    assert_eq!(status["actions"], initial["actions"]);
    assert_eq!(status["progress"]["percentCompleted"], "0");
    assert!(status["progress"]["lastTransitionTime"].is_string(), "{status}");
    assert!(status.get("error").is_none(), "{status}");
    // 4. Re-read for the new resource version, then the run starts in the background.
    expect(&mut server, "GET", ACTIONSET, 200, actionset("2", "mysql-bp", Some(initial.clone()))).await;

    // Reconcile returned without waiting for the run, and looks again later.
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile).await.expect("reconcile returns").unwrap();
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    assert!(engine.is_running("kanister", "backup-1"));

    // The run's first requests: state running (status subresource, new resource version), then
    // a StartedAction event about the ActionSet.
    let mut running = initial;
    running["state"] = json!("running");
    let sent = expect(&mut server, "PUT", STATUS, 200, actionset("3", "mysql-bp", Some(running))).await;
    assert_eq!(sent["metadata"]["resourceVersion"], "2");
    assert_eq!(sent["status"]["state"], "running");
    let event = expect(&mut server, "POST", EVENTS, 201, json!({})).await;
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["reason"], "StartedAction");
    assert_eq!(event["regarding"]["kind"], "ActionSet");
    assert_eq!(event["regarding"]["uid"], "u-1");
    assert_eq!(event["reportingController"], "kanister-coordinator");

    // A second reconcile while the run is in progress does nothing but read the ActionSet.
    let reconcile = tokio::spawn(controller::reconcile(trigger(), Arc::new(Context { engine: engine.clone() })));
    let (request, send) = server.next_request().await.unwrap();
    // The run and the reconcile share the client: answer the run's blueprint read if it comes
    // first, then the reconcile's ActionSet read.
    let mut pending = vec![(request, send)];
    if pending[0].0.uri().path() != ACTIONSET {
        pending.push(server.next_request().await.unwrap());
    }
    let (request, send) = pending.pop().unwrap();
    assert_eq!((request.method().as_str(), request.uri().path()), ("GET", ACTIONSET));
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&actionset("3", "mysql-bp", None)).unwrap()))
            .unwrap(),
    );
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile).await.expect("reconcile returns").unwrap();
    assert_eq!(action.unwrap(), Action::requeue(Duration::from_secs(60)));
    engine.shutdown();
}

#[tokio::test]
async fn reconciling_an_actionset_of_a_missing_blueprint_fails_it_with_the_reason_and_an_event() {
    let (ctx, mut server) = setup();
    let reconcile = tokio::spawn(controller::reconcile(trigger(), ctx));
    expect(&mut server, "GET", ACTIONSET, 200, actionset("1", "nosuch", None)).await;
    expect(
        &mut server,
        "GET",
        "/apis/cr.kanister.io/v1alpha1/namespaces/kanister/blueprints/nosuch",
        404,
        api_status(404, "NotFound"),
    )
    .await;
    let sent =
        expect(&mut server, "PUT", STATUS, 200, actionset("2", "nosuch", Some(json!({"state": "failed"})))).await;
    assert_eq!(sent["metadata"]["resourceVersion"], "1");
    assert_eq!(sent["status"]["state"], "failed");
    let message = sent["status"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("blueprint \"nosuch\"") && message.contains("not found"), "{message}");
    let event = expect(&mut server, "POST", EVENTS, 201, json!({})).await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ActionSetFailed");
    assert_eq!(event["note"], message);
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile).await.expect("reconcile returns").unwrap();
    assert_eq!(action.unwrap(), Action::await_change());
}

#[tokio::test]
async fn reconciling_a_finished_or_deleted_actionset_only_reads_it() {
    let (ctx, mut server) = setup();
    let reconcile = tokio::spawn(controller::reconcile(trigger(), ctx.clone()));
    expect(&mut server, "GET", ACTIONSET, 200, actionset("9", "mysql-bp", Some(json!({"state": "complete"})))).await;
    assert_eq!(reconcile.await.unwrap().unwrap(), Action::await_change());

    let reconcile = tokio::spawn(controller::reconcile(trigger(), ctx.clone()));
    expect(&mut server, "GET", ACTIONSET, 404, api_status(404, "NotFound")).await;
    assert_eq!(reconcile.await.unwrap().unwrap(), Action::await_change());
    // Nothing else was requested (the client is still alive): no status write, no event, no run.
    assert!(tokio::time::timeout(Duration::from_millis(200), server.next_request()).await.is_err());
}

#[tokio::test]
async fn a_failed_status_write_is_a_reconcile_error_retried_soon_when_transient() {
    let (ctx, mut server) = setup();
    let reconcile = tokio::spawn(controller::reconcile(trigger(), ctx.clone()));
    expect(&mut server, "GET", ACTIONSET, 200, actionset("1", "mysql-bp", None)).await;
    expect(&mut server, "GET", BLUEPRINT, 200, blueprint()).await;
    expect(&mut server, "PUT", STATUS, 503, api_status(503, "ServiceUnavailable")).await;
    let error = reconcile.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("kanister/backup-1"), "{error}");
    assert_eq!(controller::error_policy(trigger(), &error, ctx.clone()), Action::requeue(Duration::from_secs(5)));
    assert!(!ctx.engine.is_running("kanister", "backup-1"), "no run starts without an initialised status");

    // A rejected request (403) is not retried soon.
    let reconcile = tokio::spawn(controller::reconcile(trigger(), ctx.clone()));
    expect(&mut server, "GET", ACTIONSET, 403, api_status(403, "Forbidden")).await;
    let error = reconcile.await.unwrap().unwrap_err();
    assert_eq!(controller::error_policy(trigger(), &error, ctx), Action::requeue(Duration::from_secs(60)));
}
