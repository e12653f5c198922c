//! `KubeCluster` against a mock API server (`tower-test`) that asserts each request: method,
//! path and query, and body. Only what a real API server cannot easily be made to do stays here
//! (each test says which); exec, task pods, logs, scaling, events, get/list, status writes of a
//! deleted ActionSet and outages run against the real control plane (`real_cluster.rs`).

use std::collections::BTreeMap;

use http::{Request, Response};
use kanister_coordinator::cluster::kube::KubeCluster;
use kanister_coordinator::cluster::{Cluster, Container, EventType, Owner, TaskPod, write_status};
use kanister_coordinator::crd::{ActionSet, ActionSetStatus, State};
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn setup() -> (KubeCluster, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (KubeCluster::new(client, "kanister-coordinator"), handle)
}

/// Awaits the next request, checks method and path (with query), answers `status` with `body`,
/// and returns the request's headers and JSON body (Null when empty).
async fn expect(handle: &mut Handle, method: &str, path: &str, status: u16, body: Value) -> (http::HeaderMap, Value) {
    let (request, send) = handle.next_request().await.expect("service not called");
    assert_eq!(request.method().as_str(), method, "method of {}", request.uri());
    assert_eq!(request.uri().path_and_query().map(|p| p.as_str()), Some(path));
    let headers = request.headers().clone();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap();
    send.send_response(response);
    (headers, sent)
}

fn api_status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": format!("{reason} happened"), "reason": reason, "code": code})
}

fn actionset_json(rv: &str) -> Value {
    json!({
        "apiVersion": "cr.kanister.io/v1alpha1", "kind": "ActionSet",
        "metadata": {"name": "backup-1", "namespace": "kanister", "resourceVersion": rv, "uid": "u-1"},
        "spec": {"actions": []}
    })
}

const STATUS_PATH: &str = "/apis/cr.kanister.io/v1alpha1/namespaces/kanister/actionsets/backup-1/status?";

/// A 409 at the exact write (a real server's conflicts depend on timing).
#[tokio::test]
async fn status_write_conflict_is_retried_with_the_new_resource_version() {
    let (cluster, mut server) = setup();
    let status = ActionSetStatus { state: State::Running, ..Default::default() };
    let client = tokio::spawn(async move { write_status(&cluster, "kanister", "backup-1", "1", &status).await });
    let (_, body) = expect(&mut server, "PUT", STATUS_PATH, 409, api_status(409, "Conflict")).await;
    assert_eq!(body["metadata"]["resourceVersion"], "1");
    assert_eq!(body["status"]["state"], "running");
    expect(
        &mut server,
        "GET",
        "/apis/cr.kanister.io/v1alpha1/namespaces/kanister/actionsets/backup-1",
        200,
        actionset_json("2"),
    )
    .await;
    let mut written = actionset_json("3");
    written["status"] = json!({"state": "running"});
    let (_, body) = expect(&mut server, "PUT", STATUS_PATH, 200, written).await;
    assert_eq!(body["metadata"]["resourceVersion"], "2");
    assert_eq!(body["status"]["state"], "running");
    assert_eq!(client.await.unwrap().unwrap(), "3");
}

