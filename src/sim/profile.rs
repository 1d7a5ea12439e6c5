//! What differs between the APIs the simulator speaks, as one value per profile: routes, the
//! token grant, the execute body and answer shapes, the error body, deduplication.

use super::config::ProfileName;

/// How the token endpoint checks a grant and what it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// v1: Basic credentials and `grant_type=client_credentials`; every refusal is the
    /// reference's 401 `{"error":"invalid_client"}`; the answer echoes `scope`.
    Seed,
    /// Genesys Cloud: Basic credentials and a form `grant_type=client_credentials`; refusals
    /// are RFC 6749 errors in Genesys's `{"error","description","error_description"}`.
    ClientCredentials,
    /// NICE CXone: Basic client credentials and a form password grant whose `username` and
    /// `password` are an access key; the answer carries `refresh_token` and an `id_token`.
    AccessKeyPassword,
}

/// Where the payload sits in an execute body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyShape {
    /// `{"inputs":{"<payload>":{"value","<content type>"},"metadata":{…},"chunk":{…}}}`.
    Nested,
    /// One flat object: payload, content type, `chunk*` fields and every metadata key.
    Flat,
}

/// What a successful execute answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerShape {
    /// 202 `{"executionId","status":"queued","message"}`.
    Accepted,
    /// A synchronous 200 whose body is the action's output; the execution id travels in the
    /// `ININ-Correlation-Id` header.
    Output,
}

/// The body of error answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorShape {
    /// The reference's `{"error":"<message>"}`.
    Seed,
    /// Genesys's `ErrorBody`: `{"message","code","status","messageWithParams","messageParams",
    /// "contextId","details","errors"}`, `contextId` equal to the `ININ-Correlation-Id` header.
    Genesys,
}

/// Everything a handler needs to know about the API it is speaking. Handlers read these
/// fields instead of asking which profile runs.
#[derive(Debug)]
pub(crate) struct Profile {
    /// Path of the token endpoint (for cxone: what the discovery document's
    /// `token_endpoint` points at).
    pub(crate) token_path: &'static str,
    pub(crate) grant: Grant,
    /// Execute is `POST {execute_prefix}{id}/execute`.
    pub(crate) execute_prefix: &'static str,
    pub(crate) body: BodyShape,
    pub(crate) answer: AnswerShape,
    pub(crate) errors: ErrorShape,
    /// A repeated `Idempotency-Key` answers its first execution instead of running again.
    pub(crate) dedupe: bool,
    /// Serves `/.well-known/openid-configuration` and `/.well-known/cxone-configuration`.
    pub(crate) discovery: bool,
    /// Every answer carries `ININ-Correlation-Id`, and `SIM_ININ_RATELIMIT` applies.
    pub(crate) inin_headers: bool,
}

pub(crate) const EXECUTE_SUFFIX: &str = "/execute";

const SEED: Profile = Profile {
    token_path: "/api/v2/oauth/token",
    grant: Grant::Seed,
    execute_prefix: "/api/v2/data-actions/",
    body: BodyShape::Nested,
    answer: AnswerShape::Accepted,
    errors: ErrorShape::Seed,
    dedupe: true,
    discovery: false,
    inin_headers: false,
};

const GENESYS: Profile = Profile {
    token_path: "/oauth/token",
    grant: Grant::ClientCredentials,
    execute_prefix: "/api/v2/integrations/actions/",
    body: BodyShape::Flat,
    answer: AnswerShape::Output,
    errors: ErrorShape::Genesys,
    dedupe: false,
    discovery: false,
    inin_headers: true,
};

const CXONE: Profile = Profile {
    token_path: "/auth/token",
    grant: Grant::AccessKeyPassword,
    discovery: true,
    ..SEED
};

impl Profile {
    pub(crate) fn of(name: ProfileName) -> &'static Profile {
        match name {
            ProfileName::Seed => &SEED,
            ProfileName::Genesys => &GENESYS,
            ProfileName::Cxone => &CXONE,
        }
    }

    /// The router's pattern of the execute path.
    pub(crate) fn execute_route(&self) -> String {
        format!("{}{{id}}{EXECUTE_SUFFIX}", self.execute_prefix)
    }

    /// The `{id}` segment of an execute path, still percent-encoded; "" when the path is not
    /// this profile's execute path.
    pub(crate) fn action_segment<'p>(&self, path: &'p str) -> &'p str {
        path.strip_prefix(self.execute_prefix)
            .and_then(|rest| rest.strip_suffix(EXECUTE_SUFFIX))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cxone_executes_as_seed_but_authenticates_its_own_way() {
        let (seed, cxone) = (
            Profile::of(ProfileName::Seed),
            Profile::of(ProfileName::Cxone),
        );
        assert_eq!(cxone.execute_prefix, seed.execute_prefix);
        assert_eq!(
            (cxone.body, cxone.answer, cxone.errors),
            (seed.body, seed.answer, seed.errors)
        );
        assert!(cxone.dedupe);
        assert_ne!(cxone.grant, seed.grant);
    }

    #[test]
    fn action_segment_reads_the_profiles_own_path() {
        let genesys = Profile::of(ProfileName::Genesys);
        assert_eq!(
            genesys.execute_route(),
            "/api/v2/integrations/actions/{id}/execute"
        );
        assert_eq!(
            genesys.action_segment("/api/v2/integrations/actions/a%20b/execute"),
            "a%20b"
        );
        assert_eq!(genesys.action_segment("/api/v2/data-actions/a/execute"), "");
    }
}
