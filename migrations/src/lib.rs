//! Creates the resources outboxtable needs, whatever of them is missing.
//!
//! The shapes live as JSON files beside this crate (`migrations/dynamodb`,
//! `migrations/sqs`), compiled in so that the binary carries them; the
//! names come from the caller, so that tests and several deployments can
//! share one account or one emulator. Everything here is idempotent: a
//! resource that exists is left as it is and reported as such, except that
//! a stream missing from the api's table is switched on, since the relay
//! cannot work without it.

#[cfg(feature = "mysql")]
pub mod mysql;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde::Deserialize;

/// The shape of a DynamoDB table, as written in `migrations/dynamodb/*.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub description: String,
    pub default_name: String,
    pub partition_key: KeySpec,
    #[serde(default)]
    pub sort_key: Option<KeySpec>,
    /// Present when the table needs a stream.
    #[serde(default)]
    pub stream_view_type: Option<String>,
    /// Global secondary indexes (keys-only projections).
    #[serde(default)]
    pub indexes: Vec<IndexSpec>,
    /// The number attribute (epoch seconds) after which DynamoDB's Time to
    /// Live deletes an item; TTL is switched on when this is present.
    #[serde(default)]
    pub ttl_attribute: Option<String>,
}

/// A global secondary index whose projection is its keys and the table's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSpec {
    pub name: String,
    pub description: String,
    pub partition_key: KeySpec,
    #[serde(default)]
    pub sort_key: Option<KeySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// The FIFO queue and its dead-letter queue, as in `migrations/sqs/events.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesSpec {
    pub description: String,
    pub queue: QueueSpec,
    pub dead_letter_queue: QueueSpec,
    pub max_receive_count: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub default_name: String,
    pub attributes: HashMap<String, String>,
}

/// The specs compiled into this crate.
pub mod specs {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> T {
        // The files are part of the build and checked by a unit test.
        serde_json::from_str(text).unwrap_or_else(|e| panic!("migrations/{file} is invalid: {e}"))
    }

    pub fn spending_table() -> TableSpec {
        parse(
            "dynamodb/spending.json",
            include_str!("../dynamodb/spending.json"),
        )
    }
    pub fn relay_leases_table() -> TableSpec {
        parse(
            "dynamodb/relay_leases.json",
            include_str!("../dynamodb/relay_leases.json"),
        )
    }
    pub fn idempotency_table() -> TableSpec {
        parse(
            "dynamodb/idempotency.json",
            include_str!("../dynamodb/idempotency.json"),
        )
    }
    pub fn consumer_table() -> TableSpec {
        parse(
            "dynamodb/consumer_spending.json",
            include_str!("../dynamodb/consumer_spending.json"),
        )
    }
    pub fn queues() -> QueuesSpec {
        parse("sqs/events.json", include_str!("../sqs/events.json"))
    }
}

/// The names of the resources to create.
#[derive(Debug, Clone)]
pub struct Names {
    pub table: String,
    pub lease_table: String,
    pub consumer_table: String,
    /// The api's Idempotency-Key records.
    pub idempotency_table: String,
    pub queue: String,
    pub dead_letter_queue: String,
}

impl Default for Names {
    /// The names in the spec files.
    fn default() -> Self {
        Self {
            table: specs::spending_table().default_name,
            lease_table: specs::relay_leases_table().default_name,
            consumer_table: specs::consumer_table().default_name,
            idempotency_table: specs::idempotency_table().default_name,
            queue: specs::queues().queue.default_name,
            dead_letter_queue: specs::queues().dead_letter_queue.default_name,
        }
    }
}

/// Settings that deployments (and tests) change without editing the files.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Receives before a message moves to the dead-letter queue.
    pub max_receive_count: Option<u32>,
    /// The queue's visibility timeout, in seconds.
    pub visibility_timeout_secs: Option<u32>,
    /// Leave Time to Live off on tables whose spec asks for it. For test
    /// stacks on DynamoDB Local only: with TTL on for many tables, its
    /// background TTL work starves other background work (an index added
    /// to an existing table then took minutes to become ACTIVE). Nothing
    /// the api does depends on TTL deleting items: an expired
    /// Idempotency-Key is treated as absent by the write's condition.
    pub skip_time_to_live: bool,
}

