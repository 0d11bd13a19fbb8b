//! The requests loadgen sends: signed `/stripeSubDirectly` bodies, as a partner builds them, in a
//! deterministic mix of fresh requests, duplicates, conflicts and invalid ones.
//!
//! Everything about a fresh request follows from its index `n` (payId, email, declining card), so
//! a duplicate can rebuild the very same content later with only a fresh `tradeTime` and sign.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use signatures::partner as sign;

/// The payment method Stripe's test mode (and the simulator) always declines.
pub const DECLINING_PM_ID: &str = "pm_card_chargeDeclined";

/// What a request is meant to test, and so which answer it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A new payId: expect 200 and, with a worker running, one result event.
    Fresh,
    /// An earlier accepted request again, fresh `tradeTime` and sign: expect 200, no new job.
    Duplicate,
    /// An earlier accepted payId with another amount: expect 409 `PAY_ID_CONFLICT`.
    Conflict,
    /// A bad sign, a missing field or a bad amount: expect 400 or 401.
    Invalid,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fresh => "fresh",
            Kind::Duplicate => "duplicate",
            Kind::Conflict => "conflict",
            Kind::Invalid => "invalid",
        }
    }
}

/// Shares of the special kinds among all requests; the rest are fresh. `decline` is a share of
/// the fresh requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mix {
    pub duplicate: f64,
    pub conflict: f64,
    pub invalid: f64,
    pub decline: f64,
}

/// The fixed parts of every request.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    pub partner: String,
    pub secret: SecretString,
    pub pm_id: String,
    pub plan_id: String,
    pub amount: String,
    pub currency: String,
    /// One email for every request; `None`: a distinct customer per payId, as real traffic has.
    pub email: Option<String>,
    /// Without `email`: this many customers, fresh request `n` from customer `n mod customers`,
    /// so after the first round every request comes from a returning customer.
    pub customers: Option<u64>,
}

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub kind: Kind,
    /// The index of the fresh request whose payId this is (fresh, duplicate, conflict).
    pub fresh_index: Option<u64>,
    pub pay_id: String,
    pub declining: bool,
    pub body: Bytes,
}

/// Hands out requests in order, up to an optional count; safe to share between tasks.
#[derive(Debug)]
pub struct Generator {
    spec: PayloadSpec,
    run_id: String,
    mix: Mix,
    limit: Option<u64>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    issued: u64,
    fresh: u64,
    invalid: u64,
    /// Error-diffusion accumulators for duplicate, conflict, invalid: the kinds come out evenly
    /// spread and in exact proportion, so a run of N requests has the shares it was asked for.
    owed: [f64; 3],
    /// Fresh requests the intake answered 200: only those may be duplicated or contradicted,
    /// since a duplicate of a request still in flight could overtake it and be the first.
    accepted: Vec<u64>,
}

impl Generator {
    pub fn new(spec: PayloadSpec, run_id: &str, mix: Mix, limit: Option<u64>) -> Self {
        Generator {
            spec,
            run_id: run_id.to_owned(),
            mix,
            limit,
            state: Mutex::new(State::default()),
        }
    }

    /// The prefix of every payId of this run; the follower keeps only events that carry it.
    pub fn pay_id_prefix(&self) -> String {
        format!("LG-{}-", self.run_id)
    }

    /// The next request, or `None` once the count is reached.
    pub fn next(&self) -> Option<Prepared> {
        let (kind, index) = {
            let mut state = self.lock();
            if self.limit.is_some_and(|limit| state.issued >= limit) {
                return None;
            }
            let position = state.issued;
            state.issued += 1;
            let kind = choose_kind(&mut state, &self.mix);
            let earlier = match kind {
                Kind::Duplicate | Kind::Conflict => {
                    pick(position, state.accepted.len()).map(|i| state.accepted[i])
                }
                _ => None,
            };
            match (kind, earlier) {
                (Kind::Duplicate | Kind::Conflict, Some(index)) => (kind, index),
                (Kind::Invalid, _) => {
                    state.invalid += 1;
                    (kind, state.invalid - 1)
                }
                // A fresh request, or nothing accepted yet to repeat (the very first requests).
                _ => {
                    state.fresh += 1;
                    (Kind::Fresh, state.fresh - 1)
                }
            }
        };
        Some(match kind {
            Kind::Invalid => self.invalid(index),
            _ => self.fresh(kind, index),
        })
    }

