//! On whose behalf a Stripe call is made: the partner whose job or request it serves. The
//! budget shares Stripe's rate between partners by it, and the call counter is labelled with
//! it, so an operator sees each partner's share.
//!
//! A task-local, not an argument of every call: the partner is a property of the job a call
//! is made for, set once where the job starts ([`on_behalf_of`]), as a tracing span is; the
//! gateway's calls and the job path's ports stay as Stripe's API has them.

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static PARTNER: Arc<str>;
}

/// Runs `work` with every Stripe call in it made on behalf of `partner` (none: of no partner,
/// as Stripe's events and reconciliation are).
pub async fn on_behalf_of<F: Future>(partner: Option<&str>, work: F) -> F::Output {
    PARTNER
        .scope(Arc::from(partner.unwrap_or_default()), work)
        .await
}

/// The partner the current call is made for; empty outside [`on_behalf_of`] or for no partner.
pub fn current_partner() -> Arc<str> {
    PARTNER
        .try_with(Arc::clone)
        .unwrap_or_else(|_| Arc::from(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_knows_its_partner_inside_the_scope_and_no_partner_outside_it() {
        assert_eq!(&*current_partner(), "");
        let inside = on_behalf_of(Some("P000818"), async { current_partner() }).await;
        assert_eq!(&*inside, "P000818");
        let none = on_behalf_of(None, async { current_partner() }).await;
        assert_eq!(&*none, "");
    }
}
