//! What a hostile tenant's filter can no longer do to everyone else: flood `/metrics` with series
//! or forge them, flood or forge the log, hold long-call lanes while it waits on the network, run
//! past its wall-clock bound, grow a head without bound, or hand the client connection headers.
//! Each test also shows a neighbour route serving meanwhile.

use std::sync::Arc;

use http::StatusCode;
use sluice_tests::{
    Collected, Origin, SilentUpstream, TestProxy, access_log_line, admin_text, capture_logs, get, logged_events,
    logged_failure, plugin,
};

/// A proxy with one route per `(name, tenant, filter config)` running the hostile filter, and a
/// `good` route of the `victim` tenant. `tenants` is written as given.
async fn proxy(
    origin: &Origin,
    silent: Option<&SilentUpstream>,
    tenants: &str,
    routes: &[(&str, &str, &str)],
) -> TestProxy {
    capture_logs();
    let routes: String = routes
        .iter()
        .map(|(name, tenant, config)| {
            format!(
                "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\ntenant = \"{tenant}\"\nupstream = \"app\"\n\
                 filters = [{{ plugin = \"hostile\", config = {config} }}]\n"
            )
        })
        .collect();
    let silent = silent
        .map_or(String::new(), |silent| format!("[upstream.silent]\nservers = [{{ addr = \"{}\" }}]\n", silent.addr));
    TestProxy::start(&format!(
        r#"
[server]
# Trusted, so that a test may give a request its id.
trusted_proxies = ["127.0.0.0/8"]
[[listener]]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
{silent}
[plugin.hostile]
source = "{hostile}"
[tenant.victim]
{tenants}
{routes}
[[route]]
name = "good"
path_prefix = "/good"
tenant = "victim"
upstream = "app"
filters = [{{ plugin = "hostile", config = {{ mode = "none" }} }}]
"#,
        origin = origin.addr,
        hostile = plugin("tests/plugins/hostile").display(),
    ))
    .await
}

fn request_id(response: &Collected) -> String {
    response.headers["x-request-id"].to_str().unwrap().to_owned()
}

/// Whether every line of a `/metrics` page is a comment or `name{labels} value` with well-formed
/// labels, as Prometheus parses it.
fn parses_as_prometheus_text(page: &str) -> bool {
    page.lines().filter(|line| !line.starts_with('#') && !line.is_empty()).all(|line| {
        let (series, value) = line.rsplit_once(' ').unwrap_or(("", ""));
        let name_end = series.find('{').unwrap_or(series.len());
        let name_ok = series[..name_end].chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let labels_ok = name_end == series.len() || {
            let labels = &series[name_end + 1..series.len() - 1];
            // Label values are quoted and escaped; keys are names.
            labels_well_formed(labels)
        };
        name_ok && labels_ok && !value.is_empty()
    })
}

