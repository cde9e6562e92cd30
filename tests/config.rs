//! Configuration: each validation rule, environment overrides (without touching the process
//! environment), secrets from files, and redaction.

use statusd::config::{load_from_str, OnRemoved, Purpose};

const MINIMAL: &str = r#"
[platform]
base_url = "https://eu2-cloud.acronis.com/"
client_id = "client"
client_secret = "topsecret-value"
[integration]
application_code = "vendor.app"
"#;

fn problems(toml: &str, env: &[(&str, &str)]) -> Vec<(String, String)> {
    match load_from_str(toml, env, Purpose::Run) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems.into_iter().map(|p| (p.key, p.message)).collect(),
    }
}

fn has(problems: &[(String, String)], key: &str, fragment: &str) -> bool {
    problems
        .iter()
        .any(|(k, m)| k == key && m.contains(fragment))
}

#[test]
fn minimal_config_is_valid_with_documented_defaults() {
    let s = load_from_str(MINIMAL, &[], Purpose::Run).unwrap();
    assert_eq!(
        s.platform.base_url.as_deref(),
        Some("https://eu2-cloud.acronis.com")
    );
    assert_eq!(s.platform.max_concurrency, 8);
    assert_eq!(s.platform.request_timeout.as_secs(), 30);
    assert_eq!(s.delivery.max_batch_events, 100);
    assert_eq!(s.delivery.max_age.as_secs(), 72 * 3600);
    assert_eq!(s.store.delivered_retention.as_secs(), 24 * 3600);
    assert_eq!(s.api.listen.to_string(), "127.0.0.1:8750");
    assert_eq!(s.reconcile.tenants.schedule, "0 */15 * * * *");
    assert_eq!(s.reconcile.tenants.on_removed, OnRemoved::Deactivate);
    assert_eq!(s.integration.module_name, "statusd");
}

#[test]
fn environment_overrides_the_file() {
    let s = load_from_str(
        MINIMAL,
        &[
            ("STATUSD__PLATFORM__MAX_CONCURRENCY", "3"),
            ("STATUSD__DELIVERY__INITIAL_BACKOFF", "250ms"),
            ("STATUSD__RECONCILE__TENANTS__ON_REMOVED", "report"),
            (
                "STATUSD__RECONCILE__BRANDING__TARGETS",
                "partners,0b1d6a4e-8a7b-4c1e-9a55-6f0e8f3f2a11",
            ),
            ("UNRELATED", "ignored"),
        ],
        Purpose::Run,
    )
    .unwrap();
    assert_eq!(s.platform.max_concurrency, 3);
    assert_eq!(s.delivery.initial_backoff.as_millis(), 250);
    assert_eq!(s.reconcile.tenants.on_removed, OnRemoved::Report);
    assert_eq!(s.reconcile.branding.targets.len(), 2);
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let p = problems(
        r##"
[platform]
base_url = "eu2-cloud"
client_id = "c"
client_secret = "s"
request_timeout = "soon"
max_concurrency = 0
[integration]
application_code = "vendor.app"
application_id = "0b1d6a4e-8a7b-4c1e-9a55-6f0e8f3f2a11"
[delivery]
initial_backoff = "10s"
max_backoff = "1s"
[api]
listen = "0.0.0.0:8750"
[reconcile.tenants]
schedule = "*/5 * * * *"
on_removed = "delete"
[reconcile.branding]
targets = ["nope"]
[branding]
color = "#FFFFFF"
upsell_url = "shop"
flavour = "x"
[typo]
key = 1
"##,
        &[],
    );
    for (key, fragment) in [
        ("platform.base_url", "not a URL"),
        ("platform.request_timeout", "not a duration"),
        ("platform.max_concurrency", "from 1 to 256"),
        ("integration.application_code", "not both"),
        ("delivery.max_backoff", "not be shorter"),
        ("api.token", "not a loopback"),
        ("reconcile.tenants.schedule", "6, seconds first"),
        ("reconcile.tenants.on_removed", "deactivate"),
        ("reconcile.branding.targets", "neither a tenant UUID"),
        ("branding.color", "6 hex digits"),
        ("branding.upsell_url", "not a URL"),
        ("branding.flavour", "not a managed brand field"),
        ("typo.key", "unknown setting"),
    ] {
        assert!(
            has(&p, key, fragment),
            "expected {key}: …{fragment}… in {p:#?}"
        );
    }
}

