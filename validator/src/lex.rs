//! A small PostgreSQL lexer, enough for the leading-keyword fast path and for
//! fingerprints. It never fails: whatever it does not recognise becomes a one-byte
//! operator, and an unterminated literal swallows the rest of the text (so a literal
//! never leaks into a fingerprint).
//!
//! Source: PostgreSQL documentation, section 4.1 "Lexical Structure" (identifiers and
//! key words 4.1.1, constants 4.1.2 including dollar-quoted and escape strings,
//! operators 4.1.3, special characters 4.1.4, comments 4.1.5).

/// One token of SQL text. Slices borrow from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok<'a> {
    /// An unquoted identifier or key word, as written (not yet case-folded).
    Word(&'a str),
    /// A double-quoted identifier: the text between the quotes, `""` not yet undoubled.
    QuotedIdent(&'a str),
    /// A string, bit-string or numeric constant (4.1.2).
    Literal,
    /// A positional parameter `$n` (4.1.4).
    Param,
    /// An operator (4.1.3), including one-byte characters the lexer does not know.
    Op(&'a str),
    /// `::`
    Cast,
    /// One of `( ) [ ] , ; . :`
    Punct(u8),
}

/// Bytes that may make up an operator name (4.1.3).
fn is_op_byte(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b'*'
            | b'/'
            | b'<'
            | b'>'
            | b'='
            | b'~'
            | b'!'
            | b'@'
            | b'#'
            | b'%'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
    )
}

/// First byte of an identifier: a letter, `_`, or any non-ASCII byte (4.1.1).
pub(crate) fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Later bytes of an identifier: also digits and `$` (4.1.1).
pub(crate) fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Lexer over one SQL text.
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.src.as_bytes()
    }

    fn peek(&self, off: usize) -> Option<u8> {
        self.bytes().get(self.pos + off).copied()
    }

    /// Skips whitespace, `-- line` comments and (nested) `/* block */` comments.
    /// An unterminated block comment runs to the end of the text, as in PostgreSQL.
    pub(crate) fn skip_trivia(&mut self) {
        let b = self.bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if b[self.pos..].starts_with(b"--") {
                match b[self.pos..].iter().position(|&c| c == b'\n') {
                    Some(n) => self.pos += n + 1,
                    None => self.pos = b.len(),
                }
            } else if b[self.pos..].starts_with(b"/*") {
                let mut depth = 0usize;
                while self.pos < b.len() {
                    if b[self.pos..].starts_with(b"/*") {
                        depth += 1;
                        self.pos += 2;
                    } else if b[self.pos..].starts_with(b"*/") {
                        depth -= 1;
                        self.pos += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.pos += 1;
                    }
                }
            } else {
                return;
            }
        }
    }

    /// Consumes a quoted run ending at `quote`; a doubled quote is an escaped quote, and
    /// with `backslash` a backslash escapes the next byte (E'...' strings, 4.1.2.2).
    /// Returns the content (without the quotes); an unterminated run takes the rest.
    fn quoted(&mut self, quote: u8, backslash: bool) -> &'a str {
        let b = self.bytes();
        self.pos += 1; // opening quote
        let start = self.pos;
        while self.pos < b.len() {
            let c = b[self.pos];
            if backslash && c == b'\\' {
                self.pos += 2;
            } else if c == quote {
                if b.get(self.pos + 1) == Some(&quote) {
                    self.pos += 2;
                } else {
                    let s = &self.src[start..self.pos];
                    self.pos += 1;
                    return s;
                }
            } else {
                self.pos += 1;
            }
        }
        self.pos = b.len();
        &self.src[start..]
    }

    /// `$tag$ ... $tag$` (4.1.2.4) starting at `self.pos`, or `None` if the text there is
    /// not a dollar-quote opening.
    fn dollar_quoted(&mut self) -> Option<()> {
        let b = self.bytes();
        let mut end = self.pos + 1;
        if end < b.len() && is_ident_start(b[end]) {
            while end < b.len() && is_ident_cont(b[end]) && b[end] != b'$' {
                end += 1;
            }
        }
        if b.get(end) != Some(&b'$') {
            return None;
        }
        let delim = &self.src[self.pos..=end];
        match self.src[end + 1..].find(delim) {
            Some(n) => self.pos = end + 1 + n + delim.len(),
            None => self.pos = b.len(),
        }
        Some(())
    }

    fn number(&mut self) {
        let b = self.bytes();
        let mut seen_dot = false;
        while self.pos < b.len() {
            let c = b[self.pos];
            if c.is_ascii_alphanumeric() || c == b'_' {
                // Exponent sign: 1e-5, 2E+3 (not in hex literals).
                if (c == b'e' || c == b'E')
                    && matches!(self.peek(1), Some(b'+' | b'-'))
                    && self.peek(2).is_some_and(|d| d.is_ascii_digit())
                {
                    self.pos += 2;
                }
                self.pos += 1;
            } else if c == b'.' && !seen_dot && self.peek(1) != Some(b'.') {
                seen_dot = true;
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// Next token with the text it was read from (quotes and prefixes included), or
    /// `None` at the end of the text.
    pub(crate) fn next_spanned(&mut self) -> Option<(Tok<'a>, &'a str)> {
        self.skip_trivia();
        let start = self.pos;
        let t = self.next_token()?;
        Some((t, &self.src[start..self.pos]))
    }

    /// Next token, or `None` at the end of the text.
    pub(crate) fn next_token(&mut self) -> Option<Tok<'a>> {
        self.skip_trivia();
        let b = self.bytes();
        let c = *b.get(self.pos)?;
        let start = self.pos;
        if is_ident_start(c) {
            // Prefixed string constants: E'..', B'..', X'..', N'..', U&'..'.
            let next = self.peek(1);
            if next == Some(b'\'') && matches!(c, b'e' | b'E') {
                self.pos += 1;
                self.quoted(b'\'', true);
                return Some(Tok::Literal);
            }
            if next == Some(b'\'') && matches!(c, b'b' | b'B' | b'x' | b'X' | b'n' | b'N') {
                self.pos += 1;
                self.quoted(b'\'', false);
                return Some(Tok::Literal);
            }
            if matches!(c, b'u' | b'U') && next == Some(b'&') {
                if self.peek(2) == Some(b'\'') {
                    self.pos += 2;
                    self.quoted(b'\'', false);
                    return Some(Tok::Literal);
                }
                if self.peek(2) == Some(b'"') {
                    self.pos += 2;
                    return Some(Tok::QuotedIdent(self.quoted(b'"', false)));
                }
            }
            while self.pos < b.len() && is_ident_cont(b[self.pos]) {
                self.pos += 1;
            }
            return Some(Tok::Word(&self.src[start..self.pos]));
        }
        if c.is_ascii_digit() || (c == b'.' && self.peek(1).is_some_and(|d| d.is_ascii_digit())) {
            self.number();
            return Some(Tok::Literal);
        }
        match c {
            b'\'' => {
                self.quoted(b'\'', false);
                Some(Tok::Literal)
            }
            b'"' => Some(Tok::QuotedIdent(self.quoted(b'"', false))),
            b'$' => {
                if self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
                    self.pos += 1;
                    while self.pos < b.len() && b[self.pos].is_ascii_digit() {
                        self.pos += 1;
                    }
                    Some(Tok::Param)
                } else if self.dollar_quoted().is_some() {
                    Some(Tok::Literal)
                } else {
                    self.pos += 1;
                    Some(Tok::Op("$"))
                }
            }
            b':' if self.peek(1) == Some(b':') => {
                self.pos += 2;
                Some(Tok::Cast)
            }
            b'(' | b')' | b'[' | b']' | b',' | b';' | b'.' | b':' => {
                self.pos += 1;
                Some(Tok::Punct(c))
            }
            _ if is_op_byte(c) => {
                let mut end = self.pos;
                while end < b.len()
                    && is_op_byte(b[end])
                    && !b[end..].starts_with(b"--")
                    && !b[end..].starts_with(b"/*")
                {
                    end += 1;
                }
                // "A multiple-character operator name cannot end in + or -, unless the
                // name also contains at least one of ~ ! @ # % ^ & | ` ?" (4.1.3).
                let op = &b[start..end];
                if op.len() > 1
                    && !op.iter().any(|x| {
                        matches!(
                            x,
                            b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
                        )
                    })
                {
                    while end > start + 1 && matches!(b[end - 1], b'+' | b'-') {
                        end -= 1;
                    }
                }
                self.pos = end;
                Some(Tok::Op(&self.src[start..end]))
            }
            _ => {
                // Any other character (ASCII only here: non-ASCII starts an identifier).
                self.pos += 1;
                Some(Tok::Op(&self.src[start..self.pos]))
            }
        }
    }
}

