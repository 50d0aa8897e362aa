//! Each criterion of a condition compiled: its config test checked and
//! turned into the matcher `eval` runs.

use super::*;

/// Criteria on the caller's token: `claim`, `groups`, `scope`, `email`,
/// `client_id`, `issuer`.
pub(super) fn principal(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.claim {
        return Some(claim(t));
    }
    if let Some(t) = &c.groups {
        return Some(set_op("groups", t).map(Cond::Groups));
    }
    if let Some(t) = &c.scope {
        return Some(set_op("scope", t).map(Cond::Scope));
    }
    if let Some(t) = &c.email {
        return Some(email(t));
    }
    if let Some(t) = &c.client_id {
        return Some(eq_set("client_id", t).map(Cond::ClientId));
    }
    let t = c.issuer.as_ref()?;
    Some(eq_set("issuer", t).map(Cond::Issuer))
}

fn claim(t: &config::ClaimTest) -> Result<Cond, String> {
    if t.path.is_empty() || t.path.split('.').any(str::is_empty) {
        return Err(format!("claim: bad path {:?}", t.path));
    }
    let op = one(
        "claim",
        vec![
            (
                "equals",
                t.equals
                    .as_ref()
                    .map(|v| Scalar::from_value(v).map(ClaimOp::Equals)),
            ),
            (
                "in",
                t.in_
                    .as_ref()
                    .map(|v| scalars(v).map(|v| ClaimOp::In(v.into()))),
            ),
            (
                "contains",
                t.contains
                    .as_ref()
                    .map(|v| Scalar::from_value(v).map(ClaimOp::Contains)),
            ),
            (
                "matches",
                t.matches
                    .as_ref()
                    .map(|r| Pattern::new(r).map(ClaimOp::Matches)),
            ),
        ],
    )?
    .map_err(|e| format!("claim: {e}"))?;
    Ok(Cond::Claim(t.path.as_str().into(), op))
}

fn email(t: &config::EmailTest) -> Result<Cond, String> {
    let lower = |v: &[String]| StrSet::new(v.iter().map(|s| s.to_ascii_lowercase()));
    let op = one(
        "email",
        vec![
            (
                "equals",
                t.equals
                    .as_ref()
                    .map(|s| Ok(EmailOp::In(lower(std::slice::from_ref(s))))),
            ),
            ("in", t.in_.as_ref().map(|v| Ok(EmailOp::In(lower(v))))),
            (
                "ends_with",
                t.ends_with.as_ref().map(|v| {
                    Ok(EmailOp::EndsWith(
                        v.clone()
                            .into_vec()
                            .iter()
                            .map(|s| s.to_ascii_lowercase().into())
                            .collect(),
                    ))
                }),
            ),
            (
                "matches",
                t.matches
                    .as_ref()
                    .map(|r| Pattern::new(r).map(EmailOp::Matches)),
            ),
        ],
    )?
    .map_err(|e: String| format!("email: {e}"))?;
    Ok(Cond::Email(op))
}

/// Criteria on the MCP message's names: `mcp_method`, `mcp_prompt`,
/// `mcp_tool`, `mcp_resource`.
pub(super) fn mcp_names(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.mcp_method {
        return Some(name_op("mcp_method", t, None).map(Cond::Method));
    }
    if let Some(t) = &c.mcp_prompt {
        return Some(name_op("mcp_prompt", t, None).map(Cond::Prompt));
    }
    if let Some(t) = &c.mcp_tool {
        let names = config::NameTest {
            equals: t.equals.clone(),
            in_: t.in_.clone(),
            starts_with: t.starts_with.clone(),
        };
        return Some(name_op("mcp_tool", &names, Some(&t.matches)).map(Cond::Tool));
    }
    let t = c.mcp_resource.as_ref()?;
    Some(resource(t))
}

fn resource(t: &config::ResourceTest) -> Result<Cond, String> {
    let op = one(
        "mcp_resource",
        vec![
            (
                "equals",
                t.equals
                    .as_ref()
                    .map(|s| Ok(ResourceOp::Equals(s.as_str().into()))),
            ),
            (
                "starts_with",
                t.starts_with
                    .as_ref()
                    .map(|v| Ok(ResourceOp::Prefix(Prefixes::new(v.clone().into_vec())))),
            ),
            (
                "glob",
                t.glob.as_ref().map(|v| {
                    v.clone()
                        .into_vec()
                        .iter()
                        .map(|g| matchers::glob(g))
                        .collect::<Result<_, _>>()
                        .map(ResourceOp::Glob)
                }),
            ),
        ],
    )?
    .map_err(|e: String| format!("mcp_resource: {e}"))?;
    Ok(Cond::Resource(op))
}

/// Criteria on where and when: `source_ip`, `time`.
pub(super) fn network_time(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.source_ip {
        return Some(
            Cidrs::parse(&t.in_)
                .map(Cond::SourceIp)
                .map_err(|e| format!("source_ip: {e}")),
        );
    }
    let t = c.time.as_ref()?;
    let hours = t.hours.clone().map(|h| h.into_vec()).unwrap_or_default();
    Some(
        TimeWindow::new(t.days.as_deref(), &hours, t.tz.as_deref())
            .map(|w| Cond::Time(Box::new(w)))
            .map_err(|e| format!("time: {e}")),
    )
}

