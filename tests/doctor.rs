//! `doctor`, the preflight: the real binary against the stand-ins, every check passing, and each failing for its
//! own reason with the exit code of its area; and it changes nothing, in ThreatQ or in Devo.

use secrecy::SecretString;
use serde_json::Value;
use tqdevo::devo::UploadMethod;
use tqdevo::devo::api::{ApiConfig, LookupsApiUploader};
use tqdevo::devo::{Column, ColumnType, Delivery, Table, Uploader as _};
use tqdevo::sandbox::certs::TestCa;
use tqdevo::sandbox::devo_api::DEFAULT_TOKEN;
use tqdevo::sandbox::stage;

use crate::binary::has;
use crate::e2e::World;

/// The check named `check` in doctor's output, e.g. `ok (...)` or `FAILED: ...`.
fn result_of<'a>(stdout: &'a str, check: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no {check} in {stdout}"));
    line[check.len() + 1..].trim_start()
}

/// Runs `doctor`, expects `code`, and returns its stdout.
fn doctor(world: &World, code: i32) -> String {
    world.run().arg("doctor").status(code).run().stdout
}

/// `doctor` after these UI fields changed: it exits `code` and `check` fails saying `why`. Returns the output.
fn fails(world: &World, fields: &[(&str, &str)], code: i32, check: &str, why: &str) -> String {
    for (field, value) in fields {
        world.set_field(field, value);
    }
    let stdout = doctor(world, code);
    let result = result_of(&stdout, check);
    assert!(result.starts_with("FAILED:") && result.contains(why), "{check} should fail with {why:?}: {stdout}");
    stdout
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const THREATQ_CHECKS: [&str; 6] =
    ["ThreatQ sign-in", "ThreatQ clock", "ThreatQ record", "Toggle", "UI configuration", "ThreatQ data collection"];

fn assert_all_ok(stdout: &str, checks: &[&str]) {
    assert!(!stdout.contains("FAILED"), "{stdout}");
    for check in ["Local config", "ThreatQ host", "Password", "Devo environment", "Run lock", "Cron file"]
        .iter()
        .chain(&THREATQ_CHECKS)
        .chain(checks)
    {
        assert!(result_of(stdout, check).starts_with("ok"), "{check}: {stdout}");
    }
}

#[test]
fn every_lookups_api_check_passes_and_nothing_changes() {
    let world = World::configured(UploadMethod::LookupsApi);
    let before = doctor(&world, 0);
    assert_all_ok(&before, &["Devo API token", "Devo domain", "Devo lookup"]);
    assert!(result_of(&before, "Devo lookup").contains("absent: the next run creates it"), "{before}");

    world.run().run();
    let requests = world.stage.devo_api.requests().len();
    let lookup = world.stage.lookup(UploadMethod::LookupsApi, "tq_iocs");
    let record = world.stage.threatq.connector(tqdevo::connector::config::CONNECTOR_NAME);
    let after = doctor(&world, 0);
    crate::binary::assert_snapshot("doctor_lookups_api", &after);
    assert_all_ok(&after, &["Devo API token", "Devo domain", "Devo lookup", "Devo lookup columns", "Devo last job"]);
    assert!(result_of(&after, "Devo lookup columns").contains("15 columns, key ioc"), "{after}");
    assert!(result_of(&after, "Devo last job").contains("succeeded"), "{after}");
    assert!(result_of(&after, "Toggle").contains("on"), "{after}");

    let asked = &world.stage.devo_api.requests()[requests..];
    assert!(!asked.is_empty() && asked.iter().all(|r| r.method == "GET"), "doctor only reads Devo: {asked:?}");
    assert_eq!(world.stage.lookup(UploadMethod::LookupsApi, "tq_iocs"), lookup);
    assert_eq!(world.stage.threatq.connector(tqdevo::connector::config::CONNECTOR_NAME), record);
}

#[test]
fn every_relay_check_passes_with_a_handshake_that_sends_no_data() {
    let world = World::configured(UploadMethod::Relay);
    let stdout = doctor(&world, 0);
    crate::binary::assert_snapshot("doctor_relay", &stdout);
    let relay = ["Devo certificate", "Devo private key", "Devo chain CA", "Devo relay connection", "Devo relay trust"];
    assert_all_ok(&stdout, &[&relay[..], &["Devo relay handshake"]].concat());
    assert!(result_of(&stdout, "Devo certificate").contains("in 36"), "a year to go: {stdout}");
    assert!(result_of(&stdout, "Devo relay handshake").contains("accepted the certificate"), "{stdout}");

    let connections = world.stage.relay.connections();
    assert_eq!(connections.len(), 1, "one handshake");
    assert!(connections[0].is_empty(), "no lookup data reached the relay: {:?}", connections[0]);
    assert!(world.stage.relay.applied().is_empty());
    assert_eq!(world.stage.relay.problems(), Vec::<String>::new());
}

#[test]
fn json_says_the_same_as_one_object() {
    let world = World::configured(UploadMethod::LookupsApi);
    let passing: Value = serde_json::from_str(&world.run().args(["doctor", "--json"]).run().stdout).unwrap();
    assert_eq!((passing["ok"].clone(), passing["exit_code"].clone()), (Value::Bool(true), Value::from(0)));
    let checks = passing["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["ok"] == true), "{passing}");
    let token = checks.iter().find(|c| c["check"] == "Devo API token").unwrap();
    assert_eq!(token["area"], "devo");

    world.stage.devo_api.set_token("a-rotated-token");
    let output = world.run().args(["doctor", "--json"]).status(3).run();
    let failing: Value = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!((failing["ok"].clone(), failing["exit_code"].clone()), (Value::Bool(false), Value::from(3)));
    let token = failing["checks"].as_array().unwrap().iter().find(|c| c["check"] == "Devo API token").unwrap();
    assert_eq!((token["ok"].clone(), token["exit_code"].clone()), (Value::Bool(false), Value::from(3)));
    assert!(token["error"].as_str().unwrap().contains("Devo API Token"), "{token}");
}

#[test]
fn a_refused_token_fails_with_exit_3_naming_the_field() {
    let world = World::configured(UploadMethod::LookupsApi);
    world.stage.devo_api.set_token("a-rotated-token");
    let stdout = fails(&world, &[], 3, "Devo API token", "\"Devo API Token\"");
    assert!(result_of(&stdout, "Devo API token").contains("401"), "{stdout}");
    assert!(!stdout.contains(DEFAULT_TOKEN), "the token stays out of the output");
}

#[test]
fn an_unknown_domain_fails_with_exit_3_naming_the_field() {
    let world = World::configured(UploadMethod::LookupsApi);
    world.stage.devo_api.set_domains(&["another_domain"]);
    let stdout = fails(&world, &[], 3, "Devo domain", "\"Devo Domain\"");
    assert!(result_of(&stdout, "Devo domain").contains(stage::DOMAIN), "{stdout}");
    assert!(result_of(&stdout, "Devo API token").starts_with("ok"), "{stdout}");
}

/// A lookup redefined in Devo with other columns after a run: doctor says what differs and that the next run
/// replaces it; the next run does, though nothing changed in ThreatQ, and doctor passes.
#[test]
fn a_lookup_with_other_columns_fails_with_exit_5_until_the_next_run_replaces_it() {
    let world = World::configured(UploadMethod::LookupsApi);
    world.run().run();
    let mut config = ApiConfig::new(
        world.stage.devo_api.base_url().parse().unwrap(),
        stage::DOMAIN,
        SecretString::from(DEFAULT_TOKEN),
    )
    .unwrap();
    config.extra_ca_pem = Some(world.stage.devo_api.ca_pem().to_owned());
    let foreign = Table { name: "tq_iocs".into(), columns: vec![Column { name: "ioc".into(), ty: ColumnType::Str }] };
    let rows = vec![vec!["made-by-hand.example".to_owned()]];
    world.runtime.block_on(LookupsApiUploader::new(config).unwrap().deliver(&foreign, Delivery::Full(&rows))).unwrap();

    let stdout = fails(&world, &[], 5, "Devo lookup columns", "has the columns [ioc STRING] with key ioc");
    assert!(result_of(&stdout, "Devo lookup columns").contains("the next run replaces the lookup"), "{stdout}");

    world.run().stdout(has("full sync")).run();
    assert_eq!(world.stage.devo_api.columns(stage::DOMAIN, "tq_iocs").map(|c| c.len()), Some(15));
    doctor(&world, 0);
}

#[test]
fn a_lookups_api_endpoint_that_does_not_answer_fails_with_exit_5() {
    let world = World::configured(UploadMethod::LookupsApi);
    let endpoint = format!("https://127.0.0.1:{}/lookup-api", closed_port());
    fails(&world, &[("devo_custom_endpoint", &endpoint)], 5, "Devo API token", "gave up after 1 attempts");
}

#[test]
fn a_relay_refusing_the_certificate_fails_with_exit_5() {
    let world = World::configured(UploadMethod::Relay);
    let stranger = TestCa::new("Another CA").client("tq-exporter", stage::DOMAIN);
    let fields = [("devo_certificate", stranger.cert_pem.as_str()), ("devo_private_key", &stranger.key_pem)];
    let stdout = fails(&world, &fields, 5, "Devo relay handshake", "the relay refused the TLS session");
    assert!(result_of(&stdout, "Devo certificate").starts_with("ok"), "{stdout}");
    assert!(result_of(&stdout, "Devo relay trust").starts_with("ok"), "{stdout}");
    assert!(world.stage.relay.problems().iter().any(|p| p.contains("TLS handshake refused")));
}

#[test]
fn a_relay_not_trusted_by_the_chain_ca_fails_with_exit_5() {
    let world = World::configured(UploadMethod::Relay);
    let other_ca = TestCa::new("Not the relay's CA").cert_pem();
    fails(&world, &[("devo_chain_ca", &other_ca)], 5, "Devo relay trust", "\"Devo X.509 Chain CA\"");
}

#[test]
fn an_expired_certificate_fails_with_exit_3_before_any_connection() {
    let world = World::configured(UploadMethod::Relay);
    let expired = TestCa::new("Devo CA").client_valid_for("tq-exporter", stage::DOMAIN, time::Duration::days(-2));
    let fields = [("devo_certificate", expired.cert_pem.as_str()), ("devo_private_key", &expired.key_pem)];
    let stdout = fails(&world, &fields, 3, "Devo certificate", "expired on");
    assert!(result_of(&stdout, "Devo private key").starts_with("ok"), "{stdout}");
    assert!(!stdout.contains("Devo relay"), "no handshake with a certificate known to be expired: {stdout}");
    assert!(world.stage.relay.connections().is_empty());
}

#[test]
fn an_unreachable_relay_fails_with_exit_5() {
    let world = World::configured(UploadMethod::Relay);
    let endpoint = format!("localhost:{}", closed_port());
    fails(&world, &[("devo_custom_endpoint", &endpoint)], 5, "Devo relay connection", "cannot connect");
}

/// ThreatQ fails before Devo is looked at: its code (4) wins, and the local checks still show.
#[test]
fn a_refused_threatq_sign_in_fails_with_exit_4() {
    let world = World::configured(UploadMethod::LookupsApi);
    let mut env = world.env();
    env.insert("THREATQ_PASSWORD".into(), "not-the-password".into());
    let output = world.command_with(&env).arg("doctor").status(4).stderr(has("refused the sign-in")).run();
    let stdout = output.stdout;
    assert!(result_of(&stdout, "ThreatQ sign-in").starts_with("FAILED:"), "{stdout}");
    assert!(result_of(&stdout, "Local config").starts_with("ok"), "{stdout}");
    assert!(!stdout.contains("Devo API token"), "{stdout}");
}
