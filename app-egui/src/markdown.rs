//! The Discord-flavoured markdown subset messages use: `**bold**`, `*italic*` / `_italic_`,
//! `~~strike~~`, `` `code` ``, fenced code blocks, `> quotes`, and links.
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
    if style.code {
        spans.push(Span {
            text,
            style,
            link: None,
        });
        return;
    }
    let mut rest = text.as_str();
    while let Some(pos) = ["https://", "http://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let (before, from) = rest.split_at(pos);
        let end = from.find(char::is_whitespace).unwrap_or(from.len());
        let (url, after) = from.split_at(end);
        if !before.is_empty() {
            spans.push(Span {
                text: before.into(),
                style,
                link: None,
            });
        }
        spans.push(Span {
            text: url.into(),
            style,
            link: Some(url.into()),
        });
        rest = after;
    }
    if !rest.is_empty() {
        spans.push(Span {
            text: rest.into(),
            style,
            link: None,
        });
    }
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
                link: None
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
