//! Access control end to end: address allow and deny lists on routes and listeners (IPv4 and
//! IPv6, through a trusted proxy and an untrusted one), country lists read from a GeoIP database
//! the test builds, and bans set by the admin API and by the WAF, each ending on time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Request;
use maxminddb_writer::paths::IpAddrWithMask;
use sluice_http::body;
use sluice_tests::{
    Collected, Origin, TestProxy, access_log_line, admin_text, capture_logs, http1_client, plugin, send,
};

const TOKEN: &str = "access-test-token-0123456789";

/// A proxy started from a configuration file (so that it can reload), for as long as it lives.
struct FileProxy {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    folder: PathBuf,
    _server: sluice::server::Server,
}

impl Drop for FileProxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The proxy: a listener on 127.0.0.1 (whose peer, loopback, is a trusted proxy) and one on
/// [::1] (an untrusted peer), an admin listener, the echo origin as `app`, and `rest`.
async fn proxy(origin: &Origin, rest: &str) -> FileProxy {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let number = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let folder = std::env::temp_dir().join(format!("sluice-access-{}-{number}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("sluice.toml");
    std::fs::write(&path, config(origin, rest)).unwrap();
    sluice_tests::init_test_logging();
    let snapshot = sluice::config::Snapshot::from_file(&sluice_tests::services(), &path).expect("test config");
    let server = sluice::server::Server::start(snapshot).await.expect("start sluice");
    let addrs = server.listener_addrs().iter().map(|(_, addr)| *addr).collect();
    FileProxy { addrs, admin: server.admin_addr(), folder, _server: server }
}

fn config(origin: &Origin, rest: &str) -> String {
    format!(
        r#"
[server]
trusted_proxies = ["127.0.0.1/32"]
[[listener]]
name = "v4"
bind = "127.0.0.1:0"
[[listener]]
name = "v6"
bind = "[::1]:0"
[admin]
bind = "127.0.0.1:0"
reload_token = "{TOKEN}"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
{rest}
"#,
        origin = origin.addr
    )
}

/// GET `path` on the listener at `addr`, as forwarded for `client` (none: no header).
async fn get_as(addr: SocketAddr, path: &str, client: Option<&str>) -> Collected {
    let mut request = Request::get(format!("http://{addr}{path}")).header("host", "app.test");
    if let Some(client) = client {
        request = request.header("x-forwarded-for", client);
    }
    send(&http1_client(), request.body(body::empty()).unwrap()).await
}

fn request_id(response: &Collected) -> String {
    response.headers["x-request-id"].to_str().unwrap().to_owned()
}

/// The proxy's own refusal: 403 naming the request id (a filter's 403 reads otherwise).
fn assert_refused_by_access_control(response: &Collected) {
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.text(), format!("403 Forbidden\nrequest id: {}\n", request_id(response)));
}

fn metric(page: &str, series: &str) -> u64 {
    page.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test]
async fn allowed_and_denied_ranges_on_one_route_for_ipv4_and_ipv6() {
    let (origin, answered) = Origin::echo_counted("app").await;
    let proxy = proxy(
        &origin,
        r#"
[[route]]
name = "office"
path_prefix = "/office"
upstream = "app"
access = { allow = ["192.0.2.0/24", "2001:db8:1::/48", "127.0.0.1"], deny = ["192.0.2.66", "2001:db8:1:bad::/64"] }

[[route]]
name = "open"
upstream = "app"
access = { deny = ["::1"] }
"#,
    )
    .await;
    let (v4, v6) = (proxy.addrs[0], proxy.addrs[1]);
    for (client, status) in [
        (Some("192.0.2.10"), 200),
        (Some("192.0.2.66"), 403),
        (Some("198.51.100.1"), 403),
        (Some("2001:db8:1::5"), 200),
        (Some("2001:db8:1:bad::5"), 403),
        (Some("2001:db8:2::1"), 403),
        // A forged entry on the left changes nothing: the trusted hop's right-most client counts.
        (Some("192.0.2.10, 198.51.100.1"), 403),
        (None, 200),
    ] {
        let response = get_as(v4, "/office/plan", client).await;
        assert_eq!(response.status, status, "from {client:?}: {}", response.text());
        if status == 403 {
            assert_refused_by_access_control(&response);
        }
    }
    let before = answered.load(std::sync::atomic::Ordering::Relaxed);

    // The [::1] peer is no trusted proxy: its X-Forwarded-For claims an allowed address in vain.
    let untrusted = get_as(v6, "/office/plan", Some("192.0.2.10")).await;
    assert_refused_by_access_control(&untrusted);
    // An IPv6 peer in a deny list, and the same route from an address outside it.
    assert_refused_by_access_control(&get_as(v6, "/anything", None).await);
    assert_eq!(get_as(v4, "/anything", None).await.status, 200);
    assert_eq!(
        answered.load(std::sync::atomic::Ordering::Relaxed),
        before + 1,
        "refused requests never reach the origin"
    );

    let page = admin_text(proxy.admin.unwrap(), "/metrics").await;
    assert_eq!(metric(&page, r#"sluice_access_refused_total{scope="route",name="office",list="deny"}"#), 2, "{page}");
    assert_eq!(metric(&page, r#"sluice_access_refused_total{scope="route",name="office",list="allow"}"#), 4, "{page}");
    assert_eq!(metric(&page, r#"sluice_access_refused_total{scope="route",name="open",list="deny"}"#), 1, "{page}");
}

#[tokio::test]
async fn a_listener_deny_list_closes_every_route_and_reads_list_files() {
    let origin = Origin::echo("app").await;
    let folder = std::env::temp_dir().join(format!("sluice-access-lists-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let list = folder.join("deny.txt");
    std::fs::write(&list, "# known abusers\n203.0.113.0/24\n\n2001:db8:dead::/48  # a whole network\n").unwrap();
    let proxy = TestProxy::start(&format!(
        r#"
[server]
trusted_proxies = ["127.0.0.1/32"]
[[listener]]
name = "edge"
bind = "127.0.0.1:0"
access = {{ deny_file = "{list}" }}
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[[route]]
path_prefix = "/a"
upstream = "app"
"#,
        list = list.display(),
        origin = origin.addr,
    ))
    .await;
    assert_refused_by_access_control(&get_as(proxy.addr, "/a", Some("203.0.113.7")).await);
    assert_refused_by_access_control(&get_as(proxy.addr, "/a", Some("2001:db8:dead::1")).await);
    // Refused before routing: a path no route takes is refused too, not "not found".
    assert_refused_by_access_control(&get_as(proxy.addr, "/nowhere", Some("203.0.113.7")).await);
    assert_eq!(get_as(proxy.addr, "/a", Some("192.0.2.1")).await.status, 200);
    assert_eq!(get_as(proxy.addr, "/nowhere", Some("192.0.2.1")).await.status, 404);
    let _ = std::fs::remove_dir_all(&folder);
}

/// A GeoIP database: 198.51.100.0/24 in France (AS 64500), 203.0.113.0/24 in Germany (AS 64501)
/// and 2001:db8:de::/48 in Germany, IPv4 held in the IPv6 tree as MaxMind's databases do.
fn geoip_database(folder: &std::path::Path) -> PathBuf {
    #[derive(serde::Serialize)]
    struct Country {
        iso_code: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Record {
        country: Country,
        autonomous_system_number: u32,
        autonomous_system_organization: &'static str,
    }
    let mut database = maxminddb_writer::Database::default();
    database.metadata.ip_version = maxminddb_writer::metadata::IpVersion::V6;
    database.metadata.binary_format_major_version = 2;
    database.metadata.database_type = "Sluice-Test-Country".into();
    for (network, iso_code, asn) in
        [("::198.51.100.0/120", "FR", 64500), ("::203.0.113.0/120", "DE", 64501), ("2001:db8:de::/48", "DE", 64501)]
    {
        let record = Record {
            country: Country { iso_code },
            autonomous_system_number: asn,
            autonomous_system_organization: "Test Networks",
        };
        let data = database.insert_value(record).unwrap();
        database.insert_node(network.parse::<IpAddrWithMask>().unwrap(), data);
    }
    let path = folder.join("countries.mmdb");
    let file = std::fs::File::create(&path).unwrap();
    database.write_to(std::io::BufWriter::new(file)).unwrap();
    path
}

#[tokio::test]
async fn countries_are_allowed_and_denied_and_filters_and_the_log_see_them() {
    capture_logs();
    let origin = Origin::echo("app").await;
    let folder = std::env::temp_dir().join(format!("sluice-access-geoip-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let database = geoip_database(&folder);
    let proxy = proxy(
        &origin,
        &format!(
            r#"
[geoip]
country_database = "{database}"
[plugin.probe]
source = "{probe}"
[[route]]
name = "germany-only"
path_prefix = "/de"
upstream = "app"
countries = {{ allow = ["de"] }}
[[route]]
name = "shop"
upstream = "app"
countries = {{ deny = ["FR"] }}
filters = [{{ plugin = "probe", config = {{ tag = "p", locate = true }} }}]
"#,
            database = database.display(),
            probe = plugin("tests/plugins/probe").display(),
        ),
    )
    .await;
    let v4 = proxy.addrs[0];
    assert_refused_by_access_control(&get_as(v4, "/shop", Some("198.51.100.9")).await);
    let german = get_as(v4, "/shop", Some("203.0.113.9")).await;
    assert_eq!(german.status, 200);
    let echo = german.echo();
    assert_eq!(echo.header("x-client-country").as_deref(), Some("DE"), "the filter reads the location");
    assert_eq!(echo.header("x-client-asn").as_deref(), Some("64501"));
    assert_eq!(echo.header("x-client-ip").as_deref(), Some("203.0.113.9"), "filters see the forwarded client");
    let unknown = get_as(v4, "/shop", Some("192.0.2.1")).await;
    assert_eq!(unknown.status, 200, "an unknown country is in no deny list");
    assert_eq!(unknown.echo().header("x-client-country").as_deref(), Some("unknown"));

    assert_eq!(get_as(v4, "/de", Some("2001:db8:de::1")).await.status, 200);
    assert_eq!(get_as(v4, "/de", Some("203.0.113.9")).await.status, 200);
    assert_refused_by_access_control(&get_as(v4, "/de", Some("198.51.100.9")).await);
    assert_refused_by_access_control(&get_as(v4, "/de", Some("192.0.2.1")).await);

    let line = access_log_line(&request_id(&german)).await;
    assert_eq!(line["client.address"], "203.0.113.9", "{line}");
    assert_eq!(line["network.peer.address"], "127.0.0.1", "{line}");
    assert_eq!(line["client.geo.country_iso_code"], "DE", "{line}");
    assert_eq!(line["client.as.number"], 64501, "{line}");
    let _ = std::fs::remove_dir_all(&folder);
}

async fn admin_call(admin: SocketAddr, method: &str, path: &str, token: Option<&str>, json: &str) -> Collected {
    let mut request = Request::builder().method(method).uri(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(&http1_client(), request.body(body::full(json.to_owned())).unwrap()).await
}

/// Waits until `deadline` has passed: a ban's end is the thing under test, not a race.
async fn wait_past(deadline: Instant) {
    tokio::time::sleep_until((deadline + Duration::from_millis(20)).into()).await;
}

#[tokio::test]
async fn an_admin_ban_refuses_the_client_survives_a_reload_and_ends_on_time() {
    let origin = Origin::echo("app").await;
    let proxy = proxy(&origin, "[[route]]\nupstream = \"app\"\n").await;
    let (v4, admin) = (proxy.addrs[0], proxy.admin.unwrap());
    let ban = r#"{"address": "192.0.2.50", "duration": "1s", "reason": "credential stuffing"}"#;
    assert_eq!(admin_call(admin, "POST", "/blocks", None, ban).await.status, 401, "bans need the token");
    let asked = Instant::now();
    let created = admin_call(admin, "POST", "/blocks", Some(TOKEN), ban).await;
    assert_eq!(created.status, 201, "{}", created.text());
    // The proxy started the ban after `asked`, so it ends before this.
    let ends_by = asked + Duration::from_secs(1) + (Instant::now() - asked);

    assert_refused_by_access_control(&get_as(v4, "/", Some("192.0.2.50")).await);
    assert_eq!(get_as(v4, "/", Some("192.0.2.51")).await.status, 200);
    let listed: serde_json::Value = serde_json::from_str(&admin_text(admin, "/blocks").await).unwrap();
    assert_eq!(listed["bans"][0]["address"], "192.0.2.50/32", "{listed}");
    assert_eq!(listed["bans"][0]["reason"], "credential stuffing");
    assert_eq!(listed["bans"][0]["origin"]["by"], "admin");

    let reloaded = admin_call(admin, "POST", "/reload?wait=true", Some(TOKEN), "").await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_refused_by_access_control(&get_as(v4, "/", Some("192.0.2.50")).await);

    // A second ban, lifted by hand; a range ban closes the whole range.
    let range = r#"{"address": "2001:db8:bad::/48", "duration": "1h"}"#;
    assert_eq!(admin_call(admin, "POST", "/blocks", Some(TOKEN), range).await.status, 201);
    assert_refused_by_access_control(&get_as(v4, "/", Some("2001:db8:bad::9")).await);
    let lifted = admin_call(admin, "DELETE", "/blocks?address=2001%3Adb8%3Abad%3A%3A%2F48", Some(TOKEN), "").await;
    assert_eq!(lifted.text().trim(), r#"{"lifted":1}"#);
    assert_eq!(get_as(v4, "/", Some("2001:db8:bad::9")).await.status, 200);

    let malformed = admin_call(admin, "POST", "/blocks", Some(TOKEN), r#"{"address": "nope", "duration": "1m"}"#).await;
    assert_eq!(malformed.status, 400, "{}", malformed.text());

    wait_past(ends_by).await;
    assert_eq!(get_as(v4, "/", Some("192.0.2.50")).await.status, 200, "the ban ended");
    let listed: serde_json::Value = serde_json::from_str(&admin_text(admin, "/blocks").await).unwrap();
    assert_eq!(listed["bans"], serde_json::json!([]));
}

#[tokio::test]
async fn the_waf_bans_a_repeat_attacker_from_its_tenants_routes_only_and_the_ban_ends_on_time() {
    capture_logs();
    let origin = Origin::echo("app").await;
    let proxy = proxy(
        &origin,
        &format!(
            r#"
[plugin.waf]
source = "{waf}"
[tenant.shop]
ban_max_duration = "1h"
[tenant.blog]
[[route]]
name = "shop"
path_prefix = "/shop"
tenant = "shop"
upstream = "app"
filters = [{{ plugin = "waf", config = {{ ban = {{ after = 2, within = "1m", duration = "1s" }} }} }}]
[[route]]
name = "blog"
path_prefix = "/blog"
tenant = "blog"
upstream = "app"
filters = [{{ plugin = "waf", config = {{ ban = {{ after = 1, within = "1m", duration = "1h" }} }} }}]
"#,
            waf = plugin("plugins/waf").display(),
        ),
    )
    .await;
    let v4 = proxy.addrs[0];
    let (attacker, bystander) = (Some("192.0.2.77"), Some("192.0.2.78"));
    let attack = "/shop/item?id=1%27%20UNION%20SELECT%20password%20FROM%20users--";
    let first = get_as(v4, attack, attacker).await;
    assert_eq!(first.status, 403);
    assert!(first.text().contains("web application firewall"), "the WAF itself blocks: {}", first.text());
    assert_eq!(get_as(v4, "/shop/item?id=1", attacker).await.status, 200, "one attack is not enough");
    let asked = Instant::now();
    assert!(get_as(v4, attack, attacker).await.text().contains("web application firewall"));
    let ends_by = asked + Duration::from_secs(1) + (Instant::now() - asked);

    // Now banned: refused before the WAF runs, on the shop tenant's routes only.
    assert_refused_by_access_control(&get_as(v4, "/shop/item?id=1", attacker).await);
    assert_eq!(get_as(v4, "/blog/post", attacker).await.status, 200, "another tenant's routes stay open");
    assert_eq!(get_as(v4, "/shop/item?id=1", bystander).await.status, 200, "other clients are served");
    let listed: serde_json::Value = serde_json::from_str(&admin_text(proxy.admin.unwrap(), "/blocks").await).unwrap();
    let ban = &listed["bans"][0];
    assert_eq!(ban["address"], "192.0.2.77/32", "{listed}");
    assert_eq!((ban["scope"].as_str(), ban["tenant"].as_str()), (Some("tenant"), Some("shop")), "{listed}");
    assert_eq!((ban["origin"]["by"].as_str(), ban["origin"]["filter"].as_str()), (Some("filter"), Some("waf")));

    // The blog tenant has no ban grant: its WAF blocks the attack but cannot ban.
    assert!(get_as(v4, "/blog/x?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", bystander).await.text().contains("firewall"));
    assert_eq!(get_as(v4, "/blog/post", bystander).await.status, 200, "no grant, no ban");

    wait_past(ends_by).await;
    assert_eq!(get_as(v4, "/shop/item?id=1", attacker).await.status, 200, "the ban ended");
}
