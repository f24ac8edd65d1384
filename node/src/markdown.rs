//! Message markdown as Discord users write it: a pure model ([`Block`], [`Line`], [`Span`]) that
//! the app draws, plus [`mentions`] for the node (who a message notifies).
//!
//! | Written                         | Meaning                                        |
//! |---------------------------------|------------------------------------------------|
//! | `**bold**`, `*it*`, `_it_`      | bold, italics                                  |
//! | `__under__`, `~~strike~~`       | underline, strikethrough                       |
//! | `` `code` ``, ``` ``co`de`` ``` | inline code (no markdown inside)               |
//! | ```` ```lang ```` ... ```` ``` ````     | code block with an optional language   |
//! | `> q`, `>>> q`                  | quote this line, quote every line from here    |
//! | `\|\|hidden\|\|`                | spoiler                                        |
//! | `- a`, `* a`, `1. a`            | list item; two or more leading spaces nest it  |
//! | `# h`, `## h`, `### h`, `-# s`  | headers, subtext                               |
//! | `[text](https://target)`        | masked link (http and https targets only)      |
//! | `https://...`                   | bare link                                      |
//! | `<@KEY>`, `<@&ROLE>`, `@everyone`, `@here` | mentions                            |
//! | `\*`                            | a literal `*` (any ASCII punctuation)          |
//!
//! # Design
//!
//! * **Total and linear.** Any input gives a result, never a panic, in time linear in its
//!   length. A line is read in two passes: `tokens` splits it into text, code, links, mentions
//!   and style markers (every search for a closing `` ` ``, `]` or `)` remembers its answer
//!   for the next one, so failing searches do not rescan the line), then `resolve` decides which
//!   markers open and close a style with one backward pass that records, for each marker,
//!   whether a marker that could close it follows. A marker with no possible closer is text.
//! * **Styles are independent flags**, not a tree: `**a *b** c*` is bold `a `, bold italic `b`,
//!   italic ` c`. That is what keeps resolution linear and is close enough to what Discord shows.
//! * **Inline styles end at the end of a line**, unlike Discord, where `**a\nb**` is bold on
//!   both lines. Display rows are lines, so a style that crosses lines would need state across
//!   rows.
//! * **Links are shown, never fetched**: no previews, no remote images, nothing that tells a
//!   third party a message was read. A masked link keeps its real target in [`Span::link`] so
//!   the app can show it before anything opens it; targets other than `http`/`https` leave the
//!   whole `[text](target)` as plain text.
//! * **Spans never add text**: the concatenated text of every span is at most the input (markers,
//!   escapes and link targets are removed, nothing is inserted), which the property tests check.

use std::collections::HashSet;

/// Inline style flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    /// `**bold**`
    pub bold: bool,
    /// `*italic*` or `_italic_`
    pub italic: bool,
    /// `__underline__`
    pub underline: bool,
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
    /// The URL if this span is a link (shown, never fetched). For a masked link `[text](url)`
    /// the text is `text` and this is the real target.
    pub link: Option<String>,
    /// The mention if this span is one; its text is the mention as written.
    pub mention: Option<Mention>,
    /// The spoiler this span is hidden in, numbered from 0 in the order the spoilers open in
    /// the message (several spans can share one spoiler: `||a **b**||`).
    pub spoiler: Option<u32>,
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

/// What kind of line a [`Line`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Ordinary text.
    Text,
    /// `# `, `## ` or `### `: a header of level 1 to 3.
    Header(u8),
    /// `-# `: small, dim text.
    Subtext,
    /// A list item: `- ` or `* ` (no number) or `1. ` (the number as written).
    Item {
        /// 0 at the margin, 1 when indented by two or more spaces.
        depth: u8,
        /// The number of a numbered item.
        number: Option<u64>,
    },
}

/// One line of text of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Header, list item, ...
    pub kind: LineKind,
    /// Whether it is quoted (`> ` or after `>>> `).
    pub quote: bool,
    /// Its styled spans.
    pub spans: Vec<Span>,
}

