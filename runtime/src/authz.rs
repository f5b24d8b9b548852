//! Authorisation: what a caller's role may do, decided here and nowhere else.
//!
//! A role sees the schema through [`Access::view`]: tables no rule lets it read are absent, and
//! columns its read rules hide are absent from their tables, so planning against the view
//! answers "unknown table" or "unknown column" exactly as for names that do not exist, and a
//! hidden column can be neither selected (`*` included), filtered, ordered, embedded through nor
//! written. [`Access::govern`] then re-checks the finished [`Plan`] before it runs (verbs, every
//! column read or written, embedded tables, no comparison on a masked column) and binds it to
//! the role: the row filters join the plan's own filters (embedded tables' included) and the
//! returned [`Governance`] carries what execution and the response must still enforce: the row
//! cap, the check that written rows stay inside the row filter, and the masks.
//!
//! Rules are additive: a verb is granted on a table when any rule grants it; a column is visible
//! when any granting rule shows it and masked only when every granting rule that shows it masks
//! it; a row is inside the role's reach when it meets the row filter of any granting rule (a rule
//! without a row filter reaches every row). Columns and rows add up independently, so give
//! different column sets for different rows to different roles.
//!
//! Row filters fail closed: a predicate that cannot be evaluated for this caller (a claim it does
//! not carry, a value that does not fit the column, a column the table does not have) matches no
//! row, so a caller never sees more because its token lacks a claim.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::{Map, Value};
use sluice_crds::apirole::{AccessRule, FieldMask, FilterOperator, RowPredicate, Verb};
use sluice_crds::config::RoleConfig;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::mask::MaskTree;
use crate::plan::{self, Action, Field, Filter, Plan};
use crate::query::{Condition, IsValue, Operand};
use crate::schema::{Schema, Table};

/// Every role's rules, with their table globs compiled once per config.
#[derive(Debug, Default)]
pub struct Policy {
    roles: BTreeMap<String, CompiledRole>,
}

#[derive(Debug, Default)]
struct CompiledRole {
    rules: Vec<CompiledRule>,
    view: ViewCache,
}

/// The role's last view and the schema it was taken of. A view depends only on the rules and
/// the schema, so it is computed once per role and schema load instead of once per request.
/// The schema is held weakly: a reloaded schema is a new allocation, which never matches.
#[derive(Debug, Default)]
struct ViewCache(Mutex<Option<(Weak<Schema>, Arc<Schema>)>>);

impl ViewCache {
    fn get_or_compute(&self, schema: &Arc<Schema>, compute: impl FnOnce() -> Schema) -> Arc<Schema> {
        let mut cached = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((of, view)) = cached.as_ref()
            && Weak::as_ptr(of) == Arc::as_ptr(schema)
        {
            return view.clone();
        }
        let view = Arc::new(compute());
        *cached = Some((Arc::downgrade(schema), view.clone()));
        view
    }
}

#[derive(Debug)]
struct CompiledRule {
    tables: TableMatcher,
    rule: AccessRule,
}

/// A rule's `tables`: plain names compare as strings, and a name followed by one `*` (`t*`) as
/// a prefix; only other patterns go through the glob set. Every request asks it, several times,
/// and a glob match costs far more than a comparison.
#[derive(Debug)]
struct TableMatcher {
    names: Vec<String>,
    prefixes: Vec<String>,
    patterns: Option<GlobSet>,
}

impl TableMatcher {
    fn compile(tables: &[String]) -> Result<Self, globset::Error> {
        let is_pattern = |text: &str| text.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let mut names = Vec::new();
        let mut prefixes = Vec::new();
        let mut builder = GlobSetBuilder::new();
        let mut has_patterns = false;
        for table in tables {
            match table.strip_suffix('*') {
                _ if !is_pattern(table) => names.push(table.clone()),
                // `*` matches any text, `/` included, as globset compiles it here.
                Some(prefix) if !is_pattern(prefix) => prefixes.push(prefix.to_owned()),
                _ => {
                    builder.add(Glob::new(table)?);
                    has_patterns = true;
                }
            }
        }
        Ok(Self {
            names,
            prefixes,
            patterns: has_patterns.then(|| builder.build()).transpose()?,
        })
    }

