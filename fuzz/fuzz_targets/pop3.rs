//! Fuzzes the POP3 command and reply parsers (`proto::pop3`), one line
//! per input line.
//!
//! A parsed command has a 3–4 letter upper-case keyword, and keyword and
//! arguments joined by single spaces give the line back; PASS keeps the
//! rest of the line as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpin::proto::pop3;
use mailpin_fuzz::MAX_COMMAND_LINE;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_COMMAND_LINE {
            continue;
        }
        if let Some(command) = pop3::parse_command(line) {
            assert!((3..=4).contains(&command.keyword.len()));
            assert!(command.keyword.bytes().all(|b| b.is_ascii_uppercase()));
            let mut rebuilt = command.keyword.as_bytes().to_vec();
            for arg in &command.args {
                rebuilt.push(b' ');
                rebuilt.extend_from_slice(arg);
            }
            assert!(
                rebuilt.eq_ignore_ascii_case(line),
                "command does not give the line back"
            );
        }
        if let Some(password) = pop3::pass_argument(line) {
            assert_eq!(password, &line[5..]);
        }
        let _ = pop3::reply_status(line);
    }
});
