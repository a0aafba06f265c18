//! The `mailpin` command line: run, check (and, as they arrive, ctl).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use mailpin::config::{Config, LogFormat};
use mailpin::ctl::{self, CtlCommand};
use mailpin::devmode::{self, DevPorts};
use mailpin::launch::{launch, launch_with_path};
use mailpin::signals;
use mailpin::supervise::{run_until_signal, serve};

/// The configuration file `run`, `check` and `ctl` read by default.
const DEFAULT_CONFIG: &str = "config/mailpin.toml";

/// The allocator every thread uses (see `mailpin::alloc`).
#[global_allocator]
static GLOBAL: mailpin::alloc::Allocator = mailpin::alloc::Allocator;

/// A high-availability mail director: every session of one user goes to one backend.
///
/// mailpin sits in front of IMAP, POP3, LMTP and ManageSieve backends that
/// share one mail store, terminates TLS, learns the user at login and sends
/// every session of one user to one backend. It checks the backends itself
/// and moves a dead backend's users within a second.
#[derive(Parser)]
#[command(name = "mailpin", version, about, after_long_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The end of `mailpin --help`: what the man page says besides the options.
const AFTER_HELP: &str = "\
Environment:
  MAILPIN_LOG    log filter (default \"info\"; RUST_LOG when unset), e.g. info,mailpin=debug
  NO_COLOR       no colours in text logs
  NOTIFY_SOCKET  set by systemd (Type=notify): READY=1 once serving, STOPPING=1 on SIGTERM

Signals (to `mailpin run`):
  SIGTERM, SIGINT  stop accepting, drain sessions for server.drain_timeout, exit 0

Files:
  /etc/mailpin/mailpin.toml  the configuration of the Debian package's unit
                             (config/mailpin.toml is the annotated reference)

Exit status: 0 ok; 1 invalid config, failed start or refused ctl request;
2 ctl could not reach the director. The manual: man mailpin";

#[derive(Subcommand)]
enum Command {
    /// Serve mail protocols.
    ///
    /// Checks the configuration, binds every [[listen]] address on every
    /// core and the admin API, then serves. Under systemd (Type=notify) it
    /// reports READY=1 once all of that is up. SIGTERM or SIGINT stops
    /// accepting, reports STOPPING=1, gives established sessions
    /// server.drain_timeout and exits 0. Logs go to standard error, as text
    /// or JSON (log.format); every session ends with one "session closed"
    /// line: user, client, backend, protocol, TLS version, bytes each way,
    /// duration and reason.
    Run {
        /// Configuration file.
        #[arg(short = 'c', long = "config", default_value = "config/mailpin.toml")]
        config: PathBuf,
        /// Serve with three embedded dev backends and a fresh self-signed
        /// certificate on 127.0.0.1; no configuration file is read.
        ///
        /// IMAP 10143 (STARTTLS), IMAPS 10993, POP3 10110, LMTP 10024,
        /// ManageSieve 14190, admin API 9120; any user name, password "dev".
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// With --dev: also start a local 3-member etcd (etcd on PATH;
        /// clients on 127.0.0.1:12379, 12479, 12579) and a second director
        /// (mail ports + 1000, admin 9121), both in cluster mode.
        #[arg(long, requires = "dev")]
        cluster: bool,
    },
    /// Validate a configuration: exit 0, or print every problem and exit 1.
    ///
    /// Checks syntax, types, unknown keys, ranges and required companions,
    /// then the certificate and key files and the CPU count on this
    /// machine. Every problem is printed with its line, column and key
    /// path; probable mistakes are printed as warnings.
    Check {
        /// Configuration file.
        #[arg(short = 'c', long = "config", default_value = "config/mailpin.toml")]
        config: PathBuf,
    },
    /// Talk to a running director's admin API.
    ///
    /// Exit status: 0 on success, 1 when the API refused the request
    /// (unknown backend or user, malformed request), 2 when the director
    /// could not be reached.
    Ctl {
        /// The admin API: HOST:PORT (as admin.listen) or unix:PATH (as
        /// admin.socket). Default: the config file's admin.socket, else its
        /// admin.listen, else 127.0.0.1:9120.
        #[arg(long)]
        admin: Option<String>,
        /// The configuration to take the admin address and token from
        /// (default config/mailpin.toml, when it exists and --admin is not
        /// given). MAILPIN_ADMIN_TOKEN overrides its token.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: CtlCli,
    },
}

#[derive(Subcommand)]
enum CtlCli {
    /// Version, uptime, cores, sessions, state version.
    Status,
    /// Every backend with its states, sessions and users.
    Backends,
    /// Change a backend's admin state, or flush its users.
    Backend {
        /// The backend's name.
        name: String,
        /// up | down | drain | flush
        #[arg(value_parser = ["up", "down", "drain", "flush"])]
        action: String,
    },
    /// Which backend a user is on, how many sessions, since when.
    User {
        /// The login name.
        user: String,
    },
    /// Close every session of a user.
    Kick {
        /// The login name.
        user: String,
    },
    /// Move a user safely: sessions closed first, then assigned to BACKEND.
    Move {
        /// The login name.
        user: String,
        /// The target backend.
        backend: String,
    },
    /// Re-read the configuration file (as SIGHUP): print what changed, or
    /// every error and exit 1 (the old configuration stays in force).
    Reload,
    /// Binary upgrade (as SIGUSR2): start the binary this director was
    /// started from with the same configuration file, hand it the
    /// listening sockets and the routing state, then drain this process
    /// and exit. Prints both process ids; exits 1 if the new process
    /// failed (this one serves on) or an upgrade is not possible now.
    Upgrade,
    /// The directors of the cluster, the leader, etcd's state (cluster
    /// mode only).
    Cluster,
}

/// Logs to standard error in `format` (`log.format`), filtered by
/// `MAILPIN_LOG` (or `RUST_LOG`; default `info`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MAILPIN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        // One object per line: the event's fields at the top level, the
        // session's (user, client, backend, ...) under "span".
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Ctl {
            admin,
            config,
            json,
            command,
        } => ctl(admin.as_deref(), config.as_deref(), json, command),
        Command::Run {
            config,
            dev,
            cluster,
        } => {
            signals::block();
            if dev && cluster {
                run_dev_cluster()
            } else if dev {
                run_dev()
            } else {
                run(&config)
            }
        }
    }
}

