//! rabbitmqctl's user, vhost and permission commands, each one or two calls to the HTTP API
//! with RabbitMQ's endpoints and JSON, printing what rabbitmqctl prints.

use super::api::{expect_ok, segment, Api};
use super::CtlError;
use serde_json::{json, Value};

/// What a command prints: the informational line (stderr, left out by `--quiet`) and the rows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub info: String,
    pub lines: Vec<String>,
}

/// The management commands, with their arguments as `rabbitmqctl help` shows them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("add_user", "<username> <password>"),
    ("delete_user", "<username>"),
    ("change_password", "<username> <new_password>"),
    ("authenticate_user", "<username> <password>"),
    ("set_user_tags", "<username> <tag> [...]"),
    ("list_users", ""),
    ("add_vhost", "<vhost>"),
    ("delete_vhost", "<vhost>"),
    ("list_vhosts", ""),
    (
        "set_permissions",
        "[-p <vhost>] <username> <conf> <write> <read>",
    ),
    ("clear_permissions", "[-p <vhost>] <username>"),
    ("list_permissions", "[-p <vhost>]"),
    ("list_user_permissions", "<username>"),
    (
        "set_topic_permissions",
        "[-p <vhost>] <username> <exchange> <write> <read>",
    ),
    (
        "clear_topic_permissions",
        "[-p <vhost>] <username> [<exchange>]",
    ),
    ("list_topic_permissions", "[-p <vhost>]"),
];

fn info(text: String) -> Output {
    Output {
        info: text,
        lines: Vec::new(),
    }
}

