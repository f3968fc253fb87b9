//! The api's uses of the testkit's DynamoDB proxy
//! ([`obt_testkit::dynamo_proxy`]).

use std::sync::Arc;

use obt_testkit::Stack;
pub use obt_testkit::dynamo_proxy::{AfterHook, DynamoProxy, dynamodb_error, hook, lost_answer};
use tokio::sync::{Semaphore, mpsc};

/// An app state whose store reaches `stack`'s table through `proxy`.
pub fn state(
    proxy: &DynamoProxy,
    stack: &Stack,
    options: obt_api::StoreOptions,
) -> obt_api::AppState {
    crate::helpers::state_through(proxy.client(stack), stack, options)
}

/// A proxy in front of DynamoDB Local that reports each TransactWriteItems on the returned receiver and
/// forwards it only once the semaphore gives a permit.
pub async fn holding_proxy() -> (DynamoProxy, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let proxy = DynamoProxy::start(hook(move |operation| {
        let arrived_tx = arrived_tx.clone();
        let held = held.clone();
        async move {
            if operation == "TransactWriteItems" {
                let _ = arrived_tx.send(());
                if let Ok(permit) = held.acquire().await {
                    permit.forget();
                }
            }
            None
        }
    }))
    .await;
    (proxy, arrived, gate)
}
