//! The small expression language of TOML topologies: filter predicates (`where`),
//! computed fields of `map` (`set`) and generator fields.
//!
//! ```text
//! expr    := or
//! or      := and (("or" | "||") and)*
//! and     := not (("and" | "&&") not)*
//! not     := ("not" | "!") not | cmp
//! cmp     := sum (("==" | "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/" | "%") unary)*
//! unary   := "-" unary | atom
//! atom    := INT | FLOAT | STRING | "true" | "false" | "null"
//!          | FIELD | FUNCTION "(" (expr ("," expr)*)? ")" | "(" expr ")"
//! ```
//!
//! Strings are quoted with `'` or `"` (escapes `\\ \' \" \n \t`); a field is a bare
//! identifier (`word`, `user_id`) or any name in backticks (`` `first name` ``).
//!
//! Semantics: ints are i64 (overflow is an error), an int meeting a float becomes a
//! float, `/` and `%` on two ints are integer division and remainder (by zero is an
//! error), `+` also concatenates two strings. Any arithmetic with `null` gives `null`;
//! `==`/`!=` compare numbers by value and everything else by kind and content; `<`,
//! `<=`, `>`, `>=` compare numbers or strings (with `null` they are false, other
//! mixes are an error). `and`, `or`, `not` need booleans and short-circuit.
//!
//! Parse errors carry the byte offset in the expression text, so the topology loader
//! can point at the exact line and column in the TOML file.

use crate::record::{Record, Value};
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// A parse error at a byte offset of the expression text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

/// Where an expression reads its fields (and, in a generator, its randomness).
pub trait Env {
    fn field(&self, name: &str) -> Option<&Value>;
    /// The names available, for "no such field" messages.
    fn describe_fields(&self) -> String;
    /// The next pseudo-random number; `None` outside generators.
    fn random(&mut self) -> Option<u64> {
        None
    }
}