/// The exact pod a podOverride makes, and a delete answered 404 (a race with the garbage
/// collector, which a real server produces only by chance).
#[tokio::test]
async fn task_pods_are_created_with_owner_labels_and_override_then_deleted_idempotently() {
    let (cluster, mut server) = setup();
    let pod = TaskPod {
        namespace: "db".into(),
        generate_name: "kanister-job-".into(),
        containers: vec![Container {
            name: "container".into(),
            image: "alpine:3".into(),
            command: vec!["true".into()],
        }],
        labels: BTreeMap::from([("kanister.io/actionset".into(), "backup-1".into())]),
        pod_override: [
            (
                "containers".to_string(),
                json!([{"name": "container", "resources": {"limits": {"memory": "1Gi"}},
                        "env": [{"name": "MYSQL_PWD", "valueFrom": {"secretKeyRef": {"name": "mysql", "key": "password"}}}]}]),
            ),
            ("priorityClassName".to_string(), json!("low")),
        ]
        .into_iter()
        .collect(),
        owner: Some(Owner {
            api_version: "cr.kanister.io/v1alpha1".into(),
            kind: "ActionSet".into(),
            name: "backup-1".into(),
            uid: "u-1".into(),
        }),
        env: vec![kanister_coordinator::cluster::EnvVar {
            name: "KANISTER_REPO_KEY".into(),
            source: kanister_coordinator::cluster::EnvSource::SecretKey {
                secret: "kanister-repo-key-s3".into(),
                key: "key".into(),
            },
        }],
        ..Default::default()
    };
    let c = cluster.clone();
    let client = tokio::spawn(async move { c.create_pod(&pod).await });
    let created =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kanister-job-x7k2p", "namespace": "db"}});
    let (_, body) = expect(&mut server, "POST", "/api/v1/namespaces/db/pods?", 201, created).await;
    assert_eq!(client.await.unwrap().unwrap(), "kanister-job-x7k2p");
    assert_eq!(body["metadata"]["generateName"], "kanister-job-");
    assert_eq!(body["metadata"]["labels"]["kanister.io/actionset"], "backup-1");
    assert_eq!(
        body["metadata"]["ownerReferences"][0],
        json!({"apiVersion": "cr.kanister.io/v1alpha1", "kind": "ActionSet", "name": "backup-1", "uid": "u-1",
               "controller": true, "blockOwnerDeletion": true})
    );
    assert_eq!(body["spec"]["restartPolicy"], "Never");
    assert_eq!(body["spec"]["priorityClassName"], "low");
    let container = &body["spec"]["containers"][0];
    assert_eq!(container["image"], "alpine:3");
    assert_eq!(container["command"], json!(["true"]));
    assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
    // The repository key reaches the container through the Secret, never as a value; the
    // override's env merges by name (a strategic merge), so it does not drop the key.
    assert_eq!(
        container["env"],
        json!([{"name": "KANISTER_REPO_KEY", "valueFrom": {"secretKeyRef": {"name": "kanister-repo-key-s3", "key": "key"}}},
               {"name": "MYSQL_PWD", "valueFrom": {"secretKeyRef": {"name": "mysql", "key": "password"}}}])
    );

    let c = cluster.clone();
    let client = tokio::spawn(async move { c.delete_pod("db", "kanister-job-x7k2p").await });
    let (_, body) = expect(
        &mut server,
        "DELETE",
        "/api/v1/namespaces/db/pods/kanister-job-x7k2p?",
        404,
        api_status(404, "NotFound"),
    )
    .await;
    assert_eq!(body["propagationPolicy"], "Background");
    client.await.unwrap().expect("deleting a deleted pod succeeds");
}

/// Events returned out of order and a 403 on the read (kanctl describe's sorting and its
/// message when RBAC forbids events).
#[tokio::test]
async fn events_are_read_back_by_regarding_oldest_first() {
    let (cluster, mut server) = setup();
    let client = tokio::spawn(async move {
        let actionset: ActionSet = serde_json::from_value(actionset_json("5")).unwrap();
        cluster.events(&actionset).await
    });
    let event = |name: &str, type_: &str, reason: &str, note: &str, time: &str| {
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "kanister"},
            "eventTime": time, "type": type_, "reason": reason, "note": note,
            "reportingController": "kanister-coordinator", "reportingInstance": "c-0", "action": "Run",
            "regarding": {"kind": "ActionSet", "name": "backup-1", "namespace": "kanister", "uid": "u-1"},
        })
    };
    // Listed out of order; the repeated one aggregated into a series.
    let mut repeated = event("e2", "Warning", "PhaseFailed", "phase dump failed", "2025-01-01T10:00:02.000000Z");
    repeated["series"] = json!({"count": 3, "lastObservedTime": "2025-01-01T10:00:09.000000Z"});
    let list = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "EventList", "metadata": {},
        "items": [repeated, event("e1", "Normal", "StartedAction", "Executing actionset backup-1", "2025-01-01T10:00:01.000000Z")],
    });
    expect(
        &mut server,
        "GET",
        "/apis/events.k8s.io/v1/namespaces/kanister/events?&fieldSelector=regarding.kind%3DActionSet%2Cregarding.name%3Dbackup-1%2Cregarding.uid%3Du-1",
        200,
        list,
    )
    .await;
    let events = client.await.unwrap().unwrap();
    let got: Vec<(EventType, &str, &str, &str, i32)> =
        events.iter().map(|e| (e.type_, e.reason.as_str(), e.note.as_str(), e.time.as_str(), e.count)).collect();
    assert_eq!(
        got,
        [
            (EventType::Normal, "StartedAction", "Executing actionset backup-1", "2025-01-01T10:00:01Z", 1),
            (EventType::Warning, "PhaseFailed", "phase dump failed", "2025-01-01T10:00:09Z", 3),
        ]
    );

    // Not allowed to list events: an error the caller can show, not a panic.
    let (cluster, mut server) = setup();
    let client = tokio::spawn(async move {
        let actionset: ActionSet = serde_json::from_value(actionset_json("5")).unwrap();
        cluster.events(&actionset).await
    });
    let (request, send) = server.next_request().await.expect("events listed");
    assert!(request.uri().path().ends_with("/namespaces/kanister/events"));
    send.send_response(
        Response::builder()
            .status(403)
            .body(Body::from(serde_json::to_vec(&api_status(403, "Forbidden")).unwrap()))
            .unwrap(),
    );
    let e = client.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("Forbidden"), "{e}");
}