    fn is_match(&self, table: &str) -> bool {
        self.names.iter().any(|name| name == table)
            || self.prefixes.iter().any(|prefix| table.starts_with(prefix.as_str()))
            || self.patterns.as_ref().is_some_and(|set| set.is_match(table))
    }
}

impl Policy {
    /// Compiles the config's roles. A rule whose table glob does not parse grants nothing, with
    /// an error in the log naming it.
    pub fn compile(roles_by_name: &BTreeMap<String, RoleConfig>) -> Self {
        let mut roles = BTreeMap::new();
        for (name, role) in roles_by_name {
            let mut compiled = Vec::new();
            for (index, rule) in role.rules.iter().enumerate() {
                match TableMatcher::compile(&rule.tables) {
                    Ok(tables) => compiled.push(CompiledRule {
                        tables,
                        rule: rule.clone(),
                    }),
                    Err(error) => {
                        tracing::error!(role = %name, rule = index, %error, "a table glob does not parse; the rule grants nothing")
                    }
                }
            }
            roles.insert(
                name.clone(),
                CompiledRole {
                    rules: compiled,
                    view: ViewCache::default(),
                },
            );
        }
        Self { roles }
    }

    /// What `caller` may do. A role missing from the config grants nothing.
    pub fn access<'p>(&'p self, caller: &'p Caller) -> Access<'p> {
        let role = self.roles.get(&caller.role);
        Access {
            role: &caller.role,
            rules: role.map(|role| role.rules.as_slice()).unwrap_or_default(),
            view: role.map(|role| &role.view),
            claims: &caller.claims,
        }
    }
}

/// What execution and the response must enforce for one permitted request.
#[derive(Clone, Debug, Default)]
pub struct Governance {
    /// Most rows the response may carry (the smallest `maxRows` of the rules granting the
    /// request), on top of the page-size clamp.
    pub max_rows: Option<u64>,
    /// For inserts and updates under a row filter: every written row must meet it afterwards.
    pub write_guard: Option<WriteGuard>,
    /// Masks for the returned rows; `None` when nothing returned is masked.
    pub masks: Option<MaskTree>,
}

/// The condition written rows must meet, so a caller cannot write a row it could not read back.
#[derive(Clone, Debug)]
pub struct WriteGuard {
    /// The role's row filter for the verbs used, reading included.
    pub scope: Filter,
    /// The role, for the error naming the rule that refused.
    pub role: String,
}

