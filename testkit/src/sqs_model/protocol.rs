//! SQS's AWS JSON 1.0 protocol over [`State`]: `POST /` with
//! `X-Amz-Target: AmazonSQS.<Operation>` and a JSON body with the API's
//! member names; an error is HTTP 400 with `{"__type", "message"}` and the
//! `x-amzn-query-error: <code>;Sender` header the SDK takes its code from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Shared;
use super::error::{Code, ModelError};
use super::message::{MessageAttribute, Outgoing};
use super::settings::MAX_MESSAGE_BYTES;
use super::state::{ACCOUNT, Delivery, State};

type Answer = Result<Value, ModelError>;

/// Every request, whatever its path (the SDK posts to `/`).
pub async fn handle(
    Extract(shared): Extract<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("AmazonSQS."))
        .unwrap_or_default()
        .to_owned();
    shared.count(&operation);
    let answer = match parse_body(&body) {
        Err(e) => Err(e),
        Ok(request) if operation == "ReceiveMessage" => receive(&shared, &request).await,
        Ok(request) => {
            let answer = shared.with_state(|s| call(s, &operation, &request, Instant::now()));
            shared.changed.notify_waiters();
            answer
        }
    };
    match answer {
        Ok(value) => respond(StatusCode::OK, &value, None),
        Err(e) => respond(
            StatusCode::BAD_REQUEST,
            &json!({ "__type": e.code.json_type(), "message": e.message }),
            Some(format!("{};Sender", e.code.query_code())),
        ),
    }
}

fn respond(status: StatusCode, body: &Value, query_error: Option<String>) -> Response {
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string());
    if let Some(code) = query_error {
        response = response.header("x-amzn-query-error", code);
    }
    response
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn parse_body(body: &[u8]) -> Answer {
    if body.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(ModelError::new(
            Code::Serialization,
            "The request body is not a JSON object.",
        )),
    }
}

/// Every operation but ReceiveMessage: one step of the state machine.
fn call(state: &mut State, operation: &str, request: &Value, now: Instant) -> Answer {
    match operation {
        "CreateQueue" => {
            let attributes = string_map(request, "Attributes")?;
            let url = state.create_queue(required(request, "QueueName")?, &attributes, now)?;
            Ok(json!({ "QueueUrl": url }))
        }
        "GetQueueUrl" => {
            Ok(json!({ "QueueUrl": state.queue_url(required(request, "QueueName")?)? }))
        }
        "GetQueueAttributes" => {
            let wanted = string_list(request, "AttributeNames")?;
            Ok(json!({ "Attributes": state.attributes(queue(request)?, &wanted, now)? }))
        }
        "SetQueueAttributes" => {
            state.set_attributes(queue(request)?, &string_map(request, "Attributes")?)?;
            Ok(json!({}))
        }
        "PurgeQueue" => state.purge(queue(request)?, now).map(|()| json!({})),
        "DeleteQueue" => state.delete_queue(queue(request)?, now).map(|()| json!({})),
        "SendMessage" => {
            let accepted = state.send(queue(request)?, outgoing(request)?, now)?;
            Ok(
                json!({ "MessageId": accepted.message_id, "SequenceNumber": accepted.sequence_number }),
            )
        }
        "SendMessageBatch" => send_message_batch(state, request, now),
        "DeleteMessage" => {
            let handle = required(request, "ReceiptHandle")?;
            state
                .delete(queue(request)?, handle, now)
                .map(|()| json!({}))
        }
        "DeleteMessageBatch" => {
            let name = queue(request)?;
            state.queue_url(name)?;
            batch(batch_entries(request)?, |entry| {
                let handle = required(entry, "ReceiptHandle")?;
                state.delete(name, handle, now).map(|()| json!({}))
            })
        }
        "ChangeMessageVisibility" => {
            let handle = required(request, "ReceiptHandle")?;
            let timeout = optional_int(request, "VisibilityTimeout")?
                .ok_or_else(|| ModelError::missing("VisibilityTimeout"))?;
            state
                .change_visibility(queue(request)?, handle, timeout, now)
                .map(|()| json!({}))
        }
        "ChangeMessageVisibilityBatch" => {
            let name = queue(request)?;
            state.queue_url(name)?;
            batch(batch_entries(request)?, |entry| {
                let handle = required(entry, "ReceiptHandle")?;
                let timeout = optional_int(entry, "VisibilityTimeout")?
                    .ok_or_else(|| ModelError::missing("VisibilityTimeout"))?;
                state
                    .change_visibility(name, handle, timeout, now)
                    .map(|()| json!({}))
            })
        }
        "" => Err(ModelError::new(
            Code::UnknownOperation,
            "No X-Amz-Target header.",
        )),
        other => Err(ModelError::new(
            Code::UnsupportedOperation,
            format!("The SQS model of the testkit does not implement {other}."),
        )),
    }
}

