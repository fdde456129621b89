//! A UCI parser (OpenWrt `uci` file syntax): sections, options, lists,
//! quoting, comments and line continuation, each item with its line.
//!
//! Follows openwrt/uci `file.c`: keywords `package`/`config`/`option`/`list`
//! or their first letter; values bare, `'literal'` or `"with \ escapes"`,
//! adjacent pieces concatenated, quotes may span lines; `#` outside quotes
//! ends the line; a backslash outside single quotes escapes the next
//! character (a line end: continuation); `;` separates commands.

/// One `option` or `list` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub line: usize,
    pub name: String,
    pub value: String,
    /// true for `list`, false for `option`.
    pub is_list: bool,
}

/// One `config TYPE ['NAME']` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub line: usize,
    pub kind: String,
    /// None for an anonymous section.
    pub name: Option<String>,
    pub items: Vec<Item>,
}

/// A syntax error at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses UCI text into sections, in file order.
pub fn parse(text: &str) -> Result<Vec<Section>, SyntaxError> {
    let mut sections: Vec<Section> = Vec::new();
    for cmd in tokenize(text)? {
        apply(&mut sections, cmd)?;
    }
    Ok(sections)
}

/// One command: its words, and the line its first word starts on.
struct Command {
    line: usize,
    words: Vec<String>,
}

fn err(line: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        line,
        message: message.into(),
    }
}

struct Tokenizer {
    cmds: Vec<Command>,
    words: Vec<String>,
    word: String,
    /// Distinguishes an empty quoted word (`''`) from no word at all.
    in_word: bool,
    cmd_line: usize,
    line: usize,
}

impl Tokenizer {
    fn start_word(&mut self) {
        if !self.in_word {
            self.in_word = true;
            if self.words.is_empty() {
                self.cmd_line = self.line;
            }
        }
    }
    fn end_word(&mut self) {
        if self.in_word {
            self.words.push(std::mem::take(&mut self.word));
            self.in_word = false;
        }
    }
    fn end_cmd(&mut self) {
        self.end_word();
        if !self.words.is_empty() {
            self.cmds.push(Command {
                line: self.cmd_line,
                words: std::mem::take(&mut self.words),
            });
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Command>, SyntaxError> {
    let mut t = Tokenizer {
        cmds: Vec::new(),
        words: Vec::new(),
        word: String::new(),
        in_word: false,
        cmd_line: 1,
        line: 1,
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                t.end_cmd();
                t.line += 1;
            }
            ';' => t.end_cmd(),
            ' ' | '\t' | '\r' => t.end_word(),
            '#' => {
                t.end_word();
                while chars.next_if(|&n| n != '\n').is_some() {}
            }
            '\'' => {
                t.start_word();
                let open = t.line;
                loop {
                    match chars.next() {
                        None => return Err(err(open, "unterminated ' quote (opened here)")),
                        Some('\'') => break,
                        Some(ch) => {
                            if ch == '\n' {
                                t.line += 1;
                            }
                            t.word.push(ch);
                        }
                    }
                }
            }
            '"' => {
                t.start_word();
                let open = t.line;
                loop {
                    match chars.next() {
                        None => return Err(err(open, "unterminated \" quote (opened here)")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(err(open, "unterminated \" quote (opened here)")),
                            Some('\n') => t.line += 1,
                            Some(ch) => t.word.push(ch),
                        },
                        Some(ch) => {
                            if ch == '\n' {
                                t.line += 1;
                            }
                            t.word.push(ch);
                        }
                    }
                }
            }
            '\\' => match chars.next() {
                // A trailing backslash at the very end of the file: nothing follows.
                None => {}
                Some('\n') => t.line += 1,
                Some('\r') if chars.peek() == Some(&'\n') => {
                    chars.next();
                    t.line += 1;
                }
                Some(ch) => {
                    t.start_word();
                    t.word.push(ch);
                }
            },
            other => {
                t.start_word();
                t.word.push(other);
            }
        }
    }
    t.end_cmd();
    Ok(t.cmds)
}

/// `uci` allows only these in option and section names (shell compatibility).
fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Section types may use printable ASCII (`uci_validate_str`).
fn valid_type(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b))
}