/// One caller's role, ready to answer questions about tables, verbs and columns.
#[derive(Clone, Copy, Debug)]
pub struct Access<'p> {
    role: &'p str,
    rules: &'p [CompiledRule],
    view: Option<&'p ViewCache>,
    claims: &'p Map<String, Value>,
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

    /// The mask the role reads `column` of `table` through, if every read rule showing it masks it.
    pub fn mask<'a>(&'a self, table: &'a str, column: &str) -> Option<&'a FieldMask> {
        let mut first = None;
        for rule in self.granting(table, Verb::Read).filter(|rule| rule_shows(rule, column)) {
            match rule_mask(rule, column) {
                Some(mask) => {
                    first.get_or_insert(mask);
                }
                None => return None,
            }
        }
        first
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

    /// [`Access::view`] of the loaded schema, computed once per role and schema load and
    /// shared by every request until either changes.
    pub fn shared_view(&self, schema: &Arc<Schema>) -> Arc<Schema> {
        match self.view {
            Some(cache) => cache.get_or_compute(schema, || self.view(schema)),
            None => Arc::new(self.view(schema)),
        }
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

    /// Re-checks a finished plan against the rules (whatever schema it was planned on), binds
    /// it to the role's row filters, and says what execution must still enforce. `schema` is
    /// the full schema: row filters may use columns the role cannot see.
    pub fn govern(&self, schema: &Schema, plan: &mut Plan) -> Result<Governance, ApiError> {
        let verbs = required_verbs(plan);
        self.require(&plan.table, verbs)?;
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
        let mut compared: Vec<&str> = plan.columns_compared();
        if let Action::Insert(plan::InsertPlan {
            upsert: Some(upsert), ..
        }) = &plan.action
        {
            for column in &upsert.conflict_columns {
                if !self.shows(&plan.table, column, Verb::Read) {
                    return Err(hidden(column));
                }
            }
            compared.extend(upsert.conflict_columns.iter().map(String::as_str));
        }
        if let Some(column) = compared.iter().find(|column| self.mask(&plan.table, column).is_some()) {
            return Err(ApiError::MaskedColumn {
                role: self.role.to_owned(),
                table: plan.table.clone(),
                column: (*column).to_owned(),
            });
        }
        let fields = match &plan.action {
            Action::Read(read) => Some(&read.fields),
            _ => plan.returning.as_ref(),
        };
        for field in fields.into_iter().flatten() {
            self.check_embeds(field)?;
        }
        let table = plan::table(schema, &plan.table)?;
        let scope = self.scope(table, verbs);
        let write_guard = match (&plan.action, &scope) {
            (Action::Insert(_) | Action::Update(_), Some(scope)) => Some(WriteGuard {
                scope: scope.clone(),
                role: self.role.to_owned(),
            }),
            _ => None,
        };
        let max_rows = verbs
            .iter()
            .flat_map(|verb| self.granting(&plan.table, *verb))
            .filter_map(|rule| rule.max_rows)
            .min()
            .map(u64::from);
        match &mut plan.action {
            Action::Read(read) => read.filters.extend(scope),
            Action::Update(update) => update.filters.extend(scope),
            Action::Delete(filters) => filters.extend(scope),
            Action::Insert(_) => {}
        }
        let fields = match &mut plan.action {
            Action::Read(read) => Some(&mut read.fields),
            _ => plan.returning.as_mut(),
        };
        let mut masks = MaskTree::default();
        for field in fields.into_iter().flatten() {
            self.bind_field(schema, &plan.table, field, &mut masks);
        }
        Ok(Governance {
            max_rows,
            write_guard,
            masks: (!masks.is_empty()).then_some(masks),
        })
    }

    /// Adds the masks of one output field of `table` to `masks`, and binds embedded rows to
    /// their own table's row filter, at every depth.
    fn bind_field(&self, schema: &Schema, table: &str, field: &mut Field, masks: &mut MaskTree) {
        match field {
            Field::Column { key, column } => {
                if let Some(mask) = self.mask(table, &column.name) {
                    masks.mask(key.clone(), mask.clone());
                }
            }
            Field::Embed {
                key,
                table: inner,
                fields,
                filters,
                ..
            } => {
                let full = schema.tables.get(&inner.name).unwrap_or(inner);
                filters.extend(self.scope(full, &[Verb::Read]));
                let mut inner_masks = MaskTree::default();
                for inner_field in fields {
                    self.bind_field(schema, &inner.name, inner_field, &mut inner_masks);
                }
                // Embedded rows count against their own table's cap, as a read of it would.
                let max_rows = self
                    .granting(&inner.name, Verb::Read)
                    .filter_map(|rule| rule.max_rows)
                    .min()
                    .map(u64::from);
                masks.embed(key.clone(), inner_masks, max_rows);
            }
        }
    }

    /// The rows of `table` the role reaches with all of `verbs` (reading always included), or
    /// `None` when it reaches every row.
    pub fn scope(&self, table: &Table, verbs: &[Verb]) -> Option<Filter> {
        // Each verb once, in a fixed order, reading always included.
        let verbs = [Verb::Read, Verb::Create, Verb::Update, Verb::Delete]
            .into_iter()
            .filter(|verb| *verb == Verb::Read || verbs.contains(verb));
        let mut required = Vec::new();
        for verb in verbs {
            let mut alternatives = Vec::new();
            let mut unrestricted = false;
            for rule in self.granting(&table.name, verb) {
                if rule.row_filter.is_empty() {
                    unrestricted = true;
                    break;
                }
                alternatives.push(self.rule_rows(table, rule));
            }
            if !unrestricted {
                required.push(Filter::Group {
                    any: true,
                    negated: false,
                    members: alternatives,
                });
            }
        }
        (!required.is_empty()).then_some(Filter::Group {
            any: false,
            negated: false,
            members: required,
        })
    }

    /// The rows one rule reaches: all its predicates hold, or none when one cannot be evaluated.
    fn rule_rows(&self, table: &Table, rule: &AccessRule) -> Filter {
        let members: Option<Vec<Filter>> = rule
            .row_filter
            .iter()
            .map(|predicate| predicate_filter(table, predicate, self.claims, self.role))
            .collect();
        Filter::Group {
            any: members.is_none(),
            negated: false,
            members: members.unwrap_or_default(),
        }
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

/// Whether one rule shows `column`: an allow list names it (when there is one) and no deny list
/// names it. A masked column is shown, disguised.
fn rule_shows(rule: &AccessRule, column: &str) -> bool {
    let Some(fields) = &rule.fields else {
        return true;
    };
    let allowed = fields.allow.is_empty() || fields.allow.iter().any(|name| name == column);
    allowed && !fields.deny.iter().any(|name| name == column)
}

fn rule_mask<'r>(rule: &'r AccessRule, column: &str) -> Option<&'r FieldMask> {
    rule.fields.as_ref()?.mask.iter().find(|mask| mask.field == column)
}

/// One row-filter predicate as a checked filter for this caller, or `None` when it cannot be
/// evaluated (which the caller treats as matching no row).
fn predicate_filter(
    table: &Table,
    predicate: &RowPredicate,
    claims: &Map<String, Value>,
    role: &str,
) -> Option<Filter> {
    let value = match &predicate.value {
        Some(value) => Some(substitute_claims(value, claims)?),
        None => None,
    };
    let operand = match (predicate.op, value) {
        (FilterOperator::Is, None | Some(Value::Null)) => Operand::Is(IsValue::Null),
        (FilterOperator::Is, Some(Value::Bool(true))) => Operand::Is(IsValue::True),
        (FilterOperator::Is, Some(Value::Bool(false))) => Operand::Is(IsValue::False),
        (FilterOperator::Is, Some(Value::String(text))) => Operand::Is(match text.to_ascii_lowercase().as_str() {
            "null" => IsValue::Null,
            "true" => IsValue::True,
            "false" => IsValue::False,
            _ => return None,
        }),
        (FilterOperator::In, Some(Value::Array(items))) => {
            Operand::List(items.iter().map(scalar_text).collect::<Option<_>>()?)
        }
        (FilterOperator::In, Some(item)) => Operand::List(vec![scalar_text(&item)?]),
        (_, Some(value)) => Operand::Scalar(scalar_text(&value)?),
        (_, None) => return None,
    };
    let condition = Condition::Predicate {
        column: predicate.column.clone(),
        negated: predicate.negate,
        operator: predicate.op,
        operand,
    };
    match plan::filters(table, &[condition]) {
        Ok(mut filters) => filters.pop(),
        Err(error) => {
            tracing::debug!(role, table = %table.name, column = %predicate.column, %error, "a row-filter predicate cannot be evaluated for this caller; it matches no row");
            None
        }
    }
}

/// `value` with its `{claims.<path>}` placeholders replaced from `claims`. A string that is one
/// placeholder becomes the claim's value itself (a number stays a number, a list a list); inside
/// longer text, a claim must be a string, number or boolean. A missing claim gives `None`.
fn substitute_claims(value: &Value, claims: &Map<String, Value>) -> Option<Value> {
    match value {
        Value::String(text) => {
            if let Some(path) = text.strip_prefix("{claims.").and_then(|rest| rest.strip_suffix('}'))
                && !path.contains(['{', '}'])
            {
                return claim(claims, path).filter(|value| !value.is_null()).cloned();
            }
            let mut result = String::with_capacity(text.len());
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{claims.") {
                result.push_str(&rest[..start]);
                let after = &rest[start + "{claims.".len()..];
                let end = after.find('}')?;
                result.push_str(&scalar_text(claim(claims, &after[..end])?)?);
                rest = &after[end + 1..];
            }
            result.push_str(rest);
            Some(Value::String(result))
        }
        Value::Array(items) => items
            .iter()
            .map(|item| substitute_claims(item, claims))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        other => Some(other.clone()),
    }
}

/// The claim at a dotted path.
fn claim<'c>(claims: &'c Map<String, Value>, path: &str) -> Option<&'c Value> {
    let mut segments = path.split('.');
    let mut current = claims.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

