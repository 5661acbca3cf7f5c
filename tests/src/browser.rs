//! A real browser for the dashboard's tests: Debian's Chromium, headless, driven over WebDriver
//! by its chromedriver, which listens on a port it picks itself (`--port=0`) and says which.
//!
//! `SLUICE_CHROMIUM` and `SLUICE_CHROMEDRIVER` name other binaries than `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a page may take to show what a test waits for: generous, so a loaded machine
/// does not fail a test that is right; a page that never shows it fails with what it showed.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(60);

/// A headless Chromium session and the chromedriver behind it (stopped on drop).
pub struct Browser {
    client: Client,
    _driver: Child,
}

fn binary(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(default))
}

/// `POST /session/{id}/se/log {"type": "browser"}`: chromedriver's console log of the page.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a 1400x1000 window.
    pub async fn start() -> Self {
        let chromedriver = binary("SLUICE_CHROMEDRIVER", "/usr/bin/chromedriver");
        let mut driver = Command::new(&chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("{} does not start ({err}): tests/run.sh installs it", chromedriver.display())
            });
        let mut lines = BufReader::new(driver.stdout.take().expect("piped")).lines();
        let port = loop {
            let line = lines.next_line().await.expect("chromedriver's output").expect("chromedriver says its port");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse::<u16>().expect("a port number");
            }
        };
        // The rest of its output is not needed, but it must not fill the pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let chromium = binary("SLUICE_CHROMIUM", "/usr/bin/chromium");
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|err| panic!("no Chromium session from {}: {err}", chromedriver.display()));
        Self { client, _driver: driver }
    }

    /// Opens `url`.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|err| panic!("open {url}: {err}"));
    }

    /// The page's console messages at level SEVERE (errors, failed loads) since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self.client.issue_cmd(BrowserLog).await.expect("the browser's console log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The text of the first element `css` selects, if there is one (and it was not redrawn
    /// between finding and reading it: pages that redraw are read through
    /// [`Browser::wait_for_text`]).
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element `css` selects shows a text that `ready` accepts, and returns it;
    /// past [`PAGE_DEADLINE`] the test fails with the last text seen.
    pub async fn wait_for_text(&self, css: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
        let mut checks = tokio::time::interval(Duration::from_millis(100));
        let mut last = None;
        loop {
            checks.tick().await;
            last = self.text(css).await.or(last);
            if let Some(text) = &last
                && ready(text)
            {
                return text.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "{css} never showed {what}; it showed {last:?}");
        }
    }

    /// Types `text` into the field `css` selects, replacing what it held.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|err| panic!("no {css}: {err}"));
        field.clear().await.expect("clear the field");
        field.send_keys(text).await.expect("type into the field");
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|err| panic!("no {css}: {err}"));
        element.click().await.unwrap_or_else(|err| panic!("click {css}: {err}"));
    }

    /// Runs `script` in the page.
    pub async fn run_script(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, Vec::new()).await.unwrap_or_else(|err| panic!("script failed: {err}"))
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the session (the driver stops when dropped).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