fn apply(sections: &mut Vec<Section>, cmd: Command) -> Result<(), SyntaxError> {
    let line = cmd.line;
    let mut words = cmd.words.into_iter();
    let keyword = words.next().unwrap_or_default();
    let args: Vec<String> = words.collect();
    match keyword.as_str() {
        "package" | "p" => {
            if args.len() != 1 {
                return Err(err(line, "'package' takes exactly one name"));
            }
        }
        "config" | "c" => sections.push(section(line, args)?),
        "option" | "o" | "list" | "l" => {
            let is_list = keyword.starts_with('l');
            let word = if is_list { "list" } else { "option" };
            let section = sections.last_mut().ok_or_else(|| {
                err(
                    line,
                    format!("'{word}' before the first 'config' line: it belongs to no section"),
                )
            })?;
            section.items.push(item(line, is_list, args)?);
        }
        other => {
            return Err(err(
                line,
                format!("unknown command '{other}' (expected config, option or list)"),
            ));
        }
    }
    Ok(())
}

/// `config TYPE [NAME]`, from the words after `config`.
fn section(line: usize, args: Vec<String>) -> Result<Section, SyntaxError> {
    let mut args = args.into_iter();
    let kind = args
        .next()
        .ok_or_else(|| err(line, "'config' needs a section type"))?;
    if !valid_type(&kind) {
        return Err(err(line, format!("invalid section type '{kind}'")));
    }
    let name = args.next();
    if let Some(n) = &name
        && !valid_name(n)
    {
        return Err(err(
            line,
            format!("invalid section name '{n}': only letters, digits and _ are allowed"),
        ));
    }
    if args.next().is_some() {
        return Err(err(
            line,
            "too many words after 'config': expected a type and an optional name",
        ));
    }
    Ok(Section {
        line,
        kind,
        name,
        items: Vec::new(),
    })
}

