//! What a table spec may pass to librdkafka. In: `source.kafka.properties` from a spec (a
//! client's request). Out: the checked settings, with `${env:NAME}` references resolved at run
//! time, and a redacted copy for responses and logs.
//!
//! The spec is a trust boundary: librdkafka loads shared libraries (`plugin.library.paths`,
//! `ssl.engine.location`, OpenSSL providers), runs commands (`sasl.kerberos.kinit.cmd`),
//! reads local files (`*.location`, keytabs) and calls back into the process (`*.cb`), all
//! from configuration strings. So only an allowlist of consumer settings is accepted —
//! security (SASL, inline PEM TLS material), fetch/session/heartbeat/socket tunables and
//! `client.id` — and anything else is refused with its key named. Basalt owns `group.id`,
//! offset commits and the start position.
//!
//! Secrets (`sasl.password`, `ssl.key.password`, ...) may be written as `${env:NAME}`,
//! resolved from the server's environment when the consumer is created (Kafka Connect's and
//! Druid's config providers work the same way), so the metastore holds only the reference.
//! Only variables whose name starts with the operator's prefix (default `BASALT_SECRET_`) can
//! be referenced: a client that names the brokers must not be able to make the server send
//! it any other variable. Literal secrets are kept (the consumer needs them after a restart)
//! but every response and log line shows them as `***`.

use std::collections::BTreeMap;

/// Settings accepted exactly (lowercase librdkafka names).
const ALLOWED: &[&str] = &[
    "client.id",
    "client.rack",
    "client.dns.lookup",
    // Security.
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.kerberos.service.name",
    "sasl.kerberos.principal",
    "sasl.kerberos.min.time.before.relogin",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.extensions",
    "sasl.oauthbearer.token.endpoint.url",
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.sigalgs.list",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    // Fetching.
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "fetch.error.backoff.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "receive.message.max.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "isolation.level",
    "check.crcs",
    // Session, heartbeat, metadata.
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "topic.metadata.refresh.fast.interval.ms",
    "api.version.request",
    "api.version.request.timeout.ms",
    "api.version.fallback.ms",
    "broker.version.fallback",
    // Sockets and retries.
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.nagle.disable",
    "socket.max.fails",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "socket.connection.setup.timeout.ms",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
];

/// Settings whose values are secrets: redacted wherever a spec is shown.
const SECRET: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.pem",
    "ssl.key.password",
];

/// Byte and count settings with an upper bound, so one spec cannot make the consumer buffer
/// without limit (librdkafka's own maxima are around 2 GiB per setting).
const BOUNDED: &[(&str, u64)] = &[
    ("queued.max.messages.kbytes", 1 << 20),
    ("queued.min.messages", 10_000_000),
    ("fetch.max.bytes", 1 << 30),
    ("fetch.message.max.bytes", 1 << 30),
    ("max.partition.fetch.bytes", 1 << 30),
    ("receive.message.max.bytes", (1 << 30) + 512),
    ("socket.send.buffer.bytes", 64 << 20),
    ("socket.receive.buffer.bytes", 64 << 20),
];

/// The settings Basalt sets itself, with why a spec may not.
fn owned_by_basalt(key: &str) -> Option<&'static str> {
    Some(match key {
        "group.id" | "group.instance.id" | "group.protocol" | "partition.assignment.strategy" => {
            "Basalt owns the consumer group and assigns partitions itself"
        }
        "enable.auto.commit" | "enable.auto.offset.store" | "auto.commit.interval.ms" => {
            "checkpoints live in the metastore; offsets are never auto-committed"
        }
        "auto.offset.reset" => "use source.kafka.start (earliest or latest)",
        "bootstrap.servers" | "metadata.broker.list" => "use source.kafka.brokers",
        _ => return None,
    })
}