/// `sql` after any empty statements (`;`), whitespace and comments that start it. Whitespace
/// here is any Unicode white space (`char::is_whitespace`, vertical tab included), as the
/// parser behind `classify` reads it, so that the leading-key-word check agrees with it.
pub(crate) fn skip_empty_statements(sql: &str) -> &str {
    let mut lx = Lexer::new(sql);
    loop {
        lx.skip_trivia();
        // skip_trivia stops at a character boundary (it skips ASCII and whole comments).
        match sql[lx.pos..].chars().next() {
            Some(';') => lx.pos += 1,
            Some(c) if c.is_whitespace() => lx.pos += c.len_utf8(),
            _ => return &sql[lx.pos..],
        }
    }
}

/// The first token of `sql` after whitespace and comments, if it is a key word or `(`:
/// the word as written, or `"("`. Allocation-free.
pub(crate) fn leading_word(sql: &str) -> Option<&str> {
    let mut lx = Lexer::new(sql);
    lx.skip_trivia();
    let b = sql.as_bytes();
    let start = lx.pos;
    match b.get(start) {
        Some(&b'(') => Some("("),
        Some(&c) if c.is_ascii_alphabetic() => {
            let mut end = start + 1;
            while end < b.len() && is_ident_cont(b[end]) {
                end += 1;
            }
            Some(&sql[start..end])
        }
        _ => None,
    }
}