/// What [`apply`] found and did.
#[derive(Debug, Clone)]
pub struct Report {
    pub steps: Vec<Step>,
    /// The stream of the api's table, for the relay.
    pub stream_arn: String,
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Existed,
    StreamEnabled,
    /// A global secondary index was added to a table that existed.
    IndexCreated,
    /// Time to Live was switched on for a table (new or not).
    TtlEnabled,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub resource: String,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("DynamoDB call {call} on table {table} failed: {source}")]
    DynamoDb {
        call: &'static str,
        table: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("SQS call {call} on queue {queue} failed: {source}")]
    Sqs {
        call: &'static str,
        queue: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("table {table} did not become ACTIVE within {secs} s")]
    NotActive { table: String, secs: u64 },
    #[error(
        "table {table} has Time to Live on attribute {found:?}, not {expected:?}: switch it off \
         (UpdateTimeToLive) and run obt-migrate again"
    )]
    TtlAttribute {
        table: String,
        expected: String,
        found: String,
    },
    #[error("table {table} has no stream after it was enabled")]
    NoStream { table: String },
    #[error("invalid spec {file}: {reason}")]
    InvalidSpec { file: &'static str, reason: String },
}

const ACTIVE_DEADLINE: Duration = Duration::from_secs(300);

/// Creates whatever of the tables and queues is missing.
pub async fn apply(
    config: &SdkConfig,
    names: &Names,
    overrides: &Overrides,
) -> Result<Report, MigrateError> {
    let dynamodb = aws_sdk_dynamodb::Client::new(config);
    let mut steps = Vec::new();

    let mut stream_arn = None;
    for (spec, name) in [
        (specs::spending_table(), &names.table),
        (specs::relay_leases_table(), &names.lease_table),
        (specs::consumer_table(), &names.consumer_table),
        (specs::idempotency_table(), &names.idempotency_table),
    ] {
        let (outcome, arn) = ensure_table(&dynamodb, &spec, name).await?;
        steps.push(Step {
            resource: format!("dynamodb table {name}"),
            outcome,
        });
        for index in ensure_indexes(&dynamodb, &spec, name).await? {
            steps.push(Step {
                resource: format!("dynamodb index {name}/{index}"),
                outcome: Outcome::IndexCreated,
            });
        }
        if let Some(attribute) = spec
            .ttl_attribute
            .as_ref()
            .filter(|_| !overrides.skip_time_to_live)
        {
            if ensure_ttl(&dynamodb, name, attribute).await? {
                steps.push(Step {
                    resource: format!("dynamodb ttl {name}.{attribute}"),
                    outcome: Outcome::TtlEnabled,
                });
            }
        }
        if name == &names.table {
            stream_arn = arn;
        }
    }
    let stream_arn = stream_arn.ok_or_else(|| MigrateError::NoStream {
        table: names.table.clone(),
    })?;

    let queues = apply_queues(config, names, overrides).await?;
    steps.extend(queues.steps);
    Ok(Report {
        steps,
        stream_arn,
        queue_url: queues.queue_url,
        dead_letter_queue_url: queues.dead_letter_queue_url,
    })
}

/// What [`apply_queues`] found and did.
#[derive(Debug, Clone)]
pub struct QueuesReport {
    pub steps: Vec<Step>,
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

/// Creates whatever of the FIFO queue and its dead-letter queue is missing
/// (both storage modes publish to them).
pub async fn apply_queues(
    config: &SdkConfig,
    names: &Names,
    overrides: &Overrides,
) -> Result<QueuesReport, MigrateError> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let mut steps = Vec::new();
    let queues = specs::queues();
    let (outcome, dead_letter_queue_url) = ensure_queue(
        &sqs,
        &names.dead_letter_queue,
        queues.dead_letter_queue.attributes.clone(),
    )
    .await?;
    steps.push(Step {
        resource: format!("sqs queue {}", names.dead_letter_queue),
        outcome,
    });
    let dlq_arn = queue_arn(&sqs, &names.dead_letter_queue, &dead_letter_queue_url).await?;

