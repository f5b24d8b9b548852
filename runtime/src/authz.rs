//! Authorisation: what a caller's role may do, decided here and nowhere else.
//!
//! A role sees the schema through [`Access::view`]: tables no rule lets it read are absent, and
//! columns its read rules hide are absent from their tables, so planning against the view
//! answers "unknown table" or "unknown column" exactly as for names that do not exist, and a
//! hidden column can be neither selected (`*` included), filtered, ordered, embedded through nor
//! written. [`Access::decide`] then re-checks the finished [`Plan`] before it runs (verbs, every
//! column read or written, embedded tables) and returns the [`Decision`] that shapes execution.
//!
//! Rules are additive: a column is visible for a verb when any rule granting that verb on the
//! table shows it. Masks and row filters are not enforced yet, so until they are the runtime
//! fails closed: a masked column is hidden, and a rule with a row filter grants nothing.

use std::collections::{BTreeMap, BTreeSet};

use globset::{Glob, GlobSet, GlobSetBuilder};
use sluice_crds::apirole::{AccessRule, Verb};
use sluice_crds::config::RoleConfig;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::plan::{self, Action, Field, Plan};
use crate::schema::{Schema, Table};

/// Every role's rules, with their table globs compiled once per config.
#[derive(Debug, Default)]
pub struct Policy {
    roles: BTreeMap<String, Vec<CompiledRule>>,
}

#[derive(Debug)]
struct CompiledRule {
    tables: GlobSet,
    rule: AccessRule,
}

impl Policy {
    /// Compiles the config's roles. A rule that cannot be enforced (a table glob that does
    /// not parse, or a row filter) grants nothing, with an error in the log naming it.
    pub fn compile(roles_by_name: &BTreeMap<String, RoleConfig>) -> Self {
        let mut roles = BTreeMap::new();
        for (name, role) in roles_by_name {
            let mut compiled = Vec::new();
            for (index, rule) in role.rules.iter().enumerate() {
                if !rule.row_filter.is_empty() {
                    tracing::error!(role = %name, rule = index, "row filters are not enforced by this runtime yet; the rule grants nothing");
                    continue;
                }
                match compile_globs(&rule.tables) {
                    Ok(tables) => compiled.push(CompiledRule {
                        tables,
                        rule: rule.clone(),
                    }),
                    Err(error) => {
                        tracing::error!(role = %name, rule = index, %error, "a table glob does not parse; the rule grants nothing")
                    }
                }
            }
            roles.insert(name.clone(), compiled);
        }
        Self { roles }
    }

    /// What `caller` may do. A role missing from the config grants nothing.
    pub fn access<'p>(&'p self, caller: &'p Caller) -> Access<'p> {
        Access {
            role: &caller.role,
            rules: self.roles.get(&caller.role).map(Vec::as_slice).unwrap_or_default(),
        }
    }
}

fn compile_globs(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern)?);
    }
    builder.build()
}

/// How the policy shapes one permitted request. Row filters will join the row cap here, so
/// execution keeps taking its constraints from one value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Most rows the response may carry (the smallest `maxRows` of the rules granting the
    /// request), on top of the page-size clamp.
    pub max_rows: Option<u64>,
}

/// One caller's role, ready to answer questions about tables, verbs and columns.
#[derive(Clone, Copy, Debug)]
pub struct Access<'p> {
    role: &'p str,
    rules: &'p [CompiledRule],
}

