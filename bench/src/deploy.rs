//! A phase's deployment on the stand-ins that `scripts/bench.sh` started
//! for it: the tables, queues (and in MySQL mode databases and users) under
//! names of this run, and the service binaries as child processes with
//! their logs in files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use obt_api::Store;
use obt_check::http::Http;
use obt_consumer::LedgerReader;
use obt_runtime::Storage;

use crate::BenchError;
use crate::probe::{MetricsEndpoint, ProcSample, proc_sample};

/// How long a service gets to start answering.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The resources of one phase.
pub struct Resources {
    pub storage: Storage,
    pub config: SdkConfig,
    pub names: obt_migrate::Names,
    pub stream_arn: String,
    pub queue_url: String,
    /// MySQL mode: each service's URL (with its password; never logged).
    mysql: Option<MySqlUrls>,
}

/// Each service's MySQL URL (with its password: not `Debug`).
#[derive(Clone)]
struct MySqlUrls {
    api: String,
    relay: String,
    consumer: String,
}

impl Resources {
    /// Creates the tables and queues (and in MySQL mode the databases and
    /// users, with `OBT_MYSQL_ADMIN_URL`) under fresh names.
    pub async fn create(storage: Storage) -> Result<Self, BenchError> {
        let config = obt_runtime::aws_config().await;
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let names = obt_migrate::Names {
            table: format!("bench-{id}-spending"),
            lease_table: format!("bench-{id}-leases"),
            consumer_table: format!("bench-{id}-consumer"),
            idempotency_table: format!("bench-{id}-idempotency"),
            queue: format!("bench-{id}-events.fifo"),
            dead_letter_queue: format!("bench-{id}-dlq.fifo"),
        };
        let overrides = obt_migrate::Overrides {
            // DynamoDB Local's TTL work slows it down (obt_migrate's doc);
            // nothing measured here depends on expiry.
            skip_time_to_live: true,
            ..Default::default()
        };
        let report = obt_migrate::apply(&config, &names, &overrides)
            .await
            .map_err(|e| BenchError::StandIn {
                what: "creating the tables and queues (DynamoDB Local, fauxqs)",
                detail: obt_runtime::error_chain(&e),
            })?;
        let mysql = match storage {
            Storage::Dynamodb => None,
            Storage::Mysql => Some(mysql_setup(id).await?),
        };
        Ok(Self {
            storage,
            config,
            names,
            stream_arn: report.stream_arn,
            queue_url: report.queue_url,
            mysql,
        })
    }

    /// The environment of `service` (`api`, `stream-relay`, `consumer`) on
    /// these resources.
    pub fn env(&self, service: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("OBT_TABLE", &self.names.table),
            ("OBT_LEASE_TABLE", &self.names.lease_table),
            ("OBT_CONSUMER_TABLE", &self.names.consumer_table),
            ("OBT_IDEMPOTENCY_TABLE", &self.names.idempotency_table),
            ("OBT_QUEUE_NAME", &self.names.queue),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
        let storage = match self.storage {
            Storage::Dynamodb => "dynamodb",
            Storage::Mysql => "mysql",
        };
        env.push(("OBT_STORAGE".to_owned(), storage.to_owned()));
        if let Some(urls) = &self.mysql {
            let url = match service {
                "api" => &urls.api,
                "stream-relay" => &urls.relay,
                _ => &urls.consumer,
            };
            env.push(("OBT_DATABASE_URL".to_owned(), url.clone()));
        }
        env
    }

    /// The api's store, configured as the api binary configures it (its
    /// own settings parsing, defaults and all).
    pub async fn store(&self) -> Result<Arc<Store>, BenchError> {
        let mut args = vec!["api".to_owned()];
        for (key, value) in self.env("api") {
            let flag = match key.as_str() {
                "OBT_TABLE" => "--table",
                "OBT_IDEMPOTENCY_TABLE" => "--idempotency-table",
                "OBT_STORAGE" => "--storage",
                "OBT_DATABASE_URL" => "--database-url",
                _ => continue,
            };
            args.push(flag.to_owned());
            args.push(value);
        }
        let settings = <obt_api::Settings as clap::Parser>::try_parse_from(args)
            .map_err(|e| BenchError::Setup(format!("the api's settings: {e}")))?;
        let state = obt_api::AppState::from_settings(&settings, &self.config)
            .await
            .map_err(|e| {
                BenchError::Setup(format!("the api's store: {}", obt_runtime::error_chain(&e)))
            })?;
        Ok(state.store)
    }

    /// The consumer's records, read-only.
    pub async fn ledger(&self) -> Result<Arc<dyn LedgerReader>, BenchError> {
        let args = match &self.mysql {
            None => obt_consumer::StorageArgs::dynamodb(&self.names.consumer_table),
            Some(urls) => obt_consumer::StorageArgs::mysql(obt_runtime::DatabaseUrl::new(
                urls.consumer.clone(),
            )),
        };
        let records = obt_consumer::store::open(&self.config, &args, 8, "obt-bench")
            .await
            .map_err(|e| BenchError::Setup(format!("the consumer's records: {e}")))?;
        Ok(records.reader().clone())
    }
}

