//! Stripe's form encoding: `a=1&metadata[k]=v&items[0][price]=p&expand[]=x`, for bodies and
//! query strings alike, decoded into a tree that the routes read and idempotency compares.
//!
//! Maps are ordered (`BTreeMap`), so the same parameters sent in another order decode to the
//! same tree: clients build `metadata` from hash maps and Stripe compares parameters, not bytes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::errors::ApiError;

/// Stripe's limits on metadata: keys per request, characters in a key and in a value.
const METADATA_KEYS: usize = 50;
const METADATA_KEY_CHARS: usize = 40;
const METADATA_VALUE_CHARS: usize = 500;

/// One decoded parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// The parameters of one request (the top level is always a map).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub BTreeMap<String, Value>);

/// An intermediate node: list indices stay keys until every child is known, because
/// `items[1]` may arrive before `items[0]`.
#[derive(Debug)]
enum Node {
    Leaf(String),
    Branch(BTreeMap<Segment, Node>),
}

/// A bracket segment: a name, a numeric index, or `[]` (append). Appends sort after indices
/// in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Index(u64),
    Append(u64),
    Name(String),
}

impl Params {
    /// Decodes `application/x-www-form-urlencoded` bytes (a body or a query string).
    pub fn parse(input: &[u8]) -> Result<Params, ApiError> {
        let mut root: BTreeMap<Segment, Node> = BTreeMap::new();
        let mut appended = 0u64;
        for (key, value) in form_urlencoded::parse(input) {
            if key.is_empty() {
                continue;
            }
            let path = split_key(&key, &mut appended)?;
            insert(&mut root, &path, value.into_owned(), &key)?;
        }
        match finish(Node::Branch(root)) {
            Value::Map(map) => Ok(Params(map)),
            // A root made only of `[0]=…` keys cannot come from `split_key`, which starts with a name.
            _ => Err(ApiError::invalid_request(
                "Invalid request parameters.",
                None,
            )),
        }
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some(Value::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// A string parameter that must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.0.get(name) {
            Some(Value::Str(s)) if !s.is_empty() => Ok(s),
            Some(Value::Str(_)) | None => Err(ApiError::missing_param(name)),
            Some(_) => Err(ApiError::invalid_param(name, "a string")),
        }
    }

    /// An optional string parameter; an empty value counts as absent, as Stripe treats
    /// `name=` as "unset".
    pub fn optional(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(name) {
            Some(Value::Str(s)) if s.is_empty() => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            None => Ok(None),
            Some(_) => Err(ApiError::invalid_param(name, "a string")),
        }
    }

    pub fn map(&self, name: &str) -> Result<Option<&BTreeMap<String, Value>>, ApiError> {
        match self.0.get(name) {
            Some(Value::Map(map)) => Ok(Some(map)),
            Some(Value::Str(s)) if s.is_empty() => Ok(None),
            None => Ok(None),
            Some(_) => Err(ApiError::invalid_param(
                name,
                "an object (`name[key]=value`)",
            )),
        }
    }

    /// A list parameter; Stripe accepts both `name[]=a` and `name[0]=a`.
    pub fn list(&self, name: &str) -> Result<Vec<&Value>, ApiError> {
        match self.0.get(name) {
            Some(Value::List(items)) => Ok(items.iter().collect()),
            None => Ok(Vec::new()),
            Some(Value::Str(s)) if s.is_empty() => Ok(Vec::new()),
            Some(_) => Err(ApiError::invalid_param(name, "an array (`name[]=value`)")),
        }
    }

    /// A list of strings, such as `expand[]` or `lookup_keys[]`.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        self.list(name)?
            .into_iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.clone()),
                _ => Err(ApiError::invalid_param(name, "an array of strings")),
            })
            .collect()
    }

    /// `metadata[k]=v` as a flat string map; `metadata=` (empty) clears it, as in Stripe.
    /// A metadata map as Stripe takes it, within Stripe's limits on one request.
    pub fn metadata(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Str(s)) if s.is_empty() => Ok(Some(BTreeMap::new())),
            // Stripe's limits: 50 keys, a key of at most 40 characters, a value of at most 500.
            Some(Value::Map(map)) if map.len() > METADATA_KEYS => Err(ApiError::invalid_param(
                name,
                "an object of at most 50 keys",
            )),
            Some(Value::Map(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    _ if k.chars().count() > METADATA_KEY_CHARS => Err(ApiError::invalid_param(
                        &format!("{name}[{k}]"),
                        "a key of at most 40 characters",
                    )),
                    Value::Str(s) if s.chars().count() > METADATA_VALUE_CHARS => Err(
                        ApiError::invalid_param(&format!("{name}[{k}]"), "at most 500 characters"),
                    ),
                    Value::Str(s) => Ok((k.clone(), s.clone())),
                    _ => Err(ApiError::invalid_param(&format!("{name}[{k}]"), "a string")),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(_) => Err(ApiError::invalid_param(
                name,
                "an object (`metadata[key]=value`)",
            )),
        }
    }

    pub fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| ApiError::invalid_param(name, "an integer")),
        }
    }

    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.optional(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid_param(
                name,
                "a boolean (`true` or `false`)",
            )),
        }
    }

    /// The nested parameters under `name`, e.g. `product_data[...]`, as their own `Params`.
    pub fn nested(&self, name: &str) -> Result<Option<Params>, ApiError> {
        Ok(self.map(name)?.map(|map| Params(map.clone())))
    }
}