/// A block of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// A line of inline text.
    Line(Line),
    /// A fenced code block, with its language tag if any.
    Code {
        /// The language after the opening fence.
        lang: Option<String>,
        /// The code, verbatim.
        text: String,
        /// Whether it is inside a `>>> ` quote.
        quote: bool,
    },
}

/// Every mention in `text`, in order, without duplicates; mentions inside inline code or code
/// blocks do not count.
pub fn mentions(text: &str) -> Vec<Mention> {
    let mut out: Vec<Mention> = Vec::new();
    let mut seen = HashSet::new();
    for block in parse(text) {
        let Block::Line(line) = block else { continue };
        for m in line.spans.into_iter().filter_map(|s| s.mention) {
            if seen.insert(m.clone()) {
                out.push(m);
            }
        }
    }
    out
}

/// Parses a message into blocks.
pub fn parse(input: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut spoilers = 0u32;
    let mut quote_rest = false;
    let mut lines = input.split('\n');
    while let Some(raw) = lines.next() {
        let (quote, line) = if quote_rest {
            (true, raw)
        } else if let Some(rest) = raw.strip_prefix(">>> ") {
            quote_rest = true;
            (true, rest)
        } else if let Some(rest) = raw.strip_prefix("> ") {
            // A single-line quote cannot open a code block: its next lines are not quoted.
            blocks.push(text_line(rest, true, &mut spoilers));
            continue;
        } else {
            (false, raw)
        };
        match line.strip_prefix("```") {
            Some(rest) => code_block(rest, quote, &mut lines, &mut blocks, &mut spoilers),
            None => blocks.push(text_line(line, quote, &mut spoilers)),
        }
    }
    blocks
}

/// Parses one line of inline markdown (no block syntax). Spoilers are numbered from 0.
pub fn inline(line: &str) -> Vec<Span> {
    resolve(tokens(line), &mut 0)
}

/// A code block opened by a line starting with ```` ``` ```` (`rest` is what follows the fence).
/// It ends at a line ending with ```` ``` ````; unclosed, its lines are plain text, as Discord
/// shows them.
fn code_block<'a>(
    rest: &str,
    quote: bool,
    lines: &mut impl Iterator<Item = &'a str>,
    blocks: &mut Vec<Block>,
    spoilers: &mut u32,
) {
    // One line: ```code```
    if let Some(text) = rest.trim_end().strip_suffix("```")
        && !text.is_empty()
    {
        blocks.push(Block::Code {
            lang: None,
            text: text.to_owned(),
            quote,
        });
        return;
    }
    let tag = rest.trim();
    let is_lang = !tag.is_empty()
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-#_.".contains(c));
    let lang = is_lang.then(|| tag.to_owned());
    let mut code: Vec<&str> = Vec::new();
    if !is_lang && !tag.is_empty() {
        code.push(rest);
    }
    let mut seen: Vec<&str> = Vec::new();
    for l in lines.by_ref() {
        seen.push(l);
        if let Some(last) = l.trim_end().strip_suffix("```") {
            if !last.is_empty() {
                code.push(last);
            }
            blocks.push(Block::Code {
                lang,
                text: code.join("\n"),
                quote,
            });
            return;
        }
        code.push(l);
    }
    let fence = format!("```{rest}");
    blocks.push(text_line(&fence, quote, spoilers));
    blocks.extend(seen.into_iter().map(|l| text_line(l, quote, spoilers)));
}

/// One line of text: its kind from its start, then its inline markdown.
fn text_line(line: &str, quote: bool, spoilers: &mut u32) -> Block {
    let (kind, rest) = line_kind(line);
    Block::Line(Line {
        kind,
        quote,
        spans: resolve(tokens(rest), spoilers),
    })
}

