//! Tests of the whole configuration pipeline: the reference config and the
//! examples, defaults, every error message with its key path and location,
//! several errors reported together, and configs built in code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

const REFERENCE: &str = include_str!("../../config/mailpin.toml");
const EXAMPLES: [(&str, &str); 3] = [
    (
        "three-backends",
        include_str!("../../config/examples/three-backends.toml"),
    ),
    (
        "behind-load-balancer",
        include_str!("../../config/examples/behind-load-balancer.toml"),
    ),
    (
        "loopback-test",
        include_str!("../../config/examples/loopback-test.toml"),
    ),
];

/// The smallest valid config: one listener, one backend.
const MINIMAL: &str = r#"
[[listen]]
protocol = "imap"
addr = "127.0.0.1:10143"
plaintext_auth = true

[[backend]]
name = "mail1"
host = "10.0.0.11"
"#;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// Parses `text`, expecting failure; returns the errors.
fn errors_of(text: &str) -> ConfigErrors {
    match Config::from_toml_str(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors,
    }
}

/// The single error of `text`, as displayed without its location.
fn single_error(text: &str) -> String {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "expected one error, got:\n{errors}");
    errors.errors()[0].to_string()
}

/// `MINIMAL` followed by `extra`.
fn minimal_plus(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

/// A valid config built in code, as the dev mode would.
fn built_in_code() -> Config {
    Config {
        listen: vec![Listen {
            plaintext_auth: true,
            ..Listen::new(Protocol::Imap, addr("127.0.0.1:10143"))
        }],
        backend: vec![
            Backend::new("dev1", "127.0.0.1"),
            Backend::new("dev2", "127.0.0.1"),
        ],
        ..Config::default()
    }
}

// ---- the reference config, examples, defaults ----

#[test]
fn reference_config_parses_validates_and_shows_the_defaults() {
    let config = Config::from_toml_str(REFERENCE).unwrap_or_else(|e| panic!("{e}"));
    // Every value written in the reference is the default.
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.backends, BackendDefaults::default());
    assert_eq!(config.health, HealthConfig::default());
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.cluster, None);
    assert_eq!(config.limits, LimitsConfig::default());
    let tls = config.tls.as_ref().unwrap();
    assert_eq!(tls.cert, PemSource::File("/etc/mailpin/cert.pem".into()));
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(config.listen.len(), 5);
    assert_eq!(config.listen[0].tls, TlsMode::Implicit);
    assert_eq!(config.listen[3].protocol, Protocol::Lmtp);
    assert_eq!(config.listen[3].tls, TlsMode::None);
    let backends = config.resolved_backends();
    assert_eq!(backends.len(), 3);
    assert_eq!(backends[2].port(Protocol::Imap), 1143);
    assert_eq!(backends[2].port(Protocol::Pop3), 110);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn defaults_match_the_design() {
    let server = ServerConfig::default();
    assert_eq!(server.cores, 0);
    assert_eq!(server.user_key, "%Lu");
    assert_eq!(server.user_expire, Duration::from_secs(15 * 60));
    assert_eq!(server.prelogin_timeout, Duration::from_secs(60));
    assert_eq!(server.drain_timeout, Duration::from_secs(30));
    assert_eq!(server.handshake_timeout, Duration::from_secs(10));
    assert_eq!(server.max_line, 8192);
    assert_eq!(server.max_bad_commands, 10);
    assert!(!server.splice);
    assert_eq!(server.driver, Driver::IoUring);
    assert_eq!(server.stall_timeout, Duration::from_secs(60));
    assert_eq!(
        (
            server.keepalive_idle,
            server.keepalive_interval,
            server.keepalive_probes
        ),
        (Duration::from_secs(60), Duration::from_secs(10), 6)
    );
    let backends = BackendDefaults::default();
    assert_eq!(
        (backends.imap, backends.pop3, backends.lmtp, backends.sieve),
        (143, 110, 24, 4190)
    );
    assert_eq!(backends.forward, Forward::Id);
    assert_eq!(backends.connect_timeout, Duration::from_secs(2));
    let health = HealthConfig::default();
    assert_eq!(health.interval, Duration::from_millis(500));
    assert_eq!(health.timeout, Duration::from_secs(1));
    assert_eq!((health.fall, health.rise), (2, 2));
    assert_eq!(health.check, HealthCheck::Banner);
    assert_eq!(AdminConfig::default().listen, addr("127.0.0.1:9120"));
    let cluster = ClusterConfig::default();
    assert_eq!(cluster.etcd, vec!["http://127.0.0.1:2379".to_owned()]);
    assert_eq!(cluster.prefix, "/mailpin");
}

#[test]
fn examples_parse_validate_and_raise_no_warnings() {
    for (name, text) in EXAMPLES {
        let config = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert!(
            config.warnings().is_empty(),
            "{name}: {:?}",
            config.warnings()
        );
    }
}

