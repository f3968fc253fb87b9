//! The phases. Each runs on stand-ins started for it alone (by
//! `scripts/bench.sh`), creates its resources under fresh names, measures,
//! and returns what it found; docs/PERFORMANCE.md says what each measures
//! and what bounds it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use bytes::Bytes;
use futures::StreamExt;
use obt_api::Store;
use obt_api::idempotency::{Idempotency, IdempotencyKey};
use obt_api::input::NewSpending;
use obt_check::http::Http;
use obt_contract::{Amount, Identity, PersonName};
use obt_runtime::{Storage, error_chain};

use crate::BenchError;
use crate::deploy::{Deployment, Resources, Service};
use crate::drive::{Done, closed_loop, open_loop};
use crate::figures::{EndToEnd, Latency, Level, PhaseResult, Rate, Step, Usage, distribution};

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Closed-loop concurrencies of the api and store-ceiling phases.
    pub concurrencies: Vec<usize>,
    /// Of the queue-ceiling phase.
    pub queue_concurrencies: Vec<usize>,
    /// Each closed-loop step.
    pub step: Duration,
    /// Unmeasured load before the first step.
    pub warmup: Duration,
    pub identities: usize,
    /// Events of the drain phase's backlog.
    pub backlog: u64,
    /// Items written before the stream is read.
    pub stream_items: u64,
    /// Each open-loop level of the end-to-end phase.
    pub level: Duration,
    /// How long the consumer gets to catch up after a level.
    pub converge: Duration,
}

impl Scale {
    /// The scale.
    pub fn full() -> Self {
        Self {
            concurrencies: vec![1, 4, 16, 32, 64],
            queue_concurrencies: vec![1, 4, 16, 32],
            step: Duration::from_secs(15),
            warmup: Duration::from_secs(3),
            identities: 1000,
            backlog: 10_000,
            stream_items: 10_000,
            level: Duration::from_secs(30),
            converge: Duration::from_secs(180),
        }
    }

    /// Every phase, tiny: it must run and report, its figures mean little.
    pub fn smoke() -> Self {
        Self {
            concurrencies: vec![1, 4, 16, 32, 64],
            queue_concurrencies: vec![1, 16],
            step: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            identities: 50,
            backlog: 200,
            stream_items: 200,
            level: Duration::from_secs(3),
            converge: Duration::from_secs(60),
        }
    }
}

/// What a phase runs with.
#[derive(Debug, Clone)]
pub struct Context {
    pub storage: Storage,
    pub scale: Scale,
    /// The service binaries.
    pub bin_dir: PathBuf,
    /// Where this mode's phase files and service logs go.
    pub dir: PathBuf,
    /// The api's maximum for the end-to-end phase, when not read from
    /// the api phase's file.
    pub api_max: Option<f64>,
}