fn line_kind(line: &str) -> (LineKind, &str) {
    if let Some(rest) = line.strip_prefix("-# ") {
        return (LineKind::Subtext, rest);
    }
    for (level, prefix) in [(3, "### "), (2, "## "), (1, "# ")] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return (LineKind::Header(level), rest);
        }
    }
    let body = line.trim_start_matches(' ');
    let depth = u8::from(line.len() - body.len() >= 2);
    if let Some(rest) = body.strip_prefix("- ").or_else(|| body.strip_prefix("* ")) {
        return (
            LineKind::Item {
                depth,
                number: None,
            },
            rest,
        );
    }
    let digits = body.bytes().take(10).take_while(u8::is_ascii_digit).count();
    if (1..10).contains(&digits)
        && let Some(rest) = body[digits..].strip_prefix(". ")
        && let Ok(n) = body[..digits].parse()
    {
        return (
            LineKind::Item {
                depth,
                number: Some(n),
            },
            rest,
        );
    }
    (LineKind::Text, line)
}

/// A style marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Bold,
    Star,
    Under,
    Underline,
    Strike,
    Spoiler,
}

const MARKERS: [(&str, Marker); 6] = [
    ("**", Marker::Bold),
    ("__", Marker::Underline),
    ("~~", Marker::Strike),
    ("||", Marker::Spoiler),
    ("*", Marker::Star),
    ("_", Marker::Under),
];

impl Marker {
    fn index(self) -> usize {
        self as usize
    }
}

/// A piece of a line after the first pass.
#[derive(Debug)]
enum Tok {
    /// Literal text.
    Text(String),
    /// Inline code, verbatim.
    Code(String),
    /// A link: its text and target.
    Link(String, String),
    /// A mention, as written.
    Mention(String, Mention),
    /// A style marker as written, whether it can open and close a style.
    Marker {
        marker: Marker,
        raw: &'static str,
        open: bool,
        close: bool,
    },
}

/// The next position at or after some offset of a byte matching a test, remembered: the
/// offsets asked about only grow along a line, so asking again before the last answer reuses
/// it, and the line is scanned about once per test however many times it is asked.
struct Next {
    test: fn(u8) -> bool,
    /// The last offset searched from and what was found.
    last: Option<(usize, Option<usize>)>,
}

impl Next {
    fn new(test: fn(u8) -> bool) -> Self {
        Self { test, last: None }
    }

    fn from(&mut self, hay: &[u8], from: usize) -> Option<usize> {
        match self.last {
            Some((at, Some(p))) if at <= from && from <= p => return Some(p),
            Some((at, None)) if at <= from => return None,
            _ => {}
        }
        let found = hay
            .get(from..)
            .and_then(|h| h.iter().position(|&b| (self.test)(b)))
            .map(|p| p + from);
        self.last = Some((from, found));
        found
    }
}