#[test]
fn required_settings_for_run() {
    let p = problems("", &[]);
    for key in [
        "platform.base_url",
        "platform.client_id",
        "platform.client_secret",
        "integration.application_code",
    ] {
        assert!(p.iter().any(|(k, _)| k == key), "{key} missing from {p:#?}");
    }
    // The demo and operator commands need none of them.
    assert!(load_from_str("", &[], Purpose::Local).is_ok());
}

#[test]
fn invalid_cron_expression_is_refused() {
    let p = problems(
        MINIMAL,
        &[("STATUSD__RECONCILE__STATUS__SCHEDULE", "0 0 */6 * * * * *")],
    );
    assert!(
        has(&p, "reconcile.status.schedule", "not a cron schedule"),
        "{p:?}"
    );
    let p = problems(
        MINIMAL,
        &[("STATUSD__RECONCILE__STATUS__SCHEDULE", "0 0 99 * * *")],
    );
    assert!(
        has(&p, "reconcile.status.schedule", "not a cron schedule"),
        "{p:?}"
    );
}

#[test]
fn secrets_from_files_trim_the_newline_and_both_forms_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, "from-file\n").unwrap();
    let toml = MINIMAL.replace(
        "client_secret = \"topsecret-value\"",
        &format!("client_secret_file = \"{}\"", f.display()),
    );
    let s = load_from_str(&toml, &[], Purpose::Run).unwrap();
    assert_eq!(s.platform.client_secret.unwrap().expose(), "from-file");
    let both = format!("{MINIMAL}\n");
    let p = problems(
        &both,
        &[("STATUSD__PLATFORM__CLIENT_SECRET_FILE", f.to_str().unwrap())],
    );
    assert!(has(&p, "platform.client_secret", "not both"), "{p:?}");
    let p = problems(
        &toml.replace(f.to_str().unwrap(), "/nonexistent/secret"),
        &[],
    );
    assert!(
        has(&p, "platform.client_secret_file", "cannot read"),
        "{p:?}"
    );
    // systemd credentials directory.
    std::fs::write(dir.path().join("client_secret"), "cred\n").unwrap();
    let no_secret = MINIMAL.replace("client_secret = \"topsecret-value\"\n", "");
    let s = load_from_str(
        &no_secret,
        &[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())],
        Purpose::Run,
    )
    .unwrap();
    assert_eq!(s.platform.client_secret.unwrap().expose(), "cred");
}

#[test]
fn application_id_must_be_a_uuid_and_lengths_are_checked() {
    let toml = MINIMAL.replace(
        "application_code = \"vendor.app\"",
        "application_id = \"x\"\nmodule_name = \"\"",
    );
    let p = problems(&toml, &[]);
    assert!(has(&p, "integration.application_id", "not a UUID"), "{p:?}");
    assert!(has(&p, "integration.module_name", "1 to 255"), "{p:?}");
}

#[test]
fn non_loopback_listen_is_fine_with_a_token() {
    let s = load_from_str(
        MINIMAL,
        &[
            ("STATUSD__API__LISTEN", "0.0.0.0:8750"),
            ("STATUSD__API__TOKEN", "an-api-token-of-24-chars"),
        ],
        Purpose::Run,
    )
    .unwrap();
    assert!(s.api.token.is_some());
}

#[test]
fn secrets_never_show_in_debug_or_the_effective_settings() {
    let s = load_from_str(
        MINIMAL,
        &[("STATUSD__API__TOKEN", "api-token-value-never-shown")],
        Purpose::Run,
    )
    .unwrap();
    let printed = s.to_redacted_toml();
    let debug = format!("{s:?}");
    for text in [&printed, &debug] {
        assert!(
            !text.contains("topsecret-value") && !text.contains("api-token-value-never-shown"),
            "{text}"
        );
    }
    assert!(
        printed.contains("client_secret = \"[redacted]\""),
        "{printed}"
    );
}

#[test]
fn check_config_command_exits_78_on_problems_and_0_when_valid() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, MINIMAL).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[platform]\nbase_url = \"nope\"\n").unwrap();
    let run = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_statusd"))
            .args(["check-config", "--config"])
            .arg(path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert_eq!(ok.status.code(), Some(0));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("[accounts.default]\n")
            && out.contains("datacenter_url = \"https://eu2-cloud.acronis.com\""),
        "{out}"
    );
    assert!(
        !out.contains("topsecret-value")
            && !String::from_utf8_lossy(&ok.stderr).contains("topsecret-value")
    );
    let bad = run(&bad);
    assert_eq!(bad.status.code(), Some(78));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("platform.base_url: not a URL"), "{err}");
    assert!(err.contains("platform.client_id: required"), "{err}");
}