/// Not about the server: decoded Secret data never shows in Debug output.
#[tokio::test]
async fn secret_data_is_decoded_and_never_shown_in_debug() {
    let (cluster, mut server) = setup();
    let client = tokio::spawn(async move { cluster.secret("db", "mysql").await });
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": "mysql", "namespace": "db"},
                        "data": {"password": "czNjcjN0LXB3"}});
    expect(&mut server, "GET", "/api/v1/namespaces/db/secrets/mysql", 200, secret).await;
    let data = client.await.unwrap().unwrap();
    assert_eq!(data.secret_type, "Opaque");
    assert_eq!(data.data["password"], b"s3cr3t-pw");
    let shown = format!("{data:?}");
    assert!(shown.contains("password") && !shown.contains("s3cr3t-pw"), "{shown}");
}

/// A log stream cut twice (an API server restart cuts it at any byte; a mock cuts it exactly
/// where the test needs): each resumed read starts at the second of the last line, lines already
/// sent (two carry the same timestamp) are skipped, and once the container ended one last read
/// without follow brings the line the cut missed. Every line arrives once, in order.
#[tokio::test]
async fn a_broken_log_stream_resumes_without_losing_or_repeating_a_line() {
    let (cluster, mut server) = setup();
    let cluster = cluster.with_poll_interval(std::time::Duration::from_millis(10));
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let client = tokio::spawn(async move { cluster.pod_logs("db", "kanister-job-x7k2p", "container", tx).await });
    let pod_path = "/api/v1/namespaces/db/pods/kanister-job-x7k2p";
    let (t1, t2, t3) = ("2026-12-03T10:00:00.1Z", "2026-12-03T10:00:00.2Z", "2026-12-03T10:00:01.5Z");
    async fn log(server: &mut Handle, follow: bool, since: Option<&str>, body: String) {
        let log_path = "/api/v1/namespaces/db/pods/kanister-job-x7k2p/log";
        let (request, send) = server.next_request().await.expect("logs requested");
        let uri = request.uri().clone();
        let query = uri.query().unwrap_or_default().to_string();
        assert_eq!(uri.path(), log_path);
        assert!(query.contains("container=container") && query.contains("timestamps=true"), "{query}");
        assert_eq!(query.contains("follow=true"), follow, "{query}");
        match since {
            Some(t) => assert!(query.contains(&format!("sinceTime={}", t.replace(':', "%3A"))), "{query}"),
            None => assert!(!query.contains("sinceTime"), "{query}"),
        }
        send.send_response(Response::builder().status(200).body(Body::from(body.into_bytes())).unwrap());
    }
    let pod = |state: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kanister-job-x7k2p", "namespace": "db"},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "container", "state": state, "ready": true, "restartCount": 0, "image": "a", "imageID": ""}]}})
    };
    log(
        &mut server,
        true,
        None,
        format!("{t1} dumping\n{t1} ###Phase-output###: {{\"key\":\"a\",\"value\":\"1\"}}\n{t2} c\n"),
    )
    .await;
    expect(&mut server, "GET", pod_path, 200, pod(json!({"running": {}}))).await;
    log(
        &mut server,
        true,
        Some("2026-12-03T10:00:00Z"),
        format!("{t1} dumping\n{t1} ###Phase-output###: {{\"key\":\"a\",\"value\":\"1\"}}\n{t2} c\n{t2} d\n{t3} e\n"),
    )
    .await;
    expect(&mut server, "GET", pod_path, 200, pod(json!({"terminated": {"exitCode": 0}}))).await;
    log(&mut server, false, Some("2026-12-03T10:00:01Z"), format!("{t3} e\n{t3} no newline at end")).await;
    client.await.unwrap().unwrap();
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(String::from_utf8(line).unwrap());
    }
    assert_eq!(
        lines,
        [
            "dumping\n",
            "###Phase-output###: {\"key\":\"a\",\"value\":\"1\"}\n",
            "c\n",
            "d\n",
            "e\n",
            "no newline at end\n"
        ]
    );
}

