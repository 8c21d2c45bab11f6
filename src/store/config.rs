//! `[gateway] store`: where the store lives. `"sqlite"` (the default) is `wakegate.db` in the
//! data dir; a `postgres://` URL is a PostgreSQL database, which several gateways may share. The
//! URL's `${VAR}`s are expanded (the password from the environment), and it is never printed
//! back: what is shown is [`Location::describe`], without the password.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::config::de::{Secret, expand};

/// Who this gateway is among those sharing a PostgreSQL store (`[gateway] id` and `lease`).
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub id: String,
    /// How long a lease on a service lasts unless renewed (every third of it).
    pub lease: Duration,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            id: default_id(),
            lease: DEFAULT_LEASE,
        }
    }
}

/// `[gateway] lease` unless set.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// `[gateway] id` unless set: the host name and the process id. Two gateways on one host
/// differ, and a restarted gateway is a new member: it takes nothing it held before until that
/// lease has expired (by then the old process is surely gone) and it has reconciled.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}-{}", std::process::id())
}

/// Where the store lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Location {
    #[default]
    Sqlite,
    /// The connection URL, password included.
    Postgres(Secret),
}

impl Location {
    /// Reads the value of `store`; the error is the problem and a hint, for the config check.
    pub fn parse(text: &str) -> Result<Location, (String, &'static str)> {
        if text == "sqlite" {
            return Ok(Location::Sqlite);
        }
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err((
                "`store` is neither \"sqlite\" nor a postgres:// URL".into(),
                "write \"sqlite\" (the default: wakegate.db in the data dir) or \"postgres://USER:${PGPASSWORD}@HOST:5432/DB\"",
            ));
        }
        let url = expand(text).map_err(|var| {
            (
                format!("environment variable `{var}` in `store` is not set"),
                "export it before starting wakegate",
            )
        })?;
        // sqlx's reasons name the part that is wrong, never the URL itself.
        PgConnectOptions::from_str(url.expose()).map_err(|e| {
            (
                format!("`store` is not a PostgreSQL URL wakegate can read: {e}"),
                "write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE, the password as ${VAR}",
            )
        })?;
        Ok(Location::Postgres(url))
    }

    /// Where the store is, for logs, errors and `status`: `sqlite`, or
    /// `postgres://USER@HOST:PORT/DB` without the password.
    pub fn describe(&self) -> String {
        match self {
            Location::Sqlite => "sqlite".into(),
            Location::Postgres(url) => match PgConnectOptions::from_str(url.expose()) {
                Ok(o) => format!(
                    "postgres://{}@{}:{}/{}",
                    o.get_username(),
                    o.get_host(),
                    o.get_port(),
                    o.get_database().unwrap_or(o.get_username())
                ),
                Err(_) => "postgres".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_described_without_its_password() {
        let location = Location::parse("postgres://gw:hunter2@db.internal:6432/wake").unwrap();
        assert_eq!(location.describe(), "postgres://gw@db.internal:6432/wake");
        assert!(!format!("{location:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_say_what_to_write() {
        assert_eq!(Location::parse("sqlite"), Ok(Location::Sqlite));
        let (problem, _) = Location::parse("mysql://x@y/z").unwrap_err();
        assert_eq!(
            problem,
            "`store` is neither \"sqlite\" nor a postgres:// URL"
        );
        let (problem, _) =
            Location::parse("postgres://gw:${WAKEGATE_TEST_UNSET_PASSWORD}@db/wake").unwrap_err();
        assert_eq!(
            problem,
            "environment variable `WAKEGATE_TEST_UNSET_PASSWORD` in `store` is not set"
        );
        let (problem, _) = Location::parse("postgres://gw:secret@db:notaport/wake").unwrap_err();
        assert!(
            problem.starts_with("`store` is not a PostgreSQL URL"),
            "{problem}"
        );
        assert!(!problem.contains("secret"), "{problem}");
    }
}
