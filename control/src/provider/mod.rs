//! Providers make and remove servers: [`local`] (initdb/pg_ctl on this machine). The
//! roles and database of a new target are copied from the source by [`roles`], for every
//! provider; [`dump`] writes the source's final `pg_dump`.

mod dump;
mod local;
mod roles;

pub use dump::final_dump;
pub use local::*;
pub use roles::{copy_roles_and_database, source_shape, DbShape};
