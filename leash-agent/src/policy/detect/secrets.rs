//! The built-in secret detectors: one per credential format people paste,
//! written from each vendor's documented token format (prefix, length,
//! alphabet, checksum where the format has one). Each has a group (a
//! policy can name `secrets.cloud`) and a confidence: `high` for prefixed,
//! structured or checksummed formats, `medium` for values found by the
//! words around them (a vendor without a token prefix, `password=`), so a
//! policy can block on `secrets.high` and alert on `secrets.medium`.
//!
//! A token whose alphabet includes `-` or `_` is captured as group 1 and
//! followed by a non-token character or the end, since `\b` cannot end on
//! those characters.

use super::validate::{self as v, Validator};

/// Where a secret detector belongs, for policies and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecretGroup {
    Cloud,
    Code,
    Saas,
    Ai,
    Database,
    Keys,
    Generic,
}

impl SecretGroup {
    pub const ALL: [Self; 7] = [
        Self::Cloud,
        Self::Code,
        Self::Saas,
        Self::Ai,
        Self::Database,
        Self::Keys,
        Self::Generic,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::Code => "code",
            Self::Saas => "saas",
            Self::Ai => "ai",
            Self::Database => "database",
            Self::Keys => "keys",
            Self::Generic => "generic",
        }
    }
}

/// How sure a match is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Confidence {
    /// A prefixed, structured or checksummed format.
    High,
    /// Found by the words around a value.
    Medium,
}

impl Confidence {
    pub const fn name(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Medium => "medium",
        }
    }
}

/// One built-in secret detector.
#[derive(Clone, Copy)]
pub struct SecretSpec {
    pub name: &'static str,
    pub group: SecretGroup,
    pub confidence: Confidence,
    pub pattern: &'static str,
    pub validate: Option<Validator>,
    /// Literals (ASCII case ignored), one of which every match contains:
    /// the detector runs only on texts that have one (they stand for it in
    /// the one `RegexSet` pass). None: its whole pattern is in the set.
    pub needles: &'static [&'static str],
    /// Documented placeholders (`xxxx…`, `EXAMPLE`, `<…>`) do not count.
    /// Off for key blocks, whose real contents have runs of `A`.
    pub placeholders: bool,
    /// Every match has its needle as a whole word (no ASCII letter, digit
    /// or `_` right before or after it), so the set asks for that too:
    /// `token` then stands for `token: …`, not for `max_tokens`.
    pub words: bool,
}

use Confidence::{High, Medium};
use SecretGroup::{Ai, Cloud, Code, Database, Generic, Keys, Saas};

const fn s(
    name: &'static str,
    group: SecretGroup,
    confidence: Confidence,
    pattern: &'static str,
    validate: Option<Validator>,
    needles: &'static [&'static str],
) -> SecretSpec {
    SecretSpec {
        name,
        group,
        confidence,
        pattern,
        validate,
        needles,
        placeholders: true,
        words: false,
    }
}

/// `spec`, whose needles are whole words in every match.
const fn worded(spec: SecretSpec) -> SecretSpec {
    SecretSpec {
        words: true,
        ..spec
    }
}

const R: Option<Validator> = Some(v::random_enough);
const HEX: Option<Validator> = Some(v::hex_random);