#[cfg(feature = "mysql")]
async fn mysql_setup(id: &str) -> Result<MySqlUrls, BenchError> {
    use obt_migrate::mysql::{MySqlNames, Passwords, setup};
    let admin = std::env::var("OBT_MYSQL_ADMIN_URL").map_err(|_| {
        BenchError::Setup(
            "OBT_MYSQL_ADMIN_URL is not set: the MySQL mode needs the MariaDB server that \
             scripts/bench.sh starts (run the phases through it)"
                .to_owned(),
        )
    })?;
    let names = MySqlNames {
        api_database: format!("b{id}_api"),
        consumer_database: format!("b{id}_consumer"),
        api_user: format!("b{id}_api"),
        relay_user: format!("b{id}_relay"),
        consumer_user: format!("b{id}_consumer"),
    };
    let password = || uuid::Uuid::new_v4().simple().to_string();
    let passwords = Passwords {
        api: password(),
        relay: password(),
        consumer: password(),
    };
    let report = setup(&admin, &names, &passwords)
        .await
        .map_err(|e| BenchError::StandIn {
            what: "creating the MySQL databases and users (MariaDB)",
            detail: obt_runtime::error_chain(&e),
        })?;
    Ok(MySqlUrls {
        api: report.api_url,
        relay: report.relay_url,
        consumer: report.consumer_url,
    })
}

#[cfg(not(feature = "mysql"))]
async fn mysql_setup(_: &str) -> Result<MySqlUrls, BenchError> {
    Err(BenchError::Setup(
        obt_runtime::MySqlNotBuilt {
            binary: "obt-bench",
        }
        .to_string(),
    ))
}

/// One of the workspace's service binaries, SIGKILLed when dropped.
pub struct Service {
    pub name: String,
    pub log: PathBuf,
    pub metrics: MetricsEndpoint,
    pid: u32,
    child: tokio::process::Child,
}

impl Service {
    /// Starts `bin_dir/name` with `env` (and `OBT_METRICS_LISTEN` on a free
    /// port), its output in `log_dir/TAG-NAME.log`.
    pub fn start(
        bin_dir: &Path,
        name: &str,
        env: &[(String, String)],
        log_dir: &Path,
        tag: &str,
    ) -> Result<Self, BenchError> {
        let path = bin_dir.join(name);
        if !path.exists() {
            return Err(BenchError::Setup(format!(
                "{} does not exist: build the binaries (cargo build --bins --all-features, \
                 with --release for a full run), or pass --bin-dir",
                path.display()
            )));
        }
        std::fs::create_dir_all(log_dir).map_err(|e| BenchError::io(log_dir, e))?;
        let log = log_dir.join(format!("{tag}-{name}.log"));
        let file = std::fs::File::create(&log).map_err(|e| BenchError::io(&log, e))?;
        let err = file.try_clone().map_err(|e| BenchError::io(&log, e))?;
        let port = free_port()?;
        let child = tokio::process::Command::new(&path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("OBT_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", path.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Setup(format!("{name} exited at once")))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            metrics: MetricsEndpoint::new(name, port)?,
            pid,
            child,
        })
    }

    /// An error if the process has exited.
    pub fn alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::ServiceDied {
                service: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
            }),
            Err(e) => Err(BenchError::ServiceDied {
                service: self.name.clone(),
                status: e.to_string(),
                log: self.log.display().to_string(),
            }),
        }
    }

    /// Waits until its metrics endpoint answers (it is up), or it dies.
    pub async fn wait_up(&mut self) -> Result<(), BenchError> {
        let started = Instant::now();
        loop {
            self.alive()?;
            match self.metrics.try_scrape().await {
                Ok(_) => return Ok(()),
                Err(last) if started.elapsed() > START_DEADLINE => {
                    return Err(BenchError::NotUp {
                        service: self.name.clone(),
                        secs: START_DEADLINE.as_secs(),
                        last,
                        log: self.log.display().to_string(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Its process id.
    pub fn child_pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    /// Its CPU time and memory now.
    pub fn sample(&mut self) -> Result<ProcSample, BenchError> {
        self.alive()?;
        proc_sample(self.pid).map_err(|detail| BenchError::Metrics {
            service: self.name.clone(),
            detail,
        })
    }
}

/// The api with the relay and the consumer, as the table runs them.
pub struct Deployment {
    pub api: Service,
    pub relay: Service,
    pub consumer: Service,
    pub http: Http,
}

impl Deployment {
    pub async fn start(
        resources: &Resources,
        bin_dir: &Path,
        log_dir: &Path,
        tag: &str,
    ) -> Result<Self, BenchError> {
        let port = free_port()?;
        let mut api_env = resources.env("api");
        api_env.push(("OBT_LISTEN".to_owned(), format!("127.0.0.1:{port}")));
        let mut api = Service::start(bin_dir, "api", &api_env, log_dir, tag)?;
        let mut relay = Service::start(
            bin_dir,
            "stream-relay",
            &resources.env("stream-relay"),
            log_dir,
            tag,
        )?;
        let mut consumer = Service::start(
            bin_dir,
            "consumer",
            &resources.env("consumer"),
            log_dir,
            tag,
        )?;
        let http = Http::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(30),
        )
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        api.wait_up().await?;
        relay.wait_up().await?;
        consumer.wait_up().await?;
        let started = Instant::now();
        loop {
            api.alive()?;
            match http.get("/health/ready").await {
                Ok(answer) if answer.status.is_success() => break,
                other if started.elapsed() > START_DEADLINE => {
                    return Err(BenchError::NotUp {
                        service: "api".to_owned(),
                        secs: START_DEADLINE.as_secs(),
                        last: match other {
                            Ok(answer) => format!("/health/ready answered {}", answer.status),
                            Err(e) => e.to_string(),
                        },
                        log: api.log.display().to_string(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(Self {
            api,
            relay,
            consumer,
            http,
        })
    }

    /// An error if any of the three has exited.
    pub fn alive(&mut self) -> Result<(), BenchError> {
        self.api.alive()?;
        self.relay.alive()?;
        self.consumer.alive()
    }

    pub fn services(&mut self) -> [&mut Service; 3] {
        [&mut self.api, &mut self.relay, &mut self.consumer]
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| BenchError::Setup(format!("no free loopback port: {e}")))
}