impl Access<'_> {
    /// The role's name.
    pub fn role(&self) -> &str {
        self.role
    }

    fn granting<'a>(&'a self, table: &'a str, verb: Verb) -> impl Iterator<Item = &'a AccessRule> + 'a {
        self.rules
            .iter()
            .filter(move |compiled| compiled.rule.verbs.contains(&verb) && compiled.tables.is_match(table))
            .map(|compiled| &compiled.rule)
    }

    /// Whether any rule grants `verb` on `table`.
    pub fn may(&self, table: &str, verb: Verb) -> bool {
        self.granting(table, verb).next().is_some()
    }

    /// Whether `column` of `table` is visible for `verb`; a column is visible for a write only
    /// when it is readable too, so a role never writes what it cannot see.
    fn shows(&self, table: &str, column: &str, verb: Verb) -> bool {
        let for_verb = |verb| self.granting(table, verb).any(|rule| rule_shows(rule, column));
        for_verb(Verb::Read) && (verb == Verb::Read || for_verb(verb))
    }

    /// The schema as this role sees it for reading: only readable tables, only visible columns,
    /// a primary key only when all its columns are visible (else rows are addressed and paged
    /// as in a table without one), and only foreign keys whose columns are visible on both sides.
    pub fn view(&self, schema: &Schema) -> Schema {
        let mut tables: BTreeMap<String, Table> = schema
            .tables
            .values()
            .filter(|table| self.may(&table.name, Verb::Read))
            .map(|table| (table.name.clone(), self.restrict(table, Verb::Read)))
            .collect();
        let visible: BTreeMap<String, BTreeSet<String>> = tables
            .values()
            .map(|table| {
                (
                    table.name.clone(),
                    table.columns.iter().map(|c| c.name.clone()).collect(),
                )
            })
            .collect();
        for table in tables.values_mut() {
            table.foreign_keys.retain(|fk| {
                visible
                    .get(&fk.referenced_table)
                    .is_some_and(|columns| fk.referenced_columns.iter().all(|c| columns.contains(c)))
            });
        }
        Schema { tables }
    }

    /// `table` with only the columns visible for `verb`, and only the keys made of them.
    fn restrict(&self, table: &Table, verb: Verb) -> Table {
        let mut restricted = table.clone();
        restricted
            .columns
            .retain(|column| self.shows(&table.name, &column.name, verb));
        let visible: BTreeSet<&str> = restricted.columns.iter().map(|c| c.name.as_str()).collect();
        if !restricted.primary_key.iter().all(|c| visible.contains(c.as_str())) {
            restricted.primary_key.clear();
        }
        restricted
            .foreign_keys
            .retain(|fk| fk.columns.iter().all(|c| visible.contains(c.as_str())));
        restricted
    }

    /// Checks that the role may use every verb in `verbs` on `table` (a table of its view), and
    /// returns the table with only the columns it may write with them.
    pub fn writable(&self, table: &Table, verbs: &[Verb]) -> Result<Table, ApiError> {
        self.require(&table.name, verbs)?;
        Ok(verbs
            .iter()
            .fold(table.clone(), |table, verb| self.restrict(&table, *verb)))
    }

    /// Checks that the role may use every verb in `verbs` on `table`: 404 when it cannot read
    /// the table (as if it did not exist), else 403 naming the first verb no rule grants.
    pub fn require(&self, table: &str, verbs: &[Verb]) -> Result<(), ApiError> {
        if !self.may(table, Verb::Read) {
            return Err(ApiError::UnknownTable {
                table: table.to_owned(),
            });
        }
        match verbs.iter().find(|verb| !self.may(table, **verb)) {
            Some(verb) => Err(ApiError::Forbidden {
                role: self.role.to_owned(),
                verb: verb_name(*verb),
                table: table.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Re-checks a finished plan against the rules (whatever schema it was planned on) and
    /// decides how it runs.
    pub fn decide(&self, plan: &Plan) -> Result<Decision, ApiError> {
        let verbs = required_verbs(plan);
        self.require(&plan.table, &verbs)?;
        let hidden = |column: &str| ApiError::UnknownColumn {
            table: plan.table.clone(),
            column: column.to_owned(),
        };
        for column in plan.columns_read() {
            if !self.shows(&plan.table, column, Verb::Read) {
                return Err(hidden(column));
            }
        }
        for column in plan.columns_written() {
            if !verbs.iter().all(|verb| self.shows(&plan.table, column, *verb)) {
                return Err(hidden(column));
            }
        }
        if let Action::Insert(plan::InsertPlan {
            upsert: Some(upsert), ..
        }) = &plan.action
        {
            for column in &upsert.conflict_columns {
                if !self.shows(&plan.table, column, Verb::Read) {
                    return Err(hidden(column));
                }
            }
        }
        let fields = match &plan.action {
            Action::Read(read) => Some(&read.fields),
            _ => plan.returning.as_ref(),
        };
        for field in fields.into_iter().flatten() {
            self.check_embeds(field)?;
        }
        Ok(Decision {
            max_rows: verbs
                .iter()
                .flat_map(|verb| self.granting(&plan.table, *verb))
                .filter_map(|rule| rule.max_rows)
                .min()
                .map(u64::from),
        })
    }

    /// Embedded tables obey their own table's read rules, at every depth.
    fn check_embeds(&self, field: &Field) -> Result<(), ApiError> {
        let Field::Embed { table, fields, .. } = field else {
            return Ok(());
        };
        if !self.may(&table.name, Verb::Read) {
            return Err(ApiError::UnknownTable {
                table: table.name.clone(),
            });
        }
        for inner in fields {
            if let Field::Column { column, .. } = inner
                && !self.shows(&table.name, &column.name, Verb::Read)
            {
                return Err(ApiError::UnknownColumn {
                    table: table.name.clone(),
                    column: column.name.clone(),
                });
            }
            self.check_embeds(inner)?;
        }
        Ok(())
    }
}

/// Whether one rule shows `column`: an allow list names it (when there is one), no deny list
/// names it, and no mask covers it (masked columns stay hidden until masks are enforced).
fn rule_shows(rule: &AccessRule, column: &str) -> bool {
    let Some(fields) = &rule.fields else {
        return true;
    };
    let allowed = fields.allow.is_empty() || fields.allow.iter().any(|name| name == column);
    allowed && !fields.deny.iter().any(|name| name == column) && !fields.mask.iter().any(|mask| mask.field == column)
}

/// The verbs a plan needs: an upsert that merges also updates.
fn required_verbs(plan: &Plan) -> Vec<Verb> {
    match &plan.action {
        Action::Read(_) => vec![Verb::Read],
        Action::Insert(insert) if insert.upsert.as_ref().is_some_and(|upsert| upsert.merge) => {
            vec![Verb::Create, Verb::Update]
        }
        Action::Insert(_) => vec![Verb::Create],
        Action::Update(_) => vec![Verb::Update],
        Action::Delete(_) => vec![Verb::Delete],
    }
}

/// The verb as rules and error messages spell it.
pub fn verb_name(verb: Verb) -> &'static str {
    match verb {
        Verb::Read => "read",
        Verb::Create => "create",
        Verb::Update => "update",
        Verb::Delete => "delete",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::{Paging, read};
    use crate::query::parse_query;
    use crate::schema::{Column, ForeignKey, RelationKind, ValueKind};

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            db_type: "integer".into(),
            cast_type: String::new(),
            kind: ValueKind::Integer,
            nullable: true,
            default: None,
            generated: false,
        }
    }

    fn table(name: &str, columns: &[&str], foreign_keys: Vec<ForeignKey>) -> Table {
        Table {
            name: name.into(),
            db_schema: "public".into(),
            kind: RelationKind::Table,
            updatable: true,
            columns: columns.iter().map(|c| column(c)).collect(),
            primary_key: vec!["id".into()],
            foreign_keys,
        }
    }

    fn schema() -> Schema {
        let owner = ForeignKey {
            name: "orders_customer_fk".into(),
            columns: vec!["customer_id".into()],
            referenced_table: "customers".into(),
            referenced_columns: vec!["id".into()],
        };
        let mut schema = Schema::default();
        for table in [
            table("customers", &["id", "name", "email", "phone"], Vec::new()),
            table("orders", &["id", "customer_id", "total"], vec![owner]),
            table("secrets", &["id", "value"], Vec::new()),
        ] {
            schema.tables.insert(table.name.clone(), table);
        }
        schema
    }

    fn policy(rules: serde_json::Value) -> Policy {
        let role: RoleConfig = serde_json::from_value(json!({
            "description": null, "rules": rules, "rateLimit": null, "mcpEnabled": true, "admin": false
        }))
        .expect("role config");
        Policy::compile(&BTreeMap::from([("clerk".to_owned(), role)]))
    }

    fn caller() -> Caller {
        Caller {
            id: "clerk/desk".into(),
            role: "clerk".into(),
            claims: Default::default(),
        }
    }

    fn columns(schema: &Schema, table: &str) -> Vec<String> {
        schema.tables[table].columns.iter().map(|c| c.name.clone()).collect()
    }

    fn read_plan(schema: &Schema, table: &str, query: &[(&str, &str)]) -> Result<Plan, ApiError> {
        let pairs: Vec<(String, String)> = query.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let paging = Paging {
            default_page_size: 10,
            max_page_size: 100,
        };
        Ok(Plan {
            table: table.into(),
            action: Action::Read(read(schema, &schema.tables[table], &parse_query(&pairs)?, paging)?),
            returning: None,
        })
    }

    #[test]
    fn the_view_hides_unreadable_tables_denied_and_masked_columns_and_keys_through_them() {
        let policy = policy(json!([
            { "tables": ["cust*"], "verbs": ["read"], "fields": { "deny": ["email", "id"], "mask": [{ "field": "phone", "strategy": "null" }] } },
            { "tables": ["orders"], "verbs": ["read"], "fields": { "allow": ["id", "total"] } }
        ]));
        let caller = caller();
        let view = policy.access(&caller).view(&schema());
        assert_eq!(view.tables.keys().collect::<Vec<_>>(), ["customers", "orders"]);
        assert_eq!(columns(&view, "customers"), ["name"]);
        assert!(
            view.tables["customers"].primary_key.is_empty(),
            "a hidden key cannot address rows"
        );
        assert_eq!(columns(&view, "orders"), ["id", "total"]);
        assert!(
            view.tables["orders"].foreign_keys.is_empty(),
            "a hidden foreign key cannot embed"
        );
    }

    #[test]
    fn rules_add_up_and_writes_need_the_verb_and_read_visibility() {
        let policy = policy(json!([
            { "tables": ["customers"], "verbs": ["read"], "fields": { "deny": ["email"] }, "maxRows": 50 },
            { "tables": ["customers"], "verbs": ["read", "create"], "fields": { "deny": ["email", "phone"] }, "maxRows": 5 }
        ]));
        let caller = caller();
        let access = policy.access(&caller);
        let view = access.view(&schema());
        assert_eq!(columns(&view, "customers"), ["id", "name", "phone"]);
        let writable = access
            .writable(&view.tables["customers"], &[Verb::Create])
            .expect("create granted");
        assert_eq!(
            writable.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["id", "name"]
        );
        let forbidden = access.writable(&view.tables["customers"], &[Verb::Create, Verb::Update]);
        assert!(
            matches!(&forbidden, Err(ApiError::Forbidden { verb: "update", .. })),
            "{forbidden:?}"
        );
        assert_eq!(
            forbidden.expect_err("update is not granted").to_string(),
            r#"role "clerk" may not update on table "customers""#
        );
        let decision = access
            .decide(&read_plan(&view, "customers", &[]).expect("plan"))
            .expect("read granted");
        assert_eq!(decision.max_rows, Some(5));
    }

    #[test]
    fn decide_refuses_plans_made_against_the_full_schema() {
        let policy = policy(json!([
            { "tables": ["customers", "orders"], "verbs": ["read"], "fields": { "deny": ["email"] } }
        ]));
        let caller = caller();
        let access = policy.access(&caller);
        let full = schema();
        for query in [
            vec![("select", "id,email")],
            vec![("email", "eq.1")],
            vec![("order", "email")],
            vec![("or", "(id.eq.1,email.is.null)")],
        ] {
            let plan = read_plan(&full, "customers", &query).expect("plans against the full schema");
            assert!(
                matches!(access.decide(&plan), Err(ApiError::UnknownColumn { .. })),
                "{query:?}"
            );
        }
        let embed = read_plan(&full, "orders", &[("select", "id,customers(email)")]).expect("plan");
        assert!(matches!(access.decide(&embed), Err(ApiError::UnknownColumn { .. })));
        let unreadable = read_plan(&full, "secrets", &[]).expect("plan");
        assert!(matches!(access.decide(&unreadable), Err(ApiError::UnknownTable { .. })));
    }

    #[test]
    fn rules_that_cannot_be_enforced_grant_nothing() {
        let policy = policy(json!([
            { "tables": ["customers"], "verbs": ["read"], "rowFilter": [{ "column": "id", "op": "eq", "value": 1 }] },
            { "tables": ["[orders"], "verbs": ["read"] }
        ]));
        let caller = caller();
        assert!(policy.access(&caller).view(&schema()).tables.is_empty());
        let stranger = Caller {
            role: "nobody".into(),
            ..caller
        };
        assert!(policy.access(&stranger).view(&schema()).tables.is_empty());
    }
}