    let mut attributes = queues.queue.attributes.clone();
    let max_receive_count = overrides
        .max_receive_count
        .unwrap_or(queues.max_receive_count);
    attributes.insert(
        "RedrivePolicy".to_owned(),
        serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count })
            .to_string(),
    );
    if let Some(secs) = overrides.visibility_timeout_secs {
        attributes.insert("VisibilityTimeout".to_owned(), secs.to_string());
    }
    let (outcome, queue_url) = ensure_queue(&sqs, &names.queue, attributes).await?;
    steps.push(Step {
        resource: format!("sqs queue {}", names.queue),
        outcome,
    });
    Ok(QueuesReport {
        steps,
        queue_url,
        dead_letter_queue_url,
    })
}

fn dynamo_err<E: std::error::Error + Send + Sync + 'static>(
    call: &'static str,
    table: &str,
) -> impl FnOnce(E) -> MigrateError {
    let table = table.to_owned();
    move |e| MigrateError::DynamoDb {
        call,
        table,
        source: Box::new(e),
    }
}

fn sqs_err<E: std::error::Error + Send + Sync + 'static>(
    call: &'static str,
    queue: &str,
) -> impl FnOnce(E) -> MigrateError {
    let queue = queue.to_owned();
    move |e| MigrateError::Sqs {
        call,
        queue,
        source: Box::new(e),
    }
}

fn key_type(file: &'static str, kind: &str) -> Result<ScalarAttributeType, MigrateError> {
    match kind {
        "S" => Ok(ScalarAttributeType::S),
        "N" => Ok(ScalarAttributeType::N),
        "B" => Ok(ScalarAttributeType::B),
        other => Err(MigrateError::InvalidSpec {
            file,
            reason: format!("unknown key type {other}"),
        }),
    }
}

/// Returns what it did and the table's stream ARN, if it has one.
async fn ensure_table(
    client: &aws_sdk_dynamodb::Client,
    spec: &TableSpec,
    name: &str,
) -> Result<(Outcome, Option<String>), MigrateError> {
    let described = client.describe_table().table_name(name).send().await;
    let existing = match described {
        Ok(out) => out.table,
        Err(SdkError::ServiceError(e)) if e.err().is_resource_not_found_exception() => None,
        Err(e) => return Err(dynamo_err("DescribeTable", name)(e)),
    };
    let view = spec.stream_view_type.as_deref().map(StreamViewType::from);
    let outcome = match existing {
        Some(table) => {
            let has_stream = table
                .stream_specification()
                .is_some_and(|s| s.stream_enabled());
            match (&view, has_stream) {
                (Some(view), false) => {
                    wait_active(client, name).await?;
                    client
                        .update_table()
                        .table_name(name)
                        .stream_specification(stream_spec(view.clone()))
                        .send()
                        .await
                        .map_err(dynamo_err("UpdateTable", name))?;
                    Outcome::StreamEnabled
                }
                _ => Outcome::Existed,
            }
        }
        None => {
            let mut create = client
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest)
                .set_key_schema(Some(key_schema(
                    &spec.partition_key,
                    spec.sort_key.as_ref(),
                )?));
            let mut defined = Vec::new();
            let index_keys = spec
                .indexes
                .iter()
                .flat_map(|i| std::iter::once(&i.partition_key).chain(i.sort_key.as_ref()));
            for key in std::iter::once(&spec.partition_key)
                .chain(spec.sort_key.as_ref())
                .chain(index_keys)
            {
                if !defined.contains(&&key.name) {
                    defined.push(&key.name);
                    create = create.attribute_definitions(attribute_definition(key)?);
                }
            }
            for index in &spec.indexes {
                create = create.global_secondary_indexes(global_index(index)?);
            }
            if let Some(view) = &view {
                create = create.stream_specification(stream_spec(view.clone()));
            }
            match create.send().await {
                Ok(_) => Outcome::Created,
                // Another migrate run got there first: fine.
                Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {
                    Outcome::Existed
                }
                Err(e) => return Err(dynamo_err("CreateTable", name)(e)),
            }
        }
    };
    let table = wait_active(client, name).await?;
    Ok((outcome, table.latest_stream_arn().map(str::to_owned)))
}

