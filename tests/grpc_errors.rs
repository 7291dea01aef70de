//! hawser's own answers to gRPC calls, as a real gRPC client (Python grpcio, over h2c) decodes
//! them: no route is NOT_FOUND, no ready backend or a backend that fails UNAVAILABLE, each with
//! hawser's message; a plain HTTP request to the same place still gets the text answer.

mod common;

use common::python::run_python;
use common::recorder::LoopbackServer;
use common::*;

/// Calls `/pkg.Svc/Method` (raw bytes, no generated code) on `addr` with `authority` as
/// `:authority`; prints `OK` or the status code's name and the details, a line each.
const CALL: &str = r#"
import sys, grpc
addr, authority = sys.argv[1], sys.argv[2]
options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
with grpc.insecure_channel(addr, options=options) as channel:
    call = channel.unary_unary("/pkg.Svc/Method", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(b"ping", timeout=10)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
        print(e.details())
"#;

/// The status name and details the client got.
fn grpc_call(h: &Hawser, authority: &str) -> (String, String) {
    let out = run_python(CALL, &[&h.addr.to_string(), authority]);
    let mut lines = out.lines();
    let code = lines.next().unwrap_or_default().to_string();
    (code, lines.collect::<Vec<_>>().join("\n"))
}

/// The metrics' count of requests of `class` (e.g. "4xx") that went to `service` ("" for
/// requests that matched no route).
fn answered(h: &Hawser, service: &str, class: &str) -> f64 {
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("GET /metrics");
    let n = metric(&r.body, &format!("hawser_requests_total{{class=\"{class}\",service=\"{service}\"}}")).unwrap_or(0.0);
    eprintln!("requests_total of service {service:?}, class {class}: {n}");
    n
}

#[test]
fn hawser_answers_grpc_calls_with_grpc_statuses() {
    let env = TestEnv::new("grpc-errors");
    // A YAML service whose selector matches no container: routed, never a ready backend.
    let config = format!(
        "listen: [\"$LISTEN\"]\n\
         docker:\n  label_prefix: \"$PREFIX\"\n\
         services:\n\
         \x20 empty:\n    hosts: [empty.test]\n    selector: {{ label: \"hawser-test-none={id}\" }}\n",
        id = env.id,
    );
    let h = env.hawser(&config);

    // (a) No route: NOT_FOUND, with the message hawser's text 404 has.
    let (code, details) = grpc_call(&h, "nowhere.test");
    assert_eq!(code, "NOT_FOUND", "details: {details}\nhawser log:\n{}", h.log());
    assert!(details.contains("no route for host \"nowhere.test\""), "{details}");
    // Counted as the 404 it stands for, not as the 200 on the wire; counted when the request
    // ends, which may be just after the client read its answer.
    wait_until("the no-route answer counted", SECS_5, || (answered(&h, "", "4xx") >= 1.0).then_some(()));
    assert_eq!(answered(&h, "", "2xx"), 0.0, "gRPC answers counted as 2xx");

    // (b) A route without a ready backend: UNAVAILABLE, and it is hawser's (grpcio says
    // UNAVAILABLE too when it cannot connect at all: the message tells them apart).
    let (code, details) = grpc_call(&h, "empty.test");
    assert_eq!(code, "UNAVAILABLE", "details: {details}\nhawser log:\n{}", h.log());
    assert!(details.contains("service empty has no ready backend"), "{details}");
    wait_until("the empty-service answer counted", SECS_5, || (answered(&h, "empty", "5xx") == 1.0).then_some(()));
    assert_eq!(answered(&h, "empty", "2xx"), 0.0);

    // Plain HTTP to the same places keeps its text answers.
    let r = h.get("nowhere.test", "/pkg.Svc/Method").unwrap();
    assert_eq!((r.status, r.header("content-type")), (404, Some("text/plain; charset=utf-8")), "{}", r.body);
    assert!(r.header("grpc-status").is_none());
    let r = h.get("empty.test", "/pkg.Svc/Method").unwrap();
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{}", r.body);
}

/// A backend that is ready (it accepts connections, so its TCP probe passes) but closes each
/// one without an answer: the call fails on it, and hawser's 502 reaches the client as
/// UNAVAILABLE.
#[test]
fn a_call_every_backend_failed_is_unavailable() {
    let env = TestEnv::new("grpc-errors-502");
    let closer = LoopbackServer::start("a backend that hangs up", |mut conn| {
        use std::io::Read;
        let _ = conn.read(&mut [0; 4096]);
    });
    let _front = env.run(ContainerSpec::loopback_front("closer", closer.addr.port()).hawser("host", "closer.test"));
    let h = env.hawser(&env.default_config());
    h.wait_backends_ready("closer", 1, SECS_10);
    let (code, details) = grpc_call(&h, "closer.test");
    assert_eq!(code, "UNAVAILABLE", "details: {details}\nhawser log:\n{}", h.log());
    assert!(details.contains("no backend of service closer could be reached"), "{details}\nhawser log:\n{}", h.log());
    wait_until("the failed-backend answer counted", SECS_5, || (answered(&h, "closer", "5xx") == 1.0).then_some(()));
}

/// gRPC over HTTP/1.1 (rare, but a content type is all that makes a call gRPC): the same
/// headers, and a body-less 200 framed by `Content-Length: 0`.
#[test]
fn a_grpc_call_over_http1_gets_the_same_headers() {
    let env = TestEnv::new("grpc-errors-h1");
    let h = env.hawser("listen: [\"$LISTEN\"]\ndocker:\n  label_prefix: \"$PREFIX\"\n");
    let mut conn = HttpConn::connect(h.addr).unwrap();
    let headers = [("Content-Type", "application/grpc+proto"), ("TE", "trailers")];
    let r = conn.request("POST", "nowhere.test", "/pkg.Svc/Method", &headers, b"\0\0\0\0\0").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("5"));
    assert_eq!(r.header("grpc-message"), Some("hawser: no route for host \"nowhere.test\" and path \"/pkg.Svc/Method\""));
    assert_eq!(r.body, "");
}
