//! `obt-migrate` against the emulators: it creates what is missing and
//! nothing else, however often it runs.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, KeySchemaElement, KeyType, ScalarAttributeType,
};
use obt_migrate::{Names, Outcome, Overrides, apply};
use obt_testkit::{aws, unique};

fn names() -> Names {
    let id = unique("m");
    Names {
        table: format!("{id}-spending"),
        lease_table: format!("{id}-leases"),
        consumer_table: format!("{id}-consumer"),
        idempotency_table: format!("{id}-idempotency"),
        queue: format!("{id}-events.fifo"),
        dead_letter_queue: format!("{id}-dlq.fifo"),
    }
}

fn outcomes(report: &obt_migrate::Report) -> Vec<Outcome> {
    report.steps.iter().map(|s| s.outcome.clone()).collect()
}

#[tokio::test]
async fn a_second_run_finds_everything_and_changes_nothing() {
    let config = aws().await;
    let names = names();
    let overrides = Overrides {
        max_receive_count: Some(3),
        visibility_timeout_secs: None,
        skip_time_to_live: false,
    };
    let first = apply(&config, &names, &overrides).await.expect("first run");
    let created = Outcome::Created;
    assert_eq!(
        outcomes(&first),
        vec![
            created.clone(),
            created.clone(),
            created.clone(),
            created.clone(),
            Outcome::TtlEnabled,
            created.clone(),
            created,
        ]
    );
    assert_eq!(
        first.steps[4].resource,
        format!("dynamodb ttl {}.expires_at", names.idempotency_table)
    );
    let second = apply(&config, &names, &overrides)
        .await
        .expect("second run");
    assert_eq!(outcomes(&second), vec![Outcome::Existed; 6]);
    let ttl = aws_sdk_dynamodb::Client::new(&config)
        .describe_time_to_live()
        .table_name(&names.idempotency_table)
        .send()
        .await
        .expect("describe the TTL");
    let ttl = ttl.time_to_live_description().expect("a TTL description");
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(
        ttl.time_to_live_status().map(|s| s.as_str()),
        Some("ENABLED")
    );
    assert_eq!(
        first.stream_arn, second.stream_arn,
        "the stream was not re-created"
    );
    assert_eq!(first.queue_url, second.queue_url);
    let described = aws_sdk_dynamodb::Client::new(&config)
        .describe_table()
        .table_name(&names.table)
        .send()
        .await
        .expect("describe");
    assert_has_pending_index(&described);

    let sqs = aws_sdk_sqs::Client::new(&config);
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&first.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let attributes = attributes.attributes().expect("attributes");
    let get = |name: &str| {
        attributes
            .get(&aws_sdk_sqs::types::QueueAttributeName::from(name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(get("FifoQueue"), "true");
    let redrive: serde_json::Value =
        serde_json::from_str(&get("RedrivePolicy")).expect("a redrive policy");
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "3"
    );
    assert!(
        redrive["deadLetterTargetArn"]
            .as_str()
            .is_some_and(|arn| arn.ends_with(&names.dead_letter_queue))
    );
}

#[tokio::test]
async fn a_table_that_exists_without_its_stream_and_index_gets_them() {
    let config = aws().await;
    let names = names();
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    dynamodb
        .create_table()
        .table_name(&names.table)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("identity")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("identity")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("create a table without a stream");
    let report = apply(&config, &names, &Overrides::default())
        .await
        .expect("run");
    assert_eq!(report.steps[0].outcome, Outcome::StreamEnabled);
    assert_eq!(report.steps[1].outcome, Outcome::IndexCreated);
    assert_eq!(
        report.steps[1].resource,
        format!("dynamodb index {}/pending", names.table)
    );
    let table = dynamodb
        .describe_table()
        .table_name(&names.table)
        .send()
        .await
        .expect("describe");
    let stream = table
        .table()
        .and_then(|t| t.stream_specification())
        .expect("a stream");
    assert!(stream.stream_enabled());
    assert_eq!(
        stream.stream_view_type().map(|v| v.as_str()),
        Some("NEW_AND_OLD_IMAGES")
    );
    assert_has_pending_index(&table);
}

fn assert_has_pending_index(
    table: &aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput,
) {
    let index = table
        .table()
        .map(|t| t.global_secondary_indexes())
        .unwrap_or_default()
        .iter()
        .find(|i| i.index_name() == Some("pending"))
        .expect("the sparse index");
    let keys: Vec<(&str, &str)> = index
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type().as_str()))
        .collect();
    assert_eq!(
        keys,
        [("pending_bucket", "HASH"), ("pending_since", "RANGE")]
    );
    assert_eq!(
        index
            .projection()
            .and_then(|p| p.projection_type())
            .map(|p| p.as_str()),
        Some("KEYS_ONLY")
    );
}

#[tokio::test]
async fn the_binary_refuses_queue_names_that_are_not_fifo() {
    let output = tokio::process::Command::new(obt_testkit::bin_path("obt-migrate"))
        .args(["--queue-name", "standard-queue"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .expect("run obt-migrate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must end in .fifo"), "{stderr}");
}

#[tokio::test]
async fn time_to_live_can_be_left_off_for_test_stacks() {
    let config = aws().await;
    let names = names();
    let overrides = Overrides {
        skip_time_to_live: true,
        ..Overrides::default()
    };
    let report = apply(&config, &names, &overrides).await.expect("run");
    assert!(!outcomes(&report).contains(&Outcome::TtlEnabled));
    let ttl = aws_sdk_dynamodb::Client::new(&config)
        .describe_time_to_live()
        .table_name(&names.idempotency_table)
        .send()
        .await
        .expect("describe the TTL");
    let status = ttl
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status())
        .map(|s| s.as_str().to_owned());
    assert_eq!(status.as_deref(), Some("DISABLED"));
}