/// Adds the spec's indexes that the table lacks, one at a time (DynamoDB
/// builds one index per table at once), and waits for each to be ACTIVE.
/// Returns the names of the indexes it created.
async fn ensure_indexes(
    client: &aws_sdk_dynamodb::Client,
    spec: &TableSpec,
    name: &str,
) -> Result<Vec<String>, MigrateError> {
    let mut created = Vec::new();
    for index in &spec.indexes {
        let table = wait_active(client, name).await?;
        let exists = table
            .global_secondary_indexes()
            .iter()
            .any(|i| i.index_name() == Some(index.name.as_str()));
        if exists {
            continue;
        }
        let mut definitions = vec![attribute_definition(&index.partition_key)?];
        if let Some(key) = &index.sort_key {
            definitions.push(attribute_definition(key)?);
        }
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(&index.name)
            .set_key_schema(Some(key_schema(
                &index.partition_key,
                index.sort_key.as_ref(),
            )?))
            .projection(keys_only())
            .build()
            .map_err(invalid)?;
        client
            .update_table()
            .table_name(name)
            .set_attribute_definitions(Some(definitions))
            .global_secondary_index_updates(
                GlobalSecondaryIndexUpdate::builder().create(create).build(),
            )
            .send()
            .await
            .map_err(dynamo_err("UpdateTable", name))?;
        wait_index_active(client, name, &index.name).await?;
        created.push(index.name.clone());
    }
    Ok(created)
}

/// Switches Time to Live on, on `attribute`, unless it is on already;
/// returns whether it switched it on. A table whose TTL is on with another
/// attribute is an error: DynamoDB would delete items at the wrong time.
async fn ensure_ttl(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
    attribute: &str,
) -> Result<bool, MigrateError> {
    let described = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(dynamo_err("DescribeTimeToLive", name))?;
    let current = described.time_to_live_description();
    let status = current.and_then(|d| d.time_to_live_status());
    let on = matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    );
    if on {
        let current_attribute = current.and_then(|d| d.attribute_name()).unwrap_or("");
        if current_attribute == attribute {
            return Ok(false);
        }
        return Err(MigrateError::TtlAttribute {
            table: name.to_owned(),
            expected: attribute.to_owned(),
            found: current_attribute.to_owned(),
        });
    }
    let specification = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(invalid)?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(specification)
        .send()
        .await
        .map_err(dynamo_err("UpdateTimeToLive", name))?;
    Ok(true)
}