    /// Marks fresh request `index` as accepted by the intake, so later duplicates and conflicts
    /// may name it.
    pub fn accepted(&self, index: u64) {
        self.lock().accepted.push(index);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is counters and a list; a panic elsewhere cannot leave it inconsistent.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn fresh_pay_id(&self, index: u64) -> String {
        format!("LG-{}-{index}", self.run_id)
    }

    fn declines(&self, index: u64) -> bool {
        spread(index, self.mix.decline)
    }

    /// The fields of fresh request `index`: the same every time, so a duplicate matches it.
    fn fields(&self, pay_id: &str, index: u64, declining: bool) -> BTreeMap<&'static str, String> {
        let spec = &self.spec;
        let email = match &spec.email {
            Some(email) => email.clone(),
            None => {
                let customer = spec.customers.map_or(index, |n| index % n.max(1));
                format!("lg-{}-{customer}@example.com", self.run_id)
            }
        };
        let pm_id = if declining {
            DECLINING_PM_ID.to_owned()
        } else {
            spec.pm_id.clone()
        };
        BTreeMap::from([
            ("email", email),
            ("partnerCode", spec.partner.clone()),
            ("payAmount", spec.amount.clone()),
            ("payCurrency", spec.currency.clone()),
            ("payId", pay_id.to_owned()),
            ("plan_id", spec.plan_id.clone()),
            ("pm_id", pm_id),
            ("tradeType", "stripeSubDirectly".to_owned()),
            ("version", "3.0".to_owned()),
        ])
    }

    fn fresh(&self, kind: Kind, index: u64) -> Prepared {
        let pay_id = self.fresh_pay_id(index);
        let declining = self.declines(index);
        let mut fields = self.fields(&pay_id, index, declining);
        if kind == Kind::Conflict {
            // Another amount for a known payId. A leading digit keeps it a valid amount in
            // every currency, so the answer is the conflict and not a validation error.
            let other = format!("1{}", self.spec.amount);
            fields.insert("payAmount", other);
        }
        let body = signed_body(fields, self.spec.secret.expose_secret());
        Prepared {
            kind,
            fresh_index: Some(index),
            pay_id,
            declining,
            body,
        }
    }

    /// Invalid requests rotate through three faults, each refused at a different check.
    fn invalid(&self, index: u64) -> Prepared {
        let pay_id = format!("LG-{}-i{index}", self.run_id);
        let mut fields = self.fields(&pay_id, index, false);
        let secret = self.spec.secret.expose_secret();
        let body = match index % 3 {
            // 401 SIGN_INVALID: signed with a secret that is not the partner's.
            0 => signed_body(fields, &format!("{secret}-wrong")),
            // 400 PARAM_MISSING: no email.
            1 => {
                fields.remove("email");
                signed_body(fields, secret)
            }
            // 400 PARAM_INVALID: a negative amount, correctly signed.
            _ => {
                fields.insert("payAmount", "-1".to_owned());
                signed_body(fields, secret)
            }
        };
        Prepared {
            kind: Kind::Invalid,
            fresh_index: None,
            pay_id,
            declining: false,
            body,
        }
    }
}

/// Adds a fresh `tradeTime` and the sign for `secret`, and serializes the body.
fn signed_body(mut fields: BTreeMap<&'static str, String>, secret: &str) -> Bytes {
    fields.insert("tradeTime", now_millis().to_string());
    let content = sign::sign_content(fields.iter().map(|(k, v)| (*k, v.as_str())));
    fields.insert(sign::SIGN_FIELD, sign::sign(&content, secret));
    // A map of strings always serializes.
    Bytes::from(serde_json::to_vec(&fields).unwrap_or_default())
}

fn now_millis() -> u64 {
    let now = time::OffsetDateTime::now_utc();
    u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Picks the kind of the next request by error diffusion: each special kind accrues its share
/// per request and is sent once it has accrued a whole request.
fn choose_kind(state: &mut State, mix: &Mix) -> Kind {
    let shares = [mix.duplicate, mix.conflict, mix.invalid];
    for (owed, share) in state.owed.iter_mut().zip(shares) {
        *owed += share;
    }
    let (most, owed) =
        state
            .owed
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |best, (i, v)| if v > best.1 { (i, v) } else { best },
            );
    // A tolerance, so that a share such as 0.1 added ten times counts as one whole request.
    if owed >= 1.0 - 1e-9 {
        state.owed[most] -= 1.0;
        [Kind::Duplicate, Kind::Conflict, Kind::Invalid][most]
    } else {
        Kind::Fresh
    }
}

/// Whether item `index` of a sequence is one of a `share` spread evenly over it.
fn spread(index: u64, share: f64) -> bool {
    let before = (index as f64 * share + 1e-9).floor();
    let after = ((index + 1) as f64 * share + 1e-9).floor();
    after > before
}

