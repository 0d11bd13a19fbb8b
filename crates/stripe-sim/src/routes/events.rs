//! Events: list (newest first, with Stripe's `created`, `type` and `types[]` filters and its
//! cursor paging) and retrieve. `autorenew reconcile --since` reads a window of these.

use serde_json::Value;

use super::{Ctx, check_known, check_list, expansions, page};
use crate::errors::ApiError;
use crate::form::{Params, Value as Param};

pub fn list(ctx: &mut Ctx, params: &Params) -> Result<Value, ApiError> {
    check_list(params, &["type", "types", "delivery_success"])?;
    expansions(params, &[])?;
    params.boolean("delivery_success")?;
    let created = Created::parse(params)?;
    let kind = params.optional("type")?;
    let kinds = params.strings("types")?;
    if kind.is_some() && !kinds.is_empty() {
        return Err(ApiError::invalid_request(
            "You cannot specify both type and types.",
            Some("types"),
        ));
    }
    let store = &*ctx.store;
    let ids: Vec<&str> = store
        .events
        .newest_first()
        .filter(|e| created.admits(e.created))
        .filter(|e| kind.is_none_or(|k| type_matches(k, &e.kind)))
        .filter(|e| kinds.is_empty() || kinds.iter().any(|k| type_matches(k, &e.kind)))
        .map(|e| e.id.as_str())
        .collect();
    page(ids, params, "/v1/events", |id| {
        store.events.get(id).map(|e| e.render())
    })
}

pub fn retrieve(ctx: &mut Ctx, id: &str, params: &Params) -> Result<Value, ApiError> {
    check_known(params, &["expand"])?;
    expansions(params, &[])?;
    ctx.store
        .events
        .get(id)
        .map(|e| e.render())
        .ok_or_else(|| ApiError::no_such("event", id, "id"))
}

/// `type` is an event name or a group with `*` as a wildcard (`invoice.*`).
fn type_matches(filter: &str, kind: &str) -> bool {
    match filter.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => filter == kind,
    }
}

/// Stripe's `created` filter: `created=T`, or any of `created[gt|gte|lt|lte]=T`.
#[derive(Debug, Default)]
struct Created {
    gt: Option<i64>,
    gte: Option<i64>,
    lt: Option<i64>,
    lte: Option<i64>,
}

impl Created {
    fn parse(params: &Params) -> Result<Created, ApiError> {
        match params.0.get("created") {
            None => Ok(Created::default()),
            Some(Param::Map(map)) => {
                let bounds = Params(map.clone());
                check_known(&bounds, &["gt", "gte", "lt", "lte"]).map_err(|e| ApiError {
                    param: e.param.map(|p| format!("created[{p}]")),
                    ..e
                })?;
                let bound = |name: &str| {
                    bounds.integer(name).map_err(|_| {
                        ApiError::invalid_param(&format!("created[{name}]"), "an integer")
                    })
                };
                Ok(Created {
                    gt: bound("gt")?,
                    gte: bound("gte")?,
                    lt: bound("lt")?,
                    lte: bound("lte")?,
                })
            }
            Some(_) => {
                let at = params.integer("created")?;
                Ok(Created {
                    gte: at,
                    lte: at,
                    ..Created::default()
                })
            }
        }
    }

    fn admits(&self, t: i64) -> bool {
        self.gt.is_none_or(|b| t > b)
            && self.gte.is_none_or(|b| t >= b)
            && self.lt.is_none_or(|b| t < b)
            && self.lte.is_none_or(|b| t <= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_filter_is_a_name_or_a_wildcard_group() {
        assert!(type_matches("invoice.paid", "invoice.paid"));
        assert!(type_matches("invoice.*", "invoice.payment_failed"));
        assert!(!type_matches("invoice.*", "customer.subscription.updated"));
        assert!(!type_matches("invoice.paid", "invoice.payment_succeeded"));
    }

    #[test]
    fn created_bounds_are_inclusive_or_strict_as_named() {
        let window = Created {
            gte: Some(10),
            lt: Some(20),
            ..Created::default()
        };
        assert!(window.admits(10) && window.admits(19));
        assert!(!window.admits(9) && !window.admits(20));
    }
}