#[test]
fn example_overrides_and_sections_come_through() {
    let config = Config::from_toml_str(EXAMPLES[1].1).unwrap();
    assert_eq!(config.server.user_key, "%Ld");
    assert_eq!(config.server.drain_timeout, Duration::from_secs(120));
    assert_eq!(config.tls.as_ref().unwrap().min_version, TlsVersion::Tls13);
    let trusted = &config.listen[0].proxy_trusted;
    assert!(trusted[0].contains("10.0.1.77".parse().unwrap()));
    assert!(trusted[1].contains("fd00:1::9".parse().unwrap()));
    let backend = &config.resolved_backends()[0];
    assert_eq!(backend.forward, Forward::Proxy);
    assert_eq!(backend.connect_timeout, Duration::from_secs(1));
    assert_eq!(config.health.check, HealthCheck::Login);
    assert_eq!(
        config.health.login_password.as_ref().unwrap().expose(),
        "change-me"
    );
    assert_eq!(config.cluster.as_ref().unwrap().etcd.len(), 3);
    assert_eq!(config.cluster.as_ref().unwrap().prefix, "/mailpin/prod");
}

#[test]
fn minimal_config_takes_every_default() {
    let config = Config::from_toml_str(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(config.tls, None);
    assert_eq!(config.health, HealthConfig::default());
    let listen = &config.listen[0];
    assert_eq!(listen.tls, TlsMode::None);
    assert!(!listen.proxy_protocol);
    assert!(listen.proxy_trusted.is_empty());
    let backend = &config.resolved_backends()[0];
    assert_eq!(
        backend,
        &ResolvedBackend {
            name: "mail1".into(),
            host: "10.0.0.11".into(),
            weight: 100,
            imap: 143,
            pop3: 110,
            lmtp: 24,
            sieve: 4190,
            forward: Forward::Id,
            connect_timeout: Duration::from_secs(2),
        }
    );
    assert_eq!(backend.port(Protocol::Lmtp), 24);
    assert_eq!(backend.port(Protocol::Sieve), 4190);
}

#[test]
fn every_backend_key_can_be_overridden() {
    let config = Config::from_toml_str(
        r#"
[[listen]]
protocol = "lmtp"
addr = "127.0.0.1:24"

[backends]
forward = "none"

[[backend]]
name = "b"
host = "mail.example.net"
weight = 7
imap = 1143
pop3 = 1110
lmtp = 1024
sieve = 14190
forward = "proxy"
connect_timeout = "250ms"
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let backend = &config.resolved_backends()[0];
    assert_eq!(backend.weight, 7);
    let ports = Protocol::ALL.map(|p| backend.port(p));
    assert_eq!(ports, [1143, 1110, 1024, 14190]);
    assert_eq!(backend.forward, Forward::Proxy);
    assert_eq!(backend.connect_timeout, Duration::from_millis(250));
}

#[test]
fn extension_keys_parse() {
    let config = Config::from_toml_str(&minimal_plus(
        r#"
[server]
handshake_timeout = "5s"
max_line = 4096
max_bad_commands = 3
splice = true
driver = "auto"
"#,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.handshake_timeout, Duration::from_secs(5));
    assert_eq!(config.server.max_line, 4096);
    assert_eq!(config.server.max_bad_commands, 3);
    assert!(config.server.splice);
    assert_eq!(config.server.driver, Driver::Auto);
}

#[test]
fn tls_min_version_accepts_strings_and_numbers() {
    for (written, expected) in [("\"1.3\"", TlsVersion::Tls13), ("1.2", TlsVersion::Tls12)] {
        let text = minimal_plus(&format!(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nmin_version = {written}\n"
        ));
        let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.tls.unwrap().min_version, expected);
    }
    assert_eq!(
        single_error(&minimal_plus(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nmin_version = \"1.1\"\n"
        )),
        "tls.min_version: \"1.1\" is not a TLS version (expected \"1.2\" or \"1.3\")"
    );
}

// ---- syntax, types, unknown keys ----

#[test]
fn syntax_errors_carry_line_and_column() {
    let errors = errors_of("[server]\ncores = 2\nuser_key = \"%Lu\n");
    assert!(!errors.is_empty());
    let first = &errors.errors()[0];
    assert_eq!(first.path(), "");
    assert!(first.message().starts_with("TOML syntax: "), "{first}");
    assert_eq!(first.location().map(|l| l.line), Some(3));
    assert!(
        errors.to_string().starts_with("line 3, column "),
        "{errors}"
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path_and_location() {
    let errors = errors_of(&minimal_plus("[health]\nintervall = \"1s\"\n"));
    assert_eq!(errors.len(), 1, "{errors}");
    let error = &errors.errors()[0];
    assert_eq!(error.path(), "health.intervall");
    assert!(
        error
            .message()
            .starts_with("unknown key `intervall`, expected one of `interval`"),
        "{error}"
    );
    assert_eq!(
        error.location(),
        Some(Location {
            line: 12,
            column: 1
        })
    );
}

#[test]
fn unknown_keys_in_arrays_of_tables_name_the_element() {
    let errors = errors_of(
        "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:143\"\n\n[[listen]]\nprotocol = \"pop3\"\naddr = \"127.0.0.1:110\"\nport = 110\n\n[[backend]]\nname = \"a\"\nhost = \"h\"\nport = 143\n",
    );
    assert_eq!(errors.len(), 2, "{errors}");
    assert_eq!(errors.errors()[0].path(), "listen[1].port");
    assert_eq!(
        errors.errors()[0].location(),
        Some(Location { line: 8, column: 1 })
    );
    assert_eq!(errors.errors()[1].path(), "backend[0].port");
    assert_eq!(
        errors.errors()[1].location(),
        Some(Location {
            line: 13,
            column: 1
        })
    );
}

#[test]
fn unknown_sections_are_rejected() {
    let errors = errors_of(&minimal_plus("[sever]\ncores = 1\n"));
    assert_eq!(errors.len(), 1, "{errors}");
    assert_eq!(errors.errors()[0].path(), "sever");
    assert!(errors.errors()[0]
        .message()
        .starts_with("unknown key (the sections are `server`"));
}

#[test]
fn wrong_types_name_the_key() {
    let error = single_error(&minimal_plus("[server]\ncores = \"two\"\n"));
    assert!(
        error.starts_with("server.cores: invalid type: string \"two\""),
        "{error}"
    );
    let error = single_error(&minimal_plus("[server]\nsplice = \"yes\"\n"));
    assert!(
        error.starts_with("server.splice: invalid type: string \"yes\""),
        "{error}"
    );
    let error = single_error(&minimal_plus("[server]\ndriver = \"epoll\"\n"));
    assert!(
        error.starts_with("server.driver: unknown variant `epoll`, expected"),
        "{error}"
    );
}

#[test]
fn single_brackets_for_listen_get_a_hint() {
    let errors = errors_of(
        "[listen]\nprotocol = \"imap\"\naddr = \"127.0.0.1:143\"\n\n[[backend]]\nname = \"a\"\nhost = \"h\"\n",
    );
    assert_eq!(
        errors.errors()[0].to_string(),
        "listen: must be an array of tables (write [[listen]], with two brackets)"
    );
}

#[test]
fn missing_required_keys_are_named() {
    let errors = errors_of(
        "[[listen]]\nprotocol = \"imap\"\n\n[[backend]]\nhost = \"h\"\n\n[tls]\ncert = \"c\"\n",
    );
    let shown: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(&"listen[0].addr: required key is missing".to_owned()),
        "{errors}"
    );
    assert!(
        shown.contains(&"backend[0].name: required key is missing".to_owned()),
        "{errors}"
    );
    assert!(
        shown.contains(&"tls.key: required key is missing".to_owned()),
        "{errors}"
    );
}

#[test]
fn bad_values_name_their_key() {
    let cases: [(&str, &str); 12] = [
        (
            "[[listen]]\nprotocol = \"imap\"\naddr = \"0.0.0.0:99999\"\n",
            "listen[1].addr: \"0.0.0.0:99999\" is not an address (expected IP:PORT, e.g. \"0.0.0.0:993\")",
        ),
        (
            "[[listen]]\nprotocol = \"imaps\"\naddr = \"0.0.0.0:993\"\n",
            "listen[1].protocol: unknown variant `imaps`, expected one of `imap`, `pop3`, `lmtp`, `sieve`",
        ),
        (
            "[[listen]]\nprotocol = \"imap\"\naddr = \"0.0.0.0:993\"\ntls = \"ssl\"\n",
            "listen[1].tls: unknown variant `ssl`, expected one of `none`, `starttls`, `implicit`",
        ),
        (
            "[[listen]]\nprotocol = \"imap\"\naddr = \"0.0.0.0:993\"\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n",
            "listen[1].proxy_trusted[1]: \"10.0.0.1/8\" has bits set below its prefix (did you mean \"10.0.0.0/8\"?)",
        ),
        (
            "[admin]\nlisten = \"localhost:9120\"\n",
            "admin.listen: \"localhost:9120\" is not an address (expected IP:PORT, e.g. \"127.0.0.1:9120\")",
        ),
        (
            "[backends]\nimap = 99999\n",
            "backends.imap: 99999 is not a port (expected a number from 1 to 65535)",
        ),
        (
            "[backends]\nforward = \"header\"\n",
            "backends.forward: unknown variant `header`, expected one of `none`, `id`, `proxy`",
        ),
        (
            "[health]\ntimeout = 5\n",
            "health.timeout: \"5\" has no unit (expected a whole number and a unit: ms, s, m or h, e.g. \"500ms\", \"2s\", \"15m\"; \"5s\" means 5 seconds)",
        ),
        (
            "[health]\ninterval = \"5x\"\n",
            "health.interval: \"5x\" has an unknown unit (expected a whole number and a unit: ms, s, m or h, e.g. \"500ms\", \"2s\", \"15m\")",
        ),
        (
            "[health]\ncheck = \"ping\"\n",
            "health.check: unknown variant `ping`, expected one of `connect`, `banner`, `login`",
        ),
        (
            "[server]\nuser_expire = \"-1s\"\n",
            "server.user_expire: \"-1s\" is negative (durations are 0 or more)",
        ),
        (
            "[health]\nfall = -1\n",
            "health.fall: invalid value: integer `-1`, expected u32",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(
            single_error(&minimal_plus(extra)),
            expected,
            "for:\n{extra}"
        );
    }
}

#[test]
fn every_bad_key_of_one_table_is_reported() {
    let errors = errors_of(&minimal_plus(
        "[health]\ninterval = \"fast\"\ntimeout = \"1.5s\"\nfall = \"two\"\nrisee = 2\n",
    ));
    let paths: Vec<&str> = errors.errors().iter().map(ConfigError::path).collect();
    assert_eq!(paths.len(), 4, "{errors}");
    for path in [
        "health.interval",
        "health.timeout",
        "health.fall",
        "health.risee",
    ] {
        assert!(paths.contains(&path), "{path} missing from:\n{errors}");
    }
}

#[test]
fn errors_in_several_sections_are_reported_together() {
    let text = r#"
[server]
cores = "all"

[[listen]]
protocol = "imap"
addr = "0.0.0.0:99999"

[[listen]]
protocol = "ftp"
addr = "0.0.0.0:21"

[[backend]]
name = "a"
host = "h"
weight = -5

[admin]
listen = "nowhere"
"#;
    let errors = errors_of(text);
    let paths: Vec<&str> = errors.errors().iter().map(ConfigError::path).collect();
    assert_eq!(
        paths,
        [
            "server.cores",
            "listen[0].addr",
            "listen[1].protocol",
            "backend[0].weight",
            "admin.listen"
        ],
        "{errors}"
    );
    // One line per problem, each located.
    assert_eq!(errors.to_string().lines().count(), 5);
    assert!(errors.errors().iter().all(|e| e.location().is_some()));
}

// ---- semantic checks ----

#[test]
fn no_listeners_and_no_backends() {
    let errors = errors_of("[server]\ncores = 1\n");
    assert_eq!(
        errors.to_string(),
        "listen: no listeners (add a [[listen]] section, e.g. protocol = \"imap\", addr = \"0.0.0.0:993\")\n\
         backend: no backends (add a [[backend]] section with name and host)"
    );
}

#[test]
fn weight_must_be_positive() {
    let text = minimal_plus("[[backend]]\nname = \"b\"\nhost = \"h\"\n\n[[backend]]\nname = \"c\"\nhost = \"h\"\nweight = 0\n");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors}");
    let error = &errors.errors()[0];
    assert!(
        error
            .to_string()
            .starts_with("backend[2].weight: must be greater than 0"),
        "{error}"
    );
    assert_eq!(
        error.location(),
        Some(Location {
            line: 18,
            column: 1
        })
    );
    assert!(errors
        .to_string()
        .starts_with("line 18, column 1: backend[2].weight: must be greater than 0"));
}

#[test]
fn duplicate_backend_names() {
    let error = single_error(&minimal_plus(
        "[[backend]]\nname = \"mail1\"\nhost = \"10.0.0.12\"\n",
    ));
    assert_eq!(
        error,
        "backend[1].name: \"mail1\" is already used by backend[0] (names must be unique)"
    );
}

#[test]
fn bad_backend_names_and_hosts() {
    let errors = errors_of(&minimal_plus(
        "[[backend]]\nname = \"mail 2\"\nhost = \"10.0.0.12:143\"\n\n[[backend]]\nname = \"\"\nhost = \"\"\n",
    ));
    assert_eq!(
        errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "backend[1].name: \"mail 2\" is not a valid name (1-64 letters, digits, '.', '_' or '-': it appears in admin URLs)",
            "backend[1].host: \"10.0.0.12:143\" must not include a port (set the imap, pop3, lmtp or sieve key instead)",
            "backend[2].name: must not be empty",
            "backend[2].host: must not be empty (an IP address or host name)",
        ]
    );
}

#[test]
fn duplicate_listen_addresses() {
    let error = single_error(&minimal_plus(
        "[[listen]]\nprotocol = \"pop3\"\naddr = \"127.0.0.1:10143\"\nplaintext_auth = true\n",
    ));
    assert_eq!(
        error,
        "listen[1].addr: 127.0.0.1:10143 is already used by listen[0]"
    );
}

#[test]
fn admin_address_clashing_with_a_listener() {
    let error = single_error(&minimal_plus("[admin]\nlisten = \"127.0.0.1:10143\"\n"));
    assert_eq!(
        error,
        "admin.listen: 127.0.0.1:10143 is already used by listen[0]"
    );
}

#[test]
fn tls_listener_without_tls_section() {
    let errors = errors_of(&minimal_plus(
        "[[listen]]\nprotocol = \"imap\"\naddr = \"0.0.0.0:993\"\ntls = \"implicit\"\n\n[[listen]]\nprotocol = \"sieve\"\naddr = \"0.0.0.0:4190\"\ntls = \"starttls\"\n",
    ));
    assert_eq!(
        errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "listen[1].tls: \"implicit\" needs a [tls] section with cert and key (or set tls = \"none\")",
            "listen[2].tls: \"starttls\" needs a [tls] section with cert and key (or set tls = \"none\")",
        ]
    );
}

#[test]
fn sieve_with_implicit_tls_is_allowed() {
    let text = minimal_plus(
        "[tls]\ncert = \"c\"\nkey = \"k\"\n\n[[listen]]\nprotocol = \"sieve\"\naddr = \"0.0.0.0:5190\"\ntls = \"implicit\"\n",
    );
    assert!(Config::from_toml_str(&text).is_ok());
}

#[test]
fn proxy_protocol_needs_trusted_networks() {
    let error = single_error(&minimal_plus(
        "[[listen]]\nprotocol = \"imap\"\naddr = \"0.0.0.0:143\"\nplaintext_auth = true\nproxy_protocol = true\n",
    ));
    assert_eq!(
        error,
        "listen[1].proxy_trusted: is empty, but proxy_protocol = true (list the load balancers' networks, e.g. proxy_trusted = [\"10.0.0.0/8\"])"
    );
}

#[test]
fn health_ranges() {
    let errors = errors_of(&minimal_plus(
        "[health]\ninterval = \"0s\"\ntimeout = \"0ms\"\nfall = 0\nrise = 0\n",
    ));
    assert_eq!(
        errors
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "health.interval: must be greater than 0",
            "health.timeout: must be greater than 0",
            "health.fall: must be at least 1",
            "health.rise: must be at least 1",
        ]
    );
}

#[test]
fn login_check_needs_credentials() {
    let errors = errors_of(&minimal_plus("[health]\ncheck = \"login\"\n"));
    assert_eq!(
        errors
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "health.login_user: required when check = \"login\" (a test account on every backend)",
            "health.login_password: required when check = \"login\"",
        ]
    );
    // Absent keys are located at their section.
    assert_eq!(errors.errors()[0].location().map(|l| l.line), Some(11));
}