#[test]
fn the_example_config_is_valid_once_the_required_keys_are_set() {
    let example = include_str!("../config/statusd.example.toml");
    let s = load_from_str(
        example,
        &[
            (
                "STATUSD__PLATFORM__BASE_URL",
                "https://eu2-cloud.acronis.com",
            ),
            ("STATUSD__PLATFORM__CLIENT_ID", "c"),
            ("STATUSD__PLATFORM__CLIENT_SECRET", "s"),
            ("STATUSD__INTEGRATION__APPLICATION_CODE", "vendor.app"),
        ],
        Purpose::Run,
    );
    assert!(s.is_ok(), "{:?}", s.err());
}

#[test]
fn plain_http_is_for_loopback_only() {
    for (url, refused) in [
        ("http://eu2-cloud.acronis.com", true),
        ("http://10.1.2.3:8080", true),
        ("https://eu2-cloud.acronis.com", false),
        ("http://127.0.0.1:8780", false),
        ("http://localhost:8780", false),
        ("http://[::1]:8780", false),
    ] {
        let p = problems(
            &format!(
                "[platform]\nbase_url = \"{url}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n[integration]\napplication_code = \"vendor.app\"\n"
            ),
            &[],
        );
        assert_eq!(
            has(&p, "platform.base_url", "loopback"),
            refused,
            "{url}: {p:?}"
        );
    }
}

#[test]
fn a_blank_api_token_is_refused_naming_it() {
    for token in ["", "   "] {
        let p = problems(
            &format!(
                "[platform]\nbase_url = \"https://eu2-cloud.acronis.com\"\nclient_id = \"c\"\nclient_secret = \"s\"\n[integration]\napplication_code = \"vendor.app\"\n[api]\ntoken = \"{token}\"\n"
            ),
            &[],
        );
        assert!(has(&p, "api.token", "blank"), "{token:?}: {p:?}");
    }
}

#[test]
fn credentials_are_an_api_client_or_a_cyberapp() {
    let toml = |kind: &str| {
        format!(
            "[platform]\nbase_url = \"https://eu2-cloud.acronis.com\"\nclient_id = \"c\"\nclient_secret = \"s\"\ncredentials = \"{kind}\"\n[integration]\napplication_code = \"vendor.app\"\n"
        )
    };
    assert!(problems(&toml("cyberapp"), &[]).is_empty());
    assert!(problems(&toml("api_client"), &[]).is_empty());
    let p = problems(&toml("oauth"), &[]);
    assert!(has(&p, "platform.credentials", "cyberapp"), "{p:?}");
}

fn load(toml: &str) -> Result<statusd::config::Settings, statusd::config::ConfigError> {
    statusd::config::load_from_str(toml, &[], statusd::config::Purpose::Run)
}

#[test]
fn accounts_are_tables_and_the_platform_credentials_are_the_default_account() {
    let s = load(
        r#"
[platform]
base_url = "https://eu2-cloud.acronis.com"
client_id = "legacy"
client_secret = "secret-zero"
[accounts.us1]
datacenter_url = "https://us1-cloud.acronis.com/"
client_id = "partner-us"
client_secret = "secret-one"
credentials = "cyberapp"
root_tenant_id = "0b1d6a4e-8a7b-4c1e-9a55-6f0e8f3f2a11"
[accounts.us1.branding]
company_name = "Partner US"
[branding]
company_name = "Everyone"
[integration]
application_code = "vendor.app"
"#,
    )
    .unwrap();
    let ids: Vec<&str> = s.accounts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["default", "us1"]);
    let us1 = &s.accounts[1];
    assert_eq!(us1.datacenter_url, "https://us1-cloud.acronis.com");
    assert_eq!(us1.credentials, statusd::config::Credentials::Cyberapp);
    assert!(us1.root_tenant_id.is_some());
    assert_eq!(
        s.accounts[0].datacenter_url,
        "https://eu2-cloud.acronis.com"
    );
    // check-config lists them with the secrets redacted.
    let shown = s.to_redacted_toml();
    assert!(
        shown.contains("partner-us") && shown.contains("us1-cloud"),
        "{shown}"
    );
    assert!(
        !shown.contains("secret-one") && !shown.contains("secret-zero"),
        "{shown}"
    );
    // ... as the tables they are written as, so the output reads back as the same accounts.
    assert!(shown.contains("\n[accounts.us1]\n"), "{shown}");
    let again = load(&shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
    let same = |a: &statusd::config::AccountSettings| {
        (
            a.id.clone(),
            a.datacenter_url.clone(),
            a.client_id.clone(),
            a.credentials,
            a.root_tenant_id,
            a.branding.as_ref().map(|b| b.fields.clone()),
        )
    };
    assert_eq!(
        again.accounts.iter().map(same).collect::<Vec<_>>(),
        s.accounts.iter().map(same).collect::<Vec<_>>()
    );
    assert_eq!(again.branding.fields, s.branding.fields);
    assert_eq!(s.branding.fields["company_name"], "Everyone");
}