impl Context {
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// The spendings: identity `n` scrambled over `identities`, fixed names
/// and amount, each with its own Idempotency-Key.
struct Spendings {
    prefix: String,
    identities: usize,
}

impl Spendings {
    fn new(tag: &str, identities: usize) -> Self {
        Self {
            prefix: format!("{tag}{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
            identities: identities.max(1),
        }
    }

    fn identity(&self, n: u64) -> String {
        // A multiplicative scramble: consecutive requests hit different
        // identities, now and then the same one (as clients would).
        let k = n.wrapping_mul(2_654_435_761) % self.identities as u64;
        format!("{}-{k}", self.prefix)
    }

    fn all(&self) -> Vec<String> {
        (0..self.identities)
            .map(|k| format!("{}-{k}", self.prefix))
            .collect()
    }

    fn body(&self, n: u64) -> Bytes {
        Bytes::from(
            serde_json::json!({
                "identity": self.identity(n),
                "name": "Martin",
                "surname": "Robi",
                "amount": "51.30",
            })
            .to_string(),
        )
    }

    fn spending(&self, n: u64) -> Result<NewSpending, String> {
        Ok(NewSpending {
            identity: Identity::parse(&self.identity(n)).map_err(|e| e.to_string())?,
            name: PersonName::parse("Martin").map_err(|e| e.to_string())?,
            surname: PersonName::parse("Robi").map_err(|e| e.to_string())?,
            amount: Amount::parse("51.30").map_err(|e| e.to_string())?,
        })
    }
}

/// One spending through the api's store, with a fresh Idempotency-Key.
async fn record(store: &Store, spendings: &Spendings, n: u64) -> Done {
    let spending = spendings.spending(n)?;
    let key = uuid::Uuid::new_v4().to_string();
    let key = IdempotencyKey::parse(key.as_bytes()).ok_or("an invalid Idempotency-Key")?;
    let idempotency = Idempotency::of(Some(key), &spending);
    store
        .record(&spending, &idempotency, None)
        .await
        .map(|_| 1)
        .map_err(|e| error_chain(&e))
}

/// One POST with a fresh Idempotency-Key; 201 is success.
async fn post(http: &Http, spendings: &Spendings, n: u64) -> Done {
    let key = uuid::Uuid::new_v4().to_string();
    match http
        .post_json(
            "/api/v1/spending",
            &[("idempotency-key", key)],
            spendings.body(n),
        )
        .await
    {
        Ok(answer) if answer.status == http::StatusCode::CREATED => Ok(1),
        Ok(answer) => Err(format!(
            "HTTP {}: {}",
            answer.status.as_u16(),
            answer.excerpt(120)
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn say(what: &str) {
    eprintln!("[obt-bench] {what}");
}

fn say_step(what: &str, step: &Step) {
    let latency = step
        .latency
        .map(|l| format!(", p50 {:.1} ms p99 {:.1} ms", l.p50_ms, l.p99_ms))
        .unwrap_or_default();
    say(&format!(
        "{what} at {}: {:.0}/s ({} ok, {} errors{latency})",
        step.concurrency, step.per_sec, step.ok, step.errors
    ));
    for error in &step.error_samples {
        say(&format!("  error: {error}"));
    }
}

/// Phase 1: the api's store called directly, its exact request sequence
/// per spending without HTTP or JSON.
pub async fn store_ceiling(ctx: &Context) -> Result<PhaseResult, BenchError> {
    let resources = Resources::create(ctx.storage).await?;
    let store = resources.store().await?;
    let spendings = Spendings::new("sc", ctx.scale.identities);
    closed_loop(32, ctx.scale.warmup, |n| record(&store, &spendings, n)).await;
    let mut steps = Vec::new();
    for &concurrency in &ctx.scale.concurrencies {
        let step = closed_loop(concurrency, ctx.scale.step, |n| {
            record(&store, &spendings, n)
        })
        .await;
        say_step("store ceiling", &step);
        steps.push(step);
    }
    Ok(PhaseResult::StoreCeiling { steps })
}

/// Phase 2: the api binary over HTTP, the relay and the consumer running.
pub async fn api(ctx: &Context) -> Result<PhaseResult, BenchError> {
    let resources = Resources::create(ctx.storage).await?;
    let mut deployment = Deployment::start(&resources, &ctx.bin_dir, &ctx.logs(), "api").await?;
    let spendings = Spendings::new("api", ctx.scale.identities);
    let http = deployment.http.clone();
    closed_loop(32, ctx.scale.warmup, |n| post(&http, &spendings, n)).await;
    let mut steps = Vec::new();
    for &concurrency in &ctx.scale.concurrencies {
        let step = closed_loop(concurrency, ctx.scale.step, |n| post(&http, &spendings, n)).await;
        deployment.alive()?;
        say_step("api", &step);
        steps.push(step);
    }
    Ok(PhaseResult::Api { steps })
}

/// Phase 3a: raw SendMessageBatch of 10 entries, each its own message
/// group, to the FIFO queue.
pub async fn queue_ceiling(ctx: &Context) -> Result<PhaseResult, BenchError> {
    let resources = Resources::create(ctx.storage).await?;
    let sqs = aws_sdk_sqs::Client::new(&resources.config);
    let queue = resources.queue_url.clone();
    // About the size of a SpendingRecorded envelope.
    let body = format!("{{\"padding\":\"{}\"}}", "x".repeat(400));
    let send = |_: u64| {
        let (sqs, queue, body) = (&sqs, &queue, &body);
        async move {
            let entries: Vec<SendMessageBatchRequestEntry> = (0..10)
                .map(|i| {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(body.clone())
                        .message_group_id(format!("g-{id}"))
                        .message_deduplication_id(id)
                        .build()
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<_, _>>()?;
            let answer = sqs
                .send_message_batch()
                .queue_url(queue)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| error_chain(&e))?;
            if let Some(failed) = answer.failed.first() {
                return Err(format!("entry failed: {failed:?}"));
            }
            Ok(answer.successful.len() as u64)
        }
    };
    closed_loop(4, ctx.scale.warmup, send).await;
    let mut steps = Vec::new();
    for &concurrency in &ctx.scale.queue_concurrencies {
        let step = closed_loop(concurrency, ctx.scale.step, send).await;
        say_step("SendMessageBatch (messages)", &step);
        steps.push(step);
    }
    Ok(PhaseResult::QueueCeiling { steps })
}

/// Phase 3b (DynamoDB): writes items to the streamed table, then reads
/// the whole stream with raw GetRecords, timing the reading only.
pub async fn stream_ceiling(ctx: &Context) -> Result<PhaseResult, BenchError> {
    if ctx.storage != Storage::Dynamodb {
        return Err(BenchError::NotApplicable {
            phase: "stream-ceiling",
        });
    }
    let resources = Resources::create(ctx.storage).await?;
    let dynamodb = aws_sdk_dynamodb::Client::new(&resources.config);
    let table = resources.names.table.clone();
    let written = futures::stream::iter(0..ctx.scale.stream_items)
        .map(|n| {
            let (dynamodb, table) = (&dynamodb, &table);
            async move {
                dynamodb
                    .put_item()
                    .table_name(table)
                    .item("identity", AttributeValue::S(format!("stream-{n}")))
                    .item("padding", AttributeValue::S("x".repeat(400)))
                    .send()
                    .await
                    .map_err(|e| error_chain(&e))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = written.iter().find(|w| w.is_err()) {
        return Err(BenchError::Phase {
            phase: "stream-ceiling",
            detail: format!("PutItem failed: {e}"),
        });
    }
    let streams = aws_sdk_dynamodbstreams::Client::new(&resources.config);
    let phase_error = |detail: String| BenchError::Phase {
        phase: "stream-ceiling",
        detail,
    };
    let started = Instant::now();
    let shards = streams
        .describe_stream()
        .stream_arn(&resources.stream_arn)
        .send()
        .await
        .map_err(|e| phase_error(format!("DescribeStream: {}", error_chain(&e))))?
        .stream_description
        .and_then(|d| d.shards)
        .unwrap_or_default();
    let mut read = 0u64;
    for shard in shards {
        let Some(shard_id) = shard.shard_id else {
            continue;
        };
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&resources.stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| phase_error(format!("GetShardIterator: {}", error_chain(&e))))?
            .shard_iterator;
        // An open shard never ends: stop at the first empty page once
        // everything written was read.
        while let Some(current) = iterator {
            let page = streams
                .get_records()
                .shard_iterator(current)
                .limit(1000)
                .send()
                .await
                .map_err(|e| phase_error(format!("GetRecords: {}", error_chain(&e))))?;
            let count = page.records.map_or(0, |r| r.len() as u64);
            read += count;
            if count == 0 && read >= ctx.scale.stream_items {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(phase_error(format!(
                    "read {read} of {} records in 300 s",
                    ctx.scale.stream_items
                )));
            }
            iterator = page.next_shard_iterator;
        }
    }
    let rate = Rate::new(read, started.elapsed());
    say(&format!(
        "GetRecords: {read} records in {:.2} s, {:.0}/s",
        rate.secs, rate.per_sec
    ));
    Ok(PhaseResult::StreamCeiling {
        written: ctx.scale.stream_items,
        read: rate,
    })
}

/// Phase 4: a backlog written through the store with the relay stopped,
/// then the relay daemon started and timed until it published all of it.
pub async fn drain(ctx: &Context) -> Result<PhaseResult, BenchError> {
    let resources = Resources::create(ctx.storage).await?;
    let store = resources.store().await?;
    let spendings = Spendings::new("dr", ctx.scale.identities);
    let backlog = ctx.scale.backlog;
    let written = futures::stream::iter(0..backlog)
        .map(|n| {
            let (store, spendings) = (&store, &spendings);
            async move {
                // Contention between two writes of one identity is retried.
                let mut last = String::new();
                for _ in 0..5 {
                    match record(store, spendings, n).await {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = written.iter().find(|w| w.is_err()) {
        return Err(BenchError::Phase {
            phase: "drain",
            detail: format!("writing the backlog failed: {e}"),
        });
    }
    say(&format!(
        "backlog of {backlog} events written; starting the relay"
    ));
    let mut relay = Service::start(
        &ctx.bin_dir,
        "stream-relay",
        &resources.env("stream-relay"),
        &ctx.logs(),
        "drain",
    )?;
    relay.wait_up().await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    // The drain is timed from the last scrape that saw nothing published
    // (the relay's start-up, lease and shard discovery excluded) to the
    // first that saw the whole backlog.
    let mut last_idle = Instant::now();
    let mut cpu_idle = relay.sample()?.cpu;
    let (end, published, cpu_end) = loop {
        let cpu = relay.sample()?.cpu;
        let now = Instant::now();
        let published = relay
            .metrics
            .scrape()
            .await?
            .total("obt_relay_events_published_total");
        if published == 0.0 {
            last_idle = now;
            cpu_idle = cpu;
        }
        if published >= backlog as f64 {
            break (now, published, relay.sample()?.cpu);
        }
        if now > deadline {
            return Err(BenchError::Phase {
                phase: "drain",
                detail: format!(
                    "the relay published {published} of {backlog} events in 600 s (its log: {})",
                    relay.log.display()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count = published as u64;
    let rate = Rate::new(count, end - last_idle);
    let cpu_us_per_event =
        (count > 0).then(|| (cpu_end - cpu_idle).as_secs_f64() * 1e6 / count as f64);
    say(&format!(
        "drain: {count} events in {:.2} s, {:.0}/s, relay CPU {:.0} us per event",
        rate.secs,
        rate.per_sec,
        cpu_us_per_event.unwrap_or_default()
    ));
    Ok(PhaseResult::Drain {
        backlog,
        drained: rate,
        cpu_us_per_event,
    })
}

/// The fractions of the api's maximum the end-to-end phase runs at.
pub const FRACTIONS: [f64; 3] = [0.25, 0.5, 0.75];

/// Phase 5 and 6: open loop at 25, 50 and 75% of the api's maximum, the
/// end-to-end latency of every event; over the 50% level, the services'
/// requests, CPU time and memory.
pub async fn end_to_end(ctx: &Context) -> Result<PhaseResult, BenchError> {
    let api_max = match ctx.api_max {
        Some(max) => max,
        None => crate::report::api_max(&ctx.dir)?,
    };
    let resources = Resources::create(ctx.storage).await?;
    let ledger = resources.ledger().await?;
    let mut deployment = Deployment::start(&resources, &ctx.bin_dir, &ctx.logs(), "e2e").await?;
    // Idle: after start-up, a moment to settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut idle = BTreeMap::new();
    for service in deployment.services() {
        idle.insert(service.name.clone(), service.sample()?.rss_mb);
    }
    // Unmeasured: the stand-ins' and the services' first requests (a JVM
    // that compiles, connections that open) would land in the first level.
    let warmup = Spendings::new("ew", ctx.scale.identities);
    let http = deployment.http.clone();
    let applied_before = deployment
        .consumer
        .metrics
        .scrape()
        .await?
        .total("obt_consumer_events_applied_total");
    let run = open_loop(api_max * FRACTIONS[0], ctx.scale.warmup, 4096, |n| {
        let (http, warmup) = (&http, &warmup);
        async move { post(http, warmup, n).await }
    })
    .await;
    converge(
        &ledger,
        &[],
        run.ok,
        applied_before,
        ctx.scale.converge,
        &mut deployment,
    )
    .await?;
    let mut levels = Vec::new();
    let mut requests_per_spending = BTreeMap::new();
    let mut usage = BTreeMap::new();
    for fraction in FRACTIONS {
        let rate = (api_max * fraction).max(1.0);
        let spendings = Spendings::new(
            &format!("e{}", (fraction * 100.0) as u32),
            ctx.scale.identities,
        );
        let measured = fraction == 0.5;
        let before = if measured {
            Some(Snapshot::take(&mut deployment).await?)
        } else {
            None
        };
        let applied_before = deployment
            .consumer
            .metrics
            .scrape()
            .await?
            .total("obt_consumer_events_applied_total");
        let http = deployment.http.clone();
        let sampler = RssSampler::start(&mut deployment);
        let run = open_loop(rate, ctx.scale.level, 4096, |n| {
            let (http, spendings) = (&http, &spendings);
            async move { post(http, spendings, n).await }
        })
        .await;
        deployment.alive()?;
        let (not_applied, samples) = converge(
            &ledger,
            &spendings.all(),
            run.ok,
            applied_before,
            ctx.scale.converge,
            &mut deployment,
        )
        .await?;
        let peaks = sampler.stop().await;
        if let Some(before) = before {
            let after = Snapshot::take(&mut deployment).await?;
            let created = run.ok as f64;
            for (operation, count) in after.requests_minus(&before) {
                if created > 0.0 {
                    requests_per_spending.insert(operation, count / created);
                }
            }
            for (service, unit) in [
                ("api", created),
                ("stream-relay", after.published - before.published),
                ("consumer", after.applied - before.applied),
            ] {
                let cpu_us = (after.cpu[service] - before.cpu[service]).as_secs_f64() * 1e6;
                usage.insert(
                    service.to_owned(),
                    Usage {
                        cpu_us,
                        units: unit,
                        cpu_us_per_unit: (unit > 0.0).then(|| cpu_us / unit),
                        rss_idle_mb: idle.get(service).copied().unwrap_or_default(),
                        rss_load_mb: peaks.get(service).copied().unwrap_or_default(),
                    },
                );
            }
        }
        let level = Level {
            fraction,
            target_per_sec: rate,
            sent: run.sent,
            created: run.ok,
            errors: run.errors,
            late: run.late,
            secs: run.secs,
            post_latency: Latency::of(&run.latencies),
            end_to_end: Latency::of(&samples),
            end_to_end_distribution: distribution(&samples),
            not_applied,
        };
        say(&format!(
            "end to end at {:.0}% ({rate:.0}/s): {} of {} created, {} errors, {} late; {}",
            fraction * 100.0,
            run.ok,
            run.sent,
            run.errors,
            run.late,
            level
                .end_to_end
                .map_or("no events applied".to_owned(), |l| format!(
                    "p50 {:.0} ms, p99 {:.0} ms",
                    l.p50_ms, l.p99_ms
                ))
        ));
        for error in &run.error_samples {
            say(&format!("  error: {error}"));
        }
        levels.push(level);
    }
    Ok(PhaseResult::EndToEnd(EndToEnd {
        api_max_per_sec: api_max,
        levels,
        requests_per_spending,
        usage,
    }))
}

/// Waits until the consumer applied `created` more events than `before`
/// (its own counter, cheap to read, so that the wait does not load the
/// store the events are still passing through), or `deadline`; then reads
/// each event's applied-at minus occurred-at from its records.
async fn converge(
    ledger: &Arc<dyn obt_consumer::LedgerReader>,
    identities: &[String],
    created: u64,
    before: f64,
    deadline: Duration,
    deployment: &mut Deployment,
) -> Result<(u64, Vec<Duration>), BenchError> {
    let started = Instant::now();
    loop {
        deployment.alive()?;
        let applied = deployment
            .consumer
            .metrics
            .scrape()
            .await?
            .total("obt_consumer_events_applied_total");
        if applied - before >= created as f64 || started.elapsed() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if identities.is_empty() {
        // The warm-up: only the wait.
        return Ok((0, Vec::new()));
    }
    loop {
        let views = obt_check::observe::applied_views(ledger, identities)
            .await
            .map_err(|e| BenchError::Phase {
                phase: "end-to-end",
                detail: e.to_string(),
            })?;
        let events: Vec<Duration> = views
            .values()
            .flatten()
            .flat_map(|view| &view.events)
            .map(|e| {
                let seconds = (e.applied_at - e.occurred_at).as_seconds_f64().max(0.0);
                Duration::from_secs_f64(seconds)
            })
            .collect();
        let applied = events.len() as u64;
        if applied >= created || started.elapsed() > deadline {
            return Ok((created.saturating_sub(applied), events));
        }
        deployment.alive()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The three services' counters and CPU time at one moment.
struct Snapshot {
    requests: BTreeMap<String, f64>,
    published: f64,
    applied: f64,
    cpu: BTreeMap<&'static str, Duration>,
}

impl Snapshot {
    async fn take(deployment: &mut Deployment) -> Result<Self, BenchError> {
        let mut requests = BTreeMap::new();
        let mut published = 0.0;
        let mut applied = 0.0;
        let mut cpu = BTreeMap::new();
        for (name, service) in ["api", "stream-relay", "consumer"]
            .into_iter()
            .zip(deployment.services())
        {
            let metrics = service.metrics.scrape().await?;
            for (operation, count) in metrics.requests() {
                *requests.entry(operation).or_insert(0.0) += count;
            }
            published += metrics.total("obt_relay_events_published_total");
            applied += metrics.total("obt_consumer_events_applied_total");
            cpu.insert(name, service.sample()?.cpu);
        }
        Ok(Self {
            requests,
            published,
            applied,
            cpu,
        })
    }

    fn requests_minus(&self, before: &Self) -> BTreeMap<String, f64> {
        self.requests
            .iter()
            .map(|(operation, count)| {
                let earlier = before.requests.get(operation).copied().unwrap_or_default();
                (operation.clone(), count - earlier)
            })
            .filter(|(_, delta)| *delta > 0.0)
            .collect()
    }
}

/// Samples the services' VmRSS every 250 ms, keeping each one's peak.
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<BTreeMap<String, f64>>,
}

impl RssSampler {
    fn start(deployment: &mut Deployment) -> Self {
        let pids: Vec<(String, Option<u32>)> = deployment
            .services()
            .into_iter()
            .map(|s| (s.name.clone(), s.child_pid()))
            .collect();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peaks = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                for (name, pid) in &pids {
                    if let Some(sample) = pid.and_then(|p| crate::probe::proc_sample(p).ok()) {
                        let peak = peaks.entry(name.clone()).or_insert(0.0_f64);
                        *peak = peak.max(sample.rss_mb);
                    }
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return peaks,
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> BTreeMap<String, f64> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The phases by their command-line name.
pub async fn run(phase: &str, ctx: &Context) -> Result<PhaseResult, BenchError> {
    match phase {
        "store-ceiling" => store_ceiling(ctx).await,
        "api" => api(ctx).await,
        "queue-ceiling" => queue_ceiling(ctx).await,
        "stream-ceiling" => stream_ceiling(ctx).await,
        "drain" => drain(ctx).await,
        "end-to-end" => end_to_end(ctx).await,
        "lambda" => lambda(ctx).await,
        other => Err(BenchError::Setup(format!("no phase {other}"))),
    }
}

/// Records of a Lambda batch (the event source mapping's default size).
const LAMBDA_BATCH: usize = 100;

/// Phase 7 (DynamoDB): the relay Lambda under cargo-lambda's Runtime API
/// emulator, invoked batch after batch with stream events made from real
/// stream records. The first invocation is sent as the process starts, so
/// its latency is the cold start plus one batch; init is that minus the
/// warm batches' median.
pub async fn lambda(ctx: &Context) -> Result<PhaseResult, BenchError> {
    if ctx.storage != Storage::Dynamodb {
        return Err(BenchError::NotApplicable { phase: "lambda" });
    }
    let phase_error = |detail: String| BenchError::Phase {
        phase: "lambda",
        detail,
    };
    let batch = if ctx.scale.backlog < 1000 {
        20
    } else {
        LAMBDA_BATCH
    };
    let batches = (ctx.scale.backlog as usize / 5 / batch).max(3);
    let total = (batch * batches) as u64;
    let resources = Resources::create(ctx.storage).await?;
    let store = resources.store().await?;
    let spendings = Spendings::new("la", ctx.scale.identities);
    let written = futures::stream::iter(0..total)
        .map(|n| {
            let (store, spendings) = (&store, &spendings);
            async move { record(store, spendings, n).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = written.iter().find(|w| w.is_err()) {
        return Err(phase_error(format!("writing the events: {e}")));
    }
    let records = crate::lambda::read_stream(&resources, total).await?;
    let events: Vec<serde_json::Value> = records
        .chunks(batch)
        .map(|chunk| obt_testkit::lambda::dynamodb_event(chunk, &resources.stream_arn))
        .collect();
    let mut function = crate::lambda::Function::start(
        &ctx.bin_dir,
        "stream-relay-lambda",
        &[
            ("OBT_TABLE".to_owned(), resources.names.table.clone()),
            ("OBT_QUEUE_URL".to_owned(), resources.queue_url.clone()),
        ],
        &ctx.logs(),
    )
    .await?;
    let mut latencies = Vec::new();
    for event in &events {
        latencies.push(function.invoke(event).await?);
    }
    let cold = latencies.first().copied().unwrap_or_default();
    let warm = Latency::of(&latencies[1..]);
    let init_ms = warm.map(|w| (cold.as_secs_f64() * 1e3 - w.p50_ms).max(0.0));
    let reported_init_ms = function.reported_init_ms();
    say(&format!(
        "Lambda: first invocation (cold) {:.0} ms, warm batches of {batch} p50 {:.0} ms",
        cold.as_secs_f64() * 1e3,
        warm.map_or(0.0, |w| w.p50_ms)
    ));
    Ok(PhaseResult::Lambda {
        batch_size: batch,
        cold_invocation_ms: cold.as_secs_f64() * 1e3,
        init_ms,
        reported_init_ms,
        per_batch: warm,
    })
}