fn ctl(admin: Option<&str>, config: Option<&Path>, json: bool, command: CtlCli) -> ExitCode {
    let cmd = match command {
        CtlCli::Status => CtlCommand::Status,
        CtlCli::Backends => CtlCommand::Backends,
        CtlCli::Backend { name, action } => CtlCommand::Backend { name, action },
        CtlCli::User { user } => CtlCommand::User(user),
        CtlCli::Kick { user } => CtlCommand::Kick(user),
        CtlCli::Move { user, backend } => CtlCommand::Move { user, backend },
        CtlCli::Reload => CtlCommand::Reload,
        CtlCli::Upgrade => CtlCommand::Upgrade,
        CtlCli::Cluster => CtlCommand::Cluster,
    };
    let (method, path) = cmd.request();
    let target = match ctl::Target::resolve(
        admin,
        config,
        Path::new(DEFAULT_CONFIG),
        std::env::var(ctl::TOKEN_ENV).ok(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mailpin ctl: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match ctl::call(&target, method, &path) {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("{}", ctl::render(&cmd, &v));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailpin ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn check(path: &PathBuf) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for w in config.warnings() {
                eprintln!("{w}");
            }
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &PathBuf) -> ExitCode {
    mailpin::upgrade::remember_binary();
    // A binary upgrade starts this binary again with the same file.
    let path = &std::path::absolute(path).unwrap_or_else(|_| path.clone());
    let mut upgrade_link = mailpin::upgrade::successor::inherited_link();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            if let Some(link) = upgrade_link.as_mut() {
                let error = format!("its configuration is invalid:\n{errors}");
                mailpin::upgrade::successor::report_failure(link, &error);
            }
            return ExitCode::FAILURE;
        }
    };
    init_logging(config.log.format);
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    if let Some(link) = upgrade_link {
        return match mailpin::upgrade::successor::take_over(config, path, link) {
            Ok(director) => {
                serve(director, Some(path.clone()), false);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("mailpin: binary upgrade: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match launch_with_path(config, Some(path.clone())) {
        Ok(director) => {
            serve(director, Some(path.clone()), true);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailpin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `run --dev --cluster`: the local etcd, the dev backends, two directors.
fn run_dev_cluster() -> ExitCode {
    init_logging(LogFormat::Text);
    let etcd = match mailpin::devcluster::LocalEtcd::start() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mailpin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let setup = match devmode::setup(DevPorts::STANDARD) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailpin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut directors = Vec::new();
    for config in mailpin::devcluster::director_configs(&setup.config) {
        match launch(config) {
            Ok(d) => directors.push(d),
            Err(e) => {
                eprintln!("mailpin: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{}",
        devmode::banner(&setup, &directors[0].listen_addrs, directors[0].admin_addr)
    );
    println!(
        "  cluster mode: etcd members {:?} (PIDs {:?}, data in {})\n  \
         director d1: the ports above; director d2: mail ports + 1000, admin {}\n  \
         try: mailpin ctl --admin 127.0.0.1:9120 cluster\n",
        mailpin::devcluster::LocalEtcd::urls(),
        etcd.pids(),
        etcd.dir().display(),
        directors[1]
            .admin_addr
            .map_or_else(String::new, |a| a.to_string()),
    );
    loop {
        match signals::wait() {
            signals::Signal::Stop(name) => {
                tracing::info!(signal = name, "stopping both directors, then etcd");
                break;
            }
            other => tracing::info!(?other, "ignored in dev cluster mode"),
        }
    }
    for mut d in directors {
        d.stop();
    }
    drop(setup);
    drop(etcd);
    ExitCode::SUCCESS
}

fn run_dev() -> ExitCode {
    init_logging(LogFormat::Text);
    let setup = match devmode::setup(DevPorts::STANDARD) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailpin: {e}");
            return ExitCode::FAILURE;
        }
    };
    match launch(setup.config.clone()) {
        Ok(director) => {
            println!(
                "{}",
                devmode::banner(&setup, &director.listen_addrs, director.admin_addr)
            );
            run_until_signal(director);
            drop(setup);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailpin: {e}");
            ExitCode::FAILURE
        }
    }
}
