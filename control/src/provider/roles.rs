//! Roles and the database on a new target, copied from the source (both providers).

use crate::logical::{quote_ident, quote_literal, DriverError, RowExt};
use config::ServerConfig;
use tokio_postgres::Client;

type Result<T, E = DriverError> = std::result::Result<T, E>;

/// Encoding, collation, ctype and owner of the source database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbShape {
    /// E.g. `UTF8`.
    pub encoding: String,
    /// `datcollate`.
    pub collate: String,
    /// `datctype`.
    pub ctype: String,
    /// Owner role name.
    pub owner: String,
}

/// Every role of the source missing on the target (attributes, password verifiers when
/// the source's `pg_authid` is readable, memberships), then `server.dbname` with the
/// source's encoding, locale and owner (see the module docs of [`super`]). `tgt` is a
/// connection to the target's `postgres` database; `ctx` prefixes messages. Returns what
/// was done.
pub async fn copy_roles_and_database(
    src: &Client,
    tgt: &Client,
    server: &ServerConfig,
    shape: &DbShape,
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<String> {
    let perr = |what: &str, e: &tokio_postgres::Error| crate::logical::pg_error(&ctx(what), e);
    // rolbypassrls is PostgreSQL 9.5+ (docs "pg_roles"; row security came in 9.5): an
    // older source's roles have no such attribute, NOBYPASSRLS.
    let version = crate::logical::server_version_num(src)
        .await
        .map_err(|e| perr("source: reading server_version_num", &e))?;
    let bypassrls = if version >= 90500 {
        "rolbypassrls"
    } else {
        "false"
    };
    let roles = src
        .query(
            &format!(
                "SELECT rolname::text, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
                        rolreplication, {bypassrls}, rolconnlimit, rolvaliduntil::text
                   FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY oid"
            ),
            &[],
        )
        .await
        .map_err(|e| perr("source: listing roles", &e))?;
    // Password verifiers: pg_authid is readable by superusers only.
    let verifiers: std::collections::HashMap<String, String> = match src
        .query(
            "SELECT rolname::text, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL",
            &[],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| Some((r.col::<String>(0).ok()?, r.col::<String>(1).ok()?)))
            .collect(),
        Err(_) => Default::default(),
    };
    let existing = role_names(tgt, ctx).await?;
    let mut created = Vec::new();
    let mut passwords = 0;
    for r in &roles {
        let name: String = r.col(0)?;
        if existing.contains(&name) {
            continue;
        }
        let flag = |i: usize, yes: &str, no: &str| -> Result<String> {
            Ok(if r.col::<bool>(i)? {
                yes.into()
            } else {
                no.into()
            })
        };
        let mut sql = format!(
            "CREATE ROLE {} WITH {} {} {} {} {} {} {} CONNECTION LIMIT {}",
            quote_ident(&name),
            flag(1, "SUPERUSER", "NOSUPERUSER")?,
            flag(2, "INHERIT", "NOINHERIT")?,
            flag(3, "CREATEROLE", "NOCREATEROLE")?,
            flag(4, "CREATEDB", "NOCREATEDB")?,
            flag(5, "LOGIN", "NOLOGIN")?,
            flag(6, "REPLICATION", "NOREPLICATION")?,
            flag(7, "BYPASSRLS", "NOBYPASSRLS")?,
            r.col::<i32>(8)?
        );
        if let Some(until) = r.col::<Option<String>>(9)? {
            sql.push_str(&format!(" VALID UNTIL {}", quote_literal(&until)));
        }
        if let Some(v) = verifiers.get(&name) {
            sql.push_str(&format!(" PASSWORD {}", quote_literal(v)));
            passwords += 1;
        }
        tgt.batch_execute(&sql)
            .await
            .map_err(|e| perr(&format!("creating role {name}"), &e))?;
        created.push(name);
    }
    // Memberships whose both roles exist on the target.
    let members_sql = "SELECT r.rolname::text, m.rolname::text, am.admin_option
                         FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid
                         JOIN pg_roles m ON m.oid = am.member";
    let have: std::collections::HashSet<(String, String)> = tgt
        .query(members_sql, &[])
        .await
        .map_err(|e| perr("listing role memberships", &e))?
        .iter()
        .map(|r| Ok((r.col(0)?, r.col(1)?)))
        .collect::<Result<_>>()?;
    let now = role_names(tgt, ctx).await?;
    let mut grants = 0;
    for r in src
        .query(members_sql, &[])
        .await
        .map_err(|e| perr("source: listing role memberships", &e))?
    {
        let (role, member, admin): (String, String, bool) = (r.col(0)?, r.col(1)?, r.col(2)?);
        if have.contains(&(role.clone(), member.clone()))
            || !now.contains(&role)
            || !now.contains(&member)
        {
            continue;
        }
        tgt.batch_execute(&format!(
            "GRANT {} TO {}{}",
            quote_ident(&role),
            quote_ident(&member),
            if admin { " WITH ADMIN OPTION" } else { "" }
        ))
        .await
        .map_err(|e| perr(&format!("granting {role} to {member}"), &e))?;
        grants += 1;
    }

    let dbname = &server.dbname;
    let exists = tgt
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[dbname])
        .await
        .map_err(|e| perr("listing databases", &e))?
        .is_some();
    let db = if exists {
        format!("database {dbname} exists")
    } else {
        let owner = if now.contains(&shape.owner) {
            shape.owner.clone()
        } else {
            server.user.clone()
        };
        tgt.batch_execute(&format!(
            "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(dbname),
            quote_ident(&owner),
            quote_literal(&shape.encoding),
            quote_literal(&shape.collate),
            quote_literal(&shape.ctype)
        ))
        .await
        .map_err(|e| perr(&format!("creating database {dbname}"), &e))?;
        format!("database {dbname} created (owner {owner})")
    };
    let roles_msg = if created.is_empty() {
        "all source roles exist".to_string()
    } else {
        format!(
            "created role(s) {} ({passwords} with the source's password verifier{})",
            created.join(", "),
            if verifiers.is_empty() {
                "; pg_authid not readable: no passwords copied"
            } else {
                ""
            }
        )
    };
    Ok(format!("{roles_msg}; {grants} membership(s) granted; {db}"))
}

/// Encoding, collation, ctype and owner of the connected database.
pub async fn source_shape(src: &Client) -> Result<DbShape> {
    let r = src
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text,
                    pg_get_userbyid(datdba)::text
               FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| {
            crate::logical::pg_error("source: reading the database's encoding and locale", &e)
        })?;
    Ok(DbShape {
        encoding: r.col(0)?,
        collate: r.col(1)?,
        ctype: r.col(2)?,
        owner: r.col(3)?,
    })
}

/// The role names of the server `tgt` is connected to.
async fn role_names(
    tgt: &Client,
    ctx: &(dyn Fn(&str) -> String + Sync),
) -> Result<std::collections::HashSet<String>> {
    tgt.query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(|e| crate::logical::pg_error(&ctx("listing roles"), &e))?
        .iter()
        .map(|r| r.col(0))
        .collect()
}
