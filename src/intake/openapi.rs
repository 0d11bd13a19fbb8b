//! `GET /openapi.json`: the intake's OpenAPI 3 document, kept beside the code it describes
//! (`openapi.json` in this folder) and checked against it by `tests/it/openapi.rs`.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, compiled into the binary so the served copy always matches this build.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