fn send_message_batch(state: &mut State, request: &Value, now: Instant) -> Answer {
    let name = queue(request)?;
    state.queue_url(name)?;
    let entries = batch_entries(request)?;
    let total: usize = entries
        .iter()
        .filter_map(|e| outgoing(e).ok())
        .map(|o| o.size())
        .sum();
    if total > MAX_MESSAGE_BYTES {
        return Err(ModelError::new(
            Code::BatchRequestTooLong,
            format!(
                "Batch requests cannot be longer than {MAX_MESSAGE_BYTES} bytes. You have sent {total} bytes."
            ),
        ));
    }
    batch(entries, |entry| {
        let accepted = state.send(name, outgoing(entry)?, now)?;
        Ok(json!({ "MessageId": accepted.message_id, "SequenceNumber": accepted.sequence_number }))
    })
}

/// The entries of a batch request: 1 to 10, with distinct, valid ids.
fn batch_entries(request: &Value) -> Result<&[Value], ModelError> {
    let entries = request["Entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if entries.is_empty() {
        return Err(ModelError::new(
            Code::EmptyBatchRequest,
            "There should be at least one entry in the request.",
        ));
    }
    if entries.len() > 10 {
        return Err(ModelError::new(
            Code::TooManyEntriesInBatchRequest,
            format!(
                "Maximum number of entries per request are 10. You have sent {}.",
                entries.len()
            ),
        ));
    }
    let mut seen = Vec::new();
    for entry in entries {
        let id = entry["Id"].as_str().unwrap_or_default();
        let valid = (1..=80).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ModelError::new(
                Code::InvalidBatchEntryId,
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
            ));
        }
        if seen.contains(&id) {
            return Err(ModelError::new(
                Code::BatchEntryIdsNotDistinct,
                format!("Id {id} repeated."),
            ));
        }
        seen.push(id);
    }
    Ok(entries)
}

/// Answers each entry on its own: `Successful` with the entry's `Id` and
/// what `each` returned, or `Failed` with the error's code.
fn batch(entries: &[Value], mut each: impl FnMut(&Value) -> Answer) -> Answer {
    let (mut successful, mut failed) = (Vec::new(), Vec::new());
    for entry in entries {
        match each(entry) {
            Ok(mut result) => {
                result["Id"] = entry["Id"].clone();
                successful.push(result);
            }
            Err(e) => failed.push(json!({
                "Id": entry["Id"],
                "SenderFault": true,
                "Code": e.code.query_code(),
                "Message": e.message,
            })),
        }
    }
    Ok(json!({ "Successful": successful, "Failed": failed }))
}

