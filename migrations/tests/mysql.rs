//! `obt-migrate --storage mysql` against a real MariaDB: the schema is
//! applied once however often it runs, each service's user can do
//! exactly what that service needs, and connections speak TLS when the URL
//! asks for it (scripts/mariadb.sh's server has a certificate made for the
//! run, its CA in `OBT_MYSQL_CA_FILE`).
#![cfg(feature = "mysql")]

use obt_migrate::mysql::{MySqlNames, MySqlSetupError, Passwords, setup};
use obt_testkit::mysql::{admin_url, verify_identity};
use sqlx::Connection;
use sqlx::mysql::MySqlConnection;

fn names() -> MySqlNames {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    MySqlNames {
        api_database: format!("m{id}_api"),
        consumer_database: format!("m{id}_consumer"),
        api_user: format!("m{id}_api"),
        relay_user: format!("m{id}_relay"),
        consumer_user: format!("m{id}_consumer"),
    }
}

fn passwords(suffix: &str) -> Passwords {
    Passwords {
        api: format!("api-password-{suffix}"),
        relay: format!("relay-password-{suffix}"),
        consumer: format!("consumer-password-{suffix}"),
    }
}

async fn connect(url: &str) -> MySqlConnection {
    MySqlConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect as a service user: {e}"))
}

