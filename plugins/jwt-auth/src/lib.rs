//! The `jwt-auth` filter: a request passes with a valid JSON Web Token; chosen claims go
//! upstream as headers; anything else gets 401 with a `WWW-Authenticate` challenge.
//!
//! Signatures are in [`verify`], token parsing and claim rules in [`token`], keys and the JWK
//! set cache in [`keys`], the whole decision in [`auth`]; all are tested natively.

pub mod auth;
pub mod keys;
pub mod token;
pub mod verify;

use auth::{AuthError, Authenticator, Config};
use sluice_sdk::callout::{self, CalloutError, CalloutRequest};
use sluice_sdk::{Decision, Filter, LocalResponse, Phases, Request, clock, export_filter, log, metrics};

/// One instance: the authenticator (with its JWK set cache) and the forwarding settings.
pub struct JwtAuth {
    authenticator: Authenticator,
    config: Config,
}

impl Filter for JwtAuth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let authenticator = Authenticator::new(&config)?;
        let header = config.header.to_ascii_lowercase();
        let forward_claims =
            config.forward_claims.iter().map(|(claim, header)| (claim.clone(), header.to_ascii_lowercase())).collect();
        Ok(Self { authenticator, config: Config { header, forward_claims, ..config } })
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST_HEADERS
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        // Claim headers are only ever ours.
        for header in self.config.forward_claims.values() {
            request.remove_header(header);
        }
        let from_header = request.header_str(&self.config.header);
        let from_cookie = request.header_str("cookie");
        let token = from_header.as_deref().and_then(auth::bearer).or_else(|| {
            let name = self.config.cookie.as_deref()?;
            auth::cookie(from_cookie.as_deref()?, name)
        });
        let jwks_url = &self.config.jwks_url;
        let fetch = || {
            let url = jwks_url.as_ref().ok_or("no jwks_url")?;
            let request = CalloutRequest {
                method: "GET".into(),
                path_with_query: url.path.clone(),
                headers: vec![("accept".into(), b"application/json".to_vec())],
                body: Vec::new(),
                timeout_ms: 0,
            };
            match callout::send(&url.upstream, &request) {
                Ok(response) if response.status == 200 => Ok(response.body),
                Ok(response) => Err(format!("{} answered {}", url.upstream, response.status)),
                Err(CalloutError::NotGranted(name)) => Err(format!("the tenant is not granted upstream {name}")),
                Err(CalloutError::UnknownUpstream(name)) => Err(format!("no upstream named {name}")),
                Err(CalloutError::Failed(reason)) => Err(reason),
            }
        };
        let outcome = self
            .authenticator
            .authenticate(token, clock::now_unix_ms(), fetch, |problem| log::warn(&format!("jwt-auth: {problem}")));
        match outcome {
            Ok(claims) => {
                for (claim, header) in &self.config.forward_claims {
                    if let Some(value) = claims.get(claim)
                        && let Err(reason) = request.set_header(header, token::claim_text(value))
                    {
                        log::warn(&format!("jwt-auth: claim {claim} not forwarded: {reason}"));
                    }
                }
                if !self.config.forward_token {
                    request.remove_header(&self.config.header);
                }
                metrics::counter_add("jwt_auth_requests_total", &[("result", "allowed")], 1);
                Decision::Continue
            }
            Err(error) => {
                let (challenge, reason, result) = match &error {
                    AuthError::Missing => {
                        (format!("Bearer realm=\"{}\"", self.config.realm), "no bearer token".to_owned(), "missing")
                    }
                    AuthError::Invalid(reason) => (
                        format!(
                            "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                            self.config.realm,
                            reason.replace(['"', '\\'], "'")
                        ),
                        reason.clone(),
                        "invalid",
                    ),
                };
                metrics::counter_add("jwt_auth_requests_total", &[("result", result)], 1);
                log::info(&format!("jwt-auth: refused: {reason}"));
                Decision::Respond(
                    LocalResponse::new(401)
                        .header("www-authenticate", challenge)
                        .header("content-type", "text/plain; charset=utf-8")
                        .body(format!("unauthorized: {reason} (request {})\n", request.request_id())),
                )
            }
        }
    }
}

export_filter!(JwtAuth);