#[test]
fn server_ranges_and_timeouts() {
    let errors = errors_of(&minimal_plus(
        "[server]\nprelogin_timeout = \"0s\"\nhandshake_timeout = \"0s\"\nmax_line = 100\nmax_bad_commands = 0\n\n[backends]\nconnect_timeout = \"0s\"\n",
    ));
    assert_eq!(
        errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "server.prelogin_timeout: must be greater than 0",
            "server.handshake_timeout: must be greater than 0",
            "server.max_line: 100 is too small (at least 1024 bytes; the default 8192 fits any login line)",
            "server.max_bad_commands: must be at least 1",
            "backends.connect_timeout: must be greater than 0",
        ]
    );
    let error = single_error(&minimal_plus("[server]\nmax_line = 2000000\n"));
    assert_eq!(
        error,
        "server.max_line: 2000000 is too large (at most 1048576 bytes; the default is 8192)"
    );
    let error = single_error(&minimal_plus(
        "[[backend]]\nname = \"b\"\nhost = \"h\"\nconnect_timeout = \"0ms\"\n",
    ));
    assert_eq!(error, "backend[1].connect_timeout: must be greater than 0");
}

#[test]
fn stall_timeout_and_keepalive_ranges() {
    let errors = errors_of(&minimal_plus(
        "[server]\nstall_timeout = \"0s\"\nkeepalive_idle = \"500ms\"\nkeepalive_interval = \"10h\"\nkeepalive_probes = 0\n",
    ));
    assert_eq!(
        errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "server.stall_timeout: must be greater than 0",
            "server.keepalive_idle: must be between 1s and 32767s (the kernel counts whole seconds); keepalive_idle = \"0s\" turns keepalive off",
            "server.keepalive_interval: must be between 1s and 32767s (the kernel counts whole seconds); keepalive_idle = \"0s\" turns keepalive off",
            "server.keepalive_probes: 0 is out of range (1 to 127)",
        ]
    );
    // Off: the other keepalive keys are not checked.
    let text = minimal_plus("[server]\nkeepalive_idle = \"0s\"\nkeepalive_probes = 0\n");
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.server.keepalive_idle.is_zero());
}

