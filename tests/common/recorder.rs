//! A recording server on loopback: it stands in for an internal service (or a host a partner
//! should never reach), records every request it gets, and answers as told.

use std::sync::{Arc, Mutex};

use axum::response::IntoResponse;
use serde_json::json;

/// A secret-looking value an internal service answers with; it must never come back.
pub const INTERNAL: &str = "secret-internal-7f3a9c";

/// What the recording server answers.
#[derive(Clone)]
pub enum Answer {
    /// 500 with a JSON body that is not the platform's error envelope.
    InternalError,
    /// 307 to this URL, for every request.
    Redirect(String),
    /// A token for any token request; 404 (the platform's envelope) for anything else.
    Token,
}

/// A server on loopback that records every request (method and raw path) it gets.
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Recorder {
    pub async fn start(answer: Answer) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Default::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            let answer = answer.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri()));
                match answer {
                    Answer::InternalError => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        axum::Json(json!({ "secret-internal": INTERNAL })),
                    )
                        .into_response(),
                    Answer::Redirect(to) => (
                        axum::http::StatusCode::TEMPORARY_REDIRECT,
                        [(axum::http::header::LOCATION, to)],
                    )
                        .into_response(),
                    Answer::Token if req.uri().path().ends_with("/idp/token") => {
                        axum::Json(json!({"access_token": "recorded-token", "expires_in": 3600}))
                            .into_response()
                    }
                    Answer::Token => (
                        axum::http::StatusCode::NOT_FOUND,
                        axum::Json(
                            json!({"error": {"code": "NotFound", "message": "no such client"}}),
                        ),
                    )
                        .into_response(),
                }
            }
        });
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
                .unwrap();
        });
        Recorder { url, seen, stop }
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}