/// First pass: text, code, links, mentions and markers.
fn tokens(line: &str) -> Vec<Tok> {
    let bytes = line.as_bytes();
    let mut toks: Vec<Tok> = Vec::new();
    let mut text = String::new();
    let mut next_tick = Next::new(|b| b == b'`');
    // Where a search for a closing `` `` `` failed: none can succeed after it.
    let mut no_double_after = usize::MAX;
    let mut next_close = Next::new(|b| b == b']');
    let mut next_open = Next::new(|b| b == b'[');
    let mut next_paren = Next::new(|b| b == b')');
    // Link targets are printable ASCII: no spaces, no look-alike letters.
    let mut next_unprintable = Next::new(|b| b <= b' ' || b >= 0x7f);
    let mut i = 0;
    'scan: while let Some(c) = line[i..].chars().next() {
        let rest = &line[i..];
        let prev = line[..i].chars().next_back();
        match c {
            '\\' => {
                if let Some(e) = rest[1..].chars().next().filter(char::is_ascii_punctuation) {
                    text.push(e);
                    i += 2;
                    continue;
                }
            }
            '`' => {
                // ``code with ` inside`` or `code`.
                if rest.starts_with("``") && i < no_double_after {
                    match rest[2..].find("``") {
                        Some(end) if end > 0 => {
                            flush(&mut toks, &mut text);
                            toks.push(Tok::Code(rest[2..2 + end].to_owned()));
                            i += 2 + end + 2;
                            continue;
                        }
                        Some(_) => {}
                        None => no_double_after = i,
                    }
                }
                if let Some(end) = next_tick.from(bytes, i + 1).filter(|&e| e > i + 1) {
                    flush(&mut toks, &mut text);
                    toks.push(Tok::Code(line[i + 1..end].to_owned()));
                    i = end + 1;
                    continue;
                }
            }
            '[' => {
                if let Some((len, label, url)) = masked_link(
                    line,
                    i,
                    [
                        &mut next_close,
                        &mut next_open,
                        &mut next_paren,
                        &mut next_unprintable,
                    ],
                ) {
                    flush(&mut toks, &mut text);
                    toks.push(Tok::Link(label, url));
                    i += len;
                    continue;
                }
            }
            'h' if !prev.is_some_and(char::is_alphanumeric)
                && (rest.starts_with("https://") || rest.starts_with("http://")) =>
            {
                let end = bare_link_end(rest);
                if end > rest.find("//").map_or(0, |p| p + 2) {
                    flush(&mut toks, &mut text);
                    toks.push(Tok::Link(rest[..end].to_owned(), rest[..end].to_owned()));
                    i += end;
                    continue;
                }
            }
            '<' | '@' => {
                if let Some((len, m)) = mention_at(rest, prev) {
                    flush(&mut toks, &mut text);
                    toks.push(Tok::Mention(rest[..len].to_owned(), m));
                    i += len;
                    continue;
                }
            }
            '*' | '_' | '~' | '|' => {
                for (raw, marker) in MARKERS {
                    if !rest.starts_with(raw) {
                        continue;
                    }
                    let next = rest[raw.len()..].chars().next();
                    let space = |c: Option<char>| c.is_none_or(char::is_whitespace);
                    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
                    let (open, close) = match marker {
                        Marker::Spoiler => (true, true),
                        // `snake_case_names` stay as written.
                        Marker::Under => (!space(next) && !word(prev), !space(prev) && !word(next)),
                        _ => (!space(next), !space(prev)),
                    };
                    flush(&mut toks, &mut text);
                    toks.push(Tok::Marker {
                        marker,
                        raw,
                        open,
                        close,
                    });
                    i += raw.len();
                    continue 'scan;
                }
            }
            _ => {}
        }
        text.push(c);
        i += c.len_utf8();
    }
    flush(&mut toks, &mut text);
    toks
}

fn flush(toks: &mut Vec<Tok>, text: &mut String) {
    if !text.is_empty() {
        toks.push(Tok::Text(std::mem::take(text)));
    }
}

/// `[label](http(s)://target)` at byte `at` of `line`: its length, label and target. The label
/// holds no brackets; the target is printable ASCII without spaces or `)`.
fn masked_link(line: &str, at: usize, next: [&mut Next; 4]) -> Option<(usize, String, String)> {
    let bytes = line.as_bytes();
    let [close, open, paren, unprintable] = next;
    let end = close.from(bytes, at + 1)?;
    if open.from(bytes, at + 1).is_some_and(|o| o < end) || bytes.get(end + 1) != Some(&b'(') {
        return None;
    }
    let target_at = end + 2;
    let target_end = paren.from(bytes, target_at)?;
    if unprintable
        .from(bytes, target_at)
        .is_some_and(|s| s < target_end)
    {
        return None;
    }
    let label = line.get(at + 1..end)?;
    let target = line.get(target_at..target_end)?;
    let scheme = ["https://", "http://"]
        .into_iter()
        .find(|s| target.starts_with(s))?;
    let well_formed = target.len() > scheme.len() && !label.trim().is_empty();
    well_formed.then(|| (target_end + 1 - at, label.to_owned(), target.to_owned()))
}

/// Where a bare link starting `rest` ends: at whitespace, without trailing punctuation (a
/// sentence's full stop) or a `)` it does not open.
fn bare_link_end(rest: &str) -> usize {
    let mut end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let url = &rest[..end];
    let trimmed = url.trim_end_matches(['.', ',', ':', ';', '!', '?', '"', '\'']);
    end = trimmed.len();
    if trimmed.ends_with(')') && trimmed.matches('(').count() < trimmed.matches(')').count() {
        end -= 1;
    }
    end
}