#[test]
fn zero_durations_are_fine_where_they_mean_something() {
    let text = minimal_plus("[server]\nuser_expire = \"0s\"\ndrain_timeout = \"0s\"\n");
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.user_expire, Duration::ZERO);
}

#[test]
fn user_key_formats() {
    let error = single_error(&minimal_plus("[server]\nuser_key = \"%x\"\n"));
    assert_eq!(
        error,
        "server.user_key: \"%x\" in \"%x\" is not a code (use %u, %n, %d, or %Lu, %Ln, %Ld to lower-case)"
    );
    let error = single_error(&minimal_plus("[server]\nuser_key = \"fixed\"\n"));
    assert!(
        error.starts_with("server.user_key: \"fixed\" has no % code"),
        "{error}"
    );
    let config =
        Config::from_toml_str(&minimal_plus("[server]\nuser_key = \"%Ln@%Ld\"\n")).unwrap();
    assert_eq!(config.server.user_key, "%Ln@%Ld");
}

#[test]
fn cluster_checks() {
    let errors = errors_of(&minimal_plus(
        "[cluster]\netcd = [\"http://127.0.0.1:2379\", \"127.0.0.1:2379\"]\nprefix = \"mailpin\"\n",
    ));
    assert_eq!(
        errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "cluster.etcd[1]: \"127.0.0.1:2379\" is not an http(s) URL (expected e.g. \"http://127.0.0.1:2379\")",
            "cluster.prefix: \"mailpin\" must start with \"/\" (e.g. \"/mailpin\")",
        ]
    );
    assert_eq!(errors.errors()[0].location().map(|l| l.line), Some(12));
    let error = single_error(&minimal_plus("[cluster]\netcd = []\n"));
    assert!(
        error.starts_with("cluster.etcd: must list at least one endpoint"),
        "{error}"
    );
    let config = Config::from_toml_str(&minimal_plus("[cluster]\n")).unwrap();
    assert_eq!(config.cluster, Some(ClusterConfig::default()));
}