fn labels_well_formed(mut labels: &str) -> bool {
    while !labels.is_empty() {
        let Some((key, rest)) = labels.split_once("=\"") else { return false };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        // The value runs to the first unescaped quote.
        let mut escaped = false;
        let Some(end) = rest.char_indices().find_map(|(index, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(index)
        }) else {
            return false;
        };
        labels = rest[end + 1..].strip_prefix(',').unwrap_or(&rest[end + 1..]);
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_creates_metric_series_only_up_to_its_grant() {
    let origin = Origin::echo("app").await;
    // A grant of 100 series; each request tries 40 fresh ones.
    let tenants = "[tenant.attacker]\nmetric_series = 100\n";
    let proxy =
        proxy(&origin, None, tenants, &[("flood", "attacker", "{ mode = \"metric-flood\", count = 40 }")]).await;
    for _ in 0..10 {
        assert_eq!(get(&proxy, "a", "/flood").await.status, StatusCode::OK);
        assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK, "the neighbour keeps serving");
    }
    let page = admin_text(proxy.admin.unwrap(), "/metrics").await;
    let series =
        page.lines().filter(|line| line.starts_with("sluice_filter_counter_total{tenant=\"attacker\"")).count();
    assert_eq!(series, 100, "the grant holds");
    let dropped = page
        .lines()
        .find(|line| {
            line.starts_with("sluice_filter_metrics_dropped_total{tenant=\"attacker\",reason=\"series_limit\"}")
        })
        .expect("drops are counted");
    assert!(dropped.ends_with(" 300"), "{dropped}");
    assert!(parses_as_prometheus_text(&page));
}

#[tokio::test]
async fn a_guest_cannot_forge_series_or_break_the_metrics_page() {
    let origin = Origin::echo("app").await;
    let proxy =
        proxy(&origin, None, "[tenant.attacker]\n", &[("forge", "attacker", "{ mode = \"metric-forge\" }")]).await;
    assert_eq!(get(&proxy, "a", "/forge").await.status, StatusCode::OK);
    let page = admin_text(proxy.admin.unwrap(), "/metrics").await;
    assert!(parses_as_prometheus_text(&page), "{page}");
    assert!(!page.contains("sluice_upstream_server_healthy{server"), "no forged series");
    assert!(!page.contains("sluice_filter_counter_total{tenant=\"victim\""), "no series posing as another tenant's");
    assert!(
        page.contains(
            "sluice_filter_counter_total{tenant=\"attacker\",plugin=\"hostile\",name=\"fine\",code=\"200\"} 1"
        )
    );
    for reason in ["invalid_label", "duplicate_label"] {
        let dropped = format!("sluice_filter_metrics_dropped_total{{tenant=\"attacker\",reason=\"{reason}\"}}");
        assert!(page.contains(&dropped), "{reason} counted:\n{page}");
    }
}

#[tokio::test]
async fn guest_log_lines_are_bounded_in_rate_and_size_and_cannot_forge_lines() {
    let origin = Origin::echo("app").await;
    let tenants = "[tenant.attacker]\nlog_lines_per_second = 5\n";
    let proxy = proxy(&origin, None, tenants, &[("logs", "attacker", "{ mode = \"log-flood\", count = 200 }")]).await;
    assert_eq!(get(&proxy, "a", "/logs").await.status, StatusCode::OK);
    assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK);
    let lines: Vec<serde_json::Value> = logged_events()
        .into_iter()
        .filter(|event| event["target"] == "sluice::filter" && event["route"] == "logs")
        .collect();
    // A burst of twice the rate, and perhaps one more line refilled meanwhile.
    assert!((10..=11).contains(&lines.len()), "{} lines", lines.len());
    for line in &lines {
        let message = line["message"].as_str().unwrap();
        assert!(!message.contains('\n') && !message.contains('\u{1b}'), "{message:?}");
        assert!(message.contains("\\nINFO sluice::access") && message.contains("\\u{1b}[2J"), "{message:?}");
        assert!(message.len() < 4200, "cut at its limit: {}", message.len());
    }
    let page = admin_text(proxy.admin.unwrap(), "/metrics").await;
    let dropped = page
        .lines()
        .find(|line| line.starts_with("sluice_filter_log_lines_dropped_total{route=\"logs\""))
        .expect("dropped lines are counted");
    let count: u64 = dropped.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert_eq!(count, 200 - lines.len() as u64);
}

