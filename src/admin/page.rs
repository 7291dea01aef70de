//! The status page at the admin API's `/`: services, their backends and states, and the
//! containers that are not routed with the reason. Plain server-rendered HTML with its style
//! inline, no script and no external assets; reload to refresh.

use std::fmt::Write as _;

use super::CertificateJson;
use crate::runtime::{ContainerView, ServiceView};

pub fn render(services: &[ServiceView], containers: &[ContainerView], docker_connected: bool, certificates: &[CertificateJson]) -> String {
    let mut h = String::with_capacity(8192);
    h.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<title>hawser status</title>\n<style>\n",
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\n",
        "table{border-collapse:collapse;margin-bottom:2em}\n",
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\n",
        "th{background:#f0f0f0}\n",
        ".ready{color:#070}.starting{color:#a60}.draining{color:#06a}.unhealthy,.ejected{color:#b00}\n",
        "code{font-size:95%}\n",
        "</style>\n</head>\n<body>\n<h1>hawser</h1>\n"
    ));
    let _ = writeln!(
        h,
        "<p id=\"docker\">Docker event stream: <strong>{}</strong>. {} services, {} containers seen. Reload to refresh.</p>",
        if docker_connected { "connected" } else { "disconnected" },
        services.len(),
        containers.len()
    );

    h.push_str("<h2>Services</h2>\n");
    if services.is_empty() {
        h.push_str("<p>No service yet: label a container <code>hawser.enable=true</code> and <code>hawser.host=…</code>.</p>\n");
    } else {
        h.push_str("<table id=\"services\">\n<tr><th>Service</th><th>Routes</th><th>Backend</th><th>Address</th><th>Weight</th><th>State</th></tr>\n");
        for svc in services {
            let routes: Vec<String> = svc.routes.iter().map(|r| format!("{}{}", r.host, r.path_prefix)).collect();
            let rows = svc.backends.len().max(1);
            let _ = write!(
                h,
                "<tr><td rowspan=\"{rows}\">{}</td><td rowspan=\"{rows}\">{}</td>",
                esc(&svc.name),
                esc(&routes.join(" "))
            );
            if svc.backends.is_empty() {
                h.push_str("<td colspan=\"4\">no backend (requests get 503)</td></tr>\n");
            }
            for (i, b) in svc.backends.iter().enumerate() {
                if i > 0 {
                    h.push_str("<tr>");
                }
                let state = b.state.as_str();
                let _ = writeln!(
                    h,
                    "<td>{}</td><td>{}</td><td>{}</td><td class=\"{state}\">{state}</td></tr>",
                    esc(&b.container_name),
                    esc(&b.address),
                    b.weight
                );
            }
        }
        h.push_str("</table>\n");
    }

    if !certificates.is_empty() {
        h.push_str("<h2>Certificates</h2>\n<table id=\"certificates\">\n<tr><th>Host</th><th>Service</th><th>Source</th><th>Valid until</th><th>Next renewal</th><th>Error</th></tr>\n");
        for c in certificates {
            let source = c.source.map_or("none (handshakes refused)", |s| s.as_str());
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                esc(c.host.as_deref().or(c.file.as_deref()).unwrap_or("")),
                esc(c.service.as_deref().unwrap_or("")),
                esc(source),
                esc(c.not_after.as_deref().unwrap_or("")),
                esc(c.next_renewal.as_deref().unwrap_or("")),
                if c.error.is_some() { "unhealthy" } else { "" },
                esc(c.error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>\n");
    }

    // Containers that never asked to be routed are most of a busy host: counted, not listed.
    let unrouted: Vec<&ContainerView> = containers.iter().filter(|c| !c.routed && c.opted_in).collect();
    let bystanders = containers.iter().filter(|c| !c.opted_in).count();
    let _ = writeln!(h, "<h2>Containers not routed ({})</h2>", unrouted.len());
    if bystanders > 0 {
        let _ = writeln!(
            h,
            "<p id=\"not-opted-in\">{bystanders} more did not ask to be routed (no enable label, no service selector); <code>/api/containers</code> lists them.</p>"
        );
    }
    if unrouted.is_empty() {
        h.push_str("<p>Every container that asked to be routed is.</p>\n");
    } else {
        h.push_str("<table id=\"not-routed\">\n<tr><th>Container</th><th>Service</th><th>Why not</th></tr>\n");
        for c in unrouted {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.container_name),
                esc(c.service.as_deref().unwrap_or("")),
                esc(c.reason.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// Container names, labels and reasons are user input: escape everything.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{BackendState, BackendView, RouteView};

    #[test]
    fn renders_states_and_reasons_escaped() {
        let services = vec![ServiceView {
            name: "web".into(),
            scheme: "http",
            hosts: vec!["web.test".into()],
            path_prefix: "/".into(),
            routes: vec![RouteView { host: "web.test".into(), path_prefix: "/".into() }],
            backends: vec![BackendView {
                container_id: "id1".into(),
                container_name: "web-1".into(),
                address: "10.0.0.2:80".into(),
                weight: 1,
                state: BackendState::Draining,
            }],
        }];
        let containers = vec![ContainerView {
            container_id: "id2".into(),
            container_name: "x<script>".into(),
            service: Some("web".into()),
            opted_in: true,
            routed: false,
            reason: Some("exposes 80 and 443: set hawser.port".into()),
            state: None,
        }];
        let certificates = vec![CertificateJson {
            host: Some("web.test".into()),
            source: Some(crate::tls::store::Source::Acme),
            not_after: Some("2027-01-01T00:00:00Z".into()),
            next_renewal: None,
            error: Some("<b>CA down</b>".into()),
            service: Some("web".into()),
            names: vec![],
            file: None,
        }];
        let html = render(&services, &containers, true, &certificates);
        assert!(html.contains("<td>web.test</td><td>web</td><td>acme</td><td>2027-01-01T00:00:00Z</td>"), "{html}");
        assert!(html.contains("&lt;b&gt;CA down"), "{html}");
        assert!(html.contains("<td class=\"draining\">draining</td>"), "{html}");
        assert!(html.contains("x&lt;script&gt;"));
        assert!(!html.contains("x<script>"));
        assert!(html.contains("exposes 80 and 443: set hawser.port"));
        assert!(html.contains("<strong>connected</strong>"));
    }
}
