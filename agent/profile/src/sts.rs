//! Assuming an AWS role (upstream Kanister's Secret key `role`): the key pair of the Profile's
//! Secret signs an STS `AssumeRole` request, and the store then works with the role's temporary
//! credentials, asked for again before they expire. The key pair itself never signs a store
//! request: a role that cannot be assumed fails the request, it never falls back to the key
//! pair's own rights.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpRequest};

/// How long the role's credentials are asked for (upstream's default `assumeRoleDuration`).
pub const SESSION_DURATION: Duration = Duration::from_secs(3600);

/// Credentials are asked for again this long before they expire, so a request signed just
/// before the end does not reach the store after it.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The session name the store's audit log shows for the agent's requests.
const SESSION_NAME: &str = "kanister";

/// A credential provider that assumes `role_arn` with a base key pair.
pub struct AssumeRole {
    client: HttpClient,
    base: AwsCredential,
    role_arn: String,
    endpoint: String,
    region: String,
    cached: tokio::sync::Mutex<Option<(Arc<AwsCredential>, SystemTime)>>,
}

impl std::fmt::Debug for AssumeRole {
    // Never the key pair or a session's secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumeRole").field("role_arn", &self.role_arn).field("endpoint", &self.endpoint).finish()
    }
}

impl AssumeRole {
    /// A provider that asks `endpoint` (an STS endpoint: `https://sts.REGION.amazonaws.com`, or
    /// an S3-compatible server's own endpoint) for `role_arn`'s credentials, signing with `base`.
    pub fn new(client: HttpClient, base: AwsCredential, role_arn: String, endpoint: String, region: String) -> Self {
        Self { client, base, role_arn, endpoint, region, cached: tokio::sync::Mutex::new(None) }
    }

    /// One `AssumeRole` call, retried on a connection failure or a server error.
    async fn assume(&self) -> Result<(AwsCredential, SystemTime), String> {
        use backon::Retryable;
        let attempt = || async { self.assume_once().await };
        attempt
            .retry(backon::ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_times(3))
            .when(|e: &Failure| e.transient)
            .await
            .map_err(|e| e.message)
    }

    async fn assume_once(&self) -> Result<(AwsCredential, SystemTime), Failure> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRole")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", SESSION_NAME)
            .append_pair("DurationSeconds", &SESSION_DURATION.as_secs().to_string())
            .finish();
        let mut request: HttpRequest = http::Request::builder()
            .method(http::Method::POST)
            .uri(&self.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body.into())
            .map_err(|e| Failure::fatal(format!("invalid STS endpoint {:?}: {e}", self.endpoint)))?;
        AwsAuthorizer::new(&self.base, "sts", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| Failure::fatal(format!("cannot sign the AssumeRole request: {e}")))?;
        let response = self.client.execute(request).await.map_err(|e| Failure {
            transient: true,
            message: format!("cannot reach the STS endpoint {}: {e}", self.endpoint),
        })?;
        let status = response.status();
        let text = response.into_body().bytes().await.map_err(|e| Failure {
            transient: true,
            message: format!("reading the STS answer from {}: {e}", self.endpoint),
        })?;
        let text = String::from_utf8_lossy(&text);
        if !status.is_success() {
            return Err(Failure {
                transient: status.is_server_error() || status.as_u16() == 429,
                message: format!("{} (HTTP {})", describe_error(&text), status.as_u16()),
            });
        }
        parse_response(&text).map_err(Failure::fatal)
    }
}

struct Failure {
    transient: bool,
    message: String,
}

impl Failure {
    fn fatal(message: String) -> Self {
        Self { transient: false, message }
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for AssumeRole {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expires)) = cached.as_ref()
            && still_fresh(*expires, SystemTime::now())
        {
            return Ok(credential.clone());
        }
        let (credential, expires) = self.assume().await.map_err(|message| object_store::Error::Generic {
            store: "S3",
            source: format!(
                "assuming the role {} failed: {message}; check the role's trust policy names the Profile's key \
                 pair, or remove the Secret's \"role\" key to use the key pair's own rights",
                self.role_arn
            )
            .into(),
        })?;
        let credential = Arc::new(credential);
        *cached = Some((credential.clone(), expires));
        Ok(credential)
    }
}

/// Whether credentials ending at `expires` may still sign a request at `now`.
fn still_fresh(expires: SystemTime, now: SystemTime) -> bool {
    now + REFRESH_MARGIN < expires
}