/// Answers the requests of a watch of one pod (`kube::runtime::wait`: a list with a name field
/// selector, then watches) with the pod as `states` gives it: the list shows the first state,
/// each watch one more as a `MODIFIED` event (the last state again once they are all shown); a
/// plain GET of the pod shows the current state. Until the client drops its end of the mock.
async fn serve_pod_watch(mut server: Handle, name: &str, states: Vec<Value>) {
    let mut shown = 0;
    while let Some((request, send)) = server.next_request().await {
        let uri = request.uri().to_string();
        let current = states[shown.min(states.len() - 1)].clone();
        let body = if uri.ends_with(&format!("/pods/{name}")) {
            serde_json::to_vec(&current).unwrap()
        } else {
            assert!(uri.contains(&format!("fieldSelector=metadata.name%3D{name}")), "a watch of the pod only: {uri}");
            if uri.contains("watch=true") {
                shown = (shown + 1).min(states.len() - 1);
                let mut object = states[shown].clone();
                object["metadata"]["resourceVersion"] = json!((11 + shown).to_string());
                let mut line = serde_json::to_vec(&json!({"type": "MODIFIED", "object": object})).unwrap();
                line.push(b'\n');
                line
            } else {
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "10"}, "items": [current]}))
                .unwrap()
            }
        };
        send.send_response(Response::builder().body(Body::from(body)).unwrap());
    }
}

/// A task pod that cannot start fails the phase at once with Kubernetes' reason (an image that
/// cannot be pulled, a Secret that is missing); one that is only unschedulable waits for its
/// timeout and then says why. A real API server has no kubelet here to produce these states.
#[tokio::test]
async fn a_pod_that_cannot_start_fails_with_the_reason_kubernetes_gives() {
    let name = "kanister-job-x7k2p";
    let pod = |status: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "db", "resourceVersion": "10"},
               "status": status})
    };
    let waiting = |name: &str, reason: &str, message: &str| {
        json!({"name": name, "state": {"waiting": {"reason": reason, "message": message}}, "ready": false,
               "restartCount": 0, "image": "a", "imageID": ""})
    };
    for (reason, message, init) in [
        ("ImagePullBackOff", "Back-off pulling image \"mysql-sidecar:nope\"", false),
        ("ErrImagePull", "rpc error: manifest unknown", true),
        ("CreateContainerConfigError", "secret \"db-credentials\" not found", false),
    ] {
        let (cluster, server) = setup();
        let creating = waiting("container", "ContainerCreating", "");
        let stuck = waiting(if init { "init" } else { "container" }, reason, message);
        let stuck = if init {
            json!({"phase": "Pending", "initContainerStatuses": [stuck]})
        } else {
            json!({"phase": "Pending", "containerStatuses": [stuck]})
        };
        let states = vec![pod(json!({"phase": "Pending", "containerStatuses": [creating]})), pod(stuck)];
        let api = tokio::spawn(serve_pod_watch(server, name, states));
        let e =
            cluster.wait_pod_started("db", name, std::time::Duration::from_secs(600)).await.unwrap_err().to_string();
        assert!(e.contains(reason) && e.contains(message) && e.contains("cannot start"), "{e}");
        assert!(e.contains(if init { "container init" } else { "container container" }), "{e}");
        drop(cluster);
        api.await.unwrap();
    }

    // Unschedulable: waits (an autoscaler may add a node), then the timeout says why.
    let (cluster, server) = setup();
    let unschedulable = pod(json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory."}]}));
    let api = tokio::spawn(serve_pod_watch(server, name, vec![unschedulable]));
    let e = cluster.wait_pod_started("db", name, std::time::Duration::from_millis(200)).await.unwrap_err().to_string();
    assert!(e.contains("Unschedulable: 0/3 nodes are available: 3 Insufficient memory."), "{e}");
    assert!(e.contains("timed out") || e.contains("200ms"), "{e}");
    drop(cluster);
    api.await.unwrap();
}