#[test]
fn parse_and_semantic_errors_in_one_file_come_one_after_the_other() {
    // A type error stops that element; the other checks still run on the
    // rest only once parsing succeeded, so parse errors come alone.
    let errors = errors_of("[server]\ncores = \"x\"\n");
    assert_eq!(errors.len(), 1, "{errors}");
    // Once the file parses, every semantic problem is reported together.
    let errors = errors_of(
        "[server]\nuser_key = \"x\"\n\n[health]\nfall = 0\n\n[[listen]]\nprotocol = \"imap\"\naddr = \"0.0.0.0:993\"\ntls = \"implicit\"\n",
    );
    let paths: Vec<&str> = errors.errors().iter().map(ConfigError::path).collect();
    assert_eq!(
        paths,
        ["server.user_key", "listen[0].tls", "backend", "health.fall"],
        "{errors}"
    );
}

// ---- configs built in code ----

#[test]
fn a_config_built_in_code_validates() {
    let config = built_in_code();
    assert_eq!(config.validate(), Ok(()));
    let backends = config.resolved_backends();
    assert_eq!(backends[1].name, "dev2");
    assert_eq!(backends[1].port(Protocol::Imap), 143);
}

#[test]
fn a_config_built_in_code_reports_without_locations() {
    let mut config = built_in_code();
    config.backend[1].weight = 0;
    config.backends.imap = 0;
    config.listen.push(Listen {
        tls: TlsMode::Implicit,
        ..Listen::new(Protocol::Imap, addr("127.0.0.1:10993"))
    });
    let errors = config.validate().unwrap_err();
    assert_eq!(
        errors
            .errors()
            .iter()
            .map(ConfigError::path)
            .collect::<Vec<_>>(),
        ["listen[1].tls", "backends.imap", "backend[1].weight"]
    );
    assert!(errors.errors().iter().all(|e| e.location().is_none()));
}