#[test]
fn account_problems_name_the_account_key() {
    let p = problems(
        r#"
[accounts.eu2]
datacenter_url = "http://eu2-cloud.acronis.com"
client_id = "c"
[accounts."Bad Id"]
datacenter_url = "https://eu2-cloud.acronis.com"
client_id = "c"
client_secret = "s"
[integration]
application_code = "vendor.app"
"#,
        &[],
    );
    assert!(has(&p, "accounts.eu2.datacenter_url", "loopback"), "{p:?}");
    assert!(has(&p, "accounts.eu2.client_secret", "required"), "{p:?}");
    assert!(has(&p, "accounts.Bad Id", "account id"), "{p:?}");
    // With accounts, [platform] credentials are not required.
    assert!(!p.iter().any(|(k, _)| k.starts_with("platform.")), "{p:?}");
}

#[test]
fn store_bound_and_key_are_read_and_refused_by_name() {
    let s = load_from_str(
        &format!("{MINIMAL}[store]\nmax_size = \"2GB\"\n"),
        &[],
        Purpose::Run,
    )
    .unwrap();
    assert_eq!(s.store.max_size, Some(2_000_000_000));
    let s = load_from_str(
        &format!("{MINIMAL}[store]\nmax_size = \"1GiB\"\n"),
        &[],
        Purpose::Run,
    )
    .unwrap();
    assert_eq!(s.store.max_size, Some(1 << 30));
    for bad in ["\"lots\"", "\"12 parsecs\"", "\"10KB\""] {
        let p = problems(&format!("{MINIMAL}[store]\nmax_size = {bad}\n"), &[]);
        assert!(p.iter().any(|(k, _)| k == "store.max_size"), "{bad}: {p:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "c2hvcnQ=\n").unwrap();
    let p = problems(
        &format!(
            "{MINIMAL}[store]\nsecret_key_file = \"{}\"\n",
            short.display()
        ),
        &[],
    );
    assert!(has(&p, "store.secret_key_file", "32"), "{p:?}");
    let p = problems(
        &format!("{MINIMAL}[store]\nsecret_key_file = \"/nonexistent/k\"\n"),
        &[],
    );
    assert!(has(&p, "store.secret_key_file", "cannot read"), "{p:?}");
}

#[test]
fn a_key_lets_run_start_with_no_account_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    statusd::vault::write_new_key(&key).unwrap();
    let toml = format!(
        "[integration]\napplication_code = \"vendor.app\"\n[store]\nsecret_key_file = \"{}\"\n",
        key.display()
    );
    let s = load_from_str(&toml, &[], Purpose::Run).unwrap();
    assert!(s.accounts.is_empty());
    assert!(s.store.secret_key.is_some());
    // Without one, the [platform] credentials are still required.
    let p = problems("[integration]\napplication_code = \"vendor.app\"\n", &[]);
    assert!(p.iter().any(|(k, _)| k.starts_with("platform.")), "{p:?}");
}

const FUSION: &str = r#"
[fusion]
base_url = "https://apioaas-prov.netaxis.cloud/"
draas_instance = "draas_v1"
username = "api"
password = "fusion-secret-pw"
tenants = ["1c3bf204-33d8-cf2a-3941-2f202f84c6a8"]
[fusion.branding.general]
companyName = "Acme"
smtp = { host = "smtp.acme.example" }
[fusion.branding.styling.theme]
selected = "red"
[fusion.tenants_override."1c3bf204-33d8-cf2a-3941-2f202f84c6a8".branding.general]
companyName = "Acme EU"
smtp = { port = 2525 }
"#;

#[test]
fn fusion_settings_are_read_with_overrides_merged_property_by_property() {
    let s = load_from_str(&format!("{MINIMAL}{FUSION}"), &[], Purpose::Run).unwrap();
    let f = s.fusion.as_ref().unwrap();
    assert_eq!(f.base_url, "https://apioaas-prov.netaxis.cloud");
    assert_eq!(f.schedule, "0 30 * * * *");
    let t: uuid::Uuid = "1c3bf204-33d8-cf2a-3941-2f202f84c6a8".parse().unwrap();
    let intent = f.intent_of(&t);
    let general = &intent.parts["general"];
    assert_eq!(general["companyName"], "Acme EU");
    assert_eq!(general["smtp"]["host"], "smtp.acme.example");
    assert_eq!(general["smtp"]["port"], 2525);
    assert_eq!(intent.parts["styling.theme"]["selected"], "red");
    let other = f.intent_of(&uuid::Uuid::nil());
    assert_eq!(other.parts["general"]["companyName"], "Acme");
    // The password is not in the effective settings.
    let shown = s.to_redacted_toml();
    assert!(!shown.contains("fusion-secret-pw"), "{shown}");
    assert!(shown.contains("[fusion.branding.styling.theme]"), "{shown}");
}

#[test]
fn fusion_problems_are_named() {
    let p = problems(&format!("{MINIMAL}[fusion]\nbase_url = \"http://fusion.example\"\ntenants = [\"nope\"]\n[fusion.branding.colours]\na = 1\n[fusion.branding.general]\nsmtp = {{ password = \"********\" }}\n"), &[]);
    assert!(has(&p, "fusion.base_url", "http://"), "{p:?}");
    assert!(has(&p, "fusion.draas_instance", "required"), "{p:?}");
    assert!(has(&p, "fusion.username", "required"), "{p:?}");
    assert!(has(&p, "fusion.password", "required"), "{p:?}");
    assert!(has(&p, "fusion.tenants[0]", "UUID"), "{p:?}");
    assert!(
        has(&p, "fusion.branding.colours", "not a branding part"),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "fusion.branding.general.smtp.password",
            "masks a secret"
        ),
        "{p:?}"
    );
}