fn text(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

fn rows(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A 404 as rabbitmqctl words it (`no_such_user: u`), other failures as the broker's reason.
fn ok_or(what: &str, name: &str, path: &str, answer: (u16, Value)) -> Result<Value, CtlError> {
    if answer.0 == 404 {
        return Err(CtlError::Failed(format!("{what}: {name}")));
    }
    expect_ok(path, answer)
}

/// Runs management command `command` with `args` against `api`; `None` when `command` is
/// not one of [`COMMANDS`].
pub fn run(
    api: &Api,
    vhost: &str,
    command: &str,
    args: &[String],
) -> Option<Result<Output, CtlError>> {
    let &(name, usage) = COMMANDS.iter().find(|(c, _)| *c == command)?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let usage_error = || {
        Err(CtlError::Usage(format!(
            "usage: switchboard ctl {name} {usage}"
        )))
    };
    let vh = segment(vhost);
    let result = match (name, a.as_slice()) {
        ("add_user", [user, password]) => add_user(api, user, password),
        ("delete_user", [user]) => {
            let path = format!("/api/users/{}", segment(user));
            api.delete(&path)
                .and_then(|a| ok_or("no_such_user", user, &path, a))
                .map(|_| info(format!("Deleting user \"{user}\" ...")))
        }
        ("change_password", [user, password]) => change_password(api, user, password),
        ("authenticate_user", [user, password]) => authenticate_user(api, user, password),
        ("set_user_tags", [user, tags @ ..]) => set_user_tags(api, user, tags),
        ("list_users", []) => list_users(api),
        ("add_vhost", [name]) => {
            let path = format!("/api/vhosts/{}", segment(name));
            api.put(&path, &json!({}))
                .and_then(|a| expect_ok(&path, a))
                .map(|_| info(format!("Adding vhost \"{name}\" ...")))
        }
        ("delete_vhost", [name]) => {
            let path = format!("/api/vhosts/{}", segment(name));
            api.delete(&path)
                .and_then(|a| ok_or("no_such_vhost", name, &path, a))
                .map(|_| info(format!("Deleting vhost \"{name}\" ...")))
        }
        ("list_vhosts", []) => api.get_ok("/api/vhosts").map(|v| Output {
            info: "Listing vhosts ...".into(),
            lines: std::iter::once("name".to_owned())
                .chain(rows(&v).iter().map(|r| text(r, "name")))
                .collect(),
        }),
        ("set_permissions", [user, conf, write, read]) => {
            let path = format!("/api/permissions/{vh}/{}", segment(user));
            let body = json!({"configure": conf, "write": write, "read": read});
            api.put(&path, &body)
                .and_then(|a| {
                    ok_or(
                        "no_such_user_or_vhost",
                        &format!("{user} in {vhost}"),
                        &path,
                        a,
                    )
                })
                .map(|_| {
                    info(format!(
                        "Setting permissions for user \"{user}\" in vhost \"{vhost}\" ..."
                    ))
                })
        }
        ("clear_permissions", [user]) => {
            let path = format!("/api/permissions/{vh}/{}", segment(user));
            api.delete(&path)
                .and_then(|a| {
                    ok_or(
                        "no_such_permissions",
                        &format!("{user} in {vhost}"),
                        &path,
                        a,
                    )
                })
                .map(|_| {
                    info(format!(
                        "Clearing permissions for user \"{user}\" in vhost \"{vhost}\" ..."
                    ))
                })
        }
        ("list_permissions", []) => {
            let path = format!("/api/vhosts/{vh}/permissions");
            api.get(&path)
                .and_then(|a| ok_or("no_such_vhost", vhost, &path, a))
                .map(|v| Output {
                    info: format!("Listing permissions for vhost \"{vhost}\" ..."),
                    lines: table(&v, &["user", "configure", "write", "read"]),
                })
        }
        ("list_user_permissions", [user]) => {
            let path = format!("/api/users/{}/permissions", segment(user));
            api.get(&path)
                .and_then(|a| ok_or("no_such_user", user, &path, a))
                .map(|v| Output {
                    info: format!("Listing permissions for user \"{user}\" ..."),
                    lines: table(&v, &["vhost", "configure", "write", "read"]),
                })
        }
        ("set_topic_permissions", [user, exchange, write, read]) => {
            let path = format!("/api/topic-permissions/{vh}/{}", segment(user));
            let body = json!({"exchange": exchange, "write": write, "read": read});
            api.put(&path, &body)
                .and_then(|a| ok_or("no_such_user_or_vhost", &format!("{user} in {vhost}"), &path, a))
                .map(|_| {
                    info(format!(
                        "Setting topic permissions on \"{exchange}\" for user \"{user}\" in vhost \"{vhost}\" ..."
                    ))
                })
        }
        ("clear_topic_permissions", [user, rest @ ..]) if rest.len() <= 1 => {
            let mut path = format!("/api/topic-permissions/{vh}/{}", segment(user));
            if let [exchange] = rest {
                path.push_str(&format!("?exchange={}", segment(exchange)));
            }
            api.delete(&path)
                .and_then(|a| {
                    ok_or(
                        "no_such_topic_permissions",
                        &format!("{user} in {vhost}"),
                        &path,
                        a,
                    )
                })
                .map(|_| {
                    info(format!(
                        "Clearing topic permissions for user \"{user}\" in vhost \"{vhost}\" ..."
                    ))
                })
        }
        ("list_topic_permissions", []) => {
            let path = format!("/api/vhosts/{vh}/topic-permissions");
            api.get(&path)
                .and_then(|a| ok_or("no_such_vhost", vhost, &path, a))
                .map(|v| Output {
                    info: format!("Listing topic permissions for vhost \"{vhost}\" ..."),
                    lines: table(&v, &["user", "exchange", "write", "read"]),
                })
        }
        _ => usage_error(),
    };
    Some(result)
}

/// A header of `columns`, then one tab-separated row per object.
fn table(v: &Value, columns: &[&str]) -> Vec<String> {
    std::iter::once(columns.join("\t"))
        .chain(rows(v).iter().map(|r| {
            columns
                .iter()
                .map(|c| text(r, c))
                .collect::<Vec<_>>()
                .join("\t")
        }))
        .collect()
}

fn user_path(user: &str) -> String {
    format!("/api/users/{}", segment(user))
}

/// The user's current record, or `no_such_user`.
fn get_user(api: &Api, user: &str) -> Result<Value, CtlError> {
    let path = user_path(user);
    ok_or("no_such_user", user, &path, api.get(&path)?)
}

fn add_user(api: &Api, user: &str, password: &str) -> Result<Output, CtlError> {
    let path = user_path(user);
    if api.get(&path)?.0 == 200 {
        return Err(CtlError::Failed(format!("user_already_exists: {user}")));
    }
    expect_ok(
        &path,
        api.put(&path, &json!({"password": password, "tags": ""}))?,
    )?;
    Ok(Output {
        info: format!("Adding user \"{user}\" ..."),
        lines: vec!["Done. Don't forget to grant the user permissions to some virtual hosts! See 'rabbitmqctl help set_permissions' to learn more.".into()],
    })
}

fn change_password(api: &Api, user: &str, password: &str) -> Result<Output, CtlError> {
    let current = get_user(api, user)?;
    let tags = current.get("tags").cloned().unwrap_or(json!([]));
    let path = user_path(user);
    expect_ok(
        &path,
        api.put(&path, &json!({"password": password, "tags": tags}))?,
    )?;
    Ok(info(format!("Changing password for user \"{user}\" ...")))
}

/// Checks the credentials with `/api/whoami`, which answers any user that authenticates.
fn authenticate_user(api: &Api, user: &str, password: &str) -> Result<Output, CtlError> {
    let as_user = api.as_user(user, password);
    let (status, _) = as_user.get("/api/whoami")?;
    if status != 200 {
        return Err(CtlError::Failed(format!(
            "Error: failed to authenticate user \"{user}\""
        )));
    }
    Ok(Output {
        info: format!("Authenticating user \"{user}\" ..."),
        lines: vec!["Success".into()],
    })
}

fn set_user_tags(api: &Api, user: &str, tags: &[&str]) -> Result<Output, CtlError> {
    let current = get_user(api, user)?;
    let path = user_path(user);
    let body = json!({
        "password_hash": current.get("password_hash").cloned().unwrap_or(Value::Null),
        "hashing_algorithm": current.get("hashing_algorithm").cloned().unwrap_or(Value::Null),
        "tags": tags,
    });
    expect_ok(&path, api.put(&path, &body)?)?;
    Ok(info(format!(
        "Setting tags for user \"{user}\" to [{}] ...",
        tags.join(", ")
    )))
}

fn list_users(api: &Api) -> Result<Output, CtlError> {
    let v = api.get_ok("/api/users")?;
    let lines = std::iter::once("user\ttags".to_owned())
        .chain(rows(&v).iter().map(|u| {
            let tags: Vec<String> = u
                .get("tags")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            format!("{}\t[{}]", text(u, "name"), tags.join(", "))
        }))
        .collect();
    Ok(Output {
        info: "Listing users ...".into(),
        lines,
    })
}