/// A scalar as the text a filter value is parsed from.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// The verbs a plan needs: an upsert that merges also updates.
fn required_verbs(plan: &Plan) -> &'static [Verb] {
    match &plan.action {
        Action::Read(_) => &[Verb::Read],
        Action::Insert(insert) if insert.upsert.as_ref().is_some_and(|upsert| upsert.merge) => {
            &[Verb::Create, Verb::Update]
        }
        Action::Insert(_) => &[Verb::Create],
        Action::Update(_) => &[Verb::Update],
        Action::Delete(_) => &[Verb::Delete],
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
        let text = matches!(name, "name" | "email" | "phone");
        Column {
            name: name.into(),
            db_type: if text { "text" } else { "integer" }.into(),
            cast_type: String::new(),
            kind: if text { ValueKind::Text } else { ValueKind::Integer },
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
            action: Action::Read(read(
                schema,
                &schema.tables[table],
                &parse_query(&pairs, &Default::default())?,
                paging,
            )?),
            returning: None,
        })
    }

    #[test]
    fn the_view_hides_unreadable_tables_denied_columns_and_keys_through_them() {
        let policy = policy(json!([
            { "tables": ["cust*"], "verbs": ["read"], "fields": { "deny": ["email", "id"], "mask": [{ "field": "phone", "strategy": "null" }] } },
            { "tables": ["orders"], "verbs": ["read"], "fields": { "allow": ["id", "total"] } }
        ]));
        let caller = caller();
        let view = policy.access(&caller).view(&schema());
        assert_eq!(view.tables.keys().collect::<Vec<_>>(), ["customers", "orders"]);
        assert_eq!(
            columns(&view, "customers"),
            ["name", "phone"],
            "masked columns are shown, disguised"
        );
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
    fn the_shared_view_is_computed_once_per_schema_load() {
        let policy = policy(json!([{ "tables": ["customers"], "verbs": ["read"], "fields": { "deny": ["email"] } }]));
        let caller = caller();
        let access = policy.access(&caller);
        let loaded = Arc::new(schema());
        let first = access.shared_view(&loaded);
        assert!(
            Arc::ptr_eq(&first, &access.shared_view(&loaded)),
            "the same load reuses the view"
        );
        assert_eq!(
            columns(&first, "customers"),
            columns(&access.view(&loaded), "customers")
        );
        let mut reloaded = schema();
        reloaded.tables.remove("customers");
        let second = access.shared_view(&Arc::new(reloaded));
        assert!(second.tables.is_empty(), "a reloaded schema gets a fresh view");
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
        let mut plan = read_plan(&view, "customers", &[]).expect("plan");
        let governance = access.govern(&schema(), &mut plan).expect("read granted");
        assert_eq!(governance.max_rows, Some(5));
        assert!(governance.write_guard.is_none() && governance.masks.is_none());
    }

    #[test]
    fn govern_refuses_plans_made_against_the_full_schema() {
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
            let mut plan = read_plan(&full, "customers", &query).expect("plans against the full schema");
            assert!(
                matches!(access.govern(&full, &mut plan), Err(ApiError::UnknownColumn { .. })),
                "{query:?}"
            );
        }
        let mut embed = read_plan(&full, "orders", &[("select", "id,customers(email)")]).expect("plan");
        assert!(matches!(
            access.govern(&full, &mut embed),
            Err(ApiError::UnknownColumn { .. })
        ));
        let mut unreadable = read_plan(&full, "secrets", &[]).expect("plan");
        assert!(matches!(
            access.govern(&full, &mut unreadable),
            Err(ApiError::UnknownTable { .. })
        ));
    }

    #[test]
    fn rules_whose_globs_do_not_parse_grant_nothing() {
        let policy = policy(json!([{ "tables": ["[orders"], "verbs": ["read"] }]));
        let caller = caller();
        assert!(policy.access(&caller).view(&schema()).tables.is_empty());
        let stranger = Caller {
            role: "nobody".into(),
            ..caller
        };
        assert!(policy.access(&stranger).view(&schema()).tables.is_empty());
    }

    #[test]
    fn rule_tables_match_names_exactly_and_patterns_as_globs() {
        let tables = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let matcher = TableMatcher::compile(&tables(&["orders", "t?_*", "audit[0-9]"])).expect("compiles");
        for table in ["orders", "t1_items", "audit7"] {
            assert!(matcher.is_match(table), "{table}");
        }
        for table in ["order", "Orders", "orders2", "t12_items", "audit", "customers"] {
            assert!(!matcher.is_match(table), "{table}");
        }
        let names_only = TableMatcher::compile(&tables(&["orders"])).expect("compiles");
        assert!(names_only.patterns.is_none() && names_only.is_match("orders") && !names_only.is_match("ordersx"));
        let patterns = ["t*", "*"];
        let prefixes = TableMatcher::compile(&tables(&patterns)).expect("compiles");
        assert!(
            prefixes.patterns.is_none() && prefixes.prefixes.len() == 2,
            "{prefixes:?}"
        );
        let mut globs = GlobSetBuilder::new();
        for pattern in patterns {
            globs.add(Glob::new(pattern).expect("a glob"));
        }
        let globs = globs.build().expect("a glob set");
        for table in ["t", "tags", "t/x", "T1", "customers"] {
            assert_eq!(prefixes.is_match(table), globs.is_match(table), "{table}");
        }
        assert!(
            TableMatcher::compile(&tables(&["*"]))
                .expect("compiles")
                .is_match("anything")
        );
    }

    fn sql_of(filter: &Filter) -> (String, Vec<String>) {
        let full = schema();
        let statement = crate::sql::count_outside(
            sluice_crds::dataapi::Engine::Sqlite,
            &full.tables["customers"],
            filter,
            filter,
        );
        let binds = statement.binds.iter().map(|b| format!("{b:?}")).collect();
        let text = statement.text;
        let start = text.find("WHERE ").expect("where") + 6;
        let end = text.find(" AND (CASE").expect("case");
        (text[start..end].to_owned(), binds)
    }

    #[test]
    fn row_filters_substitute_claims_add_up_across_rules_and_fail_closed() {
        let policy = policy(json!([
            { "tables": ["customers"], "verbs": ["read"], "rowFilter": [
                { "column": "name", "op": "eq", "value": "{claims.team}-{claims.org.unit}" },
                { "column": "id", "op": "in", "value": "{claims.ids}" }
            ] },
            { "tables": ["customers"], "verbs": ["read", "update"], "rowFilter": [
                { "column": "phone", "op": "is", "value": null, "negate": true }
            ] }
        ]));
        let mut caller = caller();
        caller.claims = json!({ "team": "north", "org": { "unit": 7 }, "ids": [1, 2] })
            .as_object()
            .cloned()
            .expect("object");
        let access = policy.access(&caller);
        let full = schema();
        let customers = &full.tables["customers"];
        let read = access.scope(customers, &[Verb::Read]).expect("filtered");
        let (text, binds) = sql_of(&read);
        assert_eq!(text, r#"((("name" = ? AND "id" IN (?, ?)) OR ("phone" IS NOT NULL)))"#);
        assert_eq!(binds[..3], ["Text(\"north-7\")", "Integer(1)", "Integer(2)"]);
        let update = access.scope(customers, &[Verb::Update]).expect("filtered");
        let (text, _) = sql_of(&update);
        assert!(
            text.ends_with(r#"AND (("phone" IS NOT NULL)))"#),
            "updates need the update rule's rows too: {text}"
        );
        caller.claims.remove("ids");
        let access = policy.access(&caller);
        let (text, _) = sql_of(&access.scope(customers, &[Verb::Read]).expect("filtered"));
        assert_eq!(
            text, r#"(((1 = 0) OR ("phone" IS NOT NULL)))"#,
            "a missing claim matches no row"
        );
        caller.claims.insert("ids".into(), json!(["not a number"]));
        let access = policy.access(&caller);
        let (text, _) = sql_of(&access.scope(customers, &[Verb::Read]).expect("filtered"));
        assert!(
            text.starts_with("(((1 = 0) OR"),
            "a claim that does not fit matches no row: {text}"
        );
        let open = self::policy(json!([{ "tables": ["customers"], "verbs": ["read"] }]));
        assert!(
            open.access(&caller).scope(customers, &[Verb::Read]).is_none(),
            "no row filter reaches every row"
        );
    }

    #[test]
    fn govern_binds_reads_embeds_and_writes_to_the_row_filter() {
        let policy = policy(json!([
            { "tables": ["customers", "orders"], "verbs": ["read", "create", "update", "delete"], "rowFilter": [
                { "column": "id", "op": "lt", "value": 100 }
            ] }
        ]));
        let caller = caller();
        let access = policy.access(&caller);
        let full = schema();
        let mut read = read_plan(&full, "customers", &[("select", "id,orders(id)")]).expect("plan");
        let governance = access.govern(&full, &mut read).expect("granted");
        assert!(governance.write_guard.is_none());
        let Action::Read(read) = &read.action else {
            panic!("read")
        };
        assert_eq!(read.filters.len(), 1, "the scope joins the plan's filters");
        let Field::Embed { filters, .. } = &read.fields[1] else {
            panic!("embed")
        };
        assert_eq!(filters.len(), 1, "embedded rows obey their own table's row filter");
        let mut insert = Plan {
            table: "customers".into(),
            action: Action::Insert(plan::InsertPlan {
                columns: Vec::new(),
                rows: vec![Vec::new()],
                upsert: None,
            }),
            returning: None,
        };
        let governance = access.govern(&full, &mut insert).expect("granted");
        assert_eq!(governance.write_guard.expect("guarded").role, "clerk");
    }

    #[test]
    fn masks_apply_when_every_showing_rule_masks_and_block_comparisons() {
        let masked = json!({ "mask": [{ "field": "email", "strategy": "hash" }] });
        let policy = policy(json!([
            { "tables": ["customers"], "verbs": ["read"], "fields": masked },
            { "tables": ["orders"], "verbs": ["read"] }
        ]));
        let caller = caller();
        let access = policy.access(&caller);
        let full = schema();
        let mut plan = read_plan(&full, "orders", &[("select", "id,customers(renamed:email)")]).expect("plan");
        let governance = access.govern(&full, &mut plan).expect("granted");
        let mut row = json!({ "id": 1, "customers": { "renamed": "abc" } });
        governance.masks.expect("masked").apply_to(&mut row);
        assert_eq!(
            row["customers"]["renamed"],
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        for query in [
            vec![("email", "eq.a")],
            vec![("order", "email")],
            vec![("or", "(email.is.null)")],
        ] {
            let mut plan = read_plan(&full, "customers", &query).expect("plan");
            let refused = access.govern(&full, &mut plan);
            assert!(
                matches!(refused, Err(ApiError::MaskedColumn { .. })),
                "{query:?}: {refused:?}"
            );
        }
        let unmasked_too = self::policy(json!([
            { "tables": ["customers"], "verbs": ["read"], "fields": masked },
            { "tables": ["customers"], "verbs": ["read"] }
        ]));
        assert!(unmasked_too.access(&caller).mask("customers", "email").is_none());
    }
}
