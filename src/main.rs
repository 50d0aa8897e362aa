//! The `portcullis` command: parse arguments, load and compile the
//! configuration, run. No proxy logic lives here.

use clap::{Parser, Subcommand};
use portcullis::{audit_log, demo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An identity-aware, zero-trust edge proxy for MCP servers",
    after_help = "Examples:
  portcullis demo                          # a demo MCP server behind portcullis on 127.0.0.1:8080
  portcullis check -c config/portcullis.yaml
  portcullis run -c config/portcullis.yaml

Logging: PORTCULLIS_LOG=debug (or any tracing filter, e.g. portcullis=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    #[command(after_help = "Example:\n  portcullis run -c config/portcullis.yaml")]
    Run {
        /// The YAML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and summarize it; every error is printed
    /// with its file, line and column, and the exit code is non-zero.
    #[command(after_help = "Example:\n  portcullis check -c config/portcullis.yaml")]
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Read an audit log and show the records that match, or counts per tool
    /// and decision (--summary).
    #[command(after_help = "Examples:
  portcullis audit /var/log/portcullis/audit.jsonl --decision denied
  portcullis audit audit.jsonl --principal alice@example.com --since 2026-11-22T00:00:00Z --summary")]
    Audit {
        /// The audit file (JSON lines), or - for standard input.
        file: PathBuf,
        /// The principal's `sub` or email.
        #[arg(long)]
        principal: Option<String>,
        /// Tool, prompt or resource.
        #[arg(long)]
        tool: Option<String>,
        /// allowed, denied, unauthenticated, invalid or failed.
        #[arg(long)]
        decision: Option<String>,
        /// From this time on, inclusive (RFC 3339 with an offset, e.g.
        /// 2026-11-22T08:00:00Z or 2026-11-22T10:00:00+02:00; compared as
        /// instants).
        #[arg(long, value_name = "TIME", value_parser = audit_log::parse_time)]
        since: Option<jiff::Timestamp>,
        /// Before this time, exclusive: a record stamped exactly at it is left
        /// out, so --until T and --since T split a log without overlap.
        #[arg(long, value_name = "TIME", value_parser = audit_log::parse_time)]
        until: Option<jiff::Timestamp>,
        /// Only counts per tool and decision.
        #[arg(long)]
        summary: bool,
    },
    /// The built-in authorization server's grants: list them, or revoke them
    /// (their tokens are refused on every core within a second, and the
    /// user is asked to consent again).
    #[command(after_help = "Examples:
  portcullis grants list -c portcullis.yaml --user alice
  portcullis grants revoke -c portcullis.yaml --client https://claude.ai/oauth/mcp-oauth-client-metadata
  portcullis grants revoke -c portcullis.yaml --grant 3Qk9...")]
    Grants {
        /// list or revoke.
        #[arg(value_parser = ["list", "revoke"])]
        action: String,
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The user's subject (`sub`).
        #[arg(long)]
        user: Option<String>,
        /// The client id.
        #[arg(long)]
        client: Option<String>,
        /// One grant by id (revoke only).
        #[arg(long)]
        grant: Option<String>,
    },
    /// The vault of users' upstream OAuth tokens: `rekey` re-seals every
    /// token under the first configured key (after a new key was put first),
    /// so the older keys can be removed. Safe while portcullis runs.
    #[command(after_help = "Example:\n  portcullis vault rekey -c portcullis.yaml")]
    Vault {
        #[command(subcommand)]
        action: VaultAction,
    },
    /// The authorization server's store: `migrate` creates it or brings its
    /// schema to this build's version (what every start does too) and
    /// reports the version; a store written by a newer portcullis is refused.
    #[command(after_help = "Example:\n  portcullis store migrate -c portcullis.yaml")]
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Tool pinning: `diff` shows a route's definitions awaiting approval
    /// (new, or changed since approved: which members, the description
    /// around its change, injection markers found); `approve` approves them
    /// (all, or those of one name). The running proxy serves approved ones
    /// within a second.
    #[command(after_help = "Examples:
  portcullis tools diff github -c portcullis.yaml
  portcullis tools approve github create_issue -c portcullis.yaml
  portcullis tools approve github --kind prompt -c portcullis.yaml")]
    Tools {
        /// diff or approve.
        #[arg(value_parser = ["diff", "approve"])]
        action: String,
        /// The route's name.
        route: String,
        /// One tool, prompt or resource template by name (approve only).
        name: Option<String>,
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only this kind: tool, prompt or resource_template.
        #[arg(long)]
        kind: Option<String>,
    },
    /// Print the JSON Schema of the configuration file (for editors: e.g.
    /// `# yaml-language-server: $schema=portcullis.schema.json`).
    #[command(
        after_help = "Examples:\n  portcullis schema > portcullis.schema.json\n  portcullis schema --markdown > REFERENCE.md"
    )]
    Schema {
        /// The option reference as Markdown instead.
        #[arg(long)]
        markdown: bool,
    },
    /// Start a small built-in MCP server on loopback with portcullis in front.
    #[command(after_help = "Example:\n  portcullis demo --listen 127.0.0.1:8080")]
    Demo {
        /// Where portcullis listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Apply the schema migrations this build knows and print the version.
    Migrate {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum VaultAction {
    /// Re-seal the tokens of older keys under the first key of `vault.keys`.
    Rekey {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// Logs to stderr, as configured; PORTCULLIS_LOG overrides the level. Never
/// a token: nothing on the request path logs credentials.
fn init_logging(log: &portcullis::config::LogConfig) {
    let filter = std::env::var("PORTCULLIS_LOG").unwrap_or_else(|_| log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        portcullis::config::LogFormat::Json => builder.json().init(),
        portcullis::config::LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    portcullis::allocator_setup();
    let command = Cli::parse().command;
    match &command {
        Command::Run { .. } => {} // logging as its configuration says, once loaded
        _ => init_logging(&Default::default()),
    }
    match command {
        Command::Check { config } => match portcullis::load(&config) {
            Ok(snap) => {
                println!("{}: OK", config.display());
                print!("{}", snap.summary());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                ExitCode::from(2)
            }
        },
        Command::Run { config } => match portcullis::load(&config) {
            Ok(snap) => {
                init_logging(snap.log());
                run(snap, &config)
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Audit {
            file,
            principal,
            tool,
            decision,
            since,
            until,
            summary,
        } => audit(
            &file,
            &audit_log::Query {
                principal,
                tool,
                decision,
                since,
                until,
            },
            summary,
        ),
        Command::Schema { markdown } => {
            let schema = portcullis::config::schema::json();
            if markdown {
                print!("{}", portcullis::config::schema::markdown(&schema));
            } else {
                println!("{schema:#}");
            }
            ExitCode::SUCCESS
        }
        Command::Grants {
            action,
            config,
            user,
            client,
            grant,
        } => {
            let command = match (action.as_str(), &grant) {
                ("revoke", Some(id)) => portcullis::GrantsCommand::RevokeOne(id),
                ("revoke", None) => portcullis::GrantsCommand::Revoke,
                (_, None) => portcullis::GrantsCommand::List,
                (_, Some(_)) => {
                    eprintln!("error: --grant goes with revoke");
                    return ExitCode::from(2);
                }
            };
            match portcullis::grants(&config, command, user.as_deref(), client.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tools {
            action,
            route,
            name,
            config,
            kind,
        } => {
            let command = match (action.as_str(), name.as_deref()) {
                ("approve", name) => portcullis::ToolsCommand::Approve(name),
                (_, None) => portcullis::ToolsCommand::Diff,
                (_, Some(_)) => {
                    eprintln!("error: a name goes with approve");
                    return ExitCode::from(2);
                }
            };
            match portcullis::tools(&config, &route, command, kind.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Vault {
            action: VaultAction::Rekey { config },
        } => match portcullis::vault_rekey(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Store {
            action: StoreAction::Migrate { config },
        } => match portcullis::store_migrate(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { listen } => match demo::start(listen) {
            Ok(d) => {
                println!("{}", demo::instructions(&d));
                let config = d.config_path.clone();
                let result = portcullis::run_until_signal(d.running, Some(&config));
                if let Some(dir) = config.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                finish(result)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn audit(file: &std::path::Path, q: &audit_log::Query, summary: bool) -> ExitCode {
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        }
    };
    let found = match audit_log::query(input, q, std::io::stdout().lock(), summary) {
        Ok(f) => f,
        // The reader went away (`| head`): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: reading {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    if summary {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:>8}",
            "tool / method", "decision", "count"
        );
        for ((target, decision), n) in &found.counts {
            let _ = writeln!(out, "{target:<40} {decision:<16} {n:>8}");
        }
        let _ = writeln!(out, "{} record(s) matched", found.matched);
    }
    if !found.bad_lines.is_empty() {
        let shown: Vec<String> = found
            .bad_lines
            .iter()
            .take(10)
            .map(u64::to_string)
            .collect();
        eprintln!(
            "warning: {} line(s) are not audit records (line {}{})",
            found.bad_lines.len(),
            shown.join(", "),
            if found.bad_lines.len() > 10 {
                ", ..."
            } else {
                ""
            }
        );
    }
    ExitCode::SUCCESS
}

fn run(snap: portcullis::Snapshot, config: &std::path::Path) -> ExitCode {
    match portcullis::start(snap) {
        Ok(running) => finish(portcullis::run_until_signal(running, Some(config))),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn finish(r: std::io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