/// The mention `tail` starts with, and its length in bytes. `prev` is the character before it:
/// `@everyone` and `@here` count only as whole words.
fn mention_at(tail: &str, prev: Option<char>) -> Option<(usize, Mention)> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    if let Some(id) = tail.strip_prefix("<@&") {
        let digits = id.bytes().take(21).take_while(u8::is_ascii_digit).count();
        if digits > 0 && id[digits..].starts_with('>') {
            let role = id[..digits].parse().ok()?;
            return Some((3 + digits + 1, Mention::Role(role)));
        }
        return None;
    }
    if let Some(key) = tail.strip_prefix("<@") {
        let hex = key
            .bytes()
            .take(65)
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

/// Second pass: which markers open and close styles, and the spans that result.
fn resolve(toks: Vec<Tok>, spoilers: &mut u32) -> Vec<Span> {
    // closer_after[i]: a marker of the same kind that can close follows token i.
    let mut closer_after = vec![false; toks.len()];
    let mut seen = [false; MARKERS.len()];
    for (i, t) in toks.iter().enumerate().rev() {
        if let Tok::Marker { marker, close, .. } = t {
            closer_after[i] = seen[marker.index()];
            seen[marker.index()] |= close;
        }
    }
    let mut spans: Vec<Span> = Vec::new();
    // Pieces of text emitted so far, and for each open marker how many there were when it opened
    // (to tell an empty pair).
    let mut pushed = 0usize;
    let mut open: [Option<usize>; MARKERS.len()] = [None; MARKERS.len()];
    let mut spoiler: Option<u32> = None;
    let style = |open: &[Option<usize>; MARKERS.len()], code: bool| Style {
        bold: open[Marker::Bold.index()].is_some(),
        italic: open[Marker::Star.index()].is_some() || open[Marker::Under.index()].is_some(),
        underline: open[Marker::Underline.index()].is_some(),
        strike: open[Marker::Strike.index()].is_some(),
        code,
    };
    for (i, t) in toks.into_iter().enumerate() {
        let (text, code, link, mention) = match t {
            Tok::Text(s) => (s, false, None, None),
            Tok::Code(s) => (s, true, None, None),
            Tok::Link(label, url) => (label, false, Some(url), None),
            Tok::Mention(raw, m) => (raw, false, None, Some(m)),
            Tok::Marker {
                marker,
                raw,
                open: can_open,
                close,
            } => {
                let k = marker.index();
                match open[k] {
                    Some(at) if close => {
                        open[k] = None;
                        if marker == Marker::Spoiler {
                            spoiler = None;
                        }
                        if at == pushed {
                            // `****`, `||||`: nothing inside, shown as written.
                            if marker == Marker::Spoiler {
                                *spoilers = spoilers.saturating_sub(1);
                            }
                            let s = style(&open, false);
                            push(&mut spans, format!("{raw}{raw}"), s, spoiler);
                            pushed += 1;
                        }
                        continue;
                    }
                    None if can_open && closer_after[i] => {
                        open[k] = Some(pushed);
                        if marker == Marker::Spoiler {
                            spoiler = Some(*spoilers);
                            *spoilers = spoilers.saturating_add(1);
                        }
                        continue;
                    }
                    _ => (raw.to_owned(), false, None, None),
                }
            }
        };
        let s = style(&open, code);
        pushed += 1;
        if link.is_some() || mention.is_some() {
            spans.push(Span {
                text,
                style: s,
                link,
                mention,
                spoiler,
            });
        } else {
            push(&mut spans, text, s, spoiler);
        }
    }
    spans
}

/// Appends text, merged into the last span when that is plain text of the same style.
fn push(spans: &mut Vec<Span>, text: String, style: Style, spoiler: Option<u32>) {
    if let Some(last) = spans.last_mut()
        && last.style == style
        && last.spoiler == spoiler
        && last.link.is_none()
        && last.mention.is_none()
    {
        last.text.push_str(&text);
        return;
    }
    spans.push(Span {
        text,
        style,
        link: None,
        mention: None,
        spoiler,
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;

    fn plain(spans: &[Span]) -> String {
        spans.iter().map(|s| s.text.as_str()).collect()
    }

    fn lines(blocks: &[Block]) -> Vec<&Line> {
        blocks
            .iter()
            .filter_map(|b| match b {
                Block::Line(l) => Some(l),
                Block::Code { .. } => None,
            })
            .collect()
    }

    fn text(s: &str) -> Span {
        Span {
            text: s.into(),
            style: Style::default(),
            link: None,
            mention: None,
            spoiler: None,
        }
    }

    #[test]
    fn styles() {
        let s = inline("a **b** *c* ~~d~~ `e*f*` __g__ _h_");
        assert_eq!(plain(&s), "a b c d e*f* g h");
        let find = |t: &str| s.iter().find(|x| x.text == t).map(|x| x.style);
        assert_eq!(
            find("b"),
            Some(Style {
                bold: true,
                ..Style::default()
            })
        );
        assert!(find("c").is_some_and(|s| s.italic));
        assert!(find("d").is_some_and(|s| s.strike));
        assert!(find("e*f*").is_some_and(|s| s.code && !s.italic));
        assert!(find("g").is_some_and(|s| s.underline && !s.italic));
        assert!(find("h").is_some_and(|s| s.italic && !s.underline));
    }

    #[test]
    fn combined_styles() {
        let s = inline("***both*** ___u and i___ **a *b** c*");
        let find = |t: &str| s.iter().find(|x| x.text == t).map(|x| x.style);
        assert!(find("both").is_some_and(|s| s.bold && s.italic));
        assert!(find("u and i").is_some_and(|s| s.underline && s.italic));
        assert!(find("b").is_some_and(|s| s.bold && s.italic));
        assert!(find(" c").is_some_and(|s| s.italic && !s.bold));
    }

    #[test]
    fn unclosed_markers_are_literal() {
        assert_eq!(inline("2 * 3 = 6"), vec![text("2 * 3 = 6")]);
        assert_eq!(inline("2 * 3 * 4"), vec![text("2 * 3 * 4")]);
        assert_eq!(plain(&inline("**bold")), "**bold");
        assert_eq!(plain(&inline("a ~ b || c")), "a ~ b || c");
        assert_eq!(inline("****"), vec![text("****")]);
        assert_eq!(inline("||||"), vec![text("||||")]);
    }

    #[test]
    fn snake_case_is_not_italic() {
        assert_eq!(
            inline("call some_var_name now"),
            vec![text("call some_var_name now")]
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(inline(r"\*not italic\*"), vec![text("*not italic*")]);
        assert_eq!(inline(r"a \\ b \q"), vec![text(r"a \ b \q")]);
        assert_eq!(inline(r"\||x\||"), vec![text("||x||")]);
        let b = parse("\\# not a header\n\\> not a quote\n\\- no item");
        for l in lines(&b) {
            assert_eq!((l.kind, l.quote), (LineKind::Text, false));
        }
        assert_eq!(plain(&lines(&b)[0].spans), "# not a header");
        assert!(mentions(r"\@everyone").is_empty());
    }

    #[test]
    fn spoilers_are_numbered_per_message() {
        let b = parse("||a **b**|| and ||c||\n||d||");
        let l = lines(&b);
        let hidden: Vec<(&str, Option<u32>)> = l
            .iter()
            .flat_map(|l| l.spans.iter())
            .map(|s| (s.text.as_str(), s.spoiler))
            .collect();
        assert_eq!(
            hidden,
            vec![
                ("a ", Some(0)),
                ("b", Some(0)),
                (" and ", None),
                ("c", Some(1)),
                ("d", Some(2))
            ]
        );
    }

    #[test]
    fn links_are_recognised_not_fetched() {
        let s = inline("see https://example.org/x?y=1 now");
        assert_eq!(s[1].link.as_deref(), Some("https://example.org/x?y=1"));
        assert_eq!(plain(&s), "see https://example.org/x?y=1 now");
        assert!(inline("`https://a.b`")[0].link.is_none());
        let s = inline("(at https://a.b/c).");
        assert_eq!(s[1].link.as_deref(), Some("https://a.b/c"));
        assert_eq!(plain(&s), "(at https://a.b/c).");
        assert!(inline("https:// alone").iter().all(|s| s.link.is_none()));
    }

    #[test]
    fn masked_links_keep_their_target() {
        let s = inline("read [the docs](https://example.org/docs?a=1) now");
        assert_eq!(plain(&s), "read the docs now");
        assert_eq!(s[1].text, "the docs");
        assert_eq!(s[1].link.as_deref(), Some("https://example.org/docs?a=1"));
        let b = inline("**[bold](http://x.y)**");
        assert!(b[0].style.bold && b[0].link.as_deref() == Some("http://x.y"));
        // Other schemes, spaces, empty labels, non-ASCII targets: no masked link, the text as
        // written (a target that is an http(s) URL is still a bare link).
        for not in [
            "[x](javascript:alert(1))",
            "[x](file:///etc/passwd)",
            "[x](https://a b)",
            "[](https://a.b)",
            "[x] (https://a.b)",
            "[x](https://)",
            "[x](https://\u{430}pple.com)",
        ] {
            let s = inline(not);
            assert!(
                s.iter()
                    .all(|s| s.link.as_ref().is_none_or(|l| *l == s.text)),
                "{not}: {s:?}"
            );
            assert_eq!(plain(&s), not);
        }
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
        assert!(mentions(&format!("<@{key}0>")).is_empty());
        assert!(mentions("<@abc> <@&99999999999999999999> <@&1 @everyones").is_empty());
        assert_eq!(
            mentions("> @here\n>>> **<@&3>**\n- @everyone"),
            vec![Mention::Here, Mention::Role(3), Mention::Everyone]
        );
    }

    #[test]
    fn blocks() {
        let b = parse("hi\n> quoted *x*\n```rust\nfn main() {}\n```\nend");
        assert_eq!(b.len(), 4);
        assert!(matches!(&b[1], Block::Line(l) if l.quote && plain(&l.spans) == "quoted x"));
        assert_eq!(
            b[2],
            Block::Code {
                lang: Some("rust".into()),
                text: "fn main() {}".into(),
                quote: false,
            }
        );
        let unclosed = parse("```\ncode");
        assert!(matches!(&unclosed[0], Block::Line(l) if plain(&l.spans) == "```"));
        assert_eq!(lines(&unclosed).len(), 2);
    }

    #[test]
    fn code_block_forms() {
        let code = |b: &Block| match b {
            Block::Code { lang, text, .. } => Some((lang.clone(), text.clone())),
            Block::Line(_) => None,
        };
        assert_eq!(code(&parse("```x = 1```")[0]), Some((None, "x = 1".into())));
        assert_eq!(
            code(&parse("```hello world\nsecond```")[0]),
            Some((None, "hello world\nsecond".into()))
        );
        assert_eq!(
            code(&parse("```c++\nint x;\n```")[0]),
            Some((Some("c++".into()), "int x;".into()))
        );
    }

    #[test]
    fn quotes() {
        let b = parse("a\n> one\nb\n>>> all\n# of\n```\nthis\n```\nrest");
        let quoted: Vec<bool> = b
            .iter()
            .map(|b| match b {
                Block::Line(l) => l.quote,
                Block::Code { quote, .. } => *quote,
            })
            .collect();
        assert_eq!(quoted, vec![false, true, false, true, true, true, true]);
        assert!(matches!(&b[4], Block::Line(l) if l.kind == LineKind::Header(1)));
        // Not quotes: no space, or a quote in a quote (shown as written inside the quote).
        assert!(matches!(&parse(">no")[0], Block::Line(l) if !l.quote));
        assert!(
            matches!(&parse("> > x")[0], Block::Line(l) if l.quote && plain(&l.spans) == "> x")
        );
    }

    #[test]
    fn headers_subtext_and_lists() {
        let b = parse(
            "# One\n## Two\n### Three\n#### four\n#no\n-# small\n- a\n* b\n  - nested\n12. twelve\n   3. three\n-no\n1.no",
        );
        let kinds: Vec<LineKind> = lines(&b).iter().map(|l| l.kind).collect();
        let item = |depth, number| LineKind::Item { depth, number };
        assert_eq!(
            kinds,
            vec![
                LineKind::Header(1),
                LineKind::Header(2),
                LineKind::Header(3),
                LineKind::Text,
                LineKind::Text,
                LineKind::Subtext,
                item(0, None),
                item(0, None),
                item(1, None),
                item(0, Some(12)),
                item(1, Some(3)),
                LineKind::Text,
                LineKind::Text,
            ]
        );
        assert_eq!(plain(&lines(&b)[8].spans), "nested");
        assert_eq!(plain(&lines(&b)[3].spans), "#### four");
        // `**bold**` at the start of a line is not an item.
        assert!(matches!(&parse("**b** x")[0], Block::Line(l) if l.kind == LineKind::Text));
    }

    /// 100 kB of input built to make a naive parser quadratic (markers, brackets and fences
    /// with no partner, or with one at the very end) parses in under 2 s each, unoptimised: a
    /// quadratic scan of 100 kB is 10^10 steps.
    #[test]
    fn adversarial_input_is_linear() {
        const SIZE: usize = 100_000;
        let rep = |s: &str| s.repeat(SIZE / s.len());
        let cases = [
            rep("**"),
            rep("*a"),
            rep("_a "),
            rep("[`("),
            rep("[a](https://"),
            rep("[a]("),
            rep("||"),
            rep("|| x"),
            rep("~~a"),
            rep("`a"),
            rep("``a"),
            rep("<@"),
            rep("<@&1"),
            format!("<@{}", "a".repeat(SIZE)),
            rep("> "),
            rep(">>> \n"),
            rep("```\n"),
            rep("```a\n"),
            rep("- * 1. "),
            rep("\\"),
            rep("https://"),
            "*".repeat(SIZE),
            "[".repeat(SIZE) + "](https://a)",
        ];
        for c in &cases {
            let start = Instant::now();
            let blocks = parse(c);
            let _ = mentions(c);
            let took = start.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{:?}...: {took:?}",
                &c[..c.len().min(16)]
            );
            assert!(!blocks.is_empty());
        }
    }

    fn chars_out(blocks: &[Block]) -> usize {
        blocks
            .iter()
            .map(|b| match b {
                Block::Line(l) => l.spans.iter().map(|s| s.text.chars().count()).sum(),
                Block::Code { lang, text, .. } => {
                    text.chars().count() + lang.as_deref().map_or(0, |l| l.chars().count())
                }
            })
            .sum()
    }

    proptest! {
        #[test]
        fn never_panics_and_never_adds_text(s in any::<String>()) {
            let blocks = parse(&s);
            prop_assert!(chars_out(&blocks) <= s.chars().count());
            let _ = mentions(&s);
        }

        #[test]
        fn markdown_soup_never_adds_text(s in r"([a-z ]|\*\*?|__?|~~|\|\||`|``|```|\[|\]|\(|\)|https://|<@&?|@here|[>#\\1.\n-]){0,60}") {
            let blocks = parse(&s);
            prop_assert!(chars_out(&blocks) <= s.chars().count());
            let _ = mentions(&s);
        }

        #[test]
        fn plain_text_round_trips(s in "[a-zA-Z0-9 ,;'?!()+=%$^&/]{1,80}") {
            prop_assert_eq!(inline(&s), vec![text(&s)]);
            let kind_free = !s.starts_with(' ') && !s.trim_start().starts_with(|c: char| c.is_ascii_digit());
            if kind_free {
                prop_assert_eq!(
                    parse(&s),
                    vec![Block::Line(Line { kind: LineKind::Text, quote: false, spans: vec![text(&s)] })]
                );
            }
        }
    }
}
