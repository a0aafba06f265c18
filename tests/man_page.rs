//! The hand-written manual page (`packaging/mailpin.1`) keeps up with the
//! command line: every subcommand that `--help` lists has its own entry
//! (a `.TP` paragraph that starts with its name) and every long option is
//! named, so a new command or flag without documentation fails here.

use std::collections::BTreeSet;
use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mailpin"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run mailpin --help");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The subcommand names in a help text's "Commands:" list (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The long options (`--name`) a help text lists.
fn long_options(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .filter(|w| {
            w.chars()
                .skip(2)
                .all(|c| c.is_ascii_lowercase() || c == '-')
        })
        .collect()
}

fn man_page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/mailpin.1");
    std::fs::read_to_string(path).expect("read packaging/mailpin.1")
}

/// The first word of every `.TP` entry's tag line, roff markup removed.
fn entries(man: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = man.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| {
            let tag = w[1].split_once(' ').map_or("", |(_, rest)| rest);
            tag.trim_start_matches('"')
                .split([' ', '"'])
                .next()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn every_subcommand_has_an_entry_in_the_man_page() {
    let man = man_page();
    let entries = entries(&man);
    let mut commands = subcommands(&help(&[]));
    assert!(commands.contains(&"run".to_string()), "{commands:?}");
    let ctl = subcommands(&help(&["ctl"]));
    assert!(ctl.contains(&"kick".to_string()), "{ctl:?}");
    commands.extend(ctl);
    for command in commands {
        assert!(
            entries.contains(&command),
            "mailpin.1 has no .TP entry for `{command}` (entries: {entries:?})"
        );
    }
}

#[test]
fn every_long_option_is_in_the_man_page() {
    let man = man_page().replace("\\-", "-");
    let mut options = long_options(&help(&[]));
    for sub in [
        vec!["run"],
        vec!["check"],
        vec!["ctl"],
        vec!["ctl", "backend"],
        vec!["ctl", "move"],
    ] {
        options.extend(long_options(&help(&sub)));
    }
    assert!(
        options.contains("--config") && options.contains("--admin"),
        "{options:?}"
    );
    for option in options {
        assert!(man.contains(&option), "mailpin.1 does not mention {option}");
    }
}
