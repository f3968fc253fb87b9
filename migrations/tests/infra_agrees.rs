//! `infra/outboxtable.yaml` (what CloudFormation creates on AWS) and
//! `migrations/dynamodb/*.json`, `migrations/sqs/*.json` (what `obt-migrate`
//! creates on the emulators, where every test runs) describe the same
//! tables, indexes and queues. A test passing on the emulators says
//! something about AWS only while they do.
//!
//! Each spec file is matched, by name, with the template's resource whose
//! name (`!Sub ${NamePrefix}-...` with the parameter's default, `obt`) is the
//! file's `default_name`, both ways round. Compared: a table's key schema,
//! attribute definitions, billing mode, stream view type, global secondary
//! indexes (name, keys, projection) and Time to Live attribute; a queue's
//! FIFO, deduplication, visibility, retention and long-poll attributes and
//! its redrive policy (target and `maxReceiveCount`). Not compared, being
//! hardening that only the AWS deployment has: encryption, point-in-time
//! recovery, deletion protection and policies, the DLQ's
//! `RedriveAllowPolicy`, and the Lambda's standard on-failure queue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use obt_migrate::{KeySpec, QueuesSpec, TableSpec};
use serde::de::DeserializeOwned;
use serde_norway::{Mapping, Value};

/// What `obt-migrate` sets in code rather than in the spec files
/// (`migrations/src/lib.rs`: `BillingMode::PayPerRequest`, `keys_only()`).
const MIGRATE_BILLING_MODE: &str = "PAY_PER_REQUEST";
const MIGRATE_INDEX_PROJECTION: &str = "KEYS_ONLY";

/// The SQS attributes that change how the queue behaves for the services;
/// the template and the spec must agree on each, present or absent.
const QUEUE_BEHAVIOUR: &[&str] = &[
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
];

#[derive(Debug, PartialEq)]
struct TableShape {
    /// (attribute, HASH or RANGE), in key order.
    key_schema: Vec<(String, String)>,
    /// attribute -> S, N or B.
    attributes: BTreeMap<String, String>,
    billing_mode: String,
    stream_view_type: Option<String>,
    indexes: BTreeMap<String, IndexShape>,
    ttl_attribute: Option<String>,
}

#[derive(Debug, PartialEq)]
struct IndexShape {
    key_schema: Vec<(String, String)>,
    projection: String,
}

#[derive(Debug, PartialEq)]
struct QueueShape {
    /// The attributes of [`QUEUE_BEHAVIOUR`] and any other the spec sets,
    /// as SQS takes them (text).
    attributes: BTreeMap<String, String>,
    /// (dead-letter queue name, maxReceiveCount).
    redrive: Option<(String, u64)>,
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the repository")
        .to_path_buf()
}

/// Every `*.json` of `migrations/<dir>`, parsed, by file name.
fn spec_files<T: DeserializeOwned>(dir_name: &str) -> BTreeMap<String, T> {
    let dir = repository().join("migrations").join(dir_name);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut specs = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let spec =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            specs.insert(
                format!("migrations/{dir_name}/{}", name.unwrap_or_default()),
                spec,
            );
        }
    }
    assert!(!specs.is_empty(), "no spec in {}", dir.display());
    specs
}

fn table_specs() -> BTreeMap<String, TableSpec> {
    spec_files("dynamodb")
}

fn queue_specs() -> BTreeMap<String, QueuesSpec> {
    spec_files("sqs")
}

