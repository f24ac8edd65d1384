//! Message markdown: `parse` and `mentions` on any text, never a panic, and the spans never hold
//! more characters than the input (markers and link targets are removed, nothing is added).
//! Bytes that are not UTF-8 are converted lossily, as a message display would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use securecomm_node::markdown::{Block, mentions, parse};

fn check(text: &str) {
    let shown: usize = parse(text)
        .iter()
        .map(|b| match b {
            Block::Line(l) => l.spans.iter().map(|s| s.text.chars().count()).sum(),
            Block::Code { lang, text, .. } => {
                text.chars().count() + lang.as_deref().map_or(0, |l| l.chars().count())
            }
        })
        .sum();
    assert!(shown <= text.chars().count());
    let found = mentions(text);
    for (i, m) in found.iter().enumerate() {
        assert!(!found[..i].contains(m), "duplicate mention {m:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
