//! The errors the model answers, named as SQS names them on the wire: the
//! JSON body's `__type` and the `x-amzn-query-error` header's code, which
//! is what the SDK matches (`QueueDoesNotExist` is
//! `AWS.SimpleQueueService.NonExistentQueue` there). Format:
//! <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-json-api-responses.html>.

use std::fmt;

/// One SQS error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    QueueDoesNotExist,
    QueueNameExists,
    QueueDeletedRecently,
    ReceiptHandleIsInvalid,
    MessageNotInflight,
    InvalidParameterValue,
    MissingParameter,
    InvalidAttributeName,
    InvalidAttributeValue,
    InvalidMessageContents,
    EmptyBatchRequest,
    TooManyEntriesInBatchRequest,
    BatchEntryIdsNotDistinct,
    InvalidBatchEntryId,
    BatchRequestTooLong,
    PurgeQueueInProgress,
    UnsupportedOperation,
    /// A body that is not a JSON object (the SDK never sends one).
    Serialization,
    /// An `X-Amz-Target` that is not an SQS operation.
    UnknownOperation,
}

impl Code {
    /// The `__type` of the JSON error body.
    pub fn json_type(self) -> String {
        match self {
            Self::Serialization => "com.amazon.coral.service#SerializationException".to_owned(),
            Self::UnknownOperation => {
                "com.amazon.coral.service#UnknownOperationException".to_owned()
            }
            other => format!("com.amazonaws.sqs#{}", other.shape()),
        }
    }

    fn shape(self) -> &'static str {
        match self {
            Self::QueueDoesNotExist => "QueueDoesNotExist",
            Self::QueueNameExists => "QueueNameExists",
            Self::QueueDeletedRecently => "QueueDeletedRecently",
            Self::ReceiptHandleIsInvalid => "ReceiptHandleIsInvalid",
            Self::MessageNotInflight => "MessageNotInflight",
            Self::InvalidParameterValue => "InvalidParameterValue",
            Self::MissingParameter => "MissingParameter",
            Self::InvalidAttributeName => "InvalidAttributeName",
            Self::InvalidAttributeValue => "InvalidAttributeValue",
            Self::InvalidMessageContents => "InvalidMessageContents",
            Self::EmptyBatchRequest => "EmptyBatchRequest",
            Self::TooManyEntriesInBatchRequest => "TooManyEntriesInBatchRequest",
            Self::BatchEntryIdsNotDistinct => "BatchEntryIdsNotDistinct",
            Self::InvalidBatchEntryId => "InvalidBatchEntryId",
            Self::BatchRequestTooLong => "BatchRequestTooLong",
            Self::PurgeQueueInProgress => "PurgeQueueInProgress",
            Self::UnsupportedOperation => "UnsupportedOperation",
            Self::Serialization => "SerializationException",
            Self::UnknownOperation => "UnknownOperationException",
        }
    }

    /// The code of the `x-amzn-query-error` header and of a failed batch
    /// entry: the AWS query protocol's name, which the SDK reports.
    pub fn query_code(self) -> &'static str {
        match self {
            Self::QueueDoesNotExist => "AWS.SimpleQueueService.NonExistentQueue",
            Self::QueueNameExists => "QueueAlreadyExists",
            Self::QueueDeletedRecently => "AWS.SimpleQueueService.QueueDeletedRecently",
            Self::MessageNotInflight => "AWS.SimpleQueueService.MessageNotInflight",
            Self::EmptyBatchRequest => "AWS.SimpleQueueService.EmptyBatchRequest",
            Self::TooManyEntriesInBatchRequest => {
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
            }
            Self::BatchEntryIdsNotDistinct => "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            Self::InvalidBatchEntryId => "AWS.SimpleQueueService.InvalidBatchEntryId",
            Self::BatchRequestTooLong => "AWS.SimpleQueueService.BatchRequestTooLong",
            Self::PurgeQueueInProgress => "AWS.SimpleQueueService.PurgeQueueInProgress",
            Self::UnsupportedOperation => "AWS.SimpleQueueService.UnsupportedOperation",
            other => other.shape(),
        }
    }
}

/// An error SQS would answer: its code and a message saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    pub code: Code,
    pub message: String,
}

impl ModelError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidParameterValue, message)
    }

    pub fn no_queue() -> Self {
        Self::new(
            Code::QueueDoesNotExist,
            "The specified queue does not exist.",
        )
    }

    pub fn missing(parameter: &str) -> Self {
        Self::new(
            Code::MissingParameter,
            format!("The request must contain the parameter {parameter}."),
        )
    }

    pub fn invalid_handle(handle: &str) -> Self {
        Self::new(
            Code::ReceiptHandleIsInvalid,
            format!("The input receipt handle \"{handle}\" is not a valid receipt handle."),
        )
    }

    /// What SQS answers for a FIFO receipt handle whose receive is over: its
    /// visibility timeout ran out, or the message was received again since.
    pub fn expired_handle(handle: &str) -> Self {
        Self::invalid(format!(
            "Value {handle} for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired."
        ))
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.query_code(), self.message)
    }
}
