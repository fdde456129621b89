//! A UCI parser (OpenWrt `uci` file syntax): sections, options, lists,
//! quoting, comments and line continuation, each item with its line.

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
    let _ = text;
    todo!("config::uci::parse")
}