/// Why a setting is refused outright (code loading, commands, local files, callbacks).
fn dangerous(key: &str) -> Option<&'static str> {
    if key == "plugin.library.paths" || key.starts_with("interceptor") {
        Some("it loads code into the server")
    } else if key.ends_with(".cb") || key.ends_with("_cb") || key == "opaque" {
        Some("it installs a callback into the server")
    } else if key == "sasl.kerberos.kinit.cmd" {
        Some("it runs a command on the server")
    } else if key.ends_with(".location")
        || key == "sasl.kerberos.keytab"
        || key == "ssl.providers"
        || key == "ssl_engine_location"
    {
        Some("it names a file or module on the server (use the inline ssl.*.pem settings)")
    } else {
        None
    }
}

/// A checked property that librdkafka may not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source.kafka.properties.{key}: {reason}")]
pub struct PropertyError {
    pub key: String,
    pub reason: String,
}

fn refuse(key: &str, reason: impl Into<String>) -> PropertyError {
    PropertyError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// An `${env:NAME}` reference: the variable's name.
pub fn env_reference(value: &str) -> Option<&str> {
    value.trim().strip_prefix("${env:")?.strip_suffix('}')
}

/// Checks every property of a spec: allowed key, bounded value, well-formed `${env:NAME}`
/// reference (whether `NAME` may be read is checked by [`resolve`], which knows the
/// operator's prefix).
pub fn validate(props: &BTreeMap<String, String>) -> Result<(), PropertyError> {
    for (key, value) in props {
        if let Some(why) = owned_by_basalt(key) {
            return Err(refuse(key, format!("is set by Basalt ({why})")));
        }
        if let Some(why) = dangerous(key) {
            return Err(refuse(key, format!("is not allowed: {why}")));
        }
        if !ALLOWED.contains(&key.as_str()) {
            return Err(refuse(
                key,
                "is not an allowed consumer setting (allowed: client.id, security.protocol, \
                 sasl.*, inline ssl.*.pem, fetch, session, heartbeat, metadata, socket and \
                 retry tunables; see README)",
            ));
        }
        if value.len() > 64 << 10 {
            return Err(refuse(key, "value is longer than 64 KiB"));
        }
        if let Some(name) = env_reference(value) {
            check_env_name(key, name)?;
        } else if value.contains("${") {
            return Err(refuse(
                key,
                "a reference must be the whole value, written ${env:NAME}",
            ));
        }
        if let Some(&(_, max)) = BOUNDED.iter().find(|(k, _)| *k == key) {
            if env_reference(value).is_none() {
                match value.trim().parse::<u64>() {
                    Ok(v) if v <= max => {}
                    _ => {
                        return Err(refuse(
                            key,
                            format!("{value:?} must be a whole number of at most {max}"),
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether `name` is a variable name a reference may use: upper-case letters, digits, `_`.
pub fn env_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn check_env_name(key: &str, name: &str) -> Result<(), PropertyError> {
    if !env_name_ok(name) {
        return Err(refuse(
            key,
            format!("${{env:{name}}}: a variable name is upper-case letters, digits and _"),
        ));
    }
    Ok(())
}

/// The properties with every `${env:NAME}` replaced by the variable's value, for the
/// consumer. A variable that is not set is an error naming the property.
pub fn resolve(
    props: &BTreeMap<String, String>,
    env_prefix: &str,
) -> Result<BTreeMap<String, String>, PropertyError> {
    props
        .iter()
        .map(|(k, v)| {
            let value = match env_reference(v) {
                Some(name) => {
                    check_env_name(k, name)?;
                    if !name.starts_with(env_prefix) {
                        return Err(refuse(
                            k,
                            format!(
                                "${{env:{name}}}: only variables named {env_prefix}* can be \
                                 referenced (the operator's tables.secret_env_prefix)"
                            ),
                        ));
                    }
                    std::env::var(name).map_err(|_| {
                        refuse(
                            k,
                            format!("${{env:{name}}}: the environment variable is not set"),
                        )
                    })?
                }
                None => v.clone(),
            };
            Ok((k.clone(), value))
        })
        .collect()
}

/// The properties as responses and logs show them: literal secrets as `***` (references are
/// shown as written; they hold no secret).
pub fn redacted(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    props
        .iter()
        .map(|(k, v)| {
            let shown = if SECRET.contains(&k.as_str()) && env_reference(v).is_none() {
                "***".to_string()
            } else {
                v.clone()
            };
            (k.clone(), shown)
        })
        .collect()
}

/// `message` with the value of every secret property (resolved or literal) replaced by
/// `***`, for errors that quote configuration values.
pub fn scrub(message: &str, props: &BTreeMap<String, String>) -> String {
    let mut out = message.to_string();
    for (k, v) in props {
        if SECRET.contains(&k.as_str()) && !v.is_empty() {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_allowed_settings_pass() {
        let ok = props(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", "u"),
            ("sasl.password", "${env:BASALT_SECRET_KAFKA}"),
            ("session.timeout.ms", "6000"),
            ("queued.max.messages.kbytes", "65536"),
            ("client.id", "mine"),
        ]);
        validate(&ok).unwrap();
        for (key, value, says) in [
            ("plugin.library.paths", "/tmp/evil.so", "loads code"),
            ("interceptor.test.config1", "x", "loads code"),
            ("ssl.engine.location", "/tmp/e.so", "names a file"),
            ("ssl_engine_location", "/tmp/e.so", "names a file"),
            ("ssl.ca.location", "/etc/passwd", "names a file"),
            ("sasl.kerberos.kinit.cmd", "sh -c id", "runs a command"),
            ("sasl.kerberos.keytab", "/etc/krb5.keytab", "names a file"),
            ("ssl.providers", "legacy", "module"),
            ("rebalance_cb", "x", "callback"),
            ("group.id", "other-team", "Basalt owns the consumer group"),
            ("enable.auto.commit", "true", "auto-committed"),
            ("auto.offset.reset", "latest", "source.kafka.start"),
            ("bootstrap.servers", "h:1", "source.kafka.brokers"),
            ("debug", "all", "not an allowed consumer setting"),
            ("queued.max.messages.kbytes", "2097151", "at most"),
            ("fetch.max.bytes", "-1", "whole number"),
            ("sasl.password", "${env:bad name}", "upper-case"),
            ("sasl.password", "a${env:BASALT_SECRET_X}", "whole value"),
        ] {
            let e = validate(&props(&[(key, value)])).unwrap_err();
            assert_eq!(e.key, key);
            let msg = e.to_string();
            assert!(
                msg.contains(says) && msg.contains(&format!("source.kafka.properties.{key}")),
                "{key}={value}: {msg}"
            );
        }
    }

    #[test]
    fn references_resolve_and_secrets_are_redacted() {
        std::env::set_var("BASALT_SECRET_TEST_RESOLVE", "hunter2");
        let p = props(&[
            ("sasl.password", "${env:BASALT_SECRET_TEST_RESOLVE}"),
            ("ssl.key.password", "literal"),
            ("sasl.username", "user"),
        ]);
        let r = resolve(&p, "BASALT_SECRET_").unwrap();
        assert_eq!(r["sasl.password"], "hunter2");
        assert_eq!(r["ssl.key.password"], "literal");
        let shown = redacted(&p);
        assert_eq!(shown["sasl.password"], "${env:BASALT_SECRET_TEST_RESOLVE}");
        assert_eq!(shown["ssl.key.password"], "***");
        assert_eq!(shown["sasl.username"], "user");
        assert_eq!(
            scrub("Invalid value \"hunter2\" for sasl.password", &r),
            "Invalid value \"***\" for sasl.password"
        );
        let missing = props(&[("sasl.password", "${env:BASALT_SECRET_TEST_UNSET_VAR}")]);
        let e = resolve(&missing, "BASALT_SECRET_").unwrap_err().to_string();
        assert!(e.contains("sasl.password") && e.contains("not set"), "{e}");
        // A client that names the brokers cannot make the server send it any variable.
        let other = props(&[("sasl.username", "${env:HOME}")]);
        validate(&other).unwrap();
        let e = resolve(&other, "BASALT_SECRET_").unwrap_err().to_string();
        assert!(e.contains("BASALT_SECRET_*"), "{e}");
    }
}
