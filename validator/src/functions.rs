//! Which functions a read-only statement may call.
//!
//! PostgreSQL gives every function a volatility (documentation 38.7 "Function Volatility
//! Categories"): IMMUTABLE and STABLE functions "cannot modify the database", VOLATILE ones
//! can do anything. Volatility alone is not enough for routing a transaction to another
//! server, though: `random()` is volatile yet harmless, while `currval()` is volatile,
//! writes nothing, and still gives a different answer on another server. So the rule here
//! is an allow-list of built-in functions known to be free of side effects *and* not tied
//! to state held by one server's session; everything else (including every user-defined
//! function, which may write) makes a statement not read-only.
//!
//! The lists follow the PostgreSQL documentation, chapter 9 "Functions and Operators",
//! cited below by section title (section numbers shift between major versions).

/// Why calling `name` (already case-folded, without a `pg_catalog.` prefix) keeps a
/// statement from being read-only, or `None` if the function is on the allow-list.
pub(crate) fn not_read_only_reason(name: &str) -> Option<String> {
    if is_allowed(name) {
        return None;
    }
    Some(denied_reason(name).unwrap_or_else(|| {
        format!("function {name}() is not on the read-only allow-list (user-defined or volatile)")
    }))
}

/// Specific reasons for well-known functions that must never be treated as read-only.
fn denied_reason(name: &str) -> Option<String> {
    let why = match name {
        // "Sequence Manipulation Functions".
        "nextval" | "setval" => "advances a sequence (a write)",
        "currval" | "lastval" => {
            "depends on this session's earlier nextval() on the server that ran it"
        }
        // System Administration Functions, "Configuration Settings Functions".
        "set_config" => "changes a session setting",
        // System Administration Functions, "Advisory Lock Functions".
        n if n.starts_with("pg_advisory") || n.starts_with("pg_try_advisory") => {
            "takes or releases an advisory lock held by the server that ran it"
        }
        // System Administration Functions, "Server Signaling Functions".
        "pg_cancel_backend" | "pg_terminate_backend" | "pg_reload_conf" | "pg_rotate_logfile" => {
            "signals a server process"
        }
        // Date/Time Functions and Operators, "Delaying Execution".
        "pg_sleep" | "pg_sleep_for" | "pg_sleep_until" => {
            "sleeps: harmless but holds a backend for a long time"
        }
        // System Information Functions, "Transaction ID and Snapshot Information Functions".
        "txid_current" | "pg_current_xact_id" => "assigns a transaction id (a write)",
        n if n.starts_with("txid_") || n.starts_with("pg_current_xact_id") => {
            "depends on the transaction state of the server that ran it"
        }
        // System Administration Functions: "Backup Control", "Recovery Control",
        // "Replication Management Functions".
        n if n.starts_with("pg_replication_")
            || n.starts_with("pg_create_")
            || n.starts_with("pg_drop_")
            || n.starts_with("pg_logical_")
            || n.starts_with("pg_backup_")
            || n.starts_with("pg_switch_wal")
            || n.starts_with("pg_wal_replay_") =>
        {
            "administers replication, WAL or backups"
        }
        // Large Objects, "Server-Side Functions".
        n if n.starts_with("lo_") || n == "loread" || n == "lowrite" => {
            "large-object function (may write)"
        }
        // Appendix F, dblink: runs arbitrary SQL on another connection.
        n if n.starts_with("dblink") => "dblink runs arbitrary SQL on another connection",
        // SQL command reference, NOTIFY: pg_notify() sends a notification.
        "pg_notify" => "sends a notification",
        _ => return None,
    };
    Some(format!("{name}() {why}"))
}