#[tokio::test]
async fn wasi_output_is_bounded_and_escaped_like_log_lines() {
    capture_logs();
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.probe]\nsource = \"{probe}\"\n[tenant.a]\nlog_lines_per_second = 5\n\
         [[route]]\nname = \"chatty\"\ntenant = \"a\"\nupstream = \"app\"\n\
         filters = [{{ plugin = \"probe\", config = {{ stdout_lines = 300 }} }}]\n",
        origin = origin.addr,
        probe = plugin("tests/plugins/wasi-probe").display(),
    ))
    .await;
    let answer = get(&proxy, "a", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    let request_id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let events: Vec<serde_json::Value> = logged_events()
        .into_iter()
        .filter(|event| event["target"] == "sluice::filter" && event["stream"] == "stdout")
        .collect();
    // Each line is logged with the request whose call wrote it.
    assert!(events.iter().all(|event| event["request_id"] == request_id.as_str()), "{events:?}");
    let lines: Vec<String> = events.iter().map(|event| event["message"].as_str().unwrap().to_owned()).collect();
    assert!((10..=11).contains(&lines.len()), "{} lines", lines.len());
    assert!(lines.iter().all(|line| line.contains("\\u{1b}[2J") && !line.contains('\u{1b}')), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_callouts_give_their_lanes_back_and_end_at_their_time() {
    let origin = Origin::echo("app").await;
    let silent = SilentUpstream::start().await;
    // As many attacking tenants as there are long-call lanes: each takes one (a 5 ms spin makes
    // its call long) and then waits on an upstream that never answers, asking for no timeout.
    let lanes = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
    let mut tenants = String::from("callouts = [\"app\"]\n");
    let mut routes = Vec::new();
    let names: Vec<String> = (0..lanes).map(|index| format!("stall{index}")).collect();
    for name in &names {
        tenants.push_str(&format!("[tenant.{name}]\ncallouts = [\"silent\"]\ncall_timeout = \"60s\"\n"));
    }
    let config = "{ mode = \"stall-callout\", work_ms = 5, upstream = \"silent\" }".to_owned();
    for name in &names {
        routes.push((name.as_str(), name.as_str(), config.as_str()));
    }
    routes.push(("work", "victim", "{ mode = \"work\", work_ms = 10, upstream = \"app\" }"));
    let proxy = Arc::new(proxy(&origin, Some(&silent), &tenants, &routes).await);

    let stalls: Vec<_> = names
        .iter()
        .map(|name| {
            let (proxy, path) = (proxy.clone(), format!("/{name}"));
            tokio::spawn(async move { get(&proxy, "a", &path).await })
        })
        .collect();
    // Wait until every stalling call has become a long call (and so took a lane).
    let admin = proxy.admin.unwrap();
    for _ in 0..1000 {
        let page = admin_text(admin, "/metrics").await;
        let long = names
            .iter()
            .filter(|name| {
                page.contains(&format!(
                    "sluice_filter_long_calls_total{{route=\"{name}\",filter=\"hostile\",tenant=\"{name}\"}} 1"
                ))
            })
            .count();
        if long == lanes {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // With every stalled call waiting on the network, another tenant's heavy call still gets a
    // lane, runs and is answered: the stalled calls hold none.
    let work = get(&proxy, "a", "/work").await;
    assert_eq!(work.status, StatusCode::OK, "{}", work.text());
    assert!(stalls.iter().all(|stall| !stall.is_finished()), "the stalled calls are still waiting");
    for stall in stalls {
        stall.abort();
    }
}

#[tokio::test]
async fn a_call_ends_at_its_wall_clock_bound_and_a_callout_waits_only_what_is_left() {
    let origin = Origin::echo("app").await;
    let silent = SilentUpstream::start().await;
    // `paused`: a spinning call whose tenant's CPU rate keeps it paused far longer than its
    // 200 ms of wall-clock time. `stalled`: a callout asking for no timeout at all.
    let tenants = "[tenant.paused]\ncpu_ms_per_call = 10000\ncpu_ms_per_second = 1\ncall_timeout = \"200ms\"\n\
                   [tenant.stalled]\ncallouts = [\"silent\"]\ncall_timeout = \"200ms\"\n";
    let proxy = proxy(
        &origin,
        Some(&silent),
        tenants,
        &[
            ("paused", "paused", "{ mode = \"loop\" }"),
            ("stalled", "stalled", "{ mode = \"stall-callout\", upstream = \"silent\" }"),
        ],
    )
    .await;
    let paused = get(&proxy, "a", "/paused").await;
    assert_eq!(paused.status, StatusCode::INTERNAL_SERVER_ERROR);
    let failure = logged_failure(&request_id(&paused));
    assert_eq!(failure["error.kind"], "call_timeout", "{failure}");
    assert_eq!(failure["tenant"], "paused");

    // The callout waited only what the call had left, and the call ended at its bound.
    let stalled = get(&proxy, "a", "/stalled").await;
    assert_eq!(stalled.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(logged_failure(&request_id(&stalled))["error.kind"], "call_timeout");
    assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_filter_cannot_grow_a_head_without_bound_nor_make_a_request_the_client_may_not() {
    let origin = Origin::echo("app").await;
    let proxy = proxy(
        &origin,
        None,
        "[tenant.attacker]\ncpu_ms_per_call = 2000\n",
        &[
            ("flood", "attacker", "{ mode = \"header-flood\", count = 40000 }"),
            ("huge", "attacker", "{ mode = \"header-huge\" }"),
            ("connect", "attacker", "{ mode = \"connect\" }"),
        ],
    )
    .await;
    // 40,000 distinct names once panicked the host; now the head stops at its bound.
    let flood = get(&proxy, "a", "/flood").await;
    assert_eq!(flood.status, StatusCode::OK, "{}", flood.text());
    let echo = flood.echo();
    let refused: usize = echo.header("x-flood-refused").unwrap().parse().unwrap();
    assert!(refused > 39_700, "{refused}");
    assert_eq!(echo.header("x-flood-9").as_deref(), Some("v"));
    let line = access_log_line(&request_id(&flood)).await;
    assert_eq!(line["http.response.status_code"], 200);

    let huge = get(&proxy, "a", "/huge").await.echo();
    assert_eq!(huge.header("x-huge-refused").as_deref(), Some("true"));
    assert_eq!(huge.header("x-huge"), None);

    let connect = get(&proxy, "a", "/connect").await.echo();
    assert!(connect.header("x-method-refused").unwrap().contains("CONNECT"));
    assert_eq!(connect.0["method"], "GET");
    assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK);
}

#[tokio::test]
async fn local_responses_carry_no_connection_headers_and_a_204_no_length() {
    let origin = Origin::echo("app").await;
    let proxy = proxy(
        &origin,
        None,
        "[tenant.attacker]\n",
        &[("hop", "attacker", "{ mode = \"hop-by-hop\" }"), ("empty", "attacker", "{ mode = \"no-content\" }")],
    )
    .await;
    let hop = get(&proxy, "a", "/hop").await;
    assert_eq!(hop.status, StatusCode::OK);
    for name in ["upgrade", "keep-alive", "proxy-connection", "te", "trailer", "x-secret"] {
        assert!(!hop.headers.contains_key(name), "{name} reached the client: {:?}", hop.headers);
    }
    assert_eq!(hop.headers["x-kept"], "yes");
    assert_eq!(hop.text(), "local");

    let empty = get(&proxy, "a", "/empty").await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert!(!empty.headers.contains_key("content-length"), "{:?}", empty.headers);
    assert!(empty.body.is_empty());
}

#[tokio::test]
async fn key_value_floods_and_oversized_values_are_refused_within_the_quota() {
    let origin = Origin::echo("app").await;
    let tenants = "[tenant.attacker]\nmemory_mb = 128\nkv_max_keys = 100\nkv_max_bytes = 1048576\n";
    let proxy = proxy(
        &origin,
        None,
        tenants,
        &[
            ("flood", "attacker", "{ mode = \"kv-flood\", count = 1000 }"),
            ("huge", "attacker", "{ mode = \"kv-huge\" }"),
        ],
    )
    .await;
    assert_eq!(get(&proxy, "a", "/flood").await.text(), "refused 900");
    assert_eq!(get(&proxy, "a", "/flood").await.text(), "refused 1000", "the namespace is full");
    let huge = get(&proxy, "a", "/huge").await.text();
    assert!(huge.contains("QuotaExceeded"), "{huge}");
    assert_eq!(get(&proxy, "a", "/good").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_response_body_filter_failing_after_the_head_is_logged_as_a_failure() {
    let origin = Origin::echo("app").await;
    let proxy = proxy(&origin, None, "[tenant.attacker]\n", &[("body", "attacker", "{ mode = \"body-trap\" }")]).await;
    // The body fails before its first byte, so hyper may drop the connection before even the head
    // is written: what the client gets is cut short either way.
    let id = "body-filter-failed";
    let request = http::Request::get(proxy.url("/body"))
        .header("host", "a")
        .header("x-request-id", id)
        .body(sluice_http::body::empty())
        .unwrap();
    let cut = match sluice_tests::http1_client().request(request).await {
        Ok(response) => http_body_util::BodyExt::collect(response.into_body()).await.is_err(),
        Err(_) => true,
    };
    assert!(cut, "the response is cut off");
    let line = access_log_line(id).await;
    assert_eq!(line["error.kind"], "filter", "{line}");
    assert_eq!(line["error.side"], "filter", "{line}");
    assert_eq!(line["complete"], false);
    assert_eq!(line["message"], "request failed");
}