async fn wait_index_active(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    index: &str,
) -> Result<(), MigrateError> {
    let started = Instant::now();
    loop {
        let described = wait_active(client, table).await?;
        let active = described.global_secondary_indexes().iter().any(|i| {
            i.index_name() == Some(index) && i.index_status() == Some(&IndexStatus::Active)
        });
        if active {
            return Ok(());
        }
        if started.elapsed() > ACTIVE_DEADLINE {
            return Err(MigrateError::NotActive {
                table: format!("{table}/index/{index}"),
                secs: ACTIVE_DEADLINE.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SPEC_FILES: &str = "dynamodb/*.json";

fn invalid(e: aws_sdk_dynamodb::error::BuildError) -> MigrateError {
    MigrateError::InvalidSpec {
        file: SPEC_FILES,
        reason: e.to_string(),
    }
}

fn attribute_definition(key: &KeySpec) -> Result<AttributeDefinition, MigrateError> {
    AttributeDefinition::builder()
        .attribute_name(&key.name)
        .attribute_type(key_type(SPEC_FILES, &key.kind)?)
        .build()
        .map_err(invalid)
}

fn key_schema(
    partition: &KeySpec,
    sort: Option<&KeySpec>,
) -> Result<Vec<KeySchemaElement>, MigrateError> {
    let element = |key: &KeySpec, kind| {
        KeySchemaElement::builder()
            .attribute_name(&key.name)
            .key_type(kind)
            .build()
            .map_err(invalid)
    };
    let mut schema = vec![element(partition, KeyType::Hash)?];
    if let Some(sort) = sort {
        schema.push(element(sort, KeyType::Range)?);
    }
    Ok(schema)
}

fn keys_only() -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::KeysOnly)
        .build()
}

fn global_index(index: &IndexSpec) -> Result<GlobalSecondaryIndex, MigrateError> {
    GlobalSecondaryIndex::builder()
        .index_name(&index.name)
        .set_key_schema(Some(key_schema(
            &index.partition_key,
            index.sort_key.as_ref(),
        )?))
        .projection(keys_only())
        .build()
        .map_err(invalid)
}

fn stream_spec(view: StreamViewType) -> StreamSpecification {
    StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(view)
        .build()
        .unwrap_or_else(|e| unreachable!("stream_enabled is set: {e}"))
}

async fn wait_active(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> Result<aws_sdk_dynamodb::types::TableDescription, MigrateError> {
    let started = Instant::now();
    loop {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(dynamo_err("DescribeTable", name))?;
        if let Some(table) = out.table {
            if table.table_status() == Some(&TableStatus::Active) {
                return Ok(table);
            }
        }
        if started.elapsed() > ACTIVE_DEADLINE {
            return Err(MigrateError::NotActive {
                table: name.to_owned(),
                secs: ACTIVE_DEADLINE.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ensure_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: HashMap<String, String>,
) -> Result<(Outcome, String), MigrateError> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => {
            if let Some(url) = out.queue_url {
                return Ok((Outcome::Existed, url));
            }
        }
        Err(SdkError::ServiceError(e)) if e.err().is_queue_does_not_exist() => {}
        Err(e) => return Err(sqs_err("GetQueueUrl", name)(e)),
    }
    let mut create = client.create_queue().queue_name(name);
    for (key, value) in attributes {
        create = create.attributes(QueueAttributeName::from(key.as_str()), value);
    }
    let out = create.send().await.map_err(sqs_err("CreateQueue", name))?;
    let url = out.queue_url.ok_or_else(|| MigrateError::Sqs {
        call: "CreateQueue",
        queue: name.to_owned(),
        source: "the response has no QueueUrl".into(),
    })?;
    Ok((Outcome::Created, url))
}

async fn queue_arn(
    client: &aws_sdk_sqs::Client,
    name: &str,
    url: &str,
) -> Result<String, MigrateError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(sqs_err("GetQueueAttributes", name))?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| MigrateError::Sqs {
            call: "GetQueueAttributes",
            queue: name.to_owned(),
            source: "the response has no QueueArn".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_files_parse_and_name_fifo_queues() {
        let names = Names::default();
        assert!(names.queue.ends_with(".fifo"));
        assert!(names.dead_letter_queue.ends_with(".fifo"));
        assert_eq!(
            specs::spending_table().stream_view_type.as_deref(),
            Some("NEW_AND_OLD_IMAGES")
        );
        let idempotency = specs::idempotency_table();
        assert_eq!(idempotency.partition_key.name, "idempotency_key");
        assert_eq!(idempotency.ttl_attribute.as_deref(), Some("expires_at"));
        assert_eq!(idempotency.stream_view_type, None);
        assert_eq!(
            specs::queues()
                .queue
                .attributes
                .get("FifoQueue")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            specs::queues()
                .dead_letter_queue
                .attributes
                .get("FifoQueue")
                .map(String::as_str),
            Some("true")
        );
    }
}