/// Every built-in secret detector. Order matters only between detectors
/// whose matches can be the same span: the earlier one stands.
#[rustfmt::skip]
pub const SECRETS: &[SecretSpec] = &[
    // --- cloud -------------------------------------------------------------
    s("aws_access_key", Cloud, High, r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", Some(v::aws_key_id), &["AKIA", "ASIA", "ABIA", "ACCA"]),
    s("aws_secret_key", Cloud, Medium, r#"(?i)aws.{0,20}?(?:secret|key).{0,20}?['"=:\s]([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)"#, Some(v::random_enough), &["aws"]),
    s("gcp_service_account", Cloud, High, r#"\\?"private_key_id\\?"\s*:\s*\\?"([0-9a-f]{40})\\?""#, HEX, &["private_key_id"]),
    s("google_api_key", Cloud, High, r"\b(AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)", R, &["AIza"]),
    s("google_oauth_client_secret", Cloud, High, r"\b(GOCSPX-[A-Za-z0-9_-]{28})(?:[^A-Za-z0-9_-]|$)", R, &["GOCSPX-"]),
    s("google_oauth_token", Cloud, High, r"\bya29\.[A-Za-z0-9_-]{30,}", R, &["ya29."]),
    s("azure_storage_key", Cloud, High, r"(?i)\bAccountKey\s*=\s*([A-Za-z0-9+/]{86}==)", Some(v::azure_storage_key), &["AccountKey"]),
    s("azure_sas_token", Cloud, High, r#"\bsv=20\d{2}-\d{2}-\d{2}&[^\s"'<>]*?\bsig=([A-Za-z0-9%+/]{40,90})"#, Some(v::azure_sas_signature), &["sig="]),
    s("azure_ad_client_secret", Cloud, High, r"(?:^|[^A-Za-z0-9_~.-])([A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34})(?:[^A-Za-z0-9_~.-]|$)", R, &["Q~"]),
    s("digitalocean_token", Cloud, High, r"\bdo[opr]_v1_[a-f0-9]{64}\b", HEX, &["_v1_"]),
    s("cloudflare_origin_ca_key", Cloud, High, r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b", HEX, &["v1.0-"]),
    s("cloudflare_api_token", Cloud, Medium, r#"(?i)\bcloudflare[\w .-]{0,20}?(?:token|key)\b.{0,5}?[=:\s"']\s*["']?([A-Za-z0-9_-]{40})(?:[^A-Za-z0-9_-]|$)"#, R, &["cloudflare"]),
    s("alibaba_access_key", Cloud, High, r"\bLTAI[A-Za-z0-9]{12,20}\b", R, &["LTAI"]),
    s("heroku_api_key", Cloud, High, r"\b(HRKU-[A-Za-z0-9_-]{60})(?:[^A-Za-z0-9_-]|$)", R, &["HRKU-"]),
    s("terraform_cloud_token", Cloud, High, r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_-]{60,70}", R, &[".atlasv1."]),
    s("vault_token", Cloud, High, r"\bhv[sbr]\.[A-Za-z0-9_-]{24,}", R, &["hvs.", "hvb.", "hvr."]),
    s("doppler_token", Cloud, High, r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}\b", R, &["dp."]),
    s("pulumi_token", Cloud, High, r"\bpul-[a-f0-9]{40}\b", HEX, &["pul-"]),
    s("supabase_token", Cloud, High, r"\bsbp_[a-f0-9]{40}\b", HEX, &["sbp_"]),
    s("planetscale_token", Cloud, High, r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_.-]{32,64}", R, &["pscale_"]),
    // --- code and packages -------------------------------------------------
    s("github_token", Code, High, r"\bgh[pousr]_[A-Za-z0-9]{36}\b", Some(v::base62_crc32_token), &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]),
    s("github_fine_grained_pat", Code, High, r"\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b", R, &["github_pat_"]),
    s("gitlab_token", Code, High, r"\b(?:glpat|gldt|glptt|glrt|glcbt|glft|glimt|glagent|gloas|glsoat)-[A-Za-z0-9_-]{20,}", R, &[ "glpat-", "gldt-", "glptt-", "glrt-", "glcbt-", "glft-", "glimt-", "glagent-", "gloas-", "glsoat-", ]),
    s("bitbucket_app_password", Code, High, r"\bATBB[A-Za-z0-9]{32}\b", R, &["ATBB"]),
    s("atlassian_api_token", Code, High, r"\bATATT3[A-Za-z0-9_=-]{150,}", R, &["ATATT3"]),
    s("npm_token", Code, High, r"\bnpm_[A-Za-z0-9]{36}\b", Some(v::base62_crc32_token), &["npm_"]),
    s("pypi_token", Code, High, r"\bpypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}", R, &["pypi-AgE"]),
    s("rubygems_token", Code, High, r"\brubygems_[a-f0-9]{48}\b", HEX, &["rubygems_"]),
    s("dockerhub_token", Code, High, r"\b(dckr_pat_[A-Za-z0-9_-]{27})(?:[^A-Za-z0-9_-]|$)", R, &["dckr_pat_"]),
    s("huggingface_token", Code, High, r"\b(?:hf|api_org)_[A-Za-z]{34}\b", R, &["hf_", "api_org_"]),
    s("nuget_key", Code, High, r"\boy2[a-z0-9]{43}\b", R, &["oy2"]),
    s("clojars_token", Code, High, r"\bCLOJARS_[a-z0-9]{60}\b", R, &["CLOJARS_"]),
    s("crates_io_token", Code, High, r"\bcio[A-Za-z0-9]{32}\b", R, &["cio"]),
    s("sonarqube_token", Code, High, r"\bsq[apu]_[a-f0-9]{40}\b", HEX, &["sqa_", "sqp_", "squ_"]),
    s("postman_api_key", Code, High, r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", HEX, &["PMAK-"]),
    s("grafana_token", Code, High, r"\b(?:glc_[A-Za-z0-9+/]{32,400}={0,2}|glsa_[A-Za-z0-9]{32}_[a-f0-9]{8}\b)", R, &["glc_", "glsa_"]),
    s("sentry_token", Code, High, r"\b(?:sntrys_[A-Za-z0-9+/=_-]{60,}|sntryu_[a-f0-9]{64}\b)", R, &["sntrys_", "sntryu_"]),
    // --- SaaS and payments --------------------------------------------------
    s("slack_token", Saas, High, r"\b(?:xox[abposr]-\d{6,}-[A-Za-z0-9-]{10,}|xapp-\d-[A-Z0-9]{9,12}-\d{10,14}-[a-f0-9]{64})\b", R, &[ "xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-", "xapp-", ]),
    s("slack_webhook", Saas, High, r"https://hooks\.slack\.com/(?:services|workflows|triggers)/T[A-Z0-9]{8,12}/[A-Z0-9]{8,12}/[A-Za-z0-9]{24}\b", R, &["hooks.slack.com"]),
    s("discord_webhook", Saas, High, r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{17,20}/([A-Za-z0-9_-]{60,68})(?:[^A-Za-z0-9_-]|$)", R, &["/api/webhooks/"]),
    s("discord_bot_token", Saas, High, r"\b([MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38})(?:[^A-Za-z0-9_-]|$)", Some(v::discord_bot_token), &[]),
    s("telegram_bot_token", Saas, High, r"\b(\d{8,10}:AA[A-Za-z0-9_-]{33})(?:[^A-Za-z0-9_-]|$)", R, &[":AA"]),
    s("stripe_key", Saas, High, r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,99}\b", R, &["sk_live_", "sk_test_", "rk_live_", "rk_test_"]),
    s("stripe_webhook_secret", Saas, High, r"\bwhsec_[A-Za-z0-9]{32,}\b", R, &["whsec_"]),
    s("twilio_api_key", Saas, High, r"\bSK[0-9a-f]{32}\b", HEX, &["SK"]),
    s("sendgrid_key", Saas, High, r"\b(SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})(?:[^A-Za-z0-9_-]|$)", R, &["SG."]),
    s("mailgun_key", Saas, High, r"\bkey-[0-9a-f]{32}\b", HEX, &["key-"]),
    s("mailchimp_key", Saas, High, r"\b[0-9a-f]{32}-us\d{1,2}\b", HEX, &["-us"]),
    s("shopify_token", Saas, High, r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", HEX, &["shpat_", "shpca_", "shppa_", "shpss_"]),
    s("datadog_key", Saas, Medium, r#"(?i)\b(?:datadog|dd)[_ -]?(?:api|app(?:lication)?)[_ -]?key\b.{0,5}?[=:\s"']\s*["']?([a-f0-9]{40}|[a-f0-9]{32})\b"#, HEX, &["datadog", "dd_ap", "dd-ap", "dd ap", "ddap"]),
    s("new_relic_key", Saas, High, r"\b(?:NRAK-[A-Z0-9]{27}|NRII-[A-Za-z0-9_-]{32}|NRJS-[a-f0-9]{19}|[a-f0-9]{36}NRAL)\b", R, &["NRAK-", "NRII-", "NRJS-", "NRAL"]),
    s("pagerduty_key", Saas, Medium, r#"(?i)\bpagerduty[\w .-]{0,20}?(?:token|key)\b.{0,5}?[=:\s"']\s*["']?([A-Za-z0-9_+-]{20})(?:[^A-Za-z0-9_+-]|$)"#, R, &["pagerduty"]),
    s("linear_key", Saas, High, r"\blin_(?:api|oauth)_[A-Za-z0-9]{40}\b", R, &["lin_api_", "lin_oauth_"]),
    s("notion_token", Saas, High, r"\b(?:secret_[A-Za-z0-9]{43}|ntn_\d{11}[A-Za-z0-9]{35})\b", R, &["secret_", "ntn_"]),
    s("airtable_token", Saas, High, r"\bpat[A-Za-z0-9]{14}\.[a-f0-9]{64}\b", R, &["pat"]),
    s("square_token", Saas, High, r"\b(EAAA[A-Za-z0-9_-]{60}|sq0(?:atp|csp)-[A-Za-z0-9_-]{22,43})(?:[^A-Za-z0-9_-]|$)", R, &["EAAA", "sq0atp-", "sq0csp-"]),
    s("braintree_token", Saas, High, r"\baccess_token\$(?:production|sandbox)\$[a-z0-9]{16}\$[a-f0-9]{32}\b", HEX, &["access_token$"]),
    s("dropbox_token", Saas, High, r"\bsl\.[A-Za-z0-9_-]{130,}", R, &["sl."]),
    // --- AI providers ------------------------------------------------------
    s("openrouter_key", Ai, High, r"\bsk-or-v1-[a-f0-9]{64}\b", HEX, &["sk-or-v1-"]),
    s("anthropic_key", Ai, High, r"\b(sk-ant-[A-Za-z0-9_-]{20,})(?:[^A-Za-z0-9_-]|$)", R, &["sk-ant-"]),
    s("openai_key", Ai, High, r"\b(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,})(?:[^A-Za-z0-9_-]|$)", Some(v::openai_key), &["sk-"]),
    s("groq_key", Ai, High, r"\bgsk_[A-Za-z0-9]{52}\b", R, &["gsk_"]),
    s("xai_key", Ai, High, r"\bxai-[A-Za-z0-9]{80}\b", R, &["xai-"]),
    s("replicate_token", Ai, High, r"\br8_[A-Za-z0-9]{37}\b", R, &["r8_"]),
    s("perplexity_key", Ai, High, r"\bpplx-[A-Za-z0-9]{48}\b", R, &["pplx-"]),
    s("langsmith_key", Ai, High, r"\blsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}\b", HEX, &["lsv2_"]),
    s("pinecone_key", Ai, High, r"\bpcsk_[A-Za-z0-9]{4,8}_[A-Za-z0-9]{50,80}\b", R, &["pcsk_"]),
    s("nvidia_key", Ai, High, r"\b(nvapi-[A-Za-z0-9_-]{64})(?:[^A-Za-z0-9_-]|$)", R, &["nvapi-"]),
    s("mistral_key", Ai, Medium, r#"(?i)\bmistral[\w .-]{0,20}?(?:token|key)\b.{0,5}?[=:\s"']\s*["']?([A-Za-z0-9]{32})\b"#, R, &["mistral"]),
    s("cohere_key", Ai, Medium, r#"(?i)\bcohere[\w .-]{0,20}?(?:token|key)\b.{0,5}?[=:\s"']\s*["']?([A-Za-z0-9]{40})\b"#, R, &["cohere"]),
    // --- databases ---------------------------------------------------------
    s("database_url", Database, High, r#"(?i)\b(?:jdbc:)?(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|clickhouse|cockroachdb|oracle)://[^\s:/@'"]*:([^\s@/'"]+)@[A-Za-z0-9.-]+"#, Some(v::real_password), &["://"]),
    s("connection_string_password", Database, High, r"(?i)\b(?:server|data source|host|address|uid|user id|username|user)\s*=\s*[^;\n]+;(?:[^;\n]*;){0,8}?\s*(?:password|pwd)\s*=\s*([^;\s'\x22]+)", Some(v::real_password), &["password", "pwd"]),
    // --- private keys and signed tokens -------------------------------------
    SecretSpec {
        name: "private_key",
        needles: &["PRIVATE KEY"],
        group: Keys,
        confidence: High,
        pattern: r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----(?:\s|\\+[nr])*(?:[A-Za-z-]+: [^\n\\]*(?:\s|\\+[nr])+)*(?:[A-Za-z0-9+/=]|\s|\\+[nr]){24,}(?:-----END [A-Z ]+-----)?",
        validate: Some(v::pem_private_key),
        placeholders: false,
        words: false,
    },
    s("age_secret_key", Keys, High, r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b", None, &["AGE-SECRET-KEY-1"]),
    SecretSpec {
        name: "putty_private_key",
        needles: &["PuTTY-User-Key-File-"],
        group: Keys,
        confidence: High,
        pattern: r"PuTTY-User-Key-File-[23]: [a-z0-9-]+(?:\s|\\+[nr])+Encryption: [a-z0-9-]+",
        validate: None,
        placeholders: false,
        words: false,
    },
    s("jwt", Keys, High, r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,})(?:[^A-Za-z0-9_-]|$)", Some(v::jwt), &["eyJ"]),
    // --- generic -----------------------------------------------------------
    worded(s("generic_secret", Generic, Medium, r#"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|token|access[_-]?key)\b\s*[:=]\s*['"]?[^\s'"]{8,}"#, Some(v::generic_secret), &[ "password", "passwd", "pwd", "secret", "api_key", "api-key", "apikey", "token", "access_key", "access-key", "accesskey", ])),
];
