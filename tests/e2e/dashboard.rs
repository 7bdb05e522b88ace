//! The dashboard in a real browser: Debian's Chromium, headless, driven over WebDriver through
//! chromedriver (`fantoccini`), against the real `metrics-query` binary on a seeded database.
//! The page loads without console errors, draws every chart, and shows the totals that
//! `GET /metrics` gives for the same range; with a key configured it asks for one and works
//! once given. Screenshots go to `<target>/dashboard/` for a person to look at.
//!
//! `scripts/test.sh` installs `chromium` and `chromium-driver` when missing
//! (scripts/services.sh); `CHROMIUM` and `CHROMEDRIVER` name other binaries.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use bigdecimal::BigDecimal;
use chrono::{DateTime, Utc};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use metrics_aggregator::TableName;
use metrics_events::{Event, EventKind, RunCompleted, SessionCreated, SessionType, Tokens, Usage};
use metrics_test_support::process::{KEY, Service, free_address};
use metrics_test_support::{TestDatabase, eventually};
use serde_json::{Value, json};

const RANGE: &str = "starting_date=2025-06-28&ending_date=2025-07-08";
const MODELS: [(&str, &str); 3] = [
    ("gpt-4o", "OpenAI"),
    ("claude-sonnet-4", "Anthropic"),
    ("gemini-2.5-pro", "Google"),
];

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// Five days of July 2025 (none on the 4th), each busier than the one before: sessions of the
/// three types, one to three runs each, three models, a few users.
fn week() -> Vec<Event> {
    let types = [SessionType::Agent, SessionType::Team, SessionType::Workflow];
    let mut events = Vec::new();
    for (n, day) in [1, 2, 3, 5, 6].into_iter().enumerate() {
        for s in 0..(3 + 2 * n) {
            let session = format!("s-{day}-{s}");
            let session_type = types[s % 3];
            let user = format!("user-{}", (s + n) % 5);
            let time = format!("2025-07-{day:02}T{:02}:00:00Z", 8 + s % 12);
            events.push(Event {
                source: "agno://e2e".to_owned(),
                id: format!("created-{session}"),
                time: at(&time),
                kind: EventKind::SessionCreated(SessionCreated {
                    session_id: session.clone(),
                    session_type,
                    user_id: Some(user.clone()),
                }),
            });
            for r in 0..(1 + (s + n) % 3) {
                let (model, provider) = MODELS[(s + r) % 3];
                let input = 300 + 97 * i64::try_from(s + r + n).unwrap();
                let output = 120 + 31 * i64::try_from(s * r + n).unwrap();
                events.push(Event {
                    source: "agno://e2e".to_owned(),
                    id: format!("run-{session}-{r}"),
                    time: at(&time),
                    kind: EventKind::RunCompleted(RunCompleted {
                        run_id: format!("r-{session}-{r}"),
                        session_id: session.clone(),
                        session_type,
                        user_id: Some(user.clone()),
                        parent_run_id: None,
                        model: Some(model.to_owned()),
                        model_provider: Some(provider.to_owned()),
                        usage: Usage {
                            tokens: Tokens {
                                input_tokens: input,
                                output_tokens: output,
                                total_tokens: input + output,
                                audio_tokens: 0,
                                input_audio_tokens: 0,
                                output_audio_tokens: 0,
                                cached_tokens: input / 4,
                                cache_write_tokens: 0,
                                reasoning_tokens: output / 3,
                            },
                            cost: BigDecimal::from_str(&format!("0.00{}", 17 + s + r)).unwrap(),
                        },
                    }),
                });
            }
        }
    }
    events
}

fn seeded() -> TestDatabase {
    let db = TestDatabase::migrated();
    let mut conn = db.connect();
    let table = metrics_aggregator::register_table(
        &mut conn,
        &TableName::from_str("agno_metrics").unwrap(),
    )
    .unwrap();
    metrics_aggregator::apply(&mut conn, table, &week()).unwrap();
    db
}

/// What the dashboard must show for `body`, a `GET /metrics` response: the totals of its rows.
struct Totals {
    runs: u64,
    sessions: u64,
    users: u64,
    tokens: u64,
    cost: f64,
    models: usize,
}

impl Totals {
    fn of(body: &Value) -> Self {
        let rows = body["metrics"].as_array().unwrap();
        let sum = |keys: &[&str]| -> u64 {
            rows.iter()
                .flat_map(|row| keys.iter().map(|key| row[*key].as_u64().unwrap()))
                .sum()
        };
        let mut models: Vec<&str> = rows
            .iter()
            .flat_map(|row| row["model_metrics"].as_array().unwrap())
            .map(|model| model["model_id"].as_str().unwrap())
            .collect();
        models.sort_unstable();
        models.dedup();
        Self {
            runs: sum(&["agent_runs_count", "team_runs_count", "workflow_runs_count"]),
            sessions: sum(&[
                "agent_sessions_count",
                "team_sessions_count",
                "workflow_sessions_count",
            ]),
            users: rows
                .iter()
                .map(|row| row["users_count"].as_u64().unwrap())
                .max()
                .unwrap_or(0),
            tokens: rows
                .iter()
                .map(|row| row["token_metrics"]["total_tokens"].as_u64().unwrap())
                .sum(),
            // In date order, as the page adds them.
            cost: rows
                .iter()
                .map(|row| row["token_metrics"]["cost"].as_f64().unwrap())
                .sum(),
            models: models.len(),
        }
    }
}