/// The temporary credentials and their end in an `AssumeRoleResponse`. Only these four elements
/// are read; whatever else the server sends is ignored.
pub fn parse_response(xml: &str) -> Result<(AwsCredential, SystemTime), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Response {
        assume_role_result: RoleResult,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct RoleResult {
        credentials: Credentials,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Credentials {
        access_key_id: String,
        secret_access_key: String,
        session_token: String,
        expiration: String,
    }
    let r: Response =
        quick_xml::de::from_str(xml).map_err(|e| format!("the STS answer is not an AssumeRoleResponse: {e}"))?;
    let c = r.assume_role_result.credentials;
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
        return Err("the STS answer holds no credentials".into());
    }
    let expires = humantime::parse_rfc3339_weak(c.expiration.trim())
        .map_err(|e| format!("the STS answer's Expiration {:?} is not a time: {e}", c.expiration))?;
    let token = Some(c.session_token).filter(|t| !t.is_empty());
    Ok((AwsCredential { key_id: c.access_key_id, secret_key: c.secret_access_key, token }, expires))
}

/// The code and message of an STS `ErrorResponse`, or a short excerpt of whatever came back.
fn describe_error(xml: &str) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorResponse {
        error: ErrorBody,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorBody {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match quick_xml::de::from_str::<ErrorResponse>(xml) {
        Ok(e) => format!("{}: {}", e.error.code, e.error.message),
        Err(_) => {
            let excerpt: String = xml.chars().filter(|c| !c.is_control()).take(200).collect();
            format!("the STS endpoint answered {excerpt:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials>
<AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>c2VjcmV0</SecretAccessKey><SessionToken>tok.en</SessionToken>
<Expiration>2026-12-04T09:09:12Z</Expiration></Credentials><AssumedRoleUser><Arn>arn:aws:sts::0:assumed-role/r/s</Arn>
</AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleResponse>"#;

    #[test]
    fn an_answer_gives_the_credentials_and_their_end() {
        let (c, expires) = parse_response(OK).unwrap();
        assert_eq!(
            (c.key_id.as_str(), c.secret_key.as_str(), c.token.as_deref()),
            ("ASIAEXAMPLE", "c2VjcmV0", Some("tok.en"))
        );
        assert_eq!(expires, humantime::parse_rfc3339("2026-12-04T09:09:12Z").unwrap());
        // AWS writes fractions of a second.
        let (_, e) = parse_response(&OK.replace("09:09:12Z", "09:09:12.123Z")).unwrap();
        assert!(e > expires);
    }

    #[test]
    fn credentials_are_renewed_before_they_end() {
        let now = SystemTime::now();
        assert!(still_fresh(now + SESSION_DURATION, now));
        assert!(still_fresh(now + REFRESH_MARGIN + Duration::from_secs(1), now));
        assert!(!still_fresh(now + REFRESH_MARGIN, now), "renewed at the margin, not after it");
        assert!(!still_fresh(now - Duration::from_secs(1), now));
    }

    #[test]
    fn a_bad_answer_is_an_error_naming_what_is_wrong() {
        let cases = [
            ("", "not an AssumeRoleResponse"),
            ("<html>proxy login</html>", "not an AssumeRoleResponse"),
            (&OK.replace("2026-12-04T09:09:12Z", "tomorrow"), "is not a time"),
            (&OK.replace("<AccessKeyId>ASIAEXAMPLE</AccessKeyId>", "<AccessKeyId></AccessKeyId>"), "no credentials"),
            (&OK.replace("<SessionToken>tok.en</SessionToken>", ""), "not an AssumeRoleResponse"),
        ];
        for (xml, want) in cases {
            let e = parse_response(xml).unwrap_err();
            assert!(e.contains(want), "{xml:?}: {e}");
        }
    }

    #[test]
    fn an_error_answer_is_described_by_its_code_and_message() {
        let xml = r#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>user stranger is not authorized</Message></Error></ErrorResponse>"#;
        assert_eq!(describe_error(xml), "AccessDenied: user stranger is not authorized");
        assert!(describe_error("\u{1b}[31mBad gateway").starts_with("the STS endpoint answered \"[31mBad gateway"));
    }

    proptest::proptest! {
        // The answer comes from the network: no input makes the parser panic.
        #[test]
        fn no_answer_makes_the_parser_panic(s in ".{0,300}", cut in 0usize..700) {
            let _ = parse_response(&s);
            let _ = describe_error(&s);
            let mut t = OK.to_string();
            t.truncate(cut.min(t.len()));
            while !t.is_char_boundary(t.len()) { t.pop(); }
            let _ = parse_response(&t);
        }
    }
}
