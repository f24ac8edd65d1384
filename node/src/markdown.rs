//! The Discord-flavoured markdown subset messages use: `**bold**`, `*italic*` / `_italic_`,
//! `~~strike~~`, `` `code` ``, fenced code blocks, `> quotes`, links and mentions.
//!
//! Parsing is total (any input gives a result, never a panic) and linear in the input. Links are
//! recognised so they can be shown and copied, but the app never fetches them: no previews, no
//! remote images, nothing that tells a third party a message was read.

/// Inline style flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    /// `**bold**`
    pub bold: bool,
    /// `*italic*` or `_italic_`
    pub italic: bool,
    /// `~~strike~~`
    pub strike: bool,
    /// `` `code` ``
    pub code: bool,
}

/// A run of text with one style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The text, without markers.
    pub text: String,
    /// Its style.
    pub style: Style,
    /// The URL if this span is a link (shown, never fetched).
    pub link: Option<String>,
    /// The mention if this span is one; its text is the mention as written.
    pub mention: Option<Mention>,
}

/// A mention in a message, Discord's syntax: `<@USER>` (user root key, 64 lowercase hex),
/// `<@&ROLE>` (role id, decimal u64), `@everyone`, `@here`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mention {
    /// `<@USER>`: a member by root key (64 lowercase hex digits).
    User(String),
    /// `<@&ROLE>`: every member with a role, by role id.
    Role(u64),
    /// `@everyone`: every member who can read the channel.
    Everyone,
    /// `@here`: the members of the channel who are online.
    Here,
}

/// Every mention in `text`, in order, without duplicates; mentions inside inline code or code
/// blocks do not count.
pub fn mentions(text: &str) -> Vec<Mention> {
    let mut out: Vec<Mention> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for block in parse(text) {
        let spans = match block {
            Block::Line(spans) | Block::Quote(spans) => spans,
            Block::Code { .. } => continue,
        };
        for m in spans.into_iter().filter_map(|s| s.mention) {
            if seen.insert(m.clone()) {
                out.push(m);
            }
        }
    }
    out
}

/// A block of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A line of inline text.
    Line(Vec<Span>),
    /// A `> quoted` line.
    Quote(Vec<Span>),
    /// A fenced code block, with its language tag if any.
    Code {
        /// The language after the opening fence.
        lang: Option<String>,
        /// The code, verbatim.
        text: String,
    },
}

/// Parses a message into blocks.
pub fn parse(input: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = input.split('\n').peekable();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("```") {
            let lang = Some(rest.trim())
                .filter(|l| !l.is_empty() && !l.contains(' '))
                .map(str::to_owned);
            let mut code = Vec::new();
            let mut closed = false;
            for l in lines.by_ref() {
                if l.trim_end() == "```" {
                    closed = true;
                    break;
                }
                code.push(l);
            }
            if closed {
                blocks.push(Block::Code {
                    lang,
                    text: code.join("\n"),
                });
            } else {
                // An unclosed fence is plain text, as Discord shows it.
                blocks.push(Block::Line(inline(line)));
                blocks.extend(code.into_iter().map(|l| Block::Line(inline(l))));
            }
        } else if let Some(rest) = line.strip_prefix("> ") {
            blocks.push(Block::Quote(inline(rest)));
        } else {
            blocks.push(Block::Line(inline(line)));
        }
    }
    blocks
}

/// Flips one style flag.
type Toggle = fn(&mut Style);

const MARKERS: [(&str, Toggle); 5] = [
    ("**", |s| s.bold = !s.bold),
    ("~~", |s| s.strike = !s.strike),
    ("*", |s| s.italic = !s.italic),
    ("_", |s| s.italic = !s.italic),
    ("`", |s| s.code = !s.code),
];

/// Parses one line of inline markdown. A marker toggles a style only if it is closed later on the
/// line; otherwise it is literal text.
pub fn inline(line: &str) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut style = Style::default();
    let mut text = String::new();
    let mut rest = line;
    let mut open: Vec<&str> = Vec::new();
    let flush = |text: &mut String, style: Style, spans: &mut Vec<Span>| {
        if !text.is_empty() {
            push_with_links(spans, std::mem::take(text), style);
        }
    };
    'outer: while let Some(c) = rest.chars().next() {
        for (marker, toggle) in MARKERS {
            if !rest.starts_with(marker) || (style.code && marker != "`") {
                continue;
            }
            let after = &rest[marker.len()..];
            let closing = open.last() == Some(&marker);
            if closing || (!after.starts_with(marker) && after.contains(marker)) {
                flush(&mut text, style, &mut spans);
                toggle(&mut style);
                if closing {
                    open.pop();
                } else {
                    open.push(marker);
                }
                rest = after;
                continue 'outer;
            }
        }
        text.push(c);
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut text, style, &mut spans);
    spans
}