/// A chromedriver command beyond the WebDriver standard: `POST /session/{id}/{path}`. Used for
/// `se/log` (the browser's console messages since the last call; needs `goog:loggingPrefs`) and
/// `goog/cdp/execute` (a DevTools command: a phone's screen).
#[derive(Debug)]
struct ChromeCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for ChromeCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// Headless Chromium under chromedriver, with a fresh profile; both end on drop.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Self {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver =
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        for program in [&chromium, &chromedriver] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test.sh does), or set CHROMIUM / CHROMEDRIVER"
            );
        }
        let port = free_address().port();
        // A process group of its own, which the browser joins: killed whole on drop, so a failed
        // test leaves no browser behind.
        let driver = Command::new(&chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = std::env::temp_dir().join(format!(
            "metrics-e2e-chromium-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,1800",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = eventually(Duration::from_secs(30), || {
            let capabilities = capabilities.clone();
            let webdriver = webdriver.clone();
            async move {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&webdriver)
                    .await
                    .map_err(|err| err.to_string())
            }
        })
        .await;
        Self {
            client: Some(client),
            driver,
            profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    /// The page's `data-state` once it is `want` (ready, needs-key), at most 20 s.
    async fn wait_for_state(&self, want: &str) {
        eventually(Duration::from_secs(20), || async {
            let state = self
                .client()
                .execute("return document.body.dataset.state;", vec![])
                .await
                .map_err(|err| err.to_string())?;
            if state == want {
                Ok(())
            } else {
                Err(format!("state {state}"))
            }
        })
        .await;
    }

    /// The console messages since the last call, as `LEVEL message`.
    async fn console(&self) -> Vec<String> {
        let entries = self
            .client()
            .issue_cmd(ChromeCommand {
                path: "se/log",
                body: json!({ "type": "browser" }),
            })
            .await
            .unwrap();
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| format!("{} {}", entry["level"], entry["message"]))
            .collect()
    }

    /// A phone's screen from here on: 390 x 844 CSS pixels, touch, twice the pixel density.
    /// (A headless window cannot be made narrower than 500 pixels.)
    async fn emulate_phone(&self) {
        self.client()
            .issue_cmd(ChromeCommand {
                path: "goog/cdp/execute",
                body: json!({
                    "cmd": "Emulation.setDeviceMetricsOverride",
                    "params": { "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true },
                }),
            })
            .await
            .unwrap();
    }

    async fn text(&self, selector: &str) -> String {
        self.client()
            .find(Locator::Css(selector))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn count(&self, selector: &str) -> usize {
        self.client()
            .find_all(Locator::Css(selector))
            .await
            .unwrap()
            .len()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client().screenshot().await.unwrap();
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/<test>: the screenshots go to <target>/dashboard/.
        let dir = exe.ancestors().nth(3).unwrap().join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            client.close().await.unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Digits of a shown number: `1,234` is 1234.
fn digits(text: &str) -> u64 {
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|err| panic!("{text:?}: {err}"))
}

/// Checks the totals and charts on a ready page against `body`.
async fn assert_shows(browser: &Browser, body: &Value) {
    let expected = Totals::of(body);
    assert!(expected.runs > 0);
    let shown = |name: &str| format!("[data-total={name}] .value");
    assert_eq!(digits(&browser.text(&shown("runs")).await), expected.runs);
    assert_eq!(
        digits(&browser.text(&shown("sessions")).await),
        expected.sessions
    );
    assert_eq!(digits(&browser.text(&shown("users")).await), expected.users);
    assert_eq!(
        digits(&browser.text(&shown("tokens")).await),
        expected.tokens
    );
    let cost: f64 = browser
        .client()
        .find(Locator::Css("[data-total=cost] .value"))
        .await
        .unwrap()
        .attr("data-value")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (cost - expected.cost).abs() <= 1e-9 * expected.cost.abs().max(1.0),
        "cost {cost} shown, {} in GET /metrics",
        expected.cost
    );
    assert_eq!(
        browser.text(&shown("cost")).await,
        format!("${:.4}", expected.cost),
        "the cost as shown"
    );

    // Every day of the range is a slot; days with data have bars, one segment per kind.
    let days = body["metrics"].as_array().unwrap().len();
    for chart in ["runs", "sessions", "users", "tokens", "cost"] {
        assert_eq!(
            browser
                .count(&format!("[data-chart={chart}] svg g.day"))
                .await,
            11,
            "{chart}: one slot per day of the range"
        );
        let bars = browser
            .count(&format!("[data-chart={chart}] svg rect.bar"))
            .await;
        assert!(bars >= days, "{chart}: {bars} bars for {days} days");
    }
    assert_eq!(
        browser.count("[data-chart=models] svg rect.bar").await,
        expected.models
    );
    assert_eq!(
        browser.count("[data-chart=token-kinds] svg rect.bar").await,
        9
    );
    assert_eq!(browser.count("#days tbody tr").await, days);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_draws_the_totals_of_get_metrics_in_a_browser() {
    let db = seeded();
    let mut query = Service::query_open(&db);
    query.ready().await;
    let api = query.http.unwrap();
    let body: Value = reqwest::get(format!("http://{api}/metrics?{RANGE}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["metrics"].as_array().unwrap().len(), 5);

    let browser = Browser::start().await;
    // `/` leads to the dashboard.
    browser
        .client()
        .goto(&format!("http://{api}/"))
        .await
        .unwrap();
    let location = browser.client().current_url().await.unwrap();
    assert_eq!(location.path(), "/dashboard");

    browser
        .client()
        .goto(&format!("http://{api}/dashboard?{RANGE}"))
        .await
        .unwrap();
    browser.wait_for_state("ready").await;
    assert_shows(&browser, &body).await;
    browser.screenshot("dashboard.png").await;

    // A phone: nothing wider than the screen, the charts redrawn to fit it.
    browser.emulate_phone().await;
    let fits = eventually(Duration::from_secs(10), || async {
        let widths = browser
            .client()
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth, \
                 document.querySelector('[data-chart=runs] svg').getAttribute('width')];",
                vec![],
            )
            .await
            .map_err(|err| err.to_string())?;
        let [scroll, inner, svg] = [0, 1, 2].map(|i| {
            widths[i]
                .as_u64()
                .or_else(|| widths[i].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(u64::MAX)
        });
        if inner == 390 && scroll <= inner && svg < inner {
            Ok(())
        } else {
            Err(format!(
                "scroll width {scroll}, window {inner}, chart {svg}"
            ))
        }
    })
    .await;
    assert_eq!(fits, ());
    assert_shows(&browser, &body).await;
    browser.screenshot("dashboard-phone.png").await;

    let console = browser.console().await;
    let errors: Vec<&String> = console
        .iter()
        .filter(|line| line.contains("SEVERE"))
        .collect();
    assert!(errors.is_empty(), "console errors: {console:?}");
    browser.close().await;
    query.stop(Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_the_key_and_works_once_given() {
    let db = seeded();
    let mut query = Service::query(&db);
    query.ready().await;
    let api = query.http.unwrap();
    let body: Value = reqwest::Client::new()
        .get(format!("http://{api}/metrics?{RANGE}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let browser = Browser::start().await;
    browser
        .client()
        .goto(&format!("http://{api}/dashboard?{RANGE}"))
        .await
        .unwrap();
    // The page itself needs no key; the data does.
    browser.wait_for_state("needs-key").await;
    assert_eq!(browser.count("#key-form:not([hidden])").await, 1);
    assert_eq!(browser.count("#content:not([hidden])").await, 0);

    let key = browser.client().find(Locator::Css("#key")).await.unwrap();
    key.send_keys("not-the-key").await.unwrap();
    browser
        .client()
        .find(Locator::Css("#key-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), || async {
        let error = browser.text("#key-error").await;
        if error.starts_with("That key was refused") {
            Ok(())
        } else {
            Err(error)
        }
    })
    .await;
    browser.wait_for_state("needs-key").await;

    let key = browser.client().find(Locator::Css("#key")).await.unwrap();
    key.send_keys(KEY).await.unwrap();
    browser
        .client()
        .find(Locator::Css("#key-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for_state("ready").await;
    assert_shows(&browser, &body).await;
    // Kept for the tab only, in sessionStorage.
    let stored = browser
        .client()
        .execute(
            "return [sessionStorage.getItem('agentos-metrics.key'), localStorage.length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!([KEY, 0]));
    browser.screenshot("dashboard-with-key.png").await;

    // The only console errors are the two refused requests (no key, then a wrong one).
    let console = browser.console().await;
    let errors: Vec<&String> = console
        .iter()
        .filter(|line| line.contains("SEVERE"))
        .collect();
    assert_eq!(errors.len(), 2, "console: {console:?}");
    assert!(
        errors.iter().all(|line| line.contains("401")),
        "console: {console:?}"
    );
    browser.close().await;
    query.stop(Duration::from_secs(20));
}