#[test]
fn in_memory_tls_passes_every_check() {
    let mut config = built_in_code();
    config.tls = Some(TlsConfig {
        cert: PemSource::Memory("-----BEGIN CERTIFICATE-----".into()),
        key: PemSource::Memory("-----BEGIN PRIVATE KEY-----".into()),
        min_version: TlsVersion::Tls12,
    });
    config.listen[0].tls = TlsMode::Starttls;
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.check_environment(), Ok(()));
    // Debug never shows in-memory PEM (it may be a private key).
    let debug = format!("{:?}", config.tls);
    assert!(!debug.contains("PRIVATE"), "{debug}");
}

#[test]
fn port_zero_listeners_never_clash() {
    let mut config = built_in_code();
    config.listen = vec![
        Listen {
            plaintext_auth: true,
            ..Listen::new(Protocol::Imap, addr("127.0.0.1:0"))
        },
        Listen {
            plaintext_auth: true,
            ..Listen::new(Protocol::Pop3, addr("127.0.0.1:0"))
        },
    ];
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn effective_cores() {
    let mut config = built_in_code();
    assert!(config.effective_cores() >= 1);
    config.server.cores = 3;
    assert_eq!(config.effective_cores(), 3);
}

// ---- warnings ----

#[test]
fn warnings_flag_likely_mistakes() {
    let text = r#"
[[listen]]
protocol = "imap"
addr = "0.0.0.0:143"

[[listen]]
protocol = "pop3"
addr = "0.0.0.0:110"
plaintext_auth = true
proxy_trusted = ["10.0.0.0/8"]

[[backend]]
name = "a"
host = "h"

[health]
login_user = "probe"

[admin]
listen = "0.0.0.0:9120"
"#;
    let config = Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 5, "{warnings:?}");
    assert!(
        warnings[0].starts_with("warning: listen[0]: clients can never log in here"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with(
            "warning: listen[1].plaintext_auth: passwords may cross the network unencrypted"
        ),
        "{warnings:?}"
    );
    assert!(
        warnings[2].starts_with("warning: listen[1].proxy_trusted: is ignored"),
        "{warnings:?}"
    );
    assert!(
        warnings[3]
            .starts_with("warning: health.login_user: login_user and login_password are ignored"),
        "{warnings:?}"
    );
    assert!(
        warnings[4].starts_with("warning: admin.listen: 0.0.0.0:9120 is not a loopback address"),
        "{warnings:?}"
    );
}

#[test]
fn lmtp_without_tls_or_plaintext_auth_is_not_warned_about() {
    let mut config = built_in_code();
    config.listen = vec![Listen::new(Protocol::Lmtp, addr("127.0.0.1:24"))];
    assert_eq!(config.warnings(), Vec::new());
}

// ---- loading files ----

/// A temporary file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("mailpin-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn load_reads_a_file_and_checks_the_machine() {
    let file = TempFile::new("load-ok", MINIMAL);
    let config = Config::load(&file.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.backend[0].name, "mail1");
}

