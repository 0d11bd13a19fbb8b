//! `autorenew sign`: the partner's side of the sign, for curl and for checking an integration.

use std::io::Read;

use anyhow::Context;
use serde_json::{Map, Value};

use crate::domain::clock::now_millis;
use crate::domain::sign;

/// Flags of `autorenew sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The partner's secret (or set AUTORENEW_SIGN_SECRET).
    #[arg(
        long,
        env = "AUTORENEW_SIGN_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub secret: String,
    /// Print the body with a fresh `tradeTime` and its `sign`, ready to send.
    #[arg(long)]
    pub fill: bool,
}

/// Reads a JSON object on stdin and prints its signContent and sign (or the filled body).
pub fn run(args: SignArgs) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the JSON body from stdin")?;
    let output = sign_body(&input, &args.secret, args.fill.then(now_millis))?;
    println!("{output}");
    Ok(())
}

/// The text `autorenew sign` prints for `body`; with `fill_time`, the body itself with that
/// `tradeTime` and its sign.
pub fn sign_body(body: &str, secret: &str, fill_time: Option<u64>) -> anyhow::Result<String> {
    let mut object: Map<String, Value> = serde_json::from_str(body.trim_start_matches('\u{feff}'))
        .context("stdin must hold one JSON object")?;
    if let Some(millis) = fill_time {
        object.insert("tradeTime".into(), Value::String(millis.to_string()));
    }
    let mut params = Vec::with_capacity(object.len());
    for (key, value) in &object {
        match value {
            Value::String(s) => params.push((key.as_str(), s.as_str())),
            Value::Null => {}
            other => anyhow::bail!("field `{key}` must be a string, not {other}"),
        }
    }
    let content = sign::sign_content(params);
    let signature = sign::sign(&content, secret);
    if fill_time.is_some() {
        object.insert(sign::SIGN_FIELD.into(), Value::String(signature));
        Ok(serde_json::to_string(&object)?)
    } else {
        Ok(format!("signContent: {content}\nsign: {signature}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_sets_trade_time_and_a_sign_that_verifies() {
        let filled = sign_body(r#"{"a":"1","sign":"old"}"#, "k", Some(42)).expect("signs");
        let object: Map<String, Value> = serde_json::from_str(&filled).expect("json");
        assert_eq!(object["tradeTime"], "42");
        let content = r#"{"a":"1","tradeTime":"42"}"#;
        assert_eq!(object["sign"], sign::sign(content, "k"));
    }
}