#[test]
fn the_postgres_store_settings_are_checked_naming_each_key_and_never_showing_the_url() {
    let with = |store: &str| format!("{MINIMAL}\n[store]\n{store}\n");
    let p = problems(&with("backend = \"mongo\""), &[]);
    assert!(has(&p, "store.backend", "\"sled\""), "{p:?}");
    let p = problems(&with("backend = \"postgres\""), &[]);
    assert!(has(&p, "store.postgres.url", "url_file"), "{p:?}");
    let p = problems(
        &with("[store.postgres]\nurl = \"postgres://u:pw@h/db\""),
        &[],
    );
    assert!(has(&p, "store.backend", "not"), "{p:?}");
    let secret = "Zq9-never-shown";
    let p = problems(
        &with(&format!(
            "backend = \"postgres\"\n[store.postgres]\nurl = \"mysql://u:{secret}@h/db\"\nschema = \"Bad-Name\"\npool_size = 1"
        )),
        &[],
    );
    assert!(has(&p, "store.postgres.url", "postgres://"), "{p:?}");
    assert!(
        has(&p, "store.postgres.schema", "plain schema name"),
        "{p:?}"
    );
    assert!(has(&p, "store.postgres.pool_size", ""), "{p:?}");
    assert!(
        !format!("{p:?}").contains(secret),
        "the URL's password is in a problem"
    );
    let p = problems(
        &with("backend = \"postgres\"\n[store.postgres]\nurl = \"postgres://u:pw@h/db?sslmode=sometimes\""),
        &[],
    );
    assert!(has(&p, "store.postgres.url", "sslmode"), "{p:?}");
    let s = load_from_str(
        &with(&format!(
            "backend = \"postgres\"\n[store.postgres]\nurl = \"postgres://u:{secret}@db.example.com:6432/vendor?sslmode=verify-full\""
        )),
        &[],
        Purpose::Run,
    )
    .unwrap();
    let pg = s.store.postgres.as_ref().unwrap();
    assert_eq!((pg.pool_size, pg.schema.as_str()), (8, "statusd"));
    assert_eq!(
        s.store.location(),
        "postgres://u@db.example.com:6432/vendor (schema statusd)"
    );
    assert!(
        !format!("{s:?}").contains(secret),
        "the URL is in the settings' Debug"
    );
    assert!(
        !serde_json::to_string(&s).unwrap().contains(secret),
        "the URL is in the settings as shown"
    );
}