/// Criteria on values in the request: `argument`, `header`.
pub(super) fn values(c: &Condition) -> Option<Result<Cond, String>> {
    if let Some(t) = &c.argument {
        return Some(argument(t));
    }
    let t = c.header.as_ref()?;
    Some(header(t))
}

/// `content`: one detector or one group.
pub(super) fn content(c: &Condition) -> Option<Result<Cond, String>> {
    let t = c.content.as_ref()?;
    let op = match (&t.detector, &t.group) {
        (Some(d), None) if !d.is_empty() => Ok(ContentOp::Detector(d.as_str().into())),
        (None, Some(g)) => crate::screen::Group::parse(g)
            .map(ContentOp::Group)
            .ok_or_else(|| {
                format!("content: unknown group {g:?} (want secrets, pii, injection or custom)")
            }),
        _ => Err("content: want exactly one of detector and group".into()),
    };
    Some(op.map(Cond::Content))
}

fn argument(t: &config::ArgumentTest) -> Result<Cond, String> {
    let pointer = pointer(&t.pointer).map_err(|e| format!("argument: {e}"))?;
    let op = value_op(
        "argument",
        t.equals.as_ref(),
        t.in_.as_deref(),
        t.matches.as_deref(),
        (t.min, t.max),
        t.exists,
    )?;
    Ok(Cond::Argument(Box::new(Argument { pointer, op })))
}

fn header(t: &config::HeaderTest) -> Result<Cond, String> {
    if t.name.is_empty() || !t.name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("header: bad name {:?}", t.name));
    }
    let equals = t.equals.clone().map(serde_json::Value::String);
    let in_ = t.in_.as_ref().map(|v| {
        v.iter()
            .cloned()
            .map(serde_json::Value::String)
            .collect::<Vec<_>>()
    });
    let op = value_op(
        "header",
        equals.as_ref(),
        in_.as_deref(),
        t.matches.as_deref(),
        (None, None),
        t.exists,
    )?;
    Ok(Cond::Header(Box::new(Header {
        name: t.name.to_ascii_lowercase().into(),
        op,
    })))
}

fn set_op(what: &str, t: &config::SetTest) -> Result<SetOp, String> {
    one(
        what,
        vec![
            ("has", t.has.as_ref().map(|s| SetOp::Has(s.as_str().into()))),
            (
                "any",
                t.any
                    .as_ref()
                    .map(|v| SetOp::Any(StrSet::new(v.iter().cloned()))),
            ),
            (
                "all",
                t.all
                    .as_ref()
                    .map(|v| SetOp::All(v.iter().map(|s| s.as_str().into()).collect())),
            ),
        ],
    )
}

fn eq_set(what: &str, t: &config::EqTest) -> Result<StrSet, String> {
    one(
        what,
        vec![
            (
                "equals",
                t.equals.as_ref().map(|s| StrSet::new([s.clone()])),
            ),
            ("in", t.in_.as_ref().map(|v| StrSet::new(v.iter().cloned()))),
        ],
    )
}

fn name_op(
    what: &str,
    t: &config::NameTest,
    matches: Option<&Option<String>>,
) -> Result<NameOp, String> {
    let mut options = vec![
        (
            "equals",
            t.equals
                .as_ref()
                .map(|s| Ok(NameOp::In(StrSet::new([s.clone()])))),
        ),
        (
            "in",
            t.in_
                .as_ref()
                .map(|v| Ok(NameOp::In(StrSet::new(v.iter().cloned())))),
        ),
        (
            "starts_with",
            t.starts_with
                .as_ref()
                .map(|v| Ok(NameOp::Prefix(Prefixes::new(v.clone().into_vec())))),
        ),
    ];
    if let Some(m) = matches {
        options.push((
            "matches",
            m.as_ref().map(|r| Pattern::new(r).map(NameOp::Matches)),
        ));
    }
    one(what, options)?.map_err(|e: String| format!("{what}: {e}"))
}

fn value_op(
    what: &str,
    equals: Option<&serde_json::Value>,
    in_: Option<&[serde_json::Value]>,
    matches: Option<&str>,
    (min, max): (Option<f64>, Option<f64>),
    exists: Option<bool>,
) -> Result<ValueOp, String> {
    let range = (min.is_some() || max.is_some()).then(|| {
        let (lo, hi) = (
            min.unwrap_or(f64::NEG_INFINITY),
            max.unwrap_or(f64::INFINITY),
        );
        if lo.is_nan() || hi.is_nan() || lo > hi {
            Err(format!("empty range min {lo} max {hi}"))
        } else {
            Ok(ValueOp::Range(lo, hi))
        }
    });
    one(
        what,
        vec![
            (
                "equals",
                equals.map(|v| Scalar::from_value(v).map(|s| value_in(vec![s]))),
            ),
            ("in", in_.map(|v| scalars(v).map(value_in))),
            (
                "matches",
                matches.map(|r| Pattern::new(r).map(ValueOp::Matches)),
            ),
            ("min/max", range),
            ("exists", exists.map(|e| Ok(ValueOp::Exists(e)))),
        ],
    )?
    .map_err(|e| format!("{what}: {e}"))
}