fn template() -> Value {
    let path = repository().join("infra/outboxtable.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `obt-migrate`'s view of a table.
fn spec_table(spec: &TableSpec) -> TableShape {
    fn keys(partition: &KeySpec, sort: Option<&KeySpec>) -> Vec<(String, String)> {
        std::iter::once((partition.name.clone(), "HASH".to_owned()))
            .chain(sort.map(|k| (k.name.clone(), "RANGE".to_owned())))
            .collect()
    }
    let mut attributes = BTreeMap::new();
    let index_keys = spec
        .indexes
        .iter()
        .flat_map(|i| std::iter::once(&i.partition_key).chain(i.sort_key.as_ref()));
    for key in std::iter::once(&spec.partition_key)
        .chain(spec.sort_key.as_ref())
        .chain(index_keys)
    {
        attributes.insert(key.name.clone(), key.kind.clone());
    }
    TableShape {
        key_schema: keys(&spec.partition_key, spec.sort_key.as_ref()),
        attributes,
        billing_mode: MIGRATE_BILLING_MODE.to_owned(),
        stream_view_type: spec.stream_view_type.clone(),
        indexes: spec
            .indexes
            .iter()
            .map(|i| {
                let shape = IndexShape {
                    key_schema: keys(&i.partition_key, i.sort_key.as_ref()),
                    projection: MIGRATE_INDEX_PROJECTION.to_owned(),
                };
                (i.name.clone(), shape)
            })
            .collect(),
        ttl_attribute: spec.ttl_attribute.clone(),
    }
}

/// `obt-migrate`'s view of the queue and its dead-letter queue.
fn spec_queues(spec: &QueuesSpec) -> BTreeMap<String, QueueShape> {
    let shape = |attributes: &std::collections::HashMap<String, String>, redrive| QueueShape {
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        redrive,
    };
    BTreeMap::from([
        (
            spec.queue.default_name.clone(),
            shape(
                &spec.queue.attributes,
                Some((
                    spec.dead_letter_queue.default_name.clone(),
                    u64::from(spec.max_receive_count),
                )),
            ),
        ),
        (
            spec.dead_letter_queue.default_name.clone(),
            shape(&spec.dead_letter_queue.attributes, None),
        ),
    ])
}

/// The template's resources and the default of `NamePrefix`.
struct Template<'a> {
    resources: &'a Mapping,
    name_prefix: String,
}

impl<'a> Template<'a> {
    fn new(template: &'a Value) -> Self {
        let resources = template
            .get("Resources")
            .and_then(Value::as_mapping)
            .expect("the template has Resources");
        let name_prefix = template
            .get("Parameters")
            .and_then(|p| p.get("NamePrefix"))
            .and_then(|p| p.get("Default"))
            .and_then(Value::as_str)
            .expect("the template has a NamePrefix parameter with a default")
            .to_owned();
        Self {
            resources,
            name_prefix,
        }
    }

    /// `(logical id, properties)` of every resource of `kind`.
    fn of_type(&self, kind: &str) -> Vec<(&'a str, &'a Value)> {
        self.resources
            .iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
            .map(|(id, r)| {
                let id = id.as_str().expect("logical ids are strings");
                let properties = r
                    .get("Properties")
                    .unwrap_or_else(|| panic!("{id} has no Properties"));
                (id, properties)
            })
            .collect()
    }

    /// A name property: plain text, or `!Sub` of text whose only variable
    /// is `${NamePrefix}`.
    fn name(&self, id: &str, value: Option<&Value>) -> String {
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Tagged(t)) if t.tag == "Sub" => match &t.value {
                Value::String(s) => s.replace("${NamePrefix}", &self.name_prefix),
                other => panic!("{id}: a !Sub name that is not text: {other:?}"),
            },
            other => panic!("{id}: a name this test cannot read: {other:?}"),
        };
        assert!(
            !text.contains("${"),
            "{id}: a name with a variable other than NamePrefix: {text}"
        );
        text
    }

    fn tables(&self) -> BTreeMap<String, TableShape> {
        self.of_type("AWS::DynamoDB::Table")
            .into_iter()
            .map(|(id, p)| (self.name(id, p.get("TableName")), template_table(id, p)))
            .collect()
    }

    /// The FIFO queues (the standard ones are the Lambda's on-failure
    /// destination, which has no counterpart on the emulators).
    fn fifo_queues(&self) -> BTreeMap<String, QueueShape> {
        let names: BTreeMap<&str, String> = self
            .of_type("AWS::SQS::Queue")
            .into_iter()
            .map(|(id, p)| (id, self.name(id, p.get("QueueName"))))
            .collect();
        self.of_type("AWS::SQS::Queue")
            .into_iter()
            .filter(|(_, p)| p.get("FifoQueue").is_some_and(|f| text(f) == "true"))
            .map(|(id, p)| (names[id].clone(), template_queue(id, p, &names)))
            .collect()
    }
}

/// A scalar as SQS and DynamoDB take it: text. None for anything else.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(value: &Value) -> String {
    scalar(value).unwrap_or_else(|| panic!("not a scalar: {value:?}"))
}

fn field<'v>(id: &str, value: &'v Value, key: &str) -> &'v Value {
    value
        .get(key)
        .unwrap_or_else(|| panic!("{id}: no {key} in {value:?}"))
}

