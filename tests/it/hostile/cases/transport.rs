//! Around the body: content types, routes and methods, other headers.

use super::*;

/// Content types other than JSON, odd spellings of JSON, and odd header bytes.
pub(super) fn content_types(out: &mut Vec<Case>) {
    let refused: &[&[u8]] = &[
        b"text/plain",
        b"text/json",
        b"text/html; charset=utf-8",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/xml",
        b"application/jsonx",
        b"application/json-seq",
        b"application/javascript",
        b"application/octet-stream",
        b"json",
        b"application/",
        b"application/ json",
        b"*/*",
        b"application/*",
        b"",
        b"application/json\xff",
        b"application/\xc3\xa9json",
    ];
    for content_type in refused {
        let name = String::from_utf8_lossy(content_type).into_owned();
        out.push(
            Case::new(
                "content type",
                format!("Content-Type {name:?}"),
                signed_bytes(fresh()),
                UNSUPPORTED,
            )
            .content_type(Some(content_type)),
        );
    }
    // The content type is checked before the body is read: a broken body still gets 415.
    out.push(
        Case::new(
            "content type",
            "text/plain with a broken body",
            b"{\"payId\":".to_vec(),
            UNSUPPORTED,
        )
        .content_type(Some(b"text/plain")),
    );
    let accepted: &[&[u8]] = &[
        b"APPLICATION/JSON",
        b"Application/Json",
        b"application/json;charset=utf-8",
        b"application/json ; charset=UTF-8",
        b"application/json; charset=latin1",
        b"application/json; foo=bar; baz",
        b"application/problem+json",
        b"application/vnd.partner.v3+json",
        b"  application/json  ",
    ];
    for content_type in accepted {
        let name = String::from_utf8_lossy(content_type).into_owned();
        out.push(
            Case::new(
                "content type",
                format!("Content-Type {name:?}"),
                signed_bytes(fresh()),
                OK,
            )
            .content_type(Some(content_type)),
        );
    }
    out.push(
        Case::new(
            "content type",
            "no Content-Type (taken as JSON)",
            signed_bytes(fresh()),
            OK,
        )
        .content_type(None),
    );
    out.push(
        Case::new(
            "content type",
            "no Content-Type and not JSON",
            b"payId=1".to_vec(),
            BODY_INVALID,
        )
        .content_type(None),
    );
}

/// Methods and paths around the two endpoints.
pub(super) fn routes(out: &mut Vec<Case>) {
    for method in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        out.push(
            Case::new(
                "route",
                format!("{method} /stripeSubDirectly"),
                signed_bytes(fresh()),
                Expect::Refused(405, "METHOD_NOT_ALLOWED", ""),
            )
            .method(method),
        );
    }
    for path in [
        "/stripeSubDirectly/",
        "/STRIPESUBDIRECTLY",
        "/stripesubdirectly",
        "//stripeSubDirectly",
        "/stripeSubDirectly%00",
        "/stripeSubDirectly/..",
        "/resultquery",
    ] {
        out.push(
            Case::new(
                "route",
                format!("POST {path}"),
                signed_bytes(fresh()),
                Expect::Refused(404, "NOT_FOUND", ""),
            )
            .to(path),
        );
    }
    // The other routes: a wrong method is 405, a near-miss of the path is 404.
    for (method, path) in [
        (Method::GET, "/cancelAutoRenewalRecord"),
        (Method::PUT, "/queryAutoRenewalRecord"),
        (Method::GET, "/stripe/webhook"),
        (Method::DELETE, "/stripe/webhook"),
    ] {
        out.push(
            Case::new(
                "route",
                format!("{method} {path}"),
                signed_bytes(fresh()),
                Expect::Refused(405, "METHOD_NOT_ALLOWED", ""),
            )
            .method(method)
            .to(path),
        );
    }
    for path in [
        "/cancelautorenewalrecord",
        "/queryAutoRenewalRecord/",
        "/stripe/webhook/",
        "/stripe/Webhook",
        "/stripe",
    ] {
        out.push(
            Case::new(
                "route",
                format!("POST {path}"),
                signed_bytes(fresh()),
                Expect::Refused(404, "NOT_FOUND", ""),
            )
            .to(path),
        );
    }
    out.push(
        Case::new(
            "route",
            "a query string is ignored",
            signed_bytes(fresh()),
            OK,
        )
        .to("/stripeSubDirectly?payId=x&sign=y"),
    );
}

/// Odd values of the other headers the intake reads: none of them changes the answer.
pub(super) fn other_headers(out: &mut Vec<Case>) {
    let cases: &[(&str, &[u8], Expect)] = &[
        ("x-request-id", b"../../etc/passwd", OK),
        ("x-request-id", &[b'a'; 1000], OK),
        ("x-request-id", "é-id".as_bytes(), OK),
        ("x-request-id", b"id\xff", OK),
        ("x-request-id", b"", OK),
        ("prefer", b"wait=0", OK),
        ("prefer", b"wait=abc", OK),
        ("prefer", b"wait=-1", OK),
        ("prefer", b"wait=", OK),
        ("prefer", b"respond-async, wait", OK),
        ("prefer", b"\xff\xfe", OK),
        ("accept", b"text/html", OK),
        ("accept-charset", b"utf-16", OK),
        ("content-encoding", b"identity", OK),
        ("expect", b"100-continue", OK),
        ("host", b"evil.example", OK),
    ];
    for (name, value, expect) in cases {
        let shown = String::from_utf8_lossy(value)
            .chars()
            .take(40)
            .collect::<String>();
        out.push(
            Case::new(
                "header",
                format!("{name}: {shown:?}"),
                signed_bytes(fresh()),
                *expect,
            )
            .header(name, value),
        );
    }
    // A gzip body is not decoded: the intake reads JSON as sent, so compressed bytes are not
    // JSON.
    out.push(
        Case::new(
            "header",
            "content-encoding: gzip with gzip bytes",
            vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03],
            BODY_INVALID,
        )
        .header("content-encoding", b"gzip"),
    );
}