/// Whether `sql` is allowed; panics on anything but a permission error.
async fn allowed(conn: &mut MySqlConnection, sql: &str) -> bool {
    match sqlx::query(sql).execute(conn).await {
        Ok(_) => true,
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42000")) => false,
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[tokio::test]
async fn a_second_run_applies_nothing_and_sets_the_passwords_again() {
    let names = names();
    let first = setup(&admin_url(), &names, &passwords("first"))
        .await
        .expect("first run");
    let migrations = obt_migrate::mysql::API_MIGRATIONS.iter().count()
        + obt_migrate::mysql::CONSUMER_MIGRATIONS.iter().count();
    assert_eq!(first.applied.len(), migrations, "{:?}", first.applied);
    let second = setup(&admin_url(), &names, &passwords("second"))
        .await
        .expect("second run");
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    // The new passwords work; the old ones no longer do.
    connect(&second.api_url).await;
    assert!(MySqlConnection::connect(&first.api_url).await.is_err());
}

#[tokio::test]
async fn each_service_user_may_do_what_its_service_needs_and_nothing_more() {
    let names = names();
    let urls = setup(&admin_url(), &names, &passwords("grants"))
        .await
        .expect("setup");
    let mut api = connect(&urls.api_url).await;
    assert!(
        allowed(
            &mut api,
            "INSERT INTO obt (event_id, identity, seq, type, payload, created_at) \
             VALUES ('00000000-0000-7000-8000-000000000001', 'G1', 1, 'SpendingRecorded', '{}', NOW(3))"
        )
        .await
    );
    assert!(allowed(&mut api, "SELECT COUNT(*) FROM obt").await);
    assert!(
        !allowed(&mut api, "DELETE FROM obt").await,
        "the api never deletes outbox rows"
    );
    assert!(
        allowed(
            &mut api,
            "INSERT INTO obt_idempotency (idempotency_key, fingerprint, response_location, \
             response_body, created_at, expires_at) \
             VALUES ('k1', REPEAT('0', 64), '/api/v1/spending/G1', '{}', NOW(3), NOW(3))"
        )
        .await
    );
    assert!(
        allowed(
            &mut api,
            "UPDATE obt_idempotency SET expires_at = NOW(3) WHERE idempotency_key = 'k1'"
        )
        .await,
        "an expired Idempotency-Key record is replaced"
    );
    assert!(
        !allowed(&mut api, "DELETE FROM obt_idempotency").await,
        "the api never deletes Idempotency-Key records"
    );

    assert!(
        !allowed(&mut api, "SELECT COUNT(*) FROM obt_parked").await,
        "parking is the relay's"
    );

    let mut relay = connect(&urls.relay_url).await;
    assert!(allowed(&mut relay, "DELETE FROM obt WHERE identity = 'G1'").await);
    assert!(
        allowed(
            &mut relay,
            "INSERT INTO obt_parked (identity, obt_id, seq, cause, reason, parked_at) \
             VALUES ('G1', 1, 1, 'undecodable', 'test', UTC_TIMESTAMP(3))"
        )
        .await,
        "the relay parks identities"
    );
    assert!(
        allowed(&mut relay, "DELETE FROM obt_parked WHERE identity = 'G1'").await,
        "obt-admin's retry, with the relay's user, unparks them"
    );
    assert!(
        !allowed(&mut relay, "UPDATE obt SET seq = 2").await,
        "the relay never rewrites outbox rows"
    );
    assert!(
        !allowed(&mut relay, "SELECT COUNT(*) FROM obt_spending").await,
        "the relay reads the outbox only"
    );
    assert!(
        !allowed(&mut relay, "SELECT COUNT(*) FROM obt_idempotency").await,
        "the relay has no business with Idempotency-Key records"
    );

    let mut consumer = connect(&urls.consumer_url).await;
    assert!(allowed(&mut consumer, "SELECT COUNT(*) FROM consumer_identity").await);
    let other = format!("SELECT COUNT(*) FROM `{}`.obt", names.api_database);
    assert!(
        !allowed(&mut consumer, &other).await,
        "the consumer has its own database only"
    );
}

#[tokio::test]
async fn a_password_that_cannot_go_into_a_url_is_refused_before_anything_is_done() {
    let mut bad = passwords("ok");
    bad.relay = "has'quote-and-more".to_owned();
    let error = setup(&admin_url(), &names(), &bad)
        .await
        .expect_err("refused");
    assert!(error.to_string().contains("relay password"), "{error}");
}

/// A CA that signed nothing of the test server's (its key was thrown away).
const UNRELATED_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/unrelated-ca.pem");

/// The session's TLS cipher: empty when the connection is not encrypted.
async fn cipher(conn: &mut MySqlConnection) -> String {
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(conn)
        .await
        .expect("SHOW STATUS");
    cipher
}

#[tokio::test]
async fn a_verify_identity_url_with_the_servers_ca_gives_an_encrypted_session() {
    let mut conn = MySqlConnection::connect(&verify_identity(&admin_url()))
        .await
        .unwrap_or_else(|e| panic!("connect with ssl-mode=VERIFY_IDENTITY: {e}"));
    let cipher = cipher(&mut conn).await;
    assert!(!cipher.is_empty(), "the session is not encrypted");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_with_a_tls_error() {
    let url = format!("{}?ssl-mode=VERIFY_CA&ssl-ca={UNRELATED_CA}", admin_url());
    let error = MySqlConnection::connect(&url)
        .await
        .expect_err("a certificate of an unknown CA is refused");
    let message = error.to_string();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );

    // obt-migrate says that the certificate was refused and what to check.
    let setup_error = setup(&url, &names(), &passwords("wrong-ca"))
        .await
        .expect_err("setup over an unverifiable TLS connection");
    assert!(
        matches!(setup_error, MySqlSetupError::Certificate(_)),
        "{setup_error:?}"
    );
    let message = setup_error.to_string();
    assert!(
        message.contains("TLS certificate was refused")
            && message.contains("ssl-ca in OBT_MYSQL_ADMIN_URL")
            && message.contains("UnknownIssuer"),
        "{message}"
    );
}

#[tokio::test]
async fn the_service_urls_of_a_setup_over_tls_keep_its_tls_options() {
    let names = names();
    let urls = setup(&verify_identity(&admin_url()), &names, &passwords("tls"))
        .await
        .expect("setup over TLS");
    for url in [&urls.api_url, &urls.relay_url, &urls.consumer_url] {
        assert!(url.contains("ssl-mode=VERIFY_IDENTITY&ssl-ca="));
        let mut conn = connect(url).await;
        assert!(!cipher(&mut conn).await.is_empty(), "not encrypted");
    }
}