fn key_schema(id: &str, schema: &Value) -> Vec<(String, String)> {
    schema
        .as_sequence()
        .unwrap_or_else(|| panic!("{id}: KeySchema is not a list"))
        .iter()
        .map(|k| {
            (
                text(field(id, k, "AttributeName")),
                text(field(id, k, "KeyType")),
            )
        })
        .collect()
}

fn template_table(id: &str, p: &Value) -> TableShape {
    let attributes = field(id, p, "AttributeDefinitions")
        .as_sequence()
        .unwrap_or_else(|| panic!("{id}: AttributeDefinitions is not a list"))
        .iter()
        .map(|a| {
            (
                text(field(id, a, "AttributeName")),
                text(field(id, a, "AttributeType")),
            )
        })
        .collect();
    let indexes = p
        .get("GlobalSecondaryIndexes")
        .and_then(Value::as_sequence)
        .map(|indexes| {
            indexes
                .iter()
                .map(|i| {
                    let shape = IndexShape {
                        key_schema: key_schema(id, field(id, i, "KeySchema")),
                        projection: text(field(id, field(id, i, "Projection"), "ProjectionType")),
                    };
                    (text(field(id, i, "IndexName")), shape)
                })
                .collect()
        })
        .unwrap_or_default();
    let ttl_attribute = p.get("TimeToLiveSpecification").and_then(|t| {
        let enabled = t.get("Enabled").is_some_and(|e| text(e) == "true");
        enabled.then(|| text(field(id, t, "AttributeName")))
    });
    TableShape {
        key_schema: key_schema(id, field(id, p, "KeySchema")),
        attributes,
        billing_mode: p
            .get("BillingMode")
            .map(text)
            .unwrap_or_else(|| "PROVISIONED".to_owned()),
        stream_view_type: p
            .get("StreamSpecification")
            .map(|s| text(field(id, s, "StreamViewType"))),
        indexes,
        ttl_attribute,
    }
}

fn template_queue(id: &str, p: &Value, names: &BTreeMap<&str, String>) -> QueueShape {
    // Every scalar property; narrowed to what the spec can say in
    // `disagreements`.
    let attributes = p
        .as_mapping()
        .unwrap_or_else(|| panic!("{id}: Properties is not a mapping"))
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
        .collect();
    let redrive = p.get("RedrivePolicy").map(|r| {
        let target = match field(id, r, "deadLetterTargetArn") {
            Value::Tagged(t) if t.tag == "GetAtt" => match &t.value {
                Value::String(s) => s
                    .strip_suffix(".Arn")
                    .unwrap_or_else(|| panic!("{id}: a dead-letter target that is not an Arn: {s}"))
                    .to_owned(),
                other => panic!("{id}: a !GetAtt this test cannot read: {other:?}"),
            },
            other => panic!("{id}: the dead-letter target is not a !GetAtt: {other:?}"),
        };
        let target = names
            .get(target.as_str())
            .unwrap_or_else(|| panic!("{id}: the dead-letter target {target} is not a queue"));
        let count = field(id, r, "maxReceiveCount");
        let count = count
            .as_u64()
            .or_else(|| count.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("{id}: maxReceiveCount is not a number: {count:?}"));
        (target.clone(), count)
    });
    QueueShape {
        attributes,
        redrive,
    }
}

/// Every disagreement between the template and the spec files, as
/// sentences; empty when they describe the same resources.
fn disagreements(template: &Value) -> Vec<String> {
    let template = Template::new(template);
    let mut found = Vec::new();

    let mut cloud_tables = template.tables();
    for (file, spec) in table_specs() {
        let name = &spec.default_name;
        match cloud_tables.remove(name) {
            None => found.push(format!(
                "{file}: the template has no table {name} (TableName !Sub ${{NamePrefix}}-...)"
            )),
            Some(cloud) => {
                let migrate = spec_table(&spec);
                if migrate != cloud {
                    found.push(format!(
                        "table {name}: {file} gives {migrate:#?}\nbut infra/outboxtable.yaml gives {cloud:#?}"
                    ));
                }
            }
        }
    }
    for name in cloud_tables.keys() {
        found.push(format!(
            "infra/outboxtable.yaml: table {name} is in no migrations/dynamodb/*.json"
        ));
    }

    let mut cloud_queues = template.fifo_queues();
    for (file, spec) in queue_specs() {
        for (name, migrate) in spec_queues(&spec) {
            match cloud_queues.remove(&name) {
                None => found.push(format!("{file}: the template has no FIFO queue {name}")),
                Some(mut cloud) => {
                    // Compared: every attribute the spec sets, and every
                    // behaviour attribute either side sets.
                    cloud.attributes.retain(|k, _| {
                        QUEUE_BEHAVIOUR.contains(&k.as_str()) || migrate.attributes.contains_key(k)
                    });
                    if migrate != cloud {
                        found.push(format!(
                            "queue {name}: {file} gives {migrate:#?}\nbut infra/outboxtable.yaml gives {cloud:#?}"
                        ));
                    }
                }
            }
        }
    }
    for name in cloud_queues.keys() {
        found.push(format!(
            "infra/outboxtable.yaml: FIFO queue {name} is in no migrations/sqs/*.json"
        ));
    }
    found
}

