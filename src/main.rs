//! The `swr-gate` command line. Parsing only; the work is in the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// A request allocates and frees many small objects: under callgrind glibc's malloc and
/// free were about a fifth of a request's instructions, mimalloc's are about 7%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "swr-gate",
    version,
    about = "A policy gateway for Huawei Cloud SWR's permission API"
)]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the gateway on embedded defaults in front of a built-in SWR emulator, on
    /// loopback, and print demo credentials and examples.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
    },
    /// Load and validate the config, routes, schemas and policies; print every problem
    /// (exit 1) and every warning (exit 0 when there are only warnings).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Review audit trails.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Dry-run one request through route, body, schema and policy and print the whole
    /// decision. Exit 0: it would be forwarded; 1: refused; 2: the config does not load.
    Eval(swr_gate::eval::EvalArgs),
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Make a new client credential and print the config lines for it.
    Keygen {
        #[command(subcommand)]
        kind: KeyKind,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the hash chain of one or several files (oldest first); name the first bad record.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The environment variable holding the chain's HMAC key, when it has one.
        #[arg(long)]
        hmac_key_env: Option<String>,
    },
    /// Print the records that match every filter given.
    Query {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Records at or after this time (RFC 3339, e.g. 2026-11-23T18:00:00Z or with an
        /// offset, 2026-11-24T02:00:00+08:00).
        #[arg(long, value_parser = swr_gate::audit::review::parse_time)]
        since: Option<std::time::SystemTime>,
        /// Records before this time.
        #[arg(long, value_parser = swr_gate::audit::review::parse_time)]
        until: Option<std::time::SystemTime>,
        #[arg(long)]
        client: Option<String>,
        #[arg(long, value_parser = ["allow", "deny", "error"])]
        decision: Option<String>,
        #[arg(long)]
        operation: Option<String>,
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        repository: Option<String>,
        /// `json` lines for tools, `text` for reading; default: text on a terminal, else json.
        #[arg(long, value_enum)]
        format: Option<QueryFormat>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum QueryFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run policy test cases and report pass/fail per case. Exit 0: all passed; 1: a
    /// case failed; 2: the config, policies or a case file do not load.
    Test {
        #[arg(long)]
        config: PathBuf,
        /// Case files; default: every tests/*.toml of the policy directory.
        cases: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeyKind {
    /// An API key, sent as `Authorization: Bearer KEY` or `X-Api-Key: KEY`.
    ApiKey {
        /// The client id the config lines are for: letters, digits, `.`, `_`, `-`, `@`.
        #[arg(long, default_value = "new-client", value_parser = swr_gate::keygen::client_id)]
        client: String,
    },
    /// An access key / secret key pair for the official SDKs' request signing.
    Aksk {
        /// The client id the config lines are for: letters, digits, `.`, `_`, `-`, `@`.
        #[arg(long, default_value = "new-client", value_parser = swr_gate::keygen::client_id)]
        client: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config } => run(swr_gate::server::serve(&config)),
        Command::Dev {
            listen,
            admin_listen,
        } => run(swr_gate::dev::run(listen, admin_listen)),
        Command::Check { config } => {
            let report = swr_gate::check::check(&config);
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            if report.problems.is_empty() {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            } else {
                for problem in &report.problems {
                    eprintln!("error: {problem}");
                }
                ExitCode::FAILURE
            }
        }
        Command::Audit { action } => audit(action),
        Command::Eval(args) => verdict(swr_gate::eval::eval(&args)),
        Command::Policy {
            command: PolicyCommand::Test { config, cases },
        } => verdict(swr_gate::eval::policy_test(&config, &cases)),
        Command::Keygen { kind } => {
            let issued = match kind {
                KeyKind::ApiKey { client } => swr_gate::keygen::api_key(&client),
                KeyKind::Aksk { client } => swr_gate::keygen::aksk(&client),
            };
            // The secret on stderr, the config lines on stdout: `>> gate.toml` takes no
            // secret. Lines for a secret nobody saw would make a client nobody can be.
            if std::io::stderr()
                .write_all(issued.secret.as_bytes())
                .is_err()
                || std::io::stdout()
                    .write_all(issued.config.as_bytes())
                    .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}

fn audit(action: AuditAction) -> ExitCode {
    use swr_gate::audit::{review, Chain};
    match action {
        AuditAction::Verify {
            files,
            hmac_key_env,
        } => {
            let key = match hmac_key_env
                .map(|var| swr_gate::audit::hmac_key(&var))
                .transpose()
            {
                Ok(key) => key,
                Err(error) => return fail(&error),
            };
            match review::verify(&files, &Chain::new(key)) {
                Ok(verified) => {
                    println!(
                        "ok: {} records, chain from {} to {}",
                        verified.records, verified.first_prev, verified.last_hash
                    );
                    for torn in &verified.torn {
                        println!("note: {torn}");
                    }
                    if verified.records == 0 {
                        println!("note: no records: an empty trail proves nothing about what was written before");
                    }
                    if verified.first_prev != swr_gate::audit::GENESIS {
                        println!("note: the first record is not the trail's first: it chains to a record before it; verify with the older files first, or compare {} with the last hash of the file before", verified.first_prev);
                    }
                    ExitCode::SUCCESS
                }
                Err(broken) => fail(&broken.to_string()),
            }
        }
        AuditAction::Query {
            files,
            since,
            until,
            client,
            decision,
            operation,
            namespace,
            repository,
            format,
        } => {
            use std::io::IsTerminal;
            let filter = review::Filter {
                since,
                until,
                client,
                decision,
                operation,
                namespace,
                repository,
            };
            let format = match format {
                Some(QueryFormat::Json) => review::Format::Json,
                Some(QueryFormat::Text) => review::Format::Text,
                None if std::io::stdout().is_terminal() => review::Format::Text,
                None => review::Format::Json,
            };
            match review::query(&files, &filter, format, &mut std::io::stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
    }
}

/// The main thread's runtime: signals, reloads, the admin endpoints. Requests are served
/// on runtimes of their own (`swr_gate::workers`).
fn run(task: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the runtime: {error}")),
    };
    let outcome = runtime.block_on(task);
    // What the task leaves running (a drain a second signal cut short) is not waited for.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Exit 0 for a yes, 1 for a no, 2 when the question could not be asked.
fn verdict(result: Result<(String, bool), String>) -> ExitCode {
    match result {
        Ok((report, yes)) => {
            print!("{report}");
            ExitCode::from(if yes { 0 } else { 1 })
        }
        Err(error) => {
            say_error(&error);
            ExitCode::from(2)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    say_error(message);
    ExitCode::FAILURE
}

/// Each line of `message` on stderr, as `error: …`. Not eprintln!, which panics when
/// stderr's reader has gone (at shutdown, say), turning exit 1 into a panic's 101.
fn say_error(message: &str) {
    let mut stderr = std::io::stderr().lock();
    for line in message.lines() {
        let _ = writeln!(stderr, "error: {line}");
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (stderr's reader has gone) is dropped: the
    // default reports it with eprintln!, which panics on that same closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