/// The allow-list: built-in functions that are side-effect-free and give the same answer
/// on any server holding the same data (up to time and randomness).
fn is_allowed(name: &str) -> bool {
    matches!(
        name,
        // "Aggregate Functions".
        "count" | "sum" | "avg" | "min" | "max" | "array_agg" | "string_agg" | "bool_and"
            | "bool_or" | "every" | "bit_and" | "bit_or" | "bit_xor" | "json_agg"
            | "jsonb_agg" | "json_object_agg" | "jsonb_object_agg" | "json_agg_strict"
            | "jsonb_agg_strict" | "stddev" | "stddev_pop" | "stddev_samp" | "variance"
            | "var_pop" | "var_samp" | "corr" | "covar_pop" | "covar_samp" | "regr_slope"
            | "regr_intercept" | "regr_count" | "regr_r2" | "regr_avgx" | "regr_avgy"
            | "mode" | "percentile_cont" | "percentile_disc" | "any_value"
            | "range_agg" | "range_intersect_agg" | "xmlagg"
            // "Window Functions".
            | "row_number" | "rank" | "dense_rank" | "percent_rank" | "cume_dist" | "ntile"
            | "lag" | "lead" | "first_value" | "last_value" | "nth_value"
            // "Conditional Expressions".
            | "coalesce" | "nullif" | "greatest" | "least"
            // Row and array constructors as sqlparser spells them (4.2 "Value Expressions").
            | "row" | "array"
            // "Mathematical Functions and Operators" (random is volatile but side-effect-free).
            | "abs" | "cbrt" | "ceil" | "ceiling" | "degrees" | "div" | "exp" | "factorial"
            | "floor" | "gcd" | "lcm" | "ln" | "log" | "log10" | "min_scale" | "mod" | "pi"
            | "power" | "pow" | "radians" | "round" | "scale" | "sign" | "sqrt"
            | "trim_scale" | "trunc" | "width_bucket" | "random" | "random_normal"
            | "sin" | "cos" | "tan" | "asin" | "acos" | "atan" | "atan2" | "sind" | "cosd"
            | "tand" | "cot" | "sinh" | "cosh" | "tanh"
            // "String Functions and Operators".
            | "ascii" | "bit_length" | "btrim" | "char_length" | "character_length" | "chr"
            | "concat" | "concat_ws" | "format" | "initcap" | "left" | "length" | "lower"
            | "lpad" | "ltrim" | "md5" | "normalize" | "octet_length" | "overlay"
            | "position" | "quote_ident" | "quote_literal" | "quote_nullable"
            | "regexp_count" | "regexp_instr" | "regexp_like" | "regexp_match"
            | "regexp_matches" | "regexp_replace" | "regexp_split_to_array"
            | "regexp_split_to_table" | "regexp_substr" | "repeat" | "replace" | "reverse"
            | "right" | "rpad" | "rtrim" | "split_part" | "starts_with" | "string_to_array"
            | "string_to_table" | "strpos" | "substr" | "substring" | "to_ascii" | "to_hex"
            | "translate" | "trim" | "upper" | "unistr" | "casefold"
            // "Binary String Functions and Operators".
            | "encode" | "decode" | "sha224" | "sha256" | "sha384" | "sha512"
            | "get_byte" | "get_bit" | "convert_from" | "convert_to"
            // "Data Type Formatting Functions".
            | "to_char" | "to_date" | "to_number" | "to_timestamp"
            // "Date/Time Functions and Operators" (now() and friends are STABLE).
            | "age" | "clock_timestamp" | "current_date" | "current_time"
            | "current_timestamp" | "date_bin" | "date_part" | "date_trunc" | "date_add"
            | "date_subtract" | "extract" | "isfinite" | "justify_days" | "justify_hours"
            | "justify_interval" | "localtime" | "localtimestamp" | "make_date"
            | "make_interval" | "make_time" | "make_timestamp" | "make_timestamptz" | "now"
            | "statement_timestamp" | "timeofday" | "transaction_timestamp" | "timezone"
            // "Text Search Functions and Operators".
            | "to_tsvector" | "to_tsquery" | "plainto_tsquery" | "phraseto_tsquery"
            | "websearch_to_tsquery" | "ts_rank" | "ts_rank_cd" | "ts_headline"
            | "setweight" | "strip" | "numnode" | "querytree" | "tsvector_to_array"
            | "array_to_tsvector" | "ts_delete" | "ts_filter"
            // "UUID Functions" (gen_random_uuid is volatile but side-effect-free).
            | "gen_random_uuid" | "uuidv4" | "uuidv7" | "uuid_extract_timestamp"
            | "uuid_extract_version"
            // "JSON Functions and Operators".
            | "to_json" | "to_jsonb" | "array_to_json" | "row_to_json" | "json_build_array"
            | "jsonb_build_array" | "json_build_object" | "jsonb_build_object"
            | "json_object" | "jsonb_object" | "json_array_elements" | "jsonb_array_elements"
            | "json_array_elements_text" | "jsonb_array_elements_text"
            | "json_array_length" | "jsonb_array_length" | "json_each" | "jsonb_each"
            | "json_each_text" | "jsonb_each_text" | "json_extract_path"
            | "jsonb_extract_path" | "json_extract_path_text" | "jsonb_extract_path_text"
            | "json_object_keys" | "jsonb_object_keys" | "json_populate_record"
            | "jsonb_populate_record" | "json_populate_recordset"
            | "jsonb_populate_recordset" | "json_to_record" | "jsonb_to_record"
            | "json_to_recordset" | "jsonb_to_recordset" | "json_strip_nulls"
            | "jsonb_strip_nulls" | "jsonb_set" | "jsonb_set_lax" | "jsonb_insert"
            | "jsonb_path_exists" | "jsonb_path_match" | "jsonb_path_query"
            | "jsonb_path_query_array" | "jsonb_path_query_first" | "jsonb_pretty"
            | "json_typeof" | "jsonb_typeof" | "json_scalar" | "json_serialize"
            | "json_exists" | "json_query" | "json_value" | "json_array"
            // "Array Functions and Operators".
            | "array_append" | "array_cat" | "array_dims" | "array_fill" | "array_length"
            | "array_lower" | "array_ndims" | "array_position" | "array_positions"
            | "array_prepend" | "array_remove" | "array_replace" | "array_reverse"
            | "array_sample" | "array_shuffle" | "array_sort" | "array_to_string"
            | "array_upper" | "cardinality" | "trim_array" | "unnest"
            // "Range/Multirange Functions and Operators".
            | "lower_inc" | "upper_inc" | "lower_inf" | "upper_inf" | "isempty"
            | "range_merge" | "multirange"
            // "Set Returning Functions".
            | "generate_series" | "generate_subscripts"
            // "System Information Functions" (session settings are replayed by the proxy).
            | "current_user" | "session_user" | "user" | "current_role" | "current_schema"
            | "current_schemas" | "current_database" | "current_catalog" | "current_setting"
            | "version" | "pg_typeof" | "format_type" | "pg_column_size"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_and_deny_list_do_not_overlap() {
        for n in [
            "nextval",
            "setval",
            "currval",
            "lastval",
            "set_config",
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_lock",
            "pg_advisory_unlock_all",
            "pg_sleep",
            "lo_import",
            "lo_unlink",
            "dblink",
            "dblink_exec",
            "txid_current",
            "txid_current_if_assigned",
            "pg_current_xact_id",
            "pg_notify",
            "pg_terminate_backend",
            "pg_create_logical_replication_slot",
        ] {
            assert!(!is_allowed(n), "{n} must not be allowed");
            assert!(denied_reason(n).is_some(), "{n} needs a specific reason");
        }
    }

    #[test]
    fn unknown_functions_are_not_read_only() {
        let r = not_read_only_reason("my_func").unwrap();
        assert!(r.contains("my_func()"), "{r}");
        assert!(not_read_only_reason("count").is_none());
        assert!(not_read_only_reason("random").is_none());
        assert!(not_read_only_reason("gen_random_uuid").is_none());
    }
}