#[test]
fn the_template_and_the_migrations_describe_the_same_tables_and_queues() {
    let found = disagreements(&template());
    assert!(
        found.is_empty(),
        "infra/outboxtable.yaml and migrations/ disagree; change both together:\n\n{}",
        found.join("\n\n")
    );
}

/// The comparison itself: a change to one side only is a disagreement.
mod a_change_on_one_side_is_found {
    use super::*;

    fn resource<'a>(template: &'a mut Value, id: &str) -> &'a mut Value {
        template
            .get_mut("Resources")
            .and_then(|r| r.get_mut(id))
            .and_then(|r| r.get_mut("Properties"))
            .unwrap_or_else(|| panic!("no resource {id}"))
    }

    fn changed(change: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut template = template();
        change(&mut template);
        disagreements(&template)
    }

    #[test]
    fn a_different_max_receive_count() {
        let found = changed(|t| {
            let redrive = resource(t, "EventsQueue")
                .get_mut("RedrivePolicy")
                .expect("a redrive policy");
            redrive["maxReceiveCount"] = Value::from(6);
        });
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("obt-events.fifo"), "{found:#?}");
    }

    #[test]
    fn content_based_deduplication_switched_on() {
        let found = changed(|t| {
            resource(t, "EventsDeadLetterQueue")["ContentBasedDeduplication"] = Value::from(true);
        });
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("obt-events-dlq.fifo"), "{found:#?}");
    }

    #[test]
    fn a_behaviour_attribute_only_the_template_sets() {
        let found = changed(|t| {
            resource(t, "EventsQueue")["DelaySeconds"] = Value::from(5);
        });
        assert_eq!(found.len(), 1, "{found:#?}");
    }

    #[test]
    fn an_index_dropped_or_projected_otherwise() {
        let found = changed(|t| {
            let indexes = resource(t, "SpendingTable")["GlobalSecondaryIndexes"]
                .as_sequence_mut()
                .expect("indexes");
            indexes.pop();
        });
        assert_eq!(found.len(), 1, "{found:#?}");
        let found = changed(|t| {
            resource(t, "SpendingTable")["GlobalSecondaryIndexes"][0]["Projection"]["ProjectionType"] =
                Value::from("ALL");
        });
        assert_eq!(found.len(), 1, "{found:#?}");
    }

    #[test]
    fn another_stream_view_or_no_time_to_live() {
        let found = changed(|t| {
            resource(t, "SpendingTable")["StreamSpecification"]["StreamViewType"] =
                Value::from("NEW_IMAGE");
        });
        assert_eq!(found.len(), 1, "{found:#?}");
        let found = changed(|t| {
            resource(t, "IdempotencyTable")["TimeToLiveSpecification"]["Enabled"] =
                Value::from(false);
        });
        assert_eq!(found.len(), 1, "{found:#?}");
    }

    #[test]
    fn a_key_of_another_type_or_a_table_renamed() {
        let found = changed(|t| {
            resource(t, "ConsumerTable")["AttributeDefinitions"][1]["AttributeType"] =
                Value::from("S");
        });
        assert_eq!(found.len(), 1, "{found:#?}");
        // Renamed: the spec finds no table, and the template's is in no spec.
        let found = changed(|t| {
            resource(t, "LeaseTable")["TableName"] = Value::from("obt-leases");
        });
        assert_eq!(found.len(), 2, "{found:#?}");
    }
}