/// A well-mixed pick among `len` accepted requests for request `position` (splitmix64), so
/// duplicates hit old and recent payIds alike without a random-number dependency.
fn pick(position: u64, len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    let mut z = position.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    usize::try_from(z % len as u64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn generator(mix: Mix, limit: u64) -> Generator {
        let spec = PayloadSpec {
            partner: "P000818".into(),
            secret: SecretString::from("s3cr3t"),
            pm_id: "pm_card_visa".into(),
            plan_id: "PLAN".into(),
            amount: "19.99".into(),
            currency: "usd".into(),
            email: None,
            customers: None,
        };
        Generator::new(spec, "abc", mix, Some(limit))
    }

    fn body(prepared: &Prepared) -> BTreeMap<String, String> {
        serde_json::from_slice(&prepared.body).expect("a JSON object of strings")
    }

    #[test]
    fn a_fresh_request_is_signed_as_the_partner_documentation_says() {
        let generator = generator(Mix::default(), 1);
        let prepared = generator.next().expect("one request");
        let fields = body(&prepared);
        let content = sign::sign_content(
            fields
                .iter()
                .filter(|(k, _)| k.as_str() != "sign")
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        assert!(sign::verify(&content, "s3cr3t", &fields["sign"]));
        assert_eq!(fields["payId"], "LG-abc-0");
        assert_eq!(fields["pm_id"], "pm_card_visa");
        assert!(generator.next().is_none(), "the count is a hard limit");
    }

    #[test]
    fn the_mix_has_the_shares_it_was_asked_for() {
        let mix = Mix {
            duplicate: 0.1,
            conflict: 0.05,
            invalid: 0.2,
            decline: 0.5,
        };
        let generator = generator(mix, 1000);
        let mut counts = BTreeMap::new();
        let mut declining = 0;
        while let Some(prepared) = generator.next() {
            if let (Kind::Fresh, Some(index)) = (prepared.kind, prepared.fresh_index) {
                generator.accepted(index);
                declining += i64::from(prepared.declining);
            }
            *counts.entry(prepared.kind).or_insert(0i64) += 1;
        }
        // Two kinds due at once go one after the other, so one may still be owed at the end.
        let near = |kind: Kind, want: i64| (counts[&kind] - want).abs() <= 1;
        assert!(near(Kind::Duplicate, 100), "{counts:?}");
        assert!(near(Kind::Conflict, 50), "{counts:?}");
        assert!(near(Kind::Invalid, 200), "{counts:?}");
        assert_eq!(counts.values().sum::<i64>(), 1000);
        assert_eq!(
            declining * 2,
            counts[&Kind::Fresh] - counts[&Kind::Fresh] % 2
        );
    }

    #[test]
    fn a_duplicate_repeats_an_accepted_request_and_a_conflict_changes_its_amount() {
        let mix = Mix {
            duplicate: 0.5,
            ..Mix::default()
        };
        let generator = generator(mix, 3);
        let first = generator.next().expect("first");
        generator.accepted(first.fresh_index.expect("fresh"));
        let duplicate = generator.next().expect("second");
        assert_eq!(duplicate.kind, Kind::Duplicate);
        let (a, b) = (body(&first), body(&duplicate));
        for key in ["email", "payId", "payAmount", "pm_id", "plan_id"] {
            assert_eq!(a[key], b[key], "{key}");
        }
        let conflicting = Generator::new(
            generator.spec.clone(),
            "abc",
            Mix {
                conflict: 1.0,
                ..Mix::default()
            },
            Some(2),
        );
        let original = conflicting.next().expect("fresh: nothing accepted yet");
        assert_eq!(original.kind, Kind::Fresh);
        conflicting.accepted(0);
        let conflict = conflicting.next().expect("conflict");
        assert_eq!(conflict.kind, Kind::Conflict);
        assert_eq!(conflict.pay_id, original.pay_id);
        assert_eq!(body(&conflict)["payAmount"], "119.99");
    }

    #[test]
    fn invalid_requests_rotate_through_their_faults() {
        let mix = Mix {
            invalid: 1.0,
            ..Mix::default()
        };
        let generator = generator(mix, 3);
        let bodies: Vec<Value> = (0..3)
            .filter_map(|_| generator.next())
            .map(|p| serde_json::from_slice(&p.body).expect("JSON"))
            .collect();
        assert!(bodies[1].get("email").is_none());
        assert_eq!(bodies[2]["payAmount"], "-1");
        assert!(
            bodies[0]["payId"]
                .as_str()
                .is_some_and(|p| p.contains("-i0"))
        );
    }

    #[test]
    fn customers_take_turns_so_later_requests_come_from_returning_ones() {
        let spec = PayloadSpec {
            customers: Some(3),
            ..generator(Mix::default(), 0).spec
        };
        let generator = Generator::new(spec, "abc", Mix::default(), Some(7));
        let emails: Vec<String> = std::iter::from_fn(|| generator.next())
            .map(|p| body(&p)["email"].clone())
            .collect();
        assert_eq!(emails.len(), 7);
        assert_eq!(emails[0], "lg-abc-0@example.com");
        assert_eq!(emails[3], emails[0]);
        assert_eq!(emails[6], emails[0]);
        assert_eq!(emails[4], emails[1]);
        assert_ne!(emails[1], emails[0]);
        assert_ne!(emails[2], emails[1]);
    }

    #[test]
    fn picks_stay_in_range() {
        assert_eq!(pick(5, 0), None);
        assert!((0..1000).all(|p| pick(p, 7).is_some_and(|i| i < 7)));
    }
}