fn push_with_links(spans: &mut Vec<Span>, text: String, style: Style) {
    let plain = |text: &str| Span {
        text: text.into(),
        style,
        link: None,
        mention: None,
    };
    if style.code {
        spans.push(plain(&text));
        return;
    }
    let mut rest = text.as_str();
    let mut from = 0;
    while from < rest.len() {
        let tail = &rest[from..];
        let prev = rest[..from].chars().next_back();
        let found = if tail.starts_with("https://") || tail.starts_with("http://") {
            let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
            Some((end, Some(tail[..end].to_owned()), None))
        } else {
            mention_at(tail, prev).map(|(len, m)| (len, None, Some(m)))
        };
        match found {
            Some((len, link, mention)) => {
                if from > 0 {
                    spans.push(plain(&rest[..from]));
                }
                spans.push(Span {
                    text: tail[..len].into(),
                    style,
                    link,
                    mention,
                });
                rest = &tail[len..];
                from = 0;
            }
            None => from += tail.chars().next().map_or(1, char::len_utf8),
        }
    }
    if !rest.is_empty() {
        spans.push(plain(rest));
    }
}

/// The mention `tail` starts with, and its length in bytes. `prev` is the character before it:
/// `@everyone` and `@here` count only as whole words.
fn mention_at(tail: &str, prev: Option<char>) -> Option<(usize, Mention)> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    if let Some(id) = tail.strip_prefix("<@&") {
        let digits = id.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && id[digits..].starts_with('>') {
            let role = id[..digits].parse().ok()?;
            return Some((3 + digits + 1, Mention::Role(role)));
        }
        return None;
    }
    if let Some(key) = tail.strip_prefix("<@") {
        let hex = key
            .bytes()
            .take_while(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .count();
        if hex == 64 && key[hex..].starts_with('>') {
            return Some((2 + hex + 1, Mention::User(key[..hex].to_owned())));
        }
        return None;
    }
    if prev.is_some_and(word) || !tail.starts_with('@') {
        return None;
    }
    for (name, m) in [("@everyone", Mention::Everyone), ("@here", Mention::Here)] {
        if let Some(after) = tail.strip_prefix(name)
            && !after.chars().next().is_some_and(word)
        {
            return Some((name.len(), m));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain(spans: &[Span]) -> String {
        spans.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn styles() {
        let s = inline("a **b** *c* ~~d~~ `e*f*`");
        assert_eq!(plain(&s), "a b c d e*f*");
        assert!(s.iter().any(|x| x.text == "b" && x.style.bold));
        assert!(s.iter().any(|x| x.text == "c" && x.style.italic));
        assert!(s.iter().any(|x| x.text == "d" && x.style.strike));
        assert!(
            s.iter()
                .any(|x| x.text == "e*f*" && x.style.code && !x.style.italic)
        );
    }

    #[test]
    fn unclosed_markers_are_literal() {
        assert_eq!(
            inline("2 * 3 = 6"),
            vec![Span {
                text: "2 * 3 = 6".into(),
                style: Style::default(),
                link: None,
                mention: None,
            }]
        );
        assert_eq!(plain(&inline("**bold")), "**bold");
    }

    #[test]
    fn links_are_recognised_not_fetched() {
        let s = inline("see https://example.org/x?y=1 now");
        assert_eq!(s[1].link.as_deref(), Some("https://example.org/x?y=1"));
        assert_eq!(plain(&s), "see https://example.org/x?y=1 now");
        assert!(inline("`https://a.b`")[0].link.is_none());
    }

    #[test]
    fn blocks() {
        let b = parse("hi\n> quoted *x*\n```rust\nfn main() {}\n```\nend");
        assert_eq!(b.len(), 4);
        assert!(matches!(&b[1], Block::Quote(s) if plain(s) == "quoted x"));
        assert_eq!(
            b[2],
            Block::Code {
                lang: Some("rust".into()),
                text: "fn main() {}".into()
            }
        );
        let unclosed = parse("```\ncode");
        assert!(matches!(&unclosed[0], Block::Line(_)));
    }

    #[test]
    fn mentions_in_order_without_duplicates_or_code() {
        let key = "ab".repeat(32);
        let text = format!(
            "hi <@{key}> and <@&42>, @everyone @here <@{key}> `<@&7>`\n```\n@here <@&8>\n```\nmail@here.org"
        );
        assert_eq!(
            mentions(&text),
            vec![
                Mention::User(key.clone()),
                Mention::Role(42),
                Mention::Everyone,
                Mention::Here,
            ]
        );
        let s = inline(&format!("x <@{key}> y"));
        assert_eq!(s[1].mention, Some(Mention::User(key.clone())));
        assert_eq!(s[1].text, format!("<@{key}>"));
        // Not mentions: upper-case or short keys, role ids beyond u64, no closing bracket.
        assert!(mentions(&format!("<@{}>", key.to_uppercase())).is_empty());
        assert!(mentions("<@abc> <@&99999999999999999999> <@&1 @everyones").is_empty());
    }

    proptest! {
        #[test]
        fn never_panics_and_keeps_letters(s in "[a-z *_~`>\n:/hts.]{0,80}") {
            let blocks = parse(&s);
            let letters = |t: &str| t.chars().filter(|c| c.is_ascii_lowercase()).count();
            let out: usize = blocks.iter().map(|b| match b {
                Block::Line(sp) | Block::Quote(sp) => letters(&plain(sp)),
                Block::Code { lang, text } => letters(text) + lang.as_deref().map_or(0, letters),
            }).sum();
            prop_assert_eq!(out, letters(&s));
        }
    }
}