#[test]
fn load_prefixes_problems_with_the_file_and_includes_machine_checks() {
    let text = minimal_plus("[tls]\ncert = \"/nonexistent/mailpin/cert.pem\"\nkey = \"/nonexistent/mailpin/key.pem\"\n\n[health]\nrise = 0\n");
    let file = TempFile::new("load-bad", &text);
    let errors = Config::load(&file.0).unwrap_err();
    let shown = errors.to_string();
    let name = file.0.display().to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{name}:16:1: health.rise: must be at least 1"),
            format!("{name}:12:1: tls.cert: /nonexistent/mailpin/cert.pem does not exist"),
            format!("{name}:13:1: tls.key: /nonexistent/mailpin/key.pem does not exist"),
        ]
    );
}

#[test]
fn load_reports_an_unreadable_file() {
    let errors = Config::load("/nonexistent/mailpin.toml").unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors
            .to_string()
            .starts_with("cannot read /nonexistent/mailpin.toml: "),
        "{errors}"
    );
}

#[test]
fn load_takes_relative_tls_paths_from_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("mailpin-relative-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let config_path = dir.join("mailpin.toml");
    std::fs::write(
        &config_path,
        minimal_plus("[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n"),
    )
    .unwrap();
    let loaded = Config::load(&config_path);
    let _ = std::fs::remove_dir_all(&dir);
    let config = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.tls.unwrap().cert,
        PemSource::File(dir.join("cert.pem"))
    );
}

#[test]
fn sections_must_be_tables() {
    let errors = errors_of(&format!("server = 5\ntls = \"on\"\n{MINIMAL}"));
    assert_eq!(
        errors
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "server: must be a table (write [server] on its own line)",
            "tls: must be a table (write [tls] on its own line)",
        ]
    );
}

#[test]
fn prelogin_limits_default_and_parse() {
    let config = Config::from_toml_str(MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.limits, LimitsConfig::default());
    assert_eq!(config.limits.literal_max, 16384);
    assert_eq!(config.limits.sasl_max, 32768);
    assert_eq!(config.limits.prelogin_bytes, 262144);
    assert_eq!(config.limits.prelogin_commands, 50);
    let reference = Config::from_toml_str(REFERENCE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reference.limits,
        LimitsConfig::default(),
        "config/mailpin.toml shows the defaults"
    );
    let text = minimal_plus(
        "[limits]\nliteral_max = 4096\nsasl_max = 65536\nprelogin_bytes = 1048576\nprelogin_commands = 5\n",
    );
    let config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.limits,
        LimitsConfig {
            literal_max: 4096,
            sasl_max: 65536,
            prelogin_bytes: 1048576,
            prelogin_commands: 5,
            ..LimitsConfig::default()
        }
    );
}

#[test]
fn prelogin_limits_bad_values_are_named() {
    let errors = errors_of(&minimal_plus(
        "[limits]\nliteral_max = 100\nsasl_max = 2000000\nprelogin_commands = 0\n",
    ));
    assert_eq!(
        errors.errors().iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "limits.literal_max: 100 is out of range (from 1024 to 1048576 bytes; the default is 16384)",
            "limits.sasl_max: 2000000 is out of range (from 1024 to 1048576 bytes; the default is 32768)",
            "limits.prelogin_commands: must be at least 1 (the default is 50)",
        ]
    );
    let error = single_error(&minimal_plus(
        "[server]\nmax_line = 65536\n\n[limits]\nprelogin_bytes = 32768\n",
    ));
    assert_eq!(
        error,
        "limits.prelogin_bytes: 32768 is smaller than server.max_line (65536): a client could not send one whole command line; use at least 65536 (the default is 262144)"
    );
    let error = single_error(&minimal_plus(
        "[limits]\nsasl_max = 524288\nprelogin_bytes = 300000\n",
    ));
    assert_eq!(
        error,
        "limits.prelogin_bytes: 300000 is smaller than limits.sasl_max (524288): a client could not send one whole SASL response; use at least 524288 (the default is 262144)"
    );
    let error = single_error(&minimal_plus(
        "[server]\nmax_line = 65536\n\n[limits]\nprelogin_bytes = 32768\n",
    ));
    assert_eq!(
        error,
        "limits.prelogin_bytes: 32768 is smaller than server.max_line (65536): a client could not send one whole command line; use at least 65536 (the default is 262144)"
    );
    let error = single_error(&minimal_plus("[limits]\nprelogin_bytes = 100000000\n"));
    assert_eq!(
        error,
        "limits.prelogin_bytes: 100000000 is too large (at most 67108864 bytes; the default is 262144)"
    );
    let error = single_error(&minimal_plus("[limits]\nprelogin_commands = 1000000\n"));
    assert_eq!(
        error,
        "limits.prelogin_commands: 1000000 is too large (at most 100000; the default is 50)"
    );
    let errors = errors_of(&minimal_plus("[limits]\nline_max = 10\nsasl_max = -1\n"));
    let shown = errors.to_string();
    assert!(shown.contains("limits.line_max"), "{shown}");
    assert!(shown.contains("limits.sasl_max"), "{shown}");
}