/// `option NAME VALUE` or `list NAME VALUE`, from the words after the keyword.
fn item(line: usize, is_list: bool, args: Vec<String>) -> Result<Item, SyntaxError> {
    let word = if is_list { "list" } else { "option" };
    let mut args = args.into_iter();
    let name = args
        .next()
        .ok_or_else(|| err(line, format!("'{word}' needs a name and a value")))?;
    if !valid_name(&name) {
        return Err(err(
            line,
            format!("invalid option name '{name}': only letters, digits and _ are allowed"),
        ));
    }
    let value = args.next().ok_or_else(|| {
        err(
            line,
            format!("'{word} {name}' has no value (write '' for an empty one)"),
        )
    })?;
    if args.next().is_some() {
        return Err(err(
            line,
            format!("too many words after '{word} {name}': quote a value that contains spaces"),
        ));
    }
    Ok(Item {
        line,
        name,
        value,
        is_list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(line: usize, name: &str, value: &str, is_list: bool) -> Item {
        Item {
            line,
            name: name.into(),
            value: value.into(),
            is_list,
        }
    }

    fn one_value(text: &str) -> String {
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].items.len(), 1, "{:?}", s[0].items);
        s[0].items[0].value.clone()
    }

    fn error_line(text: &str) -> usize {
        parse(text).unwrap_err().line
    }

    // The ordinary file layout: named and anonymous sections, options and
    // lists, each with its own line number.
    #[test]
    fn sections_and_items_with_lines() {
        let text = "package mxspool\n\nconfig mxspool 'main'\n\toption hostname 'mx.example.net'\n\tlist listen '0.0.0.0:25'\n\nconfig domain\n\toption name example.com\n";
        let s = parse(text).unwrap();
        assert_eq!(
            s,
            vec![
                Section {
                    line: 3,
                    kind: "mxspool".into(),
                    name: Some("main".into()),
                    items: vec![
                        item(4, "hostname", "mx.example.net", false),
                        item(5, "listen", "0.0.0.0:25", true),
                    ],
                },
                Section {
                    line: 7,
                    kind: "domain".into(),
                    name: None,
                    items: vec![item(8, "name", "example.com", false)],
                },
            ]
        );
    }

    // `uci` accepts the first letter of each keyword, and only that letter
    // or the whole word.
    #[test]
    fn abbreviated_keywords() {
        let s = parse("p x\nc domain d1\no name a.example\nl user bob\n").unwrap();
        assert_eq!(s[0].kind, "domain");
        assert_eq!(s[0].name.as_deref(), Some("d1"));
        assert_eq!(
            s[0].items,
            vec![
                item(3, "name", "a.example", false),
                item(4, "user", "bob", true)
            ]
        );
        assert!(parse("conf domain\n").is_err());
        assert!(parse("config d\nopt name x\n").is_err());
    }

    // Single quotes are literal: backslashes and `#` inside are kept.
    #[test]
    fn single_quotes_are_literal() {
        assert_eq!(one_value("config a\noption k 'a\\b # c'\n"), "a\\b # c");
    }

    // Double quotes: a backslash escapes the next character.
    #[test]
    fn double_quote_escapes() {
        assert_eq!(
            one_value("config a\noption k \"say \\\"hi\\\" \\\\ \\n # x\"\n"),
            "say \"hi\" \\ n # x"
        );
    }

    // Adjacent quoted and bare pieces form one word, which is how uci
    // export writes a quote: 'it'\''s'.
    #[test]
    fn concatenation_and_escaped_quote() {
        assert_eq!(one_value("config a\noption k 'a'\"b\"c\n"), "abc");
        assert_eq!(one_value("config a\noption k 'it'\\''s'\n"), "it's");
    }

    // An empty quoted value is a value, not a missing one.
    #[test]
    fn empty_quoted_value() {
        assert_eq!(one_value("config a\noption k ''\n"), "");
        assert_eq!(error_line("config a\noption k\n"), 2);
    }

    // Quoted strings may span lines; the item keeps its first line and
    // later items keep counting correctly.
    #[test]
    fn multi_line_quoted_value() {
        let s = parse("config a\noption k 'one\ntwo'\noption j \"x\ny\"\noption z 1\n").unwrap();
        assert_eq!(
            s[0].items,
            vec![
                item(2, "k", "one\ntwo", false),
                item(4, "j", "x\ny", false),
                item(6, "z", "1", false),
            ]
        );
    }

    // A trailing backslash joins the next line to the command.
    #[test]
    fn line_continuation() {
        let s = parse("config a\noption k \\\n  'v'\noption j 2\n").unwrap();
        assert_eq!(
            s[0].items,
            vec![item(2, "k", "v", false), item(4, "j", "2", false)]
        );
        // Also inside double quotes, where the line end disappears.
        assert_eq!(one_value("config a\noption k \"ab\\\ncd\"\n"), "abcd");
    }

    // `#` outside quotes starts a comment, whole-line or trailing, even in
    // the middle of a bare word.
    #[test]
    fn comments() {
        let text = "# header\nconfig a # the section\n  # indented\noption k 'v#1' # trailing\noption j ab#cd\n";
        let s = parse(text).unwrap();
        assert_eq!(
            s[0].items,
            vec![item(4, "k", "v#1", false), item(5, "j", "ab", false)]
        );
    }

    // `;` separates commands on one line; empty commands are ignored.
    #[test]
    fn semicolons() {
        let s = parse("config a; option k 1;; list l 'x;y'; list l z\n").unwrap();
        assert_eq!(
            s[0].items,
            vec![
                item(1, "k", "1", false),
                item(1, "l", "x;y", true),
                item(1, "l", "z", true),
            ]
        );
    }

    // Windows line ends do not leak into values.
    #[test]
    fn crlf_line_ends() {
        let s = parse("config a 'b'\r\noption k v\r\n").unwrap();
        assert_eq!(s[0].name.as_deref(), Some("b"));
        assert_eq!(s[0].items, vec![item(2, "k", "v", false)]);
    }

    // An unterminated quote names the line where it was opened.
    #[test]
    fn unterminated_quotes() {
        let e = parse("config a\n\noption k 'abc\noption j 1\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unterminated"), "{}", e.message);
        assert_eq!(error_line("config a\noption k \"abc\\\"\n"), 2);
    }

    // Errors at the right line: option before any section, bad names,
    // unknown commands, missing or extra words.
    #[test]
    fn syntax_errors_name_their_line() {
        assert_eq!(error_line("\n# c\noption k v\n"), 3);
        assert_eq!(error_line("list k v\n"), 1);
        assert_eq!(error_line("config a\noption bad-name v\n"), 2);
        assert_eq!(error_line("config a 'bad name'\n"), 1);
        assert_eq!(error_line("config a\n\nset k v\n"), 3);
        assert_eq!(error_line("config\n"), 1);
        assert_eq!(error_line("config a b c\n"), 1);
        assert_eq!(error_line("config a\noption k two words\n"), 2);
        assert_eq!(error_line("config a\noption\n"), 2);
        assert_eq!(error_line("config a ''\n"), 1);
        assert_eq!(error_line("package\n"), 1);
    }

    // An empty file or one of comments only has no sections.
    #[test]
    fn empty_input() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("# nothing\n\n").unwrap(), vec![]);
    }
}
