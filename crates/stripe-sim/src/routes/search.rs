//! Stripe's search query language, the part the worker and ops use:
//! `email:'a@b.c' AND metadata['payId']:'P1'`, `status:"active" OR status:"trialing"`,
//! `-field:'v'` (negation) and `field~'sub'` (substring). Clauses join with `AND` or with
//! `OR`, never both, as in Stripe.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::form::Params;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Plain(String),
    Metadata(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    field: Field,
    substring: bool,
    negate: bool,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    clauses: Vec<Clause>,
    any: bool,
}

fn bad(message: &str) -> ApiError {
    ApiError::invalid_request(message, Some("query"))
}

impl Query {
    /// Parses `query`, accepting only the `fields` the resource supports (plus `metadata`).
    pub fn parse(query: &str, fields: &[&str]) -> Result<Query, ApiError> {
        let mut rest = query.trim();
        let mut clauses = Vec::new();
        let mut joiner: Option<&str> = None;
        loop {
            let (clause, after) = clause(rest, fields)?;
            clauses.push(clause);
            rest = after.trim_start();
            if rest.is_empty() {
                break;
            }
            let word = if rest.starts_with("AND ") {
                "AND"
            } else if rest.starts_with("OR ") {
                "OR"
            } else {
                return Err(bad(&format!("Syntax error in search query near '{rest}'.")));
            };
            if joiner.is_some_and(|j| j != word) {
                return Err(bad("Search queries cannot mix AND and OR."));
            }
            joiner = Some(word);
            rest = rest[word.len()..].trim_start();
        }
        if clauses.len() > 10 {
            return Err(bad("Search queries can have at most 10 clauses."));
        }
        Ok(Query {
            clauses,
            any: joiner == Some("OR"),
        })
    }

    /// Whether an object matches; `get` reads a field of it (`None` when unset).
    pub fn matches(&self, get: impl Fn(&Field) -> Option<String>) -> bool {
        let test = |c: &Clause| {
            let hit = get(&c.field).is_some_and(|v| {
                if c.substring {
                    v.to_lowercase().contains(&c.value.to_lowercase())
                } else {
                    v == c.value
                }
            });
            hit != c.negate
        };
        if self.any {
            self.clauses.iter().any(test)
        } else {
            self.clauses.iter().all(test)
        }
    }
}

/// One `[-]field[:~]value` clause and the text after it.
fn clause<'q>(input: &'q str, fields: &[&str]) -> Result<(Clause, &'q str), ApiError> {
    let (negate, input) = match input.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    let name_end = input
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(input.len());
    let (name, mut rest) = input.split_at(name_end);
    let field = if name == "metadata" {
        let inner = rest
            .strip_prefix('[')
            .ok_or_else(|| bad("metadata must be followed by ['key']."))?;
        let (key, after) = quoted(inner)?;
        rest = after
            .strip_prefix(']')
            .ok_or_else(|| bad("metadata['key'] is missing its ']'."))?;
        Field::Metadata(key)
    } else if fields.contains(&name) {
        Field::Plain(name.to_owned())
    } else {
        return Err(bad(&format!(
            "Field '{name}' is not supported for search on this resource."
        )));
    };
    let (substring, rest) = match rest.chars().next() {
        Some(':') => (false, &rest[1..]),
        Some('~') => (true, &rest[1..]),
        _ => return Err(bad(&format!("Expected ':' or '~' after '{name}'."))),
    };
    let (value, rest) = if rest.starts_with(['\'', '"']) {
        quoted(rest)?
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (rest[..end].to_owned(), &rest[end..])
    };
    if substring && value.chars().count() < 3 {
        return Err(bad("Substring (~) searches need at least 3 characters."));
    }
    Ok((
        Clause {
            field,
            substring,
            negate,
            value,
        },
        rest,
    ))
}

/// A `'…'` or `"…"` string with `\` escapes, and the text after it.
fn quoted(input: &str) -> Result<(String, &str), ApiError> {
    let mut chars = input.char_indices();
    let quote = match chars.next() {
        Some((_, q @ ('\'' | '"'))) => q,
        _ => return Err(bad("Expected a quoted value.")),
    };
    let mut value = String::new();
    let mut escaped = false;
    for (at, c) in chars {
        match c {
            _ if escaped => {
                value.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            _ if c == quote => return Ok((value, &input[at + c.len_utf8()..])),
            _ => value.push(c),
        }
    }
    Err(bad("Unterminated quoted value."))
}

/// Whether an object born at `born` is visible to search yet (Stripe's search lags writes).
pub fn visible(born: Instant, now: Instant, delay_ms: u64) -> bool {
    delay_ms == 0 || now.saturating_duration_since(born) >= Duration::from_millis(delay_ms)
}

/// One page of search results, `ids` newest first; the `page` cursor is an opaque offset.
pub fn page(
    ids: Vec<&str>,
    params: &Params,
    url: &str,
    render: impl Fn(&str) -> Option<Value>,
) -> Result<Value, ApiError> {
    let limit = match params.integer("limit")? {
        None => 10,
        Some(n @ 1..=100) => n as usize,
        Some(_) => return Err(ApiError::invalid_param("limit", "between 1 and 100")),
    };
    let offset = match params.optional("page")? {
        None => 0,
        Some(token) => token
            .strip_prefix("page_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid_param("page", "a page token from next_page"))?,
    };
    let window: Vec<&str> = ids.iter().skip(offset).take(limit).copied().collect();
    let has_more = ids.len() > offset + window.len();
    let data: Vec<Value> = window.iter().filter_map(|id| render(id)).collect();
    Ok(json!({
        "object": "search_result", "data": data, "has_more": has_more,
        "next_page": has_more.then(|| format!("page_{}", offset + window.len())),
        "total_count": ids.len(), "url": url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(field: &Field) -> Option<String> {
        match field {
            Field::Plain(f) if f == "email" => Some("a@b.c".into()),
            Field::Metadata(k) if k == "payId" => Some("P1".into()),
            _ => None,
        }
    }

    #[test]
    fn and_clauses_must_all_match() {
        let q =
            Query::parse("email:'a@b.c' AND metadata['payId']:'P1'", &["email"]).expect("parses");
        assert!(q.matches(get));
        let q = Query::parse("email:'a@b.c' AND metadata[\"payId\"]:\"P2\"", &["email"])
            .expect("parses");
        assert!(!q.matches(get));
    }

    #[test]
    fn or_negation_and_substring_work() {
        let q =
            Query::parse("email:'x@y.z' OR -metadata['payId']:'P9'", &["email"]).expect("parses");
        assert!(q.matches(get));
        let q = Query::parse("email~'B.C'", &["email"]).expect("parses");
        assert!(q.matches(get));
    }

    #[test]
    fn unknown_fields_mixed_joiners_and_bad_quotes_are_rejected() {
        assert!(Query::parse("colour:'red'", &["email"]).is_err());
        assert!(Query::parse("email:'a' AND email:'b' OR email:'c'", &["email"]).is_err());
        assert!(Query::parse("email:'a", &["email"]).is_err());
    }
}