// ---- [limits]: connection and login limits ----

#[test]
fn limits_default_when_absent_and_parse_when_given() {
    let config = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(config.limits, LimitsConfig::default());
    assert_eq!(config.limits.prelogin_per_ip, 100);
    assert_eq!(config.limits.sessions_per_user_ip, 10);
    assert_eq!(config.limits.auth_failure_delay, Duration::from_secs(2));
    let config = Config::from_toml_str(&minimal_plus(
        "[limits]\nprelogin_per_ip = 5\nauth_penalty_max = \"3s\"\ntrusted = [\"10.0.0.0/8\"]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.limits.prelogin_per_ip, 5);
    assert_eq!(config.limits.auth_penalty_max, Duration::from_secs(3));
    assert!(config.limits.is_trusted("10.1.2.3".parse().unwrap()));
    assert!(!config.limits.is_trusted("192.0.2.1".parse().unwrap()));
}

#[test]
fn limits_that_contradict_each_other_are_errors() {
    let e = single_error(&minimal_plus(
        "[limits]\nprelogin_per_ip = 50\nprelogin_total = 10\n",
    ));
    assert!(e.contains("limits.prelogin_per_ip"), "{e}");
    let e = single_error(&minimal_plus(
        "[limits]\nsessions_per_user = 5\nsessions_per_user_ip = 6\n",
    ));
    assert!(e.contains("limits.sessions_per_user_ip"), "{e}");
    let e = single_error(&minimal_plus(
        "[limits]\nauth_failure_delay = \"3s\"\nauth_penalty_max = \"1s\"\n",
    ));
    assert!(e.contains("limits.auth_penalty_max"), "{e}");
    let e = single_error(&minimal_plus("[limits]\nlog_interval = \"0s\"\n"));
    assert!(e.contains("limits.log_interval"), "{e}");
    let e = single_error(&minimal_plus("[limits]\nlogin_queue_timeout = \"0s\"\n"));
    assert!(e.contains("limits.login_queue_timeout"), "{e}");
    let e = single_error(&minimal_plus("[limits]\nprelogin_total = 2000000\n"));
    assert!(e.contains("limits.prelogin_total"), "{e}");
    let e = single_error(&minimal_plus("[limits]\ntrusted = [\"10.0.0.0/33\"]\n"));
    assert!(e.contains("limits.trusted"), "{e}");
}

#[test]
fn log_format_is_text_by_default_json_when_asked_and_nothing_else() {
    assert_eq!(
        Config::from_toml_str(MINIMAL).unwrap().log.format,
        LogFormat::Text
    );
    let reference = Config::from_toml_str(REFERENCE).unwrap();
    assert_eq!(
        reference.log,
        LogConfig::default(),
        "the reference shows the default"
    );
    let json = Config::from_toml_str(&minimal_plus("[log]\nformat = \"json\"\n")).unwrap();
    assert_eq!(json.log.format, LogFormat::Json);
    assert_eq!(
        single_error(&minimal_plus("[log]\nformat = \"xml\"\n")),
        "log.format: unknown variant `xml`, expected `text` or `json`"
    );
    assert!(single_error(&minimal_plus("[log]\nformats = \"json\"\n"))
        .starts_with("log.formats: unknown key"));
}

#[test]
fn sasl_mechanisms_default_and_refusals() {
    let config = built_in_code();
    assert_eq!(
        config.server.sasl_mechanisms,
        [
            "PLAIN",
            "LOGIN",
            "OAUTHBEARER",
            "XOAUTH2",
            "SCRAM-SHA-1",
            "SCRAM-SHA-256"
        ]
    );
    let text =
        minimal_plus("[server]\nsasl_mechanisms = [\"scram-sha-256\", \"PLAIN\", \"PLAIN\"]\n");
    let config = Config::from_toml_str(&text).expect("valid");
    use crate::proto::sasl_passthrough::Mechanism;
    assert_eq!(
        config.server.sasl_mechanisms(),
        [Mechanism::ScramSha256, Mechanism::Plain]
    );
    let errors = errors_of(&minimal_plus(
        "[server]\nsasl_mechanisms = [\"CRAM-MD5\", \"SCRAM-SHA-256-PLUS\", \"GSSAPI\"]\n",
    ));
    let shown: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(shown[0].starts_with("server.sasl_mechanisms: \"CRAM-MD5\" cannot be offered by a proxy: the server speaks first"), "{shown:?}");
    assert!(
        shown[1].contains("channel binding cannot pass through a TLS-terminating proxy"),
        "{shown:?}"
    );
    assert!(shown[2].contains("\"GSSAPI\" is not a mechanism mailpin can pass through (known: PLAIN, LOGIN, OAUTHBEARER, XOAUTH2, SCRAM-SHA-1, SCRAM-SHA-256)"), "{shown:?}");
    assert_eq!(
        single_error(&minimal_plus("[server]\nsasl_mechanisms = []\n")),
        "server.sasl_mechanisms: must list at least one mechanism, or no client could log in"
    );
}