/// ReceiveMessage: receives at once, or waits (long polling) until a
/// message is sent or made visible, a timeout runs out, or the wait ends.
async fn receive(shared: &Shared, request: &Value) -> Answer {
    let name = queue(request)?;
    let max = optional_int(request, "MaxNumberOfMessages")?.unwrap_or(1);
    let max = usize::try_from(max).ok().filter(|m| (1..=10).contains(m)).ok_or_else(|| {
        ModelError::invalid(format!(
            "Value {max} for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10, if provided."
        ))
    })?;
    let visibility = match optional_int(request, "VisibilityTimeout")? {
        None => None,
        Some(v) => Some(u32::try_from(v).ok().filter(|v| *v <= 43_200).ok_or_else(|| {
            ModelError::invalid(format!("Value {v} for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and 43200."))
        })?),
    };
    let wait = match optional_int(request, "WaitTimeSeconds")? {
        None => shared.with_state(|s| s.receive_wait(name))?.into(),
        Some(w) => u64::try_from(w).ok().filter(|w| *w <= 20).ok_or_else(|| {
            ModelError::invalid(format!("Value {w} for parameter WaitTimeSeconds is invalid. Reason: Must be >= 0 and <= 20, if provided."))
        })?,
    };
    let selection = Selection::parse(request)?;
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        // Registered before looking, so that no change in between is missed.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = Instant::now();
        let (received, wake) = shared.with_state(|s| {
            (
                s.receive(name, max, visibility, now),
                s.next_visibility_change(name, now),
            )
        });
        let received = received?;
        if received.dead_lettered > 0 {
            shared.changed.notify_waiters();
        }
        if !received.deliveries.is_empty() || now >= deadline {
            let messages: Vec<Value> = received
                .deliveries
                .iter()
                .map(|d| selection.render(d))
                .collect();
            return Ok(json!({ "Messages": messages }));
        }
        let wake = wake.map_or(deadline, |w| w.min(deadline));
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// The attributes a ReceiveMessage asked for.
struct Selection {
    /// `AttributeNames` and `MessageSystemAttributeNames`: names or `All`.
    system: Vec<String>,
    /// `MessageAttributeNames`: names, `All`, `.*` or `prefix.*`.
    user: Vec<String>,
}

impl Selection {
    fn parse(request: &Value) -> Result<Self, ModelError> {
        let mut system = string_list(request, "AttributeNames")?;
        system.extend(string_list(request, "MessageSystemAttributeNames")?);
        let user = string_list(request, "MessageAttributeNames")?;
        Ok(Self { system, user })
    }

    fn wants_user(&self, name: &str) -> bool {
        self.user
            .iter()
            .any(|pattern| match pattern.strip_suffix(".*") {
                _ if pattern == "All" || pattern == name => true,
                Some("") => true,
                Some(prefix) => name
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.')),
                None => false,
            })
    }

    fn render(&self, delivery: &Delivery) -> Value {
        let m = &delivery.message;
        let system = [
            ("SenderId", Some(ACCOUNT.to_owned())),
            ("SentTimestamp", Some(m.sent_ms.to_string())),
            ("ApproximateReceiveCount", Some(m.receive_count.to_string())),
            (
                "ApproximateFirstReceiveTimestamp",
                m.first_receive_ms.map(|t| t.to_string()),
            ),
            ("SequenceNumber", Some(m.sequence_number.clone())),
            ("MessageDeduplicationId", Some(m.deduplication_id.clone())),
            ("MessageGroupId", Some(m.group.clone())),
            ("AWSTraceHeader", m.trace_header.clone()),
        ];
        let attributes: BTreeMap<&str, String> = system
            .into_iter()
            .filter(|(name, _)| self.system.iter().any(|w| w == "All" || w == name))
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
        let user: BTreeMap<&String, Value> = m
            .attributes
            .iter()
            .filter(|(name, _)| self.wants_user(name))
            .map(|(name, a)| {
                let mut value = json!({ "DataType": a.data_type });
                if let Some(s) = &a.string_value {
                    value["StringValue"] = json!(s);
                }
                if let Some(b) = &a.binary_value {
                    value["BinaryValue"] = json!(b);
                }
                (name, value)
            })
            .collect();
        let mut out =
            json!({ "MessageId": m.id, "ReceiptHandle": delivery.handle, "Body": m.body });
        if !attributes.is_empty() {
            out["Attributes"] = json!(attributes);
        }
        if !user.is_empty() {
            out["MessageAttributes"] = json!(user);
        }
        out
    }
}

/// The message a SendMessage request or a SendMessageBatch entry carries.
fn outgoing(v: &Value) -> Result<Outgoing, ModelError> {
    let mut attributes = BTreeMap::new();
    if let Some(map) = v["MessageAttributes"].as_object() {
        for (name, a) in map {
            let text = |key: &str| a[key].as_str().map(str::to_owned);
            let data_type = text("DataType").ok_or_else(|| {
                ModelError::invalid(format!(
                    "The message attribute '{name}' must contain a non-empty attribute type."
                ))
            })?;
            let attribute = MessageAttribute {
                data_type,
                string_value: text("StringValue"),
                binary_value: text("BinaryValue"),
            };
            attributes.insert(name.clone(), attribute);
        }
    }
    let mut trace_header = None;
    if let Some(map) = v["MessageSystemAttributes"].as_object() {
        for (name, a) in map {
            let string = a["StringValue"].as_str();
            match (name.as_str(), a["DataType"].as_str(), string) {
                ("AWSTraceHeader", Some("String"), Some(value)) => {
                    trace_header = Some(value.to_owned());
                }
                _ => {
                    return Err(ModelError::invalid(format!(
                        "Message system attribute name '{name}' is invalid: only AWSTraceHeader, of type String, is supported."
                    )));
                }
            }
        }
    }
    Ok(Outgoing {
        body: required(v, "MessageBody")?.to_owned(),
        group: optional_str(v, "MessageGroupId")?.map(str::to_owned),
        deduplication_id: optional_str(v, "MessageDeduplicationId")?.map(str::to_owned),
        attributes,
        delay_seconds: optional_int(v, "DelaySeconds")?,
        trace_header,
    })
}

/// The queue name of the request's `QueueUrl` (its last path segment;
/// the host is not looked at, as SQS's own endpoints don't).
fn queue(request: &Value) -> Result<&str, ModelError> {
    let url = required(request, "QueueUrl")?;
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .ok_or_else(ModelError::no_queue)
}

fn required<'a>(v: &'a Value, name: &str) -> Result<&'a str, ModelError> {
    optional_str(v, name)?.ok_or_else(|| ModelError::missing(name))
}

fn optional_str<'a>(v: &'a Value, name: &str) -> Result<Option<&'a str>, ModelError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ModelError::invalid(format!(
            "{name} must be a string, not {other}."
        ))),
    }
}

fn optional_int(v: &Value, name: &str) -> Result<Option<i64>, ModelError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(other) => Err(ModelError::invalid(format!(
            "{name} must be an integer, not {other}."
        ))),
    }
}

fn string_list(v: &Value, name: &str) -> Result<Vec<String>, ModelError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::invalid(format!("{name} must be a list of strings."))),
        Some(_) => Err(ModelError::invalid(format!(
            "{name} must be a list of strings."
        ))),
    }
}

fn string_map(v: &Value, name: &str) -> Result<BTreeMap<String, String>, ModelError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(|| ModelError::invalid(format!("{name} must map names to strings."))),
        Some(_) => Err(ModelError::invalid(format!(
            "{name} must map names to strings."
        ))),
    }
}
