//! The built-in web console, compiled into the binary so it works without internet. In:
//! `GET /` and `GET /console/{file}`. Out: the files of `dashboards/console` (a SQL editor
//! with table and chart results, the table list, a live page) and the vendored uPlot chart
//! library, with their content types. The console calls the same HTTP API as any client.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../dashboards/console/index.html");

/// `(name, content type, bytes)` of every file under `/console/`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboards/console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboards/console/console.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../dashboards/console/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../dashboards/console/vendor/uPlot.min.css"),
    ),
];

#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The web console", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

#[utoipa::path(get, path = "/console/{file}", tag = "operations",
    params(("file" = String, Path, description = "A file of the console: app.js, style.css, uPlot's script and styles")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 404, description = "No such file", body = String, content_type = "text/plain"),
    ))]
pub async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, format!("no console file {name:?}")).into_response(),
    }
}