impl Env for Record {
    fn field(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
    fn describe_fields(&self) -> String {
        Record::describe_fields(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Lower,
    Upper,
    Trim,
    Len,
    Concat,
    Contains,
    StartsWith,
    EndsWith,
    Int,
    Float,
    Str,
    IsNull,
    Coalesce,
    Abs,
    Floor,
    Ceil,
    Round,
    Min,
    Max,
    RandomInt,
    RandomFloat,
}

/// Name, function, minimum and maximum argument count (None: variadic).
const FUNCTIONS: &[(&str, Func, usize, Option<usize>)] = &[
    ("lower", Func::Lower, 1, Some(1)),
    ("upper", Func::Upper, 1, Some(1)),
    ("trim", Func::Trim, 1, Some(1)),
    ("len", Func::Len, 1, Some(1)),
    ("concat", Func::Concat, 1, None),
    ("contains", Func::Contains, 2, Some(2)),
    ("starts_with", Func::StartsWith, 2, Some(2)),
    ("ends_with", Func::EndsWith, 2, Some(2)),
    ("int", Func::Int, 1, Some(1)),
    ("float", Func::Float, 1, Some(1)),
    ("str", Func::Str, 1, Some(1)),
    ("is_null", Func::IsNull, 1, Some(1)),
    ("coalesce", Func::Coalesce, 1, None),
    ("abs", Func::Abs, 1, Some(1)),
    ("floor", Func::Floor, 1, Some(1)),
    ("ceil", Func::Ceil, 1, Some(1)),
    ("round", Func::Round, 1, Some(1)),
    ("min", Func::Min, 2, None),
    ("max", Func::Max, 2, None),
    ("random_int", Func::RandomInt, 2, Some(2)),
    ("random_float", Func::RandomFloat, 0, Some(0)),
];

#[derive(Debug, Clone)]
enum Node {
    Lit(Value),
    /// A field, with the byte range of its name in the expression text.
    Field(Arc<str>, std::ops::Range<usize>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    Call(Func, &'static str, Vec<Node>),
}

/// A parsed expression, ready to evaluate against records.
#[derive(Debug, Clone)]
pub struct Expr {
    root: Node,
    text: Arc<str>,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Expr {
    /// Parses an expression. `allow_random` admits `random_int`/`random_float`
    /// (generator fields only).
    pub fn parse(text: &str, allow_random: bool) -> Result<Expr, ExprError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            allow_random,
            end: text.len(),
        };
        let root = p.expr()?;
        if let Some(t) = p.peek() {
            return Err(ExprError {
                offset: t.start,
                message: format!(
                    "unexpected {} after the end of the expression (missing `and`/`or` or an operator?)",
                    t.tok.describe()
                ),
            });
        }
        Ok(Expr {
            root,
            text: Arc::from(text),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The fields the expression reads, in order of first use.
    pub fn fields(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        for (f, _) in self.field_uses() {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// Every use of a field, with the byte range of the name in the expression text.
    pub fn field_uses(&self) -> Vec<(Arc<str>, std::ops::Range<usize>)> {
        fn walk(n: &Node, out: &mut Vec<(Arc<str>, std::ops::Range<usize>)>) {
            match n {
                Node::Lit(_) => {}
                Node::Field(f, at) => out.push((f.clone(), at.clone())),
                Node::Neg(a) | Node::Not(a) => walk(a, out),
                Node::Binary(_, a, b) => {
                    walk(a, out);
                    walk(b, out)
                }
                Node::Call(_, _, args) => args.iter().for_each(|a| walk(a, out)),
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    pub fn eval(&self, env: &mut dyn Env) -> Result<Value, String> {
        eval(&self.root, env).map_err(|e| format!("{e}, in `{}`", self.text))
    }

    /// Evaluates a predicate: the result must be a bool.
    pub fn eval_bool(&self, env: &mut dyn Env) -> Result<bool, String> {
        match self.eval(env)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!(
                "the condition `{}` gave {} {other}, not true or false",
                self.text,
                article(other.type_name())
            )),
        }
    }
}

/// "an int", "a string": the type of a value with its article, for messages.
fn article(type_name: &str) -> String {
    if type_name == "int" {
        "an int".to_string()
    } else {
        format!("a {type_name}")
    }
}

// ---------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    Ident(String),
    Quoted(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("number `{i}`"),
            Tok::Float(f) => format!("number `{f}`"),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Quoted(s) => format!("field `{s}`"),
            Tok::Op(o) => format!("`{o}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let err = |offset: usize, message: String| Err(ExprError { offset, message });
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let mut is_float = false;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'.' {
                is_float = true;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let mut j = i + 1;
                if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                    j += 1;
                }
                if j < bytes.len() && bytes[j].is_ascii_digit() {
                    is_float = true;
                    i = j;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
                return err(start, format!("invalid number `{}`", word_at(text, start)));
            }
            let lit: String = text[start..i].chars().filter(|&c| c != '_').collect();
            let tok = if is_float {
                Tok::Float(lit.parse().map_err(|_| ExprError {
                    offset: start,
                    message: format!("invalid number `{lit}`"),
                })?)
            } else {
                Tok::Int(lit.parse().map_err(|_| ExprError {
                    offset: start,
                    message: format!("integer `{lit}` does not fit in 64 bits"),
                })?)
            };
            out.push(Token { tok, start });
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            let tok = match word {
                "and" => Tok::Op("and"),
                "or" => Tok::Op("or"),
                "not" => Tok::Op("not"),
                _ => Tok::Ident(word.to_string()),
            };
            out.push(Token { tok, start });
            continue;
        }
        if c == b'\'' || c == b'"' || c == b'`' {
            let quote = c as char;
            let mut s = String::new();
            let mut chars = text[i + 1..].char_indices();
            let mut closed = None;
            while let Some((k, ch)) = chars.next() {
                if ch == quote {
                    closed = Some(i + 1 + k + 1);
                    break;
                }
                if ch == '\\' && quote != '`' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, e @ ('\\' | '\'' | '"'))) => s.push(e),
                        Some((k2, e)) => {
                            return err(
                                i + 1 + k2 - 1,
                                format!("unknown escape `\\{e}` (use \\\\ \\' \\\" \\n or \\t)"),
                            )
                        }
                        None => break,
                    }
                } else {
                    s.push(ch);
                }
            }
            let Some(end) = closed else {
                let what = if quote == '`' { "field name" } else { "string" };
                return err(
                    start,
                    format!("unterminated {what}: add the closing {quote}"),
                );
            };
            i = end;
            let tok = if quote == '`' {
                Tok::Quoted(s)
            } else {
                Tok::Str(s)
            };
            out.push(Token { tok, start });
            continue;
        }
        let two = text.get(i..i + 2).unwrap_or("");
        let (op, len): (Option<&'static str>, usize) = match two {
            "==" => (Some("=="), 2),
            "!=" | "<>" => (Some("!="), 2),
            "<=" => (Some("<="), 2),
            ">=" => (Some(">="), 2),
            "&&" => (Some("and"), 2),
            "||" => (Some("or"), 2),
            _ => match c {
                b'=' => (Some("=="), 1),
                b'<' => (Some("<"), 1),
                b'>' => (Some(">"), 1),
                b'!' => (Some("not"), 1),
                b'+' => (Some("+"), 1),
                b'-' => (Some("-"), 1),
                b'*' => (Some("*"), 1),
                b'/' => (Some("/"), 1),
                b'%' => (Some("%"), 1),
                _ => (None, 1),
            },
        };
        let tok = match (op, c) {
            (Some(op), _) => Tok::Op(op),
            (None, b'(') => Tok::LParen,
            (None, b')') => Tok::RParen,
            (None, b',') => Tok::Comma,
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return err(start, format!("unexpected character `{ch}`"));
            }
        };
        i += len;
        out.push(Token { tok, start });
    }
    Ok(out)
}

fn word_at(text: &str, start: usize) -> &str {
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    &rest[..end]
}

// ---------------------------------------------------------------------------------
// Parser

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    allow_random: bool,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_op(&self) -> Option<&'static str> {
        match self.peek() {
            Some(Token {
                tok: Tok::Op(op), ..
            }) => Some(op),
            _ => None,
        }
    }

    fn offset(&self) -> usize {
        self.peek().map_or(self.end, |t| t.start)
    }

    fn expr(&mut self) -> Result<Node, ExprError> {
        self.or()
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let mut left = self.and()?;
        while self.peek_op() == Some("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Node::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.not()?;
        while self.peek_op() == Some("and") {
            self.pos += 1;
            let right = self.not()?;
            left = Node::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, ExprError> {
        if self.peek_op() == Some("not") {
            self.pos += 1;
            let inner = self.not()?;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Node, ExprError> {
        let left = self.sum()?;
        let op = match self.peek_op() {
            Some("==") => BinOp::Eq,
            Some("!=") => BinOp::Ne,
            Some("<") => BinOp::Lt,
            Some("<=") => BinOp::Le,
            Some(">") => BinOp::Gt,
            Some(">=") => BinOp::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.sum()?;
        if let Some(op2) = self.peek_op() {
            if matches!(op2, "==" | "!=" | "<" | "<=" | ">" | ">=") {
                return Err(ExprError {
                    offset: self.offset(),
                    message: format!(
                        "comparisons do not chain: write `a {} b and b {op2} c`",
                        op.symbol()
                    ),
                });
            }
        }
        Ok(Node::Binary(op, Box::new(left), Box::new(right)))
    }

    fn sum(&mut self) -> Result<Node, ExprError> {
        let mut left = self.product()?;
        loop {
            let op = match self.peek_op() {
                Some("+") => BinOp::Add,
                Some("-") => BinOp::Sub,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.product()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn product(&mut self) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek_op() {
                Some("*") => BinOp::Mul,
                Some("/") => BinOp::Div,
                Some("%") => BinOp::Rem,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.unary()?;
            left = Node::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        if self.peek_op() == Some("-") {
            self.pos += 1;
            let inner = self.unary()?;
            return Ok(match inner {
                Node::Lit(Value::Int(i)) => Node::Lit(Value::Int(-i)),
                Node::Lit(Value::Float(f)) => Node::Lit(Value::Float(-f)),
                other => Node::Neg(Box::new(other)),
            });
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Node, ExprError> {
        let Some(token) = self.peek().cloned() else {
            return Err(ExprError {
                offset: self.end,
                message: if self.tokens.is_empty() {
                    "the expression is empty".to_string()
                } else {
                    "the expression ends early: a value is missing".to_string()
                },
            });
        };
        self.pos += 1;
        match token.tok {
            Tok::Int(i) => Ok(Node::Lit(Value::Int(i))),
            Tok::Float(f) => Ok(Node::Lit(Value::Float(f))),
            Tok::Str(s) => Ok(Node::Lit(Value::str(&s))),
            Tok::Quoted(name) => {
                let end = token.start + name.len() + 2;
                Ok(Node::Field(Arc::from(name), token.start..end))
            }
            Tok::LParen => {
                let inner = self.expr()?;
                match self.peek() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    other => Err(ExprError {
                        offset: other.map_or(self.end, |t| t.start),
                        message: format!(
                            "expected `)` to close the `(` at offset {}{}",
                            token.start,
                            other
                                .map_or(String::new(), |t| format!(", found {}", t.tok.describe()))
                        ),
                    }),
                }
            }
            Tok::Ident(word) => {
                let is_call = matches!(
                    self.peek(),
                    Some(Token {
                        tok: Tok::LParen,
                        ..
                    })
                );
                if is_call {
                    return self.call(&word, token.start);
                }
                Ok(match word.as_str() {
                    "true" => Node::Lit(Value::Bool(true)),
                    "false" => Node::Lit(Value::Bool(false)),
                    "null" => Node::Lit(Value::Null),
                    _ => {
                        let end = token.start + word.len();
                        Node::Field(Arc::from(word), token.start..end)
                    }
                })
            }
            other => Err(ExprError {
                offset: token.start,
                message: format!("expected a value, found {}", other.describe()),
            }),
        }
    }

    fn call(&mut self, name: &str, start: usize) -> Result<Node, ExprError> {
        let Some(&(fname, func, min, max)) = FUNCTIONS.iter().find(|f| f.0 == name) else {
            let names: Vec<&str> = FUNCTIONS.iter().map(|f| f.0).collect();
            let hint = match crate::topology::closest(name, &names) {
                Some(s) => format!(" (did you mean `{s}`?)"),
                None => format!(" (known: {})", names.join(", ")),
            };
            return Err(ExprError {
                offset: start,
                message: format!("unknown function `{name}`{hint}"),
            });
        };
        if matches!(func, Func::RandomInt | Func::RandomFloat) && !self.allow_random {
            return Err(ExprError {
                offset: start,
                message: format!("`{fname}` is only available in generator fields"),
            });
        }
        self.pos += 1; // (
        let mut args = Vec::new();
        if matches!(
            self.peek(),
            Some(Token {
                tok: Tok::RParen,
                ..
            })
        ) {
            self.pos += 1;
        } else {
            loop {
                args.push(self.expr()?);
                match self.peek().map(|t| &t.tok) {
                    Some(Tok::Comma) => self.pos += 1,
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        break;
                    }
                    other => {
                        return Err(ExprError {
                            offset: self.offset(),
                            message: format!(
                                "expected `,` or `)` in the arguments of `{fname}`{}",
                                other
                                    .map_or(String::new(), |t| format!(", found {}", t.describe()))
                            ),
                        })
                    }
                }
            }
        }
        let ok = args.len() >= min && max.is_none_or(|m| args.len() <= m);
        if !ok {
            let wanted = match max {
                Some(m) if m == min => format!("{min}"),
                Some(m) => format!("{min} to {m}"),
                None => format!("at least {min}"),
            };
            let plural = if wanted == "1" { "" } else { "s" };
            return Err(ExprError {
                offset: start,
                message: format!(
                    "`{fname}` takes {wanted} argument{plural}, got {}",
                    args.len()
                ),
            });
        }
        Ok(Node::Call(func, fname, args))
    }
}

// ---------------------------------------------------------------------------------
// Evaluation

fn eval(node: &Node, env: &mut dyn Env) -> Result<Value, String> {
    match node {
        Node::Lit(v) => Ok(v.clone()),
        Node::Field(name, _) => env.field(name).cloned().ok_or_else(|| {
            format!(
                "the record has no field `{name}` (it has {})",
                env.describe_fields()
            )
        }),
        Node::Neg(inner) => match eval(inner, env)? {
            Value::Int(i) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| "integer overflow in `-`".to_string()),
            Value::Float(f) => Ok(Value::Float(-f)),
            Value::Null => Ok(Value::Null),
            other => Err(format!(
                "cannot negate {} {other}",
                article(other.type_name())
            )),
        },
        Node::Not(inner) => match eval(inner, env)? {
            Value::Bool(b) => Ok(Value::Bool(!b)),
            other => Err(format!(
                "`not` needs true or false, got {} {other}",
                article(other.type_name())
            )),
        },
        Node::Binary(op @ (BinOp::And | BinOp::Or), a, b) => {
            let left = as_bool(*op, eval(a, env)?)?;
            match (op, left) {
                (BinOp::And, false) => Ok(Value::Bool(false)),
                (BinOp::Or, true) => Ok(Value::Bool(true)),
                _ => Ok(Value::Bool(as_bool(*op, eval(b, env)?)?)),
            }
        }
        Node::Binary(op, a, b) => {
            let (a, b) = (eval(a, env)?, eval(b, env)?);
            binary(*op, a, b)
        }
        Node::Call(func, name, args) => {
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(a, env)?);
            }
            call(*func, name, vals, env)
        }
    }
}

fn as_bool(op: BinOp, v: Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(b),
        other => Err(format!(
            "`{}` needs true or false on both sides, got {} {other}",
            op.symbol(),
            article(other.type_name())
        )),
    }
}

fn binary(op: BinOp, a: Value, b: Value) -> Result<Value, String> {
    let mismatch = |a: &Value, b: &Value| {
        format!(
            "cannot apply `{}` to {} {a} and {} {b}",
            op.symbol(),
            article(a.type_name()),
            article(b.type_name())
        )
    };
    match op {
        BinOp::Eq => Ok(Value::Bool(a.loose_eq(&b))),
        BinOp::Ne => Ok(Value::Bool(!a.loose_eq(&b))),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            if a.is_null() || b.is_null() {
                return Ok(Value::Bool(false));
            }
            let ord = match (&a, &b) {
                (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_))
                | (Value::Str(_), Value::Str(_)) => a.compare(&b),
                _ => return Err(mismatch(&a, &b)),
            };
            let Some(ord) = ord else {
                return Ok(Value::Bool(false)); // NaN
            };
            Ok(Value::Bool(match op {
                BinOp::Lt => ord == Ordering::Less,
                BinOp::Le => ord != Ordering::Greater,
                BinOp::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }))
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => match (&a, &b) {
            (Value::Null, _) | (_, Value::Null) => Ok(Value::Null),
            (Value::Int(x), Value::Int(y)) => {
                let (x, y) = (*x, *y);
                if matches!(op, BinOp::Div | BinOp::Rem) && y == 0 {
                    return Err(format!("division by zero in `{x} {} {y}`", op.symbol()));
                }
                let r = match op {
                    BinOp::Add => x.checked_add(y),
                    BinOp::Sub => x.checked_sub(y),
                    BinOp::Mul => x.checked_mul(y),
                    BinOp::Div => x.checked_div(y),
                    _ => x.checked_rem(y),
                };
                r.map(Value::Int)
                    .ok_or_else(|| format!("integer overflow in `{x} {} {y}`", op.symbol()))
            }
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
                Ok(Value::Float(match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => x / y,
                    _ => x % y,
                }))
            }
            (Value::Str(x), Value::Str(y)) if op == BinOp::Add => {
                let mut s = String::with_capacity(x.len() + y.len());
                s.push_str(x);
                s.push_str(y);
                Ok(Value::str(&s))
            }
            _ => Err(mismatch(&a, &b)),
        },
        BinOp::And | BinOp::Or => unreachable!("handled with short-circuit"),
    }
}

fn want_str<'a>(name: &str, v: &'a Value) -> Result<Option<&'a str>, String> {
    match v {
        Value::Str(s) => Ok(Some(s)),
        Value::Null => Ok(None),
        other => Err(format!(
            "`{name}` needs a string, got {} {other}",
            article(other.type_name())
        )),
    }
}

fn call(func: Func, name: &str, args: Vec<Value>, env: &mut dyn Env) -> Result<Value, String> {
    let num = |v: &Value| -> Result<Option<f64>, String> {
        match v {
            Value::Int(i) => Ok(Some(*i as f64)),
            Value::Float(f) => Ok(Some(*f)),
            Value::Null => Ok(None),
            other => Err(format!(
                "`{name}` needs a number, got {} {other}",
                article(other.type_name())
            )),
        }
    };
    let a0 = args.first().cloned().unwrap_or(Value::Null);
    Ok(match func {
        Func::Lower => want_str(name, &a0)?.map_or(Value::Null, |s| Value::str(&s.to_lowercase())),
        Func::Upper => want_str(name, &a0)?.map_or(Value::Null, |s| Value::str(&s.to_uppercase())),
        Func::Trim => want_str(name, &a0)?.map_or(Value::Null, |s| Value::str(s.trim())),
        Func::Len => {
            want_str(name, &a0)?.map_or(Value::Null, |s| Value::Int(s.chars().count() as i64))
        }
        Func::Concat => {
            let mut s = String::new();
            for a in &args {
                a.write_plain(&mut s);
            }
            Value::str(&s)
        }
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            match (want_str(name, &args[0])?, want_str(name, &args[1])?) {
                (Some(s), Some(p)) => Value::Bool(match func {
                    Func::Contains => s.contains(p),
                    Func::StartsWith => s.starts_with(p),
                    _ => s.ends_with(p),
                }),
                _ => Value::Null,
            }
        }
        Func::Int => match &a0 {
            Value::Int(_) | Value::Null => a0,
            Value::Float(f) if f.is_finite() && f.abs() < 9.2e18 => Value::Int(f.trunc() as i64),
            Value::Bool(b) => Value::Int(*b as i64),
            Value::Str(s) => match s.trim().parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => return Err(format!("`int` cannot convert \"{s}\" to an integer")),
            },
            other => return Err(format!("`int` cannot convert {other} to an integer")),
        },
        Func::Float => match &a0 {
            Value::Float(_) | Value::Null => a0,
            Value::Int(i) => Value::Float(*i as f64),
            Value::Bool(b) => Value::Float(*b as i64 as f64),
            Value::Str(s) => match s.trim().parse::<f64>() {
                Ok(f) => Value::Float(f),
                Err(_) => return Err(format!("`float` cannot convert \"{s}\" to a number")),
            },
        },
        Func::Str => match &a0 {
            Value::Str(_) | Value::Null => a0,
            other => {
                let mut s = String::new();
                other.write_plain(&mut s);
                Value::str(&s)
            }
        },
        Func::IsNull => Value::Bool(a0.is_null()),
        Func::Coalesce => args
            .into_iter()
            .find(|v| !v.is_null())
            .unwrap_or(Value::Null),
        Func::Abs => match a0 {
            Value::Int(i) => Value::Int(i.checked_abs().ok_or("integer overflow in `abs`")?),
            other => num(&other)?.map_or(Value::Null, |f| Value::Float(f.abs())),
        },
        Func::Floor | Func::Ceil | Func::Round => match a0 {
            Value::Int(_) => a0,
            other => num(&other)?.map_or(Value::Null, |f| {
                Value::Float(match func {
                    Func::Floor => f.floor(),
                    Func::Ceil => f.ceil(),
                    _ => f.round(),
                })
            }),
        },
        Func::Min | Func::Max => {
            let mut best: Option<Value> = None;
            for v in args {
                if v.is_null() {
                    continue;
                }
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let ord = b.compare(&v).ok_or_else(|| {
                            format!(
                                "`{name}` cannot compare {} {b} with {} {v}",
                                article(b.type_name()),
                                article(v.type_name())
                            )
                        })?;
                        let take_new = if func == Func::Min {
                            ord == Ordering::Greater
                        } else {
                            ord == Ordering::Less
                        };
                        if take_new {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            best.unwrap_or(Value::Null)
        }
        Func::RandomInt => {
            let (Value::Int(lo), Value::Int(hi)) = (&args[0], &args[1]) else {
                return Err("`random_int` needs two integers".to_string());
            };
            let (lo, hi) = (*lo, *hi);
            if lo > hi {
                return Err(format!(
                    "`random_int({lo}, {hi})`: the low bound is above the high bound"
                ));
            }
            let r = env
                .random()
                .ok_or("`random_int` is only available in generator fields")?;
            let span = (hi as i128 - lo as i128 + 1) as u128;
            Value::Int((lo as i128 + (r as u128 % span) as i128) as i64)
        }
        Func::RandomFloat => {
            let r = env
                .random()
                .ok_or("`random_float` is only available in generator fields")?;
            Value::Float((r >> 11) as f64 / (1u64 << 53) as f64)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record::from_pairs([
            ("word", Value::str("Hello")),
            ("n", Value::Int(7)),
            ("x", Value::Float(2.5)),
            ("flag", Value::Bool(true)),
            ("nothing", Value::Null),
            ("first name", Value::str("Ada")),
        ])
    }

    fn ev(text: &str) -> Result<Value, String> {
        Expr::parse(text, false).unwrap().eval(&mut rec())
    }

    fn perr(text: &str) -> ExprError {
        Expr::parse(text, false).unwrap_err()
    }

    #[test]
    fn arithmetic_and_precedence() {
        assert_eq!(ev("1 + 2 * 3").unwrap(), Value::Int(7));
        assert_eq!(ev("(1 + 2) * 3").unwrap(), Value::Int(9));
        assert_eq!(ev("n % 4").unwrap(), Value::Int(3));
        assert_eq!(ev("n / 2").unwrap(), Value::Int(3));
        assert_eq!(ev("x * 2").unwrap(), Value::Float(5.0));
        assert_eq!(ev("n + x").unwrap(), Value::Float(9.5));
        assert_eq!(ev("-n - -1").unwrap(), Value::Int(-6));
        assert_eq!(ev("1_000 + 1e3").unwrap(), Value::Float(2000.0));
        assert_eq!(ev("word + '!'").unwrap(), Value::str("Hello!"));
        assert_eq!(ev("nothing + 1").unwrap(), Value::Null);
        assert_eq!(ev("`first name`").unwrap(), Value::str("Ada"));
        assert_eq!(ev("\"a\\\"b\"").unwrap(), Value::str("a\"b"));
    }

    #[test]
    fn predicates() {
        let t = |s: &str| {
            Expr::parse(s, false)
                .unwrap()
                .eval_bool(&mut rec())
                .unwrap()
        };
        assert!(t("n > 3 and word == 'Hello'"));
        assert!(t("n >= 7 && n <= 7"));
        assert!(!t("not (n = 7)"));
        assert!(t("n != 8 or missing_field == 1")); // short-circuit
        assert!(t("!(x < 1) and flag"));
        assert!(t("n == 7.0"));
        assert!(t("n <> 6"));
        assert!(!t("nothing > 1"));
        assert!(t("nothing == null"));
        assert!(t("word < 'World' and 'a' < 'b'"));
        assert!(t("contains(lower(word), 'ell') and len(word) == 5"));
        assert!(t("starts_with(word, 'He') and ends_with(word, 'lo')"));
        assert!(t("is_null(nothing) and not is_null(word)"));
        assert!(t("true or false and false"));
        assert!(!t("(true or false) and false"));
    }

    #[test]
    fn functions() {
        assert_eq!(ev("upper(word)").unwrap(), Value::str("HELLO"));
        assert_eq!(ev("trim('  a ')").unwrap(), Value::str("a"));
        assert_eq!(
            ev("concat(word, '-', n, '-', x)").unwrap(),
            Value::str("Hello-7-2.5")
        );
        assert_eq!(ev("int('42') + int(x)").unwrap(), Value::Int(44));
        assert_eq!(ev("float(n)").unwrap(), Value::Float(7.0));
        assert_eq!(ev("str(n)").unwrap(), Value::str("7"));
        assert_eq!(ev("coalesce(nothing, n)").unwrap(), Value::Int(7));
        assert_eq!(ev("abs(-3) + abs(-1.5)").unwrap(), Value::Float(4.5));
        assert_eq!(
            ev("round(x) + floor(x) + ceil(x)").unwrap(),
            Value::Float(8.0)
        );
        assert_eq!(ev("min(n, 3, x)").unwrap(), Value::Float(2.5));
        assert_eq!(ev("max(n, 3, x)").unwrap(), Value::Int(7));
    }

    #[test]
    fn evaluation_errors() {
        assert_eq!(
            ev("n > missing").unwrap_err(),
            "the record has no field `missing` (it has `word`, `n`, `x`, `flag`, `nothing`, `first name`), in `n > missing`"
        );
        assert_eq!(
            ev("word > 3").unwrap_err(),
            "cannot apply `>` to a string \"Hello\" and an int 3, in `word > 3`"
        );
        assert!(ev("n / 0").unwrap_err().starts_with("division by zero"));
        assert!(ev("9223372036854775807 + 1")
            .unwrap_err()
            .starts_with("integer overflow"));
        assert!(ev("n and true")
            .unwrap_err()
            .starts_with("`and` needs true or false"));
        assert!(ev("int('x')").unwrap_err().contains("cannot convert"));
        let e = Expr::parse("n + 1", false)
            .unwrap()
            .eval_bool(&mut rec())
            .unwrap_err();
        assert_eq!(e, "the condition `n + 1` gave an int 8, not true or false");
    }

    #[test]
    fn parse_errors_with_positions() {
        let e = perr("n > ");
        assert_eq!(e.offset, 4);
        assert_eq!(e.message, "the expression ends early: a value is missing");
        let e = perr("(n > 1");
        assert_eq!(e.offset, 6);
        assert!(
            e.message
                .starts_with("expected `)` to close the `(` at offset 0"),
            "{}",
            e.message
        );
        let e = perr("n > 1 word");
        assert_eq!(e.offset, 6);
        assert!(e.message.starts_with("unexpected `word` after the end"));
        let e = perr("word == 'abc");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (8, "unterminated string: add the closing '")
        );
        let e = perr("lowr(word)");
        assert_eq!(e.offset, 0);
        assert_eq!(e.message, "unknown function `lowr` (did you mean `lower`?)");
        let e = perr("n > 1 and len(word, 2) > 1");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (10, "`len` takes 1 argument, got 2")
        );
        let e = perr("1 < n < 3");
        assert_eq!(e.offset, 6);
        assert!(e.message.starts_with("comparisons do not chain"));
        let e = perr("n # 3");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (2, "unexpected character `#`")
        );
        let e = perr("12abc");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (0, "invalid number `12abc`")
        );
        let e = perr("random_int(1, 2)");
        assert_eq!(
            e.message,
            "`random_int` is only available in generator fields"
        );
        let e = perr("");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (0, "the expression is empty")
        );
        let e = perr("concat(a b)");
        assert_eq!(e.offset, 9);
        assert!(e
            .message
            .starts_with("expected `,` or `)` in the arguments of `concat`"));
        let e = perr("n > )");
        assert_eq!(
            (e.offset, e.message.as_str()),
            (4, "expected a value, found `)`")
        );
        let e = perr("'a\\qb'");
        assert_eq!(e.offset, 2);
    }

    #[test]
    fn fields_are_listed() {
        let e = Expr::parse("a + b > a and `c d` == lower(e)", false).unwrap();
        let names: Vec<String> = e.fields().iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["a", "b", "c d", "e"]);
        let uses: Vec<(String, std::ops::Range<usize>)> = e
            .field_uses()
            .into_iter()
            .map(|(f, r)| (f.to_string(), r))
            .collect();
        assert_eq!(
            uses,
            [
                ("a".to_string(), 0..1),
                ("b".to_string(), 4..5),
                ("a".to_string(), 8..9),
                ("c d".to_string(), 14..19),
                ("e".to_string(), 29..30)
            ]
        );
    }

    struct Gen(u64, Record);
    impl Env for Gen {
        fn field(&self, name: &str) -> Option<&Value> {
            self.1.get(name)
        }
        fn describe_fields(&self) -> String {
            self.1.describe_fields()
        }
        fn random(&mut self) -> Option<u64> {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Some(self.0 >> 1)
        }
    }

    #[test]
    fn random_functions_stay_in_bounds() {
        let e = Expr::parse("random_int(-2, 3)", true).unwrap();
        let f = Expr::parse("random_float()", true).unwrap();
        let mut g = Gen(1, Record::new());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let Value::Int(v) = e.eval(&mut g).unwrap() else {
                panic!()
            };
            assert!((-2..=3).contains(&v));
            seen.insert(v);
            let Value::Float(x) = f.eval(&mut g).unwrap() else {
                panic!()
            };
            assert!((0.0..1.0).contains(&x));
        }
        assert_eq!(seen.len(), 6);
        // Outside a generator the record has no randomness.
        let e2 = Expr::parse("random_float()", true).unwrap();
        assert!(e2
            .eval(&mut rec())
            .unwrap_err()
            .contains("only available in generator"));
    }
}