/// `items[0][price]` → `[Name(items), Index(0), Name(price)]`.
fn split_key(key: &str, appended: &mut u64) -> Result<Vec<Segment>, ApiError> {
    let bad = || ApiError::invalid_request(&format!("Invalid parameter name: {key}"), Some(key));
    let (head, mut rest) = match key.find('[') {
        Some(at) => (&key[..at], &key[at..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return Err(bad());
    }
    let mut path = vec![Segment::Name(head.to_owned())];
    while !rest.is_empty() {
        let close = rest.find(']').ok_or_else(bad)?;
        if !rest.starts_with('[') {
            return Err(bad());
        }
        let inner = &rest[1..close];
        path.push(if inner.is_empty() {
            *appended += 1;
            Segment::Append(*appended)
        } else if let Ok(index) = inner.parse::<u64>() {
            Segment::Index(index)
        } else {
            Segment::Name(inner.to_owned())
        });
        rest = &rest[close + 1..];
    }
    Ok(path)
}

fn insert(
    node: &mut BTreeMap<Segment, Node>,
    path: &[Segment],
    value: String,
    key: &str,
) -> Result<(), ApiError> {
    let conflict = || {
        ApiError::invalid_request(
            &format!("Conflicting values for parameter {key}."),
            Some(key),
        )
    };
    let Some((first, rest)) = path.split_first() else {
        return Err(conflict());
    };
    if rest.is_empty() {
        // A repeated scalar key keeps the last value, as Rails-style decoders (and Stripe) do.
        if let Some(Node::Branch(_)) = node.get(first) {
            return Err(conflict());
        }
        node.insert(first.clone(), Node::Leaf(value));
        return Ok(());
    }
    let child = node
        .entry(first.clone())
        .or_insert_with(|| Node::Branch(BTreeMap::new()));
    match child {
        Node::Branch(children) => insert(children, rest, value, key),
        Node::Leaf(_) => Err(conflict()),
    }
}

/// Turns branches whose keys are all indices or appends into lists, in index order.
fn finish(node: Node) -> Value {
    match node {
        Node::Leaf(s) => Value::Str(s),
        Node::Branch(children) => {
            let is_list = !children.is_empty()
                && children
                    .keys()
                    .all(|k| matches!(k, Segment::Index(_) | Segment::Append(_)));
            if is_list {
                Value::List(children.into_values().map(finish).collect())
            } else {
                Value::Map(
                    children
                        .into_iter()
                        .map(|(k, v)| {
                            let name = match k {
                                Segment::Name(n) => n,
                                Segment::Index(i) | Segment::Append(i) => i.to_string(),
                            };
                            (name, finish(v))
                        })
                        .collect(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Params {
        Params::parse(s.as_bytes()).expect("parses")
    }

    #[test]
    fn metadata_past_stripe_s_limits_is_refused() {
        let long_key = format!("metadata[{}]=v", "k".repeat(41));
        assert!(parse(&long_key).metadata("metadata").is_err());
        let long_value = format!("metadata[k]={}", "v".repeat(501));
        assert!(parse(&long_value).metadata("metadata").is_err());
        let many: Vec<String> = (0..51).map(|i| format!("metadata[k{i}]=v")).collect();
        assert!(parse(&many.join("&")).metadata("metadata").is_err());
        let fits = format!("metadata[{}]={}", "k".repeat(40), "v".repeat(500));
        assert!(parse(&fits).metadata("metadata").is_ok());
    }

    #[test]
    fn brackets_build_nested_maps_and_lists() {
        let p = parse(
            "items[0][price]=price_1&items[1][price]=price_2&metadata[payId]=P1&expand[]=latest_invoice",
        );
        let items = p.list("items").expect("list");
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1],
            &Value::Map(BTreeMap::from([(
                "price".into(),
                Value::Str("price_2".into())
            )]))
        );
        assert_eq!(
            p.metadata("metadata").expect("ok").expect("some")["payId"],
            "P1"
        );
        assert_eq!(
            p.strings("expand").expect("ok"),
            vec!["latest_invoice".to_owned()]
        );
    }

    #[test]
    fn percent_encoded_brackets_decode_like_plain_ones() {
        let p = parse("metadata%5BpayId%5D=P%2B1&email=a%40b.c");
        assert_eq!(
            p.metadata("metadata").expect("ok").expect("some")["payId"],
            "P+1"
        );
        assert_eq!(p.str("email"), Some("a@b.c"));
    }

    #[test]
    fn the_same_parameters_in_another_order_are_equal() {
        let a = parse("metadata[a]=1&metadata[b]=2&customer=cus_1&items[0][price]=p");
        let b = parse("items[0][price]=p&customer=cus_1&metadata[b]=2&metadata[a]=1");
        assert_eq!(a, b);
    }

    #[test]
    fn indices_arriving_out_of_order_keep_index_order() {
        let p = parse("lookup_keys[1]=b&lookup_keys[0]=a");
        assert_eq!(p.strings("lookup_keys").expect("ok"), vec!["a", "b"]);
    }

    #[test]
    fn a_key_used_as_both_scalar_and_map_is_rejected_with_its_name() {
        let err = Params::parse(b"metadata=x&metadata[a]=1").expect_err("conflict");
        assert_eq!(err.param.as_deref(), Some("metadata[a]"));
    }

    #[test]
    fn malformed_bracket_names_are_rejected() {
        assert!(Params::parse(b"items[0=x").is_err());
        assert!(Params::parse(b"[0]=x").is_err());
    }
}
