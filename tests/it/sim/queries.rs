//! Lists, filters, pagination and search, and how bad parameters are refused.

use serde_json::json;

use crate::helpers::TestStack;

fn ids(body: &serde_json::Value) -> Vec<String> {
    body["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| o["id"].as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test]
async fn customers_list_by_exact_email_newest_first_in_pages() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(sim.post("/v1/customers", "email=same@b.c", None).await.body["id"].clone());
    }
    sim.post("/v1/customers", "email=Same@b.c", None).await;

    let first = sim.get("/v1/customers?email=same@b.c&limit=2").await;
    let after = ids(&first.body)[1].clone();
    let rest = sim
        .get(&format!(
            "/v1/customers?email=same%40b.c&limit=2&starting_after={after}"
        ))
        .await;

    assert_eq!(
        ids(&first.body),
        vec![made[2].as_str().expect("id"), made[1].as_str().expect("id")]
    );
    assert_eq!(first.body["has_more"], true);
    assert_eq!(first.body["object"], "list");
    assert_eq!(ids(&rest.body), vec![made[0].as_str().expect("id")]);
    assert_eq!(rest.body["has_more"], false);
}

#[tokio::test]
async fn customer_search_matches_email_and_metadata_together() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.post(
        "/v1/customers",
        "email=a@b.c&metadata[partnerCode]=P1",
        None,
    )
    .await;
    sim.post(
        "/v1/customers",
        "email=a@b.c&metadata[partnerCode]=P2",
        None,
    )
    .await;

    let both = sim.get("/v1/customers/search?query=email%3A%27a%40b.c%27%20AND%20metadata%5B%27partnerCode%27%5D%3A%27P2%27").await;
    let either = sim.get("/v1/customers/search?query=metadata['partnerCode']:'P1' OR metadata['partnerCode']:'P2'").await;
    let bad = sim.get("/v1/customers/search?query=colour:'red'").await;

    assert_eq!(both.body["object"], "search_result");
    assert_eq!(both.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(both.body["data"][0]["metadata"]["partnerCode"], "P2");
    assert_eq!(either.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_field("param"), Some("query"));
}

#[tokio::test]
async fn search_lags_writes_when_told_to_while_lists_see_them_at_once() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    sim.configure(json!({"search_delay_ms": 60000})).await;
    sim.post("/v1/customers", "email=a@b.c", None).await;

    let searched = sim.get("/v1/customers/search?query=email:'a@b.c'").await;
    let listed = sim.get("/v1/customers?email=a@b.c").await;

    assert_eq!(searched.body["data"], json!([]));
    assert_eq!(listed.body["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn prices_are_found_by_lookup_keys_in_either_array_syntax() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let gold = sim.price(1999, Some("gold")).await;
    let silver = sim.price(999, Some("silver")).await;
    sim.price(99, Some("bronze")).await;

    let appended = sim
        .get("/v1/prices?lookup_keys[]=gold&lookup_keys[]=silver")
        .await;
    let indexed = sim.get("/v1/prices?lookup_keys%5B0%5D=gold").await;

    let mut found = ids(&appended.body);
    found.sort();
    let mut expected = vec![gold.clone(), silver];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(ids(&indexed.body), vec![gold]);
}

#[tokio::test]
async fn a_lookup_key_in_use_is_refused_unless_transferred() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let old = sim.price(1999, Some("gold")).await;
    let form = "currency=usd&unit_amount=2999&recurring[interval]=month&product_data[name]=Gold&lookup_key=gold";

    let refused = sim.post("/v1/prices", form, None).await;
    let moved = sim
        .post(
            "/v1/prices",
            &format!("{form}&transfer_lookup_key=true"),
            None,
        )
        .await;
    let found = sim.get("/v1/prices?lookup_keys[]=gold").await;

    assert_eq!(refused.status, 400);
    assert_eq!(refused.error_field("param"), Some("lookup_key"));
    assert_eq!(moved.status, 200);
    assert_eq!(
        ids(&found.body),
        vec![moved.body["id"].as_str().expect("id").to_owned()]
    );
    assert_eq!(
        sim.get(&format!("/v1/prices/{old}")).await.body["lookup_key"],
        json!(null)
    );
}

#[tokio::test]
async fn subscriptions_list_by_customer_and_search_by_pay_id() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();
    let (alice, _) = sim.customer_with_card("a@b.c", "pm_card_visa").await;
    let (bob, _) = sim.customer_with_card("b@b.c", "pm_card_visa").await;
    let price = sim.price(500, None).await;
    for (customer, pay_id) in [(&alice, "PA1"), (&alice, "PA2"), (&bob, "PB1")] {
        let answer = sim
            .post(
                "/v1/subscriptions",
                &format!("customer={customer}&items[0][price]={price}&metadata[payId]={pay_id}"),
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    let alices = sim
        .get(&format!("/v1/subscriptions?customer={alice}"))
        .await;
    let by_pay_id = sim
        .get("/v1/subscriptions/search?query=metadata['payId']:'PB1'")
        .await;
    let canceled = sim
        .get(&format!(
            "/v1/subscriptions?customer={alice}&status=canceled"
        ))
        .await;

    assert_eq!(alices.body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(by_pay_id.body["data"][0]["customer"], bob.as_str());
    assert_eq!(by_pay_id.body["total_count"], 1);
    assert_eq!(canceled.body["data"], json!([]));
}

#[tokio::test]
async fn unknown_missing_and_malformed_parameters_are_stripe_400s_naming_the_param() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let unknown = sim.post("/v1/customers", "emial=a@b.c", None).await;
    let missing = sim
        .post("/v1/prices", "unit_amount=5&product_data[name]=x", None)
        .await;
    let malformed = sim.post("/v1/customers", "metadata[a=1", None).await;
    let bad_expand = sim.post("/v1/customers", "expand[]=sources", None).await;
    let bad_item = sim
        .post(
            "/v1/subscriptions",
            "customer=cus_x&items[0][pricee]=p",
            None,
        )
        .await;

    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.error_field("code"), Some("parameter_unknown"));
    assert_eq!(unknown.error_field("param"), Some("emial"));
    assert_eq!(missing.error_field("code"), Some("parameter_missing"));
    assert_eq!(missing.error_field("param"), Some("currency"));
    assert_eq!(malformed.status, 400);
    assert_eq!(bad_expand.error_field("param"), Some("expand"));
    assert_eq!(bad_item.status, 400);
    assert_eq!(sim.stats().await["objects"]["customers"], 0);
}

#[tokio::test]
async fn an_unknown_id_in_the_path_is_a_404_and_an_unknown_url_too() {
    let stack = TestStack::simulator_only().start().await;
    let sim = stack.sim();

    let customer = sim.get("/v1/customers/cus_nope").await;
    let url = sim.get("/v1/charges").await;

    assert_eq!(customer.status, 404);
    assert_eq!(customer.error_field("code"), Some("resource_missing"));
    assert_eq!(url.status, 404);
    assert_eq!(url.error_field("type"), Some("invalid_request_error"));
}
