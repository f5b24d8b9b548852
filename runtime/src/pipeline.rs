//! The one governed step every planned request passes through, whatever its transport (REST
//! handlers now, MCP tools too): authorise the plan, shape it by the decision, execute it.
//!
//! It also notes what it learned about the call ([`CallFacts`]) for the audit line and the
//! request metrics, in a task-local scope the transport opens with [`observed`], so handlers
//! do not carry audit state around.

use std::cell::RefCell;
use std::future::Future;

use serde_json::Value;
use sluice_crds::limits::LimitsSpec;

use crate::app::AppState;
use crate::audit::{AuditRecord, fingerprint};
use crate::authz::Access;
use crate::error::ApiError;
use crate::execute::{Outcome, execute};
use crate::limits;
use crate::plan::{Action, Plan, Verb};
use crate::schema::Schema;

/// The single step every request passes through once planned: the plan's size is checked
/// against `limits` (before and after the role's row filters join it), the policy re-checks the plan
/// and binds it to the role's row filters, the row cap applies, the plan runs (writes checked
/// against the row filter before they commit), and masks disguise what comes back. `schema` is
/// the full schema: execution may use columns the role cannot see, such as a hidden primary
/// key or a row filter's column, internally.
pub async fn run(
    state: &AppState,
    schema: &Schema,
    access: &Access<'_>,
    mut plan: Plan,
    count: bool,
    limits: &LimitsSpec,
) -> Result<Outcome, ApiError> {
    tracing::debug!(table = %plan.table, verb = ?plan.verb(), role = access.role(), read = ?plan.columns_read(), written = ?plan.columns_written(), "planned");
    note(|facts| {
        facts.table = Some(plan.table.clone());
        facts.verb = Some(plan.verb());
        facts.fingerprint = Some(fingerprint(&plan));
    });
    limits::check_request(&plan, limits)?;
    let governance = access.govern(schema, &mut plan)?;
    limits::check_bind_parameters(&plan, limits)?;
    // One row past the cap tells whether the cap left rows out.
    if let (Some(cap), Action::Read(read)) = (governance.max_rows, &mut plan.action)
        && read.limit > cap
    {
        read.limit = cap + 1;
    }
    let mut outcome = state
        .database
        .within_deadline(execute(
            &state.database,
            schema,
            &plan,
            count,
            governance.write_guard.as_ref(),
        ))
        .await?;
    // Rows returned from writes obey the cap too, so a write cannot read more than a read.
    if let Some(cap) = governance
        .max_rows
        .map(|cap| usize::try_from(cap).unwrap_or(usize::MAX))
        && outcome.rows.len() > cap
    {
        outcome.rows.truncate(cap);
        outcome.capped = matches!(plan.action, Action::Read(_));
    }
    if let Some(masks) = &governance.masks {
        masks.apply(&mut outcome.rows)?;
    }
    let rows = if matches!(plan.action, Action::Read(_)) || !outcome.rows.is_empty() {
        outcome.rows.len() as u64
    } else {
        outcome.affected
    };
    note(|facts| facts.rows = rows);
    Ok(outcome)
}

/// What the governed step learned about one call.
#[derive(Clone, Debug, Default)]
pub struct CallFacts {
    /// The table, once resolved against the schema.
    pub table: Option<String>,
    /// The verb of the plan.
    pub verb: Option<Verb>,
    /// The query's shape, without values.
    pub fingerprint: Option<String>,
    /// Rows returned, or written when none are returned.
    pub rows: u64,
    /// The request body, already redacted for the caller's role.
    pub body: Option<Value>,
}

impl CallFacts {
    /// Copies the facts into an audit record.
    pub fn into_record(self, record: &mut AuditRecord) {
        record.table = self.table;
        record.verb = self.verb;
        record.fingerprint = self.fingerprint;
        record.rows = self.rows;
        record.body = self.body;
    }
}

tokio::task_local! {
    static FACTS: RefCell<CallFacts>;
}

/// Runs `call` and returns what the governed step noted while it ran.
pub async fn observed<F: Future>(call: F) -> (F::Output, CallFacts) {
    FACTS
        .scope(RefCell::new(CallFacts::default()), async {
            let output = call.await;
            (output, FACTS.with(RefCell::take))
        })
        .await
}

/// Notes a fact about the current call; a no-op outside [`observed`].
pub fn note(update: impl FnOnce(&mut CallFacts)) {
    let _ = FACTS.try_with(|facts| update(&mut facts.borrow_mut()));
}