/// A watch the API server breaks (500s, which a real server produces only while it restarts)
/// is started again and the wait ends with the container's exit; a refused watch (403) fails
/// at once naming the missing permission, instead of waiting for ever.
#[tokio::test]
async fn a_broken_watch_is_resumed_and_a_refused_one_fails_at_once() {
    let name = "kanister-job-w4tch";
    let pod = |status: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "db", "resourceVersion": "10"},
               "status": status})
    };
    let ended = pod(json!({"phase": "Succeeded", "containerStatuses": [{"name": "container", "ready": false,
        "restartCount": 0, "image": "a", "imageID": "",
        "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}));
    let running = pod(json!({"phase": "Running"}));

    // Two failed lists, then the pod running, a broken watch, and the pod ended.
    let (cluster, mut server) = setup();
    let cluster = cluster.with_poll_interval(std::time::Duration::from_millis(10));
    let waiter = tokio::spawn(async move { cluster.wait_container("db", name, "container").await });
    let mut failures = 0;
    let mut watches = 0;
    while let Some((request, send)) = server.next_request().await {
        let uri = request.uri().to_string();
        assert!(uri.contains(&format!("fieldSelector=metadata.name%3D{name}")), "{uri}");
        let response = if failures < 2 {
            failures += 1;
            Response::builder()
                .status(500)
                .body(Body::from(serde_json::to_vec(&api_status(500, "InternalError")).unwrap()))
        } else if !uri.contains("watch=true") {
            let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
                              "items": [if watches == 0 { running.clone() } else { ended.clone() }]});
            Response::builder().body(Body::from(serde_json::to_vec(&list).unwrap()))
        } else if watches == 0 {
            // The connection drops mid-watch: an empty body ends the stream.
            watches += 1;
            Response::builder()
                .status(500)
                .body(Body::from(serde_json::to_vec(&api_status(500, "InternalError")).unwrap()))
        } else {
            let mut line = serde_json::to_vec(&json!({"type": "MODIFIED", "object": ended})).unwrap();
            line.push(b'\n');
            Response::builder().body(Body::from(line))
        };
        send.send_response(response.unwrap());
        if waiter.is_finished() {
            break;
        }
    }
    drop(server);
    let status = waiter.await.unwrap().expect("the wait ends with the container's status");
    assert_eq!(status.code, Some(3), "{status:?}");
    assert!(failures == 2, "the failed lists were not retried: {failures}");

    // A watch the ServiceAccount may not do.
    let (cluster, server) = setup();
    let api = tokio::spawn(async move {
        let mut server = server;
        while let Some((_, send)) = server.next_request().await {
            let body = serde_json::to_vec(&api_status(403, "Forbidden")).unwrap();
            send.send_response(Response::builder().status(403).body(Body::from(body)).unwrap());
        }
    });
    let started = std::time::Instant::now();
    let e = cluster.wait_container("db", name, "container").await.unwrap_err().to_string();
    assert!(e.contains("lacks this permission"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "a refusal was retried: {:?}", started.elapsed());
    drop(cluster);
    api.await.unwrap();
}
